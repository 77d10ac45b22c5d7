//! aggregate, black-box: report fields, zero division, malformed inputs, determinism,
//! Markdown and HTML output, and each quality gate failing on a session built to fail it.

use std::fs::File;

use serde_json::{Value, json};

use crate::util::{TestEnv, assert_all_json_parse};

/// Registers `agent` for this test process (alive for the test's duration).
pub fn register(env: &TestEnv, agent: &str) {
    env.cmd("registry").args(["register", agent, "--type", "worker", "--pid"]).arg(std::process::id().to_string()).ok();
}

/// Writes `results/<agent>.json`.
pub fn write_results(env: &TestEnv, agent: &str, value: &Value) {
    std::fs::write(env.dir().join(format!("results/{agent}.json")), serde_json::to_vec_pretty(value).expect("ser"))
        .expect("write results");
}

fn two_agents() -> TestEnv {
    let env = TestEnv::with_session();
    register(&env, "w1");
    register(&env, "w2");
    write_results(
        &env,
        "w1",
        &json!({"tasks": [
            {"id": "t1", "status": "completed", "claimed_at": "2026-01-01T00:00:00Z", "completed_at": "2026-01-01T00:00:02Z"},
            {"id": "t2", "status": "failed", "error": "assertion <failed> & more", "claimed_at": "2026-01-01T00:00:02Z",
             "completed_at": "2026-01-01T00:00:03Z", "attempt": 1},
            {"id": "t2", "status": "completed", "claimed_at": "2026-01-01T00:00:03Z", "completed_at": "2026-01-01T00:00:04Z", "attempt": 2}
        ], "execution_time": 4.0, "host": "h1"}),
    );
    write_results(&env, "w2", &json!({"tasks": [{"id": "t3", "status": "skipped"}], "execution_time": 2}));
    env
}

#[test]
fn report_has_the_seed_fields_and_sums() {
    let env = two_agents();
    let out = env.cmd("aggregate").ok();
    let line = out.json();
    assert_eq!(line["complete"], true);
    let report = env.json("results/final-report.json");
    assert_eq!(report["session"]["id"], env.sid());
    let s = &report["results"]["summary"];
    assert_eq!(s["total_tasks"], 4);
    assert_eq!(s["completed_tasks"], 2);
    assert_eq!(s["failed_tasks"], 1);
    assert_eq!(s["total_time"], 6.0);
    assert_eq!(s["agents_used"], 2);
    assert_eq!(s["by_status"], json!({"completed": 2, "failed": 1, "skipped": 1}));
    let p = &report["performance"];
    assert_eq!(p["throughput"], json!(4.0 / 6.0));
    assert_eq!(p["success_rate"], json!(0.5));
    assert_eq!(p["average_time"], json!(1.5));
    assert!(report["timestamp"].as_str().expect("timestamp").ends_with('Z'));
    assert_eq!(report["results"]["by_agent"]["w1"]["host"], "h1", "unknown fields are kept");
    assert_eq!(report["results"]["by_task"]["t2"]["status"], "completed", "the later entry wins, as in the seed");
    assert_eq!(report["results"]["by_task"]["t3"], json!({"id": "t3", "status": "skipped"}), "entries as written");
    let agents: Vec<&str> =
        report["agents"].as_array().expect("agents").iter().filter_map(|a| a["id"].as_str()).collect();
    assert_eq!(agents, ["w1", "w2"]);
    assert_eq!(env.json("state/results.json"), report["results"], "state/results.json is the same view");
    assert_all_json_parse(&env.dir());
}

