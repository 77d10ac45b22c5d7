//! The seed's Quality Gates, checked against the session on disk.
//!
//! Each gate is a yes/no answer with a one-line reason, so a failing checklist says
//! what to fix. The gates read files only; they change nothing.

use serde::Serialize;
use serde_json::Value;

use super::Collected;
use crate::archive;
use crate::fsio;
use crate::id;
use crate::layout::{LAYOUT_VERSION, SESSION_DIRS, SessionDir};
use crate::lock;
use crate::record::{Agent, status};
use crate::registry;

/// The checklist's three parts, in the seed's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GateGroup {
    /// Coordination setup.
    Setup,
    /// During execution.
    Execution,
    /// Cleanup.
    Cleanup,
}

impl GateGroup {
    /// The seed's heading for the group.
    pub fn title(self) -> &'static str {
        match self {
            GateGroup::Setup => "Coordination Setup",
            GateGroup::Execution => "During Execution",
            GateGroup::Cleanup => "Cleanup",
        }
    }
}

/// One checked gate.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Gate {
    /// Which part of the checklist.
    pub group: GateGroup,
    /// Stable machine name (`session_initialized`, ...).
    pub id: &'static str,
    /// The seed's wording.
    pub title: &'static str,
    /// Whether it passed.
    pub ok: bool,
    /// Why it passed or failed.
    pub detail: String,
}

fn gate(group: GateGroup, id: &'static str, title: &'static str, outcome: Result<String, String>) -> Gate {
    let (ok, detail) = match outcome {
        Ok(d) => (true, d),
        Err(d) => (false, d),
    };
    Gate { group, id, title, ok, detail }
}

/// Checks every gate on `dir`; `c` is what aggregate just collected from it.
pub fn check_gates(dir: &SessionDir, c: &Collected) -> Vec<Gate> {
    use GateGroup::*;
    let agents = registry::load(dir);
    vec![
        gate(Setup, "session_initialized", "Session initialized properly", session_initialized(dir, c)),
        gate(Setup, "directories_present", "Directory structure created", directories_present(dir)),
        gate(Setup, "registry_present", "Agent registry active", registry_present(dir, &agents)),
        gate(Setup, "mailboxes_ready", "Message queues ready", mailboxes_ready(dir, &agents)),
        gate(Execution, "agents_registered", "Agents registered correctly", agents_registered(c, &agents)),
        gate(Execution, "state_synchronized", "State synchronized", state_synchronized(dir, c)),
        gate(Execution, "messages_delivered", "Messages delivered", messages_delivered(dir, &agents)),
        gate(Execution, "progress_tracked", "Progress tracked", progress_tracked(dir, c)),
        gate(Cleanup, "results_collected", "Results collected", results_collected(c)),
        gate(Cleanup, "report_generated", "Report generated", report_generated(dir, c)),
        gate(Cleanup, "session_archived", "Session archived", session_archived(c)),
        gate(Cleanup, "no_agent_active", "Resources released: no agent still active", no_agent_active(&agents)),
        gate(Cleanup, "no_lock_held", "Resources released: no lock held", no_lock_held(dir)),
    ]
}

type Outcome = Result<String, String>;

fn list(names: &[String]) -> String {
    const SHOWN: usize = 5;
    let mut s = names.iter().take(SHOWN).cloned().collect::<Vec<_>>().join(", ");
    if names.len() > SHOWN {
        s.push_str(&format!(" and {} more", names.len() - SHOWN));
    }
    s
}

fn session_initialized(dir: &SessionDir, c: &Collected) -> Outcome {
    let s = &c.session;
    if s.id != dir.id() {
        return Err(format!("session.json has id {:?} but the directory is {:?}", s.id, dir.id()));
    }
    if s.layout_version != LAYOUT_VERSION {
        return Err(format!("session.json has layout_version {}, this tool reads {LAYOUT_VERSION}", s.layout_version));
    }
    if crate::time::parse_rfc3339(&s.started_at).is_none() {
        return Err(format!("session.json started_at {:?} is not an RFC 3339 time", s.started_at));
    }
    if s.status != status::SESSION_ACTIVE && s.status != status::SESSION_COMPLETED {
        return Err(format!("session.json status is {:?}, expected active or completed", s.status));
    }
    Ok(format!("session.json is valid (status {})", s.status))
}

