//! Task output: what `taskd work` keeps of each attempt's stdout and stderr, in
//! `tasks/output/<id>.<attempt>.out` and `.err`, and reading it back (`taskd log`,
//! `--follow`).
//!
//! A stream's file is created when its first byte arrives (a command that prints
//! nothing leaves no file) and holds at most the cap's bytes of the stream (default
//! [`DEFAULT_OUTPUT_CAP`], `taskd work --output-cap`). What goes past the cap is not
//! kept, and the file says so: a note where the cut is, and a closing note with how many
//! bytes the stream had in all. A released attempt (which does not count) is run again
//! under the same number, and its files are started afresh.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::time::Instant;

use serde::Serialize;

use super::bell::{Bell, Signals, Wake};
use super::{Status, Task};
use crate::error::{Error, Result};
use crate::layout::SessionDir;

/// Bytes of each stream kept per attempt unless `taskd work --output-cap` says otherwise.
pub const DEFAULT_OUTPUT_CAP: u64 = 1024 * 1024;

/// The two streams, by their file suffix.
pub const STREAMS: [(&str, &str); 2] = [("stdout", "out"), ("stderr", "err")];

/// Keeps one stream of one attempt, up to its cap.
#[derive(Debug)]
pub(crate) struct Capture {
    path: PathBuf,
    name: &'static str,
    cap: u64,
    file: Option<File>,
    kept: u64,
    total: u64,
    /// Set once writing failed (a full disk, say): the rest is not kept, and logged once.
    broken: bool,
}

impl Capture {
    pub(crate) fn new(dir: &SessionDir, task: &str, attempt: u32, name: &'static str, cap: u64) -> Capture {
        let suffix = if name == "stdout" { "out" } else { "err" };
        Capture {
            path: dir.task_output_file(task, attempt, suffix),
            name,
            cap,
            file: None,
            kept: 0,
            total: 0,
            broken: false,
        }
    }

    fn open(&mut self) -> std::io::Result<&mut File> {
        if self.file.is_none() {
            let open =
                || std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&self.path);
            let f = match open() {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    if let Some(parent) = self.path.parent() {
                        std::fs::create_dir_all(parent)?;
                    }
                    open()?
                }
                other => other?,
            };
            self.file = Some(f);
        }
        // Set just above.
        self.file.as_mut().ok_or_else(|| std::io::Error::other("no file"))
    }

    /// Keeps what fits under the cap of `data`, the next bytes of the stream.
    pub(crate) fn write(&mut self, data: &[u8]) {
        let before = self.total;
        self.total += data.len() as u64;
        if self.cap == 0 || self.broken || before >= self.cap {
            return;
        }
        let take = (self.cap - before).min(data.len() as u64) as usize;
        let cut = take < data.len();
        let (cap, name) = (self.cap, self.name);
        let r = self.open().and_then(|f| {
            f.write_all(&data[..take])?;
            if cut {
                write!(f, "\n[taskd: {name} cut off here, at the cap of {cap} bytes (taskd work --output-cap); the rest is not kept]\n")?;
            }
            Ok(())
        });
        match r {
            Ok(()) => self.kept += take as u64,
            Err(e) => self.fail(e),
        }
    }

    fn fail(&mut self, e: std::io::Error) {
        self.broken = true;
        log::warn!("cannot keep {} in {}: {e}; the rest of it is not kept", self.name, self.path.display());
    }

    /// Ends the stream: a cut-off file gets its closing note.
    pub(crate) fn finish(mut self) {
        if self.total > self.kept && self.kept > 0 && !self.broken {
            let (total, dropped, name) = (self.total, self.total - self.kept, self.name);
            if let Some(f) = self.file.as_mut()
                && let Err(e) = writeln!(f, "[taskd: {name} had {total} bytes in all; {dropped} of them are not kept]")
            {
                self.fail(e);
            }
        }
    }
}

