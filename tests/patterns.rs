//! The demo and the pattern scripts, run as a user would (with the debug build and a
//! shorter configuration), and their outcomes checked against the session they leave.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::util::{TestEnv, bin, bin_dir};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `scripts/<script>` with the debug tools and `env`'s base directory, in its own
/// process group; kills the group and fails if it takes longer than `limit`.
fn run_script(env: &TestEnv, script: &str, args: &[&str], vars: &[(&str, &str)], limit: Duration) -> Output {
    bin("taskd"); // built and fresh
    let mut cmd = Command::new("bash");
    cmd.arg(repo().join("scripts").join(script)).args(args);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("COORD_") || k == "RUST_LOG" {
            cmd.env_remove(k);
        }
    }
    cmd.env("COORD_BIN", bin_dir()).env("COORD_BASE", &env.base).env("TMPDIR", env.root.path());
    cmd.envs(vars.iter().copied());
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0);
    let child = cmd.spawn().expect("spawn bash");
    let pgid = child.id() as i32;
    let start = Instant::now();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(limit) {
        Ok(out) => out.expect("wait for script"),
        Err(_) => {
            // SAFETY: signals our own process group.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
            // Show how far it got; processes it started in groups of their own may still
            // hold the pipes open, so do not wait for them for long.
            let seen = match rx.recv_timeout(Duration::from_secs(5)) {
                Ok(Ok(out)) => format!("stdout:\n{}\nstderr:\n{}", text(&out.stdout), text(&out.stderr)),
                _ => "(its output is still held open by processes it started)".to_string(),
            };
            panic!("{script} took longer than {limit:?}\n{seen}");
        }
    };
    eprintln!("{script}: {:.1} s", start.elapsed().as_secs_f64());
    out
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn assert_ok(script: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{script} failed ({:?})\nstdout:\n{}\nstderr:\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// The one session the script created under the base.
fn only_session(env: &mut TestEnv) {
    let ids: Vec<String> = std::fs::read_dir(&env.base)
        .expect("base")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    assert_eq!(ids.len(), 1, "sessions: {ids:?}");
    env.session = Some(ids[0].clone());
}

/// No registered agent's process is still running, and none is `active`.
fn assert_agents_gone(env: &TestEnv) {
    let agents = env.json("registry/agents.json");
    for a in agents.as_array().expect("agents array") {
        assert_ne!(a["status"], "active", "still active: {a}");
        let pid = a["pid"].as_i64().expect("pid") as i32;
        // SAFETY: signal 0 only checks that the process exists.
        let alive = unsafe { libc::kill(pid, 0) } == 0;
        assert!(!alive, "agent {} (pid {pid}) is still running", a["id"]);
    }
}

fn tasks(env: &TestEnv) -> Vec<Value> {
    env.cmd("taskd").arg("list").ok().json_lines()
}

/// Word counts as scripts/lib/wordcount.sh defines them: runs of ASCII letters and
/// digits, lower-cased.
fn direct_word_count(files: &[PathBuf]) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for f in files {
        let bytes = std::fs::read(f).expect("read input");
        for word in bytes.split(|b| !b.is_ascii_alphanumeric()).filter(|w| !w.is_empty()) {
            *counts.entry(String::from_utf8_lossy(&word.to_ascii_lowercase()).into_owned()).or_insert(0) += 1;
        }
    }
    counts
}

fn docs() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("docs"))
        .expect("docs")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    files.sort();
    files
}

#[test]
fn map_reduce_totals_equal_a_direct_count() {
    let mut env = TestEnv::new();
    let out = run_script(
        &env,
        "patterns/map-reduce.sh",
        &[],
        &[("WORKERS", "3"), ("CHUNK_LINES", "100")],
        Duration::from_secs(120),
    );
    assert_ok("map-reduce.sh", &out);
    only_session(&mut env);

    let expected = direct_word_count(&docs());
    let got: BTreeMap<String, u64> = serde_json::from_value(env.json("state/wordcount.json")).expect("counts");
    assert_eq!(got, expected, "state/wordcount.json differs from a direct count");

    let all = tasks(&env);
    assert!(all.iter().all(|t| t["status"] == "completed"), "not all completed: {all:?}");
    let reduce = all.iter().find(|t| t["id"] == "reduce").expect("reduce task");
    assert_eq!(reduce["results"]["words"], expected.values().sum::<u64>());
    assert_eq!(reduce["results"]["distinct"], expected.len());
    // Every map task ran on one of the three workers and its result is in their files.
    let maps = all.len() - 1;
    let mut reported = 0;
    for w in ["w1", "w2", "w3"] {
        // taskd appends one seed-shaped {agent, tasks: [entry], execution_time} per line.
        if let Ok(text) = std::fs::read_to_string(env.dir().join(format!("results/{w}.jsonl"))) {
            for line in text.lines() {
                let r: Value = serde_json::from_str(line).expect("result line");
                reported += r["tasks"].as_array().expect("tasks").len();
            }
        }
    }
    assert_eq!(reported, maps + 1);
    assert_agents_gone(&env);
}

