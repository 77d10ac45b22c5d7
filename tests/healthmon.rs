//! healthmon: liveness by process identity and heartbeat, recovery of a dead agent's
//! work, single instance, clean exits, multi-host by simulation, bad registry input.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::util::{TestEnv, bin, is_root, kill9, wait_until};

/// A process to stand in for an agent; killed on drop.
struct Sleeper(Child);

impl Sleeper {
    fn start() -> Self {
        Sleeper(Command::new("sleep").arg("600").spawn().expect("sleep"))
    }
    fn pid(&self) -> String {
        self.0.id().to_string()
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        kill9(&mut self.0);
    }
}

fn events(env: &TestEnv) -> Vec<Value> {
    let text = std::fs::read_to_string(env.dir().join("metrics/events.jsonl")).unwrap_or_default();
    text.lines().map(|l| serde_json::from_str(l).expect("event line parses")).collect()
}

fn agent(env: &TestEnv, id: &str) -> Value {
    env.cmd("registry").args(["show", id]).ok().json()
}

/// Starts the sidecar with a fast interval; returns it with a reader of its stdout lines.
fn start_healthmon(env: &TestEnv, extra: &[&str]) -> (Child, std::sync::mpsc::Receiver<Value>) {
    let mut child = env.cmd("healthmon").args(["--interval", "0.2"]).args(extra).spawn();
    let out = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            let v: Value = serde_json::from_str(&line).expect("healthmon prints JSON lines");
            if tx.send(v).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

fn next_event(rx: &std::sync::mpsc::Receiver<Value>, kind: &str, limit: Duration) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(v) if v["event"] == kind => return v,
            Ok(_) => continue,
            Err(_) => panic!("no {kind} event within {limit:?}"),
        }
    }
}

#[test]
fn pid_reuse_is_not_taken_for_the_agent() {
    let env = TestEnv::with_session();
    let agent_proc = Sleeper::start();
    env.cmd("registry").args(["register", "a1", "--type", "worker", "--pid", &agent_proc.pid()]).ok();
    env.cmd("healthmon").arg("--once").ok();
    assert_eq!(agent(&env, "a1")["status"], "active");
    // Same pid number, another start time: the pid now belongs to a different process.
    let path = env.dir().join("registry/agents.json");
    let mut agents: Value = env.json("registry/agents.json");
    let start = agents[0]["process_start"].as_u64().expect("start");
    agents[0]["process_start"] = json!(start + 17);
    std::fs::write(&path, serde_json::to_vec_pretty(&agents).expect("ser")).expect("write");
    let out = env.cmd("healthmon").arg("--once").code(1);
    let ev = out.json_lines();
    let dead = ev.iter().find(|e| e["event"] == "agent_dead").expect("agent_dead event");
    assert_eq!(dead["agent"], "a1");
    assert!(dead["reason"].as_str().expect("reason").contains("another process"), "{dead}");
    let a1 = agent(&env, "a1");
    assert_eq!(a1["status"], "failed");
    assert!(a1["failed_at"].is_string() && a1["reason"].is_string());
    assert_eq!(events(&env).iter().filter(|e| e["event"] == "agent_dead").count(), 1);
}

/// Rewrites agent `id`'s registration as if its process had been another one that took
/// the same pid within the same clock tick: same pid and start time, another pidfs
/// inode. `None` where the kernel's pidfds are not in pidfs (none was recorded).
pub fn pretend_same_tick_reuse(env: &TestEnv, id: &str) -> Option<()> {
    let path = env.dir().join("registry/agents.json");
    let mut agents: Value = env.json("registry/agents.json");
    let a = agents.as_array_mut()?.iter_mut().find(|a| a["id"] == id)?;
    let inode = a["process_inode"].as_u64()?;
    a["process_inode"] = json!(inode + 1);
    std::fs::write(&path, serde_json::to_vec_pretty(&agents).expect("ser")).expect("write");
    Some(())
}

