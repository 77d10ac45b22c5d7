//! The report for people: a Markdown summary for the terminal and one self-contained
//! HTML file (inline CSS and SVG; no script, no external resource).

use std::collections::BTreeSet;
use std::fmt::Write;

use super::{Collected, Gate, Span};

/// How many failed tasks the summaries list before saying "and N more".
pub(super) const MAX_LISTED: usize = 50;

fn num(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "n/a".to_string(), |x| format!("{x:.digits$}"))
}

fn percent(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".to_string(), |x| format!("{:.1}%", x * 100.0))
}

/// Text safe inside a Markdown table cell or list item.
fn md(s: &str) -> String {
    s.replace('\\', "\\\\").replace('|', "\\|").replace(['\n', '\r'], " ")
}

/// Text safe inside HTML (element content and quoted attribute values).
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() && c != '\n' && c != '\t' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

/// Failed entries as `(task, agent, error)`, sorted by agent then task. An entry whose
/// task record says it is no longer failed (retried since) is left out.
pub(super) fn failures(c: &Collected) -> Vec<(&str, &str, String)> {
    let mut out = Vec::new();
    let now_failed: std::collections::HashMap<&str, bool> =
        c.tasks.iter().map(|t| (t.id.as_str(), t.state() == Some(crate::task::Status::Failed))).collect();
    for (agent, r) in &c.by_agent {
        for t in &r.tasks {
            if t.status() == "failed" && now_failed.get(t.id()).copied().unwrap_or(true) {
                let error = match t.field("error").or_else(|| t.field("reason")) {
                    Some(serde_json::Value::String(s)) => s.clone(),
                    Some(v) => v.to_string(),
                    None => String::new(),
                };
                out.push((t.id(), agent.as_str(), error));
            }
        }
    }
    out
}

/// The Markdown summary: per agent, per status, failures with their errors, input errors,
/// and the quality gates when given.
pub fn markdown(c: &Collected, gates: Option<&[Gate]>) -> String {
    let s = c.summary();
    let p = super::performance(&s);
    let mut o = String::new();
    let _ = writeln!(o, "# Session {} ({}, {})\n", md(&c.session.id), md(&c.session.operation), md(&c.session.status));
    let _ = write!(o, "Started {}", md(&c.session.started_at));
    if let Some(end) = &c.session.ended_at {
        let _ = write!(o, ", ended {}", md(end));
    }
    let _ = writeln!(o, ".{}\n", if c.complete() { "" } else { " **Report incomplete: see Errors.**" });
    let _ = writeln!(o, "## Summary\n");
    let _ = writeln!(
        o,
        "| tasks | completed | failed | agents | total time (s) | throughput (tasks/s) | success rate | average time (s) |"
    );
    let _ = writeln!(o, "|---:|---:|---:|---:|---:|---:|---:|---:|");
    let _ = writeln!(
        o,
        "| {} | {} | {} | {} | {:.3} | {} | {} | {} |\n",
        s.total_tasks,
        s.completed_tasks,
        s.failed_tasks,
        s.agents_used,
        s.total_time,
        num(p.throughput, 3),
        percent(p.success_rate),
        num(p.average_time, 3)
    );
    if !c.tasks.is_empty() {
        let t = c.task_counts();
        let q = &t.by_status;
        let _ = writeln!(o, "## Task queue\n");
        let _ = writeln!(
            o,
            "| total | blocked | pending | claimed | completed | failed | cancelled | retried | requeues | progress |"
        );
        let _ = writeln!(o, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {}% |\n",
            q.total,
            q.blocked,
            q.pending,
            q.claimed,
            q.completed,
            q.failed,
            q.cancelled,
            t.retried,
            t.requeues,
            q.operation_progress
        );
    }
    let _ = writeln!(o, "## By status\n");
    if s.by_status.is_empty() {
        let _ = writeln!(o, "No tasks reported.\n");
    } else {
        let _ = writeln!(o, "| status | tasks |\n|---|---:|");
        for (status, n) in &s.by_status {
            let _ = writeln!(o, "| {} | {n} |", md(status));
        }
        o.push('\n');
    }
    let _ = writeln!(o, "## Agents\n");
    let rows = c.agent_rows();
    if rows.is_empty() {
        let _ = writeln!(o, "No agents registered and no result files.\n");
    } else {
        let _ = writeln!(o, "| agent | type | status | tasks | completed | failed | time (s) |");
        let _ = writeln!(o, "|---|---|---|---:|---:|---:|---:|");
        for r in &rows {
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} | {} | {:.3} |",
                md(&r.id),
                md(r.agent_type.as_deref().unwrap_or("(not registered)")),
                md(r.status.as_deref().unwrap_or("-")),
                if r.has_results { r.tasks.to_string() } else { "no results".to_string() },
                r.completed,
                r.failed,
                r.execution_time
            );
        }
        o.push('\n');
    }
    let failed = failures(c);
    if !failed.is_empty() {
        let _ = writeln!(o, "## Failures\n");
        for (task, agent, error) in failed.iter().take(MAX_LISTED) {
            let why = if error.is_empty() { "(no error given)".to_string() } else { md(error) };
            let _ = writeln!(o, "- `{}` (agent {}): {why}", md(task), md(agent));
            if let Some(st) = c.stderr_tails.get(*task) {
                let _ = writeln!(
                    o,
                    "\n  Last lines of its stderr (attempt {}, `{}` in the session):\n",
                    st.attempt, st.file
                );
                let fence = if st.tail.contains("```") { "~~~~" } else { "```" };
                let _ = writeln!(o, "  {fence}text");
                for line in st.tail.lines() {
                    let _ = writeln!(o, "  {line}");
                }
                let _ = writeln!(o, "  {fence}\n");
            }
        }
        if failed.len() > MAX_LISTED {
            let _ = writeln!(o, "- ... and {} more (see results/final-report.json)", failed.len() - MAX_LISTED);
        }
        o.push('\n');
    }
    if !c.errors.is_empty() {
        let _ = writeln!(o, "## Errors\n");
        for e in &c.errors {
            let at = match (e.line, e.column) {
                (Some(l), Some(col)) => format!(" at line {l}, column {col}"),
                _ => String::new(),
            };
            let _ = writeln!(o, "- {}{at}: {}", md(&e.file), md(&e.message));
        }
        o.push('\n');
    }
    if !c.warnings.is_empty() {
        let _ = writeln!(o, "## Warnings\n");
        for w in &c.warnings {
            let _ = writeln!(o, "- {}", md(w));
        }
        o.push('\n');
    }
    if let Some(gates) = gates {
        o.push_str(&markdown_gates(gates));
    }
    o
}

