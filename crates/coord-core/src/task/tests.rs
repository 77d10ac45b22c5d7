//! Unit tests of the task queue's state machine against a real session directory.

use std::time::{Duration, SystemTime};

use serde_json::{Value, json};

use super::store::{finishing_file, locate, try_task_lock};
use super::*;
use crate::layout::{Base, SessionDir};
use crate::{fsio, registry, time};

const T: Duration = Duration::from_secs(5);

fn session() -> (tempfile::TempDir, SessionDir) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let base = Base::new(tmp.path().join("base"));
    let dir = crate::session::init(&base, "unit").expect("init");
    (tmp, dir)
}

fn agent(dir: &SessionDir, id: &str, caps: &[&str]) {
    let req = registry::Registration {
        id: id.to_string(),
        agent_type: "worker".to_string(),
        capabilities: caps.iter().map(|c| c.to_string()).collect(),
        pid: std::process::id(),
        replace: false,
    };
    registry::register(dir, &req, T).expect("register");
}

fn task(id: &str) -> NewTask {
    NewTask { id: Some(id.to_string()), ..Default::default() }
}

#[test]
fn the_life_of_a_task() {
    let (_t, dir) = session();
    agent(&dir, "a", &[]);
    submit(&dir, vec![NewTask { payload: json!({"n": 1}), ..task("x") }], T).expect("submit");
    assert_eq!(show(&dir, "x").expect("show").status, "pending");
    let c = claim(&dir, "a", &ClaimOptions::default(), T).expect("claim").expect("some");
    assert_eq!((c.status.as_str(), c.attempts), ("claimed", 1));
    assert!(claim(&dir, "a", &ClaimOptions::default(), T).expect("claim").is_none());
    let holder = Holder { agent: None, token: c.claim_token.clone() };
    let done = complete(&dir, "x", &holder, json!(42), T).expect("complete");
    assert_eq!(done.results, Some(json!(42)));
    assert!(try_task_lock(&dir, "x").expect("lock").is_some(), "a final task's lock is free");
    assert!(!finishing_file(&dir, "x").exists(), "the follow-up is done");
    assert_eq!(std::fs::read_dir(dir.tasks_status_dir("finishing")).expect("ls").count(), 0);
    let err = complete(&dir, "x", &holder, json!(0), T).expect_err("twice");
    assert!(err.to_string().contains("claim lost"), "{err}");
    let p = count(&list_all(&dir).expect("list"));
    assert_eq!((p.total, p.completed, p.operation_progress), (1, 1, 100));
    let log = std::fs::read_to_string(dir.result_log("a")).expect("results log");
    assert_eq!(log.lines().count(), 1, "{log}");
    let results: Value = serde_json::from_str(log.trim_end()).expect("one seed-shaped document");
    assert_eq!(results["tasks"][0]["id"], "x");
    assert_eq!(results["agent"], "a");
    let r = crate::results::read_result_log(&dir.result_log("a")).expect("aggregate reads it");
    assert_eq!(r.tasks.len(), 1);
}

#[test]
fn fencing_by_token_and_agent() {
    let (_t, dir) = session();
    agent(&dir, "a", &[]);
    agent(&dir, "b", &[]);
    submit(&dir, vec![task("x")], T).expect("submit");
    let c = claim(&dir, "a", &ClaimOptions::default(), T).expect("claim").expect("some");
    let wrong = Holder { agent: Some("b".into()), token: None };
    assert!(fail(&dir, "x", &wrong, "e", T).is_err());
    let stale = Holder { agent: Some("a".into()), token: Some("0000000000000000".into()) };
    assert!(release(&dir, "x", &stale, T).is_err());
    assert_eq!(show(&dir, "x").expect("show").claim_token, c.claim_token, "nothing changed");
    let r = release(&dir, "x", &Holder { agent: Some("a".into()), token: c.claim_token }, T).expect("release");
    assert_eq!((r.status.as_str(), r.attempts), ("pending", 0));
}

