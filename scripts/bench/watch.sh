#!/usr/bin/env bash
# watch suite: `healthmon status --watch` on a session of 1000 live agents and 100,000
# tasks in every status: the time to its first JSON line, and its CPU use over a watch
# with --interval 1, with stdout a pipe (JSON Lines) and under a pseudo-terminal (the
# live view, through `script` from util-linux; skipped when it is not installed).
#
#   bash scripts/bench/watch.sh        QUICK=1 for the small sizes
SUITE=watch
cd "$(dirname "$0")/../.."
. scripts/bench/_lib.sh

agents=$(pick 1000 200)       # live registered agents (sleep processes)
tasks=$(pick 100000 10000)    # tasks submitted
done_n=$(pick 3000 500)       # completed by two `taskd work` workers
held=$(pick 200 50)           # claimed and held by live agents
watch=$(pick 12 4)            # seconds the CPU time is watched for
starts=$(pick 15 5)           # starts timed for the first line

pids=()
cleanup() {
  [ ${#pids[@]} -eq 0 ] || kill "${pids[@]}" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# CPU time of all of a process's threads in ns (schedstat is exact; stat counts 10 ms ticks).
cpu_ns() {
  local t sum=0
  for t in /proc/"$1"/task/*/schedstat; do sum=$((sum + $(cut -d' ' -f1 "$t"))); done
  echo "$sum"
}

# --- the session -------------------------------------------------------------------------
progress "a session of $agents agents and $tasks tasks"
S=$("$BIN/session-init" watch)
export COORD_SESSION=$S
for i in $(seq "$agents"); do
  sleep 900 &
  pids+=($!)
  "$BIN/registry" register "a$i" --type worker --pid "$!" >/dev/null
done
# One task no agent can take; the last 1000 tasks wait for it (blocked for good).
blocked=1000
awk -v n="$tasks" -v b="$blocked" 'BEGIN {
  print "{\"id\":\"gate\",\"type\":\"nobody\"}"
  for (i = 1; i < n - b; i++) printf("{\"id\":\"t%d\",\"max_attempts\":1,\"payload\":{\"n\":%d}}\n", i, i)
  for (i = 0; i < b; i++) printf("{\"id\":\"w%d\",\"dependencies\":[\"gate\"]}\n", i)
}' >"$WORK/tasks.jsonl"
"$BIN/taskd" submit --batch <"$WORK/tasks.jsonl" >/dev/null
progress "completing $done_n, failing 50, cancelling 50, claiming $held"
half=$((done_n / 2))
"$BIN/taskd" work worker1 --max-tasks "$half" -- true >/dev/null &
w1=$!
"$BIN/taskd" work worker2 --max-tasks "$((done_n - half))" -- true >/dev/null
wait "$w1"
"$BIN/taskd" work worker3 --max-tasks 50 -- false >/dev/null
for i in $(seq 50); do "$BIN/taskd" cancel "t$((tasks - blocked - i))" >/dev/null; done
for i in $(seq "$held"); do "$BIN/taskd" claim "a$i" >/dev/null; done
# Messages waiting in a tenth of the mailboxes, and a long event log.
awk -v a="$agents" 'BEGIN { for (i = 0; i < 2000; i++) printf("{\"to\":\"a%d\",\"from\":\"bench\",\"type\":\"note\",\"payload\":{\"i\":%d}}\n", (i % (a / 10)) * 10 + 1, i) }' \
  | "$BIN/msgq" send --batch >/dev/null
awk 'BEGIN { for (i = 0; i < 20000; i++) printf("{\"ts\":\"2026-01-01T00:00:00.000Z\",\"event\":\"warning\",\"agent\":\"a%d\",\"reason\":\"bench line %d\"}\n", i % 1000, i) }' \
  >>"$COORD_BASE/$S/metrics/events.jsonl"
counts=$("$BIN/healthmon" status --json | jq -c '.tasks | {pending, blocked, claimed, completed, failed, cancelled}')
progress "tasks: $counts"

# --- time to the first line ----------------------------------------------------------------
progress "time to the first JSON line, $starts starts"
bench_hyperfine "$WORK/first.json" --warmup 2 --runs "$starts" \
  "$BIN/healthmon status --watch --json --count 1"
read -r first lo hi < <(hf "$WORK/first.json" 0)
bench_hyperfine "$WORK/once.json" --warmup 2 --runs "$starts" "$BIN/healthmon status --json"
read -r once olo ohi < <(hf "$WORK/once.json" 0)

# --- CPU over a watch ------------------------------------------------------------------------
# watch_cpu PID: CPU % of one core of PID over $watch s, after 1.5 s to settle.
watch_cpu() {
  local pid=$1 c0 c1 t0
  sleep 1.5
  c0=$(cpu_ns "$pid")
  t0=$(now_ns)
  sleep "$watch"
  c1=$(cpu_ns "$pid")
  awk -v c="$((c1 - c0))" -v w="$(ms_since "$t0")" 'BEGIN { printf("%.3f", c / 1e6 / w * 100) }'
}
progress "CPU of --watch --interval 1 into a pipe, $watch s"
"$BIN/healthmon" status --watch --interval 1 >"$WORK/lines.jsonl" &
hm=$!
pids+=("$hm")
pipe_cpu=$(watch_cpu "$hm")
kill "$hm"
wait "$hm" || { echo "watch.sh: healthmon status --watch did not exit 0 on SIGTERM" >&2; exit 1; }
lines=$(wc -l <"$WORK/lines.jsonl")

tty_cpu=
if command -v script >/dev/null; then
  progress "CPU of --watch --interval 1 under a pseudo-terminal, $watch s"
  script -qfc "stty rows 50 cols 160; exec $BIN/healthmon status --watch --interval 1" /dev/null \
    </dev/null >"$WORK/tty.out" &
  sp=$!
  pids+=("$sp")
  hm=
  for _ in $(seq 200); do
    hm=$(pgrep -P "$sp" || true)
    [ -n "$hm" ] && [ "$(cat "/proc/$hm/comm" 2>/dev/null)" = healthmon ] && break
    sleep 0.01
  done
  [ -n "$hm" ] || { echo "watch.sh: no healthmon under script" >&2; exit 1; }
  tty_cpu=$(watch_cpu "$hm")
  kill "$hm"
  wait "$sp" || true
  grep -q $'\e\[?1049l' "$WORK/tty.out" || { echo "watch.sh: the terminal was not given back" >&2; exit 1; }
fi

echo "### healthmon status --watch"
echo
echo "A session of $(thousands "$agents") live agents and $(thousands "$tasks") tasks ($counts), 2000 queued messages in $((agents / 10)) mailboxes, 20,000 lines in \`metrics/events.jsonl\`. The first line is the whole run of \`--count 1\` (hyperfine, $starts runs); CPU time from \`/proc/PID/task/*/schedstat\` over $watch s of \`--interval 1\`:"
echo
echo "| measure | value | target |"
echo "|---|---|---|"
echo "| \`status --watch --json --count 1\`: start to first JSON line and exit, ms | $(mmr "$first" "$lo" "$hi") | < 50 |"
echo "| \`status --json\` (one overview, for comparison), ms | $(mmr "$once" "$olo" "$ohi") | informational |"
echo "| CPU % of one core, \`--watch --interval 1\`, stdout a pipe ($lines lines) | $pipe_cpu | < 2 |"
if [ -n "$tty_cpu" ]; then
  echo "| CPU % of one core, \`--watch --interval 1\` under a pty (\`script\`, 160×50) | $tty_cpu | < 2 |"
else
  echo "| CPU % of one core under a pty | skipped: \`script\` (util-linux) is not installed | < 2 |"
fi
summary "\`status --watch\`: first JSON line, $(thousands "$agents") agents, $(thousands "$tasks") tasks" "$(num "$first") ms" "< 50 ms" "$(verdict "$first" "<" 50)"
summary "\`status --watch --interval 1\` CPU, stdout a pipe" "$pipe_cpu% of one core" "< 2% of one core" "$(verdict "$pipe_cpu" "<" 2)"
if [ -n "$tty_cpu" ]; then
  summary "\`status --watch --interval 1\` CPU, under a pty" "$tty_cpu% of one core" "< 2% of one core" "$(verdict "$tty_cpu" "<" 2)"
else
  skipped script "\`status --watch\` CPU under a pty"
fi
