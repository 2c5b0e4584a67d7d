//! `pra run`: the cron wrapper. Runs a command only on the active site, registers the run,
//! heartbeats, and stops the command if the site loses the active role while it runs, or if the
//! store can no longer vouch for the run before a drain would stop waiting for it.

use std::ffi::CString;
use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::path::PathBuf;

use pra_core::run::{self, ContainmentRequest, RunEnd, RunEvent, RunOptions};
use pra_core::{Error, SiteId};

use crate::config::Config;
use crate::exit;

/// What to do when the site loses the active role while the command runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnRevoke {
    /// SIGTERM, then SIGKILL after the grace period.
    Kill,
    /// Let the command finish; the revocation is recorded.
    Wait,
}

/// Which containment to ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ContainmentArg {
    /// The strongest available.
    Auto,
    /// A PID namespace (user namespace too when unprivileged), or refuse.
    Namespace,
    /// Process group and subreaper only.
    ProcessGroup,
}

impl From<ContainmentArg> for ContainmentRequest {
    fn from(a: ContainmentArg) -> Self {
        match a {
            ContainmentArg::Auto => ContainmentRequest::Auto,
            ContainmentArg::Namespace => ContainmentRequest::Strict,
            ContainmentArg::ProcessGroup => ContainmentRequest::ProcessGroup,
        }
    }
}

/// `pra run` arguments.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The job's name: the same on both sites (letters, digits, '.', '_', '-').
    #[arg(long)]
    pub job: String,
    /// Exit 75 instead of 0 when skipped because this site is standby.
    #[arg(long)]
    pub strict: bool,
    /// Refuse to start while the same job still runs on this host (exit 76), like `flock -n`.
    #[arg(long)]
    pub no_overlap: bool,
    /// What to do when this site loses the active role while the command runs.
    #[arg(long, value_enum, default_value = "kill")]
    pub on_revoke: OnRevoke,
    /// Print the skip line on stderr too (by default it goes to syslog only, so cron mails nothing).
    #[arg(long)]
    pub verbose: bool,
    /// How the command's processes are held together: `auto` (a PID namespace where the kernel
    /// allows it, else the process group), `namespace` (refuse otherwise), `process-group`.
    #[arg(long, value_enum, default_value = "auto")]
    pub containment: ContainmentArg,
    /// Refuse to run (exit 11) unless every process of the run is guaranteed to die with it
    /// (same as `--containment namespace`).
    #[arg(long)]
    pub strict_containment: bool,
    /// The job's schedule, for missed-run detection (`pra jobs`, metrics): an interval (5m,
    /// 300s, 2h, 1d) as in its crontab line. The store keeps the latest declared.
    #[arg(long, value_name = "INTERVAL", conflicts_with = "cron")]
    pub every: Option<String>,
    /// The job's schedule as a cron expression (five fields, quoted: "*/5 * * * *"), evaluated in
    /// the local time zone, as cron does.
    #[arg(long, value_name = "EXPR")]
    pub cron: Option<String>,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    pub command: Vec<std::ffi::OsString>,
}

impl RunArgs {
    /// The declared schedule, if any (a bad one is an error before anything runs).
    fn schedule(&self) -> Result<Option<pra_core::schedule::Schedule>, Error> {
        match (&self.every, &self.cron) {
            (Some(every), _) => Ok(Some(format!("every {every}").parse()?)),
            (None, Some(cron)) => Ok(Some(format!("cron {cron}").parse()?)),
            (None, None) => Ok(None),
        }
    }
}

fn validate_job(job: &str) -> pra_core::Result<()> {
    let ok = (1..=64).contains(&job.len())
        && job
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok && !job.starts_with('.') {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "invalid job name {job:?}: 1-64 of letters, digits, '.', '_', '-'"
        )))
    }
}

/// Checks the job's name and finds this host's site: what `pra run` and `pra follow` need
/// before anything else.
pub(crate) fn job_site(cfg: &Config, job: &str) -> Result<SiteId, Error> {
    validate_job(job)?;
    cfg.this_site()
}

/// Opens the store of jobs, which must keep a run registry.
pub(crate) fn open_job_store(cfg: &Config) -> Result<Box<dyn pra_core::Store>, Error> {
    cfg.open_store_for(pra_core::store::Needs {
        registry: true,
        ..Default::default()
    })
}

/// One line to syslog (facility cron), and to stderr when asked or when stderr is a terminal.
pub(crate) fn log_line(msg: &str, to_stderr: bool) {
    // SAFETY: isatty only inspects the descriptor.
    if to_stderr || unsafe { libc::isatty(2) } == 1 {
        eprintln!("pra: {msg}");
    }
    if let Ok(c) = CString::new(msg.replace('%', "%%")) {
        // SAFETY: constant NUL-terminated identifiers and format; `c` outlives the call.
        unsafe {
            libc::openlog(c"pra".as_ptr(), libc::LOG_PID, libc::LOG_CRON);
            libc::syslog(libc::LOG_INFO, c"%s".as_ptr(), c.as_ptr());
        }
    }
}

