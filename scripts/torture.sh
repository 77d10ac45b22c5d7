#!/usr/bin/env bash
# Torture: the tools under the faults a session meets in real life, then checked, Jepsen
# style, against what each process logged *after* its operation returned success.
#
#   kill   a mixed workload — message senders and receivers, task workers, state
#          incrementers and the healthmon sidecar, all at once — while random processes
#          are killed with SIGKILL and restarted; then drained: every acknowledged send
#          received, every task completed exactly once, the counter between its
#          acknowledged and its attempted increments.
#   stop   a holder of a task is SIGSTOPped past its lease, the task is requeued
#          (taskd requeue --expired, healthmon --once, taskd requeue --agent in turn) and
#          completed by another worker; then SIGCONT: the stale completion must be
#          refused ("claim lost") and the task stays completed once, with the new result.
#   disk   the mixed workload on a small tmpfs that a filler file keeps full for a while:
#          every tool fails with a message and no panic, and once the filler is gone the
#          session carries on and drains like the kill phase.
#   pidns  short-lived agents in a fresh PID namespace, each dead agent's pid handed at
#          once (ns_last_pid) to a new process: healthmon and taskd work must take them
#          for dead, and their tasks must go back to the queue.
#
# Every phase also checks its session: every JSON file and JSON Lines line parses and no
# lock is held. Failing tool runs are logged with their exit code and first stderr line;
# none may panic or fail without a message.
#
#   scripts/torture.sh [--quick] [kill|stop|disk|pidns]...    (default: all four)
#   KILLS=N TASKS=N STOPS=N DISK_TASKS=N DISK_FULL=SECS DISK_SIZE=SIZE PID_ROUNDS=N
#   KEEP_LOGS=1   keep the logs (always kept when a check fails) and say where
#
# Needs root for the disk (mount) and pidns (unshare) phases; without it they are
# skipped and the table says so. Prints a summary table and exits 1 if any check fails.
# Not run by CI. docs/reliability.md has the figures of a run.
# shellcheck disable=SC2317 # the phases and roles are called indirectly (phase_$ph, bash -c)
set -euo pipefail
# shellcheck source=lib/coord.sh
. "$(dirname "$0")/lib/coord.sh"

quick=0
phases=()
for a in "$@"; do
  case $a in
    --quick) quick=1 ;;
    kill | stop | disk | pidns) phases+=("$a") ;;
    *) die "usage: torture.sh [--quick] [kill|stop|disk|pidns]..." ;;
  esac
