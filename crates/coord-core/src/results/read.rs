//! Reading result documents from disk: `results/<agent>.json` ([`read_result_file`])
//! and the `results/<agent>.jsonl` log ([`read_result_log`]: one document a line, an
//! unfinished last line left for the next read). A result file is a regular file its
//! agent wrote: it is never followed through a link nor waited on as a FIFO. The
//! listed-file readers serve the report's batched reads of the whole `results/`.

use std::ops::Range;
use std::path::Path;

use super::AgentResults;
use super::parse::{not_utf8, parse_result_file};
use crate::error::{Error, IoContext, Result};

/// Reads `results/<agent>.jsonl`, the task store's append-only log: one seed-shaped
/// document per line, merged into one. A last line without its newline is an append
/// in progress and is left for the next read; a line that does not parse is an error
/// naming its line.
pub fn read_result_log(path: &Path) -> Result<AgentResults> {
    parse_result_log(path, &read_regular_file(None, path)?)
}

pub(crate) fn parse_result_log(path: &Path, bytes: &[u8]) -> Result<AgentResults> {
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

/// Reads and checks one result file. Symlinks are not followed: a result file is a
/// regular file its agent wrote.
pub fn read_result_file(path: &Path) -> Result<AgentResults> {
    parse_result_file(path, &read_regular_file(None, path)?).and_then(check_execution_time)
}

/// A result file's `execution_time` must be a number of seconds, if it is there.
pub(crate) fn check_execution_time(r: AgentResults) -> Result<AgentResults> {
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
pub(crate) fn read_listed_with<R>(
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
pub(crate) fn read_listed_text(within: Option<&std::fs::File>, path: &Path, text: &mut String) -> Result<Range<usize>> {
    read_listed_with(within, path, |bytes| {
        let s = std::str::from_utf8(bytes).map_err(|e| not_utf8(e.valid_up_to()))?;
        let start = text.len();
        text.push_str(s);
        Ok(start..text.len())
    })
}

pub(crate) fn not_regular() -> Error {
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