fn directories_present(dir: &SessionDir) -> Outcome {
    let missing: Vec<String> = SESSION_DIRS
        .iter()
        .filter(|d| !std::fs::symlink_metadata(dir.root().join(d)).map(|m| m.is_dir()).unwrap_or(false))
        .map(|d| format!("{d}/"))
        .collect();
    if missing.is_empty() {
        Ok(format!("all {} directories present", SESSION_DIRS.len()))
    } else {
        Err(format!("missing or not a directory: {}", list(&missing)))
    }
}

fn registry_present(dir: &SessionDir, agents: &crate::Result<Vec<Agent>>) -> Outcome {
    if !dir.agents_json().is_file() {
        return Err("registry/agents.json is missing".into());
    }
    match agents {
        Ok(a) => Ok(format!("registry/agents.json holds {} registration(s)", a.len())),
        Err(e) => Err(e.to_string()),
    }
}

fn is_dir(p: &std::path::Path) -> bool {
    std::fs::symlink_metadata(p).map(|m| m.is_dir()).unwrap_or(false)
}

fn mailboxes_ready(dir: &SessionDir, agents: &crate::Result<Vec<Agent>>) -> Outcome {
    let Ok(agents) = agents else { return Err("the registry cannot be read".into()) };
    if !is_dir(&dir.messages_dir()) {
        return Err("messages/ is missing".into());
    }
    let missing: Vec<String> = agents
        .iter()
        .filter(|a| ![dir.mailbox_tmp(&a.id), dir.mailbox_new(&a.id), dir.mailbox_cur(&a.id)].iter().all(|p| is_dir(p)))
        .map(|a| a.id.clone())
        .collect();
    if missing.is_empty() {
        Ok(format!("{} mailbox(es) ready", agents.len()))
    } else {
        Err(format!(
            "registered agents without a complete mailbox (messages/<agent>/tmp, new, cur): {}",
            list(&missing)
        ))
    }
}

fn agents_registered(c: &Collected, agents: &crate::Result<Vec<Agent>>) -> Outcome {
    let agents = agents.as_ref().map_err(|e| e.to_string())?;
    if agents.is_empty() {
        return Err("no agent ever registered".into());
    }
    let bad: Vec<String> =
        agents.iter().filter(|a| id::validate("agent", &a.id).is_err()).map(|a| a.id.clone()).collect();
    if !bad.is_empty() {
        return Err(format!("registrations with invalid ids: {}", list(&bad)));
    }
    let mut seen = std::collections::BTreeSet::new();
    let dups: Vec<String> = agents.iter().filter(|a| !seen.insert(a.id.as_str())).map(|a| a.id.clone()).collect();
    if !dups.is_empty() {
        return Err(format!("agents registered twice: {}", list(&dups)));
    }
    let unlisted: Vec<String> =
        agents.iter().filter(|a| !c.session.agents.contains(&a.id)).map(|a| a.id.clone()).collect();
    if !unlisted.is_empty() {
        return Err(format!("registered but missing from session.json agents: {}", list(&unlisted)));
    }
    let strangers: Vec<String> =
        c.by_agent.iter().filter(|(a, _)| !seen.contains(a.as_str())).map(|(a, _)| a.clone()).collect();
    if !strangers.is_empty() {
        return Err(format!("result files from agents that never registered: {}", list(&strangers)));
    }
    Ok(format!("{} agent(s) registered", agents.len()))
}

