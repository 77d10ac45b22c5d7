//! Named locks: `flock(2)` on `locks/<name>.lock`, through std's `File::lock` family.
//!
//! The kernel drops an flock when the last descriptor of its holder closes, so a lock
//! dies with its holder, `kill -9` included: no pid files and no guessing about stale
//! locks. Lock files are created on first use and never deleted while the session lives
//! (deleting one would let two processes lock two different inodes of the same name).
//!
//! Waits are bounded. An uncontended lock costs one `try_lock`. A contended one is waited
//! for in the kernel by a helper thread doing a blocking `lock`, so the waiter wakes the
//! moment the holder releases; if the bound passes first the helper's late lock, should it
//! ever come, is released at once.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::env;
use crate::error::{Error, IoContext, Result};

/// A held lock. Dropping it releases the lock.
#[derive(Debug)]
pub struct LockGuard {
    file: File,
    path: PathBuf,
}

impl LockGuard {
    /// The lock file this guard holds.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records who holds the lock (e.g. a pid) in the lock file, for [`read_owner`].
    /// The content is informative only; the flock is what excludes.
    pub fn write_owner(&self, owner: &str) -> Result<()> {
        use std::os::unix::fs::FileExt;
        self.file.set_len(0).ctx("truncate", &self.path)?;
        self.file.write_all_at(owner.as_bytes(), 0).ctx("write", &self.path)
    }
}

/// What the current holder wrote with [`LockGuard::write_owner`], if anything.
pub fn read_owner(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_string())
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        // Closing the descriptor releases the flock as well; unlocking first makes the
        // release independent of any descriptor a child might have inherited.
        let _ = self.file.unlock();
    }
}

/// The default bound on lock waits: `COORD_LOCK_TIMEOUT` seconds, else 10 s.
pub fn default_timeout() -> Duration {
    std::env::var(env::LOCK_TIMEOUT)
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(Duration::from_secs_f64)
        .unwrap_or(Duration::from_secs_f64(env::DEFAULT_LOCK_TIMEOUT_SECS))
}

/// Takes the exclusive lock on the file `path` (created if missing), waiting at most
/// `timeout`. `name` is what the error calls the lock.
pub fn acquire(name: &str, path: &Path, timeout: Duration) -> Result<LockGuard> {
    acquire_file(name, path, open_lock_file(path)?, timeout)
}

/// Like [`acquire`], but locks a file that must already exist (a record that doubles as
/// its own lock); a missing file is an error for which [`crate::fsio::is_not_found`] holds.
pub fn acquire_existing(name: &str, path: &Path, timeout: Duration) -> Result<LockGuard> {
    acquire_file(name, path, open_existing(path)?, timeout)
}

fn acquire_file(name: &str, path: &Path, file: File, timeout: Duration) -> Result<LockGuard> {
    refuse_host_local_locks(path, &file)?;
    match file.try_lock() {
        Ok(()) => return Ok(LockGuard { file, path: path.to_path_buf() }),
        Err(TryLockError::WouldBlock) => {}
        Err(TryLockError::Error(e)) => return Err(lock_error(path, e)),
    }
    if timeout.is_zero() {
        return Err(Error::LockTimeout { name: name.to_string(), path: path.to_path_buf(), waited_ms: 0 });
    }
    let started = Instant::now();
    let (tx, rx) = mpsc::sync_channel::<std::io::Result<File>>(1);
    std::thread::Builder::new()
        .name(format!("lock {name}"))
        .spawn(move || {
            let outcome = file.lock().map(|()| file);
            // If the waiter gave up, the send fails and the File (and its lock) drops here.
            let _ = tx.send(outcome);
        })
        .ctx("start lock waiter for", path)?;
    match rx.recv_timeout(timeout) {
        Ok(Ok(file)) => Ok(LockGuard { file, path: path.to_path_buf() }),
        Ok(Err(e)) => Err(lock_error(path, e)),
        Err(_) => Err(Error::LockTimeout {
            name: name.to_string(),
            path: path.to_path_buf(),
            waited_ms: started.elapsed().as_millis(),
        }),
    }
}

/// Takes the lock only if it is free right now; `Ok(None)` if another process holds it.
pub fn try_acquire(path: &Path) -> Result<Option<LockGuard>> {
    try_lock_file(path, open_lock_file(path)?)
}

/// Like [`try_acquire`] on a file that must already exist (see [`acquire_existing`]).
pub fn try_acquire_existing(path: &Path) -> Result<Option<LockGuard>> {
    try_lock_file(path, open_existing(path)?)
}

fn try_lock_file(path: &Path, file: File) -> Result<Option<LockGuard>> {
    refuse_host_local_locks(path, &file)?;
    match file.try_lock() {
        Ok(()) => Ok(Some(LockGuard { file, path: path.to_path_buf() })),
        Err(TryLockError::WouldBlock) => Ok(None),
        Err(TryLockError::Error(e)) => Err(lock_error(path, e)),
    }
}

