//! Every path of the session layout, in one place. See `docs/layout.md` (the contract).
//!
//! ```text
//! <base>/<operation>-<unix-ts>[-N]/
//!   session.json              session record (written last by session-init: its presence
//!                             marks a complete session)
//!   registry/agents.json      the agents' registrations (one JSON array)
//!   registry/heartbeats/<agent>  one empty file per agent; its mtime is the last heartbeat
//!   state/<key>.json          shared state documents
//!   messages/<agent>/         the agent's mailbox
//!   tasks/                    task records
//!   results/<agent>.json      per-agent results; results/final-report.json
//!   locks/<name>.lock         flock targets; never deleted while the session lives
//!   metrics/                  events.jsonl and resource samples
//! ```

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::fsio;
use crate::id;
use crate::lock::{self, LockGuard};
use crate::sys;

/// The version of the layout this code reads and writes (`session.json` `layout_version`).
pub const LAYOUT_VERSION: u32 = 1;

/// Subdirectories every session has, created by `session-init`.
pub const SESSION_DIRS: &[&str] =
    &["registry", "registry/heartbeats", "state", "messages", "tasks", "results", "locks", "metrics"];

/// Subdirectories of `tmp/` that the temporary files of per-task rewrites are spread
/// over (see [`SessionDir::spread_tmp_dir`]).
pub const TMP_SPREAD: usize = 16;

/// The directory that holds sessions.
#[derive(Debug, Clone)]
pub struct Base {
    path: PathBuf,
}

impl Base {
    /// A base directory at `path` (nothing is checked yet).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Base { path: path.into() }
    }

    /// The base directory's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Creates the base with mode 0700 if it is missing, then checks it is safe to use.
    pub fn ensure(&self) -> Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        if std::fs::symlink_metadata(&self.path).is_err() {
            if let Some(parent) = self.path.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent).map_err(|e| Error::io("create directory", parent, e))?;
            }
            match std::fs::DirBuilder::new().mode(0o700).create(&self.path) {
                Ok(()) => {}
                // Another process created it first; the checks below still apply.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(Error::io("create base directory", &self.path, e)),
            }
        }
        self.check()
    }

    /// Refuses a base that is a symlink, not a directory, or owned by another user.
    ///
    /// A base in a shared place such as `/tmp` could otherwise be planted by another
    /// local user, who would then control or read every session in it.
    pub fn check(&self) -> Result<()> {
        use std::os::unix::fs::MetadataExt;
        let refuse = |reason: String| Err(Error::UnsafeBase { path: self.path.clone(), reason });
        let meta = match std::fs::symlink_metadata(&self.path) {
            Ok(m) => m,
            Err(e) => return Err(Error::io("inspect base directory", &self.path, e)),
        };
        if meta.file_type().is_symlink() {
            return refuse("it is a symbolic link".to_string());
        }
        if !meta.is_dir() {
            return refuse("it is not a directory".to_string());
        }
        let me = sys::euid();
        if meta.uid() != me {
            return refuse(format!("it is owned by uid {}, not by you (uid {me})", meta.uid()));
        }
        Ok(())
    }

    /// The session `id` under this base; it must exist and be complete.
    pub fn session(&self, session_id: &str) -> Result<SessionDir> {
        id::validate("session", session_id)?;
        let root = self.path.join(session_id);
        let not_found = |root: &Path| Error::SessionNotFound { id: session_id.to_string(), path: root.to_path_buf() };
        if std::fs::symlink_metadata(&self.path).is_err() {
            return Err(not_found(&root));
        }
        self.check()?;
        match std::fs::symlink_metadata(&root) {
            Ok(m) if m.is_dir() => {}
            _ => return Err(not_found(&root)),
        }
        let dir = SessionDir { root, id: session_id.to_string() };
        if !dir.session_json().is_file() {
            return Err(not_found(dir.root()));
        }
        Ok(dir)
    }

    /// The path a session with this id would have (no checks).
    pub fn session_path(&self, session_id: &str) -> PathBuf {
        self.path.join(session_id)
    }

    // --- archives (archive) -------------------------------------------------------------
    // Archives sit next to the sessions: `<base>/<session>.tar.gz`, the seed's place.

    /// `<base>/<session>.tar.gz`: where `archive` writes a session's archive by default.
    pub fn archive_path(&self, session_id: &str) -> PathBuf {
        self.path.join(format!("{session_id}{ARCHIVE_SUFFIX}"))
    }
}

