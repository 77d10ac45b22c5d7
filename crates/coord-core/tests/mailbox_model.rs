//! The mailboxes as a state machine, checked against a small in-memory model.
//!
//! Each case runs a generated sequence of operations (send, claim, a race of two
//! claimers on one mailbox, ack, release, requeue with a maximum of deliveries,
//! broadcast, an agent leaving and joining again) on a real session directory and on
//! the model, and after every operation compares what is queued in each mailbox (in
//! delivery order: priority, then send order), in flight, acknowledged and dead, with
//! `count` and with the mailbox directories themselves, where every message must be in
//! exactly one place.
//!
//! Left out: waiting (`Waiter`), batch sends, bad files, and visibility timeouts other
//! than "everything is old enough" and "nothing is" (they need a controllable clock).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use coord_core::layout::{Base, SessionDir};
use coord_core::mailbox::{self, Broadcast, Counts, Message, Outgoing};
use coord_core::registry::{self, Registration};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::TestCaseError;
use serde_json::{Value, json};

use common::{effect, fail, ok};

const T: Duration = Duration::from_secs(20);

/// The registered agents.
const AGENTS: [&str; 3] = ["a0", "a1", "a2"];
/// The mailboxes: the agents', and that of `boss`, a sender that is never registered
/// (its mailbox appears when an `ack` message is sent back to it).
const BOXES: [&str; 4] = ["a0", "a1", "a2", "boss"];
/// A recipient that never registered.
const GHOST: &str = "ghost";

/// Which message an ack or release names.
#[derive(Debug, Clone)]
struct Pick {
    /// Among the mailbox's in-flight messages (among all messages when it has none).
    in_flight: bool,
    at: Index,
}

#[derive(Debug, Clone, Copy)]
enum Age {
    /// `requeue`.
    Any,
    /// `requeue_older_than` zero: every in-flight message is old enough.
    Zero,
    /// `requeue_older_than` an hour: none is.
    Hour,
}

#[derive(Debug, Clone)]
enum Op {
    /// From a box's owner (`boss` included) to an agent (or, for 3, to `ghost`).
    Send {
        from: usize,
        to: usize,
        priority: i64,
        requires_ack: bool,
    },
    Claim {
        mailbox: usize,
        max: usize,
    },
    /// Two receivers claim from one agent's mailbox at the same time.
    ClaimRace {
        mailbox: usize,
        max: (usize, usize),
    },
    Ack {
        mailbox: usize,
        pick: Pick,
    },
    Release {
        mailbox: usize,
        pick: Pick,
    },
    Requeue {
        mailbox: usize,
        max_deliveries: u32,
        age: Age,
    },
    Broadcast {
        from: usize,
        priority: i64,
        requires_ack: bool,
    },
    Leave(usize),
    Join(usize),
}

fn pick() -> impl Strategy<Value = Pick> {
    (prop::bool::weighted(0.8), any::<Index>()).prop_map(|(in_flight, at)| Pick { in_flight, at })
}

fn op() -> impl Strategy<Value = Op> {
    let agent = 0..AGENTS.len();
    let mailbox = 0..BOXES.len();
    let priority = prop_oneof![3 => Just(0i64), 1 => Just(1), 1 => Just(-1)];
    let age = prop_oneof![3 => Just(Age::Any), 1 => Just(Age::Zero), 1 => Just(Age::Hour)];
    prop_oneof![
        8 => (mailbox.clone(), 0..4usize, priority.clone(), prop::bool::weighted(0.3))
            .prop_map(|(from, to, priority, requires_ack)| Op::Send { from, to, priority, requires_ack }),
        6 => (mailbox.clone(), 1..=3usize).prop_map(|(mailbox, max)| Op::Claim { mailbox, max }),
        2 => (agent.clone(), 1..=3usize, 1..=3usize).prop_map(|(mailbox, a, b)| Op::ClaimRace { mailbox, max: (a, b) }),
        4 => (mailbox.clone(), pick()).prop_map(|(mailbox, pick)| Op::Ack { mailbox, pick }),
        2 => (mailbox.clone(), pick()).prop_map(|(mailbox, pick)| Op::Release { mailbox, pick }),
        3 => (mailbox.clone(), 1..=3u32, age)
            .prop_map(|(mailbox, max_deliveries, age)| Op::Requeue { mailbox, max_deliveries, age }),
        2 => (mailbox, priority, prop::bool::weighted(0.3))
            .prop_map(|(from, priority, requires_ack)| Op::Broadcast { from, priority, requires_ack }),
        1 => agent.clone().prop_map(Op::Leave),
        1 => agent.prop_map(Op::Join),
    ]
}

