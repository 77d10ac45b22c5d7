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

/// Parses a non-negative number of seconds or a duration like `90s`, `5m` (at most 100 years).
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
/// Errors print as `<tool>: error: <message>` on stderr. "Nothing there" (exit 3: an
/// empty mailbox or queue, a wait that timed out) is an answer, not an error, and prints
/// as `<tool>: <message>`. A closed stdout (the reader of a pipe went away) ends the tool
/// quietly with success, as `head` users expect.
pub fn run<F>(tool: &'static str, body: F) -> ExitCode
where
    F: FnOnce() -> Result<u8>,
{
    init_logging(tool);
    match body() {
        Ok(code) => ExitCode::from(code),
        Err(e) if output::is_broken_pipe(&e) => ExitCode::from(exit::OK),
        Err(e @ crate::Error::Empty(_)) => {
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "{tool}: {e}");
            ExitCode::from(e.exit_code())
        }
        Err(e) => {
            log::error!("{e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// Parses the command line into `A`, as `A::parse()` does; with `COORD_GENERATE` set,
/// writes shell completions or man pages generated from `A`'s definition instead, prints
/// the paths written, and exits.
///
/// `COORD_GENERATE=KIND:DIR` with KIND one of `bash`, `zsh`, `fish`, `elvish`,
/// `powershell` (a completion script) or `man` (one page for the tool and one per
/// subcommand) writes into DIR, which must exist. Packagers and `scripts/install.sh`
/// use it; a bad value is exit 2.
pub fn parse<A: clap::Parser>() -> A {
    if let Some(spec) = std::env::var_os(env::GENERATE) {
        let code = match generate(A::command(), &spec.to_string_lossy()) {
            Ok(paths) => {
                for p in paths {
                    println!("{}", p.display());
                }
                exit::OK
            }
            Err(msg) => {
                #[allow(clippy::print_stderr)] // before logging is set up, and it must show
                {
                    eprintln!("{}: error: {}={spec:?}: {msg}", A::command().get_name(), env::GENERATE);
                }
                exit::USAGE
            }
        };
        std::process::exit(i32::from(code));
    }
    A::parse()
}

/// Writes the completions or man pages `spec` (`KIND:DIR`) asks for; returns the files.
fn generate(mut cmd: clap::Command, spec: &str) -> std::result::Result<Vec<PathBuf>, String> {
    use clap_complete::Shell;
    let (kind, dir) = spec.split_once(':').ok_or("expected KIND:DIR, e.g. bash:/tmp/out")?;
    let dir = PathBuf::from(dir);
    if !dir.is_dir() {
        return Err(format!("{} is not a directory", dir.display()));
    }
    let name = cmd.get_name().to_string();
    if kind == "man" {
        cmd.build();
        let mut written = Vec::new();
        man_pages(&cmd, &name, &dir, &mut written)?;
        return Ok(written);
    }
    let shell: Shell =
        kind.parse().map_err(|_| format!("unknown kind {kind:?}: bash, zsh, fish, elvish, powershell or man"))?;
    let path = clap_complete::generate_to(shell, &mut cmd, &name, &dir).map_err(|e| e.to_string())?;
    Ok(vec![path])
}

/// One page for `cmd` (named `page`) and, recursively, one per visible subcommand.
fn man_pages(
    cmd: &clap::Command,
    page: &str,
    dir: &std::path::Path,
    written: &mut Vec<PathBuf>,
) -> std::result::Result<(), String> {
    let path = dir.join(format!("{page}.1"));
    let mut out = Vec::new();
    clap_mangen::Man::new(cmd.clone()).title(page.to_string()).render(&mut out).map_err(|e| e.to_string())?;
    std::fs::write(&path, out).map_err(|e| format!("{}: {e}", path.display()))?;
    written.push(path);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set() && s.get_name() != "help") {
        man_pages(sub, &format!("{page}-{}", sub.get_name()), dir, written)?;
    }
    Ok(())
}
