#!/usr/bin/env bash
# Map-reduce: count the words of some text files with a pool of agents.
#
#   scripts/patterns/map-reduce.sh [FILE]...     (default: the project's docs/*.md)
#
# map:    every file is cut into chunks of CHUNK_LINES lines; each chunk is one task.
#         WORKERS agents (`taskd work`) claim chunks and count their words; each count
#         is stored with its task and appended to the agent's results/<agent>.jsonl.
# reduce: one more task, submitted `--after` every map task, adds the counts up into
#         state/wordcount.json; its own result is the summary.
# The steps are in scripts/lib/wordcount.sh. The script exits 1 unless the total equals
# a direct count of the same files.
#
# Settings: WORKERS (4), CHUNK_LINES (40), MAP_DELAY (seconds each map task sleeps, 0),
# COORD_BIN, COORD_BASE (see scripts/lib/coord.sh).
set -euo pipefail
. "$(dirname "$0")/../lib/coord.sh"
. "$root/scripts/lib/wordcount.sh"
WORKERS=${WORKERS:-4} CHUNK_LINES=${CHUNK_LINES:-40}
export MAP_DELAY=${MAP_DELAY:-0}
if [ $# -eq 0 ]; then set -- "$root"/docs/*.md; fi

eval "$(session-init map-reduce --export)"
echo "session $COORD_SESSION in $COORD_BASE"

say "submit: one map task per $CHUNK_LINES-line chunk of $# files, one reduce task after them"
echo "$(wordcount_submit "$CHUNK_LINES" "$@") map tasks"
taskd show reduce | jq -c '{id, status, dependencies: (.dependencies | length)}'

say "$WORKERS workers claim and run the tasks"
for i in $(seq "$WORKERS"); do
  bg taskd work "w$i" --idle-exit 1 -- bash -c wordcount_handle >"$scratch/w$i.out"
done
taskd wait --timeout 600 | jq -c .
wait_bg # the workers leave (and unregister) after 1 s without a task
for i in $(seq "$WORKERS"); do
  echo "w$i ran $(jq -s 'map(select(.status == "completed")) | length' "$scratch/w$i.out") tasks"
done

say "the result of the reduce task (the totals are in state/wordcount.json)"
summary=$(taskd show reduce | jq -c .results)
echo "$summary"

# Check the outcome: the reduced total equals a direct count of the same files.
expected=$(wordcount_direct "$@")
[ "$(jq .words <<<"$summary")" = "$expected" ] || die "reduced $summary, a direct count gives $expected words"
[ "$(state get wordcount | jq add)" = "$expected" ] || die "state/wordcount.json does not add up to $expected"
echo "ok: $expected words, as a direct count gives"
