//! The one way files are written (atomically) and read (with typed errors).
//!
//! A writer creates a hidden temporary file (`.<random>.tmp`) in the target's own
//! directory, writes it completely, then renames it over the target. A reader therefore
//! sees either the old complete file or the new complete file, never a torn one, even if
//! the writer is killed at any point. With `COORD_FSYNC=1` the file is fsynced before the
//! rename and the directory after it, so the rename also survives power loss.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

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

/// Replaces the existing file `path` atomically, like [`write_atomic`], but publishes
/// with `renameat2(RENAME_EXCHANGE)`: the new file takes `path`'s name and the old one
/// takes the hidden temporary name, which is then removed. Readers see the old or the
/// new file, never neither and never a torn one, exactly as with a rename.
///
/// Why not a plain rename: on ext4 a rename that replaces a file starts writeback of
/// the new file (`auto_da_alloc`), about 0.1 ms per replace, which dominates a task's
/// bookkeeping. An exchange is not a replace, so that writeback does not protect it
/// either: after a power loss (not a process death) the file can be found empty. Without
/// `COORD_FSYNC=1` no write promises power-loss durability (see docs/layout.md); with it
/// the file is fsynced first as always. Where the exchange is unsupported (NFS, older
/// kernels) or `path` is missing, this is a plain rename.
pub fn replace_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    publish(write_temp(path, bytes)?, path)
}

/// Like [`replace_atomic`], with the temporary file written in `tmp_dir` (on the same
/// filesystem) rather than next to `path`; where `tmp_dir` does not exist (a session
/// made before it was), next to `path` as usual. See `SessionDir::spread_tmp_dir` for
/// why.
pub fn replace_atomic_via(tmp_dir: &Path, path: &Path, bytes: &[u8]) -> Result<()> {
    let cross_device = |e: &Error| matches!(e, Error::Io { source, .. } if source.raw_os_error() == Some(libc::EXDEV));
    match write_temp_in_dir(tmp_dir, path, bytes) {
        Err(e) if is_not_found(&e) => replace_atomic(path, bytes),
        // `tmp_dir` on another filesystem (a mount or link placed there): as usual.
        Ok(tmp) => match publish(tmp, path) {
            Err(e) if cross_device(&e) => replace_atomic(path, bytes),
            other => other,
        },
        Err(e) => Err(e),
    }
}

/// Publishes the complete temporary file `tmp` as `path` (see [`replace_atomic`]).
fn publish(tmp: tempfile::TempPath, path: &Path) -> Result<()> {
    if !EXCHANGE_UNSUPPORTED.load(Ordering::Relaxed) {
        match exchange(&tmp, path) {
            Ok(()) => {
                // The temporary name now holds the old file.
                remove_replaced(tmp);
                return sync_parent(path);
            }
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP)) => {
                EXCHANGE_UNSUPPORTED.store(true, Ordering::Relaxed);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("exchange into", path, e)),
        }
    }
    tmp.persist(path).map_err(|e| Error::io("rename into", path, e.error))?;
    sync_parent(path)
}

static EXCHANGE_UNSUPPORTED: AtomicBool = AtomicBool::new(false);

/// Removes the old version of a replaced file, now under the temporary name `old`: at
/// once, or later when removal is deferred (see [`DeferredRemoval`]).
fn remove_replaced(old: tempfile::TempPath) {
    if !DEFERRED.with_borrow(Option::is_some) {
        drop(old); // removes the file
        return;
    }
    match old.keep() {
        Ok(path) => DEFERRED.with_borrow_mut(|d| d.get_or_insert_with(Vec::new).push(path)),
        Err(e) => remove_quietly(&e.path),
    }
}

fn remove_quietly(path: &Path) {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            log::warn!("could not remove the replaced file {}: {e}", path.display());
        }
        _ => {}
    }
}

thread_local! {
    /// Old versions waiting for [`remove_deferred`]; `None` when this thread does not
    /// defer removal.
    static DEFERRED: std::cell::RefCell<Option<Vec<PathBuf>>> = const { std::cell::RefCell::new(None) };
}

