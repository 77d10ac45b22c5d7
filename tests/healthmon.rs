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
