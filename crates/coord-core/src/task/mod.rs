//! The task queue (`taskd`): per-task record files whose status changes are renames.
//!
//! ```text
//! tasks/ids/<id>.json        immutable locator written once at submit; reserves the id;
//!                            its flock serializes the task's transitions
//! tasks/pending/<route>/<priority-key>/<chunk>/<seq>.<id>.json   ready to claim (indexed)
//! tasks/blocked/<id>.json    waiting for dependencies
//! tasks/claimed/<id>.json    held by an agent under a lease
//! tasks/done/<id>.json       completed        tasks/failed/<id>.json   failed for good
//! tasks/cancelled/<id>.json  cancelled
//! tasks/dependents/<id>/<child>  who waits for <id>
//! tasks/finishing/<id>       a final status's follow-up is owed (a hard link to the
//!                            locator: marking allocates no inode)
//! ```
//!
//! A transition takes the task's lock, renames the record into its new status directory
//! (the atomic status change), then rewrites the record in place with the new fields.
//! A transition to a final status publishes its content first ([`publish_final`]): it
//! marks the follow-up owed, replaces the record in place with the final content, then
//! renames it, and runs the follow-up under the lock; a pass finishes what a killed
//! process left ([`finish_interrupted`]).
//! Claimers take the lock with a non-blocking try and move on to the next candidate when
//! another process has it, so exactly one claimer wins and nobody waits. Completion and
//! failure check the claim token (or agent) under the same lock, so a holder whose claim
//! was requeued or taken over is refused ("claim lost") and changes nothing.
//!
//! For other tools: [`requeue_agent`] and [`requeue_expired`] (healthmon), [`list_all`]
//! and [`Task`] (aggregate).

pub mod assign;
pub mod bell;
pub mod index;
pub mod record;
pub mod work;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::error::{Error, IoContext, Result};
use crate::fsio;
use crate::id;
use crate::layout::{SessionDir, ToolLock};
use crate::lock::{self, LockGuard};
use crate::record::{Agent, status as agent_status};
use crate::registry;
use crate::time;

pub use index::Route;
pub use record::{DEFAULT_MAX_ATTEMPTS, NewTask, Status, Task, TaskError};

/// The lease of a claim when none is given: the holder's heartbeat renews it.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(300);

/// The sender name of messages taskd sends (`task_assignment`, `preempt`).
pub const COORDINATOR: &str = "coordinator";

const STORE_DIRS: &[&str] = &[
    "tasks/ids",
    "tasks/pending",
    "tasks/blocked",
    "tasks/claimed",
    "tasks/done",
    "tasks/failed",
    "tasks/cancelled",
    "tasks/dependents",
];

/// The immutable locator of a task, `tasks/ids/<id>.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Locator {
    id: String,
    seq: u64,
    /// Path of the pending record relative to `tasks/pending/`.
    pending: String,
}

/// Who claims to hold a task. With neither field set, the current claim is trusted.
#[derive(Debug, Clone, Default)]
pub struct Holder {
    /// The agent that claimed it.
    pub agent: Option<String>,
    /// The claim token printed by the claim.
    pub token: Option<String>,
}

impl Holder {
    fn matches(&self, t: &Task) -> bool {
        self.agent.as_ref().is_none_or(|a| t.assigned_to.as_ref() == Some(a))
            && self.token.as_ref().is_none_or(|k| t.claim_token.as_ref() == Some(k))
    }

    fn describe(&self) -> String {
        match (&self.agent, &self.token) {
            (Some(a), Some(k)) => format!("agent {a:?} with token {k}"),
            (Some(a), None) => format!("agent {a:?}"),
            (None, Some(k)) => format!("token {k}"),
            (None, None) => "the caller".to_string(),
        }
    }
}

/// How a claim is made.
#[derive(Debug, Clone)]
pub struct ClaimOptions {
    /// Lease length.
    pub lease: Duration,
    /// `Some("coordinator")` for a pushed assignment.
    pub assigned_by: Option<String>,
}

impl Default for ClaimOptions {
    fn default() -> Self {
        ClaimOptions { lease: DEFAULT_LEASE, assigned_by: None }
    }
}

/// What a requeue did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RequeueReport {
    /// Tasks returned to the queue.
    pub requeued: usize,
    /// Tasks that had no attempts left and failed for good.
    pub failed: usize,
    /// The ids touched.
    pub tasks: Vec<String>,
}

/// Task counts by status, and the seed's `operation_progress`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Progress {
    /// All tasks.
    pub total: usize,
    /// Waiting for dependencies.
    pub blocked: usize,
    /// Ready to claim.
    pub pending: usize,
    /// Held by agents.
    pub claimed: usize,
    /// Completed.
    pub completed: usize,
    /// Failed for good.
    pub failed: usize,
    /// Cancelled.
    pub cancelled: usize,
    /// `round(completed / total * 100)`, 0 with no tasks.
    pub operation_progress: u64,
}

// ---------------------------------------------------------------------------------------
// Paths, locks, small helpers

fn ensure_store(dir: &SessionDir) -> Result<()> {
    // The directories are created in order and never removed: when the last exists, all do.
    if STORE_DIRS.last().is_some_and(|d| dir.root().join(d).is_dir()) {
        return Ok(());
    }
    for d in STORE_DIRS {
        fsio::ensure_dir(&dir.root().join(d))?;
    }
    Ok(())
}

fn status_file(dir: &SessionDir, s: Status, id: &str) -> PathBuf {
    dir.task_file(s.dir_name(), id)
}

/// Takes the task's lock: the flock of its locator, which exists from submit on and is
/// never replaced, so no lock file is created or removed per task.
fn task_lock(dir: &SessionDir, id: &str, timeout: Duration) -> Result<LockGuard> {
    match lock::acquire_existing(&format!("task {id}"), &dir.task_id_file(id), timeout) {
        Err(e) if fsio::is_not_found(&e) => Err(unknown_task(dir, id)),
        other => other,
    }
}

/// Takes the task's lock if it is free right now (see [`task_lock`]); `Ok(None)` when
/// another process holds it or the task has no locator.
fn try_task_lock(dir: &SessionDir, id: &str) -> Result<Option<LockGuard>> {
    match lock::try_acquire_existing(&dir.task_id_file(id)) {
        Err(e) if fsio::is_not_found(&e) => Ok(None),
        other => other,
    }
}

/// `tasks/finishing/<id>`: present from before a task's final record is published until
/// its follow-up ([`after_final`]) has run; [`finish_interrupted`] finishes what a killed
/// process left.
fn finishing_file(dir: &SessionDir, id: &str) -> PathBuf {
    dir.tasks_status_dir("finishing").join(id)
}

