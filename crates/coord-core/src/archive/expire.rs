//! Expiry, garbage collection and listing under the base directory: `gc` removes the
//! directories of completed sessions whose archive (`archive` in `session.json`) is
//! there and whose expiry (`expires_at`) has passed, or that ended longer ago than asked
//! (renamed out of view first, then deleted without following links; archives are never
//! touched); `list` tells each session's status, archive and size.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use serde_json::Value;

use crate::error::{IoContext, Result};
use crate::fsio;
use crate::id;
use crate::layout::{ARCHIVE_SUFFIX, Base, ToolLock};
use crate::record::{Session, status};
use crate::session;
use crate::time;

use super::{ARCHIVE_FIELD, EXPIRES_FIELD};

/// Removes a session directory: renamed out of view first (so no half-deleted directory
/// ever looks like a session), then deleted without following links.
pub(super) fn remove_session_dir(base: &Base, session_id: &str) -> Result<()> {
    id::validate("session", session_id)?;
    let path = base.session_path(session_id);
    let hidden = base.path().join(format!(".{session_id}.removing-{}", std::process::id()));
    std::fs::rename(&path, &hidden).ctx("move out of view", &path)?;
    std::fs::remove_dir_all(&hidden).ctx("remove", &hidden)
}

/// One session directory removed by [`gc`].
#[derive(Debug, Clone, Serialize)]
pub struct Removed {
    /// The session id.
    pub session: String,
    /// Why it was removed.
    pub reason: String,
    /// Its archive, which stays.
    pub archive: String,
}

/// Removes the directories of archived sessions whose `--keep-for` expiry has passed,
/// or, with `older_than`, that ended longer ago than that. Never touches an active
/// session, a session whose archive is missing, or any archive.
pub fn gc(base: &Base, older_than: Option<Duration>, now: SystemTime) -> Result<Vec<Removed>> {
    let mut removed = Vec::new();
    for session_id in session::list_ids(base)? {
        let dir = match base.session(&session_id) {
            Ok(d) => d,
            Err(_) => continue,
        };
        let s = match session::read(&dir) {
            Ok(s) => s,
            Err(e) => {
                log::warn!("skipping session {session_id}: {e}");
                continue;
            }
        };
        if s.status != status::SESSION_COMPLETED {
            continue;
        }
        let Some(archive) = s.extra.get(ARCHIVE_FIELD).and_then(Value::as_str).map(str::to_string) else {
            continue;
        };
        if !std::fs::metadata(&archive).is_ok_and(|m| m.is_file() && m.len() > 0) {
            log::warn!("keeping session {session_id}: its archive {archive} is missing");
            continue;
        }
        let expired = s
            .extra
            .get(EXPIRES_FIELD)
            .and_then(Value::as_str)
            .and_then(|t| time::parse_rfc3339(t).map(|at| (t, at)))
            .filter(|(_, at)| *at <= now)
            .map(|(t, _)| format!("expired at {t}"));
        let old = older_than.and_then(|d| {
            let ended = s.ended_at.as_deref()?;
            (time::parse_rfc3339(ended)? + d <= now)
                .then(|| format!("ended at {ended}, more than {} ago", humantime::format_duration(d)))
        });
        let Some(reason) = expired.or(old) else { continue };
        // A session being archived again holds its lock; leave it for the next gc.
        let Ok(guard) = dir.tool_lock(ToolLock::Session, Duration::ZERO) else {
            log::info!("skipping session {session_id}: it is locked");
            continue;
        };
        drop(guard);
        // The archive is all that stays: make sure it is on disk first.
        File::open(&archive).and_then(|f| f.sync_all()).ctx("fsync", Path::new(&archive))?;
        remove_session_dir(base, &session_id)?;
        removed.push(Removed { session: session_id, reason, archive });
    }
    // Leftovers of removals that were interrupted.
    if let Ok(entries) = std::fs::read_dir(base.path()) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') && name.contains(".removing-") && e.file_type().is_ok_and(|t| t.is_dir()) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    Ok(removed)
}

/// One line of `archive list`.
#[derive(Debug, Clone, Serialize)]
pub struct Listed {
    /// The session id.
    pub session: String,
    /// `active` or `completed`; `null` when only the archive is left.
    pub status: Option<String>,
    /// Whether the session directory exists.
    pub present: bool,
    /// Seconds since the session started, if known.
    pub age_secs: Option<u64>,
    /// Bytes of file content in the session directory.
    pub size: u64,
    /// Whether a verified archive is recorded (or found at the default place).
    pub archived: bool,
    /// The archive's path.
    pub archive: Option<String>,
    /// The archive's size in bytes.
    pub archive_size: Option<u64>,
    /// When `archive gc` may remove the session directory.
    pub expires_at: Option<String>,
}

/// Every session under `base` (and every archive whose session directory is gone), by id.
pub fn list(base: &Base, now: SystemTime) -> Result<Vec<Listed>> {
    let mut out: BTreeMap<String, Listed> = BTreeMap::new();
    for session_id in session::list_ids(base)? {
        let path = base.session_path(&session_id);
        let s: Option<Session> = fsio::read_json(&path.join("session.json")).ok();
        let recorded = s.as_ref().and_then(|s| s.extra.get(ARCHIVE_FIELD)).and_then(Value::as_str).map(PathBuf::from);
        let archive = recorded.unwrap_or_else(|| base.archive_path(&session_id));
        let archive_size = std::fs::metadata(&archive).ok().filter(|m| m.is_file()).map(|m| m.len());
        let age_secs = s
            .as_ref()
            .and_then(|s| time::parse_rfc3339(&s.started_at))
            .and_then(|t| now.duration_since(t).ok())
            .map(|d| d.as_secs());
        out.insert(
            session_id.clone(),
            Listed {
                session: session_id,
                status: s.as_ref().map(|s| s.status.clone()),
                present: true,
                age_secs,
                size: tree_size(&path),
                archived: archive_size.is_some(),
                archive: archive_size.map(|_| archive.display().to_string()),
                archive_size,
                expires_at: s
                    .as_ref()
                    .and_then(|s| s.extra.get(EXPIRES_FIELD))
                    .and_then(Value::as_str)
                    .map(str::to_string),
            },
        );
    }
    if let Ok(entries) = std::fs::read_dir(base.path()) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(session_id) = name.strip_suffix(ARCHIVE_SUFFIX) else { continue };
            if id::validate("session", session_id).is_err() || out.contains_key(session_id) {
                continue;
            }
            let Ok(meta) = std::fs::symlink_metadata(e.path()) else { continue };
            if !meta.is_file() {
                continue;
            }
            out.insert(
                session_id.to_string(),
                Listed {
                    session: session_id.to_string(),
                    status: None,
                    present: false,
                    age_secs: None,
                    size: 0,
                    archived: true,
                    archive: Some(e.path().display().to_string()),
                    archive_size: Some(meta.len()),
                    expires_at: None,
                },
            );
        }
    }
    Ok(out.into_values().collect())
}

fn tree_size(root: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let Ok(m) = std::fs::symlink_metadata(e.path()) else { continue };
            if m.is_dir() {
                stack.push(e.path());
            } else if m.is_file() {
                total += m.len();
            }
        }
    }
    total
}
