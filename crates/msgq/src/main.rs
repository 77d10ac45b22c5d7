//! `msgq`: per-agent mailboxes — send, batch send, receive (blocking), ack, requeue,
//! broadcast, watch, count.

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use coord_core::mailbox::{self, Broadcast, Outgoing, Recipients, StopFds, Waited};
use coord_core::{Error, Result, SessionDir, cli, error::exit, id, output};
use serde::Serialize;
use serde_json::Value;

/// Send and receive messages between agents through per-agent mailboxes
///
/// Each agent has a mailbox, messages/<AGENT>/, in the Maildir tradition: a message is
/// written in tmp/ and renamed into the queue new/; a receiver claims it with an atomic
/// rename into cur/ (so every message goes to exactly one receiver), and it stays there,
/// in flight, until acked (moved to done/) or requeued. Delivery is at-least-once;
/// --ack on recv/watch acknowledges on receipt (at-most-once).
#[derive(Debug, Parser)]
#[command(version, after_help = EXAMPLES)]
struct Args {
    #[command(flatten)]
    session: cli::SessionArgs,

    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Send a message to a registered agent and print it (one JSON object with its id)
    Send {
        /// Sender agent id (need not be registered); with --batch, the default sender
        #[arg(long, value_parser = id::parser("agent"), required_unless_present = "batch")]
        from: Option<String>,
        /// Recipient agent id
        #[arg(long, value_parser = id::parser("agent"), required_unless_present = "batch", conflicts_with = "batch")]
        to: Option<String>,
        /// Message type, e.g. task_assignment
        #[arg(long = "type", value_name = "TYPE", value_parser = id::parser("message type"),
              required_unless_present = "batch", conflicts_with = "batch")]
        msg_type: Option<String>,
        /// Payload as JSON [default: {}]
        #[arg(long, value_name = "JSON", conflicts_with = "batch")]
        payload: Option<String>,
        /// Higher is delivered first; equal priorities in send order
        #[arg(long, default_value_t = 0, allow_negative_numbers = true, conflicts_with = "batch")]
        priority: i64,
        /// Acking the message sends an `ack` message back to the sender
        #[arg(long, conflicts_with = "batch")]
        requires_ack: bool,
        /// Read messages as JSON Lines on stdin; all lines are checked before any is sent
        #[arg(long)]
        batch: bool,
        /// Also send to an agent that is not registered (its mailbox is created)
        #[arg(long)]
        allow_unregistered: bool,
    },
    /// Claim the next message(s) for AGENT and print them as JSON Lines
    Recv {
        /// Agent id
        #[arg(value_parser = id::parser("agent"))]
        agent: String,
        /// Block until a message arrives (no polling: inotify)
        #[arg(long)]
        wait: bool,
        /// With --wait, give up after this long (exit 3); implies --wait
        #[arg(long, value_name = "SECS", value_parser = cli::parse_secs)]
        timeout: Option<Duration>,
        /// Claim up to N messages at once
        #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
        max: u64,
        /// Acknowledge on receipt (at-most-once): nothing stays in flight
        #[arg(long)]
        ack: bool,
    },
    /// Acknowledge in-flight messages of AGENT (moves them to done/)
    Ack {
        /// Agent id
        #[arg(value_parser = id::parser("agent"))]
        agent: String,
        /// Message id(s), as printed by recv
        #[arg(required = true, value_name = "MSG_ID", value_parser = id::parser("message"))]
        ids: Vec<String>,
    },
    /// Return AGENT's in-flight messages to its queue; past the maximum, to dead/
    Requeue {
        /// Agent id
        #[arg(value_parser = id::parser("agent"))]
        agent: String,
        /// A message delivered this many times without an ack becomes a dead letter
        #[arg(long, value_name = "N", default_value_t = mailbox::DEFAULT_MAX_DELIVERIES,
              value_parser = clap::value_parser!(u32).range(1..))]
        max_deliveries: u32,
        /// Only messages claimed at least this long ago (a visibility timeout), e.g. 300, 5m
        #[arg(long, value_name = "SECS", value_parser = cli::parse_secs)]
        older_than: Option<std::time::Duration>,
    },
    /// Send a message to every active agent except the sender; print the recipients
    Broadcast {
        /// Sender agent id
        #[arg(long, value_parser = id::parser("agent"))]
        from: String,
        /// Message type
        #[arg(long = "type", value_name = "TYPE", value_parser = id::parser("message type"))]
        msg_type: String,
        /// Payload as JSON [default: {}]
        #[arg(long, value_name = "JSON")]
        payload: Option<String>,
        /// Higher is delivered first
        #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
        priority: i64,
        /// Each recipient's ack sends an `ack` message back
        #[arg(long)]
        requires_ack: bool,
    },
    /// Stream AGENT's messages as JSON Lines as they arrive, until SIGINT/SIGTERM or the
    /// reader goes away
    Watch {
        /// Agent id
        #[arg(value_parser = id::parser("agent"))]
        agent: String,
        /// Acknowledge each message as it is handed over (at-most-once)
        #[arg(long)]
        ack: bool,
    },
    /// Print how many of AGENT's messages are queued, in flight, acked, dead and bad
    Count {
        /// Agent id
        #[arg(value_parser = id::parser("agent"))]
        agent: String,
    },
}

