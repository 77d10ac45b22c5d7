//! Per-agent mailboxes in the Maildir tradition: `messages/<agent>/`.
//!
//! A sender writes the message to a hidden file in the recipient's `tmp/` and renames it,
//! without replacing anything, into the queue under `new/`. A receiver claims a message
//! by renaming it from `new/` to `cur/`; the kernel lets exactly one rename of a name
//! succeed, so two receivers never get the same message and a loser just tries the next
//! name. A claimed message stays in flight in `cur/` until it is acknowledged (moved to
//! `done/`) or requeued (rewritten into `new/` with its delivery count raised, or moved
//! to `dead/` past the maximum). Every file a reader can see is complete JSON.
//!
//! The queue is sharded by priority and send time (see [`crate::layout::queue_shard`]) so
//! that a receiver lists a handful of small directories however many messages wait:
//! names at every level sort in delivery order (higher priority first, then FIFO).
//!
//! Waiting (`recv --wait`, `watch`) blocks on inotify watches of the queue directories
//! and wakes as soon as a file appears; only where inotify is unavailable, or when
//! `COORD_POLL_MS` asks for it, does it poll.

use std::fs;
use std::io::ErrorKind;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{Error, IoContext, Result};
use crate::layout::{self, SessionDir, ToolLock, queue_shard};
use crate::record::status;
use crate::{env, fsio, id, lock, registry, sys, time};

/// Deliveries without an ack after which `requeue` moves a message to `dead/`.
pub const DEFAULT_MAX_DELIVERIES: u32 = 5;

/// The type of the message `ack` sends back for a message with `requires_ack`.
pub const ACK_TYPE: &str = "ack";

/// The `to` of a broadcast message: one file is linked into every recipient's mailbox.
pub const BROADCAST_TO: &str = "*";

/// A message as stored in a mailbox and printed by `msgq recv`. Field names follow the
/// seed (`id`, `from`, `to`, `type`, `timestamp`, `payload`, `requires_ack`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// Unique id: `msg-<unix µs, 16 digits>-<seq>-<host>-<pid>-<random>`; sorts by send time.
    pub id: String,
    /// Sender agent id (need not be registered, e.g. `coordinator`).
    pub from: String,
    /// Recipient agent id, or `*` for a broadcast.
    pub to: String,
    /// Message type, e.g. `task_assignment`, `preempt`, `ack`.
    #[serde(rename = "type")]
    pub msg_type: String,
    /// Send time, RFC 3339 UTC.
    pub timestamp: String,
    /// Any JSON value.
    #[serde(default)]
    pub payload: Value,
    /// Whether acking this message sends an `ack` message back to `from`.
    #[serde(default)]
    pub requires_ack: bool,
    /// Higher is delivered first; equal priorities are delivered in send order.
    #[serde(default)]
    pub priority: i64,
    /// How many times the message was delivered and came back unacknowledged.
    #[serde(default)]
    pub delivery_count: u32,
    /// The sender's host.
    #[serde(default)]
    pub host: String,
    /// Why the message is a dead letter (only in `dead/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_reason: Option<String>,
    /// When the message became a dead letter, RFC 3339 UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_at: Option<String>,
    /// Fields this version does not know.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A message to send.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    /// Sender agent id.
    pub from: String,
    /// Recipient agent id.
    pub to: String,
    /// Message type (an id: `task_assignment`, `preempt`, ...).
    pub msg_type: String,
    /// Any JSON value.
    pub payload: Value,
    /// Higher is delivered first.
    pub priority: i64,
    /// Ask the recipient's ack to send an `ack` message back.
    pub requires_ack: bool,
}

/// Which recipients [`send_checked`] accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recipients {
    /// Only agents that are registered (and not unregistered).
    Registered,
    /// Any valid agent id; its mailbox is created if missing.
    Any,
}

/// What [`requeue`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RequeueReport {
    /// The agent whose in-flight messages were handled.
    pub agent: String,
    /// Messages returned to the queue.
    pub requeued: usize,
    /// Messages moved to `dead/`.
    pub dead: usize,
    /// Unparsable files moved to `bad/`.
    pub bad: usize,
}

/// What [`ack`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AckReport {
    /// The acknowledged message.
    pub id: String,
    /// The agent that acknowledged it.
    pub agent: String,
    /// True if the message had already been acknowledged (nothing changed).
    pub already_acked: bool,
    /// The id of the `ack` message sent back to the sender, for `requires_ack`.
    pub ack_id: Option<String>,
}

/// A message for every active agent but the sender.
#[derive(Debug, Clone, PartialEq)]
pub struct Broadcast {
    /// Sender agent id.
    pub from: String,
    /// Message type.
    pub msg_type: String,
    /// Any JSON value.
    pub payload: Value,
    /// Higher is delivered first.
    pub priority: i64,
    /// Ask each recipient's ack to send an `ack` message back.
    pub requires_ack: bool,
}

/// What [`broadcast`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BroadcastReport {
    /// The message id (the same in every mailbox).
    pub id: String,
    /// Agents whose mailbox received it, sorted.
    pub recipients: Vec<String>,
}

/// How many messages a mailbox holds in each place.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// The mailbox's agent.
    pub agent: String,
    /// Waiting in `new/`.
    pub queued: usize,
    /// Claimed and not yet acknowledged (`cur/`, plus requeues under way).
    pub in_flight: usize,
    /// Acknowledged (`done/`).
    pub acked: usize,
    /// Dead letters (`dead/`).
    pub dead: usize,
    /// Files moved aside as unusable (`bad/`).
    pub bad: usize,
}

// ---------------------------------------------------------------------------------------
// Mailbox creation and sending

pub use crate::layout::ensure_mailbox;

/// Sends `msg` to a registered agent and returns the stored message.
///
/// An unknown or unregistered recipient is [`Error::Failed`] naming it; invalid ids are
/// [`Error::InvalidId`]. The message is visible to receivers when this returns.
pub fn send(dir: &SessionDir, msg: Outgoing) -> Result<Message> {
    send_checked(dir, msg, Recipients::Registered)
}

/// Like [`send`], with a choice of which recipients are accepted.
pub fn send_checked(dir: &SessionDir, msg: Outgoing, recipients: Recipients) -> Result<Message> {
    validate_outgoing(&msg)?;
    if recipients == Recipients::Registered {
        check_registered(dir, &msg.to)?;
    }
    deliver(dir, &msg)
}

/// Checks the ids of an outgoing message.
pub fn validate_outgoing(msg: &Outgoing) -> Result<()> {
    id::validate("agent", &msg.from)?;
    id::validate("agent", &msg.to)?;
    id::validate("message type", &msg.msg_type)?;
    Ok(())
}

/// One line of `msgq send --batch` input.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchLine {
    to: String,
    #[serde(rename = "type")]
    msg_type: String,
    #[serde(default)]
    payload: Option<Value>,
    #[serde(default)]
    priority: i64,
    #[serde(default)]
    requires_ack: bool,
    #[serde(default)]
    from: Option<String>,
}

