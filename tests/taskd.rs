//! taskd, black-box: exactly-once claims under concurrency and kill -9, fencing, retries,
//! dependencies, strategies, the worker loop and bad input.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::util::{Rng, TestEnv, assert_all_json_parse, kill9, wait_until};

fn register(env: &TestEnv, agent: &str, ty: &str, caps: &[&str]) {
    let mut c = env.cmd("registry").args(["register", agent, "--type", ty]);
    for cap in caps {
        c = c.args(["--capability", cap]);
    }
    c.ok();
}

fn submit(env: &TestEnv, args: &[&str]) -> Value {
    env.cmd("taskd").arg("submit").args(args).ok().json()
}

fn submit_batch(env: &TestEnv, lines: &[Value]) {
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    env.cmd("taskd").args(["submit", "--batch"]).run_with_stdin(text.as_bytes()).assert_code(0);
}

fn claim(env: &TestEnv, agent: &str) -> Option<Value> {
    let out = env.cmd("taskd").args(["claim", agent]).run();
    match out.code() {
        Some(0) => Some(out.json()),
        Some(3) => None,
        _ => panic!("claim failed: {}", out.stderr_str()),
    }
}

fn status(env: &TestEnv, id: &str) -> Value {
    env.cmd("taskd").args(["show", id]).ok().json()
}

/// Every JSON file under `dir`, recursively, whose text contains `needle`.
fn files_containing(dir: &Path, needle: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else { return out };
    for e in rd {
        let p = e.expect("entry").path();
        if p.is_dir() {
            out.extend(files_containing(&p, needle));
        } else if let Ok(text) = std::fs::read_to_string(&p)
            && text.contains(needle)
            && let Ok(v) = serde_json::from_str::<Value>(&text)
        {
            out.push(v);
        }
    }
    out
}

/// The seed-shaped documents of one results log, `results/<agent>.jsonl`: one per line,
/// every line complete.
fn result_log(path: &std::path::Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).expect("read");
    assert!(text.is_empty() || text.ends_with('\n'), "{} ends in a partial line", path.display());
    text.lines().map(|l| serde_json::from_str(l).expect("each line is one JSON document")).collect()
}

/// Completed entries per task id across every results/<agent>.jsonl (the task store's
/// results logs; nothing else is in results/ in these tests).
fn result_counts(env: &TestEnv) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for e in std::fs::read_dir(env.dir().join("results")).expect("results") {
        let path = e.expect("entry").path();
        assert_eq!(path.extension().and_then(|x| x.to_str()), Some("jsonl"), "{}", path.display());
        for v in result_log(&path) {
            for t in v["tasks"].as_array().expect("tasks array") {
                if t["status"] == "completed" {
                    *counts.entry(t["id"].as_str().expect("id").to_string()).or_insert(0) += 1;
                }
            }
        }
    }
    counts
}

#[test]
fn eight_workers_one_process_per_call_complete_5000_tasks_exactly_once() {
    let env = TestEnv::with_session();
    let n = 5000;
    let lines: Vec<Value> = (0..n).map(|i| json!({"id": format!("t{i}"), "payload": {"i": i}})).collect();
    submit_batch(&env, &lines);
    for w in 0..8 {
        register(&env, &format!("w{w}"), "worker", &[]);
    }
    let handles: Vec<_> = (0..8)
        .map(|w| {
            let base = env.base.clone();
            let sid = env.sid().to_string();
            std::thread::spawn(move || {
                let env = TestEnv { root: tempfile::tempdir().expect("tmp"), base, session: Some(sid) };
                let agent = format!("w{w}");
                let mut done = Vec::new();
                while let Some(t) = claim(&env, &agent) {
                    let id = t["id"].as_str().expect("id").to_string();
                    let tok = t["claim_token"].as_str().expect("token").to_string();
                    env.cmd("taskd").args(["complete", &id, "--token", &tok, "--result", "1"]).ok();
                    done.push(id);
                }
                done
            })
        })
        .collect();
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.join().expect("worker"));
    }
    assert_eq!(all.len(), n, "every claim was completed by its claimer");
    let unique: HashSet<_> = all.iter().collect();
    assert_eq!(unique.len(), n, "no task was claimed twice");
    let counts = result_counts(&env);
    assert_eq!(counts.len(), n);
    assert!(counts.values().all(|&c| c == 1));
    let p = env.cmd("taskd").arg("progress").ok().json();
    assert_eq!(p["completed"], n);
    assert_eq!(p["operation_progress"], 100);
    let view = env.json("state/tasks.json");
    assert_eq!(view["completed"].as_array().expect("completed").len(), n);
    assert!(view["completed"].as_array().expect("c").iter().all(|t| t["attempts"] == 1));
    assert_eq!(env.json("state/global.json")["operation_progress"], 100);
}

