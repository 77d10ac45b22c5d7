//! Every agent's mailbox counts, for an overview made again and again (the live view):
//! a mailbox is counted again only when one of its directories changed.
//!
//! A change is seen by inotify where it can be: every directory listed for a mailbox's
//! counts (the mailbox itself, `tmp`, `new` and each of its shard directories, `cur`,
//! `done`, `dead`, `bad`) is watched before it is listed, so whatever changes after the
//! listing raises an event. Where inotify cannot serve (`COORD_POLL_MS` is set, as on a
//! network filesystem whose other hosts raise no events; no inotify; its watch limit
//! reached), the mtime of each of those directories is compared with the one it had
//! before it was listed, and a directory changed less than [`FRESH`] ago is listed
//! again even so (two changes within one timestamp tick look like one).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask, Watches};

use crate::error::{Error, Result};
use crate::layout::{self, SessionDir, queue_shard};
use crate::{env, mailbox};

/// A directory changed less than this long ago is listed again even if its mtime is the
/// one seen last time.
const FRESH: Duration = Duration::from_secs(2);

/// Below this many mailboxes to count, they are counted on one thread.
const PARALLEL_FROM: usize = 128;

/// What changes a listing.
fn mask() -> WatchMask {
    WatchMask::CREATE
        | WatchMask::DELETE
        | WatchMask::MOVED_FROM
        | WatchMask::MOVED_TO
        | WatchMask::DELETE_SELF
        | WatchMask::MOVE_SELF
        | WatchMask::ONLYDIR
}

/// The mailboxes' counts, remembered between overviews.
#[derive(Debug, Default)]
pub(super) struct Mailboxes {
    known: HashMap<String, Known>,
    watch: Option<Watch>,
    /// Whether inotify was tried (once).
    tried: bool,
    /// How many mailboxes the last call counted (the others were remembered).
    counted: usize,
}

/// One mailbox's counts and how to tell they still hold.
#[derive(Debug)]
struct Known {
    counts: mailbox::Counts,
    /// How they are kept true.
    kept: Kept,
}

#[derive(Debug)]
enum Kept {
    /// Every directory listed is watched; `dirty` once an event came for one.
    Watched { dirty: bool },
    /// Each directory listed, with its mtime from just before it was listed, every one
    /// of them already older than [`FRESH`] then.
    Stamped(Vec<(PathBuf, Option<SystemTime>)>),
    /// Counted by mtimes while one of them was within [`FRESH`] of the count: a change
    /// in the same timestamp tick after the listing could leave that mtime as it was, so
    /// it is counted again next time.
    Unsettled,
}

#[derive(Debug)]
struct Watch {
    inotify: Inotify,
    /// Whose mailbox each watch is in.
    owners: HashMap<WatchDescriptor, String>,
    /// A watch could not be added (the limit): mailboxes counted from now on go by mtimes.
    full: bool,
}

/// One count: the counts, and what it found to keep them true.
struct Counted {
    counts: mailbox::Counts,
    kept: Kept,
    watches: Vec<WatchDescriptor>,
    /// A watch could not be added: the others are counted by mtimes from now on.
    limited: bool,
}

