//! Push assignment (`taskd assign`, `taskd run`): the seed's four strategies.
//!
//! One pass walks the pending tasks in queue order (priority, then age) and gives each
//! one to a free agent that may take it (type and capabilities always respected). An
//! agent is free while it holds fewer than `slots` claims. Routes no free agent can
//! serve are skipped whole, so a pass costs O(assigned + routes), not O(pending). Each
//! assignment is a claim made for the agent (`assigned_by: "coordinator"`) and a
//! `task_assignment` message to it. With no suitable agent a task stays queued.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{COORDINATOR, ClaimOptions, Route, Status, Task, index, note_assigned, records_in, take};
use crate::error::{Error, Result};
use crate::fsio;
use crate::layout::{SessionDir, ToolLock};
use crate::mailbox;
use crate::record::{Agent, status as agent_status};
use crate::registry;
use crate::time;

/// The seed's distribution strategies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum Strategy {
    /// Cycle through the agents (cursor kept in `tasks/round_robin.json`).
    RoundRobin,
    /// The agent with the fewest tasks in progress.
    LoadBalanced,
    /// Agents whose capabilities cover the task; the least loaded, then the closest fit.
    CapabilityBased,
    /// Highest priority first, preempting lower-priority work when every capable agent is busy.
    PriorityQueue,
}

/// How a pass runs.
#[derive(Debug, Clone)]
pub struct AssignOptions {
    /// The strategy.
    pub strategy: Strategy,
    /// Claims an agent may hold at once.
    pub slots: usize,
    /// Lease of each assignment.
    pub lease: Duration,
}

/// One assignment made by a pass.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Assignment {
    /// The task.
    pub task: String,
    /// The agent it went to.
    pub agent: String,
    /// The task's priority.
    pub priority: i64,
}

/// A preemption requested by a pass.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Preemption {
    /// The agent asked to release its task.
    pub agent: String,
    /// The running task it should release.
    pub task: String,
    /// The waiting task with higher priority.
    pub for_task: String,
}

/// What a pass did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct AssignReport {
    /// Assignments made.
    pub assigned: Vec<Assignment>,
    /// Preemptions requested (`priority_queue` only).
    pub preempted: Vec<Preemption>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Cursor {
    last: Option<String>,
}

struct Candidate {
    agent: Agent,
    order: usize,
    running: Vec<(String, i64, bool)>, // (task, priority, preempt already requested)
}

/// Runs one assignment pass. Passes are serialized by the `_task_assign` lock.
pub fn assign(dir: &SessionDir, opts: &AssignOptions, timeout: Duration) -> Result<AssignReport> {
    super::ensure_store(dir)?;
    let _g = dir.tool_lock(ToolLock::TaskAssign, timeout)?;
    let mut agents: Vec<Candidate> = registry::load(dir)?
        .into_iter()
        .filter(|a| a.status == agent_status::ACTIVE)
        .enumerate()
        .map(|(order, agent)| Candidate { agent, order, running: Vec::new() })
        .collect();
    let pos: HashMap<String, usize> = agents.iter().enumerate().map(|(i, c)| (c.agent.id.clone(), i)).collect();
    for t in records_in(dir, Status::Claimed)? {
        if let Some(&i) = t.assigned_to.as_ref().and_then(|a| pos.get(a)) {
            agents[i].running.push((t.id.clone(), t.priority, t.preempt_requested_at.is_some()));
        }
    }
    let mut cursor: Cursor = fsio::read_json_opt(&dir.task_cursor_file()).ok().flatten().unwrap_or_default();
    let slots = opts.slots.max(1);
    let free = |c: &Candidate| c.running.len() < slots;
    let admitted = |r: &Route, c: &Candidate| r.admits(&c.agent.agent_type, &c.agent.capabilities);

    let mut report = AssignReport::default();
    let mut waiting: Vec<Task> = Vec::new(); // heads of routes whose capable agents are all busy
    // Paused routes are left out of the scan: nothing of them is assigned or preempted for.
    let paused = super::pause::paused(dir)?;
    let mut scan = index::PendingScan::open(dir, |r| paused.admits(r) && agents.iter().any(|c| admitted(r, c)))?;
    let claim_opts = ClaimOptions { lease: opts.lease, assigned_by: Some(COORDINATOR.to_string()) };
    while let Some((ri, e)) = scan.peek()? {
        let Some(route) = scan.route(ri).cloned() else { break };
        let eligible: Vec<usize> = (0..agents.len()).filter(|&i| admitted(&route, &agents[i])).collect();
        let free_eligible: Vec<usize> = eligible.iter().copied().filter(|&i| free(&agents[i])).collect();
        if free_eligible.is_empty() {
            if opts.strategy == Strategy::PriorityQueue
                && let Ok(t) = fsio::read_json::<Task>(&e.path)
            {
                waiting.push(t);
            }
            scan.skip_route(ri);
            continue;
        }
        scan.advance(ri);
        let pick = choose(opts.strategy, &agents, &free_eligible, &route, cursor.last.as_deref());
        let agent_id = agents[pick].agent.id.clone();
        let Some(t) = take(dir, &e, &agent_id, &claim_opts)? else { continue };
        note_assigned(dir, &agent_id, &t.id, true, timeout);
        send(dir, &agent_id, "task_assignment", serde_json::to_value(&t).unwrap_or_default(), t.priority);
        agents[pick].running.push((t.id.clone(), t.priority, false));
        cursor.last = Some(agent_id.clone());
        report.assigned.push(Assignment { task: t.id, agent: agent_id, priority: t.priority });
        if !agents.iter().any(free) && opts.strategy != Strategy::PriorityQueue {
            break;
        }
    }
    if opts.strategy == Strategy::RoundRobin && !report.assigned.is_empty() {
        fsio::write_json(&dir.task_cursor_file(), &cursor)?;
    }
    if opts.strategy == Strategy::PriorityQueue {
        preempt(dir, &mut agents, waiting, &mut report, timeout)?;
    }
    Ok(report)
}

