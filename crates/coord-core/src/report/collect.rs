//! Reading everything the report needs ([`collect`]): `session.json`, the registry
//! (`registry/agents.json`), every result file under `results/` (`<agent>.json` and the
//! `<agent>.jsonl` log, read in batches by several threads, merged per agent), and the
//! task records under `tasks/`; then the task index (by_task) and the timeline spans.
//! A bad input becomes an entry of `errors` with its parse position, never a stop.
//! Reads only.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use super::summary::{agent_rows, summarize};
use super::{Collected, ReportError, Span};
use crate::error::{Error, IoContext, Result};
use crate::layout::SessionDir;
use crate::results::{
    AgentResults, PassThrough, TaskResult, check_execution_time, not_regular, parse_result_in, parse_result_log,
    read_listed_text, read_listed_with,
};
use crate::{registry, session, task};

/// Reads everything the report needs. Only an unreadable `session.json` is fatal;
/// every other bad input becomes an entry of `errors`.
pub fn collect(dir: &SessionDir) -> Result<Collected> {
    let session = session::read(dir)?;
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    let agents = match registry::load(dir) {
        Ok(a) => a,
        Err(e) => {
            errors.push(error_entry(dir, &dir.agents_json(), &e));
            Vec::new()
        }
    };
    let started = std::time::Instant::now();
    let by_agent = read_result_files(dir, &mut errors)?;
    log::debug!("read {} result files in {:.1} ms", by_agent.len(), started.elapsed().as_secs_f64() * 1e3);
    let started = std::time::Instant::now();
    // The task index and the task records are independent: one thread each.
    let (task_index, tasks, spans, summary, agent_rows) = std::thread::scope(|s| {
        let index = s.spawn(|| index_tasks(&by_agent));
        let tasks = match task::list_all(dir) {
            Ok(t) => t,
            Err(e) => {
                errors.push(error_entry(dir, &dir.tasks_dir(), &e));
                Vec::new()
            }
        };
        let mut spans = spans_from_results(&by_agent);
        spans.extend(spans_from_tasks(&tasks));
        spans.sort_by(|a, b| {
            (&a.agent, a.start_ms, &a.task, a.attempt).cmp(&(&b.agent, b.start_ms, &b.task, b.attempt))
        });
        let summary = summarize(&by_agent, &errors);
        let rows = agent_rows(&agents, &by_agent);
        (index.join(), tasks, spans, summary, rows)
    });
    let (task_index, duplicates) =
        task_index.map_err(|_| Error::Failed("indexing the task entries failed unexpectedly".into()))??;
    warnings.extend(duplicates);
    errors.sort_by(|a, b| a.file.cmp(&b.file));
    log::debug!(
        "read {} task records and built the timeline in {:.1} ms",
        tasks.len(),
        started.elapsed().as_secs_f64() * 1e3
    );
    let mut c = Collected {
        session,
        by_agent,
        agents,
        errors,
        warnings,
        spans,
        tasks,
        task_index,
        stderr_tails: BTreeMap::new(),
        summary,
        agent_rows,
    };
    c.stderr_tails = stderr_tails(dir, &c);
    Ok(c)
}

/// Lines of a failed task's kept stderr the report embeds.
const TAIL_LINES: usize = 10;

/// The end of the kept stderr of each failed task the report lists: its latest attempt
/// that kept any, read from the end of the file.
fn stderr_tails(dir: &SessionDir, c: &Collected) -> BTreeMap<String, super::StderrTail> {
    let mut out = BTreeMap::new();
    for (id, _, _) in super::render::failures(c).into_iter().take(super::render::MAX_LISTED) {
        let Some(t) = c.tasks.iter().find(|t| t.id == id) else { continue };
        for attempt in (1..=t.attempts).rev() {
            if let Some(tail) = task::output::output_tail(dir, id, attempt, "err", TAIL_LINES) {
                let file = format!("tasks/output/{id}.{attempt}.err");
                out.insert(id.to_string(), super::StderrTail { attempt, file, tail });
                break;
            }
        }
    }
    out
}