#[test]
fn a_pid_reused_within_the_agents_clock_tick_is_not_taken_for_the_agent() {
    let env = TestEnv::with_session();
    let agent_proc = Sleeper::start();
    env.cmd("registry").args(["register", "a1", "--type", "worker", "--pid", &agent_proc.pid()]).ok();
    env.cmd("taskd").args(["submit", "--id", "t1"]).ok();
    env.cmd("taskd").args(["claim", "a1"]).ok();
    env.cmd("healthmon").arg("--once").ok();
    assert_eq!(agent(&env, "a1")["status"], "active");
    if pretend_same_tick_reuse(&env, "a1").is_none() {
        eprintln!("skipped: no pidfs inode recorded (Linux < 6.9)");
        return;
    }
    let out = env.cmd("healthmon").arg("--once").code(1);
    let ev = out.json_lines();
    let dead = ev.iter().find(|e| e["event"] == "agent_dead").expect("agent_dead event");
    assert!(dead["reason"].as_str().expect("reason").contains("another process"), "{dead}");
    assert_eq!(dead["requeued_tasks"], 1, "{dead}");
    assert_eq!(agent(&env, "a1")["status"], "failed");
    assert_eq!(env.cmd("taskd").args(["show", "t1"]).ok().json()["status"], "pending");
}

/// SIGKILLs `child` without reaping it, and waits until it is a zombie.
pub fn kill_leaving_a_zombie(child: &Child) {
    // SAFETY: kill with the pid of our own unreaped child.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGKILL);
    }
    let stat = format!("/proc/{}/stat", child.id());
    let zombie = || {
        std::fs::read_to_string(&stat)
            .is_ok_and(|s| s.rsplit(')').next().is_some_and(|r| r.trim_start().starts_with('Z')))
    };
    assert!(wait_until(Duration::from_secs(5), zombie), "the killed child is a zombie until reaped");
}

#[test]
fn a_killed_agent_not_yet_reaped_by_its_parent_is_dead() {
    let env = TestEnv::with_session();
    let mut agent_proc = Command::new("sleep").arg("600").spawn().expect("sleep");
    env.cmd("registry").args(["register", "z1", "--type", "worker", "--pid", &agent_proc.id().to_string()]).ok();
    env.cmd("taskd").args(["submit", "--id", "t1"]).ok();
    env.cmd("taskd").args(["claim", "z1"]).ok();
    kill_leaving_a_zombie(&agent_proc);
    let out = env.cmd("healthmon").arg("--once").code(1);
    let ev = out.json_lines();
    let dead = ev.iter().find(|e| e["event"] == "agent_dead").expect("agent_dead event");
    assert!(dead["reason"].as_str().expect("reason").contains("is gone"), "{dead}");
    assert_eq!(dead["requeued_tasks"], 1, "{dead}");
    assert_eq!(env.cmd("taskd").args(["show", "t1"]).ok().json()["status"], "pending");
    agent_proc.wait().expect("reap");
}

#[test]
fn a_hung_agent_is_failed_after_stale_after() {
    let env = TestEnv::with_session();
    let agent_proc = Sleeper::start();
    env.cmd("registry").args(["register", "h1", "--type", "worker", "--pid", &agent_proc.pid()]).ok();
    std::thread::sleep(Duration::from_millis(20));
    env.cmd("registry").args(["heartbeat", "h1"]).ok();
    let (mut hm, rx) = start_healthmon(&env, &["--stale-after", "1"]);
    let started = Instant::now();
    let ev = next_event(&rx, "agent_hung", Duration::from_secs(10));
    assert!(started.elapsed() >= Duration::from_millis(700), "not before stale-after");
    assert_eq!(ev["agent"], "h1");
    assert_eq!(agent(&env, "h1")["status"], "failed");
    kill9(&mut hm);
}

#[test]
fn an_agent_that_never_beats_is_judged_by_its_process() {
    let env = TestEnv::with_session();
    let agent_proc = Sleeper::start();
    env.cmd("registry").args(["register", "p1", "--type", "worker", "--pid", &agent_proc.pid()]).ok();
    std::thread::sleep(Duration::from_millis(1200));
    env.cmd("healthmon").args(["--once", "--stale-after", "1"]).ok();
    assert_eq!(agent(&env, "p1")["status"], "active");
}

