//! The one way files are written (atomically) and read (with typed errors).
//!
//! A writer creates a hidden temporary file (`.<random>.tmp`) in the target's own
//! directory, writes it completely, then renames it over the target. A reader therefore
//! sees either the old complete file or the new complete file, never a torn one, even if
//! the writer is killed at any point. With `COORD_FSYNC=1` the file is fsynced before the
//! rename and the directory after it, so the rename also survives power loss.

use std::io::Write;
use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::env;
use crate::error::{Error, IoContext, Result};

/// Writes `bytes` to `path` atomically (temp file in the same directory, then rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = write_temp(path, bytes)?;
    tmp.persist(path).map_err(|e| Error::io("rename into", path, e.error))?;
    sync_parent(path)
}

/// Like [`write_atomic`], but fails with `AlreadyExists` instead of replacing `path`.
///
/// Publishes by `link(2)`, which is atomic and exclusive on local and network
/// filesystems alike. Returns `Ok(false)` when `path` already exists.
pub fn create_atomic(path: &Path, bytes: &[u8]) -> Result<bool> {
    let tmp = write_temp(path, bytes)?;
    match tmp.persist_noclobber(path) {
        Ok(_) => {
            sync_parent(path)?;
            Ok(true)
        }
        Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(Error::io("create", path, e.error)),
    }
}

/// Serializes `value` as pretty JSON (with a final newline) and writes it atomically.
pub fn write_json<T: Serialize + ?Sized>(path: &Path, value: &T) -> Result<()> {
    write_atomic(path, &to_json_bytes(value))
}

/// Like [`write_json`], but serializes straight into the temporary file, so a large
/// document (an aggregate report over 100,000 tasks) is never held twice in memory.
pub fn write_json_streamed<T: Serialize + ?Sized>(path: &Path, value: &T) -> Result<()> {
    let dir = parent(path);
    let tmp =
        tempfile::Builder::new().prefix(".").suffix(".tmp").tempfile_in(dir).ctx("create a temporary file in", dir)?;
    let mut out = std::io::BufWriter::new(tmp);
    serde_json::to_writer_pretty(&mut out, value).map_err(|e| {
        let source = e.io_error_kind().map_or_else(|| std::io::Error::other(e.to_string()), std::io::Error::from);
        Error::io("write", path, source)
    })?;
    out.write_all(b"\n").ctx("write", path)?;
    let tmp = out.into_inner().map_err(|e| Error::io("write", path, e.into_error()))?;
    if env::fsync_requested() {
        tmp.as_file().sync_all().ctx("fsync", tmp.path())?;
    }
    tmp.persist(path).map_err(|e| Error::io("rename into", path, e.error))?;
    sync_parent(path)
}

/// `value` as pretty JSON bytes with a trailing newline.
pub fn to_json_bytes<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    // Serializing our own serde types (string keys, no non-finite floats) cannot fail.
    let mut bytes = serde_json::to_vec_pretty(value).expect("records serialize to JSON");
    bytes.push(b'\n');
    bytes
}

fn write_temp(path: &Path, bytes: &[u8]) -> Result<tempfile::NamedTempFile> {
    let dir = parent(path);
    let mut tmp =
        tempfile::Builder::new().prefix(".").suffix(".tmp").tempfile_in(dir).ctx("create a temporary file in", dir)?;
    tmp.write_all(bytes).ctx("write", tmp.path())?;
    if env::fsync_requested() {
        tmp.as_file().sync_all().ctx("fsync", tmp.path())?;
    }
    Ok(tmp)
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// With `COORD_FSYNC=1`, fsyncs the directory holding `path` so a rename is durable.
pub fn sync_parent(path: &Path) -> Result<()> {
    if env::fsync_requested() {
        sync_dir(parent(path))?;
    }
    Ok(())
}

/// Fsyncs a directory unconditionally.
pub fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir).and_then(|d| d.sync_all()).ctx("fsync directory", dir)
}

/// Reads and parses a JSON file. A missing file is an [`Error::Io`] with `NotFound`;
/// a malformed one is [`Error::Malformed`] with the parse position.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let bytes = std::fs::read(path).ctx("read", path)?;
    parse_json(path, &bytes)
}

/// Like [`read_json`], but a missing file is `Ok(None)`.
pub fn read_json_opt<T: DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    match std::fs::read(path) {
        Ok(bytes) => parse_json(path, &bytes).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("read", path, e)),
    }
}

/// Parses `bytes` read from `path`, naming the file and position on failure.
pub fn parse_json<T: DeserializeOwned>(path: &Path, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| Error::malformed(path, &e))
}

/// Whether an I/O error means "not there".
pub fn is_not_found(err: &Error) -> bool {
    matches!(err, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
}

/// Creates a directory (and parents) if it is missing.
pub fn ensure_dir(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path).ctx("create directory", path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("x.json");
        write_json(&p, &serde_json::json!({"a": 1})).expect("write");
        write_json(&p, &serde_json::json!({"a": 2})).expect("rewrite");
        let v: serde_json::Value = read_json(&p).expect("read");
        assert_eq!(v["a"], 2);
        let names: Vec<_> = std::fs::read_dir(dir.path()).expect("ls").map(|e| e.expect("entry").file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("x.json")]);
    }

    #[test]
    fn malformed_file_names_path_and_position() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("bad.json");
        std::fs::write(&p, "{\n  \"a\": 1,\n  \"b\": ").expect("plant");
        let err = read_json::<serde_json::Value>(&p).expect_err("must fail");
        let msg = err.to_string();
        assert!(msg.contains("bad.json") && msg.contains("line 3"), "{msg}");
        assert_eq!(err.exit_code(), 1);
        assert!(read_json_opt::<serde_json::Value>(&dir.path().join("none.json")).expect("ok").is_none());
    }

    #[test]
    fn create_atomic_never_replaces() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("once");
        assert!(create_atomic(&p, b"first").expect("create"));
        assert!(!create_atomic(&p, b"second").expect("second create"));
        assert_eq!(std::fs::read(&p).expect("read"), b"first");
        assert_eq!(std::fs::read_dir(dir.path()).expect("ls").count(), 1);
    }
}
