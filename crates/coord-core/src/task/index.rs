//! The pending index:
//! `tasks/pending/<route>/<priority-key>/<block>/<chunk>/<seq>.<id>.json`.
//!
//! A route is the pair (required agent type, required capabilities), so every task in a
//! route can be taken by exactly the same agents. The priority key sorts highest priority
//! first; chunks group 64 consecutive submission numbers and blocks 64 chunks. Finding
//! the best task of a route lists the route (a few priorities), the best priority (its
//! blocks: one per 4096 submissions), the first block (at most 64 chunks) and the first
//! chunk (at most 64 names). Listing a directory costs in proportion to its names (on
//! ext4, a hashed directory is read whole and sorted in the kernel), so the levels keep
//! every listing short: a claim lists about 150 names with 100,000 tasks pending. Empty
//! chunk, block and priority directories are removed by the claimer that empties them;
//! writers re-create them (and retry) as needed.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::layout::SessionDir;

/// Submission numbers per chunk directory.
pub const CHUNK: u64 = 64;

/// Submission numbers per block directory (64 chunks).
pub const BLOCK: u64 = CHUNK * 64;

/// The last submission number the index can name: its chunk must fit the chunk
/// directory's 12 digits (and so the number itself fits the record name's 16).
pub const MAX_SEQ: u64 = CHUNK * 1_000_000_000_000 - 1;

/// Separates the type from the capabilities in a route name; ids never contain it.
const ROUTE_SEP: char = '+';
/// Stands for "any type" in a route name.
const ANY_TYPE: &str = "~";
/// Longest route name (file names are at most 255 bytes).
const MAX_ROUTE_LEN: usize = 240;

/// The (type, capabilities) a task requires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Required agent type.
    pub agent_type: Option<String>,
    /// Required capabilities, sorted and deduplicated.
    pub capabilities: Vec<String>,
}

impl Route {
    /// The route of a task requiring `agent_type` and `capabilities`.
    pub fn new(agent_type: Option<&str>, capabilities: &[String]) -> Route {
        let mut caps = capabilities.to_vec();
        caps.sort();
        caps.dedup();
        Route { agent_type: agent_type.map(str::to_string), capabilities: caps }
    }

    /// The directory name, `<type or ~>+<cap>,<cap>`.
    pub fn dir_name(&self) -> Result<String> {
        let name =
            format!("{}{ROUTE_SEP}{}", self.agent_type.as_deref().unwrap_or(ANY_TYPE), self.capabilities.join(","));
        if name.len() > MAX_ROUTE_LEN {
            return Err(Error::Usage(format!(
                "the task's type and capabilities are too long together ({} bytes, at most {MAX_ROUTE_LEN})",
                name.len()
            )));
        }
        Ok(name)
    }

    /// Parses a route directory name. Only names [`Route::dir_name`] can give are routes.
    pub fn parse(name: &str) -> Option<Route> {
        if name.len() > MAX_ROUTE_LEN {
            return None;
        }
        let (t, caps) = name.split_once(ROUTE_SEP)?;
        let agent_type =
            if t == ANY_TYPE { None } else { Some(crate::id::validate("agent type", t).ok()?.to_string()) };
        let capabilities: Vec<String> =
            if caps.is_empty() { Vec::new() } else { caps.split(',').map(str::to_string).collect() };
        if capabilities.iter().any(|c| crate::id::validate("capability", c).is_err()) {
            return None;
        }
        Some(Route { agent_type, capabilities })
    }

    /// Whether an agent of `agent_type` with `capabilities` may take tasks of this route.
    pub fn admits(&self, agent_type: &str, capabilities: &[String]) -> bool {
        self.agent_type.as_deref().is_none_or(|t| t == agent_type)
            && self.capabilities.iter().all(|c| capabilities.contains(c))
    }
}

/// The priority directory name: sorts ascending as priority descends.
pub fn priority_key(priority: i64) -> String {
    let key = (i64::MAX as i128 - priority as i128) as u64;
    format!("{key:020}")
}

fn parse_priority_key(name: &str) -> Option<i64> {
    if name.len() != 20 || !name.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let key: u64 = name.parse().ok()?;
    i64::try_from(i64::MAX as i128 - key as i128).ok()
}

