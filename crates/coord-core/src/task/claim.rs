//! Claiming: an active agent takes the best pending task it may run (from the index
//! under `tasks/pending/`) by renaming it into `tasks/claimed/<id>.json` under the
//! task's lock taken with a non-blocking try, so exactly one claimer wins; waiting for
//! one (`claim_wait`), and the registry's `assigned_tasks` list kept up to date
//! (`registry/agents.json`).

use std::time::{Duration, SystemTime};

use super::store::{ensure_store, new_token, rename_existing, rewrite_record, status_file};
use super::{ClaimOptions, Status, Task, bell, index};
use crate::error::{Error, Result};
use crate::layout::SessionDir;
use crate::lock;
use crate::record::{Agent, status as agent_status};
use crate::{fsio, id, registry, time};

fn active_agent(dir: &SessionDir, agent: &str) -> Result<Agent> {
    id::validate("agent", agent)?;
    let a = registry::load(dir)?.into_iter().find(|a| a.id == agent).ok_or_else(|| {
        Error::Failed(format!(
            "agent {agent:?} is not registered in session {:?}; run `registry register` first",
            dir.id()
        ))
    })?;
    if a.status != agent_status::ACTIVE {
        return Err(Error::Failed(format!("agent {agent:?} is {}, not active; it cannot take tasks", a.status)));
    }
    Ok(a)
}

/// Claims the best pending task the agent may take (highest priority, then oldest),
/// or `None` when there is none. The agent must be registered and active.
pub fn claim(dir: &SessionDir, agent: &str, opts: &ClaimOptions, timeout: Duration) -> Result<Option<Task>> {
    ensure_store(dir)?;
    claim_unassigning(dir, agent, opts, &[], timeout)
}

/// [`claim`] for a worker loop (store known to exist) that also removes `finished`
/// (tasks it just finished with [`Unassign::Deferred`]) from its `assigned_tasks`, in
/// the same registry rewrite that adds the claimed task. With nothing to claim the
/// registry is not touched: the caller then removes `finished` itself.
pub(crate) fn claim_unassigning(
    dir: &SessionDir,
    agent: &str,
    opts: &ClaimOptions,
    finished: &[String],
    timeout: Duration,
) -> Result<Option<Task>> {
    let a = active_agent(dir, agent)?;
    let paused = super::pause::paused(dir)?;
    if paused.all.is_some() {
        return Ok(None);
    }
    let mut scan = index::PendingScan::open(dir, |r| paused.admits(r) && r.admits(&a.agent_type, &a.capabilities))?;
    while let Some((i, e)) = scan.peek()? {
        scan.advance(i);
        if let Some(t) = take(dir, &e, agent, opts)? {
            update_assigned(dir, agent, Some(&t.id), finished, timeout);
            return Ok(Some(t));
        }
    }
    Ok(None)
}

/// Claims, waiting (on inotify, not polling) until something is claimable or `timeout`
/// passes (`Error::Empty`, exit 3). `signals` ends the wait early with `Ok(None)`.
///
/// The watch is left in `bell` for the caller to drop after it has printed the task:
/// closing an inotify descriptor waits for a kernel grace period (milliseconds).
pub fn claim_wait(
    dir: &SessionDir,
    agent: &str,
    opts: &ClaimOptions,
    wait: Option<Duration>,
    signals: Option<&bell::Signals>,
    bell: &mut Option<bell::Bell>,
    timeout: Duration,
) -> Result<Option<Task>> {
    ensure_store(dir)?;
    let deadline = wait.map(|w| std::time::Instant::now() + w);
    loop {
        if let Some(t) = claim_unassigning(dir, agent, opts, &[], timeout)? {
            return Ok(Some(t));
        }
        let Some(b) = bell.as_mut() else {
            // Watch, then look again, so a task that became claimable in between wakes us.
            let mut b = bell::Bell::watch(&[dir.task_pending_bell()]);
            if let Some(s) = signals {
                b = b.with_signals(s);
            }
            *bell = Some(b);
            continue;
        };
        match b.wait(deadline) {
            bell::Wake::Changed => {}
            bell::Wake::Signalled => return Ok(None),
            bell::Wake::TimedOut => {
                return Err(Error::Empty(format!(
                    "nothing to claim for agent {agent:?} within {:.1}s",
                    wait.unwrap_or_default().as_secs_f64()
                )));
            }
        }
    }
}

