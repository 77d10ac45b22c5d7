//! The MCP tools: each is one call into coord-core, run on tokio's blocking pool, with a
//! JSON Schema for its input (derived from the parameter types below) and a JSON object
//! as its structured result.
//!
//! The server is one agent of the session: its id, type and capabilities come from the
//! command line. It remembers what it holds, the claim token of every task it claimed
//! and every message it received and has not acknowledged, so that completions are
//! fenced by token and so that [`Coord::shutdown`] can hand all of it back.
//!
//! An error is a tool error (`isError: true`), its text the message the command-line
//! tools print, its structured content `{"error", "exit_code"}` with the exit code the
//! same operation has on the command line. Nothing available (an empty mailbox, no task
//! to claim, a wait that ran out) is not an error: `{"messages": []}`, `{"task": null}`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use coord_core::mailbox::{self, Broadcast, Message, Outgoing, Recipients, StopFds, Waited};
use coord_core::registry::{self, Registration};
use coord_core::task::bell::Signals;
use coord_core::task::{self, ClaimOptions, Holder, NewTask, Status};
use coord_core::{Error, SessionDir, cli, overview, record, state, time};
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ContentBlock, Implementation, ServerCapabilities, ServerConfig};
use rmcp::{ErrorData, ServerHandler, tool, tool_handler, tool_router};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Value, json};

/// Who the server is in the session, and its bounds.
#[derive(Debug, Clone)]
pub struct Config {
    /// `--base`, `--session`, `--lock-timeout`.
    pub session: cli::SessionArgs,
    /// The agent id.
    pub agent: String,
    /// The agent type.
    pub agent_type: String,
    /// The agent's capabilities.
    pub capabilities: Vec<String>,
    /// A wait's length when the call names none.
    pub default_wait: Duration,
    /// The longest wait a call may ask for.
    pub max_wait: Duration,
    /// Lease of each claim.
    pub lease: Duration,
}

/// What the server holds for its agent.
#[derive(Debug, Default)]
struct Held {
    /// Claimed tasks: id → claim token.
    tasks: HashMap<String, String>,
    /// Received, unacknowledged messages: id → message.
    messages: HashMap<String, Message>,
}

#[derive(Debug)]
struct Inner {
    cfg: Config,
    dir: Mutex<Option<SessionDir>>,
    held: Mutex<Held>,
    registered: AtomicBool,
    closing: AtomicBool,
    busy: AtomicUsize,
    /// SIGTERM/SIGINT, or the trigger written at shutdown: ends every wait.
    stop: Signals,
}

/// The coord MCP server.
#[derive(Debug, Clone)]
pub struct Coord {
    inner: Arc<Inner>,
    tool_router: ToolRouter<Self>,
}

type ToolResult = Result<CallToolResult, ErrorData>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing below panics while holding these locks; a poisoned one still holds good data.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Marks a call in progress, so shutdown waits for it before handing claims back.
struct Busy<'a>(&'a AtomicUsize);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Inner {
    fn enter(&self) -> coord_core::Result<Busy<'_>> {
        self.busy.fetch_add(1, Ordering::SeqCst);
        let busy = Busy(&self.busy);
        if self.closing.load(Ordering::SeqCst) {
            return Err(Error::Failed("coord-mcp is shutting down; the call was not made".into()));
        }
        Ok(busy)
    }

    /// The session directory, opened on first use (a session created after the server
    /// started is found then).
    fn dir(&self) -> coord_core::Result<SessionDir> {
        let mut cached = lock(&self.dir);
        if let Some(d) = cached.as_ref() {
            return Ok(d.clone());
        }
        let d = self.cfg.session.open().map_err(with_session_hint)?;
        *cached = Some(d.clone());
        Ok(d)
    }

    fn timeout(&self) -> Duration {
        self.cfg.session.lock_timeout()
    }

    /// A call's wait: `secs`, else the default, never more than `--max-wait`.
    fn wait_for(&self, secs: Option<f64>) -> coord_core::Result<Duration> {
        let wait = match secs {
            None => self.cfg.default_wait,
            Some(s) if s.is_finite() && s >= 0.0 => Duration::from_secs_f64(s.min(1e9)),
            Some(s) => {
                return Err(Error::Usage(format!("wait_secs {s} is not a number of seconds >= 0")));
            }
        };
        Ok(wait.min(self.cfg.max_wait))
    }

    fn holder(&self, id: &str, token: Option<String>) -> Holder {
        let token = token.or_else(|| lock(&self.held).tasks.get(id).cloned());
        Holder { agent: Some(self.cfg.agent.clone()), token }
    }

    /// Forgets the claim of task `id` once this server no longer holds it: after `op`
    /// succeeded (`finished`), or when the record is no longer claimed with the token
    /// this server kept (the claim was lost), so shutdown does not try to release it.
    fn forget_unless_held(&self, dir: &SessionDir, id: &str, holder: &Holder, finished: bool) {
        let held = !finished
            && task::show(dir, id).is_ok_and(|t| t.state() == Some(Status::Claimed) && t.claim_token == holder.token);
        if !held {
            lock(&self.held).tasks.remove(id);
        }
    }
}

