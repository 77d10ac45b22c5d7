//! The one error type of the toolkit and its mapping to exit codes.

use std::path::PathBuf;

/// Exit codes shared by every tool (see `docs/exit-codes` in each tool page).
pub mod exit {
    /// The operation succeeded.
    pub const OK: u8 = 0;
    /// The operation failed, or the answer is negative.
    pub const FAILED: u8 = 1;
    /// Bad usage or invalid input; nothing was changed.
    pub const USAGE: u8 = 2;
    /// Nothing available: empty queue, nothing to claim, timed out waiting.
    pub const EMPTY: u8 = 3;
}

/// Every failure `coord-core` reports. Each variant names the thing it was touching.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An id (session, agent, task, key, lock, operation) broke the id rule.
    #[error(
        "invalid {kind} id {id:?}: {reason} (ids match [A-Za-z0-9][A-Za-z0-9._-]{{0,127}} and are not '.' or '..')"
    )]
    InvalidId {
        /// What the id names ("agent", "task", ...).
        kind: &'static str,
        /// The offending id, as given.
        id: String,
        /// Which part of the rule it breaks.
        reason: &'static str,
    },

    /// No session was named.
    #[error("no session given: pass --session ID or set COORD_SESSION (sessions live under {base})")]
    NoSession {
        /// The base directory that would have been searched.
        base: PathBuf,
    },

    /// The named session does not exist under the base directory.
    #[error(
        "session {id:?} not found: {path} has no session.json (check --session/COORD_SESSION and --base/COORD_BASE)"
    )]
    SessionNotFound {
        /// The session id.
        id: String,
        /// The directory that was looked at.
        path: PathBuf,
    },

    /// The base directory is unsafe to use.
    #[error("refusing base directory {path}: {reason}; choose another with --base DIR or COORD_BASE=DIR")]
    UnsafeBase {
        /// The base directory.
        path: PathBuf,
        /// Why it is refused.
        reason: String,
    },

    /// An I/O call failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done ("read", "write", "rename", ...).
        op: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// A JSON file on disk does not parse. The file is left as it is.
    #[error("malformed JSON in {path} at line {line}, column {column}: {message} (the file was left untouched)")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// 1-based line of the parse error.
        line: usize,
        /// 1-based column of the parse error.
        column: usize,
        /// The parser's message.
        message: String,
    },

    /// A value given on the command line or on stdin is not valid.
    #[error("{0}")]
    Usage(String),

    /// A named lock could not be taken within the allowed time.
    #[error(
        "timed out after {waited_ms} ms waiting for lock {name:?} ({path}); another process holds it (raise --lock-timeout or COORD_LOCK_TIMEOUT)"
    )]
    LockTimeout {
        /// The lock name.
        name: String,
        /// The lock file.
        path: PathBuf,
        /// How long we waited, in milliseconds.
        waited_ms: u128,
    },

    /// The operation could not be done; the message says why.
    #[error("{0}")]
    Failed(String),

    /// Nothing was available (empty queue, timed out waiting).
    #[error("{0}")]
    Empty(String),
}

impl Error {
    /// The documented exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::InvalidId { .. }
            | Error::NoSession { .. }
            | Error::SessionNotFound { .. }
            | Error::UnsafeBase { .. }
            | Error::Usage(_) => exit::USAGE,
            Error::Io { .. } | Error::Malformed { .. } | Error::LockTimeout { .. } | Error::Failed(_) => exit::FAILED,
            Error::Empty(_) => exit::EMPTY,
        }
    }

    /// Builds an [`Error::Io`] for `path`.
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { op, path: path.into(), source }
    }

    /// Builds an [`Error::Malformed`] from a serde_json error about `path`.
    ///
    /// serde_json puts an error at the very start of a line (an empty file, a file that
    /// ends after a newline) at column 0; it is reported as column 1, so positions stay
    /// 1-based.
    pub fn malformed(path: impl Into<PathBuf>, err: &serde_json::Error) -> Self {
        Error::Malformed {
            path: path.into(),
            line: err.line(),
            column: err.column().max(1),
            message: strip_position(&err.to_string()),
        }
    }
}

/// serde_json appends " at line L column C" to its messages; we report the position ourselves.
fn strip_position(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

/// Result alias used throughout `coord-core`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Adds the path and operation to an `io::Result`.
pub trait IoContext<T> {
    /// Wraps the error as [`Error::Io`] naming `op` and `path`.
    fn ctx(self, op: &'static str, path: &std::path::Path) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, op: &'static str, path: &std::path::Path) -> Result<T> {
        self.map_err(|e| Error::io(op, path, e))
    }
}
