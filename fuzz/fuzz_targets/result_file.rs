//! Agents' result files, `results/<agent>.json`, as read by `report::read_result_file`
//! (and `report::parse_result_file`) when `aggregate` collects a session, followed by the
//! report itself: `report::collect`, the final report and its Markdown and HTML forms.
//!
//! Properties: a file that reads has the seed's shape, with each task's id and status
//! as the file gives them, a finite `execution_time` >= 0, and writes out as the same
//! JSON (and the one-pass reader, where it reads the file, finds what serde_json finds);
//! a file that does not read is an error with a position inside the file, and the
//! report lists it and says it is incomplete; the report is valid JSON (no NaN).
#![no_main]

use coord_core::report;
use coord_fuzz::{Scratch, check_read_error};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let s = Scratch::new();
    let path = s.dir.results_dir().join("a.json");
    std::fs::write(&path, data).expect("plant result file");

    // The one-pass reader agrees with serde_json wherever it reads a file at all.
    if let Err(e) = report::fast_path_agrees(data) {
        panic!("{e}");
    }
    match report::read_result_file(&path) {
        Ok(r) => {
            let v: Value = serde_json::from_slice(data).expect("a readable result file is JSON");
            let tasks = v["tasks"].as_array().expect("tasks is an array");
            assert_eq!(tasks.len(), r.tasks.len());
            for (t, raw) in r.tasks.iter().zip(tasks) {
                assert_eq!(raw["id"].as_str(), Some(t.id()));
                assert_eq!(raw["status"].as_str(), Some(t.status()));
            }
            if let Some(t) = r.execution_time {
                assert!(t.is_finite() && t >= 0.0, "execution_time {t}");
            }
            let written = serde_json::to_vec(&r).expect("serialize");
            assert_eq!(serde_json::from_slice::<Value>(&written).expect("written JSON"), v);
            let again = report::parse_result_file(&path, &written).expect("what was written reads again");
            assert_eq!(again.tasks.len(), r.tasks.len());
        }
        Err(e) => check_read_error(&e, &path, data),
    }

    let c = report::collect(&s.dir).expect("collect never fails on a bad result file");
    assert_eq!(c.complete(), report::read_result_file(&path).is_ok());
    let text = serde_json::to_string(&c.final_report("2026-11-24T00:00:00.000Z".into())).expect("report");
    let back: Value = serde_json::from_str(&text).expect("the report is valid JSON");
    assert!(back["performance"].is_object());
    let _ = report::markdown(&c, None);
    let _ = report::html(&c, None);
});