/// The CLI's message, plus what to do when an MCP client started the server without
/// a session.
fn with_session_hint(e: Error) -> Error {
    match e {
        Error::NoSession { .. } | Error::SessionNotFound { .. } => Error::Usage(format!(
            "{e}; create a session with `session-init OPERATION` and start coord-mcp with --session ID \
             (or COORD_SESSION=ID) in the client's configuration"
        )),
        other => other,
    }
}

/// A tool's outcome as its result.
fn result(outcome: coord_core::Result<Value>) -> CallToolResult {
    match outcome {
        Ok(v) => CallToolResult::structured(v),
        Err(e) => tool_error(&e),
    }
}

/// A coord-core error as an MCP tool error.
pub fn tool_error(e: &Error) -> CallToolResult {
    let mut r = CallToolResult::structured_error(json!({"error": e.to_string(), "exit_code": e.exit_code()}));
    r.content = vec![ContentBlock::text(e.to_string())];
    r
}

fn to_value<T: serde::Serialize>(v: &T) -> coord_core::Result<Value> {
    serde_json::to_value(v).map_err(|e| Error::Failed(format!("cannot encode the result: {e}")))
}

// ---------------------------------------------------------------------------------------
// Parameters. Doc comments become the schema's descriptions.

/// `register`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterParams {
    /// Take the place of an active registration of the same agent id (another process's).
    #[serde(default)]
    pub replace: bool,
}

/// `state_get`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StateGetParams {
    /// State key: the document state/<key>.json.
    pub key: String,
    /// RFC 6901 JSON pointer into the document, e.g. "/phase"; omitted or "" reads it all.
    #[serde(default)]
    pub pointer: Option<String>,
}

/// `state_set`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StateSetParams {
    /// State key: the document state/<key>.json.
    pub key: String,
    /// RFC 6901 JSON pointer of the value to set; "" (the default) is the whole document,
    /// "/list/-" appends to an array. Missing parent objects are created.
    #[serde(default)]
    pub pointer: String,
    /// The new value: any JSON.
    pub value: Value,
}

/// `state_update`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StateUpdateParams {
    /// State key: the document state/<key>.json.
    pub key: String,
    /// An RFC 7386 JSON merge patch: objects merge member by member, null removes a
    /// member, any other value replaces what is there.
    pub patch: Value,
}

/// `send`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SendParams {
    /// The recipient's agent id.
    pub to: String,
    /// The message type, e.g. "task_result", "question", "preempt".
    #[serde(rename = "type")]
    pub msg_type: String,
    /// Any JSON value.
    #[serde(default)]
    pub payload: Value,
    /// Higher is delivered first.
    #[serde(default)]
    pub priority: i64,
    /// Ask the recipient's ack to send an "ack" message back to this agent.
    #[serde(default)]
    pub requires_ack: bool,
    /// Send even if `to` is not a registered agent (its mailbox is created).
    #[serde(default)]
    pub allow_unregistered: bool,
}

/// `broadcast`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BroadcastParams {
    /// The message type.
    #[serde(rename = "type")]
    pub msg_type: String,
    /// Any JSON value.
    #[serde(default)]
    pub payload: Value,
    /// Higher is delivered first.
    #[serde(default)]
    pub priority: i64,
    /// Ask each recipient's ack to send an "ack" message back.
    #[serde(default)]
    pub requires_ack: bool,
}

