//! Result logs, `results/<agent>.jsonl` (one seed-shaped document per line, appended by
//! the task store), as read by `report::read_result_log`, followed by the report built
//! from them (`report::collect`, the final report, Markdown and HTML).
//!
//! Properties: a log that reads holds every task of its complete lines, in order, with a
//! finite `execution_time` >= 0 that is the sum of the lines' times, and writes out as
//! JSON that says the same; an unfinished last line is not read; a log that does not
//! read is an error naming a line of the file; the report is valid JSON.
#![no_main]

use coord_core::report;
use coord_fuzz::{Scratch, check_read_error};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let s = Scratch::new();
    let path = s.dir.results_dir().join("a.jsonl");
    std::fs::write(&path, data).expect("plant result log");

    match report::read_result_log(&path) {
        Ok(r) => {
            let complete = data.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
            let mut ids = Vec::new();
            let mut time = 0.0;
            for line in data[..complete].split(|&b| b == b'\n') {
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let v: Value = serde_json::from_slice(line).expect("a read line is JSON");
                for t in v["tasks"].as_array().expect("tasks") {
                    ids.push(t["id"].as_str().expect("id").to_string());
                }
                time += v.get("execution_time").and_then(Value::as_f64).unwrap_or(0.0);
            }
            assert_eq!(r.tasks.iter().map(|t| t.id().to_string()).collect::<Vec<_>>(), ids);
            let t = r.execution_time.unwrap_or(0.0);
            assert!(t.is_finite() && t >= 0.0, "execution_time {t}");
            assert_eq!(t, time);
            let written: Value = serde_json::to_value(&r).expect("serialize");
            assert_eq!(written["tasks"].as_array().map(Vec::len), Some(r.tasks.len()));
            if let Some(w) = written.get("execution_time") {
                assert_eq!(w.as_f64(), Some(t), "written execution_time {w} is not {t}");
            }
        }
        Err(e) => check_read_error(&e, &path, data),
    }

    let c = report::collect(&s.dir).expect("collect never fails on a bad result log");
    let text = serde_json::to_string(&c.final_report("2026-11-24T00:00:00.000Z".into())).expect("report");
    let back: Value = serde_json::from_str(&text).expect("the report is valid JSON");
    assert!(back["performance"].is_object());
    let _ = report::markdown(&c, None);
    let _ = report::html(&c, None);
});
