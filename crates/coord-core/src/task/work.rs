//! `taskd work`: a worker loop for shell users.
//!
//! Registers the agent if needed, then repeatedly claims a task (waiting on inotify),
//! runs the command with the task JSON on stdin and `TASK_ID`, `TASK_PAYLOAD`,
//! `TASK_CLAIM_TOKEN`, `COORD_AGENT` in its environment, and renews the lease (by
//! heartbeat) while it runs. Exit 0 completes the task with the command's stdout as the
//! result (JSON if it parses, else a string); any other exit fails the attempt with the
//! tail of its stderr. Each attempt's stdout and stderr are kept, up to a cap, in
//! `tasks/output/` ([`super::output`]). SIGTERM/SIGINT stop the loop: a running command
//! gets SIGTERM and its task is released without spending an attempt. A kill request for
//! the running claim (`taskd kill`, [`super::kill`]) stops the command and records the
//! attempt as killed.
//!
//! The command runs in a process group of its own, so a signal reaches everything it
//! started.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;

use super::bell::{Bell, Signals, Wake};
use super::kill::{KILL_GRACE, KillRequest};
use super::output::Capture;
use super::{ClaimOptions, Holder, Task, Unassign};
use crate::error::{Error, Result};
use crate::fsio;
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
    /// Bytes of each stream of each attempt kept in `tasks/output/` (0: none).
    pub output_cap: u64,
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
    /// Set when the command was stopped by `taskd kill`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub killed: bool,
}

/// The longest gap between a worker's heartbeats: a third of healthmon's default
/// `--stale-after` (30 s), so a worker is never taken for hung, busy or idle.
pub const MAX_BEAT_EVERY: Duration = Duration::from_secs(10);

/// How often a worker with this lease heartbeats: every lease/3 (the renewal), at most
/// every [`MAX_BEAT_EVERY`], at least every 100 ms.
pub fn beat_every(lease: Duration) -> Duration {
    (lease / 3).min(MAX_BEAT_EVERY).max(Duration::from_millis(100))
}

fn beat(dir: &SessionDir, agent: &str) {
    if let Err(e) = registry::heartbeat(dir, agent) {
        log::warn!("heartbeat failed: {e}");
    }
}

/// Runs the loop; `report` is called after each task. Returns how many tasks ran.
///
/// One thread does everything: the command's pipes, its exit (a pidfd) and the lease
/// renewals are multiplexed with poll(2). The old versions of the records and registry
/// it replaces are removed while the command runs ([`fsio::DeferredRemoval`]), not on the
/// way to starting it. A finished task leaves the agent's
/// `assigned_tasks` in the same registry rewrite that adds the next claim (or, when
/// there is none, before the worker waits or exits).
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
    let _removal = fsio::DeferredRemoval::start();
    let registered_here = ensure_registered(dir, opts, timeout)?;
    super::ensure_store(dir)?;
    // Kill requests arrive here; watched for the worker's whole life, like the pending bell.
    let mut control = Bell::watch(&[dir.tasks_control_dir()]);
    let claim_opts = ClaimOptions { lease: opts.lease, assigned_by: None };
    let program = resolve_program(&opts.cmd[0]);
    let mut done = 0u64;
    let mut finished: Vec<String> = Vec::new();
    let mut bell: Option<Bell> = None;
    let result = (|| {
        while opts.max_tasks.is_none_or(|m| done < m) && !signals.received() {
            let t = match next_task(dir, opts, &claim_opts, &signals, &mut finished, &mut bell, timeout) {
                Ok(Some(t)) => t,
                Ok(None) => break,
                Err(Error::Empty(_)) => break,
                Err(e) => return Err(e),
            };
            let outcome = run_one(dir, opts, &program, &t, &signals, &mut control, timeout)?;
            // A finished task is a sign of life, even one shorter than the beat interval.
            beat(dir, &opts.agent);
            if outcome.status != "lost" {
                finished.push(t.id.clone());
            }
            done += 1;
            report(&outcome)?;
        }
        Ok(done)
    })();
    super::update_assigned(dir, &opts.agent, None, &finished, timeout);
    if registered_here && let Err(e) = registry::unregister(dir, &opts.agent, timeout) {
        log::warn!("could not unregister agent {:?}: {e}", opts.agent);
    }
    result
}

