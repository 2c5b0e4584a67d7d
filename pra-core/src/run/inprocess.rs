//! A run registered from inside the job's own process (Python's `pra.Guard`, a C program
//! through libpra): admission, heartbeats on a thread, and a flag the job reads to learn that
//! it must stop — the site lost the role, or the store can no longer vouch for the run.
//!
//! pra cannot contain or kill the caller's own process: the job must look at
//! [`Registered::lost`] between units of work and write through the fence
//! ([`crate::Fence`]), which refuses its token once another site was activated.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::contain::boottime;
use super::{Admission, Beat, StopSignal, Timings, admit, heartbeat_loop};
use crate::error::{Error, Result};
use crate::fencing::FencingToken;
use crate::site::SiteId;
use crate::store::{RunId, Store};

#[derive(Debug)]
struct Shared {
    stop: StopSignal,
    lost: Mutex<Option<String>>,
    // The boottime at which the last heartbeat the store accepted started.
    last_ok: Mutex<Duration>,
}

/// A registered in-process run. Dropping it without [`Registered::finish`] records the run as
/// "abandoned".
#[derive(Debug)]
pub struct Registered {
    store: Arc<dyn Store>,
    id: RunId,
    token: FencingToken,
    timings: Timings,
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
    finished: bool,
}

/// The answer of [`Registered::start`].
#[derive(Debug)]
pub enum Started {
    /// Admitted and registered: run the job.
    Admitted(Registered),
    /// Standby (or the record moved between the check and the registration): do not run.
    Standby {
        /// The active site, if any.
        active: Option<SiteId>,
        /// The record's token.
        token: FencingToken,
    },
}

impl Registered {
    /// Checks that `site` is active and registers a run of `job` under its token, atomically;
    /// then heartbeats every `timings.heartbeat` on a thread of its own.
    pub fn start(
        store: Arc<dyn Store>,
        site: &SiteId,
        job: &str,
        timings: Timings,
    ) -> Result<Started> {
        timings.validate()?;
        // Taken before the check: the registration counts as the first heartbeat.
        let registered_from = boottime();
        let (id, token) = match admit(&*store, site, job, None)? {
            Admission::Admitted { id, token } => (id, token),
            Admission::Standby { active, token } => return Ok(Started::Standby { active, token }),
        };
        let shared = Arc::new(Shared {
            stop: StopSignal::default(),
            lost: Mutex::new(None),
            last_ok: Mutex::new(registered_from),
        });
        let thread = {
            let (store, shared, site) = (store.clone(), shared.clone(), site.clone());
            std::thread::Builder::new()
                .name("pra-heartbeat".into())
                .spawn(move || beat(&*store, &site, id, token, timings, &shared))
                .ok()
        };
        Ok(Started::Admitted(Registered {
            store,
            id,
            token,
            timings,
            shared,
            thread,
            finished: false,
        }))
    }

    /// The registration.
    pub fn id(&self) -> RunId {
        self.id
    }

    /// The token the run holds: carry it into every fenced write.
    pub fn token(&self) -> FencingToken {
        self.token
    }

    /// Why the job must stop now, if it must: the site lost the active role, the store dropped
    /// the registration, or no heartbeat got through for long enough that a drain may soon
    /// count the run lost. `None`: carry on.
    pub fn lost(&self) -> Option<String> {
        if let Some(why) = self
            .shared
            .lost
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            return Some(why);
        }
        let last_ok = *self
            .shared
            .last_ok
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let silent = boottime().saturating_sub(last_ok);
        (silent >= self.timings.term_after()).then(|| {
            format!(
                "no heartbeat reached the store for {silent:?}: past {:?} a drain may count this run as lost",
                self.timings.lost_after
            )
        })
    }

    /// Records the end of the run.
    pub fn finish(mut self, exit_code: Option<i32>, outcome: &str) -> Result<()> {
        self.stop_thread();
        self.finished = true;
        // `false`: counted lost by a drain already, the end is recorded there.
        self.store
            .require_registry()?
            .run_finish(self.id, exit_code, outcome)
            .map(|_| ())
    }

    fn stop_thread(&mut self) {
        self.shared.stop.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.stop_thread();
        if !self.finished
            && let Some(registry) = self.store.registry()
        {
            let _ = registry.run_finish(self.id, None, "abandoned");
        }
    }
}

