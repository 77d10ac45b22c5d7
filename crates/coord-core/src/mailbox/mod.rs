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
//!
//! The parts: `send` (sending and message ids), `receive` (claiming and release),
//! `wait` (inotify waits), `ack` (acknowledging, requeue, dead letters) and `broadcast`
//! (broadcast and counts). This file holds the message types and re-exports every
//! public item, so `mailbox::send` and the rest keep their paths. Creating a mailbox is
//! [`crate::layout::ensure_mailbox`], shared with registration.

mod ack;
mod broadcast;
mod receive;
mod send;
#[cfg(test)]
mod tests;
mod wait;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use crate::layout::ensure_mailbox;
pub use ack::{ack, requeue, requeue_older_than};
pub use broadcast::{broadcast, count};
pub use receive::{claim, release};
pub use send::{check_registered, parse_batch, send, send_checked, validate_outgoing};
pub use wait::{StopFds, Waited, Waiter};

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