/// Claims the next task, waiting on the pending bell (kept across tasks: closing an
/// inotify descriptor costs a kernel grace period). `Ok(None)` on a signal.
fn next_task(
    dir: &SessionDir,
    opts: &WorkOptions,
    claim_opts: &ClaimOptions,
    signals: &Signals,
    finished: &mut Vec<String>,
    bell: &mut Option<Bell>,
    timeout: Duration,
) -> Result<Option<Task>> {
    let deadline = opts.idle_exit.map(|w| Instant::now() + w);
    let every = beat_every(opts.lease);
    let mut next_beat = Instant::now() + every;
    loop {
        if let Some(t) = super::claim_unassigning(dir, &opts.agent, claim_opts, finished, timeout)? {
            finished.clear();
            return Ok(Some(t));
        }
        // Nothing to claim: the finished tasks leave assigned_tasks before we sleep.
        super::update_assigned(dir, &opts.agent, None, finished, timeout);
        finished.clear();
        if bell.is_none() {
            // Watch, then look again, so a task submitted in between is not missed.
            *bell = Some(Bell::watch(&[dir.task_pending_bell()]).with_signals(signals));
            continue;
        }
        // Nothing runs while the worker waits: clean up after the last task now.
        fsio::remove_deferred();
        let b = bell.as_mut().expect("set above");
        // Waiting is being alive too: wake to heartbeat, so healthmon does not take an
        // idle worker for hung.
        match b.wait(Some(deadline.map_or(next_beat, |d| d.min(next_beat)))) {
            Wake::Changed => {}
            Wake::Signalled => return Ok(None),
            Wake::TimedOut if deadline.is_none_or(|d| Instant::now() < d) => {
                beat(dir, &opts.agent);
                next_beat = Instant::now() + every;
            }
            Wake::TimedOut => {
                return Err(Error::Empty(format!(
                    "nothing to claim for agent {:?} within {:.1}s",
                    opts.agent,
                    opts.idle_exit.unwrap_or_default().as_secs_f64()
                )));
            }
        }
    }
}

