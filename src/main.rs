//! The `pra` command line: a thin front end over pra-core. Logic lives in pra-core; this crate
//! parses arguments and configuration, prints, and maps errors to the exit codes of [`exit`].

mod commands;
mod config;
mod drill;
mod exit;
mod follow;
mod run;

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
    /// Print the audit journal, or check its hash chain.
    Journal {
        /// Check the hash chain instead of printing the journal.
        #[arg(long)]
        verify: bool,
    },
    /// Prometheus metrics, for node_exporter's textfile collector.
    Metrics,
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
        /// Upload the database-loss scenario's last backup to the offsite target
        /// (--backup-target / PRA_BACKUP_TARGET / backup_target, with its endpoint and keys) and
        /// restore from there. The target should be a scratch prefix.
        #[arg(long)]
        remote: bool,
    },
    /// (drill helper) One run of the drill's cron job.
    #[command(name = "__drill-job", hide = true)]
    DrillJob {
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
    match dispatch(&cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("pra: {e}");
            ExitCode::from(exit::for_error(&e))
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
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
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
        Command::Journal { verify } => commands::journal(&cfg()?, &out, *verify),
        Command::Metrics => commands::metrics(&cfg()?),
        Command::Backup(args) => commands::backup(&cfg()?, &out, args),
        Command::Backups(args) => commands::backups(&cfg()?, &out, args),
        Command::Verify(args) => commands::verify(&cfg()?, &out, args),
        Command::Prune(args) => commands::prune(&cfg()?, &out, args),
        Command::Restore(args) => commands::restore(&cfg()?, &out, args),
        Command::Status => commands::status(&cfg()?, &out),
        // The drill builds its own configuration in its scratch directory.
        Command::Drill {
            dir,
            quiet,
            store_url,
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
        } => drill::job(db, job, *ms, *fence_each),
        Command::DrillApp { db, ms } => drill::app(db, *ms),
    }
}
