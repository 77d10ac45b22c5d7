# Sourced by the demo and the pattern scripts: put the tools on PATH, give the script a
# private base directory, and make sure nothing it started outlives it.
#
#   COORD_BIN=DIR   use the tools in DIR (e.g. target/debug) instead of building release
#                   (see scripts/lib/release.sh; COORD_STATIC=0 for dynamic binaries)
#   COORD_BASE=DIR  keep the sessions there instead of a fresh directory under /tmp

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
. "$root/scripts/lib/need.sh"
. "$root/scripts/lib/release.sh"
need_packages jq

if [ -z "${COORD_BIN:-}" ]; then
  COORD_BIN=$(coord_release_dir)
fi
export PATH="$COORD_BIN:$PATH"
export LC_ALL=C # byte-wise tr, sort and sed: the same words on every machine

if [ -z "${COORD_BASE:-}" ]; then
  COORD_BASE=$(mktemp -d "${TMPDIR:-/tmp}/coord-${0##*/}.XXXXXX")/sessions
fi
export COORD_BASE
scratch=$(mktemp -d "${TMPDIR:-/tmp}/coord-scratch.XXXXXX") # the script's own files

# Background processes to stop when the script ends, however it ends.
coord_pids=()
coord_cleanup() {
  stop_bg
  rm -rf "$scratch"
}
trap coord_cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# bg CMD...: start CMD in the background, in its own process group (so that `kill -- -PID`
# reaches it and whatever it runs), and remember it for the cleanup. Sets $! as usual.
bg() {
  setsid "$@" &
  coord_pids+=($!)
}

# wait_bg: wait for every background process started with bg; 1 if any failed.
wait_bg() {
  local p rc=0
  for p in "${coord_pids[@]}"; do wait "$p" || rc=1; done
  coord_pids=()
  return $rc
}

# stop_bg: SIGTERM to every background process started with bg (and what it runs), then
# wait for them. `taskd work` releases its task and unregisters; healthmon stops.
stop_bg() {
  local p
  # The group, or the process itself if it has not called setsid(2) yet.
  for p in "${coord_pids[@]}"; do kill -TERM -- "-$p" 2>/dev/null || kill -TERM "$p" 2>/dev/null || true; done
  for p in "${coord_pids[@]}"; do wait "$p" 2>/dev/null || true; done
  coord_pids=()
}

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
die() { printf '%s: %s\n' "${0##*/}" "$*" >&2; exit 1; }