#[test]
fn only_one_healthmon_per_session_and_sigterm_exits_cleanly() {
    let env = TestEnv::with_session();
    let (mut first, _rx) = start_healthmon(&env, &[]);
    assert!(wait_until(Duration::from_secs(5), || {
        std::fs::read_to_string(env.dir().join("locks/_healthmon.lock")).is_ok_and(|s| s.contains("pid"))
    }));
    let second = env.cmd("healthmon").arg("--once").code(1);
    second.stderr_has(&["another healthmon", &format!("pid {}", first.id())]);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(first.id() as i32, libc::SIGTERM) };
    let status = first.wait().expect("wait");
    assert_eq!(status.code(), Some(0));
    let last = events(&env).into_iter().last().expect("events");
    assert_eq!(last["event"], "stopped");
    assert!(last["reason"].as_str().expect("reason").contains("SIGTERM"));
    // The lock died with it: a new one can start.
    env.cmd("healthmon").arg("--once").ok();
}

#[test]
fn healthmon_exits_when_the_session_is_no_longer_active() {
    let env = TestEnv::with_session();
    let (mut hm, _rx) = start_healthmon(&env, &[]);
    std::thread::sleep(Duration::from_millis(300));
    // `archive` marks the session completed; the sidecar notices and stops by itself.
    env.cmd("archive").ok();
    let start = Instant::now();
    let status = loop {
        if let Some(st) = hm.try_wait().expect("try_wait") {
            break st;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "healthmon did not stop");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0));
    assert!(
        events(&env)
            .iter()
            .any(|e| e["event"] == "stopped" && e["reason"].as_str().is_some_and(|r| r.contains("completed")))
    );
}

#[test]
fn bad_registry_entries_are_reported_and_nothing_is_overwritten() {
    let env = TestEnv::with_session();
    let path = env.dir().join("registry/agents.json");
    let agents = json!([
        {"id": "nopid", "type": "w", "status": "active", "registered_at": "2026-01-01T00:00:00.000Z", "host": crate::util::hostname()},
        {"id": "badpid", "type": "w", "status": "active", "registered_at": "2026-01-01T00:00:00.000Z", "pid": "abc"}
    ]);
    let bytes = serde_json::to_vec_pretty(&agents).expect("ser");
    std::fs::write(&path, &bytes).expect("write");
    let out = env.cmd("healthmon").arg("--once").code(1);
    let ev = out.json_lines();
    assert!(
        ev.iter().any(|e| e["event"] == "warning" && e["reason"].as_str().is_some_and(|r| r.contains("badpid"))),
        "{ev:?}"
    );
    assert!(ev.iter().any(|e| e["event"] == "warning" && e["agent"] == "nopid"), "{ev:?}");
    assert_eq!(std::fs::read(&path).expect("read"), bytes, "agents.json untouched");

    // A malformed agents.json: reported, untouched, and the sidecar keeps running.
    std::fs::write(&path, b"[{\"id\": ").expect("truncate");
    let (mut hm, rx) = start_healthmon(&env, &[]);
    let err = next_event(&rx, "error", Duration::from_secs(5));
    assert!(err["reason"].as_str().expect("reason").contains("agents.json"), "{err}");
    std::thread::sleep(Duration::from_millis(500));
    assert!(hm.try_wait().expect("try_wait").is_none(), "healthmon keeps running");
    assert_eq!(std::fs::read(&path).expect("read"), b"[{\"id\": ");
    kill9(&mut hm);
}

#[test]
fn agents_on_another_host_are_judged_by_heartbeat_only() {
    if !is_root() {
        eprintln!("skipped: needs root for unshare --pid");
        return;
    }
    let env = TestEnv::with_session();
    // Host b: an agent in its own PID namespace registers itself and beats every 0.2 s
    // until the file `stop` appears; its pid means nothing on host a.
    let stop = env.root.path().join("stop");
    let script = format!(
        "'{reg}' register b1 --type worker >/dev/null || exit 1; \
         while [ ! -e '{stop}' ]; do '{reg}' heartbeat b1 >/dev/null; sleep 0.2; done; sleep 600",
        reg = bin("registry").display(),
        stop = stop.display()
    );
    let mut host_b = Command::new("unshare")
        .args(["--pid", "--fork", "--kill-child", "--mount-proc", "sh", "-c", &script])
        .env("COORD_BASE", &env.base)
        .env("COORD_SESSION", env.sid())
        .env("COORD_HOST", "b")
        .stdout(Stdio::null())
        .spawn()
        .expect("unshare");
    assert!(wait_until(Duration::from_secs(5), || env.cmd("registry").args(["show", "b1"]).run().code() == Some(0)));
    let b1 = agent(&env, "b1");
    assert_eq!(b1["host"], "b");
    // The sidecar on host a cannot see b's pids; as long as b1 beats it stays alive.
    let (mut hm, rx) = start_healthmon(&env, &["--stale-after", "1"]);
    std::thread::sleep(Duration::from_millis(2000));
    assert_eq!(agent(&env, "b1")["status"], "active", "not declared dead for an invisible pid");
    std::fs::write(&stop, b"").expect("stop beating");
    let ev = next_event(&rx, "agent_dead", Duration::from_secs(10));
    assert_eq!(ev["agent"], "b1");
    assert!(ev["reason"].as_str().expect("reason").contains("heartbeat"), "{ev}");
    kill9(&mut hm);
    kill9(&mut host_b);
}