/// The quality gates as the seed's checklist.
pub fn markdown_gates(gates: &[Gate]) -> String {
    let mut o = String::from("## Quality gates\n");
    let mut group = None;
    for g in gates {
        if group != Some(g.group) {
            group = Some(g.group);
            let _ = writeln!(o, "\n**{}:**\n", g.group.title());
        }
        let mark = if g.ok { "x" } else { " " };
        let _ = writeln!(o, "- [{mark}] {}: {}", g.title, md(&g.detail));
    }
    o
}

const CSS: &str = "\
body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222;max-width:1100px}\
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd}\
table{border-collapse:collapse;margin:.5em 0}th,td{border:1px solid #ccc;padding:3px 8px;text-align:left}\
td.n{text-align:right}th{background:#f3f3f3}.bad{color:#b71c1c}.ok{color:#1b5e20}\
svg text{font:12px system-ui,sans-serif;fill:#222}.lane-bg{fill:#fafafa;stroke:#e0e0e0}\
.task{stroke:#333;stroke-width:.5}.completed{fill:#2e7d32}.failed{fill:#c62828}\
.requeued,.expired,.dead,.cancelled{fill:#9e9e9e}.running,.claimed,.in_progress{fill:#1565c0}.other{fill:#f9a825}\
.retry{stroke:#000;stroke-width:1.5;stroke-dasharray:3 2}.legend rect{stroke:#333;stroke-width:.5}";

fn outcome_class(outcome: &str) -> &'static str {
    match outcome {
        "completed" => "completed",
        "failed" => "failed",
        "requeued" => "requeued",
        "expired" => "expired",
        "dead" | "dead_letter" | "dead-letter" => "dead",
        "cancelled" => "cancelled",
        "running" | "claimed" => "running",
        "in_progress" => "in_progress",
        _ => "other",
    }
}

