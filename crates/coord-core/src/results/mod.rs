//! Result documents: the seed-shaped `results/<agent>.json` an agent writes and the
//! `results/<agent>.jsonl` log task completion appends to (one document a line). This
//! module owns their data model ([`TaskResult`], [`AgentResults`]), parsing them (a
//! one-pass scanner for the usual shape, serde_json for the rest and for exact error
//! positions: `parse`) and reading them safely from disk (never through a link:
//! `read`). It reads files under `results/` and writes nothing. It sits below both the
//! task queue (which checks its own log) and the report (which aggregates every file),
//! so neither has to import the other for it.

mod parse;
mod read;
mod scan;

use std::io::Write;
use std::ops::Range;
use std::sync::Arc;

use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::error::{Error, Result};
use scan::Str;

#[doc(hidden)]
pub use parse::fast_path_agrees;
pub use parse::parse_result_file;
pub(crate) use parse::parse_result_in;
pub(crate) use read::{check_execution_time, not_regular, parse_result_log, read_listed_text, read_listed_with};
pub use read::{read_result_file, read_result_log};

/// The task fields the report itself reads (failures, timeline); every other field is
/// only carried along in the entry's raw JSON.
pub(crate) const READ_FIELDS: &[&str] = &[
    "error",
    "reason",
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
    pub(crate) fields: Option<Box<Map<String, Value>>>,
    /// [`id_hash`] of the id, computed while parsing (on the reader threads).
    pub(crate) id_hash: u64,
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
pub(crate) struct PassThrough(u64);

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
    pub(crate) fn write_id<W: Write>(&self, w: &mut W) -> std::io::Result<()> {
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
    pub(crate) completed: u64,
    pub(crate) failed: u64,
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

impl AgentResults {
    /// An empty document (`{}`), a placeholder while one is being merged.
    pub(crate) fn empty() -> AgentResults {
        let doc = Arc::new("{}".to_string());
        let body = 0..doc.len();
        AgentResults::new(Vec::new(), None, doc, body)
    }

    /// One agent's documents as one: the tasks in order, `execution_time` summed, the
    /// first document's other fields kept.
    pub(crate) fn merge(mut parts: Vec<AgentResults>) -> Result<AgentResults> {
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

/// Writes `s` as a JSON string, as serde_json writes it: a string with nothing to
/// escape (no `"`, `\\` or control character, the usual case) is copied as it is.
pub(crate) fn write_json_str<W: Write>(w: &mut W, s: &str) -> std::io::Result<()> {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        w.write_all(b"\"")?;
        w.write_all(s.as_bytes())?;
        w.write_all(b"\"")
    } else {
        serde_json::to_writer(w, s).map_err(std::io::Error::other)
    }
}
