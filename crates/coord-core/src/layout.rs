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
use crate::id;
use crate::lock::{self, LockGuard};
use crate::sys;

/// The version of the layout this code reads and writes (`session.json` `layout_version`).
pub const LAYOUT_VERSION: u32 = 1;

/// Subdirectories every session has, created by `session-init`.
pub const SESSION_DIRS: &[&str] =
    &["registry", "registry/heartbeats", "state", "messages", "tasks", "results", "locks", "metrics"];

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
}

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

    /// `results/final-report.json`.
    pub fn final_report(&self) -> PathBuf {
        self.root.join("results/final-report.json")
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
}

/// The locks the tools take on their own files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolLock {
    /// Serializes changes to `registry/agents.json`.
    Registry,
    /// Serializes changes to `session.json`.
    Session,
    /// Held for its whole life by the one health monitor of a session.
    Healthmon,
}

impl ToolLock {
    /// The lock's name, also its file name under `locks/` (plus `.lock`).
    pub fn name(self) -> &'static str {
        match self {
            ToolLock::Registry => "_registry",
            ToolLock::Session => "_session",
            ToolLock::Healthmon => "_healthmon",
        }
    }
}