/// Takes one pending entry for `agent` if nobody else is: try-lock, rename, rewrite.
pub(super) fn take(dir: &SessionDir, e: &index::Entry, agent: &str, opts: &ClaimOptions) -> Result<Option<Task>> {
    let guard = match lock::try_acquire_existing(&dir.task_id_file(&e.id)) {
        Ok(Some(guard)) => guard,
        Ok(None) => return Ok(None),
        Err(err) if fsio::is_not_found(&err) => {
            // Submit writes the locator before the record and nothing removes it, so a
            // pending record without one was not put there by taskd: set it aside rather
            // than skip it on every scan.
            if std::fs::symlink_metadata(&e.path).is_ok() {
                log::warn!("{} has no locator ({}): not a task of this store", e.path.display(), err);
                index::set_aside(&dir.tasks_garbage_dir(), &e.path);
            }
            return Ok(None);
        }
        Err(err) => return Err(err),
    };
    let mut t: Task = match fsio::read_json(&e.path) {
        Ok(t) => t,
        Err(err) if fsio::is_not_found(&err) => return Ok(None),
        Err(err @ Error::Malformed { .. }) => {
            log::warn!("{err}");
            index::set_aside(&dir.tasks_garbage_dir(), &e.path);
            return Ok(None);
        }
        Err(err) => return Err(err),
    };
    if t.id != e.id {
        log::warn!("{} holds task {:?}, not {:?}", e.path.display(), t.id, e.id);
        index::set_aside(&dir.tasks_garbage_dir(), &e.path);
        return Ok(None);
    }
    let dest = status_file(dir, Status::Claimed, &t.id);
    if !rename_existing(&e.path, &dest)? {
        return Ok(None);
    }
    let now = SystemTime::now();
    t.status = if opts.assigned_by.is_some() { "assigned" } else { "claimed" }.to_string();
    // A record planted with the largest count stays there rather than wrapping to 0.
    t.attempts = t.attempts.saturating_add(1);
    t.assigned_to = Some(agent.to_string());
    t.assigned_at = Some(time::rfc3339(now));
    t.assigned_by = opts.assigned_by.clone();
    t.claim_token = Some(new_token());
    t.lease_seconds = Some(opts.lease.as_secs_f64());
    t.lease_expires_at = Some(time::rfc3339(now + opts.lease));
    t.preempt_requested_at = None;
    rewrite_record(dir, &dest, &t)?;
    drop(guard);
    Ok(Some(t))
}

/// Adds or removes a task in the agent's `assigned_tasks`. The task store is the source
/// of truth; a registry that cannot be updated is logged, not fatal.
pub(super) fn note_assigned(dir: &SessionDir, agent: &str, task: &str, add: bool, timeout: Duration) {
    let task = task.to_string();
    if add {
        update_assigned(dir, agent, Some(&task), &[], timeout);
    } else {
        update_assigned(dir, agent, None, std::slice::from_ref(&task), timeout);
    }
}

/// One rewrite of the agent's registration: removes `remove` from its
/// `assigned_tasks`, then adds `add`. Logged, not fatal, on failure (as above).
pub(crate) fn update_assigned(dir: &SessionDir, agent: &str, add: Option<&str>, remove: &[String], timeout: Duration) {
    if add.is_none() && remove.is_empty() {
        return;
    }
    let r = registry::modify(dir, agent, timeout, |a| {
        a.assigned_tasks.retain(|t| !remove.contains(t));
        if let Some(task) = add
            && !a.assigned_tasks.iter().any(|t| t == task)
        {
            a.assigned_tasks.push(task.to_string());
        }
        Ok(())
    });
    if let Err(e) = r {
        log::warn!("could not update assigned_tasks of agent {agent:?} (+{add:?} -{remove:?}): {e}");
    }
}

/// When finishing a claim removes the task from its holder's `assigned_tasks`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unassign {
    /// At once (one registry rewrite).
    Now,
    /// Left to the caller, a worker loop that folds it into its next claim's rewrite.
    Deferred,
}
