#!/usr/bin/env bash
# Torture: a mixed workload — message senders and receivers, task workers, state
# incrementers and the healthmon sidecar, all at once — while random processes are
# killed with SIGKILL and restarted. Then everything is drained and checked, Jepsen
# style: every acknowledged send received, every task completed exactly once, the
# counter between its acknowledged and its attempted increments, every JSON file
# parses, no lock held.
#
#   scripts/torture.sh [--quick]      KILLS=N TASKS=N override the sizes
#
# Prints a summary table and exits 1 if any check fails. Not run by CI (minutes long).
set -euo pipefail
. "$(dirname "$0")/lib/coord.sh"

quick=0
[ "${1:-}" = --quick ] && quick=1
KILLS=${KILLS:-$([ $quick = 1 ] && echo 60 || echo 250)}
TASKS=${TASKS:-$([ $quick = 1 ] && echo 300 || echo 2000)}
logs=$scratch/logs
mkdir -p "$logs"

eval "$(session-init torture --export)"
say "session $COORD_SESSION, $TASKS tasks, $KILLS kills"
for r in r1 r2; do registry register "$r" --type receiver --pid $$ >/dev/null; done
seq "$TASKS" | jq -c '{id: "t\(.)", max_attempts: 1000}' | taskd submit --batch >/dev/null

# The roles. Each runs until killed; "acknowledged" lines are written only after the
# operation returned success, "tried" lines before it starts.
sender() { # $1 = sender number, $2 = recipient
  local n=0 key
  while :; do
    n=$((n + 1)); key="s$1-$$-$n"
    msgq send --from coordinator --to "$2" --type t --payload "{\"k\":\"$key\"}" >/dev/null && echo "$key" >>"$logs/sent"
  done
}
receiver() { # $1 = agent
  local line id
  while :; do
    msgq recv "$1" --wait --timeout 1 --max 20 2>/dev/null | while read -r line; do
      echo "$line" | jq -r .payload.k >>"$logs/received"
      id=$(echo "$line" | jq -r .id)
      msgq ack "$1" "$id" >/dev/null 2>&1 || true
    done
  done
}
worker() { # $1 = agent
  exec taskd work "$1" --idle-exit 600 -- true >>"$logs/work.$1" 2>&1
}
incrementer() {
  while :; do
    echo 1 >>"$logs/tried"
    state update global -- jq '.counter = ((.counter // 0) + 1)' >/dev/null 2>&1 && echo 1 >>"$logs/acked"
  done
}
sidecar() {
  exec healthmon --interval 0.5 --sample-every 0 >>"$logs/healthmon" 2>&1
}

roles=("sender 1 r1" "sender 2 r2" "receiver r1" "receiver r2" "worker w1" "worker w2" "worker w3"
  "incrementer" "incrementer" "sidecar")
declare -a pid
start_role() { bg bash -c "$(declare -f sender receiver worker incrementer sidecar); logs=$logs; ${roles[$1]}"; pid[$1]=$!; }
for i in "${!roles[@]}"; do start_role "$i"; done

say "killing a random process $KILLS times"
kills=0
while [ "$kills" -lt "$KILLS" ]; do
  sleep "0.0$((RANDOM % 9 + 1))"
  i=$((RANDOM % ${#roles[@]}))
  # The group, or the process itself if it has not called setsid(2) yet.
  kill -KILL -- "-${pid[$i]}" 2>/dev/null || kill -KILL "${pid[$i]}" 2>/dev/null || true
  wait "${pid[$i]}" 2>/dev/null || true
  kills=$((kills + 1))
  start_role "$i"
done

say "stopping (SIGKILL, like every other stop here), requeueing and draining"
for p in "${coord_pids[@]}"; do kill -KILL -- "-$p" 2>/dev/null || kill -KILL "$p" 2>/dev/null || true; done
for p in "${coord_pids[@]}"; do wait "$p" 2>/dev/null || true; done
coord_pids=()
# Each drain step is bounded: a step that hangs is a failed check, named below.
stuck=()
step() { # $1 = name, rest = command
  local rc=0
  timeout 60 "${@:2}" || rc=$?
  [ "$rc" = 124 ] && stuck+=("$1")
  return 0
}
for w in w1 w2 w3; do step "taskd requeue --agent $w" taskd requeue --agent "$w" --reason "torture stopped" >/dev/null 2>&1; done
step "taskd requeue --expired" taskd requeue --expired >/dev/null
step "taskd work drainer" taskd work drainer --idle-exit 2 -- true >/dev/null
for r in r1 r2; do
  step "msgq requeue $r" msgq requeue "$r" --max-deliveries 1000 >/dev/null
  step "msgq recv $r" sh -c "msgq recv $r --max 1000000 --ack 2>/dev/null | jq -r .payload.k >>'$logs/received'"
done

say "checking"
touch "$logs/sent" "$logs/received" "$logs/tried" "$logs/acked"
sent=$(sort -u "$logs/sent" | wc -l)
lost=$(comm -23 <(sort -u "$logs/sent") <(sort -u "$logs/received") | wc -l)
redelivered=$(($(wc -l <"$logs/received") - $(sort -u "$logs/received" | wc -l)))
completed=$(taskd list --status completed | wc -l)
dup_tasks=$(cat "$COORD_BASE/$COORD_SESSION"/results/*.jsonl 2>/dev/null | jq -r '.tasks[] | select(.status == "completed") | .id' | sort | uniq -d | wc -l)
counter=$(state get global /counter 2>/dev/null || echo 0)
tried=$(wc -l <"$logs/tried"); acked=$(wc -l <"$logs/acked")
unparsable=0
while IFS= read -r -d '' f; do jq empty "$f" 2>/dev/null || unparsable=$((unparsable + 1)); done \
  < <(find "$COORD_BASE/$COORD_SESSION" -name '*.json' -print0)
held=0
for l in "$COORD_BASE/$COORD_SESSION"/locks/*.lock; do flock -n "$l" true || held=$((held + 1)); done
stale=$(cat "$logs"/work.* 2>/dev/null | grep -c "claim lost" || true)

fail=0
check() { if [ "$2" = ok ]; then printf '| %s | %s | ok |\n' "$1" "$3"; else printf '| %s | %s | **FAILED** |\n' "$1" "$3"; fail=1; fi; }
echo
echo "| check | figure | |"
echo "|---|---|---|"
check "kills (SIGKILL of a random process)" ok "$kills"
check "drain steps that hung (over 60 s)" "$([ ${#stuck[@]} = 0 ] && echo ok)" "${#stuck[@]}${stuck[*]:+: ${stuck[*]}}"
check "messages acknowledged by send" ok "$sent"
check "acknowledged messages lost" "$([ "$lost" = 0 ] && echo ok)" "$lost"
check "messages delivered more than once (allowed: at-least-once)" ok "$redelivered"
check "tasks completed" "$([ "$completed" = "$TASKS" ] && echo ok)" "$completed of $TASKS"
check "tasks completed more than once" "$([ "$dup_tasks" = 0 ] && echo ok)" "$dup_tasks"
check "stale completions refused (claim lost)" ok "$stale"
check "counter within [acknowledged, attempted]" "$([ "$acked" -le "$counter" ] && [ "$counter" -le "$tried" ] && echo ok)" "$acked ≤ $counter ≤ $tried"
check "unparsable JSON files" "$([ "$unparsable" = 0 ] && echo ok)" "$unparsable"
check "locks still held" "$([ "$held" = 0 ] && echo ok)" "$held"
exit $fail
