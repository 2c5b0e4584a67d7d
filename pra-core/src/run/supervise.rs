//! Supervision of one run: admit it, start its contained process tree, heartbeat, stop it when
//! the site loses the role or the store can no longer vouch for it, and record how it ended —
//! only once its last process is gone.

use std::os::fd::RawFd;

use std::sync::mpsc;
use std::time::Duration;

use super::contain::{self, Containment, Ended, Request, Spec, Tree, boottime};
use super::{Admission, Beat, StopSignal, Timings, heartbeat_loop, register};
use crate::error::{Error, Result};
use crate::fencing::FencingToken;
use crate::guard::{Verdict, check};
use crate::site::SiteId;
use crate::store::{RunId, RunRegistry, RunStart, Store};

/// What to do when the site loses the active role while the command runs. Either way the
/// command is stopped before a drain could count the run lost if the store stops vouching
/// for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnRevoke {
    /// SIGTERM to every process of the run, SIGKILL after the grace.
    #[default]
    Kill,
    /// Let the command finish (the drain waits for it, up to its timeout).
    Wait,
}

/// How to run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The job's name.
    pub job: String,
    /// Heartbeat, grace, store timeout and `lost_after`.
    pub timings: Timings,
    /// What a loss of the role does.
    pub on_revoke: OnRevoke,
    /// Which containment to ask for.
    pub containment: Request,
    /// A descriptor every process of the run inherits (the `--no-overlap` lock).
    pub inherit_fd: Option<RawFd>,
    /// The job's schedule, recorded with the run for missed-run detection.
    pub schedule: Option<crate::schedule::Schedule>,
}

/// Something the caller may want to log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunEvent {
    /// The site is standby: nothing was started.
    Skipped {
        /// The active site, if any.
        active: Option<SiteId>,
        /// The record's token.
        token: FencingToken,
    },
    /// The command started.
    Started {
        /// The run's registration.
        id: RunId,
        /// The token it holds.
        token: FencingToken,
        /// How its processes are held together.
        containment: Containment,
    },
    /// The run is being stopped (SIGTERM now, SIGKILL after the grace), and why.
    Stopping {
        /// Why.
        why: String,
    },
    /// The site lost the role; with `--on-revoke wait` the command goes on.
    Revoked {
        /// The record's token now.
        token: FencingToken,
    },
    /// A heartbeat did not reach the store (the command keeps running until the deadline).
    HeartbeatFailed {
        /// Why.
        error: String,
    },
}

/// What the caller asks of a running run, polled by [`supervise`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// Forward this signal to the command (its main process).
    Signal(i32),
    /// Stop the run, and why: SIGTERM to every process of the run now, SIGKILL after the
    /// grace. The run is recorded as `stopped: WHY`.
    Stop(String),
}

/// Why a started run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndCause {
    /// The command ended by itself (or by a signal forwarded to it).
    Exited,
    /// The site lost the active role.
    Revoked,
    /// The store could no longer vouch for the run (no heartbeat got through, or the
    /// registration is gone): it was stopped before a drain could count it lost.
    SelfFenced,
    /// The caller asked ([`Control::Stop`]).
    Stopped,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunEnd {
    /// Not started: the site is standby.
    Skipped {
        /// The active site, if any.
        active: Option<SiteId>,
        /// The record's token.
        token: FencingToken,
    },
    /// Started and ended; every process of the run is gone.
    Finished {
        /// The registration.
        id: RunId,
        /// The command's wait status, if it was reaped.
        status: Option<i32>,
        /// The outcome recorded in the registry.
        outcome: String,
        /// How the processes were held together.
        containment: Containment,
        /// The site lost the role while it ran.
        revoked: bool,
        /// Why it ended.
        cause: EndCause,
    },
}

impl RunEnd {
    /// The exit code a wrapper should exit with: the command's own, 128+N if a signal killed
    /// it, 0 when skipped.
    pub fn exit_code(&self) -> u8 {
        match self {
            RunEnd::Skipped { .. } => 0,
            RunEnd::Finished { status, .. } => match status {
                Some(st) if libc::WIFEXITED(*st) => libc::WEXITSTATUS(*st) as u8,
                Some(st) if libc::WIFSIGNALED(*st) => {
                    128u8.saturating_add(libc::WTERMSIG(*st) as u8)
                }
                // The init was killed before it could say: the processes were killed.
                Some(_) | None => 128 + libc::SIGKILL as u8,
            },
        }
    }
}

