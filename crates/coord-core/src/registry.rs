//! The agent registry: `registry/agents.json` plus one heartbeat file per agent.
//!
//! Registrations change rarely and are rewritten whole under the registry lock (the
//! file stays the seed's JSON array). Heartbeats are frequent, so they never touch
//! `agents.json`: each agent has its own empty file under `registry/heartbeats/` whose
//! modification time is the heartbeat. 1000 agents beating every second touch 1000
//! different files and take no lock.

use std::fs::File;
use std::time::{Duration, SystemTime};

use serde_json::{Map, Value};

use crate::error::{Error, IoContext, Result};
use crate::fsio;
use crate::id;
use crate::layout::{self, SessionDir, ToolLock};
use crate::record::{Agent, status};
use crate::session;
use crate::sys;
use crate::time;

/// What `registry register` asks for.
#[derive(Debug, Clone)]
pub struct Registration {
    /// Agent id.
    pub id: String,
    /// Agent type.
    pub agent_type: String,
    /// Capabilities.
    pub capabilities: Vec<String>,
    /// The agent's pid on this host.
    pub pid: u32,
    /// Replace an active registration of the same id.
    pub replace: bool,
}

/// What `registry update` changes. `None`/empty leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct Changes {
    /// New status.
    pub status: Option<String>,
    /// Capabilities to add.
    pub add_capabilities: Vec<String>,
    /// Capabilities to remove.
    pub remove_capabilities: Vec<String>,
    /// Task ids to add to `assigned_tasks`.
    pub assign: Vec<String>,
    /// Task ids to remove from `assigned_tasks`.
    pub unassign: Vec<String>,
    /// Other fields to set (`null` removes an extra field).
    pub fields: Map<String, Value>,
}

/// Reads `registry/agents.json`. A malformed file is an error and is never rewritten.
pub fn load(dir: &SessionDir) -> Result<Vec<Agent>> {
    Ok(fsio::read_json_opt(&dir.agents_json())?.unwrap_or_default())
}

/// Reads all registrations and fills in `last_heartbeat` from the heartbeat files.
pub fn list(dir: &SessionDir) -> Result<Vec<Agent>> {
    let mut agents = load(dir)?;
    for agent in &mut agents {
        if let Some(t) = last_heartbeat(dir, &agent.id) {
            agent.last_heartbeat = Some(time::rfc3339(t));
        }
    }
    Ok(agents)
}

/// One registration, with `last_heartbeat` filled in.
pub fn show(dir: &SessionDir, agent: &str) -> Result<Agent> {
    id::validate("agent", agent)?;
    list(dir)?.into_iter().find(|a| a.id == agent).ok_or_else(|| not_registered(dir, agent))
}

