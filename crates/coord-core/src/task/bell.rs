//! Waiting without polling: a "bell" is a file whose mtime writers touch after a change;
//! waiters block on inotify for it. Where inotify is unavailable (exhausted watches)
//! waiters fall back to checking every [`POLL_FALLBACK`]; with `COORD_POLL_MS` (network
//! filesystems, where other hosts' changes raise no inotify event) they check at that
//! interval instead of using inotify.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use inotify::{Inotify, WatchMask};

/// How often a waiter re-checks when inotify cannot be used.
pub const POLL_FALLBACK: Duration = Duration::from_millis(50);

/// Touches a bell: sets its mtime to now (creating it if missing). Errors are logged, not
/// returned: a missed ring only delays fallback pollers, it never loses data.
pub fn ring(path: &Path) {
    match crate::fsio::touch(path) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            if let Err(e) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
                log::debug!("cannot create bell {}: {e}", path.display());
            }
        }
        Err(err) => log::debug!("cannot ring bell {}: {err}", path.display()),
    }
}

/// Why [`Bell::wait`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// Something watched changed (or, in fallback mode, the poll interval passed).
    Changed,
    /// The deadline passed.
    TimedOut,
    /// A termination signal arrived (see [`Signals`]).
    Signalled,
}

/// A set of watched files and directories.
#[derive(Debug)]
pub struct Bell {
    inotify: Option<Inotify>,
    signals: Option<RawFd>,
    /// Check interval when not on inotify.
    poll: Duration,
}

impl Bell {
    /// Watches each path: a file for changes to its content or metadata, a directory for
    /// entries renamed or created in it. Missing bell files are created first.
    pub fn watch(paths: &[PathBuf]) -> Bell {
        Bell::watch_with(paths, false)
    }

    /// Like [`Bell::watch`], but a directory also wakes the waiter when a file in it is
    /// written to (for following output files as they grow).
    pub fn watch_writes(paths: &[PathBuf]) -> Bell {
        Bell::watch_with(paths, true)
    }

    fn watch_with(paths: &[PathBuf], writes: bool) -> Bell {
        if let Some(every) = crate::env::forced_poll() {
            for p in paths.iter().filter(|p| !p.exists()) {
                ring(p);
            }
            return Bell { inotify: None, signals: None, poll: every };
        }
        let inotify = match Inotify::init() {
            Ok(ino) => {
                let mut ok = true;
                for p in paths {
                    if !p.exists() {
                        ring(p);
                    }
                    let mask = if p.is_dir() {
                        let entries =
                            WatchMask::MOVED_TO | WatchMask::CREATE | WatchMask::DELETE | WatchMask::MOVED_FROM;
                        if writes { entries | WatchMask::MODIFY } else { entries }
                    } else {
                        WatchMask::ATTRIB | WatchMask::MODIFY | WatchMask::CLOSE_WRITE
                    };
                    if let Err(e) = ino.watches().add(p, mask) {
                        log::debug!("inotify cannot watch {} ({e}); polling every {POLL_FALLBACK:?}", p.display());
                        ok = false;
                    }
                }
                ok.then_some(ino)
            }
            Err(e) => {
                log::debug!("inotify unavailable ({e}); polling every {POLL_FALLBACK:?}");
                None
            }
        };
        Bell { inotify, signals: None, poll: POLL_FALLBACK }
    }

    /// Also wakes (with [`Wake::Signalled`]) when `signals` receives a termination signal.
    pub fn with_signals(mut self, signals: &Signals) -> Bell {
        self.signals = Some(signals.reader.as_raw_fd());
        self
    }

    /// The inotify descriptor, readable when something watched changed, for a caller
    /// that polls it with other descriptors (`None` when polling: look every
    /// [`Bell::poll_interval`]). Call [`Bell::drain`] after it turned readable.
    pub fn fd(&self) -> Option<RawFd> {
        self.inotify.as_ref().map(AsRawFd::as_raw_fd)
    }

    /// How often a polling bell's owner should look (see [`Bell::fd`]).
    pub fn poll_interval(&self) -> Duration {
        self.poll
    }

