//! The task queue as a state machine, checked against a small in-memory model.
//!
//! Each case runs a generated sequence of operations (submit, claim, complete, fail,
//! release, cancel, requeue of an agent or of lapsed leases, an agent leaving and
//! joining again, and two races run on two threads) on a real session directory and on
//! the model, and after every operation compares everything a caller can observe:
//! `list_all` (order included: pending tasks in queue order), `show`, `progress`, the
//! agents' `assigned_tasks` and the results logs.
//!
//! Lease expiry is driven deterministically: a claim is made either with the default
//! lease (it never lapses within a case) or with a zero lease, which has lapsed as soon
//! as the clock passes its deadline; before `requeue_expired` the test waits for that
//! (at most a millisecond or two).

mod common;

use std::time::{Duration, SystemTime};

use coord_core::Error;
use coord_core::layout::{Base, SessionDir};
use coord_core::registry::{self, Registration};
use coord_core::task::{self, ClaimOptions, Holder, NewTask, Progress, Status, Task};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::TestCaseError;
use serde_json::json;

use common::{effect, fail, ok};

const T: Duration = Duration::from_secs(20);

/// The agents: `a0` is a worker with capability `gpu`, `a1` a plain worker, `a2` a builder.
const AGENTS: [&str; 3] = ["a0", "a1", "a2"];

fn agent_type(a: usize) -> &'static str {
    if a == 2 { "builder" } else { "worker" }
}

fn agent_caps(a: usize) -> Vec<String> {
    if a == 0 { vec!["gpu".to_string()] } else { Vec::new() }
}

/// What a task requires of its agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    Nothing,
    /// Agent type `worker` (`a0`, `a1`).
    Worker,
    /// Capability `gpu` (`a0`).
    Gpu,
}

impl Need {
    fn admits(self, a: usize) -> bool {
        match self {
            Need::Nothing => true,
            Need::Worker => agent_type(a) == "worker",
            Need::Gpu => agent_caps(a).iter().any(|c| c == "gpu"),
        }
    }
}

#[derive(Debug, Clone)]
struct Spec {
    priority: i64,
    max_attempts: u32,
    need: Need,
    /// Picks among the tasks submitted before it (earlier ones in the same batch included).
    deps: Vec<Index>,
}

/// The task an operation acts on.
#[derive(Debug, Clone)]
struct Target {
    /// Pick among the claimed tasks (among all when none is claimed).
    claimed: bool,
    at: Index,
}

/// Who claims to hold a task in complete, fail and release.
#[derive(Debug, Clone)]
enum Who {
    /// The current holder's agent and token (for a task not held: the last ones).
    Holder,
    /// The current (or last) token alone.
    Token,
    /// The current (or last) holder's agent alone.
    Agent,
    /// Neither: the current claim is trusted.
    Anyone,
    /// An agent other than the holder.
    Other(Index),
    /// A token of an earlier claim of the task (or one never issued).
    Stale,
}

#[derive(Debug, Clone)]
enum Bad {
    /// A new task and an id that exists: exit 1.
    Existing(Index),
    /// The same new id twice: exit 2.
    Duplicate,
    /// A dependency on a task that was never submitted: exit 2.
    UnknownDep,
}

#[derive(Debug, Clone)]
enum Op {
    Submit(Vec<Spec>),
    BadSubmit(Bad),
    Claim {
        agent: usize,
        zero_lease: bool,
    },
    /// Two agents claim at the same time.
    ClaimRace(usize, usize),
    Complete(Target, Who),
    /// The holder completes the same claim twice at the same time.
    CompleteRace(Target),
    Fail(Target, Who),
    Release(Target, Who),
    Cancel(Target),
    RequeueAgent(usize),
    RequeueExpired,
    /// The agent unregisters and its claims are requeued (what healthmon does for a dead one).
    Leave(usize),
    /// The agent registers again.
    Join(usize),
    /// `wait` for some tasks (all when none), with no time to wait.
    Wait(Vec<Target>),
}

fn spec() -> impl Strategy<Value = Spec> {
    let need = prop_oneof![4 => Just(Need::Nothing), 1 => Just(Need::Worker), 1 => Just(Need::Gpu)];
    let deps = prop_oneof![2 => Just(Vec::new()), 1 => prop::collection::vec(any::<Index>(), 1..=2)];
    (-2i64..=2, 1u32..=3, need, deps).prop_map(|(priority, max_attempts, need, deps)| Spec {
        priority,
        max_attempts,
        need,
        deps,
    })
}