/// The file name suffix of session archives.
pub const ARCHIVE_SUFFIX: &str = ".tar.gz";

/// One session directory and the paths inside it.
#[derive(Debug, Clone)]
pub struct SessionDir {
    root: PathBuf,
    id: String,
}

impl SessionDir {
    /// Wraps a directory known to be a session (used by `session-init` while creating it).
    pub fn at(root: PathBuf, id: String) -> Self {
        SessionDir { root, id }
    }

    /// The session's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The session directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `tmp/`: the spread directories' parent.
    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// One of `tmp/0` … `tmp/15`, a different one on each call (starting from one chosen
    /// by the process id), where the temporary files of the files rewritten per task are
    /// written before they are exchanged into place. On ext4 the directories sit in
    /// different block groups (`tmp/` carries the `T` attribute, see docs/layout.md), and
    /// so do the inodes created in them: the inode allocator, which scans past recently
    /// freed inodes of a group, finds a sixteenth of them in each.
    pub fn spread_tmp_dir(&self) -> PathBuf {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(usize::MAX);
        let mut n = NEXT.load(std::sync::atomic::Ordering::Relaxed);
        if n == usize::MAX {
            n = std::process::id() as usize;
        }
        NEXT.store(n.wrapping_add(1), std::sync::atomic::Ordering::Relaxed);
        self.tmp_dir().join((n % TMP_SPREAD).to_string())
    }

    /// `session.json`.
    pub fn session_json(&self) -> PathBuf {
        self.root.join("session.json")
    }

    /// `registry/`.
    pub fn registry_dir(&self) -> PathBuf {
        self.root.join("registry")
    }

    /// `registry/agents.json`.
    pub fn agents_json(&self) -> PathBuf {
        self.root.join("registry/agents.json")
    }

    /// `registry/heartbeats/<agent>`: exists while the agent is registered; mtime = last beat.
    pub fn heartbeat_file(&self, agent: &str) -> PathBuf {
        self.root.join("registry/heartbeats").join(agent)
    }

    /// `state/`.
    pub fn state_dir(&self) -> PathBuf {
        self.root.join("state")
    }

    /// `state/<key>.json`.
    pub fn state_file(&self, key: &str) -> PathBuf {
        self.root.join("state").join(format!("{key}.json"))
    }

    /// `messages/`.
    pub fn messages_dir(&self) -> PathBuf {
        self.root.join("messages")
    }

    /// `messages/<agent>/`.
    pub fn mailbox_dir(&self, agent: &str) -> PathBuf {
        self.root.join("messages").join(agent)
    }

    /// `tasks/`.
    pub fn tasks_dir(&self) -> PathBuf {
        self.root.join("tasks")
    }

    /// `results/`.
    pub fn results_dir(&self) -> PathBuf {
        self.root.join("results")
    }

    /// `results/<agent>.json`.
    pub fn result_file(&self, agent: &str) -> PathBuf {
        self.root.join("results").join(format!("{agent}.json"))
    }

    /// `results/<agent>.jsonl`: the task store's append-only results log of an agent
    /// (one seed-shaped document per line; see docs/layout.md, section `results/`).
    pub fn result_log(&self, agent: &str) -> PathBuf {
        self.root.join("results").join(format!("{agent}.jsonl"))
    }

    /// `results/final-report.json`.
    pub fn final_report(&self) -> PathBuf {
        self.root.join("results").join(format!("{FINAL_REPORT_STEM}.json"))
    }

