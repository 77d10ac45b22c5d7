//! The record store under `tasks/`: the status directories (`ensure_store`), where a
//! task's record is in each status, its lock (the flock of `tasks/ids/<id>.json`), the
//! locator, reading and (re)writing records, and a final status's follow-up
//! (`tasks/finishing/<id>`: publish first, finish under the lock, finish what a killed
//! process left). Every transition in the sibling modules goes through these helpers.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::claim::Unassign;
use super::finish::after_final;
use super::{Locator, Route, STORE_DIRS, Status, Task, index};
use crate::error::{Error, IoContext, Result};
use crate::layout::SessionDir;
use crate::lock::{self, LockGuard};
use crate::{fsio, id, time};

pub(super) fn ensure_store(dir: &SessionDir) -> Result<()> {
    // The directories are created in order and never removed: when the last exists, all do.
    if STORE_DIRS.last().is_some_and(|d| dir.root().join(d).is_dir()) {
        return Ok(());
    }
    for d in STORE_DIRS {
        fsio::ensure_dir(&dir.root().join(d))?;
    }
    Ok(())
}

pub(super) fn status_file(dir: &SessionDir, s: Status, id: &str) -> PathBuf {
    dir.task_file(s.dir_name(), id)
}

/// Takes the task's lock: the flock of its locator, which exists from submit on and is
/// never replaced, so no lock file is created or removed per task.
pub(super) fn task_lock(dir: &SessionDir, id: &str, timeout: Duration) -> Result<LockGuard> {
    match lock::acquire_existing(&format!("task {id}"), &dir.task_id_file(id), timeout) {
        Err(e) if fsio::is_not_found(&e) => Err(unknown_task(dir, id)),
        other => other,
    }
}

/// Takes the task's lock if it is free right now (see [`task_lock`]); `Ok(None)` when
/// another process holds it or the task has no locator.
pub(super) fn try_task_lock(dir: &SessionDir, id: &str) -> Result<Option<LockGuard>> {
    match lock::try_acquire_existing(&dir.task_id_file(id)) {
        Err(e) if fsio::is_not_found(&e) => Ok(None),
        other => other,
    }
}

/// `tasks/finishing/<id>`: present from before a task's final record is published until
/// its follow-up ([`after_final`]) has run; [`finish_interrupted`] finishes what a killed
/// process left.
pub(super) fn finishing_file(dir: &SessionDir, id: &str) -> PathBuf {
    dir.tasks_status_dir("finishing").join(id)
}

/// Under the task's lock, publishes `t` (its status already final) from `from`: marks the
/// follow-up as owed, replaces the record in place with its final content, then renames
/// it into the final directory. A process killed at any point leaves either the old
/// record, or the final content in the old or the new directory, and the mark, so the
/// final fields are never lost and the follow-up is finished later. `Ok(false)` when the
/// record is gone.
pub(super) fn publish_final(dir: &SessionDir, t: &Task, from: &Path) -> Result<bool> {
    let mark = finishing_file(dir, &t.id);
    let locator = dir.task_id_file(&t.id);
    let linked = match std::fs::hard_link(&locator, &mark) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fsio::ensure_dir(&dir.tasks_status_dir("finishing"))?;
            std::fs::hard_link(&locator, &mark)
        }
        other => other,
    };
    match linked {
        // Left by an interrupted earlier attempt: the mark is already there.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        other => other.ctx("mark as finishing", &mark)?,
    }
    fsio::sync_parent(&mark)?;
    let Some(s) = t.state().filter(|s| s.is_final()) else {
        return Err(Error::Failed(format!("task {:?}: {:?} is not a final status", t.id, t.status)));
    };
    rewrite_record(dir, from, t)?;
    rename_existing(from, &status_file(dir, s, &t.id))
}

/// The follow-up of a published final record, still under the task's lock; then the mark
/// and the lock go. `again` when an interrupted follow-up is being run again.
pub(super) fn finish_final(
    dir: &SessionDir,
    t: &Task,
    guard: LockGuard,
    unassign: Unassign,
    again: bool,
    timeout: Duration,
) -> Result<()> {
    after_final(dir, t, unassign, again, timeout)?;
    let _ = std::fs::remove_file(finishing_file(dir, &t.id));
    drop(guard);
    Ok(())
}

/// Under the task's lock, finishes a transition to a final status that a killed process
/// left half done: moves a final record still in its old directory, then runs the
/// follow-up again. Gives the guard back when the task is live (nothing to finish).
pub(super) fn finish_one(dir: &SessionDir, id: &str, guard: LockGuard, timeout: Duration) -> Result<Option<LockGuard>> {
    let mark = finishing_file(dir, id);
    if !mark.exists() {
        if dep_status(dir, id).is_some() {
            return Ok(None);
        }
        return Ok(Some(guard));
    }
    let t = match locate(dir, id)? {
        Some((s, path)) if s.is_final() => read_record(&path, s)?,
        Some((_, path)) => {
            // Still in its old directory: the status field says whether the final content
            // was written (the transition is under way) or not.
            let t: Task = fsio::read_json(&path)?;
            match t.state().filter(|f| f.is_final() && t.id == id) {
                Some(f) => {
                    if !rename_existing(&path, &status_file(dir, f, id))? {
                        return Ok(Some(guard));
                    }
                    t
                }
                None => {
                    // The final content was never written: the transition did not happen.
                    let _ = std::fs::remove_file(&mark);
                    return Ok(Some(guard));
                }
            }
        }
        None => {
            let _ = std::fs::remove_file(&mark);
            return Ok(Some(guard));
        }
    };
    finish_final(dir, &t, guard, Unassign::Now, true, timeout)?;
    Ok(None)
}

