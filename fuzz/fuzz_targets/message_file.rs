//! Message files in a mailbox, as read by `mailbox::claim` (`msgq recv`), `mailbox::ack`
//! and `mailbox::requeue`, which puts a message back at the place in the queue its id and
//! timestamp give.
//!
//! Input: the content of one queued message file. It is named after its `id` field when
//! that is a valid id (so well-formed messages get through), else `m1`.
//!
//! Properties: a claim returns the message only if the file is a message whose id is its
//! name, and a message that parses survives its own rewrite; anything else is moved to
//! `bad/`, never lost; a requeued message is claimed again, the same but for one more
//! delivery; an ack moves it to `done/`.
#![no_main]

use coord_core::mailbox::{self, Message};
use coord_core::{fsio, id};
use coord_fuzz::{Scratch, files_in};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const AGENT: &str = "w1";

fuzz_target!(|data: &[u8]| {
    let s = Scratch::new();
    mailbox::ensure_mailbox(&s.dir, AGENT).expect("mailbox");
    let named = serde_json::from_slice::<Value>(data)
        .ok()
        .and_then(|v| v.get("id")?.as_str().map(str::to_string))
        .filter(|i| id::validate("message", i).is_ok());
    let name = named.clone().unwrap_or_else(|| "m1".to_string());
    let queued = s.dir.queued_message(AGENT, 0, 1_767_225_600_000, &name);
    std::fs::create_dir_all(queued.parent().expect("shard")).expect("shard directories");
    std::fs::write(&queued, data).expect("plant message");

    let parsed: Option<Message> = serde_json::from_slice(data).ok();
    if let Some(m) = &parsed {
        let back: Message = fsio::parse_json(&queued, &fsio::to_json_bytes(m)).expect("reparse");
        assert_eq!(&back, m, "a message does not survive its own rewrite");
    }

    let got = mailbox::claim(&s.dir, AGENT, 10).expect("claim never fails on a bad file");
    let bad = s.dir.mailbox_bad(AGENT);
    let m = match got.as_slice() {
        [] => {
            assert!(!queued.exists() && files_in(&bad) == 1, "a bad message file was neither claimed nor moved aside");
            assert!(parsed.is_none_or(|m| m.id != name), "a well-formed message was moved aside");
            return;
        }
        [m] => m.clone(),
        more => panic!("one file claimed as {} messages", more.len()),
    };
    assert_eq!(m.id, name);
    assert_eq!(Some(&m), parsed.as_ref());

    let report = mailbox::requeue(&s.dir, AGENT, u32::MAX).expect("requeue");
    assert_eq!(report.bad, 0);
    if report.dead == 1 {
        assert!(s.dir.dead_message(AGENT, &m.id).is_file());
        return;
    }
    assert_eq!(report.requeued, 1);
    let again = mailbox::claim(&s.dir, AGENT, 10).expect("claim again");
    let [m2] = again.as_slice() else { panic!("the requeued message was claimed as {} messages", again.len()) };
    let mut expected = m.clone();
    expected.delivery_count += 1;
    assert_eq!(*m2, expected);

    let acked = mailbox::ack(&s.dir, AGENT, &m.id).expect("ack");
    assert!(!acked.already_acked);
    assert!(s.dir.acked_message(AGENT, &m.id).is_file());
    let counts = mailbox::count(&s.dir, AGENT).expect("count");
    // An ack of a message that asks for one, from this very agent, lands in its own queue.
    let ack_back = usize::from(m.requires_ack && m.from == AGENT);
    assert_eq!((counts.queued, counts.in_flight, counts.acked), (ack_back, 0, 1));
});