/// `recv`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RecvParams {
    /// The most messages to take (default 10).
    #[serde(default)]
    #[schemars(range(min = 1, max = 1000))]
    pub max: Option<usize>,
    /// Seconds to wait for a message when there is none; 0 returns at once. Default and
    /// upper bound are the server's --default-wait and --max-wait.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub wait_secs: Option<f64>,
    /// Acknowledge the messages as they are taken (no `ack` call needed, no redelivery).
    #[serde(default)]
    pub ack: bool,
}

/// `ack`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AckParams {
    /// The id of a message this agent received.
    pub id: String,
}

/// A task to submit.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    /// The task id; generated when missing.
    #[serde(default)]
    pub id: Option<String>,
    /// Only agents of this type may take it.
    #[serde(default, rename = "type")]
    pub agent_type: Option<String>,
    /// Capabilities the agent must have.
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// Higher runs first.
    #[serde(default)]
    pub priority: i64,
    /// Ids of tasks that must complete first.
    #[serde(default)]
    pub dependencies: Vec<String>,
    /// Attempts before a failure is final (default 3).
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub max_attempts: Option<u32>,
    /// What the task is about: any JSON.
    #[serde(default)]
    pub payload: Value,
}

/// `task_submit`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitParams {
    /// The tasks, submitted together: all or none.
    #[schemars(length(min = 1))]
    pub tasks: Vec<TaskSpec>,
}

/// `task_claim`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClaimParams {
    /// Seconds to wait for a claimable task when there is none; 0 returns at once.
    /// Default and upper bound are the server's --default-wait and --max-wait.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub wait_secs: Option<f64>,
}

/// `task_complete`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CompleteParams {
    /// The task id.
    pub id: String,
    /// The result: any JSON (default null).
    #[serde(default)]
    pub result: Value,
    /// The claim token; default: the one this server got when it claimed the task.
    #[serde(default)]
    pub token: Option<String>,
}

/// `task_fail`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FailParams {
    /// The task id.
    pub id: String,
    /// What went wrong; kept in the task's `errors`.
    pub error: String,
    /// The claim token; default: the one this server got when it claimed the task.
    #[serde(default)]
    pub token: Option<String>,
}

/// `task_release`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReleaseParams {
    /// The task id.
    pub id: String,
    /// The claim token; default: the one this server got when it claimed the task.
    #[serde(default)]
    pub token: Option<String>,
}

/// A task status to list.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum StatusName {
    /// Waiting for dependencies.
    Blocked,
    /// Ready to claim.
    Pending,
    /// Held by an agent.
    Claimed,
    /// Done.
    Completed,
    /// Failed for good.
    Failed,
    /// Cancelled.
    Cancelled,
}

impl StatusName {
    fn status(self) -> Status {
        match self {
            StatusName::Blocked => Status::Blocked,
            StatusName::Pending => Status::Pending,
            StatusName::Claimed => Status::Claimed,
            StatusName::Completed => Status::Completed,
            StatusName::Failed => Status::Failed,
            StatusName::Cancelled => Status::Cancelled,
        }
    }
}

/// `task_list`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// Only tasks with this status (default: all).
    #[serde(default)]
    pub status: Option<StatusName>,
    /// The most tasks to return (default 100); `total` counts them all.
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub limit: Option<usize>,
}

/// `task_show`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ShowParams {
    /// The task id.
    pub id: String,
}

// ---------------------------------------------------------------------------------------
// The tools

#[tool_router(router = tool_router)]
impl Coord {
    /// A server for the agent `cfg` describes; `stop` ends its waits.
    pub fn new(cfg: Config, stop: Signals) -> Coord {
        let inner = Inner {
            cfg,
            dir: Mutex::new(None),
            held: Mutex::new(Held::default()),
            registered: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            busy: AtomicUsize::new(0),
            stop,
        };
        Coord { inner: Arc::new(inner), tool_router: Self::tool_router() }
    }

    /// Runs a call that cannot wait (see [`Coord::run`]) and turns its outcome into a
    /// tool result.
    async fn call<F>(&self, f: F) -> ToolResult
    where
        F: FnOnce(&Inner, &SessionDir) -> coord_core::Result<Value> + Send + 'static,
    {
        Ok(result(self.run(false, f).await))
    }

