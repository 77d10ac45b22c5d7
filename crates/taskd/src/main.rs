//! `taskd`: the task queue: submit, claim, complete, assign by strategy, run, work, wait.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use coord_core::task::assign::{AssignOptions, Strategy};
use coord_core::task::work::WorkOptions;
use coord_core::task::{self, ClaimOptions, Holder, NewTask, Status};
use coord_core::{Error, cli, error::exit, id, output};
use serde_json::Value;

/// A task queue with exactly-one claims, leases, retries, dependencies and strategies
///
/// Each task is a record file under tasks/; a status change is an atomic rename between
/// status directories. A claim is exclusive and carries a lease and a claim token; only
/// the current holder may complete or fail it. The seed-shaped state/tasks.json is a view
/// refreshed by `taskd list` and `taskd progress`.
#[derive(Debug, Parser)]
#[command(version, after_help = EXAMPLES)]
struct Args {
    #[command(flatten)]
    session: cli::SessionArgs,

    #[command(subcommand)]
    command: Cmd,
}

/// Who is finishing a claim (checked against the current claim).
#[derive(Debug, Clone, clap::Args)]
struct HolderArgs {
    /// The agent that holds the claim [env: COORD_AGENT]
    #[arg(long, value_parser = id::parser("agent"))]
    agent: Option<String>,
    /// The claim token printed by the claim [env: TASK_CLAIM_TOKEN]
    #[arg(long, value_parser = id::parser("claim token"))]
    token: Option<String>,
}

