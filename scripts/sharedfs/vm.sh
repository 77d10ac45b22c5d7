# Sourced by scripts/sharedfs.sh inside its virtual machine (PID 1, root, this machine's
# root filesystem read-only): sets up the NFS server and two simulated hosts, runs the
# checks and the timings. Writes $OUT/checks.jsonl and $OUT/figures.jsonl.

failed=0
declare -A HOSTPID=()

# The sizes of the checks: the full run, or `--quick` (the test suite's), which makes the
# same checks on fewer tasks, messages and increments and times nothing.
if [ "${QUICK:-0}" = 1 ]; then
  TASKS=200 MESSAGES=30 UPDATES=25 CRASH_TASKS=30 FIGURES=0
else
  TASKS=500 MESSAGES=100 UPDATES=100 CRASH_TASKS=60 FIGURES=1
fi
WRITERS=8 # state writers, half on each host

check() { # NAME OK(0|1) DETAIL
  jq -cn --arg c "$1" --argjson ok "$([ "$2" = 1 ] && echo true || echo false)" --arg d "$3" \
    '{check: $c, ok: $ok, detail: $d}' >>"$OUT/checks.jsonl"
  [ "$2" = 1 ] || failed=1
}

figure() { # MEASURE NFS EXT4
  jq -cn --arg m "$1" --argjson n "$2" --argjson e "$3" \
    '{measure: $m, nfs: $n, ext4: $e, ratio: (if $e > 0 then ($n / $e * 100 | round / 100) else null end)}' \
    >>"$OUT/figures.jsonl"
}

now_ms() { echo $(($(date +%s%N) / 1000000)); }

# Runs a command on simulated host H (its namespaces, its NFS mount, its COORD_HOST),
# with COORD_POLL_MS=50 as docs/distributed.md asks of every host on a shared filesystem.
on() {
  local h=$1
  shift
  nsenter -t "${HOSTPID[$h]}" -m -u -n -p -- \
    env COORD_HOST="$h" COORD_BASE=/mnt/shared/base COORD_POLL_MS=50 "$@"
}

server_up() {
  modprobe -a virtio_blk ext4 nfsd nfsv4 nfsv3 veth
  mkfs.ext4 -q -F /dev/vda
  mkdir -p /mnt/export
  mount /dev/vda /mnt/export
  mkdir -p /mnt/export/base /mnt/export/v3 /var/lib/nfs/{v4recovery,sm,sm.bak,nfsdcltrack} /run/rpc_pipefs
  touch /var/lib/nfs/etab /var/lib/nfs/rmtab
  mount -t rpc_pipefs sunrpc /run/rpc_pipefs
  mount -t nfsd nfsd /proc/fs/nfsd
  # The shortest lease and grace period nfsd takes, so a restarted client's locks come
  # back in seconds.
  echo 10 >/proc/fs/nfsd/nfsv4leasetime
  echo 10 >/proc/fs/nfsd/nfsv4gracetime
  ip link set lo up
  rpcbind -w
  exportfs -i -o rw,sync,no_subtree_check,no_root_squash,insecure,fsid=0 '*:/mnt/export'
  exportfs -i -o rw,sync,no_subtree_check,no_root_squash,insecure '*:/mnt/export/v3'
  rpc.mountd
  rpc.nfsd 8
  cat /proc/fs/nfsd/versions
}

start_host() { # NAME N: host NAME on 10.9.N.2, the server at 10.9.N.1
  local h=$1 n=$2 u i
  ip netns add "$h"
  ip link add "v$h" type veth peer name eth0 netns "$h"
  ip addr add "10.9.$n.1/24" dev "v$h"
  ip link set "v$h" up
  ip -n "$h" addr add "10.9.$n.2/24" dev eth0
  ip -n "$h" link set eth0 up
  ip -n "$h" link set lo up
  nsenter --net="/run/netns/$h" unshare --mount --uts --pid --fork --mount-proc \
    bash "$SELF" --host "$h" "10.9.$n.1" &
  u=$!
  for i in $(seq 600); do
    [ -f "/run/host-$h.ready" ] && break
    sleep 0.1
  done
  [ -f "/run/host-$h.ready" ] || { echo "host $h did not mount the export"; return 1; }
  HOSTPID[$h]=$(tr -d " " <"/proc/$u/task/$u/children")
  on "$h" sh -c 'echo "host $(hostname): $(grep " /mnt/shared " /proc/mounts)"'
}

