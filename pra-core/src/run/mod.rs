//! Runs of jobs: admission (the guard's check and the registration, atomically), the timing
//! rules that make self-fencing finish before a drain gives up on a run, liveness judged on the
//! observer's own clock, drains (the plan's and every manual flip's), and the supervision of a
//! contained process tree ([`supervise`]), and a command that runs whenever the site is active
//! ([`follow`]).
//!
//! The promise: a job never runs on two sites at once. A run's processes are contained
//! ([`contain`]); a run is alive for a drain while its heartbeat counter moves (or its etcd
//! lease lives); the wrapper stops its command — whatever `--on-revoke` says — before a drain
//! could count it lost ([`Timings`]).

pub mod contain;
mod drain;
mod follow;
mod inprocess;
mod supervise;

use std::collections::HashMap;
use std::time::Duration;

pub use contain::{Containment, Request as ContainmentRequest};
pub use drain::{ActivateOptions, Drained, Drainer, activate, describe_runs};
pub use follow::{Backoff, FollowEvent, FollowOptions, follow};
pub use inprocess::{Follower, Registered, Started};
pub use supervise::{Control, EndCause, OnRevoke, RunEnd, RunEvent, RunOptions, supervise};

use crate::error::{Error, Result};
use crate::fencing::FencingToken;
use crate::guard::{Verdict, check};
use crate::site::SiteId;
pub use crate::store::Admission;
use crate::store::{Heartbeat, Pulse, RunId, RunRecord, RunStart, Store, UnfinishedRun};

/// The timings of runs and drains, and the inequality that makes them safe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timings {
    /// How often a run heartbeats and re-checks the active site.
    pub heartbeat: Duration,
    /// How long a drain waits for a silent run before counting it lost (on etcd, the TTL of
    /// the run's lease).
    pub lost_after: Duration,
    /// Between SIGTERM and SIGKILL.
    pub revoke_grace: Duration,
    /// The deadline of one store call.
    pub store_timeout: Duration,
}

impl Timings {
    /// Checks `revoke_grace + heartbeat + store_timeout < lost_after` (so that a run cut off
    /// from the store is stopped, SIGKILL included, before any drain counts it lost, with one
    /// heartbeat and one store call of slack) and `heartbeat <= lost_after / 2` (so that one
    /// late heartbeat does not lose an etcd lease). The error names the keys.
    pub fn validate(&self) -> Result<()> {
        let s = |d: Duration| d.as_secs_f64();
        if self.heartbeat.is_zero() || self.lost_after.is_zero() {
            return Err(Error::InvalidArgument(
                "heartbeat_seconds and lost_after_seconds must be positive".into(),
            ));
        }
        if self.revoke_grace + self.heartbeat + self.store_timeout >= self.lost_after {
            return Err(Error::InvalidArgument(format!(
                "unsafe timings: revoke_grace_seconds ({}) + heartbeat_seconds ({}) + store_timeout_seconds ({}) must be less than lost_after_seconds ({}); otherwise a run cut off from the store could still be running when a drain counts it lost",
                s(self.revoke_grace),
                s(self.heartbeat),
                s(self.store_timeout),
                s(self.lost_after)
            )));
        }
        if self.heartbeat * 2 > self.lost_after {
            return Err(Error::InvalidArgument(format!(
                "heartbeat_seconds ({}) must be at most half of lost_after_seconds ({})",
                s(self.heartbeat),
                s(self.lost_after)
            )));
        }
        Ok(())
    }

    /// Half the margin the inequality leaves: what separates the SIGKILL from the earliest
    /// moment a drain may count the run lost.
    fn slack(&self) -> Duration {
        self.lost_after
            .saturating_sub(self.revoke_grace + self.heartbeat + self.store_timeout)
            / 2
    }

    /// After the start of the last heartbeat the store accepted, when the run's processes get
    /// SIGTERM if no other heartbeat got through.
    pub fn term_after(&self) -> Duration {
        self.heartbeat + self.store_timeout + self.slack()
    }

    /// After the start of the last heartbeat the store accepted, when they get SIGKILL:
    /// `lost_after - slack`, before any drain may count the run lost.
    pub fn kill_after(&self) -> Duration {
        self.term_after() + self.revoke_grace
    }

    /// The timings of an in-process run ([`Registered`]) on a store opened with `lost_after`
    /// and `store_timeout`: a heartbeat every `lost_after / 6` (at most 10 s) unless given, and
    /// a quarter of `lost_after` for the job to stop once told.
    pub fn in_process(
        lost_after: Duration,
        store_timeout: Duration,
        heartbeat: Option<Duration>,
    ) -> Timings {
        Timings {
            heartbeat: heartbeat.unwrap_or((lost_after / 6).min(Duration::from_secs(10))),
            lost_after,
            revoke_grace: lost_after / 4,
            store_timeout,
        }
    }
}

impl Default for Timings {
    fn default() -> Self {
        use crate::defaults;
        Timings {
            heartbeat: defaults::HEARTBEAT,
            lost_after: defaults::LOST_AFTER,
            revoke_grace: defaults::REVOKE_GRACE,
            store_timeout: defaults::STORE_TIMEOUT,
        }
    }
}