#[test]
fn zero_tasks_or_zero_time_give_null_rates_never_nan() {
    let env = TestEnv::with_session();
    env.cmd("aggregate").ok();
    let text = std::fs::read_to_string(env.dir().join("results/final-report.json")).expect("read");
    let report: Value = serde_json::from_str(&text).expect("parse");
    assert_eq!(report["performance"], json!({"throughput": null, "success_rate": null, "average_time": null}));
    assert_eq!(report["results"]["summary"]["total_tasks"], 0);

    write_results(&env, "w1", &json!({"tasks": [{"id": "a", "status": "completed"}], "execution_time": 0}));
    env.cmd("aggregate").ok();
    let text = std::fs::read_to_string(env.dir().join("results/final-report.json")).expect("read");
    for bad in ["NaN", "Infinity", "inf"] {
        assert!(!text.contains(bad), "{bad} in report");
    }
    let report: Value = serde_json::from_str(&text).expect("parse");
    assert_eq!(report["performance"], json!({"throughput": null, "success_rate": 1.0, "average_time": 0.0}));

    let md = env.cmd("aggregate").args(["--format", "md"]).ok().stdout_str();
    assert!(md.contains("n/a") && !md.contains("NaN") && !md.contains("inf"), "{md}");
}

#[test]
fn malformed_result_files_are_listed_and_the_rest_is_reported() {
    let env = two_agents();
    std::fs::write(env.dir().join("results/w3.json"), "{\n  \"tasks\": [\n    {\"id\": \"t9\",, }\n").expect("plant");
    std::fs::write(env.dir().join("results/w4.json"), "{\"tasks\": [{\"id\": \"t8\"}], \"execution_time\": 1}")
        .expect("plant");
    std::fs::write(env.dir().join("results/w5.json"), "{\"tasks\": [], \"execution_time\": -3}").expect("plant");
    // Not UTF-8 (in a key the fast path skips), and a FIFO, which must not be waited on.
    std::fs::write(env.dir().join("results/w6.json"), b"{\"tasks\": [], \"n\xffte\": 1}").expect("plant");
    let fifo =
        std::ffi::CString::new(env.dir().join("results/w7.json").into_os_string().into_encoded_bytes()).expect("path");
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0, "mkfifo");
    let out = env.cmd("aggregate").code(4);
    out.stderr_has(&["results/w3.json", "line 3", "incomplete"]);
    let line = out.json();
    assert_eq!(line["complete"], false);
    let report = env.json("results/final-report.json");
    assert_eq!(report["complete"], false);
    let errors = report["errors"].as_array().expect("errors");
    let files: Vec<&str> = errors.iter().filter_map(|e| e["file"].as_str()).collect();
    assert_eq!(files, ["results/w3.json", "results/w4.json", "results/w5.json", "results/w6.json", "results/w7.json"]);
    assert_eq!((errors[0]["line"].as_u64(), errors[0]["column"].as_u64()), (Some(3), Some(17)));
    assert!(errors[1]["message"].as_str().expect("msg").contains("status"), "{}", errors[1]);
    assert!(errors[2]["message"].as_str().expect("msg").contains("execution_time"), "{}", errors[2]);
    assert!(errors[3]["message"].as_str().expect("msg").contains("UTF-8"), "{}", errors[3]);
    assert!(errors[4]["message"].as_str().expect("msg").contains("not a regular file"), "{}", errors[4]);
    assert_eq!(report["results"]["summary"]["total_tasks"], 4, "the good files are still counted");
    assert_eq!(report["results"]["summary"]["unreadable_files"], 5);
    // The files themselves are left as they were.
    let text = std::fs::read_to_string(env.dir().join("results/w3.json")).expect("read");
    assert!(text.contains(",,"));
    let md = env.cmd("aggregate").args(["--format", "md"]).code(4).stdout_str();
    assert!(md.contains("results/w3.json at line 3, column 17"), "{md}");
}

#[test]
fn two_runs_give_identical_reports_apart_from_the_timestamp() {
    let env = two_agents();
    for i in 0..20 {
        write_results(
            &env,
            &format!("x{i:02}"),
            &json!({"tasks": [{"id": format!("k{}", 20 - i), "status": if i % 3 == 0 { "failed" } else { "completed" }}],
                    "execution_time": 0.1 * i as f64}),
        );
    }
    env.cmd("aggregate").ok();
    let first_view = std::fs::read(env.dir().join("state/results.json")).expect("read");
    let mut first = env.json("results/final-report.json");
    std::thread::sleep(std::time::Duration::from_millis(5));
    env.cmd("aggregate").ok();
    let second_view = std::fs::read(env.dir().join("state/results.json")).expect("read");
    let mut second = env.json("results/final-report.json");
    assert_ne!(first["timestamp"], second["timestamp"]);
    first["timestamp"] = Value::Null;
    second["timestamp"] = Value::Null;
    assert_eq!(first, second);
    assert_eq!(first_view, second_view, "state/results.json is byte for byte the same");
    let md1 = env.cmd("aggregate").args(["--format", "md"]).ok().stdout_str();
    let md2 = env.cmd("aggregate").args(["--format", "md"]).ok().stdout_str();
    assert_eq!(md1, md2);
}

