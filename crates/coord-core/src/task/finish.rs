//! Finishing a claim: complete, fail and release check the holder (agent or claim
//! token) under the task's lock, then move the record to `tasks/done/`, `tasks/failed/`
//! or back to `tasks/pending/`; cancel finishes a task that is not held. A completed or
//! failed task is appended to its agent's results log `results/<agent>.jsonl` (lock
//! `_results`), and its dependents are released or failed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

use super::claim::{Unassign, note_assigned};
use super::store::{
    finish_final, locate, pending_path, publish_final, read_locator, read_record, rename_existing, rewrite_record,
    status_file, task_lock, unknown_task,
};
use super::submit::{cascade_failures, recheck_blocked};
use super::{Holder, Status, Task, TaskError, bell, index};
use crate::error::{Error, IoContext, Result};
use crate::layout::{SessionDir, ToolLock};
use crate::lock::LockGuard;
use crate::{fsio, id, time};

/// Reads the claimed record under its lock and checks the holder.
pub(super) fn held(dir: &SessionDir, id: &str, holder: &Holder) -> Result<(Task, PathBuf)> {
    let path = status_file(dir, Status::Claimed, id);
    match read_record(&path, Status::Claimed) {
        Ok(t) if holder.matches(&t) => Ok((t, path)),
        Ok(t) => Err(Error::Failed(format!(
            "claim lost: task {id:?} is now held by agent {:?} (attempt {}), not by {}; nothing was changed",
            t.assigned_to.as_deref().unwrap_or("?"),
            t.attempts,
            holder.describe()
        ))),
        Err(e) if fsio::is_not_found(&e) => {
            let now = match locate(dir, id)? {
                Some((s, _)) => s.name(),
                None if read_locator(dir, id)?.is_none() => return Err(unknown_task(dir, id)),
                None => "gone",
            };
            Err(Error::Failed(format!("claim lost: task {id:?} is {now}, not claimed; nothing was changed")))
        }
        Err(e) => Err(e),
    }
}

/// Completes a claimed task with `result`. Only the current holder may (see [`Holder`]).
pub fn complete(dir: &SessionDir, id: &str, holder: &Holder, result: Value, timeout: Duration) -> Result<Task> {
    complete_as(dir, id, holder, result, Unassign::Now, timeout)
}

pub(crate) fn complete_as(
    dir: &SessionDir,
    id: &str,
    holder: &Holder,
    result: Value,
    unassign: Unassign,
    timeout: Duration,
) -> Result<Task> {
    id::validate("task", id)?;
    let guard = task_lock(dir, id, timeout)?;
    let (mut t, path) = held(dir, id, holder)?;
    t.status = Status::Completed.name().to_string();
    t.completed_at = Some(time::now_rfc3339());
    t.results = Some(result);
    t.clear_claim();
    if !publish_final(dir, &t, &path)? {
        return Err(Error::Failed(format!("claim lost: task {id:?} moved while completing")));
    }
    finish_final(dir, &t, guard, unassign, false, timeout)?;
    Ok(t)
}

/// Records a failed attempt. With attempts left the task goes back to pending; without,
/// it fails for good and its dependents fail with "dependency failed".
pub fn fail(dir: &SessionDir, id: &str, holder: &Holder, error: &str, timeout: Duration) -> Result<Task> {
    fail_as(dir, id, holder, error, Unassign::Now, timeout)
}

pub(crate) fn fail_as(
    dir: &SessionDir,
    id: &str,
    holder: &Holder,
    error: &str,
    unassign: Unassign,
    timeout: Duration,
) -> Result<Task> {
    end_attempt(dir, id, holder, error, false, Spend::Yes, unassign, timeout)
}

/// Records an attempt stopped by `taskd kill`: with `retry` like a failure (back to
/// pending while attempts are left), without it the task fails for good.
pub(crate) fn kill_as(
    dir: &SessionDir,
    id: &str,
    holder: &Holder,
    error: &str,
    retry: bool,
    unassign: Unassign,
    timeout: Duration,
) -> Result<Task> {
    let spend = if retry { Spend::Yes } else { Spend::Last };
    end_attempt(dir, id, holder, error, true, spend, unassign, timeout)
}