/// Under the task's lock, publishes `t` (its status already final) from `from`: marks the
/// follow-up as owed, replaces the record in place with its final content, then renames
/// it into the final directory. A process killed at any point leaves either the old
/// record, or the final content in the old or the new directory, and the mark, so the
/// final fields are never lost and the follow-up is finished later. `Ok(false)` when the
/// record is gone.
fn publish_final(dir: &SessionDir, t: &Task, from: &Path) -> Result<bool> {
    let mark = finishing_file(dir, &t.id);
    let locator = dir.task_id_file(&t.id);
    let linked = match std::fs::hard_link(&locator, &mark) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fsio::ensure_dir(&dir.tasks_status_dir("finishing"))?;
            std::fs::hard_link(&locator, &mark)
        }
        other => other,
    };
    match linked {
        // Left by an interrupted earlier attempt: the mark is already there.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        other => other.ctx("mark as finishing", &mark)?,
    }
    fsio::sync_parent(&mark)?;
    let Some(s) = t.state().filter(|s| s.is_final()) else {
        return Err(Error::Failed(format!("task {:?}: {:?} is not a final status", t.id, t.status)));
    };
    rewrite_record(dir, from, t)?;
    rename_existing(from, &status_file(dir, s, &t.id))
}

/// The follow-up of a published final record, still under the task's lock; then the mark
/// and the lock go. `again` when an interrupted follow-up is being run again.
fn finish_final(
    dir: &SessionDir,
    t: &Task,
    guard: LockGuard,
    unassign: Unassign,
    again: bool,
    timeout: Duration,
) -> Result<()> {
    after_final(dir, t, unassign, again, timeout)?;
    let _ = std::fs::remove_file(finishing_file(dir, &t.id));
    drop(guard);
    Ok(())
}

/// Under the task's lock, finishes a transition to a final status that a killed process
/// left half done: moves a final record still in its old directory, then runs the
/// follow-up again. Gives the guard back when the task is live (nothing to finish).
fn finish_one(dir: &SessionDir, id: &str, guard: LockGuard, timeout: Duration) -> Result<Option<LockGuard>> {
    let mark = finishing_file(dir, id);
    if !mark.exists() {
        if dep_status(dir, id).is_some() {
            return Ok(None);
        }
        return Ok(Some(guard));
    }
    let t = match locate(dir, id)? {
        Some((s, path)) if s.is_final() => read_record(&path, s)?,
        Some((_, path)) => {
            // Still in its old directory: the status field says whether the final content
            // was written (the transition is under way) or not.
            let t: Task = fsio::read_json(&path)?;
            match t.state().filter(|f| f.is_final() && t.id == id) {
                Some(f) => {
                    if !rename_existing(&path, &status_file(dir, f, id))? {
                        return Ok(Some(guard));
                    }
                    t
                }
                None => {
                    // The final content was never written: the transition did not happen.
                    let _ = std::fs::remove_file(&mark);
                    return Ok(Some(guard));
                }
            }
        }
        None => {
            let _ = std::fs::remove_file(&mark);
            return Ok(Some(guard));
        }
    };
    finish_final(dir, &t, guard, Unassign::Now, true, timeout)?;
    Ok(None)
}

/// Finishes every transition to a final status whose process was killed before its
/// follow-up ran (dependents released or failed, results appended, waiters woken). A
/// task whose lock is busy is being finished by a live process and is left to it. Costs
/// one listing of `tasks/finishing/` when nothing was interrupted.
fn finish_interrupted(dir: &SessionDir, timeout: Duration) {
    let names = match index::list_names(&dir.tasks_status_dir("finishing")) {
        Ok(n) => n,
        Err(e) => {
            log::warn!("{e}");
            return;
        }
    };
    for name in names {
        if id::validate("task", &name).is_err() {
            index::set_aside(&dir.tasks_garbage_dir(), &dir.tasks_status_dir("finishing").join(&name));
            continue;
        }
        let r = try_task_lock(dir, &name).and_then(|g| match g {
            Some(g) => finish_one(dir, &name, g, timeout).map(drop),
            None => Ok(()),
        });
        if let Err(e) = r {
            log::warn!("task {name:?}: could not finish its interrupted transition: {e}");
        }
    }
}

/// Renames `from` to `to`, creating `to`'s directory if a claimer just removed it.
/// `Ok(false)` when `from` is gone (another process moved it first).
fn rename_existing(from: &Path, to: &Path) -> Result<bool> {
    for _ in 0..16 {
        match std::fs::rename(from, to) {
            Ok(()) => {
                fsio::sync_parent(to)?;
                return Ok(true);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if std::fs::symlink_metadata(from).is_err() {
                    return Ok(false);
                }
                if let Some(parent) = to.parent() {
                    fsio::ensure_dir(parent)?;
                }
            }
            Err(e) => return Err(Error::io("rename", from, e)),
        }
    }
    Err(Error::Failed(format!(
        "could not move {} to {}: its directory keeps disappearing",
        from.display(),
        to.display()
    )))
}

/// Writes a record where a concurrent claimer may remove empty directories.
fn write_record(path: &Path, t: &Task) -> Result<()> {
    for _ in 0..16 {
        match fsio::write_json(path, t) {
            Err(e) if fsio::is_not_found(&e) => {
                if let Some(parent) = path.parent() {
                    fsio::ensure_dir(parent)?;
                }
            }
            other => return other,
        }
    }
    Err(Error::Failed(format!("could not write {}: its directory keeps disappearing", path.display())))
}

/// Replaces the record of a task that was just renamed to `path` with its new fields
/// (an exchange, not a replacing rename: see [`fsio::replace_atomic`]).
fn rewrite_record(dir: &SessionDir, path: &Path, t: &Task) -> Result<()> {
    fsio::replace_atomic_via(&dir.spread_tmp_dir(), path, &fsio::to_json_bytes(t))
}

