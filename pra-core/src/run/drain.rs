//! Drains: waiting until no run of an older token is alive before a site is activated — for
//! the plan's flips and for manual ones (`pra site activate`) alike.

use std::sync::Mutex;
use std::time::Duration;

use super::Liveness;
use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::fencing::{ActiveSite, Actor, FencingToken, SiteChange, next_record};
use crate::site::SiteId;
use crate::store::{Commit, JournalEvent, RunRecord, Store};

/// Watches the runs of older tokens. Keep one for the whole of a drain: liveness is judged on
/// what this observer saw move, on its own clock.
#[derive(Debug)]
pub struct Drainer<'a> {
    store: &'a dyn Store,
    clock: &'a dyn Clock,
    liveness: Mutex<Liveness>,
}

impl<'a> Drainer<'a> {
    /// A drainer over `store` counting a run lost after `lost_after` without a heartbeat.
    pub fn new(store: &'a dyn Store, clock: &'a dyn Clock, lost_after: Duration) -> Self {
        Drainer {
            store,
            clock,
            liveness: Mutex::new(Liveness::new(lost_after)),
        }
    }

    /// The unfinished runs under a token below `below` that are alive for this observer. Runs
    /// judged lost are recorded as such in the store (unless they beat meanwhile), so that
    /// later drains do not wait for them again.
    pub fn alive_below(&self, below: FencingToken) -> Result<Vec<RunRecord>> {
        // The nemesis suite's deliberately broken build: every run counts as finished.
        let registry = self.store.require_registry()?;
        if cfg!(feature = "nemesis-broken-drain") {
            let _ = registry.unfinished_runs_below(below)?;
            return Ok(Vec::new());
        }
        let runs = registry.unfinished_runs_below(below)?;
        let now = self.clock.monotonic();
        let judgement = self
            .liveness
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .judge(now, runs);
        let mut alive = judgement.alive;
        for lost in judgement.lost {
            let note = format!(
                "lost: no heartbeat seen for {:?} by a drain on {}",
                self.lost_after(),
                crate::site::hostname()
            );
            match registry.run_mark_lost(lost.run.id, lost.pulse, &note) {
                Ok(true) => {
                    tracing::warn!(run = lost.run.id.0, job = %lost.run.start.job, "run counted as lost")
                }
                // It beat meanwhile (or the store keeps leases and will drop it by itself).
                Ok(false) => {
                    if matches!(lost.pulse, crate::store::Pulse::Counter { .. }) {
                        alive.push(lost.run);
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(alive)
    }

    fn lost_after(&self) -> Duration {
        self.liveness
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .lost_after
    }

    /// Waits (on the clock) until no run under a token below `below` is alive; gives up with
    /// [`Error::Busy`] after `timeout`, naming the runs.
    pub fn wait(&self, below: FencingToken, timeout: Duration, poll: Duration) -> Result<()> {
        let start = self.clock.monotonic();
        let phase = crate::progress::phase("drain: waiting for the old site's runs", None);
        loop {
            let alive = self.alive_below(below)?;
            if alive.is_empty() {
                return Ok(());
            }
            if self.clock.monotonic().saturating_sub(start) >= timeout {
                return Err(Error::Busy(format!(
                    "drain timed out after {}s: {}; if that site is dead, force it with a reason",
                    timeout.as_secs(),
                    describe_runs(&alive)
                )));
            }
            tracing::info!(alive = alive.len(), "draining");
            phase.message(&format!(
                "{} run(s) of token < {below} still alive",
                alive.len()
            ));
            self.clock.sleep(poll);
        }
    }
}

/// One line naming up to five runs.
pub fn describe_runs(runs: &[RunRecord]) -> String {
    let shown: Vec<String> = runs
        .iter()
        .take(5)
        .map(|r| {
            format!(
                "{} on {} ({}, pid {}, token {})",
                r.start.job, r.start.site, r.start.host, r.start.pid, r.start.token
            )
        })
        .collect();
    let more = if runs.len() > 5 {
        format!(" and {} more", runs.len() - 5)
    } else {
        String::new()
    };
    format!(
        "{} run(s) of the old site still alive: {}{more}",
        runs.len(),
        shown.join(", ")
    )
}

/// How a manual activation drains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActivateOptions {
    /// Wait for live runs of older tokens (up to `timeout`); `false`: refuse while there are.
    pub wait: bool,
    /// How long to wait.
    pub timeout: Duration,
    /// How often to look.
    pub poll: Duration,
    /// A run silent this long counts as lost.
    pub lost_after: Duration,
    /// Activate past live runs (journaled, with the actor's reason).
    pub force: bool,
}

/// What a manual activation found about older runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Drained {
    /// No run of an older token was alive when the site was activated.
    Clean,
    /// Activated past runs still alive (`force`): journaled as a forced drain.
    Forced {
        /// How many runs were alive.
        alive_runs: u64,
    },
    /// The store keeps no run registry: nothing could be drained.
    NoRegistry,
}

/// Activates `site` (break before make: only while no site is active, and only at token
/// `expect`) once no run of an older token is alive — the same drain as the plan's. Without
/// `wait`, live runs make it [`Error::Busy`]; with `force` (and a reason in `actor`) it goes
/// ahead and journals a forced drain.
pub fn activate(
    store: &dyn Store,
    clock: &dyn Clock,
    site: &SiteId,
    expect: FencingToken,
    actor: &Actor,
    opts: &ActivateOptions,
) -> Result<(ActiveSite, Drained)> {
    let record = store.load()?;
    let change = SiteChange::Activate {
        site: site.clone(),
        expect,
    };
    // The activation rules (expected token, break before make) before any wait for a drain;
    // the commit applies them again on the record it finds then.
    next_record(&record, &change, clock.now(), actor)?;
    if opts.force && actor.reason.trim().is_empty() {
        return Err(Error::InvalidArgument(
            "--force needs a --reason: it is written to the journal".into(),
        ));
    }
    let drainer = Drainer::new(store, clock, opts.lost_after);
    let alive = match store.registry() {
        None => None,
        Some(_) => Some(drainer.alive_below(record.token)?),
    };
    let drained = match alive {
        None => Drained::NoRegistry,
        Some(alive) if alive.is_empty() => Drained::Clean,
        Some(alive) if opts.force => Drained::Forced {
            alive_runs: alive.len() as u64,
        },
        Some(alive) if !opts.wait => {
            return Err(Error::Busy(format!(
                "not activating {site}: {}; wait for them (without --no-wait) or force with a reason",
                describe_runs(&alive)
            )));
        }
        Some(_) => {
            drainer.wait(record.token, opts.timeout, opts.poll)?;
            Drained::Clean
        }
    };
    let events = match drained {
        Drained::Forced { alive_runs } => vec![JournalEvent::DrainForced {
            plan: "manual activation".into(),
            alive_runs,
        }],
        Drained::Clean | Drained::NoRegistry => Vec::new(),
    };
    let committed = store.commit(&Commit {
        site: Some(change),
        events,
        ..Commit::by(actor)
    })?;
    Ok((committed.record, drained))
}