    /// Runs `f` with the session directory. A call that may wait for a message or a task
    /// (`waits`) runs on tokio's blocking pool, so the server goes on answering meanwhile.
    /// Every other call is a few file operations (a lock wait at most, bounded by
    /// --lock-timeout) and runs right here on the runtime's thread: the hand-off to a pool
    /// thread and back would cost more than the operation itself (docs/performance.md,
    /// "coord-mcp").
    async fn run<F>(&self, waits: bool, f: F) -> coord_core::Result<Value>
    where
        F: FnOnce(&Inner, &SessionDir) -> coord_core::Result<Value> + Send + 'static,
    {
        let inner = self.inner.clone();
        let body = move || {
            let _busy = inner.enter()?;
            let dir = inner.dir()?;
            f(&inner, &dir)
        };
        if waits {
            tokio::task::spawn_blocking(body)
                .await
                .unwrap_or_else(|e| Err(Error::Failed(format!("the call did not finish: {e}"))))
        } else {
            body()
        }
    }

    /// Ends this agent's claim of task `id` with `op` (complete, fail or release), fenced
    /// by the claim token (`token`, else the one this server got when it claimed it), and
    /// forgets the claim when the task is no longer held with that token.
    async fn finish<F>(&self, id: String, token: Option<String>, op: F) -> ToolResult
    where
        F: FnOnce(&SessionDir, &str, &Holder, Duration) -> coord_core::Result<task::Task> + Send + 'static,
    {
        self.call(move |inner, dir| {
            let holder = inner.holder(&id, token);
            let done = op(dir, &id, &holder, inner.timeout());
            inner.forget_unless_held(dir, &id, &holder, done.is_ok());
            Ok(json!({"task": done?}))
        })
        .await
    }

    /// Runs `now` here; if it finds nothing (`empty`) and the call may wait, runs `wait`
    /// on the blocking pool. What is there already costs no hand-off.
    async fn now_or_wait<N, W>(&self, wait: Duration, empty: fn(&Value) -> bool, now: N, then: W) -> ToolResult
    where
        N: FnOnce(&Inner, &SessionDir) -> coord_core::Result<Value> + Send + 'static,
        W: FnOnce(&Inner, &SessionDir) -> coord_core::Result<Value> + Send + 'static,
    {
        let first = self.run(false, now).await;
        match first {
            Ok(v) if empty(&v) && !wait.is_zero() => Ok(result(self.run(true, then).await)),
            other => Ok(result(other)),
        }
    }