// ---------------------------------------------------------------------------------------
// The model

/// One message in one mailbox (a broadcast has a copy in each recipient's).
#[derive(Debug, Clone)]
struct MMsg {
    id: String,
    from: String,
    to: String,
    msg_type: String,
    payload: Value,
    priority: i64,
    requires_ack: bool,
    delivery_count: u32,
    /// Send order (the same for every copy of a broadcast).
    order: u64,
    /// The record as last claimed, for a release.
    claimed: Option<Message>,
}

impl MMsg {
    /// The record to hand to `release`: as claimed, or rebuilt from the model.
    fn record(&self) -> Message {
        self.claimed.clone().unwrap_or_else(|| Message {
            id: self.id.clone(),
            from: self.from.clone(),
            to: self.to.clone(),
            msg_type: self.msg_type.clone(),
            timestamp: String::new(),
            payload: self.payload.clone(),
            requires_ack: self.requires_ack,
            priority: self.priority,
            delivery_count: self.delivery_count,
            host: String::new(),
            dead_reason: None,
            dead_at: None,
            extra: Default::default(),
        })
    }
}

#[derive(Debug, Clone, Default)]
struct MBox {
    exists: bool,
    /// In delivery order.
    queued: Vec<MMsg>,
    in_flight: BTreeMap<String, MMsg>,
    done: BTreeMap<String, MMsg>,
    dead: BTreeMap<String, MMsg>,
}

impl MBox {
    fn enqueue(&mut self, m: MMsg) {
        self.queued.push(m);
        self.queued.sort_by_key(|m| (std::cmp::Reverse(m.priority), m.order));
    }

    /// Where a message is in this mailbox, if anywhere.
    fn find(&self, id: &str) -> Option<(&'static str, &MMsg)> {
        if let Some(m) = self.queued.iter().find(|m| m.id == id) {
            return Some(("queued", m));
        }
        for (place, map) in [("in flight", &self.in_flight), ("done", &self.done), ("dead", &self.dead)] {
            if let Some(m) = map.get(id) {
                return Some((place, m));
            }
        }
        None
    }
}

#[derive(Debug, Clone)]
struct Model {
    boxes: [MBox; 4],
    active: [bool; 3],
    sent: u64,
    /// Every message id ever stored, with a mailbox holding it.
    ids: Vec<(usize, String)>,
}

impl Model {
    fn new() -> Model {
        let mut boxes: [MBox; 4] = Default::default();
        for b in boxes.iter_mut().take(AGENTS.len()) {
            b.exists = true;
        }
        Model { boxes, active: [true; 3], sent: 0, ids: Vec::new() }
    }

    fn next_order(&mut self) -> u64 {
        self.sent += 1;
        self.sent
    }

    /// The message an ack or release names: `(mailbox holding a copy, id)`.
    fn pick(&self, mailbox: usize, p: &Pick) -> Option<(usize, String)> {
        let flying: Vec<&String> = self.boxes[mailbox].in_flight.keys().collect();
        if p.in_flight && !flying.is_empty() {
            return Some((mailbox, flying[p.at.index(flying.len())].clone()));
        }
        (!self.ids.is_empty()).then(|| self.ids[p.at.index(self.ids.len())].clone())
    }
}

// ---------------------------------------------------------------------------------------
// Running a case