fn who() -> impl Strategy<Value = Who> {
    prop_oneof![
        4 => Just(Who::Holder),
        2 => Just(Who::Token),
        1 => Just(Who::Agent),
        1 => Just(Who::Anyone),
        1 => any::<Index>().prop_map(Who::Other),
        1 => Just(Who::Stale),
    ]
}

fn target() -> impl Strategy<Value = Target> {
    (prop::bool::weighted(0.75), any::<Index>()).prop_map(|(claimed, at)| Target { claimed, at })
}

fn op() -> impl Strategy<Value = Op> {
    let agent = 0..AGENTS.len();
    prop_oneof![
        5 => prop::collection::vec(spec(), 1..=3).prop_map(Op::Submit),
        1 => prop_oneof![
            any::<Index>().prop_map(Bad::Existing),
            Just(Bad::Duplicate),
            Just(Bad::UnknownDep),
        ]
        .prop_map(Op::BadSubmit),
        6 => (agent.clone(), prop::bool::weighted(0.25)).prop_map(|(agent, zero_lease)| Op::Claim { agent, zero_lease }),
        2 => (agent.clone(), agent.clone()).prop_filter("two agents", |(a, b)| a != b).prop_map(|(a, b)| Op::ClaimRace(a, b)),
        4 => (target(), who()).prop_map(|(i, w)| Op::Complete(i, w)),
        1 => target().prop_map(Op::CompleteRace),
        3 => (target(), who()).prop_map(|(i, w)| Op::Fail(i, w)),
        2 => (target(), who()).prop_map(|(i, w)| Op::Release(i, w)),
        1 => target().prop_map(Op::Cancel),
        1 => agent.clone().prop_map(Op::RequeueAgent),
        1 => Just(Op::RequeueExpired),
        1 => agent.clone().prop_map(Op::Leave),
        2 => agent.prop_map(Op::Join),
        1 => prop::collection::vec(target(), 0..=2).prop_map(Op::Wait),
    ]
}

// ---------------------------------------------------------------------------------------
// The model

/// Why a task ended other than completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// Attempts exhausted (by fail or requeue).
    Exhausted,
    /// A dependency failed or was cancelled.
    Dependency,
    Cancelled,
}

#[derive(Debug, Clone)]
struct MTask {
    id: String,
    seq: u64,
    priority: i64,
    need: Need,
    max_attempts: u32,
    deps: Vec<usize>,
    status: Status,
    attempts: u32,
    /// The agent holding the current claim.
    holder: Option<usize>,
    /// The agent that held it last (kept after the claim ends).
    last_agent: Option<usize>,
    token: Option<String>,
    old_tokens: Vec<String>,
    zero_lease: bool,
    /// (attempt, agent) of each failed attempt or requeue.
    errors: Vec<(u32, Option<usize>)>,
    end: Option<End>,
}

#[derive(Debug, Clone)]
struct Model {
    tasks: Vec<MTask>,
    active: [bool; 3],
    /// The (task, status) lines of each agent's results log, in order.
    results: [Vec<(String, &'static str)>; 3],
    next_seq: u64,
}

/// What a claim by one agent should do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Refused,
    Nothing,
    Takes(usize),
}

impl Model {
    fn new() -> Model {
        Model { tasks: Vec::new(), active: [true; 3], results: Default::default(), next_seq: 1 }
    }

    fn next_id(&self) -> String {
        format!("t{}", self.tasks.len())
    }

    /// Adds a batch in order (dependencies only point backwards) and returns its indexes.
    fn submit(&mut self, batch: &[Spec]) -> Vec<usize> {
        let mut out = Vec::new();
        for s in batch {
            let n = self.tasks.len();
            let mut deps: Vec<usize> = if n == 0 { Vec::new() } else { s.deps.iter().map(|d| d.index(n)).collect() };
            deps.sort_unstable();
            deps.dedup();
            self.tasks.push(MTask {
                id: format!("t{n}"),
                seq: self.next_seq,
                priority: s.priority,
                need: s.need,
                max_attempts: s.max_attempts,
                deps,
                status: Status::Blocked,
                attempts: 0,
                holder: None,
                last_agent: None,
                token: None,
                old_tokens: Vec::new(),
                zero_lease: false,
                errors: Vec::new(),
                end: None,
            });
            self.next_seq += 1;
            out.push(n);
            self.settle();
        }
        out
    }