    /// `locks/`.
    pub fn locks_dir(&self) -> PathBuf {
        self.root.join("locks")
    }

    /// `locks/<name>.lock` for a user-named lock (an id).
    pub fn lock_file(&self, name: &str) -> PathBuf {
        self.root.join("locks").join(format!("{name}.lock"))
    }

    /// `metrics/`.
    pub fn metrics_dir(&self) -> PathBuf {
        self.root.join("metrics")
    }

    /// `metrics/events.jsonl`.
    pub fn events_file(&self) -> PathBuf {
        self.root.join("metrics/events.jsonl")
    }

    /// `metrics/resources.jsonl`: resource samples of live local agents.
    pub fn resources_file(&self) -> PathBuf {
        self.root.join("metrics/resources.jsonl")
    }

    /// The lock file of one of the tools' own locks.
    pub fn tool_lock_file(&self, which: ToolLock) -> PathBuf {
        self.root.join("locks").join(format!("{}.lock", which.name()))
    }

    // ---- Task store (`tasks/`; see docs/layout.md, section `tasks/`) ----
    //
    // A task's record lives in exactly one status directory at a time; a status change
    // is a rename between them. Pending tasks are indexed by route, priority and
    // submission sequence so a claimer lists only one small bucket.

    /// `tasks/ids/<task>.json`: the immutable locator written once at submit (reserves the
    /// id). Its inode never changes, so it is also the `flock(2)` target that serializes
    /// the task's transitions.
    pub fn task_id_file(&self, task: &str) -> PathBuf {
        self.root.join("tasks/ids").join(format!("{task}.json"))
    }

    /// `tasks/pending/`: ready tasks, as `<route>/<priority-key>/<block>/<chunk>/<seq>.<task>.json`.
    pub fn tasks_pending_dir(&self) -> PathBuf {
        self.root.join("tasks/pending")
    }

    /// `tasks/<status>/` for the unindexed statuses (`blocked`, `claimed`, `done`,
    /// `failed`, `cancelled`).
    pub fn tasks_status_dir(&self, status_dir: &str) -> PathBuf {
        self.root.join("tasks").join(status_dir)
    }

    /// `tasks/<status>/<task>.json` for the unindexed statuses.
    pub fn task_file(&self, status_dir: &str, task: &str) -> PathBuf {
        self.root.join("tasks").join(status_dir).join(format!("{task}.json"))
    }

    /// `tasks/dependents/<task>/`: one empty file per task that waits for `task`.
    pub fn task_dependents_dir(&self, task: &str) -> PathBuf {
        self.root.join("tasks/dependents").join(task)
    }

    /// `tasks/garbage/`: files found in the task store that are not task records.
    pub fn tasks_garbage_dir(&self) -> PathBuf {
        self.root.join("tasks/garbage")
    }

    /// `tasks/seq`: the next submission sequence number (changed under [`ToolLock::TaskSeq`]).
    pub fn task_seq_file(&self) -> PathBuf {
        self.root.join("tasks/seq")
    }

    /// `tasks/round_robin.json`: the round-robin cursor (changed under [`ToolLock::TaskAssign`]).
    pub fn task_cursor_file(&self) -> PathBuf {
        self.root.join("tasks/round_robin.json")
    }

    /// `tasks/output/`: what `taskd work` keeps of each attempt's output.
    pub fn tasks_output_dir(&self) -> PathBuf {
        self.root.join("tasks/output")
    }

    /// `tasks/output/<task>.<attempt>.<stream>` (`out` or `err`): one attempt's stdout or
    /// stderr as `taskd work` kept it, cut off at its cap with a note saying so.
    pub fn task_output_file(&self, task: &str, attempt: u32, stream: &str) -> PathBuf {
        self.root.join("tasks/output").join(format!("{task}.{attempt}.{stream}"))
    }

    /// `tasks/control/`: requests to the work loops (`taskd kill`), watched by them.
    pub fn tasks_control_dir(&self) -> PathBuf {
        self.root.join("tasks/control")
    }

