//! Result aggregation: `results/<agent>.json`, the registry and the task records become
//! `state/results.json` (`{by_agent, by_task, summary}`) and `results/final-report.json`
//! (`{session, results, performance, timestamp}` plus the per-agent table and errors).
//!
//! Aggregation never stops at a bad file: a result file that does not parse, or does not
//! have the seed's shape, is listed under the report's `errors` with its parse position,
//! and the report says it is incomplete. Everything is read in a fixed order (files by
//! name), so two runs over the same session give the same report apart from `timestamp`.
//! Rates are `null` when their denominator is zero: never NaN or Infinity.

mod gates;
mod render;
mod scan;

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::error::{Error, IoContext, Result};
use crate::fsio;
use crate::layout::{RESULTS_KEY, SessionDir};
use crate::record::{Agent, Session, status};
use crate::registry;
use crate::session;
use crate::task;
use scan::Str;

pub use gates::{Gate, GateGroup, check_gates};
pub use render::{html, markdown};

/// Exit code of `aggregate` when the report was written but is incomplete: some input
/// file could not be read and is listed under the report's `errors`.
pub const EXIT_INCOMPLETE: u8 = 4;

/// The task fields the report itself reads (failures, timeline); every other field is
/// only carried along in the entry's raw JSON.
const READ_FIELDS: &[&str] = &[
    "error",
    "claimed_at",
    "started_at",
    "assigned_at",
    "completed_at",
    "finished_at",
    "failed_at",
    "attempt",
    "attempts",
];

/// One task entry of a result file: the seed's `{id, status, ...}`.
///
/// It serializes as the entry was written, byte for byte (unknown fields and their order
/// kept), without ever being rebuilt as a JSON tree: that is what keeps aggregating
/// 100,000 tasks fast.
#[derive(Debug, Clone)]
pub struct TaskResult {
    /// The document the entry is in, and where: the entry's text is never copied.
    doc: Arc<String>,
    span: Range<usize>,
    /// The task id and its status, found in the document (or decoded, when written
    /// with escapes).
    id: Str,
    status: Str,
    /// The fields the report reads ([`READ_FIELDS`]), when the entry has any.
    fields: Option<Box<Map<String, Value>>>,
    /// [`id_hash`] of the id, computed while parsing (on the reader threads).
    id_hash: u64,
}

/// Hashes a task id with a hasher seeded once per process (ids come from files, so
/// the seed keeps crafted collisions out), the same for every thread.
fn id_hash(id: &str) -> u64 {
    use std::hash::BuildHasher;
    static STATE: std::sync::OnceLock<foldhash::fast::RandomState> = std::sync::OnceLock::new();
    STATE.get_or_init(Default::default).hash_one(id)
}

/// The hasher for keys that are [`id_hash`]es: the key is already a well-mixed hash.
#[derive(Default)]
struct PassThrough(u64);

impl std::hash::Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used; anything else is folded in, so it still hashes.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

impl TaskResult {
    fn new(
        doc: &Arc<String>,
        span: Range<usize>,
        id: Str,
        status: Str,
        fields: Option<Box<Map<String, Value>>>,
    ) -> Self {
        let mut t = TaskResult { doc: Arc::clone(doc), span, id, status, fields, id_hash: 0 };
        t.id_hash = id_hash(t.id());
        t
    }

    /// The entry as written: one JSON object, as parsing it checked.
    pub fn raw(&self) -> &str {
        &self.doc[self.span.clone()]
    }

    /// The task id.
    pub fn id(&self) -> &str {
        self.text(&self.id)
    }

    /// `completed`, `failed`, or any status the agent chose.
    pub fn status(&self) -> &str {
        self.text(&self.status)
    }

    /// One of the fields the report reads (`error`, `claimed_at`, `completed_at`,
    /// `attempt`...: [`READ_FIELDS`]), if the entry has it.
    pub fn field(&self, key: &str) -> Option<&Value> {
        self.fields.as_ref()?.get(key)
    }

    fn text<'a>(&'a self, s: &'a Str) -> &'a str {
        match s {
            Str::In(r) => &self.doc[r.clone()],
            Str::Decoded(s) => s,
        }
    }

    /// Writes the id as a JSON string: as it is in the document when it was written
    /// without escapes (then it has nothing to escape either).
    fn write_id<W: Write>(&self, w: &mut W) -> std::io::Result<()> {
        match &self.id {
            Str::In(r) => w.write_all(&self.doc.as_bytes()[r.start - 1..r.end + 1]),
            Str::Decoded(s) => write_json_str(w, s),
        }
    }
}

