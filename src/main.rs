//! The `pra` command line: a thin front end over pra-core. Logic lives in pra-core; this crate
//! parses arguments and configuration, prints, and maps errors to the exit codes of [`exit`].

mod commands;
mod config;
mod drill;
mod exit;
mod follow;
mod output;
mod progress;
mod run;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use pra_core::Error;

use crate::config::{Config, Overrides};

#[derive(Parser, Debug)]
#[command(
    name = "pra",
    version,
    about = "Disaster recovery between two sites, safely and measurably",
    long_about = "Disaster recovery between two sites, safely and measurably.\n\n\
        Every job consults one active-site record with a fencing token (deny by default); a \
        failover/failback plan flips it break-before-make after draining running jobs; SQLite \
        backups are consistent, verified, pruned and restored atomically.",
    after_help = exit::HELP
)]
struct Cli {
    #[command(flatten)]
    overrides: Overrides,
    /// Print data as JSON.
    #[arg(long, global = true)]
    json: bool,
    /// More logs on stderr (or set RUST_LOG).
    #[arg(long, short, global = true)]
    verbose: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Exit 0 if this site may run jobs, 1 if it is standby, more on error (fail closed).
    Check,
    /// Run a command only if this site is active (the cron wrapper).
    Run(run::RunArgs),
    /// Run a long-running command (cron -f, a worker) whenever, and only while, this site is
    /// active: started when it becomes active, stopped when it loses the role.
    Follow(follow::FollowArgs),
    /// Show or change the active-site record.
    #[command(subcommand)]
    Site(commands::SiteCmd),
    /// The failover/failback plan.
    #[command(subcommand)]
    Plan(commands::PlanCmd),
    /// Print the audit journal, check its hash chain, or checkpoint it.
    Journal(commands::JournalArgs),
    /// Every job the run registry knows: schedule, latest success, and whether it is late on
    /// the active site, skipped everywhere, ran on both sites or failed last (exit 78 if so).
    Jobs,
    /// Serve /active (200 on the active site, 503 otherwise: for load-balancer health checks),
    /// /metrics, /status and /healthz over HTTP.
    Serve(serve::ServeArgs),
    /// Prometheus metrics, for node_exporter's textfile collector.
    Metrics(commands::MetricsArgs),
    /// Take a consistent, verified backup of the database.
    Backup(commands::BackupArgs),
    /// List the backups, newest first.
    Backups(commands::BackupsArgs),
    /// Verify the offsite target's backups and record the results there.
    Verify(commands::VerifyArgs),
    /// Remove backups according to a retention policy.
    Prune(commands::PruneArgs),
    /// Restore a backup over the database (the app must be stopped).
    Restore(commands::RestoreArgs),
    /// The status the app serves on GET /status.
    Status,
    /// The fence at the data in PostgreSQL or MySQL/MariaDB: admit this run's token (silent;
    /// exit 6 when a higher one was admitted), or install, read, print it.
    Fence(commands::FenceArgs),
    /// Print the shell completion script for SHELL (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff: `pra man | man -l -`).
    Man,
    /// Print the configuration pra resolved (file, PRA_* variables and flags), key by key.
    Config,
    /// Run a full disaster-recovery drill in a scratch directory and report its KPIs.
    Drill {
        /// Where to run it [default: a new temporary directory].
        #[arg(long)]
        dir: Option<PathBuf>,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
        /// Run it on this store instead of a scratch SQLite store: an empty one (a new etcd
        /// prefix, say). Deliberately not read from PRA_STORE or the configuration.
        #[arg(long, value_name = "URL")]
        store_url: Option<String>,
        /// Where the drill's job writes its work and business rows, fenced: a PostgreSQL
        /// database (postgresql://...; its fence must be at 0: a new database) instead of the
        /// app's SQLite file.
        #[arg(long, value_name = "URL")]
        job_db: Option<String>,
        /// Upload the database-loss scenario's last backup to the offsite target
        /// (--backup-target / PRA_BACKUP_TARGET / backup_target, with its endpoint and keys) and
        /// restore from there. The target should be a scratch prefix.
        #[arg(long)]
        remote: bool,
    },
    /// (drill helper) One run of the drill's cron job.
    #[command(name = "__drill-job", hide = true)]
    DrillJob {
        /// The job database: a SQLite path or a PostgreSQL URL (a path-typed argument: it
        /// shares its name with the global --db).
        #[arg(long)]
        db: PathBuf,
        #[arg(long)]
        job: String,
        #[arg(long)]
        ms: u64,
        /// Admit the token at the fence for every slice of work, not only the final commit
        /// (a refused slice is logged in the `refused` table and the work goes on).
        #[arg(long)]
        fence_each: bool,
    },
    /// (drill helper) The drill's app: an insert every MS milliseconds.
    #[command(name = "__drill-app", hide = true)]
    DrillApp {
        #[arg(long)]
        db: PathBuf,
        #[arg(long)]
        ms: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logs(cli.verbose);
    progress::init();
    match dispatch(&cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            let code = exit::for_error(&e);
            if cli.json {
                // With --json, the error is a JSON object too (on stderr, as every error).
                eprintln!(
                    "{}",
                    serde_json::json!({
                        "kind": e.kind().name(),
                        "code": code,
                        "message": e.to_string(),
                    })
                );
            } else {
                eprintln!("pra: {e}");
            }
            ExitCode::from(code)
        }
    }
}