/// Ends the held attempt with an error entry (`killed` when stopped by `taskd kill`)
/// and requeues or fails the task as `spend` says.
#[allow(clippy::too_many_arguments)]
fn end_attempt(
    dir: &SessionDir,
    id: &str,
    holder: &Holder,
    error: &str,
    killed: bool,
    spend: Spend,
    unassign: Unassign,
    timeout: Duration,
) -> Result<Task> {
    id::validate("task", id)?;
    let guard = task_lock(dir, id, timeout)?;
    let (t, path) = held(dir, id, holder)?;
    let err = TaskError {
        attempt: t.attempts,
        agent: t.assigned_to.clone(),
        at: time::now_rfc3339(),
        error: error.to_string(),
        killed,
    };
    requeue_held(dir, guard, t, &path, spend, Some(err), unassign, timeout)
}

/// Gives a claimed task back without spending an attempt (after a `preempt` message,
/// or when a worker stops).
pub fn release(dir: &SessionDir, id: &str, holder: &Holder, timeout: Duration) -> Result<Task> {
    id::validate("task", id)?;
    let guard = task_lock(dir, id, timeout)?;
    let (t, path) = held(dir, id, holder)?;
    requeue_held(dir, guard, t, &path, Spend::No, None, Unassign::Now, timeout)
}

/// What an ended claim does to the attempt budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Spend {
    /// Nothing: the attempt does not count (a release).
    No,
    /// The attempt counts; the task is retried while attempts are left.
    Yes,
    /// The attempt counts and is the last: the task fails for good.
    Last,
}

/// Moves a held claim back to pending, or to failed when no attempts are left (or
/// `spend` is [`Spend::Last`]).
#[allow(clippy::too_many_arguments)]
pub(super) fn requeue_held(
    dir: &SessionDir,
    guard: LockGuard,
    mut t: Task,
    path: &Path,
    spend: Spend,
    err: Option<TaskError>,
    unassign: Unassign,
    timeout: Duration,
) -> Result<Task> {
    let holder = t.assigned_to.clone();
    if let Some(e) = err {
        t.errors.push(e);
    }
    if spend == Spend::No {
        t.attempts = t.attempts.saturating_sub(1);
    }
    t.clear_claim();
    if spend == Spend::Last || (spend == Spend::Yes && t.attempts >= t.max_attempts) {
        let last = t.errors.last().map(|e| e.error.clone()).unwrap_or_else(|| "no attempts left".to_string());
        t.status = Status::Failed.name().to_string();
        t.failed_at = Some(time::now_rfc3339());
        t.reason = Some(format!("failed after {} attempt(s): {last}", t.attempts));
        if !publish_final(dir, &t, path)? {
            return Err(Error::Failed(format!("claim lost: task {:?} moved while failing", t.id)));
        }
        finish_final(dir, &t, guard, unassign, false, timeout)?;
        return Ok(t);
    }
    t.status = Status::Pending.name().to_string();
    let dest = pending_path(dir, &t)?;
    if !rename_existing(path, &dest)? {
        return Err(Error::Failed(format!("claim lost: task {:?} moved while requeueing", t.id)));
    }
    rewrite_record(dir, &dest, &t)?;
    drop(guard);
    if let Some(a) = holder
        && unassign == Unassign::Now
    {
        note_assigned(dir, &a, &t.id, false, timeout);
    }
    bell::ring(&dir.task_pending_bell());
    bell::ring(&dir.task_finished_bell());
    Ok(t)
}

/// What follows a final status: registry, results file, waiters, dependents. Every step
/// may run again after an interruption (`again`): the registry update, the bells and the
/// dependents' re-checks are idempotent, and the results entry is appended only if the
/// file lacks it.
pub(super) fn after_final(
    dir: &SessionDir,
    t: &Task,
    unassign: Unassign,
    again: bool,
    timeout: Duration,
) -> Result<()> {
    if let Some(a) = &t.assigned_to {
        if unassign == Unassign::Now {
            note_assigned(dir, a, &t.id, false, timeout);
        }
        if t.state() != Some(Status::Cancelled)
            && !(again && result_recorded(dir, a, &t.id))
            && let Err(e) = append_result(dir, a, t, timeout)
        {
            log::warn!("task {:?}: could not append to results/{a}.jsonl: {e}", t.id);
        }
    }
    bell::ring(&dir.task_finished_bell());
    if t.state() == Some(Status::Completed) {
        for child in index::list_names(&dir.task_dependents_dir(&t.id))? {
            if id::validate("task", &child).is_ok() && recheck_blocked(dir, &child, timeout)? == Some(Status::Failed) {
                cascade_failures(dir, vec![child], timeout)?;
            }
        }
        Ok(())
    } else {
        cascade_failures(dir, vec![t.id.clone()], timeout)
    }
}

