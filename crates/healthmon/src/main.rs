//! `healthmon`: the sidecar that notices dead and hung agents and gives their work back.

use std::process::ExitCode;
use std::sync::mpsc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use coord_core::health::{self, Event, Monitor, MonitorConfig};
use coord_core::layout::ToolLock;
use coord_core::{Error, Result, cli, error::exit, lock, output, sys};

mod frame;
mod status;
mod watch;

/// Watch a session's agents; requeue the work of dead or hung ones
///
/// Each tick checks every registered agent. On this host an agent is alive only if its
/// pid exists and that process started when the registered one did (a reused pid never
/// counts); on another host only its heartbeat age counts. An agent whose heartbeats
/// stopped for longer than --stale-after is hung. A dead or hung agent is marked failed,
/// its claimed tasks go back to the queue and its in-flight messages back to its mailbox.
/// Every event is printed as a JSON line and appended to metrics/events.jsonl.
#[derive(Debug, Parser)]
#[command(version, after_help = EXAMPLES, args_conflicts_with_subcommands = true)]
struct Args {
    #[command(flatten)]
    session: cli::SessionArgs,

    /// Seconds between ticks
    #[arg(long, default_value = "5", value_name = "SECS", value_parser = cli::parse_secs)]
    interval: Duration,

    /// A heartbeat older than this makes an agent hung (dead, if on another host)
    #[arg(long, default_value = "30", value_name = "SECS", value_parser = cli::parse_secs)]
    stale_after: Duration,

    /// Deliveries after which a requeued message goes to the dead letters
    #[arg(long, default_value_t = 5, value_name = "N")]
    max_deliveries: u32,

    /// Seconds between resource samples (cpu, memory, threads); 0 turns sampling off
    #[arg(long, default_value = "10", value_name = "SECS", value_parser = cli::parse_secs)]
    sample_every: Duration,

    /// Also requeue messages a live agent received but did not ack within SECS (a
    /// visibility timeout; off by default)
    #[arg(long, value_name = "SECS", value_parser = cli::parse_secs)]
    visibility: Option<Duration>,

    /// Run one tick and exit: 0 if every agent is alive, 1 if any was declared dead or
    /// hung or a problem was met
    #[arg(long)]
    once: bool,

    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Print an overview of the session: phase, progress, agents, mailboxes, tasks
    ///
    /// With --watch it refreshes every --interval: on a terminal in place (the alternate
    /// screen; q, Esc or Ctrl-C quits), otherwise (or with --json) as one JSON line per
    /// refresh, the members of `status --json` plus "at" and "events".
    #[command(after_help = STATUS_EXAMPLES)]
    Status {
        /// Print one JSON object instead of the table (with --watch: JSON Lines even on
        /// a terminal)
        #[arg(long)]
        json: bool,

        /// Keep refreshing the overview: a live view on a terminal, JSON Lines otherwise
        #[arg(long)]
        watch: bool,

        /// Seconds between refreshes of --watch (more than 0)
        #[arg(long, default_value = "1", value_name = "SECS", value_parser = positive_secs, requires = "watch")]
        interval: Duration,

        /// Stop after N refreshes of --watch (at least 1)
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..), requires = "watch")]
        count: Option<u64>,

        /// How many recent events of metrics/events.jsonl --watch shows (0 to 1000)
        #[arg(long, default_value_t = 10, value_name = "N", value_parser = clap::value_parser!(u16).range(0..=1000), requires = "watch")]
        events: u16,
    },
}

/// `cli::parse_secs`, refusing 0 (a refresh loop without a pause).
fn positive_secs(s: &str) -> std::result::Result<Duration, String> {
    let d = cli::parse_secs(s)?;
    if d.is_zero() {
        return Err("must be more than 0".to_string());
    }
    Ok(d)
}

const STATUS_EXAMPLES: &str = "\
Examples:
  healthmon status                              # the overview, once
  healthmon status --json | jq .tasks
  healthmon status --watch                      # live view; q, Esc or Ctrl-C quits
  healthmon status --watch --interval 0.5 --events 20
  healthmon status --watch --count 3 | jq -c '{at, done: .tasks.completed}'
  healthmon status --watch --json > status.jsonl &   # a log of snapshots; stop it with kill

