//! `coord-mcp`: a Model Context Protocol server on stdio, so an AI agent can take part in
//! a coord session through tool calls instead of shell commands.
//!
//! It is one more thin client of coord-core: every tool is a call into the same library
//! the command-line tools use, on the same session directory, so an agent talking MCP
//! and a shell worker running `taskd work` share one queue. tokio (which rmcp needs)
//! lives in this binary only; coord-core's calls run on tokio's blocking pool.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use coord_core::task::bell::Signals;
use coord_core::{cli, error::exit, id, task};
use rmcp::ServiceExt;

mod server;
mod transport;

/// MCP server on stdio: an AI agent's tools for a coord session
///
/// An MCP client (an agent runtime, an editor) starts coord-mcp and talks JSON-RPC to it
/// on stdin and stdout, one message per line. The server is one agent of the session:
/// --agent, --type and --capability say who. Its tools register the agent, heartbeat,
/// read and change shared state, send and receive messages, and submit, claim and
/// finish tasks. While it runs and is registered it heartbeats on its own (renewing the
/// leases of its claims). A server that dies is found dead by healthmon (by its pid on
/// this host, by its silent heartbeat from another), which requeues its work.
///
/// When stdin closes or on SIGTERM/SIGINT it gives back the tasks it holds (no attempt
/// spent) and the messages it has not acknowledged, then unregisters. After kill -9,
/// healthmon finds the process dead and requeues both. Logs go to stderr (RUST_LOG).
#[derive(Debug, Parser)]
#[command(version, after_help = EXAMPLES)]
struct Args {
    #[command(flatten)]
    session: cli::SessionArgs,

    /// This agent's id in the session
    #[arg(long, env = "COORD_AGENT", value_name = "ID", value_parser = id::parser("agent"))]
    agent: String,

    /// This agent's type, which tasks may require
    #[arg(long = "type", value_name = "TYPE", default_value = "mcp", value_parser = id::parser("agent type"))]
    agent_type: String,

    /// A capability of the agent, which tasks may require (repeatable)
    #[arg(long = "capability", value_name = "CAP", value_parser = id::parser("capability"))]
    capabilities: Vec<String>,

    /// Register the agent at start, before any call (otherwise the `register` tool does)
    #[arg(long)]
    register: bool,

    /// Lease of each task claim; heartbeats renew it [default: 300s]
    #[arg(long, value_name = "SECS", value_parser = cli::parse_secs)]
    lease: Option<Duration>,

    /// Seconds between automatic heartbeats [default: lease/3, at most 10s]
    #[arg(long, value_name = "SECS", value_parser = cli::parse_secs)]
    heartbeat_every: Option<Duration>,

    /// Wait of `recv` and `task_claim` when the call names none
    #[arg(long, value_name = "SECS", default_value = "5", value_parser = cli::parse_secs)]
    default_wait: Duration,

    /// Longest wait a call may ask for (keep it below the client's request timeout)
    #[arg(long, value_name = "SECS", default_value = "30", value_parser = cli::parse_secs)]
    max_wait: Duration,
}

const EXAMPLES: &str = "\
Examples:
  coord-mcp --session \"$COORD_SESSION\" --agent mcp-1 --type coder --capability rust --register
  # in an MCP client's configuration (see docs/mcp.md):
  {\"mcpServers\": {\"coord\": {\"command\": \"coord-mcp\",
    \"args\": [\"--agent\", \"mcp-1\", \"--register\"], \"env\": {\"COORD_SESSION\": \"SESSION_ID\"}}}}

Tools: register, heartbeat, state_get, state_set, state_update, send, broadcast, recv, ack,
task_submit, task_claim, task_complete, task_fail, task_release, task_list, task_show,
progress, session_status. A failed call is an MCP tool error carrying the message and the
exit code the command-line tool would give.

Exit codes: 0 stdin closed or SIGTERM/SIGINT (claims given back), 1 the transport failed,
2 bad usage.";

fn main() -> ExitCode {
    let args: Args = cli::parse();
    cli::run("coord-mcp", || serve(args))
}

fn serve(args: Args) -> coord_core::Result<u8> {
    let failed = |what: &str, e: &dyn std::fmt::Display| coord_core::Error::Failed(format!("{what}: {e}"));
    let (stop, mut trigger) =
        Signals::install_with_trigger().map_err(|e| failed("cannot install signal handlers", &e))?;
    let lease = args.lease.unwrap_or(task::DEFAULT_LEASE);
    let every = args.heartbeat_every.unwrap_or_else(|| task::work::beat_every(lease)).max(Duration::from_millis(100));
    let cfg = server::Config {
        session: args.session,
        agent: args.agent,
        agent_type: args.agent_type,
        capabilities: args.capabilities,
        default_wait: args.default_wait.min(args.max_wait),
        max_wait: args.max_wait,
        lease,
    };
    let grace = cfg.max_wait + cfg.session.lock_timeout();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| failed("cannot start the runtime", &e))?;
    let coord = server::Coord::new(cfg, stop);
    let served: coord_core::Result<()> = runtime.block_on(async {
        // Watched before anything else: the handlers installed above replace the
        // signals' default action, so a server still registering or waiting for its
        // client's `initialize` must stop on them too. A signal that came between those
        // handlers and these watchers is still in the handlers' pipe.
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| failed("cannot watch SIGTERM", &e))?;
        let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
            .map_err(|e| failed("cannot watch SIGINT", &e))?;
        if coord.stopping() {
            log::info!("signalled while starting: shutting down");
            return Ok(());
        }
        if args.register {
            coord.register_now().await;
        }
        tokio::spawn(coord.clone().heartbeat_loop(every));
        let signalled = async {
            tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            }
        };
        tokio::pin!(signalled);
        let (stdin, stdout) = rmcp::transport::stdio_pipes();
        let running = tokio::select! {
            started = coord.clone().serve(transport::Lines::new(stdin, stdout)) => {
                started.map_err(|e| failed("the MCP session did not start", &e))?
            }
            sig = &mut signalled => {
                log::info!("{sig} before the session started: shutting down");
                return Ok(());
            }
        };
        let cancel = running.cancellation_token();
        tokio::select! {
            quit = running.waiting() => log::info!("stdin closed: {quit:?}"),
            sig = &mut signalled => {
                log::info!("{sig}: shutting down");
                cancel.cancel();
            }
        }
        Ok(())
    });
    // End every wait in progress, then give back what this agent holds.
    {
        use std::io::Write;
        let _ = trigger.write_all(b"x");
    }
    runtime.shutdown_timeout(Duration::from_millis(100));
    coord.shutdown(grace);
    served.map(|()| exit::OK)
}