#[test]
fn pipeline_stages_run_in_order() {
    let mut env = TestEnv::new();
    let docs_dir = repo().join("docs");
    let out = run_script(
        &env,
        "patterns/pipeline.sh",
        &[docs_dir.to_str().expect("utf-8 path")],
        &[],
        Duration::from_secs(120),
    );
    assert_ok("pipeline.sh", &out);
    only_session(&mut env);

    let stages = ["discovery", "analysis", "transformation", "validation"];
    let global = env.json("state/global.json");
    let history = global["phase_history"].as_array().expect("phase_history");
    let phases: Vec<&str> = history.iter().map(|h| h["phase"].as_str().expect("phase")).collect();
    assert_eq!(phases, [&stages[..], &["done"]].concat());
    let times: Vec<&str> = history.iter().map(|h| h["at"].as_str().expect("at")).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "phase times go back: {times:?}");
    assert_eq!(global["phase"], "done");

    // Each stage's tasks ran inside its phase: claimed after the phase began and after
    // the previous stage's last task completed, by agents of the stage's pool.
    let all = tasks(&env);
    let mut last_end = String::new();
    for (i, stage) in stages.iter().enumerate() {
        let mine: Vec<&Value> = all.iter().filter(|t| t["payload"]["stage"] == *stage).collect();
        assert!(!mine.is_empty(), "no {stage} task");
        for t in &mine {
            assert_eq!(t["status"], "completed", "{t}");
            assert!(t["assigned_to"].as_str().expect("agent").starts_with(stage), "{t}");
            let start = t["assigned_at"].as_str().expect("assigned_at");
            assert!(start >= times[i] && start > last_end.as_str(), "{stage} task {} started early", t["id"]);
        }
        last_end =
            mine.iter().map(|t| t["completed_at"].as_str().expect("completed_at").to_string()).max().expect("one");
    }
    // The results passed through the state files add up.
    let md = docs();
    let sum = &env.json("state/transformation.json")[docs_dir.to_str().expect("utf-8")];
    assert_eq!(sum["files"], std::fs::read_dir(&docs_dir).expect("docs").count());
    let lines: usize = md.iter().map(|f| std::fs::read_to_string(f).expect("read").lines().count()).sum();
    assert_eq!(sum["lines"], lines, "docs/ has only .md files, each ending in a newline");
    let validation: Vec<&Value> = all.iter().filter(|t| t["payload"]["stage"] == "validation").collect();
    assert!(validation.iter().all(|t| t["results"]["ok"] == true), "{validation:?}");
    assert_agents_gone(&env);
}

#[test]
fn scatter_gather_has_one_winner_and_no_task_left_running() {
    let mut env = TestEnv::new();
    let n: u64 = 36007 * 100003;
    let out = run_script(
        &env,
        "patterns/scatter-gather.sh",
        &[],
        &[("SOLVERS", "4"), ("N", &n.to_string())],
        Duration::from_secs(120),
    );
    assert_ok("scatter-gather.sh", &out);
    only_session(&mut env);

    let all = tasks(&env);
    assert_eq!(all.len(), 4);
    let won: Vec<&Value> = all.iter().filter(|t| t["status"] == "completed").collect();
    assert_eq!(won.len(), 1, "winners: {won:?}");
    assert!(all.iter().all(|t| t["status"] == "completed" || t["status"] == "cancelled"), "{all:?}");
    let factor = won[0]["results"]["factor"].as_u64().expect("factor");
    assert!(factor > 1 && factor < n && n.is_multiple_of(factor), "{factor} does not divide {n}");
    let winner = env.json("state/scatter.json");
    assert_eq!(winner["winner"], won[0]["assigned_to"]);
    assert_eq!(winner["factor"], factor);
    // The hasty solver's guess was rejected (when it came before the winner's answer).
    let stdout = text(&out.stdout);
    assert!(stdout.lines().filter(|l| l.ends_with(": accepted")).count() == 1, "{stdout}");
    assert!(stdout.lines().filter(|l| l.starts_with("s1: ") && l.ends_with("rejected")).count() <= 1, "{stdout}");
    assert_agents_gone(&env);
    // Every solver read the job and the cancel, and nothing is left in flight.
    for s in ["s1", "s2", "s3", "s4"] {
        let c = env.cmd("msgq").args(["count", s]).ok().json();
        assert_eq!((c["queued"].as_u64(), c["in_flight"].as_u64()), (Some(0), Some(0)), "{s}: {c}");
    }
}

