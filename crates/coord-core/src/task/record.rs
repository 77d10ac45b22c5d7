//! The task record and what a submission asks for.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Default `max_attempts` of a task.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;

/// Where a task is in its life. Each status is a directory of `tasks/`; a status change
/// is a rename between them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Status {
    /// Waiting for dependencies (`tasks/blocked/`).
    Blocked,
    /// Ready to be claimed (`tasks/pending/`, indexed).
    Pending,
    /// Held by an agent under a lease (`tasks/claimed/`).
    Claimed,
    /// Completed (`tasks/done/`).
    Completed,
    /// Failed for good: attempts exhausted, or a dependency failed (`tasks/failed/`).
    Failed,
    /// Cancelled by `taskd cancel` (`tasks/cancelled/`).
    Cancelled,
}

impl Status {
    /// Every status, in life order.
    pub const ALL: [Status; 6] =
        [Status::Blocked, Status::Pending, Status::Claimed, Status::Completed, Status::Failed, Status::Cancelled];

    /// The name used in records and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Status::Blocked => "blocked",
            Status::Pending => "pending",
            Status::Claimed => "claimed",
            Status::Completed => "completed",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
        }
    }

    /// The directory under `tasks/` holding records of this status.
    pub fn dir_name(self) -> &'static str {
        match self {
            Status::Blocked => "blocked",
            Status::Pending => "pending",
            Status::Claimed => "claimed",
            Status::Completed => "done",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
        }
    }

    /// Parses a status name (`assigned` and `in_progress` mean claimed, `done` completed).
    pub fn parse(s: &str) -> Option<Status> {
        Some(match s {
            "blocked" => Status::Blocked,
            "pending" => Status::Pending,
            "claimed" | "assigned" | "in_progress" => Status::Claimed,
            "completed" | "done" => Status::Completed,
            "failed" => Status::Failed,
            "cancelled" => Status::Cancelled,
            _ => return None,
        })
    }

    /// Whether the task can never change again.
    pub fn is_final(self) -> bool {
        matches!(self, Status::Completed | Status::Failed | Status::Cancelled)
    }
}

/// One failed attempt (or requeue) of a task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskError {
    /// The attempt it ended (1-based).
    pub attempt: u32,
    /// The agent that held the task, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// RFC 3339 UTC.
    pub at: String,
    /// What went wrong.
    pub error: String,
    /// Set when the attempt was stopped by `taskd kill`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub killed: bool,
}

/// One `taskd retry` of a task that had failed for good or been cancelled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Retry {
    /// RFC 3339 UTC.
    pub at: String,
    /// The status it was retried from (`failed` or `cancelled`).
    pub from: String,
    /// Its `reason` then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Attempts made before the retry.
    pub attempts: u32,
    /// `max_attempts` before the retry (after it: `attempts` plus the new budget).
    pub max_attempts: u32,
}

/// A task record, `tasks/<status>/<id>.json`. Field names follow the seed (`id`, `status`,
/// `assigned_to`, `assigned_at`, `completed_at`, `results`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    /// The task id.
    pub id: String,
    /// `blocked`, `pending`, `claimed` (pulled), `assigned` (pushed), `completed`,
    /// `failed` or `cancelled`. The directory holding the record is authoritative.
    pub status: String,
    /// Only agents of this type may take the task (`None`: any type).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_type: Option<String>,
    /// Capabilities the agent must have.
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// Higher runs first.
    #[serde(default)]
    pub priority: i64,
    /// What the task is about; opaque to taskd.
    #[serde(default)]
    pub payload: Value,
    /// Tasks that must complete before this one becomes claimable.
    #[serde(default)]
    pub dependencies: Vec<String>,
    /// Claims so far (a release does not count).
    #[serde(default)]
    pub attempts: u32,
    /// After this many attempts a failure is final.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// RFC 3339 UTC.
    pub created_at: String,
    /// Submission sequence number: among equal priorities, lower runs first.
    pub seq: u64,
    /// The agent holding (or that last held) the task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assigned_to: Option<String>,
    /// When the current (or last) claim was made, RFC 3339 UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assigned_at: Option<String>,
    /// `coordinator` when pushed by `taskd assign`/`run`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assigned_by: Option<String>,
    /// Fences completions: only the holder of this token (or agent) may finish the claim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim_token: Option<String>,
    /// Lease length in seconds; the holder's heartbeat renews it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_seconds: Option<f64>,
    /// When the lease lapses unless renewed, RFC 3339 UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_expires_at: Option<String>,
    /// Set when a `preempt` message was sent for the current claim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preempt_requested_at: Option<String>,
    /// RFC 3339 UTC, set on completion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<String>,
    /// The result given at completion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub results: Option<Value>,
    /// RFC 3339 UTC, set when the task fails for good or is cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_at: Option<String>,
    /// Why the task failed for good or was cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// One entry per failed attempt or requeue.
    #[serde(default)]
    pub errors: Vec<TaskError>,
    /// One entry per `taskd retry`, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retries: Vec<Retry>,
    /// Fields this version does not know.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

fn default_max_attempts() -> u32 {
    DEFAULT_MAX_ATTEMPTS
}

impl Task {
    /// The status this record's directory stands for (from the `status` field).
    pub fn state(&self) -> Option<Status> {
        Status::parse(&self.status)
    }

    /// Drops the current claim's fields (the task goes back to the queue).
    pub(crate) fn clear_claim(&mut self) {
        self.claim_token = None;
        self.lease_seconds = None;
        self.lease_expires_at = None;
        self.preempt_requested_at = None;
    }
}

/// What `taskd submit` asks for (one line of `--batch` input).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewTask {
    /// The id; generated when missing.
    #[serde(default)]
    pub id: Option<String>,
    /// Required agent type.
    #[serde(default, alias = "type")]
    pub agent_type: Option<String>,
    /// Required capabilities.
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// Priority (higher first).
    #[serde(default)]
    pub priority: i64,
    /// Tasks that must complete first.
    #[serde(default, alias = "after")]
    pub dependencies: Vec<String>,
    /// Attempts before a failure is final (default 3).
    #[serde(default)]
    pub max_attempts: Option<u32>,
    /// The payload.
    #[serde(default)]
    pub payload: Value,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_names_round_trip() {
        for s in Status::ALL {
            assert_eq!(Status::parse(s.name()), Some(s));
        }
        assert_eq!(Status::parse("assigned"), Some(Status::Claimed));
        assert_eq!(Status::parse("nope"), None);
    }

    #[test]
    fn task_keeps_unknown_fields_and_new_task_rejects_them() {
        let text = r#"{"id":"t1","status":"pending","created_at":"2026-01-01T00:00:00.000Z","seq":3,"custom":1}"#;
        let t: Task = serde_json::from_str(text).expect("parse");
        assert_eq!(t.max_attempts, DEFAULT_MAX_ATTEMPTS);
        assert_eq!(t.extra["custom"], 1);
        let n: NewTask = serde_json::from_str(r#"{"type":"w","after":["a"]}"#).expect("aliases");
        assert_eq!(n.agent_type.as_deref(), Some("w"));
        assert_eq!(n.dependencies, vec!["a"]);
        assert!(serde_json::from_str::<NewTask>(r#"{"prio":1}"#).is_err());
    }
}
