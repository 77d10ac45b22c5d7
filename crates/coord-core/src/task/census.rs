//! Task counts without reading records: a census of the names in the status
//! directories (`tasks/blocked`, `claimed`, `done`, `failed`, `cancelled`, flat
//! directories of `<id>.json`) and of the pending index
//! (`tasks/pending/<route>/<priority-key>/<block>/<chunk>/<seq>.<id>.json`).
//!
//! A status change is a rename, so every task's record is in exactly one of these places
//! at any moment and counting names counts tasks. Names that are not records (a
//! writer's dotfile temporary, a stray file, a record filed in the wrong chunk) are not
//! counted; unlike [`super::list_all`], the census only reads and sets nothing aside.
//!
//! A [`Census`] kept between calls remembers each directory's modification time and
//! what it found there. A directory whose mtime did not change keeps its count without
//! being listed again (adding or removing a name changes its directory's mtime), except
//! when that mtime was within [`FRESH`] of the time of that listing: a change in the
//! same timestamp tick after the listing could leave the mtime as it was, so a listing
//! of a recently changed directory is never trusted later.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::index::{BLOCK, CHUNK, Route};
use super::{Progress, Status};
use crate::dirents;
use crate::error::{Error, Result};
use crate::id;
use crate::layout::SessionDir;

/// A directory modified this recently is listed again even if its mtime is unchanged.
pub const FRESH: Duration = Duration::from_secs(2);

/// What a directory held at its last listing.
#[derive(Debug, Clone)]
enum Seen {
    /// A leaf: how many records.
    Count(usize),
    /// An inner level of the pending index: its subdirectories (and records filed
    /// directly in it, in the shape of an earlier version).
    Children { dirs: Vec<String>, records: usize },
}

/// Counts tasks by status from directory listings, remembering unchanged directories.
#[derive(Debug, Default)]
pub struct Census {
    /// Each directory's mtime when listed, if it was already past [`FRESH`] then (a
    /// listing made while the mtime was fresh is never trusted later: a change in the
    /// same tick after it would leave that mtime as it was), and what it held.
    seen: HashMap<PathBuf, (Option<SystemTime>, Seen)>,
    /// Directories listed by the last [`Census::count`] (the others were remembered).
    listed: usize,
}

impl Census {
    /// An empty census: its first count lists every directory.
    pub fn new() -> Census {
        Census::default()
    }

    /// How many directories the last count had to list (for tests and benchmarks).
    pub fn listed(&self) -> usize {
        self.listed
    }

    /// The task counts of the session, as [`super::count`] gives them for
    /// [`super::list_all`]'s records.
    pub fn count(&mut self, dir: &SessionDir) -> Result<Progress> {
        self.listed = 0;
        let now = SystemTime::now();
        let mut p = Progress::default();
        let mut visited = Vec::new();
        for s in Status::ALL {
            let n = if s == Status::Pending {
                self.pending(dir, now, &mut visited)?
            } else {
                let d = dir.tasks_status_dir(s.dir_name());
                visited.push(d.clone());
                self.leaf(&d, now, is_status_record)?
            };
            match s {
                Status::Blocked => p.blocked = n,
                Status::Pending => p.pending = n,
                Status::Claimed => p.claimed = n,
                Status::Completed => p.completed = n,
                Status::Failed => p.failed = n,
                Status::Cancelled => p.cancelled = n,
            }
        }
        // Forget directories that are gone (emptied chunks are removed by claimers).
        if self.seen.len() > visited.len() {
            let keep: std::collections::HashSet<PathBuf> = visited.into_iter().collect();
            self.seen.retain(|k, _| keep.contains(k));
        }
        p.total = p.blocked + p.pending + p.claimed + p.completed + p.failed + p.cancelled;
        let (done, total) = (p.completed as u64, p.total as u64);
        p.operation_progress = if total == 0 { 0 } else { (done * 200 + total) / (total * 2) };
        Ok(p)
    }

