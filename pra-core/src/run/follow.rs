//! `pra follow`: a long-running command (`cron -f`, a worker, a consumer) that runs only while
//! this site holds the active role. Each start is a run like `pra run`'s ([`supervise`]):
//! admitted under the token atomically, contained, heartbeating, stopped before a drain could
//! count it lost. Between runs the follower waits: it reads the record once per `poll` (the
//! heartbeat interval by default) on every store — etcd included, no watch — and does nothing
//! else.
//!
//! What ends a run, and what comes next:
//! - the site lost the role: the tree is stopped (`revoked`); wait for the role to come back;
//! - the store could no longer vouch for the run (`self-fenced: ...`): wait until the store
//!   answers again and the site is still active;
//! - the command died while the site was active: start it again after a back-off that doubles
//!   from [`Backoff::initial`] up to [`Backoff::max`], back to the first after a run that lasted
//!   [`Backoff::healthy_after`];
//! - the caller asked ([`Control::Stop`], SIGTERM): the tree is stopped (`stopped: ...`) and
//!   `follow` returns.
//!
//! The follower opens its store itself, and opens it again after the store failed (a read that
//! could not be made, a run that self-fenced): a store file replaced under it (restored, moved)
//! is refused by the handle that opened the old one, and only a new handle reads the new file.

use std::time::Duration;

use super::contain::boottime;
use super::supervise::{Control, EndCause, RunEnd, RunEvent, RunOptions, supervise};
use crate::error::{Error, Result};
use crate::fencing::FencingToken;
use crate::guard::{Verdict, check};
use crate::site::SiteId;
use crate::store::{RunId, Store};

/// Restart delays of a command that dies while its site is active.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The first delay.
    pub initial: Duration,
    /// The longest delay.
    pub max: Duration,
    /// A run that lasted this long was healthy: the next delay is `initial` again.
    pub healthy_after: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        use crate::defaults;
        Backoff {
            initial: defaults::FOLLOW_BACKOFF_INITIAL,
            max: defaults::FOLLOW_BACKOFF_MAX,
            healthy_after: defaults::FOLLOW_HEALTHY_AFTER,
        }
    }
}

impl Backoff {
    /// The delay before the next start, given the previous delay (`None`: no death yet) and
    /// how long the run that just died lasted.
    pub fn next(&self, previous: Option<Duration>, ran: Duration) -> Duration {
        match previous {
            Some(d) if ran < self.healthy_after => (d * 2).min(self.max).max(self.initial),
            _ => self.initial.min(self.max),
        }
    }
}

/// How to follow.
#[derive(Debug, Clone)]
pub struct FollowOptions {
    /// The runs' options (`on_revoke` is always [`super::OnRevoke::Kill`]: a follower's
    /// command never ends by itself).
    pub run: RunOptions,
    /// Restart delays.
    pub backoff: Backoff,
    /// How often the record is read while the site is standby or the store is unreachable.
    pub poll: Duration,
}

/// Something the caller may want to log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FollowEvent {
    /// The site is standby: waiting. Reported when the record changes.
    Standby {
        /// The active site, if any.
        active: Option<SiteId>,
        /// The record's token.
        token: FencingToken,
    },
    /// The store cannot be read: waiting (fail closed). Reported once per outage.
    StoreUnavailable {
        /// Why.
        error: String,
    },
    /// What a run reported.
    Run(RunEvent),
    /// A run ended; every process of it is gone.
    Ended {
        /// The registration.
        id: RunId,
        /// The outcome recorded in the registry.
        outcome: String,
        /// How long it ran.
        ran: Duration,
    },
    /// The command died while the site was active: the next start is after `delay`.
    Restarting {
        /// The back-off.
        delay: Duration,
    },
}

