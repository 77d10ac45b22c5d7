//! The fast path for reading a result file: one pass over the bytes that checks the
//! whole document as JSON and finds, for each task entry, where it is and where its `id`
//! and `status` strings are, without building anything but the entries' list.
//!
//! It reads the seed's shape only, written in the usual way: a top-level object with
//! one `tasks` array of objects and at most one numeric or null `execution_time`, keys
//! without escapes. For anything else — any error, and any document it is not sure
//! about — it answers `None`, and serde_json reads the document instead, with its exact
//! error positions (see [`super::parse_result_file`]). So it never accepts what serde_json
//! refuses, and where it accepts it must find what serde_json finds: the property tests
//! and the `result_file` fuzz target check that ([`super::fast_path_agrees`]).

use std::ops::Range;

use serde_json::{Map, Value};

use super::READ_FIELDS;

/// Deeper nesting than this is left to serde_json.
const MAX_DEPTH: usize = 128;

/// A result file, as found by [`scan`]: byte ranges into the document.
#[derive(Debug)]
pub(super) struct Scanned {
    pub tasks: Vec<ScannedTask>,
    pub execution_time: Option<f64>,
}

/// One task entry.
#[derive(Debug)]
pub(super) struct ScannedTask {
    /// The entry, `{` to `}`.
    pub span: Range<usize>,
    /// `id` and `status`: their text between the quotes when written without escapes,
    /// else the string they stand for.
    pub id: Str,
    pub status: Str,
    /// The [`READ_FIELDS`] the entry has.
    pub fields: Option<Box<Map<String, Value>>>,
}

/// A JSON string's value: a range of the document (no escapes) or decoded.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Str {
    In(Range<usize>),
    Decoded(Box<str>),
}

/// Reads `doc` if it has the seed's plain shape; `None` means "ask serde_json".
pub(super) fn scan(doc: &str) -> Option<Scanned> {
    let mut s = Scanner { b: doc.as_bytes(), i: 0 };
    s.ws();
    let (mut tasks, mut execution_time) = (None, None);
    s.list(b'{', b'}', |s| {
        match s.key()? {
            b"tasks" if tasks.is_none() => tasks = Some(s.tasks(doc)?),
            b"execution_time" if execution_time.is_none() => {
                let at = s.i;
                execution_time = Some(if s.peek()? == b'n' {
                    s.literal(b"null")?;
                    None
                } else {
                    s.number()?;
                    // serde_json's own conversion, so that every digit rounds the same.
                    Some(serde_json::from_str::<f64>(&doc[at..s.i]).ok()?)
                });
            }
            // A repeated `tasks` or `execution_time` is an error serde_json reports.
            b"tasks" | b"execution_time" => return None,
            _ => s.value(1)?,
        }
        Some(())
    })?;
    s.ws();
    if s.i != s.b.len() {
        return None;
    }
    Some(Scanned { tasks: tasks?, execution_time: execution_time.flatten() })
}