impl PartialEq for TaskResult {
    fn eq(&self, other: &Self) -> bool {
        self.raw() == other.raw()
    }
}

impl Serialize for TaskResult {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        // Checked again only on this path (the views are written by `ResultsView::write_to`).
        let raw: &RawValue = serde_json::from_str(self.raw()).map_err(serde::ser::Error::custom)?;
        raw.serialize(s)
    }
}

/// One agent's `results/<agent>.json`: the seed's `{tasks: [...], execution_time}`.
/// It serializes as the file was written.
#[derive(Debug, Clone)]
pub struct AgentResults {
    /// The tasks the agent reports on.
    pub tasks: Vec<TaskResult>,
    /// Seconds the agent spent working (optional; missing counts as 0).
    pub execution_time: Option<f64>,
    /// The document as written, and where it is without surrounding whitespace.
    doc: Arc<String>,
    body: Range<usize>,
    /// Tasks with status `completed`, and with `failed` (counted on the reader threads).
    completed: u64,
    failed: u64,
}

impl AgentResults {
    fn new(tasks: Vec<TaskResult>, execution_time: Option<f64>, doc: Arc<String>, body: Range<usize>) -> Self {
        let completed = tasks.iter().filter(|t| t.status() == "completed").count() as u64;
        let failed = tasks.iter().filter(|t| t.status() == "failed").count() as u64;
        AgentResults { tasks, execution_time, doc, body, completed, failed }
    }

    /// The document as written, without surrounding whitespace: one JSON value, as
    /// parsing it checked.
    pub fn raw(&self) -> &str {
        &self.doc[self.body.clone()]
    }
}

impl PartialEq for AgentResults {
    fn eq(&self, other: &Self) -> bool {
        self.raw() == other.raw()
    }
}

impl Serialize for AgentResults {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        // Checked again only on this path (the views are written by `ResultsView::write_to`).
        let raw: &RawValue = serde_json::from_str(self.raw()).map_err(serde::ser::Error::custom)?;
        raw.serialize(s)
    }
}

/// The outer shape of a result file; unknown fields are skipped without being built.
/// Only a JSON object is one (a derived struct would also take `[[...], 1.5]`).
struct FileParts<'a> {
    tasks: Vec<&'a RawValue>,
    execution_time: Option<f64>,
}

impl<'de: 'a, 'a> Deserialize<'de> for FileParts<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for V<'a> {
            type Value = FileParts<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a result file object {\"tasks\": [...], \"execution_time\": seconds}")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> std::result::Result<FileParts<'a>, A::Error> {
                use serde::de::Error as _;
                let (mut tasks, mut execution_time) = (None, None);
                while let Some(k) = m.next_key::<std::borrow::Cow<'de, str>>()? {
                    match k.as_ref() {
                        "tasks" if tasks.is_some() => return Err(A::Error::duplicate_field("tasks")),
                        "tasks" => tasks = Some(m.next_value::<Vec<&'a RawValue>>()?),
                        "execution_time" if execution_time.is_some() => {
                            return Err(A::Error::duplicate_field("execution_time"));
                        }
                        "execution_time" => execution_time = Some(m.next_value::<Option<f64>>()?),
                        _ => {
                            m.next_value::<serde::de::IgnoredAny>()?;
                        }
                    }
                }
                let tasks = tasks.ok_or_else(|| A::Error::missing_field("tasks"))?;
                Ok(FileParts { tasks, execution_time: execution_time.flatten() })
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

/// A task's id, status and [`READ_FIELDS`]; every other field is skipped unbuilt.
struct TaskHead {
    id: String,
    status: String,
    fields: Map<String, Value>,
}

impl<'de> Deserialize<'de> for TaskHead {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = TaskHead;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a task object {\"id\": string, \"status\": string, ...}")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> std::result::Result<TaskHead, A::Error> {
                let (mut id, mut status, mut fields) = (None, None, Map::new());
                while let Some(k) = m.next_key::<std::borrow::Cow<'de, str>>()? {
                    match k.as_ref() {
                        "id" => id = Some(m.next_value::<String>()?),
                        "status" => status = Some(m.next_value::<String>()?),
                        key if READ_FIELDS.contains(&key) => {
                            let v: Value = m.next_value()?;
                            fields.insert(key.to_string(), v);
                        }
                        _ => {
                            m.next_value::<serde::de::IgnoredAny>()?;
                        }
                    }
                }
                let id = id.ok_or_else(|| serde::de::Error::missing_field("id"))?;
                let status = status.ok_or_else(|| serde::de::Error::missing_field("status"))?;
                Ok(TaskHead { id, status, fields })
            }
        }
        d.deserialize_map(V)
    }
}