const EXAMPLES: &str = "\
Examples:
  msgq send --from coordinator --to w1 --type task_assignment --payload '{\"task_id\": \"t1\"}'
  msgq send --from w1 --to w2 --type review --priority 10 --requires-ack
  jq -c '{to: .agent, type: \"job\", payload: .}' jobs.json | msgq send --batch --from coordinator
  msgq recv w1                       # exit 3 at once if the mailbox is empty
  msgq recv w1 --wait --timeout 30 --max 10
  msgq ack w1 msg-1767225600123456-0000-host-4242-9f3a1c2b
  msgq requeue w1 --max-deliveries 5
  msgq broadcast --from coordinator --type shutdown
  msgq watch w1 | while read -r m; do echo \"$m\" | jq .type; done
  msgq count w1

--batch reads one JSON object per line: {\"to\": A, \"type\": T, \"payload\": ANY,
\"priority\": N, \"requires_ack\": BOOL, \"from\": A}; only to and type are required (from
defaults to --from). It prints one {\"line\", \"id\", \"to\"} per message sent.

Exit codes: 0 ok (watch: also when stopped by SIGINT, SIGTERM or a closed pipe),
1 failed (unknown or unregistered agent, message not in flight, I/O error, lock timeout),
2 bad usage (invalid id, payload or batch line that is not valid JSON, no such session),
3 nothing available (recv: mailbox empty, or --timeout passed)";

fn main() -> ExitCode {
    let args: Args = cli::parse();
    cli::run("msgq", || {
        let dir = args.session.open()?;
        match args.command {
            Cmd::Send { batch: true, from, allow_unregistered, .. } => {
                send_batch(&dir, from.as_deref(), recipients(allow_unregistered))
            }
            Cmd::Send { from, to, msg_type, payload, priority, requires_ack, allow_unregistered, .. } => {
                let (Some(from), Some(to), Some(msg_type)) = (from, to, msg_type) else {
                    return Err(Error::Usage("send needs --from, --to and --type (or --batch)".to_string()));
                };
                let payload = parse_payload(payload.as_deref())?;
                let msg = Outgoing { from, to, msg_type, payload, priority, requires_ack };
                output::print(&mailbox::send_checked(&dir, msg, recipients(allow_unregistered))?)?;
                Ok(exit::OK)
            }
            Cmd::Recv { agent, wait, timeout, max, ack } => recv(&dir, &agent, wait, timeout, max as usize, ack),
            Cmd::Ack { agent, ids } => {
                let reports = ids.iter().map(|i| mailbox::ack(&dir, &agent, i)).collect::<Result<Vec<_>>>()?;
                output::print_lines(&reports)?;
                Ok(exit::OK)
            }
            Cmd::Requeue { agent, max_deliveries, older_than } => {
                output::print(&mailbox::requeue_older_than(&dir, &agent, max_deliveries, older_than)?)?;
                Ok(exit::OK)
            }
            Cmd::Broadcast { from, msg_type, payload, priority, requires_ack } => {
                let payload = parse_payload(payload.as_deref())?;
                let report = mailbox::broadcast(&dir, Broadcast { from, msg_type, payload, priority, requires_ack })?;
                if report.recipients.is_empty() {
                    log::warn!("no active agent besides the sender: the broadcast reached nobody");
                }
                output::print(&report)?;
                Ok(exit::OK)
            }
            Cmd::Watch { agent, ack } => watch(&dir, &agent, ack),
            Cmd::Count { agent } => {
                output::print(&mailbox::count(&dir, &agent)?)?;
                Ok(exit::OK)
            }
        }
    })
}

fn recipients(allow_unregistered: bool) -> Recipients {
    if allow_unregistered { Recipients::Any } else { Recipients::Registered }
}

fn parse_payload(text: Option<&str>) -> Result<Value> {
    match text {
        None => Ok(Value::Object(Default::default())),
        Some(t) => serde_json::from_str(t)
            .map_err(|e| Error::Usage(format!("--payload {t:?} is not valid JSON ({e}); quote text as '\"text\"'"))),
    }
}

fn recv(dir: &SessionDir, agent: &str, wait: bool, timeout: Option<Duration>, max: usize, ack: bool) -> Result<u8> {
    // The waiter lives until the messages are printed: closing an inotify descriptor
    // waits for a kernel grace period (milliseconds, more on a busy machine), which
    // must not sit between the wake-up and the output.
    let mut waiter = None;
    let msgs = if wait || timeout.is_some() {
        let deadline = timeout.map(|t| Instant::now() + t);
        let w = waiter.insert(mailbox::Waiter::new(dir, agent)?);
        match w.next(max, deadline, &StopFds::default())? {
            Waited::Messages(m) => m,
            Waited::TimedOut | Waited::Stopped => {
                let secs = timeout.map(|t| t.as_secs_f64()).unwrap_or_default();
                return Err(Error::Empty(format!("no message for {agent:?} within {secs} s")));
            }
        }
    } else {
        let m = mailbox::claim(dir, agent, max)?;
        if m.is_empty() {
            return Err(Error::Empty(format!("no message waiting for {agent:?}")));
        }
        m
    };
    if ack {
        for m in &msgs {
            mailbox::ack(dir, agent, &m.id)?;
        }
    }
    if let Err(e) = output::print_lines(&msgs) {
        if !ack {
            // Nobody read them: put them back rather than leave them in flight.
            for m in &msgs {
                let _ = mailbox::release(dir, agent, m);
            }
        }
        return Err(e);
    }
    drop(waiter);
    Ok(exit::OK)
}

fn watch(dir: &SessionDir, agent: &str, ack: bool) -> Result<u8> {
    let (stop_read, stop_write) = UnixStream::pair().map_err(|e| Error::io("create", "signal pipe", e))?;
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let writer = stop_write.try_clone().map_err(|e| Error::io("clone", "signal pipe", e))?;
        signal_hook::low_level::pipe::register(sig, writer)
            .map_err(|e| Error::io("install handler for", format!("signal {sig}"), e))?;
    }
    let stdout = std::io::stdout();
    let stop = StopFds { readable: Some(stop_read.as_fd()), hangup: Some(stdout.as_fd()) };
    let mut waiter = mailbox::Waiter::new(dir, agent)?;
    loop {
        let msgs = match waiter.next(1, None, &stop)? {
            Waited::Messages(m) => m,
            Waited::TimedOut | Waited::Stopped => return Ok(exit::OK),
        };
        for m in &msgs {
            if ack {
                mailbox::ack(dir, agent, &m.id)?;
            }
            if let Err(e) = output::print(m) {
                if !ack {
                    let _ = mailbox::release(dir, agent, m);
                }
                return Err(e);
            }
        }
    }
}

