# Sourced by the benchmark suites in scripts/bench/ (files starting with "_" are not
# suites). Each suite sets SUITE, sources this file from the top of the tree, prints its Markdown section on
# stdout (progress goes to stderr) and appends one row per measured target to
# $BENCH_SUMMARY (when set) with `summary`.
#
# Environment: QUICK=1 selects the small sizes; COORD_BIN is the directory of the release
# binaries (built here when unset); TMPDIR is where the sessions are made.
# shellcheck shell=bash
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
. scripts/lib/release.sh
# shellcheck disable=SC2034 # used by the suites
BIN=${COORD_BIN:-$(coord_release_dir)}
QUICK=${QUICK:-0}
unset COORD_SESSION COORD_FSYNC COORD_POLL_MS RUST_LOG

# pick FULL QUICK: the size for this mode.
pick() { if [ "$QUICK" = 1 ]; then echo "$2"; else echo "$1"; fi; }

# A fresh directory for the suite's sessions; removed on exit unless the suite replaces
# the EXIT trap (then it must remove $WORK itself).
WORK=$(mktemp -d "${TMPDIR:-/tmp}/coord-bench-$SUITE.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
export COORD_BASE=$WORK/base

SUITE_START=$(date +%s)
# progress MESSAGE: to stderr, with the seconds since the suite started.
progress() { echo "$SUITE [$(($(date +%s) - SUITE_START)) s]: $*" >&2; }

# summary METRIC VALUE TARGET STATUS: one row of the summary table (tab-separated).
# STATUS is met, not met, info or skipped.
summary() {
  [ -n "${BENCH_SUMMARY:-}" ] || return 0
  printf '%s\t%s\t%s\t%s\t%s\n' "$SUITE" "$1" "$2" "$3" "$4" >>"$BENCH_SUMMARY"
}
# skipped PEER WHAT: the summary row of a peer that is not installed.
skipped() { summary "$2" "skipped: $1 not installed" "—" skipped; }

# verdict VALUE OP LIMIT (OP one of <= >= < >): prints "met" or "not met".
verdict() {
  awk -v v="$1" -v op="$2" -v l="$3" 'BEGIN {
    if (op == "<=") ok = v <= l; else if (op == ">=") ok = v >= l
    else if (op == "<") ok = v < l; else if (op == ">") ok = v > l
    else { print "verdict: bad operator " op > "/dev/stderr"; exit 2 }
    print ok ? "met" : "not met" }'
}

# stats X...: "median min max" of the numbers.
stats() {
  printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 }
    END { if (NR == 0) exit 1
          m = NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2
          print m, a[1], a[NR] }'
}

# bench_hyperfine JSON ARGS...: hyperfine -N with its report in JSON, its warnings kept
# out of the output unless it fails.
bench_hyperfine() {
  local out=$1
  shift
  hyperfine -N --style none --export-json "$out" "$@" >/dev/null 2>"$WORK/hyperfine.err" ||
    { cat "$WORK/hyperfine.err" >&2; return 1; }
}

# hf FILE INDEX: "median min max" in ms of result INDEX of a hyperfine --export-json file.
hf() { jq -r --argjson i "$2" '.results[$i] | "\(.median * 1000) \(.min * 1000) \(.max * 1000)"' "$1"; }

# num X [DIGITS]: X with DIGITS decimals (default 2).
num() { awk -v x="$1" -v d="${2:-2}" 'BEGIN { printf("%." d "f\n", x) }'; }
# div A B [DIGITS]: A / B.
div() { awk -v a="$1" -v b="$2" -v d="${3:-2}" 'BEGIN { printf("%." d "f\n", a / b) }'; }
# mmr MEDIAN MIN MAX [DIGITS]: "median (min–max)" for a table cell.
mmr() { echo "$(num "$1" "${4:-2}") ($(num "$2" "${4:-2}")–$(num "$3" "${4:-2}"))"; }
# thousands N: N rounded, with thousands separated by commas.
thousands() {
  awk -v x="$1" 'BEGIN { s = sprintf("%.0f", x); out = ""
    while (length(s) > 3 && substr(s, length(s) - 3, 1) ~ /[0-9]/) { out = "," substr(s, length(s) - 2) out; s = substr(s, 1, length(s) - 3) }
    print s out }'
}

now_ns() { date +%s%N; }
# ms_since T0_NS [N]: milliseconds since T0_NS, divided by N (default 1).
ms_since() { awk -v a="$1" -v b="$(now_ns)" -v n="${2:-1}" 'BEGIN { printf("%.6f\n", (b - a) / 1e6 / n) }'; }

# peak_rss CMD...: peak RSS of CMD in KiB (GNU time), CMD's output discarded.
peak_rss() {
  /usr/bin/time -f %M -o "$WORK/rss.out" "$@" >/dev/null
  tail -n 1 "$WORK/rss.out"
}

# fs_of DIR: the filesystem type DIR lives on.
fs_of() { df -PT "$1" | awk 'NR == 2 { print $2 }'; }