/// Finishes every transition to a final status whose process was killed before its
/// follow-up ran (dependents released or failed, results appended, waiters woken). A
/// task whose lock is busy is being finished by a live process and is left to it. Costs
/// one listing of `tasks/finishing/` when nothing was interrupted.
pub(super) fn finish_interrupted(dir: &SessionDir, timeout: Duration) {
    let names = match index::list_names(&dir.tasks_status_dir("finishing")) {
        Ok(n) => n,
        Err(e) => {
            log::warn!("{e}");
            return;
        }
    };
    for name in names {
        if id::validate("task", &name).is_err() {
            index::set_aside(&dir.tasks_garbage_dir(), &dir.tasks_status_dir("finishing").join(&name));
            continue;
        }
        let r = try_task_lock(dir, &name).and_then(|g| match g {
            Some(g) => finish_one(dir, &name, g, timeout).map(drop),
            None => Ok(()),
        });
        if let Err(e) = r {
            log::warn!("task {name:?}: could not finish its interrupted transition: {e}");
        }
    }
}

/// Renames `from` to `to`, creating `to`'s directory if a claimer just removed it.
/// `Ok(false)` when `from` is gone (another process moved it first).
pub(super) fn rename_existing(from: &Path, to: &Path) -> Result<bool> {
    for _ in 0..16 {
        match std::fs::rename(from, to) {
            Ok(()) => {
                fsio::sync_parent(to)?;
                return Ok(true);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if std::fs::symlink_metadata(from).is_err() {
                    return Ok(false);
                }
                if let Some(parent) = to.parent() {
                    fsio::ensure_dir(parent)?;
                }
            }
            Err(e) => return Err(Error::io("rename", from, e)),
        }
    }
    Err(Error::Failed(format!(
        "could not move {} to {}: its directory keeps disappearing",
        from.display(),
        to.display()
    )))
}

/// Writes a record where a concurrent claimer may remove empty directories.
pub(super) fn write_record(path: &Path, t: &Task) -> Result<()> {
    for _ in 0..16 {
        match fsio::write_json(path, t) {
            Err(e) if fsio::is_not_found(&e) => {
                if let Some(parent) = path.parent() {
                    fsio::ensure_dir(parent)?;
                }
            }
            other => return other,
        }
    }
    Err(Error::Failed(format!("could not write {}: its directory keeps disappearing", path.display())))
}

/// Replaces the record of a task that was just renamed to `path` with its new fields
/// (an exchange, not a replacing rename: see [`fsio::replace_atomic`]).
pub(super) fn rewrite_record(dir: &SessionDir, path: &Path, t: &Task) -> Result<()> {
    fsio::replace_atomic_via(&dir.spread_tmp_dir(), path, &fsio::to_json_bytes(t))
}

pub(super) fn new_token() -> String {
    use std::io::Read;
    let mut b = [0u8; 8];
    // SAFETY: getrandom writes at most `b.len()` bytes into the valid buffer `b`.
    let got = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), libc::GRND_NONBLOCK) };
    let random = usize::try_from(got).is_ok_and(|n| n == b.len())
        || std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b)).is_ok();
    if !random {
        let n = time::unix_ms(SystemTime::now()) ^ (u64::from(std::process::id()) << 40);
        b = n.to_le_bytes();
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub(super) fn unknown_task(dir: &SessionDir, id: &str) -> Error {
    Error::Failed(format!("no task {id:?} in session {:?}", dir.id()))
}

pub(super) fn read_locator(dir: &SessionDir, id: &str) -> Result<Option<Locator>> {
    fsio::read_json_opt(&dir.task_id_file(id))
}

pub(super) fn pending_path(dir: &SessionDir, t: &Task) -> Result<PathBuf> {
    let route = Route::new(t.agent_type.as_deref(), &t.capabilities);
    Ok(dir.tasks_pending_dir().join(index::pending_rel(&route, t.priority, t.seq, &t.id)?))
}

/// Where a task's record is now. Retries briefly when the task is between directories.
pub(super) fn locate(dir: &SessionDir, id: &str) -> Result<Option<(Status, PathBuf)>> {
    let Some(loc) = read_locator(dir, id)? else { return Ok(None) };
    for _ in 0..50 {
        for s in [Status::Claimed, Status::Blocked, Status::Completed, Status::Failed, Status::Cancelled] {
            let p = status_file(dir, s, id);
            if p.exists() {
                return Ok(Some((s, p)));
            }
        }
        for rel in [Some(loc.pending.clone()), index::refiled_rel(&loc.pending, loc.seq)].into_iter().flatten() {
            let p = dir.tasks_pending_dir().join(rel);
            if p.exists() {
                return Ok(Some((Status::Pending, p)));
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(None)
}

pub(super) fn read_record(path: &Path, s: Status) -> Result<Task> {
    let mut t: Task = fsio::read_json(path)?;
    // Paths are built from the id: it must be valid and the one the file is named for.
    let stem = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".json"));
    let named = if s == Status::Pending { stem.and_then(|n| n.split_once('.')).map(|(_, i)| i) } else { stem };
    if id::validate("task", &t.id).is_err() || named != Some(t.id.as_str()) {
        return Err(Error::Malformed {
            path: path.to_path_buf(),
            line: 1,
            column: 1,
            message: format!("the record's id {:?} is not a valid task id matching its file name", t.id),
        });
    }
    if !(s == Status::Claimed && t.status == "assigned") {
        t.status = s.name().to_string();
    }
    Ok(t)
}

pub(super) fn dep_status(dir: &SessionDir, id: &str) -> Option<Status> {
    [Status::Completed, Status::Failed, Status::Cancelled].into_iter().find(|s| status_file(dir, *s, id).exists())
}
