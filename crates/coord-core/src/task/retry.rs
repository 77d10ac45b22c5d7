//! `taskd retry`: a task that failed for good (attempts spent, killed, a dependency
//! failed) or was cancelled goes back to the queue with a fresh attempt budget. Its
//! record keeps every earlier error and gains a `retries` entry; `max_attempts` becomes
//! the attempts made so far plus the budget, so attempt numbers (and the output files
//! named by them) never repeat. A task whose dependencies are not all completed goes
//! to `tasks/blocked/` and waits for them as at submit.

use std::time::Duration;

use super::store::{
    dep_status, finish_one, locate, pending_path, read_record, rename_existing, rewrite_record, status_file, task_lock,
    unknown_task,
};
use super::submit::{cascade_failures, recheck_blocked};
use super::{Status, Task, bell, records_in};
use crate::error::{Error, Result};
use crate::layout::SessionDir;
use crate::{id, time};

/// Which tasks to retry.
#[derive(Debug, Clone)]
pub enum RetryWhich {
    /// These tasks (each must be failed or cancelled).
    Tasks(Vec<String>),
    /// Every task that failed for good.
    Failed,
}

/// Retries tasks (see the module docs). `budget` is the number of new attempts; `None`
/// gives each task the budget it was submitted with. With [`RetryWhich::Tasks`] every
/// task is checked first, and nothing changes when one of them cannot be retried: not
/// failed or cancelled, or waiting for a dependency that failed and is not retried
/// with it. With [`RetryWhich::Failed`] such a task is left out (logged) and the others
/// are retried. Tasks are retried in submission order, so dependencies come back first.
pub fn retry(dir: &SessionDir, which: &RetryWhich, budget: Option<u32>, timeout: Duration) -> Result<Vec<Task>> {
    if budget == Some(0) {
        return Err(Error::Usage("a retry needs a budget of at least 1 attempt".into()));
    }
    super::ensure_store(dir)?;
    let mut chosen: Vec<Task> = match which {
        RetryWhich::Failed => records_in(dir, Status::Failed)?,
        RetryWhich::Tasks(ids) => {
            let mut out: Vec<Task> = Vec::with_capacity(ids.len());
            for i in ids {
                id::validate("task", i)?;
                if out.iter().any(|t| &t.id == i) {
                    continue;
                }
                let t = super::show(dir, i)?;
                match t.state() {
                    Some(Status::Failed | Status::Cancelled) => out.push(t),
                    Some(s) => {
                        return Err(Error::Failed(format!(
                            "task {i:?} is {}; only a failed or cancelled task can be retried; nothing was changed",
                            s.name()
                        )));
                    }
                    None => return Err(unknown_task(dir, i)),
                }
            }
            out
        }
    };
    chosen.sort_by_key(|t| t.seq);
    let all_failed = matches!(which, RetryWhich::Failed);
    // With --failed, a task held back by a dependency that stays failed or cancelled is
    // left as it is (and said); named tasks are all or nothing.
    let blocked_by = |t: &Task, retried: &[String]| {
        t.dependencies.iter().find_map(|d| match dep_status(dir, d) {
            Some(s @ (Status::Failed | Status::Cancelled)) if !retried.contains(d) => Some((d.clone(), s)),
            _ => None,
        })
    };
    if all_failed {
        loop {
            let ids: Vec<String> = chosen.iter().map(|t| t.id.clone()).collect();
            let before = chosen.len();
            chosen.retain(|t| match blocked_by(t, &ids) {
                Some((d, s)) => {
                    log::warn!("task {:?} is not retried: it depends on task {d:?}, which stays {}", t.id, s.name());
                    false
                }
                None => true,
            });
            if chosen.len() == before {
                break;
            }
        }
    }
    let retried: Vec<String> = chosen.iter().map(|t| t.id.clone()).collect();
    for t in &chosen {
        if let Some((d, s)) = blocked_by(t, &retried) {
            return Err(Error::Failed(format!(
                "task {:?} depends on task {d:?}, which is {}: retry {d:?} with it (`taskd retry {d} {}`); nothing was changed",
                t.id,
                s.name(),
                t.id
            )));
        }
    }
    let mut out = Vec::with_capacity(chosen.len());
    for t in chosen {
        out.push(retry_one(dir, &t.id, budget, timeout)?);
    }
    if !out.is_empty() {
        bell::ring(&dir.task_pending_bell());
    }
    Ok(out)
}

fn retry_one(dir: &SessionDir, id: &str, budget: Option<u32>, timeout: Duration) -> Result<Task> {
    let mut guard = task_lock(dir, id, timeout)?;
    // A final status whose follow-up was interrupted is finished first.
    if super::store::finishing_file(dir, id).exists() {
        match finish_one(dir, id, guard, timeout)? {
            Some(g) => guard = g,
            None => guard = task_lock(dir, id, timeout)?,
        }
    }
    let Some((s, path)) = locate(dir, id)? else { return Err(unknown_task(dir, id)) };
    if !matches!(s, Status::Failed | Status::Cancelled) {
        return Err(Error::Failed(format!("task {id:?} became {} while retrying; it was left as it is", s.name())));
    }
    let mut t = read_record(&path, s)?;
    let budget = budget.unwrap_or_else(|| t.retries.first().map_or(t.max_attempts, |r| r.max_attempts)).max(1);
    t.retries.push(super::record::Retry {
        at: time::now_rfc3339(),
        from: s.name().to_string(),
        reason: t.reason.take(),
        attempts: t.attempts,
        max_attempts: t.max_attempts,
    });
    t.max_attempts = t.attempts.saturating_add(budget);
    t.failed_at = None;
    t.completed_at = None;
    t.results = None;
    t.clear_claim();
    let waiting = t.dependencies.iter().any(|d| dep_status(dir, d) != Some(Status::Completed));
    let (status, dest) = if waiting {
        (Status::Blocked, status_file(dir, Status::Blocked, id))
    } else {
        (Status::Pending, pending_path(dir, &t)?)
    };
    t.status = status.name().to_string();
    if !rename_existing(&path, &dest)? {
        return Err(Error::Failed(format!("task {id:?} moved while retrying; try again")));
    }
    rewrite_record(dir, &dest, &t)?;
    drop(guard);
    if waiting {
        // A dependency that finished since the look above found no blocked record to
        // release: look again now that it is there.
        match recheck_blocked(dir, id, timeout)? {
            Some(Status::Failed) => {
                cascade_failures(dir, vec![id.to_string()], timeout)?;
                return super::show(dir, id);
            }
            Some(s) => t.status = s.name().to_string(),
            None => {}
        }
    }
    Ok(t)
}