    /// `tasks/control/<task>.kill`: a request to stop the command running a claim.
    pub fn task_kill_file(&self, task: &str) -> PathBuf {
        self.root.join("tasks/control").join(format!("{task}.kill"))
    }

    /// `tasks/paused.json`: what `taskd pause` paused (the whole queue, or types); it
    /// exists only while something is paused.
    pub fn tasks_paused_file(&self) -> PathBuf {
        self.root.join("tasks/paused.json")
    }

    /// `tasks/.pending.bell`: its mtime is touched whenever a task becomes claimable, so
    /// waiters block on inotify instead of polling.
    pub fn task_pending_bell(&self) -> PathBuf {
        self.root.join("tasks/.pending.bell")
    }

    /// `tasks/.finished.bell`: touched whenever a task reaches a final status or is released.
    pub fn task_finished_bell(&self) -> PathBuf {
        self.root.join("tasks/.finished.bell")
    }

    /// Takes the user-named lock `name` (an id), waiting at most `timeout`.
    ///
    /// `state update KEY` takes the lock named `KEY`, so `state lock KEY -- ...` excludes it.
    pub fn lock(&self, name: &str, timeout: std::time::Duration) -> Result<LockGuard> {
        id::validate("lock", name)?;
        lock::acquire(name, &self.lock_file(name), timeout)
    }

    /// Takes one of the tools' own locks. Their files start with `_`, which no id can,
    /// so they never collide with a user's lock names.
    pub fn tool_lock(&self, which: ToolLock, timeout: std::time::Duration) -> Result<LockGuard> {
        lock::acquire(which.name(), &self.tool_lock_file(which), timeout)
    }

    // --- results and report (aggregate) ---------------------------------------------------
    // `results/` holds one `<agent>.json` per agent (written by the agents themselves) and
    // `final-report.json` (written by aggregate); `state/results.json` is the aggregate view.

    /// `state/results.json`: the aggregate `{by_agent, by_task, summary}` view.
    pub fn results_view(&self) -> PathBuf {
        self.state_file(RESULTS_KEY)
    }

    /// The agent a `results/` log name belongs to: `<agent>.jsonl` with a valid agent id.
    pub fn result_log_agent(name: &str) -> Option<&str> {
        let agent = name.strip_suffix(".jsonl")?;
        id::validate("agent", agent).is_ok().then_some(agent)
    }

    /// The agent a `results/` file name belongs to: `<agent>.json` with a valid agent id,
    /// other than the report's own `final-report.json`. `None` for anything else.
    pub fn result_file_agent(name: &str) -> Option<&str> {
        let agent = name.strip_suffix(".json")?;
        (agent != FINAL_REPORT_STEM && id::validate("agent", agent).is_ok()).then_some(agent)
    }

    // ---- Mailboxes: messages/<agent>/ (see docs/layout.md, "messages/") ----------------
    //
    // messages/<agent>/
    //   tmp/    writers' hidden temporary files; requeue's `<id>.requeue` hand-over files
    //   new/<prio>/<t0>/<t1>/<t2>/<t3>/<id>.json   queued; names sort in delivery order
    //   cur/<id>.json    claimed by a receiver, in flight until acked or requeued
    //   done/<id>.json   acknowledged (the archive keeps them)
    //   dead/<id>.json   dead letters, with `dead_reason`
    //   bad/<stamp>-<name>  unparsable or misplaced files moved aside by a receiver
    //
    // The queue is sharded so a receiver lists only small directories: by priority, then
    // by the send time in milliseconds split into a 32-bit head (t0, ~4.6 h per value) and
    // two 8-bit levels (t1 ~65 s, t2 256 ms) and one 4-bit level (t3 16 ms).

    /// `messages/<agent>/tmp/`: where message files are written before they are published.
    pub fn mailbox_tmp(&self, agent: &str) -> PathBuf {
        self.mailbox_dir(agent).join("tmp")
    }