    /// Releases blocked tasks whose dependencies all completed and fails those with a
    /// failed or cancelled dependency, until nothing changes.
    fn settle(&mut self) {
        loop {
            let mut changed = false;
            for i in 0..self.tasks.len() {
                if self.tasks[i].status != Status::Blocked {
                    continue;
                }
                let states: Vec<Status> = self.tasks[i].deps.iter().map(|&d| self.tasks[d].status).collect();
                let t = &mut self.tasks[i];
                if states.iter().any(|s| matches!(s, Status::Failed | Status::Cancelled)) {
                    t.status = Status::Failed;
                    t.end = Some(End::Dependency);
                    changed = true;
                } else if states.iter().all(|s| *s == Status::Completed) {
                    t.status = Status::Pending;
                    changed = true;
                }
            }
            if !changed {
                return;
            }
        }
    }

    /// Pending tasks in queue order: highest priority, then lowest seq.
    fn queue(&self) -> Vec<usize> {
        let mut q: Vec<usize> = (0..self.tasks.len()).filter(|&i| self.tasks[i].status == Status::Pending).collect();
        q.sort_by_key(|&i| (std::cmp::Reverse(self.tasks[i].priority), self.tasks[i].seq));
        q
    }

    fn expect_claim(&self, agent: usize) -> Expect {
        if !self.active[agent] {
            return Expect::Refused;
        }
        match self.queue().into_iter().find(|&i| self.tasks[i].need.admits(agent)) {
            Some(i) => Expect::Takes(i),
            None => Expect::Nothing,
        }
    }

    fn claimed(&mut self, i: usize, agent: usize, token: String, zero_lease: bool) {
        let t = &mut self.tasks[i];
        t.status = Status::Claimed;
        t.attempts += 1;
        t.holder = Some(agent);
        t.last_agent = Some(agent);
        t.token = Some(token);
        t.zero_lease = zero_lease;
    }

    fn end_claim(&mut self, i: usize) -> usize {
        let t = &mut self.tasks[i];
        t.old_tokens.extend(t.token.take());
        t.holder.take().expect("the task is held")
    }

    fn complete(&mut self, i: usize) {
        let agent = self.end_claim(i);
        self.tasks[i].status = Status::Completed;
        self.results[agent].push((self.tasks[i].id.clone(), "completed"));
        self.settle();
    }

    /// A failed attempt or a requeue: back to pending, or failed for good. Returns
    /// whether it failed for good.
    fn spend(&mut self, i: usize) -> bool {
        let agent = self.end_claim(i);
        let t = &mut self.tasks[i];
        t.errors.push((t.attempts, Some(agent)));
        if t.attempts >= t.max_attempts {
            t.status = Status::Failed;
            t.end = Some(End::Exhausted);
            self.results[agent].push((t.id.clone(), "failed"));
            self.settle();
            true
        } else {
            t.status = Status::Pending;
            false
        }
    }

    fn release(&mut self, i: usize) {
        self.end_claim(i);
        let t = &mut self.tasks[i];
        t.attempts -= 1;
        t.status = Status::Pending;
    }

    fn cancel(&mut self, i: usize) {
        if self.tasks[i].holder.is_some() {
            self.end_claim(i);
        }
        self.tasks[i].status = Status::Cancelled;
        self.tasks[i].end = Some(End::Cancelled);
        self.settle();
    }

    /// The holder `who` stands for on task `i`, and whether the task store must accept it.
    fn holder(&self, i: usize, who: &Who) -> (Holder, bool) {
        let t = &self.tasks[i];
        let agent = t.holder.or(t.last_agent).map(|a| AGENTS[a].to_string());
        let token = t.token.clone().or_else(|| t.old_tokens.last().cloned());
        let h = match who {
            Who::Holder => Holder { agent, token },
            Who::Token => Holder { agent: None, token },
            Who::Agent => Holder { agent, token: None },
            Who::Anyone => Holder::default(),
            Who::Other(pick) => {
                let others: Vec<usize> = (0..AGENTS.len()).filter(|&a| Some(a) != t.holder).collect();
                Holder { agent: Some(AGENTS[others[pick.index(others.len())]].to_string()), token: None }
            }
            Who::Stale => Holder {
                agent: None,
                token: Some(t.old_tokens.first().cloned().unwrap_or_else(|| "0000000000000000".to_string())),
            },
        };
        // The documented rule: the task is claimed, and each given field is the claim's.
        let accepted = t.status == Status::Claimed
            && h.agent.as_deref().is_none_or(|a| t.holder.is_some_and(|x| AGENTS[x] == a))
            && h.token.as_ref().is_none_or(|k| t.token.as_ref() == Some(k));
        (h, accepted)
    }