/// The command's path, looked up in `PATH` once rather than by every spawn.
fn resolve_program(program: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    if program.contains('/') {
        return PathBuf::from(program);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for d in std::env::split_paths(&path) {
        let candidate = d.join(program);
        if let Ok(m) = std::fs::metadata(&candidate)
            && m.is_file()
            && m.permissions().mode() & 0o111 != 0
        {
            return candidate;
        }
    }
    PathBuf::from(program)
}

/// Registers the agent (as this process) unless an active registration of a live
/// process on this host exists: this process, or one it runs under (the agent that
/// started it). A registration whose process is gone, or from another host, is replaced,
/// since a restarted worker would otherwise run under a dead process's registration
/// and healthmon would requeue its live work. A live registration of any other process
/// is another worker under this id: refused. Returns whether it registered.
fn ensure_registered(dir: &SessionDir, opts: &WorkOptions, timeout: Duration) -> Result<bool> {
    let live = |a: &crate::record::Agent| {
        a.host == crate::sys::host()
            && a.pid.is_some_and(|p| crate::sys::process_alive(p, a.process_start, a.process_inode))
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

fn run_one(
    dir: &SessionDir,
    opts: &WorkOptions,
    program: &Path,
    t: &Task,
    signals: &Signals,
    control: &mut Bell,
    timeout: Duration,
) -> Result<Outcome> {
    let holder = Holder { agent: Some(opts.agent.clone()), token: t.claim_token.clone() };
    let input = crate::fsio::to_json_bytes(t);
    let payload = match &t.payload {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let name = &opts.cmd[0];
    let spawned = Command::new(program)
        .arg0(name)
        .args(&opts.cmd[1..])
        .env("TASK_ID", &t.id)
        .env("TASK_PAYLOAD", payload)
        .env("TASK_CLAIM_TOKEN", t.claim_token.as_deref().unwrap_or_default())
        .env("COORD_AGENT", &opts.agent)
        .env("COORD_SESSION", dir.id())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            // The command cannot run at all: spend the attempt with the reason.
            let msg = format!("cannot run {name:?}: {e}");
            let after = super::fail_as(dir, &t.id, &holder, &msg, Unassign::Deferred, timeout)?;
            return Ok(Outcome { id: t.id.clone(), status: after.status, exit_code: 127, killed: false });
        }
    };
    let ran = supervise(dir, opts, t, &mut child, &input, signals, control)
        .map_err(|e| Error::Failed(format!("running {name:?}: {e}")))?;
    let (status, stdout, stderr, interrupted) = (ran.status, ran.stdout, ran.stderr_tail, ran.interrupted);
    let code = crate::state::exit_code_of(status);
    let finished = if let Some(req) = &ran.killed {
        let then = if req.retry { "retried while attempts are left" } else { "not retried" };
        let msg = format!(
            "killed by taskd kill (requested at {}; {then}); {name:?} exited with status {code}",
            req.requested_at
        );
        let r = super::kill_as(dir, &t.id, &holder, &msg, req.retry, Unassign::Deferred, timeout).map(|a| a.status);
        super::kill::clear(dir, req);
        r
    } else if interrupted {
        super::release(dir, &t.id, &holder, timeout).map(|_| "released".to_string())
    } else if status.success() {
        let result = serde_json::from_slice::<Value>(&stdout).unwrap_or_else(|_| {
            let text = String::from_utf8_lossy(&stdout);
            Value::String(text.strip_suffix('\n').unwrap_or(&text).to_string())
        });
        super::complete_as(dir, &t.id, &holder, result, Unassign::Deferred, timeout).map(|a| a.status)
    } else {
        let tail = tail(&stderr);
        let msg = if tail.trim().is_empty() { format!("{name:?} exited with status {code}") } else { tail };
        super::fail_as(dir, &t.id, &holder, &msg, Unassign::Deferred, timeout).map(|a| a.status)
    };
    let status = match finished {
        Ok(s) => s,
        Err(e @ Error::Failed(_)) if e.to_string().starts_with("claim lost") => {
            log::warn!("{e}");
            "lost".to_string()
        }
        Err(e) => return Err(e),
    };
    Ok(Outcome { id: t.id.clone(), status, exit_code: code, killed: ran.killed.is_some() })
}

/// What running one command gave.
struct Ran {
    status: ExitStatus,
    /// All of stdout (the result).
    stdout: Vec<u8>,
    /// The last [`STDERR_TAIL`] bytes (at least) of stderr.
    stderr_tail: Vec<u8>,
    /// Stopped because the worker was signalled.
    interrupted: bool,
    /// Stopped by this kill request.
    killed: Option<KillRequest>,
}

/// Sends `sig` to the command's process group (its pid: it leads its own group).
fn signal_group(child: &Child, sig: libc::c_int) {
    // SAFETY: killpg with the group our own child leads; failure means it is gone.
    unsafe {
        libc::killpg(child.id() as libc::pid_t, sig);
    }
}

/// Feeds `input` to the child's stdin, collects its stdout, keeps both streams in
/// `tasks/output/` (forwarding stderr to the worker's own as it comes), renews the lease
/// every lease/3, forwards SIGTERM on a signal and acts on a kill request for this claim,
/// all from this thread, until the child has exited and both pipes are closed.
#[allow(clippy::too_many_arguments)]
fn supervise(
    dir: &SessionDir,
    opts: &WorkOptions,
    t: &Task,
    child: &mut Child,
    input: &[u8],
    signals: &Signals,
    control: &mut Bell,
) -> std::io::Result<Ran> {
    let file = |fd: OwnedFd| std::fs::File::from(fd);
    let mut stdin = child.stdin.take().map(|p| file(p.into()));
    let mut out_pipe = child.stdout.take().map(|p| file(p.into()));
    let mut err_pipe = child.stderr.take().map(|p| file(p.into()));
    for fd in [
        stdin.as_ref().map(AsRawFd::as_raw_fd),
        out_pipe.as_ref().map(AsRawFd::as_raw_fd),
        err_pipe.as_ref().map(AsRawFd::as_raw_fd),
    ]
    .into_iter()
    .flatten()
    {
        set_nonblocking(fd)?;
    }
    // SAFETY: a pidfd for our own unreaped child; owned (and closed) by `pidfd`.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, child.id() as libc::pid_t, 0) } as i32;
    // SAFETY: `raw` is a descriptor we just opened and own.
    let pidfd = (raw >= 0).then(|| unsafe { OwnedFd::from_raw_fd(raw) });
    let beat_every = beat_every(opts.lease);
    let mut next_beat = Instant::now() + beat_every;
    let mut captures = [
        Capture::new(dir, &t.id, t.attempts, "stdout", opts.output_cap),
        Capture::new(dir, &t.id, t.attempts, "stderr", opts.output_cap),
    ];
    let (mut stdout, mut stderr_tail) = (Vec::new(), Vec::new());
    let mut written = 0usize;
    let mut status: Option<ExitStatus> = None;
    let mut interrupted = false;
    let mut killed: Option<KillRequest> = None;
    let mut sigkill_at: Option<Instant> = None;
    // Without inotify the kill request is looked for at the bell's poll interval.
    let mut next_look = (control.fd().is_none()).then(Instant::now);
    let mut buf = vec![0u8; 64 * 1024];
    if input.is_empty() {
        stdin = None;
    }
    loop {
        if status.is_none() {
            status = child.try_wait()?;
        }
        if status.is_some() && out_pipe.is_none() && err_pipe.is_none() {
            break;
        }
        if !interrupted && signals.received() {
            interrupted = true;
            if status.is_none() {
                signal_group(child, libc::SIGTERM);
            }
        }
        let now = Instant::now();
        if killed.is_none() && next_look.is_some_and(|l| now >= l) {
            next_look = Some(now + control.poll_interval());
            killed = look_for_kill(dir, t, child, status.is_some(), &mut sigkill_at);
        }
        if sigkill_at.is_some_and(|k| now >= k) {
            sigkill_at = None;
            signal_group(child, libc::SIGKILL);
        }
        if now >= next_beat {
            beat(dir, &opts.agent);
            next_beat = now + beat_every;
        }
        let mut fds = Vec::with_capacity(6);
        let mut slot = |fd: Option<RawFd>, events: libc::c_short| {
            fd.map(|fd| {
                fds.push(libc::pollfd { fd, events, revents: 0 });
                fds.len() - 1
            })
        };
        let i_in = slot(stdin.as_ref().map(AsRawFd::as_raw_fd), libc::POLLOUT);
        let i_out = slot(out_pipe.as_ref().map(AsRawFd::as_raw_fd), libc::POLLIN);
        let i_err = slot(err_pipe.as_ref().map(AsRawFd::as_raw_fd), libc::POLLIN);
        let _ = slot(pidfd.as_ref().filter(|_| status.is_none()).map(AsRawFd::as_raw_fd), libc::POLLIN);
        let _ = slot((!interrupted).then(|| signals.fd()), libc::POLLIN);
        let i_ctl = slot(control.fd().filter(|_| killed.is_none()), libc::POLLIN);
        if stdin.is_none() {
            // The command has its input: clean up after the claim while it runs.
            fsio::remove_deferred();
        }
        // Without a pidfd (old kernels) the exit is noticed by looking every 5 ms.
        let cap = if pidfd.is_none() && status.is_none() { Duration::from_millis(5) } else { beat_every };
        let mut until = next_beat;
        for at in [next_look.filter(|_| killed.is_none()), sigkill_at].into_iter().flatten() {
            until = until.min(at);
        }
        let wait = until.saturating_duration_since(now).min(cap);
        let ms = i32::try_from(wait.as_millis().max(1)).unwrap_or(i32::MAX);
        // SAFETY: `fds` is a valid array of pollfd of the given length.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let ready = |i: Option<usize>| i.is_some_and(|i| fds[i].revents != 0);
        if ready(i_ctl) && control.drain() && killed.is_none() {
            killed = look_for_kill(dir, t, child, status.is_some(), &mut sigkill_at);
        }
        if ready(i_in)
            && let Some(w) = stdin.as_mut()
        {
            match w.write(&input[written..]) {
                Ok(k) => written += k,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                // The command closed its stdin (or exited) without reading it all.
                Err(_) => written = input.len(),
            }
            if written >= input.len() {
                stdin = None;
            }
        }
        for (i, pipe, which) in [(i_out, &mut out_pipe, 0usize), (i_err, &mut err_pipe, 1)] {
            if !ready(i) {
                continue;
            }
            let Some(r) = pipe.as_mut() else { continue };
            loop {
                match Read::read(r, &mut buf) {
                    Ok(0) => {
                        *pipe = None;
                        break;
                    }
                    Ok(k) => {
                        let chunk = &buf[..k];
                        captures[which].write(chunk);
                        if which == 0 {
                            stdout.extend_from_slice(chunk);
                        } else {
                            // Forwarded as it comes; only the tail is kept in memory.
                            let _ = std::io::stderr().write_all(chunk);
                            stderr_tail.extend_from_slice(chunk);
                            if stderr_tail.len() > 4 * STDERR_TAIL {
                                stderr_tail.drain(..stderr_tail.len() - STDERR_TAIL);
                            }
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }
    for c in captures {
        c.finish();
    }
    let status = status.expect("the loop ends only after the exit");
    Ok(Ran { status, stdout, stderr_tail, interrupted, killed })
}

/// Looks for a kill request for `t`'s claim while its command runs; on one, sends
/// SIGTERM to the command's group and sets when SIGKILL follows.
fn look_for_kill(
    dir: &SessionDir,
    t: &Task,
    child: &Child,
    exited: bool,
    sigkill_at: &mut Option<Instant>,
) -> Option<KillRequest> {
    if exited {
        // It ended on its own: the task finishes as the command left it.
        return None;
    }
    let req = super::kill::requested(dir, t)?;
    signal_group(child, libc::SIGTERM);
    *sigkill_at = Some(Instant::now() + KILL_GRACE);
    Some(req)
}

fn set_nonblocking(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: fcntl on a descriptor we own; no memory is passed.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn tail(stderr: &[u8]) -> String {
    let start = stderr.len().saturating_sub(STDERR_TAIL);
    let text = String::from_utf8_lossy(&stderr[start..]);
    text.trim_end().to_string()
}