Exit codes: 0 ok (--watch: quit with q, Esc or Ctrl-C, stopped by SIGTERM/SIGINT, --count
reached, or stdout closed), 1 failed (the session record became unreadable, the terminal
failed), 2 bad usage (no such session, a bad option value such as --count 0)";

const EXAMPLES: &str = "\
Examples:
  healthmon --interval 1 --stale-after 15 &     # the sidecar, next to the agents
  healthmon --once || echo 'someone died'       # one check, for cron or CI
  healthmon status                              # the overview
  healthmon status --json | jq '.agents[] | select(.alive == false)'
  healthmon status --watch                      # the live view (healthmon status --help)

Exit codes: 0 ok (stopped by SIGTERM/SIGINT or because the session ended; --once: all
alive), 1 failed (another healthmon watches the session; --once: an agent was declared
dead or hung, or a problem was met), 2 bad usage (no such session, unsafe base)";

fn main() -> ExitCode {
    let args: Args = cli::parse();
    cli::run("healthmon", || {
        let dir = args.session.open()?;
        match args.command {
            Some(Cmd::Status { json, watch: true, interval, count, events }) => {
                watch::run(dir, &watch::Options { interval, count, events: usize::from(events), json })
            }
            Some(Cmd::Status { json, .. }) => status::show(&dir, json),
            None => watch(&args, dir),
        }
    })
}

fn watch(args: &Args, dir: coord_core::SessionDir) -> Result<u8> {
    let lock_path = dir.tool_lock_file(ToolLock::Healthmon);
    let Some(guard) = lock::try_acquire(&lock_path)? else {
        let holder = lock::read_owner(&lock_path).unwrap_or_else(|| "unknown pid".to_string());
        return Err(Error::Failed(format!(
            "another healthmon ({holder}) already watches session {:?}; only one runs per session",
            dir.id()
        )));
    };
    guard.write_owner(&format!("pid {} on {}", std::process::id(), sys::host()))?;

    let (tx, rx) = mpsc::channel::<i32>();
    if !args.once {
        let mut signals =
            signal_hook::iterator::Signals::new([signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT])
                .map_err(|e| Error::Failed(format!("cannot install signal handlers: {e}")))?;
        std::thread::spawn(move || {
            for sig in signals.forever() {
                if tx.send(sig).is_err() {
                    break;
                }
            }
        });
    }

    let cfg = MonitorConfig {
        stale_after: args.stale_after,
        max_deliveries: args.max_deliveries,
        lock_timeout: args.session.lock_timeout(),
        sample_every: (!args.sample_every.is_zero()).then_some(args.sample_every),
        visibility: args.visibility,
    };
    let mut monitor = Monitor::new(dir, cfg);
    let mut printer = Printer::default();
    loop {
        match health::session_finished(monitor.dir()) {
            Ok(Some(why)) => {
                record(&monitor, &mut printer, Event::new("stopped", None, Some(why)));
                return Ok(exit::OK);
            }
            Ok(None) => {}
            Err(e) => log::warn!("cannot read session.json: {e}"),
        }
        let report = monitor.tick();
        for e in &report.events {
            printer.print(e);
        }
        if args.once {
            return Ok(if report.gone == 0 && report.problems == 0 { exit::OK } else { exit::FAILED });
        }
        match rx.recv_timeout(args.interval) {
            Ok(sig) => {
                let name = if sig == signal_hook::consts::SIGTERM { "SIGTERM" } else { "SIGINT" };
                record(&monitor, &mut printer, Event::new("stopped", None, Some(format!("received {name}"))));
                return Ok(exit::OK);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return Ok(exit::OK),
        }
    }
}

fn record(monitor: &Monitor, printer: &mut Printer, event: Event) {
    if let Err(e) = health::append_line(&monitor.dir().events_file(), &event) {
        log::error!("cannot record event: {e}");
    }
    printer.print(&event);
}

/// Prints events to stdout; once stdout is gone (a closed pipe), keeps monitoring quietly.
#[derive(Debug, Default)]
struct Printer {
    closed: bool,
}

impl Printer {
    fn print(&mut self, event: &Event) {
        if self.closed {
            return;
        }
        if let Err(e) = output::print(event) {
            if !output::is_broken_pipe(&e) {
                log::warn!("{e}; events still go to metrics/events.jsonl");
            }
            self.closed = true;
        }
    }
}