    /// The claimed tasks in submission order (the order requeue reports them).
    fn claimed_by(&self, pick: impl Fn(&MTask) -> bool) -> Vec<usize> {
        let mut v: Vec<usize> = (0..self.tasks.len())
            .filter(|&i| self.tasks[i].status == Status::Claimed && pick(&self.tasks[i]))
            .collect();
        v.sort_by_key(|&i| self.tasks[i].seq);
        v
    }

    /// `list_all` order: blocked, pending (queue order), claimed, completed, failed,
    /// cancelled; by seq within a status.
    fn listing(&self) -> Vec<usize> {
        let mut out = Vec::new();
        for s in Status::ALL {
            if s == Status::Pending {
                out.extend(self.queue());
                continue;
            }
            let mut v: Vec<usize> = (0..self.tasks.len()).filter(|&i| self.tasks[i].status == s).collect();
            v.sort_by_key(|&i| self.tasks[i].seq);
            out.extend(v);
        }
        out
    }

    /// What `wait` reports for `ids` (all tasks when empty), and whether it returns
    /// rather than time out.
    fn wait(&self, ids: &[usize]) -> (task::WaitOutcome, bool) {
        let mut out = task::WaitOutcome::default();
        let all: Vec<usize> = (0..self.tasks.len()).collect();
        for &i in if ids.is_empty() { &all } else { ids } {
            match self.tasks[i].status {
                Status::Completed => out.completed += 1,
                Status::Failed | Status::Cancelled => out.failed.push(self.tasks[i].id.clone()),
                _ => out.unfinished += 1,
            }
        }
        if ids.is_empty() {
            out.failed.sort();
        }
        let returns = out.unfinished == 0 || (!ids.is_empty() && !out.failed.is_empty());
        (out, returns)
    }

