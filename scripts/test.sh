#!/usr/bin/env bash
# The full test suite: build the tools, then run unit tests and the end-to-end tests
# (which drive the built binaries), then the format and lint checks.
set -euo pipefail
cd "$(dirname "$0")/.."

# The end-to-end tests use jq as the example update command.
. scripts/lib/need.sh
need_packages jq

cargo build --workspace --locked
cargo test --workspace --locked -- "$@"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