done
[ ${#phases[@]} -gt 0 ] || phases=(kill stop disk pidns)
sized() { if [ $quick = 1 ]; then echo "$1"; else echo "$2"; fi; }
KILLS=${KILLS:-$(sized 60 250)}
TASKS=${TASKS:-$(sized 300 2000)}
STOPS=${STOPS:-$(sized 5 20)}
DISK_TASKS=${DISK_TASKS:-$(sized 200 500)}
DISK_FULL=${DISK_FULL:-$(sized 5 15)}
DISK_SIZE=${DISK_SIZE:-$(sized 64m 128m)}
PID_ROUNDS=${PID_ROUNDS:-$(sized 150 600)}

# Processes a phase SIGSTOPs are continued before the cleanup's SIGTERM (which a stopped
# process would never act on), and the phase's tmpfs is unmounted before $scratch goes.
disk_mnt=""
torture_cleanup() {
  local p
  for p in "${coord_pids[@]}"; do kill -CONT -- "-$p" 2>/dev/null || kill -CONT "$p" 2>/dev/null || true; done
  stop_bg
  if [ -n "$disk_mnt" ]; then umount "$disk_mnt" 2>/dev/null || umount -l "$disk_mnt" 2>/dev/null || true; fi
  coord_cleanup
}
trap torture_cleanup EXIT

# The summary table, filled by the phases and printed at the end.
rows=()
fail=0
check() { # $1 = what, $2 = "ok" if it holds, $3 = figure
  if [ "$2" = ok ]; then rows+=("| $1 | $3 | ok |"); else rows+=("| $1 | $3 | **FAILED** |"); fail=1; fi
}
skipped() { rows+=("| $1 | — | skipped: $2 |"); }
if_ok() { if "$@"; then echo ok; fi; } # prints "ok" if the test holds, for check

# try TOOL [ARG]...: runs a tool with its stderr appended to $lg/stderr.TOOL. A failure
# (any exit but 0, and 3 = "nothing to do") is logged as one line "CODE<TAB>TOOL
# SUBCOMMAND<TAB>first stderr line" in $lg/failures. Used by every role; each process
# reuses one file for the stderr of its last run.
try() {
  local err=$lg/.err.$BASHPID rc=0 first=""
  "$@" 2>"$err" || rc=$?
  if [ -s "$err" ]; then
    cat "$err" >>"$lg/stderr.$1"
    IFS= read -r first <"$err" || true
  fi
  if [ "$rc" != 0 ] && [ "$rc" != 3 ]; then printf '%s\t%s %s\t%s\n' "$rc" "$1" "${2:-}" "$first" >>"$lg/failures"; fi
  return "$rc"
}

# The roles of the mixed workload (kill and disk phases). Each runs until killed;
# "acknowledged" lines are written only after the operation returned success, "tried"
# lines before it starts.
sender() { # $1 = sender number, $2 = recipient
  local n=0 key
  while :; do
    n=$((n + 1)); key="s$1-$$-$n"
    if try msgq send --from coordinator --to "$2" --type t --payload "{\"k\":\"$key\"}" >/dev/null; then
      echo "$key" >>"$lg/sent"
    else sleep 0.02; fi
  done
}
receiver() { # $1 = agent
  local batch=$lg/.batch.$BASHPID line
  while :; do
    try msgq recv "$1" --wait --timeout 1 --max 20 >"$batch" || sleep 0.02
    while read -r line; do
      jq -r .payload.k <<<"$line" >>"$lg/received"
      try msgq ack "$1" "$(jq -r .id <<<"$line")" >/dev/null || true
    done <"$batch"
  done
}
worker() { # $1 = agent, $2 = seconds each task takes (default: none)
  local cmd=(true)
  [ -z "${2:-}" ] || cmd=(sleep "$2")
  while :; do try taskd work "$1" --idle-exit 600 -- "${cmd[@]}" >>"$lg/work.$1" || sleep 0.1; done
}
incrementer() {
  while :; do
    echo 1 >>"$lg/tried"
    if try state update global -- jq '.counter = ((.counter // 0) + 1)' >/dev/null; then
      echo 1 >>"$lg/acked"
    else sleep 0.02; fi
  done
}
sidecar() {
  while :; do try healthmon --interval 0.5 --sample-every 0 >>"$lg/healthmon" || sleep 0.1; done
}

declare -a roles pid
start_role() { # $1 = index in roles
  bg bash -c "$(declare -f try sender receiver worker incrementer sidecar); lg=$(printf %q "$lg"); ${roles[$1]}"
  pid[$1]=$!
}
# kill_group PID: SIGKILL to a role's group, or to the process itself if it has not
# called setsid(2) yet.
kill_group() { kill -KILL -- "-$1" 2>/dev/null || kill -KILL "$1" 2>/dev/null || true; }
stop_all() {
  local p
  for p in "${coord_pids[@]}"; do kill_group "$p"; done
  for p in "${coord_pids[@]}"; do wait "$p" 2>/dev/null || true; done
  coord_pids=()
}

# Each drain step is bounded: a step that hangs is a failed check, named in the table.
stuck=()
step() { # $1 = name, rest = command
  local rc=0
  timeout 60 "${@:2}" || rc=$?
  [ "$rc" = 124 ] && stuck+=("$1")
  return 0
}
# drain WORKER...: after stop_all, requeue what the dead held and finish everything.
drain() {
  local w r
  for w in "$@"; do step "taskd requeue --agent $w" taskd requeue --agent "$w" --reason "torture stopped" >/dev/null 2>&1; done
  step "taskd requeue --expired" taskd requeue --expired >/dev/null
  step "taskd work drainer" taskd work drainer --idle-exit 2 -- true >/dev/null
  for r in r1 r2; do
    step "msgq requeue $r" msgq requeue "$r" --max-deliveries 1000 >/dev/null
    step "msgq recv $r" sh -c "msgq recv $r --max 1000000 --ack 2>/dev/null | jq -r .payload.k >>'$lg/received'"
  done
}

session_dir() { echo "$COORD_BASE/$COORD_SESSION"; }

# check_workload LABEL TASKS: the Jepsen checks of the mixed workload, after drain.
check_workload() {
  local label=$1 tasks=$2 sent lost redelivered completed dup counter tried acked
  touch "$lg/sent" "$lg/received" "$lg/tried" "$lg/acked"
  sent=$(sort -u "$lg/sent" | wc -l)
  lost=$(comm -23 <(sort -u "$lg/sent") <(sort -u "$lg/received") | wc -l)
  redelivered=$(($(wc -l <"$lg/received") - $(sort -u "$lg/received" | wc -l)))
  completed=$(taskd list --status completed | wc -l)
  dup=$(completed_twice)
  counter=$(state get global /counter 2>/dev/null || echo 0)
  tried=$(wc -l <"$lg/tried"); acked=$(wc -l <"$lg/acked")
  check "$label: messages acknowledged by send" "$(if_ok [ "$sent" -gt 0 ])" "$sent"
  check "$label: acknowledged messages lost" "$(if_ok [ "$lost" = 0 ])" "$lost"
  check "$label: messages delivered more than once (allowed: at-least-once)" ok "$redelivered"
  check "$label: tasks completed" "$(if_ok [ "$completed" = "$tasks" ])" "$completed of $tasks"
  check "$label: tasks completed more than once" "$(if_ok [ "$dup" = 0 ])" "$dup"
  check "$label: counter within [acknowledged, attempted]" \
    "$([ "$acked" -le "$counter" ] && [ "$counter" -le "$tried" ] && echo ok)" "$acked ≤ $counter ≤ $tried"
}

# completed_twice: tasks with more than one "completed" entry in the results logs.
completed_twice() {
  { cat "$(session_dir)"/results/*.jsonl 2>/dev/null || true; } \
    | jq -r '.tasks[] | select(.status == "completed") | .id' | sort | uniq -d | wc -l
}

# unparsable_json DIR: how many .json files under DIR do not parse as one JSON value
# (one jq per 500 files, each file read whole with --rawfile).
unparsable_json() {
  local bad=0 n=0 f args=()
  # shellcheck disable=SC2016 # a jq program
  local count='[$ARGS.named[] | try (fromjson | 0) catch 1] | add // 0'
  while IFS= read -r -d '' f; do
    args+=(--rawfile "f$n" "$f"); n=$((n + 1))
    if [ "$n" = 500 ]; then bad=$((bad + $(jq -n "${args[@]}" "$count"))); args=(); n=0; fi
  done < <(find "$1" -name '*.json' -print0)
  if [ "$n" -gt 0 ]; then bad=$((bad + $(jq -n "${args[@]}" "$count"))); fi
  echo "$bad"
}

# check_store LABEL: every JSON file and every JSON Lines line of the session parses,
# and no lock (tool or user lock, or a task's lock: the flock of its locator) is held.
check_store() {
  local label=$1 dir bad lines=0 held=0 f
  dir=$(session_dir)
  bad=$(unparsable_json "$dir")
  while IFS= read -r -d '' f; do
    lines=$((lines + $(jq -nR '[inputs | try (fromjson | 0) catch 1] | add // 0' "$f")))
  done < <(find "$dir" -name '*.jsonl' -print0)
  while IFS= read -r -d '' f; do flock -n "$f" true || held=$((held + 1)); done \
    < <(find "$dir/locks" -name '*.lock' -print0 2>/dev/null; find "$dir/tasks/ids" -name '*.json' -print0 2>/dev/null)
  check "$label: unparsable JSON files" "$(if_ok [ "$bad" = 0 ])" "$bad"
  check "$label: unparsable JSON Lines lines" "$(if_ok [ "$lines" = 0 ])" "$lines"
  check "$label: locks still held" "$(if_ok [ "$held" = 0 ])" "$held"
}

# check_failures LABEL: the failing tool runs the roles logged. Each must exit 1 or 2
# with a message; none may panic (Rust's panic exits 101 and says "panicked").
check_failures() {
  local label=$1 n unclear panics
  touch "$lg/failures"
  n=$(wc -l <"$lg/failures")
  unclear=$(awk -F'\t' '($1 != 1 && $1 != 2) || $3 == ""' "$lg/failures" | wc -l)
  panics=$(cat "$lg"/stderr.* 2>/dev/null | grep -c panicked || true)
  check "$label: failing tool runs without a message or with another exit code than 1, 2 (of all failing runs)" \
    "$(if_ok [ "$unclear" = 0 ])" "$unclear of $n"
  check "$label: panics" "$(if_ok [ "$panics" = 0 ])" "$panics"
  if [ "$unclear" != 0 ]; then awk -F'\t' '($1 != 1 && $1 != 2) || $3 == ""' "$lg/failures" | sort | uniq -c | head >&2; fi
}

stale_total=0   # "claim lost" refusals seen by all phases
stop_elsewhere=0 # SIGSTOP rounds whose task another worker completed

# ---------------------------------------------------------------------------------------
phase_kill() {
  lg=$scratch/kill; mkdir -p "$lg"
  eval "$(session-init torture --export)"
  say "kill: session $COORD_SESSION, $TASKS tasks, $KILLS kills"
  for r in r1 r2; do registry register "$r" --type receiver --pid $$ >/dev/null; done
  seq "$TASKS" | jq -c '{id: "t\(.)", max_attempts: 1000}' | taskd submit --batch >/dev/null
  roles=("sender 1 r1" "sender 2 r2" "receiver r1" "receiver r2" "worker w1" "worker w2" "worker w3"
    "incrementer" "incrementer" "sidecar")
  pid=()
  local i kills=0
  for i in "${!roles[@]}"; do start_role "$i"; done
  while [ "$kills" -lt "$KILLS" ]; do
    sleep "0.0$((RANDOM % 9 + 1))"
    i=$((RANDOM % ${#roles[@]}))
    kill_group "${pid[$i]}"
    wait "${pid[$i]}" 2>/dev/null || true
    kills=$((kills + 1))
    start_role "$i"
  done
  say "kill: stopping (SIGKILL, like every other stop here), requeueing and draining"
  stop_all
  stuck=()
  drain w1 w2 w3
  say "kill: checking"
  local stale
  touch "$lg/stderr.taskd"
  stale=$(grep -c "claim lost" "$lg/stderr.taskd" || true)
  stale_total=$((stale_total + stale))
  check "kill: kills (SIGKILL of a random process)" "$(if_ok [ "$kills" -ge "$KILLS" ])" "$kills"
  check "kill: drain steps that hung (over 60 s)" "$(if_ok [ ${#stuck[@]} = 0 ])" "${#stuck[@]}${stuck[*]:+: ${stuck[*]}}"
  check_workload kill "$TASKS"
  check_store kill
  check_failures kill
}

# ---------------------------------------------------------------------------------------
# stop_holder AGENT READY: a shell that holds a task by hand: claims it with a 1 s lease,
# says so in READY, works for 2 s, then completes it with its claim token.
stop_holder() {
  registry register "$1" --type worker >/dev/null
  local t rc=0
  t=$(taskd claim "$1" --lease 1)
  printf '%s\n' "$t" >"$2.tmp" && mv "$2.tmp" "$2"
  sleep 2
  taskd complete "$(jq -r .id <<<"$t")" --agent "$1" --token "$(jq -r .claim_token <<<"$t")" --result '"stale"' \
    >/dev/null || rc=$?
  echo "complete exit $rc"
  registry unregister "$1" >/dev/null
}

# wait_exit PID SECS: waits for a background process; sets exit_rc to its exit code, or
# to "hung" (and kills it) if it is still running after SECS.
exit_rc=0
wait_exit() {
  local t=0
  exit_rc=0
  while kill -0 "$1" 2>/dev/null && [ "$t" -lt $(($2 * 10)) ]; do sleep 0.1; t=$((t + 1)); done
  if kill -0 "$1" 2>/dev/null; then kill_group "$1"; wait "$1" 2>/dev/null || true; exit_rc=hung; return; fi
  wait "$1" || exit_rc=$?
}

phase_stop() {
  lg=$scratch/stop; mkdir -p "$lg"
  eval "$(session-init torture-stop --export)"
  say "stop: session $COORD_SESSION, $STOPS rounds of SIGSTOP past the lease"
  local r id ready p how t st out refused=0 elsewhere=0 early=0 requeue_failed=0 hung=0 wrong=0
  local -A routes=()
  for r in $(seq "$STOPS"); do
    id=stop-$r; ready=$lg/ready.$r
    taskd submit --id "$id" --max-attempts 100 >/dev/null
    # Odd rounds: the worker loop holds the task (and beats every lease/3 until stopped);
    # even rounds: a shell holding it by hand (claim, then complete --token).
    if [ $((r % 2)) = 1 ]; then
      # shellcheck disable=SC2016 # expanded by sh
      bg taskd work "stale$r" --max-tasks 1 --lease 1 -- sh -c 'touch "$1"; sleep 2; echo stale' _ "$ready" \
        >"$lg/out.$r" 2>"$lg/err.$r"
    else
      bg bash -c "$(declare -f stop_holder); stop_holder stale$r $ready" >"$lg/out.$r" 2>"$lg/err.$r"
    fi
    p=$!
    for t in $(seq 200); do [ -e "$ready" ] && break; sleep 0.05; done
    kill -STOP -- "-$p" 2>/dev/null || kill -STOP "$p" 2>/dev/null || true
    sleep 1.5 # past the 1 s lease, counted from the last heartbeat
    case $((r % 3)) in
      0) how="taskd requeue --expired" ;;
      1) how="healthmon --once" ;;
      2) how="taskd requeue --agent" ;;
    esac
    # Requeue until the task is pending (a loaded machine may need a moment more).
    for t in $(seq 20); do
      case $how in
        "taskd requeue --expired") taskd requeue --expired --reason "torture: holder stopped" >/dev/null ;;
        "healthmon --once") healthmon --once --sample-every 0 >>"$lg/healthmon" || true ;;
        "taskd requeue --agent") taskd requeue --agent "stale$r" --reason "torture: holder stopped" >/dev/null ;;
      esac
      st=$(taskd show "$id" | jq -r .status)
      [ "$st" = claimed ] || break
      sleep 0.25
    done
    if [ "$st" = pending ]; then
      routes[$how]=$((${routes[$how]:-0} + 1))
      out=$(timeout 60 taskd work other --max-tasks 1 --idle-exit 5 -- echo fresh 2>>"$lg/err.other" || true)
      if jq -e --arg id "$id" 'select(.id == $id and .status == "completed")' <<<"$out" >/dev/null; then
        elsewhere=$((elsewhere + 1))
      fi
    elif [ "$st" = completed ]; then
      early=$((early + 1)) # the holder finished before SIGSTOP took hold: nothing to refuse
    else
      requeue_failed=$((requeue_failed + 1))
    fi
    kill -CONT -- "-$p" 2>/dev/null || kill -CONT "$p" 2>/dev/null || true
    wait_exit "$p" 30
    coord_pids=()
    if [ "$exit_rc" = hung ]; then hung=$((hung + 1)); fi
    # The refusal: the worker reports the task "lost" and logs "claim lost"; by hand,
    # complete exits 1 saying "claim lost".
    if grep -q "claim lost" "$lg/err.$r" &&
      { grep -q '"status":"lost"' "$lg/out.$r" || grep -q "complete exit 1" "$lg/out.$r"; }; then
      refused=$((refused + 1))
    fi
    # Whoever completed it last, the result must be the one of the completion that counted.
    if [ "$st" = pending ] && [ "$(taskd show "$id" | jq -r .results)" != fresh ]; then wrong=$((wrong + 1)); fi
  done
  stale_total=$((stale_total + refused))
  stop_elsewhere=$elsewhere
  local completed dup held_routes=""
  for how in "${!routes[@]}"; do held_routes+="${held_routes:+, }$how ${routes[$how]}"; done
  completed=$(taskd list --status completed | wc -l)
  dup=$(completed_twice)
  check "stop: rounds (holder SIGSTOPped past its 1 s lease)" "$(if_ok [ "$requeue_failed" = 0 ])" \
    "$STOPS (requeued by ${held_routes:-nothing}; holder done before the stop: $early; not requeued: $requeue_failed)"
  check "stop: tasks completed by another worker while the holder was stopped" "$(if_ok [ "$elsewhere" -gt 0 ])" "$elsewhere"
  check "stop: stale completions refused (claim lost)" "$(if_ok [ "$refused" -ge "$elsewhere" ])" "$refused"
  check "stop: tasks whose result is not the new holder's" "$(if_ok [ "$wrong" = 0 ])" "$wrong"
  check "stop: holders that hung after SIGCONT (over 30 s)" "$(if_ok [ "$hung" = 0 ])" "$hung"
  check "stop: tasks completed" "$(if_ok [ "$completed" = "$STOPS" ])" "$completed of $STOPS"
  check "stop: tasks completed more than once" "$(if_ok [ "$dup" = 0 ])" "$dup"
  check_store stop
}

# ---------------------------------------------------------------------------------------
phase_disk() {
  lg=$scratch/disk; mkdir -p "$lg"
  local mnt=$scratch/mnt
  mkdir -p "$mnt"
  if ! mount -t tmpfs -o "size=$DISK_SIZE" tmpfs "$mnt" 2>"$lg/mount.err"; then
    skipped "disk: full tmpfs" "mount -t tmpfs is not permitted here ($(head -n 1 "$lg/mount.err"))"
    return
  fi
  disk_mnt=$mnt
  local saved_base=$COORD_BASE
  export COORD_BASE=$mnt/sessions
  eval "$(session-init torture-disk --export)"
  say "disk: session $COORD_SESSION on a $DISK_SIZE tmpfs, $DISK_TASKS tasks, full for $DISK_FULL s"
  for r in r1 r2; do registry register "$r" --type receiver --pid $$ >/dev/null; done
  seq "$DISK_TASKS" | jq -c '{id: "d\(.)", max_attempts: 1000}' | taskd submit --batch >/dev/null
  roles=("sender 1 r1" "sender 2 r2" "receiver r1" "receiver r2" "worker d1 0.1" "worker d2 0.1"
    "incrementer" "sidecar")
  pid=()
  local i
  for i in "${!roles[@]}"; do start_role "$i"; done
  sleep 3
  # Fill: the filler grows into whatever the workload frees, until the time is up.
  local before_full end min_free=-1 free freed hm_before hm_after
  touch "$lg/failures"
  before_full=$(wc -l <"$lg/failures")
  hm_before=$(pgrep -g "${pid[7]}" -x healthmon || true)
  end=$((SECONDS + DISK_FULL))
  while [ "$SECONDS" -lt "$end" ]; do
    cat /dev/zero >>"$mnt/filler" 2>/dev/null || true
    free=$(df -k --output=avail "$mnt" | tail -n 1 | tr -d ' ')
    if [ "$min_free" = -1 ] || [ "$free" -lt "$min_free" ]; then min_free=$free; fi
    sleep 0.2
  done
  local full_failures nospace
  tail -n +"$((before_full + 1))" "$lg/failures" >"$lg/failures.full"
  full_failures=$(wc -l <"$lg/failures.full")
  nospace=$(grep -c "No space left on device" "$lg/failures.full" || true)
  hm_after=$(pgrep -g "${pid[7]}" -x healthmon || true)
  rm -f "$mnt/filler"
  say "disk: filler removed, carrying on"
  freed=$(df -k --output=avail "$mnt" | tail -n 1 | tr -d ' ')
  sleep 5
  # Claims whose holder is no longer registered as active: only a lease would free them.
  local stranded
  stranded=$(taskd list --status claimed | jq -r .assigned_to | while read -r a; do
    registry show "$a" 2>/dev/null | jq -r .status; done | grep -vc '^active$' || true)
  stop_all
  { df -k "$mnt"; du -sk "$(session_dir)"/* "$(session_dir)"/messages/*/*; } >"$lg/df.stopped" 2>&1
  # Acknowledged messages stay in done/ (about 4 KiB each on tmpfs): a workload that
  # outruns DISK_SIZE fills the disk again by itself, and the drain cannot run.
  local free_at_stop
  free_at_stop=$(df -k --output=avail "$mnt" | tail -n 1 | tr -d ' ')
  stuck=()
  drain d1 d2
  say "disk: checking"
  check "disk: tool runs that failed while the disk was full (naming ENOSPC)" \
    "$(if_ok [ "$nospace" -gt 0 ])" "$full_failures ($nospace); free: ${min_free} KiB at the fullest, $freed KiB once the filler was removed"
  check "disk: healthmon process the same before and after the full disk" \
    "$([ -n "$hm_before" ] && [ "$hm_before" = "$hm_after" ] && echo ok)" "pid ${hm_before:-none} → ${hm_after:-none}"
  check "disk: claims held by an agent no longer active, after the disk was freed" "$(if_ok [ "$stranded" = 0 ])" "$stranded"
  check "disk: space left when the workload stopped (none: raise DISK_SIZE)" \
    "$(if_ok [ "$free_at_stop" -gt 0 ])" "$free_at_stop KiB"
  check "disk: drain steps that hung (over 60 s)" "$(if_ok [ ${#stuck[@]} = 0 ])" "${#stuck[@]}${stuck[*]:+: ${stuck[*]}}"
  check_workload disk "$DISK_TASKS"
  check_store disk
  check_failures disk
  local stale
  touch "$lg/stderr.taskd"
  stale=$(grep -c "claim lost" "$lg/stderr.taskd" || true)
  stale_total=$((stale_total + stale))
  cp -a "$(session_dir)" "$lg/session" # for a look after the run (KEEP_LOGS=1)
  export COORD_BASE=$saved_base
  umount "$mnt" || umount -l "$mnt"
  disk_mnt=""
}

# ---------------------------------------------------------------------------------------
# pidns_agents ROUNDS: runs as pid 1 of a fresh PID namespace (with its own /proc), with
# healthmon beside it. Each round starts one short-lived agent:
#   0  a worker loop (under one of three names) whose command finishes the task;
#   1  one whose command SIGKILLs the worker while it holds the task;
#   2  a shell that registers itself under one of the three names, claims and is SIGKILLed;
#   3  a sleep registered by pid under a name of its own, SIGKILLed at once.
# The pid of an agent that died goes at once (ns_last_pid) to a new process: for kind 3,
# and every other time otherwise, a squatter (sleep); else the next agent. Kind 3 is
# quick enough that its squatter often starts in the agent's own clock tick (10 ms).
pidns_agents() {
  local rounds=$1 i name p want prev=0 rc kind hm t active claimed
  healthmon --interval 0.2 --sample-every 0 >>"$lg/healthmon" 2>>"$lg/stderr.healthmon" &
  hm=$!
  for i in $(seq "$rounds"); do
    name=a$((RANDOM % 3))
    kind=$((i % 4))
    want=0
    if [ "$prev" -gt 1 ]; then
      want=$prev
      echo $((prev - 1)) >/proc/sys/kernel/ns_last_pid
    fi
    # shellcheck disable=SC2016 # expanded by the inner shells
    case $kind in
      0) taskd work "$name" --max-tasks 1 --idle-exit 5 -- echo ok >>"$lg/work" 2>>"$lg/stderr.taskd" & ;;
      1) taskd work "$name" --max-tasks 1 --idle-exit 5 -- sh -c 'kill -KILL $PPID; sleep 0.1' \
        >>"$lg/work" 2>>"$lg/stderr.taskd" & ;;
      2) bash -c 'registry register "$1" --type worker >/dev/null && taskd claim "$1" >/dev/null; kill -KILL $$' \
        _ "$name" 2>>"$lg/stderr.shell" & ;;
      3) sleep 60 & ;;
    esac
    p=$!
    if [ "$want" != 0 ]; then
      if [ "$p" = "$want" ]; then echo "agent $p" >>"$lg/reused"; else echo "agent $p (wanted $want)" >>"$lg/missed"; fi
    fi
    if [ "$kind" = 3 ]; then
      registry register "s$i" --type worker --pid "$p" >/dev/null 2>>"$lg/stderr.registry" || true
      kill -KILL "$p"
    fi
    rc=0
    { wait "$p"; } 2>/dev/null || rc=$? # (bash would say "Killed" on stderr)
    prev=0
    if [ "$rc" = 137 ]; then
      if [ "$kind" = 3 ] || [ $((i % 2)) = 0 ]; then
        echo $((p - 1)) >/proc/sys/kernel/ns_last_pid
        sleep 3600 &
        if [ "$!" = "$p" ]; then echo "squatter $p" >>"$lg/reused"; else echo "squatter $! (wanted $p)" >>"$lg/missed"; fi
      else
        prev=$p
      fi
    fi
    echo "$i $kind $name $p $rc" >>"$lg/agents"
  done
  # Every agent has ended; healthmon must say so for each, whoever holds its pid now.
  for t in $(seq 100); do
    active=$(registry list --status active | wc -l)
    claimed=$(taskd list --status claimed | wc -l)
    [ "$active" = 0 ] && [ "$claimed" = 0 ] && break
    sleep 0.1
  done
  registry list --status active >"$lg/active"
  taskd list --status claimed >"$lg/claimed"
  kill -TERM "$hm"
  wait "$hm" || true
}

