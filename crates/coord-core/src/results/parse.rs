//! Parsing one result document: the outer shape (`{tasks: [...], execution_time}`,
//! unknown fields skipped unbuilt), each task's `id`, `status` and the fields the report
//! reads. The usual shape is read in one pass by [`super::scan`]; anything else, errors
//! included, by serde_json, which gives the exact position of an error. Touches no
//! file: the bytes come from `read` (or from the caller).

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::scan::{self, Str};
use super::{AgentResults, READ_FIELDS, TaskResult};
use crate::error::{Error, Result};
use crate::fsio;

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

pub(super) fn not_utf8(at: usize) -> Error {
    Error::Failed(format!("not UTF-8 at byte {at} (JSON text is UTF-8)"))
}

/// Parses the result file at `range` of `doc`; the entries borrow from `doc`. The usual
/// shape is read in one pass; anything else, errors included, by serde_json.
pub(crate) fn parse_result_in(path: &Path, doc: &Arc<String>, range: Range<usize>) -> Result<AgentResults> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