/// While this guard lives, the old versions that [`replace_atomic`] (and so
/// [`replace_json`]) leave under a hidden temporary name, when called on this thread, are
/// kept until the thread calls [`remove_deferred`] at a moment that suits it, instead of
/// being removed by the writer.
/// Dropping the guard removes whatever is left.
///
/// For loops that can do it while they wait anyway (`taskd work` removes them while its
/// command runs): removing a file whose blocks were already written out frees them,
/// and on ext4 mounted with `discard` and without a journal that waits for the device
/// to discard them (about 0.2 ms). The old version is no longer visible under any name
/// readers look at, so removing it later changes nothing they can see; a process killed
/// before the removal leaves a hidden `.<random>.tmp` file, as one killed mid-write
/// does, which readers and the archive skip.
#[must_use = "deferral ends when the guard is dropped"]
#[derive(Debug)]
pub struct DeferredRemoval {
    active: bool,
}

impl DeferredRemoval {
    /// Starts deferring on this thread (if it already defers, this guard does nothing).
    pub fn start() -> DeferredRemoval {
        let active = DEFERRED.with_borrow_mut(|d| d.is_none() && d.replace(Vec::new()).is_none());
        DeferredRemoval { active }
    }
}

impl Drop for DeferredRemoval {
    fn drop(&mut self) {
        if self.active {
            remove_deferred();
            DEFERRED.with_borrow_mut(Option::take);
        }
    }
}

/// Removes the old versions this thread kept since the last call (see
/// [`DeferredRemoval`]).
pub fn remove_deferred() {
    let paths = DEFERRED.with_borrow_mut(|d| d.as_mut().map(std::mem::take).unwrap_or_default());
    for path in paths {
        remove_quietly(&path);
    }
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

/// Like [`write_json`], but publishes with [`replace_atomic_via`]: for the files
/// rewritten once or more per task (the registry), where a replacing rename's writeback
/// on ext4 is a measurable part of a task's cost.
pub fn replace_json<T: Serialize + ?Sized>(tmp_dir: &Path, path: &Path, value: &T) -> Result<()> {
    replace_atomic_via(tmp_dir, path, &to_json_bytes(value))
}

/// Replaces `path` atomically with what `write` produces, written straight into the
/// temporary file through a 1 MiB buffer, so a large document (an aggregate report over
/// 100,000 tasks) is never copied whole, and published as [`replace_atomic`] does (an
/// exchange: no writeback started on ext4 before it returns; the old version is removed
/// as usual). A failure removes the temporary file and leaves `path` as it was.
pub fn replace_with<F>(path: &Path, write: F) -> Result<()>
where
    F: FnOnce(&mut std::io::BufWriter<&std::fs::File>) -> std::io::Result<()>,
{
    let tmp = temp_file_in(parent(path))?;
    // Written through the plain file: the temporary file's own writer would add its
    // random name to every error, which names the target already.
    let mut out = std::io::BufWriter::with_capacity(1 << 20, tmp.as_file());
    write(&mut out).ctx("write", path)?;
    out.flush().ctx("write", path)?;
    drop(out);
    if env::fsync_requested() {
        tmp.as_file().sync_all().ctx("fsync", path)?;
    }
    publish(closed(tmp, path)?, path)
}

/// `value` as pretty JSON bytes with a trailing newline.
pub fn to_json_bytes<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    // Serializing our own serde types (string keys, no non-finite floats) cannot fail.
    let mut bytes = serde_json::to_vec_pretty(value).expect("records serialize to JSON");
    bytes.push(b'\n');
    bytes
}

fn write_temp(path: &Path, bytes: &[u8]) -> Result<tempfile::TempPath> {
    write_temp_in_dir(parent(path), path, bytes)
}

/// A new hidden temporary file (`.<random>.tmp`) in `dir`, removed when dropped.
fn temp_file_in(dir: &Path) -> Result<tempfile::NamedTempFile> {
    tempfile::Builder::new().prefix(".").suffix(".tmp").tempfile_in(dir).ctx("create a temporary file in", dir)
}

