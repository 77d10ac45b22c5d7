#!/usr/bin/env bash
# report suite: aggregate and archive against the shell tools they replace:
#   1. aggregate over AGENTS result files (10 tasks each) vs the same summary computed by
#      `jq -s`: wall time and peak RSS of each; then once each with the files evicted
#      from the page cache (posix_fadvise DONTNEED), for scale;
#   2. archive of a session holding MESSAGES message files vs `tar czf` of the same
#      directory: wall time, and the archive's size vs `tar c | gzip -6`.
# Each side is run REPS times, taking turns, with the page cache warmed just before each
# run: the kernel may page out file data it judges cold within seconds (DAMON's
# reclaim does on this machine), and a run that finds part of its input evicted
# measures the disk instead of the tool.
#
#   bash scripts/bench/report.sh        QUICK=1 for the small sizes
SUITE=report
cd "$(dirname "$0")/../.."
. scripts/bench/_lib.sh

command -v python3 >/dev/null || { echo "report.sh: needs python3 (to make the data)" >&2; exit 2; }
agents=$(pick 10000 1000)     # result files
per_agent=10                  # tasks per result file
messages=$(pick 100000 10000) # message files in the archived session
reps=3

# measure CMD...: "WALL_MS PEAK_RSS_KIB" of CMD, its output discarded.
measure() {
  local t0 ms
  t0=$(now_ns)
  /usr/bin/time -f %M -o "$WORK/rss.out" "$@" >/dev/null
  ms=$(ms_since "$t0")
  echo "$ms $(tail -n 1 "$WORK/rss.out")"
}

# --- aggregate -----------------------------------------------------------------------------
progress "making $agents result files"
S1=$("$BIN/session-init" bench-aggregate)
python3 - "$COORD_BASE/$S1/results" "$agents" "$per_agent" <<'EOF'
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
sync -f "$WORK"
jq_filter='{total_tasks: (map(.tasks | length) | add), completed_tasks: ([.[].tasks[] | select(.status == "completed")] | length), failed_tasks: ([.[].tasks[] | select(.status == "failed")] | length), total_time: (map(.execution_time) | add), agents_used: length} | .throughput = (if .total_time > 0 then .total_tasks / .total_time else null end) | .success_rate = (if .total_tasks > 0 then .completed_tasks / .total_tasks else null end)'
files=("$COORD_BASE/$S1"/results/agent-*.json)
warm_results() { cat "${files[@]}" >/dev/null; }
agg_ms=(); agg_kib=(); jq_ms=(); jq_kib=()
for r in $(seq "$reps"); do
  progress "aggregate and jq -s, run $r of $reps"
  warm_results
  read -r ms kib < <(measure "$BIN/aggregate" --session "$S1"); agg_ms+=("$ms"); agg_kib+=("$kib")
  warm_results
  read -r ms kib < <(measure jq -s "$jq_filter" "${files[@]}"); jq_ms+=("$ms"); jq_kib+=("$kib")
done
# Cold: the result files evicted from the page cache before each side's run.
evict_results() {
  python3 - "${files[@]}" <<'EOF'
import os, sys
for p in sys.argv[1:]:
    fd = os.open(p, os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)
EOF
}
progress "aggregate and jq -s with the result files evicted"
evict_results
read -r cold_agg_ms _ < <(measure "$BIN/aggregate" --session "$S1")
evict_results
read -r cold_jq_ms _ < <(measure jq -s "$jq_filter" "${files[@]}")
agg_total=$("$BIN/aggregate" --session "$S1" | jq .summary.total_tasks)
jq_total=$(jq -s "$jq_filter" "${files[@]}" | jq .total_tasks)
if [ "$agg_total" != "$jq_total" ] || [ "$agg_total" != $((agents * per_agent)) ]; then
  echo "report.sh: task totals differ: aggregate $agg_total, jq $jq_total, made $((agents * per_agent))" >&2
  exit 1
fi
rm -rf "${COORD_BASE:?}/$S1"

# --- archive -------------------------------------------------------------------------------
progress "making a session with $messages message files"
S2=$("$BIN/session-init" bench-archive)
python3 - "$COORD_BASE/$S2/messages" "$messages" <<'EOF'
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
sync -f "$WORK"
# Reads every file of the session (tar skips the contents when writing to /dev/null).
warm_session() { tar cf - -C "$COORD_BASE" "$S2" | cat >/dev/null; }
peers=yes
for tool in tar gzip; do
  command -v "$tool" >/dev/null || { peers=; skipped "$tool" "\`archive\` ÷ \`tar czf\`"; }