/// Runs `command` as job `opts.job` on `site` if, and only if, the site is active: admission
/// (check + registration under the token, atomically), a contained process tree, heartbeats,
/// self-fencing and the record of the end. `control` is polled for signals to forward to the
/// command and for a request to stop it; `on_event` hears what happens.
///
/// When this returns [`RunEnd::Finished`], no process the command started is alive.
pub fn supervise(
    store: &dyn Store,
    site: &SiteId,
    command: &[std::ffi::OsString],
    opts: &RunOptions,
    control: &dyn Fn() -> Option<Control>,
    on_event: &mut dyn FnMut(RunEvent),
) -> Result<RunEnd> {
    opts.timings.validate()?;
    let registry = store.require_registry()?;
    let token = match check(store, site)? {
        Verdict::Run { token } => token,
        Verdict::Standby { active, token } => {
            return Ok(skip(registry, opts, site, active, token, on_event));
        }
    };
    // The registration counts as the first heartbeat: the deadline runs from before it.
    let registered_from = boottime();
    let spec = Spec {
        argv: command.to_vec(),
        env: vec![
            ("PRA_SITE".into(), site.as_str().into()),
            ("PRA_TOKEN".into(), token.to_string()),
            (
                "PRA_FENCING_HEADER".into(),
                format!("{}: {token}", crate::fencing::HTTP_HEADER),
            ),
            ("PRA_JOB".into(), opts.job.clone()),
        ],
        inherit_fd: opts.inherit_fd,
        grace: opts.timings.revoke_grace,
        term_at: registered_from + opts.timings.term_after(),
    };
    let pending = contain::Tree::prepare(&spec, opts.containment)?;
    let containment = pending.containment();
    let start = RunStart {
        job: opts.job.clone(),
        site: site.clone(),
        token,
        host: crate::site::hostname(),
        pid: std::process::id(),
        containment: Some(containment),
        schedule: opts.schedule.clone(),
    };
    let id = match register(store, &start)? {
        Admission::Admitted { id, .. } => id,
        // The record moved between the check and the registration: standby after all. The
        // pending init is dropped: the command never started.
        Admission::Standby { active, token } => {
            drop(pending);
            return Ok(skip(registry, opts, site, active, token, on_event));
        }
    };
    let tree = match pending.start() {
        Ok(t) => t,
        Err(e) => {
            let _ = registry.run_finish(id, None, &format!("failed to start: {e}"));
            return Err(e);
        }
    };
    on_event(RunEvent::Started {
        id,
        token,
        containment,
    });
    let (ended, revoked, stop_why, asked) = watch(
        store,
        site,
        token,
        id,
        &tree,
        opts,
        registered_from,
        control,
        on_event,
    );
    if let Some(errno) = ended.exec_errno {
        let e = std::io::Error::from_raw_os_error(errno);
        let _ = registry.run_finish(id, None, &format!("failed to start: {e}"));
        return Err(Error::io("start", &command[0], e));
    }
    let status = ended.status;
    if ended.self_fenced && stop_why.is_none() && !revoked {
        // The init's own deadline (the same as the watch's) came first, and the run ended
        // before the watch looked: say why, as the watch would have.
        on_event(RunEvent::Stopping {
            why: "no heartbeat reached the store in time; stopped before a drain may count it as lost"
                .into(),
        });
    }
    let (cause, outcome) = match (&stop_why, revoked, &asked) {
        (Some(why), _, _) if ended.self_fenced || !revoked => {
            (EndCause::SelfFenced, format!("self-fenced: {why}"))
        }
        (_, true, _) => (EndCause::Revoked, "revoked".to_string()),
        _ if ended.self_fenced => (
            EndCause::SelfFenced,
            "self-fenced: no heartbeat reached the store in time".into(),
        ),
        (_, _, Some(why)) => (EndCause::Stopped, format!("stopped: {why}")),
        _ => (
            EndCause::Exited,
            match status {
                Some(st) if libc::WIFEXITED(st) => format!("exited {}", libc::WEXITSTATUS(st)),
                Some(st) if libc::WIFSIGNALED(st) => {
                    format!("killed by signal {}", libc::WTERMSIG(st))
                }
                _ => "killed".to_string(),
            },
        ),
    };
    let code = if libc::WIFEXITED(status.unwrap_or(0)) && status.is_some() {
        Some(libc::WEXITSTATUS(status.unwrap_or(0)))
    } else {
        None
    };
    if let Err(e) = registry.run_finish(id, code, &outcome) {
        tracing::warn!(error = %e, "could not record the end of the run");
    }
    Ok(RunEnd::Finished {
        id,
        status,
        outcome,
        containment,
        revoked,
        cause,
    })
}