impl HolderArgs {
    fn holder(self) -> coord_core::Result<Holder> {
        let from_env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let agent = self.agent.or_else(|| from_env("COORD_AGENT"));
        let token = self.token.or_else(|| from_env("TASK_CLAIM_TOKEN"));
        if let Some(a) = &agent {
            id::validate("agent", a)?;
        }
        if let Some(t) = &token {
            id::validate("claim token", t)?;
        }
        Ok(Holder { agent, token })
    }
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Submit a task, or JSON Lines of tasks on stdin with --batch; prints the record(s)
    Submit {
        /// Task id [default: generated]
        #[arg(long, value_parser = id::parser("task"))]
        id: Option<String>,
        /// Only agents of this type may take it
        #[arg(long = "type", value_name = "AGENT_TYPE", value_parser = id::parser("agent type"))]
        agent_type: Option<String>,
        /// A capability the agent must have (repeatable)
        #[arg(long = "capability", value_name = "CAP", value_parser = id::parser("capability"))]
        capabilities: Vec<String>,
        /// Priority; higher runs first
        #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
        priority: i64,
        /// A task that must complete first (repeatable)
        #[arg(long = "after", value_name = "TASK", value_parser = id::parser("task"))]
        after: Vec<String>,
        /// Attempts before a failure is final
        #[arg(long, default_value_t = task::DEFAULT_MAX_ATTEMPTS, value_parser = clap::value_parser!(u32).range(1..))]
        max_attempts: u32,
        /// The payload, as JSON
        #[arg(long, value_name = "JSON")]
        payload: Option<String>,
        /// Read JSON Lines of tasks from stdin (fields: id, type, capabilities, priority,
        /// dependencies, max_attempts, payload)
        #[arg(long, conflicts_with_all = ["id", "agent_type", "capabilities", "after", "payload"])]
        batch: bool,
    },
    /// Claim the best task the agent may take; exit 3 when there is none
    Claim {
        /// Agent id (must be registered and active)
        #[arg(value_parser = id::parser("agent"))]
        agent: String,
        /// Block (without polling) until a task is claimable
        #[arg(long)]
        wait: bool,
        /// With --wait, give up after this long (exit 3)
        #[arg(long, value_name = "SECS", value_parser = cli::parse_secs, requires = "wait")]
        timeout: Option<Duration>,
        /// Lease of the claim; the agent's heartbeat renews it
        #[arg(long, value_name = "SECS", value_parser = cli::parse_secs, default_value = "300")]
        lease: Duration,
    },
    /// Complete a claimed task (only its current holder may)
    Complete {
        /// Task id
        #[arg(value_parser = id::parser("task"))]
        task: String,
        /// The result, as JSON
        #[arg(long, value_name = "JSON")]
        result: Option<String>,
        #[command(flatten)]
        holder: HolderArgs,
    },
    /// Fail an attempt of a claimed task; it is retried while attempts are left
    Fail {
        /// Task id
        #[arg(value_parser = id::parser("task"))]
        task: String,
        /// What went wrong
        #[arg(long, value_name = "MSG", default_value = "failed")]
        error: String,
        #[command(flatten)]
        holder: HolderArgs,
    },
    /// Give a claimed task back without spending an attempt (e.g. after a preempt message)
    Release {
        /// Task id
        #[arg(value_parser = id::parser("task"))]
        task: String,
        #[command(flatten)]
        holder: HolderArgs,
    },
    /// List tasks as JSON Lines (refreshes state/tasks.json when listing all)
    List {
        /// Only this status: blocked, pending, claimed, completed, failed, cancelled
        #[arg(long, value_parser = parse_status)]
        status: Option<Status>,
    },
    /// Print one task
    Show {
        /// Task id
        #[arg(value_parser = id::parser("task"))]
        task: String,
    },
    /// Assign pending tasks to free agents once, by strategy (push model)
    Assign {
        #[command(flatten)]
        opts: AssignArgs,
    },
    /// Assign continuously as tasks and agents appear, until SIGTERM/SIGINT or the session ends
    Run {
        #[command(flatten)]
        opts: AssignArgs,
    },
    /// Claim and run tasks in a loop: CMD gets the task JSON on stdin
    #[command(after_help = WORK_HELP)]
    Work {
        /// Agent id (registered as this process if it is not active)
        #[arg(value_parser = id::parser("agent"))]
        agent: String,
        /// Agent type when registering
        #[arg(long = "type", value_name = "T", value_parser = id::parser("agent type"))]
        agent_type: Option<String>,
        /// A capability (repeatable)
        #[arg(long = "capability", value_name = "C", value_parser = id::parser("capability"))]
        capabilities: Vec<String>,
        /// Lease of each claim, renewed by heartbeat while CMD runs
        #[arg(long, value_name = "SECS", value_parser = cli::parse_secs, default_value = "300")]
        lease: Duration,
        /// Stop after this many tasks
        #[arg(long, value_name = "N")]
        max_tasks: Option<u64>,
        /// Stop after waiting this long for a task
        #[arg(long, value_name = "SECS", value_parser = cli::parse_secs)]
        idle_exit: Option<Duration>,
        /// Bytes of each attempt's stdout and of its stderr kept in tasks/output/ (0 keeps
        /// none); what goes past is cut off with a note saying so
        #[arg(long, value_name = "BYTES", default_value_t = task::output::DEFAULT_OUTPUT_CAP)]
        output_cap: u64,
        /// The command and its arguments
        #[arg(last = true, required = true, value_name = "CMD")]
        cmd: Vec<String>,
    },
    /// Count tasks, write operation_progress to state/global.json, refresh state/tasks.json
    Progress,
    /// Wait until the tasks (all tasks if none given) are final
    Wait {
        /// Task ids
        #[arg(value_parser = id::parser("task"))]
        tasks: Vec<String>,
        /// Give up after this long (exit 3)
        #[arg(long, value_name = "SECS", value_parser = cli::parse_secs)]
        timeout: Option<Duration>,
    },
    /// Return claims to the queue: those of an agent, or those whose lease lapsed
    Requeue {
        /// Requeue every task claimed by this agent
        #[arg(long, value_parser = id::parser("agent"), required_unless_present = "expired", conflicts_with = "expired")]
        agent: Option<String>,
        /// Requeue every claim whose lease lapsed
        #[arg(long)]
        expired: bool,
        /// The reason recorded in the tasks' errors
        #[arg(long, default_value = "requeued by operator")]
        reason: String,
    },
    /// Print the output `taskd work` kept of a task's attempt (stdout to stdout, stderr to stderr)
    #[command(after_help = LOG_HELP)]
    Log {
        /// Task id
        #[arg(value_parser = id::parser("task"))]
        task: String,
        /// The attempt (1-based) [default: the latest]
        #[arg(long, value_name = "N")]
        attempt: Option<u32>,
        /// Stream the output while the attempt runs, until it ends; waits for a task that
        /// has not started
        #[arg(long, short = 'f', conflicts_with = "json")]
        follow: bool,
        /// Print one JSON object {id, attempt, status, stdout, stderr} instead
        #[arg(long)]
        json: bool,
    },
    /// Put failed (or cancelled) tasks back in the queue with a fresh attempt budget
    #[command(after_help = RETRY_HELP)]
    Retry {
        /// Task ids (each failed or cancelled)
        #[arg(value_parser = id::parser("task"), required_unless_present = "failed", conflicts_with = "failed")]
        tasks: Vec<String>,
        /// Retry every task that failed for good
        #[arg(long)]
        failed: bool,
        /// New attempts each task gets [default: the budget it was submitted with]
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        attempts: Option<u32>,
    },
    /// Stop the command running a claimed task (in a `taskd work` loop); it fails, or is retried
    #[command(after_help = KILL_HELP)]
    Kill {
        /// Task id (must be claimed)
        #[arg(value_parser = id::parser("task"))]
        task: String,
        /// Put the task back in the queue (counting the attempt) instead of failing it
        #[arg(long)]
        retry: bool,
        /// How long to wait for the worker to stop it (exit 3 past that)
        #[arg(long, value_name = "SECS", value_parser = cli::parse_secs, default_value = "30")]
        timeout: Duration,
        /// Only write the request; print it and exit
        #[arg(long, conflicts_with = "timeout")]
        no_wait: bool,
    },
    /// Pause the queue (or the tasks of one agent type): claims get nothing of it
    Pause {
        /// Only tasks that require this agent type
        #[arg(long = "type", value_name = "AGENT_TYPE", value_parser = id::parser("agent type"))]
        agent_type: Option<String>,
        /// Why (recorded)
        #[arg(long)]
        reason: Option<String>,
    },
    /// Resume what `taskd pause` paused (everything, or one agent type)
    Resume {
        /// Only tasks that require this agent type
        #[arg(long = "type", value_name = "AGENT_TYPE", value_parser = id::parser("agent type"))]
        agent_type: Option<String>,
    },
    /// Cancel a task that is not final; its dependents fail
    Cancel {
        /// Task id
        #[arg(value_parser = id::parser("task"))]
        task: String,
        /// The reason recorded
        #[arg(long)]
        reason: Option<String>,
    },
}