/// Parses `msgq send --batch` input: one JSON object per line, `{"to", "type", "payload",
/// "priority", "requires_ack", "from"}`, with `default_from` for lines without `from`.
/// Blank lines are skipped. Returns each message with its 1-based line number; the first
/// line that is not a valid message is a usage error naming the line, so a bad line
/// sends nothing.
pub fn parse_batch(input: &str, default_from: Option<&str>) -> Result<Vec<(usize, Outgoing)>> {
    let mut batch = Vec::new();
    for (i, text) in input.lines().enumerate() {
        let line = i + 1;
        if text.trim().is_empty() {
            continue;
        }
        let bad = |why: String| Error::Usage(format!("stdin line {line}: {why}; nothing was sent"));
        let l: BatchLine = serde_json::from_str(text).map_err(|e| bad(format!("not a valid message ({e})")))?;
        let from = l.from.as_deref().or(default_from).ok_or_else(|| bad("no \"from\" and no --from".to_string()))?;
        let msg = Outgoing {
            from: from.to_string(),
            to: l.to,
            msg_type: l.msg_type,
            payload: l.payload.unwrap_or_else(|| Value::Object(Default::default())),
            priority: l.priority,
            requires_ack: l.requires_ack,
        };
        validate_outgoing(&msg).map_err(|e| bad(e.to_string()))?;
        batch.push((line, msg));
    }
    Ok(batch)
}

/// Fails unless `agent` is registered and has not unregistered.
///
/// The common case costs one `stat` (the agent's heartbeat file exists exactly while it
/// is registered); `agents.json` is read only to explain a refusal.
pub fn check_registered(dir: &SessionDir, agent: &str) -> Result<()> {
    id::validate("agent", agent)?;
    if dir.heartbeat_file(agent).exists() {
        return Ok(());
    }
    let known = registry::load(dir)?.into_iter().find(|a| a.id == agent);
    Err(Error::Failed(match known {
        Some(a) => format!(
            "agent {agent:?} is no longer registered in session {:?} (status {}); it gets no new messages (msgq send --allow-unregistered overrides)",
            dir.id(),
            a.status
        ),
        None => format!(
            "unknown agent {agent:?}: it is not registered in session {:?} (register it with `registry register {agent} --type TYPE`, or pass --allow-unregistered)",
            dir.id()
        ),
    }))
}

/// Writes the message and publishes it into the queue, retrying with a fresh id on the
/// (practically impossible) collision with an existing name.
fn deliver(dir: &SessionDir, msg: &Outgoing) -> Result<Message> {
    const ATTEMPTS: usize = 8;
    for _ in 0..ATTEMPTS {
        let (record, sent_ms) = build(msg, &msg.to);
        let tmp = write_temp(dir, &msg.to, &record)?;
        let dest = dir.queued_message(&msg.to, record.priority, sent_ms, &record.id);
        let placed = fsio::rename_noclobber(&tmp, &dest);
        if !matches!(placed, Ok(true)) {
            let _ = fs::remove_file(&tmp);
        }
        if placed? {
            return Ok(record);
        }
        log::warn!("message name {} already exists; retrying with a new id", dest.display());
    }
    Err(Error::Failed(format!("could not find a free message name in the mailbox of {:?}", msg.to)))
}

/// Writes `record` to a temporary file in `agent`'s `tmp/`, creating the mailbox if needed.
fn write_temp(dir: &SessionDir, agent: &str, record: &Message) -> Result<PathBuf> {
    let bytes = message_bytes(record);
    let tmp_dir = dir.mailbox_tmp(agent);
    match fsio::write_temp_in(&tmp_dir, &bytes) {
        Err(e) if fsio::is_not_found(&e) => {
            ensure_mailbox(dir, agent)?;
            fsio::write_temp_in(&tmp_dir, &bytes)
        }
        other => other,
    }
}

/// A message file: one line of compact JSON.
fn message_bytes(m: &Message) -> Vec<u8> {
    // Message has string keys only and serde_json values, so it always serializes.
    let mut bytes = serde_json::to_vec(m).expect("messages serialize to JSON");
    bytes.push(b'\n');
    bytes
}

fn build(msg: &Outgoing, to: &str) -> (Message, u64) {
    let (id, sent_us) = next_id();
    let sent = UNIX_EPOCH + Duration::from_micros(sent_us);
    let record = Message {
        id,
        from: msg.from.clone(),
        to: to.to_string(),
        msg_type: msg.msg_type.clone(),
        timestamp: time::rfc3339(sent),
        payload: msg.payload.clone(),
        requires_ack: msg.requires_ack,
        priority: msg.priority,
        delivery_count: 0,
        host: this_host().to_string(),
        dead_reason: None,
        dead_at: None,
        extra: Map::new(),
    };
    (record, sent_us / 1000)
}

// ---------------------------------------------------------------------------------------
// Message ids

struct IdSource {
    last_us: u64,
    seq: u32,
    issued: u64,
    salt: u64,
    host: String,
    pid: u32,
}

static IDS: Mutex<Option<IdSource>> = Mutex::new(None);

/// A new message id and its send time in Unix microseconds.
///
/// Ids sort by send time. Within one process the time never goes backwards and a
/// sequence number orders ids of the same microsecond; host, pid and random bits keep
/// ids of different processes and hosts apart.
fn next_id() -> (String, u64) {
    let mut guard = IDS.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let src = guard.get_or_insert_with(|| IdSource {
        last_us: 0,
        seq: 0,
        issued: 0,
        salt: random_u64(),
        host: id_host(this_host()),
        pid: std::process::id(),
    });
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0);
    if now > src.last_us {
        src.last_us = now;
        src.seq = 0;
    } else if src.seq >= 0xffff {
        src.last_us += 1;
        src.seq = 0;
    } else {
        src.seq += 1;
    }
    src.issued += 1;
    let rand = splitmix64(src.salt.wrapping_add(src.issued)) as u32;
    let id = format!("msg-{:016}-{:04x}-{}-{}-{rand:08x}", src.last_us, src.seq, src.host, src.pid);
    (id, src.last_us)
}

/// This host's name, looked up once per process (a batch sends many messages).
fn this_host() -> &'static str {
    static HOST: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HOST.get_or_init(sys::host)
}

/// The host part of an id: the short host name, letters, digits and `-` only, at most 24.
fn id_host(host: &str) -> String {
    let short = host.split('.').next().unwrap_or("");
    let clean: String = short.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-').take(24).collect();
    if clean.is_empty() { "host".to_string() } else { clean }
}

