//! Names of the environment variables the tools read, in one place.

/// Base directory holding sessions (`--base`).
pub const BASE: &str = "COORD_BASE";
/// Session id (`--session`).
pub const SESSION: &str = "COORD_SESSION";
/// `1` adds fsync of file and directory to every atomic write.
pub const FSYNC: &str = "COORD_FSYNC";
/// Overrides the host name records carry (multi-host setups and tests).
pub const HOST: &str = "COORD_HOST";
/// Default bound on lock waits, in seconds (`--lock-timeout`).
pub const LOCK_TIMEOUT: &str = "COORD_LOCK_TIMEOUT";

/// Milliseconds between checks for every wait (`msgq recv --wait`, `msgq watch`,
/// `taskd claim --wait`, `taskd wait`, `taskd run`) instead of inotify: for network
/// filesystems, where other hosts' writes raise no inotify events.
pub const POLL_MS: &str = "COORD_POLL_MS";

/// The polling interval `COORD_POLL_MS` asks for (at least 1 ms), if any.
pub fn forced_poll() -> Option<std::time::Duration> {
    let ms = std::env::var(POLL_MS).ok()?.trim().parse::<u64>().ok()?;
    Some(std::time::Duration::from_millis(ms.max(1)))
}

/// The base directory used when neither `--base` nor `COORD_BASE` is given.
pub const DEFAULT_BASE: &str = "/tmp/claude-agents";
/// Default bound on lock waits, in seconds.
pub const DEFAULT_LOCK_TIMEOUT_SECS: f64 = 10.0;

/// Whether `COORD_FSYNC` asks for durable writes.
pub fn fsync_requested() -> bool {
    matches!(std::env::var(FSYNC).as_deref(), Ok("1") | Ok("true") | Ok("yes"))
}
