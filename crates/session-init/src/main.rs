//! `session-init OPERATION`: create a coordination session and print its id.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use coord_core::{Base, cli, env, error::exit, id, session};

/// Create a coordination session and print its id
///
/// Creates <base>/<OPERATION>-<unix-ts> (with -N appended when several sessions of the
/// same operation start in the same second) holding the whole session layout:
/// registry/, state/ (global.json, tasks.json, results.json), messages/, tasks/,
/// results/, locks/, metrics/ and session.json. The base directory is created with
/// mode 0700 if missing; a base that is a symlink or owned by another user is refused.
#[derive(Debug, Parser)]
#[command(version, after_help = EXAMPLES)]
struct Args {
    /// What the session is for; becomes the first part of the session id
    #[arg(value_parser = id::parser("operation"))]
    operation: String,

    /// Print `export COORD_BASE=...` and `export COORD_SESSION=...` lines for eval
    #[arg(long)]
    export: bool,

    /// Directory holding the sessions
    #[arg(long, env = env::BASE, default_value = env::DEFAULT_BASE, value_name = "DIR")]
    base: PathBuf,
}

const EXAMPLES: &str = "\
Examples:
  S=$(session-init build)                 # remember the id
  eval \"$(session-init build --export)\"   # set COORD_SESSION (and COORD_BASE) for the other tools
  session-init nightly --base ./sessions

Exit codes: 0 created, 1 could not create (I/O error), 2 invalid operation or unsafe base";

fn main() -> ExitCode {
    let args: Args = cli::parse();
    cli::run("session-init", || {
        let base = Base::new(&args.base);
        let dir = session::init(&base, &args.operation)?;
        if args.export {
            let base_abs = std::path::absolute(&args.base).unwrap_or_else(|_| args.base.clone());
            println!("export {}={}", env::BASE, shell_quote(&base_abs.to_string_lossy()));
            println!("export {}={}", env::SESSION, shell_quote(dir.id()));
        } else {
            println!("{}", dir.id());
        }
        Ok(exit::OK)
    })
}

/// Single-quotes `s` for POSIX shells.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}