fn write_temp_in_dir(dir: &Path, path: &Path, bytes: &[u8]) -> Result<tempfile::TempPath> {
    let tmp = temp_file_in(dir)?;
    // Errors name the file being replaced (a full disk: "write .../agents.json: No space
    // left on device"), not the temporary file, which is removed when `tmp` drops.
    tmp.as_file().write_all(bytes).ctx("write", path)?;
    if env::fsync_requested() {
        tmp.as_file().sync_all().ctx("fsync", path)?;
    }
    closed(tmp, path)
}

/// Closes a written temporary file before it is published: on NFS a file's data reaches
/// the server when it is closed (close-to-open consistency), so a rename or link while
/// it is still open could show other hosts the new name with none of the data. Local
/// filesystems need nothing of this, and a close costs them nothing.
fn closed(tmp: tempfile::NamedTempFile, path: &Path) -> Result<tempfile::TempPath> {
    let (file, tmp) = tmp.into_parts();
    close(file).ctx("write", path)?;
    Ok(tmp)
}

/// Closes `file`, reporting the error of the flush that `close(2)` does on NFS (a full
/// server), which dropping a `File` would hide: the data did not reach the server then.
fn close(file: std::fs::File) -> std::io::Result<()> {
    use std::os::fd::IntoRawFd;
    let fd = file.into_raw_fd();
    // SAFETY: `fd` was just taken from the `File`, which no longer owns or closes it.
    if unsafe { libc::close(fd) } == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
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
///
/// Safe against a concurrent cleaner that removes empty directories (receivers and
/// claimers do): a level removed while the levels below it are created, or removed
/// between a `mkdir` that found it existing and the check that it is a directory, is
/// simply created again.
pub fn ensure_dir(path: &Path) -> Result<()> {
    // Bounded, so a path that can never be created fails; generous, and yielding after
    // the first few tries, so that a cleaner that keeps winning the race on a loaded
    // machine cannot starve the creator.
    const ATTEMPTS: usize = 1024;
    let mut last = None;
    for attempt in 0..ATTEMPTS {
        match std::fs::create_dir_all(path) {
            Ok(()) => return Ok(()),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::AlreadyExists) => {
                last = Some(e);
                if attempt >= 8 {
                    std::thread::yield_now();
                }
            }
            Err(e) => return Err(Error::io("create directory", path, e)),
        }
    }
    Err(Error::io("create directory", path, last.unwrap_or_else(|| std::io::Error::other("gave up"))))
}

/// Writes `bytes` to a new hidden temporary file (`.<random>.tmp`) in `tmp_dir` and
/// returns its path. With `COORD_FSYNC=1` the file is fsynced.
///
/// The caller publishes it with [`rename_noclobber`] or [`link_noclobber`] and removes
/// whatever is left; a temporary file is never visible under a name readers look at.
pub fn write_temp_in(tmp_dir: &Path, bytes: &[u8]) -> Result<PathBuf> {
    let (mut file, path) =
        temp_file_in(tmp_dir)?.keep().map_err(|e| Error::io("keep temporary file in", tmp_dir, e.error))?;
    let written = file
        .write_all(bytes)
        .ctx("write", &path)
        .and_then(|()| if env::fsync_requested() { file.sync_all().ctx("fsync", &path) } else { Ok(()) });
    // Closed with its error checked, for the reason given at [`closed`].
    let written = written.and_then(|()| close(file).ctx("write", &path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&path);
        return Err(e);
    }
    Ok(path)
}

/// Sets a file's modification time to now (one `utimensat(2)`; the file must exist).
pub fn touch(path: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "path contains NUL"))?;
    // SAFETY: `c` is a valid NUL-terminated path; a null `times` means "now".
    let rc = unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), std::ptr::null(), 0) };
    if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