/// What `taskd log --json` prints for one attempt.
#[derive(Debug, Clone, Serialize)]
pub struct AttemptOutput {
    /// The task.
    pub id: String,
    /// The attempt (1-based).
    pub attempt: u32,
    /// The task's status now.
    pub status: String,
    /// The kept stdout, as text (invalid UTF-8 replaced); `null` when none was kept.
    pub stdout: Option<String>,
    /// The kept stderr, likewise.
    pub stderr: Option<String>,
}

/// The task and the attempt to show: `attempt`, or its latest. `Error::Empty` (exit 3)
/// when it has not started; `Error::Usage` for an attempt it has not made.
pub fn attempt_of(dir: &SessionDir, id: &str, attempt: Option<u32>) -> Result<(Task, u32)> {
    let t = super::show(dir, id)?;
    match attempt {
        Some(n) if n == 0 || n > t.attempts => Err(Error::Usage(format!(
            "task {id:?} has made {} attempt(s); --attempt must be between 1 and {}",
            t.attempts,
            t.attempts.max(1)
        ))),
        Some(n) => Ok((t, n)),
        None if t.attempts == 0 => Err(Error::Empty(format!(
            "task {id:?} is {} and has not run yet: no output (`taskd log --follow` waits for it)",
            t.status
        ))),
        None => {
            let n = t.attempts;
            Ok((t, n))
        }
    }
}

/// The kept output of one attempt, as raw bytes per stream (`None`: no file).
pub fn read_output(dir: &SessionDir, id: &str, attempt: u32) -> Result<[Option<Vec<u8>>; 2]> {
    let read = |suffix: &str| {
        let path = dir.task_output_file(id, attempt, suffix);
        match std::fs::read(&path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("read", &path, e)),
        }
    };
    Ok([read("out")?, read("err")?])
}

/// [`read_output`] as the JSON `taskd log --json` prints.
pub fn output_json(dir: &SessionDir, t: &Task, attempt: u32) -> Result<AttemptOutput> {
    let [out, err] = read_output(dir, &t.id, attempt)?;
    let text = |b: Option<Vec<u8>>| b.map(|b| String::from_utf8_lossy(&b).into_owned());
    Ok(AttemptOutput { id: t.id.clone(), attempt, status: t.status.clone(), stdout: text(out), stderr: text(err) })
}

/// Whether attempt `attempt` of `t` is the one running now. A claim renames the record
/// into `claimed/` and then rewrites it with the new attempt and its token: a record
/// seen in between (no token yet) is a claim still being made, not an attempt running.
fn running(t: &Task, attempt: u32) -> bool {
    t.state() == Some(Status::Claimed) && t.claim_token.is_some() && t.attempts == attempt
}