/// When a run ended, for reports only: its recorded end; for an unfinished run silent for
/// longer than `lost_after` on its writer's clock, its last heartbeat; `None` while it counts as
/// running. Never used for safety: drains judge liveness with [`Liveness`], on their own clock.
pub fn reported_end(
    run: &RunRecord,
    now: chrono::DateTime<chrono::Utc>,
    lost_after: chrono::Duration,
) -> Option<chrono::DateTime<chrono::Utc>> {
    match run.finished_at {
        Some(end) => Some(end),
        None if now - run.heartbeat_at > lost_after => Some(run.heartbeat_at),
        None => None,
    }
}

/// Judges which unfinished runs are alive, on the observer's own monotonic clock: a run whose
/// heartbeat counter has not moved for `lost_after` since this observer first saw its current
/// value is lost. No timestamp written by another host is compared, so no clock skew can make
/// a live run look lost. Runs on a lease (etcd) are judged by the server.
///
/// A fresh `Liveness` counts every counter-based run as alive: it has not watched them yet.
#[derive(Debug, Clone)]
pub struct Liveness {
    lost_after: Duration,
    seen: HashMap<RunId, (Pulse, Duration)>,
}

/// What [`Liveness::judge`] decided.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Judgement {
    /// Runs to wait for.
    pub alive: Vec<RunRecord>,
    /// Runs silent for `lost_after` (or whose lease expired), with the pulse they were judged
    /// on.
    pub lost: Vec<UnfinishedRun>,
}

impl Liveness {
    /// A judge that counts a run lost after `lost_after` without a heartbeat.
    pub fn new(lost_after: Duration) -> Self {
        Liveness {
            lost_after,
            seen: HashMap::new(),
        }
    }

    /// Judges `runs` as observed at `now` (a reading of the observer's monotonic clock).
    pub fn judge(&mut self, now: Duration, runs: Vec<UnfinishedRun>) -> Judgement {
        let mut out = Judgement::default();
        let listed: Vec<RunId> = runs.iter().map(|u| u.run.id).collect();
        for u in runs {
            let alive = match u.pulse {
                Pulse::Lease { alive } => alive,
                Pulse::Counter { .. } => match self.seen.get(&u.run.id) {
                    Some((pulse, since)) if *pulse == u.pulse => {
                        now.saturating_sub(*since) < self.lost_after
                    }
                    Some(_) | None => {
                        self.seen.insert(u.run.id, (u.pulse, now));
                        true
                    }
                },
            };
            if alive {
                out.alive.push(u.run);
            } else {
                out.lost.push(u);
            }
        }
        self.seen.retain(|id, _| listed.contains(id));
        out
    }
}

/// What one heartbeat of a run found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Beat {
    /// The store accepted a heartbeat that started at this [`contain::boottime`]: no drain can
    /// count the run lost before that time + `lost_after`.
    Ok(Duration),
    /// The store no longer has the registration (counted lost, or its lease expired).
    Gone(String),
    /// The heartbeat did not reach the store.
    Failed(String),
    /// The site lost the active role: the record's token now. Reported once.
    RoleLost(FencingToken),
}

/// A request to stop that a waiting thread hears at once (not at its next poll).
#[derive(Debug, Default)]
pub(crate) struct StopSignal {
    stopped: std::sync::Mutex<bool>,
    wake: std::sync::Condvar,
}

impl StopSignal {
    /// Asks every waiter to stop.
    pub(crate) fn stop(&self) {
        *self.stopped.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.wake.notify_all();
    }

    /// Waits until [`contain::boottime`] reaches `deadline` or a stop is asked: `true` when
    /// asked. The condition variable's clock does not count a suspended host's time, so each
    /// wait is capped at 20 ms and the deadline is read again on boottime.
    pub(crate) fn wait_until(&self, deadline: Duration) -> bool {
        let mut stopped = self.stopped.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if *stopped {
                return true;
            }
            let now = contain::boottime();
            if now >= deadline {
                return false;
            }
            let wait = (deadline - now).min(Duration::from_millis(20));
            stopped = match self.wake.wait_timeout(stopped, wait) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
    }
}

