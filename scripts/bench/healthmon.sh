#!/usr/bin/env bash
# healthmon suite: detection latency from `kill -9` of an agent to its agent_dead event
# (--interval 1), and the CPU time and peak RSS of the sidecar watching N live agents.
#
#   bash scripts/bench/healthmon.sh        QUICK=1 for the small sizes
SUITE=healthmon
cd "$(dirname "$0")/../.."
. scripts/bench/_lib.sh

kills=$(pick 50 8)                   # agents killed, one at a time
sizes=$(pick "10 100 1000" 1000)  # live agents watched (the target is at 1000)
watch=$(pick 10 3)                   # seconds the CPU time is watched for each size

pids=()
cleanup() {
  [ ${#pids[@]} -eq 0 ] || kill "${pids[@]}" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# Milliseconds since the epoch of an event line's "ts" (UTC, millisecond precision).
ms_of_ts() { jq -r '((.ts[0:19] + "Z") | fromdate) * 1000 + (.ts[20:23] | tonumber)'; }

# --- detection latency ---------------------------------------------------------------
progress "detection latency, $kills kills"
S=$("$BIN/session-init" latency)
export COORD_SESSION=$S
events=$COORD_BASE/$S/metrics/events.jsonl
"$BIN/healthmon" --interval 1 --sample-every 0 >/dev/null &
hm=$!
pids+=("$hm")
lat=()
for i in $(seq "$kills"); do
  sleep 600 &
  p=$!
  pids+=("$p")
  "$BIN/registry" register "a$i" --type worker --pid "$p" >/dev/null
  # Kill at a point unrelated to the tick's phase.
  sleep "0.$(((RANDOM % 900) + 100))"
  t0=$(date +%s%3N)
  kill -9 "$p"
  wait "$p" 2>/dev/null || true
  line=
  for _ in $(seq 400); do
    line=$(grep -F "\"agent\":\"a$i\"" "$events" 2>/dev/null | grep -F agent_dead | head -n 1 || true)
    [ -z "$line" ] || break
    sleep 0.01
  done
  [ -n "$line" ] || { echo "healthmon.sh: no agent_dead event for a$i within 4 s" >&2; exit 1; }
  lat+=($(($(ms_of_ts <<<"$line") - t0)))
done
kill "$hm"
wait "$hm" 2>/dev/null || true
pids=()
sorted=$(printf '%s\n' "${lat[@]}" | sort -n)
pct() { awk -v p="$1" '{ a[NR] = $1 } END { print a[int((NR - 1) * p + 0.5) + 1] }' <<<"$sorted"; }
p50=$(pct 0.5); p99=$(pct 0.99); lo=$(head -n 1 <<<"$sorted"); hi=$(tail -n 1 <<<"$sorted")

echo "### healthmon"
echo
echo "Detection latency from \`kill -9\` of an agent to its \`agent_dead\` event, $kills kills at random points of the tick, \`--interval 1\`:"
echo
echo "| p50 ms | p99 ms | min–max ms | target |"
echo "|---|---|---|---|"
echo "| $p50 | $p99 | $lo–$hi | p99 ≤ 1100 (interval + 100 ms) |"
summary "detection latency, p99 of $kills kills (p50 $p50 ms)" "$p99 ms" "≤ 1100 ms" "$(verdict "$p99" "<=" 1100)"

# --- cost per tick ---------------------------------------------------------------------
# CPU time of all the sidecar's threads in ns (schedstat is exact; stat counts 10 ms ticks).
cpu_ns() {
  local t sum=0
  for t in /proc/"$1"/task/*/schedstat; do sum=$((sum + $(cut -d' ' -f1 "$t"))); done
  echo "$sum"
}
echo
echo "Cost of the sidecar watching N live local agents (\`--interval 1\`, resource samples every 10th tick), CPU time from \`/proc/PID/task/*/schedstat\`, sampled every second for ${watch} s:"
echo
echo "| agents | CPU % of one core | CPU ms per second, median (min–max) | peak RSS KiB |"
echo "|---|---|---|---|"
for n in $sizes; do
  progress "cost with $n agents"
  S=$("$BIN/session-init" "cost$n")
  export COORD_SESSION=$S
  for i in $(seq "$n"); do
    sleep 600 &
    pids+=($!)
    "$BIN/registry" register "a$i" --type worker --pid "$!" >/dev/null
  done
  "$BIN/healthmon" --interval 1 >/dev/null &
  hm=$!
  sleep 1.5
  t0=$(now_ns)
  c0=$(cpu_ns "$hm")
  prev=$c0
  per_s=()
  for _ in $(seq "$watch"); do
    sleep 1
    c=$(cpu_ns "$hm")
    per_s+=("$(awk -v a="$prev" -v b="$c" 'BEGIN { print (b - a) / 1e6 }')")
    prev=$c
  done
  wall_ms=$(ms_since "$t0")
  rss=$(awk '/VmHWM/ { print $2 }' "/proc/$hm/status")
  kill "$hm"
  wait "$hm" 2>/dev/null || true
  kill "${pids[@]}" 2>/dev/null || true
  pids=()
  pct_core=$(awk -v c="$((prev - c0))" -v w="$wall_ms" 'BEGIN { printf("%.3f", c / 1e6 / w * 100) }')
  read -r m lo hi < <(stats "${per_s[@]}")
  echo "| $n | $pct_core | $(mmr "$m" "$lo" "$hi") | $rss |"
  if [ "$n" = 1000 ]; then
    summary "CPU of the sidecar watching 1000 agents, \`--interval 1\`" "$pct_core% of one core" "≤ 2% of one core" "$(verdict "$pct_core" "<=" 2)"
    summary "peak RSS of the sidecar watching 1000 agents" "$(thousands "$rss") KiB" "informational" info
  fi
done