#[test]
fn markdown_summary_lists_agents_statuses_and_failures() {
    let env = two_agents();
    let md = env.cmd("aggregate").args(["--format", "md"]).ok().stdout_str();
    for part in [
        "## Summary",
        "## By status",
        "| skipped | 1 |",
        "| w1 | worker | active |",
        "## Failures",
        "`t2` (agent w1): assertion <failed> & more",
    ] {
        assert!(md.contains(part), "missing {part:?} in\n{md}");
    }
}

/// A minimal well-formedness check: every tag closes in order, void elements excepted,
/// attributes are quoted, and raw text never holds a stray '<'.
fn check_well_formed(html: &str) -> Result<(), String> {
    const VOID: &[&str] = &["meta", "br", "hr", "img", "input", "link", "col", "area", "base", "source", "wbr"];
    let mut stack: Vec<String> = Vec::new();
    let mut rest = html.trim_start();
    if !rest.to_ascii_lowercase().starts_with("<!doctype html>") {
        return Err("no <!DOCTYPE html>".into());
    }
    rest = &rest["<!DOCTYPE html>".len()..];
    while let Some(i) = rest.find('<') {
        let after = &rest[i + 1..];
        let end = after.find('>').ok_or("unterminated tag")?;
        let tag = &after[..end];
        rest = &after[end + 1..];
        if let Some(name) = tag.strip_prefix('/') {
            let open = stack.pop().ok_or_else(|| format!("</{name}> closes nothing"))?;
            if open != name.trim() {
                return Err(format!("</{name}> closes <{open}>"));
            }
            continue;
        }
        let name: String = tag.chars().take_while(|c| c.is_ascii_alphanumeric()).collect();
        if name.is_empty() {
            return Err(format!("stray '<' before {:?}", &tag[..tag.len().min(20)]));
        }
        if !tag.matches('"').count().is_multiple_of(2) {
            return Err(format!("unbalanced quotes in <{tag}>"));
        }
        if tag.ends_with('/') || VOID.contains(&name.as_str()) {
            continue;
        }
        if name == "style" || name == "script" {
            let close = format!("</{name}>");
            let j = rest.find(&close).ok_or("unclosed raw text element")?;
            if rest[..j].contains('<') {
                return Err(format!("'<' inside <{name}>"));
            }
            rest = &rest[j + close.len()..];
            continue;
        }
        stack.push(name);
    }
    if stack.is_empty() { Ok(()) } else { Err(format!("unclosed: {stack:?}")) }
}

#[test]
fn html_report_is_one_well_formed_self_contained_file_with_a_lane_per_agent() {
    let env = two_agents();
    register(&env, "idle");
    let path = env.root.path().join("report.html");
    env.cmd("aggregate").args(["--format", "html", "--output"]).arg(&path).ok();
    let html = std::fs::read_to_string(&path).expect("html written");
    check_well_formed(&html).unwrap_or_else(|e| panic!("not well-formed: {e}\n{html}"));
    for banned in ["<script", "http://", "https://", "src=", "href=", "@import", "url("] {
        assert!(!html.contains(banned), "{banned} in a self-contained page");
    }
    for part in ["<style>", "<svg", "id=\"summary\"", "id=\"agents\"", "id=\"timeline\""] {
        assert!(html.contains(part), "missing {part}");
    }
    assert_eq!(html.matches("<g class=\"lane\"").count(), 3, "one lane per agent");
    for agent in ["w1", "w2", "idle"] {
        assert!(html.contains(&format!("data-agent=\"{agent}\"")), "lane for {agent}");
    }
    assert!(html.contains("class=\"task completed retry\""), "the retry of t2 is marked");
    assert!(html.contains("class=\"task failed\""));
    assert!(html.contains("assertion &lt;failed&gt; &amp; more"), "text is escaped");
    assert!(check_well_formed("<!DOCTYPE html><p><b>x</p></b>").is_err(), "the checker catches misnesting");
}