done
arc_ms=(); arc_kib=(); tar_ms=()
for r in $(seq "$reps"); do
  progress "archive and tar czf, run $r of $reps"
  rm -f "$WORK/coord.tar.gz" "$WORK/tar.tar.gz"
  if [ -n "$peers" ]; then
    warm_session
    read -r ms _ < <(measure tar czf "$WORK/tar.tar.gz" -C "$COORD_BASE" "$S2"); tar_ms+=("$ms")
  fi
  warm_session
  read -r ms kib < <(measure "$BIN/archive" --session "$S2" --output "$WORK/coord.tar.gz"); arc_ms+=("$ms"); arc_kib+=("$kib")
done
arc_bytes=$(stat -c %s "$WORK/coord.tar.gz")
entries=$(tar tzf "$WORK/coord.tar.gz" | grep -c '\.json$')
[ "$entries" -ge "$messages" ] || { echo "report.sh: the archive holds $entries JSON files, fewer than $messages" >&2; exit 1; }
[ -z "$peers" ] || gz6_bytes=$(tar cf - -C "$COORD_BASE" "$S2" | gzip -6 | wc -c)

read -r am alo ahi < <(stats "${agg_ms[@]}")
read -r jm jlo jhi < <(stats "${jq_ms[@]}")
read -r akm aklo akhi < <(stats "${agg_kib[@]}")
read -r jkm jklo jkhi < <(stats "${jq_kib[@]}")
read -r xm xlo xhi < <(stats "${arc_ms[@]}")
read -r xkm _ xkhi < <(stats "${arc_kib[@]}")
mib() { awk -v k="$1" 'BEGIN { printf("%.0f\n", k / 1024) }'; }

echo "### aggregate and archive"
echo
echo "$(thousands "$agents") result files with $per_agent tasks each ($(thousands $((agents * per_agent))) tasks, 10% failed); a session with $(thousands "$messages") message files (JSON, about 400 bytes each, in 100 mailboxes). Page cache warmed before each run; $reps runs of each side, taking turns:"
echo
echo "| measurement | coord, median (min–max) | peer, median (min–max) | ratio (medians) | target |"
echo "|---|---|---|---|---|"
echo "| aggregate: wall ms | $(mmr "$am" "$alo" "$ahi" 0) | \`jq -s\` summary: $(mmr "$jm" "$jlo" "$jhi" 0) | $(div "$jm" "$am" 1)× faster | ≥ 5× faster |"
echo "| aggregate, result files evicted from the page cache (one run each): wall ms | $(num "$cold_agg_ms" 0) | \`jq -s\`: $(num "$cold_jq_ms" 0) | $(div "$cold_jq_ms" "$cold_agg_ms" 1)× faster | |"
echo "| aggregate: peak RSS MiB | $(mib "$akm") ($(mib "$aklo")–$(mib "$akhi")) | \`jq -s\`: $(mib "$jkm") ($(mib "$jklo")–$(mib "$jkhi")) | | ≤ 200 MiB |"
if [ -n "$peers" ]; then
  read -r tm tlo thi < <(stats "${tar_ms[@]}")
  echo "| archive (read-back verification included): wall ms | $(mmr "$xm" "$xlo" "$xhi" 0) | \`tar czf\`: $(mmr "$tm" "$tlo" "$thi" 0) | $(div "$xm" "$tm")× | ≤ 1.0× |"
  echo "| archive size, bytes | $(thousands "$arc_bytes") | \`tar c \\| gzip -6\`: $(thousands "$gz6_bytes") | $(awk -v a="$arc_bytes" -v b="$gz6_bytes" 'BEGIN { printf("%+.1f%%\n", (a / b - 1) * 100) }') | ≤ +5% |"
else
  echo "| archive: wall ms | $(mmr "$xm" "$xlo" "$xhi" 0) | skipped: tar or gzip not installed | | |"
fi
echo
echo "Peak RSS of archive: $(mib "$xkm") MiB (largest $(mib "$xkhi"))."

x=$(div "$jm" "$am" 1); summary "aggregate ($(thousands "$agents") files) speed ÷ \`jq -s\`" "${x}×" "≥ 5×" "$(verdict "$x" ">=" 5)"
summary "aggregate ($(thousands "$agents") files, evicted from the page cache) speed ÷ \`jq -s\`" "$(div "$cold_jq_ms" "$cold_agg_ms" 1)×" "informational" info
summary "peak RSS of aggregate ($(thousands "$agents") files, largest of $reps)" "$(mib "$akhi") MiB" "≤ 200 MiB" "$(verdict "$akhi" "<=" $((200 * 1024)))"
if [ -n "$peers" ]; then
  x=$(div "$xm" "$tm"); summary "archive ($(thousands "$messages") messages) time ÷ \`tar czf\`" "${x}×" "≤ 1.0×" "$(verdict "$x" "<=" 1.0)"
  x=$(awk -v a="$arc_bytes" -v b="$gz6_bytes" 'BEGIN { printf("%.1f\n", (a / b - 1) * 100) }')
  summary "archive size vs \`tar c | gzip -6\`" "$x%" "≤ +5%" "$(verdict "$x" "<=" 5)"
fi
