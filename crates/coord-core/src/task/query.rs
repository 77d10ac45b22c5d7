//! Queries: one task's record (`show`), the records of one status or all of them
//! (read from the status directories under `tasks/`), counts and the seed's
//! `operation_progress`, the `state/tasks.json` view, and waiting until tasks reach a
//! final status.

use std::path::Path;
use std::time::Duration;

use serde::Serialize;
use serde_json::json;

use super::store::{dep_status, ensure_store, finish_interrupted, locate, read_locator, read_record, unknown_task};
use super::{Progress, Status, Task, bell, index};
use crate::error::{Error, Result};
use crate::layout::SessionDir;
use crate::lock;
use crate::{fsio, id};

/// One task's record, wherever it is.
pub fn show(dir: &SessionDir, id: &str) -> Result<Task> {
    id::validate("task", id)?;
    for _ in 0..5 {
        let Some((s, p)) = locate(dir, id)? else { break };
        match read_record(&p, s) {
            Err(e) if fsio::is_not_found(&e) => continue,
            other => return other,
        }
    }
    if read_locator(dir, id)?.is_some() {
        return Err(Error::Failed(format!(
            "task {id:?} has an id but no record (its submission was interrupted, or its record was set aside as garbage)"
        )));
    }
    Err(unknown_task(dir, id))
}

pub(super) fn records_in(dir: &SessionDir, s: Status) -> Result<Vec<Task>> {
    let mut out = Vec::new();
    if s == Status::Pending {
        let mut scan = index::PendingScan::open(dir, |_| true)?;
        while let Some((i, e)) = scan.peek()? {
            scan.advance(i);
            if let Some(t) = read_listed(dir, &e.path, s)? {
                out.push(t);
            }
        }
        return Ok(out);
    }
    let d = dir.tasks_status_dir(s.dir_name());
    for name in index::list_names(&d)? {
        let path = d.join(&name);
        let ok = name.strip_suffix(".json").is_some_and(|stem| id::validate("task", stem).is_ok());
        if !ok {
            index::set_aside(&dir.tasks_garbage_dir(), &path);
            continue;
        }
        if let Some(t) = read_listed(dir, &path, s)? {
            out.push(t);
        }
    }
    out.sort_by_key(|t| t.seq);
    Ok(out)
}

