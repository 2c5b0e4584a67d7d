//! `pra run`: the cron wrapper. Runs a command only on the active site, registers the run,
//! heartbeats, and stops the command if the site loses the active role while it runs, or if the
//! store can no longer vouch for the run before a drain would stop waiting for it.

use std::ffi::CString;
use std::fs::OpenOptions;
use std::process::{Command, ExitStatus};
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use pra_core::store::{RunId, RunStart, Store};
use pra_core::{Error, ErrorKind, SiteId, Verdict};

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
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
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

/// One line to syslog (facility cron), and to stderr when asked or when stderr is a terminal.
fn log_line(msg: &str, to_stderr: bool) {
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
    validate_job(&args.job)?;
    let site = cfg.this_site()?;
    let store = cfg.open_store()?;
    let _overlap_lock = if args.no_overlap {
        let path = cfg.lock_dir.join(format!("pra-run-{}.lock", args.job));
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io("open", &path, e))?;
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
            Err(std::fs::TryLockError::Error(e)) => return Err(Error::io("lock", &path, e)),
        }
    } else {
        None
    };
    let verdict = pra_core::check(&*store, &site)?;
    let token = match verdict {
        Verdict::Run { token } => token,
        Verdict::Standby { active, token } => {
            return Ok(skip(&*store, args, &site, active.as_ref(), token));
        }
    };
    let host = pra_core::site::hostname();
    let start = RunStart {
        job: args.job.clone(),
        site: site.clone(),
        token,
        host,
        pid: std::process::id(),
    };
    let id = match store.run_start(&start) {
        Ok(id) => id,
        // The record moved between the check and the registration: standby after all.
        Err(e) if matches!(e.kind(), ErrorKind::Conflict | ErrorKind::StaleToken) => {
            let now = store.load()?;
            return Ok(skip(&*store, args, &site, now.site.as_ref(), now.token));
        }
        Err(e) => return Err(e),
    };
    supervise(cfg, args, &*store, &site, token, id)
}

fn skip(
    store: &dyn Store,
    args: &RunArgs,
    site: &SiteId,
    active: Option<&SiteId>,
    token: pra_core::FencingToken,
) -> u8 {
    log_line(
        &format!(
            "job {} skipped: {site} is standby; active site is {} (token {token})",
            args.job,
            active.map_or("NONE", SiteId::as_str)
        ),
        args.verbose,
    );
    if let Err(e) = store.note_skip(&args.job, site) {
        tracing::warn!(error = %e, "could not count the skip");
    }
    if args.strict {
        exit::STANDBY_STRICT
    } else {
        exit::OK
    }
}