/// One self-contained HTML page: summary, per-agent table, SVG timeline (one lane per
/// agent), failures, errors, and the quality gates when given.
pub fn html(c: &Collected, gates: Option<&[Gate]>) -> String {
    let s = c.summary();
    let p = super::performance(&s);
    let mut o = String::new();
    let title = format!("coord report: {}", c.session.id);
    let _ = write!(
        o,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{}</title>\n<style>{CSS}</style>\n</head>\n<body>\n",
        esc(&title)
    );
    let _ = writeln!(o, "<h1>{}</h1>", esc(&title));
    let _ = write!(
        o,
        "<p>Operation <b>{}</b>, status <b>{}</b>, started {}",
        esc(&c.session.operation),
        esc(&c.session.status),
        esc(&c.session.started_at)
    );
    if let Some(end) = &c.session.ended_at {
        let _ = write!(o, ", ended {}", esc(end));
    }
    o.push_str(".</p>\n");
    if !c.complete() {
        o.push_str("<p class=\"bad\"><b>Report incomplete:</b> some inputs could not be read (see Errors).</p>\n");
    }

    o.push_str("<section id=\"summary\">\n<h2>Summary</h2>\n<table>\n<tr><th>tasks</th><th>completed</th><th>failed</th><th>agents</th><th>total time (s)</th><th>throughput (tasks/s)</th><th>success rate</th><th>average time (s)</th></tr>\n");
    let _ = writeln!(
        o,
        "<tr><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{:.3}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>\n</table>",
        s.total_tasks,
        s.completed_tasks,
        s.failed_tasks,
        s.agents_used,
        s.total_time,
        num(p.throughput, 3),
        percent(p.success_rate),
        num(p.average_time, 3)
    );
    if !s.by_status.is_empty() {
        o.push_str("<table>\n<tr><th>status</th><th>tasks</th></tr>\n");
        for (status, n) in &s.by_status {
            let _ = writeln!(o, "<tr><td>{}</td><td class=\"n\">{n}</td></tr>", esc(status));
        }
        o.push_str("</table>\n");
    }
    if !c.tasks.is_empty() {
        let t = c.task_counts();
        let q = &t.by_status;
        o.push_str("<table>\n<tr><th>task records</th><th>blocked</th><th>pending</th><th>claimed</th><th>completed</th><th>failed</th><th>cancelled</th><th>retried</th><th>requeues</th><th>progress</th></tr>\n");
        let _ = writeln!(
            o,
            "<tr><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}%</td></tr>\n</table>",
            q.total,
            q.blocked,
            q.pending,
            q.claimed,
            q.completed,
            q.failed,
            q.cancelled,
            t.retried,
            t.requeues,
            q.operation_progress
        );
    }
    o.push_str("</section>\n");

    let rows = c.agent_rows();
    o.push_str("<section id=\"agents\">\n<h2>Agents</h2>\n<table>\n<tr><th>agent</th><th>type</th><th>status</th><th>tasks</th><th>completed</th><th>failed</th><th>time (s)</th></tr>\n");
    for r in &rows {
        let _ = writeln!(
            o,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{:.3}</td></tr>",
            esc(&r.id),
            esc(r.agent_type.as_deref().unwrap_or("(not registered)")),
            esc(r.status.as_deref().unwrap_or("-")),
            if r.has_results { r.tasks.to_string() } else { "no results".to_string() },
            r.completed,
            r.failed,
            r.execution_time
        );
    }
    o.push_str("</table>\n</section>\n");

    let mut lanes: BTreeSet<&str> = rows.iter().map(|r| r.id.as_str()).collect();
    lanes.extend(c.spans.iter().map(|sp| sp.agent.as_str()));
    timeline(&mut o, &lanes, &c.spans);

    let failed = failures(c);
    if !failed.is_empty() {
        o.push_str("<section id=\"failures\">\n<h2>Failures</h2>\n<ul>\n");
        for (task, agent, error) in failed.iter().take(MAX_LISTED) {
            let why = if error.is_empty() { "(no error given)" } else { error.as_str() };
            let _ = write!(o, "<li><code>{}</code> (agent {}): {}", esc(task), esc(agent), esc(why));
            if let Some(st) = c.stderr_tails.get(*task) {
                let _ = write!(
                    o,
                    "<br>Last lines of its stderr (attempt {}, <code>{}</code> in the session):<pre>{}</pre>",
                    st.attempt,
                    esc(&st.file),
                    esc(&st.tail)
                );
            }
            o.push_str("</li>\n");
        }
        if failed.len() > MAX_LISTED {
            let _ = writeln!(o, "<li>... and {} more (see results/final-report.json)</li>", failed.len() - MAX_LISTED);
        }
        o.push_str("</ul>\n</section>\n");
    }
    if !c.errors.is_empty() {
        o.push_str("<section id=\"errors\">\n<h2>Errors</h2>\n<ul>\n");
        for e in &c.errors {
            let at = match (e.line, e.column) {
                (Some(l), Some(col)) => format!(" at line {l}, column {col}"),
                _ => String::new(),
            };
            let _ = writeln!(o, "<li class=\"bad\">{}{at}: {}</li>", esc(&e.file), esc(&e.message));
        }
        o.push_str("</ul>\n</section>\n");
    }
    if !c.warnings.is_empty() {
        o.push_str("<section id=\"warnings\">\n<h2>Warnings</h2>\n<ul>\n");
        for w in &c.warnings {
            let _ = writeln!(o, "<li>{}</li>", esc(w));
        }
        o.push_str("</ul>\n</section>\n");
    }
    if let Some(gates) = gates {
        o.push_str("<section id=\"gates\">\n<h2>Quality gates</h2>\n<ul>\n");
        for g in gates {
            let (class, mark) = if g.ok { ("ok", "&#10003;") } else { ("bad", "&#10007;") };
            let _ = writeln!(
                o,
                "<li class=\"{class}\">{mark} {}: {}: {}</li>",
                esc(g.group.title()),
                esc(g.title),
                esc(&g.detail)
            );
        }
        o.push_str("</ul>\n</section>\n");
    }
    o.push_str("</body>\n</html>\n");
    o
}