struct Scanner<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Scanner<'a> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.i += 1;
        Some(c)
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        (self.next()? == c).then_some(())
    }

    /// JSON's whitespace: space, tab, line feed, carriage return.
    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.i += 1;
        }
    }

    /// An object key, its colon and the whitespace after it; a key with escapes is left
    /// to serde_json.
    fn key(&mut self) -> Option<&'a [u8]> {
        self.eat(b'"')?;
        let start = self.i;
        if self.string()? {
            return None;
        }
        let b = self.b;
        let key = &b[start..self.i - 1];
        self.ws();
        self.eat(b':')?;
        self.ws();
        Some(key)
    }

    /// An array or object: `open`, then items separated by commas, then `close`, with
    /// whitespace allowed around each item; `item` reads one (an object's item is a
    /// member: key, colon and value).
    fn list(&mut self, open: u8, close: u8, mut item: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        self.eat(open)?;
        self.ws();
        if self.peek()? == close {
            self.i += 1;
            return Some(());
        }
        loop {
            self.ws();
            item(self)?;
            self.ws();
            match self.next()? {
                b',' => {}
                c if c == close => return Some(()),
                _ => return None,
            }
        }
    }

    /// The rest of a string whose opening quote was read, through its closing quote.
    /// Returns whether it had escapes (each checked as serde_json checks them).
    fn string(&mut self) -> Option<bool> {
        let mut escaped = false;
        loop {
            self.skip_plain();
            match self.next()? {
                b'"' => return Some(escaped),
                b'\\' => {
                    escaped = true;
                    match self.next()? {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {}
                        b'u' => {
                            let hex = self.b.get(self.i..self.i + 4)?;
                            if !hex.iter().all(u8::is_ascii_hexdigit) {
                                return None;
                            }
                            self.i += 4;
                        }
                        _ => return None,
                    }
                }
                // A control character must be escaped.
                _ => return None,
            }
        }
    }

    /// Skips string bytes that need no attention (not `"`, `\` or a control character),
    /// eight at a time.
    fn skip_plain(&mut self) {
        const ONES: u64 = 0x0101_0101_0101_0101;
        const HIGH: u64 = 0x8080_8080_8080_8080;
        let zero_in = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
        while let Some(chunk) = self.b.get(self.i..self.i + 8) {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            let v = u64::from_le_bytes(word);
            let hits = zero_in(v ^ (ONES * u64::from(b'"')))
                | zero_in(v ^ (ONES * u64::from(b'\\')))
                | (v.wrapping_sub(ONES * 0x20) & !v & HIGH);
            if hits != 0 {
                // The lowest flagged byte is exact; the caller looks at it.
                self.i += (hits.trailing_zeros() / 8) as usize;
                return;
            }
            self.i += 8;
        }
        while let Some(c) = self.peek() {
            if c == b'"' || c == b'\\' || c < 0x20 {
                return;
            }
            self.i += 1;
        }
    }

    /// A number, by JSON's grammar (as serde_json checks it).
    fn number(&mut self) -> Option<()> {
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.next()? {
            b'0' => {}
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            self.digit()?;
            self.digits();
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.i += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.i += 1;
            }
            self.digit()?;
            self.digits();
        }
        // A digit right after the number (as in `01`) is an error.
        if self.peek().is_some_and(|c| c.is_ascii_digit()) {
            return None;
        }
        Some(())
    }

    fn digit(&mut self) -> Option<()> {
        self.next()?.is_ascii_digit().then_some(())
    }

    fn digits(&mut self) {
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.i += 1;
        }
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        let end = self.i + word.len();
        (self.b.get(self.i..end)? == word).then(|| self.i = end)
    }

    /// Any JSON value, checked and skipped; `depth` is that of the enclosing value.
    fn value(&mut self, depth: usize) -> Option<()> {
        match self.peek()? {
            b'"' => {
                self.i += 1;
                self.string().map(drop)
            }
            // Keys of skipped objects may have escapes: they are only checked.
            b'{' if depth < MAX_DEPTH => self.list(b'{', b'}', |s| {
                s.eat(b'"')?;
                s.string()?;
                s.ws();
                s.eat(b':')?;
                s.ws();
                s.value(depth + 1)
            }),
            b'[' if depth < MAX_DEPTH => self.list(b'[', b']', |s| s.value(depth + 1)),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            b'-' | b'0'..=b'9' => self.number(),
            _ => None,
        }
    }

    /// The `tasks` array.
    fn tasks(&mut self, doc: &str) -> Option<Vec<ScannedTask>> {
        let mut tasks = Vec::new();
        self.list(b'[', b']', |s| {
            tasks.push(s.task(doc)?);
            Some(())
        })?;
        Some(tasks)
    }

    /// One task entry: an object with string `id` and `status` (the last one of each
    /// wins, as in serde_json's reading), the [`READ_FIELDS`] parsed, the rest skipped.
    fn task(&mut self, doc: &str) -> Option<ScannedTask> {
        let start = self.i;
        let (mut id, mut status, mut fields) = (None, None, None::<Box<Map<String, Value>>>);
        self.list(b'{', b'}', |s| {
            match s.key()? {
                b"id" => id = Some(s.str(doc)?),
                b"status" => status = Some(s.str(doc)?),
                key => {
                    let at = s.i;
                    s.value(3)?;
                    if let Ok(key) = std::str::from_utf8(key)
                        && READ_FIELDS.contains(&key)
                    {
                        let v: Value = serde_json::from_str(&doc[at..s.i]).ok()?;
                        fields.get_or_insert_default().insert(key.to_string(), v);
                    }
                }
            }
            Some(())
        })?;
        // Without an id or a status, serde_json says which is missing.
        Some(ScannedTask { span: start..self.i, id: id?, status: status?, fields })
    }

    /// A string value: its range, or, with escapes, the string serde_json decodes.
    fn str(&mut self, doc: &str) -> Option<Str> {
        let at = self.i;
        self.eat(b'"')?;
        if self.string()? {
            let decoded: String = serde_json::from_str(&doc[at..self.i]).ok()?;
            Some(Str::Decoded(decoded.into_boxed_str()))
        } else {
            Some(Str::In(at + 1..self.i - 1))
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::results::fast_path_agrees;

    /// Documents at the edges of JSON and of the seed's shape: each is read as serde_json
    /// reads it, or left to serde_json, as marked.
    #[test]
    fn edge_cases_are_read_as_serde_json_reads_them_or_left_to_it() {
        let deep = format!(r#"{{"tasks": [], "x": {}1{}}}"#, "[".repeat(200), "]".repeat(200));
        let cases: &[(&str, bool)] = &[
            (r#"{"tasks": []}"#, true),
            (" \t\r\n{\"tasks\":[]} \n", true),
            (r#"{"tasks": [{"id": "a", "status": "completed"}], "execution_time": 1.5}"#, true),
            (r#"{"execution_time": null, "tasks": [{"status": "x", "id": "a", "id": "b"}]}"#, true),
            (r#"{"tasks": [{"id": "a\"b\\c\u00e9\ud83d\ude00", "status": "\n"}]}"#, true),
            (r#"{"tasks": [{"id": "a", "status": "s", "error": {"k": [1, -0, 2.5e-3, 1E+2, true, null]}}]}"#, true),
            (r#"{"tasks": [{"id": "a", "status": "s", "attempt": 2, "attempt": 3}]}"#, true),
            (r#"{"tasks": [], "execution_time": -0}"#, true),
            (r#"{"tasks": [], "execution_time": 123456789012345678901234567890}"#, true),
            (r#"{"x": {"tasks": 1}, "tasks": []}"#, true),
            // Errors: serde_json reports them, with their position.
            (r#"{"tasks": [], "execution_time": 01}"#, false),
            (r#"{"tasks": [], "execution_time": 1.}"#, false),
            (r#"{"tasks": [], "execution_time": 1e}"#, false),
            (r#"{"tasks": [], "execution_time": .5}"#, false),
            (r#"{"tasks": [], "execution_time": -}"#, false),
            (r#"{"tasks": [], "execution_time": 1e400}"#, false),
            (r#"{"tasks": [], "execution_time": "1"}"#, false),
            (r#"{"tasks": [{"id": "\ud800", "status": "s"}]}"#, false),
            (r#"{"tasks": [{"id": "\u12G4", "status": "s"}]}"#, false),
            (r#"{"tasks": [{"id": "a	b", "status": "s"}]}"#, false),
            (r#"{"tasks": [{"id": "a", "status": "s"}], "tasks": []}"#, false),
            (r#"{"tasks": [], "execution_time": 1, "execution_time": 2}"#, false),
            (r#"{"tasks": [{"id": 1, "status": "s"}]}"#, false),
            (r#"{"tasks": [{"id": "a"}]}"#, false),
            (r#"{"tasks": [{}]}"#, false),
            (r#"{"tasks": ["a"]}"#, false),
            (r#"{"tasks": null}"#, false),
            (r#"{"tasks": [],}"#, false),
            (r#"{"tasks": [1,]}"#, false),
            (r#"{"tasks": []} x"#, false),
            (r#"{"tasks": [] "#, false),
            ("\u{feff}{\"tasks\": []}", false),
            (r#"{}"#, false),
            ("", false),
            (r#"{"x": tru, "tasks": []}"#, false),
            (r#"[[{"id": "a", "status": "s"}], 2]"#, false),
            // Valid, but left to serde_json: escaped keys, deep nesting.
            (r#"{"t\u0061sks": [{"id": "a", "status": "s"}]}"#, false),
            (r#"{"tasks": [{"\u0069d": "a", "status": "s"}]}"#, false),
            (&deep, false),
        ];
        for (doc, read) in cases {
            assert_eq!(fast_path_agrees(doc.as_bytes()), Ok(*read), "{doc}");
        }
    }
}
