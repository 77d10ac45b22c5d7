#!/usr/bin/env bash
# Pipeline: four stages of agent pools, each stage starting when the previous one is done.
#
#   scripts/patterns/pipeline.sh [DIR]...        (default: the project's docs and scripts)
#
# discovery       one task per DIR: list its files            -> state/discovery.json
# analysis        one task per file: count lines and words    -> state/analysis.json
# transformation  one task per DIR: add its files up          -> state/transformation.json
# validation      one task per DIR: check the sums against the file counts
#
# Each stage has its own pool of POOL agents (`taskd work --type STAGE`, so they take only
# that stage's tasks). The coordinator (this script) submits a stage's tasks, waits for
# them with `taskd wait`, then builds the next stage's tasks from the state file the stage
# wrote. state/global.json's `phase` follows the stages and `phase_history` keeps each
# change with its time. The script exits 1 if a stage fails, a check fails, or the
# stages did not run one after the other.
#
# Settings: POOL (2), COORD_BIN, COORD_BASE (see scripts/lib/coord.sh).
set -euo pipefail
. "$(dirname "$0")/../lib/coord.sh"
POOL=${POOL:-2}
stages=(discovery analysis transformation validation)
if [ $# -eq 0 ]; then set -- "$root/docs" "$root/scripts"; fi

eval "$(session-init pipeline --export)"
echo "session $COORD_SESSION in $COORD_BASE"

# The command every agent runs: the task's payload says its stage and its input. Each
# stage adds its output to the stage's state file under that key's lock (several agents
# write at once), and prints a short result for the task record.
stage_handle() {
  local p
  p=$(jq -c .payload)
  case $(jq -r .stage <<<"$p") in
    discovery)
      local dir files
      dir=$(jq -r .dir <<<"$p")
      files=$(find "$dir" -type f | sort | jq -Rn '[inputs]')
      state update discovery -- jq --arg d "$dir" --argjson f "$files" '(. // {}) | .[$d] = $f' >/dev/null
      jq -n --argjson f "$files" '{files: ($f | length)}'
      ;;
    analysis)
      local file counts
      file=$(jq -r .file <<<"$p")
      counts=$(wc -l -w <"$file" | jq -Rc 'split(" ") | map(select(. != "") | tonumber) | {lines: .[0], words: .[1]}')
      state update analysis -- jq --arg f "$file" --argjson c "$counts" '(. // {}) | .[$f] = $c' >/dev/null
      echo "$counts"
      ;;
    transformation)
      local dir sum
      dir=$(jq -r .dir <<<"$p")
      sum=$(state get analysis | jq -c --arg d "$dir/" '[to_entries[] | select(.key | startswith($d)) | .value]
        | {files: length, lines: (map(.lines) | add), words: (map(.words) | add)}')
      state update transformation -- jq --arg d "$dir" --argjson s "$sum" '(. // {}) | .[$d] = $s' >/dev/null
      echo "$sum"
      ;;
    validation)
      local dir
      dir=$(jq -r .dir <<<"$p")
      jq -n --arg d "$dir" --argjson disc "$(state get discovery)" --argjson an "$(state get analysis)" \
        --argjson tr "$(state get transformation)" '
        ($disc[$d]) as $files | ($tr[$d]) as $sum
        | {dir: $d,
           ok: ($sum.files == ($files | length)
                and $sum.lines == ([$files[] | $an[.].lines] | add)
                and $sum.words == ([$files[] | $an[.].words] | add))}'
      ;;
  esac
}
export -f stage_handle

# set_phase P: state/global.json's phase becomes P, and the change is kept in phase_history.
set_phase() {
  state update global -- jq -c --arg p "$1" --arg at "$(date -u +%FT%T.%3NZ)" \
    '.phase = $p | .phase_history += [{phase: $p, at: $at}]' | jq -r '"phase: \(.phase)"'
}

# run_stage STAGE: submit STAGE's tasks (JSON Lines of payloads on stdin), wait for them.
run_stage() {
  say "$1"
  set_phase "$1"
  jq -c --arg s "$1" '{type: $s, payload: (. + {stage: $s})}' | taskd submit --batch >"$scratch/$1.jsonl"
  echo "$(wc -l <"$scratch/$1.jsonl") $1 tasks"
  # shellcheck disable=SC2046 # the stage's task ids
  taskd wait --timeout 600 $(jq -r .id "$scratch/$1.jsonl") | jq -c . || die "stage $1 failed"
}

say "a pool of $POOL agents per stage"
for s in "${stages[@]}"; do
  for i in $(seq "$POOL"); do
    bg taskd work "$s-$i" --type "$s" -- bash -c stage_handle >/dev/null
  done
done

printf '%s\n' "$@" | jq -R '{dir: .}' | run_stage discovery
state get discovery | jq -c 'to_entries[] | .value[] | {file: .}' | run_stage analysis
state get discovery | jq -c 'keys[] | {dir: .}' | run_stage transformation
state get transformation | jq -c 'keys[] | {dir: .}' | run_stage validation
set_phase done
stop_bg # the pools: each agent unregisters as it stops

say "outcome"
state get transformation | jq -c 'to_entries[] | {dir: .key} + .value'
state get global | jq -r '.phase_history[] | "  \(.at)  \(.phase)"'
taskd list --status completed | jq -s -e 'map(select(.payload.stage == "validation") | .results.ok) | all' >/dev/null ||
  die "validation failed"

# Check the order: every task of a stage was claimed after the previous stage's last one
# completed, and the phases were entered in the stages' order.
taskd list --status completed | jq -s -e --argjson order "$(printf '%s\n' "${stages[@]}" | jq -Rn '[inputs]')" '
  group_by(.payload.stage) | map({key: .[0].payload.stage,
    value: {first: (map(.assigned_at) | min), last: (map(.completed_at) | max)}}) | from_entries as $t
  | [range(1; $order | length) | $t[$order[.]].first > $t[$order[. - 1]].last] | all' >/dev/null ||
  die "a stage started before the previous one ended"
state get global | jq -e --argjson order "$(printf '%s\n' "${stages[@]}" done | jq -Rn '[inputs]')" \
  '[.phase_history[].phase] == $order' >/dev/null || die "phase_history is not the stages in order"
echo "ok: ${#stages[@]} stages in order, every check passed"
