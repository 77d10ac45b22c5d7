//! The report's unit tests: collecting a planted session's results and checking the
//! summary, the rates, the by_task index and the hand-written serializations.

use super::collect::index_tasks;
use super::*;

fn collected(files: &[(&str, &str)]) -> (tempfile::TempDir, Collected) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let base = crate::layout::Base::new(tmp.path().join("base"));
    let dir = crate::session::init(&base, "t").expect("init");
    for (name, text) in files {
        std::fs::write(dir.results_dir().join(name), text).expect("plant");
    }
    let c = collect(&dir).expect("collect");
    (tmp, c)
}

/// Files are read into one buffer per batch, but each must be UTF-8 on its own: a
/// character cut between two files is two bad files, never one good string (and
/// never a slice cut inside a character). A results log whose unfinished last line
/// ends inside a character is still read up to that line.
#[test]
fn each_file_is_checked_as_utf8_on_its_own() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let base = crate::layout::Base::new(tmp.path().join("base"));
    let dir = crate::session::init(&base, "t").expect("init");
    let files: &[(&str, &[u8])] = &[
        ("a.json", b"{\"tasks\": []}\xc3"),
        ("b.json", b"\xa9{\"tasks\": []}"),
        ("c.json", br#"{"tasks": [{"id": "c1", "status": "completed"}]}"#),
        ("d.jsonl", b"{\"tasks\": [{\"id\": \"d1\", \"status\": \"completed\"}]}\n{\"tasks\": [{\"id\": \"caf\xc3"),
        ("e.json", b"{\"tasks\": [{\"id\": \"\xf0\x9f"),
        ("f.json", b"\x98\x80\", \"status\": \"s\"}]}"),
    ];
    for (name, bytes) in files {
        std::fs::write(dir.results_dir().join(name), bytes).expect("plant");
    }
    let c = collect(&dir).expect("collect");
    let agents: Vec<_> = c.by_agent.iter().map(|(a, r)| (a.as_str(), r.tasks.len())).collect();
    assert_eq!(agents, [("c", 1), ("d", 1)]);
    let bad: Vec<_> = c.errors.iter().map(|e| (e.file.as_str(), e.message.as_str())).collect();
    assert_eq!(
        bad,
        [
            ("results/a.json", "not UTF-8 at byte 13 (JSON text is UTF-8)"),
            ("results/b.json", "not UTF-8 at byte 0 (JSON text is UTF-8)"),
            ("results/e.json", "not UTF-8 at byte 19 (JSON text is UTF-8)"),
            ("results/f.json", "not UTF-8 at byte 0 (JSON text is UTF-8)"),
        ]
    );
}

