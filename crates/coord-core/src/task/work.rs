//! `taskd work`: a worker loop for shell users.
//!
//! Registers the agent if needed, then repeatedly claims a task (waiting on inotify),
//! runs the command with the task JSON on stdin and `TASK_ID`, `TASK_PAYLOAD`,
//! `TASK_CLAIM_TOKEN`, `COORD_AGENT` in its environment, and renews the lease (by
//! heartbeat) while it runs. Exit 0 completes the task with the command's stdout as the
//! result (JSON if it parses, else a string); any other exit fails the attempt with the
//! tail of its stderr. SIGTERM/SIGINT stop the loop: a running command gets SIGTERM and
//! its task is released without spending an attempt.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;

use super::bell::Signals;
use super::{ClaimOptions, Holder, Task};
use crate::error::{Error, Result};
use crate::layout::SessionDir;
use crate::record::status as agent_status;
use crate::registry;

/// Bytes of stderr kept as the error of a failed attempt.
pub const STDERR_TAIL: usize = 2000;

/// What the worker does.
#[derive(Debug, Clone)]
pub struct WorkOptions {
    /// Agent id.
    pub agent: String,
    /// Agent type when registering (default `worker`).
    pub agent_type: Option<String>,
    /// Capabilities when registering (added to an existing registration).
    pub capabilities: Vec<String>,
    /// The command and its arguments.
    pub cmd: Vec<String>,
    /// Lease of each claim.
    pub lease: Duration,
    /// Stop after this many tasks.
    pub max_tasks: Option<u64>,
    /// Stop after waiting this long for a task.
    pub idle_exit: Option<Duration>,
}

/// One task the worker finished.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// The task.
    pub id: String,
    /// `completed`, `failed` (for good), `pending` (will be retried), `released`, or
    /// `lost` (the claim was taken over while the command ran).
    pub status: String,
    /// The command's exit code (128+N for signal N).
    pub exit_code: u8,
}

/// Runs the loop; `report` is called after each task. Returns how many tasks ran.
pub fn work(
    dir: &SessionDir,
    opts: &WorkOptions,
    timeout: Duration,
    mut report: impl FnMut(&Outcome) -> Result<()>,
) -> Result<u64> {
    if opts.cmd.is_empty() {
        return Err(Error::Usage("taskd work needs a command after --".into()));
    }
    let signals = Signals::install().map_err(|e| Error::Failed(format!("cannot install signal handlers: {e}")))?;
    let registered_here = ensure_registered(dir, opts, timeout)?;
    let claim_opts = ClaimOptions { lease: opts.lease, assigned_by: None };
    let mut done = 0u64;
    let result = (|| {
        while opts.max_tasks.is_none_or(|m| done < m) && !signals.received() {
            let t = match super::claim_wait(dir, &opts.agent, &claim_opts, opts.idle_exit, Some(&signals), timeout) {
                Ok(Some(t)) => t,
                Ok(None) => break,
                Err(Error::Empty(_)) => break,
                Err(e) => return Err(e),
            };
            let outcome = run_one(dir, opts, &t, &signals, timeout)?;

            done += 1;
            report(&outcome)?;
        }
        Ok(done)
    })();
    if registered_here && let Err(e) = registry::unregister(dir, &opts.agent, timeout) {
        log::warn!("could not unregister agent {:?}: {e}", opts.agent);
    }
    result
}

/// Registers the agent (as this process) unless an active registration of a live
/// process on this host exists: this process, or one it runs under (the agent that
/// started it). A registration whose process is gone, or from another host, is replaced,
/// since a restarted worker would otherwise run under a dead process's registration
/// and healthmon would requeue its live work. A live registration of any other process
/// is another worker under this id: refused. Returns whether it registered.
fn ensure_registered(dir: &SessionDir, opts: &WorkOptions, timeout: Duration) -> Result<bool> {
    let live = |a: &crate::record::Agent| {
        a.host == crate::sys::host() && a.pid.is_some_and(|p| crate::sys::process_alive(p, a.process_start))
    };
    match registry::show(dir, &opts.agent) {
        Ok(a) if a.status == agent_status::ACTIVE && live(&a) => {
            let pid = a.pid.unwrap_or_default();
            if !runs_under(pid) {
                return Err(Error::Failed(format!(
                    "agent {:?} is registered to process {pid} on {}, which is alive: another worker runs under this id; pick another id",
                    opts.agent, a.host
                )));
            }
            let missing: Vec<String> =
                opts.capabilities.iter().filter(|c| !a.capabilities.contains(c)).cloned().collect();
            if !missing.is_empty() {
                let changes = registry::Changes { add_capabilities: missing, ..Default::default() };
                registry::update(dir, &opts.agent, &changes, timeout)?;
            }
            Ok(false)
        }
        old => {
            let dead_here = matches!(&old, Ok(a) if a.status == agent_status::ACTIVE && a.host == crate::sys::host());
            let req = registry::Registration {
                id: opts.agent.clone(),
                agent_type: opts.agent_type.clone().unwrap_or_else(|| "worker".to_string()),
                capabilities: opts.capabilities.clone(),
                pid: std::process::id(),
                replace: true,
            };
            registry::register(dir, &req, timeout)?;
            if dead_here {
                // What the dead process held goes back to the queue, as healthmon would
                // have done; this process has claimed nothing yet.
                let why = format!("agent {} restarted; its previous process is gone", opts.agent);
                let r = super::requeue_agent(dir, &opts.agent, &why, timeout)?;
                if !r.tasks.is_empty() {
                    log::warn!("{why}: requeued its tasks {:?}", r.tasks);
                }
            }
            Ok(true)
        }
    }
}