#[test]
fn a_killed_agent_is_failed_and_its_tasks_and_messages_go_back() {
    let env = TestEnv::with_session();
    let mut agent_proc = Sleeper::start();
    env.cmd("registry").args(["register", "k1", "--type", "worker", "--pid", &agent_proc.pid()]).ok();
    env.cmd("registry").args(["register", "other", "--type", "worker", "--pid", &std::process::id().to_string()]).ok();
    env.cmd("taskd").args(["submit", "--id", "t-retry"]).ok();
    env.cmd("taskd").args(["submit", "--id", "t-last", "--max-attempts", "1"]).ok();
    env.cmd("taskd").args(["claim", "k1"]).ok();
    env.cmd("taskd").args(["claim", "k1"]).ok();
    env.cmd("msgq").args(["send", "--from", "other", "--to", "k1", "--type", "job"]).ok();
    env.cmd("msgq").args(["send", "--from", "other", "--to", "k1", "--type", "job"]).ok();
    assert_eq!(env.cmd("msgq").args(["recv", "k1", "--max", "2"]).ok().json_lines().len(), 2);
    let (mut hm, rx) = start_healthmon(&env, &[]);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(agent(&env, "k1")["status"], "active");

    kill9(&mut agent_proc.0);
    let killed = Instant::now();
    let ev = next_event(&rx, "agent_dead", Duration::from_secs(5));
    assert!(killed.elapsed() < Duration::from_millis(1500), "detected within about one interval");
    assert_eq!(ev["agent"], "k1");
    assert_eq!(ev["requeued_tasks"], 1, "{ev}");
    assert_eq!(ev["failed_tasks"], 1, "{ev}");
    assert_eq!(ev["requeued_messages"], 2, "{ev}");
    assert_eq!(agent(&env, "k1")["status"], "failed");
    assert_eq!(env.cmd("taskd").args(["show", "t-retry"]).ok().json()["status"], "pending");
    let last = env.cmd("taskd").args(["show", "t-last"]).ok().json();
    assert_eq!(last["status"], "failed", "no attempts left: failed for good");
    let counts = env.cmd("msgq").args(["count", "k1"]).ok().json();
    assert_eq!((counts["queued"].as_u64(), counts["in_flight"].as_u64()), (Some(2), Some(0)), "{counts}");
    assert!(events(&env).iter().any(|e| e["event"] == "agent_dead" && e["agent"] == "k1"), "the event is in the log");
    // The other agent is untouched, and the recovered task can be claimed again.
    assert_eq!(agent(&env, "other")["status"], "active");
    assert_eq!(env.cmd("taskd").args(["claim", "other"]).ok().json()["id"], "t-retry");
    kill9(&mut hm);
}

#[test]
fn a_lapsed_lease_is_requeued_even_if_the_agent_lives() {
    let env = TestEnv::with_session();
    let agent_proc = Sleeper::start();
    env.cmd("registry").args(["register", "slow", "--type", "worker", "--pid", &agent_proc.pid()]).ok();
    env.cmd("taskd").args(["submit", "--id", "t1"]).ok();
    env.cmd("taskd").args(["claim", "slow", "--lease", "0.5"]).ok();
    std::thread::sleep(Duration::from_millis(800));
    let out = env.cmd("healthmon").arg("--once").ok();
    let ev = out.json_lines();
    let lapsed = ev.iter().find(|e| e["event"] == "lease_expired").expect("lease_expired event");
    assert_eq!(lapsed["requeued_tasks"], 1);
    assert_eq!(env.cmd("taskd").args(["show", "t1"]).ok().json()["status"], "pending");
    assert_eq!(agent(&env, "slow")["status"], "active");
}