fn refused<T: std::fmt::Debug>(r: coord_core::Result<T>, what: &str) -> Result<(), TestCaseError> {
    match r {
        Ok(v) => Err(fail(format!("{what}: expected a refusal, got {v:?}"))),
        Err(e) => {
            prop_assert_eq!(e.exit_code(), 1, "{}: {}", what, e);
            effect(format!("refused {}", what.split(' ').next().unwrap_or(what)));
            Ok(())
        }
    }
}

fn register(dir: &SessionDir, a: usize) -> coord_core::Result<()> {
    let req = Registration {
        id: AGENTS[a].to_string(),
        agent_type: "worker".to_string(),
        capabilities: Vec::new(),
        pid: std::process::id(),
        replace: false,
    };
    registry::register(dir, &req, T).map(drop)
}

/// A claimed (or stored) record is the model's message.
fn same(got: &Message, want: &MMsg, what: &str) -> Result<(), TestCaseError> {
    prop_assert_eq!(&got.id, &want.id, "{}", what);
    prop_assert_eq!(
        (&got.from, &got.to, &got.msg_type, &got.payload, got.priority, got.requires_ack, got.delivery_count),
        (&want.from, &want.to, &want.msg_type, &want.payload, want.priority, want.requires_ack, want.delivery_count),
        "{}: {}",
        what,
        want.id
    );
    Ok(())
}

/// Moves the claimed messages from the front of the model's queue into flight, checking
/// they are what the store handed out.
fn take(model: &mut Model, mailbox: usize, got: &[Message], what: &str) -> Result<(), TestCaseError> {
    let b = &mut model.boxes[mailbox];
    for m in got {
        let k =
            b.queued.iter().position(|q| q.id == m.id).ok_or_else(|| fail(format!("{what}: {} not queued", m.id)))?;
        let mut q = b.queued.remove(k);
        same(m, &q, what)?;
        q.claimed = Some(m.clone());
        b.in_flight.insert(q.id.clone(), q);
    }
    Ok(())
}

