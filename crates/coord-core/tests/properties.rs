//! Property tests: record formats round-trip, ids stay one path component, JSON pointers
//! set what they later get, and result files read in one pass as serde_json reads them.

use std::path::{Component, Path};

use coord_core::mailbox::Message;
use coord_core::record::{Agent, ResourceUsage, Session};
use coord_core::task::{Task, TaskError};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

fn id() -> impl Strategy<Value = String> {
    "[A-Za-z0-9][A-Za-z0-9._-]{0,20}"
}

fn text() -> impl Strategy<Value = String> {
    // Any Unicode, including quotes, backslashes, control characters and newlines.
    any::<String>()
}

fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| json!(f)),
        text().prop_map(Value::String),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    json_leaf().prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(text(), inner, 0..4).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Extra fields whose names no record type uses (they all start with `x_`).
fn extra() -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::btree_map("x_[a-z]{1,8}", json_value(), 0..3).prop_map(|m| m.into_iter().collect())
}

fn ts() -> impl Strategy<Value = String> {
    (0u64..4_000_000_000_000)
        .prop_map(|ms| coord_core::time::rfc3339(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms)))
}

prop_compose! {
    fn agent()(
        id in id(), agent_type in id(), status in id(), registered_at in ts(),
        updated_at in proptest::option::of(ts()), capabilities in prop::collection::vec(id(), 0..4),
        assigned_tasks in prop::collection::vec(id(), 0..4), pid in proptest::option::of(any::<u32>()),
        host in text(), process_start in proptest::option::of(any::<u64>()),
        process_inode in proptest::option::of(any::<u64>()),
        boot_id in proptest::option::of(text()),
        usage in proptest::option::of((text(), text(), any::<u64>(), extra())),
        last_heartbeat in proptest::option::of(ts()), reason in proptest::option::of(text()),
        extra in extra(),
    ) -> Agent {
        Agent {
            id, agent_type, status, registered_at, updated_at, capabilities, assigned_tasks, pid, host,
            process_start, process_inode, boot_id,
            resource_usage: usage.map(|(cpu, memory, threads, extra)| ResourceUsage { cpu, memory, threads, extra }),
            last_heartbeat, terminated_at: None, failed_at: None, reason, extra,
        }
    }
}

prop_compose! {
    fn message()(
        id in id(), from in id(), to in id(), msg_type in id(), timestamp in ts(), payload in json_value(),
        requires_ack in any::<bool>(), priority in any::<i64>(), delivery_count in any::<u32>(), host in text(),
        dead_reason in proptest::option::of(text()), extra in extra(),
    ) -> Message {
        Message {
            id, from, to, msg_type, timestamp, payload, requires_ack, priority, delivery_count, host,
            dead_at: dead_reason.as_ref().map(|_| "2026-01-01T00:00:00.000Z".to_string()), dead_reason, extra,
        }
    }
}

prop_compose! {
    fn task()(
        id in id(), status in prop::sample::select(vec!["blocked", "pending", "claimed", "completed", "failed", "cancelled"]),
        agent_type in proptest::option::of(id()), capabilities in prop::collection::vec(id(), 0..3),
        priority in any::<i64>(), payload in json_value(), dependencies in prop::collection::vec(id(), 0..3),
        attempts in any::<u32>(), max_attempts in 1u32..100, created_at in ts(), seq in any::<u64>(),
        assigned_to in proptest::option::of(id()), claim_token in proptest::option::of("[0-9a-f]{16}"),
        lease_seconds in proptest::option::of(0.0f64..1e6),
        // A `null` result is stored as no result (the field is left out), so it is not generated.
        results in proptest::option::of(json_value().prop_filter("not null", |v| !v.is_null())),
        errors in prop::collection::vec((1u32..10, id(), ts(), text()), 0..3), extra in extra(),
    ) -> Task {
        let mut t: Task = serde_json::from_value(json!({
            "id": id, "status": status, "created_at": created_at, "seq": seq,
        })).expect("minimal task parses");
        t.agent_type = agent_type;
        t.capabilities = capabilities;
        t.priority = priority;
        t.payload = payload;
        t.dependencies = dependencies;
        t.attempts = attempts;
        t.max_attempts = max_attempts;
        t.assigned_to = assigned_to;
        t.claim_token = claim_token;
        t.lease_seconds = lease_seconds;
        t.results = results;
        t.errors = errors
            .into_iter()
            .map(|(attempt, agent, at, error)| {
                serde_json::from_value::<TaskError>(json!({"attempt": attempt, "agent": agent, "at": at, "error": error}))
                    .expect("task error parses")
            })
            .collect();
        t.extra = extra;
        t
    }
}