#[test]
fn resource_use_is_sampled_into_the_registry_and_metrics() {
    let env = TestEnv::with_session();
    let agent_proc = Sleeper::start();
    env.cmd("registry").args(["register", "r1", "--type", "worker", "--pid", &agent_proc.pid()]).ok();
    env.cmd("healthmon").args(["--once", "--sample-every", "1"]).ok();
    let usage = &agent(&env, "r1")["resource_usage"];
    assert!(usage["cpu"].as_str().is_some_and(|c| c.ends_with('%')), "{usage}");
    assert!(usage["memory"].as_str().is_some_and(|m| m.ends_with("MB")), "{usage}");
    assert!(usage["threads"].as_u64().is_some_and(|t| t >= 1), "{usage}");
    assert!(usage["memory_bytes"].as_u64().is_some_and(|m| m > 0), "{usage}");
    let samples = std::fs::read_to_string(env.dir().join("metrics/resources.jsonl")).expect("samples");
    let first: Value = serde_json::from_str(samples.lines().next().expect("a sample")).expect("parses");
    assert_eq!(first["agent"], "r1");

    let overview = env.cmd("healthmon").args(["status", "--json"]).ok().json();
    assert_eq!(overview["agents"][0]["id"], "r1");
    assert_eq!(overview["agents"][0]["alive"], true);
    assert_eq!(overview["mailboxes"][0]["agent"], "r1");
    assert_eq!(overview["tasks"]["total"], 0);
    let table = env.cmd("healthmon").arg("status").ok().stdout_str();
    assert!(table.contains("progress") && table.contains("r1") && table.contains("MAILBOX"), "{table}");
}

#[test]
fn a_visibility_timeout_requeues_messages_a_live_agent_never_acked() {
    let env = TestEnv::with_session();
    env.cmd("registry").args(["register", "v1", "--type", "worker", "--pid", &std::process::id().to_string()]).ok();
    env.cmd("msgq").args(["send", "--from", "x", "--to", "v1", "--type", "job"]).ok();
    env.cmd("msgq").args(["recv", "v1"]).ok();
    // Without --visibility a live agent's in-flight message stays where it is.
    env.cmd("healthmon").args(["--once", "--sample-every", "0"]).ok();
    assert_eq!(env.cmd("msgq").args(["count", "v1"]).ok().json()["in_flight"], 1);
    std::thread::sleep(Duration::from_millis(400));
    let out = env.cmd("healthmon").args(["--once", "--sample-every", "0", "--visibility", "0.3"]).ok();
    let ev = out.json_lines();
    let back = ev.iter().find(|e| e["event"] == "messages_requeued").expect("messages_requeued event");
    assert_eq!(back["agent"], "v1");
    assert_eq!(back["requeued_messages"], 1);
    let counts = env.cmd("msgq").args(["count", "v1"]).ok().json();
    assert_eq!((counts["queued"].as_u64(), counts["in_flight"].as_u64()), (Some(1), Some(0)), "{counts}");
    assert_eq!(agent(&env, "v1")["status"], "active");
}

#[test]
fn a_worker_is_never_taken_for_hung_busy_or_idle() {
    let env = TestEnv::with_session();
    // Beats every lease/3 = 0.5 s; healthmon calls an agent hung after 1.2 s without one.
    let (mut hm, _rx) = start_healthmon(&env, &["--stale-after", "1.2"]);
    env.cmd("taskd").args(["submit", "--id", "slow"]).ok();
    let out = env
        .cmd("taskd")
        .args(["work", "w", "--lease", "1.5", "--idle-exit", "4", "--", "sh", "-c", "sleep 2.5; echo '{}'"])
        .run();
    out.assert_code(0);
    let lines = out.json_lines();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["status"], "completed");
    kill9(&mut hm);
    let judged: Vec<_> = events(&env).into_iter().filter(|e| e["agent"] == "w" && e["event"] != "agent_ok").collect();
    assert!(
        judged.iter().all(|e| e["event"] != "agent_hung" && e["event"] != "agent_dead"),
        "a busy then idle worker was judged: {judged:?}"
    );
}

