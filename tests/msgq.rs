//! msgq, black-box: many real processes, kill -9, blocking receives and bad input.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::util::{Rng, TestEnv, assert_all_json_parse, bin, bin_dir, kill9, wait_until};

/// A session with `agents` registered (owned by this test process).
fn env_with(agents: &[&str]) -> TestEnv {
    let env = TestEnv::with_session();
    let pid = std::process::id().to_string();
    for a in agents {
        env.cmd("registry").args(["register", a, "--type", "worker", "--pid", &pid]).ok();
    }
    env
}

fn count(env: &TestEnv, agent: &str) -> Value {
    env.cmd("msgq").args(["count", agent]).ok().json()
}

fn ids(lines: &[Value]) -> Vec<String> {
    lines.iter().map(|m| m["id"].as_str().expect("id").to_string()).collect()
}

/// Receives everything waiting for `agent` (without acking) until the mailbox is empty.
fn drain(env: &TestEnv, agent: &str) -> Vec<Value> {
    let mut all = Vec::new();
    loop {
        let out = env.cmd("msgq").args(["recv", agent, "--max", "20000"]).run();
        match out.code() {
            Some(0) => all.extend(out.json_lines()),
            Some(3) => return all,
            other => panic!("recv exited {other:?}: {}", out.stderr_str()),
        }
    }
}

/// A `sh -c` command with the session's environment and the tools on PATH.
fn shell(env: &TestEnv, script: &str) -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(script);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("COORD_") || k == "RUST_LOG" {
            cmd.env_remove(k);
        }
    }
    let path = format!("{}:{}", bin_dir().display(), std::env::var("PATH").unwrap_or_default());
    cmd.env("PATH", path).env("COORD_BASE", &env.base).env("COORD_SESSION", env.sid()).current_dir(env.root.path());
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd
}

