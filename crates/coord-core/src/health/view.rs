//! The per-agent lines of the session overview ([`agent_views`]): registration,
//! liveness and heartbeat age of each agent, read from `registry/agents.json`, the
//! heartbeat files and `/proc`, without a lock and without changing anything.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};

use super::*;

/// One agent's line in the overview.
#[derive(Debug, Clone, Serialize)]
pub struct AgentView {
    /// Agent id.
    pub id: String,
    /// Agent type.
    #[serde(rename = "type")]
    pub agent_type: String,
    /// Registry status.
    pub status: String,
    /// Host.
    pub host: String,
    /// Pid on its host.
    pub pid: Option<u32>,
    /// Judged alive now (`null` for terminated agents and those that cannot be judged).
    pub alive: Option<bool>,
    /// Why it is not alive, if so.
    pub reason: Option<String>,
    /// Seconds since the last heartbeat (or registration).
    pub heartbeat_age_secs: Option<f64>,
    /// Last sampled CPU use, e.g. `"15%"`.
    pub cpu: Option<String>,
    /// Last sampled memory, e.g. `"120MB"`.
    pub memory: Option<String>,
    /// Tasks currently assigned.
    pub tasks: Vec<String>,
}

/// The agents part of `healthmon status`, judged with `stale_after`.
pub fn agent_views(dir: &SessionDir, stale_after: Duration) -> Result<(Vec<AgentView>, Vec<String>)> {
    Processes::new().agent_views(dir, stale_after, false)
}

/// Below this many agents the views are made on one thread.
const PARALLEL_FROM: usize = 256;

/// The processes of this host's agents found to be theirs and running, each held by a
/// pidfd, so a view made again and again (the live view) need not read `/proc` for them
/// each time: a pidfd refers to one process, never to a later one given its pid, and
/// one poll(2) over all of them tells which have exited since. A process that exited is
/// forgotten and its agent checked the full way again.
#[derive(Debug, Default)]
pub struct Processes {
    held: HashMap<String, Held>,
    /// `registry/agents.json` as last read: its identity and what it held.
    read: Option<(FileKey, Vec<Agent>, Vec<String>)>,
}

/// What tells one version of a file from another: device, inode, size and mtime. Every
/// write of `agents.json` renames a new file into place, so its inode changes, unless
/// the number is reused at once: what was read from a file changed less than [`FRESH`]
/// before is not remembered.
type FileKey = (u64, u64, u64, Option<SystemTime>);

/// See [`FileKey`].
const FRESH: Duration = Duration::from_secs(2);

/// One agent's process, checked, and the pidfd that holds it.
#[derive(Debug)]
struct Held {
    /// The registration it was checked for.
    registered_at: String,
    pid: u32,
    start: Option<u64>,
    inode: Option<u64>,
    fd: OwnedFd,
}

impl Held {
    fn is_of(&self, a: &Agent, pid: u32) -> bool {
        self.pid == pid
            && a.pid == Some(pid)
            && self.start == a.process_start
            && self.inode == a.process_inode
            && self.registered_at == a.registered_at
    }
}

/// What a view did with its agent's process.
enum Kept {
    /// Nothing is held for it.
    Nothing,
    /// The one held before still stands.
    Same,
    /// Checked now, and held from now on.
    New(Held),
}

impl Processes {
    /// Holds nothing yet.
    pub fn new() -> Processes {
        Processes::default()
    }

    /// How many pidfds may be held: half the descriptors this process may open.
    fn limit() -> usize {
        usize::try_from(sys::open_files_limit() / 2).unwrap_or(usize::MAX).saturating_sub(64)
    }

