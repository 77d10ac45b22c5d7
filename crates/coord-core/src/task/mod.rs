//! The task queue (`taskd`): per-task record files whose status changes are renames.
//!
//! ```text
//! tasks/ids/<id>.json        immutable locator written once at submit; reserves the id;
//!                            its flock serializes the task's transitions
//! tasks/pending/<route>/<priority-key>/<chunk>/<seq>.<id>.json   ready to claim (indexed)
//! tasks/blocked/<id>.json    waiting for dependencies
//! tasks/claimed/<id>.json    held by an agent under a lease
//! tasks/done/<id>.json       completed        tasks/failed/<id>.json   failed for good
//! tasks/cancelled/<id>.json  cancelled
//! tasks/dependents/<id>/<child>  who waits for <id>
//! tasks/finishing/<id>       a final status's follow-up is owed (a hard link to the
//!                            locator: marking allocates no inode)
//! ```
//!
//! A transition takes the task's lock, renames the record into its new status directory
//! (the atomic status change), then rewrites the record in place with the new fields.
//! A transition to a final status publishes its content first ([`store::publish_final`]): it
//! marks the follow-up owed, replaces the record in place with the final content, then
//! renames it, and runs the follow-up under the lock; a pass finishes what a killed
//! process left ([`store::finish_interrupted`]).
//! Claimers take the lock with a non-blocking try and move on to the next candidate when
//! another process has it, so exactly one claimer wins and nobody waits. Completion and
//! failure check the claim token (or agent) under the same lock, so a holder whose claim
//! was requeued or taken over is refused ("claim lost") and changes nothing.
//!
//! For other tools: [`requeue_agent`] and [`requeue_expired`] (healthmon), [`list_all`]
//! and [`Task`] (aggregate).
//!
//! The parts: `store` (paths, locks, reading and writing records, the final-status
//! follow-up), `submit`, `claim`, `finish` (complete, fail, release, cancel, the results
//! log), `requeue` (leases), `query` (show, list, count, progress, wait); and `record`
//! (the record's fields), `index` (the pending index), `assign` (push assignment),
//! `work` (the worker loop), `bell` (wake-ups). This file holds the shared types and
//! re-exports every public item, so `task::claim` and the rest keep their paths.

pub mod assign;
pub mod bell;
mod census;
pub mod index;
pub mod kill;
pub mod output;
pub mod record;
pub mod work;

mod claim;
mod finish;
pub mod pause;
mod query;
mod requeue;
mod retry;
mod store;
mod submit;

use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use census::{Census, census};
pub(crate) use claim::{Unassign, claim_unassigning, update_assigned};
pub use claim::{claim, claim_wait};
use claim::{note_assigned, take};
pub use finish::{cancel, complete, fail, release};
pub(crate) use finish::{complete_as, fail_as, kill_as};
pub use index::Route;
pub use pause::{Paused, pause, paused, resume};
use query::records_in;
pub use query::{WaitOutcome, count, list, list_all, progress, refresh_view, show, wait};
pub use record::{DEFAULT_MAX_ATTEMPTS, NewTask, Retry, Status, Task, TaskError};
pub use requeue::{lease_deadline, requeue_agent, requeue_expired};
pub use retry::{RetryWhich, retry};
use store::{ensure_store, read_record, rewrite_record, status_file, task_lock};
pub use submit::{parse_batch, submit};

/// The lease of a claim when none is given: the holder's heartbeat renews it.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(300);

/// The sender name of messages taskd sends (`task_assignment`, `preempt`).
pub const COORDINATOR: &str = "coordinator";

const STORE_DIRS: &[&str] = &[
    "tasks/ids",
    "tasks/pending",
    "tasks/blocked",
    "tasks/claimed",
    "tasks/done",
    "tasks/failed",
    "tasks/cancelled",
    "tasks/dependents",
    "tasks/output",
    "tasks/control",
];

/// The immutable locator of a task, `tasks/ids/<id>.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Locator {
    id: String,
    seq: u64,
    /// Path of the pending record relative to `tasks/pending/`.
    pending: String,
}

/// Who claims to hold a task. With neither field set, the current claim is trusted.
#[derive(Debug, Clone, Default)]
pub struct Holder {
    /// The agent that claimed it.
    pub agent: Option<String>,
    /// The claim token printed by the claim.
    pub token: Option<String>,
}

impl Holder {
    fn matches(&self, t: &Task) -> bool {
        self.agent.as_ref().is_none_or(|a| t.assigned_to.as_ref() == Some(a))
            && self.token.as_ref().is_none_or(|k| t.claim_token.as_ref() == Some(k))
    }

    fn describe(&self) -> String {
        match (&self.agent, &self.token) {
            (Some(a), Some(k)) => format!("agent {a:?} with token {k}"),
            (Some(a), None) => format!("agent {a:?}"),
            (None, Some(k)) => format!("token {k}"),
            (None, None) => "the caller".to_string(),
        }
    }
}

/// How a claim is made.
#[derive(Debug, Clone)]
pub struct ClaimOptions {
    /// Lease length.
    pub lease: Duration,
    /// `Some("coordinator")` for a pushed assignment.
    pub assigned_by: Option<String>,
}

impl Default for ClaimOptions {
    fn default() -> Self {
        ClaimOptions { lease: DEFAULT_LEASE, assigned_by: None }
    }
}

/// What a requeue did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RequeueReport {
    /// Tasks returned to the queue.
    pub requeued: usize,
    /// Tasks that had no attempts left and failed for good.
    pub failed: usize,
    /// The ids touched.
    pub tasks: Vec<String>,
}

/// Task counts by status, and the seed's `operation_progress`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Progress {
    /// All tasks.
    pub total: usize,
    /// Waiting for dependencies.
    pub blocked: usize,
    /// Ready to claim.
    pub pending: usize,
    /// Held by agents.
    pub claimed: usize,
    /// Completed.
    pub completed: usize,
    /// Failed for good.
    pub failed: usize,
    /// Cancelled.
    pub cancelled: usize,
    /// `round(completed / total * 100)`, 0 with no tasks.
    pub operation_progress: u64,
}

#[cfg(test)]
mod tests;