    fn pending(&mut self, dir: &SessionDir, now: SystemTime, visited: &mut Vec<PathBuf>) -> Result<usize> {
        let root = dir.tasks_pending_dir();
        let mut n = 0;
        let routes = self.inner(&root, now, visited, |name, _| Route::parse(name).is_some(), |_| false)?;
        for route in routes {
            let rdir = root.join(&route);
            for prio in self.inner(&rdir, now, visited, |name, _| is_priority_key(name), |_| false)? {
                let pdir = rdir.join(&prio);
                for block in self.inner(&pdir, now, visited, |name, _| number(name).is_some(), |_| false)? {
                    let bdir = pdir.join(&block);
                    let Some(b) = number(&block) else { continue };
                    let in_block = |name: &str, _: &Path| number(name).is_some_and(|c| c * CHUNK / BLOCK == b);
                    // A record right under a block is the shape before blocks existed; it is
                    // pending (the next claim's walk moves it into its chunk).
                    for chunk in self.inner(&bdir, now, visited, in_block, |name| pending_seq(name).is_some())? {
                        let cdir = bdir.join(&chunk);
                        let Some(c) = number(&chunk) else { continue };
                        visited.push(cdir.clone());
                        n += self.leaf(&cdir, now, |name| pending_seq(name).is_some_and(|seq| seq / CHUNK == c))?;
                    }
                    n += self.records_in_inner(&bdir);
                }
            }
        }
        Ok(n)
    }

    /// The subdirectories of an inner level that `keep_dir` accepts, remembering the
    /// listing; names `is_record` accepts are counted as records of that level.
    fn inner(
        &mut self,
        d: &Path,
        now: SystemTime,
        visited: &mut Vec<PathBuf>,
        keep_dir: impl Fn(&str, &Path) -> bool,
        is_record: impl Fn(&str) -> bool,
    ) -> Result<Vec<String>> {
        visited.push(d.to_path_buf());
        let Some(mtime) = mtime_of(d)? else {
            self.seen.remove(d);
            return Ok(Vec::new());
        };
        if let Some((m, Seen::Children { dirs, .. })) = self.seen.get(d)
            && *m == Some(mtime)
        {
            return Ok(dirs.clone());
        }
        self.listed += 1;
        let mut dirs = Vec::new();
        let mut records = 0;
        dirents::list(d, |name, _| {
            if is_record(name) {
                records += 1;
            } else if keep_dir(name, d) {
                dirs.push(name.to_string());
            }
        })
        .map_err(|e| Error::io("list", d, e))?;
        dirs.sort();
        let trusted = (!is_fresh(mtime, now)).then_some(mtime);
        self.seen.insert(d.to_path_buf(), (trusted, Seen::Children { dirs: dirs.clone(), records }));
        Ok(dirs)
    }

    fn records_in_inner(&self, d: &Path) -> usize {
        match self.seen.get(d) {
            Some((_, Seen::Children { records, .. })) => *records,
            _ => 0,
        }
    }

    /// How many names of the flat directory `d` are records.
    fn leaf(&mut self, d: &Path, now: SystemTime, is_record: impl Fn(&str) -> bool) -> Result<usize> {
        let Some(mtime) = mtime_of(d)? else {
            self.seen.remove(d);
            return Ok(0);
        };
        if let Some((m, Seen::Count(n))) = self.seen.get(d)
            && *m == Some(mtime)
        {
            return Ok(*n);
        }
        self.listed += 1;
        let mut n = 0;
        dirents::list(d, |name, _| n += usize::from(is_record(name))).map_err(|e| Error::io("list", d, e))?;
        let trusted = (!is_fresh(mtime, now)).then_some(mtime);
        self.seen.insert(d.to_path_buf(), (trusted, Seen::Count(n)));
        Ok(n)
    }
}

/// The task counts of the session, listing every directory once.
pub fn census(dir: &SessionDir) -> Result<Progress> {
    Census::new().count(dir)
}