    /// The registrations (as [`load_agents_lenient`] reads them), read again only when
    /// `agents.json` changed.
    pub(crate) fn registrations(&mut self, dir: &SessionDir) -> Result<(Vec<Agent>, Vec<String>)> {
        use std::io::Read;
        use std::os::unix::fs::MetadataExt;
        let path = dir.agents_json();
        let mut f = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.read = None;
                return Ok((Vec::new(), Vec::new()));
            }
            Err(e) => return Err(crate::error::Error::io("read", &path, e)),
        };
        let meta = f.metadata().map_err(|e| crate::error::Error::io("inspect", &path, e))?;
        let mtime = meta.modified().ok();
        let key = (meta.dev(), meta.ino(), meta.len(), mtime);
        if let Some((seen, agents, problems)) = &self.read
            && *seen == key
        {
            return Ok((agents.clone(), problems.clone()));
        }
        // A file changed within FRESH of this read is not trusted later: a rewrite in the
        // same tick, reusing the inode number and the size, would look the same.
        let settled = mtime.is_some_and(|t| SystemTime::now().duration_since(t).is_ok_and(|age| age >= FRESH));
        let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
        f.read_to_end(&mut bytes).map_err(|e| crate::error::Error::io("read", &path, e))?;
        let (agents, problems) = parse_agents_lenient(&path, &bytes)?;
        self.read = settled.then(|| (key, agents.clone(), problems.clone()));
        Ok((agents, problems))
    }

    /// [`judge`] for a caller that judges agents one at a time (the monitor's tick),
    /// after [`Processes::forget_exited`]: a process held is not checked again, and one
    /// found to be its agent's is held from now on.
    pub fn judge(
        &mut self,
        agent: &Agent,
        last_beat: Option<SystemTime>,
        now: SystemTime,
        here: &Observer,
        stale_after: Duration,
    ) -> Liveness {
        let may_hold = self.held.len() < Self::limit();
        let mut kept = Kept::Nothing;
        let held = &self.held;
        let judged = judge_with(agent, last_beat, now, here, stale_after, &mut |a, pid| {
            check_identity(held, a, pid, may_hold, &mut kept)
        });
        match kept {
            Kept::Same => {}
            Kept::New(h) => {
                self.held.insert(agent.id.clone(), h);
            }
            Kept::Nothing => {
                self.held.remove(&agent.id);
            }
        }
        judged
    }

    /// Forgets the processes of agents not in `ids`.
    pub fn keep_only(&mut self, ids: &std::collections::HashSet<&str>) {
        self.held.retain(|id, _| ids.contains(id.as_str()));
    }

    /// Forgets the processes that have exited.
    pub fn forget_exited(&mut self) {
        if self.held.is_empty() {
            return;
        }
        let (ids, fds): (Vec<&String>, Vec<_>) = self.held.iter().map(|(id, h)| (id, h.fd.as_fd())).unzip();
        match sys::exited(&fds) {
            Ok(gone) => {
                let gone: Vec<String> =
                    ids.into_iter().zip(gone).filter(|(_, g)| *g).map(|(id, _)| id.clone()).collect();
                for id in gone {
                    self.held.remove(&id);
                }
            }
            Err(e) => {
                log::debug!("poll of the agents' pidfds failed ({e}): checking every agent again");
                self.held.clear();
            }
        }
    }

    /// [`agent_views`], checking again only the processes not held or exited since;
    /// with `hold`, the processes checked now are held for the next time.
    pub fn agent_views(
        &mut self,
        dir: &SessionDir,
        stale_after: Duration,
        hold: bool,
    ) -> Result<(Vec<AgentView>, Vec<String>)> {
        let (agents, problems) = self.registrations(dir)?;
        self.forget_exited();
        let here = Observer::here();
        let now = SystemTime::now();
        let may_hold = hold && self.held.len() + agents.len() <= Self::limit();
        let held = &self.held;
        let made = sys::parallel_map(agents, PARALLEL_FROM, |a: Agent| {
            view_one(dir, a, now, &here, stale_after, held, may_hold)
        });
        let mut before = std::mem::take(&mut self.held);
        let mut views = Vec::with_capacity(made.len());
        for (view, kept) in made {
            match kept {
                Kept::Nothing => {}
                Kept::Same => {
                    if let Some(h) = before.remove(&view.id) {
                        self.held.insert(view.id.clone(), h);
                    }
                }
                Kept::New(h) => {
                    self.held.insert(view.id.clone(), h);
                }
            }
            views.push(view);
        }
        Ok((views, problems))
    }
}

/// Why the process at `pid` is not `agent`'s (see [`not_the_agent`]), unless `held`
/// holds it already; with `may_hold`, a process found to be the agent's is to be held
/// from now on (`kept`).
fn check_identity(
    held: &HashMap<String, Held>,
    agent: &Agent,
    pid: u32,
    may_hold: bool,
    kept: &mut Kept,
) -> Option<String> {
    if held.get(&agent.id).is_some_and(|h| h.is_of(agent, pid)) {
        *kept = Kept::Same;
        return None;
    }
    // Opened before the check, so the process checked is the one held (or the check
    // fails): a pid handed on in between shows as another start or inode.
    let fd = if may_hold { sys::pidfd_open(pid) } else { None };
    let why = not_the_agent(agent, pid, fd.as_ref().map(|f| f.as_fd()));
    if why.is_none()
        && let Some(fd) = fd
    {
        *kept = Kept::New(Held {
            registered_at: agent.registered_at.clone(),
            pid,
            start: agent.process_start,
            inode: agent.process_inode,
            fd,
        });
    }
    why
}

