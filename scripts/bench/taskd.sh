#!/usr/bin/env bash
# taskd suite:
#   1. JOBS no-op jobs through two `taskd work` workers against xargs -P2, GNU parallel
#      -j2, tsp -S 2, nq (two queues) and pueue (parallel 2; fewer jobs, it is slow), as
#      ms per job, REPS runs of each, the runners interleaved;
#   2. one `taskd claim` + one `taskd complete` process with 100 vs BIG tasks pending;
#   3. `taskd submit --batch` of BIG tasks, tasks per second;
#   4. peak RSS of `taskd claim` with BIG tasks pending.
#
#   bash scripts/bench/taskd.sh        QUICK=1 for the small sizes
SUITE=taskd
cd "$(dirname "$0")/../.."
. scripts/bench/_lib.sh

jobs=$(pick 2000 300)        # no-op jobs per run
pueue_jobs=$(pick 50 10)     # pueue took about 160 ms per job in earlier runs
big=$(pick 100000 10000)     # the long queue
pairs=$(pick 100 50)         # claim + complete pairs per run
reps=3
idle=0.05                    # the workers' --idle-exit, taken off their time

SHM=
TSP_SOCKETS=()
PUEUE_CFG=
cleanup() {
  local s
  for s in "${TSP_SOCKETS[@]}"; do TS_SOCKET=$s tsp -K >/dev/null 2>&1 || true; done
  [ -z "$PUEUE_CFG" ] || "$PUEUE" -c "$PUEUE_CFG" shutdown >/dev/null 2>&1 || true
  rm -rf "$WORK" ${SHM:+"$SHM"}
}
trap cleanup EXIT

# --- peers ---------------------------------------------------------------------------
runners=(taskd)
if [ -d /dev/shm ] && [ -w /dev/shm ] && [ "$(fs_of /dev/shm)" = tmpfs ]; then
  SHM=$(mktemp -d /dev/shm/coord-bench-taskd.XXXXXX)
  runners+=(taskd-tmpfs)
fi
if command -v xargs >/dev/null; then runners+=(xargs); else skipped xargs "\`taskd work\` ×2 ÷ \`xargs -P2\`"; fi
if parallel --version 2>/dev/null | grep -q 'GNU parallel'; then runners+=(parallel); else skipped "GNU parallel" "\`parallel -j2\` ÷ \`taskd work\` ×2"; fi
if command -v tsp >/dev/null; then runners+=(tsp); else skipped "task-spooler (tsp)" "\`tsp -S 2\` ÷ \`taskd work\` ×2"; fi
if command -v nq >/dev/null; then runners+=(nq); else skipped nq "\`nq\` ÷ \`taskd work\` ×2"; fi
PUEUE=$(command -v pueue || echo "$HOME/.cargo/bin/pueue")
PUEUED=$(command -v pueued || echo "$HOME/.cargo/bin/pueued")
if [ -x "$PUEUE" ] && [ -x "$PUEUED" ]; then
  PUEUE_CFG=$WORK/pueue.yml
  printf 'shared:\n  pueue_directory: %s/pueue\n  runtime_directory: %s/pueue\n' "$WORK" "$WORK" >"$PUEUE_CFG"
  "$PUEUED" -c "$PUEUE_CFG" -d >/dev/null 2>&1 || true
  for _ in $(seq 100); do "$PUEUE" -c "$PUEUE_CFG" status >/dev/null 2>&1 && break; sleep 0.05; done
  if "$PUEUE" -c "$PUEUE_CFG" parallel 2 >/dev/null 2>&1; then
    runners+=(pueue)
  else
    summary "pueue ÷ \`taskd work\` ×2" "skipped: its daemon (pueued) did not start" "—" skipped
  fi
else
  PUEUE_CFG=
  skipped pueue "pueue ÷ \`taskd work\` ×2"
fi

