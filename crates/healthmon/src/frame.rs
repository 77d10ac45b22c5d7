//! The live view's screen as lines of text: [`frame`] turns one overview snapshot, the
//! recent events and the terminal's size into at most `height` lines of at most `width`
//! characters. It touches no terminal, so it is tested without one.

use serde_json::Value;

/// The size of the screen to fill, in character cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size {
    /// Columns.
    pub width: usize,
    /// Rows.
    pub height: usize,
}

/// The line saying what `taskd pause` holds back, if anything.
fn paused_line(p: &Value) -> Option<String> {
    let why = |e: &Value| e["reason"].as_str().map(|r| format!(" ({r})")).unwrap_or_default();
    if p["all"].is_object() {
        return Some(format!("PAUSED  the whole queue since {}{}", text(&p["all"]["at"]), why(&p["all"])));
    }
    let types = p["types"].as_object().filter(|t| !t.is_empty())?;
    let list: Vec<String> = types.iter().map(|(t, e)| format!("{t}{}", why(e))).collect();
    Some(format!("PAUSED  tasks for agent types: {}", list.join(", ")))
}

/// The text of one frame: the session, phase and task progress at the top, then the
/// agents (dead and failed first, then by id; as many as fit, with a line saying how
/// many more there are), the non-empty mailboxes (deepest first), the recent events and
/// the problems, and a last line naming the quit keys.
pub fn frame(o: &Value, events: &[Value], at: &str, size: Size) -> Vec<String> {
    let Size { width, height } = size;
    let mut top = Vec::new();
    let s = &o["session"];
    top.push(format!(
        "session {} ({}, {}, started {})  at {at}",
        text(&s["id"]),
        text(&s["operation"]),
        text(&s["status"]),
        text(&s["started_at"])
    ));
    top.push(format!("phase   {}", text(&o["phase"])));
    let t = &o["tasks"];
    if t.is_object() {
        let n = |k: &str| t[k].as_u64().unwrap_or(0);
        let bar_width = width.saturating_sub(40).clamp(10, 50);
        top.push(format!(
            "tasks   {} {}/{} completed",
            bar(n("completed"), n("total"), bar_width),
            n("completed"),
            n("total")
        ));
        top.push(format!(
            "        pending {}  blocked {}  claimed {}  completed {}  failed {}  cancelled {}",
            n("pending"),
            n("blocked"),
            n("claimed"),
            n("completed"),
            n("failed"),
            n("cancelled")
        ));
    } else {
        top.push("tasks   (not counted: see the problems)".to_string());
    }
    if let Some(line) = paused_line(&o["paused"]) {
        top.push(line);
    }

    let footer = "q, Esc or Ctrl-C quits".to_string();
    let agents = sorted_agents(o);
    let mailboxes = deepest_mailboxes(o);
    let problems: Vec<String> = o["problems"].as_array().into_iter().flatten().map(text).collect();

    // Rows left for the three lists once the top, the footer and the blank lines
    // between sections are placed; the agents get what the others leave.
    let fixed = top.len() + 1;
    let room = height.saturating_sub(fixed);
    let mut want_events = if events.is_empty() { 0 } else { events.len().min(room / 4).max(1) + 2 };
    let mut want_mail = if mailboxes.is_empty() { 0 } else { mailboxes.len().min(room / 6).max(1) + 3 };
    let mut want_problems = if problems.is_empty() { 0 } else { problems.len().min(3) + 1 };
    // The agents keep at least a title, a header, a row and the "more" line: on a short
    // terminal the events go first, then the mailboxes, then the problems.
    let agent_room = |e: usize, m: usize, p: usize| room.saturating_sub(e + m + p + 1);
    const AGENTS_AT_LEAST: usize = 4;
    if agent_room(want_events, want_mail, want_problems) < AGENTS_AT_LEAST {
        want_events = 0;
    }
    if agent_room(want_events, want_mail, want_problems) < AGENTS_AT_LEAST {
        want_mail = 0;
    }
    if agent_room(want_events, want_mail, want_problems) < AGENTS_AT_LEAST {
        want_problems = 0;
    }
    let agent_room = agent_room(want_events, want_mail, want_problems);

    let mut lines = top;
    lines.push(String::new());
    lines.extend(agent_lines(&agents, agent_room));
    if want_mail > 0 {
        lines.push(String::new());
        lines.extend(mailbox_lines(&mailboxes, want_mail - 1));
    }
    if want_events > 0 {
        lines.push(String::new());
        let shown = want_events - 2;
        lines.push(if shown < events.len() {
            format!("events (the last {shown} of the last {})", events.len())
        } else {
            format!("events (the last {shown})")
        });
        for e in &events[events.len() - shown.min(events.len())..] {
            lines.push(event_line(e));
        }
    }
    if want_problems > 0 {
        lines.push(String::new());
        let shown = want_problems - 1;
        for p in problems.iter().take(shown) {
            lines.push(format!("problem: {p}"));
        }
        if problems.len() > shown {
            let last = lines.len() - 1;
            lines[last] =
                format!("problem: … and {} more (healthmon status --json lists them)", problems.len() - shown + 1);
        }
    }
    lines.truncate(height.saturating_sub(1));
    lines.push(footer);
    lines.truncate(height);
    lines.into_iter().map(|l| clip(&l, width)).collect()
}