fn skip(
    registry: &dyn RunRegistry,
    opts: &RunOptions,
    site: &SiteId,
    active: Option<SiteId>,
    token: FencingToken,
    on_event: &mut dyn FnMut(RunEvent),
) -> RunEnd {
    if let Err(e) = registry.note_skip(&opts.job, site) {
        tracing::warn!(error = %e, "could not count the skip");
    }
    on_event(RunEvent::Skipped {
        active: active.clone(),
        token,
    });
    RunEnd::Skipped { active, token }
}

/// Heartbeats on a thread; on this one, waits for the tree and stops it when it must.
#[allow(clippy::too_many_arguments)]
fn watch(
    store: &dyn Store,
    site: &SiteId,
    token: FencingToken,
    id: RunId,
    tree: &Tree,
    opts: &RunOptions,
    registered_from: Duration,
    control: &dyn Fn() -> Option<Control>,
    on_event: &mut dyn FnMut(RunEvent),
) -> (Ended, bool, Option<String>, Option<String>) {
    let t = opts.timings;
    let stop = StopSignal::default();
    let (tx, rx) = mpsc::channel::<Beat>();
    std::thread::scope(|scope| {
        scope.spawn(|| {
            heartbeat_loop(store, site, id, token, t.heartbeat, &stop, |beat| {
                if let Beat::Ok(started) = beat {
                    // The init's deadline moves with every beat the store accepted.
                    tree.extend(started + t.term_after());
                }
                tx.send(beat).is_ok()
            });
        });
        let mut last_ok = registered_from;
        let mut revoked = false;
        let mut stop_why: Option<String> = None;
        let mut stopping_since: Option<Duration> = None;
        let mut asked: Option<String> = None;
        let ended = loop {
            match tree.try_wait() {
                Ok(Some(e)) => break e,
                Ok(None) => {}
                Err(_) => break tree.wait_blocking(),
            }
            while let Ok(b) = rx.try_recv() {
                match b {
                    Beat::Ok(s) => last_ok = last_ok.max(s),
                    Beat::Gone(e) => {
                        if stopping_since.is_none() {
                            let why =
                                format!("the store no longer has the run's registration ({e})");
                            on_event(RunEvent::Stopping { why: why.clone() });
                            stop_why = Some(why);
                            tree.terminate();
                            stopping_since = Some(boottime());
                        }
                    }
                    Beat::Failed(error) => on_event(RunEvent::HeartbeatFailed { error }),
                    Beat::RoleLost(now) => {
                        revoked = true;
                        on_event(RunEvent::Revoked { token: now });
                        if opts.on_revoke == OnRevoke::Kill && stopping_since.is_none() {
                            on_event(RunEvent::Stopping {
                                why: format!(
                                    "{site} lost the active role (now token {now}) while it ran"
                                ),
                            });
                            tree.terminate();
                            stopping_since = Some(boottime());
                        }
                    }
                }
            }
            while let Some(c) = control() {
                match c {
                    Control::Signal(sig) => tree.signal(sig),
                    Control::Stop(why) => {
                        if stopping_since.is_none() {
                            on_event(RunEvent::Stopping { why: why.clone() });
                            tree.terminate();
                            stopping_since = Some(boottime());
                        }
                        asked.get_or_insert(why);
                    }
                }
            }
            let now = boottime();
            // The init enforces both deadlines by itself; these are for an init that cannot
            // (stopped, or starved): SIGKILL to it ends every process of the run.
            if now >= last_ok + t.kill_after() {
                if stop_why.is_none() {
                    let why = format!(
                        "no heartbeat reached the store for {:?}; past {:?} a drain may count this run as lost",
                        now - last_ok,
                        t.lost_after
                    );
                    on_event(RunEvent::Stopping { why: why.clone() });
                    stop_why = Some(why);
                }
                tree.kill();
            } else if now >= last_ok + t.term_after() && stop_why.is_none() {
                let why = format!(
                    "no heartbeat reached the store for {:?}; stopping it before a drain may count it as lost",
                    now - last_ok
                );
                on_event(RunEvent::Stopping { why: why.clone() });
                stop_why = Some(why);
            }
            if let Some(since) = stopping_since
                && now >= since + t.revoke_grace + Duration::from_millis(500)
            {
                tree.kill();
            }
            // Wakes at once when the run ends; otherwise looks again at beats and controls.
            tree.wait_exit(Duration::from_millis(10));
        };
        stop.stop();
        (ended, revoked, stop_why, asked)
    })
}
