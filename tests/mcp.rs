//! `coord-mcp` driven as an MCP client drives it: the real binary, JSON-RPC lines on its
//! stdin and stdout, sharing a session with the command-line tools.

use std::collections::{BTreeSet, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::util::{TestEnv, kill9};

/// Every tool the server must offer.
const TOOLS: [&str; 18] = [
    "register",
    "heartbeat",
    "state_get",
    "state_set",
    "state_update",
    "send",
    "broadcast",
    "recv",
    "ack",
    "task_submit",
    "task_claim",
    "task_complete",
    "task_fail",
    "task_release",
    "task_list",
    "task_show",
    "progress",
    "session_status",
];

/// A client of one `coord-mcp` process.
pub struct Mcp {
    pub child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    next_id: u64,
}

impl Mcp {
    /// Starts `coord-mcp --agent AGENT ARGS...` in the env's session and initializes it.
    pub fn start(env: &TestEnv, agent: &str, args: &[&str]) -> Mcp {
        let mut mcp = Mcp::spawn(env, agent, args);
        let init = mcp.request(
            "initialize",
            json!({"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "tests", "version": "1"}}),
        );
        assert_eq!(init["result"]["serverInfo"]["name"], "coord-mcp", "{init}");
        assert!(init["result"]["capabilities"]["tools"].is_object(), "{init}");
        mcp.notify("notifications/initialized");
        mcp
    }

    /// Starts the process without the MCP handshake.
    pub fn spawn(env: &TestEnv, agent: &str, args: &[&str]) -> Mcp {
        let mut cmd = env.cmd("coord-mcp").args(["--agent", agent]).args(args).cmd;
        let mut child =
            cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().expect("spawn coord-mcp");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stdin = child.stdin.take();
        Mcp { child, stdin, lines, next_id: 1 }
    }

    /// Writes one raw line.
    pub fn send_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(line.as_bytes()).and_then(|()| stdin.write_all(b"\n")).expect("write to coord-mcp");
        stdin.flush().expect("flush");
    }

    /// The next line the server writes, parsed.
    pub fn next_message(&mut self, limit: Duration) -> Value {
        match self.lines.recv_timeout(limit) {
            Ok(line) => serde_json::from_str(&line).unwrap_or_else(|e| panic!("server wrote non-JSON {line:?}: {e}")),
            Err(RecvTimeoutError::Timeout) => panic!("no reply from coord-mcp within {limit:?}"),
            Err(RecvTimeoutError::Disconnected) => panic!("coord-mcp closed its stdout"),
        }
    }

    fn notify(&mut self, method: &str) {
        self.send_line(&json!({"jsonrpc": "2.0", "method": method}).to_string());
    }

    /// Sends a request and returns its response (skipping any notifications).
    pub fn request(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        self.send_line(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}).to_string());
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let msg = self.next_message(deadline.saturating_duration_since(Instant::now()));
            if msg["id"] == id {
                assert_eq!(msg["jsonrpc"], "2.0", "{msg}");
                return msg;
            }
            assert!(msg.get("id").is_none(), "a reply to another request: {msg}");
        }
    }

    /// Calls a tool; returns `(is_error, structured content)`.
    pub fn call_raw(&mut self, tool: &str, args: Value) -> (bool, Value) {
        let reply = self.request("tools/call", json!({"name": tool, "arguments": args}));
        let result = &reply["result"];
        assert!(result.is_object(), "tools/call {tool} got no result: {reply}");
        let text = result["content"][0]["text"].as_str().unwrap_or_else(|| panic!("no text content: {reply}"));
        let structured = result["structuredContent"].clone();
        assert!(structured.is_object(), "no structured content: {reply}");
        let is_error = result["isError"] == true;
        if is_error {
            assert_eq!(text, structured["error"], "the text of a tool error is its message");
        } else {
            let parsed: Value = serde_json::from_str(text).expect("the text of a result is its JSON");
            assert_eq!(parsed, structured);
        }
        (is_error, structured)
    }

    /// Calls a tool that must succeed.
    pub fn call(&mut self, tool: &str, args: Value) -> Value {
        let (is_error, v) = self.call_raw(tool, args.clone());
        assert!(!is_error, "{tool} {args} failed: {v}");
        v
    }

    /// Calls a tool that must fail; returns `{error, exit_code}`.
    pub fn call_err(&mut self, tool: &str, args: Value) -> Value {
        let (is_error, v) = self.call_raw(tool, args.clone());
        assert!(is_error, "{tool} {args} should have failed: {v}");
        assert!(v["error"].is_string() && v["exit_code"].is_u64(), "{v}");
        v
    }

    /// Closes stdin and waits for the exit code.
    pub fn close(mut self) -> Option<i32> {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status.code();
            }
            assert!(Instant::now() < deadline, "coord-mcp did not exit after stdin closed");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Mcp {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            kill9(&mut self.child);
        }
    }
}