impl Mailboxes {
    /// The counts of each of `agents`' mailboxes, in order (an error for one that cannot
    /// be listed).
    /// Without `remember`, they are only counted: nothing is watched or noted.
    pub(super) fn counts(&mut self, dir: &SessionDir, agents: &[&str], remember: bool) -> Vec<Result<mailbox::Counts>> {
        if !remember {
            return agents.iter().map(|a| count(dir, a, How::Once).map(|c| c.counts)).collect();
        }
        if !self.tried {
            self.tried = true;
            self.watch = match env::forced_poll() {
                Some(_) => None,
                None => Inotify::init()
                    .map_err(|e| log::debug!("no inotify ({e}): mailbox counts go by mtimes"))
                    .ok()
                    .map(|inotify| Watch { inotify, owners: HashMap::new(), full: false }),
            };
        }
        self.take_events();
        self.forget_others(agents);
        let mut out: Vec<Option<Result<mailbox::Counts>>> = Vec::with_capacity(agents.len());
        let mut todo = Vec::new();
        for (i, agent) in agents.iter().enumerate() {
            let holds = self.known.get(*agent).is_some_and(|k| match &k.kept {
                Kept::Watched { dirty } => !dirty,
                Kept::Stamped(dirs) => dirs.iter().all(|(p, seen)| mtime(p) == *seen),
                Kept::Unsettled => false,
            });
            match self.known.get(*agent) {
                Some(k) if holds => out.push(Some(Ok(k.counts.clone()))),
                _ => {
                    out.push(None);
                    todo.push(i);
                }
            }
        }
        let watches = self.watch.as_ref().filter(|w| !w.full).map(|w| w.inotify.watches());
        self.counted = todo.len();
        let counted = crate::sys::parallel_map(todo, PARALLEL_FROM, |i: usize| {
            let how = match &watches {
                Some(w) => How::Watch(w.clone()),
                None => How::Stamp,
            };
            (i, count(dir, agents[i], how))
        });
        for (i, r) in counted {
            let agent = agents[i];
            match r {
                Ok(c) => {
                    if let Some(w) = self.watch.as_mut() {
                        if c.limited {
                            w.full = true;
                        }
                        if !matches!(c.kept, Kept::Watched { .. }) {
                            w.owners.retain(|_, a| a.as_str() != agent);
                        }
                        for wd in c.watches {
                            w.owners.insert(wd, agent.to_string());
                        }
                    }
                    out[i] = Some(Ok(c.counts.clone()));
                    self.known.insert(agent.to_string(), Known { counts: c.counts, kept: c.kept });
                }
                Err(e) => {
                    self.known.remove(agent);
                    out[i] = Some(Err(e));
                }
            }
        }
        out.into_iter().map(|r| r.unwrap_or_else(|| Err(Error::Failed("mailbox not counted".to_string())))).collect()
    }

