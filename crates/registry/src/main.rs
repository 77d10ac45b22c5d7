//! `registry`: register, update, heartbeat, unregister, list and show agents.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use coord_core::{cli, error::exit, id, output, registry, sys};
use serde_json::{Map, Value};

/// Register agents and track them in a session
///
/// Registrations live in registry/agents.json (the seed's JSON array). Heartbeats
/// never rewrite that file: each agent has its own heartbeat file whose mtime is the
/// last beat, so thousands of agents can beat every second without contending.
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
    /// Register an agent (the calling process, unless --pid says otherwise)
    Register {
        /// Agent id
        #[arg(value_parser = id::parser("agent"))]
        agent: String,
        /// Agent type, used to route tasks
        #[arg(long = "type", value_name = "TYPE", value_parser = id::parser("agent type"))]
        agent_type: String,
        /// A capability of the agent (repeatable)
        #[arg(long = "capability", value_name = "CAP", value_parser = id::parser("capability"))]
        capabilities: Vec<String>,
        /// The agent's process id [default: the parent of this process, i.e. the calling shell]
        #[arg(long)]
        pid: Option<u32>,
        /// Take the place of an active registration with the same id
        #[arg(long)]
        replace: bool,
    },
    /// Change an agent's registration
    Update {
        /// Agent id
        #[arg(value_parser = id::parser("agent"))]
        agent: String,
        /// New status (active, busy, idle, ...)
        #[arg(long, value_parser = id::parser("status"))]
        status: Option<String>,
        /// Add a capability (repeatable)
        #[arg(long = "capability", value_name = "CAP", value_parser = id::parser("capability"))]
        add_capabilities: Vec<String>,
        /// Remove a capability (repeatable)
        #[arg(long = "drop-capability", value_name = "CAP", value_parser = id::parser("capability"))]
        remove_capabilities: Vec<String>,
        /// Add a task to assigned_tasks (repeatable)
        #[arg(long, value_name = "TASK", value_parser = id::parser("task"))]
        assign: Vec<String>,
        /// Remove a task from assigned_tasks (repeatable)
        #[arg(long, value_name = "TASK", value_parser = id::parser("task"))]
        unassign: Vec<String>,
        /// Set another field: KEY=JSON (repeatable; JSON null removes the field)
        #[arg(long = "set", value_name = "KEY=JSON", value_parser = parse_field)]
        fields: Vec<(String, Value)>,
    },
    /// Record a heartbeat for an agent (cheap: touches one file, takes no lock)
    Heartbeat {
        /// Agent id
        #[arg(value_parser = id::parser("agent"))]
        agent: String,
    },
    /// Mark an agent terminated; its entry stays for the report
    Unregister {
        /// Agent id
        #[arg(value_parser = id::parser("agent"))]
        agent: String,
    },
    /// List registrations as JSON Lines
    List {
        /// Only agents of this type
        #[arg(long = "type", value_name = "TYPE")]
        agent_type: Option<String>,
        /// Only agents with this status
        #[arg(long)]
        status: Option<String>,
    },
    /// Print one registration
    Show {
        /// Agent id
        #[arg(value_parser = id::parser("agent"))]
        agent: String,
    },
}

const EXAMPLES: &str = "\
Examples:
  registry register w1 --type worker --capability rust --capability test
  registry heartbeat w1
  registry update w1 --status busy --assign fix-auth-tests
  registry list --status active | jq -r .id
  registry unregister w1

Exit codes: 0 ok, 1 failed (already registered, not registered, lock timeout, malformed
agents.json), 2 bad usage (invalid id, no such session, unsafe base)";

fn parse_field(s: &str) -> Result<(String, Value), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("{s:?} is not KEY=JSON"))?;
    const OWN: &[&str] = &[
        "id",
        "type",
        "status",
        "registered_at",
        "updated_at",
        "capabilities",
        "assigned_tasks",
        "pid",
        "host",
        "process_start",
        "process_inode",
        "boot_id",
        "terminated_at",
        "failed_at",
    ];
    if OWN.contains(&k) {
        return Err(format!("{k:?} is managed by registry; use the dedicated option instead of --set"));
    }
    if k.is_empty() {
        return Err("the field name is empty".to_string());
    }
    let value = serde_json::from_str(v)
        .map_err(|e| format!("the value of {k:?} is not valid JSON ({e}); quote strings as '\"text\"'"))?;
    Ok((k.to_string(), value))
}

fn main() -> ExitCode {
    let args: Args = cli::parse();
    cli::run("registry", || {
        let dir = args.session.open()?;
        let timeout = args.session.lock_timeout();
        match args.command {
            Cmd::Register { agent, agent_type, capabilities, pid, replace } => {
                let req = registry::Registration {
                    id: agent,
                    agent_type,
                    capabilities,
                    pid: pid.unwrap_or_else(sys::parent_pid),
                    replace,
                };
                output::print(&registry::register(&dir, &req, timeout)?)?;
            }
            Cmd::Update { agent, status, add_capabilities, remove_capabilities, assign, unassign, fields } => {
                let changes = registry::Changes {
                    status,
                    add_capabilities,
                    remove_capabilities,
                    assign,
                    unassign,
                    fields: fields.into_iter().collect::<Map<_, _>>(),
                };
                output::print(&registry::update(&dir, &agent, &changes, timeout)?)?;
            }
            Cmd::Heartbeat { agent } => {
                let at = registry::heartbeat(&dir, &agent)?;
                output::print(&serde_json::json!({"agent": agent, "heartbeat_at": coord_core::time::rfc3339(at)}))?;
            }
            Cmd::Unregister { agent } => output::print(&registry::unregister(&dir, &agent, timeout)?)?,
            Cmd::List { agent_type, status } => {
                let agents = registry::list(&dir)?;
                let shown = agents.iter().filter(|a| {
                    agent_type.as_ref().is_none_or(|t| &a.agent_type == t)
                        && status.as_ref().is_none_or(|s| &a.status == s)
                });
                output::print_lines(shown)?;
            }
            Cmd::Show { agent } => output::print(&registry::show(&dir, &agent)?)?,
        }
        Ok(exit::OK)
    })
}
