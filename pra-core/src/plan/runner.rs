//! The plan's runner: the plan document the store keeps, and [`Runner`], which performs a
//! transition's effects (the active-site flips, the drain check, the journal) in one store
//! transaction together with the new plan state, so a crash leaves the plan either before or
//! after a step, never between the flip and its record.

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::fencing::{ActiveSite, Actor, SiteChange};
use crate::site::{SiteId, Topology};
use crate::store::{Commit, JournalEvent, PlanWrite, RunRecord, Store};

use super::machine::{Effect, Event, State, Transition, transition};

/// One applied event, as the plan document keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// The event, with its operator or reason.
    pub event: Event,
    /// State before.
    pub from: State,
    /// State after.
    pub to: State,
    /// When.
    pub at: DateTime<Utc>,
    /// Who applied it.
    pub by: String,
}

/// The plan document the store keeps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// Id of the current (or last) plan: `failover-<time>` or `failback-<time>`.
    pub id: Option<String>,
    /// Current state.
    pub state: State,
    /// Whether a plan is running (read by the stores to refuse manual flips).
    pub running: bool,
    /// Steps of the current (or last) plan, oldest first.
    pub steps: Vec<Step>,
}

impl Default for Plan {
    fn default() -> Self {
        Plan {
            id: None,
            state: State::Normal,
            running: false,
            steps: Vec::new(),
        }
    }
}

/// How drains behave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainPolicy {
    /// A run silent for longer than this counts as lost, not alive.
    pub lost_after: Duration,
    /// How long [`Runner::drain`] waits before giving up.
    pub timeout: Duration,
    /// How often it looks.
    pub poll: Duration,
}

impl DrainPolicy {
    /// The drain of runs with `timings` (a run is lost after their `lost_after`, the setting
    /// the store's leases and the runs' self-fencing read too), waiting up to `timeout`.
    pub fn for_timings(timings: &crate::run::Timings, timeout: std::time::Duration) -> Self {
        let chrono = |d: std::time::Duration| Duration::from_std(d).unwrap_or(Duration::MAX);
        DrainPolicy {
            lost_after: chrono(timings.lost_after),
            timeout: chrono(timeout),
            poll: Duration::seconds(1),
        }
    }
}

impl Default for DrainPolicy {
    fn default() -> Self {
        DrainPolicy::for_timings(
            &crate::run::Timings::default(),
            crate::defaults::DRAIN_TIMEOUT,
        )
    }
}

/// What [`Runner::apply`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum Applied {
    /// The event was applied now.
    Done {
        /// The transition.
        transition: Transition,
        /// The active-site record after it.
        record: ActiveSite,
        /// The plan after it.
        plan: Plan,
    },
    /// The same event was already the last one applied (a retry after a crash or a lost
    /// answer): nothing was repeated.
    AlreadyApplied {
        /// The step that applied it.
        step: Step,
    },
}

/// Performs plan transitions against a store.
#[derive(Debug)]
pub struct Runner<'a> {
    store: &'a dyn Store,
    topology: &'a Topology,
    clock: &'a dyn Clock,
    drain: DrainPolicy,
    // One observer for the runner's lifetime: liveness is what it saw move, on its own clock.
    drainer: crate::run::Drainer<'a>,
}

impl<'a> Runner<'a> {
    /// A runner over `store` for `topology`.
    pub fn new(
        store: &'a dyn Store,
        topology: &'a Topology,
        clock: &'a dyn Clock,
        drain: DrainPolicy,
    ) -> Self {
        Runner {
            store,
            topology,
            clock,
            drain,
            drainer: crate::run::Drainer::new(
                store,
                clock,
                drain.lost_after.to_std().unwrap_or_default(),
            ),
        }
    }

    fn load(&self) -> Result<(u64, Plan)> {
        match self.store.require_plans()?.load_plan()? {
            None => Ok((0, Plan::default())),
            Some(stored) => {
                let plan = serde_json::from_value(stored.doc).map_err(|e| Error::Corrupt {
                    what: format!("plan in {}", self.store.url()),
                    detail: e.to_string(),
                })?;
                Ok((stored.revision, plan))
            }
        }
    }

    /// The current plan (the default `Normal` plan if none was ever written).
    pub fn plan(&self) -> Result<Plan> {
        Ok(self.load()?.1)
    }

    /// Runs registered under a token older than the record's that are still alive for this
    /// runner (see [`crate::run::Liveness`]: a runner that has not watched a run yet counts it
    /// alive): what a drain waits for.
    pub fn alive_old_runs(&self) -> Result<Vec<RunRecord>> {
        let record = self.store.load()?;
        self.drainer.alive_below(record.token)
    }