/// Streams a task's output while it runs, to `out` and `err`, until the attempt ends
/// (or `signals` fires). `attempt` `None` follows the latest attempt, or the next one to
/// start when the task waits to run. Returns the task as it is when the stream ends.
pub fn follow(
    dir: &SessionDir,
    id: &str,
    attempt: Option<u32>,
    signals: Option<&Signals>,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<Task> {
    super::ensure_store(dir)?;
    let paths = [dir.tasks_output_dir(), dir.tasks_status_dir("claimed"), dir.task_finished_bell()];
    let mut bell = Bell::watch_writes(&paths);
    if let Some(s) = signals {
        bell = bell.with_signals(s);
    }
    let mut t = super::show(dir, id)?;
    // The attempt to follow: a task that has not started (or waits for its next attempt)
    // is followed from its next claim.
    let n = loop {
        match attempt {
            Some(_) => break attempt_of(dir, id, attempt)?.1,
            None if running(&t, t.attempts) || t.state().is_some_and(Status::is_final) && t.attempts > 0 => {
                break t.attempts;
            }
            None if t.state().is_some_and(Status::is_final) => {
                return Err(Error::Empty(format!("task {id:?} is {} and never ran: no output", t.status)));
            }
            None => {}
        }
        if bell.wait(None) == Wake::Signalled {
            return Ok(t);
        }
        t = super::show(dir, id)?;
    };
    let mut files: [(Option<File>, u64); 2] = [(None, 0), (None, 0)];
    let sinks: [&mut dyn Write; 2] = [out, err];
    loop {
        // Look at the record before copying, so what was written before it ended is all
        // copied on the last round.
        t = super::show(dir, id)?;
        let live = running(&t, n);
        for (i, (_, suffix)) in STREAMS.iter().enumerate() {
            copy_new(&dir.task_output_file(id, n, suffix), &mut files[i], &mut *sinks[i])?;
        }
        if !live {
            return Ok(t);
        }
        let deadline = (!bell.is_native()).then(|| Instant::now() + bell.poll_interval());
        if bell.wait(deadline) == Wake::Signalled {
            return Ok(t);
        }
    }
}

/// Copies what was appended to `path` since the last call (`state`: the file and the
/// offset reached) to `sink`.
fn copy_new(path: &std::path::Path, state: &mut (Option<File>, u64), sink: &mut dyn Write) -> Result<()> {
    if state.0.is_none() {
        match File::open(path) {
            Ok(f) => *state = (Some(f), 0),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::io("open", path, e)),
        }
    }
    let Some(f) = state.0.as_mut() else { return Ok(()) };
    let len = f.metadata().map_err(|e| Error::io("inspect", path, e))?.len();
    if len < state.1 {
        // Started afresh (a released attempt run again): from the top.
        state.1 = 0;
    }
    if len == state.1 {
        return Ok(());
    }
    f.seek(SeekFrom::Start(state.1)).map_err(|e| Error::io("read", path, e))?;
    let mut buf = Vec::with_capacity((len - state.1) as usize);
    f.take(len - state.1).read_to_end(&mut buf).map_err(|e| Error::io("read", path, e))?;
    state.1 += buf.len() as u64;
    sink.write_all(&buf).and_then(|()| sink.flush()).map_err(|e| Error::io("write", "standard output", e))?;
    Ok(())
}

/// The tail of a kept stream, for the report: its last `lines` lines (`None`: no file).
pub fn output_tail(dir: &SessionDir, id: &str, attempt: u32, suffix: &str, lines: usize) -> Option<String> {
    let path = dir.task_output_file(id, attempt, suffix);
    let mut f = File::open(&path).ok()?;
    let len = f.metadata().ok()?.len();
    let from = len.saturating_sub(16 * 1024);
    f.seek(SeekFrom::Start(from)).ok()?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.trim_end().lines().collect();
    Some(all[all.len().saturating_sub(lines)..].join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session() -> (tempfile::TempDir, SessionDir) {
        let tmp = tempfile::tempdir().expect("tempdir");
        let base = crate::layout::Base::new(tmp.path().join("base"));
        let dir = crate::session::init(&base, "unit").expect("init");
        (tmp, dir)
    }

    #[test]
    fn a_capture_keeps_up_to_its_cap_and_says_what_it_cut() {
        let (_b, dir) = session();
        let mut c = Capture::new(&dir, "t1", 1, "stderr", 10);
        c.write(b"12345");
        c.write(b"67890abc");
        c.write(b"more");
        c.finish();
        let text = std::fs::read_to_string(dir.task_output_file("t1", 1, "err")).expect("kept");
        assert!(text.starts_with("1234567890\n[taskd: stderr cut off here, at the cap of 10 bytes"), "{text}");
        assert!(text.ends_with("[taskd: stderr had 17 bytes in all; 7 of them are not kept]\n"), "{text}");
    }

    #[test]
    fn nothing_printed_leaves_no_file_and_a_zero_cap_keeps_nothing() {
        let (_b, dir) = session();
        Capture::new(&dir, "t1", 1, "stdout", 10).finish();
        let mut c = Capture::new(&dir, "t1", 2, "stdout", 0);
        c.write(b"hello");
        c.finish();
        assert!(!dir.task_output_file("t1", 1, "out").exists());
        assert!(!dir.task_output_file("t1", 2, "out").exists());
        let mut c = Capture::new(&dir, "t1", 3, "stdout", 10);
        c.write(b"exactly10!");
        c.finish();
        assert_eq!(std::fs::read(dir.task_output_file("t1", 3, "out")).expect("kept"), b"exactly10!");
    }
}