fn random_u64() -> u64 {
    let mut buf = [0u8; 8];
    // SAFETY: buf is valid for 8 bytes of writes.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n == 8 {
        return u64::from_ne_bytes(buf);
    }
    // No getrandom: time and pid still differ between processes.
    let t = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
    splitmix64(t ^ (u64::from(std::process::id()) << 32))
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// The send time of `m` in Unix milliseconds: from its id, else its timestamp, else now.
fn sent_ms(m: &Message) -> u64 {
    let from_id = m.id.strip_prefix("msg-").and_then(|r| r.get(..16)).and_then(|d| d.parse::<u64>().ok());
    from_id
        .map(|us| us / 1000)
        .or_else(|| time::parse_rfc3339(&m.timestamp).map(time::unix_ms))
        .unwrap_or_else(|| time::unix_ms(SystemTime::now()))
}

// ---------------------------------------------------------------------------------------
// Receiving

/// Claims up to `max` messages for `agent`, in delivery order, without waiting.
///
/// Each claim is an atomic rename from `new/` into `cur/`; the messages are in flight
/// until [`ack`]ed or [`requeue`]d. Returns an empty list when the queue is empty. Files
/// that are not messages are moved to `bad/` with a warning and skipped. A missing
/// mailbox is created for a registered agent and refused for an unknown one.
pub fn claim(dir: &SessionDir, agent: &str, max: usize) -> Result<Vec<Message>> {
    id::validate("agent", agent)?;
    let new_dir = dir.mailbox_new(agent);
    if !new_dir.is_dir() {
        check_registered(dir, agent)?;
        ensure_mailbox(dir, agent)?;
    }
    let mut scan = Scan { dir, agent, cur: dir.mailbox_cur(agent), max: max.max(1), out: Vec::new() };
    scan.level(&new_dir, 0, 0)?;
    Ok(scan.out)
}

struct Scan<'a> {
    dir: &'a SessionDir,
    agent: &'a str,
    cur: PathBuf,
    max: usize,
    out: Vec<Message>,
}

/// How a walk through one queue directory ended.
enum Walked {
    /// `max` messages were claimed before the end.
    Full,
    /// Every entry was looked at; `drained` says whether this walk claimed any of them.
    Exhausted { drained: bool },
}

/// An empty shard directory nobody drained is removed only once its time range lies
/// this far in the past, so receivers never race a sender that is creating it.
const EMPTY_SHARD_GRACE_MS: u64 = 60_000;

impl Scan<'_> {
    /// Walks one level of the queue in order. `start_ms`/`span_ms` give the range of send
    /// times the directory holds (level 0, the priority, holds all of them).
    fn level(&mut self, path: &Path, level: usize, start_ms: u64) -> Result<Walked> {
        let entries = match sorted_entries(path) {
            Ok(e) => e,
            Err(e) if fsio::is_not_found(&e) => return Ok(Walked::Exhausted { drained: false }),
            Err(e) => return Err(e),
        };
        let mut drained = false;
        for (name, is_dir) in entries {
            if self.out.len() >= self.max {
                return Ok(Walked::Full);
            }
            let child = path.join(&name);
            if level == queue_shard::DEPTH {
                drained |= self.take(&child, &name, is_dir)?;
                continue;
            }
            if !is_dir || !queue_shard::is_valid(level, &name) {
                quarantine(self.dir, self.agent, &child, "not a queue shard directory");
                continue;
            }
            let (child_start, child_end) = shard_range(level, &name, start_ms);
            match self.level(&child, level + 1, child_start)? {
                Walked::Full => return Ok(Walked::Full),
                Walked::Exhausted { drained: child_drained } => {
                    drained |= child_drained;
                    // Priority directories stay. The two finest time shards (256 ms and
                    // 16 ms) go as soon as this walk empties them, coarser ones once they
                    // are long past, so a send creates at most two directories and a
                    // waiting receiver rarely wakes for a directory alone. A sender that
                    // finds its directory gone creates it again; rmdir of a non-empty
                    // directory just fails.
                    let stale = child_end.saturating_add(EMPTY_SHARD_GRACE_MS) < time::unix_ms(SystemTime::now());
                    if level > 0 && ((child_drained && level >= 3) || stale) {
                        let _ = fs::remove_dir(&child);
                    }
                    // A drained priority other than the default one goes with its whole
                    // empty chain, so senders that use many distinct priorities cannot
                    // leave directories behind that every later receive has to walk.
                    if level == 0 && child_drained && name != queue_shard::priority(0) {
                        remove_empty_tree(&child);
                    }
                }
            }
        }
        Ok(Walked::Exhausted { drained })
    }

    /// Claims one queued file; returns whether it was claimed (even if then found bad).
    fn take(&mut self, path: &Path, name: &str, is_dir: bool) -> Result<bool> {
        let Some(msg_id) = message_id_of(name).filter(|_| !is_dir) else {
            quarantine(self.dir, self.agent, path, "not a message file name (<id>.json)");
            return Ok(false);
        };
        let claimed = self.cur.join(name);
        match fsio::rename_noclobber(path, &claimed) {
            Ok(true) => {}
            // Another receiver won this one.
            Err(e) if fsio::is_not_found(&e) => return Ok(false),
            Ok(false) => {
                // Where rename cannot refuse to replace (link + unlink, e.g. NFS), another
                // receiver may be between its link and its unlink of this very file (or
                // died there): both names are one inode and the message is already theirs,
                // so the queue's name is just dropped.
                if same_file(path, &claimed) {
                    let _ = fs::remove_file(path);
                } else {
                    quarantine(self.dir, self.agent, path, "a message with this id is already in flight");
                }
                return Ok(false);
            }
            Err(e) => return Err(e),
        }
        match read_message(&claimed, msg_id) {
            Ok(m) => {
                // The claim time, for visibility timeouts (`requeue_older_than`): a rename
                // keeps the send time as mtime. An mtime belongs to the inode, so a
                // broadcast copy still linked into other mailboxes gets its own first.
                if m.to == BROADCAST_TO
                    && let Err(e) = unshare(self.dir, self.agent, &claimed, &m)
                {
                    log::debug!("cannot give {} its own claim time: {e}", claimed.display());
                }
                if let Err(e) = fsio::touch(&claimed) {
                    log::debug!("cannot stamp the claim time of {}: {e}", claimed.display());
                }
                self.out.push(m);
            }
            Err(why) => quarantine(self.dir, self.agent, &claimed, &why),
        }
        Ok(true)
    }
}

/// Replaces the in-flight file `path` of message `m`, if it is linked elsewhere too (an
/// unclaimed copy of a broadcast), with a file of its own: a copy written in `tmp/` is
/// exchanged with it, which changes nothing if a requeue or ack has moved it meanwhile.
fn unshare(dir: &SessionDir, agent: &str, path: &Path, m: &Message) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    if fs::symlink_metadata(path).ctx("inspect", path)?.nlink() < 2 {
        return Ok(());
    }
    let copy = write_temp(dir, agent, m)?;
    let swapped = fsio::exchange(&copy, path);
    // After the exchange, the temporary name holds the shared link.
    let _ = fs::remove_file(&copy);
    swapped.ctx("exchange", path)
}

