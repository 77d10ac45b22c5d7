//! Liveness of agents: how one is judged alive, hung or dead, the events the monitor
//! records, and the helpers it shares with its parts (`monitor.rs`: the monitor's tick;
//! `view.rs`: the per-agent overview). Reads `registry/agents.json` and the heartbeat files,
//! writes `registry/agents.json` (marking an agent failed) and appends to `metrics/`.
//!
//! An agent on this host is alive only if its pid exists *and* that process started at
//! the recorded time (`/proc/<pid>/stat` field 22) within the same boot: a pid the kernel
//! has handed to another process never counts. An agent on another host cannot be seen,
//! so it is judged by heartbeat age alone. An agent that sends heartbeats but whose last
//! one is older than `stale_after` is hung, whatever its pid says.

use std::collections::HashSet;
use std::io::Write;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use serde_json::{Map, Value};

use crate::error::{IoContext, Result};
use crate::fsio;
use crate::layout::SessionDir;
use crate::record::{Agent, status};
use crate::registry;
use crate::sys;
use crate::time;

mod monitor;
mod view;

pub use monitor::{Monitor, MonitorConfig, Sample, TickReport};
pub use view::{AgentView, Processes, agent_views};

/// What a check concluded about one agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Liveness {
    /// Running (or, for another host, beating recently enough).
    Alive,
    /// The process is gone (or its pid belongs to another process now).
    Dead(String),
    /// The process may run, but its heartbeats stopped.
    Hung(String),
    /// Cannot be judged (no pid recorded and no heartbeats); left alone.
    Unknown(String),
}

impl Liveness {
    /// Whether the agent should be treated as gone.
    pub fn is_gone(&self) -> bool {
        matches!(self, Liveness::Dead(_) | Liveness::Hung(_))
    }
}

/// The host doing the judging.
#[derive(Debug, Clone)]
pub struct Observer {
    /// This host's name (as records carry it: `COORD_HOST` or the kernel's).
    pub host: String,
    /// This boot's id, when known.
    pub boot_id: Option<String>,
}

impl Observer {
    /// The observer for this process.
    pub fn here() -> Self {
        Observer { host: sys::host(), boot_id: sys::boot_id() }
    }
}

/// Whether an agent's status means it is expected to be running.
pub fn is_live_status(s: &str) -> bool {
    s != status::TERMINATED && s != status::FAILED
}

/// Judges one agent. `last_beat` is its heartbeat file's mtime.
pub fn judge(
    agent: &Agent,
    last_beat: Option<SystemTime>,
    now: SystemTime,
    here: &Observer,
    stale_after: Duration,
) -> Liveness {
    judge_with(agent, last_beat, now, here, stale_after, &mut |a, pid| not_the_agent(a, pid, None))
}

/// Why the process now at `pid` is not `agent`'s (`None`: it is): gone, started at
/// another time, or (where pidfs gives one) another process's inode. `pidfd`, when
/// given, is a pidfd opened on `pid` just before: its inode is the one compared.
pub(crate) fn not_the_agent(agent: &Agent, pid: u32, pidfd: Option<std::os::fd::BorrowedFd<'_>>) -> Option<String> {
    match (sys::process_start(pid), agent.process_start) {
        (None, _) => return Some(format!("process {pid} is gone")),
        (Some(now_start), Some(recorded)) if now_start != recorded => {
            return Some(format!(
                "pid {pid} now belongs to another process (started at tick {now_start}, the agent's at {recorded})"
            ));
        }
        _ => {}
    }
    let recorded = agent.process_inode?;
    let now = match pidfd {
        Some(fd) => sys::pidfd_inode(fd),
        None => sys::process_inode(pid),
    }?;
    (now != recorded).then(|| {
        format!(
            "pid {pid} now belongs to another process (started in the agent's clock tick, but pidfs inode {now}, the agent's {recorded})"
        )
    })
}

