//! `archive`: finish a session (mark completed, tar.gz, verify), expire, list, extract.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::{Parser, Subcommand};
use coord_core::{Base, archive, cli, error::exit, output};

/// Finish a session: mark it completed, write a verified tar.gz, optionally remove it
///
/// The archive (default <base>/<session>.tar.gz) is written to a temporary file,
/// verified by reading it back, and renamed into place; only then is the session
/// marked completed (status, ended_at). Any failure, a full disk included, leaves the
/// session active and intact and no partial archive behind. Symbolic links are stored
/// as links and never followed.
#[derive(Debug, Parser)]
#[command(version, after_help = EXAMPLES, args_conflicts_with_subcommands = true)]
struct Args {
    #[command(flatten)]
    session: cli::SessionArgs,

    #[command(subcommand)]
    command: Option<Cmd>,

    /// Delete the session directory once the archive is verified
    #[arg(long, conflicts_with = "keep_for")]
    remove: bool,

    /// Let `archive gc` delete the session directory DURATION from now (e.g. 1h, 30m)
    #[arg(long, value_name = "DURATION", value_parser = cli::parse_secs)]
    keep_for: Option<Duration>,

    /// Write the archive to FILE instead of <base>/<session>.tar.gz
    #[arg(long, value_name = "FILE")]
    output: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// List sessions (status, age, size, archived or not) and archives whose session is gone
    List,
    /// Delete archived session directories whose --keep-for expired
    Gc {
        /// Also delete archived session directories that ended longer ago than DURATION
        #[arg(long, value_name = "DURATION", value_parser = cli::parse_secs)]
        older_than: Option<Duration>,
    },
    /// Extract an archive into an empty or missing directory, refusing hostile entries
    Extract {
        /// The .tar.gz file
        file: PathBuf,
        /// Directory to extract into (must be missing or empty)
        #[arg(long, value_name = "DIR")]
        into: PathBuf,
    },
}

const EXAMPLES: &str = "\
Examples:
  archive                                  # completed, <base>/<session>.tar.gz, verified
  archive --keep-for 1h                    # `archive gc` may delete the directory in an hour
  archive --remove --output /backup/s.tar.gz
  archive list
  archive gc --older-than 7d
  archive extract /backup/s.tar.gz --into /tmp/inspect

Exit codes: 0 ok, 1 failed (cannot write or verify the archive, e.g. a full disk: nothing
was changed; lock timeout), 2 bad usage or invalid input (no such session, a hostile or
damaged archive, a non-empty extract target: nothing was written).";

/// Sessions with fewer entries than this finish too fast for a progress bar.
const PROGRESS_MIN_ENTRIES: u64 = 2000;

fn main() -> ExitCode {
    let args: Args = cli::parse();
    cli::run("archive", || {
        let base = Base::new(&args.session.base);
        match &args.command {
            None => {
                let dir = args.session.open()?;
                let opts = archive::Options {
                    output: args.output.clone(),
                    remove: args.remove,
                    keep_for: args.keep_for,
                    lock_timeout: args.session.lock_timeout(),
                };
                let mut bar: Option<indicatif::ProgressBar> = None;
                let show = std::io::stderr().is_terminal();
                let done = archive::create(&base, &dir, &opts, &mut |p| {
                    if !show || p.entries_total < PROGRESS_MIN_ENTRIES {
                        return;
                    }
                    let b = bar.get_or_insert_with(|| {
                        let b = indicatif::ProgressBar::with_draw_target(
                            Some(p.entries_total),
                            indicatif::ProgressDrawTarget::stderr(),
                        );
                        if let Ok(style) =
                            indicatif::ProgressStyle::with_template("archive: [{bar:30}] {pos}/{len} entries, {msg}")
                        {
                            b.set_style(style.progress_chars("=> "));
                        }
                        b
                    });
                    b.set_position(p.entries_done);
                    b.set_message(format!("{} MB", p.bytes_done / 1_000_000));
                });
                if let Some(b) = bar {
                    b.finish_and_clear();
                }
                output::print(&done?)?;
                Ok(exit::OK)
            }
            Some(Cmd::List) => {
                output::print_lines(&archive::list(&base, SystemTime::now())?)?;
                Ok(exit::OK)
            }
            Some(Cmd::Gc { older_than }) => {
                output::print_lines(&archive::gc(&base, *older_than, SystemTime::now())?)?;
                Ok(exit::OK)
            }
            Some(Cmd::Extract { file, into }) => {
                output::print(&archive::extract(file, into)?)?;
                Ok(exit::OK)
            }
        }
    })
}
