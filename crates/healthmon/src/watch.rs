//! `healthmon status --watch`: the overview again every `--interval`, redrawn in place on
//! a terminal, or one JSON line per refresh when stdout is not a terminal (or `--json`).
//!
//! Each refresh gathers the overview through one [`overview::Overview`], whose task
//! census lists only the task directories that changed since the refresh before, and
//! reads the recent events from the end of `metrics/events.jsonl` (only when its size or
//! mtime changed).

use std::fs::File;
use std::io::{IsTerminal, Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant, SystemTime};

use coord_core::{Error, Result, SessionDir, error::exit, output, overview, time};
use crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use crossterm::{cursor, execute, queue, style, terminal};
use serde_json::{Map, Value};

use crate::frame::{self, Size};

/// What `--watch` was asked for.
#[derive(Debug, Clone)]
pub struct Options {
    /// Time between refreshes.
    pub interval: Duration,
    /// Stop after this many snapshots (frames).
    pub count: Option<u64>,
    /// How many recent events to show.
    pub events: usize,
    /// JSON Lines even on a terminal.
    pub json: bool,
}

/// Runs the live view until a quit key, SIGTERM/SIGINT, `--count` or a closed stdout.
pub fn run(dir: SessionDir, opts: &Options) -> Result<u8> {
    let mut view = View::new(dir, opts.events);
    if opts.json || !std::io::stdout().is_terminal() { json_lines(&mut view, opts) } else { screen(&mut view, opts) }
}

/// One refresh: the overview object, the recent events and when it was taken.
struct Snapshot {
    overview: Value,
    events: Vec<Value>,
    at: String,
}

struct View {
    dir: SessionDir,
    overview: overview::Overview,
    tail: EventTail,
}

impl View {
    fn new(dir: SessionDir, events: usize) -> View {
        let tail = EventTail::new(dir.events_file(), events);
        View { dir, overview: overview::Overview::new(), tail }
    }

    fn snapshot(&mut self) -> Result<Snapshot> {
        let at = time::now_rfc3339();
        let mut overview = self.overview.gather(&self.dir)?;
        let (events, problem) = self.tail.recent();
        if let Some(p) = problem
            && let Some(list) = overview.get_mut("problems").and_then(Value::as_array_mut)
        {
            list.push(Value::String(p));
        }
        Ok(Snapshot { overview, events, at })
    }
}

/// The JSON line of a snapshot: `at`, the overview's members, `events`.
fn json_line(s: Snapshot) -> Value {
    let mut m = Map::new();
    m.insert("at".into(), Value::String(s.at));
    if let Value::Object(o) = s.overview {
        m.extend(o);
    }
    m.insert("events".into(), Value::Array(s.events));
    Value::Object(m)
}

/// SIGTERM and SIGINT, noticed by a thread that reports them on a channel and a flag.
fn signals() -> Result<(mpsc::Receiver<i32>, Arc<AtomicBool>)> {
    let (tx, rx) = mpsc::channel::<i32>();
    let flag = Arc::new(AtomicBool::new(false));
    let seen = Arc::clone(&flag);
    let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT])
        .map_err(|e| Error::Failed(format!("cannot install signal handlers: {e}")))?;
    std::thread::spawn(move || {
        for sig in signals.forever() {
            seen.store(true, Ordering::SeqCst);
            if tx.send(sig).is_err() {
                break;
            }
        }
    });
    Ok((rx, flag))
}

fn json_lines(view: &mut View, opts: &Options) -> Result<u8> {
    let (stop, _) = signals()?;
    let mut shown = 0u64;
    loop {
        let started = Instant::now();
        let line = json_line(view.snapshot()?);
        // A closed stdout is an error here that the caller turns into a quiet exit 0.
        output::print(&line)?;
        shown += 1;
        if opts.count.is_some_and(|n| shown >= n) {
            return Ok(exit::OK);
        }
        match stop.recv_timeout(opts.interval.saturating_sub(started.elapsed())) {
            Ok(_) | Err(mpsc::RecvTimeoutError::Disconnected) => return Ok(exit::OK),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
    }
}

/// Longest wait for a key before the signal flag is looked at again.
const KEY_POLL: Duration = Duration::from_millis(200);

fn screen(view: &mut View, opts: &Options) -> Result<u8> {
    let (_rx, stopped) = signals()?;
    let term = Terminal::enter()?;
    let mut shown = 0u64;
    'refresh: loop {
        let started = Instant::now();
        let snap = view.snapshot()?;
        term.draw(&snap)?;
        shown += 1;
        if opts.count.is_some_and(|n| shown >= n) {
            break;
        }
        let deadline = started + opts.interval;
        loop {
            if stopped.load(Ordering::SeqCst) {
                break 'refresh;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            if event::poll(left.min(KEY_POLL)).map_err(term_error)? {
                match event::read().map_err(term_error)? {
                    Event::Key(k) if is_quit(&k) => break 'refresh,
                    Event::Resize(..) => term.draw(&snap)?,
                    _ => {}
                }
            }
        }
    }
    term.leave()?;
    Ok(exit::OK)
}

