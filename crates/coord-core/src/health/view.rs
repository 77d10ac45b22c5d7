//! The per-agent lines of the session overview ([`agent_views`]): registration,
//! liveness and heartbeat age of each agent, read from `registry/agents.json`, the
//! heartbeat files and `/proc`, without a lock and without changing anything.

use super::*;

/// One agent's line in the overview.
#[derive(Debug, Clone, Serialize)]
pub struct AgentView {
    /// Agent id.
    pub id: String,
    /// Agent type.
    #[serde(rename = "type")]
    pub agent_type: String,
    /// Registry status.
    pub status: String,
    /// Host.
    pub host: String,
    /// Pid on its host.
    pub pid: Option<u32>,
    /// Judged alive now (`null` for terminated agents and those that cannot be judged).
    pub alive: Option<bool>,
    /// Why it is not alive, if so.
    pub reason: Option<String>,
    /// Seconds since the last heartbeat (or registration).
    pub heartbeat_age_secs: Option<f64>,
    /// Last sampled CPU use, e.g. `"15%"`.
    pub cpu: Option<String>,
    /// Last sampled memory, e.g. `"120MB"`.
    pub memory: Option<String>,
    /// Tasks currently assigned.
    pub tasks: Vec<String>,
}

/// The agents part of `healthmon status`, judged with `stale_after`.
pub fn agent_views(dir: &SessionDir, stale_after: Duration) -> Result<(Vec<AgentView>, Vec<String>)> {
    let (agents, problems) = load_agents_lenient(dir)?;
    let here = Observer::here();
    let now = SystemTime::now();
    let views = agents
        .into_iter()
        .map(|a| {
            let last = registry::last_heartbeat(dir, &a.id);
            let (alive, reason) = if is_live_status(&a.status) {
                match judge(&a, last, now, &here, stale_after) {
                    Liveness::Alive => (Some(true), None),
                    Liveness::Dead(r) | Liveness::Hung(r) => (Some(false), Some(r)),
                    Liveness::Unknown(r) => (None, Some(r)),
                }
            } else {
                (Some(false), a.reason.clone())
            };
            let beat = last.or_else(|| a.last_heartbeat.as_deref().and_then(time::parse_rfc3339));
            AgentView {
                heartbeat_age_secs: beat
                    .map(|t| (now.duration_since(t).unwrap_or_default().as_secs_f64() * 10.0).round() / 10.0),
                cpu: a.resource_usage.as_ref().map(|u| u.cpu.clone()).filter(|s| !s.is_empty()),
                memory: a.resource_usage.as_ref().map(|u| u.memory.clone()).filter(|s| !s.is_empty()),
                id: a.id,
                agent_type: a.agent_type,
                status: a.status,
                host: a.host,
                pid: a.pid,
                alive,
                reason,
                tasks: a.assigned_tasks,
            }
        })
        .collect();
    Ok((views, problems))
}
