#!/bin/sh
# Pontoon launcher: runs the bundled program with the Deno runtime shipped
# beside it. Works from any working directory and through symlinks (as in a
# CNI bin dir), needs no network and no writable home.
#
# Plugin mode (CNI_COMMAND set) runs the plugin-only bundle and gets no
# network permission at all; the agent and the CLI also need the network
# (the Kubernetes API, the REST API). Kubelet starts the plugin once per
# pod, so this stays cheap: `readlink` is spawned only for a symlink.
# The runtime's own update check (a file read, and a download attempt once a
# day) has no place on a node.
export DENO_NO_UPDATE_CHECK=1
self=$0
if [ -L "$self" ]; then
  self=$(readlink -f "$self") || exit 1
fi
dir=${self%/*}
[ "$dir" = "$self" ] && dir=.
if [ -n "${CNI_COMMAND+set}" ]; then
  exec "$dir/deno" run --quiet --no-prompt --no-config --no-lock --no-remote --cached-only \
    @PERMISSIONS@ "$dir/lib/plugin.js" "$@"
fi
exec "$dir/deno" run --quiet --no-prompt --no-config --no-lock --no-remote --cached-only \
  @PERMISSIONS@ --allow-net --allow-sys "$dir/lib/main.js" "$@"