/// One agent's view, judged now; its process is checked unless `held` holds it.
fn view_one(
    dir: &SessionDir,
    a: Agent,
    now: SystemTime,
    here: &Observer,
    stale_after: Duration,
    held: &HashMap<String, Held>,
    may_hold: bool,
) -> (AgentView, Kept) {
    let last = registry::last_heartbeat(dir, &a.id);
    let mut kept = Kept::Nothing;
    let (alive, reason) = if is_live_status(&a.status) {
        let mut identity = |agent: &Agent, pid: u32| check_identity(held, agent, pid, may_hold, &mut kept);
        match judge_with(&a, last, now, here, stale_after, &mut identity) {
            Liveness::Alive => (Some(true), None),
            Liveness::Dead(r) | Liveness::Hung(r) => (Some(false), Some(r)),
            Liveness::Unknown(r) => (None, Some(r)),
        }
    } else {
        (Some(false), a.reason.clone())
    };
    let beat = last.or_else(|| a.last_heartbeat.as_deref().and_then(time::parse_rfc3339));
    let view = AgentView {
        heartbeat_age_secs: beat
            .map(|t| (now.duration_since(t).unwrap_or_default().as_secs_f64() * 10.0).round() / 10.0),
        cpu: a.resource_usage.as_ref().map(|u| u.cpu.clone()).filter(|s| !s.is_empty()),
        memory: a.resource_usage.as_ref().map(|u| u.memory.clone()).filter(|s| !s.is_empty()),
        id: a.id,
        agent_type: a.agent_type,
        status: a.status,
        host: a.host,
        pid: a.pid,
        alive,
        reason,
        tasks: a.assigned_tasks,
    };
    (view, kept)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::Base;

    #[test]
    fn a_held_process_is_checked_again_once_it_exits() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = crate::session::init(&Base::new(tmp.path().join("base")), "unit").expect("init");
        let mut children = Vec::new();
        for id in ["reaped", "zombie", "stays"] {
            let child = std::process::Command::new("sleep").arg("60").spawn().expect("spawn sleep");
            let req = registry::Registration {
                id: id.into(),
                agent_type: "worker".into(),
                capabilities: Vec::new(),
                pid: child.id(),
                replace: false,
            };
            registry::register(&dir, &req, Duration::from_secs(5)).expect("register");
            children.push(child);
        }
        let alive = |views: &[AgentView], id: &str| views.iter().find(|v| v.id == id).and_then(|v| v.alive);
        let mut p = Processes::new();
        let (views, _) = p.agent_views(&dir, Duration::from_secs(30), true).expect("views");
        assert!(["reaped", "zombie", "stays"].iter().all(|id| alive(&views, id) == Some(true)), "{views:?}");
        assert_eq!(p.held.len(), 3, "each process is held");
        let (views, _) = p.agent_views(&dir, Duration::from_secs(30), true).expect("views");
        assert_eq!(alive(&views, "stays"), Some(true));
        assert_eq!(p.held.len(), 3);

        children[0].kill().expect("kill");
        children[0].wait().expect("reap");
        children[1].kill().expect("kill");
        // Not reaped: a zombie until the test ends, which counts as gone.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let views = loop {
            let (views, _) = p.agent_views(&dir, Duration::from_secs(30), true).expect("views");
            if alive(&views, "zombie") == Some(false) || std::time::Instant::now() > deadline {
                break views;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        assert_eq!(alive(&views, "reaped"), Some(false), "{views:?}");
        assert_eq!(alive(&views, "zombie"), Some(false), "{views:?}");
        assert_eq!(alive(&views, "stays"), Some(true));
        assert_eq!(p.held.keys().collect::<Vec<_>>(), vec!["stays"], "the exited are forgotten");
        // Once, nothing is held.
        let mut once = Processes::new();
        once.agent_views(&dir, Duration::from_secs(30), false).expect("views");
        assert!(once.held.is_empty());
        for mut c in children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