fn beat(
    store: &dyn Store,
    site: &SiteId,
    id: RunId,
    token: FencingToken,
    t: Timings,
    shared: &Shared,
) {
    let set_lost = |why: String| {
        let mut l = shared.lost.lock().unwrap_or_else(|p| p.into_inner());
        if l.is_none() {
            tracing::warn!(run = id.0, %why, "the run must stop");
            *l = Some(why);
        }
    };
    heartbeat_loop(store, site, id, token, t.heartbeat, &shared.stop, |b| {
        match b {
            Beat::Ok(started) => {
                *shared.last_ok.lock().unwrap_or_else(|p| p.into_inner()) = started;
            }
            Beat::RoleLost(now) => {
                set_lost(format!("{site} lost the active role (now token {now})"))
            }
            Beat::Gone(e) => set_lost(format!(
                "the store no longer has the run's registration ({e})"
            )),
            Beat::Failed(e) => tracing::warn!(error = %e, "heartbeat failed"),
        }
        true
    });
}

/// `pra follow` inside a long-running process (a worker, a consumer): the job asks
/// [`Follower::may_work`] before each unit of work. While the site is active it holds a
/// registered run ([`Registered`], heartbeating on a thread) and says yes; once that run must
/// stop (the role was lost, or the store can no longer vouch for it) it records the run's end
/// and says no; while the site is standby or the store cannot be read (fail closed) it says no,
/// reading the record at most once per `poll` however often it is asked, and registers a new
/// run under the new token as soon as the site is active again.
#[derive(Debug)]
pub struct Follower {
    store: Arc<dyn Store>,
    site: SiteId,
    job: String,
    timings: Timings,
    poll: Duration,
    run: Option<Registered>,
    next_check: Duration,
}

impl Follower {
    /// A follower of `site`'s role for `job`; it reads the record at most once per `poll`
    /// (the heartbeat interval if `None`) while it holds no run.
    pub fn new(
        store: Arc<dyn Store>,
        site: SiteId,
        job: &str,
        timings: Timings,
        poll: Option<Duration>,
    ) -> Result<Follower> {
        timings.validate()?;
        store.require_registry()?;
        Ok(Follower {
            store,
            site,
            job: job.to_string(),
            timings,
            poll: poll.unwrap_or(timings.heartbeat),
            run: None,
            next_check: Duration::ZERO,
        })
    }

    /// Whether the job may do a unit of work now (see [`Follower`]). Errors only for what
    /// waiting cannot fix (a store without a run registry, invalid names); an unreachable
    /// store is `false`.
    pub fn may_work(&mut self) -> Result<bool> {
        if let Some(run) = &self.run {
            match run.lost() {
                None => return Ok(true),
                Some(why) => {
                    // The store may be what failed: the end is then unrecorded, and a drain
                    // counts the run lost once its heartbeats have stopped long enough.
                    if let Err(e) = self.release(&format!("revoked: {why}")) {
                        tracing::warn!(error = %e, "could not record the end of the run");
                    }
                    self.next_check = Duration::ZERO;
                }
            }
        }
        let now = boottime();
        if now < self.next_check {
            return Ok(false);
        }
        self.next_check = now + self.poll;
        match Registered::start(self.store.clone(), &self.site, &self.job, self.timings) {
            Ok(Started::Admitted(run)) => {
                self.run = Some(run);
                Ok(true)
            }
            Ok(Started::Standby { .. }) => Ok(false),
            Err(e @ (Error::StoreUnavailable { .. } | Error::Conflict { .. })) => {
                tracing::warn!(error = %e, "the store cannot be read: not working");
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// The token of the run held now, if any: carry it into fenced writes.
    pub fn token(&self) -> Option<FencingToken> {
        self.run.as_ref().map(Registered::token)
    }

    /// Why the run held now must stop, if it must ([`Registered::lost`]).
    pub fn lost(&self) -> Option<String> {
        self.run.as_ref().and_then(Registered::lost)
    }

    /// Records the end of the run held now, if any, with `outcome`; the next
    /// [`Follower::may_work`] may register a new one.
    pub fn release(&mut self, outcome: &str) -> Result<()> {
        match self.run.take() {
            Some(run) => run.finish(None, outcome),
            None => Ok(()),
        }
    }
}
