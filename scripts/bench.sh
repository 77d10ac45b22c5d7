#!/usr/bin/env bash
# Runs the benchmark suites in scripts/bench/ in one run on this machine, with the peers
# side by side where they are installed, prints their tables and a summary of every
# measured ratio against its target, and writes the tables into docs/performance.md.
# `scripts/bench.sh --help` says how.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
  cat <<'EOF'
Usage: scripts/bench.sh [--quick] [--write | --no-write] [SUITE...]

Runs the benchmark suites of scripts/bench/ (default: all of them, taskd first, then
the others in name order: taskd foundation healthmon mcp msgq report watch; taskd goes before
the suites that create and delete 100,000s of files, see docs/performance.md) on this
machine, against the peers that are installed, and prints each suite's Markdown
tables, then one summary table with a row per measured figure: suite, metric, value,
target, status (met, not met, info, skipped). A peer that is not installed is not a
failure: its row says "skipped: X not installed".

Suites and what they compare (full size; --quick size in brackets):
  foundation  one `state set` / `registry heartbeat` / `state get` process vs
              /bin/true (500 runs [100]); peak RSS of each command; `state update`
              with 8 contending processes vs flock + jq + mv (8 x 50 updates
              [8 x 5], 3 runs)
  healthmon   detection latency of a kill -9 (50 kills [8]); CPU and RSS of the
              sidecar watching 10, 100, 1000 agents for 10 s [1000 agents, 3 s]
  mcp         round trips of tool calls through one coord-mcp process (ping,
              heartbeat, send, task_claim + task_complete) vs `msgq send` and
              `taskd claim` + `taskd complete` processes, on TMPDIR and tmpfs
              (1000 [200] operations each, 3 runs)
  msgq        one `msgq send` / `msgq recv` process vs /bin/true and redis-cli
              (300 runs [100]); `send --batch` of 100,000 [10,000] messages vs a
              create + write + rename loop; send/recv with 100 vs 100,000 [10,000]
              waiting; wake-up latency of `recv --wait` (1000 sends [300])
  report      aggregate over 10,000 [1,000] result files vs `jq -s`; archive of
              100,000 [10,000] messages vs `tar czf` and `gzip -6`
  taskd       2000 [300] no-op jobs through two `taskd work` workers (base in
              TMPDIR, and on tmpfs in /dev/shm when there is one) vs xargs -P2,
              GNU parallel -j2, tsp -S 2, nq, pueue (50 [10] jobs); claim + complete
              with 100 vs 100,000 [10,000] pending; `submit --batch` of 100,000
              [10,000] tasks; peak RSS of `claim` with 100,000 [10,000] pending
  watch       `healthmon status --watch` over 1000 agents and 100,000 tasks: time
              to the first JSON line, CPU while watching (a pipe, and a pty)
Hand-timed loops run 3 times; every figure is a median with its min-max (hyperfine's
for the commands it times). Ratios are of medians. Tables go to stdout, progress to
stderr. One suite runs alone with `QUICK=1 bash scripts/bench/SUITE.sh` (its tables
only).

Options:
  --quick     small sizes: all suites in under two minutes (after the build). A ratio
              whose size is part of the target (100 vs 100,000 waiting) is measured
              at the smaller size, and the tables say which size.
  --write     write the results into docs/performance.md (also after --quick or with
              only some suites)
  --no-write  only print
  -h, --help  this text

docs/performance.md: a run replaces everything between the lines
"<!-- bench:begin -->" and "<!-- bench:end -->" with a header (date, exact command,
mode, machine: nproc, uname -srm, CPU, filesystem of the bench directory, load average
at the start and the end, commit), the summary table and each suite's tables. The
text outside the markers is left alone. By default a full run of all suites writes
the file; --quick or a choice of suites only prints unless --write is given. Nothing
is written when a suite failed.

Needs: cargo (release build, scripts/lib/release.sh), hyperfine, jq, GNU time
(/usr/bin/time), flock, python3 (report's data). Peers, each optional: xargs, GNU
parallel, tsp (task-spooler), nq, pueue + pueued (also looked for in ~/.cargo/bin),
redis-server + redis-cli, tar + gzip.

Environment: TMPDIR is where the sessions are made and removed again (its filesystem
matters; the header names it); COORD_BIN (and MSGQ_BENCH and MCP_BENCH, the msgq-bench
and mcp-bench examples) use binaries already built instead of building; COORD_STATIC=0
builds dynamic binaries (see scripts/lib/release.sh).

Exit status: 0 when every suite ran (missed targets included: they are in the
table); 1 when a suite failed; 2 on a usage error or a missing requirement.
EOF
}

