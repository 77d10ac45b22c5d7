//! What every binary shares: session options, logging, and the error-to-exit-code map.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use crate::env;
use crate::error::{Result, exit};
use crate::layout::{Base, SessionDir};
use crate::output;

/// `--base` and `--session`, for tools that work on an existing session.
#[derive(Debug, Clone, clap::Args)]
pub struct SessionArgs {
    /// Directory holding the sessions
    #[arg(long, global = true, env = env::BASE, default_value = env::DEFAULT_BASE, value_name = "DIR")]
    pub base: PathBuf,

    /// Session to work on (as printed by session-init)
    #[arg(long, global = true, env = env::SESSION, value_name = "ID")]
    pub session: Option<String>,

    /// Longest wait for a lock, in seconds [env: COORD_LOCK_TIMEOUT] [default: 10]
    #[arg(long, global = true, value_name = "SECS", value_parser = parse_secs)]
    pub lock_timeout: Option<Duration>,
}

impl SessionArgs {
    /// Resolves and checks the session directory.
    pub fn open(&self) -> Result<SessionDir> {
        let base = Base::new(&self.base);
        let id = self
            .session
            .as_deref()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| crate::Error::NoSession { base: self.base.clone() })?;
        base.session(id)
    }

    /// The lock wait bound: `--lock-timeout`, else `COORD_LOCK_TIMEOUT`, else 10 s.
    pub fn lock_timeout(&self) -> Duration {
        self.lock_timeout.unwrap_or_else(crate::lock::default_timeout)
    }
}

/// Parses a non-negative number of seconds or a duration like `90s`, `5m`.
pub fn parse_secs(s: &str) -> std::result::Result<Duration, String> {
    crate::time::parse_duration(s)
}

/// Sets up logging on stderr (`RUST_LOG`, default `warn`), prefixed with the tool name.
pub fn init_logging(tool: &'static str) {
    use std::io::Write;
    let env = env_logger::Env::default().default_filter_or("warn");
    let _ = env_logger::Builder::from_env(env)
        .format(move |buf, record| {
            let level = record.level().to_string().to_lowercase();
            writeln!(buf, "{tool}: {level}: {}", record.args())
        })
        .try_init();
}

/// Runs a tool's body and turns its outcome into the documented exit code.
///
/// Errors print as `<tool>: error: <message>` on stderr. A closed stdout (the reader
/// of a pipe went away) ends the tool quietly with success, as `head` users expect.
pub fn run<F>(tool: &'static str, body: F) -> ExitCode
where
    F: FnOnce() -> Result<u8>,
{
    init_logging(tool);
    match body() {
        Ok(code) => ExitCode::from(code),
        Err(e) if output::is_broken_pipe(&e) => ExitCode::from(exit::OK),
        Err(e) => {
            log::error!("{e}");
            ExitCode::from(e.exit_code())
        }
    }
}
