//! The daily workflows of a queue, black-box: task output (`taskd log`, `--follow`),
//! `taskd retry`, `taskd kill`, `taskd pause`/`resume`, and the report's stderr tails,
//! each with its failure paths (clear error, documented exit code, nothing changed).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::util::{TestEnv, wait_until};

fn submit(env: &TestEnv, args: &[&str]) -> Value {
    env.cmd("taskd").arg("submit").args(args).ok().json()
}

fn show(env: &TestEnv, id: &str) -> Value {
    env.cmd("taskd").args(["show", id]).ok().json()
}

/// Runs a worker until it has run `n` tasks.
fn work(env: &TestEnv, agent: &str, n: u32, extra: &[&str], script: &str) -> Vec<Value> {
    let n = n.to_string();
    let mut c = env.cmd("taskd").args(["work", agent, "--max-tasks", &n, "--idle-exit", "10"]);
    c = c.args(extra);
    c.args(["--", "sh", "-c", script]).ok().json_lines()
}

/// Every file under `dir`, recursively, with its bytes: to show that nothing changed.
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd {
            let p = e.expect("entry").path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let name = p.to_string_lossy().into_owned();
                // Bells are touched by readers' watches; locks by anyone who takes them.
                if !name.ends_with(".bell") && !name.contains("/locks/") {
                    out.push((name, std::fs::read(&p).unwrap_or_default()));
                }
            }
        }
    }
    out.sort();
    out
}

#[test]
fn work_keeps_each_attempts_output_and_log_prints_it() {
    let env = TestEnv::with_session();
    submit(&env, &["--id", "t1", "--max-attempts", "2"]);
    let marker = env.dir().join("marker");
    let script = format!(
        "if [ -e {m} ]; then echo second; else touch {m}; echo first; echo oops >&2; exit 1; fi",
        m = marker.display()
    );
    let outcomes = work(&env, "w1", 2, &[], &script);
    assert_eq!(outcomes.len(), 2);
    assert_eq!(show(&env, "t1")["status"], "completed");

    let latest = env.cmd("taskd").args(["log", "t1"]).ok();
    assert_eq!(latest.stdout_str(), "second\n");
    assert_eq!(latest.stderr_str(), "");
    let first = env.cmd("taskd").args(["log", "t1", "--attempt", "1"]).ok();
    assert_eq!(first.stdout_str(), "first\n");
    assert_eq!(first.stderr_str(), "oops\n");
    let j = env.cmd("taskd").args(["log", "t1", "--attempt", "1", "--json"]).ok().json();
    assert_eq!(j["id"], "t1");
    assert_eq!(j["attempt"], 1);
    assert_eq!(j["status"], "completed");
    assert_eq!(j["stdout"], "first\n");
    assert_eq!(j["stderr"], "oops\n");
    let j = env.cmd("taskd").args(["log", "t1", "--json"]).ok().json();
    assert_eq!(j["attempt"], 2);
    assert_eq!(j["stderr"], Value::Null, "attempt 2 printed nothing on stderr: no file");
    assert!(env.dir().join("tasks/output/t1.1.out").is_file());
    assert!(env.dir().join("tasks/output/t1.1.err").is_file());
    assert!(!env.dir().join("tasks/output/t1.2.err").exists());
}

#[test]
fn output_past_the_cap_is_cut_off_and_says_so() {
    let env = TestEnv::with_session();
    submit(&env, &["--id", "big"]);
    // 1000 'x' and a newline on stdout, 3000 on stderr.
    let script = "head -c 1000 /dev/zero | tr '\\0' x; echo; head -c 3000 /dev/zero | tr '\\0' y >&2";
    work(&env, "w1", 1, &["--output-cap", "100"], script);
    let t = show(&env, "big");
    assert_eq!(t["status"], "completed");
    assert_eq!(t["results"].as_str().map(str::len), Some(1000), "the result is the whole stdout");
    let out = std::fs::read_to_string(env.dir().join("tasks/output/big.1.out")).expect("kept");
    assert!(
        out.starts_with(&format!("{}\n[taskd: stdout cut off here, at the cap of 100 bytes", "x".repeat(100))),
        "{out}"
    );
    assert!(out.ends_with("[taskd: stdout had 1001 bytes in all; 901 of them are not kept]\n"), "{out}");
    let err = env.cmd("taskd").args(["log", "big"]).ok().stderr_str();
    assert!(err.contains("[taskd: stderr had 3000 bytes in all; 2900 of them are not kept]"), "{err}");

    // --output-cap 0 keeps nothing.
    submit(&env, &["--id", "quiet"]);
    work(&env, "w1", 1, &["--output-cap", "0"], "echo hello");
    assert!(!env.dir().join("tasks/output/quiet.1.out").exists());
    let out = env.cmd("taskd").args(["log", "quiet"]).ok();
    assert_eq!(out.stdout_str(), "");
}