/// Whether `pid` is this process or one of its ancestors.
fn runs_under(pid: u32) -> bool {
    let mut p = std::process::id();
    for _ in 0..64 {
        if p == pid {
            return true;
        }
        let parent = std::fs::read_to_string(format!("/proc/{p}/stat")).ok().and_then(|stat| {
            // Field 4, counted after the command name's closing parenthesis.
            stat[stat.rfind(')')? + 1..].split_ascii_whitespace().nth(1)?.parse::<u32>().ok()
        });
        match parent {
            Some(pp) if pp > 1 => p = pp,
            _ => return false,
        }
    }
    false
}

fn run_one(dir: &SessionDir, opts: &WorkOptions, t: &Task, signals: &Signals, timeout: Duration) -> Result<Outcome> {
    let holder = Holder { agent: Some(opts.agent.clone()), token: t.claim_token.clone() };
    let input = crate::fsio::to_json_bytes(t);
    let payload = match &t.payload {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let (program, args) = opts.cmd.split_first().expect("checked non-empty");
    let spawned = Command::new(program)
        .args(args)
        .env("TASK_ID", &t.id)
        .env("TASK_PAYLOAD", payload)
        .env("TASK_CLAIM_TOKEN", t.claim_token.as_deref().unwrap_or_default())
        .env("COORD_AGENT", &opts.agent)
        .env("COORD_SESSION", dir.id())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            // The command cannot run at all: spend the attempt with the reason.
            let msg = format!("cannot run {program:?}: {e}");
            let after = super::fail(dir, &t.id, &holder, &msg, timeout)?;
            return Ok(Outcome { id: t.id.clone(), status: after.status, exit_code: 127 });
        }
    };
    let mut stdin = child.stdin.take().expect("stdin was piped");
    let feeder = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let mut out_pipe = child.stdout.take().expect("stdout was piped");
    let mut err_pipe = child.stderr.take().expect("stderr was piped");
    let out_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out_pipe.read_to_end(&mut v);
        v
    });
    let err_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err_pipe.read_to_end(&mut v);
        v
    });
    // Renew the lease while the command runs: the heartbeat is the renewal.
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let beat_every = (opts.lease / 3).max(Duration::from_millis(100));
    let (beat_dir, beat_agent) = (dir.clone(), opts.agent.clone());
    let beater = std::thread::spawn(move || {
        while let Err(mpsc::RecvTimeoutError::Timeout) = stop_rx.recv_timeout(beat_every) {
            if let Err(e) = registry::heartbeat(&beat_dir, &beat_agent) {
                log::warn!("lease renewal (heartbeat) failed: {e}");
            }
        }
    });
    let mut interrupted = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) => {}
            Err(e) => return Err(Error::Failed(format!("waiting for {program:?}: {e}"))),
        }
        if !interrupted && signals.received() {
            interrupted = true;
            // SAFETY: kill with the pid of our own child; failure means it already exited.
            unsafe {
                libc::kill(child.id() as i32, libc::SIGTERM);
            }
        }
        wait_child(&child, Duration::from_millis(50));
    };
    let _ = stop_tx.send(());
    let _ = beater.join();
    let _ = feeder.join();
    let stdout = out_reader.join().unwrap_or_default();
    let stderr = err_reader.join().unwrap_or_default();
    if !stderr.is_empty() {
        let _ = std::io::stderr().write_all(&stderr);
    }
    let code = crate::state::exit_code_of(status);
    let finished = if interrupted {
        super::release(dir, &t.id, &holder, timeout).map(|_| "released".to_string())
    } else if status.success() {
        let result = serde_json::from_slice::<Value>(&stdout).unwrap_or_else(|_| {
            let text = String::from_utf8_lossy(&stdout);
            Value::String(text.strip_suffix('\n').unwrap_or(&text).to_string())
        });
        super::complete(dir, &t.id, &holder, result, timeout).map(|a| a.status)
    } else {
        let tail = tail(&stderr);
        let msg = if tail.trim().is_empty() { format!("{program:?} exited with status {code}") } else { tail };
        super::fail(dir, &t.id, &holder, &msg, timeout).map(|a| a.status)
    };
    let status = match finished {
        Ok(s) => s,
        Err(e @ Error::Failed(_)) if e.to_string().starts_with("claim lost") => {
            log::warn!("{e}");
            "lost".to_string()
        }
        Err(e) => return Err(e),
    };
    Ok(Outcome { id: t.id.clone(), status, exit_code: code })
}

/// Blocks until the child exits or `max` passes, without reaping it (waitid WNOWAIT),
/// so a short command is noticed at once rather than at the next poll tick.
fn wait_child(child: &std::process::Child, max: Duration) {
    let start = Instant::now();
    // SAFETY: a pidfd for our own unreaped child; closed below.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, child.id() as libc::pid_t, 0) } as i32;
    if fd < 0 {
        std::thread::sleep(Duration::from_millis(5).min(max));
        return;
    }
    let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    let ms = i32::try_from(max.saturating_sub(start.elapsed()).as_millis()).unwrap_or(50);
    // SAFETY: one valid pollfd; then close the descriptor we opened.
    unsafe {
        libc::poll(&mut p, 1, ms);
        libc::close(fd);
    }
}

fn tail(stderr: &[u8]) -> String {
    let start = stderr.len().saturating_sub(STDERR_TAIL);
    let text = String::from_utf8_lossy(&stderr[start..]);
    text.trim_end().to_string()
}