/// The path of a pending record, relative to `tasks/pending/`.
pub fn pending_rel(route: &Route, priority: i64, seq: u64, id: &str) -> Result<String> {
    if seq > MAX_SEQ {
        return Err(Error::Failed(format!(
            "task {id:?}: submission number {seq} is past the last one the pending index can name ({MAX_SEQ})"
        )));
    }
    Ok(format!("{}/{}/{}/{seq:016}.{id}.json", route.dir_name()?, priority_key(priority), block_and_chunk(seq)))
}

/// `<block>/<chunk>`, the directories of submission number `seq` under its priority.
fn block_and_chunk(seq: u64) -> String {
    format!("{:012}/{:012}", seq / BLOCK, seq / CHUNK)
}

/// Where a pending record filed by an earlier version (`<route>/<prio>/<seq / 512>/<name>`,
/// before blocks) is after the scan moved it; `None` for a path of the current shape.
pub fn refiled_rel(old: &str, seq: u64) -> Option<String> {
    let parts: Vec<&str> = old.split('/').collect();
    let [route, prio, _chunk, name] = parts.as_slice() else { return None };
    Some(format!("{route}/{prio}/{}/{name}", block_and_chunk(seq)))
}

/// One pending record found by a scan.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Entry {
    /// Sorts by priority key (highest priority first), then submission number.
    pub key: (String, u64),
    /// The task id.
    pub id: String,
    /// The record's path.
    pub path: PathBuf,
}

fn parse_entry(name: &str) -> Option<(u64, String)> {
    let stem = name.strip_suffix(".json")?;
    let (seq, id) = stem.split_once('.')?;
    if seq.len() != 16 || !seq.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let seq = seq.parse().ok()?;
    crate::id::validate("task", id).ok()?;
    Some((seq, id.to_string()))
}

/// Walks one route's pending records in order, listing one chunk at a time.
#[derive(Debug)]
pub struct RouteCursor {
    /// The route.
    pub route: Route,
    root: PathBuf,
    garbage: PathBuf,
    /// Priority keys still to walk, best last.
    priorities: Vec<String>,
    /// Blocks of the current priority still to walk (`<prio>/<block>`), first last.
    blocks: Vec<String>,
    /// Chunks of the current block still to walk (`<prio>/<block>/<chunk>`), first last.
    chunks: Vec<String>,
    entries: Vec<Entry>,
    next: usize,
}

/// Whether `name` is a 12-digit block or chunk number; the number.
fn parse_number(name: &str) -> Option<u64> {
    if name.len() != 12 || !name.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    name.parse().ok()
}

impl RouteCursor {
    fn new(dir: &SessionDir, route: Route, root: PathBuf) -> Result<RouteCursor> {
        let mut priorities = list_names(&root)?;
        priorities.retain(|p| {
            let ok = parse_priority_key(p).is_some();
            if !ok {
                set_aside(&dir.tasks_garbage_dir(), &root.join(p));
            }
            ok
        });
        priorities.sort_by(|a, b| b.cmp(a)); // popped from the end: smallest key first
        Ok(RouteCursor {
            route,
            root,
            garbage: dir.tasks_garbage_dir(),
            priorities,
            blocks: Vec::new(),
            chunks: Vec::new(),
            entries: Vec::new(),
            next: 0,
        })
    }

    /// The next record in order, without taking it.
    pub fn peek(&mut self) -> Result<Option<&Entry>> {
        while self.next >= self.entries.len() {
            if !self.load_next_chunk()? {
                return Ok(None);
            }
        }
        Ok(self.entries.get(self.next))
    }

    /// Moves past the current record.
    pub fn advance(&mut self) {
        self.next += 1;
    }

    /// Lists the directory `rel` (under the route) for its numbered subdirectories; names
    /// that are not numbers, or (with `within`) not numbers of the block `within` gives,
    /// are set aside. Returns them as `rel/<name>`, first last.
    fn list_numbered(&self, rel: &str, within: Option<u64>) -> Result<Vec<String>> {
        let dir = self.root.join(rel);
        let mut names = list_names(&dir)?;
        names.retain(|n| {
            let ok = parse_number(n).is_some_and(|k| within.is_none_or(|b| k * CHUNK / BLOCK == b));
            if ok {
                return true;
            }
            match (within.is_some(), parse_entry(n)) {
                // A record right under a block: the shape before blocks existed
                // (`<prio>/<seq / 512>/<record>`), from a session made by an earlier
                // version. Moved to where this version files it.
                (true, Some((seq, _))) => self.refile(&dir.join(n), rel, seq, n),
                _ => set_aside(&self.garbage, &dir.join(n)),
            }
            false
        });
        names.sort_by(|a, b| b.cmp(a)); // popped from the end: smallest first
        Ok(names.into_iter().map(|n| format!("{rel}/{n}")).collect())
    }