// --- status --watch ----------------------------------------------------------------------

/// A session with one live agent, three tasks (one completed) and two event lines, one of
/// them not JSON.
fn watched_session() -> (TestEnv, Sleeper) {
    let env = TestEnv::with_session();
    let sleeper = Sleeper::start();
    env.cmd("registry").args(["register", "w1", "--type", "worker", "--pid", &sleeper.pid()]).ok();
    env.cmd("taskd")
        .args(["submit", "--batch"])
        .run_with_stdin(b"{\"id\":\"t1\"}\n{\"id\":\"t2\"}\n{\"id\":\"t3\",\"dependencies\":[\"t2\"]}\n")
        .assert_code(0);
    let claimed = env.cmd("taskd").args(["claim", "w1"]).ok().json();
    env.cmd("taskd").args(["complete", claimed["id"].as_str().expect("id"), "--result", "1"]).ok();
    let events = env.dir().join("metrics/events.jsonl");
    let mut text = std::fs::read_to_string(&events).unwrap_or_default();
    text.push_str("{\"ts\":\"2026-01-01T00:00:00.000Z\",\"event\":\"warning\",\"reason\":\"planted\"}\nnot json\n");
    std::fs::write(&events, text).expect("plant events");
    (env, sleeper)
}

/// Reads stdout lines of a watch as JSON values on a channel.
fn watch_lines(child: &mut Child) -> std::sync::mpsc::Receiver<Value> {
    let out = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
            if tx.send(v).is_err() {
                break;
            }
        }
    });
    rx
}

#[test]
fn watch_prints_json_lines_with_the_status_members_at_and_events() {
    let (env, _agent) = watched_session();
    let status = env.cmd("healthmon").args(["status", "--json"]).ok().json();
    let out = env.cmd("healthmon").args(["status", "--watch", "--count", "3", "--interval", "0.1"]).ok();
    let lines = out.json_lines();
    assert_eq!(lines.len(), 3, "{}", out.stdout_str());
    let mut last_at = String::new();
    for l in &lines {
        let keys: Vec<&str> = l.as_object().expect("object").keys().map(String::as_str).collect();
        let mut want: Vec<&str> = status.as_object().expect("object").keys().map(String::as_str).collect();
        want.insert(0, "at");
        want.push("events");
        assert_eq!(keys, want);
        let at = l["at"].as_str().expect("at");
        assert!(at.len() == 24 && at.ends_with('Z') && at.as_bytes()[10] == b'T', "RFC 3339 UTC: {at}");
        assert!(at > last_at.as_str(), "snapshots are taken one after the other");
        last_at = at.to_string();
        assert_eq!(l["tasks"], status["tasks"]);
        assert_eq!(l["tasks"]["total"], 3);
        assert_eq!(l["tasks"]["completed"], 1);
        assert_eq!(l["tasks"]["blocked"], 1);
        assert_eq!(l["mailboxes"], status["mailboxes"]);
        assert_eq!(l["session"], status["session"]);
        assert_eq!(l["agents"][0]["id"], "w1");
        assert_eq!(l["agents"][0]["alive"], true);
        let events = l["events"].as_array().expect("events");
        assert!(events.iter().any(|e| e["reason"] == "planted"), "{events:?}");
        assert!(events.iter().all(Value::is_object));
        let problems = l["problems"].as_array().expect("problems");
        assert!(problems.iter().any(|p| p.as_str().is_some_and(|p| p.contains("not JSON"))), "{problems:?}");
    }
}

#[test]
fn watch_sees_a_change_made_while_it_runs_and_stops_at_its_count() {
    let (env, _agent) = watched_session();
    let second = Sleeper::start();
    let mut child = env.cmd("healthmon").args(["status", "--watch", "--count", "50", "--interval", "0.1"]).spawn();
    let rx = watch_lines(&mut child);
    let first = rx.recv_timeout(Duration::from_secs(10)).expect("a first line");
    assert_eq!(first["tasks"]["total"], 3);
    env.cmd("taskd").args(["submit", "--id", "late"]).ok();
    env.cmd("registry").args(["register", "w2", "--type", "worker", "--pid", &second.pid()]).ok();
    let mut seen = 1;
    let changed = loop {
        let Ok(l) = rx.recv_timeout(Duration::from_secs(10)) else { break None };
        seen += 1;
        if l["tasks"]["total"] == 4 && l["agents"].as_array().is_some_and(|a| a.len() == 2) {
            break Some(l);
        }
    };
    let changed = changed.expect("a later snapshot shows the new task and agent");
    assert_eq!(changed["tasks"]["pending"], 2);
    while rx.recv_timeout(Duration::from_secs(10)).is_ok() {
        seen += 1;
    }
    assert_eq!(seen, 50, "exactly --count lines");
    assert_eq!(child.wait().expect("wait").code(), Some(0));
}