    /// `messages/<agent>/new/`: the queue (sharded, see [`SessionDir::queued_message`]).
    pub fn mailbox_new(&self, agent: &str) -> PathBuf {
        self.mailbox_dir(agent).join("new")
    }

    /// `messages/<agent>/cur/`: messages in flight.
    pub fn mailbox_cur(&self, agent: &str) -> PathBuf {
        self.mailbox_dir(agent).join("cur")
    }

    /// `messages/<agent>/done/`: acknowledged messages.
    pub fn mailbox_done(&self, agent: &str) -> PathBuf {
        self.mailbox_dir(agent).join("done")
    }

    /// `messages/<agent>/dead/`: dead letters.
    pub fn mailbox_dead(&self, agent: &str) -> PathBuf {
        self.mailbox_dir(agent).join("dead")
    }

    /// `messages/<agent>/bad/`: files a receiver could not use, moved aside.
    pub fn mailbox_bad(&self, agent: &str) -> PathBuf {
        self.mailbox_dir(agent).join("bad")
    }

    /// `messages/<agent>/new/<prio>/<t0>/<t1>/<t2>/<t3>/<id>.json` for a message of
    /// `priority` sent at `sent_ms` (Unix milliseconds).
    pub fn queued_message(&self, agent: &str, priority: i64, sent_ms: u64, id: &str) -> PathBuf {
        let mut p = self.mailbox_new(agent);
        p.push(queue_shard::priority(priority));
        for part in queue_shard::time(sent_ms) {
            p.push(part);
        }
        p.push(message_file_name(id));
        p
    }

    /// `messages/<agent>/cur/<id>.json`.
    pub fn in_flight_message(&self, agent: &str, id: &str) -> PathBuf {
        self.mailbox_cur(agent).join(message_file_name(id))
    }

    /// `messages/<agent>/done/<id>.json`.
    pub fn acked_message(&self, agent: &str, id: &str) -> PathBuf {
        self.mailbox_done(agent).join(message_file_name(id))
    }

    /// `messages/<agent>/dead/<id>.json`.
    pub fn dead_message(&self, agent: &str, id: &str) -> PathBuf {
        self.mailbox_dead(agent).join(message_file_name(id))
    }

    /// `messages/<agent>/tmp/<id>.requeue`: a message being moved back to the queue.
    pub fn requeue_handover(&self, agent: &str, id: &str) -> PathBuf {
        self.mailbox_tmp(agent).join(format!("{id}{REQUEUE_SUFFIX}"))
    }
}

/// The state key of the aggregate view `state/results.json`; aggregate writes it under
/// this key's lock, so `state update results` and aggregate exclude each other.
pub const RESULTS_KEY: &str = "results";

/// `results/final-report.json`'s stem: no agent's results file can have this name.
pub const FINAL_REPORT_STEM: &str = "final-report";

/// The locks the tools take on their own files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolLock {
    /// Serializes changes to `registry/agents.json`.
    Registry,
    /// Serializes changes to `session.json`.
    Session,
    /// Held for its whole life by the one health monitor of a session.
    Healthmon,
    /// Serializes the allocation of task submission sequence numbers (`tasks/seq`).
    TaskSeq,
    /// Serializes push assignment passes (`taskd assign`/`run`) and the round-robin cursor.
    TaskAssign,
    /// Serializes appends to `results/<agent>.json`.
    Results,
    /// Serializes `msgq requeue` (and healthmon's requeue) of in-flight messages.
    Mailbox,
    /// Serializes `taskd pause`/`resume` (`tasks/paused.json`).
    TaskPause,
}

impl ToolLock {
    /// The lock's name, also its file name under `locks/` (plus `.lock`).
    pub fn name(self) -> &'static str {
        match self {
            ToolLock::Registry => "_registry",
            ToolLock::Session => "_session",
            ToolLock::Healthmon => "_healthmon",
            ToolLock::TaskSeq => "_task_seq",
            ToolLock::TaskAssign => "_task_assign",
            ToolLock::Results => "_results",
            ToolLock::Mailbox => "_mailbox",
            ToolLock::TaskPause => "_task_pause",
        }
    }
}

