#!/usr/bin/env bash
# msgq suite:
#   1. one `msgq send` and one `msgq recv --ack` as whole processes against /bin/true and
#      redis-cli LPUSH / RPOP on a private redis-server (hyperfine -N);
#   2. `send --batch` throughput against a create + write + rename floor loop;
#   3. wake-up latency of `recv --wait` (send returns → the receiver's line arrives);
#   4. send and recv cost with 100 vs DEEP messages waiting.
#
#   bash scripts/bench/msgq.sh        QUICK=1 for the small sizes
SUITE=msgq
cd "$(dirname "$0")/../.."
. scripts/bench/_lib.sh

runs=$(pick 300 100)         # hyperfine runs per command
batch=$(pick 100000 10000)   # messages per send --batch run
deep=$(pick 100000 10000)    # the long queue
lat_sends=$(pick 1000 300)   # wake-ups timed
reps=3                       # runs of the batch and floor loops

BENCH=${MSGQ_BENCH:-$(coord_release_dir -p msgq --example msgq-bench)/examples/msgq-bench}

REDIS_PID=
cleanup() {
  if [ -n "$REDIS_PID" ]; then kill "$REDIS_PID" 2>/dev/null || true; wait "$REDIS_PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

COORD_SESSION=$("$BIN/session-init" bench)
export COORD_SESSION
for a in w1 q100 qdeep lat; do "$BIN/registry" register "$a" --type worker --pid $$ >/dev/null; done

# lines N AGENT: JSON Lines of N messages to AGENT.
lines() { awk -v n="$1" -v to="$2" 'BEGIN { for (i = 1; i <= n; i++) printf "{\"to\":\"%s\",\"type\":\"m\",\"payload\":{\"i\":%d}}\n", to, i }'; }
fill() { lines "$1" "$2" | "$BIN/msgq" send --batch --from bench >/dev/null; }

# --- wake-up latency (first, while the session and the disk are quiet) -----------------
progress "wake-up latency, $lat_sends sends"
lat=$("$BENCH" latency "$lat_sends" "$BIN/msgq" lat)
lat_ms() { num "$(jq -r ".$1" <<<"$lat")"; }

# --- one process ---------------------------------------------------------------------
progress "one process each, $runs runs"
fill $((runs * 2 + 100)) w1
bench_hyperfine "$WORK/proc.json" --warmup 20 --runs "$runs" \
  "/bin/true" \
  "$BIN/msgq send --from bench --to w1 --type m --payload '{\"i\":1}'" \
  "$BIN/msgq recv w1 --ack"
read -r true_m true_lo true_hi < <(hf "$WORK/proc.json" 0)
read -r send_m send_lo send_hi < <(hf "$WORK/proc.json" 1)
read -r recv_m recv_lo recv_hi < <(hf "$WORK/proc.json" 2)

redis=
if command -v redis-server >/dev/null && command -v redis-cli >/dev/null; then
  progress "redis-cli, $runs runs"
  redis-server --port 0 --unixsocket "$WORK/redis.sock" --save '' --appendonly no --daemonize no \
    >"$WORK/redis.log" 2>&1 &
  REDIS_PID=$!
  for _ in $(seq 100); do redis-cli -s "$WORK/redis.sock" ping >/dev/null 2>&1 && break; sleep 0.05; done
  for _ in $(seq $((runs * 2 + 100))); do echo "LPUSH q x"; done | redis-cli -s "$WORK/redis.sock" >/dev/null
  bench_hyperfine "$WORK/redis.json" --warmup 20 --runs "$runs" \
    "redis-cli -s $WORK/redis.sock LPUSH q '{\"i\":1}'" \
    "redis-cli -s $WORK/redis.sock RPOP q"
  read -r lpush_m lpush_lo lpush_hi < <(hf "$WORK/redis.json" 0)
  read -r rpop_m rpop_lo rpop_hi < <(hf "$WORK/redis.json" 1)
  redis="yes"
else
  skipped "redis-server / redis-cli" "redis-cli LPUSH / RPOP ÷ /bin/true"
fi

# --- queue depth -------------------------------------------------------------------------
progress "send and recv with 100 vs $deep waiting, $runs runs"
fill 100 q100
fill "$deep" qdeep
# Each timed send is preceded by a receive and each timed receive by a send, so the
# queues keep their length.
bench_hyperfine "$WORK/depth.json" --runs "$runs" \
  --prepare "$BIN/msgq recv q100 --ack" "$BIN/msgq send --from bench --to q100 --type m" \
  --prepare "$BIN/msgq recv qdeep --ack" "$BIN/msgq send --from bench --to qdeep --type m" \
  --prepare "$BIN/msgq send --from bench --to q100 --type m" "$BIN/msgq recv q100 --ack" \
  --prepare "$BIN/msgq send --from bench --to qdeep --type m" "$BIN/msgq recv qdeep --ack"
read -r s100_m s100_lo s100_hi < <(hf "$WORK/depth.json" 0)
read -r sdeep_m sdeep_lo sdeep_hi < <(hf "$WORK/depth.json" 1)
read -r r100_m r100_lo r100_hi < <(hf "$WORK/depth.json" 2)
read -r rdeep_m rdeep_lo rdeep_hi < <(hf "$WORK/depth.json" 3)

# --- send --batch against the floor ----------------------------------------------------
lines "$batch" w1 >"$WORK/batch.jsonl"
batch_rates=(); floor_rates=()
for r in $(seq "$reps"); do
  progress "send --batch of $batch messages and the floor loop, run $r of $reps"
  "$BIN/registry" register "b$r" --type worker --pid $$ >/dev/null
  sed "s/\"to\":\"w1\"/\"to\":\"b$r\"/" "$WORK/batch.jsonl" >"$WORK/batch.$r.jsonl"
  # The two loops take turns going first, and nothing is deleted until all runs are
  # done: on ext4, creating files right after a mass delete is several times slower
  # (the inode allocator skips recently freed inodes), which would penalize whichever
  # loop follows a deletion.
  for which in $(if [ $((r % 2)) = 1 ]; then echo batch floor; else echo floor batch; fi); do
    sync -f "$WORK" # each timed loop starts with nothing left to write back
    if [ "$which" = batch ]; then
      t0=$(now_ns)
      "$BIN/msgq" send --batch --from bench <"$WORK/batch.$r.jsonl" >/dev/null
      batch_rates+=("$(awk -v n="$batch" -v ms="$(ms_since "$t0")" 'BEGIN { print n / ms * 1000 }')")
    else
      floor_rates+=("$("$BENCH" floor "$batch" "$WORK/floor.$r" | jq -r '.files_per_sec')")
    fi
  done
  rm -f "$WORK/batch.$r.jsonl"
done
rm -rf "$WORK"/floor.*
read -r batch_m batch_lo batch_hi < <(stats "${batch_rates[@]}")
read -r floor_m floor_lo floor_hi < <(stats "${floor_rates[@]}")

# --- report ------------------------------------------------------------------------------
echo "### msgq"
echo
echo "One command as a whole process, $runs runs each (\`hyperfine -N\`), wall time:"
echo
echo "| command | median ms (min–max) | × /bin/true (medians) | target |"
echo "|---|---|---|---|"
echo "| \`/bin/true\` | $(mmr "$true_m" "$true_lo" "$true_hi" 3) | 1.00 | |"
echo "| \`msgq send\` | $(mmr "$send_m" "$send_lo" "$send_hi" 3) | $(div "$send_m" "$true_m") | ≤ 2 |"
echo "| \`msgq recv --ack\` | $(mmr "$recv_m" "$recv_lo" "$recv_hi" 3) | $(div "$recv_m" "$true_m") | ≤ 2 |"
if [ -n "$redis" ]; then
  echo "| \`redis-cli LPUSH\` (unix socket) | $(mmr "$lpush_m" "$lpush_lo" "$lpush_hi" 3) | $(div "$lpush_m" "$true_m") | |"
  echo "| \`redis-cli RPOP\` (unix socket) | $(mmr "$rpop_m" "$rpop_lo" "$rpop_hi" 3) | $(div "$rpop_m" "$true_m") | |"
else
  echo "| \`redis-cli LPUSH\` / \`RPOP\` | skipped: redis-server or redis-cli not installed | | |"
fi
echo
echo "Throughput, $reps runs each:"
echo
echo "| loop | files/s, median (min–max) | ÷ floor (medians) | target |"
echo "|---|---|---|---|"
echo "| \`msgq send --batch\`, $(thousands "$batch") messages | $(thousands "$batch_m") ($(thousands "$batch_lo")–$(thousands "$batch_hi")) | $(div "$batch_m" "$floor_m") | ≥ 0.5 |"
echo "| floor: create + write + rename $(thousands "$batch") files into one directory | $(thousands "$floor_m") ($(thousands "$floor_lo")–$(thousands "$floor_hi")) | 1.00 | |"
echo
echo "Cost with messages waiting ($runs runs each; each timed send is preceded by a receive and each receive by a send, so the queue keeps its length):"
echo
echo "| command | 100 waiting, median ms (min–max) | $(thousands "$deep") waiting, median ms (min–max) | ratio (medians) | target |"
echo "|---|---|---|---|---|"
echo "| \`msgq send\` | $(mmr "$s100_m" "$s100_lo" "$s100_hi" 3) | $(mmr "$sdeep_m" "$sdeep_lo" "$sdeep_hi" 3) | $(div "$sdeep_m" "$s100_m") | ≤ 1.5 |"
echo "| \`msgq recv --ack\` | $(mmr "$r100_m" "$r100_lo" "$r100_hi" 3) | $(mmr "$rdeep_m" "$rdeep_lo" "$rdeep_hi" 3) | $(div "$rdeep_m" "$r100_m") | ≤ 1.5 |"
echo
echo "Wake-up latency of \`msgq recv --wait\` (the send returns → the receiver's line arrives), $lat_sends sends:"
echo
echo "| p50 ms | p90 ms | p99 ms | min–max ms | target |"
echo "|---|---|---|---|---|"
echo "| $(lat_ms p50_ms) | $(lat_ms p90_ms) | $(lat_ms p99_ms) | $(lat_ms min_ms)–$(lat_ms max_ms) | p50 ≤ 2 |"

x=$(div "$send_m" "$true_m"); summary "\`msgq send\` ÷ /bin/true" "${x}×" "≤ 2×" "$(verdict "$x" "<=" 2)"
x=$(div "$recv_m" "$true_m"); summary "\`msgq recv --ack\` ÷ /bin/true" "${x}×" "≤ 2×" "$(verdict "$x" "<=" 2)"
if [ -n "$redis" ]; then
  summary "\`redis-cli LPUSH\` ÷ /bin/true" "$(div "$lpush_m" "$true_m")×" "informational" info
  summary "\`redis-cli RPOP\` ÷ /bin/true" "$(div "$rpop_m" "$true_m")×" "informational" info
fi
x=$(div "$batch_m" "$floor_m"); summary "\`send --batch\` ÷ create + write + rename floor, $(thousands "$batch") messages" "${x}×" "≥ 0.5×" "$(verdict "$x" ">=" 0.5)"
x=$(div "$sdeep_m" "$s100_m"); summary "\`msgq send\`, $(thousands "$deep") ÷ 100 waiting" "${x}×" "≤ 1.5×" "$(verdict "$x" "<=" 1.5)"
x=$(div "$rdeep_m" "$r100_m"); summary "\`msgq recv --ack\`, $(thousands "$deep") ÷ 100 waiting" "${x}×" "≤ 1.5×" "$(verdict "$x" "<=" 1.5)"
x=$(lat_ms p50_ms); summary "wake-up of \`recv --wait\`, p50 of $lat_sends sends (p99 $(lat_ms p99_ms) ms)" "$x ms" "≤ 2 ms" "$(verdict "$x" "<=" 2)"