# --- one run of each runner; each prints ms per job ------------------------------------------
run_taskd() { # BASE
  local t0 p1 p2 done_n
  export COORD_BASE=$1
  COORD_SESSION=$("$BIN/session-init" bench-work)
  export COORD_SESSION
  seq "$jobs" | awk '{ printf "{\"id\":\"j%d\"}\n", $1 }' | "$BIN/taskd" submit --batch >/dev/null
  t0=$(now_ns)
  "$BIN/taskd" work w1 --idle-exit "$idle" -- true >/dev/null &
  p1=$!
  "$BIN/taskd" work w2 --idle-exit "$idle" -- true >/dev/null &
  p2=$!
  wait "$p1"
  wait "$p2"
  # Each worker exits $idle s after finding the queue empty: that wait is not work.
  awk -v ms="$(ms_since "$t0")" -v idle="$idle" -v n="$jobs" 'BEGIN { printf("%.6f\n", (ms - idle * 1000) / n) }'
  done_n=$(find "$COORD_BASE/$COORD_SESSION/tasks/done" -mindepth 1 -maxdepth 1 | wc -l)
  [ "$done_n" -eq "$jobs" ] || { echo "taskd.sh: taskd completed $done_n of $jobs" >&2; return 1; }
  # Sessions are left for the cleanup at exit: on ext4, creating files right after a
  # mass delete is several times slower (the inode allocator skips recently freed
  # inodes), which would charge one runner for the previous one's deletion.
  unset COORD_SESSION
}
run_xargs() {
  local t0
  t0=$(now_ns)
  seq "$jobs" | xargs -P2 -n1 true
  ms_since "$t0" "$jobs"
}
run_parallel() {
  local t0
  t0=$(now_ns)
  seq "$jobs" | parallel --will-cite -j2 true {}
  ms_since "$t0" "$jobs"
}
run_tsp() {
  local t0 last
  export TS_SOCKET TS_MAXFINISHED=$((jobs + 10)) TS_SAVELIST=
  tsp -S 2 >/dev/null
  t0=$(now_ns)
  for _ in $(seq "$jobs"); do last=$(tsp true); done
  tsp -w "$last" >/dev/null 2>&1 || true
  while [ "$(tsp | grep -c -E 'running|queued' || true)" -gt 0 ]; do sleep 0.005; done
  ms_since "$t0" "$jobs"
  tsp -K >/dev/null 2>&1 || true
}
run_nq() {
  local t0 d=$WORK/nq.$RANDOM i
  mkdir -p "$d.1" "$d.2"
  t0=$(now_ns)
  for i in $(seq "$jobs"); do NQDIR=$d.$((i % 2 + 1)) nq -q true; done
  NQDIR=$d.1 nq -w 2>/dev/null || true
  NQDIR=$d.2 nq -w 2>/dev/null || true
  ms_since "$t0" "$jobs"
  # Left for the cleanup at exit, as taskd's sessions are (see run_taskd).
}
run_pueue() {
  local t0
  t0=$(now_ns)
  for _ in $(seq "$pueue_jobs"); do "$PUEUE" -c "$PUEUE_CFG" add -- true >/dev/null; done
  "$PUEUE" -c "$PUEUE_CFG" wait >/dev/null 2>&1
  ms_since "$t0" "$pueue_jobs"
  "$PUEUE" -c "$PUEUE_CFG" clean >/dev/null 2>&1
}

declare -A SAMPLES PER
for rep in $(seq "$reps"); do
  for r in "${runners[@]}"; do
    progress "no-op jobs, run $rep of $reps: $r"
    sync -f "$WORK" # each run starts with nothing left to write back
    case $r in
      taskd) v=$(run_taskd "$WORK/base") ;;
      taskd-tmpfs) v=$(run_taskd "$SHM/base") ;;
      tsp)
        TS_SOCKET=$WORK/tsp.$rep.sock  # a server of our own, stopped by cleanup if need be
        TSP_SOCKETS+=("$TS_SOCKET")
        v=$(run_tsp)
        ;;
      *) v=$("run_$r") ;;
    esac
    SAMPLES[$r]+="$v "
  done
