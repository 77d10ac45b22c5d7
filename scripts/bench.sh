#!/usr/bin/env bash
# Run the benchmark suites in scripts/bench/ in one run on this machine and print their
# markdown tables (the source of docs/performance.md).
#
#   scripts/bench.sh [--quick] [SUITE...]     e.g. scripts/bench.sh foundation
#
# Each suite compares against its peers where they are installed and says which it skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

quick=0
suites=()
for a in "$@"; do
  case "$a" in
    --quick) quick=1 ;;
    -h|--help) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "bench.sh: unknown option $a" >&2; exit 2 ;;
    *) suites+=("$a") ;;
  esac
done
if [ ${#suites[@]} -eq 0 ]; then
  for f in scripts/bench/*.sh; do suites+=("$(basename "$f" .sh)"); done
fi

command -v hyperfine >/dev/null 2>&1 || { echo "bench.sh: hyperfine is required (apt-get install hyperfine)" >&2; exit 2; }
command -v jq >/dev/null 2>&1 || { echo "bench.sh: jq is required (apt-get install jq)" >&2; exit 2; }

. scripts/lib/release.sh
COORD_BIN=${COORD_BIN:-$(coord_release_dir)}
export COORD_BIN
echo "# coord benchmarks — $(date -u +%Y-%m-%dT%H:%M:%SZ) — $(nproc) cores, $(uname -srm)"
echo "command: scripts/bench.sh $*"
for s in "${suites[@]}"; do
  f="scripts/bench/$s.sh"
  [ -f "$f" ] || { echo "bench.sh: no suite $s ($f)" >&2; exit 2; }
  echo
  QUICK=$quick bash "$f"
done