    #[tool(
        name = "register",
        description = "Register this server's agent (id, type and capabilities from its command line) in the \
                       session, so it can claim tasks and be sent messages. Heartbeats then go out automatically.",
        annotations(idempotent_hint = true)
    )]
    async fn register(&self, params: Parameters<RegisterParams>) -> ToolResult {
        let replace = params.0.replace;
        self.call(move |inner, dir| {
            let agent = register_agent(inner, dir, replace)?;
            to_value(&agent)
        })
        .await
    }

    #[tool(
        name = "heartbeat",
        description = "Record that this agent is alive now (also renews the leases of its claims). The server \
                       already sends one periodically once registered.",
        annotations(idempotent_hint = true)
    )]
    async fn heartbeat(&self) -> ToolResult {
        self.call(|inner, dir| {
            let at = registry::heartbeat(dir, &inner.cfg.agent)?;
            Ok(json!({"agent": inner.cfg.agent, "heartbeat_at": time::rfc3339(at)}))
        })
        .await
    }

    #[tool(
        name = "state_get",
        description = "Read a shared state document (state/<key>.json), or the value at a JSON pointer in it.",
        annotations(read_only_hint = true)
    )]
    async fn state_get(&self, params: Parameters<StateGetParams>) -> ToolResult {
        let p = params.0;
        self.call(move |_, dir| {
            let pointer = p.pointer.unwrap_or_default();
            let value =
                if pointer.is_empty() { state::get(dir, &p.key)? } else { state::get_at(dir, &p.key, &pointer)? };
            Ok(json!({"key": p.key, "pointer": pointer, "value": value}))
        })
        .await
    }

    #[tool(
        name = "state_set",
        description = "Set the value at a JSON pointer in a shared state document, under the key's lock (creating \
                       the key and parent objects as needed). Returns the new document."
    )]
    async fn state_set(&self, params: Parameters<StateSetParams>) -> ToolResult {
        let p = params.0;
        self.call(move |inner, dir| {
            let doc = state::set(dir, &p.key, &p.pointer, p.value, inner.timeout())?;
            Ok(json!({"key": p.key, "value": doc}))
        })
        .await
    }

    #[tool(
        name = "state_update",
        description = "Apply a JSON merge patch (RFC 7386) to a shared state document under the key's lock, so \
                       concurrent updates never lose each other's work. Returns the new document."
    )]
    async fn state_update(&self, params: Parameters<StateUpdateParams>) -> ToolResult {
        let p = params.0;
        self.call(move |inner, dir| {
            let doc = state::merge(dir, &p.key, p.patch, inner.timeout())?;
            Ok(json!({"key": p.key, "value": doc}))
        })
        .await
    }

    #[tool(
        name = "send",
        description = "Send a message to one agent's mailbox. By default the recipient must be registered."
    )]
    async fn send(&self, params: Parameters<SendParams>) -> ToolResult {
        let p = params.0;
        self.call(move |inner, dir| {
            let msg = Outgoing {
                from: inner.cfg.agent.clone(),
                to: p.to,
                msg_type: p.msg_type,
                payload: p.payload,
                priority: p.priority,
                requires_ack: p.requires_ack,
            };
            let recipients = if p.allow_unregistered { Recipients::Any } else { Recipients::Registered };
            to_value(&mailbox::send_checked(dir, msg, recipients)?)
        })
        .await
    }

    #[tool(name = "broadcast", description = "Send one message to every active agent but this one.")]
    async fn broadcast(&self, params: Parameters<BroadcastParams>) -> ToolResult {
        let p = params.0;
        self.call(move |inner, dir| {
            let b = Broadcast {
                from: inner.cfg.agent.clone(),
                msg_type: p.msg_type,
                payload: p.payload,
                priority: p.priority,
                requires_ack: p.requires_ack,
            };
            to_value(&mailbox::broadcast(dir, b)?)
        })
        .await
    }

    #[tool(
        name = "recv",
        description = "Take messages from this agent's mailbox, highest priority first, waiting a bounded time \
                       when it is empty. Each must then be acknowledged with `ack` (or pass ack: true); \
                       unacknowledged messages are redelivered if this agent dies. Nothing there is \
                       {\"messages\": []}, not an error."
    )]
    async fn recv(&self, params: Parameters<RecvParams>) -> ToolResult {
        let p = params.0;
        let wait = match self.inner.wait_for(p.wait_secs) {
            Ok(w) => w,
            Err(e) => return Ok(tool_error(&e)),
        };
        let max = p.max.unwrap_or(10).clamp(1, 1000);
        let ack = p.ack;
        let now = move |inner: &Inner, dir: &SessionDir| {
            let got = mailbox::claim(dir, &inner.cfg.agent, max)?;
            took_messages(inner, dir, got, ack)
        };
        let then = move |inner: &Inner, dir: &SessionDir| {
            let mut waiter = mailbox::Waiter::new(dir, &inner.cfg.agent)?;
            let stop = StopFds { readable: Some(inner.stop.as_fd()), hangup: None };
            let got = match waiter.next(max, Some(Instant::now() + wait), &stop)? {
                Waited::Messages(m) => m,
                Waited::TimedOut | Waited::Stopped => Vec::new(),
            };
            took_messages(inner, dir, got, ack)
        };
        self.now_or_wait(wait, |v| v["messages"].as_array().is_none_or(Vec::is_empty), now, then).await
    }

    #[tool(
        name = "ack",
        description = "Acknowledge a received message: it is done and will not be redelivered (and the sender \
                       gets an ack message if it asked for one).",
        annotations(idempotent_hint = true)
    )]
    async fn ack(&self, params: Parameters<AckParams>) -> ToolResult {
        let id = params.0.id;
        self.call(move |inner, dir| {
            let report = mailbox::ack(dir, &inner.cfg.agent, &id)?;
            lock(&inner.held).messages.remove(&id);
            to_value(&report)
        })
        .await
    }

    #[tool(
        name = "task_submit",
        description = "Submit tasks to the session's queue (all or none). Returns the task records."
    )]
    async fn task_submit(&self, params: Parameters<SubmitParams>) -> ToolResult {
        let tasks: Vec<NewTask> = params
            .0
            .tasks
            .into_iter()
            .map(|t| NewTask {
                id: t.id,
                agent_type: t.agent_type,
                capabilities: t.capabilities,
                priority: t.priority,
                dependencies: t.dependencies,
                max_attempts: t.max_attempts,
                payload: t.payload,
            })
            .collect();
        self.call(move |inner, dir| Ok(json!({"tasks": task::submit(dir, tasks, inner.timeout())?}))).await
    }

    #[tool(
        name = "task_claim",
        description = "Claim the best pending task this agent may take (its type and capabilities), waiting a \
                       bounded time when there is none. The claim is this agent's until it completes, fails or \
                       releases it, or stops heartbeating past the lease. Nothing to claim is {\"task\": null}."
    )]
    async fn task_claim(&self, params: Parameters<ClaimParams>) -> ToolResult {
        let wait = match self.inner.wait_for(params.0.wait_secs) {
            Ok(w) => w,
            Err(e) => return Ok(tool_error(&e)),
        };
        let now = |inner: &Inner, dir: &SessionDir| {
            let opts = ClaimOptions { lease: inner.cfg.lease, assigned_by: None };
            let got = task::claim(dir, &inner.cfg.agent, &opts, inner.timeout())?;
            took_task(inner, got)
        };
        let then = move |inner: &Inner, dir: &SessionDir| {
            let opts = ClaimOptions { lease: inner.cfg.lease, assigned_by: None };
            let mut bell = None;
            let got = task::claim_wait(
                dir,
                &inner.cfg.agent,
                &opts,
                Some(wait),
                Some(&inner.stop),
                &mut bell,
                inner.timeout(),
            );
            match got {
                Ok(t) => took_task(inner, t),
                Err(Error::Empty(_)) => took_task(inner, None),
                Err(e) => Err(e),
            }
        };
        self.now_or_wait(wait, |v| v["task"].is_null(), now, then).await
    }

    #[tool(
        name = "task_complete",
        description = "Complete a task this agent holds, with a result. Fenced: if the claim was lost (lease \
                       lapsed, task requeued or taken by another agent) it is refused and nothing changes."
    )]
    async fn task_complete(&self, params: Parameters<CompleteParams>) -> ToolResult {
        let p = params.0;
        self.finish(p.id, p.token, move |dir, id, holder, timeout| task::complete(dir, id, holder, p.result, timeout))
            .await
    }

    #[tool(
        name = "task_fail",
        description = "Record a failed attempt of a task this agent holds. With attempts left it goes back to the \
                       queue; without, it fails for good. Fenced like task_complete."
    )]
    async fn task_fail(&self, params: Parameters<FailParams>) -> ToolResult {
        let p = params.0;
        self.finish(p.id, p.token, move |dir, id, holder, timeout| task::fail(dir, id, holder, &p.error, timeout)).await
    }

    #[tool(
        name = "task_release",
        description = "Give a task this agent holds back to the queue without spending an attempt."
    )]
    async fn task_release(&self, params: Parameters<ReleaseParams>) -> ToolResult {
        let p = params.0;
        self.finish(p.id, p.token, task::release).await
    }

    #[tool(
        name = "task_list",
        description = "List tasks, all or by status, in queue order, at most `limit` (default 100).",
        annotations(read_only_hint = true)
    )]
    async fn task_list(&self, params: Parameters<ListParams>) -> ToolResult {
        let p = params.0;
        self.call(move |_, dir| {
            let mut tasks = match p.status {
                Some(s) => task::list(dir, s.status())?,
                None => task::list_all(dir)?,
            };
            let total = tasks.len();
            let limit = p.limit.unwrap_or(100).max(1);
            tasks.truncate(limit);
            Ok(json!({"tasks": tasks, "total": total, "truncated": total > limit}))
        })
        .await
    }

    #[tool(name = "task_show", description = "Show one task's record.", annotations(read_only_hint = true))]
    async fn task_show(&self, params: Parameters<ShowParams>) -> ToolResult {
        let id = params.0.id;
        self.call(move |_, dir| Ok(json!({"task": task::show(dir, &id)?}))).await
    }

    #[tool(
        name = "progress",
        description = "Task counts by status and the session's operation_progress (percent completed).",
        annotations(read_only_hint = true)
    )]
    async fn progress(&self) -> ToolResult {
        self.call(|inner, dir| to_value(&task::progress(dir, inner.timeout())?)).await
    }

    #[tool(
        name = "session_status",
        description = "The session overview `healthmon status` shows: session, phase, progress, agents with \
                       liveness, mailbox depths, task counts and problems found.",
        annotations(read_only_hint = true)
    )]
    async fn session_status(&self) -> ToolResult {
        self.call(|_, dir| overview::overview(dir)).await
    }
}