    fn progress(&self) -> Progress {
        let n = |s: Status| self.tasks.iter().filter(|t| t.status == s).count();
        let total = self.tasks.len();
        let completed = n(Status::Completed);
        Progress {
            total,
            blocked: n(Status::Blocked),
            pending: n(Status::Pending),
            claimed: n(Status::Claimed),
            completed,
            failed: n(Status::Failed),
            cancelled: n(Status::Cancelled),
            // round(completed / total * 100), a half rounded up.
            operation_progress: match total {
                0 => 0,
                _ => ((completed * 100) / total + usize::from((completed * 100) % total * 2 >= total)) as u64,
            },
        }
    }
}

// ---------------------------------------------------------------------------------------
// Running a case

fn refused<T: std::fmt::Debug>(r: coord_core::Result<T>, what: &str) -> Result<Error, TestCaseError> {
    match r {
        Ok(v) => Err(fail(format!("{what}: expected a refusal, got {v:?}"))),
        Err(e) => Ok(e),
    }
}

fn claim_lost<T: std::fmt::Debug>(r: coord_core::Result<T>, what: &str) -> Result<(), TestCaseError> {
    let e = refused(r, what)?;
    prop_assert!(e.to_string().contains("claim lost"), "{}: {}", what, e);
    prop_assert_eq!(e.exit_code(), 1);
    effect("claim lost");
    Ok(())
}

fn register(dir: &SessionDir, a: usize) -> coord_core::Result<()> {
    let req = Registration {
        id: AGENTS[a].to_string(),
        agent_type: agent_type(a).to_string(),
        capabilities: agent_caps(a),
        pid: std::process::id(),
        replace: false,
    };
    registry::register(dir, &req, T).map(drop)
}

fn new_task(m: &MTask) -> NewTask {
    NewTask {
        id: Some(m.id.clone()),
        agent_type: (m.need == Need::Worker).then(|| "worker".to_string()),
        capabilities: if m.need == Need::Gpu { vec!["gpu".to_string()] } else { Vec::new() },
        priority: m.priority,
        dependencies: m.deps.iter().map(|d| format!("t{d}")).collect(),
        max_attempts: Some(m.max_attempts),
        payload: json!({"id": m.id}),
    }
}

fn opts(zero_lease: bool) -> ClaimOptions {
    ClaimOptions { lease: if zero_lease { Duration::ZERO } else { task::DEFAULT_LEASE }, assigned_by: None }
}

/// Checks a claim's outcome against the expectation; returns the token of a claim.
fn check_claim(
    model: &Model,
    agent: usize,
    expect: Expect,
    got: coord_core::Result<Option<Task>>,
) -> Result<Option<String>, TestCaseError> {
    let what = format!("claim by {}", AGENTS[agent]);
    match expect {
        Expect::Refused => {
            let e = refused(got, &what)?;
            prop_assert_eq!(e.exit_code(), 1, "{}: {}", what, e);
            Ok(None)
        }
        Expect::Nothing => {
            let got = ok(got, &what)?;
            prop_assert!(got.is_none(), "{}: expected nothing, got {:?}", what, got);
            Ok(None)
        }
        Expect::Takes(i) => {
            let t =
                ok(got, &what)?.ok_or_else(|| fail(format!("{what}: expected {}, got nothing", model.tasks[i].id)))?;
            prop_assert_eq!(&t.id, &model.tasks[i].id, "{}", what);
            prop_assert_eq!(t.status.as_str(), "claimed");
            prop_assert_eq!(t.assigned_to.as_deref(), Some(AGENTS[agent]));
            prop_assert_eq!(t.attempts, model.tasks[i].attempts + 1);
            let token = t.claim_token.clone().ok_or_else(|| fail(format!("{what}: no claim token")))?;
            prop_assert!(!model.tasks[i].old_tokens.contains(&token), "{}: token {} reused", what, token);
            Ok(Some(token))
        }
    }
}

/// Waits until every zero-lease claim has lapsed by the store's own reckoning.
fn let_zero_leases_lapse(dir: &SessionDir) -> Result<(), TestCaseError> {
    for t in ok(task::list(dir, Status::Claimed), "list claimed")? {
        if t.lease_seconds != Some(0.0) {
            continue;
        }
        let deadline = task::lease_deadline(dir, &t).ok_or_else(|| fail(format!("{}: no lease deadline", t.id)))?;
        let give_up = SystemTime::now() + Duration::from_secs(2);
        while SystemTime::now() <= deadline {
            prop_assert!(SystemTime::now() < give_up, "the zero lease of {} does not lapse", t.id);
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    Ok(())
}

fn run_requeue(
    model: &mut Model,
    report: task::RequeueReport,
    which: Vec<usize>,
    reason: &str,
) -> Result<(), TestCaseError> {
    let ids: Vec<String> = which.iter().map(|&i| model.tasks[i].id.clone()).collect();
    let mut failed = 0;
    for &i in &which {
        failed += usize::from(model.spend(i));
    }
    prop_assert_eq!(&report.tasks, &ids, "{}", reason);
    prop_assert_eq!((report.requeued, report.failed), (which.len() - failed, failed), "{}", reason);
    Ok(())
}

fn apply(dir: &SessionDir, model: &mut Model, op: &Op) -> Result<(), TestCaseError> {
    let pick = |t: &Target, model: &Model| {
        let held = model.claimed_by(|_| true);
        if t.claimed && !held.is_empty() {
            Some(held[t.at.index(held.len())])
        } else {
            (!model.tasks.is_empty()).then(|| t.at.index(model.tasks.len()))
        }
    };
    match op {
        Op::Submit(batch) => {
            let first = model.tasks.len();
            let mut next = model.clone();
            let added = next.submit(batch);
            let new: Vec<NewTask> = added.iter().map(|&i| new_task(&next.tasks[i])).collect();
            let got = ok(task::submit(dir, new, T), "submit")?;
            prop_assert_eq!(got.len(), batch.len());
            for t in &got {
                let i: usize = t.id.strip_prefix('t').and_then(|n| n.parse().ok()).unwrap_or(usize::MAX);
                prop_assert!((first..next.tasks.len()).contains(&i), "submit returned {}", t.id);
                prop_assert_eq!(t.state(), Some(next.tasks[i].status), "submit returned {:?}", t);
                prop_assert_eq!(t.seq, next.tasks[i].seq, "seq of {} (submission order)", t.id);
            }
            *model = next;
        }
        Op::BadSubmit(bad) => {
            let fresh = NewTask { id: Some(model.next_id()), ..NewTask::default() };
            let (batch, code) = match bad {
                Bad::Existing(i) => match (!model.tasks.is_empty()).then(|| i.index(model.tasks.len())) {
                    Some(i) => (vec![fresh, NewTask { id: Some(model.tasks[i].id.clone()), ..NewTask::default() }], 1),
                    None => return Ok(()),
                },
                Bad::Duplicate => (vec![fresh.clone(), fresh], 2),
                Bad::UnknownDep => {
                    (vec![fresh, NewTask { dependencies: vec!["never".into()], ..NewTask::default() }], 2)
                }
            };
            let e = refused(task::submit(dir, batch, T), "bad submit")?;
            prop_assert_eq!(e.exit_code(), code, "{}", e);
            effect("bad submit");
        }
        Op::Claim { agent, zero_lease } => {
            let expect = model.expect_claim(*agent);
            let got = task::claim(dir, AGENTS[*agent], &opts(*zero_lease), T);
            if let (Expect::Takes(i), Some(token)) = (expect, check_claim(model, *agent, expect, got)?) {
                model.claimed(i, *agent, token, *zero_lease);
            }
        }
        Op::ClaimRace(a, b) => {
            let (ga, gb) = std::thread::scope(|s| {
                let ha = s.spawn(|| task::claim(dir, AGENTS[*a], &opts(false), T));
                let hb = s.spawn(|| task::claim(dir, AGENTS[*b], &opts(false), T));
                (ha.join().expect("claimer a"), hb.join().expect("claimer b"))
            });
            // What each got: refused, nothing, or a task id.
            let seen = |g: &coord_core::Result<Option<Task>>| g.as_ref().map(|t| t.as_ref().map(|t| t.id.clone())).ok();
            let want = |e: Expect| match e {
                Expect::Refused => None,
                Expect::Nothing => Some(None),
                Expect::Takes(i) => Some(Some(model.tasks[i].id.clone())),
            };
            let got = (seen(&ga), seen(&gb));
            // Some order of the two claims, one after the other, gives what they got.
            let mut matched = None;
            for (first, second) in [(*a, *b), (*b, *a)] {
                let mut m = model.clone();
                let e1 = m.expect_claim(first);
                if let Expect::Takes(i) = e1 {
                    m.claimed(i, first, format!("race-{i}"), false);
                }
                let e2 = m.expect_claim(second);
                let (ea, eb) = if first == *a { (e1, e2) } else { (e2, e1) };
                if (want(ea), want(eb)) == got {
                    matched = Some((ea, eb));
                    break;
                }
            }
            let (ea, eb) = matched.ok_or_else(|| {
                fail(format!("claim race: {} and {} got {got:?}; no serial order gives that", AGENTS[*a], AGENTS[*b]))
            })?;
            if matches!((ea, eb), (Expect::Takes(_), Expect::Takes(_))) {
                effect("claim race");
            }
            prop_assert!(!matches!(&got, (Some(Some(x)), Some(Some(y))) if x == y), "both claimers got {:?}", got);
            for (agent, e, g) in [(*a, ea, ga), (*b, eb, gb)] {
                if let (Expect::Takes(i), Some(token)) = (e, check_claim(model, agent, e, g)?) {
                    model.claimed(i, agent, token, false);
                }
            }
        }
        Op::Complete(i, who) => {
            let Some(i) = pick(i, model) else { return Ok(()) };
            let (h, accepted) = model.holder(i, who);
            let what = format!("complete {} as {who:?}", model.tasks[i].id);
            let r = task::complete(dir, &model.tasks[i].id, &h, json!({"by": format!("{h:?}")}), T);
            if accepted {
                let t = ok(r, &what)?;
                prop_assert_eq!(t.state(), Some(Status::Completed));
                prop_assert_eq!(t.results, Some(json!({"by": format!("{h:?}")})));
                model.complete(i);
            } else {
                claim_lost(r, &what)?;
            }
        }
        Op::CompleteRace(i) => {
            let Some(i) = pick(i, model) else { return Ok(()) };
            let (h, accepted) = model.holder(i, &Who::Holder);
            let id = model.tasks[i].id.clone();
            let (r1, r2) = std::thread::scope(|s| {
                let one = s.spawn(|| task::complete(dir, &id, &h, json!(1), T));
                let two = s.spawn(|| task::complete(dir, &id, &h, json!(2), T));
                (one.join().expect("completer one"), two.join().expect("completer two"))
            });
            let wins = usize::from(r1.is_ok()) + usize::from(r2.is_ok());
            prop_assert_eq!(wins, usize::from(accepted), "complete race on {}: {:?} / {:?}", id, r1, r2);
            for r in [r1, r2] {
                if r.is_err() {
                    claim_lost(r, &format!("complete race on {id}"))?;
                }
            }
            if accepted {
                model.complete(i);
                effect("complete race");
            }
        }
        Op::Fail(i, who) => {
            let Some(i) = pick(i, model) else { return Ok(()) };
            let (h, accepted) = model.holder(i, who);
            let what = format!("fail {} as {who:?}", model.tasks[i].id);
            let r = task::fail(dir, &model.tasks[i].id, &h, "it broke", T);
            if accepted {
                let t = ok(r, &what)?;
                model.spend(i);
                prop_assert_eq!(t.state(), Some(model.tasks[i].status), "{}", what);
            } else {
                claim_lost(r, &what)?;
            }
        }
        Op::Release(i, who) => {
            let Some(i) = pick(i, model) else { return Ok(()) };
            let (h, accepted) = model.holder(i, who);
            let what = format!("release {} as {who:?}", model.tasks[i].id);
            let r = task::release(dir, &model.tasks[i].id, &h, T);
            if accepted {
                let t = ok(r, &what)?;
                model.release(i);
                prop_assert_eq!((t.state(), t.attempts), (Some(Status::Pending), model.tasks[i].attempts), "{}", what);
            } else {
                claim_lost(r, &what)?;
            }
        }
        Op::Cancel(i) => {
            let Some(i) = pick(i, model) else { return Ok(()) };
            let what = format!("cancel {}", model.tasks[i].id);
            let r = task::cancel(dir, &model.tasks[i].id, None, T);
            if model.tasks[i].status.is_final() {
                let e = refused(r, &what)?;
                prop_assert_eq!(e.exit_code(), 1);
            } else {
                prop_assert_eq!(ok(r, &what)?.state(), Some(Status::Cancelled));
                model.cancel(i);
            }
        }
        Op::RequeueAgent(a) => {
            let report = ok(task::requeue_agent(dir, AGENTS[*a], "gone", T), "requeue agent")?;
            let which = model.claimed_by(|t| t.holder == Some(*a));
            if !which.is_empty() {
                effect("requeue agent");
            }
            run_requeue(model, report, which, &format!("requeue agent {}", AGENTS[*a]))?;
        }
        Op::RequeueExpired => {
            let_zero_leases_lapse(dir)?;
            let report = ok(task::requeue_expired(dir, T), "requeue expired")?;
            let which = model.claimed_by(|t| t.zero_lease);
            if !which.is_empty() {
                effect("requeue expired");
            }
            run_requeue(model, report, which, "requeue expired")?;
        }
        Op::Leave(a) => {
            ok(registry::unregister(dir, AGENTS[*a], T), "unregister")?;
            model.active[*a] = false;
            effect("leave");
            let report = ok(task::requeue_agent(dir, AGENTS[*a], "agent left", T), "requeue after leaving")?;
            let which = model.claimed_by(|t| t.holder == Some(*a));
            run_requeue(model, report, which, &format!("{} left", AGENTS[*a]))?;
        }
        Op::Wait(targets) => {
            let ids: Vec<usize> = targets.iter().filter_map(|t| pick(t, model)).collect();
            let names: Vec<String> = ids.iter().map(|&i| model.tasks[i].id.clone()).collect();
            let (want, returns) = model.wait(&ids);
            let r = task::wait(dir, &names, Some(Duration::ZERO));
            if returns {
                prop_assert_eq!(ok(r, "wait")?, want, "wait for {:?}", names);
                effect("wait returns");
            } else {
                let e = refused(r, "wait")?;
                prop_assert_eq!(e.exit_code(), 3, "wait for {:?}: {}", names, e);
                effect("wait times out");
            }
        }
        Op::Join(a) => {
            let r = register(dir, *a);
            if model.active[*a] {
                let e = refused(r, "register an active agent")?;
                prop_assert_eq!(e.exit_code(), 1);
            } else {
                ok(r, "register again")?;
                model.active[*a] = true;
                effect("join");
            }
        }
    }
    Ok(())
}

/// Compares everything observable with the model.
fn check(dir: &SessionDir, model: &Model) -> Result<(), TestCaseError> {
    let all = ok(task::list_all(dir), "list_all")?;
    let ids: Vec<&str> = all.iter().map(|t| t.id.as_str()).collect();
    let order = model.listing();
    let want: Vec<&str> = order.iter().map(|&i| model.tasks[i].id.as_str()).collect();
    // Also: every listed task was submitted, each once (none in two places).
    prop_assert_eq!(&ids, &want, "list_all (pending in queue order)");
    for (t, &i) in all.iter().zip(&order) {
        let m = &model.tasks[i];
        prop_assert_eq!(t.state(), Some(m.status), "status of {}", m.id);
        prop_assert_eq!(t.seq, m.seq, "seq of {}", m.id);
        prop_assert_eq!(t.attempts, m.attempts, "attempts of {}", m.id);
        prop_assert_eq!(t.max_attempts, m.max_attempts, "max_attempts of {}", m.id);
        prop_assert_eq!(t.priority, m.priority, "priority of {}", m.id);
        prop_assert_eq!(t.assigned_to.as_deref(), m.last_agent.map(|a| AGENTS[a]), "assigned_to of {}", m.id);
        prop_assert_eq!(&t.claim_token, &m.token, "claim token of {}", m.id);
        let lease = m.holder.map(|_| if m.zero_lease { 0.0 } else { task::DEFAULT_LEASE.as_secs_f64() });
        prop_assert_eq!(t.lease_seconds, lease, "lease of {}", m.id);
        let errors: Vec<(u32, Option<&str>)> = t.errors.iter().map(|e| (e.attempt, e.agent.as_deref())).collect();
        let want_errors: Vec<(u32, Option<&str>)> = m.errors.iter().map(|&(n, a)| (n, a.map(|a| AGENTS[a]))).collect();
        prop_assert_eq!(errors, want_errors, "errors of {}", m.id);
        let reason = t.reason.as_deref().unwrap_or("");
        match m.end {
            None => prop_assert!(t.reason.is_none(), "{} has a reason: {}", m.id, reason),
            Some(End::Exhausted) => prop_assert!(reason.starts_with("failed after "), "{}: {}", m.id, reason),
            Some(End::Dependency) => prop_assert!(reason.starts_with("dependency failed"), "{}: {}", m.id, reason),
            Some(End::Cancelled) => prop_assert_eq!(reason, "cancelled"),
        }
        if m.status == Status::Completed {
            prop_assert!(t.results.is_some(), "{} completed without results", m.id);
        }
        let shown = ok(task::show(dir, &t.id), "show")?;
        prop_assert_eq!(&shown, t, "show {} differs from list_all", m.id);
    }
    prop_assert!(task::show(dir, &model.next_id()).is_err(), "an id never submitted has no record");
    prop_assert_eq!(ok(task::progress(dir, T), "progress")?, model.progress());
    let agents = ok(registry::load(dir), "registry")?;
    for (a, name) in AGENTS.iter().enumerate() {
        let reg = agents.iter().find(|r| r.id == *name).ok_or_else(|| fail(format!("{name} not in the registry")))?;
        let mut held: Vec<&str> = reg.assigned_tasks.iter().map(String::as_str).collect();
        held.sort_unstable();
        let mut want: Vec<&str> = model.tasks.iter().filter(|t| t.holder == Some(a)).map(|t| t.id.as_str()).collect();
        want.sort_unstable();
        prop_assert_eq!(held, want, "assigned_tasks of {}", name);
        let log = dir.result_log(name);
        let lines: Vec<(String, String)> = if log.exists() {
            ok(coord_core::report::read_result_log(&log), "results log")?
                .tasks
                .into_iter()
                .map(|r| (r.id().to_string(), r.status().to_string()))
                .collect()
        } else {
            Vec::new()
        };
        let want: Vec<(String, String)> =
            model.results[a].iter().map(|(id, s)| (id.clone(), (*s).to_string())).collect();
        prop_assert_eq!(lines, want, "results log of {}", name);
    }
    Ok(())
}

fn run(ops: &[Op]) -> Result<(), TestCaseError> {
    let tmp = tempfile::tempdir().map_err(fail)?;
    let dir = ok(coord_core::session::init(&Base::new(tmp.path().join("base")), "model"), "init")?;
    for a in 0..AGENTS.len() {
        ok(register(&dir, a), "register")?;
    }
    let mut model = Model::new();
    for op in ops {
        let before: Vec<Status> = model.tasks.iter().map(|t| t.status).collect();
        apply(&dir, &mut model, op)?;
        check(&dir, &model)?;
        for (k, t) in model.tasks.iter().enumerate() {
            match before.get(k) {
                None => effect(format!("new -> {:?}", t.status)),
                Some(&s) if s != t.status => effect(format!("{s:?} -> {:?}", t.status)),
                Some(_) => {}
            }
        }
    }
    // Every claim token ever issued is distinct.
    let mut tokens: Vec<&String> = model.tasks.iter().flat_map(|t| t.old_tokens.iter().chain(&t.token)).collect();
    let n = tokens.len();
    tokens.sort();
    tokens.dedup();
    prop_assert_eq!(tokens.len(), n, "a claim token was issued twice");
    Ok(())
}

#[test]
fn the_task_store_behaves_like_the_model() {
    const KINDS: &[&str] = &[
        "new -> Pending",
        "new -> Blocked",
        "new -> Failed",
        "Blocked -> Pending",
        "Blocked -> Failed",
        "Blocked -> Cancelled",
        "Pending -> Claimed",
        "Pending -> Cancelled",
        "Claimed -> Pending",
        "Claimed -> Completed",
        "Claimed -> Failed",
        "Claimed -> Cancelled",
        "claim lost",
        "claim race",
        "complete race",
        "requeue expired",
        "requeue agent",
        "leave",
        "join",
        "bad submit",
        "wait returns",
        "wait times out",
    ];
    common::run_until_covered(file!(), KINDS, prop::collection::vec(op(), 1..50), |ops| run(&ops));
}