    fn load_next_chunk(&mut self) -> Result<bool> {
        loop {
            if self.chunks.is_empty() {
                if self.blocks.is_empty() {
                    let Some(prio) = self.priorities.pop() else { return Ok(false) };
                    self.blocks = self.list_numbered(&prio, None)?;
                    if self.blocks.is_empty() {
                        let _ = std::fs::remove_dir(self.root.join(&prio));
                        continue;
                    }
                }
                let Some(block) = self.blocks.pop() else { continue };
                let number = block.rsplit('/').next().and_then(parse_number);
                self.chunks = self.list_numbered(&block, number)?;
                if self.chunks.is_empty() {
                    // Another writer may be about to use it; it re-creates the directory.
                    self.remove_emptied(&block);
                    continue;
                }
            }
            let Some(chunk) = self.chunks.pop() else { continue };
            let cdir = self.root.join(&chunk);
            let prio = chunk.split('/').next().unwrap_or_default().to_string();
            let number = chunk.rsplit('/').next().and_then(parse_number);
            let mut entries = Vec::new();
            for name in list_names(&cdir)? {
                // A record filed in another chunk than its number's would be taken out of order.
                match parse_entry(&name).filter(|(seq, _)| Some(seq / CHUNK) == number) {
                    Some((seq, id)) => entries.push(Entry { key: (prio.clone(), seq), id, path: cdir.join(&name) }),
                    None => set_aside(&self.garbage, &cdir.join(&name)),
                }
            }
            if entries.is_empty() {
                self.remove_emptied(&chunk);
                continue;
            }
            entries.sort();
            self.entries = entries;
            self.next = 0;
            return Ok(true);
        }
    }

    /// Moves the pending record `path` (named `name`, of priority directory `rel`'s first
    /// component) to its place in this version's index. A rename: if a claimer takes the
    /// record first, the move finds it gone, and the other way round the claimer does;
    /// either way the record is in exactly one place. Found again by the next walk.
    fn refile(&self, path: &Path, rel: &str, seq: u64, name: &str) {
        let prio = rel.split('/').next().unwrap_or_default();
        let to = self.root.join(format!("{prio}/{}/{name}", block_and_chunk(seq)));
        match crate::fsio::rename_noclobber(path, &to) {
            Ok(true) => log::info!("moved {} to {} (the index's current shape)", path.display(), to.display()),
            Ok(false) => set_aside(&self.garbage, path),
            Err(e) if crate::fsio::is_not_found(&e) => {}
            Err(e) => log::warn!("could not move {} to {}: {e}", path.display(), to.display()),
        }
    }

    /// Removes the emptied directory `rel` and, when this walk has nothing left in them,
    /// its block and priority directories. Only empty directories are ever removed; a
    /// writer that finds one gone re-creates it.
    fn remove_emptied(&self, rel: &str) {
        let _ = std::fs::remove_dir(self.root.join(rel));
        let mut parts: Vec<&str> = rel.split('/').collect();
        while parts.len() > 1 {
            parts.pop();
            let level_done = match parts.len() {
                2 => self.chunks.is_empty(),
                _ => self.chunks.is_empty() && self.blocks.is_empty(),
            };
            if !level_done || std::fs::remove_dir(self.root.join(parts.join("/"))).is_err() {
                return;
            }
        }
    }
}

/// A merged walk over several routes, in global order (priority, then submission).
#[derive(Debug)]
pub struct PendingScan {
    cursors: Vec<RouteCursor>,
}

impl PendingScan {
    /// Opens a walk over every route for which `admit` says yes.
    pub fn open(dir: &SessionDir, mut admit: impl FnMut(&Route) -> bool) -> Result<PendingScan> {
        let root = dir.tasks_pending_dir();
        let mut cursors = Vec::new();
        for name in list_names(&root)? {
            let Some(route) = Route::parse(&name) else {
                set_aside(&dir.tasks_garbage_dir(), &root.join(&name));
                continue;
            };
            if admit(&route) {
                cursors.push(RouteCursor::new(dir, route, root.join(&name))?);
            }
        }
        Ok(PendingScan { cursors })
    }

