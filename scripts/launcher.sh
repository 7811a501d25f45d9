#!/bin/sh
# Pontoon launcher: runs the bundled plugin with the Deno runtime shipped
# beside it. Works from any working directory and through symlinks (as in a
# CNI bin dir), needs no network and no writable home.
self=$(readlink -f "$0") || exit 1
dir=${self%/*}
exec "$dir/deno" run --quiet --no-prompt --no-config --no-lock --no-remote --cached-only \
  @PERMISSIONS@ "$dir/lib/main.js" "$@"
