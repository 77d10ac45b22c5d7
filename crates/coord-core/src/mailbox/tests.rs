//! The mailbox's unit tests: delivery order, claims, acks, requeue and dead letters,
//! garbage, broadcast and waiting, against a real session directory.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::layout::{self, SessionDir, ensure_mailbox};
use crate::{fsio, id};

use super::send::{id_host, next_id, sent_ms};
use super::*;

#[test]
fn ids_are_valid_unique_and_sorted() {
    let ids: Vec<String> = (0..20_000).map(|_| next_id().0).collect();
    for w in ids.windows(2) {
        assert!(w[0] < w[1], "{} !< {}", w[0], w[1]);
    }
    for i in &ids[..10] {
        id::validate("message", i).expect("ids follow the id rule");
    }
    assert_eq!(id_host("build-7.example.org"), "build-7");
    assert_eq!(id_host("..."), "host");
}

fn session() -> (tempfile::TempDir, SessionDir) {
    let t = tempfile::tempdir().expect("tempdir");
    let dir = SessionDir::at(t.path().to_path_buf(), "s-1".to_string());
    for d in layout::SESSION_DIRS {
        fs::create_dir_all(t.path().join(d)).expect("mkdir");
    }
    (t, dir)
}

fn register(dir: &SessionDir, agents: &[&str]) {
    let records: Vec<Value> = agents
        .iter()
        .map(|a| serde_json::json!({"id": a, "type": "w", "status": "active", "registered_at": "2026-01-01T00:00:00Z"}))
        .collect();
    fsio::write_json(&dir.agents_json(), &records).expect("agents.json");
    for a in agents {
        fs::write(dir.heartbeat_file(a), "").expect("heartbeat");
        ensure_mailbox(dir, a).expect("mailbox");
    }
}

fn msg(to: &str, ty: &str, priority: i64) -> Outgoing {
    Outgoing {
        from: "boss".to_string(),
        to: to.to_string(),
        msg_type: ty.to_string(),
        payload: serde_json::json!({"n": ty}),
        priority,
        requires_ack: false,
    }
}

fn types(ms: &[Message]) -> Vec<&str> {
    ms.iter().map(|m| m.msg_type.as_str()).collect()
}

#[test]
fn delivery_order_is_priority_then_fifo_and_each_message_is_claimed_once() {
    let (_t, dir) = session();
    register(&dir, &["w1"]);
    for (ty, p) in [("a", 0), ("b", 0), ("urgent", 9), ("c", 0), ("low", -3), ("d", 0)] {
        send(&dir, msg("w1", ty, p)).expect("send");
    }
    assert_eq!(count(&dir, "w1").expect("count").queued, 6);
    let first = claim(&dir, "w1", 2).expect("claim");
    assert_eq!(types(&first), ["urgent", "a"]);
    let rest = claim(&dir, "w1", 10).expect("claim");
    assert_eq!(types(&rest), ["b", "c", "d", "low"]);
    assert!(claim(&dir, "w1", 1).expect("claim").is_empty());
    let c = count(&dir, "w1").expect("count");
    assert_eq!((c.queued, c.in_flight), (0, 6));
    // Drained fine shards are removed; priority and coarse time directories stay.
    fn deepest(p: &Path) -> usize {
        fs::read_dir(p).expect("ls").flatten().map(|e| 1 + deepest(&e.path())).max().unwrap_or(0)
    }
    assert_eq!(deepest(&dir.mailbox_new("w1")), 3, "new/<prio>/<t0>/<t1>/ remain, nothing below");
}

#[test]
fn unknown_recipients_are_refused_unless_allowed() {
    let (_t, dir) = session();
    register(&dir, &["w1"]);
    let err = send(&dir, msg("ghost", "x", 0)).expect_err("unknown");
    assert_eq!(err.exit_code(), 1);
    assert!(err.to_string().contains("ghost"), "{err}");
    assert_eq!(send(&dir, msg("a/b", "x", 0)).expect_err("bad id").exit_code(), 2);
    send_checked(&dir, msg("ghost", "x", 0), Recipients::Any).expect("allowed");
    assert_eq!(claim(&dir, "ghost", 1).expect("claim").len(), 1);
}