phase_pidns() {
  lg=$scratch/pidns; mkdir -p "$lg"
  if ! unshare --pid --fork --mount-proc sh -c 'echo 100 >/proc/sys/kernel/ns_last_pid' 2>"$lg/unshare.err"; then
    skipped "pidns: PID pressure" "unshare --pid --fork --mount-proc, or writing ns_last_pid in it, is not permitted here ($(head -n 1 "$lg/unshare.err"))"
    return
  fi
  eval "$(session-init torture-pidns --export)"
  say "pidns: session $COORD_SESSION, $PID_ROUNDS short-lived agents in a fresh PID namespace"
  seq "$PID_ROUNDS" | jq -c '{id: "p\(.)", max_attempts: 1000}' | taskd submit --batch >/dev/null
  local rc=0
  timeout 900 unshare --pid --fork --mount-proc --kill-child \
    bash -c "$(declare -f pidns_agents); lg=$(printf %q "$lg"); pidns_agents $PID_ROUNDS" || rc=$?
  touch "$lg/reused" "$lg/missed" "$lg/agents"
  say "pidns: draining and checking"
  stuck=()
  step "taskd requeue --expired" taskd requeue --expired >/dev/null
  step "taskd work drainer" taskd work drainer --idle-exit 2 -- true >/dev/null
  local died reused missed onreused sametick active claimed names refused completed dup
  died=$(awk '$5 == 137' "$lg/agents" | wc -l)
  reused=$(wc -l <"$lg/reused"); missed=$(wc -l <"$lg/missed")
  jq -r 'select(.event == "agent_dead") | .reason' "$(session_dir)/metrics/events.jsonl" >"$lg/dead" 2>/dev/null || true
  onreused=$(grep -c "belongs to another process" "$lg/dead" || true)
  sametick=$(grep -c "clock tick" "$lg/dead" || true)
  active=$(wc -l <"$lg/active"); claimed=$(wc -l <"$lg/claimed")
  names=$(jq '[.[].id] | length - (unique | length)' "$(session_dir)/registry/agents.json")
  completed=$(taskd list --status completed | wc -l)
  dup=$(completed_twice)
  check "pidns: namespace run (exit code)" "$(if_ok [ "$rc" = 0 ])" "$rc"
  check "pidns: short-lived agents (SIGKILLed)" "$(if_ok [ "$(wc -l <"$lg/agents")" = "$PID_ROUNDS" ])" \
    "$(wc -l <"$lg/agents") ($died)"
  check "pidns: dead agents' pids taken at once by a new process (missed)" "$(if_ok [ "$reused" -gt 0 ])" "$reused ($missed)"
  check "pidns: agent_dead verdicts on a reused pid (of which taken in the agent's own clock tick)" \
    "$(if_ok [ "$onreused" -gt 0 ])" "$onreused ($sametick)"
  check "pidns: ended agents still active after 10 s" "$(if_ok [ "$active" = 0 ])" "$active"
  check "pidns: tasks still claimed after 10 s (all agents ended)" "$(if_ok [ "$claimed" = 0 ])" "$claimed"
  check "pidns: registrations sharing a name" "$(if_ok [ "$names" = 0 ])" "$names"
  touch "$lg/stderr.taskd" "$lg/work"
  refused=$(grep -c "another worker runs under this id" "$lg/stderr.taskd" || true)
  check "pidns: workers refused because an ended agent's registration looked alive" "$(if_ok [ "$refused" = 0 ])" "$refused"
  check "pidns: drain steps that hung (over 60 s)" "$(if_ok [ ${#stuck[@]} = 0 ])" "${#stuck[@]}${stuck[*]:+: ${stuck[*]}}"
  check "pidns: tasks completed" "$(if_ok [ "$completed" = "$PID_ROUNDS" ])" "$completed of $PID_ROUNDS"
  check "pidns: tasks completed more than once" "$(if_ok [ "$dup" = 0 ])" "$dup"
  check_store pidns
  check_failures pidns
}

for ph in "${phases[@]}"; do
  started=$SECONDS
  "phase_$ph"
  rows+=("| $ph: time taken | $((SECONDS - started)) s | |")
done

if [[ " ${phases[*]} " = *" stop "* ]]; then
  check "stale completions refused (claim lost), all phases; ≥ SIGSTOP rounds completed elsewhere ($stop_elsewhere)" \
    "$([ "$stale_total" -ge "$stop_elsewhere" ] && [ "$stale_total" -gt 0 ] && echo ok)" "$stale_total"
else
  check "stale completions refused (claim lost), all phases" ok "$stale_total"
fi
echo
echo "| check | figure | |"
echo "|---|---|---|"
printf '%s\n' "${rows[@]}"
# The logs of a failed run (or of any run, with KEEP_LOGS=1) outlive the scratch directory.
if [ $fail = 1 ] || [ "${KEEP_LOGS:-0}" = 1 ]; then
  kept=$(mktemp -d "${TMPDIR:-/tmp}/torture-logs.XXXXXX")
  cp -r "$scratch"/kill "$scratch"/stop "$scratch"/disk "$scratch"/pidns "$kept"/ 2>/dev/null || true
  echo "logs kept in $kept; sessions in $COORD_BASE"
fi
exit $fail