    /// Reads every queued event; whether there was any.
    pub fn drain(&mut self) -> bool {
        let Some(ino) = &mut self.inotify else { return false };
        let mut buf = [0u8; 4096];
        let mut any = false;
        while ino.read_events(&mut buf).is_ok_and(|mut ev| ev.next().is_some()) {
            any = true;
        }
        any
    }

    /// Whether this bell really blocks on inotify (false: polling fallback).
    pub fn is_native(&self) -> bool {
        self.inotify.is_some()
    }

    /// Blocks until something watched changes, a signal arrives or `deadline` passes.
    pub fn wait(&mut self, deadline: Option<Instant>) -> Wake {
        loop {
            let remaining = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if remaining.is_some_and(|r| r.is_zero()) {
                return Wake::TimedOut;
            }
            let mut fds = Vec::with_capacity(2);
            if let Some(ino) = &self.inotify {
                fds.push(libc::pollfd { fd: ino.as_raw_fd(), events: libc::POLLIN, revents: 0 });
            }
            if let Some(fd) = self.signals {
                fds.push(libc::pollfd { fd, events: libc::POLLIN, revents: 0 });
            }
            let cap =
                if self.inotify.is_some() { remaining } else { Some(remaining.unwrap_or(self.poll).min(self.poll)) };
            let ms = cap.map_or(-1, |d| i32::try_from(d.as_millis().max(1)).unwrap_or(i32::MAX));
            // SAFETY: `fds` is a valid array of pollfd of the given length.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
            if n < 0 {
                if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                std::thread::sleep(self.poll);
                return Wake::Changed;
            }
            if self.signals.is_some() && fds.last().is_some_and(|f| f.revents != 0) {
                return Wake::Signalled;
            }
            if n == 0 {
                if self.inotify.is_none() {
                    return if deadline.is_some_and(|d| Instant::now() >= d) { Wake::TimedOut } else { Wake::Changed };
                }
                continue;
            }
            // Drain everything queued: one wake-up per burst of changes.
            self.drain();
            return Wake::Changed;
        }
    }
}

/// SIGTERM and SIGINT, turned into a readable pipe and a flag.
#[derive(Debug)]
pub struct Signals {
    reader: UnixStream,
}

impl Signals {
    /// Installs the handlers. Until dropped... they stay for the life of the process.
    pub fn install() -> std::io::Result<Signals> {
        Signals::install_with_trigger().map(|(signals, _)| signals)
    }

    /// [`Signals::install`], plus a trigger: writing a byte to it counts as a signal, so
    /// a program can end its own waits (on end of input, say) the way SIGTERM would.
    pub fn install_with_trigger() -> std::io::Result<(Signals, UnixStream)> {
        let (reader, writer) = UnixStream::pair()?;
        reader.set_nonblocking(true)?;
        writer.set_nonblocking(true)?;
        for sig in [libc::SIGTERM, libc::SIGINT] {
            let w: OwnedFd = writer.try_clone()?.into();
            signal_hook::low_level::pipe::register(sig, w)?;
        }
        Ok((Signals { reader }, writer))
    }

    /// The descriptor that becomes readable when a signal arrives (for poll(2)).
    pub fn fd(&self) -> RawFd {
        self.reader.as_raw_fd()
    }

    /// The same descriptor, borrowed (for [`crate::mailbox::StopFds`]).
    pub fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.reader.as_fd()
    }

    /// Whether a signal has arrived (does not consume it).
    pub fn received(&self) -> bool {
        let mut buf = [0u8; 1];
        // SAFETY: valid buffer of length 1; MSG_PEEK leaves the byte for later checks.
        let n = unsafe { libc::recv(self.reader.as_raw_fd(), buf.as_mut_ptr().cast(), 1, libc::MSG_PEEK) };
        n > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ring_wakes_a_waiter_and_silence_times_out() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join(".bell");
        let mut bell = Bell::watch(std::slice::from_ref(&p));
        assert!(p.exists());
        let t0 = Instant::now();
        assert_eq!(bell.wait(Some(Instant::now() + Duration::from_millis(30))), Wake::TimedOut);
        assert!(t0.elapsed() >= Duration::from_millis(30));
        let p2 = p.clone();
        let ringer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            ring(&p2);
        });
        assert_eq!(bell.wait(Some(Instant::now() + Duration::from_secs(5))), Wake::Changed);
        ringer.join().expect("join");
    }
}
