//! Result aggregation: `results/<agent>.json`, the registry and the task records become
//! `state/results.json` (`{by_agent, by_task, summary}`) and `results/final-report.json`
//! (`{session, results, performance, timestamp}` plus the per-agent table and errors).
//!
//! Aggregation never stops at a bad file: a result file that does not parse, or does not
//! have the seed's shape, is listed under the report's `errors` with its parse position,
//! and the report says it is incomplete. Everything is read in a fixed order (files by
//! name), so two runs over the same session give the same report apart from `timestamp`.
//! Rates are `null` when their denominator is zero: never NaN or Infinity.
//!
//! The module's parts: [`collect`] reads the inputs (`collect.rs`), the summary and
//! rates are computed from them (`summary.rs`), the views are written straight from the
//! documents as read (`views.rs`), and the gates and the Markdown/HTML renderings use
//! the collected whole (`gates.rs`, `render.rs`). This file holds the shared types and
//! [`aggregate`], the glue that writes `state/results.json` and
//! `results/final-report.json`. Result documents themselves are [`crate::results`]'.

mod collect;
mod gates;
mod render;
mod summary;
#[cfg(test)]
mod tests;
mod views;

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::fsio;
use crate::layout::{RESULTS_KEY, SessionDir};
use crate::record::{Agent, Session, status};
use crate::task;

#[doc(hidden)]
pub use crate::results::fast_path_agrees;
pub use crate::results::{AgentResults, TaskResult, parse_result_file, read_result_file, read_result_log};
pub use collect::collect;
pub use gates::{Gate, GateGroup, check_gates};
pub use render::{html, markdown};
pub use summary::{performance, ratio};
pub use views::{ByAgent, ByTask, FinalReport, ResultsView};

/// Exit code of `aggregate` when the report was written but is incomplete: some input
/// file could not be read and is listed under the report's `errors`.
pub const EXIT_INCOMPLETE: u8 = 4;

/// An input that could not be used; the report is incomplete without it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportError {
    /// The file, relative to the session directory (`results/w1.json`).
    pub file: String,
    /// 1-based line of a parse error, if the file did not parse.
    pub line: Option<usize>,
    /// 1-based column of a parse error, if the file did not parse.
    pub column: Option<usize>,
    /// What is wrong with it.
    pub message: String,
}

/// The seed's `summary`, plus per-status counts and how many files were read.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// Task entries across all result files (a task reported twice counts twice, as in the seed).
    pub total_tasks: u64,
    /// Entries with status `completed`.
    pub completed_tasks: u64,
    /// Entries with status `failed`.
    pub failed_tasks: u64,
    /// Sum of the agents' `execution_time`, in seconds.
    pub total_time: f64,
    /// Result files that were read.
    pub agents_used: u64,
    /// Entries per status, by status name.
    pub by_status: BTreeMap<String, u64>,
    /// Result files that could not be read (see the report's `errors`).
    pub unreadable_files: u64,
}

/// The seed's `performance`. A rate whose denominator is zero is `null`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Performance {
    /// Tasks per second of agent time: `total_tasks / total_time`.
    pub throughput: Option<f64>,
    /// Share of tasks completed: `completed_tasks / total_tasks`, from 0 to 1.
    pub success_rate: Option<f64>,
    /// Seconds per task: `total_time / total_tasks`.
    pub average_time: Option<f64>,
}

/// One row of the per-agent table: the registration joined with the agent's results.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AgentRow {
    /// The agent id.
    pub id: String,
    /// Type from the registry, if registered.
    #[serde(rename = "type")]
    pub agent_type: Option<String>,
    /// Registry status (`active`, `terminated`, `failed`...), if registered.
    pub status: Option<String>,
    /// Whether `results/<agent>.json` was read.
    pub has_results: bool,
    /// Task entries in its result file.
    pub tasks: u64,
    /// Of which `completed`.
    pub completed: u64,
    /// Of which `failed`.
    pub failed: u64,
    /// Its `execution_time`, seconds.
    pub execution_time: f64,
}

/// One bar of the timeline: a task on an agent's lane, from claim (or start) to its end.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Span {
    /// The agent whose lane it is on.
    pub agent: String,
    /// The task id.
    pub task: String,
    /// 1 for the first try; higher for retries and requeues.
    pub attempt: u64,
    /// How it ended: `completed`, `failed`, `requeued`, `running`...
    pub outcome: String,
    /// Start, milliseconds since the Unix epoch.
    pub start_ms: u64,
    /// End, milliseconds since the Unix epoch (the start for a running task).
    pub end_ms: u64,
}