/// Remembers messages taken (unless acknowledged at once) and answers with them.
fn took_messages(inner: &Inner, dir: &SessionDir, got: Vec<Message>, ack: bool) -> coord_core::Result<Value> {
    if ack {
        for m in &got {
            mailbox::ack(dir, &inner.cfg.agent, &m.id)?;
        }
    } else {
        let mut held = lock(&inner.held);
        for m in &got {
            held.messages.insert(m.id.clone(), m.clone());
        }
    }
    Ok(json!({"messages": got}))
}

/// Remembers a claimed task's token and answers with the task.
fn took_task(inner: &Inner, got: Option<task::Task>) -> coord_core::Result<Value> {
    if let Some(t) = &got
        && let Some(token) = &t.claim_token
    {
        lock(&inner.held).tasks.insert(t.id.clone(), token.clone());
    }
    Ok(json!({"task": got}))
}

/// Registers the agent, or finds it already registered by this process.
fn register_agent(inner: &Inner, dir: &SessionDir, replace: bool) -> coord_core::Result<record::Agent> {
    let cfg = &inner.cfg;
    let me = std::process::id();
    if let Ok(a) = registry::show(dir, &cfg.agent)
        && a.status == record::status::ACTIVE
        && a.pid == Some(me)
        && a.host == coord_core::sys::host()
    {
        inner.registered.store(true, Ordering::SeqCst);
        return Ok(a);
    }
    // A server restarted after a crash finds its old registration still active. When that
    // process is gone from this host, its claims and unacknowledged messages go back to
    // the queue first (as healthmon would do), so the new instance never renews the
    // leases of work it knows nothing about; then it takes the agent's place.
    let mut replace = replace;
    if let Ok(old) = registry::show(dir, &cfg.agent)
        && old.status == record::status::ACTIVE
        && old.host == coord_core::sys::host()
        && old.pid.is_some_and(|pid| !coord_core::sys::process_alive(pid, old.process_start, old.process_inode))
    {
        let reason = format!("agent {} restarted (pid {} is gone)", cfg.agent, old.pid.unwrap_or_default());
        let r = task::requeue_agent(dir, &cfg.agent, &reason, inner.timeout())?;
        let m = mailbox::requeue(dir, &cfg.agent, mailbox::DEFAULT_MAX_DELIVERIES)?;
        log::info!("{reason}: requeued {} task(s) and {} message(s)", r.requeued, m.requeued);
        replace = true;
    }
    let req = Registration {
        id: cfg.agent.clone(),
        agent_type: cfg.agent_type.clone(),
        capabilities: cfg.capabilities.clone(),
        pid: me,
        replace,
    };
    let agent = registry::register(dir, &req, inner.timeout())?;
    inner.registered.store(true, Ordering::SeqCst);
    Ok(agent)
}

