//! The session overview that `healthmon status` prints and `coord-mcp`'s
//! `session_status` returns: the session record, the seed's `phase` and
//! `operation_progress` from `state/global.json`, every agent with its liveness, each
//! agent's mailbox counts, the task counts, and the problems met while reading them.
//!
//! It only reads (`session.json`, `state/global.json`, `registry/`, `messages/<agent>/`,
//! `tasks/`), takes no lock, and reports a file it cannot read as a problem rather than
//! failing, so a damaged session still shows what can be shown.

use std::time::Duration;

use serde_json::{Value, json};

use crate::error::Result;
use crate::health;
use crate::layout::SessionDir;
use crate::mailbox;
use crate::session;
use crate::state;
use crate::task;

/// How long an agent's heartbeat may be silent before the overview calls it stale.
pub const STALE_AFTER: Duration = Duration::from_secs(30);

/// Gathers the overview as one JSON object: `session`, `phase`, `operation_progress`,
/// `agents`, `mailboxes`, `tasks` and `problems`. Only a missing or unreadable session
/// record is an error.
pub fn overview(dir: &SessionDir) -> Result<Value> {
    Overview::new().gather(dir)
}

/// Gathers the overview again and again (a live view): the task counts come from a
/// [`task::Census`] that lists only the directories that changed since the last time.
#[derive(Debug, Default)]
pub struct Overview {
    census: task::Census,
}

impl Overview {
    /// Nothing remembered yet.
    pub fn new() -> Overview {
        Overview::default()
    }

    /// The overview now, the same object [`overview`] gives.
    pub fn gather(&mut self, dir: &SessionDir) -> Result<Value> {
        let s = session::read(dir)?;
        let global = state::get(dir, "global").unwrap_or(Value::Null);
        let (agents, mut problems) = health::agent_views(dir, STALE_AFTER)?;
        let mut mailboxes = Vec::new();
        for a in &agents {
            match mailbox::count(dir, &a.id) {
                Ok(c) => mailboxes.push(c),
                Err(e) => problems.push(format!("mailbox of {}: {e}", a.id)),
            }
        }
        // Counted from the names in the status directories and the pending index; no
        // record is read (see task::Census).
        let tasks = match self.census.count(dir) {
            Ok(p) => serde_json::to_value(p).unwrap_or(Value::Null),
            Err(e) => {
                problems.push(format!("tasks: {e}"));
                Value::Null
            }
        };
        Ok(json!({
            "session": {"id": s.id, "operation": s.operation, "status": s.status, "started_at": s.started_at},
            "phase": global.get("phase").cloned().unwrap_or(Value::Null),
            "operation_progress": global.get("operation_progress").cloned().unwrap_or(Value::Null),
            "agents": agents,
            "mailboxes": mailboxes,
            "tasks": tasks,
            "problems": problems,
        }))
    }
}