/// Creates `messages/<agent>/{tmp,new,cur}` if missing. Idempotent.
///
/// Registration (the seed's "message queues ready") and every mailbox operation call
/// this; it lives here, beside the paths it creates, so that neither the registry nor
/// the mailbox has to import the other for it. `done/`, `dead/` and `bad/` are made by
/// the first message moved into them ([`fsio::rename_noclobber`] creates a missing
/// parent), and every reader takes a missing one as empty: most agents never have a
/// dead letter, and the overview need not list two empty directories per agent.
pub fn ensure_mailbox(dir: &SessionDir, agent: &str) -> Result<()> {
    id::validate("agent", agent)?;
    for d in [dir.mailbox_tmp(agent), dir.mailbox_new(agent), dir.mailbox_cur(agent)] {
        fsio::ensure_dir(&d)?;
    }
    Ok(())
}

/// The file name of message `id` in a mailbox directory.
pub fn message_file_name(id: &str) -> String {
    format!("{id}.json")
}

/// Suffix of requeue hand-over files in a mailbox's `tmp/`.
pub const REQUEUE_SUFFIX: &str = ".requeue";

/// Names of the queue's shard directories, `new/<prio>/<t0>/<t1>/<t2>/<t3>/`.
///
/// Each name is fixed-width lowercase hex, so sorting names sorts delivery order:
/// higher priority first, then earlier send time.
pub mod queue_shard {
    /// Directory levels between `new/` and the message files.
    pub const DEPTH: usize = 5;

    /// The priority level's name: `i64::MAX - priority` as 16 hex digits, so that a
    /// higher priority sorts first.
    pub fn priority(priority: i64) -> String {
        let key = (i128::from(i64::MAX) - i128::from(priority)) as u64;
        format!("{key:016x}")
    }

    /// The four time levels for a send time in Unix milliseconds.
    pub fn time(ms: u64) -> [String; 4] {
        [
            format!("{:08x}", ms >> 24),
            format!("{:02x}", (ms >> 16) & 0xff),
            format!("{:02x}", (ms >> 8) & 0xff),
            format!("{:x}", (ms >> 4) & 0xf),
        ]
    }

    /// Whether `name` is a valid directory name at `level` (0 = priority, 1..=4 = time).
    /// The finest level, 16 ms, is one hex digit: a leaf holds every message sent in its
    /// 16 ms, so single sends a few milliseconds apart share it instead of each creating a
    /// directory, and a leaf stays small (a few hundred names at batch rates).
    pub fn is_valid(level: usize, name: &str) -> bool {
        let width = match level {
            0 => 16,
            1 => 8,
            2 | 3 => 2,
            4 => 1,
            _ => return false,
        };
        name.len() == width && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn shard_names_sort_in_delivery_order() {
            assert!(priority(10) < priority(0) && priority(0) < priority(-10));
            assert!(priority(i64::MAX) < priority(i64::MIN));
            assert!(is_valid(0, &priority(i64::MIN)) && is_valid(0, &priority(i64::MAX)));
            let (a, b) = (time(1_767_225_600_123), time(1_767_225_600_139));
            assert!(a < b);
            // Sends within the same 16 ms share a leaf.
            assert_eq!(time(1_767_225_600_112), time(1_767_225_600_127));
            for (level, part) in a.iter().enumerate() {
                assert!(is_valid(level + 1, part), "{part}");
            }
            assert!(!is_valid(1, "zzzzzzzz") && !is_valid(2, "0") && !is_valid(4, "00") && !is_valid(5, "0"));
            // Milliseconds from 1970 to well past 2100 keep the head's fixed width.
            assert_eq!(time(u64::from(u32::MAX) << 24)[0].len(), 8);
        }
    }
}
