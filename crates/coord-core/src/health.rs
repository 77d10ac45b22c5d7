//! Liveness of agents, and what the health monitor does about dead or hung ones.
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
    match (sys::process_start(pid), agent.process_start) {
        (None, _) => return Liveness::Dead(format!("process {pid} is gone")),
        (Some(now_start), Some(recorded)) if now_start != recorded => {
            return Liveness::Dead(format!(
                "pid {pid} now belongs to another process (started at tick {now_start}, the agent's at {recorded})"
            ));
        }
        _ => {}
    }
    if let Some(recorded) = agent.process_inode
        && let Some(now) = sys::process_inode(pid)
        && now != recorded
    {
        return Liveness::Dead(format!(
            "pid {pid} now belongs to another process (started in the agent's clock tick, but pidfs inode {now}, the agent's {recorded})"
        ));
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
    let raw: Vec<Value> = fsio::read_json_opt(&path)?.unwrap_or_default();
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

/// Settings of a [`Monitor`].
#[derive(Debug, Clone)]
pub struct MonitorConfig {
    /// A heartbeat older than this makes an agent hung (or dead, on another host).
    pub stale_after: Duration,
    /// Deliveries after which a requeued message is dead-lettered.
    pub max_deliveries: u32,
    /// Bound on lock waits.
    pub lock_timeout: Duration,
    /// How often resource use is sampled (`None`: never).
    pub sample_every: Option<Duration>,
    /// Messages in flight longer than this go back to the queue even if their agent
    /// lives (`None`: only a dead agent's messages are requeued).
    pub visibility: Option<Duration>,
}

/// What one tick found and did.
#[derive(Debug, Default)]
pub struct TickReport {
    /// Events, in order; each is also appended to `metrics/events.jsonl`.
    pub events: Vec<Event>,
    /// Agents whose liveness was checked.
    pub checked: usize,
    /// Agents declared dead or hung this tick.
    pub gone: usize,
    /// Problems met (malformed files, failed writes).
    pub problems: usize,
}

/// The health monitor of one session: call [`Monitor::tick`] periodically.
#[derive(Debug)]
pub struct Monitor {
    dir: SessionDir,
    cfg: MonitorConfig,
    here: Observer,
    sys: Option<sysinfo::System>,
    once: Once,
    last_sample: Option<std::time::Instant>,
    cache: Option<(FileStamp, Vec<Agent>, Vec<String>)>,
}

/// Identity of one version of a file: inode, mtime (s, ns) and size.
type FileStamp = (u64, i64, i64, u64);

/// One resource sample of a live local agent (a line of `metrics/resources.jsonl`).
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// When.
    pub ts: String,
    /// Which agent.
    pub agent: String,
    /// Its pid.
    pub pid: u32,
    /// CPU use since the previous sample, percent of one core.
    pub cpu_percent: f64,
    /// Resident memory in bytes.
    pub memory_bytes: u64,
    /// Number of threads.
    pub threads: u64,
}

impl Monitor {
    /// A monitor for `dir`.
    pub fn new(dir: SessionDir, cfg: MonitorConfig) -> Self {
        Monitor { dir, cfg, here: Observer::here(), sys: None, once: Once::default(), last_sample: None, cache: None }
    }

    /// The session watched.
    pub fn dir(&self) -> &SessionDir {
        &self.dir
    }

