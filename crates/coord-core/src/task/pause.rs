//! Pausing the queue (`taskd pause` / `resume`): `tasks/paused.json` says whether the
//! whole queue, or the tasks of some agent types, are paused. While paused, claims and
//! push assignments hand out nothing of what is paused; claims already made are
//! untouched. The file exists only while something is paused, so a claim pays one
//! failed open for the check. Changes are made under lock `_task_pause`; a resume rings
//! the pending bell so waiting claimers look again.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::bell;
use super::index::Route;
use crate::error::Result;
use crate::layout::{SessionDir, ToolLock};
use crate::{fsio, time};

/// One pause: when it was made and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PauseEntry {
    /// RFC 3339 UTC.
    pub at: String,
    /// Why, as given to `taskd pause --reason`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// What is paused: `{"all": {...} | null, "types": {"<type>": {...}}}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Paused {
    /// The whole queue, when paused.
    #[serde(default)]
    pub all: Option<PauseEntry>,
    /// Tasks that require these agent types.
    #[serde(default)]
    pub types: BTreeMap<String, PauseEntry>,
}

impl Paused {
    /// Whether nothing is paused.
    pub fn is_empty(&self) -> bool {
        self.all.is_none() && self.types.is_empty()
    }

    /// Whether tasks of `route` may be handed out now.
    pub fn admits(&self, route: &Route) -> bool {
        self.all.is_none() && route.agent_type.as_ref().is_none_or(|t| !self.types.contains_key(t))
    }
}

/// What is paused now (nothing when `tasks/paused.json` is missing).
pub fn paused(dir: &SessionDir) -> Result<Paused> {
    Ok(fsio::read_json_opt(&dir.tasks_paused_file())?.unwrap_or_default())
}

/// Pauses the whole queue (`agent_type` `None`) or the tasks requiring one agent type.
/// Pausing what is already paused keeps the first pause. Returns what is paused after.
pub fn pause(dir: &SessionDir, agent_type: Option<&str>, reason: Option<&str>, timeout: Duration) -> Result<Paused> {
    if let Some(t) = agent_type {
        crate::id::validate("agent type", t)?;
    }
    change(dir, timeout, |p| {
        let entry = PauseEntry { at: time::now_rfc3339(), reason: reason.map(str::to_string) };
        match agent_type {
            None => {
                p.all.get_or_insert(entry);
            }
            Some(t) => {
                p.types.entry(t.to_string()).or_insert(entry);
            }
        }
    })
}

/// Resumes the whole queue (`agent_type` `None`: every pause goes) or one agent type.
/// Resuming what is not paused changes nothing. Returns what is paused after.
pub fn resume(dir: &SessionDir, agent_type: Option<&str>, timeout: Duration) -> Result<Paused> {
    if let Some(t) = agent_type {
        crate::id::validate("agent type", t)?;
    }
    let after = change(dir, timeout, |p| match agent_type {
        None => *p = Paused::default(),
        Some(t) => {
            p.types.remove(t);
        }
    })?;
    bell::ring(&dir.task_pending_bell());
    Ok(after)
}

fn change(dir: &SessionDir, timeout: Duration, f: impl FnOnce(&mut Paused)) -> Result<Paused> {
    super::ensure_store(dir)?;
    let _g = dir.tool_lock(ToolLock::TaskPause, timeout)?;
    let path = dir.tasks_paused_file();
    let mut p = paused(dir)?;
    let before = p.clone();
    f(&mut p);
    if p == before {
        return Ok(p);
    }
    if p.is_empty() {
        match std::fs::remove_file(&path) {
            Ok(()) => fsio::sync_parent(&path)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(crate::Error::io("remove", &path, e)),
        }
    } else {
        fsio::write_json(&path, &p)?;
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_type_pause_holds_only_tasks_of_that_type() {
        let mut p = Paused::default();
        let typed = Route::new(Some("gpu"), &[]);
        let other = Route::new(Some("cpu"), &[]);
        let any = Route::new(None, &[]);
        assert!(p.admits(&typed) && p.is_empty());
        p.types.insert("gpu".into(), PauseEntry { at: "t".into(), reason: None });
        assert!(!p.admits(&typed));
        assert!(p.admits(&other) && p.admits(&any));
        p.all = Some(PauseEntry { at: "t".into(), reason: None });
        assert!(!p.admits(&any) && !p.admits(&other));
    }
}
