#!/usr/bin/env bash
# coord on a real network filesystem: the kernel's NFS server and client, with two hosts.
#
# This machine's own kernel has no NFS (no nfs/nfsd in /proc/filesystems, no modules to
# load), so the run boots Debian's stock kernel in a qemu virtual machine and does
# everything in there:
#   - the root filesystem is this machine's own, shared read-only over virtio-9p (so the
#     tools, jq and nfs-utils are the ones installed here); a scratch ext4 disk is exported
#     by the kernel NFS server (nfsd, NFSv4.2);
#   - "host a" and "host b" are each a network, mount, UTS and PID namespace with their
#     own veth link to the server, their own NFS client mount of the export and their own
#     COORD_HOST; every coord process of a host runs inside its namespaces;
#   - the same operations are timed on the ext4 disk itself, in the same run.
#
# Usage: scripts/sharedfs.sh [--quick] [--bin DIR] [--out DIR] [--timeout SECS]
#   --quick        the same checks on fewer tasks (200), messages (30 each way) and
#                  increments (8 x 25), and no timings: what the test suite runs
#   --bin DIR      the coord binaries to run (default: the release build of the six
#                  tools the checks use, built or brought up to date first; under an
#                  emulated CPU a debug build's start-up alone costs about a second
#                  per command)
#   --out DIR      where the run's logs, checks.jsonl and figures.jsonl go (default: a
#                  new directory under /tmp, printed at the end)
#   --timeout S    give up on the virtual machine after S seconds (default 2400;
#                  a full run takes about 20 minutes, --quick about 6)
# Exit codes: 0 every check passed, 1 a check failed (printed), 2 bad usage,
#             3 cannot run on this machine (the reason is printed; nothing was checked).
# Needs: x86_64, root or sudo for apt-get (qemu-system-x86, linux-image-amd64,
# busybox-static, nfs-kernel-server, e2fsprogs, iproute2, jq). No KVM needed: qemu
# emulates the CPU, so times inside are several times slower than on this machine; the
# figures compare the NFS mount with ext4 in the same virtual machine.
set -euo pipefail

SELF=$(readlink -f "$0")
ROOT=$(dirname "$(dirname "$SELF")")

# ---------------------------------------------------------------- inside a host's namespaces
# `sharedfs.sh --host NAME ADDR`: the init of a simulated host (PID 1 of its PID namespace).
if [ "${1:-}" = --host ]; then
  hostname "$2"
  mkdir -p /mnt/shared
  mount -t nfs4 -o vers=4.2 "$3:/" /mnt/shared
  touch "/run/host-$2.ready"
  exec sleep infinity
fi

# `sharedfs.sh --call FUNCTION ARGS`: one function of vm.sh, inside the virtual machine.
if [ "${1:-}" = --call ]; then
  . "$ROOT/scripts/sharedfs/vm.sh"
  shift
  "$@"
  exit
fi

# ---------------------------------------------------------------- inside the virtual machine
if [ "${1:-}" = --vm ]; then
  OUT=$2 BIN=$3 QUICK=$4
  export PATH="$BIN:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" LC_ALL=C
  mount -t proc proc /proc
  mount -t sysfs sys /sys
  mount -t devtmpfs dev /dev
  # The writable places. /tmp stays this machine's own (read-only), so a checkout or
  # binaries under /tmp are still seen; temporary files go to /run/tmp.
  for d in /run /mnt /var/lib/nfs; do mount -t tmpfs tmp "$d"; done
  mkdir -p /run/tmp
  export TMPDIR=/run/tmp HOME=/run/tmp
  mkdir -p "$OUT"
  mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 out "$OUT"
  exec >"$OUT/vm.log" 2>&1
  PS4='+ ${EPOCHREALTIME} '
  set -xE
  # What every process is doing, every 20 s, for a run that hangs.
  (set +x; while sleep 20; do ps -eo pid,stat,etime,wchan:24,args >"$OUT/ps.log"; done) &
  finish() {
    # The ERR trap is inherited by background jobs: only PID 1 ends the run.
    [ "$BASHPID" = 1 ] || exit 1
    echo "$1" >"$OUT/exit"
    sync
    echo o >/proc/sysrq-trigger
    sleep 60
  }
  trap 'finish 1' ERR
  . "$ROOT/scripts/sharedfs/vm.sh"
  vm_main
  finish "$failed"