/// The whole file checked against the seed's shape in one pass, only to find the exact
/// position of a shape error that the fast path saw inside one task.
#[derive(Deserialize)]
#[allow(dead_code)]
struct StrictFile {
    tasks: Vec<TaskHead>,
    #[serde(default)]
    execution_time: Option<f64>,
}

/// Parses a result file's bytes (`path` names it in errors).
pub fn parse_result_file(path: &Path, bytes: &[u8]) -> Result<AgentResults> {
    let text = std::str::from_utf8(bytes).map_err(|e| not_utf8(e.valid_up_to()))?;
    let doc = Arc::new(text.to_string());
    let all = 0..doc.len();
    parse_result_in(path, &doc, all)
}

fn not_utf8(at: usize) -> Error {
    Error::Failed(format!("not UTF-8 at byte {at} (JSON text is UTF-8)"))
}

/// Parses the result file at `range` of `doc`; the entries borrow from `doc`. The usual
/// shape is read in one pass; anything else, errors included, by serde_json.
fn parse_result_in(path: &Path, doc: &Arc<String>, range: Range<usize>) -> Result<AgentResults> {
    match scan_result_in(doc, range.clone()) {
        Some(r) => Ok(r),
        None => parse_result_slowly(path, doc, range),
    }
}

/// The document at `range` of `doc` without the whitespace around it.
fn body_of(doc: &str, range: Range<usize>) -> Range<usize> {
    let text = &doc[range.clone()];
    let is_space = |c: char| matches!(c, ' ' | '\t' | '\n' | '\r');
    let start = range.start + (text.len() - text.trim_start_matches(is_space).len());
    start..(range.start + text.trim_end_matches(is_space).len()).max(start)
}

/// [`parse_result_in`]'s one-pass reader (see [`scan`]); `None` leaves the file to
/// serde_json.
fn scan_result_in(doc: &Arc<String>, range: Range<usize>) -> Option<AgentResults> {
    let found = scan::scan(&doc[range.clone()])?;
    let at = |r: Range<usize>| r.start + range.start..r.end + range.start;
    let moved = |s: Str| match s {
        Str::In(r) => Str::In(at(r)),
        decoded => decoded,
    };
    let tasks =
        found.tasks.into_iter().map(|t| TaskResult::new(doc, at(t.span), moved(t.id), moved(t.status), t.fields));
    Some(AgentResults::new(tasks.collect(), found.execution_time, Arc::clone(doc), body_of(doc, range)))
}

/// [`parse_result_in`] by serde_json: the exact error and its position, or the same
/// result as the fast path for a document of an unusual shape.
fn parse_result_slowly(path: &Path, doc: &Arc<String>, range: Range<usize>) -> Result<AgentResults> {
    let body = body_of(doc, range.clone());
    let text = &doc[range];
    // One pass checks the whole document (unknown fields are checked as they are skipped,
    // and nothing may follow it) and finds each task entry in it.
    let parts: FileParts<'_> = serde_json::from_str(text).map_err(|e| Error::malformed(path, &e))?;
    let base = doc.as_ptr() as usize;
    let mut tasks = Vec::with_capacity(parts.tasks.len());
    for task in parts.tasks {
        let entry = task.get();
        // The entry borrows from `doc`: its place is its offset there.
        let at = entry.as_ptr() as usize - base;
        let head: TaskHead = match serde_json::from_str(entry) {
            Ok(h) => h,
            Err(e) => {
                // Re-read strictly for the position in the file, not in the entry.
                return Err(match fsio::parse_json::<StrictFile>(path, text.as_bytes()) {
                    Err(strict) => strict,
                    Ok(_) => Error::malformed(path, &e),
                });
            }
        };
        let fields = (!head.fields.is_empty()).then(|| Box::new(head.fields));
        let (id, status) = (Str::Decoded(head.id.into_boxed_str()), Str::Decoded(head.status.into_boxed_str()));
        tasks.push(TaskResult::new(doc, at..at + entry.len(), id, status, fields));
    }
    Ok(AgentResults::new(tasks, parts.execution_time, Arc::clone(doc), body))
}