fn read_listed(dir: &SessionDir, path: &Path, s: Status) -> Result<Option<Task>> {
    match read_record(path, s) {
        Ok(t) => Ok(Some(t)),
        Err(e) if fsio::is_not_found(&e) => Ok(None),
        Err(e @ Error::Malformed { .. }) => {
            log::warn!("{e}");
            index::set_aside(&dir.tasks_garbage_dir(), path);
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// The tasks of one status, in queue order for pending, submission order otherwise.
pub fn list(dir: &SessionDir, status: Status) -> Result<Vec<Task>> {
    records_in(dir, status)
}

/// Every task record, grouped by status (blocked, pending, claimed, completed, failed,
/// cancelled). Garbage files found on the way are set aside with a warning.
pub fn list_all(dir: &SessionDir) -> Result<Vec<Task>> {
    let mut out = Vec::new();
    for s in Status::ALL {
        out.extend(records_in(dir, s)?);
    }
    Ok(out)
}

/// Counts of `tasks` by status.
pub fn count(tasks: &[Task]) -> Progress {
    let mut p = Progress { total: tasks.len(), ..Default::default() };
    for t in tasks {
        match t.state() {
            Some(Status::Blocked) => p.blocked += 1,
            Some(Status::Pending) | None => p.pending += 1,
            Some(Status::Claimed) => p.claimed += 1,
            Some(Status::Completed) => p.completed += 1,
            Some(Status::Failed) => p.failed += 1,
            Some(Status::Cancelled) => p.cancelled += 1,
        }
    }
    // round(completed / total * 100) in integers: in floating point 23 of 40 (57.5) came
    // out 57.499... and rounded down.
    let (done, total) = (p.completed as u64, p.total as u64);
    p.operation_progress = if total == 0 { 0 } else { (done * 200 + total) / (total * 2) };
    p
}

/// Rewrites `state/tasks.json`, the seed's `{pending, in_progress, completed, failed}`
/// view of `tasks` (blocked counts as pending, cancelled as failed), under its lock.
pub fn refresh_view(dir: &SessionDir, tasks: &[Task], timeout: Duration) -> Result<()> {
    let pick =
        |f: &dyn Fn(Status) -> bool| -> Vec<&Task> { tasks.iter().filter(|t| t.state().is_some_and(f)).collect() };
    let view = json!({
        "pending": pick(&|s| matches!(s, Status::Blocked | Status::Pending)),
        "in_progress": pick(&|s| s == Status::Claimed),
        "completed": pick(&|s| s == Status::Completed),
        "failed": pick(&|s| matches!(s, Status::Failed | Status::Cancelled)),
    });
    let _g = dir.lock("tasks", timeout)?;
    fsio::write_json(&dir.state_file("tasks"), &view)
}

/// Counts tasks, writes `operation_progress` to `state/global.json` and refreshes the
/// `state/tasks.json` view.
pub fn progress(dir: &SessionDir, timeout: Duration) -> Result<Progress> {
    finish_interrupted(dir, timeout);
    let tasks = list_all(dir)?;
    let p = count(&tasks);
    refresh_view(dir, &tasks, timeout)?;
    crate::state::set(dir, "global", "/operation_progress", json!(p.operation_progress), timeout)?;
    Ok(p)
}

/// How a wait ended.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct WaitOutcome {
    /// Tasks waited for that completed.
    pub completed: usize,
    /// Tasks waited for that failed or were cancelled.
    pub failed: Vec<String>,
    /// Tasks waited for that are not final yet.
    pub unfinished: usize,
}

fn wait_check(dir: &SessionDir, ids: &[String]) -> Result<WaitOutcome> {
    let mut out = WaitOutcome::default();
    if ids.is_empty() {
        // In the order tasks move (blocked, pending, claimed), so a task that moves on
        // while we look is seen in its next place; pending once more at the end catches
        // one requeued from claimed back to pending in between. (Pending counts as one:
        // its scan stops at the first entry.)
        let pending =
            || -> Result<usize> { Ok(usize::from(index::PendingScan::open(dir, |_| true)?.peek()?.is_some())) };
        out.unfinished = index::list_names(&dir.tasks_status_dir("blocked"))?.len()
            + pending()?
            + index::list_names(&dir.tasks_status_dir("claimed"))?.len();
        if out.unfinished == 0 {
            out.unfinished = pending()?;
        }
        out.completed = index::list_names(&dir.tasks_status_dir("done"))?.len();
        for s in [Status::Failed, Status::Cancelled] {
            for n in index::list_names(&dir.tasks_status_dir(s.dir_name()))? {
                out.failed.push(n.trim_end_matches(".json").to_string());
            }
        }
        out.failed.sort();
        return Ok(out);
    }
    for i in ids {
        match dep_status(dir, i) {
            Some(Status::Completed) => out.completed += 1,
            Some(_) => out.failed.push(i.clone()),
            None => out.unfinished += 1,
        }
    }
    Ok(out)
}

/// Waits until the given tasks (all tasks when empty) are final, or one of them failed.
/// Returns the outcome; `Error::Empty` (exit 3) when `limit` passes first.
pub fn wait(dir: &SessionDir, ids: &[String], limit: Option<Duration>) -> Result<WaitOutcome> {
    for i in ids {
        id::validate("task", i)?;
        if read_locator(dir, i)?.is_none() {
            return Err(unknown_task(dir, i));
        }
    }
    ensure_store(dir)?;
    let deadline = limit.map(|l| std::time::Instant::now() + l);
    let mut b = bell::Bell::watch(&[dir.task_finished_bell()]);
    loop {
        finish_interrupted(dir, lock::default_timeout());
        let out = wait_check(dir, ids)?;
        if out.unfinished == 0 || (!ids.is_empty() && !out.failed.is_empty()) {
            return Ok(out);
        }
        if b.wait(deadline) == bell::Wake::TimedOut {
            let out = wait_check(dir, ids)?;
            if out.unfinished == 0 {
                return Ok(out);
            }
            return Err(Error::Empty(format!(
                "timed out after {:.1}s with {} task(s) unfinished",
                limit.unwrap_or_default().as_secs_f64(),
                out.unfinished
            )));
        }
    }
}