done
export COORD_BASE=$WORK/base
# shellcheck disable=SC2086 # the samples are split into words on purpose
for r in "${runners[@]}"; do PER[$r]=$(stats ${SAMPLES[$r]}); done
med() { local m; read -r m _ <<<"${PER[$1]}"; echo "$m"; }

echo "### taskd"
echo
echo "No-op jobs (\`true\`), 2 at a time: $jobs jobs per run (pueue: $pueue_jobs), $reps runs of each, the runners taking turns. For taskd the jobs are submitted with \`submit --batch\` first (not timed), then two \`taskd work W -- true\` workers drain the queue, timed until they find it empty; for the peers the time includes handing each job over."
echo
echo "| runner | ms per job, median (min–max) | ÷ \`xargs -P2\` (medians) | taskd on $(fs_of "$WORK") is faster by |"
echo "|---|---|---|---|"
for r in "${runners[@]}"; do
  read -r m lo hi <<<"${PER[$r]}"
  case $r in
    taskd) label="\`taskd work\` ×2, base on $(fs_of "$WORK")" ;;
    taskd-tmpfs) label="\`taskd work\` ×2, base on tmpfs" ;;
    xargs) label="\`xargs -P2\`" ;;
    parallel) label="GNU \`parallel -j2\`" ;;
    tsp) label="\`tsp -S 2\`" ;;
    nq) label="\`nq\`, two queues" ;;
    pueue) label="pueue $("$PUEUE" --version | awk '{ print $2 }'), \`parallel 2\` ($pueue_jobs jobs)" ;;
  esac
  faster=
  case $r in taskd*|xargs) ;; *) faster="$(div "$m" "$(med taskd)")×" ;; esac
  to_xargs=—
  [ -z "${PER[xargs]:-}" ] || to_xargs=$(div "$m" "$(med xargs)")
  echo "| $label | $(mmr "$m" "$lo" "$hi" 3) | $to_xargs | $faster |"
done
if [ -n "${PER[xargs]:-}" ]; then
  x=$(div "$(med taskd)" "$(med xargs)")
  summary "\`taskd work\` ×2 ÷ \`xargs -P2\`, $jobs no-op jobs (base on $(fs_of "$WORK"))" "${x}×" "≤ 1.5×" "$(verdict "$x" "<=" 1.5)"
  if [ -n "${PER[taskd-tmpfs]:-}" ]; then
    x=$(div "$(med taskd-tmpfs)" "$(med xargs)")
    summary "\`taskd work\` ×2 ÷ \`xargs -P2\`, base on tmpfs" "${x}×" "informational" info
  fi
fi
[ -z "${PER[parallel]:-}" ] || { x=$(div "$(med parallel)" "$(med taskd)"); summary "GNU \`parallel -j2\` ÷ \`taskd work\` ×2" "${x}×" "≥ 2×" "$(verdict "$x" ">=" 2)"; }
[ -z "${PER[tsp]:-}" ] || { x=$(div "$(med tsp)" "$(med taskd)"); summary "\`tsp -S 2\` ÷ \`taskd work\` ×2" "${x}×" "≥ 2×" "$(verdict "$x" ">=" 2)"; }
[ -z "${PER[nq]:-}" ] || summary "\`nq\` ÷ \`taskd work\` ×2" "$(div "$(med nq)" "$(med taskd)")×" "informational" info
[ -z "${PER[pueue]:-}" ] || summary "pueue ÷ \`taskd work\` ×2" "$(div "$(med pueue)" "$(med taskd)")×" "informational" info