#[test]
fn log_refuses_what_it_cannot_show_and_changes_nothing() {
    let env = TestEnv::with_session();
    submit(&env, &["--id", "waiting"]);
    let before = snapshot(&env.dir());
    env.cmd("taskd").args(["log", "nope"]).code(1).stderr_has(&["no task \"nope\""]);
    env.cmd("taskd").args(["log", "waiting"]).code(3).stderr_has(&["has not run yet"]);
    env.cmd("taskd").args(["log", "waiting", "--attempt", "1"]).code(2).stderr_has(&["--attempt must be"]);
    env.cmd("taskd").args(["log", "../etc"]).code(2);
    env.cmd("taskd").args(["log", "waiting", "--follow", "--json"]).code(2);
    assert_eq!(snapshot(&env.dir()), before);
    // A task that ran but printed nothing: nothing to print, and that is fine.
    work(&env, "w1", 1, &[], "true");
    let out = env.cmd("taskd").args(["log", "waiting"]).ok();
    assert_eq!(out.stdout_str(), "");
}

#[test]
fn follow_streams_a_running_attempt_until_it_ends() {
    for poll in [None, Some("50")] {
        let env = TestEnv::with_session();
        submit(&env, &["--id", "slow"]);
        let gate = env.dir().join("gate");
        // Started before the task runs: it waits for the claim.
        let mut c = env.cmd("taskd").args(["log", "slow", "--follow"]);
        if let Some(ms) = poll {
            c = c.env("COORD_POLL_MS", ms);
        }
        let mut follow = c.spawn();
        let script =
            format!("echo one; echo e1 >&2; while [ ! -e {g} ]; do sleep 0.05; done; echo two", g = gate.display());
        let mut w = env.cmd("taskd");
        if let Some(ms) = poll {
            w = w.env("COORD_POLL_MS", ms);
        }
        let mut worker = w.args(["work", "w1", "--max-tasks", "1", "--", "sh", "-c", &script]).spawn();
        let mut lines = BufReader::new(follow.stdout.take().expect("stdout"));
        let mut first = String::new();
        lines.read_line(&mut first).expect("read");
        if first.is_empty() {
            let st = follow.wait().expect("wait");
            let mut err = String::new();
            std::io::Read::read_to_string(&mut follow.stderr.take().expect("stderr"), &mut err).expect("read");
            panic!("poll {poll:?}: follow ended ({st:?}) before any output: {err}");
        }
        assert_eq!(first, "one\n", "poll {poll:?}");
        // Streamed while it runs: the task is still claimed, waiting for the gate.
        assert_eq!(show(&env, "slow")["status"], "claimed");
        std::fs::write(&gate, b"").expect("gate");
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut lines, &mut rest).expect("read");
        assert_eq!(rest, "two\n");
        let st = follow.wait().expect("wait");
        assert!(st.success(), "follow ended with {st:?}");
        let mut err = String::new();
        std::io::Read::read_to_string(&mut follow.stderr.take().expect("stderr"), &mut err).expect("read");
        assert_eq!(err, "e1\n");
        assert!(worker.wait().expect("worker").success());
        assert_eq!(show(&env, "slow")["status"], "completed");
    }
}