/// Whether the fast path of result-file parsing, where it reads `bytes`, finds what
/// serde_json finds (the slow path): `Ok(true)` if it read them and agrees, `Ok(false)`
/// if it left them to serde_json, `Err` saying how they differ. For the property tests
/// and the fuzz target: the fast path may decline anything, never disagree.
#[doc(hidden)]
pub fn fast_path_agrees(bytes: &[u8]) -> std::result::Result<bool, String> {
    let Ok(text) = std::str::from_utf8(bytes) else { return Ok(false) };
    let doc = Arc::new(text.to_string());
    let all = 0..doc.len();
    let Some(fast) = scan_result_in(&doc, all.clone()) else { return Ok(false) };
    let slow = parse_result_slowly(Path::new("f.json"), &doc, all)
        .map_err(|e| format!("the fast path read a document serde_json refuses: {e}"))?;
    let view = |t: &TaskResult| (t.raw().to_string(), t.id().to_string(), t.status().to_string(), t.fields.clone());
    let (f, s): (Vec<_>, Vec<_>) = (fast.tasks.iter().map(view).collect(), slow.tasks.iter().map(view).collect());
    if f != s {
        return Err(format!("tasks differ: fast {f:?}, serde_json {s:?}"));
    }
    // Compared by bits: NaN cannot occur, and -0.0 must stay -0.0.
    if fast.execution_time.map(f64::to_bits) != slow.execution_time.map(f64::to_bits) {
        return Err(format!(
            "execution_time differs: fast {:?}, serde_json {:?}",
            fast.execution_time, slow.execution_time
        ));
    }
    Ok(true)
}

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
    /// [`Collected::summary`], computed by [`collect`].
    summary: Summary,
    /// [`Collected::agent_rows`], computed by [`collect`].
    agent_rows: Vec<AgentRow>,
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

/// `state/results.json`: the seed's `{by_agent, by_task, summary}`, borrowed from [`Collected`].
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
pub struct ByAgent<'a>(&'a [(String, AgentResults)]);

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

/// Writes `s` as a JSON string, as serde_json writes it: a string with nothing to
/// escape (no `"`, `\\` or control character, the usual case) is copied as it is.
fn write_json_str<W: Write>(w: &mut W, s: &str) -> std::io::Result<()> {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        w.write_all(b"\"")?;
        w.write_all(s.as_bytes())?;
        w.write_all(b"\"")
    } else {
        serde_json::to_writer(w, s).map_err(std::io::Error::other)
    }
}