fn read_result_files(dir: &SessionDir, errors: &mut Vec<ReportError>) -> Result<Vec<(String, AgentResults)>> {
    let results_dir = dir.results_dir();
    let mut names = Vec::new();
    let entries = match std::fs::read_dir(&results_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("list", &results_dir, e)),
    };
    for entry in entries {
        let entry = entry.ctx("list", &results_dir)?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            errors.push(ReportError {
                file: format!("results/{}", name.to_string_lossy()),
                line: None,
                column: None,
                message: "file name is not UTF-8; result files are named <agent>.json".into(),
            });
            continue;
        };
        // Hidden files are temporaries of writers in progress; other files are not ours.
        if name.starts_with('.')
            || !(name.ends_with(".json") || name.ends_with(".jsonl"))
            || name == "final-report.json"
        {
            continue;
        }
        // The type comes with the listing (no stat); links and the rest are not read.
        if !entry.file_type().ctx("inspect", &results_dir.join(name))?.is_file() {
            errors.push(error_entry(dir, &results_dir.join(name), &not_regular()));
            continue;
        }
        names.push(name.to_string());
    }
    names.sort();
    // Files are opened relative to the directory: no path walk per file.
    let results_fd = std::fs::File::open(&results_dir).ctx("open", &results_dir)?;
    let within = Some(&results_fd);
    // Batch `b` of the files, in name order. Each `<agent>.json` is appended to one
    // string, which becomes the document every entry of these files borrows from, and
    // parsed once all are read; a results log is read and parsed on its own (its last
    // line may be cut).
    const BATCH: usize = 64;
    let read_batch = |b: usize| {
        let names = &names[b * BATCH..((b + 1) * BATCH).min(names.len())];
        let mut text = String::new();
        let read: Vec<_> = names
            .iter()
            .map(|name| {
                let path = results_dir.join(name);
                let error = |e: Error| error_entry(dir, &path, &e);
                if let Some(agent) = SessionDir::result_log_agent(name) {
                    return read_listed_with(within, &path, |bytes| parse_result_log(&path, bytes))
                        .map(|r| Batched::Log(agent, r))
                        .map_err(error);
                }
                let Some(agent) = SessionDir::result_file_agent(name) else {
                    return Err(ReportError {
                        file: format!("results/{name}"),
                        line: None,
                        column: None,
                        message:
                            "file name is not <agent>.json with a valid agent id ([A-Za-z0-9][A-Za-z0-9._-]{0,127})"
                                .into(),
                    });
                };
                read_listed_text(within, &path, &mut text).map(|range| Batched::File(agent, range)).map_err(error)
            })
            .collect();
        let doc = Arc::new(text);
        names
            .iter()
            .zip(read)
            .map(|(name, read)| match read? {
                Batched::Log(agent, r) => Ok((agent, r)),
                Batched::File(agent, range) => {
                    let path = results_dir.join(name);
                    let r = parse_result_in(&path, &doc, range).and_then(check_execution_time);
                    Ok((agent, r.map_err(|e| error_entry(dir, &path, &e))?))
                }
            })
            .collect::<Vec<std::result::Result<_, ReportError>>>()
    };
    // Batches of files are taken from a shared counter, so a thread held up by the disk
    // holds up no one else; the batches are put back in name order afterwards.
    let batches = names.len().div_ceil(BATCH);
    let threads = reader_threads().min(batches.max(1));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let work = || {
        let mut done = Vec::new();
        loop {
            let b = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if b >= batches {
                break done;
            }
            done.push((b, read_batch(b)));
        }
    };
    let mut parts = std::thread::scope(|s| {
        let others: Vec<_> = (1..threads).map(|_| s.spawn(work)).collect();
        let mut parts = work();
        for t in others {
            parts.extend(t.join().map_err(|_| Error::Failed("reading the result files failed unexpectedly".into()))?);
        }
        Ok::<_, Error>(parts)
    })?;
    parts.sort_unstable_by_key(|(b, _)| *b);
    let mut out: Vec<(String, AgentResults)> = Vec::with_capacity(names.len());
    // One entry per agent, at the place of its first file: `<agent>.json` and
    // `<agent>.jsonl` are merged even when another agent's file sorts between them
    // (`a.json`, `a.json.json`, `a.jsonl`).
    let mut seen: HashMap<&str, usize, foldhash::fast::RandomState> = HashMap::default();
    for r in parts.into_iter().flat_map(|(_, p)| p) {
        match r {
            Ok((agent, r)) => match seen.get(agent) {
                Some(&i) => {
                    let prev = std::mem::replace(&mut out[i].1, AgentResults::empty());
                    out[i].1 = AgentResults::merge(vec![prev, r])?;
                }
                None => {
                    seen.insert(agent, out.len());
                    out.push((agent.to_string(), r));
                }
            },
            Err(e) => errors.push(e),
        }
    }
    Ok(out)
}

