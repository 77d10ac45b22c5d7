# Sourced by scripts/patterns/map-reduce.sh and scripts/demo.sh: the word count as
# tasks. A word is a run of ASCII letters and digits, lower-cased.

# wordcount_handle: the command every worker runs (`taskd work ... -- bash -c
# wordcount_handle`). It gets the task JSON on stdin; the payload says which step it is.
# What it prints (JSON) becomes the task's result.
wordcount_handle() {
  local task step
  task=$(cat)
  step=$(jq -r .payload.step <<<"$task")
  case $step in
    map) # count the words of lines FROM..TO of FILE: {"word": count, ...}
      sleep "${MAP_DELAY:-0}"
      jq -r '.payload | "\(.from),\(.to)p\t\(.file)"' <<<"$task" | {
        IFS=$'\t' read -r range file
        sed -n "$range" "$file"
      } | tr -cs 'A-Za-z0-9' '\n' | tr 'A-Z' 'a-z' |
        jq -Rn 'reduce (inputs | select(. != "")) as $w ({}; .[$w] += 1)'
      ;;
    reduce) # add up the results of every map task into state/wordcount.json, under its lock
      state update wordcount -- bash -c 'taskd list --status completed |
        jq -n "reduce (inputs | select(.payload.step == \"map\") | .results | to_entries[])
                 as \$e ({}; .[\$e.key] += \$e.value)"' >/dev/null
      state get wordcount |
        jq -c '{words: (add // 0), distinct: length,
                top: (to_entries | sort_by(-.value, .key) | .[:5] | map([.key, .value]))}'
      ;;
    *) echo "unknown step $step" >&2; return 2 ;;
  esac
}
export -f wordcount_handle

# wordcount_submit CHUNK_LINES FILE...: one map task per chunk of every file (ids map-1,
# map-2, ...), then the reduce task (id reduce) that runs once they all completed.
# Prints the number of map tasks.
wordcount_submit() {
  local chunk=$1 f lines from
  shift
  for f in "$@"; do
    lines=$(awk 'END { print NR }' "$f")
    for ((from = 1; from <= lines; from += chunk)); do
      jq -cn --arg f "$(realpath "$f")" --argjson from "$from" --argjson to "$((from + chunk - 1))" \
        '{payload: {step: "map", file: $f, from: $from, to: $to}}'
    done
  done | jq -c --slurp 'to_entries[] | .value + {id: "map-\(.key + 1)"}' |
    taskd submit --batch >"$scratch/maps.jsonl"
  # shellcheck disable=SC2046 # one --after per map task
  taskd submit --id reduce --payload '{"step": "reduce"}' \
    $(jq -r '"--after \(.id)"' "$scratch/maps.jsonl") >/dev/null
  wc -l <"$scratch/maps.jsonl"
}

# wordcount_direct FILE...: the number of words, counted directly (no tasks).
wordcount_direct() {
  cat "$@" | tr -cs 'A-Za-z0-9' '\n' | grep -c . || true
}
