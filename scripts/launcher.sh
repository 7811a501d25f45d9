#!/bin/sh
# Pontoon launcher: runs the bundled program with the Deno runtime shipped
# beside it. Works from any working directory and through symlinks (as in a
# CNI bin dir), needs no network and no writable home.
#
# Plugin mode (CNI_COMMAND set) gets no network permission at all; the agent
# and the CLI also need the network (the Kubernetes API, the REST API).
self=$(readlink -f "$0") || exit 1
dir=${self%/*}
if [ -n "${CNI_COMMAND+set}" ]; then
  exec "$dir/deno" run --quiet --no-prompt --no-config --no-lock --no-remote --cached-only \
    @PERMISSIONS@ "$dir/lib/main.js" "$@"
fi
exec "$dir/deno" run --quiet --no-prompt --no-config --no-lock --no-remote --cached-only \
  @PERMISSIONS@ --allow-net --allow-sys "$dir/lib/main.js" "$@"