/// Serializes `by_task` as a JSON object without copying the tasks: the entries of
/// `by_agent` that [`Collected::task_index`] picks.
#[derive(Debug, Clone)]
pub struct ByTask<'a> {
    by_agent: &'a [(String, AgentResults)],
    index: &'a [(u32, u32)],
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
    fn final_report_of<'a>(
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
fn agent_rows(agents: &[Agent], by_agent: &[(String, AgentResults)]) -> Vec<AgentRow> {
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
fn summarize(by_agent: &[(String, AgentResults)], errors: &[ReportError]) -> Summary {
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
    Ok(Collected { session, by_agent, agents, errors, warnings, spans, tasks, task_index, summary, agent_rows })
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

/// Reads `results/<agent>.jsonl`, the task store's append-only log: one seed-shaped
/// document per line, merged into one. A last line without its newline is an append
/// in progress and is left for the next read; a line that does not parse is an error
/// naming its line.
pub fn read_result_log(path: &Path) -> Result<AgentResults> {
    parse_result_log(path, &read_regular_file(None, path)?)
}

fn parse_result_log(path: &Path, bytes: &[u8]) -> Result<AgentResults> {
    let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let mut parts = Vec::new();
    for (n, line) in bytes[..complete].split(|&b| b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let r = parse_result_file(path, line).map_err(|e| match e {
            Error::Malformed { path, column, message, .. } => Error::Malformed { path, line: n + 1, column, message },
            Error::Failed(message) => Error::Failed(format!("line {}: {message}", n + 1)),
            other => other,
        })?;
        if let Some(t) = r.execution_time
            && !(t.is_finite() && t >= 0.0)
        {
            return Err(Error::Failed(format!("line {}: execution_time is {t}; it must be >= 0", n + 1)));
        }
        parts.push(r);
    }
    AgentResults::merge(parts)
}

impl AgentResults {
    /// An empty document (`{}`), a placeholder while one is being merged.
    fn empty() -> AgentResults {
        let doc = Arc::new("{}".to_string());
        let body = 0..doc.len();
        AgentResults::new(Vec::new(), None, doc, body)
    }

    /// One agent's documents as one: the tasks in order, `execution_time` summed, the
    /// first document's other fields kept.
    fn merge(mut parts: Vec<AgentResults>) -> Result<AgentResults> {
        if parts.len() == 1 {
            return Ok(parts.remove(0));
        }
        let mut doc: Map<String, Value> = match parts.first() {
            Some(first) => serde_json::from_str(first.raw()).unwrap_or_default(),
            None => Map::new(),
        };
        let mut tasks = Vec::new();
        let mut time: Option<f64> = None;
        for p in parts {
            if let Some(t) = p.execution_time {
                time = Some(time.unwrap_or(0.0) + t);
            }
            tasks.extend(p.tasks);
        }
        doc.insert("tasks".into(), serde_json::to_value(&tasks).map_err(|e| Error::Failed(e.to_string()))?);
        doc.insert("execution_time".into(), serde_json::json!(time.unwrap_or(0.0)));
        let raw = serde_json::to_string(&doc).map_err(|e| Error::Failed(e.to_string()))?;
        let body = 0..raw.len();
        Ok(AgentResults::new(tasks, time.or(Some(0.0)), Arc::new(raw), body))
    }
}

/// Reads and checks one result file. Symlinks are not followed: a result file is a
/// regular file its agent wrote.
pub fn read_result_file(path: &Path) -> Result<AgentResults> {
    parse_result_file(path, &read_regular_file(None, path)?).and_then(check_execution_time)
}

/// A result file's `execution_time` must be a number of seconds, if it is there.
fn check_execution_time(r: AgentResults) -> Result<AgentResults> {
    if let Some(t) = r.execution_time
        && !(t.is_finite() && t >= 0.0)
    {
        return Err(Error::Failed(format!("execution_time is {t}; it must be a number of seconds >= 0")));
    }
    Ok(r)
}

/// Reads a result file that must be a regular file, never through a symlink: opened
/// with `O_NOFOLLOW` (and `O_NONBLOCK`, so a FIFO planted there cannot block the
/// report), checked with `fstat`, and read in one call of its size (four system calls).
/// With `within` (the directory `path` is in), it is opened relative to it, without
/// walking the path again. A file that grows meanwhile is read as it was (a results
/// log's last line may then be cut, and is left for the next read, as a line still
/// being appended is).
fn read_regular_file(within: Option<&std::fs::File>, path: &Path) -> Result<Vec<u8>> {
    use std::io::Read;
    let mut file = open_no_follow(within, path)?;
    let meta = file.metadata().ctx("inspect", path)?;
    if !meta.is_file() {
        return Err(not_regular());
    }
    let size = usize::try_from(meta.len()).unwrap_or(usize::MAX);
    let mut bytes = Vec::new();
    bytes.try_reserve_exact(size).map_err(|_| Error::Failed(format!("too large to read ({size} bytes)")))?;
    // `take` stops at the size fstat gave: one read(2) for the whole file.
    (&mut file).take(size as u64).read_to_end(&mut bytes).ctx("read", path)?;
    Ok(bytes)
}

/// Like [`read_regular_file`], for a file the directory listing said is a regular file:
/// no `fstat` (three system calls). It is still opened with `O_NOFOLLOW` and
/// `O_NONBLOCK`, so a file swapped for a link or a FIFO since the listing is refused or
/// reads as empty (and then fails to parse), never followed or waited on. Read through
/// a 64 KiB buffer kept by the thread (a shorter read is the end of the file), and
/// handed whole to `then`.
fn read_listed_with<R>(
    within: Option<&std::fs::File>,
    path: &Path,
    then: impl FnOnce(&[u8]) -> Result<R>,
) -> Result<R> {
    use std::io::Read;
    thread_local! {
        static ROOM: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; 64 << 10]);
    }
    let mut file = open_no_follow(within, path)?;
    ROOM.with_borrow_mut(|room| {
        let n = loop {
            match file.read(room) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                other => break other.ctx("read", path)?,
            }
        };
        if n < room.len() {
            return then(&room[..n]);
        }
        let mut bytes = room.clone();
        file.read_to_end(&mut bytes).ctx("read", path)?;
        then(&bytes)
    })
}

/// [`read_listed_with`] for a file that must be UTF-8 (as JSON text is), appended to
/// `text`; the range it takes there is returned. A file that is not UTF-8 is an error
/// giving the offset of its first bad byte, and nothing is appended: each file is
/// checked on its own, so a character cut between two files never passes.
fn read_listed_text(within: Option<&std::fs::File>, path: &Path, text: &mut String) -> Result<Range<usize>> {
    read_listed_with(within, path, |bytes| {
        let s = std::str::from_utf8(bytes).map_err(|e| not_utf8(e.valid_up_to()))?;
        let start = text.len();
        text.push_str(s);
        Ok(start..text.len())
    })
}