/// A result file of a batch, read: an agent's file (its range in the batch's text, parsed
/// once the batch is read) or its results log (parsed already).
enum Batched<'n> {
    File(&'n str, Range<usize>),
    Log(&'n str, AgentResults),
}

/// How many threads read the result files: four per core, at least 4 and at most 16.
/// More threads than cores, because a file whose pages were evicted waits on the disk
/// while the others keep the cores busy and the device's queue fed: on a cold page
/// cache eight threads read 10,000 files in about 40% of the time two threads take.
fn reader_threads() -> usize {
    std::thread::available_parallelism().map_or(4, |n| n.get() * 4).clamp(4, 16)
}

fn error_entry(dir: &SessionDir, path: &Path, e: &Error) -> ReportError {
    let file = path.strip_prefix(dir.root()).unwrap_or(path).display().to_string();
    match e {
        Error::Malformed { line, column, message, .. } => {
            ReportError { file, line: Some(*line), column: Some(*column), message: message.clone() }
        }
        other => ReportError { file, line: None, column: None, message: other.to_string() },
    }
}

/// [`Collected::task_index`], and the warnings about ids reported by several agents.
type TaskIndex = (Vec<(u32, u32)>, Vec<String>);

/// Builds [`Collected::task_index`] in one pass, and warns about every task id that more
/// than one agent reports (naming the agents in order; by_task keeps the last one's).
pub(super) fn index_tasks(by_agent: &[(String, AgentResults)]) -> Result<TaskIndex> {
    use std::collections::hash_map::Entry;
    let total: usize = by_agent.iter().map(|(_, r)| r.tasks.len()).sum();
    // Positions are kept in 32 bits (half the memory of the index).
    if u32::try_from(total.max(by_agent.len())).is_err() {
        return Err(Error::Failed(format!(
            "{total} task entries in {} result files: more than can be indexed",
            by_agent.len()
        )));
    }
    // Slot in `index` of the first id seen with each hash (hashed while the files were
    // parsed), and the agent that reported it first. A different id with the same hash
    // goes to `overflow`, keyed by the id itself.
    let mut slots: HashMap<u64, (u32, u32), std::hash::BuildHasherDefault<PassThrough>> =
        HashMap::with_capacity_and_hasher(total, Default::default());
    let mut overflow: HashMap<&str, (u32, u32)> = HashMap::new();
    let mut index: Vec<(u32, u32)> = Vec::with_capacity(total);
    let mut dups: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    let task_at = |(a, t): (u32, u32)| &by_agent[a as usize].1.tasks[t as usize];
    for (a, (agent, r)) in by_agent.iter().enumerate() {
        for (t, task) in r.tasks.iter().enumerate() {
            let (a, t, id) = (a as u32, t as u32, task.id());
            let here = (index.len() as u32, a);
            let seen = match slots.entry(task.id_hash) {
                Entry::Vacant(v) => {
                    v.insert(here);
                    None
                }
                Entry::Occupied(o) if task_at(index[o.get().0 as usize]).id() == id => Some(*o.get()),
                Entry::Occupied(_) => match overflow.entry(id) {
                    Entry::Vacant(v) => {
                        v.insert(here);
                        None
                    }
                    Entry::Occupied(o) => Some(*o.get()),
                },
            };
            let Some((slot, first)) = seen else {
                index.push((a, t));
                continue;
            };
            // The seed assigns by_task[id] per entry, so the last one wins.
            index[slot as usize] = (a, t);
            let first = by_agent[first as usize].0.as_str();
            if first != agent {
                let agents = dups.entry(id).or_insert_with(|| vec![first]);
                if agents.last() != Some(&agent.as_str()) {
                    agents.push(agent);
                }
            }
        }
    }
    let warnings = dups
        .into_iter()
        .map(|(task, agents)| {
            format!(
                "task {task:?} is reported by agents {}; by_task keeps the entry of {}",
                agents.join(", "),
                agents.last().copied().unwrap_or_default()
            )
        })
        .collect();
    Ok((index, warnings))
}

/// Timeline bars from result entries that carry their own times (`started_at` or
/// `claimed_at`, and `completed_at`, `finished_at` or `failed_at`, RFC 3339).
fn spans_from_results(by_agent: &[(String, AgentResults)]) -> Vec<Span> {
    let time = |t: &TaskResult, keys: &[&str]| {
        keys.iter().find_map(|k| t.field(k)?.as_str().and_then(crate::time::parse_rfc3339)).map(crate::time::unix_ms)
    };
    let mut spans = Vec::new();
    for (agent, r) in by_agent {
        for t in r.tasks.iter().filter(|t| t.fields.is_some()) {
            let Some(start) = time(t, &["claimed_at", "started_at", "assigned_at"]) else { continue };
            let end = time(t, &["completed_at", "finished_at", "failed_at"]).unwrap_or(start).max(start);
            let attempt = ["attempt", "attempts"].iter().find_map(|k| t.field(k)?.as_u64()).unwrap_or(1).max(1);
            spans.push(Span {
                agent: agent.clone(),
                task: t.id().to_string(),
                attempt,
                outcome: t.status().to_string(),
                start_ms: start,
                end_ms: end,
            });
        }
    }
    spans
}

/// Timeline bars from the task records: the last claim from `assigned_at` to its end,
/// and each earlier attempt (a failure or requeue, whose start taskd does not keep) as a
/// mark at the time it ended, on the lane of the agent that held it.
fn spans_from_tasks(tasks: &[task::Task]) -> Vec<Span> {
    let ms = |t: &Option<String>| t.as_deref().and_then(crate::time::parse_rfc3339).map(crate::time::unix_ms);
    let mut spans = Vec::new();
    for t in tasks {
        let state = t.state();
        let final_failed = matches!(state, Some(task::Status::Failed));
        for e in &t.errors {
            // The attempt that failed the task for good is drawn as the final bar below.
            if final_failed && e.attempt == t.attempts {
                continue;
            }
            let (Some(agent), Some(at)) = (&e.agent, ms(&Some(e.at.clone()))) else { continue };
            spans.push(Span {
                agent: agent.clone(),
                task: t.id.clone(),
                attempt: u64::from(e.attempt.max(1)),
                outcome: "requeued".into(),
                start_ms: at,
                end_ms: at,
            });
        }
        let (Some(agent), Some(start)) = (&t.assigned_to, ms(&t.assigned_at)) else { continue };
        let (outcome, end) = match state {
            Some(task::Status::Completed) => ("completed", ms(&t.completed_at)),
            Some(task::Status::Failed) => ("failed", ms(&t.failed_at)),
            Some(task::Status::Cancelled) => ("cancelled", ms(&t.failed_at)),
            Some(task::Status::Claimed) => ("running", None),
            // Back in the queue: the last claim was requeued (and is in `errors`).
            _ => continue,
        };
        spans.push(Span {
            agent: agent.clone(),
            task: t.id.clone(),
            attempt: u64::from(t.attempts.max(1)),
            outcome: outcome.into(),
            start_ms: start,
            end_ms: end.unwrap_or(start).max(start),
        });
    }
    spans
}