fn choose(strategy: Strategy, agents: &[Candidate], free: &[usize], route: &Route, last: Option<&str>) -> usize {
    let load = |i: &usize| agents[*i].running.len();
    match strategy {
        Strategy::RoundRobin => {
            // The first free agent after the cursor, in registration order, wrapping.
            let after = last.and_then(|l| agents.iter().position(|c| c.agent.id == l));
            let start = after.map_or(0, |p| p + 1);
            let n = agents.len();
            (0..n).map(|k| (start + k) % n).find(|i| free.contains(i)).unwrap_or(free[0])
        }
        Strategy::LoadBalanced | Strategy::PriorityQueue => {
            *free.iter().min_by_key(|i| (load(i), agents[**i].order)).unwrap_or(&free[0])
        }
        Strategy::CapabilityBased => {
            let extra =
                |i: &usize| agents[*i].agent.capabilities.iter().filter(|c| !route.capabilities.contains(c)).count();
            *free.iter().min_by_key(|i| (load(i), extra(i), agents[**i].order)).unwrap_or(&free[0])
        }
    }
}

/// For each waiting task (highest priority first) whose capable agents are all busy, asks
/// the agent on the lowest-priority running task, if strictly lower, to release it.
fn preempt(
    dir: &SessionDir,
    agents: &mut [Candidate],
    mut waiting: Vec<Task>,
    report: &mut AssignReport,
    timeout: Duration,
) -> Result<()> {
    waiting.sort_by_key(|t| (std::cmp::Reverse(t.priority), t.seq));
    let mut asked: HashSet<String> = HashSet::new();
    for w in waiting {
        let route = Route::new(w.agent_type.as_deref(), &w.capabilities);
        let mut victim: Option<(usize, String, i64)> = None;
        for (i, c) in agents.iter().enumerate() {
            if !route.admits(&c.agent.agent_type, &c.agent.capabilities) {
                continue;
            }
            for (task, prio, requested) in &c.running {
                if *requested || asked.contains(task) || *prio >= w.priority {
                    continue;
                }
                if victim.as_ref().is_none_or(|(_, _, p)| prio < p) {
                    victim = Some((i, task.clone(), *prio));
                }
            }
        }
        let Some((i, task, prio)) = victim else { continue };
        if !mark_preempt(dir, &task, timeout)? {
            continue;
        }
        let agent = agents[i].agent.id.clone();
        send(
            dir,
            &agent,
            "preempt",
            json!({"task_id": task, "priority": prio, "for_task": w.id, "for_priority": w.priority,
                   "reason": "a higher-priority task is waiting; release this one with `taskd release`"}),
            w.priority,
        );
        asked.insert(task.clone());
        report.preempted.push(Preemption { agent, task, for_task: w.id });
    }
    Ok(())
}

/// Stamps `preempt_requested_at` on a claim so it is asked only once.
fn mark_preempt(dir: &SessionDir, task: &str, timeout: Duration) -> Result<bool> {
    let _g = super::task_lock(dir, task, timeout)?;
    let path = super::status_file(dir, Status::Claimed, task);
    let mut t = match super::read_record(&path, Status::Claimed) {
        Ok(t) => t,
        Err(e) if fsio::is_not_found(&e) => return Ok(false),
        Err(e) => return Err(e),
    };
    if t.preempt_requested_at.is_some() {
        return Ok(false);
    }
    t.preempt_requested_at = Some(time::now_rfc3339());
    super::rewrite_record(dir, &path, &t)?;
    Ok(true)
}

/// Sends a coordinator message. The assignment itself is already recorded in the task
/// store, so a message that cannot be delivered is logged, not fatal.
fn send(dir: &SessionDir, to: &str, msg_type: &str, payload: serde_json::Value, priority: i64) {
    let msg = mailbox::Outgoing {
        from: COORDINATOR.to_string(),
        to: to.to_string(),
        msg_type: msg_type.to_string(),
        payload,
        priority,
        requires_ack: msg_type == "task_assignment",
    };
    if let Err(e) = mailbox::send(dir, msg) {
        log::warn!("could not send {msg_type} to agent {to:?}: {e}");
    }
}

/// Runs assignment passes as tasks, agents and completions appear, until a signal
/// arrives or the session is no longer active. Blocks on inotify between passes.
pub fn run(
    dir: &SessionDir,
    opts: &AssignOptions,
    timeout: Duration,
    mut on_pass: impl FnMut(&AssignReport) -> Result<()>,
) -> Result<()> {
    let signals =
        super::bell::Signals::install().map_err(|e| Error::Failed(format!("cannot install signal handlers: {e}")))?;
    super::ensure_store(dir)?;
    let mut b = super::bell::Bell::watch(&[
        dir.task_pending_bell(),
        dir.task_finished_bell(),
        dir.registry_dir(),
        dir.root().to_path_buf(),
    ])
    .with_signals(&signals);
    loop {
        if signals.received() {
            log::info!("signal received; dispatcher stopping");
            return Ok(());
        }
        let session = crate::session::read(dir)?;
        if session.status != crate::record::status::SESSION_ACTIVE {
            log::info!("session {:?} is {}; dispatcher stopping", dir.id(), session.status);
            return Ok(());
        }
        let report = assign(dir, opts, timeout)?;
        if !report.assigned.is_empty() || !report.preempted.is_empty() {
            on_pass(&report)?;
        }
        if b.wait(None) == super::bell::Wake::Signalled {
            log::info!("signal received; dispatcher stopping");
            return Ok(());
        }
    }
}