/// Two different ids with the same hash are still two entries of by_task, and a
/// repeated id is still one, whichever of the two it is.
#[test]
fn ids_whose_hashes_collide_are_told_apart() {
    let (_t, mut c) = collected(&[
        ("a.json", r#"{"tasks": [{"id": "x", "status": "s", "n": 1}, {"id": "y", "status": "s", "n": 2}]}"#),
        ("b.json", r#"{"tasks": [{"id": "y", "status": "s", "n": 3}, {"id": "x", "status": "s", "n": 4}]}"#),
    ]);
    for (_, r) in &mut c.by_agent {
        for t in &mut r.tasks {
            t.id_hash = 7;
        }
    }
    let (index, warnings) = index_tasks(&c.by_agent).expect("index");
    let v = serde_json::to_value(ByTask { by_agent: &c.by_agent, index: &index }).expect("ser");
    assert_eq!(
        v,
        serde_json::json!({"x": {"id": "x", "status": "s", "n": 4}, "y": {"id": "y", "status": "s", "n": 3}})
    );
    let keys: Vec<_> = v.as_object().expect("object").keys().cloned().collect();
    assert_eq!(keys, ["x", "y"], "in order of first appearance");
    assert_eq!(warnings.len(), 2, "{warnings:?}");
}

#[test]
fn zero_tasks_and_zero_time_give_null_rates() {
    let (_t, c) = collected(&[]);
    assert_eq!(c.performance(), Performance { throughput: None, success_rate: None, average_time: None });
    let (_t, c) = collected(&[("a.json", r#"{"tasks": [], "execution_time": 0}"#)]);
    let p = serde_json::to_value(c.performance()).expect("ser");
    assert_eq!(p, serde_json::json!({"throughput": null, "success_rate": null, "average_time": null}));
    let (_t, c) = collected(&[("a.json", r#"{"tasks": [{"id": "t", "status": "completed"}], "execution_time": 0}"#)]);
    assert_eq!(c.performance(), Performance { throughput: None, success_rate: Some(1.0), average_time: Some(0.0) });
    let (_t, c) = collected(&[("a.json", r#"{"tasks": [], "execution_time": 5}"#)]);
    assert_eq!(c.performance().throughput, Some(0.0));
}

#[test]
fn rates_are_finite_or_null_for_any_totals() {
    let values = [0.0, 1e-300, 0.5, 1.0, 3.0, 1e300, f64::MAX];
    for &time in &values {
        for total in [0u64, 1, 7, u64::MAX] {
            for completed in [0u64, 1, total] {
                let s = Summary {
                    total_tasks: total,
                    completed_tasks: completed.min(total),
                    failed_tasks: 0,
                    total_time: time,
                    agents_used: 1,
                    by_status: BTreeMap::new(),
                    unreadable_files: 0,
                };
                let p = performance(&s);
                for r in [p.throughput, p.success_rate, p.average_time].into_iter().flatten() {
                    assert!(r.is_finite(), "{r} from {total} tasks in {time} s");
                }
                let text = serde_json::to_string(&p).expect("ser");
                assert!(!text.contains("NaN") && !text.contains("inf"), "{text}");
                if total == 0 {
                    assert!(p.success_rate.is_none() && p.average_time.is_none());
                }
                if time == 0.0 {
                    assert!(p.throughput.is_none());
                }
            }
        }
    }
}

#[test]
fn the_hand_written_serializations_match_serde() {
    let (_t, c) = collected(&[
        (
            "a.json",
            r#"{"tasks": [{"id": "t1", "status": "completed", "claimed_at": "2026-01-01T00:00:00Z", "completed_at": "2026-01-01T00:00:02Z"}, {"id": "t\"2", "status": "failed", "error": "boom"}], "execution_time": 3}"#,
        ),
        ("b.json", r#"{"tasks": [{"id": "t1", "status": "skipped"}], "note": {"x": [1, 2.5, null]}}"#),
        ("broken.json", "{"),
    ]);
    let report = c.final_report("2026-01-01T00:00:03Z".into());
    let mut view = Vec::new();
    report.results.write_to(&mut view).expect("write");
    assert_eq!(String::from_utf8(view).expect("utf8"), serde_json::to_string(&report.results).expect("ser"));
    let mut whole = Vec::new();
    report.write_to(&mut whole).expect("write");
    assert_eq!(String::from_utf8(whole).expect("utf8"), serde_json::to_string(&report).expect("ser"));
}

#[test]
fn summary_follows_the_seed() {
    let (_t, c) = collected(&[
        (
            "a.json",
            r#"{"tasks": [{"id": "t1", "status": "completed"}, {"id": "t2", "status": "failed", "error": "boom"}], "execution_time": 3}"#,
        ),
        (
            "b.json",
            r#"{"tasks": [{"id": "t3", "status": "completed"}, {"id": "t1", "status": "skipped"}], "execution_time": 1, "note": "x"}"#,
        ),
    ]);
    let s = c.summary();
    assert_eq!((s.total_tasks, s.completed_tasks, s.failed_tasks, s.agents_used), (4, 2, 1, 2));
    assert_eq!(s.total_time, 4.0);
    assert_eq!(s.by_status.get("skipped"), Some(&1));
    let p = c.performance();
    assert_eq!((p.throughput, p.success_rate, p.average_time), (Some(1.0), Some(0.5), Some(1.0)));
    let v = serde_json::to_value(c.results()).expect("ser");
    assert_eq!(v["by_task"]["t1"]["status"], "skipped", "the later agent wins, as in the seed");
    assert_eq!(v["by_task"]["t2"]["error"], "boom");
    assert_eq!(v["by_agent"]["b"]["note"], "x");
    assert_eq!(c.warnings.len(), 1);
}

#[test]
fn bad_files_are_listed_with_positions_and_the_rest_is_kept() {
    let (_t, c) = collected(&[
        ("good.json", r#"{"tasks": [{"id": "t1", "status": "completed"}], "execution_time": 1}"#),
        ("broken.json", "{\n  \"tasks\": [\n    {\"id\": \"t2\",,}\n"),
        ("shape.json", "{\"tasks\": [{\"id\": \"t3\"}]}"),
        ("neg.json", r#"{"tasks": [], "execution_time": -1}"#),
        ("bad name.json", "{}"),
        ("notes.txt", "ignored"),
    ]);
    assert_eq!(c.by_agent.len(), 1);
    let files: Vec<_> = c.errors.iter().map(|e| e.file.as_str()).collect();
    assert_eq!(files, ["results/bad name.json", "results/broken.json", "results/neg.json", "results/shape.json"]);
    let broken = &c.errors[1];
    assert_eq!((broken.line, broken.column), (Some(3), Some(17)));
    assert!(c.errors[3].message.contains("status"), "{:?}", c.errors[3]);
    assert!(!c.complete());
    assert_eq!(c.summary().unreadable_files, 4);
}

#[test]
fn a_results_log_is_merged_with_the_agents_own_file() {
    let log = concat!(
        r#"{"agent": "a", "tasks": [{"id": "t2", "status": "completed"}], "execution_time": 1.5}"#,
        "\n",
        r#"{"agent": "a", "tasks": [{"id": "t3", "status": "failed", "reason": "x"}], "execution_time": 0.5}"#,
        "\n",
        r#"{"agent": "a", "tasks": [{"id": "t4", "sta"#,
    );
    let (_t, c) = collected(&[
        ("a.json", r#"{"tasks": [{"id": "t1", "status": "completed"}], "execution_time": 3, "note": "n"}"#),
        ("a.jsonl", log),
        ("b.jsonl", "{\"tasks\": [{\"id\": \"t5\", \"status\": \"completed\"}]}\nnot json\n"),
        // Agent "a.json" sorts between a.json and a.jsonl; "a" is still one entry.
        ("a.json.json", r#"{"tasks": [{"id": "t9", "status": "completed"}]}"#),
    ]);
    assert_eq!(c.by_agent.len(), 2, "one entry per agent; b's log has a bad line");
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    let (agent, r) = &c.by_agent[0];
    assert_eq!(agent, "a");
    let ids: Vec<_> = r.tasks.iter().map(|t| t.id()).collect();
    assert_eq!(ids, ["t1", "t2", "t3"], "the unfinished last line is not read");
    assert_eq!(r.execution_time, Some(5.0));
    let raw = serde_json::to_value(r).expect("ser");
    assert_eq!((raw["note"].as_str(), raw["tasks"].as_array().map(Vec::len)), (Some("n"), Some(3)));
    assert_eq!(c.errors.len(), 1);
    assert_eq!((c.errors[0].file.as_str(), c.errors[0].line), ("results/b.jsonl", Some(2)));
}
