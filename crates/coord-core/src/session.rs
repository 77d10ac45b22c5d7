//! Creating a session and changing `session.json`.

use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Error, IoContext, Result};
use crate::fsio;
use crate::id;
use crate::layout::{Base, LAYOUT_VERSION, SESSION_DIRS, SessionDir, ToolLock};
use crate::record::{self, Session};
use crate::sys;
use crate::time;

/// How many `-N` suffixes `init` tries for one operation in one second.
const MAX_SUFFIX: u32 = 10_000;

/// Longest operation name: room is left for `-<unix-ts>-<N>` within the 128-byte id rule.
pub const MAX_OPERATION_LEN: usize = 100;

/// Creates `<base>/<operation>-<unix-ts>[-N]` with the whole layout and returns it.
///
/// The session directory name is reserved with `mkdir` (atomic and exclusive, also on
/// network filesystems), so concurrent inits in the same second get distinct ids. The
/// contents are created next and `session.json` is written last: a directory without
/// `session.json` is an init still in progress (or one that was killed) and is never
/// taken for a session.
pub fn init(base: &Base, operation: &str) -> Result<SessionDir> {
    id::validate("operation", operation)?;
    if operation.len() > MAX_OPERATION_LEN {
        return Err(Error::Usage(format!(
            "operation {operation:?} is longer than {MAX_OPERATION_LEN} characters; the session id (operation-timestamp) must stay within 128"
        )));
    }
    base.ensure()?;
    let ts = time::unix_secs_now();
    let (root, session_id) = reserve(base, operation, ts)?;
    let dir = SessionDir::at(root, session_id.clone());
    for sub in SESSION_DIRS {
        fsio::ensure_dir(&dir.root().join(sub))?;
    }
    fsio::ensure_dir(&dir.tmp_dir())?;
    // Best effort: only ext2/3/4 know the attribute, and nothing depends on it.
    sys::spread_subdirectories(&dir.tmp_dir());
    for k in 0..crate::layout::TMP_SPREAD {
        fsio::ensure_dir(&dir.tmp_dir().join(k.to_string()))?;
    }
    fsio::write_json(&dir.state_file("global"), &record::initial_global())?;
    fsio::write_json(&dir.state_file("tasks"), &record::initial_tasks_view())?;
    fsio::write_json(&dir.state_file("results"), &record::initial_results())?;
    fsio::write_json(&dir.agents_json(), &Vec::<record::Agent>::new())?;
    let session = Session {
        id: session_id,
        operation: operation.to_string(),
        started_at: time::now_rfc3339(),
        status: record::status::SESSION_ACTIVE.to_string(),
        agents: Vec::new(),
        coordinator: format!("{}@{}", sys::user_name(), sys::host()),
        layout_version: LAYOUT_VERSION,
        ended_at: None,
        extra: Default::default(),
    };
    fsio::write_json(&dir.session_json(), &session)?;
    if crate::env::fsync_requested() {
        fsio::sync_dir(dir.root())?;
        fsio::sync_dir(base.path())?;
    }
    Ok(dir)
}

fn reserve(base: &Base, operation: &str, ts: u64) -> Result<(PathBuf, String)> {
    use std::os::unix::fs::DirBuilderExt;
    for n in 1..=MAX_SUFFIX {
        let session_id = if n == 1 { format!("{operation}-{ts}") } else { format!("{operation}-{ts}-{n}") };
        // The operation is at most 128 bytes; the suffix may push the id past the rule.
        id::validate("session", &session_id)?;
        let root = base.session_path(&session_id);
        match std::fs::DirBuilder::new().mode(0o700).create(&root) {
            Ok(()) => return Ok((root, session_id)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(Error::io("create session directory", &root, e)),
        }
    }
    Err(Error::Failed(format!(
        "could not find a free session name for operation {operation:?} at {ts}: {MAX_SUFFIX} sessions already exist"
    )))
}

/// Reads `session.json`.
pub fn read(dir: &SessionDir) -> Result<Session> {
    fsio::read_json(&dir.session_json())
}

/// Changes `session.json` under the session lock and returns the new record.
pub fn update<F>(dir: &SessionDir, timeout: Duration, change: F) -> Result<Session>
where
    F: FnOnce(&mut Session),
{
    let _guard = dir.tool_lock(ToolLock::Session, timeout)?;
    let mut session = read(dir)?;
    change(&mut session);
    fsio::write_json(&dir.session_json(), &session)?;
    Ok(session)
}

/// Lists the ids of the complete sessions under `base`, sorted.
pub fn list_ids(base: &Base) -> Result<Vec<String>> {
    let mut ids = Vec::new();
    let entries = match std::fs::read_dir(base.path()) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ids),
        Err(e) => return Err(Error::io("list", base.path(), e)),
    };
    base.check()?;
    for entry in entries {
        let entry = entry.ctx("list", base.path())?;
        let Some(name) = entry.file_name().to_str().map(str::to_string) else { continue };
        if id::validate("session", &name).is_ok() && entry.path().join("session.json").is_file() {
            ids.push(name);
        }
    }
    ids.sort();
    Ok(ids)
}
