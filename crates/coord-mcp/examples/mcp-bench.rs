//! Round trips of `coord-mcp` tool calls against the same operations as command-line
//! processes, for scripts/bench/mcp.sh.
//!
//!   mcp-bench BIN_DIR N
//!
//! With COORD_BASE set, creates a session, registers a sink agent and submits 2·N tasks,
//! then times, one call at a time and each call separately:
//! - `ping` through one coord-mcp process (the transport's own cost), and `heartbeat`
//!   (a tool call that touches one file: the cost of dispatching a call);
//! - `send` through that process, and `msgq send` as a process per message;
//! - `task_claim` + `task_complete` through that process, and `taskd claim` +
//!   `taskd complete` as two processes per task.
//!
//! Prints one JSON object: for each, the median, p90 and min of the per-operation wall
//! time in microseconds, and the number of operations.
#![allow(clippy::print_stderr)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, ChildStdout, Command, Stdio};
use std::time::Instant;

use serde_json::{Value, json};

type Fallible<T> = Result<T, String>;

fn main() {
    if let Err(e) = run() {
        eprintln!("mcp-bench: {e}");
        std::process::exit(1);
    }
}

fn run() -> Fallible<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [bin, n] = args.as_slice() else {
        return Err("usage: mcp-bench BIN_DIR N (with COORD_BASE set)".into());
    };
    let bin = PathBuf::from(bin);
    let n: usize = n.parse().map_err(|_| format!("N {n:?} is not a count"))?;
    let session = output(Command::new(bin.join("session-init")).arg("mcp-bench"))?.trim().to_string();
    let me = std::process::id().to_string();
    output(
        Command::new(bin.join("registry"))
            .args(["register", "sink", "--type", "w", "--pid", &me])
            .env("COORD_SESSION", &session),
    )?;
    output(
        Command::new(bin.join("registry"))
            .args(["register", "cli", "--type", "w", "--pid", &me])
            .env("COORD_SESSION", &session),
    )?;
    let batch: String = (0..2 * n).map(|i| format!("{{\"id\":\"t{i}\"}}\n")).collect();
    let mut submit = Command::new(bin.join("taskd"))
        .args(["submit", "--batch"])
        .env("COORD_SESSION", &session)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| format!("taskd submit: {e}"))?;
    submit.stdin.take().ok_or("no stdin")?.write_all(batch.as_bytes()).map_err(|e| e.to_string())?;
    if !submit.wait().map_err(|e| e.to_string())?.success() {
        return Err("taskd submit --batch failed".into());
    }

    let mut mcp = Client::start(&bin.join("coord-mcp"), &session)?;
    mcp.call("register", json!({}))?;
    // Warm up both paths (page cache, first-use allocations).
    for _ in 0..20 {
        mcp.request("ping", json!({}))?;
        mcp.call("send", json!({"to": "sink", "type": "m", "payload": {"i": 0}}))?;
    }
    let ping = time(n, || mcp.request("ping", json!({})).map(drop))?;
    let heartbeat = time(n, || mcp.call("heartbeat", json!({})).map(drop))?;
    let send = time(n, || mcp.call("send", json!({"to": "sink", "type": "m", "payload": {"i": 1}})).map(drop))?;
    let claim_complete = time(n, || {
        let t = mcp.call("task_claim", json!({"wait_secs": 0}))?;
        let id = t["task"]["id"].as_str().ok_or("nothing claimed")?.to_string();
        mcp.call("task_complete", json!({"id": id, "result": {"ok": true}})).map(drop)
    })?;
    mcp.close()?;

    let env = [("COORD_SESSION", session.as_str())];
    let cli_send = time(n, || {
        output(
            Command::new(bin.join("msgq"))
                .args(["send", "--from", "cli", "--to", "sink", "--type", "m", "--payload", r#"{"i":1}"#])
                .envs(env),
        )
        .map(drop)
    })?;
    let cli_claim_complete = time(n, || {
        let claimed = output(Command::new(bin.join("taskd")).args(["claim", "cli"]).envs(env))?;
        let t: Value = serde_json::from_str(&claimed).map_err(|e| format!("taskd claim printed {claimed:?}: {e}"))?;
        let id = t["id"].as_str().ok_or("nothing claimed")?;
        let token = t["claim_token"].as_str().ok_or("no token")?;
        output(Command::new(bin.join("taskd")).args(["complete", id, "--token", token]).envs(env)).map(drop)
    })?;
    let out = json!({
        "n": n,
        "mcp_ping_us": ping,
        "mcp_heartbeat_us": heartbeat,
        "mcp_send_us": send,
        "mcp_claim_complete_us": claim_complete,
        "cli_send_us": cli_send,
        "cli_claim_complete_us": cli_claim_complete,
    });
    println!("{out}");
    Ok(())
}

/// Runs `op` `n` times; median, p90 and min of each run's wall time, in µs.
fn time(n: usize, mut op: impl FnMut() -> Fallible<()>) -> Fallible<Value> {
    let mut us = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        op()?;
        us.push(t.elapsed().as_secs_f64() * 1e6);
    }
    us.sort_by(f64::total_cmp);
    let at = |q: f64| us[((us.len() - 1) as f64 * q).round() as usize];
    Ok(json!({"median": at(0.5), "p90": at(0.9), "min": at(0.0)}))
}