/// `[####......]  50%`: `width` cells of bar between the brackets, then the percentage
/// of `done` in `total` (0 with no tasks), rounded the way `operation_progress` is.
pub fn bar(done: u64, total: u64, width: usize) -> String {
    let done = done.min(total);
    let (filled, pct) = if total == 0 {
        (0, 0)
    } else {
        let filled = (done as u128 * width as u128 * 2 + total as u128) / (total as u128 * 2);
        (filled as usize, (done * 200 + total) / (total * 2))
    };
    format!("[{}{}] {pct:>3}%", "#".repeat(filled), ".".repeat(width - filled.min(width)))
}

/// Dead and failed agents first, then those that cannot be judged, then the rest; by id
/// within each.
fn sorted_agents(o: &Value) -> Vec<&Value> {
    let mut agents: Vec<&Value> = o["agents"].as_array().into_iter().flatten().collect();
    let rank = |a: &Value| match (a["alive"].as_bool(), a["status"].as_str()) {
        (_, Some("failed")) | (Some(false), _) if a["status"] != "terminated" => 0,
        (None, _) => 1,
        _ => 2,
    };
    agents.sort_by(|a, b| rank(a).cmp(&rank(b)).then_with(|| text(&a["id"]).cmp(&text(&b["id"]))));
    agents
}

fn agent_lines(agents: &[&Value], room: usize) -> Vec<String> {
    let alive = agents.iter().filter(|a| a["alive"] == Value::Bool(true)).count();
    let mut lines = vec![format!("agents  {} ({alive} alive)", agents.len())];
    if room < 3 || agents.is_empty() {
        if !agents.is_empty() {
            lines[0].push_str(" — too small a terminal to list them");
        }
        return lines.into_iter().take(room).collect();
    }
    let mut rows: Vec<Vec<String>> =
        vec![["ID", "TYPE", "STATUS", "ALIVE", "BEAT AGO", "TASKS"].iter().map(|h| h.to_string()).collect()];
    let fit = room - 2; // the title and the column header
    let (shown, hidden) = if agents.len() <= fit { (agents.len(), 0) } else { (fit - 1, agents.len() - (fit - 1)) };
    for a in &agents[..shown] {
        let held: Vec<&str> = a["tasks"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        rows.push(vec![
            text(&a["id"]),
            text(&a["type"]),
            text(&a["status"]),
            match a["alive"].as_bool() {
                Some(true) => "yes".into(),
                Some(false) => "no".into(),
                None => "?".into(),
            },
            a["heartbeat_age_secs"].as_f64().map_or("-".into(), |s| format!("{s:.0}s")),
            if held.is_empty() { "0".into() } else { format!("{} {}", held.len(), held.join(",")) },
        ]);
    }
    lines.extend(columns(&rows));
    if hidden > 0 {
        lines.push(format!("… {hidden} more agents not shown (dead and failed are listed first)"));
    }
    lines
}

/// Mailboxes that hold anything, deepest (queued + in flight + dead) first.
fn deepest_mailboxes(o: &Value) -> Vec<&Value> {
    let depth = |m: &Value| ["queued", "in_flight", "dead"].iter().map(|k| m[*k].as_u64().unwrap_or(0)).sum::<u64>();
    let mut boxes: Vec<&Value> = o["mailboxes"].as_array().into_iter().flatten().filter(|m| depth(m) > 0).collect();
    boxes.sort_by(|a, b| depth(b).cmp(&depth(a)).then_with(|| text(&a["agent"]).cmp(&text(&b["agent"]))));
    boxes
}

fn mailbox_lines(boxes: &[&Value], room: usize) -> Vec<String> {
    let total = boxes.len();
    let mut lines = vec![format!("mailboxes  {total} not empty")];
    let fit = room.saturating_sub(2);
    let (shown, hidden) =
        if total <= fit { (total, 0) } else { (fit.saturating_sub(1), total - fit.saturating_sub(1)) };
    let mut rows: Vec<Vec<String>> =
        vec![["MAILBOX", "QUEUED", "IN FLIGHT", "DEAD"].iter().map(|h| h.to_string()).collect()];
    for m in &boxes[..shown] {
        rows.push(vec![text(&m["agent"]), text(&m["queued"]), text(&m["in_flight"]), text(&m["dead"])]);
    }
    lines.extend(columns(&rows));
    if hidden > 0 {
        lines.push(format!("… {hidden} more mailboxes not shown"));
    }
    lines.truncate(room);
    lines
}

fn event_line(e: &Value) -> String {
    let mut parts = vec![text(&e["ts"]), text(&e["event"])];
    if let Some(a) = e["agent"].as_str() {
        parts.push(a.to_string());
    }
    if let Some(r) = e["reason"].as_str() {
        parts.push(r.to_string());
    }
    parts.join("  ")
}

/// Left-aligned columns, two spaces apart.
fn columns(rows: &[Vec<String>]) -> Vec<String> {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> =
        (0..cols).map(|c| rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0)).collect();
    rows.iter()
        .map(|r| {
            let cells: Vec<String> = r.iter().zip(&widths).map(|(s, w)| format!("{s:<w$}")).collect();
            cells.join("  ").trim_end().to_string()
        })
        .collect()
}

