#!/usr/bin/env bash
# Scatter-gather: one job for every agent; the first valid answer wins, the rest stop.
#
#   scripts/patterns/scatter-gather.sh
#
# The job: find a factor of N (default 360007 x 1000003). SOLVERS agents each take one
# slice of the candidates (one task each) and search it. Solver s1 is hasty: it sends a
# guess at once before it searches, so the coordinator has to check every answer.
#
# scatter: the coordinator (this script) submits one task per slice and broadcasts the
#          job (`msgq broadcast`); every solver claims a slice and searches it, looking
#          for a `cancel` message now and then.
# gather:  the coordinator receives answers (`msgq recv --wait`) and checks each; the
#          first valid one completes its task, every other task is cancelled, and a
#          `cancel` broadcast makes every solver stop and unregister.
# The script exits 1 unless exactly one valid answer won and no task is left open.
#
# Settings: SOLVERS (4), N, COORD_BIN, COORD_BASE (see scripts/lib/coord.sh).
set -euo pipefail
. "$(dirname "$0")/../lib/coord.sh"
SOLVERS=${SOLVERS:-4} N=${N:-$((360007 * 1000003))}

eval "$(session-init scatter-gather --export)"
echo "session $COORD_SESSION in $COORD_BASE"
registry register coordinator --type coordinator >/dev/null # a mailbox for the answers

# A solver: register, wait for the job, claim a slice, search it, answer, wait for `cancel`.
solver() {
  local me=$1 job task id n lo hi d found= cancelled=
  registry register "$me" --type solver >/dev/null # this shell is the agent
  job=$(msgq recv "$me" --timeout 60 --ack) || return 1
  n=$(jq .payload.n <<<"$job")
  if task=$(taskd claim "$me"); then
    id=$(jq -r .id <<<"$task") lo=$(jq .payload.lo <<<"$task") hi=$(jq .payload.hi <<<"$task")
    if [ "$me" = s1 ]; then # the hasty one
      msgq send --from "$me" --to coordinator --type answer --payload "{\"task\": \"$id\", \"factor\": $lo}" >/dev/null
    fi
    for ((d = lo; d <= hi; d++)); do
      if ((n % d == 0)); then found=$d; break; fi
      # every 10000 candidates: stop if the job was cancelled
      if ((d % 10000 == 0)) && msgq recv "$me" --ack >/dev/null 2>&1; then cancelled=1; break; fi
    done
    [ -z "$found" ] || msgq send --from "$me" --to coordinator --type answer \
      --payload "{\"task\": \"$id\", \"factor\": $found}" >/dev/null
  fi
  [ -n "$cancelled" ] || msgq recv "$me" --timeout 60 --ack >/dev/null || true
  registry unregister "$me" >/dev/null
}
export -f solver

say "$SOLVERS solvers"
for i in $(seq "$SOLVERS"); do
  bg bash -c "solver s$i"
done
for _ in $(seq 100); do # until they all registered (at most 10 s)
  [ "$(registry list --type solver --status active | wc -l)" -lt "$SOLVERS" ] || break
  sleep 0.1
done
registry list --type solver | jq -c '{id, type, pid, status}'

say "scatter: one task per slice of 2..sqrt(N), and the job to every solver"
root_n=$(awk -v n="$N" 'BEGIN { printf "%d", sqrt(n) }')
for i in $(seq 0 $((SOLVERS - 1))); do
  jq -cn --argjson n "$N" --argjson lo $((2 + i * root_n / SOLVERS)) --argjson hi $(((i + 1) * root_n / SOLVERS + 1)) \
    '{type: "solver", payload: {n: $n, lo: $lo, hi: $hi}}'
done | taskd submit --batch >"$scratch/tasks.jsonl"
jq -c '{id, slice: [.payload.lo, .payload.hi]}' "$scratch/tasks.jsonl"
msgq broadcast --from coordinator --type job --payload "{\"n\": $N}" | jq -c .

say "gather: the first valid answer wins"
winner=
while [ -z "$winner" ] && answer=$(msgq recv coordinator --timeout 120 --ack); do
  IFS=$'\t' read -r agent task factor < <(jq -r '[.from, .payload.task, .payload.factor] | @tsv' <<<"$answer")
  if ((factor > 1 && factor < N && N % factor == 0)); then
    echo "$agent: $factor divides $N: accepted"
    taskd complete "$task" --result "{\"factor\": $factor, \"by\": \"$agent\"}" >/dev/null
    winner=$agent
    state set scatter "" "{\"winner\": \"$agent\", \"factor\": $factor}" >/dev/null
  else
    echo "$agent: $factor does not divide $N: rejected"
  fi
done

say "cancel the others"
for t in $(jq -r .id "$scratch/tasks.jsonl"); do
  taskd cancel "$t" --reason "answered by ${winner:-nobody}" >/dev/null 2>&1 || true # final ones stay as they are
done
msgq broadcast --from coordinator --type cancel --payload "{\"winner\": \"${winner}\"}" | jq -c .
wait_bg || die "a solver failed"
registry unregister coordinator >/dev/null
taskd list | jq -c '{id, status, assigned_to, results, reason}'

# Check the outcome: one winner; of its tasks one completed, the others cancelled.
[ -n "$winner" ] || die "no valid answer"
taskd list | jq -s -e 'map(.status) | (map(select(. == "completed")) | length) == 1
  and all(. == "completed" or . == "cancelled")' >/dev/null || die "tasks left open, or more than one winner"
echo "ok: $winner won; every other solver was cancelled and stopped"