/// Renames `from` to `to` unless `to` exists; `Ok(false)` if it does (nothing moved).
///
/// Uses `renameat2(RENAME_NOREPLACE)`; on filesystems without it (NFS, older kernels)
/// falls back to `link` + `unlink`, which is just as exclusive. Missing parent
/// directories of `to` are created, retrying if a concurrent cleaner removes an empty
/// one in between. With `COORD_FSYNC=1` the target directory is fsynced.
pub fn rename_noclobber(from: &Path, to: &Path) -> Result<bool> {
    with_parents(from, to, "rename", |from, to| {
        if !NOREPLACE_UNSUPPORTED.load(Ordering::Relaxed) {
            match renameat2_noreplace(from, to) {
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP)) => {
                    NOREPLACE_UNSUPPORTED.store(true, Ordering::Relaxed);
                }
                other => return other,
            }
        }
        std::fs::hard_link(from, to)?;
        match std::fs::remove_file(from) {
            // Another mover that lost the race may have removed the old name already;
            // the file is where it belongs, which is what matters.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    })
}

/// Swaps two existing names atomically (`renameat2(RENAME_EXCHANGE)`): fails, changing
/// nothing, when either is gone or the filesystem cannot exchange (NFS, older kernels).
pub fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    renameat2(a, b, libc::RENAME_EXCHANGE)
}

/// Hard-links `from` at `to` unless `to` exists; `Ok(false)` if it does. Missing parent
/// directories of `to` are created as in [`rename_noclobber`].
pub fn link_noclobber(from: &Path, to: &Path) -> Result<bool> {
    with_parents(from, to, "link", |from, to| std::fs::hard_link(from, to))
}

static NOREPLACE_UNSUPPORTED: AtomicBool = AtomicBool::new(false);

fn renameat2_noreplace(from: &Path, to: &Path) -> std::io::Result<()> {
    renameat2(from, to, libc::RENAME_NOREPLACE)
}

fn renameat2(from: &Path, to: &Path, flags: libc::c_uint) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let cstr = |p: &Path| {
        std::ffi::CString::new(p.as_os_str().as_bytes())
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "path contains NUL"))
    };
    let (f, t) = (cstr(from)?, cstr(to)?);
    // SAFETY: both pointers are valid NUL-terminated strings for the duration of the call.
    let rc = unsafe { libc::renameat2(libc::AT_FDCWD, f.as_ptr(), libc::AT_FDCWD, t.as_ptr(), flags) };
    if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