/// Whether two paths name the same inode.
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (fs::symlink_metadata(a), fs::symlink_metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

/// Removes `dir` and the directories under it if none of them holds a file; returns
/// whether `dir` is gone. `rmdir` of a directory a sender has just filled fails, and a
/// sender whose directory vanished creates it again, so this never loses a message.
fn remove_empty_tree(dir: &Path) -> bool {
    let Ok(entries) = fs::read_dir(dir) else { return false };
    let mut empty = true;
    for entry in entries.flatten() {
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        if !is_dir || !remove_empty_tree(&entry.path()) {
            empty = false;
        }
    }
    empty && fs::remove_dir(dir).is_ok()
}

/// The entries of `dir` sorted by name, with whether each is a directory (from the
/// directory entry itself, without a stat).
fn sorted_entries(dir: &Path) -> Result<Vec<(String, bool)>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).ctx("list", dir)? {
        let entry = entry.ctx("list", dir)?;
        let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
        match entry.file_name().into_string() {
            Ok(name) => out.push((name, is_dir)),
            Err(raw) => {
                // Not UTF-8: cannot be ours. Give it a printable name in the warning.
                quarantine_raw(&dir.join(raw), "a file name that is not UTF-8");
            }
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// The send-time range `[start, end)` in Unix ms of shard `name` at `level` (0 is the
/// priority level, which spans all times) inside a parent starting at `parent_start`.
fn shard_range(level: usize, name: &str, parent_start: u64) -> (u64, u64) {
    let value = u64::from_str_radix(name, 16).unwrap_or(0);
    let shift = match level {
        0 => return (0, u64::MAX),
        1 => 24,
        2 => 16,
        3 => 8,
        _ => 4,
    };
    let start = parent_start.saturating_add(value << shift);
    (start, start.saturating_add(1 << shift))
}

/// `<id>.json` -> `<id>`, if the id follows the id rule.
fn message_id_of(name: &str) -> Option<&str> {
    let stem = name.strip_suffix(".json")?;
    id::validate("message", stem).ok()
}

/// Reads a claimed message file; the error says why it is unusable.
fn read_message(path: &Path, expected_id: &str) -> std::result::Result<Message, String> {
    let bytes = fs::read(path).map_err(|e| format!("unreadable: {e}"))?;
    let m: Message = serde_json::from_slice(&bytes).map_err(|e| format!("not a message record: {e}"))?;
    if m.id != expected_id {
        return Err(format!("its id {:?} does not match its file name", m.id));
    }
    Ok(m)
}

/// Moves an unusable file out of the way into `bad/`, with a warning. Never fails: a
/// file that cannot be moved is skipped and reported again next time.
fn quarantine(dir: &SessionDir, agent: &str, path: &Path, why: &str) {
    let bad = dir.mailbox_bad(agent);
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let stamp = next_id().0;
    let dest = bad.join(format!("{}-{name}", stamp.trim_start_matches("msg-")));
    let moved = fsio::ensure_dir(&bad).and_then(|()| fsio::rename_noclobber(path, &dest));
    match moved {
        Ok(true) => log::warn!("moved {} aside to {}: {why}", path.display(), dest.display()),
        Err(e) if fsio::is_not_found(&e) => {}
        Ok(false) | Err(_) => log::warn!("skipping {}: {why} (could not move it to {})", path.display(), bad.display()),
    }
}

fn quarantine_raw(path: &Path, why: &str) {
    log::warn!("skipping {}: {why}", path.display());
}

/// Puts a claimed message back at its place in the queue, unchanged (for a receiver that
/// could not hand it over, e.g. its reader went away).
pub fn release(dir: &SessionDir, agent: &str, msg: &Message) -> Result<()> {
    id::validate("agent", agent)?;
    id::validate("message", &msg.id)?;
    let from = dir.in_flight_message(agent, &msg.id);
    let to = dir.queued_message(agent, msg.priority, sent_ms(msg), &msg.id);
    fsio::rename_noclobber(&from, &to).map(|_| ())
}

// ---------------------------------------------------------------------------------------
// Waiting

/// Descriptors that end a wait early: `readable` when it can be read (a signal
/// self-pipe), `hangup` when it reports an error or hang-up (stdout whose reader left).
#[derive(Debug, Clone, Copy, Default)]
pub struct StopFds<'a> {
    /// Stop when this becomes readable.
    pub readable: Option<BorrowedFd<'a>>,
    /// Stop when this reports POLLERR/POLLHUP.
    pub hangup: Option<BorrowedFd<'a>>,
}

/// The outcome of [`Waiter::next`].
#[derive(Debug)]
pub enum Waited {
    /// Claimed messages (at least one).
    Messages(Vec<Message>),
    /// The deadline passed with the queue still empty.
    TimedOut,
    /// A stop descriptor fired.
    Stopped,
}

/// Blocks until messages arrive in one mailbox, without polling.
///
/// Holds inotify watches on `new/` and its shard directories (added as they appear).
/// The watches are set before the queue is checked again, so a message published at any
/// moment is either found by that check or wakes the wait.
#[derive(Debug)]
pub struct Waiter {
    dir: SessionDir,
    agent: String,
    inotify: Option<inotify::Inotify>,
    poll_every: Duration,
    buf: Vec<u8>,
}

/// How often to look when inotify is unavailable and `COORD_POLL_MS` is not set.
const FALLBACK_POLL: Duration = Duration::from_millis(20);

impl Waiter {
    /// A waiter for `agent`'s mailbox (which must belong to a registered agent or exist).
    pub fn new(dir: &SessionDir, agent: &str) -> Result<Waiter> {
        id::validate("agent", agent)?;
        if !dir.mailbox_new(agent).is_dir() {
            check_registered(dir, agent)?;
            ensure_mailbox(dir, agent)?;
        }
        let forced = env::forced_poll();
        let inotify = match forced {
            Some(_) => None,
            None => match inotify::Inotify::init() {
                Ok(i) => Some(i),
                Err(e) => {
                    log::warn!("inotify is unavailable ({e}); checking the mailbox every {FALLBACK_POLL:?} instead");
                    None
                }
            },
        };
        let poll_every = forced.unwrap_or(FALLBACK_POLL);
        Ok(Waiter { dir: dir.clone(), agent: agent.to_string(), inotify, poll_every, buf: vec![0; 4096] })
    }

    /// Claims up to `max` messages, waiting for the first one until `deadline` (forever
    /// if `None`) or until a stop descriptor fires.
    pub fn next(&mut self, max: usize, deadline: Option<Instant>, stop: &StopFds<'_>) -> Result<Waited> {
        loop {
            if poll_stop(stop, 0)? {
                return Ok(Waited::Stopped);
            }
            let got = claim(&self.dir, &self.agent, max)?;
            if !got.is_empty() {
                return Ok(Waited::Messages(got));
            }
            self.arm()?;
            let got = claim(&self.dir, &self.agent, max)?;
            if !got.is_empty() {
                return Ok(Waited::Messages(got));
            }
            match self.block(deadline, stop)? {
                Some(outcome) => return Ok(outcome),
                None => continue,
            }
        }
    }

    /// Watches `new/` and every shard directory under it.
    fn arm(&mut self) -> Result<()> {
        let Some(ino) = self.inotify.as_mut() else { return Ok(()) };
        use inotify::WatchMask;
        let mask = WatchMask::CREATE | WatchMask::MOVED_TO | WatchMask::ONLYDIR;
        let mut stack = vec![(self.dir.mailbox_new(&self.agent), 0usize)];
        while let Some((d, level)) = stack.pop() {
            match ino.watches().add(&d, mask) {
                Ok(_) => {}
                // Removed by a receiver since it was listed: nothing to watch.
                Err(e) if matches!(e.kind(), ErrorKind::NotFound) || e.raw_os_error() == Some(libc::ENOTDIR) => {
                    continue;
                }
                Err(e) => {
                    log::warn!(
                        "cannot watch {} with inotify ({e}); checking every {:?} instead (raise fs.inotify.max_user_watches?)",
                        d.display(),
                        self.poll_every
                    );
                    self.inotify = None;
                    return Ok(());
                }
            }
            if level < queue_shard::DEPTH {
                let Ok(entries) = fs::read_dir(&d) else { continue };
                for entry in entries.flatten() {
                    if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                        stack.push((entry.path(), level + 1));
                    }
                }
            }
        }
        Ok(())
    }

    /// Sleeps until something changes (`None`), the deadline passes or a stop fires.
    fn block(&mut self, deadline: Option<Instant>, stop: &StopFds<'_>) -> Result<Option<Waited>> {
        let mut timeout = match deadline {
            Some(d) => match d.checked_duration_since(Instant::now()) {
                Some(left) if !left.is_zero() => Some(left),
                _ => return Ok(Some(Waited::TimedOut)),
            },
            None => None,
        };
        if self.inotify.is_none() {
            timeout = Some(timeout.map_or(self.poll_every, |t| t.min(self.poll_every)));
        }
        let mut fds = Vec::with_capacity(3);
        if let Some(ino) = &self.inotify {
            fds.push(libc::pollfd { fd: ino.as_raw_fd(), events: libc::POLLIN, revents: 0 });
        }
        let first_stop = fds.len();
        push_stop_fds(&mut fds, stop);
        let rc = poll(&mut fds, timeout)?;
        if fds[first_stop..].iter().any(|p| p.revents != 0) {
            return Ok(Some(Waited::Stopped));
        }
        if rc > 0
            && let Some(ino) = self.inotify.as_mut()
        {
            // Drain the events; which file arrived does not matter, the queue order does.
            loop {
                match ino.read_events(&mut self.buf) {
                    Ok(events) => {
                        if events.count() == 0 {
                            break;
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) => return Err(Error::io("read inotify events for", self.dir.mailbox_new(&self.agent), e)),
                }
            }
        }
        Ok(None)
    }
}

fn push_stop_fds(fds: &mut Vec<libc::pollfd>, stop: &StopFds<'_>) {
    if let Some(fd) = stop.readable {
        fds.push(libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 });
    }
    if let Some(fd) = stop.hangup {
        // No requested events: poll still reports POLLERR/POLLHUP, and a terminal on
        // stdout that the user types into does not count.
        fds.push(libc::pollfd { fd: fd.as_raw_fd(), events: 0, revents: 0 });
    }
}