    /// The next record in global order and the index of its route cursor.
    pub fn peek(&mut self) -> Result<Option<(usize, Entry)>> {
        let mut best: Option<(usize, Entry)> = None;
        for (i, c) in self.cursors.iter_mut().enumerate() {
            if let Some(e) = c.peek()?
                && best.as_ref().is_none_or(|(_, b)| e.key < b.key)
            {
                best = Some((i, e.clone()));
            }
        }
        Ok(best)
    }

    /// Moves the cursor `i` past its current record.
    pub fn advance(&mut self, i: usize) {
        if let Some(c) = self.cursors.get_mut(i) {
            c.advance();
        }
    }

    /// Drops the cursor `i` (its route needs no more looking at in this walk).
    pub fn skip_route(&mut self, i: usize) {
        if let Some(c) = self.cursors.get_mut(i) {
            c.priorities.clear();
            c.blocks.clear();
            c.chunks.clear();
            c.entries.clear();
            c.next = 0;
        }
    }

    /// The route of cursor `i`.
    pub fn route(&self, i: usize) -> Option<&Route> {
        self.cursors.get(i).map(|c| &c.route)
    }
}

/// Visible names in `dir` (dotfiles are writers' temporaries); a missing dir is empty.
pub fn list_names(dir: &Path) -> Result<Vec<String>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("list", dir, e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("list", dir, e))?;
        match entry.file_name().into_string() {
            Ok(n) if n.starts_with('.') => {}
            Ok(n) => names.push(n),
            Err(_) => log::warn!("ignoring a non-UTF-8 name in {}", dir.display()),
        }
    }
    Ok(names)
}