#[test]
fn msgq_16_senders_one_process_per_message_and_4_receivers_deliver_each_exactly_once() {
    const SENDERS: usize = 16;
    const PER_SENDER: usize = 500;
    let env = env_with(&["w1"]);
    let _ = bin("msgq");
    let stop = env.root.path().join("stop");
    // Receivers write to files: a pipe nobody reads until the end would fill and block them.
    let outputs: Vec<_> = (0..4).map(|r| env.root.path().join(format!("received.{r}"))).collect();
    let receivers: Vec<_> = outputs
        .iter()
        .map(|file| {
            let script = format!(
                "while [ ! -e '{}' ]; do msgq recv w1 --wait --timeout 0.2 --max 50 --ack >> '{}'; rc=$?; \
                 [ $rc = 0 ] || [ $rc = 3 ] || exit $rc; done",
                stop.display(),
                file.display()
            );
            shell(&env, &script).spawn().expect("receiver")
        })
        .collect();
    let senders: Vec<_> = (0..SENDERS)
        .map(|s| {
            let script = format!(
                "i=0; while [ $i -lt {PER_SENDER} ]; do i=$((i+1)); \
                 msgq send --from s{s} --to w1 --type m --payload \"{{\\\"s\\\": {s}, \\\"i\\\": $i}}\" >/dev/null || exit 9; done"
            );
            shell(&env, &script).spawn().expect("sender")
        })
        .collect();
    for s in senders {
        let out = s.wait_with_output().expect("sender");
        assert!(out.status.success(), "a sender failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    assert!(wait_until(Duration::from_secs(60), || count(&env, "w1")["queued"] == 0), "receivers drain the queue");
    std::fs::write(&stop, "").expect("stop file");
    let mut seen = HashSet::new();
    let mut pairs = HashSet::new();
    for r in receivers {
        let out = r.wait_with_output().expect("receiver");
        assert!(out.status.success(), "a receiver failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    for file in &outputs {
        for line in std::fs::read_to_string(file).unwrap_or_default().lines() {
            let m: Value = serde_json::from_str(line).expect("recv prints JSON Lines");
            assert!(seen.insert(m["id"].as_str().expect("id").to_string()), "received twice: {line}");
            pairs.insert((m["payload"]["s"].as_u64().expect("s"), m["payload"]["i"].as_u64().expect("i")));
        }
    }
    assert_eq!(seen.len(), SENDERS * PER_SENDER, "every message received exactly once");
    assert_eq!(pairs.len(), SENDERS * PER_SENDER, "no payload lost or duplicated");
    let c = count(&env, "w1");
    assert_eq!((c["queued"].as_u64(), c["in_flight"].as_u64(), c["acked"].as_u64()), (Some(0), Some(0), Some(8000)));
}

#[test]
fn msgq_batch_of_100000_is_received_completely_and_in_order_per_sender() {
    let env = env_with(&["w1"]);
    let mut input = Vec::with_capacity(6_000_000);
    for i in 0..100_000u32 {
        let s = i % 4;
        writeln!(input, r#"{{"from": "s{s}", "to": "w1", "type": "m", "payload": {{"i": {i}}}}}"#).expect("write");
    }
    let out = env.cmd("msgq").args(["send", "--batch"]).run_with_stdin(&input);
    out.assert_code(0);
    let sent = out.json_lines();
    assert_eq!(sent.len(), 100_000);
    assert_eq!(sent[99_999]["line"], 100_000);
    assert_eq!(count(&env, "w1")["queued"], 100_000);
    let got = drain(&env, "w1");
    assert_eq!(got.len(), 100_000);
    let mut last: HashMap<String, i64> = HashMap::new();
    for m in &got {
        let i = m["payload"]["i"].as_i64().expect("i");
        let prev = last.insert(m["from"].as_str().expect("from").to_string(), i);
        assert!(prev.is_none_or(|p| p < i), "out of order for {}: {prev:?} then {i}", m["from"]);
    }
    let unique: HashSet<_> = ids(&got).into_iter().collect();
    assert_eq!(unique.len(), 100_000);
}

#[test]
fn msgq_batch_with_a_bad_line_sends_nothing_and_names_the_line() {
    let env = env_with(&["w1"]);
    let good = r#"{"to": "w1", "type": "m"}"#;
    let input = format!("{good}\n{good}\n{{\"to\": \"w1\", \"type\": \"m\", \"payload\": {{oops}}\n{good}\n");
    let out = env.cmd("msgq").args(["send", "--batch", "--from", "c"]).run_with_stdin(input.as_bytes());
    out.assert_code(2);
    out.stderr_has(&["line 3", "nothing was sent"]);
    for bad in [r#"{"to": "w1", "type": "a/b"}"#, r#"{"to": "w1", "type": "m", "prio": 1}"#, r#"{"to": "w1"}"#] {
        let out = env
            .cmd("msgq")
            .args(["send", "--batch", "--from", "c"])
            .run_with_stdin(format!("{good}\n{bad}\n").as_bytes());
        out.assert_code(2);
        out.stderr_has(&["line 2"]);
    }
    let out = env.cmd("msgq").args(["send", "--batch"]).run_with_stdin(format!("{good}\n").as_bytes());
    out.assert_code(2);
    out.stderr_has(&["line 1", "from"]);
    let unknown = format!("{good}\n{{\"to\": \"ghost\", \"type\": \"m\"}}\n");
    let out = env.cmd("msgq").args(["send", "--batch", "--from", "c"]).run_with_stdin(unknown.as_bytes());
    out.assert_code(1);
    out.stderr_has(&["line 2", "ghost", "nothing was sent"]);
    assert_eq!(count(&env, "w1")["queued"], 0);
}

#[test]
fn msgq_kill9_of_senders_and_receivers_loses_no_acknowledged_send() {
    let env = env_with(&["w1"]);
    let mut rng = Rng::new(0x0005_eed3);
    let mut sent_ok = HashSet::new();
    let mut received = HashSet::new();
    let mut kills = 0;
    let mut n = 0;
    while kills < 50 {
        let mut children = Vec::new();
        for _ in 0..3 {
            n += 1;
            let payload = json!({"n": n}).to_string();
            let c = env.cmd("msgq").args(["send", "--from", "c", "--to", "w1", "--type", "m", "--payload", &payload]);
            children.push((true, c.spawn()));
        }
        children.push((false, env.cmd("msgq").args(["recv", "w1", "--max", "3"]).spawn()));
        let victim = rng.below(children.len() as u64) as usize;
        std::thread::sleep(Duration::from_micros(rng.below(3000)));
        kill9(&mut children[victim].1);
        kills += 1;
        for (is_send, child) in children {
            let out = child.wait_with_output().expect("wait");
            if out.status.code() != Some(0) {
                continue;
            }
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            for line in text.lines() {
                let m: Value = serde_json::from_str(line).expect("complete JSON line");
                let id = m["id"].as_str().expect("id").to_string();
                if is_send {
                    sent_ok.insert(id)
                } else {
                    received.insert(id)
                };
            }
        }
    }
    env.cmd("msgq").args(["requeue", "w1"]).ok();
    received.extend(ids(&drain(&env, "w1")));
    let lost: Vec<_> = sent_ok.difference(&received).collect();
    assert!(lost.is_empty(), "{} acknowledged sends never received: {lost:?}", lost.len());
    assert!(sent_ok.len() > 50, "most sends completed ({})", sent_ok.len());
    assert!(assert_all_json_parse(&env.dir().join("messages")) > 0);
    assert_eq!(count(&env, "w1")["bad"], 0, "no half-written file ever became visible");
}

#[test]
fn msgq_blocked_recv_wait_returns_after_a_send_from_another_process() {
    let env = env_with(&["w1"]);
    let mut child = env.cmd("msgq").args(["recv", "w1", "--wait", "--timeout", "60"]).spawn();
    std::thread::sleep(Duration::from_millis(300));
    assert!(child.try_wait().expect("try_wait").is_none(), "recv --wait blocks on an empty mailbox");
    let sent = env.cmd("msgq").args(["send", "--from", "c", "--to", "w1", "--type", "wake"]).ok().json();
    let started = Instant::now();
    assert!(wait_until(Duration::from_secs(20), || child.try_wait().expect("try_wait").is_some()));
    assert!(started.elapsed() < Duration::from_secs(20));
    let out = child.wait_with_output().expect("output");
    assert!(out.status.success());
    let got: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(got["id"], sent["id"]);
    // Empty and --timeout: exit 3 after the timeout; without --wait: exit 3 at once.
    env.cmd("msgq").args(["recv", "w1", "--wait", "--timeout", "0.1"]).code(3);
    let empty = env.cmd("msgq").args(["recv", "w1"]).code(3);
    // An empty mailbox is an answer, not an error.
    assert_eq!(empty.stderr_str().trim(), "msgq: no message waiting for \"w1\"");
}

#[test]
fn msgq_requires_ack_round_trip_and_priority_order() {
    let env = env_with(&["w1", "boss"]);
    let m = env.cmd("msgq").args(["send", "--from", "boss", "--to", "w1", "--type", "job", "--requires-ack"]);
    let sent = m.args(["--payload", r#"{"task_id": "t1"}"#]).ok().json();
    for key in ["id", "from", "to", "type", "timestamp", "payload", "requires_ack", "priority", "delivery_count"] {
        assert!(sent.get(key).is_some(), "message lacks {key}: {sent}");
    }
    let urgent = env.cmd("msgq").args(["send", "--from", "boss", "--to", "w1", "--type", "urgent", "--priority", "7"]);
    urgent.ok();
    let got = env.cmd("msgq").args(["recv", "w1", "--max", "2"]).ok().json_lines();
    assert_eq!(got.iter().map(|m| m["type"].as_str().expect("type")).collect::<Vec<_>>(), ["urgent", "job"]);
    assert_eq!(got[1], sent);
    assert_eq!(count(&env, "w1")["in_flight"], 2);
    let id = sent["id"].as_str().expect("id");
    let report = env.cmd("msgq").args(["ack", "w1", id]).ok().json();
    assert_eq!(report["already_acked"], false);
    let back = env.cmd("msgq").args(["recv", "boss"]).ok().json();
    assert_eq!((back["type"].as_str(), back["from"].as_str()), (Some("ack"), Some("w1")));
    assert_eq!(back["payload"]["message_id"], id);
    assert_eq!(back["id"], report["ack_id"]);
    // Acking twice is harmless; acking what is not in flight is exit 1.
    assert_eq!(env.cmd("msgq").args(["ack", "w1", id]).ok().json()["already_acked"], true);
    env.cmd("msgq").args(["ack", "w1", "msg-never-sent"]).code(1).stderr_has(&["not in flight"]);
    let c = count(&env, "w1");
    assert_eq!((c["in_flight"].as_u64(), c["acked"].as_u64()), (Some(1), Some(1)));
    // recv --ack leaves nothing in flight.
    env.cmd("msgq").args(["send", "--from", "boss", "--to", "w1", "--type", "once"]).ok();
    env.cmd("msgq").args(["recv", "w1", "--ack"]).ok();
    assert_eq!(count(&env, "w1")["acked"], 2);
}

#[test]
fn msgq_broadcast_reaches_every_active_agent_but_the_sender() {
    let env = env_with(&["a", "b", "c", "gone"]);
    env.cmd("registry").args(["unregister", "gone"]).ok();
    let report = env.cmd("msgq").args(["broadcast", "--from", "a", "--type", "hello", "--payload", "[1]"]).ok().json();
    assert_eq!(report["recipients"], json!(["b", "c"]));
    for agent in ["b", "c"] {
        let m = env.cmd("msgq").args(["recv", agent]).ok().json();
        assert_eq!((&m["id"], &m["type"], &m["payload"]), (&report["id"], &json!("hello"), &json!([1])));
    }
    env.cmd("msgq").args(["recv", "a"]).code(3);
    env.cmd("msgq").args(["recv", "gone"]).code(3);
    // An unregistered agent gets no new direct messages either.
    env.cmd("msgq").args(["send", "--from", "a", "--to", "gone", "--type", "x"]).code(1).stderr_has(&["gone"]);
}

#[test]
fn msgq_redelivery_past_the_maximum_lands_in_dead_letters_with_its_reason() {
    let env = env_with(&["w1"]);
    let sent = env.cmd("msgq").args(["send", "--from", "c", "--to", "w1", "--type", "poison"]).ok().json();
    for round in 0..3 {
        let m = env.cmd("msgq").args(["recv", "w1"]).ok().json();
        assert_eq!(m["delivery_count"], round);
        env.cmd("msgq").args(["requeue", "w1", "--max-deliveries", "3"]).ok();
    }
    env.cmd("msgq").args(["recv", "w1"]).code(3);
    let c = count(&env, "w1");
    assert_eq!((c["queued"].as_u64(), c["in_flight"].as_u64(), c["dead"].as_u64()), (Some(0), Some(0), Some(1)));
    let id = sent["id"].as_str().expect("id");
    let dead = env.json(&format!("messages/w1/dead/{id}.json"));
    assert_eq!(dead["delivery_count"], 3);
    assert!(dead["dead_reason"].as_str().expect("reason").contains("without an ack"), "{dead}");
    env.cmd("msgq").args(["requeue", "w1", "--max-deliveries", "0"]).code(2);
}

#[test]
fn msgq_bad_input_is_refused_and_garbage_in_a_mailbox_is_moved_aside() {
    let env = env_with(&["w1"]);
    let send = |args: &[&str]| env.cmd("msgq").args(["send", "--from", "c", "--to", "w1", "--type", "t"]).args(args);
    send(&["--payload", "{not json"]).code(2).stderr_has(&["--payload", "not valid JSON"]);
    env.cmd("msgq").args(["send", "--from", "c", "--to", "ghost", "--type", "t"]).code(1).stderr_has(&["ghost"]);
    env.cmd("msgq")
        .args(["send", "--from", "c", "--to", "../w1", "--type", "t"])
        .code(2)
        .stderr_has(&["invalid agent id"]);
    env.cmd("msgq").args(["send", "--from", "c d", "--to", "w1", "--type", "t"]).code(2);
    env.cmd("msgq").args(["send", "--from", "c", "--to", "w1", "--type", "a/b"]).code(2);
    env.cmd("msgq").args(["recv", "-x"]).code(2);
    env.cmd("msgq").args(["recv", "ghost"]).code(1).stderr_has(&["ghost"]);
    env.cmd("msgq").args(["ack", "w1", "../../etc"]).code(2);
    env.cmd("msgq").args(["recv", "w1", "--max", "0"]).code(2);
    env.cmd("msgq").args(["send", "--from", "c", "--to", "w1", "--type", "t", "--allow-unregistered"]).ok();
    env.cmd("msgq").args(["send", "--from", "c", "--to", "ghost", "--type", "t", "--allow-unregistered"]).ok();
    assert_eq!(count(&env, "ghost")["queued"], 1);
    drain(&env, "w1");

    // Garbage planted in the queue: truncated JSON, an unknown name, a stray top-level file.
    let first = send(&["--payload", "1"]).ok().json();
    let new = env.dir().join("messages/w1/new");
    let leaf = find_leaf(&new).expect("a queue shard holds the message");
    std::fs::write(leaf.join("msg-0000000000000000-0000-h-1-00000000.json"), b"{\"id\": \"msg-").expect("plant");
    std::fs::write(leaf.join("aaa.json"), b"\x00\x01garbage").expect("plant");
    std::fs::write(new.join("notes.txt"), b"hello").expect("plant");
    let second = send(&["--payload", "2"]).ok().json();
    let out = env.cmd("msgq").args(["recv", "w1", "--max", "10"]).ok();
    assert_eq!(ids(&out.json_lines()), [first["id"].as_str().expect("id"), second["id"].as_str().expect("id")]);
    out.stderr_has(&["moved", "aside"]);
    assert_eq!(count(&env, "w1")["bad"], 3);
    // A garbage file in flight does not stop a requeue either.
    std::fs::write(env.dir().join("messages/w1/cur/msg-1-bad.json"), b"[").expect("plant");
    let r = env.cmd("msgq").args(["requeue", "w1"]).ok().json();
    assert_eq!((r["requeued"].as_u64(), r["bad"].as_u64()), (Some(3), Some(1)), "{r}");
}

/// The first directory under `new/` that holds message files.
fn find_leaf(dir: &Path) -> Option<std::path::PathBuf> {
    let mut entries: Vec<_> = std::fs::read_dir(dir).ok()?.flatten().map(|e| e.path()).collect();
    entries.sort();
    for p in &entries {
        if p.is_file() {
            return Some(dir.to_path_buf());
        }
    }
    entries.iter().filter(|p| p.is_dir()).find_map(|p| find_leaf(p))
}

#[test]
fn msgq_watch_streams_and_stops_cleanly_on_signals_and_closed_pipes() {
    let env = env_with(&["w1"]);
    for (signal, name) in [(libc::SIGTERM, "SIGTERM"), (libc::SIGINT, "SIGINT")] {
        let mut child = env.cmd("msgq").args(["watch", "w1", "--ack"]).spawn();
        for i in 0..3 {
            env.cmd("msgq")
                .args(["send", "--from", "c", "--to", "w1", "--type", "t", "--payload", &i.to_string()])
                .ok();
        }
        assert!(wait_until(Duration::from_secs(20), || count(&env, "w1")["queued"] == 0
            && count(&env, "w1")["in_flight"] == 0));
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, signal) };
        assert!(
            wait_until(Duration::from_secs(10), || child.try_wait().expect("try_wait").is_some()),
            "{name} ends watch"
        );
        let out = child.wait_with_output().expect("output");
        assert_eq!(out.status.code(), Some(0), "{name}: {}", String::from_utf8_lossy(&out.stderr));
        let lines: Vec<Value> =
            String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).expect("json")).collect();
        assert_eq!(lines.iter().map(|m| m["payload"].clone()).collect::<Vec<_>>(), [json!(0), json!(1), json!(2)]);
    }
    // A reader that goes away (`| head -1`) ends watch, and the next message stays queued.
    env.cmd("msgq").args(["send", "--from", "c", "--to", "w1", "--type", "t"]).ok();
    let out = shell(&env, "msgq watch w1 | head -n 1; echo \"status=$?\"").output().expect("pipeline");
    assert!(String::from_utf8_lossy(&out.stdout).contains("status=0"));
    let mut pipeline = shell(&env, "msgq watch w1 | head -n 1 >/dev/null; exit 0").spawn().expect("pipeline");
    env.cmd("msgq").args(["send", "--from", "c", "--to", "w1", "--type", "t"]).ok();
    assert!(
        wait_until(Duration::from_secs(20), || pipeline.try_wait().expect("try_wait").is_some()),
        "watch saw its reader go"
    );
    env.cmd("msgq").args(["send", "--from", "c", "--to", "w1", "--type", "later"]).ok();
    assert_eq!(count(&env, "w1")["queued"], 1, "nothing taken after the reader left");
}

#[test]
fn msgq_help_lists_examples_and_exit_codes() {
    let env = TestEnv::new();
    let out = env.cmd("msgq").arg("--help").ok();
    for part in ["Examples:", "Exit codes", "send", "recv", "watch", "broadcast", "requeue", "count"] {
        assert!(out.stdout_str().contains(part), "msgq --help lacks {part}");
    }
    assert!(env.cmd("msgq").arg("--version").ok().stdout_str().starts_with("msgq"));
    env.cmd("msgq").args(["recv", "w1"]).env_remove("COORD_SESSION").code(2);
}

/// Directories left under a mailbox's queue.
fn queue_dirs(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| 1 + queue_dirs(&e.path()))
                .sum()
        })
        .unwrap_or(0)
}