/// Whether a stop descriptor has fired, waiting at most `timeout_ms`.
fn poll_stop(stop: &StopFds<'_>, timeout_ms: i32) -> Result<bool> {
    let mut fds = Vec::with_capacity(2);
    push_stop_fds(&mut fds, stop);
    if fds.is_empty() {
        return Ok(false);
    }
    poll(&mut fds, Some(Duration::from_millis(timeout_ms.max(0) as u64)))?;
    Ok(fds.iter().any(|p| p.revents != 0))
}

/// `poll(2)`; an interrupting signal counts as a wake-up (the caller looks again).
fn poll(fds: &mut [libc::pollfd], timeout: Option<Duration>) -> Result<i32> {
    let ms = match timeout {
        // Round up so a short remaining time does not become a busy zero-timeout loop.
        Some(t) => i32::try_from(t.as_micros().div_ceil(1000)).unwrap_or(i32::MAX),
        None => -1,
    };
    // SAFETY: fds is a valid, exclusively borrowed slice of pollfd for the call.
    let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
    if rc < 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() == ErrorKind::Interrupted {
            return Ok(0);
        }
        return Err(Error::io("poll", "mailbox watches", e));
    }
    Ok(rc)
}

// ---------------------------------------------------------------------------------------
// Acknowledging, requeueing, dead letters

/// Acknowledges an in-flight message: moves `cur/<id>.json` to `done/<id>.json` and, if
/// it `requires_ack`, sends an `ack` message back to its sender.
///
/// Acking an already acknowledged message changes nothing and says so; a message that is
/// not in flight (never received, or requeued meanwhile) is [`Error::Failed`].
pub fn ack(dir: &SessionDir, agent: &str, msg_id: &str) -> Result<AckReport> {
    id::validate("agent", agent)?;
    id::validate("message", msg_id)?;
    let cur = dir.in_flight_message(agent, msg_id);
    let done = dir.acked_message(agent, msg_id);
    let report =
        |already_acked, ack_id| AckReport { id: msg_id.to_string(), agent: agent.to_string(), already_acked, ack_id };
    let msg = match fs::read(&cur) {
        Ok(bytes) => fsio::parse_json::<Message>(&cur, &bytes)?,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return not_in_flight(dir, agent, msg_id, &done).map(|()| report(true, None));
        }
        Err(e) => return Err(Error::io("read", &cur, e)),
    };
    match fsio::rename_noclobber(&cur, &done) {
        Ok(true) => {}
        Ok(false) => {
            // A redelivered copy of a message acked before: the archive has it already.
            let _ = fs::remove_file(&cur);
            return Ok(report(true, None));
        }
        Err(e) if fsio::is_not_found(&e) => {
            return not_in_flight(dir, agent, msg_id, &done).map(|()| report(true, None));
        }
        Err(e) => return Err(e),
    }
    let mut ack_id = None;
    if msg.requires_ack {
        if id::validate("agent", &msg.from).is_err() {
            log::warn!("message {msg_id} requires an ack but its sender {:?} is not a valid agent id", msg.from);
        } else {
            let back = Outgoing {
                from: agent.to_string(),
                to: msg.from.clone(),
                msg_type: ACK_TYPE.to_string(),
                payload: serde_json::json!({"message_id": msg_id, "type": msg.msg_type}),
                priority: msg.priority,
                requires_ack: false,
            };
            ack_id = Some(send_checked(dir, back, Recipients::Any)?.id);
        }
    }
    Ok(report(false, ack_id))
}