/// Runs the wrapper; returns the process exit code.
pub fn run(cfg: &Config, args: &RunArgs) -> Result<u8, Error> {
    let site = job_site(cfg, &args.job)?;
    let schedule = args.schedule()?;
    let store = open_job_store(cfg)?;
    let overlap_lock = if args.no_overlap {
        let (f, path) = open_overlap_lock(cfg, &args.job)?;
        match f.try_lock() {
            Ok(()) => Some(f),
            Err(std::fs::TryLockError::WouldBlock) => {
                log_line(
                    &format!(
                        "job {} not started: it is still running on this host (--no-overlap)",
                        args.job
                    ),
                    args.verbose,
                );
                return Ok(exit::RUN_BUSY);
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(Error::io("lock", path, e)),
        }
    } else {
        None
    };
    let opts = RunOptions {
        job: args.job.clone(),
        timings: cfg.timings(),
        on_revoke: match args.on_revoke {
            OnRevoke::Kill => run::OnRevoke::Kill,
            OnRevoke::Wait => run::OnRevoke::Wait,
        },
        containment: if args.strict_containment {
            ContainmentRequest::Strict
        } else {
            args.containment.into()
        },
        // Every process of the run holds the lock: it is free again only when the last is gone.
        inherit_fd: overlap_lock.as_ref().map(|f| f.as_raw_fd()),
        schedule,
    };
    let signals = forwarded_signals();
    let pending = || {
        signals
            .as_ref()
            .and_then(|s| s.lock().ok()?.pending().next())
            .map(run::Control::Signal)
    };
    let end = run::supervise(
        &*store,
        &site,
        &args.command,
        &opts,
        &pending,
        &mut |event| log_event(&args.job, &site, args.verbose, event),
    );
    drop(overlap_lock);
    let end = match end {
        Ok(end) => end,
        Err(e) => return cannot_start(&args.job, e),
    };
    Ok(match end {
        RunEnd::Skipped { .. } if args.strict => exit::STANDBY_STRICT,
        other => other.exit_code(),
    })
}

/// Logs what a run reported: skips to syslog (and stderr when `verbose`), stops and
/// revocations to both, a weak containment once.
pub(crate) fn log_event(job: &str, site: &SiteId, verbose: bool, event: RunEvent) {
    match event {
        RunEvent::Skipped { active, token } => log_line(
            &format!(
                "job {job} skipped: {site} is standby; active site is {} (token {token})",
                active.as_ref().map_or("NONE", SiteId::as_str)
            ),
            verbose,
        ),
        RunEvent::Started {
            containment, id, ..
        } => {
            tracing::debug!(run = id.0, %containment, "started");
            if !containment.is_strong() {
                log_line(
                    &format!(
                        "job {job}: weak containment ({containment}): a process that leaves the process group survives if pra's init is SIGKILLed"
                    ),
                    verbose,
                );
            }
        }
        RunEvent::Stopping { why } => log_line(&format!("job {job}: stopping it: {why}"), true),
        RunEvent::Revoked { token } => log_line(
            &format!("job {job}: {site} lost the active role (now token {token}) while it ran"),
            true,
        ),
        RunEvent::HeartbeatFailed { error } => tracing::warn!(
            %error,
            "heartbeat failed; the command keeps running until its deadline (its writes are fenced by token)"
        ),
    }
}

/// The shells' codes for a command that cannot be run: 127 not found, 126 not executable;
/// other errors as they are.
pub(crate) fn cannot_start(job: &str, e: Error) -> Result<u8, Error> {
    match e {
        Error::Io {
            op: "start",
            path,
            source,
        } => {
            log_line(
                &format!("job {job}: cannot start {}: {source}", path.display()),
                true,
            );
            Ok(match source.kind() {
                std::io::ErrorKind::NotFound => 127,
                _ => 126,
            })
        }
        e => Err(e),
    }
}

/// The `--no-overlap` lock of `job` for this user, in `lock_dir`. Opened without following a
/// symlink and only if it is a regular file of this user: in a shared directory such as /tmp,
/// another user could otherwise point it at a file of ours, or hold it to block our job.
fn open_overlap_lock(cfg: &Config, job: &str) -> Result<(std::fs::File, PathBuf), Error> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    let path = cfg.lock_dir.join(format!("pra-run-{uid}-{job}.lock"));
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(|e| Error::io("open", &path, e))?;
    let m = f.metadata().map_err(|e| Error::io("stat", &path, e))?;
    if !m.is_file() || m.uid() != uid {
        return Err(Error::InvalidArgument(format!(
            "{} is not a regular file of uid {uid}: refusing it as the --no-overlap lock (set lock_dir to a directory only pra's user can write)",
            path.display()
        )));
    }
    Ok((f, path))
}

/// SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 to the wrapper are forwarded to the
/// command.
pub(crate) fn forwarded_signals() -> Option<std::sync::Mutex<signal_hook::iterator::Signals>> {
    use signal_hook::consts::signal::{SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2};
    signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2])
        .ok()
        .map(std::sync::Mutex::new)
}