# --- claim + complete vs queue length; submit --batch; claim's RSS -----------------------
tasks() { # PREFIX N: JSON Lines of N tasks
  awk -v p="$1" -v n="$2" 'BEGIN { for (i = 1; i <= n; i++) printf "{\"id\":\"%s%d\",\"payload\":{\"n\":%d}}\n", p, i, i }'
}
submit_rate() { # N: submits N tasks in one batch into the current session; prints tasks/s
  local t0
  tasks q "$1" >"$WORK/tasks.jsonl"
  sync -f "$WORK"
  t0=$(now_ns)
  "$BIN/taskd" submit --batch <"$WORK/tasks.jsonl" >/dev/null
  awk -v ms="$(ms_since "$t0")" -v n="$1" 'BEGIN { printf("%.0f\n", n / ms * 1000) }'
}
pair_runs() { # N: in a new session with N pending, $reps runs of $pairs claim + complete pairs
  local out id t0 rep
  COORD_SESSION=$("$BIN/session-init" "bench-q$1")
  export COORD_SESSION
  "$BIN/registry" register a --type worker --pid $$ >/dev/null
  RATES+=("$(submit_rate "$1")")
  PAIR_MS=()
  for rep in $(seq "$reps"); do
    # Top the queue up, so that $1 are pending when the run ends.
    tasks "r$rep-" "$pairs" | "$BIN/taskd" submit --batch >/dev/null
    t0=$(now_ns)
    for _ in $(seq "$pairs"); do
      out=$("$BIN/taskd" claim a)
      [[ $out =~ \"id\":\"([^\"]*)\" ]] || { echo "taskd.sh: claim printed $out" >&2; return 1; }
      id=${BASH_REMATCH[1]}
      "$BIN/taskd" complete "$id" --agent a >/dev/null
    done
    PAIR_MS+=("$(ms_since "$t0" "$pairs")")
  done
}
progress "claim + complete with 100 pending"
RATES=()
pair_runs 100
read -r small small_lo small_hi < <(stats "${PAIR_MS[@]}")
RATES=()
progress "claim + complete with $big pending"
pair_runs "$big"
read -r large large_lo large_hi < <(stats "${PAIR_MS[@]}")
rss=()
for _ in $(seq "$reps"); do rss+=("$(peak_rss "$BIN/taskd" claim a)"); done
read -r rss_m rss_lo rss_hi < <(stats "${rss[@]}")
big_session=$COORD_SESSION
for _ in $(seq $((reps - 1))); do
  progress "submit --batch of $big tasks"
  COORD_SESSION=$("$BIN/session-init" bench-submit)
  RATES+=("$(submit_rate "$big")")
  rm -rf "${COORD_BASE:?}/$COORD_SESSION"
done
COORD_SESSION=$big_session
read -r rate rate_lo rate_hi < <(stats "${RATES[@]}")

echo
echo "One \`taskd claim\` and one \`taskd complete\` process per task, $pairs pairs per run, $reps runs; the queue is topped up before each run so that it ends with N pending:"
echo
echo "| pending | ms per claim + complete, median (min–max) |"
echo "|---|---|"
echo "| 100 | $(mmr "$small" "$small_lo" "$small_hi" 3) |"
echo "| $(thousands "$big") | $(mmr "$large" "$large_lo" "$large_hi" 3) |"
echo
echo "| measurement | median (min–max) | target |"
echo "|---|---|---|"
echo "| \`submit --batch\` of $(thousands "$big") tasks, tasks/s ($reps runs) | $(thousands "$rate") ($(thousands "$rate_lo")–$(thousands "$rate_hi")) | |"
echo "| peak RSS of \`taskd claim\` with $(thousands "$big") pending, KiB ($reps runs) | $(thousands "$rss_m") ($(thousands "$rss_lo")–$(thousands "$rss_hi")) | ≤ 16 MiB |"

x=$(div "$large" "$small")
summary "claim + complete, $(thousands "$big") ÷ 100 pending" "${x}×" "≤ 1.5×" "$(verdict "$x" "<=" 1.5)"
summary "\`submit --batch\` of $(thousands "$big") tasks" "$(thousands "$rate") tasks/s" "informational" info
summary "peak RSS of \`claim\` with $(thousands "$big") pending (largest of $reps)" "$(thousands "$rss_hi") KiB" "≤ 16 MiB" "$(verdict "$rss_hi" "<=" 16384)"
