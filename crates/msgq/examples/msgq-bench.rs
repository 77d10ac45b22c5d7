//! Measurements for `scripts/bench/msgq.sh` that a shell cannot take precisely.
//!
//! `msgq-bench floor N DIR` — the physical floor for publishing files: create, write and
//! rename N message-sized files in DIR; prints files per second.
//!
//! `msgq-bench latency N MSGQ AGENT` — wake-up latency of `recv --wait`: N times, start
//! `MSGQ recv AGENT --wait`, wait until it sleeps in poll(2), send one message, and time
//! from the send's return to the receiver's line arriving. Uses COORD_BASE/COORD_SESSION.
//! Prints min, p50, p90, p99 and max in milliseconds. It measures; it asserts nothing.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use coord_core::mailbox::{self, Outgoing};
use coord_core::{Base, Error, Result, env};

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let outcome = match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["floor", n, dir] => parse(n).and_then(|n| floor(n, Path::new(dir))),
        ["latency", n, msgq, agent] => parse(n).and_then(|n| latency(n, Path::new(msgq), agent)),
        _ => Err(Error::Usage("usage: msgq-bench floor N DIR | latency N MSGQ AGENT".to_string())),
    };
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            log_error(&e);
            std::process::ExitCode::from(e.exit_code())
        }
    }
}

#[allow(clippy::print_stderr)]
fn log_error(e: &Error) {
    eprintln!("msgq-bench: {e}");
}

fn parse(n: &str) -> Result<usize> {
    n.parse().map_err(|_| Error::Usage(format!("{n:?} is not a count")))
}

fn floor(n: usize, dir: &Path) -> Result<()> {
    let body = vec![b'x'; 230];
    let tmp = dir.join("tmp");
    let new = dir.join("new");
    for d in [&tmp, &new] {
        std::fs::create_dir_all(d).map_err(|e| Error::io("create", d, e))?;
    }
    let start = Instant::now();
    for i in 0..n {
        let t = tmp.join(format!("{i}.tmp"));
        let mut f = std::fs::File::create_new(&t).map_err(|e| Error::io("create", &t, e))?;
        f.write_all(&body).map_err(|e| Error::io("write", &t, e))?;
        drop(f);
        let dest = new.join(format!("{i}.json"));
        std::fs::rename(&t, &dest).map_err(|e| Error::io("rename", &t, e))?;
    }
    let secs = start.elapsed().as_secs_f64();
    println!("{}", serde_json::json!({"files": n, "seconds": secs, "files_per_sec": n as f64 / secs}));
    Ok(())
}

fn latency(n: usize, msgq: &Path, agent: &str) -> Result<()> {
    let base = std::env::var(env::BASE).map_err(|_| Error::Usage("set COORD_BASE".to_string()))?;
    let session = std::env::var(env::SESSION).map_err(|_| Error::Usage("set COORD_SESSION".to_string()))?;
    let dir = Base::new(base).session(&session)?;
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let mut child = Command::new(msgq)
            .args(["recv", agent, "--wait", "--timeout", "30"])
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| Error::io("start", msgq, e))?;
        let waiting = Instant::now();
        while !sleeping_in_poll(child.id()) {
            if waiting.elapsed() > Duration::from_secs(10) {
                return Err(Error::Failed("receiver never blocked in poll".to_string()));
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        let stdout = child.stdout.take().ok_or_else(|| Error::Failed("no stdout".to_string()))?;
        let msg = Outgoing {
            from: "bench".to_string(),
            to: agent.to_string(),
            msg_type: "ping".to_string(),
            payload: serde_json::json!({"i": i}),
            priority: 0,
            requires_ack: false,
        };
        mailbox::send_checked(&dir, msg, mailbox::Recipients::Any)?;
        let sent = Instant::now();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).map_err(|e| Error::io("read", "receiver", e))?;
        samples.push(sent.elapsed().as_secs_f64() * 1000.0);
        let _ = child.wait();
    }
    samples.sort_by(f64::total_cmp);
    let pct = |p: f64| samples[((samples.len() as f64 - 1.0) * p).round() as usize];
    println!(
        "{}",
        serde_json::json!({"sends": n, "min_ms": pct(0.0), "p50_ms": pct(0.5), "p90_ms": pct(0.9), "p99_ms": pct(0.99), "max_ms": pct(1.0)})
    );
    Ok(())
}

/// Whether the process sleeps in poll(2), i.e. is blocked waiting for the mailbox.
fn sleeping_in_poll(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/wchan")).map(|w| w.contains("poll")).unwrap_or(false)
}
