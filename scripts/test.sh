#!/usr/bin/env bash
# The full test suite: build the tools, then run unit tests and the end-to-end tests
# (which drive the built binaries), then the format and lint checks.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v jq >/dev/null 2>&1; then
  echo "test.sh: the end-to-end tests need jq; install it (apt-get install jq) or run .ci/run" >&2
  exit 2
fi

cargo build --workspace --locked
cargo test --workspace --locked -- "$@"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