fn open_existing(path: &Path) -> Result<File> {
    // The file is never written through this descriptor, but it is opened for writing:
    // the Linux NFS client emulates flock(2) with a POSIX write lock, which fails with
    // EBADF on a descriptor opened read-only. Read-only is the fallback where writing is
    // refused (a read-only mount or file), which is enough for local filesystems.
    match OpenOptions::new().read(true).write(true).open(path) {
        Err(e) if matches!(e.raw_os_error(), Some(libc::EACCES | libc::EPERM | libc::EROFS)) => {
            File::open(path).ctx("open lock file", path)
        }
        r => r.ctx("open lock file", path),
    }
}

fn open_lock_file(path: &Path) -> Result<File> {
    match OpenOptions::new().read(true).write(true).open(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        r => return r.ctx("open lock file", path),
    }
    // A new lock file is made only where its lock can be taken: on a mount that keeps
    // locks on this host, the refusal comes before anything is written.
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        let dir = File::open(parent).ctx("open the directory of lock file", path)?;
        refuse_host_local_locks(path, &dir)?;
    }
    OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path).ctx("open lock file", path)
}

/// Refuses a lock file on an NFS mount whose flock(2) locks never reach the server
/// (`local_lock=flock` or `local_lock=all`, which `nolock` implies): such a lock excludes
/// only the processes of this host, and another host would take it at the same time.
/// One `fstatfs(2)` per lock; the mount options of an NFS mount are read once per
/// process. `file` is the lock file, or the directory it is about to be made in.
fn refuse_host_local_locks(path: &Path, file: &File) -> Result<()> {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    if crate::sys::filesystem_type(file.as_fd()) != Some(crate::sys::NFS_SUPER_MAGIC) {
        return Ok(());
    }
    let dev = file.metadata().ctx("inspect lock file", path)?.dev();
    static SEEN: std::sync::Mutex<Vec<(u64, Option<String>)>> = std::sync::Mutex::new(Vec::new());
    let local = {
        let mut seen = SEEN.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match seen.iter().find(|(d, _)| *d == dev) {
            Some((_, local)) => local.clone(),
            None => {
                let local = crate::sys::mount_options(libc::major(dev), libc::minor(dev)).and_then(|o| {
                    o.split(',').find(|o| matches!(*o, "local_lock=flock" | "local_lock=all")).map(str::to_string)
                });
                seen.push((dev, local.clone()));
                local
            }
        }
    };
    match local {
        None => Ok(()),
        Some(option) => Err(Error::Failed(format!(
            "cannot lock {}: this NFS mount keeps file locks on this host only ({option}; `nolock` implies it), so processes on other hosts would not be excluded; coord refuses to run unlocked, remount without `nolock` or `local_lock` (NFSv4 locks need nothing more, NFSv3 locks need rpc.statd)",
            path.display()
        ))),
    }
}

fn lock_error(path: &Path, e: std::io::Error) -> Error {
    // Filesystems without lock support answer ENOLCK or EOPNOTSUPP; say so instead of
    // carrying on unlocked.
    let unsupported = matches!(e.raw_os_error(), Some(libc::ENOLCK) | Some(libc::EOPNOTSUPP));
    if unsupported {
        Error::Failed(format!(
            "cannot lock {}: the filesystem does not support file locks ({e}); coord refuses to run unlocked, put the base directory on a filesystem with flock or POSIX lock support",
            path.display()
        ))
    } else if e.raw_os_error() == Some(libc::EBADF) {
        Error::Failed(format!(
            "cannot lock {}: it could only be opened read-only, and this filesystem (e.g. NFS, which emulates flock with POSIX locks) locks only files open for writing; give the session's owner write access to it",
            path.display()
        ))
    } else {
        Error::io("lock", path, e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_times_out_then_gets_it_after_release() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("x.lock");
        let held = acquire("x", &p, Duration::from_secs(1)).expect("first");
        let err = acquire("x", &p, Duration::from_millis(50)).expect_err("contended");
        assert!(matches!(err, Error::LockTimeout { .. }));
        assert_eq!(err.exit_code(), 1);
        assert!(try_acquire(&p).expect("try").is_none());
        drop(held);
        let again = acquire("x", &p, Duration::from_millis(50)).expect("free again");
        drop(again);
        assert!(p.exists(), "lock files are never deleted");
    }

    #[test]
    fn a_waiter_wakes_when_the_holder_releases() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("y.lock");
        let held = acquire("y", &p, Duration::from_secs(1)).expect("first");
        let p2 = p.clone();
        let waiter = std::thread::spawn(move || acquire("y", &p2, Duration::from_secs(5)).map(|_| ()));
        std::thread::sleep(Duration::from_millis(30));
        drop(held);
        waiter.join().expect("join").expect("waiter got the lock");
    }

    #[test]
    fn a_timed_out_waiter_does_not_keep_the_lock() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("z.lock");
        let held = acquire("z", &p, Duration::from_secs(1)).expect("first");
        assert!(acquire("z", &p, Duration::from_millis(20)).is_err());
        drop(held);
        // The abandoned helper may take the lock briefly; it must give it back.
        let got = acquire("z", &p, Duration::from_secs(2));
        assert!(got.is_ok());
    }
}