fn state_synchronized(dir: &SessionDir, c: &Collected) -> Outcome {
    let state_dir = dir.state_dir();
    let entries = std::fs::read_dir(&state_dir).map_err(|e| format!("cannot list state/: {e}"))?;
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|n| n.ends_with(".json") && !n.starts_with('.'))
        .collect();
    names.sort();
    let mut bad = Vec::new();
    for n in &names {
        if let Err(e) = fsio::read_json::<Value>(&state_dir.join(n)) {
            bad.push(match e {
                crate::Error::Malformed { line, column, .. } => format!("state/{n} (line {line}, column {column})"),
                other => format!("state/{n} ({other})"),
            });
        }
    }
    if !bad.is_empty() {
        return Err(format!("state files that do not parse: {}", list(&bad)));
    }
    tasks_view_matches(dir, c)?;
    Ok(format!("{} state file(s) parse; state/tasks.json matches {} task record(s)", names.len(), c.tasks.len()))
}

/// `state/tasks.json` lists the same task ids under each heading as the records say.
fn tasks_view_matches(dir: &SessionDir, c: &Collected) -> Result<(), String> {
    use crate::task::Status;
    let view: Value = fsio::read_json_opt(&dir.state_file("tasks"))
        .map_err(|e| e.to_string())?
        .ok_or("state/tasks.json is missing")?;
    let heading = |s: Status| match s {
        Status::Blocked | Status::Pending => "pending",
        Status::Claimed => "in_progress",
        Status::Completed => "completed",
        Status::Failed | Status::Cancelled => "failed",
    };
    for h in ["pending", "in_progress", "completed", "failed"] {
        let mut want: Vec<&str> =
            c.tasks.iter().filter(|t| t.state().map(heading) == Some(h)).map(|t| t.id.as_str()).collect();
        let mut got: Vec<&str> = view
            .get(h)
            .and_then(Value::as_array)
            .ok_or_else(|| format!("state/tasks.json has no {h} list"))?
            .iter()
            .map(|t| t.get("id").and_then(Value::as_str).unwrap_or("?"))
            .collect();
        want.sort_unstable();
        got.sort_unstable();
        if want != got {
            return Err(format!(
                "state/tasks.json lists {} task(s) as {h} but the records say {} (refresh with taskd progress or aggregate)",
                got.len(),
                want.len()
            ));
        }
    }
    Ok(())
}

/// Whether an agent can still ack what it received: registered active and, on this host,
/// its process (pid, start time and pidfs inode) still running.
fn alive(a: &Agent) -> bool {
    if a.status != status::ACTIVE {
        return false;
    }
    match a.pid {
        Some(pid) if a.host.is_empty() || a.host == crate::sys::host() => {
            crate::sys::process_alive(pid, a.process_start, a.process_inode)
        }
        _ => true,
    }
}

fn messages_delivered(dir: &SessionDir, agents: &crate::Result<Vec<Agent>>) -> Outcome {
    let agents = agents.as_ref().map_err(|e| e.to_string())?;
    let mut stuck = Vec::new();
    let mut in_flight = 0usize;
    for a in agents {
        let n = match crate::mailbox::count(dir, &a.id) {
            Ok(c) => c.in_flight,
            Err(e) => return Err(format!("cannot inspect the mailbox of {}: {e}", a.id)),
        };
        in_flight += n;
        if n > 0 && !alive(a) {
            stuck.push(format!("{} ({n}, agent {})", a.id, a.status));
        }
    }
    if stuck.is_empty() {
        Ok(format!("no message stuck in flight for a dead agent ({in_flight} in flight)"))
    } else {
        Err(format!(
            "messages received but never acked by agents that are gone: {} (healthmon requeues them)",
            list(&stuck)
        ))
    }
}

fn progress_tracked(dir: &SessionDir, c: &Collected) -> Outcome {
    let global: Value = fsio::read_json_opt(&dir.state_file("global"))
        .map_err(|e| e.to_string())?
        .ok_or("state/global.json is missing")?;
    let p = match global.get("operation_progress").and_then(Value::as_f64) {
        Some(p) if (0.0..=100.0).contains(&p) => p,
        Some(p) => return Err(format!("state/global.json operation_progress is {p}, outside 0..100")),
        None => return Err("state/global.json has no numeric operation_progress".into()),
    };
    if c.tasks.is_empty() {
        return Ok(format!("operation_progress is {p}"));
    }
    let counts = crate::task::count(&c.tasks);
    if (p - counts.operation_progress as f64).abs() > 0.5 {
        return Err(format!(
            "operation_progress is {p} but {} of {} task(s) are completed ({}); refresh with taskd progress or aggregate",
            counts.completed, counts.total, counts.operation_progress
        ));
    }
    Ok(format!("operation_progress is {p} ({} of {} task(s) completed)", counts.completed, counts.total))
}

