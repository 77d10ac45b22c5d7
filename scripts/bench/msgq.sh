#!/usr/bin/env bash
# msgq benchmarks, all in one run; prints a Markdown section for docs/performance.md.
#
#   bash scripts/bench/msgq.sh            # defaults below
#   RUNS=500 LAT_SENDS=1000 bash scripts/bench/msgq.sh
#
# Measures: one `msgq send` / `msgq recv` as whole processes against /bin/true and
# redis-cli LPUSH/RPOP; `send --batch` throughput against a create+write+rename floor;
# wake-up latency of `recv --wait`; send/recv cost with 100 vs 100,000 messages waiting.
# Needs hyperfine and jq; redis-server/redis-cli are optional (skipped, and said so).
set -euo pipefail
cd "$(dirname "$0")/../.."

RUNS=${RUNS:-300}
BATCH=${BATCH:-100000}
LAT_SENDS=${LAT_SENDS:-1000}

for tool in hyperfine jq; do
  command -v "$tool" >/dev/null || { echo "msgq.sh: $tool is required" >&2; exit 2; }
done

. scripts/lib/release.sh
BIN=${COORD_BIN:-$(coord_release_dir)}
BENCH=$(coord_release_dir -p msgq --example msgq-bench)/examples/msgq-bench

WORK=$(mktemp -d "${TMPDIR:-/tmp}/msgq-bench.XXXXXX")
REDIS_PID=
cleanup() {
  if [ -n "$REDIS_PID" ]; then kill "$REDIS_PID" 2>/dev/null || true; wait "$REDIS_PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

export COORD_BASE=$WORK/base
unset COORD_FSYNC COORD_POLL_MS RUST_LOG
COORD_SESSION=$("$BIN/session-init" bench)
export COORD_SESSION
for a in w1 q100 q100k lat; do "$BIN/registry" register "$a" --type worker --pid $$ >/dev/null; done

# JSON Lines of N messages to AGENT.
lines() { awk -v n="$1" -v to="$2" 'BEGIN { for (i = 1; i <= n; i++) printf "{\"to\":\"%s\",\"type\":\"m\",\"payload\":{\"i\":%d}}\n", to, i }'; }
fill() { lines "$1" "$2" | "$BIN/msgq" send --batch --from bench >/dev/null; }
# Mean and stddev in ms of hyperfine's result i.
stat() { jq -r --argjson i "$2" '.results[$i] | "\(.mean * 1000) \(.stddev * 1000)"' "$1"; }
fmt() { awk -v m="$1" -v s="$2" 'BEGIN { printf "%.2f ± %.2f", m, s }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }

echo "msgq.sh: per-process cost ($RUNS runs each)" >&2
fill $((RUNS * 2 + 200)) w1
HF=(hyperfine -N --style none --warmup 20 --runs "$RUNS")
"${HF[@]}" --export-json "$WORK/proc.json" \
  "/bin/true" \
  "$BIN/msgq send --from bench --to w1 --type m --payload '{\"i\":1}'" \
  "$BIN/msgq recv w1 --ack" >/dev/null
read -r true_m true_s < <(stat "$WORK/proc.json" 0)
read -r send_m send_s < <(stat "$WORK/proc.json" 1)
read -r recv_m recv_s < <(stat "$WORK/proc.json" 2)

redis_row="| redis-cli LPUSH / RPOP | skipped: redis-server or redis-cli not installed | | |"
if command -v redis-server >/dev/null && command -v redis-cli >/dev/null; then
  redis-server --port 0 --unixsocket "$WORK/redis.sock" --save '' --appendonly no --daemonize no \
    >"$WORK/redis.log" 2>&1 &
  REDIS_PID=$!
  for _ in $(seq 100); do redis-cli -s "$WORK/redis.sock" ping >/dev/null 2>&1 && break; sleep 0.05; done
  for _ in $(seq $((RUNS * 2 + 200))); do echo "LPUSH q x"; done | redis-cli -s "$WORK/redis.sock" >/dev/null
  "${HF[@]}" --export-json "$WORK/redis.json" \
    "redis-cli -s $WORK/redis.sock LPUSH q '{\"i\":1}'" \
    "redis-cli -s $WORK/redis.sock RPOP q" >/dev/null
  read -r lpush_m lpush_s < <(stat "$WORK/redis.json" 0)
  read -r rpop_m rpop_s < <(stat "$WORK/redis.json" 1)
  redis_row="| redis-cli LPUSH / RPOP (unix socket) | $(fmt "$lpush_m" "$lpush_s") / $(fmt "$rpop_m" "$rpop_s") | $(ratio "$lpush_m" "$true_m") / $(ratio "$rpop_m" "$true_m") | |"
fi

echo "msgq.sh: batch throughput ($BATCH messages, 3 runs each)" >&2
lines "$BATCH" w1 >"$WORK/batch.jsonl"
batch_rates=(); floor_rates=()
for r in 1 2 3; do
  "$BIN/registry" register "b$r" --type worker --pid $$ >/dev/null
  sed "s/\"to\":\"w1\"/\"to\":\"b$r\"/" "$WORK/batch.jsonl" >"$WORK/batch.$r.jsonl"
  t0=$(date +%s.%N)
  "$BIN/msgq" send --batch --from bench <"$WORK/batch.$r.jsonl" >/dev/null
  t1=$(date +%s.%N)
  batch_rates+=("$(awk -v n="$BATCH" -v a="$t0" -v b="$t1" 'BEGIN { printf "%.0f", n / (b - a) }')")
  floor_rates+=("$("$BENCH" floor "$BATCH" "$WORK/floor.$r" | jq -r '.files_per_sec | floor')")
  rm -rf "$WORK/floor.$r"
done
median() { printf '%s\n' "$@" | sort -n | sed -n 2p; }
batch_rate=$(median "${batch_rates[@]}"); floor_rate=$(median "${floor_rates[@]}")

echo "msgq.sh: send/recv with 100 vs 100,000 waiting" >&2
fill 100 q100
fill 100000 q100k
"${HF[@]}" --export-json "$WORK/depth.json" \
  --prepare "$BIN/msgq recv q100 --ack" "$BIN/msgq send --from bench --to q100 --type m" \
  --prepare "$BIN/msgq recv q100k --ack" "$BIN/msgq send --from bench --to q100k --type m" \
  --prepare "$BIN/msgq send --from bench --to q100 --type m" "$BIN/msgq recv q100 --ack" \
  --prepare "$BIN/msgq send --from bench --to q100k --type m" "$BIN/msgq recv q100k --ack" >/dev/null
read -r s100_m s100_s < <(stat "$WORK/depth.json" 0)
read -r s100k_m s100k_s < <(stat "$WORK/depth.json" 1)
read -r r100_m r100_s < <(stat "$WORK/depth.json" 2)
read -r r100k_m r100k_s < <(stat "$WORK/depth.json" 3)

echo "msgq.sh: wake-up latency ($LAT_SENDS sends)" >&2
lat=$("$BENCH" latency "$LAT_SENDS" "$BIN/msgq" lat)

cat <<MD
Measured $(date -u +%Y-%m-%d) with \`bash scripts/bench/msgq.sh\` (RUNS=$RUNS, BATCH=$BATCH,
LAT_SENDS=$LAT_SENDS) on $(nproc) CPUs, $(uname -sr), session on $(df -T "$WORK" | awk 'NR==2 { print $2 }').

| one process | mean ms | × /bin/true | target |
|---|---|---|---|
| /bin/true | $(fmt "$true_m" "$true_s") | 1.00 | |
| msgq send | $(fmt "$send_m" "$send_s") | $(ratio "$send_m" "$true_m") | ≤ 2 |
| msgq recv --ack | $(fmt "$recv_m" "$recv_s") | $(ratio "$recv_m" "$true_m") | ≤ 2 |
$redis_row

| throughput | files/s (median of 3) | |
|---|---|---|
| msgq send --batch, $BATCH messages | $batch_rate | $(ratio "$batch_rate" "$floor_rate") × floor (target ≥ 0.5) |
| floor: create + write + rename loop | $floor_rate | |

| cost with messages waiting | 100 waiting, ms | 100,000 waiting, ms | ratio (target ≤ 1.5) |
|---|---|---|---|
| msgq send | $(fmt "$s100_m" "$s100_s") | $(fmt "$s100k_m" "$s100k_s") | $(ratio "$s100k_m" "$s100_m") |
| msgq recv --ack | $(fmt "$r100_m" "$r100_s") | $(fmt "$r100k_m" "$r100k_s") | $(ratio "$r100k_m" "$r100_m") |

Wake-up latency of \`msgq recv --wait\` (send returns → receiver's line arrives), $LAT_SENDS sends:
p50 $(jq -r '.p50_ms * 100 | round / 100' <<<"$lat") ms, p90 $(jq -r '.p90_ms * 100 | round / 100' <<<"$lat") ms,
p99 $(jq -r '.p99_ms * 100 | round / 100' <<<"$lat") ms, max $(jq -r '.max_ms * 100 | round / 100' <<<"$lat") ms (target p50 ≤ 2 ms).
MD
