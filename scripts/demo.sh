#!/usr/bin/env bash
# The end-to-end demo: build the tools, then run one real session and show it working.
#
#   scripts/demo.sh            # uses a fresh private base directory under /tmp
#
# Steps: create a session, register agents, let 8 processes update shared state at the
# same time (nothing is lost), record heartbeats, unregister, show the result.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/need.sh
need_packages jq

cargo build --release --workspace --locked -q
B=$PWD/target/release
export PATH="$B:$PATH"
export COORD_BASE
COORD_BASE=$(mktemp -d /tmp/coord-demo.XXXXXX)/sessions

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "session-init demo"
eval "$(session-init demo --export)"
echo "session $COORD_SESSION in $COORD_BASE"

say "register four agents (each is a background process, as real agents would be)"
pids=()
for i in 1 2 3 4; do
  sleep 30 & pids+=($!)
  cap=$([ $((i % 2)) = 0 ] && echo review || echo build)
  registry register "agent-$i" --type worker --capability "$cap" --pid "${pids[-1]}" | jq -c '{id, type, capabilities, pid, host}'
done
cleanup() { kill "${pids[@]}" 2>/dev/null || true; }
trap cleanup EXIT

say "8 processes x 25 increments of state/global.json, all at once"
state set global /counter 0
for w in 1 2 3 4 5 6 7 8; do
  (
    for _ in $(seq 25); do
      state update global -- jq '.counter += 1' >/dev/null
    done
  ) &
done
wait_jobs() { for j in $(jobs -p); do case " ${pids[*]} " in *" $j "*) ;; *) wait "$j" ;; esac; done; }
wait_jobs
counter=$(state get global /counter)
echo "counter = $counter (expected 200)"
[ "$counter" = 200 ] || { echo "demo: lost updates!" >&2; exit 1; }

say "phase and progress, as the seed's pattern scripts set them"
state set global /phase analysis --string
state update global -- jq '.operation_progress = 50' | jq -c .

say "heartbeats, then agent-4 leaves"
for i in 1 2 3; do registry heartbeat "agent-$i" | jq -c .; done
registry unregister agent-4 | jq -c '{id, status, terminated_at}'

say "who is registered"
registry list | jq -r '[.id, .type, .status, (.capabilities | join(",")), (.last_heartbeat // "-")] | @tsv'

say "session.json"
jq . "$COORD_BASE/$COORD_SESSION/session.json"
echo
echo "demo: done — the session is in $COORD_BASE/$COORD_SESSION"
