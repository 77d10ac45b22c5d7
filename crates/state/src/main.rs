//! `state`: read and change shared JSON state under named locks.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use coord_core::{cli, error::exit, id, output, state};
use serde_json::Value;

/// Read and change a session's shared JSON state
///
/// Each key is one document, state/<KEY>.json. Reads take no lock and always see a
/// complete document. Every change happens under the named lock KEY, so concurrent
/// updates never lose each other's work, and `state lock KEY -- CMD` excludes them.
#[derive(Debug, Parser)]
#[command(version, after_help = EXAMPLES)]
struct Args {
    #[command(flatten)]
    session: cli::SessionArgs,

    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Print a key's document, or the value at a JSON pointer in it
    Get {
        /// State key (state/<KEY>.json)
        #[arg(value_parser = id::parser("state key"))]
        key: String,
        /// RFC 6901 JSON pointer, e.g. /phase or /errors/0
        pointer: Option<String>,
    },
    /// Set the value at a JSON pointer (creating the key and parent objects as needed)
    Set {
        /// State key (state/<KEY>.json)
        #[arg(value_parser = id::parser("state key"))]
        key: String,
        /// RFC 6901 JSON pointer; "" is the whole document, /list/- appends to an array
        pointer: String,
        /// The new value, as JSON (use --string to store text as it is); may start with '-'
        #[arg(allow_hyphen_values = true)]
        value: String,
        /// Store VALUE as a JSON string instead of parsing it
        #[arg(long)]
        string: bool,
    },
    /// Apply a JSON merge patch (RFC 7386) to a key's document and print the result
    #[command(after_help = "In PATCH an object merges member by member, null removes a member, and any other\n\
        value replaces what is there. A new key starts as null, so the patch becomes the document.")]
    Merge {
        /// State key (state/<KEY>.json)
        #[arg(value_parser = id::parser("state key"))]
        key: String,
        /// The patch, as JSON; may start with '-'
        #[arg(allow_hyphen_values = true)]
        patch: String,
    },
    /// Replace a key's document with the output of CMD, which reads the current one on stdin
    #[command(
        after_help = "CMD gets the current document (null for a new key) on stdin while the key's lock is held.\n\
        Its stdout replaces the document only if it exits 0 and prints one valid JSON value;\n\
        otherwise nothing changes and state exits 1."
    )]
    Update {
        /// State key (state/<KEY>.json)
        #[arg(value_parser = id::parser("state key"))]
        key: String,
        /// The command and its arguments
        #[arg(last = true, required = true, value_name = "CMD")]
        cmd: Vec<String>,
    },
    /// Run CMD while holding the named lock; exit with CMD's exit code
    Lock {
        /// Lock name (locks/<NAME>.lock); a state key's name is that key's lock
        #[arg(value_parser = id::parser("lock"))]
        name: String,
        /// The command and its arguments
        #[arg(last = true, required = true, value_name = "CMD")]
        cmd: Vec<String>,
    },
}

const EXAMPLES: &str = "\
Examples:
  state get global /phase
  state set global /phase '\"analysis\"'
  state set global /phase analysis --string
  state set global /warnings/- '{\"msg\": \"slow disk\"}'
  state merge global '{\"phase\": \"analysis\", \"blocked_on\": null}'
  state update global -- jq '.operation_progress = 50'
  state lock deploy -- ./deploy.sh

Exit codes: 0 ok, 1 failed (missing key or pointer, malformed file, CMD failed or printed
invalid JSON, lock timeout), 2 bad usage (invalid id or pointer, invalid JSON VALUE or PATCH, no
such session). `state lock` exits with CMD's code (127 not found, 126 not runnable).";

fn main() -> ExitCode {
    let args: Args = cli::parse();
    cli::run("state", || {
        let dir = args.session.open()?;
        let timeout = args.session.lock_timeout();
        match args.command {
            Cmd::Get { key, pointer } => {
                let value = match pointer {
                    Some(p) => state::get_at(&dir, &key, &p)?,
                    None => state::get(&dir, &key)?,
                };
                output::print(&value)?;
                Ok(exit::OK)
            }
            Cmd::Set { key, pointer, value, string } => {
                let value = if string {
                    Value::String(value)
                } else {
                    serde_json::from_str(&value).map_err(|e| {
                        coord_core::Error::Usage(format!(
                            "VALUE {value:?} is not valid JSON ({e}); quote text as '\"text\"' or pass --string"
                        ))
                    })?
                };
                state::set(&dir, &key, &pointer, value, timeout)?;
                Ok(exit::OK)
            }
            Cmd::Merge { key, patch } => {
                let patch: Value = serde_json::from_str(&patch).map_err(|e| {
                    coord_core::Error::Usage(format!("PATCH {patch:?} is not valid JSON ({e}); nothing was changed"))
                })?;
                output::print(&state::merge(&dir, &key, patch, timeout)?)?;
                Ok(exit::OK)
            }
            Cmd::Update { key, cmd } => {
                output::print(&state::update(&dir, &key, &cmd, timeout)?)?;
                Ok(exit::OK)
            }
            Cmd::Lock { name, cmd } => state::with_lock(&dir, &name, &cmd, timeout),
        }
    })
}