/// Moves a file that is not a task record out of the store, with a warning. The queue
/// keeps going whatever happens here. Never replaces anything already set aside: two
/// names moved in the same millisecond get distinct names.
pub fn set_aside(garbage: &Path, path: &Path) {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let stamp = format!("{}.{}", crate::time::unix_ms(std::time::SystemTime::now()), std::process::id());
    for n in 0..100u32 {
        let target = garbage.join(if n == 0 { format!("{stamp}.{name}") } else { format!("{stamp}-{n}.{name}") });
        match crate::fsio::rename_noclobber(path, &target) {
            Ok(true) => {
                log::warn!("moved {} aside to {}: it is not a task record", path.display(), target.display());
                return;
            }
            Ok(false) => {}
            Err(e) if crate::fsio::is_not_found(&e) => return,
            Err(e) => {
                log::warn!("{} is not a task record and could not be moved aside: {e}", path.display());
                return;
            }
        }
    }
    log::warn!(
        "{} is not a task record and could not be moved aside: no free name in {}",
        path.display(),
        garbage.display()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priority_keys_sort_highest_first_and_round_trip() {
        let ps = [i64::MIN, -5, 0, 1, 7, i64::MAX];
        let mut keys: Vec<String> = ps.iter().map(|&p| priority_key(p)).collect();
        for (p, k) in ps.iter().zip(&keys) {
            assert_eq!(parse_priority_key(k), Some(*p));
        }
        keys.sort();
        let back: Vec<i64> = keys.iter().filter_map(|k| parse_priority_key(k)).collect();
        assert_eq!(back, vec![i64::MAX, 7, 1, 0, -5, i64::MIN]);
    }

    #[test]
    fn routes_round_trip_and_admit() {
        let r = Route::new(Some("worker"), &["gpu".into(), "a.b".into(), "gpu".into()]);
        let name = r.dir_name().expect("name");
        assert_eq!(name, "worker+a.b,gpu");
        assert_eq!(Route::parse(&name), Some(r.clone()));
        assert!(r.admits("worker", &["gpu".into(), "a.b".into(), "x".into()]));
        assert!(!r.admits("worker", &["gpu".into()]));
        assert!(!r.admits("other", &["gpu".into(), "a.b".into()]));
        let any = Route::new(None, &[]);
        assert_eq!(any.dir_name().expect("name"), "~+");
        assert!(any.admits("x", &[]));
        assert_eq!(Route::parse("junk"), None);
        assert_eq!(Route::parse("w+bad/cap"), None);
    }

    #[test]
    fn entries_parse_strictly() {
        assert_eq!(parse_entry("0000000000000042.t-1.json"), Some((42, "t-1".into())));
        assert_eq!(parse_entry("42.t.json"), None);
        assert_eq!(parse_entry("0000000000000042.t"), None);
        assert_eq!(parse_entry("0000000000000042..x.json"), None);
        assert_eq!(parse_entry("+000000000000042.t.json"), None);
        assert_eq!(parse_priority_key("+0000000000000000001"), None);
        assert_eq!(Route::parse(&format!("w+{}", "c".repeat(MAX_ROUTE_LEN))), None);
    }

    #[test]
    fn setting_aside_never_replaces_what_was_set_aside() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let garbage = tmp.path().join("garbage");
        for (i, dir) in ["a", "b", "c"].iter().enumerate() {
            let p = tmp.path().join(dir).join("same-name");
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(&p, i.to_string()).expect("plant");
            set_aside(&garbage, &p);
            assert!(!p.exists(), "{} was left in place", p.display());
        }
        let mut kept: Vec<String> = list_names(&garbage)
            .expect("garbage")
            .iter()
            .map(|n| std::fs::read_to_string(garbage.join(n)).expect("read"))
            .collect();
        kept.sort();
        assert_eq!(kept, ["0", "1", "2"]);
    }

    #[test]
    fn records_in_the_shape_of_earlier_versions_are_refiled_and_taken_in_order() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = crate::session::init(&crate::layout::Base::new(tmp.path().join("base")), "t").expect("init");
        let key = priority_key(0);
        // Before blocks: `<prio>/<seq / 512>/<seq>.<id>.json`.
        for (seq, id) in [(700u64, "late"), (3, "early"), (600, "mid")] {
            let path = dir.tasks_pending_dir().join(format!("~+/{key}/{:012}/{seq:016}.{id}.json", seq / 512));
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(&path, "{}").expect("plant");
        }
        let walk = || {
            let mut scan = PendingScan::open(&dir, |_| true).expect("open");
            let mut ids = Vec::new();
            while let Some((i, e)) = scan.peek().expect("peek") {
                ids.push(e.id);
                scan.advance(i);
            }
            ids
        };
        // The first walk moves them (and may not see those moved into blocks it listed
        // before); from then on they are where this version files them, in order.
        walk();
        assert_eq!(walk(), ["early", "mid", "late"]);
        assert!(list_names(&dir.tasks_garbage_dir()).expect("garbage").is_empty(), "nothing set aside");
        let moved =
            dir.tasks_pending_dir().join(format!("~+/{key}/000000000000/000000000009/0000000000000600.mid.json"));
        assert!(moved.exists(), "{} missing", moved.display());
        // What a locator written by an earlier version says, and where the record is now.
        let old = format!("~+/{key}/000000000001/0000000000000600.mid.json");
        assert_eq!(
            refiled_rel(&old, 600),
            Some(format!("~+/{key}/000000000000/000000000009/0000000000000600.mid.json"))
        );
        assert_eq!(refiled_rel(&format!("~+/{key}/000000000000/000000000009/0000000000000600.mid.json"), 600), None);
    }

    #[test]
    fn the_scan_takes_only_records_filed_where_pending_rel_puts_them() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = crate::session::init(&crate::layout::Base::new(tmp.path().join("base")), "t").expect("init");
        let route = Route::new(None, &[]);
        let good = pending_rel(&route, 0, 600, "good").expect("name");
        let key = priority_key(0);
        assert_eq!(good, format!("~+/{key}/000000000000/000000000009/0000000000000600.good.json"));
        let misfiled = format!("~+/{key}/000000000000/000000000000/0000000000000601.misfiled.json");
        let wrong_block = format!("~+/{key}/000000000001/000000000009/0000000000000603.block.json");
        let plus = format!("~+/+{}/000000000000/000000000009/0000000000000602.plus.json", &key[1..]);
        for rel in [&good, &misfiled, &wrong_block, &plus] {
            let path = dir.tasks_pending_dir().join(rel);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(&path, "{}").expect("plant");
        }
        let mut scan = PendingScan::open(&dir, |_| true).expect("open");
        let mut ids = Vec::new();
        while let Some((i, e)) = scan.peek().expect("peek") {
            ids.push(e.id);
            scan.advance(i);
        }
        assert_eq!(ids, ["good"]);
        assert_eq!(list_names(&dir.tasks_garbage_dir()).expect("garbage").len(), 3);
    }
}