fi

# ---------------------------------------------------------------- on this machine
bin="" out="" limit=2400 quick=0
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=1; shift ;;
    --bin) bin=$(readlink -f "$2"); shift 2 ;;
    --out) out=$2; shift 2 ;;
    --timeout) limit=$2; shift 2 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$SELF" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "sharedfs: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

cannot() {
  echo "sharedfs: cannot run on this machine: $*" >&2
  exit 3
}

[ "$(uname -m)" = x86_64 ] || cannot "the virtual machine boots Debian's amd64 kernel; this is $(uname -m)"
. "$ROOT/scripts/lib/need.sh"
need_packages qemu-system-x86_64:qemu-system-x86 rpc.nfsd:nfs-kernel-server mount.nfs:nfs-common \
  rpcbind mkfs.ext4:e2fsprogs ip:iproute2 nsenter:util-linux cpio modinfo:kmod jq \
  || cannot "the packages above are missing and could not be installed"
# The initramfs needs a static busybox (the busybox package's own is dynamic).
if ! { [ -x /usr/bin/busybox ] && ! ldd /usr/bin/busybox >/dev/null 2>&1; }; then
  need_packages busybox-static-missing:busybox-static >/dev/null 2>&1 || true
  { [ -x /usr/bin/busybox ] && ! ldd /usr/bin/busybox >/dev/null 2>&1; } || cannot "no static busybox (apt-get install busybox-static)"
fi

# A Debian kernel with the NFS modules, and its modules tree.
find_kernel() {
  local v
  for v in $(ls /lib/modules 2>/dev/null | sort -rV); do
    [ -f "/boot/vmlinuz-$v" ] && [ -n "$(modinfo -k "$v" -n nfsd 2>/dev/null)" ] && { echo "$v"; return 0; }
  done
  return 1
}
if ! kver=$(find_kernel); then
  need_packages linux-image-amd64-missing:linux-image-amd64 >/dev/null 2>&1 || true
  kver=$(find_kernel) || cannot "no kernel with NFS modules under /boot and /lib/modules (apt-get install linux-image-amd64)"
fi
[ -r "/boot/vmlinuz-$kver" ] || cannot "/boot/vmlinuz-$kver is not readable"

if [ -z "$bin" ]; then
  . "$ROOT/scripts/lib/release.sh"
  # Only the tools the checks run (coord-mcp, archive and aggregate are not needed).
  bin=$(coord_release_dir -p session-init -p registry -p state -p msgq -p taskd -p healthmon)