#[test]
fn msgq_many_distinct_priorities_leave_no_directories_behind() {
    let env = env_with(&["w1"]);
    let lines: String =
        (0..200).map(|p| format!("{{\"to\":\"w1\",\"type\":\"t\",\"priority\":{}}}\n", p * 7 - 300)).collect();
    env.cmd("msgq").args(["send", "--batch", "--from", "x"]).run_with_stdin(lines.as_bytes()).assert_code(0);
    let new = env.dir().join("messages/w1/new");
    assert!(queue_dirs(&new) >= 200, "one priority directory (and its shards) per priority while queued");
    let got = drain(&env, "w1");
    assert_eq!(got.len(), 200);
    let prios: Vec<i64> = got.iter().map(|m| m["priority"].as_i64().expect("priority")).collect();
    assert!(prios.windows(2).all(|w| w[0] >= w[1]), "highest priority first");
    // A receive costs a walk of what is left: drained priorities must not stay behind.
    assert_eq!(queue_dirs(&new), 0, "drained priority directories are removed");
}

/// The one file under `dir` (recursively).
fn only_file(dir: &std::path::Path) -> std::path::PathBuf {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("ls").filter_map(|e| e.ok()) {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            } else {
                found.push(e.path());
            }
        }
    }
    assert_eq!(found.len(), 1, "{found:?}");
    found.remove(0)
}

