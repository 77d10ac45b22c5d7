//! Leases and requeue (also called by healthmon): a claim's lease deadline, and
//! returning claims in `tasks/claimed/` to the queue when their lease lapsed or their
//! agent is gone — or failing them for good when they have no attempts left.

use std::time::{Duration, SystemTime};

use super::claim::Unassign;
use super::finish::{Spend, requeue_held};
use super::query::records_in;
use super::store::{finish_interrupted, finish_one, finishing_file, read_record, status_file, task_lock};
use super::{RequeueReport, Status, Task, TaskError};
use crate::error::Result;
use crate::layout::SessionDir;
use crate::{fsio, id, registry, time};

/// When the claim's lease lapses: the later of its recorded expiry and the holder's
/// last heartbeat plus the lease length. `None` for a claim without a lease (its claimer
/// died between the rename and the record rewrite): lapsed at once.
pub fn lease_deadline(dir: &SessionDir, t: &Task) -> Option<SystemTime> {
    let recorded = t.lease_expires_at.as_deref().and_then(time::parse_rfc3339)?;
    // A record's lease length is a file's word: one too long for a Duration or for the
    // clock counts as no renewal (the recorded expiry decides), never as a panic.
    let lease = Duration::try_from_secs_f64(t.lease_seconds.unwrap_or(0.0).max(0.0)).ok();
    let renewed =
        t.assigned_to.as_deref().and_then(|a| registry::last_heartbeat(dir, a)).and_then(|hb| hb.checked_add(lease?));
    Some(renewed.map_or(recorded, |r| r.max(recorded)))
}

fn lapsed(dir: &SessionDir, t: &Task, now: SystemTime) -> bool {
    lease_deadline(dir, t).is_none_or(|d| now > d)
}

/// Every claimed record (malformed ones are set aside).
fn claimed_records(dir: &SessionDir) -> Result<Vec<Task>> {
    records_in(dir, Status::Claimed)
}

fn requeue_where(dir: &SessionDir, why: &dyn Fn(&Task) -> Option<String>, timeout: Duration) -> Result<RequeueReport> {
    let mut report = RequeueReport::default();
    for t in claimed_records(dir)? {
        if why(&t).is_none() {
            continue;
        }
        // One task that cannot be requeued does not stop the others.
        let after = match requeue_one(dir, why, &t, timeout) {
            Ok(Some(after)) => after,
            Ok(None) => continue,
            Err(e) => {
                log::warn!("task {:?}: not requeued: {e}", t.id);
                continue;
            }
        };
        if after.state() == Some(Status::Failed) {
            report.failed += 1;
        } else {
            report.requeued += 1;
        }
        report.tasks.push(after.id);
    }
    Ok(report)
}

/// Requeues one listed claim under its lock if it still qualifies.
fn requeue_one(
    dir: &SessionDir,
    why: &dyn Fn(&Task) -> Option<String>,
    t: &Task,
    timeout: Duration,
) -> Result<Option<Task>> {
    let mut guard = task_lock(dir, &t.id, timeout)?;
    if finishing_file(dir, &t.id).exists() {
        // Its holder was finishing it: finish that rather than requeue.
        match finish_one(dir, &t.id, guard, timeout)? {
            Some(g) => guard = g,
            None => return Ok(None),
        }
    }
    let path = status_file(dir, Status::Claimed, &t.id);
    let current = match read_record(&path, Status::Claimed) {
        Ok(c) => c,
        Err(e) if fsio::is_not_found(&e) => return Ok(None),
        Err(e) => return Err(e),
    };
    // Re-check under the lock: the claim may have changed since the listing.
    if current.claim_token != t.claim_token {
        return Ok(None);
    }
    let Some(reason) = why(&current) else { return Ok(None) };
    let err = TaskError {
        attempt: current.attempts,
        agent: current.assigned_to.clone(),
        at: time::now_rfc3339(),
        error: reason,
        killed: false,
    };
    requeue_held(dir, guard, current, &path, Spend::Yes, Some(err), Unassign::Now, timeout).map(Some)
}

/// Returns every task claimed by `agent` to the queue, counting the attempt; a task
/// with no attempts left fails for good with `reason`. For healthmon (dead agents) and
/// `taskd requeue --agent`.
pub fn requeue_agent(dir: &SessionDir, agent: &str, reason: &str, timeout: Duration) -> Result<RequeueReport> {
    id::validate("agent", agent)?;
    let why = |t: &Task| (t.assigned_to.as_deref() == Some(agent)).then(|| reason.to_string());
    requeue_where(dir, &why, timeout)
}

/// Returns every claim whose lease has lapsed to the queue, counting the attempt. For
/// healthmon and `taskd requeue --expired`.
pub fn requeue_expired(dir: &SessionDir, timeout: Duration) -> Result<RequeueReport> {
    finish_interrupted(dir, timeout);
    let why = |t: &Task| {
        let now = SystemTime::now();
        lapsed(dir, t, now).then(|| match &t.assigned_to {
            Some(a) if t.lease_expires_at.is_some() => format!("lease expired (held by agent {a:?})"),
            _ => "claim interrupted before its lease was recorded".to_string(),
        })
    };
    requeue_where(dir, &why, timeout)
}
