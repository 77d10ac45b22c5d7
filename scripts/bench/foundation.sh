#!/usr/bin/env bash
# Foundation suite: one `state set` and one `registry heartbeat` as whole processes
# against /bin/true; `state update` throughput with 8 contending processes against the
# hand-written shell equivalent (flock + jq + mv); peak RSS of each command.
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/lib/release.sh
B=${COORD_BIN:-$(coord_release_dir)}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export COORD_BASE=$work/base
S=$("$B/session-init" bench)
export COORD_SESSION=$S
"$B/registry" register w1 --type worker --pid $$ >/dev/null
runs=500; per=200
if [ "${QUICK:-0}" = 1 ]; then runs=100; per=50; fi

hyperfine -N --warmup 20 --runs "$runs" --export-json "$work/h.json" \
  '/bin/true' \
  "$B/state set global /phase x --string" \
  "$B/registry heartbeat w1" \
  "$B/state get global /phase" >/dev/null 2>&1

median() { jq -r --arg c "$1" '.results[] | select(.command == $c) | .median * 1000' "$work/h.json"; }
range() { jq -r --arg c "$1" '.results[] | select(.command == $c) | "\(.min * 1000 | . * 100 | round / 100)–\(.max * 1000 | . * 100 | round / 100)"' "$work/h.json"; }
t_true=$(median /bin/true)

rss() { /usr/bin/time -f %M "$@" 2>&1 >/dev/null | tail -n 1; }

echo "## foundation (state, registry)"
echo
echo "Whole-process wall time, $runs runs each (hyperfine -N), median and min–max:"
echo
echo "| command | median ms | min–max ms | × /bin/true | peak RSS KiB |"
echo "|---|---|---|---|---|"
for c in "/bin/true" "$B/state set global /phase x --string" "$B/registry heartbeat w1" "$B/state get global /phase"; do
  m=$(median "$c")
  # shellcheck disable=SC2086
  r=$(rss $c)
  name=${c#"$B/"}
  printf '| `%s` | %.3f | %s | %.2f | %s |\n' "$name" "$m" "$(range "$c")" "$(echo "$m / $t_true" | bc -l)" "$r"
done
r_update=$(rss "$B/state" update global -- jq '.counter = ((.counter // 0) + 1)')
r_lock=$(rss "$B/state" lock bench -- true)
r_reg=$(rss "$B/registry" register w2 --type worker --pid $$)
r_init=$(rss "$B/session-init" rss)
echo
echo "Peak RSS of the other commands (KiB): state update $r_update, state lock $r_lock, registry register $r_reg, session-init $r_init."

# Contended read-modify-write: 8 processes x $per updates each, once with jq as the
# command (the README's example; jq's own start-up dominates) and once with cat (an
# identity update, so the cost left is the lock, the process and the atomic replace).
contend() { # $1 = label, rest = the command one process runs per update
  local start t
  start=$(date +%s.%N)
  for _ in 1 2 3 4 5 6 7 8; do
    ( for _ in $(seq "$per"); do "${@:2}" >/dev/null || exit 1; done ) &
  done
  wait
  t=$(echo "$(date +%s.%N) - $start" | bc -l)
  echo "$1 $t"
}
f=$COORD_BASE/$S/state/peer.json
total=$((8 * per))
"$B/state" set global /counter 0
echo '{"counter": 0}' > "$f"
read -r _ t_coord < <(contend coord "$B/state" update global -- jq '.counter += 1')
read -r _ t_peer < <(contend shell flock "$f.lock" sh -c "jq '.counter += 1' '$f' > '$f.tmp' && mv '$f.tmp' '$f'")
got=$("$B/state" get global /counter)
got_peer=$(jq .counter "$f")
read -r _ t_coord_cat < <(contend coord "$B/state" update global -- cat)
read -r _ t_peer_cat < <(contend shell flock "$f.lock" sh -c "cat '$f' > '$f.tmp' && mv '$f.tmp' '$f'")
got_after=$("$B/state" get global /counter)

echo
echo "Contended updates, 8 processes × $per updates each, every update a separate process:"
echo
echo "| method | result | updates/s | × shell equivalent |"
echo "|---|---|---|---|"
printf '| `state update global -- jq ".counter += 1"` | counter %s of %s | %.0f | %.2f |\n' "$got" "$total" "$(echo "$total / $t_coord" | bc -l)" "$(echo "$t_peer / $t_coord" | bc -l)"
printf '| `flock f.lock sh -c "jq ... f > tmp && mv tmp f"` | counter %s of %s | %.0f | 1.00 |\n' "$got_peer" "$total" "$(echo "$total / $t_peer" | bc -l)"
printf '| `state update global -- cat` | counter still %s | %.0f | %.2f |\n' "$got_after" "$(echo "$total / $t_coord_cat" | bc -l)" "$(echo "$t_peer_cat / $t_coord_cat" | bc -l)"
printf '| `flock f.lock sh -c "cat f > tmp && mv tmp f"` | — | %.0f | 1.00 |\n' "$(echo "$total / $t_peer_cat" | bc -l)"
