//! The one output format: a record is one JSON object on one line; a list or a stream
//! is JSON Lines. Everything goes through here so every tool prints the same way.

use std::io::Write;

use serde::Serialize;

use crate::error::{Error, Result};

/// Prints `value` as one line of compact JSON on stdout and flushes it.
pub fn print<T: Serialize + ?Sized>(value: &T) -> Result<()> {
    let mut out = std::io::stdout().lock();
    write_line(&mut out, value)?;
    out.flush().map_err(stdout_error)
}

/// Prints each item as one line of JSON (JSON Lines) and flushes at the end.
pub fn print_lines<'a, T, I>(items: I) -> Result<()>
where
    T: Serialize + 'a,
    I: IntoIterator<Item = &'a T>,
{
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for item in items {
        write_line(&mut out, item)?;
    }
    out.flush().map_err(stdout_error)
}

/// Writes `value` as one JSON line to `out`.
pub fn write_line<W: Write, T: Serialize + ?Sized>(out: &mut W, value: &T) -> Result<()> {
    // Our records always serialize; only the writer can fail.
    let mut line = serde_json::to_vec(value).expect("records serialize to JSON");
    line.push(b'\n');
    out.write_all(&line).map_err(stdout_error)
}

fn stdout_error(e: std::io::Error) -> Error {
    Error::io("write to", "stdout", e)
}

/// Whether `err` is a closed stdout (`... | head`), which tools treat as success.
pub fn is_broken_pipe(err: &Error) -> bool {
    matches!(err, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::BrokenPipe)
}