    /// Applies `event`: checks the transition, performs its effects and writes the new plan state
    /// and the journal in one store transaction. If another process moved the plan meanwhile,
    /// the event is re-checked against the new state.
    #[tracing::instrument(level = "info", skip(self, actor), fields(event = %event.kind()))]
    pub fn apply(&self, event: Event, actor: &Actor) -> Result<Applied> {
        let (revision, plan) = self.load()?;
        if let Some(last) = plan.steps.last()
            && last.event == event
            && last.to == plan.state
        {
            return Ok(Applied::AlreadyApplied { step: last.clone() });
        }
        let t = transition(plan.state, &event, self.topology)?;
        let record = self.store.load()?;
        let mut site_change = None;
        let mut extra = Vec::new();
        let id = if plan.state.running() {
            plan.id.clone()
        } else {
            let kind = if plan.state == State::Normal {
                "failover"
            } else {
                "failback"
            };
            Some(format!(
                "{kind}-{}",
                self.clock.now().format("%Y%m%dT%H%M%SZ")
            ))
        };
        let plan_id = id.clone().unwrap_or_default();
        let lost_race = |e: Error| -> Result<Applied> {
            // Another process moved the plan (and the record) since we loaded it: if it applied
            // this very event, say so.
            let (_, now) = self.load()?;
            match now.steps.last() {
                Some(last) if last.event == event && last.to == now.state => {
                    Ok(Applied::AlreadyApplied { step: last.clone() })
                }
                Some(_) | None => Err(e),
            }
        };
        for effect in &t.effects {
            match effect {
                Effect::RequireDrained => {
                    let alive = self.drainer.alive_below(record.token)?;
                    if !alive.is_empty() {
                        return Err(Error::Busy(format!(
                            "drain not finished: {}",
                            crate::run::describe_runs(&alive)
                        )));
                    }
                }
                Effect::RecordForcedDrain { reason } => {
                    let alive = self.drainer.alive_below(record.token)?;
                    tracing::warn!(alive = alive.len(), reason, "drain forced");
                    extra.push(JournalEvent::DrainForced {
                        plan: plan_id.clone(),
                        alive_runs: alive.len() as u64,
                    });
                }
                Effect::Deactivate { site } => {
                    if record.site.as_ref() != Some(site) {
                        return lost_race(Error::Refused(format!(
                            "the plan expects {site} to be active, but the record says {} (token {}); fix the record or abort",
                            record.site.as_ref().map_or("NONE", SiteId::as_str),
                            record.token
                        )));
                    }
                    site_change = Some(SiteChange::Deactivate {
                        expect: record.token,
                    });
                }
                Effect::Activate { site } => {
                    if let Some(active) = &record.site {
                        return lost_race(Error::Refused(format!(
                            "the plan expects no site to be active before activating {site}, but {active} is (token {})",
                            record.token
                        )));
                    }
                    site_change = Some(SiteChange::Activate {
                        site: site.clone(),
                        expect: record.token,
                    });
                }
            }
        }
        // One time for the step and its journal entries.
        let at = self.clock.now();
        let step = Step {
            event: event.clone(),
            from: t.from,
            to: t.to,
            at,
            by: actor.by.clone(),
        };
        let mut steps = if plan.state.running() {
            plan.steps.clone()
        } else {
            Vec::new()
        };
        steps.push(step);
        let next = Plan {
            id,
            state: t.to,
            running: t.to.running(),
            steps,
        };
        let mut events = vec![JournalEvent::PlanStep {
            plan: plan_id,
            from: t.from.name().into(),
            event: t.event.name().into(),
            to: t.to.name().into(),
            operator: event.operator().map(str::to_string),
        }];
        events.extend(extra);
        let doc = serde_json::to_value(&next).map_err(|e| Error::Internal(e.to_string()))?;
        let commit = Commit {
            actor: actor.clone(),
            site: site_change,
            plan: Some(PlanWrite {
                expect_revision: revision,
                doc,
            }),
            events,
            at: Some(at),
        };
        match self.store.commit(&commit) {
            Ok(done) => Ok(Applied::Done {
                transition: t,
                record: done.record,
                plan: next,
            }),
            Err(e @ (Error::Refused(_) | Error::Conflict { .. } | Error::PlanChanged { .. })) => {
                lost_race(e)
            }
            Err(e) => Err(e),
        }
    }

    /// Waits (on the clock) until no run of the old site is alive, then applies
    /// [`Event::Drained`]. Gives up with [`Error::Busy`] after the drain timeout, naming the runs.
    pub fn drain(&self, actor: &Actor) -> Result<Applied> {
        let record = self.store.load()?;
        let std = |d: Duration| d.to_std().unwrap_or(std::time::Duration::from_secs(1));
        self.drainer
            .wait(record.token, std(self.drain.timeout), std(self.drain.poll))?;
        self.apply(Event::Drained, actor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The commit rules read `running` and `state` out of the stored document (through
    /// [`crate::store::PlanHead`]) to refuse manual flips while a plan runs: those names are
    /// a format.
    #[test]
    fn the_stored_plan_has_the_fields_the_stores_read() {
        for state in State::ALL {
            let plan = Plan {
                state,
                running: state.running(),
                ..Plan::default()
            };
            let doc = serde_json::to_value(&plan).unwrap();
            // What the commit rules see of it, through their one typed view.
            let stored = crate::store::StoredPlan {
                revision: 1,
                doc: doc.clone(),
            };
            assert_eq!(
                stored.head().unwrap(),
                crate::store::PlanHead {
                    running: state.running(),
                    state: state.name().to_string(),
                }
            );
            assert_eq!(serde_json::from_value::<Plan>(doc).unwrap(), plan);
        }
    }
}
