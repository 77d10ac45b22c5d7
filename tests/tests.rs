//! End-to-end tests: each drives the built binaries as a user would.
//!
//! Build first (`cargo build --workspace`), then `cargo test`; `scripts/test.sh` does both.

#![allow(clippy::print_stderr)]

mod util;

mod aggregate;
mod architecture;
mod archive;
mod distributed;
mod foundation;
mod healthmon;
mod help;
mod mcp;
mod msgq;
mod patterns;
mod readme;
mod taskd;
mod workflows;