quick=0
write=default
suites=()
for a in "$@"; do
  case "$a" in
    --quick) quick=1 ;;
    --write) write=yes ;;
    --no-write) write=no ;;
    -h | --help) usage; exit 0 ;;
    -*) echo "bench.sh: unknown option $a (see --help)" >&2; exit 2 ;;
    *) suites+=("$a") ;;
  esac
done
# taskd first: on ext4 without a journal, file creation slows down for minutes after
# many files were deleted (the inode allocator skips recently freed inodes), and the
# msgq and report suites create and delete hundreds of thousands; taskd is the suite
# whose figures depend on it (docs/performance.md, "taskd").
all=(taskd)
for f in scripts/bench/[!_]*.sh; do
  s=$(basename "$f" .sh)
  [ "$s" = taskd ] || all+=("$s")
done
subset=1
if [ ${#suites[@]} -eq 0 ]; then suites=("${all[@]}"); subset=0; fi
for s in "${suites[@]}"; do
  if [ ! -f "scripts/bench/$s.sh" ] || [[ $s == _* ]]; then
    echo "bench.sh: no suite $s (suites: ${all[*]})" >&2
    exit 2
  fi
done
if [ "$write" = default ]; then
  if [ "$quick" = 0 ] && [ "$subset" = 0 ]; then write=yes; else write=no; fi
fi

DOC=docs/performance.md
BEGIN_MARK='<!-- bench:begin -->'
END_MARK='<!-- bench:end -->'
if [ "$write" = yes ]; then
  nb=$(grep -cxF "$BEGIN_MARK" "$DOC" || true)
  ne=$(grep -cxF "$END_MARK" "$DOC" || true)
  lb=$(grep -nxF "$BEGIN_MARK" "$DOC" | cut -d: -f1 || true)
  le=$(grep -nxF "$END_MARK" "$DOC" | cut -d: -f1 || true)
  if [ "$nb" != 1 ] || [ "$ne" != 1 ] || [ "$lb" -ge "$le" ]; then
    echo "bench.sh: $DOC needs one line '$BEGIN_MARK' followed by one line '$END_MARK'" >&2
    exit 2
  fi
fi

for tool in hyperfine jq flock ${COORD_BIN:+-}cargo; do
  [ "$tool" != -cargo ] || continue # binaries given: no build
  command -v "$tool" >/dev/null 2>&1 || { echo "bench.sh: $tool is required (see --help)" >&2; exit 2; }
done
if ! /usr/bin/time -f %M true >/dev/null 2>&1; then
  echo "bench.sh: GNU time (/usr/bin/time) is required" >&2
  exit 2
fi

[ -n "${COORD_BIN:-}" ] || echo "bench.sh: building (release)" >&2
. scripts/lib/release.sh
COORD_BIN=${COORD_BIN:-$(coord_release_dir)}
export COORD_BIN
if [[ " ${suites[*]} " == *" mcp "* ]] && [ -z "${MCP_BENCH:-}" ]; then
  MCP_BENCH=$(coord_release_dir -p coord-mcp --example mcp-bench)/examples/mcp-bench
  export MCP_BENCH
fi
if [[ " ${suites[*]} " == *" msgq "* ]] && [ -z "${MSGQ_BENCH:-}" ]; then
  MSGQ_BENCH=$(coord_release_dir -p msgq --example msgq-bench)/examples/msgq-bench
  export MSGQ_BENCH
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/coord-bench.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
export BENCH_SUMMARY=$tmp/summary.tsv
: >"$BENCH_SUMMARY"

bench_dir=${TMPDIR:-/tmp}
started=$(date -u '+%Y-%m-%d %H:%M UTC')
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
cpu=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null || true)
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
[ -z "$(git status --porcelain --untracked-files=no 2>/dev/null)" ] || commit="$commit with uncommitted changes"
command_line="scripts/bench.sh${*:+ $*}"
mode=$([ "$quick" = 1 ] && echo "quick (--quick: smaller sizes, see --help)" || echo "full")
t_all=$(date +%s)

failed=0
durations=()
for s in "${suites[@]}"; do
  echo "bench.sh: suite $s" >&2
  t0=$(date +%s)
  rc=0
  QUICK=$quick bash "scripts/bench/$s.sh" >"$tmp/$s.md" || rc=$?
  durations+=("$s $(($(date +%s) - t0)) s")
  if [ "$rc" -ne 0 ]; then
    failed=1
    printf '%s\t%s\t%s\t%s\t%s\n' "$s" "the suite failed (exit $rc); its errors are on stderr" "—" "—" failed >>"$BENCH_SUMMARY"
    printf '### %s\n\nThe suite failed (exit %s).\n' "$s" "$rc" >>"$tmp/$s.md"
  fi
  echo
  cat "$tmp/$s.md"
done
elapsed=$(($(date +%s) - t_all))
load_end=$(cut -d' ' -f1-3 /proc/loadavg)

# The summary table: one row per line of $BENCH_SUMMARY, "|" escaped for Markdown.
summary_table() {
  echo "| suite | metric | value | target | status |"
  echo "|---|---|---|---|---|"
  awk -F'\t' '{
    for (i = 1; i <= NF; i++) gsub(/\|/, "\\|", $i)
    st = ($5 == "not met" || $5 == "failed") ? "**" $5 "**" : $5
    printf "| %s | %s | %s | %s | %s |\n", $1, $2, $3, $4, st }' "$BENCH_SUMMARY"
}
count() { awk -F'\t' -v s="$1" '$5 == s { n++ } END { print n + 0 }' "$BENCH_SUMMARY"; }
skips=$(awk -F'\t' '$5 == "skipped" && $3 ~ / not installed$/ { sub(/^skipped: /, "", $3); sub(/ not installed$/, "", $3); print $3 }' "$BENCH_SUMMARY" | sort -u | paste -sd, - | sed 's/,/, /g')
tally="$(count met) met, $(count "not met") not met, $(count info) informational, $(count skipped) skipped$([ "$failed" = 0 ] || echo ", $(count failed) suite(s) failed")"

