//! Totals and rates: the seed's `summary` ([`Summary`]), `performance` (rates that are
//! `null`, never NaN or Infinity, where their denominator is zero), the per-agent table
//! (registry joined with results) and the task records' counts, and the methods of
//! [`Collected`] that build the views from them. Pure computation over what
//! [`super::collect`] read: touches no file.

use std::collections::BTreeMap;

use super::views::{ByAgent, ByTask};
use super::{AgentRow, Collected, FinalReport, Performance, ReportError, ResultsView, Summary, TaskCounts};
use crate::record::Agent;
use crate::results::AgentResults;
use crate::task;

impl Collected {
    /// The `{by_agent, by_task, summary}` view.
    pub fn results(&self) -> ResultsView<'_> {
        let by_task = ByTask { by_agent: &self.by_agent, index: &self.task_index };
        ResultsView { by_agent: ByAgent(&self.by_agent), by_task, summary: self.summary() }
    }

    /// Totals over the readable result files.
    pub fn summary(&self) -> Summary {
        self.summary.clone()
    }

    /// The seed's rates, `null` where the denominator is zero.
    pub fn performance(&self) -> Performance {
        let s = self.summary();
        performance(&s)
    }

    /// The per-agent table: every registered agent and every agent with a result file.
    pub fn agent_rows(&self) -> Vec<AgentRow> {
        self.agent_table().to_vec()
    }

    /// [`Collected::agent_rows`], borrowed.
    pub fn agent_table(&self) -> &[AgentRow] {
        &self.agent_rows
    }

    /// The final report, stamped with `timestamp`.
    pub fn final_report(&self, timestamp: String) -> FinalReport<'_> {
        self.final_report_of(self.results(), self.task_counts(), timestamp)
    }

    /// The final report, stamped with `timestamp`, from its parts made beforehand (see
    /// [`aggregate`]): `results` must be [`Collected::results`] and `tasks`
    /// [`Collected::task_counts`].
    pub(super) fn final_report_of<'a>(
        &'a self,
        results: ResultsView<'a>,
        tasks: TaskCounts,
        timestamp: String,
    ) -> FinalReport<'a> {
        let performance = performance(&results.summary);
        FinalReport {
            session: &self.session,
            results,
            performance,
            agents: self.agent_table(),
            tasks,
            timeline: &self.spans,
            complete: self.errors.is_empty(),
            errors: &self.errors,
            warnings: &self.warnings,
            timestamp,
        }
    }

    /// The task records counted by status, with retries and requeues.
    pub fn task_counts(&self) -> TaskCounts {
        TaskCounts {
            by_status: task::count(&self.tasks),
            retried: self.tasks.iter().filter(|t| t.attempts > 1).count(),
            requeues: self.tasks.iter().map(|t| t.errors.len()).sum(),
        }
    }

    /// Whether every input was read.
    pub fn complete(&self) -> bool {
        self.errors.is_empty()
    }
}

/// The per-agent table (see [`Collected::agent_rows`]).
pub(super) fn agent_rows(agents: &[Agent], by_agent: &[(String, AgentResults)]) -> Vec<AgentRow> {
    let mut rows: BTreeMap<&str, AgentRow> = BTreeMap::new();
    for a in agents {
        rows.insert(
            &a.id,
            AgentRow {
                id: a.id.clone(),
                agent_type: Some(a.agent_type.clone()),
                status: Some(a.status.clone()),
                has_results: false,
                tasks: 0,
                completed: 0,
                failed: 0,
                execution_time: 0.0,
            },
        );
    }
    for (agent, r) in by_agent {
        let row = rows.entry(agent).or_insert_with(|| AgentRow {
            id: agent.clone(),
            agent_type: None,
            status: None,
            has_results: false,
            tasks: 0,
            completed: 0,
            failed: 0,
            execution_time: 0.0,
        });
        row.has_results = true;
        row.tasks = r.tasks.len() as u64;
        row.completed = r.completed;
        row.failed = r.failed;
        row.execution_time = r.execution_time.unwrap_or(0.0);
    }
    rows.into_values().collect()
}

/// Totals over the readable result files (see [`Collected::summary`]).
pub(super) fn summarize(by_agent: &[(String, AgentResults)], errors: &[ReportError]) -> Summary {
    let mut s = Summary {
        total_tasks: 0,
        completed_tasks: 0,
        failed_tasks: 0,
        total_time: 0.0,
        agents_used: by_agent.len() as u64,
        by_status: BTreeMap::new(),
        unreadable_files: errors.iter().filter(|e| e.file.starts_with("results/")).count() as u64,
    };
    for (_, r) in by_agent {
        s.total_tasks += r.tasks.len() as u64;
        s.total_time += r.execution_time.unwrap_or(0.0);
        s.completed_tasks += r.completed;
        s.failed_tasks += r.failed;
        // Other statuses one by one; the reader threads counted these two.
        if r.completed + r.failed == r.tasks.len() as u64 {
            continue;
        }
        for t in &r.tasks {
            let status = t.status();
            if status == "completed" || status == "failed" {
                continue;
            }
            match s.by_status.get_mut(status) {
                Some(n) => *n += 1,
                None => {
                    s.by_status.insert(status.to_string(), 1);
                }
            }
        }
    }
    for (status, n) in [("completed", s.completed_tasks), ("failed", s.failed_tasks)] {
        if n > 0 {
            s.by_status.insert(status.to_string(), n);
        }
    }
    if !s.total_time.is_finite() {
        // Only reachable with absurd inputs (sums beyond 1e308); keep the report JSON.
        s.total_time = f64::MAX;
    }
    s
}

/// The seed's rates from a summary, with zero denominators giving `None`.
pub fn performance(s: &Summary) -> Performance {
    let total = s.total_tasks as f64;
    Performance {
        throughput: ratio(total, s.total_time),
        success_rate: ratio(s.completed_tasks as f64, total),
        average_time: ratio(s.total_time, total),
    }
}

/// `a / b`, or `None` when `b` is zero (or the result is not a finite number).
pub fn ratio(a: f64, b: f64) -> Option<f64> {
    if b > 0.0 { Some(a / b).filter(|r| r.is_finite()) } else { None }
}