#[test]
fn kill_9_of_workers_30_times_then_requeue_completes_every_task_once() {
    let env = TestEnv::with_session();
    let n = 120;
    let lines: Vec<Value> = (0..n).map(|i| json!({"id": format!("k{i}"), "max_attempts": 100})).collect();
    submit_batch(&env, &lines);
    let mut rng = Rng::new(7);
    let mut killed = Vec::new();
    let cmd = ["sh", "-c", "sleep 0.01; echo \"$TASK_ID\""];
    for round in 0..30 {
        let agent = format!("k-worker-{round}");
        let mut child = env.cmd("taskd").args(["work", &agent, "--idle-exit", "5", "--"]).args(cmd).spawn();
        std::thread::sleep(Duration::from_millis(20 + rng.below(60)));
        kill9(&mut child);
        killed.push(agent);
    }
    for agent in &killed {
        env.cmd("taskd").args(["requeue", "--agent", agent, "--reason", "killed"]).ok();
    }
    env.cmd("taskd").args(["requeue", "--expired"]).ok();
    env.cmd("taskd").args(["work", "finisher", "--idle-exit", "0.5", "--"]).args(cmd).ok();
    let done = env.cmd("taskd").args(["list", "--status", "completed"]).ok().json_lines();
    let ids: HashSet<String> = done.iter().map(|t| t["id"].as_str().expect("id").to_string()).collect();
    let want: HashSet<String> = (0..n).map(|i| format!("k{i}")).collect();
    assert_eq!(ids, want, "the completed set equals the submitted set");
    assert_eq!(done.len(), n);
    assert!(result_counts(&env).values().all(|&c| c == 1), "each task completed once");
    assert_all_json_parse(&env.dir());
}

/// A parent `p` claimed by `w1` with a child `c` waiting for it; returns the claim.
fn parent_and_child(env: &TestEnv) -> Value {
    register(env, "w1", "worker", &[]);
    submit(env, &["--id", "p"]);
    submit(env, &["--id", "c", "--after", "p"]);
    claim(env, "w1").expect("w1 claims p")
}

/// After a completion of `p` with `{"answer": 42}` (however interrupted, and finished by
/// whatever ran since): the result is kept, the child runs, waiters see the end, and the
/// results file has one entry for `p`.
fn assert_parent_finished(env: &TestEnv, what: &str) {
    let p = status(env, "p");
    assert_eq!((&p["status"], &p["results"]), (&json!("completed"), &json!({"answer": 42})), "{what}: {p}");
    assert_eq!(status(env, "c")["status"], "pending", "{what}: the child is released");
    let c = claim(env, "w1").expect("c is claimable");
    env.cmd("taskd").args(["complete", "c", "--token", c["claim_token"].as_str().expect("token")]).ok();
    let w = env.cmd("taskd").args(["wait", "--timeout", "5"]).ok().json();
    assert_eq!(w["completed"], 2, "{what}: {w}");
    let docs = result_log(&env.dir().join("results/w1.jsonl"));
    assert_eq!(docs.iter().filter(|d| d["tasks"][0]["id"] == "p").count(), 1, "{what}: {docs:?}");
    assert!(std::fs::read_dir(env.dir().join("tasks/finishing")).expect("finishing").next().is_none(), "{what}");
}

#[test]
fn a_completion_killed_before_its_follow_up_is_finished_by_requeue_expired() {
    let env = TestEnv::with_session();
    let mut t = parent_and_child(&env);
    // The state a completer killed right after publishing leaves: the final record in
    // done/, its follow-up owed (dependents, results entry, bell) and not run.
    let tasks = env.dir().join("tasks");
    let obj = t.as_object_mut().expect("record");
    for k in ["claim_token", "lease_seconds", "lease_expires_at"] {
        obj.remove(k);
    }
    obj.insert("status".into(), json!("completed"));
    obj.insert("completed_at".into(), json!("2026-01-01T00:00:01.000Z"));
    obj.insert("results".into(), json!({"answer": 42}));
    std::fs::write(tasks.join("done/p.json"), t.to_string()).expect("plant done record");
    std::fs::remove_file(tasks.join("claimed/p.json")).expect("claimed record moved");
    std::fs::create_dir_all(tasks.join("finishing")).expect("dir");
    std::fs::write(tasks.join("finishing/p"), b"").expect("plant mark");
    assert_eq!(status(&env, "c")["status"], "blocked");
    let r = env.cmd("taskd").args(["requeue", "--expired"]).ok().json();
    assert_eq!(r["requeued"], 0, "{r}");
    assert_parent_finished(&env, "planted");
}