/// [`judge`], with the check that the process at the agent's pid is the agent's own
/// left to `identity` (which returns why not): a caller that holds a pidfd on a process
/// it has already checked need not read `/proc` again.
pub(crate) fn judge_with(
    agent: &Agent,
    last_beat: Option<SystemTime>,
    now: SystemTime,
    here: &Observer,
    stale_after: Duration,
    identity: &mut dyn FnMut(&Agent, u32) -> Option<String>,
) -> Liveness {
    let beats = registry::has_heartbeat(agent, last_beat);
    let age = last_beat.map(|t| now.duration_since(t).unwrap_or_default());
    let stale = |age: Duration| age > stale_after;
    if agent.host != here.host {
        // Another host: its pids are invisible here; only the heartbeat lease counts.
        return match age {
            Some(a) if stale(a) => Liveness::Dead(format!(
                "no heartbeat from host {} for {:.1}s (stale after {:.1}s)",
                agent.host,
                a.as_secs_f64(),
                stale_after.as_secs_f64()
            )),
            Some(_) => Liveness::Alive,
            None => Liveness::Dead(format!("agent on host {} has no heartbeat file", agent.host)),
        };
    }
    let Some(pid) = agent.pid else {
        return match age {
            Some(a) if beats && stale(a) => Liveness::Hung(format!(
                "no pid recorded and no heartbeat for {:.1}s (stale after {:.1}s)",
                a.as_secs_f64(),
                stale_after.as_secs_f64()
            )),
            _ if beats => Liveness::Alive,
            _ => Liveness::Unknown("no pid recorded and no heartbeats: cannot tell if it is alive".to_string()),
        };
    };
    if let (Some(then), Some(now_boot)) = (&agent.boot_id, &here.boot_id)
        && then != now_boot
    {
        return Liveness::Dead(format!("host {} rebooted since the agent registered", agent.host));
    }
    if let Some(why) = identity(agent, pid) {
        return Liveness::Dead(why);
    }
    match age {
        Some(a) if beats && stale(a) => Liveness::Hung(format!(
            "process {pid} runs but sent no heartbeat for {:.1}s (stale after {:.1}s)",
            a.as_secs_f64(),
            stale_after.as_secs_f64()
        )),
        _ => Liveness::Alive,
    }
}

/// One line of `metrics/events.jsonl` (and of healthmon's stdout).
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// When, RFC 3339 UTC.
    pub ts: String,
    /// What: `agent_dead`, `agent_hung`, `lease_expired`, `warning`, `error`, `started`, `stopped`.
    pub event: String,
    /// The agent concerned, if any.
    pub agent: Option<String>,
    /// Why.
    pub reason: Option<String>,
    /// Tasks put back in the queue.
    pub requeued_tasks: usize,
    /// Messages put back in the mailbox.
    pub requeued_messages: usize,
    /// More detail (dead-lettered counts, pids...).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Event {
    /// An event of kind `event` now.
    pub fn new(event: &str, agent: Option<&str>, reason: Option<String>) -> Self {
        Event {
            ts: time::now_rfc3339(),
            event: event.to_string(),
            agent: agent.map(str::to_string),
            reason,
            requeued_tasks: 0,
            requeued_messages: 0,
            extra: Map::new(),
        }
    }
}

/// Appends one JSON line to a log file with a single `write(2)` on an `O_APPEND`
/// descriptor, so concurrent appenders never interleave within a line.
pub fn append_line<T: Serialize>(path: &std::path::Path, value: &T) -> Result<()> {
    let mut line = serde_json::to_vec(value).expect("events serialize");
    line.push(b'\n');
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).ctx("open", path)?;
    f.write_all(&line).ctx("append to", path)?;
    if crate::env::fsync_requested() {
        f.sync_data().ctx("fsync", path)?;
    }
    Ok(())
}