{
  echo "## Results"
  echo
  echo "Written by \`scripts/bench.sh\`; rerun it rather than editing this part by hand."
  echo
  echo "| | |"
  echo "|---|---|"
  echo "| date | $started |"
  echo "| command | \`$command_line\` |"
  echo "| mode | $mode |"
  echo "| machine | $(nproc) cores (\`nproc\`), $(uname -srm)${cpu:+, $cpu} |"
  echo "| bench directory | \`$bench_dir\` on $(df -PT "$bench_dir" | awk 'NR == 2 { print $2 }') |"
  echo "| load average (1, 5, 15 min) | $load_start at the start, $load_end at the end |"
  echo "| code | commit $commit, release build$([ "${COORD_STATIC:-1}" = 0 ] || echo " (static where glibc allows)") |"
  echo "| duration | $elapsed s: $(printf '%s, ' "${durations[@]}" | sed 's/, $//') |"
  echo "| peers not installed | ${skips:-none} |"
  echo
  echo "### Summary"
  echo
  echo "Ratios are of medians. $tally."
  echo
  summary_table
  for s in "${suites[@]}"; do
    echo
    cat "$tmp/$s.md"
  done
} >"$tmp/block.md"

echo
echo "## Summary ($tally)"
echo
echo "$elapsed s ($(printf '%s, ' "${durations[@]}" | sed 's/, $//')); load average $load_start at the start, $load_end at the end."
echo
summary_table
[ -z "$skips" ] || { echo; echo "Skipped, not installed: $skips."; }

if [ "$failed" = 1 ]; then
  echo "bench.sh: a suite failed; $DOC is left as it is" >&2
  exit 1
fi
if [ "$write" = yes ]; then
  awk -v b="$BEGIN_MARK" -v e="$END_MARK" -v block="$tmp/block.md" '
    $0 == b { print; while ((getline l < block) > 0) print l; skip = 1; next }
    $0 == e { skip = 0 }
    !skip { print }' "$DOC" >"$tmp/doc.md"
  cat "$tmp/doc.md" >"$DOC"
  echo "bench.sh: wrote the results into $DOC" >&2
else
  echo "bench.sh: $DOC not written (--write writes it)" >&2
fi