#[test]
fn retry_puts_failed_tasks_back_with_a_fresh_budget_and_keeps_their_history() {
    let env = TestEnv::with_session();
    submit(&env, &["--id", "parent", "--max-attempts", "1"]);
    submit(&env, &["--id", "child", "--after", "parent"]);
    submit(&env, &["--id", "ok"]);
    work(&env, "w1", 2, &[], "[ \"$TASK_ID\" = ok ] || { echo broke >&2; exit 1; }");
    assert_eq!(show(&env, "parent")["status"], "failed");
    assert_eq!(show(&env, "child")["status"], "failed");
    assert_eq!(show(&env, "ok")["status"], "completed");

    // Failure paths first: each changes nothing.
    let before = snapshot(&env.dir());
    env.cmd("taskd").args(["retry", "ok"]).code(1).stderr_has(&[
        "task \"ok\" is completed",
        "only a failed or cancelled task can be retried",
        "nothing was changed",
    ]);
    env.cmd("taskd").args(["retry", "child"]).code(1).stderr_has(&["depends on task \"parent\"", "retry"]);
    env.cmd("taskd").args(["retry", "parent", "ok"]).code(1).stderr_has(&["task \"ok\" is completed"]);
    env.cmd("taskd").args(["retry", "ghost"]).code(1).stderr_has(&["no task \"ghost\""]);
    env.cmd("taskd").args(["retry", "parent", "--attempts", "0"]).code(2);
    env.cmd("taskd").args(["retry"]).code(2);
    assert_eq!(snapshot(&env.dir()), before);

    let retried = env.cmd("taskd").args(["retry", "--failed"]).ok().json_lines();
    let by_id = |id: &str| retried.iter().find(|t| t["id"] == id).cloned().expect("retried");
    assert_eq!(retried.len(), 2);
    assert_eq!(by_id("parent")["status"], "pending");
    assert_eq!(by_id("child")["status"], "blocked", "waits for its retried dependency");
    let p = show(&env, "parent");
    assert_eq!(p["attempts"], 1);
    assert_eq!(p["max_attempts"], 2, "1 attempt made + the budget of 1 it was submitted with");
    assert_eq!(p["errors"].as_array().map(Vec::len), Some(1), "the earlier error is kept");
    assert_eq!(p["retries"][0]["from"], "failed");
    assert_eq!(p["retries"][0]["attempts"], 1);
    assert!(p["retries"][0]["reason"].as_str().is_some_and(|r| r.contains("broke")), "{p}");
    assert_eq!(p["failed_at"], Value::Null);

    work(&env, "w1", 2, &[], "echo fixed");
    assert_eq!(show(&env, "parent")["status"], "completed");
    assert_eq!(show(&env, "child")["status"], "completed");
    assert_eq!(show(&env, "parent")["attempts"], 2);
    // The output of each attempt is kept under its own number.
    assert_eq!(env.cmd("taskd").args(["log", "parent", "--attempt", "1"]).ok().stderr_str(), "broke\n");
    assert_eq!(env.cmd("taskd").args(["log", "parent"]).ok().stdout_str(), "fixed\n");

    // A cancelled task can be retried too, with an explicit budget.
    submit(&env, &["--id", "c1"]);
    env.cmd("taskd").args(["cancel", "c1"]).ok();
    let r = env.cmd("taskd").args(["retry", "c1", "--attempts", "5"]).ok().json_lines();
    assert_eq!(r[0]["status"], "pending");
    assert_eq!(r[0]["max_attempts"], 5);
    assert_eq!(r[0]["retries"][0]["from"], "cancelled");

    // --failed leaves out a task held back by a dependency that stays cancelled.
    submit(&env, &["--id", "gone"]);
    submit(&env, &["--id", "orphan", "--after", "gone"]);
    env.cmd("taskd").args(["cancel", "gone"]).ok();
    assert_eq!(show(&env, "orphan")["status"], "failed");
    let out = env.cmd("taskd").args(["retry", "--failed"]).ok();
    assert!(out.json_lines().is_empty(), "{}", out.stdout_str());
    out.stderr_has(&["task \"orphan\" is not retried", "\"gone\", which stays cancelled"]);
    assert_eq!(show(&env, "orphan")["status"], "failed");
}

