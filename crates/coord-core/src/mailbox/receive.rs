//! Receiving: a claim walks the queue `messages/<agent>/new/` in delivery order and
//! renames each message into `cur/`; exactly one rename of a name succeeds, so two
//! receivers never get the same message. Files that cannot be used are moved to `bad/`,
//! empty shard directories are pruned, and `release` puts a claimed message back at the
//! front of the queue.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::error::{IoContext, Result};
use crate::layout::{SessionDir, ensure_mailbox, queue_shard};
use crate::{fsio, id, time};

use super::send::{check_registered, next_id, sent_ms, write_temp};
use super::{BROADCAST_TO, Message};

/// Claims up to `max` messages for `agent`, in delivery order, without waiting.
///
/// Each claim is an atomic rename from `new/` into `cur/`; the messages are in flight
/// until [`ack`](super::ack())ed or [`requeue`](super::requeue())d. Returns an empty
/// list when the queue is empty. Files that are not messages are moved to `bad/` with a
/// warning and skipped. A missing mailbox is created for a registered agent and refused
/// for an unknown one.
pub fn claim(dir: &SessionDir, agent: &str, max: usize) -> Result<Vec<Message>> {
    id::validate("agent", agent)?;
    let new_dir = dir.mailbox_new(agent);
    if !new_dir.is_dir() {
        check_registered(dir, agent)?;
        ensure_mailbox(dir, agent)?;
    }
    let mut scan = Scan { dir, agent, cur: dir.mailbox_cur(agent), max: max.max(1), out: Vec::new() };
    scan.level(&new_dir, 0, 0)?;
    Ok(scan.out)
}

struct Scan<'a> {
    dir: &'a SessionDir,
    agent: &'a str,
    cur: PathBuf,
    max: usize,
    out: Vec<Message>,
}

/// How a walk through one queue directory ended.
enum Walked {
    /// `max` messages were claimed before the end.
    Full,
    /// Every entry was looked at; `drained` says whether this walk claimed any of them.
    Exhausted { drained: bool },
}

/// An empty shard directory nobody drained is removed only once its time range lies
/// this far in the past, so receivers never race a sender that is creating it.
const EMPTY_SHARD_GRACE_MS: u64 = 60_000;

impl Scan<'_> {
    /// Walks one level of the queue in order. `start_ms`/`span_ms` give the range of send
    /// times the directory holds (level 0, the priority, holds all of them).
    fn level(&mut self, path: &Path, level: usize, start_ms: u64) -> Result<Walked> {
        let entries = match sorted_entries(path) {
            Ok(e) => e,
            Err(e) if fsio::is_not_found(&e) => return Ok(Walked::Exhausted { drained: false }),
            Err(e) => return Err(e),
        };
        let mut drained = false;
        for (name, is_dir) in entries {
            if self.out.len() >= self.max {
                return Ok(Walked::Full);
            }
            let child = path.join(&name);
            if level == queue_shard::DEPTH {
                drained |= self.take(&child, &name, is_dir)?;
                continue;
            }
            if !is_dir || !queue_shard::is_valid(level, &name) {
                quarantine(self.dir, self.agent, &child, "not a queue shard directory");
                continue;
            }
            let (child_start, child_end) = shard_range(level, &name, start_ms);
            match self.level(&child, level + 1, child_start)? {
                Walked::Full => return Ok(Walked::Full),
                Walked::Exhausted { drained: child_drained } => {
                    drained |= child_drained;
                    // Priority directories stay. The two finest time shards (256 ms and
                    // 16 ms) go as soon as this walk empties them, coarser ones once they
                    // are long past, so a send creates at most two directories and a
                    // waiting receiver rarely wakes for a directory alone. A sender that
                    // finds its directory gone creates it again; rmdir of a non-empty
                    // directory just fails.
                    let stale = child_end.saturating_add(EMPTY_SHARD_GRACE_MS) < time::unix_ms(SystemTime::now());
                    if level > 0 && ((child_drained && level >= 3) || stale) {
                        let _ = fs::remove_dir(&child);
                    }
                    // A drained priority other than the default one goes with its whole
                    // empty chain, so senders that use many distinct priorities cannot
                    // leave directories behind that every later receive has to walk.
                    if level == 0 && child_drained && name != queue_shard::priority(0) {
                        remove_empty_tree(&child);
                    }
                }
            }
        }
        Ok(Walked::Exhausted { drained })
    }

    /// Claims one queued file; returns whether it was claimed (even if then found bad).
    fn take(&mut self, path: &Path, name: &str, is_dir: bool) -> Result<bool> {
        let Some(msg_id) = message_id_of(name).filter(|_| !is_dir) else {
            quarantine(self.dir, self.agent, path, "not a message file name (<id>.json)");
            return Ok(false);
        };
        let claimed = self.cur.join(name);
        match fsio::rename_noclobber(path, &claimed) {
            Ok(true) => {}
            // Another receiver won this one.
            Err(e) if fsio::is_not_found(&e) => return Ok(false),
            Ok(false) => {
                // Where rename cannot refuse to replace (link + unlink, e.g. NFS), another
                // receiver may be between its link and its unlink of this very file (or
                // died there): both names are one inode and the message is already theirs,
                // so the queue's name is just dropped.
                if same_file(path, &claimed) {
                    let _ = fs::remove_file(path);
                } else {
                    quarantine(self.dir, self.agent, path, "a message with this id is already in flight");
                }
                return Ok(false);
            }
            Err(e) => return Err(e),
        }
        match read_message(&claimed, msg_id) {
            Ok(m) => {
                // The claim time, for visibility timeouts (`requeue_older_than`): a rename
                // keeps the send time as mtime. An mtime belongs to the inode, so a
                // broadcast copy still linked into other mailboxes gets its own first.
                if m.to == BROADCAST_TO
                    && let Err(e) = unshare(self.dir, self.agent, &claimed, &m)
                {
                    log::debug!("cannot give {} its own claim time: {e}", claimed.display());
                }
                if let Err(e) = fsio::touch(&claimed) {
                    log::debug!("cannot stamp the claim time of {}: {e}", claimed.display());
                }
                self.out.push(m);
            }
            Err(why) => quarantine(self.dir, self.agent, &claimed, &why),
        }
        Ok(true)
    }
}