fn task_record(env: &TestEnv, id: &str) -> Value {
    env.cmd("taskd").args(["show", id]).ok().json()
}

#[test]
fn mcp_lists_every_tool_with_an_input_schema() {
    let env = TestEnv::with_session();
    let mut mcp = Mcp::start(&env, "m1", &[]);
    let list = mcp.request("tools/list", json!({}));
    let tools = list["result"]["tools"].as_array().expect("tools").clone();
    let names: BTreeSet<&str> = tools.iter().filter_map(|t| t["name"].as_str()).collect();
    assert_eq!(names, TOOLS.into_iter().collect::<BTreeSet<_>>());
    for t in &tools {
        assert_eq!(t["inputSchema"]["type"], "object", "{t}");
        assert!(t["description"].as_str().is_some_and(|d| d.len() > 20), "{t}");
    }
    assert_eq!(mcp.request("ping", json!({}))["result"], json!({}));
    assert_eq!(mcp.close(), Some(0));
}

#[test]
fn mcp_tools_do_what_the_command_line_does() {
    let env = TestEnv::with_session();
    let mut mcp = Mcp::start(&env, "m1", &["--type", "coder", "--capability", "rust"]);
    let agent = mcp.call("register", json!({}));
    assert_eq!((agent["id"].as_str(), agent["type"].as_str()), (Some("m1"), Some("coder")));
    assert_eq!(agent["pid"], mcp.child.id(), "the registered process is the server");
    assert_eq!(agent["capabilities"], json!(["rust"]));
    // Registering again from the same process is a no-op, not "already registered".
    assert_eq!(mcp.call("register", json!({}))["registered_at"], agent["registered_at"]);
    let beat = mcp.call("heartbeat", json!({}));
    assert_eq!(beat["agent"], "m1");

    // State: set, get (whole and by pointer), merge-patch; the CLI sees the same document.
    mcp.call("state_set", json!({"key": "build", "pointer": "/phase", "value": "compile"}));
    mcp.call("state_set", json!({"key": "build", "pointer": "/steps", "value": []}));
    let merged = mcp.call("state_update", json!({"key": "build", "patch": {"phase": "test", "owner": "m1"}}));
    assert_eq!(merged["value"], json!({"phase": "test", "steps": [], "owner": "m1"}));
    let gone = mcp.call("state_update", json!({"key": "build", "patch": {"owner": null}}));
    assert_eq!(gone["value"], json!({"phase": "test", "steps": []}));
    assert_eq!(mcp.call("state_get", json!({"key": "build", "pointer": "/phase"}))["value"], "test");
    assert_eq!(env.cmd("state").args(["get", "build"]).ok().json(), json!({"phase": "test", "steps": []}));

    // Messages: the CLI sends to the MCP agent, it receives, acks; it sends back.
    let me = std::process::id().to_string();
    env.cmd("registry").args(["register", "shell", "--type", "worker", "--pid", &me]).ok();
    env.cmd("msgq").args(["send", "--from", "shell", "--to", "m1", "--type", "hello", "--payload", r#"{"n":1}"#]).ok();
    let got = mcp.call("recv", json!({"wait_secs": 5}));
    let msgs = got["messages"].as_array().expect("messages");
    assert_eq!(msgs.len(), 1, "{got}");
    assert_eq!((msgs[0]["from"].as_str(), msgs[0]["payload"]["n"].as_u64()), (Some("shell"), Some(1)));
    let counts = env.cmd("msgq").args(["count", "m1"]).ok().json();
    assert_eq!((counts["queued"].as_u64(), counts["in_flight"].as_u64()), (Some(0), Some(1)));
    let acked = mcp.call("ack", json!({"id": msgs[0]["id"]}));
    assert_eq!(acked["already_acked"], false);
    assert_eq!(env.cmd("msgq").args(["count", "m1"]).ok().json()["acked"], 1);
    assert_eq!(mcp.call("recv", json!({"wait_secs": 0}))["messages"], json!([]), "nothing there is not an error");
    let sent = mcp.call("send", json!({"to": "shell", "type": "reply", "payload": {"ok": true}, "priority": 2}));
    let back = env.cmd("msgq").args(["recv", "shell", "--ack"]).ok().json();
    assert_eq!(
        (back["id"].clone(), back["from"].clone(), back["priority"].clone()),
        (sent["id"].clone(), json!("m1"), json!(2))
    );
    let b = mcp.call("broadcast", json!({"type": "note", "payload": "all"}));
    assert_eq!(b["recipients"], json!(["shell"]));
    assert_eq!(env.cmd("msgq").args(["recv", "shell", "--ack"]).ok().json()["type"], "note");
    let auto = {
        env.cmd("msgq").args(["send", "--from", "shell", "--to", "m1", "--type", "x"]).ok();
        mcp.call("recv", json!({"ack": true, "wait_secs": 5}))
    };
    assert_eq!(auto["messages"].as_array().map(Vec::len), Some(1));
    assert_eq!(env.cmd("msgq").args(["count", "m1"]).ok().json()["acked"], 2, "ack: true acknowledges");

    // Tasks: submit through MCP, claim (type and capability routing), complete.
    let submitted = mcp.call(
        "task_submit",
        json!({"tasks": [
            {"id": "t-py", "capabilities": ["python"], "priority": 9},
            {"id": "t-rs", "capabilities": ["rust"], "payload": {"file": "lib.rs"}},
            {"id": "t-next", "dependencies": ["t-rs"]}
        ]}),
    );
    assert_eq!(submitted["tasks"].as_array().map(Vec::len), Some(3));
    let claimed = mcp.call("task_claim", json!({"wait_secs": 0}));
    assert_eq!(claimed["task"]["id"], "t-rs", "t-py needs a capability m1 lacks: {claimed}");
    assert_eq!(claimed["task"]["assigned_to"], "m1");
    let none = mcp.call("task_claim", json!({"wait_secs": 0.2}));
    assert_eq!(none["task"], Value::Null, "t-next is blocked, t-py is not for m1: {none}");
    let done = mcp.call("task_complete", json!({"id": "t-rs", "result": {"lines": 10}}));
    assert_eq!(done["task"]["status"], "completed");
    assert_eq!(task_record(&env, "t-rs")["results"], json!({"lines": 10}));
    let next = mcp.call("task_claim", json!({}));
    assert_eq!(next["task"]["id"], "t-next", "unblocked by t-rs");
    let failed = mcp.call("task_fail", json!({"id": "t-next", "error": "flaky"}));
    assert_eq!(
        (failed["task"]["status"].as_str(), failed["task"]["errors"][0]["error"].as_str()),
        (Some("pending"), Some("flaky"))
    );
    mcp.call("task_claim", json!({}));
    let released = mcp.call("task_release", json!({"id": "t-next"}));
    assert_eq!(released["task"]["status"], "pending");

    let listed = mcp.call("task_list", json!({"status": "pending"}));
    let ids: BTreeSet<&str> =
        listed["tasks"].as_array().expect("tasks").iter().filter_map(|t| t["id"].as_str()).collect();
    assert_eq!(ids, BTreeSet::from(["t-py", "t-next"]));
    let capped = mcp.call("task_list", json!({"limit": 1}));
    assert_eq!((capped["total"].as_u64(), capped["truncated"].as_bool()), (Some(3), Some(true)));
    assert_eq!(capped["tasks"].as_array().map(Vec::len), Some(1));
    assert_eq!(mcp.call("task_show", json!({"id": "t-py"}))["task"]["priority"], 9);
    let progress = mcp.call("progress", json!({}));
    assert_eq!(progress, env.cmd("taskd").arg("progress").ok().json());
    assert_eq!((progress["completed"].as_u64(), progress["total"].as_u64()), (Some(1), Some(3)));

    let status = mcp.call("session_status", json!({}));
    let cli = env.cmd("healthmon").args(["status", "--json"]).ok().json();
    assert_eq!(status["session"], cli["session"]);
    assert_eq!(status["tasks"], cli["tasks"]);
    let m1 = status["agents"].as_array().expect("agents").iter().find(|a| a["id"] == "m1").expect("m1 listed").clone();
    assert_eq!(m1["alive"], true, "{m1}");

    assert_eq!(mcp.close(), Some(0));
    let after = env.cmd("registry").args(["show", "m1"]).ok().json();
    assert_eq!(after["status"], "terminated", "closing stdin unregisters: {after}");
}

#[test]
fn mcp_errors_are_tool_errors_with_the_command_line_messages_and_the_server_keeps_serving() {
    let env = TestEnv::with_session();
    let mut mcp = Mcp::start(&env, "m1", &[]);

    // A line that is not JSON: parse error, id null, and the server goes on.
    mcp.send_line("{\"jsonrpc\": \"2.0\", \"id\": 99, \"method\": ");
    let e = mcp.next_message(Duration::from_secs(10));
    assert_eq!((e["error"]["code"].as_i64(), e["id"].clone()), (Some(-32700), Value::Null), "{e}");
    // JSON that is not a valid request: invalid request, with its id.
    mcp.send_line(r#"{"jsonrpc": "2.0", "id": 100, "method": "tools/call", "params": 5}"#);
    let e = mcp.next_message(Duration::from_secs(10));
    assert_eq!((e["error"]["code"].as_i64(), e["id"].as_i64()), (Some(-32600), Some(100)), "{e}");
    mcp.send_line("[]");
    assert_eq!(mcp.next_message(Duration::from_secs(10))["error"]["code"], -32600);
    // An unknown tool is a JSON-RPC error.
    assert!(mcp.request("tools/call", json!({"name": "nope", "arguments": {}}))["error"]["code"].is_i64());
    // Arguments that break the schema: a tool error the model can correct, exit code 2.
    let e = mcp.call_err("task_show", json!({"id": 5}));
    assert!(e["error"].as_str().is_some_and(|m| m.contains("expected a string")), "{e}");
    assert_eq!(e["exit_code"], 2);
    let e = mcp.call_err("task_claim", json!({"wait": 1}));
    assert!(e["error"].as_str().is_some_and(|m| m.contains("unknown field")), "{e}");

    // An invalid id: the message `taskd` prints, exit code 2, nothing created.
    let e = mcp.call_err("task_show", json!({"id": "../escape"}));
    let cli = env.cmd("taskd").args(["show", "../escape"]).code(2).stderr_str();
    assert!(cli.contains(e["error"].as_str().expect("message")), "{cli} vs {e}");
    assert_eq!(e["exit_code"], 2);
    let e = mcp.call_err("state_set", json!({"key": "a/b", "value": 1}));
    assert!(e["error"].as_str().is_some_and(|m| m.contains("invalid state key id")), "{e}");
    assert!(!env.dir().join("state/a").exists());
    // Claiming before registering says what to do.
    let e = mcp.call_err("task_claim", json!({"wait_secs": 0}));
    assert!(e["error"].as_str().is_some_and(|m| m.contains("not registered")), "{e}");
    let e = mcp.call_err("recv", json!({"wait_secs": -1}));
    assert_eq!(e["exit_code"], 2, "{e}");
    // A missing key, a missing task: exit code 1 with the CLI's message.
    let e = mcp.call_err("state_get", json!({"key": "nothere"}));
    let cli = env.cmd("state").args(["get", "nothere"]).code(1).stderr_str();
    assert_eq!(cli.trim(), format!("state: error: {}", e["error"].as_str().expect("message")));

    // A malformed file is reported by path and left as it is.
    let global = env.dir().join("state/global.json");
    std::fs::write(&global, b"{\"phase\": ").expect("corrupt");
    let e = mcp.call_err("state_update", json!({"key": "global", "patch": {"phase": "x"}}));
    let msg = e["error"].as_str().expect("message");
    assert!(msg.contains("malformed JSON") && msg.contains(&global.display().to_string()), "{msg}");
    assert_eq!(std::fs::read(&global).expect("read"), b"{\"phase\": ");

    // Still serving after all of it.
    assert_eq!(mcp.request("ping", json!({}))["result"], json!({}));
    mcp.call("register", json!({}));
    assert_eq!(mcp.close(), Some(0));
}

#[test]
fn mcp_without_a_session_says_how_to_create_one() {
    let env = TestEnv::new();
    let mut mcp = Mcp::start(&env, "m1", &[]);
    let e = mcp.call_err("progress", json!({}));
    let msg = e["error"].as_str().expect("message");
    assert!(msg.contains("no session given") && msg.contains("session-init"), "{msg}");
    assert_eq!(e["exit_code"], 2);
    let mut mcp2 = Mcp::start(&env, "m2", &["--session", "nosuch-1"]);
    let e = mcp2.call_err("register", json!({}));
    assert!(e["error"].as_str().is_some_and(|m| m.contains("not found") && m.contains("session-init")), "{e}");
    assert_eq!(mcp.close(), Some(0));
    assert_eq!(mcp2.close(), Some(0));
}

#[test]
fn mcp_completion_from_a_stale_holder_is_refused() {
    let env = TestEnv::with_session();
    let mut mcp = Mcp::start(&env, "m1", &["--register"]);
    mcp.call("task_submit", json!({"tasks": [{"id": "t1"}]}));
    let claim = mcp.call("task_claim", json!({"wait_secs": 0}));
    assert_eq!(claim["task"]["id"], "t1");
    // The operator takes the task back and another agent claims it.
    env.cmd("taskd").args(["requeue", "--agent", "m1"]).ok();
    env.cmd("registry").args(["register", "other", "--type", "worker", "--pid", &std::process::id().to_string()]).ok();
    let other = env.cmd("taskd").args(["claim", "other"]).ok().json();
    assert_eq!(other["id"], "t1");
    let e = mcp.call_err("task_complete", json!({"id": "t1", "result": "late"}));
    let msg = e["error"].as_str().expect("message");
    assert!(msg.contains("t1") && msg.contains("other"), "the refusal names the task and its holder: {msg}");
    assert_eq!(e["exit_code"], 1);
    let t = task_record(&env, "t1");
    assert_eq!((t["status"].as_str(), t["assigned_to"].as_str()), (Some("claimed"), Some("other")), "{t}");
    assert!(t.get("results").is_none(), "the late result was not recorded: {t}");
    // With the right token (the other agent's), it would go through: fencing is by token.
    let e = mcp.call_err("task_complete", json!({"id": "t1", "token": "wrong"}));
    assert_eq!(e["exit_code"], 1);
    assert_eq!(mcp.close(), Some(0));
    assert_eq!(task_record(&env, "t1")["assigned_to"], "other", "shutdown releases only what m1 holds");
}

#[test]
fn mcp_gives_back_claims_and_messages_on_stdin_close_and_on_sigterm() {
    for how in ["stdin", "sigterm"] {
        let env = TestEnv::with_session();
        let mut mcp = Mcp::start(&env, "m1", &["--register"]);
        env.cmd("taskd").args(["submit", "--id", "t1"]).ok();
        env.cmd("msgq").args(["send", "--from", "x", "--to", "m1", "--type", "job"]).ok();
        assert_eq!(mcp.call("task_claim", json!({}))["task"]["id"], "t1");
        assert_eq!(mcp.call("recv", json!({}))["messages"].as_array().map(Vec::len), Some(1));
        let code = if how == "stdin" {
            mcp.close()
        } else {
            // A call waiting for a task must not hold the shutdown up.
            mcp.send_line(&json!({"jsonrpc": "2.0", "id": 500, "method": "tools/call", "params": {"name": "recv", "arguments": {"wait_secs": 30}}}).to_string());
            std::thread::sleep(Duration::from_millis(200));
            let start = Instant::now();
            // SAFETY: signalling our own child.
            unsafe {
                libc::kill(mcp.child.id() as i32, libc::SIGTERM);
            }
            let status = mcp.child.wait().expect("wait");
            assert!(start.elapsed() < Duration::from_secs(10), "SIGTERM took {:?}", start.elapsed());
            status.code()
        };
        assert_eq!(code, Some(0), "{how}");
        let t = task_record(&env, "t1");
        assert_eq!((t["status"].as_str(), t["attempts"].as_u64()), (Some("pending"), Some(0)), "{how}: {t}");
        let counts = env.cmd("msgq").args(["count", "m1"]).ok().json();
        assert_eq!((counts["queued"].as_u64(), counts["in_flight"].as_u64()), (Some(1), Some(0)), "{how}: {counts}");
        assert_eq!(env.cmd("registry").args(["show", "m1"]).ok().json()["status"], "terminated", "{how}");
    }
}

#[test]
fn mcp_killed_mid_claim_is_found_dead_and_its_work_requeued() {
    let env = TestEnv::with_session();
    let mut mcp = Mcp::start(&env, "m1", &["--register"]);
    env.cmd("taskd").args(["submit", "--id", "t1"]).ok();
    env.cmd("taskd").args(["submit", "--id", "t2"]).ok();
    env.cmd("msgq").args(["send", "--from", "x", "--to", "m1", "--type", "job"]).ok();
    assert_eq!(mcp.call("task_claim", json!({}))["task"]["id"], "t1");
    assert_eq!(mcp.call("recv", json!({}))["messages"].as_array().map(Vec::len), Some(1));
    kill9(&mut mcp.child);
    env.cmd("healthmon").arg("--once").run();
    let t = task_record(&env, "t1");
    assert_eq!(t["status"], "pending", "healthmon requeued the dead server's claim: {t}");
    assert_eq!(env.cmd("msgq").args(["count", "m1"]).ok().json()["queued"], 1);
    assert_eq!(env.cmd("registry").args(["show", "m1"]).ok().json()["status"], "failed");

    // A restarted server under the same id takes the place of one killed before
    // healthmon ran, and requeues what the dead one held.
    let mut second = Mcp::start(&env, "m2", &["--register"]);
    assert_eq!(second.call("task_claim", json!({}))["task"]["id"], "t1");
    kill9(&mut second.child);
    let mut third = Mcp::start(&env, "m2", &[]);
    third.call("register", json!({}));
    assert_eq!(task_record(&env, "t1")["status"], "pending", "the dead instance's claim went back");
    assert_eq!(third.call("task_claim", json!({}))["task"]["id"], "t1");
    assert_eq!(third.close(), Some(0));
}

#[test]
fn mcp_and_taskd_work_share_200_tasks_each_done_exactly_once() {
    let env = TestEnv::with_session();
    let batch: String = (0..200).map(|i| format!("{{\"id\":\"t{i:03}\",\"payload\":{{\"n\":{i}}}}}\n")).collect();
    env.cmd("taskd").args(["submit", "--batch"]).run_with_stdin(batch.as_bytes()).assert_code(0);
    let log = env.root.path().join("shell.log");
    let script = format!("sleep 0.005; echo \"$TASK_ID\" >> {}; echo '{{\"by\":\"shell\"}}'", log.display());
    let mut shell = env.cmd("taskd").args(["work", "sh1", "--idle-exit", "3", "--", "sh", "-c", &script]).spawn();
    let mut mcp = Mcp::start(&env, "m1", &["--register"]);
    let mut by_mcp = Vec::new();
    loop {
        let got = mcp.call("task_claim", json!({"wait_secs": 1}));
        let Some(id) = got["task"]["id"].as_str().map(str::to_string) else { break };
        mcp.call("task_complete", json!({"id": id, "result": {"by": "mcp"}}));
        by_mcp.push(id);
    }
    let status = shell.wait().expect("taskd work");
    assert!(status.success());
    assert_eq!(mcp.close(), Some(0));

    let by_shell: Vec<String> = std::fs::read_to_string(&log).unwrap_or_default().lines().map(str::to_string).collect();
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for id in by_mcp.iter().chain(&by_shell) {
        *seen.entry(id).or_default() += 1;
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "run more than once: {twice:?}");
    assert_eq!(seen.len(), 200, "mcp did {}, shell did {}", by_mcp.len(), by_shell.len());
    assert!(!by_mcp.is_empty() && !by_shell.is_empty(), "both worked: mcp {} shell {}", by_mcp.len(), by_shell.len());
    let done = env.cmd("taskd").args(["list", "--status", "completed"]).ok().json_lines();
    assert_eq!(done.len(), 200);
    for t in &done {
        let by = t["results"]["by"].as_str().expect("result");
        let id = t["id"].as_str().expect("id");
        let expected = if by_mcp.iter().any(|m| m == id) { "mcp" } else { "shell" };
        assert_eq!(by, expected, "{t}");
        assert_eq!(t["attempts"], 1, "{t}");
    }
}

/// The `tools/call` examples in docs/mcp.md: every tool has one, and each one's
/// arguments validate against the schema the server lists for that tool.
#[test]
fn every_tool_schema_validates_the_examples_in_docs_mcp_md() {
    let env = TestEnv::with_session();
    let mut mcp = Mcp::start(&env, "m1", &[]);
    let list = mcp.request("tools/list", json!({}));
    let schemas: HashMap<String, Value> = list["result"]["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .map(|t| (t["name"].as_str().expect("name").to_string(), t["inputSchema"].clone()))
        .collect();
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/mcp.md")).expect("docs/mcp.md");
    let calls = doc_calls(&doc);
    let mut covered = BTreeSet::new();
    for (line, call) in &calls {
        let name = call["params"]["name"].as_str().unwrap_or_else(|| panic!("docs/mcp.md:{line}: no tool name"));
        let schema = schemas.get(name).unwrap_or_else(|| panic!("docs/mcp.md:{line}: unknown tool {name:?}"));
        let validator = jsonschema::validator_for(schema).unwrap_or_else(|e| panic!("schema of {name}: {e}"));
        let args = &call["params"]["arguments"];
        let errors: Vec<String> = validator.iter_errors(args).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "docs/mcp.md:{line}: {name} {args} does not match its schema: {errors:?}");
        covered.insert(name);
    }
    let missing: Vec<_> = TOOLS.iter().filter(|t| !covered.contains(*t)).collect();
    assert!(missing.is_empty(), "tools without an example in docs/mcp.md: {missing:?}");
    // The validator is not vacuous: a wrong type and an unknown member are refused.
    let claim = jsonschema::validator_for(&schemas["task_claim"]).expect("schema");
    assert!(!claim.is_valid(&json!({"wait_secs": "soon"})));
    assert!(!claim.is_valid(&json!({"wait": 1})));
    assert!(!jsonschema::validator_for(&schemas["send"]).expect("schema").is_valid(&json!({"type": "x"})));
    assert_eq!(mcp.close(), Some(0));
}

/// The JSON values of each ```json block of `doc`, with the block's first line number.
fn doc_blocks(doc: &str) -> Vec<(usize, Vec<Value>)> {
    let mut out = Vec::new();
    let mut block: Option<(usize, String)> = None;
    for (i, line) in doc.lines().enumerate() {
        match (&mut block, line.trim_start()) {
            (None, l) if l.starts_with("```json") => block = Some((i + 2, String::new())),
            (Some((start, text)), l) if l.starts_with("```") => {
                let values = serde_json::Deserializer::from_str(text)
                    .into_iter::<Value>()
                    .map(|v| v.unwrap_or_else(|e| panic!("docs/mcp.md:{start}: invalid JSON: {e}")))
                    .collect();
                out.push((*start, values));
                block = None;
            }
            (Some((_, text)), _) => {
                text.push_str(line);
                text.push('\n');
            }
            (None, _) => {}
        }
    }
    out
}

/// Every JSON-RPC `tools/call` request in a ```json block of `doc`, with its line number.
fn doc_calls(doc: &str) -> Vec<(usize, Value)> {
    let blocks = doc_blocks(doc).into_iter();
    blocks
        .flat_map(|(line, values)| values.into_iter().filter(|v| v["method"] == "tools/call").map(move |v| (line, v)))
        .collect()
}

#[test]
fn mcp_recv_waits_and_wakes_on_a_message() {
    let env = TestEnv::with_session();
    let mut mcp = Mcp::start(&env, "m1", &["--register", "--max-wait", "20"]);
    let sender = {
        let base = env.base.clone();
        let sid = env.sid().to_string();
        let msgq = crate::util::bin("msgq");
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            std::process::Command::new(msgq)
                .args(["send", "--from", "x", "--to", "m1", "--type", "wake"])
                .env("COORD_BASE", base)
                .env("COORD_SESSION", sid)
                .status()
                .expect("send")
        })
    };
    let start = Instant::now();
    let got = mcp.call("recv", json!({"wait_secs": 15}));
    let waited = start.elapsed();
    assert!(sender.join().expect("sender").success());
    assert_eq!(got["messages"][0]["type"], "wake", "{got}");
    assert!(waited < Duration::from_secs(10), "woke by the message, not the timeout: {waited:?}");
    // A wait longer than --max-wait is cut to it.
    let start = Instant::now();
    let mut short = Mcp::start(&env, "m9", &["--register", "--max-wait", "0.3"]);
    assert_eq!(short.call("recv", json!({"wait_secs": 60}))["messages"], json!([]));
    assert!(start.elapsed() < Duration::from_secs(20));
    assert_eq!(short.close(), Some(0));
    assert_eq!(mcp.close(), Some(0));
}

/// The examples of docs/mcp.md, run in order on a real server: each succeeds or fails
/// as shown, its result has the members shown, and a shown error is the exact message.
#[test]
fn the_examples_in_docs_mcp_md_run_as_shown() {
    let env = TestEnv::with_session();
    let me = std::process::id().to_string();
    env.cmd("registry").args(["register", "w1", "--type", "worker", "--pid", &me]).ok();
    let mut mcp = Mcp::start(&env, "mcp-1", &["--type", "coder", "--capability", "rust"]);
    let question = r#"{"text":"which crate owns the lock file?"}"#;
    let send = ["send", "--from", "w1", "--to", "mcp-1", "--type", "question", "--allow-unregistered", "--payload"];
    env.cmd("msgq").args(send).arg(question).ok();

    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/mcp.md")).expect("docs/mcp.md");
    let replies = doc_replies(&doc);
    let calls = doc_calls(&doc);
    assert!(calls.len() >= TOOLS.len(), "docs/mcp.md lost its examples");
    // Ids and tokens in the doc stand for the ones this run makes.
    let mut same: HashMap<String, String> = HashMap::new();
    for (line, call) in calls {
        let name = call["params"]["name"].as_str().expect("name").to_string();
        let mut args = call["params"]["arguments"].clone();
        substitute(&mut args, &same);
        let (is_error, got) = mcp.call_raw(&name, args.clone());
        let shown = replies.get(&line).unwrap_or_else(|| panic!("docs/mcp.md:{line}: {name} has no reply shown"));
        let shown_error = shown["result"]["isError"] == true;
        let want = &shown["result"]["structuredContent"];
        assert_eq!(is_error, shown_error, "docs/mcp.md:{line}: {name} {args} gave {got}");
        let keys = |v: &Value| v.as_object().map(|o| o.keys().cloned().collect::<BTreeSet<_>>()).unwrap_or_default();
        assert_eq!(keys(&got), keys(want), "docs/mcp.md:{line}: {name} result members differ: {got}");
        if is_error {
            assert_eq!(got["error"], want["error"], "docs/mcp.md:{line}");
            assert_eq!(got["exit_code"], want["exit_code"], "docs/mcp.md:{line}");
        }
        learn(want, &got, &mut same);
    }
    assert_eq!(mcp.close(), Some(0));
}

/// The reply shown after each request in docs/mcp.md, by the request's line.
fn doc_replies(doc: &str) -> HashMap<usize, Value> {
    let mut out = HashMap::new();
    for (start, values) in doc_blocks(doc) {
        if let [req, reply] = values.as_slice()
            && req["method"] == "tools/call"
        {
            assert_eq!(req["id"], reply["id"], "docs/mcp.md:{start}: the reply answers another request");
            out.insert(start, reply.clone());
        }
    }
    out
}

/// Records, for every `id` and `claim_token` in `shown`, the value at the same place in `got`.
fn learn(shown: &Value, got: &Value, same: &mut HashMap<String, String>) {
    match (shown, got) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                let Some(w) = b.get(k) else { continue };
                if let (true, Some(x), Some(y)) = (k == "id" || k == "claim_token", v.as_str(), w.as_str()) {
                    same.insert(x.to_string(), y.to_string());
                }
                learn(v, w, same);
            }
        }
        (Value::Array(a), Value::Array(b)) => a.iter().zip(b).for_each(|(v, w)| learn(v, w, same)),
        _ => {}
    }
}