fn not_regular() -> Error {
    Error::Failed("not a regular file (result files are never followed through links)".into())
}

/// Opens `path` (relative to `within`, its directory, when given) for reading with
/// `O_NOFOLLOW | O_NONBLOCK`; a symlink is [`not_regular`].
fn open_no_follow(within: Option<&std::fs::File>, path: &Path) -> Result<std::fs::File> {
    use std::os::fd::{AsRawFd, FromRawFd};
    use std::os::unix::ffi::OsStrExt;
    let (dirfd, name) = match (within, path.file_name()) {
        (Some(d), Some(name)) => (d.as_raw_fd(), Path::new(name)),
        _ => (libc::AT_FDCWD, path),
    };
    let cname = std::ffi::CString::new(name.as_os_str().as_bytes())
        .map_err(|_| Error::Failed("the path contains a NUL byte".into()))?;
    // SAFETY: `cname` is a valid NUL-terminated string; `dirfd` is open or AT_FDCWD.
    let fd = unsafe {
        libc::openat(dirfd, cname.as_ptr(), libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
    };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        return Err(if e.raw_os_error() == Some(libc::ELOOP) { not_regular() } else { Error::io("open", path, e) });
    }
    // SAFETY: `fd` was just opened and is owned by nothing else.
    Ok(unsafe { std::fs::File::from_raw_fd(fd) })
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
fn index_tasks(by_agent: &[(String, AgentResults)]) -> Result<TaskIndex> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn collected(files: &[(&str, &str)]) -> (tempfile::TempDir, Collected) {
        let tmp = tempfile::tempdir().expect("tempdir");
        let base = crate::layout::Base::new(tmp.path().join("base"));
        let dir = crate::session::init(&base, "t").expect("init");
        for (name, text) in files {
            std::fs::write(dir.results_dir().join(name), text).expect("plant");
        }
        let c = collect(&dir).expect("collect");
        (tmp, c)
    }

    /// Files are read into one buffer per batch, but each must be UTF-8 on its own: a
    /// character cut between two files is two bad files, never one good string (and
    /// never a slice cut inside a character). A results log whose unfinished last line
    /// ends inside a character is still read up to that line.
    #[test]
    fn each_file_is_checked_as_utf8_on_its_own() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let base = crate::layout::Base::new(tmp.path().join("base"));
        let dir = crate::session::init(&base, "t").expect("init");
        let files: &[(&str, &[u8])] = &[
            ("a.json", b"{\"tasks\": []}\xc3"),
            ("b.json", b"\xa9{\"tasks\": []}"),
            ("c.json", br#"{"tasks": [{"id": "c1", "status": "completed"}]}"#),
            ("d.jsonl", b"{\"tasks\": [{\"id\": \"d1\", \"status\": \"completed\"}]}\n{\"tasks\": [{\"id\": \"caf\xc3"),
            ("e.json", b"{\"tasks\": [{\"id\": \"\xf0\x9f"),
            ("f.json", b"\x98\x80\", \"status\": \"s\"}]}"),
        ];
        for (name, bytes) in files {
            std::fs::write(dir.results_dir().join(name), bytes).expect("plant");
        }
        let c = collect(&dir).expect("collect");
        let agents: Vec<_> = c.by_agent.iter().map(|(a, r)| (a.as_str(), r.tasks.len())).collect();
        assert_eq!(agents, [("c", 1), ("d", 1)]);
        let bad: Vec<_> = c.errors.iter().map(|e| (e.file.as_str(), e.message.as_str())).collect();
        assert_eq!(
            bad,
            [
                ("results/a.json", "not UTF-8 at byte 13 (JSON text is UTF-8)"),
                ("results/b.json", "not UTF-8 at byte 0 (JSON text is UTF-8)"),
                ("results/e.json", "not UTF-8 at byte 19 (JSON text is UTF-8)"),
                ("results/f.json", "not UTF-8 at byte 0 (JSON text is UTF-8)"),
            ]
        );
    }

    /// Two different ids with the same hash are still two entries of by_task, and a
    /// repeated id is still one, whichever of the two it is.
    #[test]
    fn ids_whose_hashes_collide_are_told_apart() {
        let (_t, mut c) = collected(&[
            ("a.json", r#"{"tasks": [{"id": "x", "status": "s", "n": 1}, {"id": "y", "status": "s", "n": 2}]}"#),
            ("b.json", r#"{"tasks": [{"id": "y", "status": "s", "n": 3}, {"id": "x", "status": "s", "n": 4}]}"#),
        ]);
        for (_, r) in &mut c.by_agent {
            for t in &mut r.tasks {
                t.id_hash = 7;
            }
        }
        let (index, warnings) = index_tasks(&c.by_agent).expect("index");
        let v = serde_json::to_value(ByTask { by_agent: &c.by_agent, index: &index }).expect("ser");
        assert_eq!(
            v,
            serde_json::json!({"x": {"id": "x", "status": "s", "n": 4}, "y": {"id": "y", "status": "s", "n": 3}})
        );
        let keys: Vec<_> = v.as_object().expect("object").keys().cloned().collect();
        assert_eq!(keys, ["x", "y"], "in order of first appearance");
        assert_eq!(warnings.len(), 2, "{warnings:?}");
    }

    #[test]
    fn zero_tasks_and_zero_time_give_null_rates() {
        let (_t, c) = collected(&[]);
        assert_eq!(c.performance(), Performance { throughput: None, success_rate: None, average_time: None });
        let (_t, c) = collected(&[("a.json", r#"{"tasks": [], "execution_time": 0}"#)]);
        let p = serde_json::to_value(c.performance()).expect("ser");
        assert_eq!(p, serde_json::json!({"throughput": null, "success_rate": null, "average_time": null}));
        let (_t, c) =
            collected(&[("a.json", r#"{"tasks": [{"id": "t", "status": "completed"}], "execution_time": 0}"#)]);
        assert_eq!(c.performance(), Performance { throughput: None, success_rate: Some(1.0), average_time: Some(0.0) });
        let (_t, c) = collected(&[("a.json", r#"{"tasks": [], "execution_time": 5}"#)]);
        assert_eq!(c.performance().throughput, Some(0.0));
    }

    #[test]
    fn rates_are_finite_or_null_for_any_totals() {
        let values = [0.0, 1e-300, 0.5, 1.0, 3.0, 1e300, f64::MAX];
        for &time in &values {
            for total in [0u64, 1, 7, u64::MAX] {
                for completed in [0u64, 1, total] {
                    let s = Summary {
                        total_tasks: total,
                        completed_tasks: completed.min(total),
                        failed_tasks: 0,
                        total_time: time,
                        agents_used: 1,
                        by_status: BTreeMap::new(),
                        unreadable_files: 0,
                    };
                    let p = performance(&s);
                    for r in [p.throughput, p.success_rate, p.average_time].into_iter().flatten() {
                        assert!(r.is_finite(), "{r} from {total} tasks in {time} s");
                    }
                    let text = serde_json::to_string(&p).expect("ser");
                    assert!(!text.contains("NaN") && !text.contains("inf"), "{text}");
                    if total == 0 {
                        assert!(p.success_rate.is_none() && p.average_time.is_none());
                    }
                    if time == 0.0 {
                        assert!(p.throughput.is_none());
                    }
                }
            }
        }
    }

    #[test]
    fn the_hand_written_serializations_match_serde() {
        let (_t, c) = collected(&[
            (
                "a.json",
                r#"{"tasks": [{"id": "t1", "status": "completed", "claimed_at": "2026-01-01T00:00:00Z", "completed_at": "2026-01-01T00:00:02Z"}, {"id": "t\"2", "status": "failed", "error": "boom"}], "execution_time": 3}"#,
            ),
            ("b.json", r#"{"tasks": [{"id": "t1", "status": "skipped"}], "note": {"x": [1, 2.5, null]}}"#),
            ("broken.json", "{"),
        ]);
        let report = c.final_report("2026-01-01T00:00:03Z".into());
        let mut view = Vec::new();
        report.results.write_to(&mut view).expect("write");
        assert_eq!(String::from_utf8(view).expect("utf8"), serde_json::to_string(&report.results).expect("ser"));
        let mut whole = Vec::new();
        report.write_to(&mut whole).expect("write");
        assert_eq!(String::from_utf8(whole).expect("utf8"), serde_json::to_string(&report).expect("ser"));
    }

    #[test]
    fn summary_follows_the_seed() {
        let (_t, c) = collected(&[
            (
                "a.json",
                r#"{"tasks": [{"id": "t1", "status": "completed"}, {"id": "t2", "status": "failed", "error": "boom"}], "execution_time": 3}"#,
            ),
            (
                "b.json",
                r#"{"tasks": [{"id": "t3", "status": "completed"}, {"id": "t1", "status": "skipped"}], "execution_time": 1, "note": "x"}"#,
            ),
        ]);
        let s = c.summary();
        assert_eq!((s.total_tasks, s.completed_tasks, s.failed_tasks, s.agents_used), (4, 2, 1, 2));
        assert_eq!(s.total_time, 4.0);
        assert_eq!(s.by_status.get("skipped"), Some(&1));
        let p = c.performance();
        assert_eq!((p.throughput, p.success_rate, p.average_time), (Some(1.0), Some(0.5), Some(1.0)));
        let v = serde_json::to_value(c.results()).expect("ser");
        assert_eq!(v["by_task"]["t1"]["status"], "skipped", "the later agent wins, as in the seed");
        assert_eq!(v["by_task"]["t2"]["error"], "boom");
        assert_eq!(v["by_agent"]["b"]["note"], "x");
        assert_eq!(c.warnings.len(), 1);
    }

    #[test]
    fn a_result_file_is_an_object() {
        // A derived struct reads a JSON array as its fields in order; a result file is not one.
        for text in [r#"[[], 1.5]"#, r#"[[]]"#, r#"[[{"id": "a", "status": "s"}]]"#] {
            let e = parse_result_file(Path::new("a.json"), text.as_bytes()).expect_err(text);
            assert!(e.to_string().contains("a result file object"), "{text}: {e}");
        }
        let r = parse_result_file(Path::new("a.json"), br#"{"x": [1], "tasks": [], "execution_time": null}"#);
        assert_eq!(r.expect("an object with tasks").tasks.len(), 0);
    }

    #[test]
    fn bad_files_are_listed_with_positions_and_the_rest_is_kept() {
        let (_t, c) = collected(&[
            ("good.json", r#"{"tasks": [{"id": "t1", "status": "completed"}], "execution_time": 1}"#),
            ("broken.json", "{\n  \"tasks\": [\n    {\"id\": \"t2\",,}\n"),
            ("shape.json", "{\"tasks\": [{\"id\": \"t3\"}]}"),
            ("neg.json", r#"{"tasks": [], "execution_time": -1}"#),
            ("bad name.json", "{}"),
            ("notes.txt", "ignored"),
        ]);
        assert_eq!(c.by_agent.len(), 1);
        let files: Vec<_> = c.errors.iter().map(|e| e.file.as_str()).collect();
        assert_eq!(files, ["results/bad name.json", "results/broken.json", "results/neg.json", "results/shape.json"]);
        let broken = &c.errors[1];
        assert_eq!((broken.line, broken.column), (Some(3), Some(17)));
        assert!(c.errors[3].message.contains("status"), "{:?}", c.errors[3]);
        assert!(!c.complete());
        assert_eq!(c.summary().unreadable_files, 4);
    }

    #[test]
    fn a_results_log_is_merged_with_the_agents_own_file() {
        let log = concat!(
            r#"{"agent": "a", "tasks": [{"id": "t2", "status": "completed"}], "execution_time": 1.5}"#,
            "\n",
            r#"{"agent": "a", "tasks": [{"id": "t3", "status": "failed", "reason": "x"}], "execution_time": 0.5}"#,
            "\n",
            r#"{"agent": "a", "tasks": [{"id": "t4", "sta"#,
        );
        let (_t, c) = collected(&[
            ("a.json", r#"{"tasks": [{"id": "t1", "status": "completed"}], "execution_time": 3, "note": "n"}"#),
            ("a.jsonl", log),
            ("b.jsonl", "{\"tasks\": [{\"id\": \"t5\", \"status\": \"completed\"}]}\nnot json\n"),
            // Agent "a.json" sorts between a.json and a.jsonl; "a" is still one entry.
            ("a.json.json", r#"{"tasks": [{"id": "t9", "status": "completed"}]}"#),
        ]);
        assert_eq!(c.by_agent.len(), 2, "one entry per agent; b's log has a bad line");
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        let (agent, r) = &c.by_agent[0];
        assert_eq!(agent, "a");
        let ids: Vec<_> = r.tasks.iter().map(|t| t.id()).collect();
        assert_eq!(ids, ["t1", "t2", "t3"], "the unfinished last line is not read");
        assert_eq!(r.execution_time, Some(5.0));
        let raw = serde_json::to_value(r).expect("ser");
        assert_eq!((raw["note"].as_str(), raw["tasks"].as_array().map(Vec::len)), (Some("n"), Some(3)));
        assert_eq!(c.errors.len(), 1);
        assert_eq!((c.errors[0].file.as_str(), c.errors[0].line), ("results/b.jsonl", Some(2)));
    }
}