/// `Ok(())` if the message was acked before (idempotent ack), else the error.
fn not_in_flight(dir: &SessionDir, agent: &str, msg_id: &str, done: &Path) -> Result<()> {
    if done.exists() {
        return Ok(());
    }
    if !dir.mailbox_dir(agent).is_dir() {
        check_registered(dir, agent)?;
    }
    Err(Error::Failed(format!(
        "message {msg_id:?} is not in flight for agent {agent:?}: it was never received, or was requeued (receive it again before acking)"
    )))
}

/// Returns `agent`'s in-flight messages to its queue with `delivery_count` raised by
/// one; a message whose count reaches `max_deliveries` moves to `dead/` instead, with
/// `dead_reason`. Also finishes requeues interrupted by a crash and removes writers'
/// temporary files older than an hour.
///
/// Requeues are serialized by the session's `_mailbox` lock. An in-flight message is
/// first renamed into `tmp/`, so an ack racing with the requeue either wins (the message
/// is done) or fails cleanly (the message is back in the queue).
pub fn requeue(dir: &SessionDir, agent: &str, max_deliveries: u32) -> Result<RequeueReport> {
    requeue_older_than(dir, agent, max_deliveries, None)
}

/// Like [`requeue`], but with `older_than` only the messages claimed at least that long
/// ago (a `cur/` file's mtime is its claim time): a visibility timeout, for receivers
/// that died or dropped a message while their agent lives on.
pub fn requeue_older_than(
    dir: &SessionDir,
    agent: &str,
    max_deliveries: u32,
    older_than: Option<Duration>,
) -> Result<RequeueReport> {
    id::validate("agent", agent)?;
    if max_deliveries == 0 {
        return Err(Error::Usage("--max-deliveries must be at least 1".to_string()));
    }
    if !dir.mailbox_dir(agent).is_dir() {
        check_registered(dir, agent)?;
        ensure_mailbox(dir, agent)?;
    }
    let _guard = dir.tool_lock(ToolLock::Mailbox, lock::default_timeout())?;
    let mut report = RequeueReport { agent: agent.to_string(), ..RequeueReport::default() };
    let tmp = dir.mailbox_tmp(agent);
    // Hand-overs left by a requeue that was killed half-way.
    for (name, _) in sorted_entries(&tmp).or_else(empty_if_missing)? {
        if let Some(msg_id) = name.strip_suffix(layout::REQUEUE_SUFFIX) {
            let msg_id = msg_id.to_string();
            requeue_one(dir, agent, &msg_id, &tmp.join(&name), max_deliveries, &mut report)?;
        } else if name.starts_with('.') && name.ends_with(".tmp") {
            remove_if_stale(&tmp.join(&name));
        }
    }
    let cur = dir.mailbox_cur(agent);
    for (name, is_dir) in sorted_entries(&cur).or_else(empty_if_missing)? {
        let path = cur.join(&name);
        let Some(msg_id) = message_id_of(&name).filter(|_| !is_dir) else {
            quarantine(dir, agent, &path, "not a message file name (<id>.json)");
            report.bad += 1;
            continue;
        };
        if let Some(age) = older_than {
            let claimed = fs::symlink_metadata(&path).and_then(|m| m.modified());
            let young = claimed.is_ok_and(|t| t.elapsed().is_ok_and(|e| e < age) || t > SystemTime::now());
            if young {
                continue;
            }
        }
        let handover = dir.requeue_handover(agent, msg_id);
        match fs::rename(&path, &handover) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => continue, // acked meanwhile
            Err(e) => return Err(Error::io("rename", &path, e)),
        }
        requeue_one(dir, agent, msg_id, &handover, max_deliveries, &mut report)?;
    }
    Ok(report)
}

fn requeue_one(
    dir: &SessionDir,
    agent: &str,
    msg_id: &str,
    handover: &Path,
    max_deliveries: u32,
    report: &mut RequeueReport,
) -> Result<()> {
    let mut msg = match read_message(handover, msg_id) {
        Ok(m) => m,
        Err(why) => {
            quarantine(dir, agent, handover, &why);
            report.bad += 1;
            return Ok(());
        }
    };
    msg.delivery_count = msg.delivery_count.saturating_add(1);
    let dest = if msg.delivery_count >= max_deliveries {
        msg.dead_reason =
            Some(format!("delivered {} times without an ack (max-deliveries {max_deliveries})", msg.delivery_count));
        msg.dead_at = Some(time::now_rfc3339());
        report.dead += 1;
        dir.dead_message(agent, msg_id)
    } else {
        report.requeued += 1;
        dir.queued_message(agent, msg.priority, sent_ms(&msg), msg_id)
    };
    let tmp = write_temp(dir, agent, &msg)?;
    let placed = fsio::rename_noclobber(&tmp, &dest);
    if !matches!(placed, Ok(true)) {
        let _ = fs::remove_file(&tmp);
    }
    if !placed? {
        // Already there (a requeue of this hand-over was interrupted after placing it).
        log::info!("{} already exists; dropping the duplicate hand-over", dest.display());
    }
    fs::remove_file(handover)
        .or_else(|e| if e.kind() == ErrorKind::NotFound { Ok(()) } else { Err(e) })
        .ctx("remove", handover)
}

fn empty_if_missing(e: Error) -> Result<Vec<(String, bool)>> {
    if fsio::is_not_found(&e) { Ok(Vec::new()) } else { Err(e) }
}

/// A writer killed between creating and publishing its temporary file leaves it behind.
const STALE_TMP: Duration = Duration::from_secs(3600);

fn remove_if_stale(path: &Path) {
    let age = fs::metadata(path).and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok());
    if age.is_some_and(|a| a > STALE_TMP) {
        let _ = fs::remove_file(path);
    }
}

// ---------------------------------------------------------------------------------------
// Broadcast and counts

