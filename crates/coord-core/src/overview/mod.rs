//! The session overview that `healthmon status` prints and `coord-mcp`'s
//! `session_status` returns: the session record, the seed's `phase` and
//! `operation_progress` from `state/global.json`, every agent with its liveness, each
//! agent's mailbox counts, the task counts, what `taskd pause` holds back (`paused`), and
//! the problems met while reading them.
//!
//! It only reads (`session.json`, `state/global.json`, `registry/`, `messages/<agent>/`,
//! `tasks/`), takes no lock, and reports a file it cannot read as a problem rather than
//! failing, so a damaged session still shows what can be shown.

use std::time::Duration;

use serde_json::{Value, json};

use crate::error::Result;
use crate::health;
use crate::layout::SessionDir;
use crate::session;
use crate::state;
use crate::task;

/// How long an agent's heartbeat may be silent before the overview calls it stale.
pub const STALE_AFTER: Duration = Duration::from_secs(30);

/// Gathers the overview as one JSON object: `session`, `phase`, `operation_progress`,
/// `agents`, `mailboxes`, `tasks` and `problems`. Only a missing or unreadable session
/// record is an error.
pub fn overview(dir: &SessionDir) -> Result<Value> {
    Overview { once: true, ..Overview::default() }.gather(dir)
}

mod mailboxes;

/// Gathers the overview again and again (a live view): the task counts come from a
/// [`task::Census`] that lists only the directories that changed since the last time,
/// the mailbox counts from mailboxes counted again only when they changed, and the
/// agents' processes are checked again only when they have exited (see
/// [`health::Processes`]).
#[derive(Debug, Default)]
pub struct Overview {
    census: task::Census,
    mailboxes: mailboxes::Mailboxes,
    processes: health::Processes,
    /// Gathered once: nothing is set up to be remembered (no watches, no pidfds).
    once: bool,
    /// How many times it has gathered.
    gathered: u64,
}

impl Overview {
    /// Nothing remembered yet.
    pub fn new() -> Overview {
        Overview::default()
    }

    /// The overview now, the same object [`overview`] gives.
    ///
    /// The first overview is gathered as [`overview`] gathers it, without setting up
    /// what makes the later ones cheap (watches, pidfds), so it comes as soon as a
    /// one-off one would; the second sets them up.
    pub fn gather(&mut self, dir: &SessionDir) -> Result<Value> {
        self.gathered += 1;
        let remember = !self.once && self.gathered > 1;
        let s = session::read(dir)?;
        let global = state::get(dir, "global").unwrap_or(Value::Null);
        // The task census runs beside the agents and their mailboxes: they share nothing.
        let census = &mut self.census;
        let (processes, boxes) = (&mut self.processes, &mut self.mailboxes);
        let (tasks, agents) = std::thread::scope(|scope| {
            let counting = scope.spawn(|| census.count(dir));
            let agents = processes.agent_views(dir, STALE_AFTER, remember).map(|(agents, problems)| {
                let ids: Vec<&str> = agents.iter().map(|a| a.id.as_str()).collect();
                let counted = boxes.counts(dir, &ids, remember);
                (agents, problems, counted)
            });
            (counting.join().unwrap_or_else(|p| std::panic::resume_unwind(p)), agents)
        });
        let (agents, mut problems, counted) = agents?;
        let mut mailboxes = Vec::new();
        for (a, c) in agents.iter().zip(counted) {
            match c {
                Ok(c) => mailboxes.push(c),
                Err(e) => problems.push(format!("mailbox of {}: {e}", a.id)),
            }
        }
        // Counted from the names in the status directories and the pending index; no
        // record is read (see task::Census).
        let tasks = match tasks {
            Ok(p) => serde_json::to_value(p).unwrap_or(Value::Null),
            Err(e) => {
                problems.push(format!("tasks: {e}"));
                Value::Null
            }
        };
        let paused = match task::paused(dir) {
            Ok(p) => serde_json::to_value(p).unwrap_or(Value::Null),
            Err(e) => {
                problems.push(format!("pause state: {e}"));
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
            "paused": paused,
            "problems": problems,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::Base;
    use crate::mailbox;

    #[test]
    fn a_remembered_mailbox_count_gives_way_to_a_change_after_its_directories_settled() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = crate::session::init(&Base::new(tmp.path().join("base")), "unit").expect("init");
        let req = crate::registry::Registration {
            id: "a1".into(),
            agent_type: "worker".into(),
            capabilities: Vec::new(),
            pid: std::process::id(),
            replace: false,
        };
        crate::registry::register(&dir, &req, Duration::from_secs(5)).expect("register");
        // Age the mailbox's directories, as if nothing had changed for a while.
        let settle = |dir: &SessionDir| {
            let old = std::time::SystemTime::now() - Duration::from_secs(60);
            for p in [
                dir.mailbox_tmp("a1"),
                dir.mailbox_new("a1"),
                dir.mailbox_cur("a1"),
                dir.mailbox_done("a1"),
                dir.mailbox_dead("a1"),
                dir.mailbox_bad("a1"),
            ] {
                if let Ok(f) = std::fs::File::open(&p) {
                    f.set_modified(old).expect("set mtime");
                }
            }
        };
        settle(&dir);
        let mut o = Overview::new();
        let queued = |v: &Value| v["mailboxes"][0]["queued"].as_u64();
        assert_eq!(queued(&o.gather(&dir).expect("gather")), Some(0));
        assert_eq!(queued(&o.gather(&dir).expect("gather")), Some(0), "remembered");
        let msg = mailbox::Outgoing {
            from: "me".into(),
            to: "a1".into(),
            msg_type: "hello".into(),
            payload: Value::Null,
            priority: 0,
            requires_ack: false,
        };
        mailbox::send(&dir, msg).expect("send");
        settle(&dir);
        // Even with every mtime aged again, the empty queue's new shard shows in new/.
        let v = o.gather(&dir).expect("gather");
        assert_eq!(queued(&v), Some(1), "{v}");
        assert_eq!(v["mailboxes"], overview(&dir).expect("overview")["mailboxes"]);
    }
}