#[test]
fn ack_moves_to_done_and_answers_requires_ack() {
    let (_t, dir) = session();
    register(&dir, &["w1"]);
    let mut m = msg("w1", "job", 0);
    m.requires_ack = true;
    let sent = send(&dir, m).expect("send");
    let got = claim(&dir, "w1", 1).expect("claim");
    assert_eq!(got[0], sent);
    let r = ack(&dir, "w1", &sent.id).expect("ack");
    assert!(!r.already_acked && r.ack_id.is_some());
    assert!(dir.acked_message("w1", &sent.id).is_file());
    assert!(ack(&dir, "w1", &sent.id).expect("again").already_acked);
    let back = claim(&dir, "boss", 1).expect("ack message");
    assert_eq!(back[0].msg_type, ACK_TYPE);
    assert_eq!(back[0].payload["message_id"], sent.id.as_str());
    assert_eq!(ack(&dir, "w1", "msg-unknown").expect_err("not in flight").exit_code(), 1);
}

#[test]
fn requeue_raises_the_count_then_dead_letters_with_a_reason() {
    let (_t, dir) = session();
    register(&dir, &["w1"]);
    let sent = send(&dir, msg("w1", "job", 0)).expect("send");
    for round in 1..=2u32 {
        let got = claim(&dir, "w1", 1).expect("claim");
        assert_eq!(got[0].delivery_count, round - 1);
        let r = requeue(&dir, "w1", 3).expect("requeue");
        assert_eq!((r.requeued, r.dead), (1, 0));
    }
    claim(&dir, "w1", 1).expect("claim");
    let r = requeue(&dir, "w1", 3).expect("requeue");
    assert_eq!((r.requeued, r.dead), (0, 1));
    let dead: Message = fsio::read_json(&dir.dead_message("w1", &sent.id)).expect("dead letter");
    assert_eq!(dead.delivery_count, 3);
    assert!(dead.dead_reason.as_deref().is_some_and(|r| r.contains("3 times")), "{dead:?}");
    assert!(claim(&dir, "w1", 1).expect("claim").is_empty());
    assert_eq!(requeue(&dir, "w1", 0).expect_err("zero").exit_code(), 2);
}

#[test]
fn an_interrupted_requeue_is_finished_by_the_next() {
    let (_t, dir) = session();
    register(&dir, &["w1"]);
    let sent = send(&dir, msg("w1", "job", 0)).expect("send");
    claim(&dir, "w1", 1).expect("claim");
    fs::rename(dir.in_flight_message("w1", &sent.id), dir.requeue_handover("w1", &sent.id)).expect("hand over");
    assert_eq!(count(&dir, "w1").expect("count").in_flight, 1);
    assert_eq!(requeue(&dir, "w1", 5).expect("requeue").requeued, 1);
    assert_eq!(claim(&dir, "w1", 1).expect("claim")[0].id, sent.id);
}

#[test]
fn garbage_is_moved_aside_and_does_not_block_the_queue() {
    let (_t, dir) = session();
    register(&dir, &["w1"]);
    let sent = send(&dir, msg("w1", "ok", 0)).expect("send");
    let leaf = dir.queued_message("w1", 0, sent_ms(&sent), &sent.id);
    let leaf = leaf.parent().expect("leaf");
    fs::write(leaf.join("msg-0000000000000000-0000-a-1-00000000.json"), "{\"id\": ").expect("truncated");
    fs::write(leaf.join("zz-not-a-message"), "hello").expect("garbage");
    fs::write(dir.mailbox_new("w1").join("stray.json"), "{}").expect("stray");
    let got = claim(&dir, "w1", 5).expect("claim");
    assert_eq!(types(&got), ["ok"]);
    assert_eq!(count(&dir, "w1").expect("count").bad, 3);
    send(&dir, msg("w1", "after", 0)).expect("send");
    assert_eq!(types(&claim(&dir, "w1", 5).expect("claim")), ["after"]);
}