fn substitute(v: &mut Value, same: &HashMap<String, String>) {
    match v {
        Value::String(s) => {
            if let Some(t) = same.get(s.as_str()) {
                *s = t.clone();
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| substitute(x, same)),
        Value::Object(o) => o.values_mut().for_each(|x| substitute(x, same)),
        _ => {}
    }
}

#[test]
fn mcp_never_hangs_on_a_sigterm_at_any_moment_of_its_start() {
    // Before the handlers are in place SIGTERM's default action ends the process; after,
    // the server must notice it wherever it is in its start (registering, waiting for
    // `initialize`). Either way it must be gone promptly: it must never swallow one.
    let env = TestEnv::with_session();
    for round in 0..24u64 {
        let agent = format!("early{round}");
        let mut mcp = Mcp::spawn(&env, &agent, &["--register"]);
        std::thread::sleep(Duration::from_micros(round * 750));
        // SAFETY: signalling our own child.
        unsafe {
            libc::kill(mcp.child.id() as i32, libc::SIGTERM);
        }
        let mut status = None;
        let ended = crate::util::wait_until(Duration::from_secs(10), || {
            status = mcp.child.try_wait().expect("wait");
            status.is_some()
        });
        if !ended {
            let _ = mcp.child.kill();
        }
        assert!(ended, "coord-mcp swallowed a SIGTERM sent {} µs after it started", round * 750);
        let status = status.expect("ended");
        use std::os::unix::process::ExitStatusExt;
        assert!(status.code() == Some(0) || status.signal() == Some(libc::SIGTERM), "round {round}: exit {status:?}");
    }
}

#[test]
fn mcp_stops_on_sigterm_before_its_client_initializes() {
    let env = TestEnv::with_session();
    let mut mcp = Mcp::spawn(&env, "m1", &["--register"]);
    assert!(
        crate::util::wait_until(Duration::from_secs(10), || {
            env.cmd("registry").args(["show", "m1"]).run().code() == Some(0)
        }),
        "--register registered the agent"
    );
    let start = Instant::now();
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(mcp.child.id() as i32, libc::SIGTERM);
    }
    let mut status = None;
    assert!(
        crate::util::wait_until(Duration::from_secs(10), || {
            status = mcp.child.try_wait().expect("wait");
            status.is_some()
        }),
        "coord-mcp ignored SIGTERM while waiting for initialize"
    );
    assert!(start.elapsed() < Duration::from_secs(10));
    assert_eq!(status.and_then(|s| s.code()), Some(0));
    assert_eq!(env.cmd("registry").args(["show", "m1"]).ok().json()["status"], "terminated");
}