    /// Checks every agent once, recovers the work of dead or hung ones, requeues lapsed
    /// leases and samples resource use when due. Problems become `error`/`warning`
    /// events; the tick itself never fails, so a sidecar keeps running and says why.
    pub fn tick(&mut self) -> TickReport {
        let mut report = TickReport::default();
        let (agents, problems) = match self.load_agents() {
            Ok(x) => {
                self.once.clear("agents.json");
                x
            }
            Err(e) => {
                report.problems += 1;
                if self.once.first("agents.json") {
                    self.emit(&mut report, Event::new("error", None, Some(format!("{e}; nothing was changed"))));
                }
                return report;
            }
        };
        for p in problems {
            report.problems += 1;
            if self.once.first(&p) {
                self.emit(&mut report, Event::new("warning", None, Some(p)));
            }
        }
        let now = SystemTime::now();
        let mut live_local = Vec::new();
        for agent in agents.iter().filter(|a| is_live_status(&a.status)) {
            report.checked += 1;
            let last = registry::last_heartbeat(&self.dir, &agent.id);
            match judge(agent, last, now, &self.here, self.cfg.stale_after) {
                Liveness::Alive => {
                    if agent.host == self.here.host
                        && let Some(pid) = agent.pid
                    {
                        live_local.push((agent.id.clone(), pid));
                    }
                }
                Liveness::Unknown(why) => {
                    if self.once.first(&format!("unknown:{}", agent.id)) {
                        self.emit(&mut report, Event::new("warning", Some(&agent.id), Some(why)));
                    }
                }
                Liveness::Dead(why) => self.recover(&mut report, agent, "agent_dead", why),
                Liveness::Hung(why) => self.recover(&mut report, agent, "agent_hung", why),
            }
        }
        self.requeue_expired(&mut report);
        if let Some(visibility) = self.cfg.visibility {
            let live: Vec<String> = agents.iter().filter(|a| is_live_status(&a.status)).map(|a| a.id.clone()).collect();
            self.requeue_unacked(&mut report, &live, visibility);
        }
        if let Some(every) = self.cfg.sample_every
            && self.last_sample.is_none_or(|t| t.elapsed() >= every)
        {
            self.last_sample = Some(std::time::Instant::now());
            if let Err(e) = self.sample(&live_local) {
                report.problems += 1;
                self.emit(&mut report, Event::new("error", None, Some(format!("resource sample: {e}"))));
            }
        }
        report
    }

    /// The registrations, parsed again only when `agents.json` was replaced since the
    /// last tick (every writer renames a new file into place, so the inode changes).
    fn load_agents(&mut self) -> Result<(Vec<Agent>, Vec<String>)> {
        use std::os::unix::fs::MetadataExt;
        let stamp =
            std::fs::metadata(self.dir.agents_json()).ok().map(|m| (m.ino(), m.mtime(), m.mtime_nsec(), m.len()));
        if let (Some(stamp), Some((cached, agents, problems))) = (stamp, &self.cache)
            && stamp == *cached
        {
            return Ok((agents.clone(), problems.clone()));
        }
        let loaded = load_agents_lenient(&self.dir)?;
        self.cache = stamp.map(|s| (s, loaded.0.clone(), loaded.1.clone()));
        Ok(loaded)
    }

    fn recover(&mut self, report: &mut TickReport, agent: &Agent, kind: &str, reason: String) {
        match mark_failed(&self.dir, agent, &reason, self.cfg.lock_timeout) {
            Ok(true) => {}
            Ok(false) => return, // unregistered, handled or re-registered meanwhile
            Err(e) => {
                report.problems += 1;
                if self.once.first(&format!("mark:{}:{e}", agent.id)) {
                    let why = format!("{reason}, but it could not be marked failed: {e}");
                    self.emit(report, Event::new("error", Some(&agent.id), Some(why)));
                }
                return;
            }
        }
        report.gone += 1;
        let mut event = Event::new(kind, Some(&agent.id), Some(reason));
        event.extra.insert("pid".into(), serde_json::json!(agent.pid));
        event.extra.insert("host".into(), Value::String(agent.host.clone()));
        self.give_back_work(&mut event, &agent.id);
        self.emit(report, event);
    }

    /// Returns the dead agent's claimed tasks to the queue and its in-flight messages to
    /// its mailbox, through the functions `taskd requeue` and `msgq requeue` use.
    fn give_back_work(&mut self, event: &mut Event, agent: &str) {
        let reason = format!("agent {agent} {}", event.reason.as_deref().unwrap_or("died"));
        match crate::task::requeue_agent(&self.dir, agent, &reason, self.cfg.lock_timeout) {
            Ok(r) => {
                event.requeued_tasks = r.requeued;
                event.extra.insert("failed_tasks".into(), serde_json::json!(r.failed));
                event.extra.insert("tasks".into(), serde_json::json!(r.tasks));
            }
            Err(e) => {
                event.extra.insert("task_error".into(), Value::String(e.to_string()));
            }
        }
        match crate::mailbox::requeue(&self.dir, agent, self.cfg.max_deliveries) {
            Ok(r) => {
                event.requeued_messages = r.requeued;
                event.extra.insert("dead_messages".into(), serde_json::json!(r.dead));
            }
            Err(e) => {
                event.extra.insert("message_error".into(), Value::String(e.to_string()));
            }
        }
    }