fn results_collected(c: &Collected) -> Outcome {
    if !c.errors.is_empty() {
        let files: Vec<String> = c.errors.iter().map(|e| e.file.clone()).collect();
        return Err(format!("{} input(s) could not be read: {}", files.len(), list(&files)));
    }
    if c.by_agent.is_empty() {
        return Err("no results/<agent>.json was found".into());
    }
    Ok(format!("{} result file(s) read", c.by_agent.len()))
}

fn report_generated(dir: &SessionDir, c: &Collected) -> Outcome {
    let fresh = serde_json::to_value(c.results()).map_err(|e| e.to_string())?;
    let view: Value =
        fsio::read_json_opt(&dir.results_view()).map_err(|e| e.to_string())?.ok_or("state/results.json is missing")?;
    if view != fresh {
        return Err("state/results.json is out of date with the result files (run aggregate)".into());
    }
    let report: Value = fsio::read_json_opt(&dir.final_report())
        .map_err(|e| e.to_string())?
        .ok_or("results/final-report.json is missing (run aggregate)")?;
    if report.get("results") != Some(&fresh) {
        return Err("results/final-report.json is out of date with the result files (run aggregate)".into());
    }
    if ["throughput", "success_rate", "average_time"]
        .iter()
        .any(|k| report.pointer(&format!("/performance/{k}")).is_none())
    {
        return Err("results/final-report.json has no performance section".into());
    }
    Ok("results/final-report.json and state/results.json are up to date".into())
}

fn session_archived(c: &Collected) -> Outcome {
    let s = &c.session;
    if s.status != status::SESSION_COMPLETED {
        return Err(format!("session status is {:?}; run archive to finish it", s.status));
    }
    if s.ended_at.is_none() {
        return Err("session is completed but has no ended_at".into());
    }
    let path = s.extra.get(archive::ARCHIVE_FIELD).and_then(Value::as_str).ok_or("session.json records no archive")?;
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() && m.len() > 0 => Ok(format!("archived to {path} ({} bytes)", m.len())),
        _ => Err(format!("the recorded archive {path} is missing or empty")),
    }
}

fn no_agent_active(agents: &crate::Result<Vec<Agent>>) -> Outcome {
    let agents = agents.as_ref().map_err(|e| e.to_string())?;
    let active: Vec<String> = agents.iter().filter(|a| a.status == status::ACTIVE).map(|a| a.id.clone()).collect();
    if active.is_empty() {
        Ok("no agent is active".into())
    } else {
        Err(format!("agents still active: {} (unregister them, or let healthmon mark them)", list(&active)))
    }
}

fn no_lock_held(dir: &SessionDir) -> Outcome {
    let locks = dir.locks_dir();
    let entries = std::fs::read_dir(&locks).map_err(|e| format!("cannot list locks/: {e}"))?;
    let mut names: Vec<(String, std::path::PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
        .filter_map(|e| Some((e.file_name().to_str()?.to_string(), e.path())))
        .filter(|(n, _)| n.ends_with(".lock"))
        .collect();
    names.sort();
    let mut held = Vec::new();
    for (name, path) in &names {
        match lock::try_acquire(path) {
            Ok(Some(_guard)) => {}
            Ok(None) => held.push(name.trim_end_matches(".lock").to_string()),
            Err(e) => return Err(e.to_string()),
        }
    }
    if held.is_empty() {
        Ok(format!("none of {} lock(s) is held", names.len()))
    } else {
        Err(format!("locks held by a running process: {}", list(&held)))
    }
}