/// What `send --batch` prints per message sent.
#[derive(Debug, Serialize)]
struct BatchSent<'a> {
    line: usize,
    id: &'a str,
    to: &'a str,
}

fn send_batch(dir: &SessionDir, default_from: Option<&str>, recipients: Recipients) -> Result<u8> {
    let mut input = String::new();
    std::io::stdin().read_to_string(&mut input).map_err(|e| Error::io("read", "stdin", e))?;
    // Check everything first: a bad line sends nothing.
    let batch = mailbox::parse_batch(&input, default_from)?;
    if recipients == Recipients::Registered {
        let mut checked = std::collections::HashSet::new();
        for (line, msg) in &batch {
            if checked.insert(msg.to.as_str()) {
                mailbox::check_registered(dir, &msg.to)
                    .map_err(|e| Error::Failed(format!("stdin line {line}: {e}; nothing was sent")))?;
            }
        }
    }
    let total = batch.len();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for (n, (line, msg)) in batch.into_iter().enumerate() {
        let sent = mailbox::send_checked(dir, msg, Recipients::Any).map_err(|e| {
            Error::Failed(format!(
                "stdin line {line}: {e}; the {n} message(s) before it were sent (printed above), it and the {} after it were not",
                total - n - 1
            ))
        })?;
        output::write_line(&mut out, &BatchSent { line, id: &sent.id, to: &sent.to })?;
    }
    out.flush().map_err(|e| Error::io("write to", "stdout", e))?;
    Ok(exit::OK)
}
