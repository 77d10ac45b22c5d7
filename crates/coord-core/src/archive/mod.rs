//! Finishing a session: a verified `tar.gz`, expiry, garbage collection, listing, and an
//! extractor that refuses hostile archives.
//!
//! Archiving is ordered so that a failure at any step leaves everything as it was:
//!
//! 1. take the session lock (no other `session.json` change can interleave);
//! 2. write the archive to a hidden temporary file next to its destination; the
//!    `session.json` inside the archive is already the completed record (`status`,
//!    `ended_at`, where the archive lives, expiry);
//! 3. verify it by reading it back: every entry's path, type, size, link target and
//!    content checksum must match what was written, and the gzip trailer's CRC must
//!    check (with `--remove` or `COORD_FSYNC=1` it is fsynced first; `gc` fsyncs an
//!    archive before it deletes the session it holds);
//! 4. rename it into place;
//! 5. only now write the completed `session.json` into the session (the same bytes as in
//!    the archive, so an extracted archive equals the session byte for byte). If that
//!    fails, the archive is removed again and the session stays active;
//! 6. with `--remove`, rename the session directory out of view and delete it.
//!
//! The walk never follows a symbolic link: links are stored as links, regular files are
//! opened with `O_NOFOLLOW`, and nothing outside the session directory is read.
//!
//! The parts: `create` (steps 1 to 5), `verify` (step 3's read-back), `expire` (gc
//! and list) and `extract` (the hostile-archive-proof extractor). This file holds the
//! options and outcome types and re-exports every public item.

mod create;
mod expire;
mod extract;
mod verify;

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

pub use create::create;
pub use expire::{Listed, Removed, gc, list};
pub use extract::{Extracted, extract};

/// `session.json` field holding the absolute path of the session's archive.
pub const ARCHIVE_FIELD: &str = "archive";
/// `session.json` field holding when `archive gc` may remove the session directory.
pub const EXPIRES_FIELD: &str = "expires_at";
/// gzip level: the same as `gzip -6` and `tar czf`.
const LEVEL: u32 = 6;

/// What `archive` is asked to do.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Where to write the archive; default `<base>/<session>.tar.gz`.
    pub output: Option<PathBuf>,
    /// Delete the session directory once the archive is verified.
    pub remove: bool,
    /// Let `archive gc` remove the session directory this long after archiving.
    pub keep_for: Option<Duration>,
    /// Bound on waiting for the session lock.
    pub lock_timeout: Duration,
}

/// Progress of a running archive, for a progress bar.
#[derive(Debug, Clone, Copy, Default)]
pub struct Progress {
    /// Entries written so far.
    pub entries_done: u64,
    /// Entries to write.
    pub entries_total: u64,
    /// File bytes written so far.
    pub bytes_done: u64,
}

/// What `archive` did.
#[derive(Debug, Clone, Serialize)]
pub struct Archived {
    /// The session id.
    pub session: String,
    /// Absolute path of the verified archive.
    pub archive: PathBuf,
    /// Its size in bytes.
    pub size: u64,
    /// Entries in it (directories, files, links).
    pub entries: u64,
    /// Bytes of file content in it.
    pub content_bytes: u64,
    /// The session's new status (`completed`).
    pub status: String,
    /// When the session ended.
    pub ended_at: String,
    /// When `archive gc` may remove the session directory, if `--keep-for` was given.
    pub expires_at: Option<String>,
    /// Whether the session directory was removed.
    pub removed: bool,
    /// Agents that were still active (the session was archived anyway).
    pub active_agents: Vec<String>,
    /// Entries skipped because they are neither files, directories nor links.
    pub skipped: Vec<String>,
}