# $TASKS tasks worked by two `taskd work` loops on each host: every task completed exactly once.
tasks_on_both_hosts() {
  local s marks w dup n done_count per_a per_b
  s=$(on a session-init tasks)
  export COORD_SESSION=$s
  marks=/mnt/shared/base/$s.marks
  on a mkdir "$marks"
  seq "$TASKS" | jq -c '{id: "t\(.)"}' | on a taskd submit --batch >/dev/null
  local pids=()
  for w in a1 a2 b1 b2; do
    on "${w:0:1}" taskd work "$w" --type worker --idle-exit 10 -- \
      sh -c 'cat >/dev/null; : >"'"$marks"'/$TASK_ID.$COORD_AGENT.$$"' >"$OUT/work-$w.jsonl" &
    pids+=($!)
  done
  wait "${pids[@]}"
  n=$(on a ls "$marks" | cut -d. -f1 | sort -u | wc -l)
  dup=$(on a ls "$marks" | cut -d. -f1 | sort | uniq -d | wc -l)
  done_count=$(on b taskd list --status completed | wc -l)
  per_a=$(cat "$OUT"/work-a?.jsonl | jq -s 'map(select(.status == "completed")) | length')
  per_b=$(cat "$OUT"/work-b?.jsonl | jq -s 'map(select(.status == "completed")) | length')
  check "$TASKS tasks, work loops on both hosts" \
    "$([ "$n" = "$TASKS" ] && [ "$dup" = 0 ] && [ "$done_count" = "$TASKS" ] && [ "$per_a" -gt 0 ] && [ "$per_b" -gt 0 ] \
      && [ $((per_a + per_b)) = "$TASKS" ] && echo 1 || echo 0)" \
    "ran $n distinct tasks, $dup run twice; $done_count completed (host a $per_a, host b $per_b)"
}

# Messages both ways, received with `recv --wait` under COORD_POLL_MS.
messages_both_ways() {
  local s got_a got_b pids=()
  s=$(on a session-init messages)
  export COORD_SESSION=$s
  # Each receiver is registered as its host's PID 1, which lives as long as the host.
  on a registry register ma --type peer --pid 1 >/dev/null
  on b registry register mb --type peer --pid 1 >/dev/null
  on b sh -c 'for i in $(seq "$1"); do msgq recv mb --wait --timeout 60 --ack || exit 1; done' _ "$MESSAGES" >"$OUT/recv-b.jsonl" &
  pids+=($!)
  on a sh -c 'for i in $(seq "$1"); do msgq recv ma --wait --timeout 60 --ack || exit 1; done' _ "$MESSAGES" >"$OUT/recv-a.jsonl" &
  pids+=($!)
  sleep 1
  on a sh -c 'for i in $(seq "$1"); do msgq send --from ma --to mb --type n --payload "{\"n\":$i}" >/dev/null || exit 1; done' _ "$MESSAGES" &
  pids+=($!)
  on b sh -c 'for i in $(seq "$1"); do msgq send --from mb --to ma --type n --payload "{\"n\":$i}" >/dev/null || exit 1; done' _ "$MESSAGES" &
  pids+=($!)
  wait "${pids[@]}"
  got_b=$(jq -s '[.[].payload.n] | unique | length' "$OUT/recv-b.jsonl")
  got_a=$(jq -s '[.[].payload.n] | unique | length' "$OUT/recv-a.jsonl")
  check "messages both ways, recv --wait with COORD_POLL_MS=50" \
    "$([ "$got_a" = "$MESSAGES" ] && [ "$got_b" = "$MESSAGES" ] && [ "$(wc -l <"$OUT/recv-a.jsonl")" = "$MESSAGES" ] \
      && [ "$(wc -l <"$OUT/recv-b.jsonl")" = "$MESSAGES" ] && echo 1 || echo 0)" \
    "host b got $got_b of $MESSAGES distinct ($(wc -l <"$OUT/recv-b.jsonl") lines), host a $got_a of $MESSAGES ($(wc -l <"$OUT/recv-a.jsonl") lines)"
}

