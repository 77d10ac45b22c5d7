//! `taskd kill`: stopping the command that runs a claimed task, through the layout.
//!
//! The request is a file, `tasks/control/<id>.kill`, naming the claim it is for (its
//! attempt and claim token) and whether the task is to be retried. Every `taskd work`
//! loop watches `tasks/control/` (inotify, or every `COORD_POLL_MS` on shared
//! filesystems); the one running that claim sends SIGTERM to the command's process
//! group, SIGKILL after [`KILL_GRACE`], records the attempt as killed (`errors[].killed`)
//! and removes the request. A request for a claim that has since ended is ignored by
//! the workers and removed by the requester.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::bell::{Bell, Wake};
use super::{Status, Task};
use crate::error::{Error, Result};
use crate::layout::SessionDir;
use crate::{fsio, id, time};

/// How long a killed command has after SIGTERM before SIGKILL.
pub const KILL_GRACE: Duration = Duration::from_secs(5);

/// A kill request, `tasks/control/<id>.kill`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KillRequest {
    /// The task.
    pub task: String,
    /// The attempt to stop.
    pub attempt: u32,
    /// The claim to stop (a later claim of the same task is not touched).
    pub claim_token: String,
    /// Whether the task goes back to the queue (counting the attempt) or fails for good.
    pub retry: bool,
    /// RFC 3339 UTC.
    pub requested_at: String,
}

/// Asks the worker running `id` to stop it. The task must be claimed; anything else is
/// refused with nothing written.
pub fn request(dir: &SessionDir, id: &str, retry: bool) -> Result<KillRequest> {
    id::validate("task", id)?;
    let t = super::show(dir, id)?;
    if t.state() != Some(Status::Claimed) {
        return Err(Error::Failed(format!(
            "task {id:?} is {}; only a claimed (running) task can be killed; nothing was changed",
            t.status
        )));
    }
    let Some(token) = t.claim_token.clone() else {
        return Err(Error::Failed(format!("task {id:?} is being claimed right now; try again")));
    };
    let req = KillRequest {
        task: id.to_string(),
        attempt: t.attempts,
        claim_token: token,
        retry,
        requested_at: time::now_rfc3339(),
    };
    super::ensure_store(dir)?;
    fsio::write_json(&dir.task_kill_file(id), &req)?;
    Ok(req)
}

/// The kill request for the claim `t` holds, if one was made. A malformed request file is
/// logged and ignored.
pub(crate) fn requested(dir: &SessionDir, t: &Task) -> Option<KillRequest> {
    let path = dir.task_kill_file(&t.id);
    match fsio::read_json_opt::<KillRequest>(&path) {
        Ok(Some(r)) if Some(&r.claim_token) == t.claim_token.as_ref() && r.task == t.id => Some(r),
        Ok(_) => None,
        Err(e) => {
            log::warn!("ignoring the kill request {}: {e}", path.display());
            None
        }
    }
}

/// Removes the request file if it is still `req` (a newer request is left alone).
pub(crate) fn clear(dir: &SessionDir, req: &KillRequest) {
    let path = dir.task_kill_file(&req.task);
    if fsio::read_json_opt::<KillRequest>(&path).ok().flatten().is_some_and(|r| r.claim_token == req.claim_token)
        && let Err(e) = std::fs::remove_file(&path)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        log::warn!("cannot remove the kill request {}: {e}", path.display());
    }
}

/// How a kill ended.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Killed {
    /// The task as it is now.
    pub task: Task,
    /// The entry recording the killed attempt.
    pub error: super::TaskError,
}

/// Waits until the claim `req` names has ended, at most `limit`. Returns the task with
/// the record of its killed attempt; `Error::Failed` when the claim ended otherwise (the
/// command finished first, or the claim was requeued); `Error::Empty` (exit 3) when the
/// claim is still running at the limit (its holder is not a `taskd work` loop, or is
/// stuck), the request left in place.
pub fn wait_killed(dir: &SessionDir, req: &KillRequest, limit: Duration) -> Result<Killed> {
    let deadline = Instant::now() + limit;
    let mut bell = Bell::watch(&[dir.task_finished_bell(), dir.task_pending_bell()]);
    loop {
        let t = super::show(dir, &req.task)?;
        if t.claim_token.as_ref() != Some(&req.claim_token) {
            if let Some(e) = t.errors.iter().rev().find(|e| e.attempt == req.attempt && e.killed) {
                let error = e.clone();
                return Ok(Killed { task: t, error });
            }
            clear(dir, req);
            return Err(Error::Failed(format!(
                "attempt {} of task {:?} ended before the kill reached it; the task is {}",
                req.attempt, req.task, t.status
            )));
        }
        if bell.wait(Some(deadline)) == Wake::TimedOut {
            let t = super::show(dir, &req.task)?;
            if t.claim_token.as_ref() != Some(&req.claim_token) {
                continue;
            }
            return Err(Error::Empty(format!(
                "task {:?} is still running after {:.1}s: its holder (agent {:?}) did not act on the kill request; only `taskd work` loops do (the request stays in {})",
                req.task,
                limit.as_secs_f64(),
                t.assigned_to.as_deref().unwrap_or("?"),
                dir.task_kill_file(&req.task).display()
            )));
        }
    }
}