#[test]
fn lapsed_leases_requeue_and_exhausted_attempts_fail() {
    let (_t, dir) = session();
    agent(&dir, "a", &[]);
    submit(&dir, vec![NewTask { max_attempts: Some(1), ..task("x") }, task("y")], T).expect("submit");
    let opts = ClaimOptions { lease: Duration::ZERO, assigned_by: None };
    claim(&dir, "a", &opts, T).expect("claim").expect("x");
    claim(&dir, "a", &opts, T).expect("claim").expect("y");
    std::thread::sleep(Duration::from_millis(20));
    let r = requeue_expired(&dir, T).expect("requeue");
    assert_eq!((r.requeued, r.failed), (1, 1));
    let x = show(&dir, "x").expect("x");
    assert_eq!(x.status, "failed");
    assert!(x.reason.as_deref().unwrap_or_default().contains("lease expired"));
    assert_eq!(show(&dir, "y").expect("y").status, "pending");
    let r = requeue_agent(&dir, "a", "dead", T).expect("requeue agent");
    assert_eq!(r, RequeueReport::default());
}

#[test]
fn submit_checks_the_whole_batch_first() {
    let (_t, dir) = session();
    let cyc = vec![
        NewTask { dependencies: vec!["b".into()], ..task("a") },
        NewTask { dependencies: vec!["c".into()], ..task("b") },
        NewTask { dependencies: vec!["a".into()], ..task("c") },
        task("free"),
    ];
    let err = submit(&dir, cyc, T).expect_err("cycle");
    assert_eq!(err.exit_code(), 2);
    assert!(err.to_string().contains("\"a\", \"b\", \"c\""), "{err}");
    assert!(list_all(&dir).expect("list").is_empty(), "nothing was submitted");
    assert_eq!(submit(&dir, vec![task("d"), task("d")], T).expect_err("dup").exit_code(), 2);
    submit(&dir, vec![task("d")], T).expect("d");
    assert_eq!(submit(&dir, vec![task("e"), task("d")], T).expect_err("exists").exit_code(), 1);
    assert!(show(&dir, "e").is_err());
}

/// A batch already in dependency order keeps its line order: its `seq`s (and so the
/// claim order among equal priorities) follow the lines, not a depth-first walk.
#[test]
fn a_batch_in_dependency_order_keeps_its_order() {
    let (_t, dir) = session();
    agent(&dir, "a", &[]);
    let batch = vec![task("p"), task("q"), NewTask { dependencies: vec!["p".into()], ..task("c") }, task("r")];
    let seqs: Vec<(String, u64)> = submit(&dir, batch, T).expect("submit").into_iter().map(|t| (t.id, t.seq)).collect();
    let want: Vec<(String, u64)> = [("p", 1), ("q", 2), ("c", 3), ("r", 4)].map(|(i, s)| (i.to_string(), s)).into();
    assert_eq!(seqs, want);
    // Out of order, a dependency still goes first, and the rest keep their order.
    let batch = vec![NewTask { dependencies: vec!["y".into()], ..task("x") }, task("w"), task("y")];
    let ids: Vec<String> = submit(&dir, batch, T).expect("submit").into_iter().map(|t| t.id).collect();
    assert_eq!(ids, ["w", "y", "x"]);
    let p = claim(&dir, "a", &ClaimOptions::default(), T).expect("claim").expect("p");
    complete(&dir, &p.id, &Holder::default(), Value::Null, T).expect("complete p");
    let order: Vec<String> = list(&dir, Status::Pending).expect("pending").into_iter().map(|t| t.id).collect();
    assert_eq!(order, ["q", "c", "r", "w", "y"]);
}

/// `operation_progress` is round(completed / total * 100) with a half rounded up, also
/// where the division is inexact in floating point.
#[test]
fn progress_rounds_a_half_up() {
    let tasks = |done: u64, total: u64| -> Vec<Task> {
        (0..total)
            .map(|i| {
                let status = if i < done { "completed" } else { "pending" };
                let t = json!({"id": format!("t{i}"), "status": status, "created_at": "2026-01-01T00:00:00.000Z", "seq": i});
                serde_json::from_value(t).expect("a task")
            })
            .collect()
    };
    for (done, total, percent) in [(23, 40, 58), (1, 8, 13), (1, 3, 33), (2, 3, 67), (0, 5, 0), (5, 5, 100)] {
        assert_eq!(count(&tasks(done, total)).operation_progress, percent, "{done} of {total}");
    }
    assert_eq!(count(&[]).operation_progress, 0);
}