    /// Marks the mailboxes whose directories changed since the last time.
    fn take_events(&mut self) {
        let Some(w) = self.watch.as_mut() else { return };
        let mut buf = [0u8; 16 * 1024];
        let mut all = false;
        let mut changed: std::collections::HashSet<String> = std::collections::HashSet::new();
        loop {
            match w.inotify.read_events(&mut buf) {
                Ok(events) => {
                    let mut any = false;
                    for e in events {
                        any = true;
                        if e.mask.contains(EventMask::Q_OVERFLOW) {
                            all = true;
                            continue;
                        }
                        let owner = if e.mask.contains(EventMask::IGNORED) {
                            w.owners.remove(&e.wd)
                        } else {
                            w.owners.get(&e.wd).cloned()
                        };
                        changed.extend(owner);
                    }
                    if !any {
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    log::debug!("inotify read failed ({e}): counting every mailbox again");
                    all = true;
                    break;
                }
            }
        }
        for (agent, k) in self.known.iter_mut() {
            if let Kept::Watched { dirty } = &mut k.kept
                && (all || changed.contains(agent))
            {
                *dirty = true;
            }
        }
    }

    /// Forgets the mailboxes of agents no longer listed, and their watches.
    fn forget_others(&mut self, agents: &[&str]) {
        let listed: std::collections::HashSet<&str> = agents.iter().copied().collect();
        self.known.retain(|a, _| listed.contains(a.as_str()));
        if let Some(w) = self.watch.as_mut() {
            let mut watches = w.inotify.watches();
            w.owners.retain(|wd, a| {
                let keep = listed.contains(a.as_str());
                if !keep {
                    let _ = watches.remove(wd.clone());
                }
                keep
            });
        }
    }
}

fn mtime(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// How a count is kept true.
enum How {
    /// Each directory is watched before it is listed.
    Watch(Watches),
    /// Each directory's mtime is noted before it is listed.
    Stamp,
    /// Not kept: counted once.
    Once,
}

/// Counts one mailbox as `mailbox::count` does, keeping it true as `how` says; a watch
/// that cannot be added makes it a count by mtimes.
fn count(dir: &SessionDir, agent: &str, how: How) -> Result<Counted> {
    // The id comes from a file: it must not lead out of `messages/`.
    crate::id::validate("agent", agent)?;
    match count_with(dir, agent, how)? {
        Ok(c) => Ok(c),
        Err(limited) => {
            let mut c = count_with(dir, agent, How::Stamp)?
                .map_err(|_| Error::Failed(format!("mailbox of {agent}: not counted")))?;
            c.limited = limited;
            Ok(c)
        }
    }
}

/// One pass of [`count`]: `Ok(Err(limited))` when it cannot be kept by watches, with
/// `limited` when a watch could not be added (inotify's limit, say) rather than the
/// mailbox being missing.
fn count_with(dir: &SessionDir, agent: &str, how: How) -> Result<std::result::Result<Counted, bool>> {
    let by_watches = matches!(how, How::Watch(_));
    let started = SystemTime::now();
    let mut l = Lister { how, wds: Vec::new(), stamps: Vec::new(), failed: false, limited: false };
    // The mailbox itself is watched for its subdirectories coming and going; its
    // listing is not needed. A missing mailbox has no parent watched: by mtimes.
    let missing = !l.mark(&dir.mailbox_dir(agent)) && by_watches;
    let counted = list_mailbox(dir, agent, &mut l);
    if counted.is_err() || l.failed || missing {
        // Not kept by these watches: take them back (the mailbox's directories may be
        // watched again by a later count).
        if let How::Watch(w) = &mut l.how {
            for wd in l.wds.drain(..) {
                let _ = w.remove(wd);
            }
        }
    }
    let counts = counted?;
    if l.failed || missing {
        return Ok(Err(l.limited));
    }
    let kept = if by_watches {
        Kept::Watched { dirty: false }
    } else if l.stamps.iter().all(|(_, t)| t.is_none_or(|t| started.duration_since(t).is_ok_and(|age| age >= FRESH))) {
        Kept::Stamped(l.stamps)
    } else {
        Kept::Unsettled
    };
    Ok(Ok(Counted { counts, kept, watches: l.wds, limited: false }))
}

/// The counts of one mailbox, each directory marked by `l` before it is listed.
fn list_mailbox(dir: &SessionDir, agent: &str, l: &mut Lister) -> Result<mailbox::Counts> {
    let handovers = l.count(&dir.mailbox_tmp(agent), |n, _| n.ends_with(layout::REQUEUE_SUFFIX))?;
    let queued = queued_in(&dir.mailbox_new(agent), 0, l)?;
    let in_flight = l.count(&dir.mailbox_cur(agent), |_, _| true)? + handovers;
    let acked = l.count(&dir.mailbox_done(agent), |_, _| true)?;
    let dead = l.count(&dir.mailbox_dead(agent), |_, _| true)?;
    let bad = l.count(&dir.mailbox_bad(agent), |_, _| true)?;
    Ok(mailbox::Counts { agent: agent.to_string(), queued, in_flight, acked, dead, bad })
}

/// Lists a mailbox's directories, each watched (or its mtime noted) first, so a change
/// after its listing is seen.
struct Lister {
    how: How,
    wds: Vec<WatchDescriptor>,
    stamps: Vec<(PathBuf, Option<SystemTime>)>,
    /// A watch could not be added.
    failed: bool,
    /// ... because inotify's watch limit was reached.
    limited: bool,
}

impl Lister {
    /// Watches or stamps `path`; false when it is missing. A missing subdirectory is
    /// seen created by the watch on its parent.
    fn mark(&mut self, path: &Path) -> bool {
        match &mut self.how {
            How::Watch(w) => match w.add(path, mask()) {
                Ok(wd) => {
                    self.wds.push(wd);
                    true
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
                Err(e) => {
                    log::debug!("cannot watch {}: {e}", path.display());
                    self.failed = true;
                    self.limited |= e.raw_os_error() == Some(libc::ENOSPC);
                    true
                }
            },
            How::Stamp => {
                let stamp = mtime(path);
                self.stamps.push((path.to_path_buf(), stamp));
                stamp.is_some()
            }
            // Listed as it is; a missing directory lists as empty.
            How::Once => true,
        }
    }

    /// (name, is a directory) of each entry of `path`, marked first; none if missing.
    fn list(&mut self, path: &Path) -> Result<Vec<(String, bool)>> {
        if self.mark(path) { entries(path) } else { Ok(Vec::new()) }
    }

    /// How many entries of `path` `keep` takes, marked first; none if missing.
    fn count(&mut self, path: &Path, keep: impl Fn(&str, bool) -> bool) -> Result<usize> {
        if !self.mark(path) {
            return Ok(0);
        }
        let mut n = 0;
        crate::dirents::list(path, |name, is_dir| n += usize::from(keep(name, is_dir)))
            .map_err(|e| Error::io("list", path, e))?;
        Ok(n)
    }
}

/// The messages under `path`, a shard of `new/` at `level` (as `mailbox::count`).
fn queued_in(path: &Path, level: usize, l: &mut Lister) -> Result<usize> {
    if level == queue_shard::DEPTH {
        return l.count(path, |_, is_dir| !is_dir);
    }
    let mut n = 0;
    for (name, is_dir) in l.list(path)? {
        if is_dir {
            n += queued_in(&path.join(name), level + 1, l)?;
        }
    }
    Ok(n)
}

/// The UTF-8 names in `path` (none if it is missing) and whether each is a directory.
/// Other names cannot be coord's and are not counted (`mailbox::count` sets them aside).
fn entries(path: &Path) -> Result<Vec<(String, bool)>> {
    let mut out = Vec::new();
    crate::dirents::list(path, |name, is_dir| out.push((name.to_string(), is_dir)))
        .map_err(|e| Error::io("list", path, e))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::Base;
    use serde_json::Value;

    fn session(agents: &[&str]) -> (tempfile::TempDir, SessionDir) {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = crate::session::init(&Base::new(tmp.path().join("base")), "unit").expect("init");
        for a in agents {
            let req = crate::registry::Registration {
                id: (*a).into(),
                agent_type: "worker".into(),
                capabilities: Vec::new(),
                pid: std::process::id(),
                replace: false,
            };
            crate::registry::register(&dir, &req, Duration::from_secs(5)).expect("register");
        }
        (tmp, dir)
    }

    fn send(dir: &SessionDir, to: &str, priority: i64) -> mailbox::Message {
        let msg = mailbox::Outgoing {
            from: "me".into(),
            to: to.into(),
            msg_type: "hello".into(),
            payload: Value::Null,
            priority,
            requires_ack: false,
        };
        mailbox::send(dir, msg).expect("send")
    }

    /// Sets the mtime of every directory under `messages/` to `secs_ago` seconds ago
    /// (the same for all), as if nothing had changed since then.
    fn age(dir: &SessionDir, secs_ago: u64) {
        fn walk(p: &Path, t: SystemTime) {
            if let Ok(rd) = std::fs::read_dir(p) {
                for e in rd.flatten() {
                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                        walk(&e.path(), t);
                    }
                }
            }
            if let Ok(f) = std::fs::File::open(p) {
                f.set_modified(t).expect("set mtime");
            }
        }
        walk(&dir.messages_dir(), SystemTime::now() - Duration::from_secs(secs_ago));
    }

    /// The remembered counts equal fresh ones; returns how many mailboxes were counted.
    fn check(m: &mut Mailboxes, dir: &SessionDir, agents: &[&str], step: &str) -> usize {
        let got: Vec<mailbox::Counts> = m.counts(dir, agents, true).into_iter().map(|r| r.expect("counted")).collect();
        let fresh: Vec<mailbox::Counts> = agents.iter().map(|a| mailbox::count(dir, a).expect("count")).collect();
        assert_eq!(got, fresh, "{step}");
        m.counted
    }

    /// Every kind of change, each seen (the counts equal fresh ones at every step).
    /// `counted` checks how many mailboxes each step counted against the number it
    /// touched.
    fn follow_changes(
        m: &mut Mailboxes,
        dir: &SessionDir,
        settle: &mut dyn FnMut(&SessionDir),
        counted: &dyn Fn(usize, usize, &str),
    ) {
        let agents = ["a1", "a2"];
        let mut step = |m: &mut Mailboxes, touched: usize, what: &str, list: &[&str]| {
            settle(dir);
            counted(check(m, dir, list, what), touched, what);
        };
        step(m, 2, "first", &agents);
        step(m, 0, "unchanged", &agents);
        send(dir, "a1", 0);
        step(m, 1, "a first message", &agents);
        send(dir, "a1", 0);
        step(m, 1, "a second message, in an existing shard", &agents);
        send(dir, "a1", 7);
        step(m, 1, "another priority", &agents);
        let got = mailbox::claim(dir, "a1", 1).expect("claim");
        step(m, 1, "claimed", &agents);
        mailbox::ack(dir, "a1", &got[0].id).expect("ack");
        step(m, 1, "acknowledged", &agents);
        std::fs::create_dir_all(dir.mailbox_bad("a2")).expect("bad/");
        step(m, 1, "bad/ created", &agents);
        std::fs::write(dir.mailbox_bad("a2").join("x.json"), b"{").expect("bad file");
        step(m, 1, "a bad file", &agents);
        step(m, 0, "a1 no longer listed", &["a2"]);
        step(m, 1, "a1 listed again", &agents);
    }

    #[test]
    fn watched_counts_follow_every_change() {
        let (_b, dir) = session(&["a1", "a2"]);
        let mut m = Mailboxes::default();
        let exact = |got: usize, touched: usize, what: &str| assert_eq!(got, touched, "{what}");
        follow_changes(&mut m, &dir, &mut |_| {}, &exact);
        assert!(m.watch.as_ref().is_some_and(|w| !w.full && !w.owners.is_empty()), "inotify served");
        // A missing mailbox cannot be watched: it goes by mtimes, and the others stay
        // watched.
        std::fs::remove_dir_all(dir.mailbox_dir("a2")).expect("remove a2's mailbox");
        check(&mut m, &dir, &["a1", "a2"], "a2's mailbox gone");
        assert!(m.watch.as_ref().is_some_and(|w| !w.full), "a missing mailbox is not the watch limit");
        assert!(!matches!(m.known["a2"].kept, Kept::Watched { .. }));
        assert!(m.watch.as_ref().is_some_and(|w| w.owners.values().all(|a| a == "a1")), "a2's watches are gone");
        assert!(matches!(m.known["a1"].kept, Kept::Watched { .. }));
        crate::layout::ensure_mailbox(&dir, "a2").expect("mailbox again");
        send(&dir, "a2", 0);
        check(&mut m, &dir, &["a1", "a2"], "a2's mailbox back with a message");
    }

    #[test]
    fn counts_by_mtimes_follow_every_change_once_settled() {
        let (_b, dir) = session(&["a1", "a2"]);
        // As with COORD_POLL_MS: no inotify.
        let mut m = Mailboxes { tried: true, ..Mailboxes::default() };
        // Each step ages every directory to its own time, older than FRESH.
        let mut ago = 600;
        // Aging moves every mtime, so each step counts every mailbox again; what
        // matters is that the counts are right.
        follow_changes(
            &mut m,
            &dir,
            &mut |d| {
                ago -= 10;
                age(d, ago);
            },
            &|_, _, _| {},
        );
        // Nothing changed since the last aging: nothing is counted.
        assert_eq!(check(&mut m, &dir, &["a1", "a2"], "settled"), 0);
        send(&dir, "a2", 0);
        age(&dir, 100);
        assert_eq!(check(&mut m, &dir, &["a1", "a2"], "after a send"), 2);
        assert_eq!(check(&mut m, &dir, &["a1", "a2"], "settled again"), 0);
        // A directory changed within FRESH is listed again even with its mtime unchanged.
        age(&dir, 0);
        assert_eq!(check(&mut m, &dir, &["a1", "a2"], "fresh"), 2);
        assert_eq!(check(&mut m, &dir, &["a1", "a2"], "still fresh"), 2);
    }

    #[test]
    fn entries_lists_what_read_dir_lists() {
        use std::os::unix::ffi::OsStrExt;
        let tmp = tempfile::tempdir().expect("tempdir");
        let d = tmp.path().join("d");
        assert!(entries(&d).expect("missing").is_empty(), "a missing directory lists as empty");
        std::fs::create_dir(&d).expect("mkdir");
        assert!(entries(&d).expect("empty").is_empty());
        // Enough names to take several getdents64 calls into the 32 KiB buffer.
        for i in 0..3000 {
            std::fs::write(d.join(format!("message-{i:06}.json")), b"{}").expect("file");
        }
        for i in 0..20 {
            std::fs::create_dir(d.join(format!("shard{i:02}"))).expect("subdir");
        }
        std::os::unix::fs::symlink("shard00", d.join("link")).expect("symlink");
        std::fs::write(d.join(std::ffi::OsStr::from_bytes(b"not-utf8-\xff")), b"").expect("odd name");
        let mut got = entries(&d).expect("list");
        got.sort();
        let mut want: Vec<(String, bool)> = std::fs::read_dir(&d)
            .expect("read_dir")
            .flatten()
            .filter_map(|e| Some((e.file_name().into_string().ok()?, e.file_type().is_ok_and(|t| t.is_dir()))))
            .collect();
        want.sort();
        assert_eq!(got.len(), 3021, "3000 files, 20 directories, the link; not the odd name");
        assert_eq!(got, want);
        assert_eq!(got.iter().filter(|(_, dir)| *dir).count(), 20, "a link to a directory is not one");
    }

    #[test]
    fn a_count_once_sets_nothing_up() {
        let (_b, dir) = session(&["a1"]);
        send(&dir, "a1", 0);
        let mut m = Mailboxes::default();
        let got = m.counts(&dir, &["a1"], false);
        assert_eq!(got[0].as_ref().expect("counted").queued, 1);
        assert!(m.known.is_empty() && m.watch.is_none());
        assert!(m.counts(&dir, &["../x"], false)[0].is_err(), "an id that leads out is refused");
    }
}