impl Coord {
    /// Whether SIGTERM or SIGINT has arrived (the pipe keeps it; nothing is consumed).
    pub fn stopping(&self) -> bool {
        self.inner.stop.received()
    }

    /// Registers at start (`--register`); a failure is logged and left for the client's
    /// own `register` call to report.
    pub async fn register_now(&self) {
        let inner = self.inner.clone();
        let done = tokio::task::spawn_blocking(move || {
            let dir = inner.dir()?;
            register_agent(&inner, &dir, false)
        })
        .await;
        match done {
            Ok(Ok(_)) => log::info!("registered as {:?}", self.inner.cfg.agent),
            Ok(Err(e)) => log::error!("cannot register at start: {e}"),
            Err(e) => log::error!("cannot register at start: {e}"),
        }
    }

    /// Heartbeats every `every` while registered, until the server closes.
    pub async fn heartbeat_loop(self, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if self.inner.closing.load(Ordering::SeqCst) {
                return;
            }
            if !self.inner.registered.load(Ordering::SeqCst) {
                continue;
            }
            let inner = self.inner.clone();
            let beat = tokio::task::spawn_blocking(move || {
                let dir = inner.dir()?;
                registry::heartbeat(&dir, &inner.cfg.agent)
            })
            .await;
            match beat {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => log::warn!("heartbeat failed: {e}"),
                Err(e) => log::warn!("heartbeat failed: {e}"),
            }
        }
    }

    /// Ends the session's part of this server: refuses new calls, waits (bounded) for
    /// calls in progress, gives back every task it holds (no attempt spent) and every
    /// message it received and did not acknowledge, and unregisters the agent if it
    /// registered. What cannot be given back stays for healthmon, which requeues a dead
    /// agent's claims and messages.
    pub fn shutdown(&self, grace: Duration) {
        let inner = &self.inner;
        inner.closing.store(true, Ordering::SeqCst);
        let until = Instant::now() + grace;
        while inner.busy.load(Ordering::SeqCst) > 0 && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
        let Ok(dir) = inner.dir() else { return };
        let held = std::mem::take(&mut *lock(&inner.held));
        let timeout = inner.timeout();
        for (id, token) in held.tasks {
            let holder = Holder { agent: Some(inner.cfg.agent.clone()), token: Some(token) };
            match task::release(&dir, &id, &holder, timeout) {
                Ok(_) => log::info!("released task {id:?}"),
                Err(e) => log::warn!("task {id:?} not released ({e}); healthmon will requeue it if needed"),
            }
        }
        for (id, msg) in held.messages {
            if let Err(e) = mailbox::release(&dir, &inner.cfg.agent, &msg) {
                log::warn!("message {id:?} not released ({e}); healthmon will requeue it");
            }
        }
        if inner.registered.load(Ordering::SeqCst)
            && let Err(e) = registry::unregister(&dir, &inner.cfg.agent, timeout)
        {
            log::warn!("cannot unregister {:?}: {e}", inner.cfg.agent);
        }
    }
}

