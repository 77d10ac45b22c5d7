#!/usr/bin/env bash
# The end-to-end demo: build the tools (release), then run one real session.
#
#   scripts/demo.sh
#
# A healthmon sidecar watches four `taskd work` agents that count the words of the
# project's docs (map-reduce, see scripts/patterns/map-reduce.sh). Half-way through, one
# agent is killed with `kill -9`: healthmon notices, its task goes back to the queue and
# another agent finishes it. Then the report (terminal and HTML), the quality gates, and
# the archive. The session stays on disk for a look; nothing keeps running.
#
# Settings: CHUNK_LINES (20), MAP_DELAY (0.2 s per map task), COORD_BIN (use these
# tools, no build), COORD_BASE (where the session goes; default a new directory in /tmp).
set -euo pipefail
. "$(dirname "$0")/lib/coord.sh"
. "$root/scripts/lib/wordcount.sh"
CHUNK_LINES=${CHUNK_LINES:-20}
export MAP_DELAY=${MAP_DELAY:-0.2}
inputs=("$root"/docs/*.md)
started=$SECONDS

say "session-init demo"
eval "$(session-init demo --export)"
echo "session $COORD_SESSION in $COORD_BASE"
dir=$COORD_BASE/$COORD_SESSION

say "healthmon: the sidecar that requeues the work of dead agents (checks every second)"
bg healthmon --interval 1 >"$scratch/healthmon.out"
healthmon_pid=$!

say "submit: word count of ${#inputs[@]} docs, one map task per $CHUNK_LINES lines, then a reduce"
maps=$(wordcount_submit "$CHUNK_LINES" "${inputs[@]}")
echo "$maps map tasks + 1 reduce task"

say "four agents: taskd work w1..w4"
declare -A worker
for i in 1 2 3 4; do
  bg taskd work "w$i" --idle-exit 1 -- bash -c wordcount_handle >"$scratch/w$i.out"
  worker[w$i]=$!
done

# Half-way: when the first half of the map tasks is done (taskd wait blocks, no polling).
# shellcheck disable=SC2046
taskd wait $(seq -f 'map-%g' $((maps / 2))) >/dev/null
taskd progress | jq -c '{completed, claimed, pending, operation_progress}'
registry list | jq -r '"  \(.id)  \(.type)  pid \(.pid)  \(.status)  tasks \(.assigned_tasks)"'

say "kill -9 one agent while it runs a task"
# The task claimed last has the most work left.
IFS=$'\t' read -r agent task < <(taskd list --status claimed |
  jq -rs 'max_by(.assigned_at) | [.assigned_to, .id] | @tsv')
[ -n "${task:-}" ] || die "no agent held a task half-way"
echo "$agent holds $task: kill -9 $agent (pid ${worker[$agent]}) and the command it runs"
kill -9 -- "-${worker[$agent]}"
wait "${worker[$agent]}" 2>/dev/null || true
unset "worker[$agent]"

# healthmon checks every second; give it up to 30.
for _ in $(seq 300); do
  grep -qs '"agent_dead"' "$dir/metrics/events.jsonl" && break
  sleep 0.1
done
echo "healthmon saw it:"
grep '"agent_dead"' "$dir/metrics/events.jsonl" | jq -c '{event, agent, reason, requeued_tasks}' ||
  die "healthmon did not report $agent dead"
taskd wait "$task" >/dev/null # requeued by healthmon, then finished by another agent
echo "and $task finished elsewhere:"
taskd show "$task" | jq -c '{id, status, attempts, completed_by: .assigned_to,
  earlier: [.errors[] | {agent, error}]}'

say "taskd wait: every task final"
taskd wait --timeout 300 | jq -c .
for a in "${!worker[@]}"; do wait "${worker[$a]}"; done # the agents leave after 1 s idle
taskd show reduce | jq -c '.results'
expected=$(wordcount_direct "${inputs[@]}")
[ "$(taskd show reduce | jq .results.words)" = "$expected" ] || die "the word count is not $expected"
taskd progress >/dev/null

say "aggregate --format md"
aggregate --format md
report=$COORD_BASE/$COORD_SESSION.html
aggregate --format html --output "$report"

say "stop healthmon, archive the session"
kill -TERM "$healthmon_pid"
wait "$healthmon_pid"
archive | jq -c '{archive, size, entries, status}'

say "aggregate --gates"
aggregate --gates --format md | sed -n '/[Gg]ate/,$p'

echo
echo "demo: done in $((SECONDS - started)) s"
echo "  session  $dir"
echo "  report   $report"
echo "  archive  $COORD_BASE/$COORD_SESSION.tar.gz"
