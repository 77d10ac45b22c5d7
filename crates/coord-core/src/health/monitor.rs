//! The health monitor's tick ([`Monitor::tick`]): judges every agent, marks the dead and
//! hung ones failed in `registry/agents.json`, gives their claimed tasks (`tasks/`) and
//! in-flight messages (`messages/<agent>/cur/`) back through the task and mailbox
//! modules, requeues messages past their visibility timeout, samples resource use into
//! `registry/agents.json`, and appends its events to `metrics/events.jsonl`.

use super::*;

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
    /// The agents' processes found to be theirs, held by pidfds between ticks, and
    /// `agents.json` as last read.
    processes: super::Processes,
}

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
        Monitor {
            dir,
            cfg,
            here: Observer::here(),
            sys: None,
            once: Once::default(),
            last_sample: None,
            processes: super::Processes::new(),
        }
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
        let (agents, problems) = match self.processes.registrations(&self.dir) {
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
        // A process held since an earlier tick is checked again only once it has exited.
        self.processes.forget_exited();
        self.processes.keep_only(&agents.iter().filter(|a| is_live_status(&a.status)).map(|a| a.id.as_str()).collect());
        for agent in agents.iter().filter(|a| is_live_status(&a.status)) {
            report.checked += 1;
            let last = registry::last_heartbeat(&self.dir, &agent.id);
            match self.processes.judge(agent, last, now, &self.here, self.cfg.stale_after) {
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