fn init_logs(verbose: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(if verbose {
            "info,pra=debug,pra_core=debug"
        } else {
            "warn"
        })
    });
    // Colours only for a person at a terminal, and never with NO_COLOR set (no-color.org): a
    // log file, journald or a cron mail gets plain text.
    use std::io::IsTerminal;
    let colour = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .with_target(false)
        .init();
}

fn dispatch(cli: &Cli) -> Result<u8, Error> {
    let cfg = || Config::load(&cli.overrides);
    let out = commands::Out { json: cli.json };
    match &cli.command {
        Command::Check => commands::check(&cfg()?, &out),
        Command::Run(args) => run::run(&cfg()?, args),
        Command::Follow(args) => follow::follow(&cfg()?, args),
        Command::Site(cmd) => commands::site(&cfg()?, &out, cmd),
        Command::Plan(cmd) => commands::plan(&cfg()?, &out, cmd),
        Command::Journal(args) => commands::journal(&cfg()?, &out, args),
        Command::Metrics(args) => commands::metrics(&cfg()?, args),
        Command::Jobs => commands::jobs(&cfg()?, &out),
        Command::Serve(args) => serve::serve(&cfg()?, args),
        Command::Backup(args) => commands::backup(&cfg()?, &out, args),
        Command::Backups(args) => commands::backups(&cfg()?, &out, args),
        Command::Verify(args) => commands::verify(&cfg()?, &out, args),
        Command::Prune(args) => commands::prune(&cfg()?, &out, args),
        Command::Restore(args) => commands::restore(&cfg()?, &out, args),
        Command::Status => commands::status(&cfg()?, &out),
        // Needs no configuration: the database is named on the command line.
        Command::Fence(args) => commands::fence(&out, args),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            let mut script = Vec::new();
            clap_complete::generate(*shell, &mut Cli::command(), "pra", &mut script);
            output::stdout(&String::from_utf8_lossy(&script))?;
            Ok(exit::OK)
        }
        Command::Config => {
            let shown = cfg()?.shown();
            out.print(&shown, || {
                shown
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| match v {
                        serde_json::Value::Null => format!("{k} = (not set)\n"),
                        serde_json::Value::String(s) => format!("{k} = {s}\n"),
                        other => format!("{k} = {other}\n"),
                    })
                    .collect()
            })?;
            Ok(exit::OK)
        }
        Command::Man => {
            use clap::CommandFactory;
            let mut page = Vec::new();
            clap_mangen::Man::new(Cli::command())
                .render(&mut page)
                .map_err(|e| Error::io("render", "the manual page", e))?;
            output::stdout(&String::from_utf8_lossy(&page))?;
            Ok(exit::OK)
        }
        // The drill builds its own configuration in its scratch directory.
        Command::Drill {
            dir,
            quiet,
            store_url,
            job_db,
            remote,
        } => {
            let offsite = if *remote {
                let cfg = cfg()?;
                Some(cfg.offsite.ok_or_else(|| {
                    Error::InvalidArgument(
                        "--remote needs an offsite target: --backup-target or PRA_BACKUP_TARGET"
                            .into(),
                    )
                })?)
            } else {
                None
            };
            drill::run(
                dir.as_deref(),
                store_url.as_deref(),
                job_db.as_deref(),
                offsite.as_ref(),
                *quiet,
                cli.json,
            )
        }
        Command::DrillJob {
            db,
            job,
            ms,
            fence_each,
        } => drill::job(&db.to_string_lossy(), job, *ms, *fence_each),
        Command::DrillApp { db, ms } => drill::app(db, *ms),
    }
}
