#!/usr/bin/env bash
# foundation suite: one `state set`, `registry heartbeat` and `state get` as whole
# processes against /bin/true (hyperfine -N); peak RSS of each command; `state update`
# throughput with 8 contending processes against the hand-written shell equivalent
# (flock + jq + mv), repeated REPS times.
#
#   bash scripts/bench/foundation.sh        QUICK=1 for the small sizes
SUITE=foundation
cd "$(dirname "$0")/../.."
. scripts/bench/_lib.sh

runs=$(pick 500 100)      # hyperfine runs per command
per=$(pick 50 5)          # updates per contending process (8 processes)
reps=3                    # repetitions of each contended run
total=$((8 * per))

S=$("$BIN/session-init" bench)
export COORD_SESSION=$S
"$BIN/registry" register w1 --type worker --pid $$ >/dev/null

progress "one process each, $runs runs"
cmds=("/bin/true" "$BIN/state set global /phase x --string" "$BIN/registry heartbeat w1" "$BIN/state get global /phase")
bench_hyperfine "$WORK/h.json" --warmup 20 --runs "$runs" "${cmds[@]}"
read -r t_true _ < <(hf "$WORK/h.json" 0)

echo "### foundation (state, registry)"
echo
echo "One command as a whole process, $runs runs each (\`hyperfine -N\`), wall time:"
echo
echo "| command | median ms (min–max) | × /bin/true (medians) | peak RSS KiB |"
echo "|---|---|---|---|"
rss_max=0
for i in "${!cmds[@]}"; do
  c=${cmds[$i]}
  read -r m lo hi < <(hf "$WORK/h.json" "$i")
  # shellcheck disable=SC2086 # the command line is split into words on purpose
  r=$(peak_rss $c)
  [ "$i" -eq 0 ] || [ "$r" -le "$rss_max" ] || rss_max=$r
  name=${c#"$BIN/"}
  x=$(div "$m" "$t_true")
  echo "| \`$name\` | $(mmr "$m" "$lo" "$hi" 3) | $x | $r |"
  case "$name" in
    "state set"*) summary "\`state set\` ÷ /bin/true" "${x}×" "informational" info ;;
    "registry heartbeat"*) summary "\`registry heartbeat\` ÷ /bin/true" "${x}×" "informational" info ;;
  esac
done
others=
for c in "state update global -- jq .counter=1" "state lock bench -- true" "registry register w2 --type worker --pid $$" "session-init rss"; do
  # shellcheck disable=SC2086
  r=$(peak_rss "$BIN"/$c)
  [ "$r" -le "$rss_max" ] || rss_max=$r
  read -r w1 w2 _ <<<"$c"
  [ "$w1" = session-init ] && label=$w1 || label="$w1 $w2"
  others+="${others:+, }\`$label\` $r"
done
echo
echo "Peak RSS of other commands (KiB): $others."
summary "peak RSS, largest of the commands above" "$(thousands "$rss_max") KiB" "< 8 MiB" "$(verdict "$rss_max" "<" 8192)"

# Contended read-modify-write: 8 processes x $per updates each, every update a separate
# process; once with jq as the command (jq's own start-up dominates) and once with cat
# (an identity update: what is left is the lock, the process and the atomic replace).
contend() { # CMD...: prints the seconds 8 processes take for $per runs each of CMD
  local t0 p pids=()
  t0=$(now_ns)
  for _ in 1 2 3 4 5 6 7 8; do
    (for _ in $(seq "$per"); do "$@" >/dev/null || exit 1; done) &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p" || return 1; done
  awk -v ms="$(ms_since "$t0")" 'BEGIN { print ms / 1000 }'
}
f=$WORK/peer.json
declare -A RATE
lost=0; lost_peer=0
for method in coord-jq shell-jq coord-cat shell-cat; do
  rates=()
  for _ in $(seq "$reps"); do
    "$BIN/state" set global /counter 0
    echo '{"counter": 0}' >"$f"
    case $method in
      coord-jq) t=$(contend "$BIN/state" update global -- jq '.counter += 1') ;;
      shell-jq) t=$(contend flock "$f.lock" sh -c "jq '.counter += 1' '$f' > '$f.tmp' && mv '$f.tmp' '$f'") ;;
      coord-cat) t=$(contend "$BIN/state" update global -- cat) ;;
      shell-cat) t=$(contend flock "$f.lock" sh -c "cat '$f' > '$f.tmp' && mv '$f.tmp' '$f'") ;;
    esac
    case $method in
      coord-jq) lost=$((lost + total - $("$BIN/state" get global /counter))) ;;
      shell-jq) lost_peer=$((lost_peer + total - $(jq .counter "$f"))) ;;
      coord-cat) [ "$("$BIN/state" get global /counter)" = 0 ] || { echo "foundation.sh: an identity update changed the counter" >&2; exit 1; } ;;
    esac
    rates+=("$(awk -v n="$total" -v t="$t" 'BEGIN { print n / t }')")
  done
  RATE[$method]=$(stats "${rates[@]}")
  progress "contended updates, $method: ${RATE[$method]} (median min max updates/s)"
done

echo
echo "Contended updates: 8 processes × $per updates, every update a separate process; $reps runs each:"
echo
echo "| method | updates/s, median (min–max) | × shell equivalent (medians) |"
echo "|---|---|---|"
row() { # LABEL METHOD PEER
  local m lo hi pm
  read -r m lo hi <<<"${RATE[$2]}"
  read -r pm _ <<<"${RATE[$3]}"
  echo "| $1 | $(mmr "$m" "$lo" "$hi" 0) | $(div "$m" "$pm") |"
}
row "\`state update global -- jq '.counter += 1'\`" coord-jq shell-jq
row "\`flock f.lock sh -c \"jq … f > tmp && mv tmp f\"\`" shell-jq shell-jq
row "\`state update global -- cat\`" coord-cat shell-cat
row "\`flock f.lock sh -c \"cat f > tmp && mv tmp f\"\`" shell-cat shell-cat
echo
echo "Increments lost over the $reps jq runs ($((reps * total)) updates each way): \`state update\` $lost, flock + jq + mv $lost_peer."

read -r a _ <<<"${RATE[coord-jq]}"; read -r b _ <<<"${RATE[shell-jq]}"
summary "\`state update\` (jq) throughput ÷ flock + jq + mv" "$(div "$a" "$b")×" "informational" info
read -r a _ <<<"${RATE[coord-cat]}"; read -r b _ <<<"${RATE[shell-cat]}"
summary "\`state update\` (cat) throughput ÷ flock + cat + mv" "$(div "$a" "$b")×" "informational" info
summary "increments lost by \`state update\` under contention" "$lost of $((reps * total))" "0" "$(verdict "$lost" "<=" 0)"