#[test]
fn a_complete_killed_at_any_rename_loses_nothing() {
    if std::process::Command::new("strace").arg("-V").output().is_err() {
        eprintln!("skipped: strace is not installed");
        return;
    }
    let taskd = crate::util::bin("taskd");
    for syscall in ["renameat", "rename"] {
        for k in 1.. {
            let env = TestEnv::with_session();
            let t = parent_and_child(&env);
            let token = t["claim_token"].as_str().expect("token").to_string();
            let mut strace = std::process::Command::new("strace");
            for (key, _) in std::env::vars_os() {
                if key.to_string_lossy().starts_with("COORD_") || key == "RUST_LOG" {
                    strace.env_remove(key);
                }
            }
            let killed = !strace
                .env("COORD_BASE", &env.base)
                .env("COORD_SESSION", env.sid())
                .args(["-f", "-qq", "-o", "/dev/null", "-e", &format!("trace={syscall}")])
                .arg("-e")
                .arg(format!("inject={syscall}:signal=SIGKILL:when={k}"))
                .arg(&taskd)
                .args(["complete", "p", "--token", &token, "--result", r#"{"answer":42}"#])
                .output()
                .expect("run strace")
                .status
                .success();
            let what = format!("killed on {syscall} #{k}");
            env.cmd("taskd").args(["requeue", "--expired"]).ok();
            if status(&env, "p")["status"] == "claimed" {
                // Killed before the completion was published: the holder's retry works.
                env.cmd("taskd").args(["complete", "p", "--token", &token, "--result", r#"{"answer":42}"#]).ok();
            }
            assert_parent_finished(&env, &what);
            if !killed {
                break;
            }
            assert!(k < 20, "{what}: complete should have run out of renames");
        }
    }
}

#[test]
fn a_stale_holder_is_refused_and_the_new_holder_accepted() {
    let env = TestEnv::with_session();
    register(&env, "a", "worker", &[]);
    register(&env, "b", "worker", &[]);
    submit(&env, &["--id", "job"]);
    let first = env.cmd("taskd").args(["claim", "a", "--lease", "0.2"]).ok().json();
    let tok_a = first["claim_token"].as_str().expect("token").to_string();
    let r = env.cmd("taskd").args(["requeue", "--expired"]).ok().json();
    assert_eq!(r["requeued"], 0, "lease still running");
    std::thread::sleep(Duration::from_millis(300));
    let r = env.cmd("taskd").args(["requeue", "--expired"]).ok().json();
    assert_eq!(r["requeued"], 1);
    let second = claim(&env, "b").expect("b claims");
    let tok_b = second["claim_token"].as_str().expect("token").to_string();
    assert_eq!(second["attempts"], 2);
    env.cmd("taskd").args(["complete", "job", "--token", &tok_a]).code(1).stderr_has(&["claim lost"]);
    env.cmd("taskd").args(["complete", "job", "--agent", "a"]).code(1).stderr_has(&["claim lost"]);
    env.cmd("taskd").args(["fail", "job", "--agent", "a"]).code(1);
    assert_eq!(status(&env, "job")["claim_token"], tok_b.as_str(), "nothing changed");
    env.cmd("taskd").args(["complete", "job", "--token", &tok_b, "--agent", "b"]).ok();
    assert_eq!(status(&env, "job")["status"], "completed");
    env.cmd("taskd").args(["complete", "job", "--token", &tok_b]).code(1).stderr_has(&["claim lost", "completed"]);
}

#[test]
fn heartbeats_renew_the_lease() {
    let env = TestEnv::with_session();
    register(&env, "a", "worker", &[]);
    submit(&env, &["--id", "job"]);
    env.cmd("taskd").args(["claim", "a", "--lease", "0.3"]).ok();
    for _ in 0..4 {
        std::thread::sleep(Duration::from_millis(150));
        env.cmd("registry").args(["heartbeat", "a"]).ok();
    }
    assert_eq!(env.cmd("taskd").args(["requeue", "--expired"]).ok().json()["requeued"], 0);
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(env.cmd("taskd").args(["requeue", "--expired"]).ok().json()["requeued"], 1);
}

#[test]
fn retries_up_to_max_attempts_then_failed_with_the_error_text() {
    let env = TestEnv::with_session();
    register(&env, "a", "worker", &[]);
    submit(&env, &["--id", "flaky", "--max-attempts", "2"]);
    claim(&env, "a").expect("first");
    let t = env.cmd("taskd").args(["fail", "flaky", "--agent", "a", "--error", "disk on fire"]).ok().json();
    assert_eq!(t["status"], "pending");
    assert_eq!(t["attempts"], 1);
    claim(&env, "a").expect("second");
    let t = env.cmd("taskd").args(["fail", "flaky", "--agent", "a", "--error", "still on fire"]).ok().json();
    assert_eq!(t["status"], "failed");
    assert!(t["reason"].as_str().expect("reason").contains("still on fire"));
    let errs: Vec<&str> =
        t["errors"].as_array().expect("errors").iter().map(|e| e["error"].as_str().expect("e")).collect();
    assert_eq!(errs, ["disk on fire", "still on fire"]);
    assert!(claim(&env, "a").is_none());
    env.cmd("taskd").args(["wait", "flaky"]).code(1);
}

#[test]
fn a_diamond_completes_in_dependency_order() {
    let env = TestEnv::with_session();
    register(&env, "a", "worker", &[]);
    submit_batch(
        &env,
        &[
            json!({"id": "d", "after": ["b", "c"]}),
            json!({"id": "b", "after": ["top"], "priority": 9}),
            json!({"id": "c", "after": ["top"]}),
            json!({"id": "top"}),
        ],
    );
    assert_eq!(status(&env, "d")["status"], "blocked");
    let mut order = Vec::new();
    while let Some(t) = claim(&env, "a") {
        let id = t["id"].as_str().expect("id").to_string();
        assert!(claim(&env, "a").is_none() || id == "b" || id == "c", "only one level is ready at a time");
        env.cmd("taskd").args(["complete", &id]).ok();
        order.push(id);
        // An extra claim above may have taken the sibling; finish it too.
        for s in env.cmd("taskd").args(["list", "--status", "claimed"]).ok().json_lines() {
            let sid = s["id"].as_str().expect("id").to_string();
            env.cmd("taskd").args(["complete", &sid]).ok();
            order.push(sid);
        }
    }
    assert_eq!(order.first().map(String::as_str), Some("top"));
    assert_eq!(order.last().map(String::as_str), Some("d"));
    assert_eq!(order.len(), 4);
    env.cmd("taskd").args(["wait", "d", "--timeout", "1"]).ok();
}

#[test]
fn a_failed_dependency_fails_its_dependents_and_a_cycle_is_refused() {
    let env = TestEnv::with_session();
    register(&env, "a", "worker", &[]);
    submit(&env, &["--id", "x", "--max-attempts", "1"]);
    submit(&env, &["--id", "y", "--after", "x"]);
    submit(&env, &["--id", "z", "--after", "y"]);
    claim(&env, "a").expect("x");
    env.cmd("taskd").args(["fail", "x", "--error", "nope"]).ok();
    for id in ["y", "z"] {
        let t = status(&env, id);
        assert_eq!(t["status"], "failed", "{t}");
        assert!(t["reason"].as_str().expect("reason").contains("dependency failed"), "{t}");
    }
    // Submitted after its dependency failed: fails at once, never runs.
    let late = submit(&env, &["--id", "late", "--after", "x"]);
    assert_eq!(late["status"], "failed");
    assert!(claim(&env, "a").is_none());

    let cyc = "{\"id\":\"p\",\"after\":[\"q\"]}\n{\"id\":\"q\",\"after\":[\"p\"]}\n";
    env.cmd("taskd").args(["submit", "--batch"]).run_with_stdin(cyc.as_bytes()).assert_code(2);
    env.cmd("taskd").args(["submit", "--batch"]).run_with_stdin(b"{\"id\":\"s\",\"after\":[\"s\"]}\n").assert_code(2);
    env.cmd("taskd").args(["show", "p"]).code(1);
    env.cmd("taskd").args(["submit", "--id", "u", "--after", "nosuch"]).code(2).stderr_has(&["unknown task"]);
    env.cmd("taskd").args(["submit", "--id", "x"]).code(1).stderr_has(&["already exists"]);
}

#[test]
fn claim_respects_priority_age_type_and_capabilities() {
    let env = TestEnv::with_session();
    register(&env, "gpu-box", "builder", &["gpu", "rust"]);
    register(&env, "plain", "builder", &["rust"]);
    register(&env, "tester", "tester", &[]);
    submit(&env, &["--id", "old-low"]);
    submit(&env, &["--id", "new-high", "--priority", "5"]);
    submit(&env, &["--id", "needs-gpu", "--capability", "gpu", "--priority", "9"]);
    submit(&env, &["--id", "for-testers", "--type", "tester", "--priority", "9"]);
    submit(&env, &["--id", "old-low-2"]);
    assert_eq!(claim(&env, "plain").expect("t")["id"], "new-high");
    assert_eq!(claim(&env, "plain").expect("t")["id"], "old-low");
    assert_eq!(claim(&env, "gpu-box").expect("t")["id"], "needs-gpu");
    assert_eq!(claim(&env, "tester").expect("t")["id"], "for-testers");
    assert_eq!(claim(&env, "tester").expect("t")["id"], "old-low-2");
    assert!(claim(&env, "plain").is_none());
    let a = env.cmd("registry").args(["show", "plain"]).ok().json();
    assert_eq!(a["assigned_tasks"], json!(["new-high", "old-low"]));
}

#[test]
fn round_robin_cycles_and_keeps_its_cursor() {
    let env = TestEnv::with_session();
    for a in ["a1", "a2", "a3"] {
        register(&env, a, "worker", &[]);
    }
    for i in 1..=4 {
        submit(&env, &["--id", &format!("t{i}")]);
    }
    let r = env.cmd("taskd").args(["assign", "--strategy", "round_robin", "--slots", "5"]).ok().json();
    let got: Vec<(String, String)> = r["assigned"]
        .as_array()
        .expect("assigned")
        .iter()
        .map(|x| (x["task"].as_str().expect("t").to_string(), x["agent"].as_str().expect("a").to_string()))
        .collect();
    let want: Vec<(String, String)> = [("t1", "a1"), ("t2", "a2"), ("t3", "a3"), ("t4", "a1")]
        .iter()
        .map(|(t, a)| (t.to_string(), a.to_string()))
        .collect();
    assert_eq!(got, want);
    submit(&env, &["--id", "t5"]);
    let r = env.cmd("taskd").args(["assign", "--strategy", "round_robin", "--slots", "5"]).ok().json();
    assert_eq!(r["assigned"][0]["agent"], "a2", "the cursor survives between passes");
    let t = status(&env, "t5");
    assert_eq!(t["status"], "assigned");
    assert_eq!(t["assigned_by"], "coordinator");
    let msgs = files_containing(&env.dir().join("messages/a2"), "task_assignment");
    assert!(msgs.iter().any(|m| m["payload"]["id"] == "t5" && m["from"] == "coordinator"), "{msgs:?}");
}

#[test]
fn load_balanced_picks_the_least_loaded_agent() {
    let env = TestEnv::with_session();
    for a in ["a1", "a2", "a3"] {
        register(&env, a, "worker", &[]);
    }
    for i in 0..3 {
        submit(&env, &["--id", &format!("pre{i}")]);
    }
    claim(&env, "a1").expect("a1 1");
    claim(&env, "a1").expect("a1 2");
    claim(&env, "a2").expect("a2 1");
    for i in 0..3 {
        submit(&env, &["--id", &format!("n{i}")]);
    }
    let r = env.cmd("taskd").args(["assign", "--strategy", "load_balanced", "--slots", "3"]).ok().json();
    let agents: Vec<&str> =
        r["assigned"].as_array().expect("a").iter().map(|x| x["agent"].as_str().expect("a")).collect();
    assert_eq!(agents, ["a3", "a2", "a3"]);
}

#[test]
fn capability_based_routes_by_capability_and_leaves_unservable_tasks_queued() {
    let env = TestEnv::with_session();
    register(&env, "generalist", "worker", &["rust", "gpu", "docs"]);
    register(&env, "rustacean", "worker", &["rust"]);
    submit(&env, &["--id", "gpu-job", "--capability", "gpu", "--priority", "2"]);
    submit(&env, &["--id", "rust-job", "--capability", "rust", "--priority", "1"]);
    submit(&env, &["--id", "cuda-job", "--capability", "cuda", "--priority", "3"]);
    let r = env.cmd("taskd").args(["assign", "--strategy", "capability_based", "--slots", "2"]).ok().json();
    let got: HashMap<String, String> = r["assigned"]
        .as_array()
        .expect("a")
        .iter()
        .map(|x| (x["task"].as_str().expect("t").to_string(), x["agent"].as_str().expect("a").to_string()))
        .collect();
    assert_eq!(got.get("gpu-job").map(String::as_str), Some("generalist"));
    assert_eq!(got.get("rust-job").map(String::as_str), Some("rustacean"), "least loaded, closest fit");
    assert!(!got.contains_key("cuda-job"));
    assert_eq!(status(&env, "cuda-job")["status"], "pending");
}

#[test]
fn priority_queue_preempts_the_lowest_priority_work_and_release_keeps_the_attempt() {
    let env = TestEnv::with_session();
    register(&env, "solo", "worker", &[]);
    submit(&env, &["--id", "low", "--priority", "1"]);
    let r = env.cmd("taskd").args(["assign", "--strategy", "priority_queue"]).ok().json();
    assert_eq!(r["assigned"][0]["task"], "low");
    submit(&env, &["--id", "high", "--priority", "9"]);
    submit(&env, &["--id", "lower", "--priority", "0"]);
    let r = env.cmd("taskd").args(["assign", "--strategy", "priority_queue"]).ok().json();
    assert_eq!(r["assigned"], json!([]));
    assert_eq!(r["preempted"], json!([{"agent": "solo", "task": "low", "for_task": "high"}]));
    let msgs = files_containing(&env.dir().join("messages/solo"), "\"preempt\"");
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    assert_eq!(msgs[0]["payload"]["task_id"], "low");
    assert_eq!(msgs[0]["payload"]["for_task"], "high");
    let r = env.cmd("taskd").args(["assign", "--strategy", "priority_queue"]).ok().json();
    assert_eq!(r["preempted"], json!([]), "asked once per claim");
    let t = env.cmd("taskd").args(["release", "low", "--agent", "solo"]).ok().json();
    assert_eq!(t["status"], "pending");
    assert_eq!(t["attempts"], 0, "a release does not spend an attempt");
    let r = env.cmd("taskd").args(["assign", "--strategy", "priority_queue"]).ok().json();
    assert_eq!(r["assigned"][0]["task"], "high");
}

#[test]
fn work_runs_a_command_that_fails_on_some_inputs() {
    let env = TestEnv::with_session();
    let lines: Vec<Value> =
        (1..=9).map(|n| json!({"id": format!("n{n}"), "payload": {"n": n}, "max_attempts": 1})).collect();
    submit_batch(&env, &lines);
    let script = r#"n=$(jq .payload.n); [ "$TASK_ID" = "n$n" ] || exit 9; if [ $((n % 3)) -eq 0 ]; then echo "no multiples of three: $n" >&2; exit 1; fi; echo "{\"square\": $((n*n))}""#;
    let out = env.cmd("taskd").args(["work", "w", "--idle-exit", "0.3", "--", "sh", "-c", script]).ok();
    let outcomes = out.json_lines();
    assert_eq!(outcomes.len(), 9);
    for n in 1..=9 {
        let t = status(&env, &format!("n{n}"));
        if n % 3 == 0 {
            assert_eq!(t["status"], "failed");
            assert!(t["errors"][0]["error"].as_str().expect("err").contains("no multiples of three"), "{t}");
        } else {
            assert_eq!(t["status"], "completed");
            assert_eq!(t["results"], json!({"square": n * n}));
        }
    }
    let a = env.cmd("registry").args(["show", "w"]).ok().json();
    assert_eq!(a["status"], "terminated", "work unregisters the agent it registered");
    let docs = result_log(&env.dir().join("results/w.jsonl"));
    assert_eq!(docs.iter().map(|d| d["tasks"].as_array().expect("t").len()).sum::<usize>(), 9);
    // Text output becomes a string result; --max-tasks stops the loop.
    submit(&env, &["--id", "text"]);
    submit(&env, &["--id", "text2"]);
    env.cmd("taskd").args(["work", "w2", "--max-tasks", "1", "--", "echo", "hello"]).ok();
    assert_eq!(status(&env, "text")["results"], "hello");
    assert_eq!(status(&env, "text2")["status"], "pending");
    // Every rewrite went through tmp/0 … tmp/15 and left nothing there, nor next to
    // the records (the worker removes the old versions before it exits).
    for k in 0..16 {
        let d = env.dir().join(format!("tmp/{k}"));
        assert_eq!(std::fs::read_dir(&d).expect("spread dir").count(), 0, "{} is not empty", d.display());
    }
    for d in ["tasks/claimed", "tasks/done", "tasks/failed", "registry"] {
        let hidden = std::fs::read_dir(env.dir().join(d))
            .expect("list")
            .filter(|e| e.as_ref().expect("entry").file_name().to_string_lossy().starts_with('.'))
            .count();
        assert_eq!(hidden, 0, "temporary files left in {d}");
    }
}

#[test]
fn a_worker_restarted_under_the_id_of_a_dead_one_registers_itself() {
    let env = TestEnv::with_session();
    // w1's registered process is gone (a worker killed before healthmon noticed), and
    // its claim of t0 with it.
    let mut old = std::process::Command::new("sleep").arg("60").spawn().expect("spawn");
    env.cmd("registry").args(["register", "w1", "--type", "worker", "--pid", &old.id().to_string()]).ok();
    submit(&env, &["--id", "t0"]);
    claim(&env, "w1").expect("the old w1 claims t0");
    old.kill().expect("kill");
    old.wait().expect("reap");
    submit(&env, &["--id", "t1"]);
    // The task runs a healthmon tick, then reports w1's registration as its result.
    let script = r#""$0" --once >/dev/null 2>&1; "$1" show w1"#;
    let hm = crate::util::bin("healthmon");
    let reg = crate::util::bin("registry");
    let worker =
        env.cmd("taskd").args(["work", "w1", "--max-tasks", "1", "--", "sh", "-c", script]).arg(&hm).arg(&reg).spawn();
    let pid = worker.id();
    let out = worker.wait_with_output().expect("worker");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let line: Value = serde_json::from_slice(&out.stdout).expect("outcome");
    assert_eq!((&line["id"], &line["status"]), (&json!("t0"), &json!("completed")), "not requeued under it: {line}");
    let t0 = status(&env, "t0");
    assert_eq!(t0["attempts"], 2, "the dead process's claim was requeued at the restart: {t0}");
    let seen = t0["results"].clone();
    assert_eq!((&seen["pid"], &seen["status"]), (&json!(pid), &json!("active")), "{seen}");
    assert_eq!(status(&env, "t1")["status"], "pending");
    // A live process registered under the id (not this worker's own agent) is refused.
    let mut other = std::process::Command::new("sleep").arg("60").spawn().expect("spawn");
    env.cmd("registry").args(["register", "w2", "--type", "worker", "--pid", &other.id().to_string()]).ok();
    env.cmd("taskd").args(["work", "w2", "--max-tasks", "1", "--", "true"]).code(1).stderr_has(&["another worker"]);
    assert_eq!(env.cmd("registry").args(["show", "w2"]).ok().json()["pid"], json!(other.id()));
    other.kill().expect("kill");
    other.wait().expect("reap");
}

#[test]
fn a_worker_is_not_refused_by_a_killed_worker_its_parent_has_not_reaped_yet() {
    let env = TestEnv::with_session();
    let mut old = std::process::Command::new("sleep").arg("60").spawn().expect("spawn");
    env.cmd("registry").args(["register", "w1", "--type", "worker", "--pid", &old.id().to_string()]).ok();
    submit(&env, &["--id", "t0"]);
    claim(&env, "w1").expect("the old w1 claims t0");
    crate::healthmon::kill_leaving_a_zombie(&old);
    let line = env.cmd("taskd").args(["work", "w1", "--max-tasks", "1", "--", "true"]).ok().json();
    assert_eq!((&line["id"], &line["status"]), (&json!("t0"), &json!("completed")), "{line}");
    assert_eq!(status(&env, "t0")["attempts"], 2, "the zombie's claim was requeued");
    old.wait().expect("reap");
}

#[test]
fn a_worker_is_not_refused_by_a_dead_registration_whose_pid_was_reused_in_its_clock_tick() {
    let env = TestEnv::with_session();
    let mut squatter = std::process::Command::new("sleep").arg("60").spawn().expect("spawn");
    env.cmd("registry").args(["register", "w1", "--type", "worker", "--pid", &squatter.id().to_string()]).ok();
    submit(&env, &["--id", "t0"]);
    claim(&env, "w1").expect("the old w1 claims t0");
    // The registered process died and `squatter` took its pid in the same clock tick.
    if crate::healthmon::pretend_same_tick_reuse(&env, "w1").is_none() {
        eprintln!("skipped: no pidfs inode recorded (Linux < 6.9)");
        squatter.kill().expect("kill");
        squatter.wait().expect("reap");
        return;
    }
    let line = env.cmd("taskd").args(["work", "w1", "--max-tasks", "1", "--", "true"]).ok().json();
    assert_eq!((&line["id"], &line["status"]), (&json!("t0"), &json!("completed")), "{line}");
    assert_eq!(status(&env, "t0")["attempts"], 2, "the dead registration's claim was requeued");
    squatter.kill().expect("kill");
    squatter.wait().expect("reap");
}

#[test]
fn claim_wait_wakes_on_submit_and_times_out_with_exit_3() {
    let env = TestEnv::with_session();
    register(&env, "a", "worker", &[]);
    let t0 = Instant::now();
    let empty = env.cmd("taskd").args(["claim", "a", "--wait", "--timeout", "0.2"]).code(3);
    assert!(empty.stderr_str().starts_with("taskd: nothing to claim"), "{}", empty.stderr_str());
    assert!(t0.elapsed() >= Duration::from_millis(200));
    let child = env.cmd("taskd").args(["claim", "a", "--wait", "--timeout", "20"]).spawn();
    std::thread::sleep(Duration::from_millis(150));
    let t1 = Instant::now();
    submit(&env, &["--id", "late"]);
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success());
    assert!(t1.elapsed() < Duration::from_secs(2), "woken by the submit, not by the timeout");
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["id"], "late");
}

#[test]
fn wait_reports_completion_failure_and_timeout() {
    let env = TestEnv::with_session();
    register(&env, "a", "worker", &[]);
    submit(&env, &["--id", "w1"]);
    env.cmd("taskd").args(["wait", "w1", "--timeout", "0.1"]).code(3);
    let waiter = env.cmd("taskd").args(["wait", "--timeout", "20"]).spawn();
    claim(&env, "a").expect("claim");
    env.cmd("taskd").args(["complete", "w1"]).ok();
    let out = waiter.wait_with_output().expect("wait");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    env.cmd("taskd").args(["wait", "nosuch"]).code(1);
}

#[test]
fn run_assigns_as_tasks_appear_and_stops_on_sigterm_and_when_the_session_ends() {
    let env = TestEnv::with_session();
    register(&env, "a", "worker", &[]);
    let mut run = env.cmd("taskd").args(["run", "--strategy", "round_robin"]).spawn();
    std::thread::sleep(Duration::from_millis(200));
    submit(&env, &["--id", "r1"]);
    assert!(wait_until(Duration::from_secs(5), || status(&env, "r1")["status"] == "assigned"));
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(run.id() as i32, libc::SIGTERM);
    }
    let st = run.wait().expect("wait");
    assert_eq!(st.code(), Some(0));

    let mut run = env.cmd("taskd").args(["run"]).spawn();
    std::thread::sleep(Duration::from_millis(200));
    let path = env.dir().join("session.json");
    let mut s: Value = serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("json");
    s["status"] = json!("completed");
    let tmp = env.dir().join(".session.tmp");
    std::fs::write(&tmp, serde_json::to_vec(&s).expect("ser")).expect("write");
    std::fs::rename(&tmp, &path).expect("rename");
    assert!(wait_until(Duration::from_secs(5), || matches!(run.try_wait(), Ok(Some(_)))), "run ends with the session");
    kill9(&mut run);
}

#[test]
fn cancel_stops_a_task_and_its_dependents() {
    let env = TestEnv::with_session();
    submit(&env, &["--id", "c1"]);
    submit(&env, &["--id", "c2", "--after", "c1"]);
    let t = env.cmd("taskd").args(["cancel", "c1"]).ok().json();
    assert_eq!(t["status"], "cancelled");
    assert_eq!(status(&env, "c2")["status"], "failed");
    env.cmd("taskd").args(["cancel", "c1"]).code(1);
}

#[test]
fn a_record_whose_id_escapes_is_set_aside_and_the_pass_goes_on() {
    let env = TestEnv::with_session();
    register(&env, "w1", "worker", &[]);
    submit(&env, &["--id", "real"]);
    let mut t = env.cmd("taskd").args(["claim", "w1", "--lease", "0.2"]).ok().json();
    // A copy of a real claimed record whose content names a task outside the session.
    let outside = env.root.path().join("outside");
    std::fs::create_dir_all(&outside).expect("outside");
    t["id"] = json!("../../../../outside/PWNED");
    let planted = env.dir().join("tasks/claimed/x.json");
    std::fs::write(&planted, t.to_string()).expect("plant");
    std::thread::sleep(Duration::from_millis(300));
    let out = env.cmd("taskd").args(["requeue", "--expired"]).ok();
    out.stderr_has(&["aside"]);
    let r = out.json();
    assert_eq!((&r["requeued"], &r["tasks"]), (&json!(1), &json!(["real"])), "the genuine lapsed claim: {r}");
    assert_eq!(std::fs::read_dir(&outside).expect("outside").count(), 0, "nothing created outside the session");
    assert!(!planted.exists());
    assert_eq!(std::fs::read_dir(env.dir().join("tasks/garbage")).expect("garbage").count(), 1);
    assert_eq!(status(&env, "real")["status"], "pending");
    env.cmd("taskd").args(["show", "x"]).code(1);
}

#[test]
fn bad_input_gets_a_clear_error_and_garbage_is_set_aside() {
    let env = TestEnv::with_session();
    register(&env, "a", "worker", &[]);
    env.cmd("taskd").args(["show", "ghost"]).code(1).stderr_has(&["no task"]);
    env.cmd("taskd").args(["complete", "ghost"]).code(1);
    env.cmd("taskd").args(["show", "../etc"]).code(2).stderr_has(&["invalid task id"]);
    env.cmd("taskd").args(["submit", "--id", "bad/id"]).code(2);
    env.cmd("taskd").args(["claim", "-rf"]).code(2);
    env.cmd("taskd").args(["submit", "--id", "p", "--payload", "{oops"]).code(2).stderr_has(&["--payload"]);
    env.cmd("taskd").args(["complete", "x", "--result", "nope"]).code(2);
    env.cmd("taskd").args(["claim", "nobody"]).code(1).stderr_has(&["not registered"]);
    let bad = b"{\"id\":\"ok1\"}\n{\"id\": 5}\n";
    env.cmd("taskd").args(["submit", "--batch"]).run_with_stdin(bad).assert_code(2);
    env.cmd("taskd").args(["show", "ok1"]).code(1);
    env.cmd("taskd").args(["submit", "--batch"]).run_with_stdin(b"{\"id\":\"x\",\"prio\":1}\n").assert_code(2);

    submit(&env, &["--id", "good1"]);
    submit(&env, &["--id", "good2"]);
    let tasks = env.dir().join("tasks");
    std::fs::write(tasks.join("pending/not-a-route"), b"junk").expect("plant");
    let route = tasks.join("pending/~+");
    let first = |d: &std::path::Path| std::fs::read_dir(d).expect("list").next().expect("one").expect("entry").path();
    let block = first(&first(&route));
    let chunk = first(&block);
    std::fs::write(block.join("garbage.txt"), b"junk").expect("plant");
    std::fs::write(chunk.join("0000000000000000.aaa.json"), b"{not json").expect("plant");
    // A well-formed record with no locator (tasks/ids/) was not submitted: it is set
    // aside, not skipped on every claim.
    std::fs::write(chunk.join("0000000000000000.stray.json"), b"{\"id\": \"stray\", \"status\": \"pending\"}")
        .expect("plant");
    std::fs::write(tasks.join("claimed/zzz.json"), b"[1,2").expect("plant");
    let out = env.cmd("taskd").args(["claim", "a"]).ok();
    assert_eq!(out.json()["id"], "good1");
    out.stderr_has(&["moved", "aside", "no locator"]);
    env.cmd("taskd").args(["list"]).ok();
    assert_eq!(claim(&env, "a").expect("good2")["id"], "good2");
    let garbage = std::fs::read_dir(tasks.join("garbage")).expect("garbage").count();
    assert_eq!(garbage, 5, "every planted file was moved aside");
    assert!(!chunk.join("0000000000000000.stray.json").exists());
    assert!(!tasks.join("claimed/zzz.json").exists());
}
