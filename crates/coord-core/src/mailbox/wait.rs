//! Waiting for messages (`recv --wait`, `watch`): inotify watches on the queue
//! directories under `messages/<agent>/new/`, woken as soon as a file appears, or stop
//! descriptors (signals); polling only where inotify is unavailable or `COORD_POLL_MS`
//! asks for it. Reads the queue through [`super::claim`]; writes nothing itself.

use std::fs;
use std::io::ErrorKind;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::layout::{SessionDir, ensure_mailbox, queue_shard};
use crate::{env, id};

use super::Message;
use super::receive::claim;
use super::send::check_registered;

/// Descriptors that end a wait early: `readable` when it can be read (a signal
/// self-pipe), `hangup` when it reports an error or hang-up (stdout whose reader left).
#[derive(Debug, Clone, Copy, Default)]
pub struct StopFds<'a> {
    /// Stop when this becomes readable.
    pub readable: Option<BorrowedFd<'a>>,
    /// Stop when this reports POLLERR/POLLHUP.
    pub hangup: Option<BorrowedFd<'a>>,
}

/// The outcome of [`Waiter::next`].
#[derive(Debug)]
pub enum Waited {
    /// Claimed messages (at least one).
    Messages(Vec<Message>),
    /// The deadline passed with the queue still empty.
    TimedOut,
    /// A stop descriptor fired.
    Stopped,
}

/// Blocks until messages arrive in one mailbox, without polling.
///
/// Holds inotify watches on `new/` and its shard directories (added as they appear).
/// The watches are set before the queue is checked again, so a message published at any
/// moment is either found by that check or wakes the wait.
#[derive(Debug)]
pub struct Waiter {
    dir: SessionDir,
    agent: String,
    inotify: Option<inotify::Inotify>,
    poll_every: Duration,
    buf: Vec<u8>,
}

/// How often to look when inotify is unavailable and `COORD_POLL_MS` is not set.
const FALLBACK_POLL: Duration = Duration::from_millis(20);

impl Waiter {
    /// A waiter for `agent`'s mailbox (which must belong to a registered agent or exist).
    pub fn new(dir: &SessionDir, agent: &str) -> Result<Waiter> {
        id::validate("agent", agent)?;
        if !dir.mailbox_new(agent).is_dir() {
            check_registered(dir, agent)?;
            ensure_mailbox(dir, agent)?;
        }
        let forced = env::forced_poll();
        let inotify = match forced {
            Some(_) => None,
            None => match inotify::Inotify::init() {
                Ok(i) => Some(i),
                Err(e) => {
                    log::warn!("inotify is unavailable ({e}); checking the mailbox every {FALLBACK_POLL:?} instead");
                    None
                }
            },
        };
        let poll_every = forced.unwrap_or(FALLBACK_POLL);
        Ok(Waiter { dir: dir.clone(), agent: agent.to_string(), inotify, poll_every, buf: vec![0; 4096] })
    }

    /// Claims up to `max` messages, waiting for the first one until `deadline` (forever
    /// if `None`) or until a stop descriptor fires.
    pub fn next(&mut self, max: usize, deadline: Option<Instant>, stop: &StopFds<'_>) -> Result<Waited> {
        loop {
            if poll_stop(stop, 0)? {
                return Ok(Waited::Stopped);
            }
            let got = claim(&self.dir, &self.agent, max)?;
            if !got.is_empty() {
                return Ok(Waited::Messages(got));
            }
            self.arm()?;
            let got = claim(&self.dir, &self.agent, max)?;
            if !got.is_empty() {
                return Ok(Waited::Messages(got));
            }
            match self.block(deadline, stop)? {
                Some(outcome) => return Ok(outcome),
                None => continue,
            }
        }
    }