fn apply(dir: &SessionDir, model: &mut Model, op: &Op) -> Result<(), TestCaseError> {
    match *op {
        Op::Send { from, to, priority, requires_ack } => {
            let order = model.sent + 1;
            let out = Outgoing {
                from: BOXES[from].to_string(),
                to: AGENTS.get(to).copied().unwrap_or(GHOST).to_string(),
                msg_type: "job".to_string(),
                payload: json!({"n": order}),
                priority,
                requires_ack,
            };
            let r = mailbox::send(dir, out.clone());
            if to >= AGENTS.len() || !model.active[to] {
                return refused(r, &format!("send to {}", out.to));
            }
            let m = ok(r, "send")?;
            let mm = MMsg {
                id: m.id.clone(),
                from: out.from,
                to: out.to,
                msg_type: out.msg_type,
                payload: out.payload,
                priority,
                requires_ack,
                delivery_count: 0,
                order: model.next_order(),
                claimed: None,
            };
            same(&m, &mm, "send")?;
            model.boxes[to].enqueue(mm);
            model.ids.push((to, m.id));
        }
        Op::Claim { mailbox, max } => {
            let r = mailbox::claim(dir, BOXES[mailbox], max);
            if !model.boxes[mailbox].exists {
                return refused(r, "claim from a mailbox never created");
            }
            let got = ok(r, "claim")?;
            let want: Vec<&str> = model.boxes[mailbox].queued.iter().take(max).map(|m| m.id.as_str()).collect();
            let ids: Vec<&str> = got.iter().map(|m| m.id.as_str()).collect();
            prop_assert_eq!(ids, want, "claim {} from {} (delivery order)", max, BOXES[mailbox]);
            take(model, mailbox, &got, "claim")?;
            effect(if got.is_empty() { "claim nothing" } else { "claim" });
        }
        Op::ClaimRace { mailbox, max: (m1, m2) } => {
            let (r1, r2) = std::thread::scope(|s| {
                let one = s.spawn(|| mailbox::claim(dir, BOXES[mailbox], m1));
                let two = s.spawn(|| mailbox::claim(dir, BOXES[mailbox], m2));
                (one.join().expect("receiver one"), two.join().expect("receiver two"))
            });
            let (g1, g2) = (ok(r1, "claim race")?, ok(r2, "claim race")?);
            let queue: Vec<&str> = model.boxes[mailbox].queued.iter().map(|m| m.id.as_str()).collect();
            // Disjoint, each in delivery order, and together the head of the queue.
            let position = |m: &Message| queue.iter().position(|q| *q == m.id);
            for g in [&g1, &g2] {
                let at: Vec<Option<usize>> = g.iter().map(position).collect();
                prop_assert!(at.iter().all(Option::is_some) && at.is_sorted(), "claim race: out of order {:?}", at);
            }
            let mut all: Vec<usize> = g1.iter().chain(&g2).filter_map(position).collect();
            all.sort_unstable();
            let n = (m1 + m2).min(queue.len());
            prop_assert_eq!(all, (0..n).collect::<Vec<_>>(), "claim race: {:?} / {:?}", g1, g2);
            take(model, mailbox, &g1, "claim race")?;
            take(model, mailbox, &g2, "claim race")?;
            if !g1.is_empty() && !g2.is_empty() {
                effect("claim race");
            }
        }
        Op::Ack { mailbox, ref pick } => {
            let id = match model.pick(mailbox, pick) {
                Some((_, id)) => id,
                None => "msg-0000000000000000-0000-none-1-00000000".to_string(),
            };
            let r = mailbox::ack(dir, BOXES[mailbox], &id);
            match model.boxes[mailbox].find(&id).map(|(place, m)| (place, m.clone())) {
                Some(("in flight", m)) => {
                    let report = ok(r, "ack")?;
                    prop_assert!(!report.already_acked, "ack of {} in flight", id);
                    prop_assert_eq!(report.ack_id.is_some(), m.requires_ack, "ack message for {}", id);
                    let b = &mut model.boxes[mailbox];
                    let m = b.in_flight.remove(&id).expect("in flight");
                    if let Some(ack_id) = report.ack_id {
                        let back = BOXES.iter().position(|n| *n == m.from).expect("senders are boxes");
                        let order = model.next_order();
                        let back_msg = MMsg {
                            id: ack_id.clone(),
                            from: BOXES[mailbox].to_string(),
                            to: m.from.clone(),
                            msg_type: mailbox::ACK_TYPE.to_string(),
                            payload: json!({"message_id": id, "type": m.msg_type}),
                            priority: m.priority,
                            requires_ack: false,
                            delivery_count: 0,
                            order,
                            claimed: None,
                        };
                        model.boxes[back].exists = true;
                        model.boxes[back].enqueue(back_msg);
                        model.ids.push((back, ack_id));
                        effect("ack sends an ack");
                    }
                    model.boxes[mailbox].done.insert(id, m);
                    effect("ack");
                }
                Some(("done", _)) => {
                    let report = ok(r, "ack again")?;
                    prop_assert!(report.already_acked && report.ack_id.is_none(), "ack again: {:?}", report);
                    effect("ack again");
                }
                _ => refused(r, "ack of a message not in flight")?,
            }
        }
        Op::Release { mailbox, ref pick } => {
            let Some((holder, id)) = model.pick(mailbox, pick) else { return Ok(()) };
            // A broadcast has a copy in each recipient's mailbox: the releaser's own, if any.
            let (place, m) = model.boxes[mailbox]
                .find(&id)
                .or_else(|| model.boxes[holder].find(&id))
                .map(|(p, m)| (p, m.clone()))
                .expect("picked from the model");
            let r = mailbox::release(dir, BOXES[mailbox], &m.record());
            if model.boxes[mailbox].in_flight.contains_key(&id) {
                ok(r, "release")?;
                let b = &mut model.boxes[mailbox];
                let m = b.in_flight.remove(&id).expect("in flight");
                b.enqueue(m);
                effect("release");
            } else {
                refused(r, &format!("release of {id} ({place}, {}'s copy) by {}", m.to, BOXES[mailbox]))?;
            }
        }
        Op::Requeue { mailbox, max_deliveries, age } => {
            let r = match age {
                Age::Any => mailbox::requeue(dir, BOXES[mailbox], max_deliveries),
                Age::Zero => mailbox::requeue_older_than(dir, BOXES[mailbox], max_deliveries, Some(Duration::ZERO)),
                Age::Hour => {
                    mailbox::requeue_older_than(dir, BOXES[mailbox], max_deliveries, Some(Duration::from_secs(3600)))
                }
            };
            if !model.boxes[mailbox].exists {
                return refused(r, "requeue of a mailbox never created");
            }
            let report = ok(r, "requeue")?;
            let b = &mut model.boxes[mailbox];
            let (mut requeued, mut dead) = (0, 0);
            if !matches!(age, Age::Hour) {
                for (id, mut m) in std::mem::take(&mut b.in_flight) {
                    m.delivery_count += 1;
                    m.claimed = None;
                    if m.delivery_count >= max_deliveries {
                        dead += 1;
                        b.dead.insert(id, m);
                    } else {
                        requeued += 1;
                        b.enqueue(m);
                    }
                }
            }
            let want = mailbox::RequeueReport { agent: BOXES[mailbox].to_string(), requeued, dead, bad: 0 };
            prop_assert_eq!(report, want, "requeue ({:?})", age);
            if dead > 0 {
                effect("dead letter");
            }
            if requeued > 0 {
                effect("requeue");
            }
        }
        Op::Broadcast { from, priority, requires_ack } => {
            let b = Broadcast {
                from: BOXES[from].to_string(),
                msg_type: "news".to_string(),
                payload: json!({"n": model.sent + 1}),
                priority,
                requires_ack,
            };
            let report = ok(mailbox::broadcast(dir, b.clone()), "broadcast")?;
            let want: Vec<String> =
                (0..AGENTS.len()).filter(|&a| model.active[a] && a != from).map(|a| AGENTS[a].to_string()).collect();
            prop_assert_eq!(&report.recipients, &want, "broadcast from {}", b.from);
            let order = model.next_order();
            for r in &want {
                let a = AGENTS.iter().position(|x| x == r).expect("an agent");
                model.boxes[a].enqueue(MMsg {
                    id: report.id.clone(),
                    from: b.from.clone(),
                    to: mailbox::BROADCAST_TO.to_string(),
                    msg_type: b.msg_type.clone(),
                    payload: b.payload.clone(),
                    priority,
                    requires_ack,
                    delivery_count: 0,
                    order,
                    claimed: None,
                });
                model.ids.push((a, report.id.clone()));
            }
            if want.len() > 1 {
                effect("broadcast");
            }
        }
        Op::Leave(a) => {
            ok(registry::unregister(dir, AGENTS[a], T), "unregister")?;
            model.active[a] = false;
            effect("leave");
        }
        Op::Join(a) => {
            let r = register(dir, a);
            if model.active[a] {
                return refused(r, "register an active agent");
            }
            ok(r, "register again")?;
            model.active[a] = true;
            effect("join");
        }
    }
    Ok(())
}

