#!/usr/bin/env bash
# mcp suite: tool-call round trips through one `coord-mcp` process (the client writes a
# request line and reads the reply) against the same operations as command-line
# processes, in one run of the mcp-bench example (crates/coord-mcp/examples):
#   ping (transport only), heartbeat (a call that touches one file), send, and
#   task_claim + task_complete; `msgq send` and `taskd claim` + `taskd complete`.
# On TMPDIR and, when there is one, on tmpfs (/dev/shm).
#
#   bash scripts/bench/mcp.sh         QUICK=1 for the small sizes
SUITE=mcp
cd "$(dirname "$0")/../.."
. scripts/bench/_lib.sh

n=$(pick 1000 200) # operations of each kind per run
reps=3             # runs per filesystem

BENCH=${MCP_BENCH:-$(coord_release_dir -p coord-mcp --example mcp-bench)/examples/mcp-bench}

SHM=
cleanup() { rm -rf "$WORK" ${SHM:+"$SHM"}; }
trap cleanup EXIT
places=("$WORK")
if [ -d /dev/shm ] && [ -w /dev/shm ] && [ "$(fs_of /dev/shm)" = tmpfs ]; then
  SHM=$(mktemp -d /dev/shm/coord-bench-mcp.XXXXXX)
  places+=("$SHM")
fi

# field RUNS KEY: "median min max" over the runs of KEY's median (µs).
field() { stats $(jq -r ".$2.median" "$1"); }

echo "### coord-mcp"
echo
echo "Round trip of one call at a time through one \`coord-mcp\` process (request line written → reply line read), against the same operation as command-line processes; $(thousands "$n") operations of each kind per run, $reps runs, figures are the median over runs of each run's median, in µs (min–max of the run medians):"
echo
echo "| filesystem | \`ping\` | \`heartbeat\` | \`send\` | \`msgq send\` process | ratio | \`task_claim\` + \`task_complete\` | \`taskd claim\` + \`taskd complete\` processes | ratio |"
echo "|---|---|---|---|---|---|---|---|---|"
for place in "${places[@]}"; do
  fs=$(fs_of "$place")
  : >"$WORK/runs.$fs.jsonl"
  for r in $(seq "$reps"); do
    progress "$fs: run $r of $reps, $n operations each"
    COORD_BASE=$place/base.$r "$BENCH" "$BIN" "$n" >>"$WORK/runs.$fs.jsonl"
    rm -rf "$place/base.$r"
  done
  runs=$WORK/runs.$fs.jsonl
  read -r ping_m ping_lo ping_hi < <(field "$runs" mcp_ping_us)
  read -r hb_m hb_lo hb_hi < <(field "$runs" mcp_heartbeat_us)
  read -r send_m send_lo send_hi < <(field "$runs" mcp_send_us)
  read -r cc_m cc_lo cc_hi < <(field "$runs" mcp_claim_complete_us)
  read -r csend_m csend_lo csend_hi < <(field "$runs" cli_send_us)
  read -r ccc_m ccc_lo ccc_hi < <(field "$runs" cli_claim_complete_us)
  sr=$(div "$csend_m" "$send_m" 1)
  cr=$(div "$ccc_m" "$cc_m" 1)
  echo "| $fs | $(mmr "$ping_m" "$ping_lo" "$ping_hi" 0) | $(mmr "$hb_m" "$hb_lo" "$hb_hi" 0) | $(mmr "$send_m" "$send_lo" "$send_hi" 0) | $(mmr "$csend_m" "$csend_lo" "$csend_hi" 0) | ${sr}× faster | $(mmr "$cc_m" "$cc_lo" "$cc_hi" 0) | $(mmr "$ccc_m" "$ccc_lo" "$ccc_hi" 0) | ${cr}× faster |"
  summary "\`msgq send\` process ÷ MCP \`send\` call, $fs" "${sr}×" "≥ 2×" "$(verdict "$sr" ">=" 2)"
  summary "\`taskd claim\` + \`complete\` processes ÷ MCP calls, $fs" "${cr}×" "≥ 2×" "$(verdict "$cr" ">=" 2)"
  if [ "$fs" = tmpfs ]; then
    summary "MCP \`send\` call on tmpfs" "$(num "$send_m" 0) µs" "< 100 µs" "$(verdict "$send_m" "<" 100)"
    per_call=$(awk -v x="$cc_m" 'BEGIN { print x / 2 }')
    summary "MCP \`task_claim\` + \`task_complete\` on tmpfs, per call" "$(num "$per_call" 0) µs" "< 100 µs" "$(verdict "$per_call" "<" 100)"
  fi
done
if [ -z "$SHM" ]; then
  summary "MCP calls on tmpfs" "skipped: no tmpfs at /dev/shm" "—" skipped
fi