/// Sends one message to every active agent except the sender: the file is written once
/// and hard-linked into each recipient's queue. Its `to` is `*`.
pub fn broadcast(dir: &SessionDir, b: Broadcast) -> Result<BroadcastReport> {
    id::validate("agent", &b.from)?;
    id::validate("message type", &b.msg_type)?;
    let mut recipients: Vec<String> = registry::load(dir)?
        .into_iter()
        .filter(|a| a.status == status::ACTIVE && a.id != b.from && id::validate("agent", &a.id).is_ok())
        .map(|a| a.id)
        .collect();
    recipients.sort();
    recipients.dedup();
    let outgoing = Outgoing {
        from: b.from,
        to: BROADCAST_TO.to_string(),
        msg_type: b.msg_type,
        payload: b.payload,
        priority: b.priority,
        requires_ack: b.requires_ack,
    };
    let Some(first) = recipients.first() else {
        let (record, _) = build(&outgoing, BROADCAST_TO);
        return Ok(BroadcastReport { id: record.id, recipients });
    };
    for r in &recipients {
        ensure_mailbox(dir, r)?;
    }
    const ATTEMPTS: usize = 8;
    let mut pending: Vec<&String> = recipients.iter().collect();
    let mut first_id = None;
    for _ in 0..ATTEMPTS {
        let (record, ms) = build(&outgoing, BROADCAST_TO);
        let tmp = write_temp(dir, first, &record)?;
        let mut collided = Vec::new();
        let mut failure = None;
        for r in pending {
            match fsio::link_noclobber(&tmp, &dir.queued_message(r, record.priority, ms, &record.id)) {
                Ok(true) => {}
                Ok(false) => collided.push(r),
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        let _ = fs::remove_file(&tmp);
        if let Some(e) = failure {
            return Err(e);
        }
        first_id.get_or_insert(record.id);
        if collided.is_empty() {
            return Ok(BroadcastReport { id: first_id.unwrap_or_default(), recipients });
        }
        pending = collided;
    }
    Err(Error::Failed("could not find a free message name for the broadcast".to_string()))
}

/// Counts the messages in each place of `agent`'s mailbox.
pub fn count(dir: &SessionDir, agent: &str) -> Result<Counts> {
    id::validate("agent", agent)?;
    if !dir.mailbox_dir(agent).is_dir() {
        check_registered(dir, agent)?;
    }
    let files = |p: &Path| -> Result<usize> { Ok(sorted_entries(p).or_else(empty_if_missing)?.len()) };
    let handovers = sorted_entries(&dir.mailbox_tmp(agent))
        .or_else(empty_if_missing)?
        .iter()
        .filter(|(n, _)| n.ends_with(layout::REQUEUE_SUFFIX))
        .count();
    Ok(Counts {
        agent: agent.to_string(),
        queued: count_queued(&dir.mailbox_new(agent), 0)?,
        in_flight: files(&dir.mailbox_cur(agent))? + handovers,
        acked: files(&dir.mailbox_done(agent))?,
        dead: files(&dir.mailbox_dead(agent))?,
        bad: files(&dir.mailbox_bad(agent))?,
    })
}

fn count_queued(path: &Path, level: usize) -> Result<usize> {
    let mut n = 0;
    for (name, is_dir) in sorted_entries(path).or_else(empty_if_missing)? {
        if level < queue_shard::DEPTH && is_dir {
            n += count_queued(&path.join(name), level + 1)?;
        } else if level == queue_shard::DEPTH && !is_dir {
            n += 1;
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_valid_unique_and_sorted() {
        let ids: Vec<String> = (0..20_000).map(|_| next_id().0).collect();
        for w in ids.windows(2) {
            assert!(w[0] < w[1], "{} !< {}", w[0], w[1]);
        }
        for i in &ids[..10] {
            id::validate("message", i).expect("ids follow the id rule");
        }
        assert_eq!(id_host("build-7.example.org"), "build-7");
        assert_eq!(id_host("..."), "host");
    }

    fn session() -> (tempfile::TempDir, SessionDir) {
        let t = tempfile::tempdir().expect("tempdir");
        let dir = SessionDir::at(t.path().to_path_buf(), "s-1".to_string());
        for d in layout::SESSION_DIRS {
            fs::create_dir_all(t.path().join(d)).expect("mkdir");
        }
        (t, dir)
    }

    fn register(dir: &SessionDir, agents: &[&str]) {
        let records: Vec<Value> = agents
            .iter()
            .map(|a| serde_json::json!({"id": a, "type": "w", "status": "active", "registered_at": "2026-01-01T00:00:00Z"}))
            .collect();
        fsio::write_json(&dir.agents_json(), &records).expect("agents.json");
        for a in agents {
            fs::write(dir.heartbeat_file(a), "").expect("heartbeat");
            ensure_mailbox(dir, a).expect("mailbox");
        }
    }

    fn msg(to: &str, ty: &str, priority: i64) -> Outgoing {
        Outgoing {
            from: "boss".to_string(),
            to: to.to_string(),
            msg_type: ty.to_string(),
            payload: serde_json::json!({"n": ty}),
            priority,
            requires_ack: false,
        }
    }

    fn types(ms: &[Message]) -> Vec<&str> {
        ms.iter().map(|m| m.msg_type.as_str()).collect()
    }

    #[test]
    fn delivery_order_is_priority_then_fifo_and_each_message_is_claimed_once() {
        let (_t, dir) = session();
        register(&dir, &["w1"]);
        for (ty, p) in [("a", 0), ("b", 0), ("urgent", 9), ("c", 0), ("low", -3), ("d", 0)] {
            send(&dir, msg("w1", ty, p)).expect("send");
        }
        assert_eq!(count(&dir, "w1").expect("count").queued, 6);
        let first = claim(&dir, "w1", 2).expect("claim");
        assert_eq!(types(&first), ["urgent", "a"]);
        let rest = claim(&dir, "w1", 10).expect("claim");
        assert_eq!(types(&rest), ["b", "c", "d", "low"]);
        assert!(claim(&dir, "w1", 1).expect("claim").is_empty());
        let c = count(&dir, "w1").expect("count");
        assert_eq!((c.queued, c.in_flight), (0, 6));
        // Drained fine shards are removed; priority and coarse time directories stay.
        fn deepest(p: &Path) -> usize {
            fs::read_dir(p).expect("ls").flatten().map(|e| 1 + deepest(&e.path())).max().unwrap_or(0)
        }
        assert_eq!(deepest(&dir.mailbox_new("w1")), 3, "new/<prio>/<t0>/<t1>/ remain, nothing below");
    }

    #[test]
    fn unknown_recipients_are_refused_unless_allowed() {
        let (_t, dir) = session();
        register(&dir, &["w1"]);
        let err = send(&dir, msg("ghost", "x", 0)).expect_err("unknown");
        assert_eq!(err.exit_code(), 1);
        assert!(err.to_string().contains("ghost"), "{err}");
        assert_eq!(send(&dir, msg("a/b", "x", 0)).expect_err("bad id").exit_code(), 2);
        send_checked(&dir, msg("ghost", "x", 0), Recipients::Any).expect("allowed");
        assert_eq!(claim(&dir, "ghost", 1).expect("claim").len(), 1);
    }

    #[test]
    fn ack_moves_to_done_and_answers_requires_ack() {
        let (_t, dir) = session();
        register(&dir, &["w1"]);
        let mut m = msg("w1", "job", 0);
        m.requires_ack = true;
        let sent = send(&dir, m).expect("send");
        let got = claim(&dir, "w1", 1).expect("claim");
        assert_eq!(got[0], sent);
        let r = ack(&dir, "w1", &sent.id).expect("ack");
        assert!(!r.already_acked && r.ack_id.is_some());
        assert!(dir.acked_message("w1", &sent.id).is_file());
        assert!(ack(&dir, "w1", &sent.id).expect("again").already_acked);
        let back = claim(&dir, "boss", 1).expect("ack message");
        assert_eq!(back[0].msg_type, ACK_TYPE);
        assert_eq!(back[0].payload["message_id"], sent.id.as_str());
        assert_eq!(ack(&dir, "w1", "msg-unknown").expect_err("not in flight").exit_code(), 1);
    }

    #[test]
    fn requeue_raises_the_count_then_dead_letters_with_a_reason() {
        let (_t, dir) = session();
        register(&dir, &["w1"]);
        let sent = send(&dir, msg("w1", "job", 0)).expect("send");
        for round in 1..=2u32 {
            let got = claim(&dir, "w1", 1).expect("claim");
            assert_eq!(got[0].delivery_count, round - 1);
            let r = requeue(&dir, "w1", 3).expect("requeue");
            assert_eq!((r.requeued, r.dead), (1, 0));
        }
        claim(&dir, "w1", 1).expect("claim");
        let r = requeue(&dir, "w1", 3).expect("requeue");
        assert_eq!((r.requeued, r.dead), (0, 1));
        let dead: Message = fsio::read_json(&dir.dead_message("w1", &sent.id)).expect("dead letter");
        assert_eq!(dead.delivery_count, 3);
        assert!(dead.dead_reason.as_deref().is_some_and(|r| r.contains("3 times")), "{dead:?}");
        assert!(claim(&dir, "w1", 1).expect("claim").is_empty());
        assert_eq!(requeue(&dir, "w1", 0).expect_err("zero").exit_code(), 2);
    }

    #[test]
    fn an_interrupted_requeue_is_finished_by_the_next() {
        let (_t, dir) = session();
        register(&dir, &["w1"]);
        let sent = send(&dir, msg("w1", "job", 0)).expect("send");
        claim(&dir, "w1", 1).expect("claim");
        fs::rename(dir.in_flight_message("w1", &sent.id), dir.requeue_handover("w1", &sent.id)).expect("hand over");
        assert_eq!(count(&dir, "w1").expect("count").in_flight, 1);
        assert_eq!(requeue(&dir, "w1", 5).expect("requeue").requeued, 1);
        assert_eq!(claim(&dir, "w1", 1).expect("claim")[0].id, sent.id);
    }

    #[test]
    fn garbage_is_moved_aside_and_does_not_block_the_queue() {
        let (_t, dir) = session();
        register(&dir, &["w1"]);
        let sent = send(&dir, msg("w1", "ok", 0)).expect("send");
        let leaf = dir.queued_message("w1", 0, sent_ms(&sent), &sent.id);
        let leaf = leaf.parent().expect("leaf");
        fs::write(leaf.join("msg-0000000000000000-0000-a-1-00000000.json"), "{\"id\": ").expect("truncated");
        fs::write(leaf.join("zz-not-a-message"), "hello").expect("garbage");
        fs::write(dir.mailbox_new("w1").join("stray.json"), "{}").expect("stray");
        let got = claim(&dir, "w1", 5).expect("claim");
        assert_eq!(types(&got), ["ok"]);
        assert_eq!(count(&dir, "w1").expect("count").bad, 3);
        send(&dir, msg("w1", "after", 0)).expect("send");
        assert_eq!(types(&claim(&dir, "w1", 5).expect("claim")), ["after"]);
    }

    #[test]
    fn broadcast_links_one_file_into_every_other_active_mailbox() {
        let (_t, dir) = session();
        register(&dir, &["a", "b", "c"]);
        let r = broadcast(
            &dir,
            Broadcast {
                from: "a".to_string(),
                msg_type: "hello".to_string(),
                payload: Value::Null,
                priority: 0,
                requires_ack: false,
            },
        )
        .expect("broadcast");
        assert_eq!(r.recipients, ["b", "c"]);
        use std::os::unix::fs::MetadataExt;
        let queued = dir.queued_message("b", 0, r.id[4..20].parse::<u64>().expect("send time in the id") / 1000, &r.id);
        let nlink = fs::metadata(&queued).expect("queued in b").nlink();
        assert_eq!(nlink, 2, "one file, linked into both mailboxes");
        assert!(claim(&dir, "a", 1).expect("a").is_empty());
        for agent in ["b", "c"] {
            let got = claim(&dir, agent, 1).expect("claim");
            assert_eq!((got[0].id.as_str(), got[0].to.as_str()), (r.id.as_str(), BROADCAST_TO));
        }
        let nlink = fs::metadata(dir.in_flight_message("b", &r.id)).expect("in flight").nlink();
        assert_eq!(nlink, 1, "a claimed copy is a file of its own (its mtime is its claim time)");
    }

    /// The claim time of one recipient's copy of a broadcast is its own: another
    /// recipient claiming its copy later does not make it look younger.
    #[test]
    fn a_broadcast_copy_keeps_its_own_claim_time() {
        let (_t, dir) = session();
        register(&dir, &["a", "b", "c"]);
        let news = Broadcast {
            from: "a".to_string(),
            msg_type: "news".to_string(),
            payload: Value::Null,
            priority: 0,
            requires_ack: false,
        };
        let r = broadcast(&dir, news).expect("broadcast");
        assert_eq!(claim(&dir, "b", 1).expect("b")[0].id, r.id);
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(claim(&dir, "c", 1).expect("c")[0].id, r.id);
        let old = requeue_older_than(&dir, "b", 5, Some(Duration::from_millis(200))).expect("requeue b");
        assert_eq!(old.requeued, 1, "b received it 300 ms ago");
        let young = requeue_older_than(&dir, "c", 5, Some(Duration::from_millis(200))).expect("requeue c");
        assert_eq!(young.requeued, 0, "c received it just now");
    }

    #[test]
    fn a_waiter_wakes_when_a_message_arrives() {
        let (_t, dir) = session();
        register(&dir, &["w1"]);
        let mut waiter = Waiter::new(&dir, "w1").expect("waiter");
        let soon = Some(Instant::now() + Duration::from_millis(30));
        assert!(matches!(waiter.next(1, soon, &StopFds::default()).expect("wait"), Waited::TimedOut));
        let sender_dir = dir.clone();
        let sender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            send(&sender_dir, msg("w1", "late", 0)).expect("send")
        });
        let later = Some(Instant::now() + Duration::from_secs(10));
        let got = match waiter.next(1, later, &StopFds::default()).expect("wait") {
            Waited::Messages(m) => m,
            other => panic!("expected a message, got {other:?}"),
        };
        assert_eq!(got[0], sender.join().expect("join"));
    }

    #[test]
    fn release_puts_a_message_back_in_front() {
        let (_t, dir) = session();
        register(&dir, &["w1"]);
        send(&dir, msg("w1", "first", 0)).expect("send");
        send(&dir, msg("w1", "second", 0)).expect("send");
        let got = claim(&dir, "w1", 1).expect("claim");
        release(&dir, "w1", &got[0]).expect("release");
        assert_eq!(types(&claim(&dir, "w1", 2).expect("claim")), ["first", "second"]);
    }
}