#[test]
fn dependencies_release_in_order() {
    let (_t, dir) = session();
    agent(&dir, "a", &[]);
    submit(&dir, vec![NewTask { dependencies: vec!["p".into()], ..task("c") }, task("p")], T).expect("submit");
    assert_eq!(show(&dir, "c").expect("c").status, "blocked");
    let p = claim(&dir, "a", &ClaimOptions::default(), T).expect("claim").expect("p");
    assert_eq!(p.id, "p");
    complete(&dir, "p", &Holder::default(), Value::Null, T).expect("complete");
    assert_eq!(show(&dir, "c").expect("c").status, "pending");
}

#[test]
fn claims_follow_priority_then_age_across_chunks_and_blocks() {
    let (_t, dir) = session();
    agent(&dir, "a", &[]);
    let n = index::BLOCK as usize + 10;
    let mut batch: Vec<NewTask> = (0..n).map(|i| task(&format!("t{i}"))).collect();
    batch.push(NewTask { priority: -1, ..task("last") });
    batch.push(NewTask { priority: 3, ..task("first") });
    submit(&dir, batch, T).expect("submit");
    let mut order = Vec::new();
    while let Some(t) = claim(&dir, "a", &ClaimOptions::default(), Duration::from_secs(30)).expect("claim") {
        order.push(t.id);
    }
    let expected: Vec<String> = std::iter::once("first".to_string())
        .chain((0..n).map(|i| format!("t{i}")))
        .chain(std::iter::once("last".to_string()))
        .collect();
    assert_eq!(order, expected);
    // Whoever empties a chunk, block or priority directory removes it.
    let route = dir.tasks_pending_dir().join("~+");
    assert_eq!(index::list_names(&route).expect("route"), Vec::<String>::new());
}

/// The states a completer killed mid-transition leaves (the final content written in
/// `claimed/`, or moved to `done/`, with the follow-up owed) are finished by the next
/// pass: the result is kept, the child released, the results entry written once.
#[test]
fn an_interrupted_completion_is_finished_by_the_next_pass() {
    for moved in [false, true] {
        let (_t, dir) = session();
        agent(&dir, "a", &[]);
        submit(&dir, vec![task("p"), NewTask { dependencies: vec!["p".into()], ..task("c") }], T).expect("submit");
        let mut t = claim(&dir, "a", &ClaimOptions::default(), T).expect("claim").expect("p");
        // What complete() publishes before it is killed.
        t.status = Status::Completed.name().to_string();
        t.completed_at = Some(time::now_rfc3339());
        t.results = Some(json!({"answer": 42}));
        t.clear_claim();
        let claimed = status_file(&dir, Status::Claimed, "p");
        fsio::ensure_dir(&dir.tasks_status_dir("finishing")).expect("dir");
        std::fs::File::create(finishing_file(&dir, "p")).expect("mark");
        fsio::write_json(&claimed, &t).expect("final content");
        if moved {
            std::fs::rename(&claimed, status_file(&dir, Status::Completed, "p")).expect("rename");
        }
        assert_eq!(show(&dir, "c").expect("c").status, "blocked");
        let r = requeue_expired(&dir, T).expect("requeue");
        assert_eq!(r, RequeueReport::default(), "nothing requeued (moved: {moved})");
        let p = show(&dir, "p").expect("p");
        assert_eq!((p.status.as_str(), p.results.clone()), ("completed", Some(json!({"answer": 42}))));
        assert_eq!(show(&dir, "c").expect("c").status, "pending", "the child is released (moved: {moved})");
        assert!(!finishing_file(&dir, "p").exists() && try_task_lock(&dir, "p").expect("lock").is_some());
        // Running the follow-up again does not append the results entry twice.
        std::fs::File::create(finishing_file(&dir, "p")).expect("mark again");
        wait(&dir, &["p".to_string()], Some(T)).expect("wait");
        let results = crate::results::read_result_log(&dir.result_log("a")).expect("results");
        assert_eq!(results.tasks.len(), 1);
        assert_eq!(registry::show(&dir, "a").expect("a").assigned_tasks, Vec::<String>::new());
    }
}

/// A killed process that had only marked the follow-up, not yet written the final
/// content, changed nothing: the claim stays with its holder.
#[test]
fn a_mark_without_final_content_leaves_the_claim() {
    let (_t, dir) = session();
    agent(&dir, "a", &[]);
    submit(&dir, vec![task("p")], T).expect("submit");
    let t = claim(&dir, "a", &ClaimOptions::default(), T).expect("claim").expect("p");
    fsio::ensure_dir(&dir.tasks_status_dir("finishing")).expect("dir");
    std::fs::File::create(finishing_file(&dir, "p")).expect("mark");
    progress(&dir, T).expect("progress");
    assert!(!finishing_file(&dir, "p").exists());
    assert_eq!(show(&dir, "p").expect("p").claim_token, t.claim_token);
    complete(&dir, "p", &Holder { agent: None, token: t.claim_token }, json!(1), T).expect("complete");
}