    /// Returns messages that live agents received but did not ack within `visibility`.
    fn requeue_unacked(&mut self, report: &mut TickReport, agents: &[String], visibility: Duration) {
        for agent in agents {
            match crate::mailbox::requeue_older_than(&self.dir, agent, self.cfg.max_deliveries, Some(visibility)) {
                Ok(r) if r.requeued + r.dead > 0 => {
                    let why = format!("not acked within {:.1}s of being received", visibility.as_secs_f64());
                    let mut event = Event::new("messages_requeued", Some(agent), Some(why));
                    event.requeued_messages = r.requeued;
                    event.extra.insert("dead_messages".into(), serde_json::json!(r.dead));
                    self.emit(report, event);
                }
                Ok(_) => {}
                Err(e) => {
                    report.problems += 1;
                    if self.once.first(&format!("visibility:{agent}")) {
                        self.emit(
                            report,
                            Event::new("error", Some(agent), Some(format!("requeue of unacked messages: {e}"))),
                        );
                    }
                }
            }
        }
    }

    /// Requeues claims whose lease lapsed, whoever holds them.
    fn requeue_expired(&mut self, report: &mut TickReport) {
        match crate::task::requeue_expired(&self.dir, self.cfg.lock_timeout) {
            Ok(r) if r.requeued + r.failed > 0 => {
                let mut event = Event::new("lease_expired", None, Some("claims whose lease lapsed".to_string()));
                event.requeued_tasks = r.requeued;
                event.extra.insert("failed_tasks".into(), serde_json::json!(r.failed));
                event.extra.insert("tasks".into(), serde_json::json!(r.tasks));
                self.emit(report, event);
            }
            Ok(_) => self.once.clear("leases"),
            Err(e) => {
                report.problems += 1;
                if self.once.first("leases") {
                    self.emit(report, Event::new("error", None, Some(format!("requeue of lapsed leases: {e}"))));
                }
            }
        }
    }

    fn emit(&self, report: &mut TickReport, event: Event) {
        if let Err(e) = append_line(&self.dir.events_file(), &event) {
            log::error!("cannot record event: {e}");
        }
        report.events.push(event);
    }

    fn sample(&mut self, live: &[(String, u32)]) -> Result<()> {
        use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate};
        if live.is_empty() {
            return Ok(());
        }
        if self.sys.is_none() {
            self.sys = Some(
                sysinfo::System::new()
                    .map_err(|e| crate::Error::Failed(format!("cannot read process information: {e}")))?,
            );
        }
        let Some(sys) = self.sys.as_mut() else { return Ok(()) };
        let pids: Vec<Pid> = live.iter().map(|(_, p)| Pid::from_u32(*p)).collect();
        sys.refresh_processes_specifics(
            ProcessesToUpdate::Some(&pids),
            true,
            ProcessRefreshKind::nothing().with_cpu().with_memory().with_tasks(),
        );
        let ts = time::now_rfc3339();
        let mut samples = Vec::with_capacity(live.len());
        for (agent, pid) in live {
            let Some(p) = sys.process(Pid::from_u32(*pid)) else { continue };
            samples.push(Sample {
                ts: ts.clone(),
                agent: agent.clone(),
                pid: *pid,
                cpu_percent: (f64::from(p.cpu_usage()) * 10.0).round() / 10.0,
                memory_bytes: p.memory(),
                threads: p.tasks().map_or(1, |t| t.len().max(1) as u64),
            });
        }
        for s in &samples {
            append_line(&self.dir.resources_file(), s)?;
        }
        registry::modify_all(&self.dir, self.cfg.lock_timeout, |agents| {
            for a in agents.iter_mut() {
                if let Some(s) = samples.iter().find(|s| s.agent == a.id) {
                    let mut usage = a.resource_usage.take().unwrap_or_default();
                    usage.cpu = format!("{:.0}%", s.cpu_percent);
                    usage.memory = format!("{}MB", s.memory_bytes / (1024 * 1024));
                    usage.threads = s.threads;
                    usage.extra.insert("cpu_percent".into(), serde_json::json!(s.cpu_percent));
                    usage.extra.insert("memory_bytes".into(), serde_json::json!(s.memory_bytes));
                    usage.extra.insert("sampled_at".into(), Value::String(s.ts.clone()));
                    a.resource_usage = Some(usage);
                }
            }
        })
    }
}

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