#[derive(Debug, Clone, clap::Args)]
struct AssignArgs {
    /// How to pick an agent for each task
    #[arg(long, value_enum, default_value = "load_balanced")]
    strategy: Strategy,
    /// Tasks an agent may hold at once
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    slots: u64,
    /// Lease of each assignment
    #[arg(long, value_name = "SECS", value_parser = cli::parse_secs, default_value = "300")]
    lease: Duration,
}

impl AssignArgs {
    fn options(&self) -> AssignOptions {
        AssignOptions { strategy: self.strategy, slots: self.slots as usize, lease: self.lease }
    }
}

fn parse_status(s: &str) -> Result<Status, String> {
    Status::parse(s)
        .ok_or_else(|| format!("unknown status {s:?}: use blocked, pending, claimed, completed, failed or cancelled"))
}

const EXAMPLES: &str = "\
Examples:
  taskd submit --id build --payload '{\"target\": \"x86\"}'
  taskd submit --id test --after build --capability rust --priority 5
  jq -c '.[]' tasks.json | taskd submit --batch
  t=$(taskd claim worker-1 --wait --timeout 60) && id=$(jq -r .id <<<\"$t\")
  taskd complete \"$id\" --agent worker-1 --result '{\"ok\": true}'
  taskd work worker-1 -- ./handle-task.sh
  taskd assign --strategy round_robin
  taskd wait --timeout 600 && taskd progress
  taskd log build --follow; taskd kill build --retry; taskd retry --failed
  taskd pause --type gpu; taskd resume

Exit codes: 0 ok; 1 failed (claim lost, task exists, unknown task, wait saw a failed
task, not retriable or killable, lock timeout, malformed store file); 2 bad usage or
input (invalid id or JSON, unknown dependency, dependency cycle); 3 nothing to claim
(also while paused), or timed out waiting.";

const WORK_HELP: &str = "\
CMD gets the task JSON on stdin and TASK_ID, TASK_PAYLOAD (the payload; a string payload
as it is), TASK_CLAIM_TOKEN and COORD_AGENT in its environment. Exit 0 completes the task
with CMD's stdout as the result (JSON if it parses, else a string); any other exit fails
the attempt with the tail of CMD's stderr. The lease is renewed by heartbeat while CMD
runs. SIGTERM/SIGINT stop the loop; a running task is released. Prints one JSON line per
task: {\"id\", \"status\", \"exit_code\"}.

Example:
  taskd work w1 --max-tasks 100 --idle-exit 5 -- sh -c 'jq -r .payload.n | factor'";

const LOG_HELP: &str = "\
Output is kept by `taskd work`, per attempt and stream, in tasks/output/<id>.<attempt>.out
and .err, up to its --output-cap (1 MiB each by default); a file cut off says so where
it was cut and how many bytes the stream had. An attempt that printed nothing has no
file and prints nothing. --follow wakes on inotify (every COORD_POLL_MS on shared
filesystems) and ends when the attempt ends.

Examples:
  taskd log build                  # the latest attempt
  taskd log build --attempt 1 2>/dev/null > first-stdout.txt
  taskd log build --follow
  taskd log build --json | jq -r .stderr

Exit codes: 0 ok (also when nothing was kept); 1 unknown task; 2 bad usage (invalid id,
an attempt the task has not made); 3 the task has not run yet (without --follow).";

const RETRY_HELP: &str = "\
Each task gets a fresh budget of attempts on top of those it made (its record keeps its
errors, and a `retries` entry says when, from which status and why it had ended). A task
whose dependencies are not all completed waits for them (blocked). Dependents that
failed because of a task are not retried with it unless named (or --failed).