const INSTRUCTIONS: &str = "You are one agent of a coord session: other agents and shell workers share its task \
queue, mailboxes and state through the same directory. Work loop: call register once; then task_claim, do the \
work, and task_complete (or task_fail) with the task's id. Heartbeats go out on their own while this server runs. \
Between tasks, recv your messages and ack each one. If task_complete is refused because the claim was lost, drop \
that work and claim again: another agent has the task. Use state_update (a merge patch) for shared counters and \
flags, and session_status to see the whole session.";

#[tool_handler(router = self.tool_router)]
impl ServerHandler for Coord {
    /// Routes the call; arguments that do not match the tool's schema (rmcp reports them
    /// as a tool error with text only) get the same `{error, exit_code}` shape as every
    /// other tool error, with the command line's exit code for bad usage.
    async fn call_tool(
        &self,
        request: rmcp::model::CallToolRequestParams,
        context: rmcp::service::RequestContext<rmcp::RoleServer>,
    ) -> Result<rmcp::model::CallToolResponse, ErrorData> {
        let tcc = rmcp::handler::server::tool::ToolCallContext::new(self, request, context);
        let mut response = self.tool_router.call(tcc).await?;
        if let rmcp::model::CallToolResponse::Complete(r) = &mut response
            && r.is_error == Some(true)
            && r.structured_content.is_none()
        {
            let text: Vec<&str> = r.content.iter().filter_map(|c| c.as_text().map(|t| t.text.as_str())).collect();
            let message = text.join("\n");
            r.structured_content = Some(json!({"error": message, "exit_code": coord_core::error::exit::USAGE}));
        }
        Ok(response)
    }

    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("coord-mcp", env!("CARGO_PKG_VERSION")))
            .with_instructions(INSTRUCTIONS)
    }
}