/// q, Esc and Ctrl-C (raw mode delivers it as a key, not as SIGINT).
fn is_quit(k: &KeyEvent) -> bool {
    if k.kind == KeyEventKind::Release {
        return false;
    }
    match k.code {
        KeyCode::Char('q') | KeyCode::Char('Q') | KeyCode::Esc => true,
        KeyCode::Char('c') => k.modifiers.contains(KeyModifiers::CONTROL),
        _ => false,
    }
}

fn term_error(e: std::io::Error) -> Error {
    Error::io("use", "the terminal", e)
}

/// Whether the terminal still has to be given back (raw mode off, main screen, cursor).
static ENTERED: AtomicBool = AtomicBool::new(false);

/// Gives the terminal back once, whoever calls first: [`Terminal::leave`], its drop (an
/// error's way out) or the panic hook.
fn restore() {
    if ENTERED.swap(false, Ordering::SeqCst) {
        let _ = terminal::disable_raw_mode();
        let _ = execute!(std::io::stdout(), cursor::Show, terminal::LeaveAlternateScreen);
    }
}

/// The terminal in the live view's state: the alternate screen, raw mode, no cursor.
struct Terminal;

impl Terminal {
    fn enter() -> Result<Terminal> {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore();
            previous(info);
        }));
        ENTERED.store(true, Ordering::SeqCst);
        let term = Terminal; // from here on, dropping it restores whatever was set up
        execute!(std::io::stdout(), terminal::EnterAlternateScreen, cursor::Hide).map_err(term_error)?;
        terminal::enable_raw_mode().map_err(term_error)?;
        Ok(term)
    }

    fn draw(&self, snap: &Snapshot) -> Result<()> {
        let (cols, rows) = terminal::size().map_err(term_error)?;
        let size = Size { width: usize::from(cols), height: usize::from(rows) };
        let lines = frame::frame(&snap.overview, &snap.events, &snap.at, size);
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        for (row, line) in (0..rows).zip(&lines) {
            queue!(out, cursor::MoveTo(0, row), style::Print(line), terminal::Clear(terminal::ClearType::UntilNewLine))
                .map_err(term_error)?;
        }
        if let Ok(next) = u16::try_from(lines.len())
            && next < rows
        {
            queue!(out, cursor::MoveTo(0, next), terminal::Clear(terminal::ClearType::FromCursorDown))
                .map_err(term_error)?;
        }
        out.flush().map_err(term_error)
    }

    fn leave(self) -> Result<()> {
        drop(self);
        Ok(())
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        restore();
    }
}

/// A file changed this recently is read again even if its size and mtime look unchanged.
const FRESH: Duration = Duration::from_secs(2);

/// Longest stretch read from the end of `metrics/events.jsonl` for the recent events.
const TAIL_LIMIT: u64 = 1 << 20;
const TAIL_BLOCK: u64 = 16 << 10;

/// The last `n` events of `metrics/events.jsonl`, read from the end of the file and read
/// again only when its size or mtime changed.
struct EventTail {
    path: PathBuf,
    n: usize,
    seen: Option<(u64, SystemTime)>,
    events: Vec<Value>,
    skipped: usize,
}

impl EventTail {
    fn new(path: PathBuf, n: usize) -> EventTail {
        EventTail { path, n, seen: None, events: Vec::new(), skipped: 0 }
    }