/// The message files in `dir` (the ids), sorted.
fn ids_in(dir: &Path) -> Result<Vec<String>, TestCaseError> {
    let mut out = Vec::new();
    // `done/` and `dead/` are made by the first message moved into them.
    if !dir.exists() {
        return Ok(out);
    }
    for e in std::fs::read_dir(dir).map_err(fail)? {
        let name = e.map_err(fail)?.file_name().to_string_lossy().into_owned();
        let id = name.strip_suffix(".json").ok_or_else(|| fail(format!("{}: stray file {name}", dir.display())))?;
        out.push(id.to_string());
    }
    out.sort();
    Ok(out)
}

/// The queued message files under `new/`, in the order a receiver walks them.
fn queued_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) -> Result<(), TestCaseError> {
    let mut entries: Vec<std::fs::DirEntry> =
        std::fs::read_dir(dir).map_err(fail)?.collect::<Result<_, _>>().map_err(fail)?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        if e.file_type().map_err(fail)?.is_dir() {
            queued_files(&e.path(), out)?;
        } else {
            out.push(e.path());
        }
    }
    Ok(())
}

fn read(path: &Path) -> Result<Message, TestCaseError> {
    serde_json::from_slice(&std::fs::read(path).map_err(fail)?).map_err(|e| fail(format!("{}: {e}", path.display())))
}