/// Replaces the in-flight file `path` of message `m`, if it is linked elsewhere too (an
/// unclaimed copy of a broadcast), with a file of its own: a copy written in `tmp/` is
/// exchanged with it, which changes nothing if a requeue or ack has moved it meanwhile.
fn unshare(dir: &SessionDir, agent: &str, path: &Path, m: &Message) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    if fs::symlink_metadata(path).ctx("inspect", path)?.nlink() < 2 {
        return Ok(());
    }
    let copy = write_temp(dir, agent, m)?;
    let swapped = fsio::exchange(&copy, path);
    // After the exchange, the temporary name holds the shared link.
    let _ = fs::remove_file(&copy);
    swapped.ctx("exchange", path)
}

/// Whether two paths name the same inode.
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (fs::symlink_metadata(a), fs::symlink_metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

/// Removes `dir` and the directories under it if none of them holds a file; returns
/// whether `dir` is gone. `rmdir` of a directory a sender has just filled fails, and a
/// sender whose directory vanished creates it again, so this never loses a message.
fn remove_empty_tree(dir: &Path) -> bool {
    let Ok(entries) = fs::read_dir(dir) else { return false };
    let mut empty = true;
    for entry in entries.flatten() {
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        if !is_dir || !remove_empty_tree(&entry.path()) {
            empty = false;
        }
    }
    empty && fs::remove_dir(dir).is_ok()
}

/// The entries of `dir` sorted by name, with whether each is a directory (from the
/// directory entry itself, without a stat).
pub(super) fn sorted_entries(dir: &Path) -> Result<Vec<(String, bool)>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).ctx("list", dir)? {
        let entry = entry.ctx("list", dir)?;
        let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
        match entry.file_name().into_string() {
            Ok(name) => out.push((name, is_dir)),
            Err(raw) => {
                // Not UTF-8: cannot be ours. Give it a printable name in the warning.
                quarantine_raw(&dir.join(raw), "a file name that is not UTF-8");
            }
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// The send-time range `[start, end)` in Unix ms of shard `name` at `level` (0 is the
/// priority level, which spans all times) inside a parent starting at `parent_start`.
fn shard_range(level: usize, name: &str, parent_start: u64) -> (u64, u64) {
    let value = u64::from_str_radix(name, 16).unwrap_or(0);
    let shift = match level {
        0 => return (0, u64::MAX),
        1 => 24,
        2 => 16,
        3 => 8,
        _ => 4,
    };
    let start = parent_start.saturating_add(value << shift);
    (start, start.saturating_add(1 << shift))
}

/// `<id>.json` -> `<id>`, if the id follows the id rule.
pub(super) fn message_id_of(name: &str) -> Option<&str> {
    let stem = name.strip_suffix(".json")?;
    id::validate("message", stem).ok()
}

/// Reads a claimed message file; the error says why it is unusable.
pub(super) fn read_message(path: &Path, expected_id: &str) -> std::result::Result<Message, String> {
    let bytes = fs::read(path).map_err(|e| format!("unreadable: {e}"))?;
    let m: Message = serde_json::from_slice(&bytes).map_err(|e| format!("not a message record: {e}"))?;
    if m.id != expected_id {
        return Err(format!("its id {:?} does not match its file name", m.id));
    }
    Ok(m)
}

/// Moves an unusable file out of the way into `bad/`, with a warning. Never fails: a
/// file that cannot be moved is skipped and reported again next time.
pub(super) fn quarantine(dir: &SessionDir, agent: &str, path: &Path, why: &str) {
    let bad = dir.mailbox_bad(agent);
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let stamp = next_id().0;
    let dest = bad.join(format!("{}-{name}", stamp.trim_start_matches("msg-")));
    let moved = fsio::ensure_dir(&bad).and_then(|()| fsio::rename_noclobber(path, &dest));
    match moved {
        Ok(true) => log::warn!("moved {} aside to {}: {why}", path.display(), dest.display()),
        Err(e) if fsio::is_not_found(&e) => {}
        Ok(false) | Err(_) => log::warn!("skipping {}: {why} (could not move it to {})", path.display(), bad.display()),
    }
}

fn quarantine_raw(path: &Path, why: &str) {
    log::warn!("skipping {}: {why}", path.display());
}

/// Puts a claimed message back at its place in the queue, unchanged (for a receiver that
/// could not hand it over, e.g. its reader went away).
pub fn release(dir: &SessionDir, agent: &str, msg: &Message) -> Result<()> {
    id::validate("agent", agent)?;
    id::validate("message", &msg.id)?;
    let from = dir.in_flight_message(agent, &msg.id);
    let to = dir.queued_message(agent, msg.priority, sent_ms(msg), &msg.id);
    fsio::rename_noclobber(&from, &to).map(|_| ())
}