/// The time of the agent's last heartbeat (registration counts as the first).
///
/// On a shared filesystem (`COORD_POLL_MS` set, as docs/distributed.md asks there) the
/// file is opened and its open descriptor stat'ed: an NFS client answers a plain stat
/// from its attribute cache, which can hold an mtime for many seconds (`acregmin` 3 s,
/// doubling while the file looks unchanged, up to `acregmax` 60 s), but revalidates a
/// file's attributes with the server on every open (close-to-open consistency), so a
/// heartbeat from another host is seen when it happened.
pub fn last_heartbeat(dir: &SessionDir, agent: &str) -> Option<SystemTime> {
    let path = dir.heartbeat_file(agent);
    if crate::env::forced_poll().is_some()
        && let Ok(f) = File::open(&path)
    {
        return f.metadata().and_then(|m| m.modified()).ok();
    }
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Whether the agent has sent a heartbeat since registering (its heartbeat file is newer
/// than `registered_at`). Agents that never beat are judged by their process alone.
pub fn has_heartbeat(agent: &Agent, last: Option<SystemTime>) -> bool {
    match (last, time::parse_rfc3339(&agent.registered_at)) {
        (Some(beat), Some(registered)) => beat > registered,
        (Some(_), None) => true,
        (None, _) => false,
    }
}

fn not_registered(dir: &SessionDir, agent: &str) -> Error {
    Error::Failed(format!("agent {agent:?} is not registered in session {:?}", dir.id()))
}

/// Registers an agent (or replaces it with `replace`) and returns the registration.
pub fn register(dir: &SessionDir, req: &Registration, timeout: Duration) -> Result<Agent> {
    id::validate("agent", &req.id)?;
    id::validate("agent type", &req.agent_type)?;
    for cap in &req.capabilities {
        id::validate("capability", cap)?;
    }
    let process_start = sys::process_start(req.pid)
        .ok_or_else(|| Error::Usage(format!("no process with pid {} is running on this host", req.pid)))?;
    // The heartbeat file starts at exactly the registration time, so "has this agent ever
    // sent a heartbeat" is "is its heartbeat newer than registered_at".
    let registered = time::truncate_to_millis(SystemTime::now());
    let now = time::rfc3339(registered);
    let agent = Agent {
        id: req.id.clone(),
        agent_type: req.agent_type.clone(),
        status: status::ACTIVE.to_string(),
        registered_at: now.clone(),
        updated_at: Some(now),
        capabilities: dedup(req.capabilities.clone()),
        assigned_tasks: Vec::new(),
        pid: Some(req.pid),
        host: sys::host(),
        process_start: Some(process_start),
        process_inode: sys::process_inode(req.pid),
        boot_id: sys::boot_id(),
        resource_usage: None,
        last_heartbeat: None,
        terminated_at: None,
        failed_at: None,
        reason: None,
        extra: Map::new(),
    };
    {
        let _guard = dir.tool_lock(ToolLock::Registry, timeout)?;
        let mut agents = load(dir)?;
        match agents.iter_mut().find(|a| a.id == req.id) {
            Some(old) if old.status == status::ACTIVE && !req.replace => {
                return Err(Error::Failed(format!(
                    "agent {:?} is already registered and active (pid {} on {}); pass --replace to take its place or pick another id",
                    req.id,
                    old.pid.map_or("?".to_string(), |p| p.to_string()),
                    old.host
                )));
            }
            Some(old) => *old = agent.clone(),
            None => agents.push(agent.clone()),
        }
        touch_heartbeat(dir, &req.id, Some(registered))?;
        fsio::replace_json(&dir.spread_tmp_dir(), &dir.agents_json(), &agents)?;
    }
    // The seed's "message queues ready": a registered agent can be sent to at once.
    layout::ensure_mailbox(dir, &req.id)?;
    // Lock order is always registry, then session; here the registry lock is already
    // released, which is also fine: the session's agent list only ever grows.
    session::update(dir, timeout, |s| {
        if !s.agents.iter().any(|a| a == &req.id) {
            s.agents.push(req.id.clone());
        }
    })?;
    Ok(agent)
}

/// Applies `changes` to a registration under the registry lock.
pub fn update(dir: &SessionDir, agent: &str, changes: &Changes, timeout: Duration) -> Result<Agent> {
    id::validate("agent", agent)?;
    if let Some(s) = &changes.status {
        id::validate("status", s)?;
    }
    for v in changes.add_capabilities.iter().chain(&changes.remove_capabilities) {
        id::validate("capability", v)?;
    }
    for t in changes.assign.iter().chain(&changes.unassign) {
        id::validate("task", t)?;
    }
    modify(dir, agent, timeout, |a| {
        if let Some(s) = &changes.status {
            a.status = s.clone();
        }
        a.capabilities.extend(changes.add_capabilities.iter().cloned());
        a.capabilities.retain(|c| !changes.remove_capabilities.contains(c));
        a.capabilities = dedup(std::mem::take(&mut a.capabilities));
        a.assigned_tasks.extend(changes.assign.iter().cloned());
        a.assigned_tasks.retain(|t| !changes.unassign.contains(t));
        a.assigned_tasks = dedup(std::mem::take(&mut a.assigned_tasks));
        for (k, v) in &changes.fields {
            if v.is_null() {
                a.extra.remove(k);
            } else {
                a.extra.insert(k.clone(), v.clone());
            }
        }
        Ok(())
    })
}

/// Changes one registration under the registry lock with `change`, stamping `updated_at`.
///
/// This is the one read-modify-write path for `agents.json`; other tools (taskd,
/// healthmon) use it too.
pub fn modify<F>(dir: &SessionDir, agent: &str, timeout: Duration, change: F) -> Result<Agent>
where
    F: FnOnce(&mut Agent) -> Result<()>,
{
    let _guard = dir.tool_lock(ToolLock::Registry, timeout)?;
    let mut agents = load(dir)?;
    let entry = agents.iter_mut().find(|a| a.id == agent).ok_or_else(|| not_registered(dir, agent))?;
    change(entry)?;
    entry.updated_at = Some(time::now_rfc3339());
    let out = entry.clone();
    fsio::replace_json(&dir.spread_tmp_dir(), &dir.agents_json(), &agents)?;
    Ok(out)
}

/// Changes many registrations in one locked rewrite of `agents.json` (used for
/// periodic samples, so a tick costs one rewrite, not one per agent).
pub fn modify_all<F>(dir: &SessionDir, timeout: Duration, change: F) -> Result<()>
where
    F: FnOnce(&mut [Agent]),
{
    let _guard = dir.tool_lock(ToolLock::Registry, timeout)?;
    let mut agents = load(dir)?;
    change(&mut agents);
    fsio::replace_json(&dir.spread_tmp_dir(), &dir.agents_json(), &agents)
}

/// Records a heartbeat: sets the mtime of the agent's heartbeat file. O(1), no lock.
///
/// Fails if the agent is not registered (or has unregistered).
pub fn heartbeat(dir: &SessionDir, agent: &str) -> Result<SystemTime> {
    id::validate("agent", agent)?;
    touch_heartbeat(dir, agent, None).map_err(|e| if fsio::is_not_found(&e) { not_registered(dir, agent) } else { e })
}

/// Sets the heartbeat file's mtime: creating the file at `registered` for a new
/// registration, else requiring it to exist and setting now.
fn touch_heartbeat(dir: &SessionDir, agent: &str, registered: Option<SystemTime>) -> Result<SystemTime> {
    let path = dir.heartbeat_file(agent);
    let file = match registered {
        Some(_) => File::create(&path),
        None => std::fs::OpenOptions::new().write(true).open(&path),
    }
    .ctx("open heartbeat file", &path)?;
    let now = registered.unwrap_or_else(SystemTime::now);
    file.set_modified(now).ctx("set heartbeat time on", &path)?;
    Ok(now)
}

/// Marks the agent terminated with `terminated_at`; the entry stays for the report.
pub fn unregister(dir: &SessionDir, agent: &str, timeout: Duration) -> Result<Agent> {
    id::validate("agent", agent)?;
    let beat = last_heartbeat(dir, agent);
    let out = modify(dir, agent, timeout, |a| {
        a.status = status::TERMINATED.to_string();
        a.terminated_at = Some(time::now_rfc3339());
        a.last_heartbeat = beat.map(time::rfc3339);
        Ok(())
    })?;
    match std::fs::remove_file(dir.heartbeat_file(agent)) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io("remove heartbeat file", dir.heartbeat_file(agent), e)),
    }
    Ok(out)
}

fn dedup(mut v: Vec<String>) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    v.retain(|x| seen.insert(x.clone()));
    v
}