/// A session that passes every gate: a registered agent that finished, its results,
/// the report and the archive.
fn passing_session() -> TestEnv {
    let env = TestEnv::with_session();
    register(&env, "w1");
    std::fs::create_dir_all(env.dir().join("messages/w1")).expect("mailbox");
    for sub in ["tmp", "new", "cur"] {
        std::fs::create_dir_all(env.dir().join("messages/w1").join(sub)).expect("maildir");
    }
    write_results(&env, "w1", &json!({"tasks": [{"id": "t1", "status": "completed"}], "execution_time": 1}));
    env.cmd("registry").args(["unregister", "w1"]).ok();
    env.cmd("aggregate").ok();
    env.cmd("archive").ok();
    env
}

fn gates(env: &TestEnv) -> (i32, Vec<(String, bool, String)>, String) {
    let out = env.cmd("aggregate").arg("--gates").run();
    let v = out.json();
    let list = v["gates"]
        .as_array()
        .expect("gates")
        .iter()
        .map(|g| {
            (
                g["id"].as_str().unwrap_or_default().to_string(),
                g["ok"].as_bool().unwrap_or(false),
                g["detail"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    (out.code().unwrap_or(-1), list, out.stderr_str())
}

fn assert_gate_fails(env: &TestEnv, id: &str, why: &str) {
    let (code, list, stderr) = gates(env);
    assert_eq!(code, 1, "gates must fail for {id}: {list:?}");
    let (_, ok, detail) = list.iter().find(|(g, _, _)| g == id).unwrap_or_else(|| panic!("no gate {id}"));
    assert!(!ok, "gate {id} passed: {detail}");
    assert!(detail.contains(why), "gate {id}: {detail:?} lacks {why:?}");
    assert!(stderr.contains(&format!("gate {id}")), "stderr names the gate: {stderr}");
}

#[test]
fn a_finished_session_passes_every_gate() {
    let env = passing_session();
    let (code, list, stderr) = gates(&env);
    assert_eq!(list.len(), 13);
    let failed: Vec<_> = list.iter().filter(|g| !g.1).collect();
    assert!(failed.is_empty(), "{failed:?}\n{stderr}");
    assert_eq!(code, 0);
    let md = env.cmd("aggregate").args(["--gates", "--format", "md"]).ok().stdout_str();
    assert!(md.contains("**Coordination Setup:**") && md.contains("- [x] Session archived"), "{md}");
    assert!(!md.contains("- [ ]"), "{md}");
}

#[test]
fn each_setup_gate_fails_on_a_session_built_to_fail_it() {
    let env = passing_session();
    let path = env.dir().join("session.json");
    let mut s: Value = serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("parse");
    s["layout_version"] = json!(99);
    std::fs::write(&path, serde_json::to_vec(&s).expect("ser")).expect("write");
    assert_gate_fails(&env, "session_initialized", "layout_version 99");

    let env = passing_session();
    std::fs::remove_dir(env.dir().join("metrics")).expect("rmdir");
    assert_gate_fails(&env, "directories_present", "metrics/");

    let env = passing_session();
    std::fs::remove_file(env.dir().join("registry/agents.json")).expect("rm");
    assert_gate_fails(&env, "registry_present", "registry/agents.json is missing");

    let env = passing_session();
    std::fs::remove_dir_all(env.dir().join("messages/w1")).expect("rm");
    assert_gate_fails(&env, "mailboxes_ready", "w1");
}

#[test]
fn each_execution_gate_fails_on_a_session_built_to_fail_it() {
    let env = passing_session();
    let path = env.dir().join("session.json");
    let mut s: Value = serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("parse");
    s["agents"] = json!([]);
    std::fs::write(&path, serde_json::to_vec(&s).expect("ser")).expect("write");
    assert_gate_fails(&env, "agents_registered", "missing from session.json agents: w1");

    let env = TestEnv::with_session();
    assert_gate_fails(&env, "agents_registered", "no agent ever registered");

    let env = passing_session();
    std::fs::write(env.dir().join("state/custom.json"), "{\"a\": ").expect("plant");
    assert_gate_fails(&env, "state_synchronized", "state/custom.json (line 1");

    let env = passing_session();
    std::fs::write(env.dir().join("state/global.json"), "{\"operation_progress\": 150}").expect("plant");
    assert_gate_fails(&env, "progress_tracked", "150");
}

#[test]
fn each_cleanup_gate_fails_on_a_session_built_to_fail_it() {
    let env = passing_session();
    std::fs::write(env.dir().join("results/w2.json"), "not json").expect("plant");
    assert_gate_fails(&env, "results_collected", "results/w2.json");

    let env = passing_session();
    write_results(&env, "w1", &json!({"tasks": [], "execution_time": 0}));
    assert_gate_fails(&env, "report_generated", "out of date");
    write_results(&env, "w1", &json!({"tasks": [{"id": "t1", "status": "completed"}], "execution_time": 1}));
    std::fs::remove_file(env.dir().join("results/final-report.json")).expect("rm");
    assert_gate_fails(&env, "report_generated", "missing");

    let env = TestEnv::with_session();
    register(&env, "w1");
    write_results(&env, "w1", &json!({"tasks": [], "execution_time": 0}));
    assert_gate_fails(&env, "session_archived", "\"active\"");
    assert_gate_fails(&env, "no_agent_active", "w1");

    let env = passing_session();
    let lock = File::create(env.dir().join("locks/deploy.lock")).expect("lock file");
    lock.lock().expect("take lock");
    assert_gate_fails(&env, "no_lock_held", "deploy");
    lock.unlock().expect("unlock");
    assert_eq!(gates(&env).0, 0, "released, the gate passes again");
}

#[test]
fn a_completed_session_is_read_but_never_rewritten() {
    let env = passing_session();
    let before = std::fs::read(env.dir().join("results/final-report.json")).expect("read");
    let out = env.cmd("aggregate").ok().json();
    assert_eq!(out["written"], false);
    assert_eq!(std::fs::read(env.dir().join("results/final-report.json")).expect("read"), before);
}

fn taskd(env: &TestEnv, args: &[&str]) -> Value {
    env.cmd("taskd").args(args).ok().json()
}

/// w1 completes t1; w2 fails its try at t2, which w1 then completes; t3 stays pending.
fn session_with_tasks() -> TestEnv {
    let env = TestEnv::with_session();
    register(&env, "w1");
    register(&env, "w2");
    for id in ["t1", "t2", "t3"] {
        taskd(&env, &["submit", "--id", id]);
    }
    let c = taskd(&env, &["claim", "w1"]);
    assert_eq!(c["id"], "t1");
    taskd(&env, &["complete", "t1", "--agent", "w1"]);
    let c = taskd(&env, &["claim", "w2"]);
    assert_eq!(c["id"], "t2");
    taskd(&env, &["fail", "t2", "--agent", "w2", "--error", "flaky"]);
    let c = taskd(&env, &["claim", "w1"]);
    assert_eq!(c["id"], "t2");
    taskd(&env, &["complete", "t2", "--agent", "w1"]);
    env
}

#[test]
fn task_records_feed_the_report_views_and_the_timeline() {
    let env = session_with_tasks();
    env.cmd("aggregate").ok();
    let report = env.json("results/final-report.json");
    let t = &report["tasks"];
    assert_eq!((t["total"].as_u64(), t["completed"].as_u64(), t["pending"].as_u64()), (Some(3), Some(2), Some(1)));
    assert_eq!((t["retried"].as_u64(), t["requeues"].as_u64()), (Some(1), Some(1)));
    assert_eq!(t["operation_progress"], 67);
    assert_eq!(env.json("state/global.json")["operation_progress"], 67, "aggregate refreshes progress");
    let view = env.json("state/tasks.json");
    assert_eq!(view["completed"].as_array().map(Vec::len), Some(2));
    assert_eq!(view["pending"].as_array().map(Vec::len), Some(1));
    let timeline = report["timeline"].as_array().expect("timeline");
    let lanes: Vec<(&str, &str, &str)> = timeline
        .iter()
        .map(|s| {
            (s["agent"].as_str().unwrap_or(""), s["task"].as_str().unwrap_or(""), s["outcome"].as_str().unwrap_or(""))
        })
        .collect();
    assert!(lanes.contains(&("w1", "t1", "completed")), "{lanes:?}");
    assert!(lanes.contains(&("w1", "t2", "completed")), "{lanes:?}");
    assert!(lanes.contains(&("w2", "t2", "requeued")), "the failed try stays visible on w2's lane: {lanes:?}");

    let html = env.cmd("aggregate").args(["--format", "html"]).ok().stdout_str();
    check_well_formed(&html).unwrap_or_else(|e| panic!("not well-formed: {e}"));
    assert_eq!(html.matches("<g class=\"lane\"").count(), 2);
    assert!(html.contains("class=\"task completed retry\""), "the second attempt is marked as a retry");
    assert!(html.contains("class=\"task requeued\""));
    let md = env.cmd("aggregate").args(["--format", "md"]).ok().stdout_str();
    assert!(md.contains("## Task queue") && md.contains("| 3 | 0 | 1 | 0 | 2 | 0 | 0 | 1 | 1 | 67% |"), "{md}");
}

#[test]
fn task_and_message_gates_fail_on_sessions_built_to_fail_them() {
    let env = session_with_tasks();
    // w2 receives a message and never acks it: fine while w2 lives.
    env.cmd("msgq").args(["send", "--from", "w1", "--to", "w2", "--type", "note"]).ok();
    let got = env.cmd("msgq").args(["recv", "w2"]).ok().json_lines();
    assert_eq!(got.len(), 1);
    env.cmd("aggregate").ok();
    let (_, list, _) = gates(&env);
    let ok = |id: &str| list.iter().find(|g| g.0 == id).map(|g| g.1);
    assert_eq!(ok("state_synchronized"), Some(true), "{list:?}");
    assert_eq!(ok("progress_tracked"), Some(true), "{list:?}");
    assert_eq!(ok("messages_delivered"), Some(true), "{list:?}");

    // A completed session is not rewritten, so a stale view or progress stays stale.
    env.cmd("registry").args(["unregister", "w1"]).ok();
    env.cmd("registry").args(["unregister", "w2"]).ok();
    env.cmd("archive").ok();
    std::fs::write(
        env.dir().join("state/tasks.json"),
        "{\"pending\": [], \"in_progress\": [], \"completed\": [], \"failed\": []}",
    )
    .expect("stale view");
    assert_gate_fails(&env, "state_synchronized", "lists 0 task(s) as pending but the records say 1");
    let mut g = env.json("state/global.json");
    g["operation_progress"] = json!(10);
    std::fs::write(env.dir().join("state/global.json"), g.to_string()).expect("write");
    assert_gate_fails(&env, "progress_tracked", "operation_progress is 10 but 2 of 3");

    // w2 is gone now, with the message still in flight.
    assert_gate_fails(&env, "messages_delivered", "w2 (1, agent terminated)");
}

/// Regression: a total time whose shortest decimal form needs 17 digits (0.1 + 3.41 =
/// 3.5100000000000002) must read back equal, or `report_generated` calls the stored
/// report stale once the session is archived.
#[test]
fn report_generated_holds_for_times_that_need_17_digits() {
    let env = TestEnv::with_session();
    for (agent, t) in [("w1", 0.1), ("w2", 3.41)] {
        env.cmd("registry").args(["register", agent, "--type", "worker"]).ok();
        let r = json!({"tasks": [{"id": format!("t-{agent}"), "status": "completed"}], "execution_time": t});
        std::fs::write(env.dir().join(format!("results/{agent}.json")), r.to_string()).expect("write");
        env.cmd("registry").args(["unregister", agent]).ok();
    }
    env.cmd("aggregate").ok();
    env.cmd("archive").ok();
    let out = env.cmd("aggregate").arg("--gates").run();
    let gates = out.json()["gates"].clone();
    let gate = gates.as_array().expect("gates").iter().find(|g| g["id"] == "report_generated").expect("gate").clone();
    assert_eq!(gate["ok"], true, "{gate}");
}

/// Result files are read in batches on several threads: a session of 300 agents spans
/// five batches. The report must be what reading the files one by one gives: agents
/// in order, by_task in order of first appearance with the last entry kept, a results
/// log merged with its agent's file, a file that is not UTF-8 listed as an error
/// without disturbing its neighbours in the same batch, escaped ids decoded.
#[test]
fn a_session_of_many_result_files_reads_as_its_files_one_by_one() {
    let env = TestEnv::with_session();
    let mut expected_agents = Vec::new();
    let mut expected_tasks: Vec<(String, Value)> = Vec::new();
    let mut put = |id: String, entry: Value| match expected_tasks.iter_mut().find(|(k, _)| *k == id) {
        Some(slot) => slot.1 = entry,
        None => expected_tasks.push((id, entry)),
    };
    for i in 0..300 {
        let agent = format!("a{i:03}");
        if i == 100 {
            // Not UTF-8, in the middle of the second batch.
            std::fs::write(env.dir().join("results/a100.json"), b"{\"tasks\": [], \"n\xffte\": 1}").expect("plant");
            continue;
        }
        let mut tasks: Vec<Value> = (0..3)
            .map(|j| json!({"id": format!("t{i}-{j}"), "status": if j == 2 { "failed" } else { "completed" }, "n": i * 3 + j}))
            .collect();
        if i == 150 {
            tasks.push(json!({"id": "t5-0", "status": "completed", "again": true}));
        }
        if i == 7 {
            tasks.push(json!({"id": "q\"uote\\d\u{e9}", "status": "completed"}));
        }
        let doc = json!({"tasks": tasks, "execution_time": 0.5});
        let text = if i % 2 == 0 {
            serde_json::to_string_pretty(&doc).expect("ser").replace('\n', "\r\n")
        } else {
            doc.to_string()
        };
        std::fs::write(env.dir().join(format!("results/{agent}.json")), text).expect("write");
        for t in doc["tasks"].as_array().expect("tasks") {
            put(t["id"].as_str().expect("id").to_string(), t.clone());
        }
        if i == 200 {
            let line = json!({"tasks": [{"id": "t200-log", "status": "completed"}], "execution_time": 1.5});
            std::fs::write(env.dir().join("results/a200.jsonl"), format!("{line}\n")).expect("log");
            put("t200-log".into(), line["tasks"][0].clone());
        }
        expected_agents.push(agent);
    }
    let out = env.cmd("aggregate").code(4);
    out.stderr_has(&["results/a100.json", "UTF-8"]);
    let view = env.json("state/results.json");
    let agents: Vec<&str> = view["by_agent"].as_object().expect("by_agent").keys().map(String::as_str).collect();
    assert_eq!(agents, expected_agents);
    assert_eq!(view["by_agent"]["a101"]["tasks"][0]["id"], "t101-0", "the neighbour of the bad file");
    assert_eq!(view["by_agent"]["a200"]["tasks"].as_array().map(Vec::len), Some(4), "file and log merged");
    assert_eq!(view["by_agent"]["a200"]["execution_time"], 2.0);
    let by_task: Vec<(String, Value)> =
        view["by_task"].as_object().expect("by_task").iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    assert_eq!(by_task.len(), expected_tasks.len());
    assert_eq!(by_task, expected_tasks, "in order of first appearance, the last entry kept");
    assert_eq!(view["by_task"]["t5-0"]["again"], true);
    let s = &view["summary"];
    assert_eq!((s["total_tasks"].as_u64(), s["failed_tasks"].as_u64()), (Some(299 * 3 + 3), Some(299)));
    assert_eq!(s["unreadable_files"], 1);
    let report = env.json("results/final-report.json");
    assert_eq!(report["results"], view);
    let warnings = report["warnings"].as_array().expect("warnings");
    assert!(
        warnings.iter().any(|w| w.as_str().is_some_and(|w| w.contains("t5-0") && w.contains("a005, a150"))),
        "{warnings:?}"
    );
}