Examples:
  taskd retry build test
  taskd retry --failed --attempts 1

Exit codes: 0 ok; 1 a task is not failed or cancelled, or depends on a failed task not
retried with it (nothing was changed), unknown task; 2 bad usage.";

const KILL_HELP: &str = "\
Writes tasks/control/<id>.kill; the `taskd work` loop running the claim sends SIGTERM to
the command's process group (SIGKILL 5 s later), records the attempt with \"killed\":
true in the task's errors, and fails the task for good, or with --retry returns it to
the queue while attempts are left. Prints {\"task\": <record>, \"error\": <the killed
attempt>}. Agents that are not `taskd work` loops do not act on kill requests.

Examples:
  taskd kill build
  taskd kill build --retry --timeout 60

Exit codes: 0 killed; 1 the task is not claimed (nothing was changed), it ended on its
own first, or unknown task; 2 bad usage; 3 still running at --timeout.";

fn parse_json_arg(what: &str, text: &str) -> coord_core::Result<Value> {
    serde_json::from_str(text)
        .map_err(|e| Error::Usage(format!("{what} {text:?} is not valid JSON ({e}); quote text as '\"text\"'")))
}

fn main() -> ExitCode {
    let args: Args = cli::parse();
    cli::run("taskd", || {
        let dir = args.session.open()?;
        let timeout = args.session.lock_timeout();
        match args.command {
            Cmd::Submit { id, agent_type, capabilities, priority, after, max_attempts, payload, batch } => {
                let tasks = if batch {
                    task::parse_batch(std::io::stdin().lock())?
                } else {
                    let payload = payload.map(|p| parse_json_arg("--payload", &p)).transpose()?.unwrap_or(Value::Null);
                    vec![NewTask {
                        id,
                        agent_type,
                        capabilities,
                        priority,
                        dependencies: after,
                        max_attempts: Some(max_attempts),
                        payload,
                    }]
                };
                let done = task::submit(&dir, tasks, timeout)?;
                if batch {
                    output::print_lines(&done)?;
                } else if let Some(t) = done.first() {
                    output::print(t)?;
                }
                Ok(exit::OK)
            }
            Cmd::Claim { agent, wait, timeout: wait_for, lease } => {
                let opts = ClaimOptions { lease, assigned_by: None };
                // Dropped after the print: closing the watch waits a kernel grace period.
                let mut bell = None;
                let got = if wait {
                    task::claim_wait(&dir, &agent, &opts, wait_for, None, &mut bell, timeout)?
                } else {
                    task::claim(&dir, &agent, &opts, timeout)?
                };
                match got {
                    Some(t) => {
                        output::print(&t)?;
                        Ok(exit::OK)
                    }
                    None => Err(Error::Empty(format!("nothing to claim for agent {agent:?}"))),
                }
            }
            Cmd::Complete { task: id, result, holder } => {
                let result = result.map(|r| parse_json_arg("--result", &r)).transpose()?.unwrap_or(Value::Null);
                output::print(&task::complete(&dir, &id, &holder.holder()?, result, timeout)?)?;
                Ok(exit::OK)
            }
            Cmd::Fail { task: id, error, holder } => {
                output::print(&task::fail(&dir, &id, &holder.holder()?, &error, timeout)?)?;
                Ok(exit::OK)
            }
            Cmd::Release { task: id, holder } => {
                output::print(&task::release(&dir, &id, &holder.holder()?, timeout)?)?;
                Ok(exit::OK)
            }
            Cmd::List { status } => {
                let tasks = match status {
                    Some(s) => task::list(&dir, s)?,
                    None => {
                        let all = task::list_all(&dir)?;
                        task::refresh_view(&dir, &all, timeout)?;
                        all
                    }
                };
                output::print_lines(&tasks)?;
                Ok(exit::OK)
            }
            Cmd::Show { task: id } => {
                output::print(&task::show(&dir, &id)?)?;
                Ok(exit::OK)
            }
            Cmd::Assign { opts } => {
                let report = task::assign::assign(&dir, &opts.options(), timeout)?;
                output::print(&report)?;
                Ok(exit::OK)
            }
            Cmd::Run { opts } => {
                task::assign::run(&dir, &opts.options(), timeout, output::print)?;
                Ok(exit::OK)
            }
            Cmd::Work { agent, agent_type, capabilities, lease, max_tasks, idle_exit, output_cap, cmd } => {
                let opts =
                    WorkOptions { agent, agent_type, capabilities, cmd, lease, max_tasks, idle_exit, output_cap };
                task::work::work(&dir, &opts, timeout, output::print)?;
                Ok(exit::OK)
            }
            Cmd::Progress => {
                output::print(&task::progress(&dir, timeout)?)?;
                Ok(exit::OK)
            }
            Cmd::Wait { tasks, timeout: limit } => {
                let out = task::wait(&dir, &tasks, limit)?;
                output::print(&out)?;
                Ok(if out.failed.is_empty() { exit::OK } else { exit::FAILED })
            }
            Cmd::Requeue { agent, expired: _, reason } => {
                let report = match agent {
                    Some(a) => task::requeue_agent(&dir, &a, &reason, timeout)?,
                    None => task::requeue_expired(&dir, timeout)?,
                };
                output::print(&report)?;
                Ok(exit::OK)
            }
            Cmd::Log { task: id, attempt, follow, json } => log(&dir, &id, attempt, follow, json),
            Cmd::Retry { tasks, failed, attempts } => {
                let which = if failed { task::RetryWhich::Failed } else { task::RetryWhich::Tasks(tasks) };
                output::print_lines(&task::retry(&dir, &which, attempts, timeout)?)?;
                Ok(exit::OK)
            }
            Cmd::Kill { task: id, retry, timeout: limit, no_wait } => {
                let req = task::kill::request(&dir, &id, retry)?;
                if no_wait {
                    output::print(&req)?;
                } else {
                    output::print(&task::kill::wait_killed(&dir, &req, limit)?)?;
                }
                Ok(exit::OK)
            }
            Cmd::Pause { agent_type, reason } => {
                output::print(&task::pause(&dir, agent_type.as_deref(), reason.as_deref(), timeout)?)?;
                Ok(exit::OK)
            }
            Cmd::Resume { agent_type } => {
                output::print(&task::resume(&dir, agent_type.as_deref(), timeout)?)?;
                Ok(exit::OK)
            }
            Cmd::Cancel { task: id, reason } => {
                output::print(&task::cancel(&dir, &id, reason.as_deref(), timeout)?)?;
                Ok(exit::OK)
            }
        }
    })
}