/// Whether process `pid` is gone (or a zombie).
fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s.rsplit(')').next().is_some_and(|r| r.trim_start().starts_with('Z')),
        Err(_) => true,
    }
}

#[test]
fn kill_stops_the_running_command_and_records_the_attempt() {
    for poll in [None, Some("50")] {
        let env = TestEnv::with_session();
        submit(&env, &["--id", "k1"]);
        submit(&env, &["--id", "k2"]);
        let pids = env.dir().join("pids");
        // The command and a child of its own, which the kill must reach too.
        let script = format!("sleep 60 & echo $! >> {p}; echo $$ >> {p}; wait", p = pids.display());
        let mut w = env.cmd("taskd");
        if let Some(ms) = poll {
            w = w.env("COORD_POLL_MS", ms);
        }
        let worker = w.args(["work", "w1", "--max-tasks", "2", "--idle-exit", "20", "--", "sh", "-c", &script]).spawn();
        let running = |id: &str, n: usize| {
            wait_until(Duration::from_secs(10), || {
                show(&env, id)["status"] == "claimed"
                    && std::fs::read_to_string(&pids).is_ok_and(|s| s.lines().count() >= n)
            })
        };
        assert!(running("k1", 2), "k1 did not start");
        let killed = env.cmd("taskd").args(["kill", "k1"]).ok().json();
        assert_eq!(killed["task"]["status"], "failed", "{killed}");
        assert_eq!(killed["error"]["killed"], true);
        assert_eq!(killed["error"]["attempt"], 1);
        let t = show(&env, "k1");
        assert_eq!(t["status"], "failed");
        assert!(t["reason"].as_str().is_some_and(|r| r.contains("killed by taskd kill")), "{t}");
        assert!(!env.dir().join("tasks/control/k1.kill").exists(), "the request is removed");

        assert!(running("k2", 4), "k2 did not start");
        let killed = env.cmd("taskd").args(["kill", "k2", "--retry"]).ok().json();
        assert_eq!(killed["task"]["status"], "pending", "{killed}");
        assert_eq!(killed["task"]["attempts"], 1);
        assert_eq!(killed["task"]["errors"][0]["killed"], true);
        let out = worker.wait_with_output().expect("worker");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let lines: Vec<Value> =
            String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).expect("json line")).collect();
        assert!(lines.iter().all(|l| l["killed"] == true), "{lines:?}");
        let all: Vec<u32> =
            std::fs::read_to_string(&pids).expect("pids").lines().map(|l| l.parse().expect("pid")).collect();
        assert!(wait_until(Duration::from_secs(5), || all.iter().all(|&p| gone(p))), "left running: {all:?}");
    }
}

#[test]
fn kill_refuses_what_is_not_running_and_changes_nothing() {
    let env = TestEnv::with_session();
    submit(&env, &["--id", "done"]);
    submit(&env, &["--id", "queued"]);
    work(&env, "w1", 1, &[], "echo ok");
    let before = snapshot(&env.dir());
    env.cmd("taskd").args(["kill", "done"]).code(1).stderr_has(&[
        "task \"done\" is completed",
        "only a claimed (running) task can be killed",
        "nothing was changed",
    ]);
    env.cmd("taskd").args(["kill", "queued"]).code(1).stderr_has(&["is pending"]);
    env.cmd("taskd").args(["kill", "ghost"]).code(1).stderr_has(&["no task \"ghost\""]);
    env.cmd("taskd").args(["kill", "bad/id"]).code(2);
    assert_eq!(snapshot(&env.dir()), before);

    // A claim held by an agent that is not a work loop: nobody acts on the request.
    env.cmd("registry").args(["register", "manual", "--type", "worker"]).ok();
    env.cmd("taskd").args(["claim", "manual"]).ok();
    env.cmd("taskd")
        .args(["kill", "queued", "--timeout", "0.3"])
        .code(3)
        .stderr_has(&["still running", "only `taskd work` loops"]);
    assert_eq!(show(&env, "queued")["status"], "claimed");
    let req = env.cmd("taskd").args(["kill", "queued", "--no-wait"]).ok().json();
    assert_eq!(req["task"], "queued");
    assert_eq!(req["attempt"], 1);
    assert_eq!(req["retry"], false);
}

