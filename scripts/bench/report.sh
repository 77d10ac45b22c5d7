#!/usr/bin/env bash
# Benchmarks aggregate and archive against the shell tools they replace, in one run:
#   1. aggregate over 10,000 result files / 100,000 tasks vs the same summary with `jq -s`
#      (wall time and peak RSS of each);
#   2. archive of a session holding 100,000 message-sized files vs `tar czf` of the same
#      directory (wall time ratio; archive size vs gzip -6).
# Usage: scripts/bench/report.sh [WORKDIR]   (default: a fresh directory under /tmp)
# Needs: cargo, jq, python3, GNU time (/usr/bin/time), tar, gzip.
set -euo pipefail
cd "$(dirname "$0")/../.."

for tool in jq python3 /usr/bin/time tar gzip; do
  command -v "$tool" >/dev/null 2>&1 || { echo "report.sh: needs $tool" >&2; exit 2; }
done

. scripts/lib/release.sh
BIN=${COORD_BIN:-$(coord_release_dir)}
WORK="${1:-$(mktemp -d /tmp/coord-bench-report.XXXXXX)}"
export COORD_BASE="$WORK/base"
AGENTS=10000
TASKS_PER_AGENT=10
MESSAGES=100000

# Wall seconds and peak RSS (KiB) of a command, as "SECONDS KIB".
measure() {
  local out="$WORK/time.$$"
  /usr/bin/time -f '%e %M' -o "$out" "$@" >/dev/null
  cat "$out"
}

echo "## aggregate: $AGENTS result files, $((AGENTS * TASKS_PER_AGENT)) tasks" >&2
S1=$("$BIN/session-init" bench-aggregate)
python3 - "$COORD_BASE/$S1/results" "$AGENTS" "$TASKS_PER_AGENT" <<'EOF'
import json, sys, random
root, agents, per = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rnd = random.Random(42)
for a in range(agents):
    tasks = []
    for t in range(per):
        status = "completed" if rnd.random() < 0.9 else "failed"
        task = {"id": f"task-{a:05d}-{t:02d}", "status": status, "duration": round(rnd.random() * 5, 3),
                "output": "x" * 40}
        if status == "failed":
            task["error"] = "assertion failed in step %d" % t
        tasks.append(task)
    with open(f"{root}/agent-{a:05d}.json", "w") as f:
        json.dump({"tasks": tasks, "execution_time": round(rnd.random() * 50, 3)}, f)
EOF
sync
JQ_FILTER='{total_tasks: (map(.tasks | length) | add), completed_tasks: ([.[].tasks[] | select(.status == "completed")] | length), failed_tasks: ([.[].tasks[] | select(.status == "failed")] | length), total_time: (map(.execution_time) | add), agents_used: length} | .throughput = (if .total_time > 0 then .total_tasks / .total_time else null end) | .success_rate = (if .total_tasks > 0 then .completed_tasks / .total_tasks else null end)'
# Warm the page cache once for both.
cat "$COORD_BASE/$S1"/results/agent-*.json >/dev/null
read -r AGG_S AGG_KB < <(measure "$BIN/aggregate" --session "$S1")
read -r JQ_S JQ_KB < <(measure sh -c "jq -s '$JQ_FILTER' '$COORD_BASE/$S1'/results/agent-*.json")
AGG_TOTAL=$("$BIN/aggregate" --session "$S1" | jq .summary.total_tasks)
JQ_TOTAL=$(jq -s "$JQ_FILTER" "$COORD_BASE/$S1"/results/agent-*.json | jq .total_tasks)
[ "$AGG_TOTAL" = "$JQ_TOTAL" ] || { echo "report.sh: totals differ: aggregate $AGG_TOTAL, jq $JQ_TOTAL" >&2; exit 1; }

echo "## archive: a session with $MESSAGES message files" >&2
S2=$("$BIN/session-init" bench-archive)
python3 - "$COORD_BASE/$S2/messages" "$MESSAGES" <<'EOF'
import json, os, sys, random
root, n = sys.argv[1], int(sys.argv[2])
rnd = random.Random(7)
words = ["analyze", "tests", "auth", "api", "fix", "coverage", "retry", "worker", "queue", "result"]
for i in range(n):
    agent = f"agent-{i % 100:03d}"
    d = f"{root}/{agent}/done"
    if i < 100:
        os.makedirs(d, exist_ok=True)
    msg = {"id": f"msg-{1700000000000 + i}-{rnd.getrandbits(32):08x}", "from": f"agent-{rnd.randrange(100):03d}",
           "to": agent, "type": "task_assignment", "timestamp": "2026-01-15T10:30:00.%03dZ" % (i % 1000),
           "payload": {"task_id": "-".join(rnd.choice(words) for _ in range(3)), "priority": rnd.choice(["high", "normal", "low"]),
                       "data": {"attempt": rnd.randrange(1, 4), "note": " ".join(rnd.choice(words) for _ in range(8))}},
           "requires_ack": True}
    with open(f"{d}/{msg['id']}.json", "w") as f:
        json.dump(msg, f, indent=2)
EOF
sync
du -s "$COORD_BASE/$S2" >/dev/null  # warm the dentry and page caches for both
read -r TAR_S TAR_KB < <(measure tar czf "$WORK/tar.tar.gz" -C "$COORD_BASE" "$S2")
GZ6_BYTES=$(tar cf - -C "$COORD_BASE" "$S2" | gzip -6 | wc -c)
read -r ARC_S ARC_KB < <(measure "$BIN/archive" --session "$S2" --output "$WORK/coord.tar.gz")
ARC_BYTES=$(stat -c %s "$WORK/coord.tar.gz")

python3 - "$AGG_S" "$AGG_KB" "$JQ_S" "$JQ_KB" "$TAR_S" "$ARC_S" "$ARC_KB" "$ARC_BYTES" "$GZ6_BYTES" <<'EOF'
import sys
agg_s, agg_kb, jq_s, jq_kb, tar_s, arc_s, arc_kb, arc_b, gz_b = map(float, sys.argv[1:])
print(f"aggregate: {agg_s:.2f} s, peak RSS {agg_kb/1024:.0f} MiB; jq -s: {jq_s:.2f} s, peak RSS {jq_kb/1024:.0f} MiB; "
      f"aggregate is {jq_s/max(agg_s, 0.01):.1f}x faster")
print(f"archive: {arc_s:.2f} s (peak RSS {arc_kb/1024:.0f} MiB, includes the read-back verification); tar czf: {tar_s:.2f} s; "
      f"time ratio {arc_s/max(tar_s, 0.01):.2f}x; size {arc_b/1e6:.2f} MB vs gzip -6 {gz_b/1e6:.2f} MB ({(arc_b/gz_b - 1)*100:+.1f}%)")
EOF
echo "(work directory: $WORK; remove it when done)" >&2