    /// The recent events and, if some recent lines were not JSON objects or the file
    /// could not be read, a problem saying so.
    fn recent(&mut self) -> (Vec<Value>, Option<String>) {
        if self.n == 0 {
            return (Vec::new(), None);
        }
        let shown = |t: &EventTail| {
            let problem = (t.skipped > 0).then(|| {
                format!("metrics/events.jsonl: {} of the last lines are not JSON objects (skipped)", t.skipped)
            });
            (t.events.clone(), problem)
        };
        let meta = match std::fs::metadata(&self.path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (Vec::new(), None),
            Err(e) => return (Vec::new(), Some(format!("metrics/events.jsonl: {e}"))),
        };
        let key = (meta.len(), meta.modified().unwrap_or(SystemTime::UNIX_EPOCH));
        let fresh = time_is_recent(key.1);
        if self.seen == Some(key) && !fresh {
            return shown(self);
        }
        match read_tail(&self.path, self.n) {
            Ok(lines) => {
                self.skipped = 0;
                self.events = lines
                    .iter()
                    .filter_map(|l| match serde_json::from_slice::<Value>(l) {
                        Ok(v @ Value::Object(_)) => Some(v),
                        _ => {
                            self.skipped += 1;
                            None
                        }
                    })
                    .collect();
                self.seen = Some(key);
                shown(self)
            }
            Err(e) => (Vec::new(), Some(format!("metrics/events.jsonl: {e}"))),
        }
    }
}

/// Whether a file changed so recently that an unchanged size and mtime prove nothing.
fn time_is_recent(t: SystemTime) -> bool {
    SystemTime::now().duration_since(t).map_or(true, |age| age < FRESH)
}

/// The last `n` complete, non-empty lines of the file, reading blocks backwards from its
/// end (at most [`TAIL_LIMIT`] bytes). A last line without its newline is being written
/// and is left out.
fn read_tail(path: &std::path::Path, n: usize) -> std::io::Result<Vec<Vec<u8>>> {
    let mut f = File::open(path)?;
    let len = f.seek(SeekFrom::End(0))?;
    let mut buf: Vec<u8> = Vec::new();
    let mut pos = len;
    while pos > 0 && len - pos < TAIL_LIMIT {
        let step = TAIL_BLOCK.min(pos);
        pos -= step;
        f.seek(SeekFrom::Start(pos))?;
        let mut block = vec![0u8; usize::try_from(step).unwrap_or(0)];
        f.read_exact(&mut block)?;
        block.extend_from_slice(&buf);
        buf = block;
        if buf.iter().filter(|&&b| b == b'\n').count() > n {
            break;
        }
    }
    // Drop the unfinished last line, and the first one if the read began mid-line.
    let end = buf.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    buf.truncate(end);
    let mut lines: Vec<&[u8]> = buf.split(|&b| b == b'\n').collect();
    if pos > 0 && !lines.is_empty() {
        lines.remove(0);
    }
    let lines: Vec<Vec<u8>> =
        lines.into_iter().filter(|l| !l.iter().all(u8::is_ascii_whitespace)).map(<[u8]>::to_vec).collect();
    let skip = lines.len().saturating_sub(n);
    Ok(lines.into_iter().skip(skip).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tail_is_the_last_complete_lines() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let p = tmp.path().join("events.jsonl");
        let mut text = String::new();
        for i in 0..5000 {
            text.push_str(&format!("{{\"event\":\"e\",\"i\":{i}}}\n"));
        }
        text.push_str("{\"event\":\"half");
        std::fs::write(&p, &text).expect("write");
        let lines = read_tail(&p, 3).expect("tail");
        let got: Vec<String> = lines.iter().map(|l| String::from_utf8_lossy(l).into_owned()).collect();
        assert_eq!(
            got,
            ["{\"event\":\"e\",\"i\":4997}", "{\"event\":\"e\",\"i\":4998}", "{\"event\":\"e\",\"i\":4999}"]
        );
        assert_eq!(read_tail(&p, 10_000).expect("all").len(), 5000);
    }

    #[test]
    fn bad_lines_are_skipped_with_a_problem_and_a_missing_file_is_no_events() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let p = tmp.path().join("events.jsonl");
        let mut tail = EventTail::new(p.clone(), 5);
        assert_eq!(tail.recent(), (Vec::new(), None));
        std::fs::write(&p, "{\"event\":\"a\"}\nnot json\n[1]\n{\"event\":\"b\"}\n").expect("write");
        let (events, problem) = tail.recent();
        assert_eq!(events.len(), 2);
        assert_eq!(events[1]["event"], "b");
        assert!(problem.expect("a problem").contains("2 of the last lines"));
    }

    #[test]
    fn the_quit_keys() {
        let key = |code, modifiers| KeyEvent::new(code, modifiers);
        assert!(is_quit(&key(KeyCode::Char('q'), KeyModifiers::NONE)));
        assert!(is_quit(&key(KeyCode::Esc, KeyModifiers::NONE)));
        assert!(is_quit(&key(KeyCode::Char('c'), KeyModifiers::CONTROL)));
        assert!(!is_quit(&key(KeyCode::Char('c'), KeyModifiers::NONE)));
        assert!(!is_quit(&key(KeyCode::Char('x'), KeyModifiers::NONE)));
    }
}
