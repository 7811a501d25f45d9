# Pontoon's container image: the compiled binary on a small Debian with
# the tools the agent runs (ip, nft) and modprobe for the init step.
#
#   docker buildx build --platform linux/amd64,linux/arm64 -t ghcr.io/pontoon-cni/pontoon:0.1.0 .
#
# The build stage runs on the build machine's platform and cross-compiles
# with `deno compile --target` (make compile COMPILE_TARGET=...); it needs
# the npm registry and dl.deno.land (denort).

FROM --platform=$BUILDPLATFORM node:20-bookworm-slim AS build
ARG TARGETARCH
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends make ca-certificates \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY Makefile deno.json main.ts ./
COPY lib/ lib/
COPY scripts/ scripts/
RUN case "$TARGETARCH" in \
      amd64) target=x86_64-unknown-linux-gnu ;; \
      arm64) target=aarch64-unknown-linux-gnu ;; \
      *) echo "unsupported TARGETARCH $TARGETARCH" >&2; exit 1 ;; \
    esac \
 && make compile COMPILE_TARGET="$target" COMPILE_OUTPUT=/out/pontoon \
 && touch -d @0 /out/pontoon

FROM debian:bookworm-slim
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends iproute2 nftables kmod \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/pontoon /usr/local/bin/pontoon
COPY LICENSE /usr/share/doc/pontoon/LICENSE
ENV DENO_DIR=/tmp/deno
ENTRYPOINT ["/usr/local/bin/pontoon"]
CMD ["agent"]