/// Runs `command` whenever, and only while, `site` holds the active role, until `control`
/// asks to stop ([`Control::Stop`]; [`Control::Signal`]s are forwarded to a running command
/// and dropped while none runs). Returns once the last run's processes are gone and its end
/// is recorded. `open` opens the store (again after a failure). Errors: the command cannot be
/// started (not found, not executable), the store cannot be opened for a reason waiting will
/// not fix or has no run registry, the options are invalid, or containment was refused; a
/// store that cannot be reached is waited out, never an error.
pub fn follow(
    open: &dyn Fn() -> Result<Box<dyn Store>>,
    site: &SiteId,
    command: &[std::ffi::OsString],
    opts: &FollowOptions,
    control: &dyn Fn() -> Option<Control>,
    on_event: &mut dyn FnMut(FollowEvent),
) -> Result<()> {
    opts.run.timings.validate()?;
    let mut store: Option<Box<dyn Store>> = None;
    let run_opts = RunOptions {
        on_revoke: super::OnRevoke::Kill,
        ..opts.run.clone()
    };
    // The last waiting state reported: each is reported once, until it changes.
    let mut reported: Option<FollowEvent> = None;
    let report = |reported: &mut Option<FollowEvent>,
                  e: FollowEvent,
                  on_event: &mut dyn FnMut(FollowEvent)| {
        if reported.as_ref() != Some(&e) {
            *reported = Some(e.clone());
            on_event(e);
        }
    };
    let mut delay: Option<Duration> = None;
    let mut not_before = Duration::ZERO;
    loop {
        // Waiting: one read of the record per poll, the caller's requests in between.
        let mut next_read = Duration::ZERO;
        let current = loop {
            let now = boottime();
            if now >= next_read.max(not_before) {
                next_read = now + opts.poll;
                if store.is_none() {
                    match open() {
                        Ok(s) => {
                            s.require_registry()?;
                            store = Some(s);
                        }
                        Err(e @ Error::StoreUnavailable { .. }) => report(
                            &mut reported,
                            FollowEvent::StoreUnavailable {
                                error: e.to_string(),
                            },
                            on_event,
                        ),
                        Err(e) => return Err(e),
                    }
                }
                if let Some(s) = store.take() {
                    match check(&*s, site) {
                        Ok(Verdict::Run { .. }) => break s,
                        Ok(Verdict::Standby { active, token }) => {
                            store = Some(s);
                            report(
                                &mut reported,
                                FollowEvent::Standby { active, token },
                                on_event,
                            )
                        }
                        // Dropped: the next poll opens the store again.
                        Err(e) => report(
                            &mut reported,
                            FollowEvent::StoreUnavailable {
                                error: e.to_string(),
                            },
                            on_event,
                        ),
                    }
                }
            }
            while let Some(c) = control() {
                if let Control::Stop(_) = c {
                    return Ok(());
                }
            }
            std::thread::sleep(Duration::from_millis(20).min(opts.poll));
        };
        reported = None;
        let stop_asked = std::cell::Cell::new(false);
        let watched = || {
            let c = control();
            if let Some(Control::Stop(_)) = &c {
                stop_asked.set(true);
            }
            c
        };
        let started = boottime();
        let end = supervise(&*current, site, command, &run_opts, &watched, &mut |e| {
            on_event(FollowEvent::Run(e))
        });
        // Kept for the next wait, unless the store failed the run: then it is opened again.
        let failed = matches!(
            end,
            Ok(RunEnd::Finished {
                cause: EndCause::SelfFenced,
                ..
            }) | Err(Error::StoreUnavailable { .. } | Error::Conflict { .. })
        );
        if !failed {
            store = Some(current);
        }
        let ran = boottime().saturating_sub(started);
        match end {
            Ok(RunEnd::Skipped { .. }) => {}
            Ok(RunEnd::Finished {
                id, outcome, cause, ..
            }) => {
                on_event(FollowEvent::Ended { id, outcome, ran });
                match cause {
                    EndCause::Stopped => return Ok(()),
                    _ if stop_asked.get() => return Ok(()),
                    EndCause::Exited => {
                        let d = opts.backoff.next(delay, ran);
                        delay = Some(d);
                        not_before = boottime() + d;
                        on_event(FollowEvent::Restarting { delay: d });
                    }
                    EndCause::Revoked | EndCause::SelfFenced => {}
                }
            }
            // The store failed between the check and the start: wait it out, one poll at least
            // (a store that answers reads but refuses the registration must not be hammered).
            Err(e @ (Error::StoreUnavailable { .. } | Error::Conflict { .. })) => {
                not_before = boottime() + opts.poll;
                report(
                    &mut reported,
                    FollowEvent::StoreUnavailable {
                        error: e.to_string(),
                    },
                    on_event,
                )
            }
            Err(e) => return Err(e),
        }
        if stop_asked.get() {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_max_and_resets_after_a_healthy_run() {
        let s = Duration::from_secs;
        let b = Backoff {
            initial: s(1),
            max: s(5),
            healthy_after: s(30),
        };
        let mut d = None;
        let mut seen = Vec::new();
        for _ in 0..5 {
            let next = b.next(d, s(1));
            seen.push(next.as_secs());
            d = Some(next);
        }
        assert_eq!(seen, [1, 2, 4, 5, 5]);
        assert_eq!(b.next(d, s(30)), s(1), "a healthy run resets the delay");
    }
}