#[test]
fn watch_rejects_bad_values_and_a_missing_session_with_exit_2() {
    let env = TestEnv::with_session();
    for bad in [
        &["--count", "0"][..],
        &["--count", "many"],
        &["--interval", "0"],
        &["--interval", "soon"],
        &["--events", "5000"],
    ] {
        let out = env.cmd("healthmon").args(["status", "--watch"]).args(bad).code(2);
        out.stderr_has(&[bad[0]]);
        assert!(out.stdout_str().is_empty());
    }
    env.cmd("healthmon").args(["status", "--count", "3"]).code(2).stderr_has(&["--watch"]);
    let missing = env.cmd("healthmon").args(["status", "--watch", "--session", "nope"]).code(2);
    missing.stderr_has(&["session \"nope\" not found"]);
}

#[test]
fn watch_exits_0_on_sigterm_and_sigint() {
    let (env, _agent) = watched_session();
    for sig in [libc::SIGTERM, libc::SIGINT] {
        let mut child = env.cmd("healthmon").args(["status", "--watch", "--interval", "0.2"]).spawn();
        let rx = watch_lines(&mut child);
        rx.recv_timeout(Duration::from_secs(10)).expect("a first line");
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, sig) };
        let started = Instant::now();
        let status = child.wait().expect("wait");
        assert_eq!(status.code(), Some(0), "signal {sig}");
        assert!(started.elapsed() < Duration::from_secs(2), "stopped at once, not at a later refresh");
    }
}

#[test]
fn watch_ends_quietly_when_its_reader_goes_away() {
    let (env, _agent) = watched_session();
    let mut child = env.cmd("healthmon").args(["status", "--watch", "--interval", "0.05"]).spawn();
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("a first line");
    serde_json::from_str::<Value>(&line).expect("JSON");
    drop(out); // the reader of the pipe is gone, as with `| head -n 1`
    let output = child.wait_with_output().expect("wait");
    assert_eq!(output.status.code(), Some(0));
    assert!(output.stderr.is_empty(), "quiet: {}", String::from_utf8_lossy(&output.stderr));
}

/// `script` (util-linux) runs a command under a pseudo-terminal.
fn script_available() -> bool {
    Command::new("script")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn watch_on_a_terminal_draws_on_the_alternate_screen_and_gives_the_terminal_back() {
    if !script_available() {
        println!("skipped: `script` (util-linux) is not installed");
        return;
    }
    let (env, _agent) = watched_session();
    let inner =
        format!("stty rows 30 cols 100; exec {} status --watch --count 2 --interval 0.1", bin("healthmon").display());
    let out = Command::new("script")
        .args(["-qfec", &inner, "/dev/null"])
        .env("COORD_BASE", &env.base)
        .env("COORD_SESSION", env.sid())
        .env("TERM", "xterm")
        .stdin(Stdio::null())
        .output()
        .expect("script");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    let enter = text.find("\x1b[?1049h").expect("entered the alternate screen");
    let leave = text.rfind("\x1b[?1049l").expect("left the alternate screen");
    assert!(enter < leave);
    let shown = text.rfind("\x1b[?25h").expect("showed the cursor again");
    assert!(shown > enter && text.find("\x1b[?25l").is_some_and(|hidden| hidden > enter && hidden < shown));
    let screen = &text[enter..leave];
    assert!(screen.contains("session "), "{screen}");
    assert!(screen.contains("1/3 completed"), "{screen}");
    assert!(screen.contains("q, Esc or Ctrl-C quits"), "{screen}");
    assert!(!text.contains("{\"at\""), "no JSON on a terminal");
}
