# Sourced by the scripts that run the release build (coord.sh, install.sh, bench.sh and
# the benchmark suites).
#
# coord_release_dir [CARGO BUILD ARGS...]: builds in release mode (default: the whole
# workspace) and prints the directory that holds the binaries. On Linux with glibc they
# are linked statically (crt-static, built for the host triple explicitly so that
# proc-macros stay dynamic): a static binary skips the dynamic loader, which is about a
# third of a short command's cost (docs/performance.md). COORD_STATIC=0 builds ordinary
# dynamic binaries in target/release instead.
coord_release_dir() {
  local top host
  top=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
  host=$(rustc -vV | sed -n 's/^host: //p')
  [ $# -gt 0 ] || set -- --workspace
  if [ "${COORD_STATIC:-1}" != 0 ] && [[ $host == *-linux-gnu ]]; then
    (cd "$top" && RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
      cargo build --release --locked -q --target "$host" "$@") >&2
    echo "$top/target/$host/release"
  else
    (cd "$top" && cargo build --release --locked -q "$@") >&2
    echo "$top/target/release"
  fi
}
