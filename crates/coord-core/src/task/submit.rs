//! Submitting tasks: a batch is checked whole (fields, duplicate ids, unknown
//! dependencies, cycles) before anything is written, then each task reserves its id
//! (`tasks/ids/<id>.json`), takes a submission number (`tasks/seq`, lock `_task_seq`) and
//! is written to `tasks/pending/…` or, waiting for dependencies, `tasks/blocked/<id>.json`
//! with its `tasks/dependents/<id>/<child>` links. Also the dependency follow-ups: a
//! blocked task rechecked when a dependency finishes, failures cascaded to dependents.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::time::Duration;

use super::query::show;
use super::store::{
    dep_status, ensure_store, finishing_file, new_token, pending_path, publish_final, read_locator, read_record,
    rename_existing, rewrite_record, status_file, task_lock, write_record,
};
use super::{DEFAULT_MAX_ATTEMPTS, Locator, NewTask, Route, Status, Task, bell, index};
use crate::error::{Error, IoContext, Result};
use crate::layout::{SessionDir, ToolLock};
use crate::{fsio, id, time};

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
            retries: Vec::new(),
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
pub(super) fn recheck_blocked(dir: &SessionDir, id: &str, timeout: Duration) -> Result<Option<Status>> {
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
pub(super) fn cascade_failures(dir: &SessionDir, mut finished: Vec<String>, timeout: Duration) -> Result<()> {
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