/// `taskd log`: the kept output of one attempt, or its stream with --follow.
fn log(
    dir: &coord_core::SessionDir,
    id: &str,
    attempt: Option<u32>,
    follow: bool,
    json: bool,
) -> coord_core::Result<u8> {
    use std::io::Write;
    if follow {
        let signals = task::bell::Signals::install()
            .map_err(|e| Error::Failed(format!("cannot install signal handlers: {e}")))?;
        let (mut out, mut err) = (std::io::stdout().lock(), std::io::stderr().lock());
        task::output::follow(dir, id, attempt, Some(&signals), &mut out, &mut err)?;
        return Ok(exit::OK);
    }
    let (t, n) = task::output::attempt_of(dir, id, attempt)?;
    if json {
        output::print(&task::output::output_json(dir, &t, n)?)?;
        return Ok(exit::OK);
    }
    let [out, err] = task::output::read_output(dir, id, n)?;
    if out.is_none() && err.is_none() {
        log::info!("task {id:?} attempt {n} left no output (it printed nothing, or ran outside `taskd work`)");
    }
    if let Some(b) = err {
        std::io::stderr().write_all(&b).map_err(|e| Error::io("write", "standard error", e))?;
    }
    if let Some(b) = out {
        let mut o = std::io::stdout().lock();
        o.write_all(&b).and_then(|()| o.flush()).map_err(|e| Error::io("write", "standard output", e))?;
    }
    Ok(exit::OK)
}