#[test]
fn msgq_a_claim_caught_between_link_and_unlink_is_not_quarantined() {
    // On filesystems without RENAME_NOREPLACE a claim is link(new, cur) then unlink(new).
    // Plant the state a receiver leaves between the two: both names, one inode.
    let env = env_with(&["w1"]);
    env.cmd("msgq").args(["send", "--from", "x", "--to", "w1", "--type", "t"]).ok();
    let queued = only_file(&env.dir().join("messages/w1/new"));
    let name = queued.file_name().expect("name").to_owned();
    std::fs::hard_link(&queued, env.dir().join("messages/w1/cur").join(&name)).expect("link");
    env.cmd("msgq").args(["recv", "w1"]).code(3);
    let c = count(&env, "w1");
    assert_eq!((c["queued"].as_u64(), c["in_flight"].as_u64(), c["bad"].as_u64()), (Some(0), Some(1), Some(0)), "{c}");
}

#[test]
fn msgq_requeue_older_than_returns_only_messages_held_past_the_timeout() {
    let env = env_with(&["w1"]);
    for _ in 0..2 {
        env.cmd("msgq").args(["send", "--from", "x", "--to", "w1", "--type", "t"]).ok();
    }
    env.cmd("msgq").args(["recv", "w1"]).ok();
    let young = env.cmd("msgq").args(["requeue", "w1", "--older-than", "60"]).ok().json();
    assert_eq!(young["requeued"], 0, "a message received just now is still visible to its receiver");
    std::thread::sleep(std::time::Duration::from_millis(400));
    let old = env.cmd("msgq").args(["requeue", "w1", "--older-than", "0.3"]).ok().json();
    assert_eq!(old["requeued"], 1);
    let c = count(&env, "w1");
    assert_eq!((c["queued"].as_u64(), c["in_flight"].as_u64()), (Some(2), Some(0)), "{c}");
    let again = env.cmd("msgq").args(["recv", "w1", "--max", "2"]).ok().json_lines();
    assert_eq!(again.iter().filter(|m| m["delivery_count"] == 1).count(), 1, "the requeued one says it came back");
}