fn supervise(
    cfg: &Config,
    args: &RunArgs,
    store: &dyn Store,
    site: &SiteId,
    token: pra_core::FencingToken,
    id: RunId,
) -> Result<u8, Error> {
    let mut child = match Command::new(&args.command[0])
        .args(&args.command[1..])
        .env("PRA_SITE", site.as_str())
        .env("PRA_TOKEN", token.to_string())
        .env("PRA_JOB", &args.job)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            let _ = store.run_finish(id, None, &format!("failed to start: {e}"));
            return Err(Error::io("start", &args.command[0], e));
        }
    };
    let pid = Arc::new(AtomicI32::new(child.id() as i32));
    let _forwarder = forward_signals(pid.clone());
    let heartbeat = cfg.heartbeat.to_std().unwrap_or(Duration::from_secs(10));
    let grace = cfg.revoke_grace.to_std().unwrap_or(Duration::from_secs(30));
    let lost_after = cfg.lost_after.to_std().unwrap_or(Duration::from_secs(60));
    // Past `lost_after` without a heartbeat, the drain stops waiting for this run (on etcd its
    // lease expires). Self-fence early enough that the command is gone by then: a heartbeat
    // interval and a store call's timeout to notice, then SIGTERM and the grace, all fit before
    // the deadline (or stop at the first missed beat when they cannot).
    let store_timeout = cfg.store_timeout.to_std().unwrap_or(Duration::from_secs(5));
    let self_fence_after = lost_after
        .saturating_sub(grace)
        .saturating_sub(heartbeat)
        .saturating_sub(store_timeout)
        .max(heartbeat);
    let mut last_beat_ok = Instant::now();
    let mut next_beat = Instant::now() + heartbeat;
    let mut revoked_at: Option<Instant> = None;
    let mut killed = false;
    let status: ExitStatus = loop {
        if let Some(status) = child
            .try_wait()
            .map_err(|e| Error::io("wait for", &args.command[0], e))?
        {
            break status;
        }
        let now = Instant::now();
        if now >= next_beat {
            next_beat = now + heartbeat;
            // Why the command must stop, if it must: the store can no longer vouch for the run,
            // or the site lost the active role.
            let mut stop = match store.run_heartbeat(id) {
                Ok(()) => {
                    last_beat_ok = now;
                    None
                }
                // The registration is gone (its lease expired): nothing holds the drain back.
                Err(e) if e.kind() == ErrorKind::NotFound => Some(format!(
                    "stopping it, as the store can no longer vouch for it: {e}"
                )),
                Err(e) if now.duration_since(last_beat_ok) >= self_fence_after => Some(format!(
                    "stopping it, as the store can no longer vouch for it: no heartbeat reached the store for {:?} ({e}); past {:?} the drain counts this run as lost",
                    now.duration_since(last_beat_ok),
                    lost_after
                )),
                Err(e) => {
                    tracing::warn!(error = %e, "heartbeat failed; the command keeps running for now (its writes are fenced by token)");
                    None
                }
            };
            if stop.is_none() && revoked_at.is_none() {
                stop = match pra_core::check(store, site) {
                    Ok(Verdict::Run { token: t }) if t == token => None,
                    Ok(v) => Some(format!(
                        "{site} lost the active role (now token {}) while it ran",
                        v.token()
                    )),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot re-check the active site; the command keeps running");
                        None
                    }
                };
            }
            if let (Some(why), None) = (stop, revoked_at) {
                log_line(&format!("job {}: {why}", args.job), true);
                if args.on_revoke == OnRevoke::Kill {
                    signal(&pid, libc::SIGTERM);
                }
                revoked_at = Some(now);
            }
        }
        if let Some(at) = revoked_at
            && args.on_revoke == OnRevoke::Kill
            && !killed
            && now.duration_since(at) >= grace
        {
            signal(&pid, libc::SIGKILL);
            killed = true;
        }
        std::thread::sleep(Duration::from_millis(20).min(heartbeat));
    };
    pid.store(0, Ordering::SeqCst);
    use std::os::unix::process::ExitStatusExt;
    let (code, outcome) = match (status.code(), status.signal()) {
        (Some(c), _) => (c.clamp(0, 255) as u8, format!("exited {c}")),
        (None, Some(sig)) => (
            128u8.saturating_add(sig as u8),
            format!("killed by signal {sig}"),
        ),
        (None, None) => (exit::code(ErrorKind::Internal), "unknown end".to_string()),
    };
    let outcome = if revoked_at.is_some() {
        "revoked".to_string()
    } else {
        outcome
    };
    if let Err(e) = store.run_finish(id, status.code(), &outcome) {
        tracing::warn!(error = %e, "could not record the end of the run");
    }
    Ok(code)
}

fn signal(pid: &AtomicI32, sig: i32) {
    let p = pid.load(Ordering::SeqCst);
    if p > 0 {
        // SAFETY: kill has no memory effects; p is our child's pid until we reap it.
        unsafe { libc::kill(p, sig) };
    }
}

/// Forwards SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 to the child.
fn forward_signals(pid: Arc<AtomicI32>) -> Option<std::thread::JoinHandle<()>> {
    use signal_hook::consts::signal::{SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2};
    let mut signals =
        signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2])
            .ok()?;
    Some(std::thread::spawn(move || {
        for sig in signals.forever() {
            signal(&pid, sig);
        }
    }))
}
