//! Sending: a message is checked, built (its id from a per-process counter after a
//! random start, the host's name in it) and written to a hidden file in the recipient's
//! `messages/<agent>/tmp/`, then renamed, without replacing anything, into the sharded
//! queue `messages/<agent>/new/<prio>/<t0>/<t1>/<t2>/<t3>/<id>.json`. Recipients are
//! checked against `registry/agents.json` unless any id is allowed.

use std::fs;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::layout::{SessionDir, ensure_mailbox};
use crate::{fsio, id, registry, sys, time};

use super::{Message, Outgoing, Recipients};

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
pub(super) fn write_temp(dir: &SessionDir, agent: &str, record: &Message) -> Result<PathBuf> {
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

pub(super) fn build(msg: &Outgoing, to: &str) -> (Message, u64) {
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
pub(super) fn next_id() -> (String, u64) {
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
pub(super) fn id_host(host: &str) -> String {
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
pub(super) fn sent_ms(m: &Message) -> u64 {
    let from_id = m.id.strip_prefix("msg-").and_then(|r| r.get(..16)).and_then(|d| d.parse::<u64>().ok());
    from_id
        .map(|us| us / 1000)
        .or_else(|| time::parse_rfc3339(&m.timestamp).map(time::unix_ms))
        .unwrap_or_else(|| time::unix_ms(SystemTime::now()))
}