/// Everything read from a session, in a fixed order. Built by [`collect`].
#[derive(Debug, Clone)]
pub struct Collected {
    /// `session.json`.
    pub session: Session,
    /// Readable result files, by agent id, sorted.
    pub by_agent: Vec<(String, AgentResults)>,
    /// The registry (without heartbeat times, which change on their own).
    pub agents: Vec<Agent>,
    /// Inputs that could not be used, sorted by file.
    pub errors: Vec<ReportError>,
    /// Things worth knowing that do not make the report incomplete.
    pub warnings: Vec<String>,
    /// Timeline bars, by agent then start.
    pub spans: Vec<Span>,
    /// The task records (taskd), grouped by status.
    pub tasks: Vec<task::Task>,
    /// `by_task`'s entries: for each task id, in the order ids first appear (agents by
    /// id, entries in file order), the position `(agent, entry)` in `by_agent` of its
    /// last entry, which the seed's `by_task[id] = entry` keeps.
    pub task_index: Vec<(u32, u32)>,
    /// The last lines of the kept stderr of listed failed tasks (by task id), from
    /// `tasks/output/` (see [`StderrTail`]).
    pub stderr_tails: BTreeMap<String, StderrTail>,
    /// [`Collected::summary`], computed by [`collect`].
    summary: Summary,
    /// [`Collected::agent_rows`], computed by [`collect`].
    agent_rows: Vec<AgentRow>,
}

/// The end of a failed task's kept stderr, which the report embeds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StderrTail {
    /// The attempt it is from (the latest that kept stderr).
    pub attempt: u32,
    /// The file, relative to the session directory (`tasks/output/<id>.<n>.err`).
    pub file: String,
    /// Its last lines.
    pub tail: String,
}

/// The task queue at report time: counts by status from the task records, plus retries.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskCounts {
    /// Counts by status and the seed's `operation_progress`.
    #[serde(flatten)]
    pub by_status: task::Progress,
    /// Tasks claimed more than once.
    pub retried: usize,
    /// Failed attempts and requeues over all tasks.
    pub requeues: usize,
}

/// What [`aggregate`] did.
#[derive(Debug)]
pub struct Outcome {
    /// What was read.
    pub collected: Collected,
    /// The report's timestamp.
    pub timestamp: String,
    /// Whether the files were written (a completed session is left as archived).
    pub written: bool,
}

/// Collects the session's results and, unless the session is completed (archived, so
/// its files must stay as they were archived), writes `state/results.json` (under the
/// `results` key's lock) and `results/final-report.json`, and refreshes the seed's views
/// of the task queue (`state/tasks.json`, `operation_progress` in `state/global.json`).
pub fn aggregate(dir: &SessionDir, timeout: Duration) -> Result<Outcome> {
    let collected = collect(dir)?;
    let timestamp = crate::time::now_rfc3339();
    let written = collected.session.status != status::SESSION_COMPLETED;
    if written {
        let started = std::time::Instant::now();
        let view = collected.results();
        // The two large files are independent: one thread each, each writing straight
        // from the documents as read; the rest of the report is built meanwhile.
        let (view_written, report_written) = std::thread::scope(|s| {
            let view = &view;
            let written = s.spawn(move || -> Result<()> {
                let _guard = dir.lock(RESULTS_KEY, timeout)?;
                fsio::replace_with(&dir.results_view(), |w| {
                    view.write_to(w)?;
                    w.write_all(b"\n")
                })
            });
            let report = collected.final_report_of(view.clone(), collected.task_counts(), timestamp.clone());
            let report = fsio::replace_with(&dir.final_report(), |w| {
                report.write_to(w)?;
                w.write_all(b"\n")
            });
            (written.join(), report)
        });
        view_written.map_err(|_| Error::Failed("writing state/results.json failed unexpectedly".into()))??;
        report_written?;
        log::debug!("wrote the results view and the final report in {:.1} ms", started.elapsed().as_secs_f64() * 1e3);
        if !collected.tasks.is_empty() {
            // The seed's views of the queue: state/tasks.json and operation_progress.
            task::refresh_view(dir, &collected.tasks, timeout)?;
            let progress = task::count(&collected.tasks).operation_progress;
            crate::state::set(dir, "global", "/operation_progress", serde_json::json!(progress), timeout)?;
        }
    } else {
        log::info!("session {} is completed: its files are left as archived, nothing is written", dir.id());
    }
    Ok(Outcome { collected, timestamp, written })
}