/// Compares every mailbox with the model.
fn check(dir: &SessionDir, model: &Model) -> Result<(), TestCaseError> {
    for (k, b) in model.boxes.iter().enumerate() {
        let name = BOXES[k];
        if !b.exists {
            prop_assert!(!dir.mailbox_dir(name).exists(), "{} has a mailbox", name);
            prop_assert!(mailbox::count(dir, name).is_err(), "count of {} without a mailbox", name);
            continue;
        }
        let counts = ok(mailbox::count(dir, name), "count")?;
        let want = Counts {
            agent: name.to_string(),
            queued: b.queued.len(),
            in_flight: b.in_flight.len(),
            acked: b.done.len(),
            dead: b.dead.len(),
            bad: 0,
        };
        prop_assert_eq!(counts, want, "count of {}", name);
        let mut files = Vec::new();
        queued_files(&dir.mailbox_new(name), &mut files)?;
        prop_assert_eq!(files.len(), b.queued.len(), "queued files of {}", name);
        for (f, m) in files.iter().zip(&b.queued) {
            same(&read(f)?, m, &format!("queue of {name} (delivery order)"))?;
        }
        let cur = ids_in(&dir.mailbox_cur(name))?;
        prop_assert_eq!(&cur, &b.in_flight.keys().cloned().collect::<Vec<_>>(), "in flight in {}", name);
        let done = ids_in(&dir.mailbox_done(name))?;
        prop_assert_eq!(&done, &b.done.keys().cloned().collect::<Vec<_>>(), "done in {}", name);
        let dead = ids_in(&dir.mailbox_dead(name))?;
        prop_assert_eq!(&dead, &b.dead.keys().cloned().collect::<Vec<_>>(), "dead in {}", name);
        for (id, m) in &b.dead {
            let d = read(&dir.dead_message(name, id))?;
            same(&d, m, "dead letter")?;
            prop_assert!(d.dead_reason.is_some() && d.dead_at.is_some(), "dead letter {} without a reason", id);
        }
        // Exactly one place per message: no id is both queued and in flight, done or dead.
        let mut places = BTreeSet::new();
        let queued: Vec<String> = b.queued.iter().map(|m| m.id.clone()).collect();
        for id in queued.iter().chain(&cur).chain(&done).chain(&dead) {
            prop_assert!(places.insert(id.clone()), "{} is in two places in {}", id, name);
        }
        let tmp: Vec<String> = std::fs::read_dir(dir.mailbox_tmp(name))
            .map_err(fail)?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<Result<_, _>>()
            .map_err(fail)?;
        prop_assert!(tmp.is_empty(), "left in {}'s tmp/: {:?}", name, tmp);
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
        apply(&dir, &mut model, op)?;
        check(&dir, &model)?;
    }
    Ok(())
}

#[test]
fn the_mailboxes_behave_like_the_model() {
    const KINDS: &[&str] = &[
        "claim",
        "claim nothing",
        "claim race",
        "ack",
        "ack again",
        "ack sends an ack",
        "release",
        "requeue",
        "dead letter",
        "broadcast",
        "leave",
        "join",
        "refused send",
        "refused ack",
        "refused release",
        "refused claim",
    ];
    common::run_until_covered(file!(), KINDS, prop::collection::vec(op(), 1..50), |ops| run(&ops));
}
