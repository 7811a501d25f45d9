#!/usr/bin/env bash
# Runs `deno test` and prints the plain "N passed, M failed" line CI reads.
# Fails when no test ran.
set -uo pipefail
deno=$1; shift
log=$(mktemp)
trap 'rm -f "$log"' EXIT
"$deno" test --allow-all --no-check=remote "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
summary=$(sed -e 's/\x1b\[[0-9;]*m//g' "$log" | grep -E '^(ok|FAILED) \| [0-9]+ passed' | tail -1)
passed=$(sed -E 's/.*\| ([0-9]+) passed.*/\1/' <<<"$summary")
failed=$(sed -E 's/.*\| ([0-9]+) failed.*/\1/' <<<"$summary")
ignored=$(grep -oE '[0-9]+ ignored' <<<"$summary" | grep -oE '[0-9]+' || echo 0)
passed=${passed:-0}
failed=${failed:-0}
echo
echo "${passed} passed, ${failed} failed, ${ignored:-0} skipped"
if [ "$passed" -eq 0 ] && [ "$failed" -eq 0 ]; then
  echo "no test ran" >&2
  exit 1
fi
exit "$status"