fi
[ -x "$bin/taskd" ] || { echo "sharedfs: no coord binaries in $bin" >&2; exit 2; }
# The virtual machine mounts its own filesystems over these, hiding what is there.
for p in "$ROOT" "$bin"; do
  case "$(readlink -f "$p")/" in
    /run/* | /mnt/* | /var/lib/nfs/*) cannot "$p is under /run, /mnt or /var/lib/nfs, which the virtual machine mounts over; use a checkout elsewhere" ;;
  esac
done

[ -n "$out" ] || out=$(mktemp -d /tmp/coord-sharedfs.XXXXXX)
mkdir -p "$out"
out=$(readlink -f "$out")
rm -f "$out"/{exit,vm.log,checks.jsonl,figures.jsonl,console.log}
work=$(mktemp -d /tmp/coord-sharedfs-vm.XXXXXX)
trap 'rm -rf "$work"' EXIT

# The initramfs: a static busybox that loads virtio and 9p, mounts this machine's root
# read-only and switches to it, running `sharedfs.sh --vm` as PID 1.
mkinitramfs() {
  local d=$work/initramfs m f
  mkdir -p "$d"/{bin,mods,proc,sys,dev,newroot}
  cp /usr/bin/busybox "$d/bin/busybox"
  for m in sh mount insmod switch_root sed cat; do ln -s busybox "$d/bin/$m"; done
  declare -A seen=()
  local order=()
  add() {
    local m deps
    for m in "$@"; do
      [ -n "${seen[$m]:-}" ] && continue
      seen[$m]=1
      deps=$(modinfo -k "$kver" -F depends "$m" | tr ',' ' ')
      [ -z "$deps" ] || add $deps
      order+=("$m")
    done
  }
  add virtio_pci 9pnet_virtio 9p
  for m in "${order[@]}"; do
    f=$(modinfo -k "$kver" -n "$m")
    case "$f" in
      *.ko) cp "$f" "$d/mods/" ;;
      *.ko.xz) xz -dc "$f" >"$d/mods/$(basename "${f%.xz}")" ;;
      *.ko.zst) zstd -qdc "$f" >"$d/mods/$(basename "${f%.zst}")" ;;
      *) continue ;;
    esac
    echo "insmod /mods/$(basename "${f%.*}").ko" | sed 's/\.ko\.ko$/.ko/'
  done >"$d/mods/load"
  cat >"$d/init" <<'EOF'
#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
. /mods/load
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144,cache=loose hostroot /newroot || { echo "sharedfs: cannot mount the 9p root"; echo o >/proc/sysrq-trigger; }
cmd=$(sed 's/.*coord\.run=//' /proc/cmdline)
umount /proc /sys /dev
exec switch_root /newroot /bin/bash -c "$cmd"
EOF
  chmod +x "$d/init"
  (cd "$d" && find . | cpio -o -H newc --quiet | gzip -1) >"$work/initramfs.gz"
}
mkinitramfs
truncate -s 2G "$work/disk.img"

echo "sharedfs: booting Debian's $kver under qemu (emulated CPU); log: $out/vm.log" >&2
started=$(date +%s)
set +e
timeout "$limit" qemu-system-x86_64 -accel tcg,thread=multi -m 3072 -smp 2 -nographic -no-reboot \
  -kernel "/boot/vmlinuz-$kver" -initrd "$work/initramfs.gz" \
  -append "console=ttyS0 quiet panic=-1 coord.run=$SELF --vm /mnt/out $bin $quick" \
  -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap \
  -virtfs "local,path=$out,mount_tag=out,security_model=none" \
  -drive "file=$work/disk.img,if=virtio,format=raw,cache=unsafe" \
  </dev/null >"$out/console.log" 2>&1
qemu_rc=$?
set -e
echo "sharedfs: the virtual machine ran $(($(date +%s) - started)) s" >&2

if [ ! -f "$out/exit" ]; then
  echo "sharedfs: the virtual machine ended without a result (qemu exit $qemu_rc); its last lines:" >&2
  tail -n 30 "$out/vm.log" "$out/console.log" >&2 2>/dev/null || true
  exit 1
fi
rc=$(cat "$out/exit")
if [ -s "$out/checks.jsonl" ]; then
  jq -r '"\(if .ok then "ok  " else "FAIL" end) \(.check): \(.detail)"' "$out/checks.jsonl" >&2
fi
if [ -s "$out/figures.jsonl" ]; then
  echo "figures (per operation, inside the emulated machine):" >&2
  jq -r '"  \(.measure): \(.nfs) on NFSv4.2, \(.ext4) on ext4 (\(.ratio)x)"' "$out/figures.jsonl" >&2
fi
case "$rc" in
  0) echo "sharedfs: every check passed; results in $out" >&2 ;;
  3) echo "sharedfs: cannot run here: $(tail -n 1 "$out/vm.log")" >&2 ;;
  *) rc=1; echo "sharedfs: a check failed; see $out/vm.log" >&2 ;;
esac
exit "$rc"