# $WRITERS writers (half per host) x $UPDATES `state update` increments of one key. The
# update command is the shell's own arithmetic: it runs while the key's lock is held, and
# under the emulated CPU a jq there would take most of a second per update.
state_increments() {
  local s w v pids=()
  s=$(on a session-init state)
  export COORD_SESSION=$s
  for w in $(seq "$WRITERS"); do
    on "$([ "$w" -le $((WRITERS / 2)) ] && echo a || echo b)" sh -c \
      'for i in $(seq "$1"); do state update counter --lock-timeout 120 -- \
         sh -c '\''read -r v; [ "$v" = null ] && v=0; echo $((v + 1))'\'' || exit 1; done' _ "$UPDATES" &
    pids+=($!)
  done
  wait "${pids[@]}"
  v=$(on b state get counter)
  check "$WRITERS writers x $UPDATES state update increments across both hosts" \
    "$([ "$v" = $((WRITERS * UPDATES)) ] && echo 1 || echo 0)" "counter is $v ($((WRITERS * UPDATES)) expected)"
}

# kill -9 of every process of host b mid-run: healthmon on host a declares b's agents
# dead by lease (never while b runs), and host a finishes their tasks.
host_b_dies() {
  local s killed_at early dead_b dead_a done_count
  s=$(on a session-init crash)
  export COORD_SESSION=$s
  seq "$CRASH_TASKS" | jq -c '{id: "c\(.)"}' | on a taskd submit --batch >/dev/null
  on a healthmon --interval 1 --stale-after 8 >"$OUT/healthmon.jsonl" 2>"$OUT/healthmon.err" &
  local hm=$!
  on b taskd work b1 --type worker --lease 6 -- sh -c 'cat >/dev/null; sleep 1' >"$OUT/work-crash-b1.jsonl" 2>"$OUT/work-crash-b1.err" &
  on b taskd work b2 --type worker --lease 6 -- sh -c 'cat >/dev/null; sleep 1' >"$OUT/work-crash-b2.jsonl" 2>"$OUT/work-crash-b2.err" &
  # Host a starts working only after host b has run a while, so b holds claims when it dies.
  sleep 12
  on a taskd work a1 --type worker --lease 6 --idle-exit 20 -- sh -c 'cat >/dev/null; sleep 1' >"$OUT/work-crash-a1.jsonl" &
  local a1=$!
  sleep 6
  killed_at=$(date -u +%Y-%m-%dT%H:%M:%S.%3NZ)
  kill -9 "${HOSTPID[b]}"
  sleep 1
  local left_b i a1_rc=0 hm_alive=yes events=/mnt/shared/base/$s/metrics/events.jsonl
  left_b=$(ps -eo pid=,args= | grep -cE '^ *[0-9]+ taskd work b[12] ' || true)
  # healthmon is given up to 90 s to declare both dead (the lease lapses 8 s after the
  # last heartbeat), whatever host a's worker does meanwhile.
  for i in $(seq 180); do
    [ "$(on a jq -r 'select(.event == "agent_dead") | .agent' "$events" 2>/dev/null | grep -c '^b[12]$' || true)" -ge 2 ] && break
    sleep 0.5
  done
  kill -0 "$hm" 2>/dev/null || hm_alive=no
  wait "$a1" || a1_rc=$?
  kill -TERM "$hm" 2>/dev/null || true
  wait "$hm" || true
  early=$(on a jq -c --arg t "$killed_at" 'select(.event == "agent_dead" or .event == "agent_hung") | select(.ts < $t)' \
    "$events" | wc -l)
  dead_b=$(on a jq -r 'select(.event == "agent_dead") | .agent' "$events" | sort -u | tr '\n' ' ')
  dead_a=$(on a jq -r 'select(.event == "agent_dead" or .event == "agent_hung") | select(.agent | startswith("a")) | .agent' \
    "$events" | wc -l)
  done_count=$(on a taskd list --status completed | wc -l)
  local ok=0 why=""
  [ "$early" = 0 ] && [ "$dead_b" = "b1 b2 " ] && [ "$dead_a" = 0 ] && ok=1
  # What a failure needs to be understood without the virtual machine's log: the events
  # healthmon wrote, its stderr, the registrations and what each worker did.
  [ "$ok" = 1 ] || why="; $(trap - ERR; crash_diagnostics "$s" "$left_b" "$hm_alive" "$a1_rc" 2>/dev/null || true)"
  check "kill -9 of host b: declared dead by lease, never before" "$ok" \
    "killed at $killed_at; dead or hung before that: $early; declared dead: ${dead_b:-none}($(dead_after "$events" "$killed_at")); host a agents declared dead: $dead_a$why"
  check "kill -9 of host b: its tasks finished by host a" "$([ "$done_count" = "$CRASH_TASKS" ] && echo 1 || echo 0)" \
    "$done_count of $CRASH_TASKS completed"
}