/// Whether `results/<agent>.jsonl` already holds an entry for task `id`.
fn result_recorded(dir: &SessionDir, agent: &str, id: &str) -> bool {
    crate::results::read_result_log(&dir.result_log(agent)).is_ok_and(|r| r.tasks.iter().any(|e| e.id() == id))
}

/// Appends a finished task to `results/<agent>.jsonl`, the agent's results log: one
/// line holding the seed's document `{agent, tasks: [entry], execution_time}` for this
/// task alone, written with one `write(2)` on an `O_APPEND` descriptor under lock
/// `_results`. O(1) whatever the number of results before it (`aggregate` merges the
/// lines, and the agent's own `results/<agent>.json` if any).
fn append_result(dir: &SessionDir, agent: &str, t: &Task, timeout: Duration) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    let ended = t.completed_at.as_deref().or(t.failed_at.as_deref());
    let secs = match (t.assigned_at.as_deref().and_then(time::parse_rfc3339), ended.and_then(time::parse_rfc3339)) {
        (Some(a), Some(b)) => b.duration_since(a).map(|d| d.as_secs_f64()).unwrap_or(0.0),
        _ => 0.0,
    };
    let mut entry = json!({
        "id": t.id, "status": t.status, "attempts": t.attempts,
        "assigned_at": t.assigned_at, "execution_time": secs,
    });
    if let Some(map) = entry.as_object_mut() {
        match t.state() {
            Some(Status::Completed) => {
                map.insert("completed_at".into(), json!(t.completed_at));
                map.insert("results".into(), t.results.clone().unwrap_or(Value::Null));
            }
            _ => {
                map.insert("failed_at".into(), json!(t.failed_at));
                map.insert("reason".into(), json!(t.reason));
            }
        }
    }
    let doc = json!({"agent": agent, "tasks": [entry], "execution_time": secs});
    let mut line = serde_json::to_vec(&doc).expect("a results entry serializes");
    line.push(b'\n');
    let path = dir.result_log(agent);
    let _g = dir.tool_lock(ToolLock::Results, timeout)?;
    let mut f =
        std::fs::OpenOptions::new().read(true).append(true).create(true).mode(0o600).open(&path).ctx("open", &path)?;
    let len = f.metadata().ctx("inspect", &path)?.len();
    // A line left without its newline (a writer cut off by a full disk or a power loss)
    // is ended first, so it stays one bad line that readers report, not two.
    let mut last = [b'\n'];
    if len > 0 {
        f.read_exact_at(&mut last, len - 1).ctx("read", &path)?;
    }
    let written = if last[0] == b'\n' { f.write_all(&line) } else { f.write_all(&[b"\n".as_slice(), &line].concat()) };
    if let Err(e) = written {
        // Take back a partial line rather than leave it for the next writer.
        let _ = f.set_len(len);
        return Err(Error::io("append to", &path, e));
    }
    if crate::env::fsync_requested() {
        f.sync_data().ctx("fsync", &path)?;
        if len == 0 {
            fsio::sync_parent(&path)?;
        }
    }
    Ok(())
}

/// Cancels a task that is not final; its dependents fail with "dependency failed".
pub fn cancel(dir: &SessionDir, id: &str, reason: Option<&str>, timeout: Duration) -> Result<Task> {
    id::validate("task", id)?;
    let guard = task_lock(dir, id, timeout)?;
    let Some((s, path)) = locate(dir, id)? else { return Err(unknown_task(dir, id)) };
    if s.is_final() {
        return Err(Error::Failed(format!("task {id:?} is already {}; nothing to cancel", s.name())));
    }
    let mut t = read_record(&path, s)?;
    t.status = Status::Cancelled.name().to_string();
    t.failed_at = Some(time::now_rfc3339());
    t.reason = Some(reason.unwrap_or("cancelled").to_string());
    t.clear_claim();
    if !publish_final(dir, &t, &path)? {
        return Err(Error::Failed(format!("task {id:?} moved while cancelling; try again")));
    }
    finish_final(dir, &t, guard, Unassign::Now, false, timeout)?;
    Ok(t)
}
