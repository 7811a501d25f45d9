# Pontoon — build, test, demo and benchmark entry points.
#
#   make demo    two pods on a real bridge through the CNI protocol
#   make demo-cluster  two simulated nodes with agents; pods ping across them
#   make test    the whole test suite (root; real namespaces)
#   make bench   Pontoon vs the reference bridge plugin, side by side
#
# Every target installs what it needs first (`make deps`): Debian packages
# through apt and Deno (pinned in package.json) through `npm ci`.

SHELL := /bin/bash
DENO := $(CURDIR)/node_modules/@deno/linux-x64-glibc/deno
ifeq ($(shell uname -m),aarch64)
DENO := $(CURDIR)/node_modules/@deno/linux-arm64-glibc/deno
endif
SOURCES := main.ts $(wildcard lib/*.ts) $(wildcard lib/*.json) deno.json
# The plugin needs no network permission: it talks to the agent over a unix socket.
PLUGIN_PERMISSIONS := --allow-env --allow-read --allow-write --allow-run --allow-ffi
APT_PACKAGES := iproute2 nftables iptables iputils-ping containernetworking-plugins golang-go \
	golang-github-appc-cni-dev podman runc containerd busybox-static iperf3 util-linux procps kmod openssl tcpdump curl time

.PHONY: all deps build compile test demo demo-cluster bench soak fmt lint check clean

all: build

deps: node_modules/.installed
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages: $$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund
	@touch $@

build: deps dist/pontoon

dist/pontoon: $(SOURCES) scripts/launcher.sh node_modules/.installed
	rm -rf dist && mkdir -p dist/lib
	$(DENO) bundle --quiet --code-splitting --platform deno --format esm --outdir dist/lib main.ts
	@# The plugin path alone, in one file: kubelet starts it once per pod. The
	@# CLI (never reached with CNI_COMMAND set) stays out, and with it the
	@# agent's CommonJS dependencies, whose shim loads Deno's Node layer (~13 ms).
	$(DENO) bundle --quiet --platform deno --format esm --minify --external ./lib/cli.ts \
		-o dist/lib/plugin.js main.ts
	@! grep -q '"node:' dist/lib/plugin.js || { echo "dist/lib/plugin.js imports node: modules"; exit 1; }
	ln -f $(DENO) dist/deno 2>/dev/null || cp $(DENO) dist/deno
	sed -e 's|@PERMISSIONS@|$(PLUGIN_PERMISSIONS)|' scripts/launcher.sh > dist/pontoon.tmp
	chmod 755 dist/pontoon.tmp && mv dist/pontoon.tmp dist/pontoon
	@echo "built dist/pontoon"

# A self-contained binary. One binary serves every mode, so it carries the
# agent's network permission (the Kubernetes API, the REST API's TCP
# listener) and --allow-sys (the hostname) on top of the plugin's.
# Needs only Deno (npm), not the test packages: the Dockerfile and the
# release workflow run it, with COMPILE_TARGET for cross builds
# (x86_64-unknown-linux-gnu, aarch64-unknown-linux-gnu).
# Needs the Deno runtime download (denort), which these machines cannot
# reach; see README "Building".
COMPILE_TARGET ?=
COMPILE_OUTPUT ?= dist/pontoon-bin
compile: node_modules/.installed
	@mkdir -p $(dir $(COMPILE_OUTPUT))
	$(DENO) compile --no-prompt $(PLUGIN_PERMISSIONS) --allow-net --allow-sys \
		$(if $(COMPILE_TARGET),--target $(COMPILE_TARGET)) --output $(COMPILE_OUTPUT) main.ts \
	|| { echo; echo "make compile: deno compile could not fetch its runtime (denort) from dl.deno.land."; \
	     echo "Run it on a machine that reaches dl.deno.land, or set DENORT_BIN to a denort binary."; exit 1; }

test: build
	@bash scripts/run-tests.sh $(DENO) tests/

demo: build
	@$(DENO) run --allow-all scripts/demo.ts

demo-cluster: build
	@$(DENO) run --allow-all scripts/demo_cluster.ts

# Pontoon vs the reference bridge plugin, interleaved in one run; table on
# stdout, JSON under bench/results/. Options: make bench BENCH_ARGS="--help".
bench: build
	$(DENO) run --allow-all bench/bench.ts $(BENCH_ARGS)

fmt: deps
	$(DENO) fmt

lint: deps
	$(DENO) lint

check: deps
	$(DENO) check main.ts lib/*.ts tests/*.ts bench/*.ts

clean:
	rm -rf dist tests/.work

soak: build
	PONTOON_SOAK_CYCLES=$${PONTOON_SOAK_CYCLES:-40} $(DENO) test --allow-all tests/soak_test.ts
