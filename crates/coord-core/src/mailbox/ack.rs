//! After a claim: `ack` moves a message from `messages/<agent>/cur/` to `done/` (and
//! answers a `requires_ack` message with an `ack` message to its sender); `requeue`
//! rewrites in-flight messages into `new/` with their delivery count raised, or moves
//! them to `dead/` past the maximum, under lock `_mailbox` (hand-over files
//! `tmp/<id>.requeue` make an interrupted requeue finish on the next one).

use std::fs;
use std::io::ErrorKind;
use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::error::{Error, IoContext, Result};
use crate::layout::{self, SessionDir, ToolLock, ensure_mailbox};
use crate::{fsio, id, lock, time};

use super::receive::{message_id_of, quarantine, read_message, sorted_entries};
use super::send::{check_registered, send_checked, sent_ms, write_temp};
use super::{ACK_TYPE, AckReport, Message, Outgoing, Recipients, RequeueReport};

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

pub(super) fn empty_if_missing(e: Error) -> Result<Vec<(String, bool)>> {
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
