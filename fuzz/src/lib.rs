//! Helpers shared by the fuzz targets: a scratch session per input, input splitting,
//! and checks that a parse error points inside its input.

use std::path::{Path, PathBuf};
use std::time::Duration;

use coord_core::layout::{Base, SessionDir};
use coord_core::{Error, session};

/// Lock timeout for the scratch session: nothing else runs in it.
pub const T: Duration = Duration::from_secs(5);

/// A fresh session under a temporary base, removed when dropped. `outside()` is a
/// sibling directory of the base that nothing the tools do may touch.
pub struct Scratch {
    tmp: tempfile::TempDir,
    /// The base directory holding the session.
    pub base: Base,
    /// The session.
    pub dir: SessionDir,
}

impl Scratch {
    /// Creates the session (the same `session::init` that `session-init` runs).
    pub fn new() -> Scratch {
        let tmp = tempfile::tempdir().expect("temporary directory");
        let base = Base::new(tmp.path().join("base"));
        let dir = session::init(&base, "fuzz").expect("session init");
        Scratch { tmp, base, dir }
    }

    /// The temporary directory holding the base.
    pub fn top(&self) -> &Path {
        self.tmp.path()
    }

    /// A directory next to the base, created on first use.
    pub fn outside(&self) -> PathBuf {
        let p = self.tmp.path().join("outside");
        std::fs::create_dir_all(&p).expect("outside directory");
        p
    }

    /// Writes `bytes` at `rel` inside the session, creating its directories.
    pub fn plant(&self, rel: impl AsRef<Path>, bytes: &[u8]) -> PathBuf {
        let path = self.dir.root().join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("create directories");
        }
        std::fs::write(&path, bytes).expect("plant file");
        path
    }
}

impl Default for Scratch {
    fn default() -> Self {
        Scratch::new()
    }
}

/// Splits fuzz input into at most `n` parts at `0xFF` bytes. `0xFF` never occurs in
/// UTF-8, so every part can still be any UTF-8 text.
pub fn split(data: &[u8], n: usize) -> Vec<&[u8]> {
    data.splitn(n, |&b| b == 0xFF).collect()
}

/// Asserts that a read error is typed: an I/O or parse error names `path`, and a parse
/// error gives a position inside `bytes` (a 1-based line that exists and a 1-based
/// column at most one past the end of that line). Other errors (a shape the caller
/// checks after parsing) are failures, never usage errors.
pub fn check_read_error(err: &Error, path: &Path, bytes: &[u8]) {
    let shown = err.to_string();
    if matches!(err, Error::Io { .. } | Error::Malformed { .. }) {
        assert!(shown.contains(&path.display().to_string()), "error does not name {}: {shown}", path.display());
    } else {
        assert!(matches!(err, Error::Failed(_)), "unexpected error kind: {err:?}");
    }
    if let Error::Malformed { line, column, message, .. } = err {
        check_position(bytes, *line, *column);
        // serde_json ends its messages with " at line L column C"; the error gives the
        // position itself. (The words may still occur inside quoted input.)
        let left = message.rsplit_once(" at line ").is_some_and(|(_, rest)| {
            rest.split_once(" column ").is_some_and(|(l, c)| {
                !l.is_empty() && !c.is_empty() && l.bytes().chain(c.bytes()).all(|b| b.is_ascii_digit())
            })
        });
        assert!(!left, "position left in the message: {message}");
        assert_eq!(err.exit_code(), 1);
    }
}

/// Asserts that (`line`, `column`), both 1-based, is a position inside `bytes` (or just
/// past the end of a line).
pub fn check_position(bytes: &[u8], line: usize, column: usize) {
    let lines: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
    assert!(line >= 1 && line <= lines.len(), "line {line} of an input with {} lines", lines.len());
    let len = lines[line - 1].len();
    assert!(column >= 1 && column <= len + 1, "column {column} on line {line} of {len} bytes");
}

/// Every path under `root` (not following links), sorted, relative to `root`.
pub fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p.clone());
            }
            out.push(p.strip_prefix(root).expect("under root").to_path_buf());
        }
    }
    out.sort();
    out
}

/// Regular files anywhere under `dir`, not following links (a missing directory has none).
pub fn files_under(dir: &Path) -> usize {
    walk(dir).iter().filter(|p| std::fs::symlink_metadata(dir.join(p)).is_ok_and(|m| m.is_file())).count()
}

/// Regular files directly in `dir` (a missing directory has none).
pub fn files_in(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|e| e.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_file())).count())
        .unwrap_or(0)
}
