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

/// Creates `messages/<agent>/{tmp,new,cur,done,dead}` if missing. Idempotent.
pub fn ensure_mailbox(dir: &SessionDir, agent: &str) -> Result<()> {
    id::validate("agent", agent)?;
    for d in [dir.mailbox_tmp(agent), dir.mailbox_new(agent), dir.mailbox_cur(agent)] {
        fsio::ensure_dir(&d)?;
    }
    for d in [dir.mailbox_done(agent), dir.mailbox_dead(agent)] {
        fsio::ensure_dir(&d)?;
    }
    Ok(())
}

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
        host: sys::host(),
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
        host: id_host(&sys::host()),
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
}