fn output(cmd: &mut Command) -> Fallible<String> {
    let out = cmd.stderr(Stdio::inherit()).output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!("{cmd:?} exited with {}", out.status));
    }
    String::from_utf8(out.stdout).map_err(|e| e.to_string())
}

/// One coord-mcp process, driven one request at a time.
struct Client {
    child: std::process::Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    next: u64,
    line: String,
}

impl Client {
    fn start(exe: &Path, session: &str) -> Fallible<Client> {
        let mut child = Command::new(exe)
            .args(["--agent", "mcp-bench", "--session", session])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("{}: {e}", exe.display()))?;
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().ok_or("no stdout")?);
        let mut c = Client { child, stdin, stdout, next: 1, line: String::new() };
        c.request(
            "initialize",
            json!({"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "mcp-bench", "version": "1"}}),
        )?;
        c.write(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))?;
        Ok(c)
    }

    fn write(&mut self, v: &Value) -> Fallible<()> {
        let stdin = self.stdin.as_mut().ok_or("stdin closed")?;
        let mut bytes = serde_json::to_vec(v).map_err(|e| e.to_string())?;
        bytes.push(b'\n');
        stdin.write_all(&bytes).and_then(|()| stdin.flush()).map_err(|e| format!("write: {e}"))
    }

    fn request(&mut self, method: &str, params: Value) -> Fallible<Value> {
        let id = self.next;
        self.next += 1;
        self.write(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))?;
        loop {
            self.line.clear();
            if self.stdout.read_line(&mut self.line).map_err(|e| e.to_string())? == 0 {
                return Err("coord-mcp closed its stdout".into());
            }
            let v: Value = serde_json::from_str(&self.line).map_err(|e| format!("{:?}: {e}", self.line))?;
            if v["id"] == id {
                return Ok(v);
            }
        }
    }

    fn call(&mut self, tool: &str, args: Value) -> Fallible<Value> {
        let r = self.request("tools/call", json!({"name": tool, "arguments": args}))?;
        let result = &r["result"];
        if result["isError"] != false {
            return Err(format!("{tool}: {r}"));
        }
        Ok(result["structuredContent"].clone())
    }

    fn close(mut self) -> Fallible<()> {
        drop(self.stdin.take());
        let status = self.child.wait().map_err(|e| e.to_string())?;
        if status.success() { Ok(()) } else { Err(format!("coord-mcp exited with {status}")) }
    }
}