#[test]
fn pause_holds_claims_until_resume_and_leaves_running_work_alone() {
    let env = TestEnv::with_session();
    env.cmd("registry").args(["register", "cpu1", "--type", "cpu"]).ok();
    env.cmd("registry").args(["register", "gpu1", "--type", "gpu"]).ok();
    submit(&env, &["--id", "running"]);
    let held = env.cmd("taskd").args(["claim", "cpu1"]).ok().json();
    submit(&env, &["--id", "g", "--type", "gpu"]);
    submit(&env, &["--id", "any"]);

    let p = env.cmd("taskd").args(["pause", "--type", "gpu", "--reason", "driver update"]).ok().json();
    assert_eq!(p["types"]["gpu"]["reason"], "driver update");
    assert_eq!(p["all"], Value::Null);
    // Only the gpu-typed task is held: gpu1 gets the untyped one, then nothing.
    assert_eq!(env.cmd("taskd").args(["claim", "gpu1"]).ok().json()["id"], "any");
    env.cmd("taskd").args(["claim", "gpu1"]).code(3);
    assert_eq!(env.json("tasks/paused.json")["types"]["gpu"]["reason"], "driver update");
    // The overview says so, as `taskd pause` printed it.
    assert_eq!(env.cmd("healthmon").args(["status", "--json"]).ok().json()["paused"], p);

    let p = env.cmd("taskd").arg("pause").ok().json();
    assert!(p["all"]["at"].is_string());
    // Pausing twice keeps the first pause.
    assert_eq!(env.cmd("taskd").arg("pause").ok().json()["all"], p["all"]);
    // Running work is untouched: the held claim completes.
    env.cmd("taskd")
        .args(["complete", "running", "--agent", "cpu1", "--token", held["claim_token"].as_str().expect("token")])
        .ok();
    assert_eq!(env.cmd("taskd").args(["assign"]).ok().json()["assigned"], serde_json::json!([]));

    let waiter = env.cmd("taskd").args(["claim", "gpu1", "--wait", "--timeout", "10"]).spawn();
    std::thread::sleep(Duration::from_millis(300));
    let r = env.cmd("taskd").args(["resume", "--type", "gpu"]).ok().json();
    assert!(r["all"].is_object(), "the whole-queue pause stays");
    assert_eq!(r["types"], serde_json::json!({}));
    let r = env.cmd("taskd").arg("resume").ok().json();
    assert_eq!(r, serde_json::json!({"all": null, "types": {}}));
    assert!(!env.dir().join("tasks/paused.json").exists(), "nothing paused: no file");
    let out = waiter.wait_with_output().expect("waiter");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let got: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(got["id"], "g", "the waiting claim woke on resume");
    // Resuming with nothing paused is fine too.
    env.cmd("taskd").arg("resume").ok();
    env.cmd("taskd").args(["pause", "--type", "no/slash"]).code(2);
}

#[test]
fn the_report_embeds_the_end_of_a_failed_tasks_stderr() {
    let env = TestEnv::with_session();
    submit(&env, &["--id", "bad", "--max-attempts", "1"]);
    let script = "for i in $(seq 1 30); do echo \"line $i\" >&2; done; echo '<b>last</b>' >&2; exit 2";
    work(&env, "w1", 1, &[], script);
    let md = env.cmd("aggregate").args(["--format", "md"]).run().stdout_str();
    assert!(md.contains("Last lines of its stderr (attempt 1, `tasks/output/bad.1.err` in the session)"), "{md}");
    assert!(md.contains("  <b>last</b>") && md.contains("  line 30") && !md.contains("line 20\n"), "{md}");
    let html = env.cmd("aggregate").args(["--format", "html"]).run().stdout_str();
    assert!(html.contains("<code>tasks/output/bad.1.err</code>"), "{html}");
    assert!(html.contains("&lt;b&gt;last&lt;/b&gt;</pre>"), "{html}");
}
