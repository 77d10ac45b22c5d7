//! `aggregate`: collect a session's results into the final report; check the quality gates.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use coord_core::{cli, error::exit, fsio, output, report};
use serde_json::json;

/// Collect a session's results into state/results.json and results/final-report.json
///
/// Reads results/<agent>.json ({tasks: [{id, status, ...}], execution_time}), the
/// registry and the state, and writes the seed's {by_agent, by_task, summary} and
/// {session, results, performance, timestamp}. A result file that cannot be read is
/// listed under the report's errors (with its parse position) and the exit code is 4.
/// Rates whose denominator is zero are null. A completed (archived) session is read,
/// never rewritten.
#[derive(Debug, Parser)]
#[command(version, after_help = EXAMPLES)]
struct Args {
    #[command(flatten)]
    session: cli::SessionArgs,

    /// What to print: json (one summary object; the full report is in
    /// results/final-report.json), md (a summary for the terminal), or html (one
    /// self-contained page with a timeline)
    #[arg(long, value_enum, default_value_t = Format::Json)]
    format: Format,

    /// Write the output to FILE (atomically) instead of stdout
    #[arg(long, value_name = "FILE")]
    output: Option<PathBuf>,

    /// Check the seed's quality gates and include the checklist; exit 1 if any fails
    #[arg(long)]
    gates: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Json,
    Md,
    Html,
}

const EXAMPLES: &str = "\
Examples:
  aggregate                                  # write the report, print a summary line
  aggregate --format md                      # a summary for the terminal
  aggregate --format html --output report.html
  aggregate --gates --format md              # the quality-gate checklist

Exit codes: 0 ok, 1 failed (a quality gate failed with --gates, session.json unreadable,
cannot write), 2 bad usage (no such session), 4 report written but incomplete: some
input could not be read (listed under errors, with line and column).";

fn main() -> ExitCode {
    let args: Args = cli::parse();
    cli::run("aggregate", || {
        coord_core::sys::grow_heap_in_large_steps();
        let dir = args.session.open()?;
        let outcome = report::aggregate(&dir, args.session.lock_timeout())?;
        let c = &outcome.collected;
        let gates = args.gates.then(|| report::check_gates(&dir, c));
        let text = match args.format {
            Format::Md => report::markdown(c, gates.as_deref()).into_bytes(),
            Format::Html => report::html(c, gates.as_deref()).into_bytes(),
            Format::Json => {
                let summary = c.summary();
                let mut v = json!({
                    "session": dir.id(),
                    "complete": c.complete(),
                    "written": outcome.written,
                    "results": dir.results_view(),
                    "report": dir.final_report(),
                    "summary": summary,
                    "performance": report::performance(&summary),
                    "errors": c.errors,
                    "warnings": c.warnings,
                    "timestamp": outcome.timestamp,
                });
                if let Some(g) = &gates {
                    v["gates_passed"] = json!(g.iter().all(|g| g.ok));
                    v["gates"] = json!(g);
                }
                let mut line = Vec::new();
                output::write_line(&mut line, &v)?;
                line
            }
        };
        match &args.output {
            Some(path) => fsio::write_atomic(path, &text)?,
            None => {
                use std::io::Write;
                let mut out = std::io::stdout().lock();
                out.write_all(&text)
                    .and_then(|()| out.flush())
                    .map_err(|e| coord_core::Error::io("write to", "stdout", e))?;
            }
        }
        for e in &c.errors {
            match (e.line, e.column) {
                (Some(l), Some(col)) => log::warn!("{} at line {l}, column {col}: {}", e.file, e.message),
                _ => log::warn!("{}: {}", e.file, e.message),
            }
        }
        if let Some(g) = &gates {
            let failed: Vec<_> = g.iter().filter(|g| !g.ok).collect();
            for f in &failed {
                log::error!("gate {} ({}) failed: {}", f.id, f.title, f.detail);
            }
            if !failed.is_empty() {
                std::mem::forget(outcome);
                return Ok(exit::FAILED);
            }
        }
        let code = if !c.complete() {
            log::warn!("report incomplete: {} input(s) could not be read (listed under errors)", c.errors.len());
            report::EXIT_INCOMPLETE
        } else {
            exit::OK
        };
        // The process ends here; freeing 100,000 records one by one would cost more
        // than writing them did.
        std::mem::forget(outcome);
        Ok(code)
    })
}