/// At most `width` characters; control characters (from a file's text) become `?`.
fn clip(line: &str, width: usize) -> String {
    line.chars().map(|c| if c.is_control() { '?' } else { c }).take(width).collect()
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_string(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn snapshot(agents: usize, dead: &[usize], completed: u64, total: u64) -> Value {
        let agents: Vec<Value> = (0..agents)
            .map(|i| {
                let alive = !dead.contains(&i);
                json!({"id": format!("a{i:04}"), "type": "worker", "status": if alive { "active" } else { "failed" },
                       "alive": alive, "heartbeat_age_secs": 1.0, "tasks": if i == 1 { json!(["t1", "t2"]) } else { json!([]) }})
            })
            .collect();
        let mailboxes: Vec<Value> = (0..agents.len())
            .map(|i| json!({"agent": format!("a{i:04}"), "queued": if i % 100 == 0 { i + 1 } else { 0 }, "in_flight": 0, "acked": 3, "dead": 0, "bad": 0}))
            .collect();
        json!({
            "session": {"id": "s1", "operation": "op", "status": "active", "started_at": "2026-01-01T00:00:00.000Z"},
            "phase": "work",
            "operation_progress": null,
            "agents": agents,
            "mailboxes": mailboxes,
            "tasks": {"total": total, "blocked": 0, "pending": total - completed, "claimed": 0, "completed": completed,
                      "failed": 0, "cancelled": 0, "operation_progress": 0},
            "problems": [],
        })
    }

    fn events(n: usize) -> Vec<Value> {
        (0..n).map(|i| json!({"ts": format!("2026-01-01T00:00:{i:02}.000Z"), "event": "agent_dead", "agent": format!("a{i}")})).collect()
    }

    #[test]
    fn a_thousand_agents_fit_the_height_and_the_hidden_ones_are_counted() {
        let o = snapshot(1000, &[500, 7], 10, 100);
        for (width, height) in [(120, 40), (80, 24), (200, 60), (60, 12)] {
            let lines = frame(&o, &events(10), "now", Size { width, height });
            assert!(lines.len() <= height, "{} lines for a height of {height}", lines.len());
            assert!(lines.iter().all(|l| l.chars().count() <= width), "a line is wider than {width}");
            let header = lines.iter().position(|l| l.starts_with("ID ")).expect("the agents' header");
            let more = lines
                .iter()
                .position(|l| l.contains("more agents not shown"))
                .expect("a line counts the hidden agents");
            let shown = more - header - 1;
            assert!(shown >= 1, "at least one agent is listed at {width}x{height}");
            let hidden: usize =
                lines[more].trim_start_matches("… ").split(' ').next().and_then(|n| n.parse().ok()).expect("a number");
            assert_eq!(shown + hidden, 1000, "shown + hidden = all, at {width}x{height}");
            assert_eq!(lines.last().map(String::as_str), Some("q, Esc or Ctrl-C quits"));
        }
    }

    #[test]
    fn dead_and_failed_agents_come_first() {
        let o = snapshot(1000, &[500, 7], 10, 100);
        let lines = frame(&o, &[], "now", Size { width: 120, height: 30 });
        let header = lines.iter().position(|l| l.starts_with("ID ")).expect("agent header");
        assert!(lines[header + 1].starts_with("a0007"), "{}", lines[header + 1]);
        assert!(lines[header + 2].starts_with("a0500"), "{}", lines[header + 2]);
        assert!(lines[header + 3].starts_with("a0000"), "{}", lines[header + 3]);
        assert!(lines.iter().any(|l| l.starts_with("a0001") && l.ends_with("2 t1,t2")), "tasks held are shown");
    }

    #[test]
    fn few_agents_are_all_listed_with_their_mailboxes_and_events() {
        let o = snapshot(3, &[], 0, 0);
        let lines = frame(&o, &events(4), "now", Size { width: 100, height: 40 });
        assert!(!lines.iter().any(|l| l.contains("more agents")));
        assert_eq!(lines.iter().filter(|l| l.starts_with("a000")).count(), 3 + 1, "3 agents and 1 non-empty mailbox");
        assert!(lines.iter().any(|l| l.starts_with("mailboxes  1 not empty")));
        assert_eq!(lines.iter().filter(|l| l.contains("agent_dead")).count(), 4);
    }

    #[test]
    fn many_mailboxes_show_the_deepest_first() {
        let o = snapshot(1000, &[], 0, 10);
        let lines = frame(&o, &[], "now", Size { width: 100, height: 30 });
        let header = lines.iter().position(|l| l.starts_with("MAILBOX")).expect("mailbox header");
        assert!(lines[header + 1].starts_with("a0900"), "{}", lines[header + 1]);
        assert!(lines.iter().any(|l| l.contains("more mailboxes not shown")));
        assert!(lines.len() <= 30);
    }

    #[test]
    fn a_pause_is_shown_under_the_task_counts() {
        let mut o = snapshot(3, &[], 1, 2);
        let size = Size { width: 100, height: 30 };
        let has = |o: &Value, what: &str| frame(o, &[], "now", size).iter().any(|l| l.contains(what));
        assert!(!has(&o, "PAUSED"), "nothing paused, nothing said");
        o["paused"] = json!({"all": null, "types": {}});
        assert!(!has(&o, "PAUSED"));
        o["paused"] = json!({"all": null, "types": {"gpu": {"at": "t", "reason": "driver update"}, "io": {"at": "t"}}});
        assert!(has(&o, "PAUSED  tasks for agent types: gpu (driver update), io"));
        o["paused"] = json!({"all": {"at": "2026-01-01T00:00:00.000Z"}, "types": {}});
        assert!(has(&o, "PAUSED  the whole queue since 2026-01-01T00:00:00.000Z"));
    }

    #[test]
    fn the_bar_is_right_at_0_50_and_100_percent() {
        assert_eq!(bar(0, 100, 10), "[..........]   0%");
        assert_eq!(bar(50, 100, 10), "[#####.....]  50%");
        assert_eq!(bar(100, 100, 10), "[##########] 100%");
        assert_eq!(bar(0, 0, 4), "[....]   0%", "no tasks");
        assert_eq!(bar(7, 3, 4), "[####] 100%", "never past full");
        let o = snapshot(2, &[], 50, 100);
        let lines = frame(&o, &[], "now", Size { width: 80, height: 24 });
        assert!(
            lines.iter().any(|l| l.starts_with("tasks   [") && l.contains("50%") && l.ends_with("50/100 completed"))
        );
    }

    #[test]
    fn a_tiny_terminal_still_gets_no_more_lines_than_it_has() {
        let o = snapshot(50, &[], 1, 2);
        for height in 0..10 {
            let lines = frame(&o, &events(3), "now", Size { width: 20, height });
            assert!(lines.len() <= height);
        }
    }

    #[test]
    fn text_from_files_cannot_move_the_cursor() {
        let mut o = snapshot(1, &[], 0, 0);
        o["phase"] = json!("a\u{1b}[2Jb\nc");
        let lines = frame(&o, &[], "now", Size { width: 80, height: 24 });
        assert!(lines.iter().any(|l| l == "phase   a?[2Jb?c"));
    }
}
