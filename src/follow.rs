//! `pra follow`: runs a long-running command (`cron -f`, a worker) only while this site holds
//! the active role; the use case is `pra_core::run::follow`, this is its command line.

use std::time::Duration;

use pra_core::run::{self, Backoff, Control, FollowEvent, FollowOptions, RunOptions};
use pra_core::{Error, SiteId};

use crate::config::Config;
use crate::run::{ContainmentArg, cannot_start, forwarded_signals, log_event, log_line};

/// `pra follow` arguments.
#[derive(Debug, clap::Args)]
pub struct FollowArgs {
    /// The job's name: the same on both sites (letters, digits, '.', '_', '-').
    #[arg(long)]
    pub job: String,
    /// How the command's processes are held together (as `pra run --containment`).
    #[arg(long, value_enum, default_value = "auto")]
    pub containment: ContainmentArg,
    /// Refuse to run (exit 11) unless every process of the command is guaranteed to die with
    /// it (same as `--containment namespace`).
    #[arg(long)]
    pub strict_containment: bool,
    /// Seconds before the first restart of a command that died while the site was active
    /// (the delay doubles at each quick death).
    #[arg(long, value_name = "SECONDS", default_value_t = run::Backoff::default().initial.as_secs_f64())]
    pub backoff_initial: f64,
    /// The longest restart delay, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = run::Backoff::default().max.as_secs_f64())]
    pub backoff_max: f64,
    /// A run that lasted this many seconds was healthy: the next restart delay is the first.
    #[arg(long, value_name = "SECONDS", default_value_t = run::Backoff::default().healthy_after.as_secs_f64())]
    pub healthy_after: f64,
    /// Print the standby lines on stderr too (they always go to syslog).
    #[arg(long)]
    pub verbose: bool,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    pub command: Vec<std::ffi::OsString>,
}

fn seconds(name: &str, v: f64) -> Result<Duration, Error> {
    Duration::try_from_secs_f64(v)
        .map_err(|_| Error::InvalidArgument(format!("--{name}: {v} is not a number of seconds")))
}

/// Follows the active role until SIGTERM or SIGINT; returns the process exit code.
pub fn follow(cfg: &Config, args: &FollowArgs) -> Result<u8, Error> {
    let timings = cfg.timings();
    let signals = forwarded_signals();
    let next_signal = || {
        signals
            .as_ref()
            .and_then(|s| s.lock().ok()?.pending().next())
    };
    let stops = |sig: i32| sig == libc::SIGTERM || sig == libc::SIGINT;
    let site = crate::run::job_site(cfg, &args.job)?;
    // The follower opens the store itself, and again after a failure: a store that cannot be
    // opened now (etcd down, a SQLite file refused for its mode, a file replaced under it) is
    // waited out like a store that fails later; nothing runs meanwhile.
    let open = || crate::run::open_job_store(cfg);
    let opts = FollowOptions {
        run: RunOptions {
            job: args.job.clone(),
            timings,
            on_revoke: run::OnRevoke::Kill,
            containment: if args.strict_containment {
                run::ContainmentRequest::Strict
            } else {
                args.containment.into()
            },
            inherit_fd: None,
            // A follower runs for good: it has no schedule to miss.
            schedule: None,
        },
        backoff: Backoff {
            initial: seconds("backoff-initial", args.backoff_initial)?,
            max: seconds("backoff-max", args.backoff_max)?,
            healthy_after: seconds("healthy-after", args.healthy_after)?,
        },
        poll: timings.heartbeat,
    };
    // SIGTERM and SIGINT stop the follower; the others go to the command.
    let control = || {
        let sig = next_signal()?;
        Some(match sig {
            sig if stops(sig) => Control::Stop(format!(
                "pra follow received {}",
                if sig == libc::SIGTERM {
                    "SIGTERM"
                } else {
                    "SIGINT"
                }
            )),
            other => Control::Signal(other),
        })
    };
    let job = &args.job;
    let end = run::follow(
        &open,
        &site,
        &args.command,
        &opts,
        &control,
        &mut |e| match e {
            FollowEvent::Standby { active, token } => log_line(
                &format!(
                    "job {job}: waiting: {site} is standby; active site is {} (token {token})",
                    active.as_ref().map_or("NONE", SiteId::as_str)
                ),
                args.verbose,
            ),
            FollowEvent::StoreUnavailable { error } => log_line(
                &format!("job {job}: waiting: the store cannot be read ({error}); not running"),
                true,
            ),
            FollowEvent::Run(run::RunEvent::Started { id, token, .. }) => log_line(
                &format!("job {job}: started (run {}, token {token})", id.0),
                true,
            ),
            FollowEvent::Run(e) => log_event(job, &site, true, e),
            FollowEvent::Ended { id, outcome, ran } => log_line(
                &format!("job {job}: run {} ended after {ran:.1?}: {outcome}", id.0),
                true,
            ),
            FollowEvent::Restarting { delay } => log_line(
                &format!(
                    "job {job}: the command died while {site} is active; restarting in {delay:.1?}"
                ),
                true,
            ),
        },
    );
    match end {
        Ok(()) => Ok(0),
        Err(e) => cannot_start(job, e),
    }
}