# How long after KILLED-AT (an RFC 3339 time) the last agent_dead event of EVENTS came.
dead_after() { # EVENTS KILLED-AT
  local last
  last=$(on a jq -r 'select(.event == "agent_dead") | .ts' "$1" | sort | tail -n 1)
  [ -n "$last" ] || { echo "no agent_dead event"; return 0; }
  echo "$(($(date -d "$last" +%s%3N) - $(date -d "$2" +%s%3N))) ms after the kill"
}

crash_diagnostics() { # SESSION B-PROCESSES-LEFT HEALTHMON-ALIVE A1-EXIT: one line
  { set +x; } 2>/dev/null
  set +e +o pipefail
  local w base=/mnt/shared/base/$1
  # Lines with a leading + are the trace of this script, which background jobs inherit.
  echo -n "host b's taskd processes left 1 s after the kill: $2; healthmon running after the wait: $3; host a's worker exited $4"
  echo -n "; events: $(on a jq -r '"\(.ts) \(.event) \(.agent // "-") \(.reason // "")"' "$base/metrics/events.jsonl" | tail -n 12 | tr '\n' '|')"
  echo -n "; healthmon stderr: $(grep -v '^+' "$OUT/healthmon.err" | tail -n 5 | tr '\n' '|')"
  echo -n "; agents: $(on a registry list | jq -r '"\(.id) \(.host) \(.status)"' | tr '\n' ' ')"
  echo -n "; heartbeats: $(on a find "$base/registry/heartbeats" -type f -printf '%f %TT ' 2>&1)"
  echo -n "; completed by:"
  for w in b1 b2 a1; do echo -n " $w $(grep -c '"status":"completed"' "$OUT/work-crash-$w.jsonl")"; done
  echo -n "; stderr of b1 and b2: $(cat "$OUT"/work-crash-b?.err | grep -v '^+' | tail -n 4 | tr '\n' '|')"
}

# An NFSv3 mount with `nolock`, whose locks stay on the host that takes them: every tool
# that needs a lock fails, naming the lock file, and nothing is written unlocked.
lockless_mount() {
  local s good=/mnt/shared/v3/base bad=/mnt/nolock/base cmd out rc before after
  on a mkdir -p /mnt/nolock
  on a mount -t nfs -o vers=3,nolock 10.9.1.1:/mnt/export/v3 /mnt/nolock
  on a grep " /mnt/nolock " /proc/mounts
  # The session, an agent (host a's PID 1, which lives) and a task are made through the
  # NFSv4 mount of the same directory, whose locks work.
  s=$(on a env COORD_BASE="$good" session-init lockless)
  on a env COORD_BASE="$good" COORD_SESSION="$s" registry register w1 --type w --pid 1 >/dev/null
  on a env COORD_BASE="$good" COORD_SESSION="$s" taskd submit --id t1 >/dev/null
  snapshot() { on a find "$good/$s" -printf '%p %s %T@\n' | sort; }
  while read -r cmd; do
    before=$(snapshot)
    # Expected to fail: `|| rc=$?` and the trap reset keep the ERR trap (which ends the run) out of it, and
    # the trace is off so that only the tool's own error is kept.
    rc=0
    { set +x; } 2>/dev/null
    out=$(trap - ERR; on a env COORD_BASE="$bad" COORD_SESSION="$s" sh -c "$cmd" 2>&1 >/dev/null) || rc=$?
    set -x
    after=$(snapshot)
    check "nolock mount: $cmd" \
      "$([ "$rc" = 1 ] && [[ $out == *"cannot lock $bad/$s/"*"keeps file locks on this host only"* ]] \
        && [ "$before" = "$after" ] && echo 1 || echo 0)" \
      "exit $rc, files $([ "$before" = "$after" ] && echo unchanged || echo CHANGED): $out"
  done <<'EOC'
state set k "" 1
state update k -- cat
state merge k '{"a":1}'
registry register w2 --type w --pid 1
registry update w1 --status idle
registry unregister w1
taskd submit --id t2
taskd claim w1
taskd cancel t1
healthmon --once
EOC
}

# Times 100 claim+complete and 100 sends in BASE (run on a host, or on the server's ext4 itself);
# prints one JSON object.
timings() {
  local base=$1 s i out id tok t0 t1 t2
  export COORD_BASE=$base
  mkdir -p "$base"
  s=$(session-init timing)
  export COORD_SESSION=$s
  registry register w1 --type w --pid $$ >/dev/null
  seq 100 | jq -c '{id: "p\(.)"}' | taskd submit --batch >/dev/null
  t0=$(date +%s%N)
  for i in $(seq 100); do
    out=$(taskd claim w1)
    [[ $out =~ \"id\":\"([^\"]+)\" ]] && id=${BASH_REMATCH[1]}
    [[ $out =~ \"claim_token\":\"([^\"]+)\" ]] && tok=${BASH_REMATCH[1]}
    taskd complete "$id" --agent w1 --token "$tok" >/dev/null
  done
  t1=$(date +%s%N)
  for i in $(seq 100); do
    msgq send --allow-unregistered --from w1 --to r1 --type n --payload "{\"n\":$i}" >/dev/null
  done
  t2=$(date +%s%N)
  jq -cn --argjson c "$(((t1 - t0) / 100000))" --argjson m "$(((t2 - t1) / 100000))" \
    '{claim_complete_ms: ($c / 1000), send_ms: ($m / 1000)}'
}

# Median of 10 wake latencies: from the moment `msgq send` (on SENDER) stamps a message
# (its id holds the time in microseconds) to the return of a `msgq recv --wait` already
# waiting for it (on RECEIVER). A host is a or b, or - for the server's own namespaces on
# BASE (ext4). POLL is COORD_POLL_MS (empty: inotify).
wake_latency() { # RECEIVER SENDER BASE POLL
  local r=$1 w=$2 base=$3 poll=$4 s k sent woke rp all=()
  run() { local h=$1; shift; if [ "$h" = - ]; then env COORD_BASE="$base" "$@"; else on "$h" env COORD_BASE="$base" "$@"; fi; }
  s=$(run "$r" session-init wake)
  run "$w" env COORD_SESSION="$s" msgq send --allow-unregistered --from s --to r --type w >/dev/null
  run "$r" env COORD_SESSION="$s" msgq recv r --ack >/dev/null
  for k in $(seq 10); do
    run "$r" env COORD_SESSION="$s" COORD_POLL_MS="$poll" bash -c \
      'msgq recv r --wait --timeout 30 --ack >"$1" && echo "$EPOCHREALTIME"' _ "$OUT/wake.msg" >"$OUT/wake.t1" &
    rp=$!
    sleep 1
    run "$w" env COORD_SESSION="$s" msgq send --allow-unregistered --from s --to r --type w >/dev/null
    wait "$rp"
    sent=$(jq -r '.id | split("-")[1]' "$OUT/wake.msg")
    woke=$(tr -d . <"$OUT/wake.t1")
    all+=($(((woke - sent) / 10)))
  done
  printf '%s\n' "${all[@]}" | sort -n | sed -n 5p | awk '{print $1 / 100}'
}

# The same operations on the NFS mount (host a, or across hosts) and on ext4 (the
# exported filesystem itself, used directly).
figures() {
  local nfs ext4
  nfs=$(on a bash "$SELF" --call timings /mnt/shared/base/timing)
  ext4=$(COORD_POLL_MS=50 bash "$SELF" --call timings /mnt/export/local)
  figure "taskd claim + complete (ms)" "$(jq .claim_complete_ms <<<"$nfs")" "$(jq .claim_complete_ms <<<"$ext4")"
  figure "msgq send (ms)" "$(jq .send_ms <<<"$nfs")" "$(jq .send_ms <<<"$ext4")"
  figure "wake latency, recv --wait, COORD_POLL_MS=50 (ms)" \
    "$(wake_latency a b /mnt/shared/base 50)" "$(wake_latency - - /mnt/export/local 50)"
  figure "wake latency, recv --wait, inotify (ms; NFS: both on host a)" \
    "$(wake_latency a a /mnt/shared/base "")" "$(wake_latency - - /mnt/export/local "")"
}

vm_main() {
  server_up
  start_host a 1
  start_host b 2
  [ "$FIGURES" = 0 ] || figures
  tasks_on_both_hosts
  messages_both_ways
  state_increments
  host_b_dies
  lockless_mount
}