/// A claim that cannot be requeued (here its lock stays busy) is logged and skipped; the
/// pass requeues the others.
#[test]
fn a_claim_that_cannot_be_requeued_does_not_stop_the_pass() {
    let (_t, dir) = session();
    agent(&dir, "a", &[]);
    submit(&dir, vec![task("x"), task("y")], T).expect("submit");
    let opts = ClaimOptions { lease: Duration::ZERO, assigned_by: None };
    claim(&dir, "a", &opts, T).expect("claim").expect("x");
    claim(&dir, "a", &opts, T).expect("claim").expect("y");
    std::thread::sleep(Duration::from_millis(20));
    let busy = task_lock(&dir, "x", T).expect("hold x");
    let r = requeue_expired(&dir, Duration::from_millis(100)).expect("the pass goes on");
    assert_eq!(r.tasks, vec!["y".to_string()]);
    drop(busy);
    assert_eq!(requeue_expired(&dir, T).expect("requeue").tasks, vec!["x".to_string()]);
}

#[test]
fn a_worker_beats_often_enough_for_healthmon_whatever_its_lease() {
    use super::work::{MAX_BEAT_EVERY, beat_every};
    assert_eq!(beat_every(DEFAULT_LEASE), MAX_BEAT_EVERY, "a 300 s lease still beats every 10 s");
    assert_eq!(beat_every(Duration::from_millis(1500)), Duration::from_millis(500));
    assert_eq!(beat_every(Duration::ZERO), Duration::from_millis(100));
}

#[test]
fn submission_numbers_stop_at_the_last_the_index_can_name() {
    let (_t, dir) = session();
    submit(&dir, vec![task("first")], T).expect("creates the store");
    for (at, ok) in [(u64::MAX, false), (index::MAX_SEQ + 1, false), (index::MAX_SEQ, true)] {
        std::fs::write(dir.task_seq_file(), format!("{at}\n")).expect("plant tasks/seq");
        let id = format!("t{ok}");
        match submit(&dir, vec![task(&id)], T) {
            Ok(done) => {
                assert!(ok, "submitted at {at}");
                assert_eq!(done[0].seq, index::MAX_SEQ);
                assert_eq!(list(&dir, Status::Pending).expect("list").len(), 2, "the last number is claimable");
            }
            Err(e) => {
                assert!(!ok, "refused at {at}: {e}");
                assert_eq!(e.exit_code(), 1);
                assert!(e.to_string().contains("tasks/seq"), "{e}");
                assert!(show(&dir, &id).is_err(), "nothing was submitted");
            }
        }
    }
}

#[test]
fn extreme_attempts_and_lease_lengths_in_a_record_do_not_panic() {
    let (_t, dir) = session();
    agent(&dir, "a", &[]);
    submit(&dir, vec![NewTask { max_attempts: Some(u32::MAX), ..task("x") }], T).expect("submit");
    // A pending record that already counts u32::MAX attempts.
    let (_, path) = locate(&dir, "x").expect("locate").expect("pending");
    let mut rec: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("json");
    rec["attempts"] = json!(u32::MAX);
    std::fs::write(&path, serde_json::to_vec(&rec).expect("ser")).expect("plant");
    let c = claim(&dir, "a", &ClaimOptions::default(), T).expect("claim").expect("some");
    assert_eq!(c.attempts, u32::MAX, "saturates instead of wrapping");
    // A claimed record whose lease is longer than any clock can add, with a heartbeat.
    let (_, path) = locate(&dir, "x").expect("locate").expect("claimed");
    let mut rec: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("json");
    rec["lease_seconds"] = json!(1e300);
    std::fs::write(&path, serde_json::to_vec(&rec).expect("ser")).expect("plant");
    registry::heartbeat(&dir, "a").expect("beat");
    let t = show(&dir, "x").expect("show");
    assert_eq!(lease_deadline(&dir, &t).map(|d| d > SystemTime::now()), Some(true), "the recorded expiry decides");
    assert_eq!(requeue_expired(&dir, T).expect("requeue"), RequeueReport::default());
}
