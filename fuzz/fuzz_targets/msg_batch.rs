//! `msgq send --batch` input, parsed by `mailbox::parse_batch` and sent with
//! `mailbox::send_checked`.
//!
//! Input: the default sender (`--from`; empty for none), `0xFF`, then the batch.
//!
//! Properties: a refused batch is a usage error naming a non-blank line; an accepted one
//! gives one message per non-blank line, in order, each with valid ids and the fields
//! its line gave; each message sent is received by its recipient exactly as sent.
#![no_main]

use std::collections::HashMap;

use coord_core::error::exit;
use coord_core::mailbox::{self, Recipients};
use coord_fuzz::Scratch;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const MAX_SENT: usize = 6;

fuzz_target!(|data: &[u8]| {
    let parts = coord_fuzz::split(data, 2);
    let (from, input) = match parts.as_slice() {
        [from, input] => (std::str::from_utf8(from).ok().filter(|f| !f.is_empty()), *input),
        [input] => (None, *input),
        _ => unreachable!("split gives one or two parts"),
    };
    let Ok(input) = std::str::from_utf8(input) else { return };
    let lines: Vec<&str> = input.lines().collect();
    let batch = match mailbox::parse_batch(input, from) {
        Ok(b) => b,
        Err(e) => {
            assert_eq!(e.exit_code(), exit::USAGE, "{e:?}");
            let text = e.to_string();
            let n: usize = text
                .strip_prefix("stdin line ")
                .and_then(|r| r.split(':').next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("error does not name a line: {text}"));
            assert!(n >= 1 && n <= lines.len() && !lines[n - 1].trim().is_empty(), "line {n}: {text}");
            return;
        }
    };
    let nonblank: Vec<usize> = (1..=lines.len()).filter(|&n| !lines[n - 1].trim().is_empty()).collect();
    assert_eq!(batch.iter().map(|(n, _)| *n).collect::<Vec<_>>(), nonblank);
    for (n, msg) in &batch {
        mailbox::validate_outgoing(msg).expect("parsed messages are valid");
        let v: Value = serde_json::from_str(lines[n - 1]).expect("a parsed line is JSON");
        assert_eq!(v["to"].as_str(), Some(msg.to.as_str()));
        assert_eq!(v["type"].as_str(), Some(msg.msg_type.as_str()));
        assert_eq!(v.get("from").and_then(Value::as_str).or(from), Some(msg.from.as_str()));
    }
    if batch.is_empty() || batch.len() > MAX_SENT {
        return;
    }
    let s = Scratch::new();
    let mut sent = HashMap::new();
    for (_, msg) in batch {
        let m = mailbox::send_checked(&s.dir, msg.clone(), Recipients::Any).expect("send");
        assert_eq!((&m.from, &m.to, &m.msg_type, &m.payload), (&msg.from, &msg.to, &msg.msg_type, &msg.payload));
        assert_eq!((m.priority, m.requires_ack), (msg.priority, msg.requires_ack));
        sent.insert(m.id.clone(), m);
    }
    let recipients: std::collections::BTreeSet<String> = sent.values().map(|m| m.to.clone()).collect();
    let mut received = 0;
    for to in recipients {
        for m in mailbox::claim(&s.dir, &to, 100).expect("claim") {
            assert_eq!(sent.get(&m.id), Some(&m), "received other than what was sent");
            received += 1;
        }
    }
    assert_eq!(received, sent.len());
});
