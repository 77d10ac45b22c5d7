//! The records stored in a session, as serde types. Field names follow the seed.
//!
//! Every record keeps fields it does not know in `extra`, so a newer tool (or a user's
//! own script) can add fields without an older tool dropping them on rewrite.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Agent statuses the tools themselves set. `registry update --status` may set others.
pub mod status {
    /// Registered and expected to be working.
    pub const ACTIVE: &str = "active";
    /// Unregistered by the agent itself.
    pub const TERMINATED: &str = "terminated";
    /// Declared dead or hung by healthmon.
    pub const FAILED: &str = "failed";
    /// A session that is running.
    pub const SESSION_ACTIVE: &str = "active";
    /// A session that `archive` has finished.
    pub const SESSION_COMPLETED: &str = "completed";
}

/// `session.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Session {
    /// The session id, `<operation>-<unix-ts>[-N]`.
    pub id: String,
    /// The operation named at `session-init`.
    pub operation: String,
    /// RFC 3339 UTC.
    pub started_at: String,
    /// `active` or `completed`.
    pub status: String,
    /// Ids of every agent ever registered in the session.
    pub agents: Vec<String>,
    /// `user@host` that created the session.
    pub coordinator: String,
    /// The layout version ([`crate::layout::LAYOUT_VERSION`]).
    pub layout_version: u32,
    /// Set when the session is archived.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<String>,
    /// Fields this version does not know.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The seed's `resource_usage`: human strings plus the numbers behind them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ResourceUsage {
    /// CPU use as a percentage string, e.g. `"15%"`.
    #[serde(default)]
    pub cpu: String,
    /// Resident memory as a string, e.g. `"120MB"`.
    #[serde(default)]
    pub memory: String,
    /// Number of threads.
    #[serde(default)]
    pub threads: u64,
    /// Fields this version does not know (numeric samples, sample time...).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One agent's registration, an element of `registry/agents.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Agent {
    /// The agent id.
    pub id: String,
    /// The agent's type, used to route tasks (`test-fixer`, `worker`, ...).
    #[serde(rename = "type")]
    pub agent_type: String,
    /// `active`, `terminated`, `failed` or a status set with `registry update`.
    pub status: String,
    /// RFC 3339 UTC.
    pub registered_at: String,
    /// RFC 3339 UTC of the last change to this record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<String>,
    /// What the agent can do; tasks may require capabilities.
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// Tasks currently assigned to the agent.
    #[serde(default)]
    pub assigned_tasks: Vec<String>,
    /// The agent's process id on `host`.
    #[serde(default)]
    pub pid: Option<u32>,
    /// The host the agent runs on.
    #[serde(default)]
    pub host: String,
    /// Start time of `pid` in clock ticks since boot (`/proc/<pid>/stat` field 22);
    /// tells a reused pid apart from the registered process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process_start: Option<u64>,
    /// The kernel boot id at registration; start times only compare within one boot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
    /// The pidfs inode of `pid`'s process at registration (Linux 6.9 and later; see
    /// [`crate::sys::process_inode`]): with `process_start`, it tells the process apart
    /// from one that took its pid within the same clock tick.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process_inode: Option<u64>,
    /// The seed's resource usage, sampled by healthmon.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_usage: Option<ResourceUsage>,
    /// Last heartbeat, RFC 3339 UTC. Heartbeats live in `registry/heartbeats/`; this field
    /// is filled in when the record is shown, and frozen into the file at unregister.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heartbeat: Option<String>,
    /// Set by `registry unregister`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terminated_at: Option<String>,
    /// Set when the agent is declared dead or hung.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_at: Option<String>,
    /// Why the agent failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Fields this version does not know, and fields set with `registry update --set`.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The seed's initial `state/global.json`.
pub fn initial_global() -> Value {
    serde_json::json!({"operation_progress": 0, "phase": "discovery", "errors": [], "warnings": []})
}

/// The seed's initial `state/tasks.json` (a view of the task records).
pub fn initial_tasks_view() -> Value {
    serde_json::json!({"pending": [], "in_progress": [], "completed": [], "failed": []})
}

/// The seed's initial `state/results.json`.
pub fn initial_results() -> Value {
    serde_json::json!({"by_agent": {}, "by_task": {}, "summary": {}})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_round_trips_and_keeps_unknown_fields() {
        let text = r#"{"id":"a1","type":"worker","status":"active","registered_at":"2026-01-01T00:00:00.000Z",
            "capabilities":["x"],"assigned_tasks":[],"pid":12,"host":"h","process_start":99,
            "resource_usage":{"cpu":"15%","memory":"120MB","threads":2,"cpu_percent":15.0},"custom":{"k":1}}"#;
        let a: Agent = serde_json::from_str(text).expect("parse");
        assert_eq!(a.agent_type, "worker");
        assert_eq!(a.extra["custom"]["k"], 1);
        let back: Value = serde_json::to_value(&a).expect("ser");
        let orig: Value = serde_json::from_str(text).expect("parse value");
        assert_eq!(back, orig);
    }

    #[test]
    fn seed_registration_without_new_fields_parses() {
        let text = r#"{"id":"test-fixer-001","type":"test-fixer","status":"active",
            "registered_at":"2024-01-15T10:30:00Z","capabilities":["test_execution"],
            "assigned_tasks":["fix-auth-tests"],"pid":4242}"#;
        let a: Agent = serde_json::from_str(text).expect("parse");
        assert_eq!(a.pid, Some(4242));
        assert!(a.host.is_empty());
    }
}