    /// Watches `new/` and every shard directory under it.
    fn arm(&mut self) -> Result<()> {
        let Some(ino) = self.inotify.as_mut() else { return Ok(()) };
        use inotify::WatchMask;
        let mask = WatchMask::CREATE | WatchMask::MOVED_TO | WatchMask::ONLYDIR;
        let mut stack = vec![(self.dir.mailbox_new(&self.agent), 0usize)];
        while let Some((d, level)) = stack.pop() {
            match ino.watches().add(&d, mask) {
                Ok(_) => {}
                // Removed by a receiver since it was listed: nothing to watch.
                Err(e) if matches!(e.kind(), ErrorKind::NotFound) || e.raw_os_error() == Some(libc::ENOTDIR) => {
                    continue;
                }
                Err(e) => {
                    log::warn!(
                        "cannot watch {} with inotify ({e}); checking every {:?} instead (raise fs.inotify.max_user_watches?)",
                        d.display(),
                        self.poll_every
                    );
                    self.inotify = None;
                    return Ok(());
                }
            }
            if level < queue_shard::DEPTH {
                let Ok(entries) = fs::read_dir(&d) else { continue };
                for entry in entries.flatten() {
                    if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                        stack.push((entry.path(), level + 1));
                    }
                }
            }
        }
        Ok(())
    }

    /// Sleeps until something changes (`None`), the deadline passes or a stop fires.
    fn block(&mut self, deadline: Option<Instant>, stop: &StopFds<'_>) -> Result<Option<Waited>> {
        let mut timeout = match deadline {
            Some(d) => match d.checked_duration_since(Instant::now()) {
                Some(left) if !left.is_zero() => Some(left),
                _ => return Ok(Some(Waited::TimedOut)),
            },
            None => None,
        };
        if self.inotify.is_none() {
            timeout = Some(timeout.map_or(self.poll_every, |t| t.min(self.poll_every)));
        }
        let mut fds = Vec::with_capacity(3);
        if let Some(ino) = &self.inotify {
            fds.push(libc::pollfd { fd: ino.as_raw_fd(), events: libc::POLLIN, revents: 0 });
        }
        let first_stop = fds.len();
        push_stop_fds(&mut fds, stop);
        let rc = poll(&mut fds, timeout)?;
        if fds[first_stop..].iter().any(|p| p.revents != 0) {
            return Ok(Some(Waited::Stopped));
        }
        if rc > 0
            && let Some(ino) = self.inotify.as_mut()
        {
            // Drain the events; which file arrived does not matter, the queue order does.
            loop {
                match ino.read_events(&mut self.buf) {
                    Ok(events) => {
                        if events.count() == 0 {
                            break;
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) => return Err(Error::io("read inotify events for", self.dir.mailbox_new(&self.agent), e)),
                }
            }
        }
        Ok(None)
    }
}

fn push_stop_fds(fds: &mut Vec<libc::pollfd>, stop: &StopFds<'_>) {
    if let Some(fd) = stop.readable {
        fds.push(libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 });
    }
    if let Some(fd) = stop.hangup {
        // No requested events: poll still reports POLLERR/POLLHUP, and a terminal on
        // stdout that the user types into does not count.
        fds.push(libc::pollfd { fd: fd.as_raw_fd(), events: 0, revents: 0 });
    }
}

/// Whether a stop descriptor has fired, waiting at most `timeout_ms`.
fn poll_stop(stop: &StopFds<'_>, timeout_ms: i32) -> Result<bool> {
    let mut fds = Vec::with_capacity(2);
    push_stop_fds(&mut fds, stop);
    if fds.is_empty() {
        return Ok(false);
    }
    poll(&mut fds, Some(Duration::from_millis(timeout_ms.max(0) as u64)))?;
    Ok(fds.iter().any(|p| p.revents != 0))
}

/// `poll(2)`; an interrupting signal counts as a wake-up (the caller looks again).
fn poll(fds: &mut [libc::pollfd], timeout: Option<Duration>) -> Result<i32> {
    let ms = match timeout {
        // Round up so a short remaining time does not become a busy zero-timeout loop.
        Some(t) => i32::try_from(t.as_micros().div_ceil(1000)).unwrap_or(i32::MAX),
        None => -1,
    };
    // SAFETY: fds is a valid, exclusively borrowed slice of pollfd for the call.
    let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
    if rc < 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() == ErrorKind::Interrupted {
            return Ok(0);
        }
        return Err(Error::io("poll", "mailbox watches", e));
    }
    Ok(rc)
}