/// Heartbeats run `id` every `heartbeat` (on [`contain::boottime`], which counts a suspended
/// host's time) until `stop` is asked, re-checking after every accepted beat that `site` still
/// holds `token`. Each finding goes to `report`; the loop ends when it returns `false`. The one
/// heartbeat of `pra run`'s supervision and of in-process runs.
pub(crate) fn heartbeat_loop(
    store: &dyn Store,
    site: &SiteId,
    id: RunId,
    token: FencingToken,
    heartbeat: Duration,
    stop: &StopSignal,
    mut report: impl FnMut(Beat) -> bool,
) {
    let registry = match store.require_registry() {
        Ok(r) => r,
        Err(e) => {
            report(Beat::Failed(e.to_string()));
            return;
        }
    };
    let mut role_lost = false;
    loop {
        if stop.wait_until(contain::boottime() + heartbeat) {
            return;
        }
        let started = contain::boottime();
        let beat = match registry.run_heartbeat(id) {
            Ok(Heartbeat::Alive) => Beat::Ok(started),
            Ok(Heartbeat::Expired) => Beat::Gone(format!(
                "the registration of run {} in {} has ended (counted lost, or its lease expired)",
                id.0,
                store.url()
            )),
            Err(e) => Beat::Failed(e.to_string()),
        };
        let accepted = matches!(beat, Beat::Ok(_));
        if !report(beat) {
            return;
        }
        if accepted && !role_lost {
            match check(store, site) {
                Ok(Verdict::Run { token: now }) if now == token => {}
                Ok(v) => {
                    role_lost = true;
                    if !report(Beat::RoleLost(v.token())) {
                        return;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot re-check the active site"),
            }
        }
    }
}

/// Checks that `site` is active and registers the run under its token, atomically (the store
/// refuses the registration if the record moved since the check). A flip that wins the race
/// makes this [`Admission::Standby`], never an error.
pub fn admit(
    store: &dyn Store,
    site: &SiteId,
    job: &str,
    containment: Option<Containment>,
) -> Result<Admission> {
    let token = match check(store, site)? {
        Verdict::Run { token } => token,
        Verdict::Standby { active, token } => return Ok(Admission::Standby { active, token }),
    };
    register(
        store,
        &RunStart {
            job: job.to_string(),
            site: site.clone(),
            token,
            host: crate::site::hostname(),
            pid: std::process::id(),
            containment,
            schedule: None,
        },
    )
}

/// Registers `start`; a registration the store does not admit because the record moved since
/// the check (a newer token, another site) is [`Admission::Standby`].
pub(crate) fn register(store: &dyn Store, start: &RunStart) -> Result<Admission> {
    store.require_registry()?.run_start(start)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    fn run(id: i64, beats: u64) -> UnfinishedRun {
        let now = Utc::now();
        UnfinishedRun {
            run: RunRecord {
                id: RunId(id),
                start: RunStart {
                    job: "j".into(),
                    site: SiteId::new("rbx").unwrap(),
                    token: FencingToken(1),
                    host: "h".into(),
                    pid: 1,
                    containment: None,
                    schedule: None,
                },
                started_at: now,
                heartbeat_at: now,
                beats,
                finished_at: None,
                exit_code: None,
                outcome: None,
            },
            pulse: Pulse::Counter { beats },
        }
    }

    #[test]
    fn a_counter_that_stops_is_lost_only_after_lost_after_on_the_observers_clock() {
        let mut l = Liveness::new(Duration::from_secs(3));
        let s = Duration::from_secs;
        assert_eq!(l.judge(s(100), vec![run(1, 5)]).alive.len(), 1);
        assert_eq!(l.judge(s(102), vec![run(1, 5)]).alive.len(), 1);
        let j = l.judge(s(103), vec![run(1, 5)]);
        assert_eq!((j.alive.len(), j.lost.len()), (0, 1));
    }

    #[test]
    fn a_counter_that_moves_is_alive_whatever_its_timestamps_say() {
        let mut l = Liveness::new(Duration::from_secs(3));
        let s = Duration::from_secs;
        let mut skewed = run(1, 5);
        // Written by a host whose clock is a day behind: irrelevant.
        skewed.run.heartbeat_at -= chrono::Duration::days(1);
        l.judge(s(0), vec![skewed.clone()]);
        for t in 1..20 {
            let mut r = skewed.clone();
            r.pulse = Pulse::Counter { beats: 5 + t };
            assert_eq!(l.judge(s(t * 2), vec![r]).alive.len(), 1);
        }
    }

    #[test]
    fn leases_are_judged_by_the_server() {
        let mut l = Liveness::new(Duration::from_secs(3));
        let mut r = run(1, 0);
        r.pulse = Pulse::Lease { alive: false };
        assert_eq!(l.judge(Duration::ZERO, vec![r.clone()]).lost.len(), 1);
        r.pulse = Pulse::Lease { alive: true };
        assert_eq!(l.judge(Duration::from_secs(1000), vec![r]).alive.len(), 1);
    }

    #[test]
    fn timings_inequality() {
        let t = Timings::default();
        t.validate().unwrap();
        assert!(t.kill_after() < t.lost_after);
        let bad = Timings {
            revoke_grace: Duration::from_secs(50),
            ..t
        };
        let e = bad.validate().unwrap_err().to_string();
        assert!(
            e.contains("revoke_grace_seconds") && e.contains("lost_after_seconds"),
            "{e}"
        );
        let drill = Timings {
            heartbeat: Duration::from_secs(1),
            lost_after: Duration::from_secs(4),
            revoke_grace: Duration::from_secs(1),
            store_timeout: Duration::from_secs(1),
        };
        drill.validate().unwrap();
        assert!(drill.kill_after() < drill.lost_after);
        assert!(drill.term_after() > drill.heartbeat + drill.store_timeout);
    }
}
