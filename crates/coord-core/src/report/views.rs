//! The report's JSON views, borrowed from [`Collected`]: `state/results.json`
//! ([`ResultsView`]: `{by_agent, by_task, summary}`) and `results/final-report.json`
//! ([`FinalReport`]). Each serializes with serde and also writes itself straight from
//! the documents as they were read ([`ResultsView::write_to`], [`FinalReport::write_to`]),
//! byte for byte what serde would write, without rebuilding a JSON tree. It writes to
//! the writer it is given; [`super::aggregate`] chooses the files.

use std::io::Write;

use serde::Serialize;

use super::{AgentRow, Performance, ReportError, Span, Summary, TaskCounts};
use crate::record::Session;
use crate::results::{AgentResults, TaskResult, write_json_str};

/// `state/results.json`: the seed's `{by_agent, by_task, summary}`, borrowed from [`Collected`](super::Collected).
#[derive(Debug, Clone, Serialize)]
pub struct ResultsView<'a> {
    /// Each agent's result file, as written (unknown fields kept).
    pub by_agent: ByAgent<'a>,
    /// Each task id's entry as written; when two agents report the same id, the later
    /// agent (by id) wins, as in the seed, and a warning says so.
    pub by_task: ByTask<'a>,
    /// Totals.
    pub summary: Summary,
}

/// Serializes `by_agent` as a JSON object without copying the results.
#[derive(Debug, Clone)]
pub struct ByAgent<'a>(pub(super) &'a [(String, AgentResults)]);

impl ByAgent<'_> {
    /// Writes the object as compact JSON, each document copied as written.
    fn write_to<W: Write>(&self, w: &mut W) -> std::io::Result<()> {
        write_raw_object(w, self.0.iter().map(|(agent, r)| (agent.as_str(), r.raw())), |w, agent| {
            write_json_str(w, agent)
        })
    }
}

impl Serialize for ByAgent<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(k, v)| (k, v)))
    }
}

/// Writes a JSON object of `(key, raw JSON value)` entries, compact, as serializing the
/// values as `RawValue`s would, without checking every value again (parsing did);
/// `write_key` writes each key as a JSON string.
fn write_raw_object<'a, W: Write, K>(
    w: &mut W,
    entries: impl Iterator<Item = (K, &'a str)>,
    write_key: impl Fn(&mut W, K) -> std::io::Result<()>,
) -> std::io::Result<()> {
    w.write_all(b"{")?;
    for (i, (key, raw)) in entries.enumerate() {
        if i > 0 {
            w.write_all(b",")?;
        }
        write_key(w, key)?;
        w.write_all(b":")?;
        w.write_all(raw.as_bytes())?;
    }
    w.write_all(b"}")
}

/// `by_agent` that [`Collected::task_index`](super::Collected::task_index) picks.
#[derive(Debug, Clone)]
pub struct ByTask<'a> {
    pub(super) by_agent: &'a [(String, AgentResults)],
    pub(super) index: &'a [(u32, u32)],
}

impl<'a> ByTask<'a> {
    fn entries(&self) -> impl Iterator<Item = &'a TaskResult> + use<'a> {
        let by_agent = self.by_agent;
        self.index.iter().map(move |&(a, t)| &by_agent[a as usize].1.tasks[t as usize])
    }

    /// Writes the object as compact JSON, each entry copied as written.
    fn write_to<W: Write>(&self, w: &mut W) -> std::io::Result<()> {
        write_raw_object(w, self.entries().map(|t| (t, t.raw())), |w, t| t.write_id(w))
    }
}

impl Serialize for ByTask<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_map(self.entries().map(|t| (t.id(), t)))
    }
}

/// `results/final-report.json`.
#[derive(Debug, Serialize)]
pub struct FinalReport<'a> {
    /// `session.json` at the time of the report.
    pub session: &'a Session,
    /// The same `{by_agent, by_task, summary}` as `state/results.json`.
    pub results: ResultsView<'a>,
    /// Rates; `null` where undefined.
    pub performance: Performance,
    /// The per-agent table (registry joined with results), sorted by id.
    pub agents: &'a [AgentRow],
    /// The task queue's records, counted.
    pub tasks: TaskCounts,
    /// Timeline bars (task claims and completions per agent).
    pub timeline: &'a [Span],
    /// Whether every input was read (`errors` is empty).
    pub complete: bool,
    /// Inputs that could not be used.
    pub errors: &'a [ReportError],
    /// Things worth knowing that do not make the report incomplete.
    pub warnings: &'a [String],
    /// When the report was made (RFC 3339 UTC); the only field that differs between runs.
    pub timestamp: String,
}

impl ResultsView<'_> {
    /// Writes the view as one compact JSON object, exactly as `serde_json::to_writer`
    /// would, but straight from the documents as they were read.
    pub fn write_to<W: Write>(&self, w: &mut W) -> std::io::Result<()> {
        w.write_all(b"{\"by_agent\":")?;
        self.by_agent.write_to(w)?;
        w.write_all(b",\"by_task\":")?;
        self.by_task.write_to(w)?;
        w.write_all(b",\"summary\":")?;
        serde_json::to_writer(&mut *w, &self.summary).map_err(std::io::Error::other)?;
        w.write_all(b"}")
    }
}

impl FinalReport<'_> {
    /// Writes the report as one compact JSON object, exactly as `serde_json::to_writer`
    /// would (see [`ResultsView::write_to`]).
    pub fn write_to<W: Write>(&self, w: &mut W) -> std::io::Result<()> {
        fn field<W: Write, T: Serialize + ?Sized>(w: &mut W, name: &str, value: &T) -> std::io::Result<()> {
            write!(w, ",\"{name}\":")?;
            serde_json::to_writer(&mut *w, value).map_err(std::io::Error::other)
        }
        w.write_all(b"{\"session\":")?;
        serde_json::to_writer(&mut *w, self.session).map_err(std::io::Error::other)?;
        w.write_all(b",\"results\":")?;
        self.results.write_to(w)?;
        field(w, "performance", &self.performance)?;
        field(w, "agents", &self.agents)?;
        field(w, "tasks", &self.tasks)?;
        field(w, "timeline", self.timeline)?;
        field(w, "complete", &self.complete)?;
        field(w, "errors", self.errors)?;
        field(w, "warnings", self.warnings)?;
        field(w, "timestamp", &self.timestamp)?;
        w.write_all(b"}")
    }
}