/// A result file of the seed's shape, `{"tasks": [...], "execution_time": ...}`, written
/// compact or pretty, with escapes wherever the strings need them, the fields the report
/// reads, extra fields, and numbers of every kind.
fn result_file() -> impl Strategy<Value = String> {
    let status = prop_oneof![Just("completed".to_string()), Just("failed".to_string()), text()];
    let read_field = prop_oneof![Just("error"), Just("claimed_at"), Just("completed_at"), Just("attempt")];
    let task = (text(), status, prop::collection::btree_map(read_field, json_value(), 0..3), extra(), any::<bool>())
        .prop_map(|(id, status, fields, extra, id_last)| {
            let mut t = Map::new();
            if !id_last {
                t.insert("id".into(), json!(id));
            }
            t.insert("status".into(), json!(status));
            t.extend(fields.into_iter().map(|(k, v)| (k.to_string(), v)));
            t.extend(extra);
            if id_last {
                t.insert("id".into(), json!(id));
            }
            Value::Object(t)
        });
    let time = prop_oneof![
        Just(None),
        Just(Some(Value::Null)),
        (0u64..1_000_000).prop_map(|n| Some(json!(n))),
        (0.0f64..1e12).prop_map(|f| Some(json!(f))),
    ];
    (prop::collection::vec(task, 0..5), time, extra(), any::<bool>(), any::<bool>()).prop_map(
        |(tasks, time, extra, pretty, time_first)| {
            let mut doc = Map::new();
            if time_first && let Some(t) = &time {
                doc.insert("execution_time".into(), t.clone());
            }
            doc.insert("tasks".into(), Value::Array(tasks));
            doc.extend(extra);
            if !time_first && let Some(t) = time {
                doc.insert("execution_time".into(), t);
            }
            let doc = Value::Object(doc);
            if pretty { serde_json::to_string_pretty(&doc) } else { serde_json::to_string(&doc) }.expect("serialize")
        },
    )
}

/// One edit of a document: a byte range removed, repeated, or replaced by a byte that
/// matters to JSON (or a control character, or the start of a multi-byte character).
fn mutated(doc: &str, at: usize, len: usize, how: u8, byte: u8) -> Vec<u8> {
    const BYTES: &[u8] = b"{}[]\",:\\ \t\n0123456789.eE+-tfnrul/\x01\x1f\x7f\xc3\xa9";
    let b = doc.as_bytes();
    let at = at % (b.len() + 1);
    let end = (at + len % 8).min(b.len());
    let mut out = b[..at].to_vec();
    match how % 3 {
        0 => {}
        1 => out.extend_from_slice(&b[at..end].repeat(2)),
        _ => out.push(BYTES[usize::from(byte) % BYTES.len()]),
    }
    out.extend_from_slice(&b[end..]);
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn agents_round_trip(a in agent()) {
        let text = serde_json::to_string_pretty(&a).expect("serialize");
        let back: Agent = serde_json::from_str(&text).expect("parse");
        prop_assert_eq!(back, a);
    }

    #[test]
    fn sessions_round_trip(id in id(), op in id(), started in ts(), agents in prop::collection::vec(id(), 0..5),
                           coordinator in text(), ended in proptest::option::of(ts()), extra in extra()) {
        let s = Session {
            id, operation: op, started_at: started, status: "active".into(), agents, coordinator,
            layout_version: 1, ended_at: ended, extra,
        };
        let back: Session = serde_json::from_slice(&serde_json::to_vec(&s).expect("serialize")).expect("parse");
        prop_assert_eq!(back, s);
    }

    #[test]
    fn messages_round_trip(m in message()) {
        let back: Message = serde_json::from_slice(&serde_json::to_vec(&m).expect("serialize")).expect("parse");
        prop_assert_eq!(back, m);
    }

    #[test]
    fn tasks_round_trip(t in task()) {
        let v = serde_json::to_value(&t).expect("serialize");
        let back: Task = serde_json::from_value(v.clone()).expect("parse");
        prop_assert_eq!(serde_json::to_value(&back).expect("serialize again"), v);
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_record_parsers(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = serde_json::from_slice::<Agent>(&bytes);
        let _ = serde_json::from_slice::<Vec<Agent>>(&bytes);
        let _ = serde_json::from_slice::<Session>(&bytes);
        let _ = serde_json::from_slice::<Message>(&bytes);
        let _ = serde_json::from_slice::<Task>(&bytes);
        prop_assert!(coord_core::report::fast_path_agrees(&bytes).is_ok());
    }

    #[test]
    fn result_files_of_the_seeds_shape_are_read_in_one_pass_as_serde_json_reads_them(doc in result_file()) {
        prop_assert_eq!(coord_core::report::fast_path_agrees(doc.as_bytes()), Ok(true), "{}", doc);
    }

    #[test]
    fn an_edited_result_file_is_read_as_serde_json_reads_it_or_left_to_it(
        doc in result_file(), edits in prop::collection::vec((any::<usize>(), 0usize..8, any::<u8>(), any::<u8>()), 1..4),
    ) {
        let mut bytes = doc.into_bytes();
        for (at, len, how, byte) in edits {
            bytes = mutated(&String::from_utf8_lossy(&bytes), at, len, how, byte);
        }
        prop_assert!(coord_core::report::fast_path_agrees(&bytes).is_ok(), "{}", String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn a_valid_id_is_exactly_one_normal_path_component(s in text()) {
        if coord_core::id::validate("x", &s).is_ok() {
            let comps: Vec<_> = Path::new(&s).components().collect();
            prop_assert_eq!(comps.len(), 1);
            prop_assert!(matches!(comps[0], Component::Normal(_)));
            prop_assert!(!s.starts_with('.') && !s.starts_with('-') && !s.contains('/') && !s.contains('\0'));
        }
    }

    #[test]
    fn pointer_set_then_get_returns_the_value(keys in prop::collection::vec(text(), 1..4), value in json_value()) {
        let pointer: String = keys.iter().map(|k| format!("/{}", k.replace('~', "~0").replace('/', "~1"))).collect();
        let mut doc = Value::Null;
        coord_core::state::set_pointer(&mut doc, &pointer, value.clone()).expect("set into objects");
        prop_assert_eq!(doc.pointer(&pointer), Some(&value));
    }
}