fn with_parents<F>(from: &Path, to: &Path, op: &'static str, mut place: F) -> Result<bool>
where
    F: FnMut(&Path, &Path) -> std::io::Result<()>,
{
    const ATTEMPTS: usize = 32;
    for _ in 0..ATTEMPTS {
        match place(from, to) {
            Ok(()) => {
                sync_parent(to)?;
                return Ok(true);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(false),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && std::fs::symlink_metadata(from).is_ok() => {
                // The directory may vanish again before the next attempt; so we loop.
                ensure_dir(parent(to))?;
            }
            Err(e) => return Err(Error::io(op, to, e)),
        }
    }
    Err(Error::Failed(format!(
        "could not {op} {} into {}: its directory kept disappearing ({ATTEMPTS} attempts)",
        from.display(),
        to.display()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deferred_removal_keeps_old_versions_out_of_sight_until_asked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("r.json");
        let count = || std::fs::read_dir(dir.path()).expect("list").count();
        replace_json(dir.path(), &p, &serde_json::json!({"n": 0})).expect("create");
        let guard = DeferredRemoval::start();
        // A second guard while one is active does nothing, and dropping it ends nothing.
        drop(DeferredRemoval::start());
        for n in 1..=5 {
            replace_json(dir.path(), &p, &serde_json::json!({ "n": n })).expect("replace");
            let now: serde_json::Value = read_json(&p).expect("read");
            assert_eq!(now["n"], n, "readers see the new version at once");
        }
        assert!(count() > 1, "the old versions were removed before they were asked for");
        remove_deferred();
        assert_eq!(count(), 1);
        replace_json(dir.path(), &p, &serde_json::json!({"n": 6})).expect("replace");
        drop(guard);
        let names: Vec<_> =
            std::fs::read_dir(dir.path()).expect("list").map(|e| e.expect("entry").file_name()).collect();
        assert_eq!(names, ["r.json"], "dropping the guard removes what is left");
        // Without a guard, writers remove their old versions themselves again.
        replace_json(dir.path(), &p, &serde_json::json!({"n": "last"})).expect("replace");
        assert_eq!(count(), 1);
    }

    #[test]
    fn replace_via_another_directory_leaves_it_empty_and_falls_back_when_it_is_missing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (spread, target) = (dir.path().join("tmp-3"), dir.path().join("records"));
        std::fs::create_dir_all(&spread).expect("mkdir");
        std::fs::create_dir_all(&target).expect("mkdir");
        let p = target.join("r.json");
        for n in 0..3 {
            replace_atomic_via(&spread, &p, format!("{{\"n\": {n}}}").as_bytes()).expect("replace");
            let v: serde_json::Value = read_json(&p).expect("read");
            assert_eq!(v["n"], n);
            assert_eq!(std::fs::read_dir(&spread).expect("list").count(), 0, "the old version is removed");
            assert_eq!(std::fs::read_dir(&target).expect("list").count(), 1);
        }
        replace_atomic_via(&dir.path().join("gone"), &p, b"{\"n\": 9}").expect("falls back");
        let v: serde_json::Value = read_json(&p).expect("read");
        assert_eq!(v["n"], 9);
        assert_eq!(std::fs::read_dir(&target).expect("list").count(), 1);
    }

    #[test]
    fn ensure_dir_survives_a_concurrent_cleaner() {
        use std::sync::Arc;
        use std::sync::atomic::AtomicBool;
        let root = tempfile::tempdir().expect("tempdir");
        let (mid, leaf) = (root.path().join("a"), root.path().join("a/b"));
        let stop = Arc::new(AtomicBool::new(false));
        let cleaner = {
            let (stop, mid, leaf) = (stop.clone(), mid.clone(), leaf.clone());
            std::thread::spawn(move || {
                // As a receiver does: removes whatever it finds empty, now and then (a
                // cleaner spinning on another core could starve any creator forever).
                while !stop.load(Ordering::Relaxed) {
                    let _ = std::fs::remove_dir(&leaf);
                    let _ = std::fs::remove_dir(&mid);
                    std::thread::sleep(std::time::Duration::from_micros(20));
                }
            })
        };
        let outcome = (0..20_000).try_for_each(|_| ensure_dir(&leaf));
        stop.store(true, Ordering::Relaxed);
        cleaner.join().expect("cleaner");
        outcome.expect("ensure_dir while another thread removes empty directories");
    }

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
    fn replace_exchanges_and_leaves_no_temp_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("x.json");
        replace_atomic(&p, b"{\"a\": 1}\n").expect("create through the fallback");
        replace_atomic(&p, b"{\"a\": 2}\n").expect("replace");
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
    fn an_error_at_the_start_of_a_line_has_column_1() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (text, line) in [("", 1), ("{\n", 2)] {
            let p = dir.path().join("cut.json");
            std::fs::write(&p, text).expect("plant");
            match read_json::<serde_json::Value>(&p) {
                Err(Error::Malformed { line: l, column, .. }) => assert_eq!((l, column), (line, 1), "{text:?}"),
                other => panic!("{text:?}: {other:?}"),
            }
        }
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

    #[test]
    fn noclobber_moves_create_parents_and_never_replace() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = write_temp_in(dir.path(), b"one").expect("temp");
        let target = dir.path().join("x/y/z.json");
        assert!(rename_noclobber(&a, &target).expect("rename"));
        assert!(!a.exists());
        let b = write_temp_in(dir.path(), b"two").expect("temp");
        assert!(!rename_noclobber(&b, &target).expect("second rename"));
        assert!(b.exists(), "a refused rename leaves the source");
        assert!(!link_noclobber(&b, &target).expect("link onto existing"));
        assert!(link_noclobber(&b, &dir.path().join("w/z.json")).expect("link"));
        assert_eq!(std::fs::read(&target).expect("read"), b"one");
        let gone = dir.path().join("gone");
        assert!(rename_noclobber(&gone, &dir.path().join("q/r")).is_err());
    }
}