#[test]
fn demo_gates_pass_and_its_archive_extracts_to_the_session() {
    let mut env = TestEnv::new();
    let out =
        run_script(&env, "demo.sh", &[], &[("CHUNK_LINES", "40"), ("MAP_DELAY", "0.15")], Duration::from_secs(180));
    assert_ok("demo.sh", &out);
    only_session(&mut env);
    let stdout = text(&out.stdout);
    assert!(stdout.contains("- [x] Session archived"), "{stdout}");
    assert!(!stdout.contains("- [ ]"), "a gate failed:\n{stdout}");

    // The killed agent's task was requeued and finished by another one.
    let events = std::fs::read_to_string(env.dir().join("metrics/events.jsonl")).expect("events");
    let dead: Value = events
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("event"))
        .find(|e| e["event"] == "agent_dead")
        .expect("an agent_dead event");
    let victim = dead["agent"].as_str().expect("agent");
    let all = tasks(&env);
    assert!(all.iter().all(|t| t["status"] == "completed"));
    let requeued: Vec<&Value> =
        all.iter().filter(|t| t["errors"].as_array().is_some_and(|e| e.iter().any(|e| e["agent"] == victim))).collect();
    assert!(!requeued.is_empty(), "no task of {victim} was requeued");
    assert!(requeued.iter().all(|t| t["assigned_to"] != victim && t["attempts"] == 2), "{requeued:?}");
    assert_agents_gone(&env);

    // The gates pass, and the report files are where the demo says.
    let sid = env.sid().to_string();
    env.cmd("aggregate").arg("--gates").ok();
    let html = env.base.join(format!("{sid}.html"));
    assert!(std::fs::read_to_string(&html).expect("html report").contains("<svg"));
    let archive = env.base.join(format!("{sid}.tar.gz"));
    assert!(stdout.contains(&archive.display().to_string()), "{stdout}");

    // The archive extracts to exactly the session directory.
    let into = env.root.path().join("extracted");
    env.cmd("archive").arg("extract").arg(&archive).arg("--into").arg(&into).ok();
    let a = tree(&env.dir());
    let b = tree(&into.join(&sid));
    assert_eq!(a.keys().collect::<BTreeSet<_>>(), b.keys().collect::<BTreeSet<_>>());
    assert!(a == b, "file contents differ");
}

/// Every regular file under `dir` (relative path → content), except writers' temporaries.
fn tree(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for e in std::fs::read_dir(dir).expect("read_dir") {
            let p = e.expect("entry").path();
            let meta = std::fs::symlink_metadata(&p).expect("stat");
            if meta.is_dir() {
                walk(root, &p, out);
            } else if meta.is_file() && !p.file_name().is_some_and(|n| n.to_string_lossy().ends_with(".tmp")) {
                out.insert(p.strip_prefix(root).expect("prefix").to_path_buf(), std::fs::read(&p).expect("read"));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

#[test]
fn install_script_puts_tools_pages_and_completions_in_place() {
    let env = TestEnv::new();
    let prefix = env.root.path().join("prefix");
    let out = run_script(&env, "install.sh", &[prefix.to_str().expect("utf-8")], &[], Duration::from_secs(60));
    assert_ok("install.sh", &out);
    for t in crate::help::TOOLS {
        for f in [
            format!("bin/{t}"),
            format!("share/man/man1/{t}.1"),
            format!("share/bash-completion/completions/{t}"),
            format!("share/zsh/site-functions/_{t}"),
            format!("share/fish/vendor_completions.d/{t}.fish"),
        ] {
            assert!(prefix.join(&f).is_file(), "{f} missing");
        }
    }
    let page = std::fs::read_to_string(prefix.join("share/man/man1/taskd-work.1")).expect("page");
    assert!(page.contains("idle\\-exit"), "{page}");
    let bash = std::fs::read_to_string(prefix.join("share/bash-completion/completions/msgq")).expect("bash");
    assert!(bash.contains("broadcast"), "{bash}");
}
