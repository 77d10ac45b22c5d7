//! `healthmon status`: the overview a person looks at.

use coord_core::{Result, SessionDir, error::exit, output, overview};
use serde_json::Value;

/// Gathers the overview and prints it as a table, or as one JSON object with `json`.
pub fn show(dir: &SessionDir, as_json: bool) -> Result<u8> {
    let overview = overview::overview(dir)?;
    if as_json {
        output::print(&overview)?;
    } else {
        print_table(&overview);
    }
    Ok(exit::OK)
}

fn print_table(o: &Value) {
    let s = &o["session"];
    println!(
        "session   {} ({}, {}, started {})",
        str_of(&s["id"]),
        str_of(&s["operation"]),
        str_of(&s["status"]),
        str_of(&s["started_at"])
    );
    println!("phase     {}", str_of(&o["phase"]));
    let pct = o["operation_progress"].as_f64().unwrap_or(0.0).clamp(0.0, 100.0);
    println!("progress  {} {pct:.0}%", bar(pct, 30));
    println!();
    let header = ["AGENT", "TYPE", "STATUS", "HOST", "PID", "ALIVE", "BEAT AGO", "CPU", "MEM", "TASKS"];
    let mut rows = vec![header.iter().map(|h| h.to_string()).collect::<Vec<_>>()];
    for a in o["agents"].as_array().into_iter().flatten() {
        rows.push(vec![
            str_of(&a["id"]),
            str_of(&a["type"]),
            str_of(&a["status"]),
            str_of(&a["host"]),
            a["pid"].as_u64().map_or("-".into(), |p| p.to_string()),
            match a["alive"].as_bool() {
                Some(true) => "yes".into(),
                Some(false) => "no".into(),
                None => "?".into(),
            },
            a["heartbeat_age_secs"].as_f64().map_or("-".into(), |s| format!("{s:.0}s")),
            a["cpu"].as_str().unwrap_or("-").to_string(),
            a["memory"].as_str().unwrap_or("-").to_string(),
            a["tasks"]
                .as_array()
                .map_or(String::new(), |t| t.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(",")),
        ]);
    }
    print_rows(&rows);
    println!();
    let mut rows =
        vec![["MAILBOX", "QUEUED", "IN FLIGHT", "ACKED", "DEAD"].iter().map(|h| h.to_string()).collect::<Vec<_>>()];
    for m in o["mailboxes"].as_array().into_iter().flatten() {
        rows.push(vec![
            str_of(&m["agent"]),
            str_of(&m["queued"]),
            str_of(&m["in_flight"]),
            str_of(&m["acked"]),
            str_of(&m["dead"]),
        ]);
    }
    print_rows(&rows);
    let t = &o["tasks"];
    if t.is_object() {
        println!();
        println!(
            "tasks     {} total: {} pending, {} blocked, {} claimed, {} completed, {} failed, {} cancelled",
            str_of(&t["total"]),
            str_of(&t["pending"]),
            str_of(&t["blocked"]),
            str_of(&t["claimed"]),
            str_of(&t["completed"]),
            str_of(&t["failed"]),
            str_of(&t["cancelled"])
        );
    }
    for p in o["problems"].as_array().into_iter().flatten() {
        println!("problem: {}", str_of(p));
    }
}

/// Prints rows as left-aligned columns.
pub fn print_rows(rows: &[Vec<String>]) {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> =
        (0..cols).map(|c| rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0)).collect();
    for r in rows {
        let line: Vec<String> = r.iter().enumerate().map(|(i, s)| format!("{s:<w$}", w = widths[i])).collect();
        println!("{}", line.join("  ").trim_end());
    }
}

fn bar(pct: f64, width: usize) -> String {
    let filled = ((pct / 100.0) * width as f64).round() as usize;
    format!("[{}{}]", "#".repeat(filled.min(width)), ".".repeat(width - filled.min(width)))
}

fn str_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_string(),
        other => other.to_string(),
    }
}