/// A directory's mtime; `None` if it does not exist.
fn mtime_of(d: &Path) -> Result<Option<SystemTime>> {
    match std::fs::metadata(d) {
        Ok(m) => m.modified().map(Some).map_err(|e| Error::io("stat", d, e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("stat", d, e)),
    }
}

/// Whether `mtime` is too recent (or in the future) to vouch for an unchanged listing.
fn is_fresh(mtime: SystemTime, now: SystemTime) -> bool {
    now.duration_since(mtime).map_or(true, |age| age < FRESH)
}

/// `<id>.json` with a valid task id.
fn is_status_record(name: &str) -> bool {
    name.strip_suffix(".json").is_some_and(|stem| id::validate("task", stem).is_ok())
}

/// The submission number of a pending record's name, `<16 digits>.<id>.json`.
fn pending_seq(name: &str) -> Option<u64> {
    let (seq, id) = name.strip_suffix(".json")?.split_once('.')?;
    if seq.len() != 16 || !seq.bytes().all(|b| b.is_ascii_digit()) || id::validate("task", id).is_err() {
        return None;
    }
    seq.parse().ok()
}

/// A 12-digit block or chunk number.
fn number(name: &str) -> Option<u64> {
    if name.len() != 12 || !name.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    name.parse().ok()
}

/// A 20-digit priority key that names a priority.
fn is_priority_key(name: &str) -> bool {
    name.len() == 20
        && name.bytes().all(|b| b.is_ascii_digit())
        && name.parse::<u64>().is_ok_and(|k| i64::try_from(i64::MAX as i128 - k as i128).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::Base;
    use crate::task::index;
    use crate::task::{self, Holder, NewTask};

    fn session(tmp: &tempfile::TempDir) -> SessionDir {
        crate::session::init(&Base::new(tmp.path().join("base")), "t").expect("init")
    }

    fn new_task(id: &str, priority: i64, deps: &[&str]) -> NewTask {
        let mut t: NewTask = serde_json::from_value(serde_json::json!({"id": id, "priority": priority})).expect("task");
        t.dependencies = deps.iter().map(|d| d.to_string()).collect();
        t
    }

    #[test]
    fn the_census_equals_the_count_of_every_record() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = session(&tmp);
        let t = Duration::from_secs(5);
        let mut new: Vec<NewTask> = (0..150).map(|i| new_task(&format!("t{i}"), i % 3, &[])).collect();
        new.push(new_task("waits", 0, &["t149"]));
        task::submit(&dir, new, t).expect("submit");
        let reg = crate::registry::Registration {
            id: "a".into(),
            agent_type: "w".into(),
            capabilities: Vec::new(),
            pid: std::process::id(),
            replace: false,
        };
        crate::registry::register(&dir, &reg, t).expect("register");
        for _ in 0..5 {
            let got = task::claim(&dir, "a", &task::ClaimOptions::default(), t).expect("claim").expect("a task");
            task::complete(&dir, &got.id, &Holder::default(), serde_json::json!(1), t).expect("complete");
        }
        let got = task::claim(&dir, "a", &task::ClaimOptions::default(), t).expect("claim").expect("a task");
        task::fail(&dir, &got.id, &Holder::default(), "no", t).expect("fail");
        task::claim(&dir, "a", &task::ClaimOptions::default(), t).expect("claim").expect("a task");
        task::cancel(&dir, "t10", None, t).expect("cancel");
        // Names that are not records are not counted.
        std::fs::write(dir.tasks_status_dir("done").join(".tmp.x.json"), "{}").expect("plant");
        std::fs::write(dir.tasks_status_dir("done").join("not a record"), "{}").expect("plant");

        let mut census = Census::new();
        let counted = census.count(&dir).expect("census");
        let expected = task::count(&task::list_all(&dir).expect("list"));
        assert_eq!(counted, expected);
        assert_eq!(counted.total, 151);
        assert_eq!(counted.blocked, 1);
        assert_eq!(counted.claimed, 1);
        assert!(counted.completed >= 5);
        assert_eq!(census.count(&dir).expect("again"), expected, "a second count agrees");
    }

    #[test]
    fn a_listing_made_while_the_mtime_was_fresh_is_not_trusted_once_it_is_old() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = session(&tmp);
        let done = dir.tasks_status_dir("done");
        std::fs::create_dir_all(&done).expect("done/");
        // An mtime just short of FRESH old: the listing sees it fresh.
        let tick = SystemTime::now() - FRESH + Duration::from_millis(300);
        let set = |t: SystemTime| std::fs::File::open(&done).expect("open").set_modified(t).expect("mtime");
        set(tick);
        let mut census = Census::new();
        assert_eq!(census.count(&dir).expect("first").completed, 0);
        // A record added "in the same tick": the mtime is left as it was.
        std::fs::write(done.join("late.json"), "{}").expect("record");
        set(tick);
        std::thread::sleep(Duration::from_millis(400));
        assert_eq!(census.count(&dir).expect("later").completed, 1, "listed again: its first listing was fresh");
    }

    #[test]
    fn unchanged_old_directories_are_not_listed_again_and_changes_are_seen() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = session(&tmp);
        let t = Duration::from_secs(5);
        task::submit(&dir, (0..100).map(|i| new_task(&format!("t{i}"), 0, &[])).collect(), t).expect("submit");
        // Age every directory of the store past FRESH.
        let old = SystemTime::now() - Duration::from_secs(60);
        let mut stack = vec![dir.tasks_dir()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).expect("list") {
                let e = e.expect("entry");
                if e.file_type().expect("type").is_dir() {
                    stack.push(e.path());
                }
            }
            std::fs::File::open(&d).expect("open").set_modified(old).expect("age");
        }
        let mut census = Census::new();
        assert_eq!(census.count(&dir).expect("first").pending, 100);
        assert!(census.listed() > 5, "the first count lists every directory");
        assert_eq!(census.count(&dir).expect("second").pending, 100);
        assert_eq!(census.listed(), 0, "nothing changed: nothing listed");
        // A change makes its directories fresh again: seen at once.
        task::cancel(&dir, "t3", None, t).expect("cancel");
        let p = census.count(&dir).expect("third");
        assert_eq!((p.pending, p.cancelled, p.total), (99, 1, 100));
        assert!(census.listed() >= 2);
    }

    #[test]
    fn a_directory_changed_within_the_same_mtime_is_counted_again() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = session(&tmp);
        let done = dir.tasks_status_dir("done");
        std::fs::create_dir_all(&done).expect("mkdir");
        let pinned = SystemTime::now() - Duration::from_millis(500);
        std::fs::write(done.join("a.json"), "{}").expect("plant");
        std::fs::File::open(&done).expect("open").set_modified(pinned).expect("pin");
        let mut census = Census::new();
        assert_eq!(census.count(&dir).expect("first").completed, 1);
        // A second name, with the directory's mtime left as it was (a coarse clock).
        std::fs::write(done.join("b.json"), "{}").expect("plant");
        std::fs::File::open(&done).expect("open").set_modified(pinned).expect("pin");
        assert_eq!(census.count(&dir).expect("second").completed, 2, "a fresh mtime is not trusted");
    }

    #[test]
    fn names_are_checked_like_the_scan_checks_them() {
        assert_eq!(pending_seq("0000000000000042.t-1.json"), Some(42));
        assert_eq!(pending_seq("42.t.json"), None);
        assert_eq!(pending_seq("0000000000000042..x.json"), None);
        assert!(is_status_record("t-1.json"));
        assert!(!is_status_record("t 1.json"));
        assert!(!is_status_record("t-1"));
        assert!(is_priority_key(&index::priority_key(7)));
        assert!(!is_priority_key("+0000000000000000001"));
        assert_eq!(number("000000000012"), Some(12));
        assert_eq!(number("12"), None);
    }
}