/// Reads registrations one by one, so a single malformed entry (say, a pid that is not a
/// number) is reported without hiding the others. A file that does not parse at all is
/// an error.
pub fn load_agents_lenient(dir: &SessionDir) -> Result<(Vec<Agent>, Vec<String>)> {
    let path = dir.agents_json();
    match std::fs::read(&path) {
        Ok(bytes) => parse_agents_lenient(&path, &bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok((Vec::new(), Vec::new())),
        Err(e) => Err(crate::error::Error::io("read", &path, e)),
    }
}

/// [`load_agents_lenient`] of the bytes read from `path`.
pub(crate) fn parse_agents_lenient(path: &std::path::Path, bytes: &[u8]) -> Result<(Vec<Agent>, Vec<String>)> {
    // All well-formed, as almost always: one pass.
    if let Ok(agents) = serde_json::from_slice::<Vec<Agent>>(bytes) {
        return Ok((agents, Vec::new()));
    }
    let raw: Vec<Value> = fsio::parse_json(path, bytes)?;
    let mut agents = Vec::with_capacity(raw.len());
    let mut problems = Vec::new();
    for (i, v) in raw.into_iter().enumerate() {
        let id = v.get("id").and_then(Value::as_str).unwrap_or("?").to_string();
        match serde_json::from_value::<Agent>(v) {
            Ok(a) => agents.push(a),
            Err(e) => problems.push(format!("{} entry {i} (id {id:?}) is malformed: {e}", path.display())),
        }
    }
    Ok((agents, problems))
}

/// Marks the agent registration `judged` failed with `failed_at` and `reason`, unless the
/// registration has changed since it was judged (unregistered, already failed, or
/// replaced by a new incarnation with another pid or registration time). Returns whether
/// this call changed it.
pub fn mark_failed(dir: &SessionDir, judged: &Agent, reason: &str, timeout: Duration) -> Result<bool> {
    let mut changed = false;
    registry::modify(dir, &judged.id, timeout, |a| {
        let same = a.registered_at == judged.registered_at
            && a.pid == judged.pid
            && a.process_start == judged.process_start
            && a.process_inode == judged.process_inode
            && a.host == judged.host;
        if same && is_live_status(&a.status) {
            a.status = status::FAILED.to_string();
            a.failed_at = Some(time::now_rfc3339());
            a.reason = Some(reason.to_string());
            changed = true;
        }
        Ok(())
    })?;
    Ok(changed)
}

/// Remembers which warnings were already reported, so a tick loop says each once.
#[derive(Debug, Default)]
pub struct Once {
    seen: HashSet<String>,
}

impl Once {
    /// True the first time `key` is seen.
    pub fn first(&mut self, key: &str) -> bool {
        self.seen.insert(key.to_string())
    }

    /// Forgets `key`, so it is reported again if it recurs.
    pub fn clear(&mut self, key: &str) {
        self.seen.remove(key);
    }
}

/// Errors that mean "the session is gone or finished", which end a monitor quietly.
pub fn session_finished(dir: &SessionDir) -> Result<Option<String>> {
    match fsio::read_json_opt::<crate::record::Session>(&dir.session_json()) {
        Ok(Some(s)) if s.status == status::SESSION_ACTIVE => Ok(None),
        Ok(Some(s)) => Ok(Some(format!("session status is {:?}", s.status))),
        Ok(None) => Ok(Some("session.json is gone".to_string())),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(host: &str, pid: Option<u32>, start: Option<u64>) -> Agent {
        serde_json::from_value(serde_json::json!({
            "id": "a", "type": "t", "status": "active", "registered_at": "2026-01-01T00:00:00.000Z",
            "pid": pid, "host": host, "process_start": start
        }))
        .expect("agent")
    }

    fn here() -> Observer {
        Observer { host: "h1".into(), boot_id: None }
    }

    fn at(secs: u64) -> SystemTime {
        time::parse_rfc3339("2026-01-01T00:00:00.000Z").expect("t") + Duration::from_secs(secs)
    }

    #[test]
    fn local_process_identity_decides() {
        let me = std::process::id();
        let start = sys::process_start(me);
        let stale = Duration::from_secs(10);
        assert_eq!(judge(&agent("h1", Some(me), start), Some(at(0)), at(5), &here(), stale), Liveness::Alive);
        let reused = judge(&agent("h1", Some(me), start.map(|s| s + 1)), Some(at(0)), at(5), &here(), stale);
        assert!(matches!(reused, Liveness::Dead(ref r) if r.contains("another process")), "{reused:?}");
        let gone = judge(&agent("h1", Some(u32::MAX - 1), Some(1)), Some(at(0)), at(5), &here(), stale);
        assert!(matches!(gone, Liveness::Dead(_)));
    }

    #[test]
    fn a_registration_replaced_after_judging_is_not_marked_failed() {
        let base = tempfile::tempdir().expect("tempdir");
        let dir = crate::session::init(&crate::Base::new(base.path().join("b")), "t").expect("session");
        let me = std::process::id();
        let req = |replace| registry::Registration {
            id: "w1".into(),
            agent_type: "t".into(),
            capabilities: vec![],
            pid: me,
            replace,
        };
        let t = Duration::from_secs(5);
        let old = registry::register(&dir, &req(false), t).expect("register");
        std::thread::sleep(Duration::from_millis(5));
        registry::register(&dir, &req(true), t).expect("re-register");
        // The monitor judged the old incarnation; the new one must stay active.
        assert!(!mark_failed(&dir, &old, "process gone", t).expect("mark"));
        assert_eq!(registry::show(&dir, "w1").expect("show").status, status::ACTIVE);
        let current = registry::show(&dir, "w1").expect("show");
        assert!(mark_failed(&dir, &current, "process gone", t).expect("mark"));
        assert_eq!(registry::show(&dir, "w1").expect("show").status, status::FAILED);
    }

    #[test]
    fn heartbeats_decide_hung_and_remote() {
        let me = std::process::id();
        let start = sys::process_start(me);
        let stale = Duration::from_secs(10);
        // Beat once at +1 s, then silence until +20 s: hung although the pid lives.
        let hung = judge(&agent("h1", Some(me), start), Some(at(1)), at(20), &here(), stale);
        assert!(matches!(hung, Liveness::Hung(_)), "{hung:?}");
        // Never beat (file at registration time): judged by the process only.
        assert_eq!(judge(&agent("h1", Some(me), start), Some(at(0)), at(20), &here(), stale), Liveness::Alive);
        // Another host: pid ignored, heartbeat age decides.
        assert_eq!(judge(&agent("h2", Some(1), Some(1)), Some(at(15)), at(20), &here(), stale), Liveness::Alive);
        assert!(judge(&agent("h2", Some(1), Some(1)), Some(at(5)), at(20), &here(), stale).is_gone());
        assert!(matches!(judge(&agent("h1", None, None), Some(at(0)), at(20), &here(), stale), Liveness::Unknown(_)));
    }
}
