#!/usr/bin/env bash
# taskd benchmarks, all in one run (results go in docs/performance.md, section "taskd"):
#   1. N no-op jobs (default 2000) through two `taskd work` workers vs xargs -P2,
#      GNU parallel -j2, tsp -S 2, nq (two queues) and pueue (2 parallel; fewer jobs,
#      it is slow), as ms per job and ratio to xargs;
#   2. claim + complete (one process each) with 100 vs 100,000 pending tasks;
#   3. `submit --batch` of 100,000 tasks, tasks per second;
#   4. peak RSS of `taskd claim` with 100,000 pending.
# Usage: scripts/bench/taskd.sh [JOBS]   (env: BIG=100000, PAIRS=100, PUEUE_JOBS=200)
# The claim+complete runs submit N + PAIRS tasks, so N are still pending at the end.
set -euo pipefail
cd "$(dirname "$0")/../.."

JOBS=${1:-2000}
BIG=${BIG:-100000}
PAIRS=${PAIRS:-100}
PUEUE_JOBS=${PUEUE_JOBS:-200}

. scripts/lib/release.sh
BIN=${COORD_BIN:-$(coord_release_dir)}
WORK=$(mktemp -d /tmp/taskd-bench.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
export COORD_BASE=$WORK/base
unset COORD_SESSION

now_ns() { date +%s%N; }
ms_per() { awk -v a="$1" -v b="$2" -v n="$3" 'BEGIN { printf "%.3f", (b - a) / 1e6 / n }'; }
declare -A PER

echo "# taskd benchmark, $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) cores, $(uname -sr)"
echo
echo "## $JOBS no-op jobs, 2 at a time"

# taskd: submit (not timed here), then two workers drain the queue. Run once with the
# base on $WORK's filesystem and once on tmpfs (/dev/shm) when it exists.
work_run() { # $1 = base dir; sets PER_RUN
  export COORD_BASE=$1
  export COORD_SESSION=$("$BIN/session-init" bench-work)
  seq "$JOBS" | awk '{ printf "{\"id\":\"j%d\"}\n", $1 }' | "$BIN/taskd" submit --batch >/dev/null
  local t0 t1 p1 p2 done_n
  t0=$(now_ns)
  "$BIN/taskd" work w1 --idle-exit 0.05 -- true >/dev/null &
  p1=$!
  "$BIN/taskd" work w2 --idle-exit 0.05 -- true >/dev/null &
  p2=$!
  wait "$p1" "$p2"
  t1=$(now_ns)
  done_n=$(ls "$COORD_BASE/$COORD_SESSION/tasks/done" | wc -l)
  [ "$done_n" -eq "$JOBS" ] || { echo "taskd completed $done_n of $JOBS" >&2; exit 1; }
  PER_RUN=$(ms_per "$t0" "$t1" "$JOBS")
}
FS=$(df -T "$WORK" | awk 'NR == 2 { print $2 }')
work_run "$WORK/base"
PER[taskd]=$PER_RUN
if [ -d /dev/shm ] && [ -w /dev/shm ]; then
  SHM=$(mktemp -d /dev/shm/taskd-bench.XXXXXX)
  work_run "$SHM/base"
  PER[taskd-tmpfs]=$PER_RUN
  rm -rf "$SHM"
fi
export COORD_BASE=$WORK/base

t0=$(now_ns); seq "$JOBS" | xargs -P2 -n1 true; t1=$(now_ns)
PER[xargs]=$(ms_per "$t0" "$t1" "$JOBS")

if command -v parallel >/dev/null; then
  t0=$(now_ns); seq "$JOBS" | parallel -j2 true {}; t1=$(now_ns)
  PER[parallel]=$(ms_per "$t0" "$t1" "$JOBS")
fi

if command -v tsp >/dev/null; then
  export TS_SOCKET=$WORK/tsp.sock TS_MAXFINISHED=$((JOBS + 10)) TS_SAVELIST=
  tsp -S 2 >/dev/null
  t0=$(now_ns)
  for _ in $(seq "$JOBS"); do last=$(tsp true); done
  tsp -w "$last" >/dev/null 2>&1 || true
  while [ "$(tsp | grep -c -E 'running|queued')" -gt 0 ]; do sleep 0.01; done
  t1=$(now_ns)
  tsp -K >/dev/null 2>&1 || true
  PER[tsp]=$(ms_per "$t0" "$t1" "$JOBS")
fi

if command -v nq >/dev/null; then
  mkdir -p "$WORK/nq1" "$WORK/nq2"
  t0=$(now_ns)
  for i in $(seq "$JOBS"); do NQDIR=$WORK/nq$((i % 2 + 1)) nq -q true; done
  NQDIR=$WORK/nq1 nq -w 2>/dev/null || true
  NQDIR=$WORK/nq2 nq -w 2>/dev/null || true
  t1=$(now_ns)
  PER[nq]=$(ms_per "$t0" "$t1" "$JOBS")
fi

PUEUE=$(command -v pueue || echo "$HOME/.cargo/bin/pueue")
PUEUED=$(command -v pueued || echo "$HOME/.cargo/bin/pueued")
if [ -x "$PUEUE" ] && [ -x "$PUEUED" ]; then
  cfg=$WORK/pueue.yml
  printf 'shared:\n  pueue_directory: %s/pueue\n  runtime_directory: %s/pueue\n' "$WORK" "$WORK" >"$cfg"
  "$PUEUED" -c "$cfg" -d >/dev/null 2>&1
  sleep 0.5
  "$PUEUE" -c "$cfg" parallel 2 >/dev/null
  t0=$(now_ns)
  for _ in $(seq "$PUEUE_JOBS"); do "$PUEUE" -c "$cfg" add -- true >/dev/null; done
  "$PUEUE" -c "$cfg" wait >/dev/null 2>&1 || true
  t1=$(now_ns)
  "$PUEUE" -c "$cfg" shutdown >/dev/null 2>&1 || true
  PER[pueue]=$(ms_per "$t0" "$t1" "$PUEUE_JOBS")
else
  echo "(pueue is not installed: skipped)"
fi

echo
echo "| runner | ms per job | ratio to xargs -P2 |"
echo "|---|---:|---:|"
for r in taskd taskd-tmpfs xargs parallel tsp nq pueue; do
  [ -n "${PER[$r]:-}" ] || continue
  ratio=$(awk -v a="${PER[$r]}" -v b="${PER[xargs]}" 'BEGIN { printf "%.2f", a / b }')
  note=""
  [ "$r" = pueue ] && note=" ($PUEUE_JOBS jobs)"
  [ "$r" = taskd ] && note=" (base on $FS)"
  [ "$r" = taskd-tmpfs ] && note=" (base on tmpfs)"
  echo "| $r$note | ${PER[$r]} | $ratio |"
done

echo
echo "## claim + complete (one process each) vs pending queue size"
pair_cost() { # $1 = pending tasks; prints ms per claim+complete pair
  export COORD_SESSION=$("$BIN/session-init" "bench-q$1")
  "$BIN/registry" register a --type worker --pid $$ >/dev/null
  local s0 s1
  s0=$(now_ns)
  seq $(($1 + PAIRS)) | awk '{ printf "{\"id\":\"q%d\",\"payload\":{\"n\":%d}}\n", $1, $1 }' | "$BIN/taskd" submit --batch >/dev/null
  s1=$(now_ns)
  SUBMIT_RATE=$(awk -v a="$s0" -v b="$s1" -v n="$(($1 + PAIRS))" 'BEGIN { printf "%.0f", n / ((b - a) / 1e9) }')
  local t0 t1 id
  t0=$(now_ns)
  for _ in $(seq "$PAIRS"); do
    id=$("$BIN/taskd" claim a | sed 's/^{"id":"\([^"]*\)".*/\1/')
    "$BIN/taskd" complete "$id" --agent a >/dev/null
  done
  t1=$(now_ns)
  PAIR=$(ms_per "$t0" "$t1" "$PAIRS")
}
pair_cost 100
small=$PAIR
pair_cost "$BIG"
big=$PAIR
big_rate=$SUBMIT_RATE
rss=$( { /usr/bin/time -v "$BIN/taskd" claim a >/dev/null; } 2>&1 | awk -F: '/Maximum resident set size/ { gsub(/ /, "", $2); print $2 }')
echo
echo "| pending | ms per claim+complete |"
echo "|---:|---:|"
echo "| 100 | $small |"
echo "| $BIG | $big |"
echo
echo "ratio ($BIG / 100): $(awk -v a="$big" -v b="$small" 'BEGIN { printf "%.2f", a / b }') (target <= 1.5)"
echo
echo "## submit --batch and memory"
echo
echo "- submit --batch of $BIG tasks: $big_rate tasks/s"
echo "- peak RSS of \`taskd claim\` with $BIG pending: ${rss} KiB (target <= 16384)"
