//! Broadcast and counts: `broadcast` writes one message file and hard-links it into the
//! queue of every other active agent (`registry/agents.json`), so each recipient claims
//! and acks its own copy; `count` tells how many messages are queued, in flight, acked,
//! dead and bad in `messages/<agent>/`.

use std::fs;
use std::path::Path;

use crate::error::{Error, Result};
use crate::layout::{self, SessionDir, ensure_mailbox, queue_shard};
use crate::record::status;
use crate::{fsio, id, registry};

use super::ack::empty_if_missing;
use super::receive::sorted_entries;
use super::send::{build, check_registered, write_temp};
use super::{BROADCAST_TO, Broadcast, BroadcastReport, Counts, Outgoing};

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