#[test]
fn broadcast_links_one_file_into_every_other_active_mailbox() {
    let (_t, dir) = session();
    register(&dir, &["a", "b", "c"]);
    let r = broadcast(
        &dir,
        Broadcast {
            from: "a".to_string(),
            msg_type: "hello".to_string(),
            payload: Value::Null,
            priority: 0,
            requires_ack: false,
        },
    )
    .expect("broadcast");
    assert_eq!(r.recipients, ["b", "c"]);
    use std::os::unix::fs::MetadataExt;
    let queued = dir.queued_message("b", 0, r.id[4..20].parse::<u64>().expect("send time in the id") / 1000, &r.id);
    let nlink = fs::metadata(&queued).expect("queued in b").nlink();
    assert_eq!(nlink, 2, "one file, linked into both mailboxes");
    assert!(claim(&dir, "a", 1).expect("a").is_empty());
    for agent in ["b", "c"] {
        let got = claim(&dir, agent, 1).expect("claim");
        assert_eq!((got[0].id.as_str(), got[0].to.as_str()), (r.id.as_str(), BROADCAST_TO));
    }
    let nlink = fs::metadata(dir.in_flight_message("b", &r.id)).expect("in flight").nlink();
    assert_eq!(nlink, 1, "a claimed copy is a file of its own (its mtime is its claim time)");
}

/// The claim time of one recipient's copy of a broadcast is its own: another
/// recipient claiming its copy later does not make it look younger.
#[test]
fn a_broadcast_copy_keeps_its_own_claim_time() {
    let (_t, dir) = session();
    register(&dir, &["a", "b", "c"]);
    let news = Broadcast {
        from: "a".to_string(),
        msg_type: "news".to_string(),
        payload: Value::Null,
        priority: 0,
        requires_ack: false,
    };
    let r = broadcast(&dir, news).expect("broadcast");
    assert_eq!(claim(&dir, "b", 1).expect("b")[0].id, r.id);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(claim(&dir, "c", 1).expect("c")[0].id, r.id);
    let old = requeue_older_than(&dir, "b", 5, Some(Duration::from_millis(200))).expect("requeue b");
    assert_eq!(old.requeued, 1, "b received it 300 ms ago");
    let young = requeue_older_than(&dir, "c", 5, Some(Duration::from_millis(200))).expect("requeue c");
    assert_eq!(young.requeued, 0, "c received it just now");
}

#[test]
fn a_waiter_wakes_when_a_message_arrives() {
    let (_t, dir) = session();
    register(&dir, &["w1"]);
    let mut waiter = Waiter::new(&dir, "w1").expect("waiter");
    let soon = Some(Instant::now() + Duration::from_millis(30));
    assert!(matches!(waiter.next(1, soon, &StopFds::default()).expect("wait"), Waited::TimedOut));
    let sender_dir = dir.clone();
    let sender = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        send(&sender_dir, msg("w1", "late", 0)).expect("send")
    });
    let later = Some(Instant::now() + Duration::from_secs(10));
    let got = match waiter.next(1, later, &StopFds::default()).expect("wait") {
        Waited::Messages(m) => m,
        other => panic!("expected a message, got {other:?}"),
    };
    assert_eq!(got[0], sender.join().expect("join"));
}

#[test]
fn release_puts_a_message_back_in_front() {
    let (_t, dir) = session();
    register(&dir, &["w1"]);
    send(&dir, msg("w1", "first", 0)).expect("send");
    send(&dir, msg("w1", "second", 0)).expect("send");
    let got = claim(&dir, "w1", 1).expect("claim");
    release(&dir, "w1", &got[0]).expect("release");
    assert_eq!(types(&claim(&dir, "w1", 2).expect("claim")), ["first", "second"]);
}