fn new_token() -> String {
    use std::io::Read;
    let mut b = [0u8; 8];
    // SAFETY: getrandom writes at most `b.len()` bytes into the valid buffer `b`.
    let got = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), libc::GRND_NONBLOCK) };
    let random = usize::try_from(got).is_ok_and(|n| n == b.len())
        || std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b)).is_ok();
    if !random {
        let n = time::unix_ms(SystemTime::now()) ^ (u64::from(std::process::id()) << 40);
        b = n.to_le_bytes();
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unknown_task(dir: &SessionDir, id: &str) -> Error {
    Error::Failed(format!("no task {id:?} in session {:?}", dir.id()))
}

fn read_locator(dir: &SessionDir, id: &str) -> Result<Option<Locator>> {
    fsio::read_json_opt(&dir.task_id_file(id))
}

fn pending_path(dir: &SessionDir, t: &Task) -> Result<PathBuf> {
    let route = Route::new(t.agent_type.as_deref(), &t.capabilities);
    Ok(dir.tasks_pending_dir().join(index::pending_rel(&route, t.priority, t.seq, &t.id)?))
}

/// Where a task's record is now. Retries briefly when the task is between directories.
fn locate(dir: &SessionDir, id: &str) -> Result<Option<(Status, PathBuf)>> {
    let Some(loc) = read_locator(dir, id)? else { return Ok(None) };
    for _ in 0..50 {
        for s in [Status::Claimed, Status::Blocked, Status::Completed, Status::Failed, Status::Cancelled] {
            let p = status_file(dir, s, id);
            if p.exists() {
                return Ok(Some((s, p)));
            }
        }
        for rel in [Some(loc.pending.clone()), index::refiled_rel(&loc.pending, loc.seq)].into_iter().flatten() {
            let p = dir.tasks_pending_dir().join(rel);
            if p.exists() {
                return Ok(Some((Status::Pending, p)));
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(None)
}

fn read_record(path: &Path, s: Status) -> Result<Task> {
    let mut t: Task = fsio::read_json(path)?;
    // Paths are built from the id: it must be valid and the one the file is named for.
    let stem = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".json"));
    let named = if s == Status::Pending { stem.and_then(|n| n.split_once('.')).map(|(_, i)| i) } else { stem };
    if id::validate("task", &t.id).is_err() || named != Some(t.id.as_str()) {
        return Err(Error::Malformed {
            path: path.to_path_buf(),
            line: 1,
            column: 1,
            message: format!("the record's id {:?} is not a valid task id matching its file name", t.id),
        });
    }
    if !(s == Status::Claimed && t.status == "assigned") {
        t.status = s.name().to_string();
    }
    Ok(t)
}

/// One task's record, wherever it is.
pub fn show(dir: &SessionDir, id: &str) -> Result<Task> {
    id::validate("task", id)?;
    for _ in 0..5 {
        let Some((s, p)) = locate(dir, id)? else { break };
        match read_record(&p, s) {
            Err(e) if fsio::is_not_found(&e) => continue,
            other => return other,
        }
    }
    if read_locator(dir, id)?.is_some() {
        return Err(Error::Failed(format!(
            "task {id:?} has an id but no record (its submission was interrupted, or its record was set aside as garbage)"
        )));
    }
    Err(unknown_task(dir, id))
}

fn dep_status(dir: &SessionDir, id: &str) -> Option<Status> {
    [Status::Completed, Status::Failed, Status::Cancelled].into_iter().find(|s| status_file(dir, *s, id).exists())
}

// ---------------------------------------------------------------------------------------
// Submit

/// Submits tasks (one, or a batch). The batch is checked whole before anything is
/// written: invalid fields, duplicate ids, unknown dependencies and cycles are usage
/// errors (exit 2); an id that already exists fails (exit 1).
pub fn submit(dir: &SessionDir, new: Vec<NewTask>, timeout: Duration) -> Result<Vec<Task>> {
    ensure_store(dir)?;
    let mut batch_ids = HashSet::new();
    for (n, t) in new.iter().enumerate() {
        let at = || if new.len() > 1 { format!(" (task {} of the batch)", n + 1) } else { String::new() };
        if let Some(i) = &t.id {
            id::validate("task", i)?;
            if !batch_ids.insert(i.clone()) {
                return Err(Error::Usage(format!("task id {i:?} appears twice in the batch")));
            }
        }
        if let Some(ty) = &t.agent_type {
            id::validate("agent type", ty)?;
        }
        for c in &t.capabilities {
            id::validate("capability", c)?;
        }
        for d in &t.dependencies {
            id::validate("task", d)?;
        }
        if t.max_attempts == Some(0) {
            return Err(Error::Usage(format!("max_attempts must be at least 1{}", at())));
        }
        Route::new(t.agent_type.as_deref(), &t.capabilities).dir_name()?;
    }
    for t in &new {
        for d in &t.dependencies {
            if !batch_ids.contains(d) && read_locator(dir, d)?.is_none() {
                let who = t.id.as_deref().unwrap_or("the new task");
                return Err(Error::Usage(format!("task {who:?} depends on unknown task {d:?}; submit {d:?} first")));
            }
        }
    }
    let order = topological_order(&new)?;
    for i in &batch_ids {
        if read_locator(dir, i)?.is_some() {
            return Err(Error::Failed(format!("task {i:?} already exists; nothing was submitted")));
        }
    }
    let first_seq = allocate_seqs(dir, new.len() as u64, timeout)?;
    let now = time::now_rfc3339();
    let mut out = Vec::with_capacity(new.len());
    let mut any_pending = false;
    for (k, &i) in order.iter().enumerate() {
        let n = &new[i];
        let seq = first_seq + k as u64;
        let id = n.id.clone().unwrap_or_else(|| format!("task-{seq}-{}", &new_token()[..6]));
        let mut caps = n.capabilities.clone();
        caps.sort();
        caps.dedup();
        let mut t = Task {
            id: id.clone(),
            status: Status::Pending.name().to_string(),
            agent_type: n.agent_type.clone(),
            capabilities: caps,
            priority: n.priority,
            payload: n.payload.clone(),
            dependencies: n.dependencies.clone(),
            attempts: 0,
            max_attempts: n.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS),
            created_at: now.clone(),
            seq,
            assigned_to: None,
            assigned_at: None,
            assigned_by: None,
            claim_token: None,
            lease_seconds: None,
            lease_expires_at: None,
            preempt_requested_at: None,
            completed_at: None,
            results: None,
            failed_at: None,
            reason: None,
            errors: Vec::new(),
            extra: Default::default(),
        };
        let route = Route::new(t.agent_type.as_deref(), &t.capabilities);
        let rel = index::pending_rel(&route, t.priority, seq, &id)?;
        let loc = Locator { id: id.clone(), seq, pending: rel.clone() };
        if !fsio::create_atomic(&dir.task_id_file(&id), &fsio::to_json_bytes(&loc))? {
            return Err(Error::Failed(format!(
                "task {id:?} already exists (submitted concurrently); the {} task(s) before it in this batch were submitted",
                out.len()
            )));
        }
        if t.dependencies.is_empty() {
            write_record(&dir.tasks_pending_dir().join(&rel), &t)?;
            any_pending = true;
        } else {
            for d in &t.dependencies {
                let ddir = dir.task_dependents_dir(d);
                fsio::ensure_dir(&ddir)?;
                std::fs::File::create(ddir.join(&id)).ctx("create", &ddir.join(&id))?;
            }
            t.status = Status::Blocked.name().to_string();
            write_record(&status_file(dir, Status::Blocked, &id), &t)?;
            // A dependency may have finished before our dependents entry existed.
            let mut cascade = Vec::new();
            if let Some(s) = recheck_blocked(dir, &id, timeout)? {
                if s == Status::Pending {
                    any_pending = true;
                } else {
                    cascade.push(id.clone());
                }
                t = show(dir, &id)?;
            }
            cascade_failures(dir, cascade, timeout)?;
        }
        out.push(t);
    }
    if any_pending {
        bell::ring(&dir.task_pending_bell());
    }
    Ok(out)
}

/// Parses `taskd submit --batch` input: one [`NewTask`] JSON object per line, blank lines
/// skipped. The first line that is not a valid task is a usage error naming the line.
pub fn parse_batch(input: impl std::io::BufRead) -> Result<Vec<NewTask>> {
    let mut out = Vec::new();
    for (n, line) in input.lines().enumerate() {
        let line = line.map_err(|e| Error::io("read", "stdin", e))?;
        if line.trim().is_empty() {
            continue;
        }
        let t: NewTask = serde_json::from_str(&line).map_err(|e| {
            Error::Usage(format!("stdin line {}: not a valid task ({e}); nothing was submitted", n + 1))
        })?;
        out.push(t);
    }
    Ok(out)
}

/// Batch order with dependencies first (of the tasks whose dependencies are placed, the
/// earliest in the batch goes next, so a batch already in dependency order keeps its
/// order and its `seq`s follow the lines); a cycle is a usage error naming its members.
fn topological_order(new: &[NewTask]) -> Result<Vec<usize>> {
    let pos: HashMap<&str, usize> =
        new.iter().enumerate().filter_map(|(i, t)| t.id.as_deref().map(|s| (s, i))).collect();
    let mut indegree = vec![0usize; new.len()];
    let mut children: Vec<Vec<usize>> = vec![Vec::new(); new.len()];
    for (i, t) in new.iter().enumerate() {
        for d in &t.dependencies {
            if let Some(&j) = pos.get(d.as_str()) {
                indegree[i] += 1;
                children[j].push(i);
            }
        }
    }
    let mut ready: BinaryHeap<Reverse<usize>> = (0..new.len()).filter(|&i| indegree[i] == 0).map(Reverse).collect();
    let mut order = Vec::with_capacity(new.len());
    while let Some(Reverse(i)) = ready.pop() {
        order.push(i);
        for &c in &children[i] {
            indegree[c] -= 1;
            if indegree[c] == 0 {
                ready.push(Reverse(c));
            }
        }
    }
    if order.len() < new.len() {
        let mut members: Vec<&str> =
            (0..new.len()).filter(|&i| indegree[i] > 0).filter_map(|i| new[i].id.as_deref()).collect();
        members.sort();
        return Err(Error::Usage(format!(
            "dependency cycle among tasks {}; nothing was submitted",
            members.iter().map(|m| format!("{m:?}")).collect::<Vec<_>>().join(", ")
        )));
    }
    Ok(order)
}

fn allocate_seqs(dir: &SessionDir, n: u64, timeout: Duration) -> Result<u64> {
    let _g = dir.tool_lock(ToolLock::TaskSeq, timeout)?;
    let path = dir.task_seq_file();
    let next: u64 = match std::fs::read_to_string(&path) {
        Ok(s) => s.trim().parse().map_err(|_| {
            Error::Failed(format!("{} does not hold a number ({s:?}); fix or remove it", path.display()))
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 1,
        Err(e) => return Err(Error::io("read", &path, e)),
    };
    let end = next.checked_add(n).filter(|&end| end <= index::MAX_SEQ + 1).ok_or_else(|| {
        Error::Failed(format!(
            "{} is at {next}: {n} more task(s) would pass the last submission number, {}",
            path.display(),
            index::MAX_SEQ
        ))
    })?;
    fsio::write_atomic(&path, format!("{end}\n").as_bytes())?;
    Ok(next)
}

/// Under the child's lock: a blocked task whose dependencies all completed becomes
/// pending; one with a failed or cancelled dependency fails. Returns the new status.
fn recheck_blocked(dir: &SessionDir, id: &str, timeout: Duration) -> Result<Option<Status>> {
    let guard = task_lock(dir, id, timeout)?;
    let path = status_file(dir, Status::Blocked, id);
    let mut t = match read_record(&path, Status::Blocked) {
        Ok(t) => t,
        Err(e) if fsio::is_not_found(&e) => return Ok(None),
        Err(e @ Error::Malformed { .. }) => {
            log::warn!("{e}");
            index::set_aside(&dir.tasks_garbage_dir(), &path);
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    let mut all_done = true;
    for d in &t.dependencies {
        match dep_status(dir, d) {
            Some(Status::Completed) => {}
            Some(s) => {
                t.status = Status::Failed.name().to_string();
                t.failed_at = Some(time::now_rfc3339());
                t.reason = Some(format!("dependency failed: task {d:?} is {}", s.name()));
                // Its mark goes once cascade_failures, which every caller runs, is done.
                publish_final(dir, &t, &path)?;
                drop(guard);
                bell::ring(&dir.task_finished_bell());
                return Ok(Some(Status::Failed));
            }
            None => all_done = false,
        }
    }
    if !all_done {
        return Ok(None);
    }
    t.status = Status::Pending.name().to_string();
    let dest = pending_path(dir, &t)?;
    if rename_existing(&path, &dest)? {
        rewrite_record(dir, &dest, &t)?;
    }
    drop(guard);
    bell::ring(&dir.task_pending_bell());
    Ok(Some(Status::Pending))
}

/// Releases or fails the dependents of tasks that just reached a final status.
fn cascade_failures(dir: &SessionDir, mut finished: Vec<String>, timeout: Duration) -> Result<()> {
    while let Some(id) = finished.pop() {
        for child in index::list_names(&dir.task_dependents_dir(&id))? {
            if id::validate("task", &child).is_err() {
                continue;
            }
            if let Some(Status::Failed) = recheck_blocked(dir, &child, timeout)? {
                finished.push(child);
            }
        }
        let _ = std::fs::remove_file(finishing_file(dir, &id));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Claim

fn active_agent(dir: &SessionDir, agent: &str) -> Result<Agent> {
    id::validate("agent", agent)?;
    let a = registry::load(dir)?.into_iter().find(|a| a.id == agent).ok_or_else(|| {
        Error::Failed(format!(
            "agent {agent:?} is not registered in session {:?}; run `registry register` first",
            dir.id()
        ))
    })?;
    if a.status != agent_status::ACTIVE {
        return Err(Error::Failed(format!("agent {agent:?} is {}, not active; it cannot take tasks", a.status)));
    }
    Ok(a)
}

/// Claims the best pending task the agent may take (highest priority, then oldest),
/// or `None` when there is none. The agent must be registered and active.
pub fn claim(dir: &SessionDir, agent: &str, opts: &ClaimOptions, timeout: Duration) -> Result<Option<Task>> {
    ensure_store(dir)?;
    claim_unassigning(dir, agent, opts, &[], timeout)
}

/// [`claim`] for a worker loop (store known to exist) that also removes `finished`
/// (tasks it just finished with [`Unassign::Deferred`]) from its `assigned_tasks`, in
/// the same registry rewrite that adds the claimed task. With nothing to claim the
/// registry is not touched: the caller then removes `finished` itself.
pub(crate) fn claim_unassigning(
    dir: &SessionDir,
    agent: &str,
    opts: &ClaimOptions,
    finished: &[String],
    timeout: Duration,
) -> Result<Option<Task>> {
    let a = active_agent(dir, agent)?;
    let mut scan = index::PendingScan::open(dir, |r| r.admits(&a.agent_type, &a.capabilities))?;
    while let Some((i, e)) = scan.peek()? {
        scan.advance(i);
        if let Some(t) = take(dir, &e, agent, opts)? {
            update_assigned(dir, agent, Some(&t.id), finished, timeout);
            return Ok(Some(t));
        }
    }
    Ok(None)
}

/// Claims, waiting (on inotify, not polling) until something is claimable or `timeout`
/// passes (`Error::Empty`, exit 3). `signals` ends the wait early with `Ok(None)`.
///
/// The watch is left in `bell` for the caller to drop after it has printed the task:
/// closing an inotify descriptor waits for a kernel grace period (milliseconds).
pub fn claim_wait(
    dir: &SessionDir,
    agent: &str,
    opts: &ClaimOptions,
    wait: Option<Duration>,
    signals: Option<&bell::Signals>,
    bell: &mut Option<bell::Bell>,
    timeout: Duration,
) -> Result<Option<Task>> {
    ensure_store(dir)?;
    let deadline = wait.map(|w| std::time::Instant::now() + w);
    loop {
        if let Some(t) = claim_unassigning(dir, agent, opts, &[], timeout)? {
            return Ok(Some(t));
        }
        let Some(b) = bell.as_mut() else {
            // Watch, then look again, so a task that became claimable in between wakes us.
            let mut b = bell::Bell::watch(&[dir.task_pending_bell()]);
            if let Some(s) = signals {
                b = b.with_signals(s);
            }
            *bell = Some(b);
            continue;
        };
        match b.wait(deadline) {
            bell::Wake::Changed => {}
            bell::Wake::Signalled => return Ok(None),
            bell::Wake::TimedOut => {
                return Err(Error::Empty(format!(
                    "nothing to claim for agent {agent:?} within {:.1}s",
                    wait.unwrap_or_default().as_secs_f64()
                )));
            }
        }
    }
}

/// Takes one pending entry for `agent` if nobody else is: try-lock, rename, rewrite.
fn take(dir: &SessionDir, e: &index::Entry, agent: &str, opts: &ClaimOptions) -> Result<Option<Task>> {
    let guard = match lock::try_acquire_existing(&dir.task_id_file(&e.id)) {
        Ok(Some(guard)) => guard,
        Ok(None) => return Ok(None),
        Err(err) if fsio::is_not_found(&err) => {
            // Submit writes the locator before the record and nothing removes it, so a
            // pending record without one was not put there by taskd: set it aside rather
            // than skip it on every scan.
            if std::fs::symlink_metadata(&e.path).is_ok() {
                log::warn!("{} has no locator ({}): not a task of this store", e.path.display(), err);
                index::set_aside(&dir.tasks_garbage_dir(), &e.path);
            }
            return Ok(None);
        }
        Err(err) => return Err(err),
    };
    let mut t: Task = match fsio::read_json(&e.path) {
        Ok(t) => t,
        Err(err) if fsio::is_not_found(&err) => return Ok(None),
        Err(err @ Error::Malformed { .. }) => {
            log::warn!("{err}");
            index::set_aside(&dir.tasks_garbage_dir(), &e.path);
            return Ok(None);
        }
        Err(err) => return Err(err),
    };
    if t.id != e.id {
        log::warn!("{} holds task {:?}, not {:?}", e.path.display(), t.id, e.id);
        index::set_aside(&dir.tasks_garbage_dir(), &e.path);
        return Ok(None);
    }
    let dest = status_file(dir, Status::Claimed, &t.id);
    if !rename_existing(&e.path, &dest)? {
        return Ok(None);
    }
    let now = SystemTime::now();
    t.status = if opts.assigned_by.is_some() { "assigned" } else { "claimed" }.to_string();
    // A record planted with the largest count stays there rather than wrapping to 0.
    t.attempts = t.attempts.saturating_add(1);
    t.assigned_to = Some(agent.to_string());
    t.assigned_at = Some(time::rfc3339(now));
    t.assigned_by = opts.assigned_by.clone();
    t.claim_token = Some(new_token());
    t.lease_seconds = Some(opts.lease.as_secs_f64());
    t.lease_expires_at = Some(time::rfc3339(now + opts.lease));
    t.preempt_requested_at = None;
    rewrite_record(dir, &dest, &t)?;
    drop(guard);
    Ok(Some(t))
}

/// Adds or removes a task in the agent's `assigned_tasks`. The task store is the source
/// of truth; a registry that cannot be updated is logged, not fatal.
fn note_assigned(dir: &SessionDir, agent: &str, task: &str, add: bool, timeout: Duration) {
    let task = task.to_string();
    if add {
        update_assigned(dir, agent, Some(&task), &[], timeout);
    } else {
        update_assigned(dir, agent, None, std::slice::from_ref(&task), timeout);
    }
}

/// One rewrite of the agent's registration: removes `remove` from its
/// `assigned_tasks`, then adds `add`. Logged, not fatal, on failure (as above).
pub(crate) fn update_assigned(dir: &SessionDir, agent: &str, add: Option<&str>, remove: &[String], timeout: Duration) {
    if add.is_none() && remove.is_empty() {
        return;
    }
    let r = registry::modify(dir, agent, timeout, |a| {
        a.assigned_tasks.retain(|t| !remove.contains(t));
        if let Some(task) = add
            && !a.assigned_tasks.iter().any(|t| t == task)
        {
            a.assigned_tasks.push(task.to_string());
        }
        Ok(())
    });
    if let Err(e) = r {
        log::warn!("could not update assigned_tasks of agent {agent:?} (+{add:?} -{remove:?}): {e}");
    }
}

/// When finishing a claim removes the task from its holder's `assigned_tasks`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unassign {
    /// At once (one registry rewrite).
    Now,
    /// Left to the caller, a worker loop that folds it into its next claim's rewrite.
    Deferred,
}

// ---------------------------------------------------------------------------------------
// Finishing a claim

/// Reads the claimed record under its lock and checks the holder.
fn held(dir: &SessionDir, id: &str, holder: &Holder) -> Result<(Task, PathBuf)> {
    let path = status_file(dir, Status::Claimed, id);
    match read_record(&path, Status::Claimed) {
        Ok(t) if holder.matches(&t) => Ok((t, path)),
        Ok(t) => Err(Error::Failed(format!(
            "claim lost: task {id:?} is now held by agent {:?} (attempt {}), not by {}; nothing was changed",
            t.assigned_to.as_deref().unwrap_or("?"),
            t.attempts,
            holder.describe()
        ))),
        Err(e) if fsio::is_not_found(&e) => {
            let now = match locate(dir, id)? {
                Some((s, _)) => s.name(),
                None if read_locator(dir, id)?.is_none() => return Err(unknown_task(dir, id)),
                None => "gone",
            };
            Err(Error::Failed(format!("claim lost: task {id:?} is {now}, not claimed; nothing was changed")))
        }
        Err(e) => Err(e),
    }
}

/// Completes a claimed task with `result`. Only the current holder may (see [`Holder`]).
pub fn complete(dir: &SessionDir, id: &str, holder: &Holder, result: Value, timeout: Duration) -> Result<Task> {
    complete_as(dir, id, holder, result, Unassign::Now, timeout)
}

pub(crate) fn complete_as(
    dir: &SessionDir,
    id: &str,
    holder: &Holder,
    result: Value,
    unassign: Unassign,
    timeout: Duration,
) -> Result<Task> {
    id::validate("task", id)?;
    let guard = task_lock(dir, id, timeout)?;
    let (mut t, path) = held(dir, id, holder)?;
    t.status = Status::Completed.name().to_string();
    t.completed_at = Some(time::now_rfc3339());
    t.results = Some(result);
    t.clear_claim();
    if !publish_final(dir, &t, &path)? {
        return Err(Error::Failed(format!("claim lost: task {id:?} moved while completing")));
    }
    finish_final(dir, &t, guard, unassign, false, timeout)?;
    Ok(t)
}

/// Records a failed attempt. With attempts left the task goes back to pending; without,
/// it fails for good and its dependents fail with "dependency failed".
pub fn fail(dir: &SessionDir, id: &str, holder: &Holder, error: &str, timeout: Duration) -> Result<Task> {
    fail_as(dir, id, holder, error, Unassign::Now, timeout)
}

pub(crate) fn fail_as(
    dir: &SessionDir,
    id: &str,
    holder: &Holder,
    error: &str,
    unassign: Unassign,
    timeout: Duration,
) -> Result<Task> {
    id::validate("task", id)?;
    let guard = task_lock(dir, id, timeout)?;
    let (t, path) = held(dir, id, holder)?;
    let err = TaskError {
        attempt: t.attempts,
        agent: t.assigned_to.clone(),
        at: time::now_rfc3339(),
        error: error.to_string(),
    };
    requeue_held(dir, guard, t, &path, true, Some(err), unassign, timeout)
}

/// Gives a claimed task back without spending an attempt (after a `preempt` message,
/// or when a worker stops).
pub fn release(dir: &SessionDir, id: &str, holder: &Holder, timeout: Duration) -> Result<Task> {
    id::validate("task", id)?;
    let guard = task_lock(dir, id, timeout)?;
    let (t, path) = held(dir, id, holder)?;
    requeue_held(dir, guard, t, &path, false, None, Unassign::Now, timeout)
}

/// Moves a held claim back to pending, or to failed when no attempts are left.
#[allow(clippy::too_many_arguments)]
fn requeue_held(
    dir: &SessionDir,
    guard: LockGuard,
    mut t: Task,
    path: &Path,
    spend: bool,
    err: Option<TaskError>,
    unassign: Unassign,
    timeout: Duration,
) -> Result<Task> {
    let holder = t.assigned_to.clone();
    if let Some(e) = err {
        t.errors.push(e);
    }
    if !spend {
        t.attempts = t.attempts.saturating_sub(1);
    }
    t.clear_claim();
    if spend && t.attempts >= t.max_attempts {
        let last = t.errors.last().map(|e| e.error.clone()).unwrap_or_else(|| "no attempts left".to_string());
        t.status = Status::Failed.name().to_string();
        t.failed_at = Some(time::now_rfc3339());
        t.reason = Some(format!("failed after {} attempt(s): {last}", t.attempts));
        if !publish_final(dir, &t, path)? {
            return Err(Error::Failed(format!("claim lost: task {:?} moved while failing", t.id)));
        }
        finish_final(dir, &t, guard, unassign, false, timeout)?;
        return Ok(t);
    }
    t.status = Status::Pending.name().to_string();
    let dest = pending_path(dir, &t)?;
    if !rename_existing(path, &dest)? {
        return Err(Error::Failed(format!("claim lost: task {:?} moved while requeueing", t.id)));
    }
    rewrite_record(dir, &dest, &t)?;
    drop(guard);
    if let Some(a) = holder
        && unassign == Unassign::Now
    {
        note_assigned(dir, &a, &t.id, false, timeout);
    }
    bell::ring(&dir.task_pending_bell());
    bell::ring(&dir.task_finished_bell());
    Ok(t)
}

/// What follows a final status: registry, results file, waiters, dependents. Every step
/// may run again after an interruption (`again`): the registry update, the bells and the
/// dependents' re-checks are idempotent, and the results entry is appended only if the
/// file lacks it.
fn after_final(dir: &SessionDir, t: &Task, unassign: Unassign, again: bool, timeout: Duration) -> Result<()> {
    if let Some(a) = &t.assigned_to {
        if unassign == Unassign::Now {
            note_assigned(dir, a, &t.id, false, timeout);
        }
        if t.state() != Some(Status::Cancelled)
            && !(again && result_recorded(dir, a, &t.id))
            && let Err(e) = append_result(dir, a, t, timeout)
        {
            log::warn!("task {:?}: could not append to results/{a}.jsonl: {e}", t.id);
        }
    }
    bell::ring(&dir.task_finished_bell());
    if t.state() == Some(Status::Completed) {
        for child in index::list_names(&dir.task_dependents_dir(&t.id))? {
            if id::validate("task", &child).is_ok() && recheck_blocked(dir, &child, timeout)? == Some(Status::Failed) {
                cascade_failures(dir, vec![child], timeout)?;
            }
        }
        Ok(())
    } else {
        cascade_failures(dir, vec![t.id.clone()], timeout)
    }
}

/// Whether `results/<agent>.jsonl` already holds an entry for task `id`.
fn result_recorded(dir: &SessionDir, agent: &str, id: &str) -> bool {
    crate::results::read_result_log(&dir.result_log(agent)).is_ok_and(|r| r.tasks.iter().any(|e| e.id() == id))
}

/// Appends a finished task to `results/<agent>.jsonl`, the agent's results log: one
/// line holding the seed's document `{agent, tasks: [entry], execution_time}` for this
/// task alone, written with one `write(2)` on an `O_APPEND` descriptor under lock
/// `_results`. O(1) whatever the number of results before it (`aggregate` merges the
/// lines, and the agent's own `results/<agent>.json` if any).
fn append_result(dir: &SessionDir, agent: &str, t: &Task, timeout: Duration) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    let ended = t.completed_at.as_deref().or(t.failed_at.as_deref());
    let secs = match (t.assigned_at.as_deref().and_then(time::parse_rfc3339), ended.and_then(time::parse_rfc3339)) {
        (Some(a), Some(b)) => b.duration_since(a).map(|d| d.as_secs_f64()).unwrap_or(0.0),
        _ => 0.0,
    };
    let mut entry = json!({
        "id": t.id, "status": t.status, "attempts": t.attempts,
        "assigned_at": t.assigned_at, "execution_time": secs,
    });
    if let Some(map) = entry.as_object_mut() {
        match t.state() {
            Some(Status::Completed) => {
                map.insert("completed_at".into(), json!(t.completed_at));
                map.insert("results".into(), t.results.clone().unwrap_or(Value::Null));
            }
            _ => {
                map.insert("failed_at".into(), json!(t.failed_at));
                map.insert("reason".into(), json!(t.reason));
            }
        }
    }
    let doc = json!({"agent": agent, "tasks": [entry], "execution_time": secs});
    let mut line = serde_json::to_vec(&doc).expect("a results entry serializes");
    line.push(b'\n');
    let path = dir.result_log(agent);
    let _g = dir.tool_lock(ToolLock::Results, timeout)?;
    let mut f =
        std::fs::OpenOptions::new().read(true).append(true).create(true).mode(0o600).open(&path).ctx("open", &path)?;
    let len = f.metadata().ctx("inspect", &path)?.len();
    // A line left without its newline (a writer cut off by a full disk or a power loss)
    // is ended first, so it stays one bad line that readers report, not two.
    let mut last = [b'\n'];
    if len > 0 {
        f.read_exact_at(&mut last, len - 1).ctx("read", &path)?;
    }
    let written = if last[0] == b'\n' { f.write_all(&line) } else { f.write_all(&[b"\n".as_slice(), &line].concat()) };
    if let Err(e) = written {
        // Take back a partial line rather than leave it for the next writer.
        let _ = f.set_len(len);
        return Err(Error::io("append to", &path, e));
    }
    if crate::env::fsync_requested() {
        f.sync_data().ctx("fsync", &path)?;
        if len == 0 {
            fsio::sync_parent(&path)?;
        }
    }
    Ok(())
}

/// Cancels a task that is not final; its dependents fail with "dependency failed".
pub fn cancel(dir: &SessionDir, id: &str, reason: Option<&str>, timeout: Duration) -> Result<Task> {
    id::validate("task", id)?;
    let guard = task_lock(dir, id, timeout)?;
    let Some((s, path)) = locate(dir, id)? else { return Err(unknown_task(dir, id)) };
    if s.is_final() {
        return Err(Error::Failed(format!("task {id:?} is already {}; nothing to cancel", s.name())));
    }
    let mut t = read_record(&path, s)?;
    t.status = Status::Cancelled.name().to_string();
    t.failed_at = Some(time::now_rfc3339());
    t.reason = Some(reason.unwrap_or("cancelled").to_string());
    t.clear_claim();
    if !publish_final(dir, &t, &path)? {
        return Err(Error::Failed(format!("task {id:?} moved while cancelling; try again")));
    }
    finish_final(dir, &t, guard, Unassign::Now, false, timeout)?;
    Ok(t)
}

// ---------------------------------------------------------------------------------------
// Leases and requeue (also called by healthmon)

/// When the claim's lease lapses: the later of its recorded expiry and the holder's
/// last heartbeat plus the lease length. `None` for a claim without a lease (its claimer
/// died between the rename and the record rewrite): lapsed at once.
pub fn lease_deadline(dir: &SessionDir, t: &Task) -> Option<SystemTime> {
    let recorded = t.lease_expires_at.as_deref().and_then(time::parse_rfc3339)?;
    // A record's lease length is a file's word: one too long for a Duration or for the
    // clock counts as no renewal (the recorded expiry decides), never as a panic.
    let lease = Duration::try_from_secs_f64(t.lease_seconds.unwrap_or(0.0).max(0.0)).ok();
    let renewed =
        t.assigned_to.as_deref().and_then(|a| registry::last_heartbeat(dir, a)).and_then(|hb| hb.checked_add(lease?));
    Some(renewed.map_or(recorded, |r| r.max(recorded)))
}

fn lapsed(dir: &SessionDir, t: &Task, now: SystemTime) -> bool {
    lease_deadline(dir, t).is_none_or(|d| now > d)
}

/// Every claimed record (malformed ones are set aside).
fn claimed_records(dir: &SessionDir) -> Result<Vec<Task>> {
    records_in(dir, Status::Claimed)
}

fn requeue_where(dir: &SessionDir, why: &dyn Fn(&Task) -> Option<String>, timeout: Duration) -> Result<RequeueReport> {
    let mut report = RequeueReport::default();
    for t in claimed_records(dir)? {
        if why(&t).is_none() {
            continue;
        }
        // One task that cannot be requeued does not stop the others.
        let after = match requeue_one(dir, why, &t, timeout) {
            Ok(Some(after)) => after,
            Ok(None) => continue,
            Err(e) => {
                log::warn!("task {:?}: not requeued: {e}", t.id);
                continue;
            }
        };
        if after.state() == Some(Status::Failed) {
            report.failed += 1;
        } else {
            report.requeued += 1;
        }
        report.tasks.push(after.id);
    }
    Ok(report)
}

/// Requeues one listed claim under its lock if it still qualifies.
fn requeue_one(
    dir: &SessionDir,
    why: &dyn Fn(&Task) -> Option<String>,
    t: &Task,
    timeout: Duration,
) -> Result<Option<Task>> {
    let mut guard = task_lock(dir, &t.id, timeout)?;
    if finishing_file(dir, &t.id).exists() {
        // Its holder was finishing it: finish that rather than requeue.
        match finish_one(dir, &t.id, guard, timeout)? {
            Some(g) => guard = g,
            None => return Ok(None),
        }
    }
    let path = status_file(dir, Status::Claimed, &t.id);
    let current = match read_record(&path, Status::Claimed) {
        Ok(c) => c,
        Err(e) if fsio::is_not_found(&e) => return Ok(None),
        Err(e) => return Err(e),
    };
    // Re-check under the lock: the claim may have changed since the listing.
    if current.claim_token != t.claim_token {
        return Ok(None);
    }
    let Some(reason) = why(&current) else { return Ok(None) };
    let err = TaskError {
        attempt: current.attempts,
        agent: current.assigned_to.clone(),
        at: time::now_rfc3339(),
        error: reason,
    };
    requeue_held(dir, guard, current, &path, true, Some(err), Unassign::Now, timeout).map(Some)
}

/// Returns every task claimed by `agent` to the queue, counting the attempt; a task
/// with no attempts left fails for good with `reason`. For healthmon (dead agents) and
/// `taskd requeue --agent`.
pub fn requeue_agent(dir: &SessionDir, agent: &str, reason: &str, timeout: Duration) -> Result<RequeueReport> {
    id::validate("agent", agent)?;
    let why = |t: &Task| (t.assigned_to.as_deref() == Some(agent)).then(|| reason.to_string());
    requeue_where(dir, &why, timeout)
}

/// Returns every claim whose lease has lapsed to the queue, counting the attempt. For
/// healthmon and `taskd requeue --expired`.
pub fn requeue_expired(dir: &SessionDir, timeout: Duration) -> Result<RequeueReport> {
    finish_interrupted(dir, timeout);
    let why = |t: &Task| {
        let now = SystemTime::now();
        lapsed(dir, t, now).then(|| match &t.assigned_to {
            Some(a) if t.lease_expires_at.is_some() => format!("lease expired (held by agent {a:?})"),
            _ => "claim interrupted before its lease was recorded".to_string(),
        })
    };
    requeue_where(dir, &why, timeout)
}

// ---------------------------------------------------------------------------------------
// Listing, progress, waiting

fn records_in(dir: &SessionDir, s: Status) -> Result<Vec<Task>> {
    let mut out = Vec::new();
    if s == Status::Pending {
        let mut scan = index::PendingScan::open(dir, |_| true)?;
        while let Some((i, e)) = scan.peek()? {
            scan.advance(i);
            if let Some(t) = read_listed(dir, &e.path, s)? {
                out.push(t);
            }
        }
        return Ok(out);
    }
    let d = dir.tasks_status_dir(s.dir_name());
    for name in index::list_names(&d)? {
        let path = d.join(&name);
        let ok = name.strip_suffix(".json").is_some_and(|stem| id::validate("task", stem).is_ok());
        if !ok {
            index::set_aside(&dir.tasks_garbage_dir(), &path);
            continue;
        }
        if let Some(t) = read_listed(dir, &path, s)? {
            out.push(t);
        }
    }
    out.sort_by_key(|t| t.seq);
    Ok(out)
}

fn read_listed(dir: &SessionDir, path: &Path, s: Status) -> Result<Option<Task>> {
    match read_record(path, s) {
        Ok(t) => Ok(Some(t)),
        Err(e) if fsio::is_not_found(&e) => Ok(None),
        Err(e @ Error::Malformed { .. }) => {
            log::warn!("{e}");
            index::set_aside(&dir.tasks_garbage_dir(), path);
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// The tasks of one status, in queue order for pending, submission order otherwise.
pub fn list(dir: &SessionDir, status: Status) -> Result<Vec<Task>> {
    records_in(dir, status)
}

/// Every task record, grouped by status (blocked, pending, claimed, completed, failed,
/// cancelled). Garbage files found on the way are set aside with a warning.
pub fn list_all(dir: &SessionDir) -> Result<Vec<Task>> {
    let mut out = Vec::new();
    for s in Status::ALL {
        out.extend(records_in(dir, s)?);
    }
    Ok(out)
}

/// Counts of `tasks` by status.
pub fn count(tasks: &[Task]) -> Progress {
    let mut p = Progress { total: tasks.len(), ..Default::default() };
    for t in tasks {
        match t.state() {
            Some(Status::Blocked) => p.blocked += 1,
            Some(Status::Pending) | None => p.pending += 1,
            Some(Status::Claimed) => p.claimed += 1,
            Some(Status::Completed) => p.completed += 1,
            Some(Status::Failed) => p.failed += 1,
            Some(Status::Cancelled) => p.cancelled += 1,
        }
    }
    // round(completed / total * 100) in integers: in floating point 23 of 40 (57.5) came
    // out 57.499... and rounded down.
    let (done, total) = (p.completed as u64, p.total as u64);
    p.operation_progress = if total == 0 { 0 } else { (done * 200 + total) / (total * 2) };
    p
}

/// Rewrites `state/tasks.json`, the seed's `{pending, in_progress, completed, failed}`
/// view of `tasks` (blocked counts as pending, cancelled as failed), under its lock.
pub fn refresh_view(dir: &SessionDir, tasks: &[Task], timeout: Duration) -> Result<()> {
    let pick =
        |f: &dyn Fn(Status) -> bool| -> Vec<&Task> { tasks.iter().filter(|t| t.state().is_some_and(f)).collect() };
    let view = json!({
        "pending": pick(&|s| matches!(s, Status::Blocked | Status::Pending)),
        "in_progress": pick(&|s| s == Status::Claimed),
        "completed": pick(&|s| s == Status::Completed),
        "failed": pick(&|s| matches!(s, Status::Failed | Status::Cancelled)),
    });
    let _g = dir.lock("tasks", timeout)?;
    fsio::write_json(&dir.state_file("tasks"), &view)
}

/// Counts tasks, writes `operation_progress` to `state/global.json` and refreshes the
/// `state/tasks.json` view.
pub fn progress(dir: &SessionDir, timeout: Duration) -> Result<Progress> {
    finish_interrupted(dir, timeout);
    let tasks = list_all(dir)?;
    let p = count(&tasks);
    refresh_view(dir, &tasks, timeout)?;
    crate::state::set(dir, "global", "/operation_progress", json!(p.operation_progress), timeout)?;
    Ok(p)
}

/// How a wait ended.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct WaitOutcome {
    /// Tasks waited for that completed.
    pub completed: usize,
    /// Tasks waited for that failed or were cancelled.
    pub failed: Vec<String>,
    /// Tasks waited for that are not final yet.
    pub unfinished: usize,
}

fn wait_check(dir: &SessionDir, ids: &[String]) -> Result<WaitOutcome> {
    let mut out = WaitOutcome::default();
    if ids.is_empty() {
        // In the order tasks move (blocked, pending, claimed), so a task that moves on
        // while we look is seen in its next place; pending once more at the end catches
        // one requeued from claimed back to pending in between. (Pending counts as one:
        // its scan stops at the first entry.)
        let pending =
            || -> Result<usize> { Ok(usize::from(index::PendingScan::open(dir, |_| true)?.peek()?.is_some())) };
        out.unfinished = index::list_names(&dir.tasks_status_dir("blocked"))?.len()
            + pending()?
            + index::list_names(&dir.tasks_status_dir("claimed"))?.len();
        if out.unfinished == 0 {
            out.unfinished = pending()?;
        }
        out.completed = index::list_names(&dir.tasks_status_dir("done"))?.len();
        for s in [Status::Failed, Status::Cancelled] {
            for n in index::list_names(&dir.tasks_status_dir(s.dir_name()))? {
                out.failed.push(n.trim_end_matches(".json").to_string());
            }
        }
        out.failed.sort();
        return Ok(out);
    }
    for i in ids {
        match dep_status(dir, i) {
            Some(Status::Completed) => out.completed += 1,
            Some(_) => out.failed.push(i.clone()),
            None => out.unfinished += 1,
        }
    }
    Ok(out)
}

/// Waits until the given tasks (all tasks when empty) are final, or one of them failed.
/// Returns the outcome; `Error::Empty` (exit 3) when `limit` passes first.
pub fn wait(dir: &SessionDir, ids: &[String], limit: Option<Duration>) -> Result<WaitOutcome> {
    for i in ids {
        id::validate("task", i)?;
        if read_locator(dir, i)?.is_none() {
            return Err(unknown_task(dir, i));
        }
    }
    ensure_store(dir)?;
    let deadline = limit.map(|l| std::time::Instant::now() + l);
    let mut b = bell::Bell::watch(&[dir.task_finished_bell()]);
    loop {
        finish_interrupted(dir, lock::default_timeout());
        let out = wait_check(dir, ids)?;
        if out.unfinished == 0 || (!ids.is_empty() && !out.failed.is_empty()) {
            return Ok(out);
        }
        if b.wait(deadline) == bell::Wake::TimedOut {
            let out = wait_check(dir, ids)?;
            if out.unfinished == 0 {
                return Ok(out);
            }
            return Err(Error::Empty(format!(
                "timed out after {:.1}s with {} task(s) unfinished",
                limit.unwrap_or_default().as_secs_f64(),
                out.unfinished
            )));
        }
    }
}

#[cfg(test)]
mod tests;
