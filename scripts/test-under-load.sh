#!/usr/bin/env bash
# The test suite with two CPU-bound processes running beside it (a machine shared with other work), as CI may see it.
# Usage: bash scripts/test-under-load.sh [pytest args]. Prints the suite's result and its wall time; the load
# processes stop when the suite ends (and by themselves after 3 hours at most).
set -uo pipefail
cd "$(dirname "$0")/.."
load=()
for _ in 1 2; do
  timeout 3h python -c "while True: pass" &
  load+=($!)
done
trap 'kill "${load[@]}" 2>/dev/null; wait "${load[@]}" 2>/dev/null' EXIT
echo "load: ${#load[@]} CPU-bound processes (pids ${load[*]}) on $(nproc) cores"
start=$(date +%s)
python -m pytest -q "$@"
rc=$?
echo "suite under load: exit $rc in $(( $(date +%s) - start )) s"
exit $rc