const LABEL_W: f64 = 160.0;
const PLOT_W: f64 = 840.0;
const LANE_H: f64 = 22.0;
const TOP: f64 = 34.0;

fn timeline(o: &mut String, lanes: &BTreeSet<&str>, spans: &[Span]) {
    o.push_str("<section id=\"timeline\">\n<h2>Timeline</h2>\n");
    if spans.is_empty() {
        o.push_str("<p>No task has claim and completion times, so there is nothing to draw on the lanes.</p>\n");
    } else {
        o.push_str("<p>One lane per agent; each bar is one attempt at a task, from claim to completion, coloured by outcome. Dashed outlines are retries (attempt 2 or later); grey marks are attempts that were failed or requeued, drawn where they ended.</p>\n");
    }
    let start = spans.iter().map(|s| s.start_ms).min().unwrap_or(0);
    let end = spans.iter().map(|s| s.end_ms).max().unwrap_or(start);
    let range = (end.saturating_sub(start)).max(1) as f64;
    let height = TOP + LANE_H * lanes.len() as f64 + 30.0;
    let width = LABEL_W + PLOT_W + 20.0;
    let _ = writeln!(
        o,
        "<svg role=\"img\" aria-label=\"timeline\" width=\"{width:.0}\" height=\"{height:.0}\" viewBox=\"0 0 {width:.0} {height:.0}\">"
    );
    let _ = writeln!(o, "<text x=\"{LABEL_W:.0}\" y=\"14\">0 s</text>");
    let _ = writeln!(
        o,
        "<text x=\"{:.0}\" y=\"14\" text-anchor=\"end\">{:.3} s</text>",
        LABEL_W + PLOT_W,
        (end.saturating_sub(start)) as f64 / 1000.0
    );
    for (i, agent) in lanes.iter().enumerate() {
        let y = TOP + LANE_H * i as f64;
        let _ = writeln!(o, "<g class=\"lane\" data-agent=\"{}\">", esc(agent));
        let _ = writeln!(
            o,
            "<rect class=\"lane-bg\" x=\"0\" y=\"{y:.1}\" width=\"{:.0}\" height=\"{LANE_H:.0}\"/>",
            LABEL_W + PLOT_W
        );
        let _ = writeln!(o, "<text x=\"4\" y=\"{:.1}\">{}</text>", y + 15.0, esc(agent));
        for sp in spans.iter().filter(|sp| sp.agent == *agent) {
            let x = LABEL_W + (sp.start_ms - start) as f64 / range * PLOT_W;
            let w = ((sp.end_ms - sp.start_ms) as f64 / range * PLOT_W).max(2.0);
            let retry = if sp.attempt > 1 { " retry" } else { "" };
            let _ = writeln!(
                o,
                "<rect class=\"task {}{retry}\" x=\"{x:.1}\" y=\"{:.1}\" width=\"{w:.1}\" height=\"{:.0}\"><title>{} (attempt {}): {}, {:.3} s</title></rect>",
                outcome_class(&sp.outcome),
                y + 3.0,
                LANE_H - 6.0,
                esc(&sp.task),
                sp.attempt,
                esc(&sp.outcome),
                (sp.end_ms - sp.start_ms) as f64 / 1000.0
            );
        }
        o.push_str("</g>\n");
    }
    let ly = TOP + LANE_H * lanes.len() as f64 + 10.0;
    o.push_str("<g class=\"legend\">\n");
    for (i, (class, label)) in [
        ("completed", "completed"),
        ("failed", "failed"),
        ("requeued", "requeued"),
        ("running", "running"),
        ("other", "other"),
        ("completed retry", "retry"),
    ]
    .iter()
    .enumerate()
    {
        let x = LABEL_W + 100.0 * i as f64;
        let _ = writeln!(
            o,
            "<rect class=\"{class}\" x=\"{x:.0}\" y=\"{ly:.0}\" width=\"12\" height=\"12\"/><text x=\"{:.0}\" y=\"{:.0}\">{label}</text>",
            x + 16.0,
            ly + 11.0
        );
    }
    o.push_str("</g>\n</svg>\n</section>\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_covers_markup_and_tables() {
        assert_eq!(esc("<a href=\"x\">&'"), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
        assert_eq!(md("a|b\nc"), "a\\|b c");
        assert_eq!(num(None, 2), "n/a");
        assert_eq!(percent(Some(0.5)), "50.0%");
    }
}
