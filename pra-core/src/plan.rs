//! The failover/failback plan: the seed's 13 steps and its checklist as a state machine.
//!
//! [`transition`] is pure: a state and an event give the next state and the effects to perform
//! (as data), or an error naming the state, the event and what the state accepts. [`Runner`]
//! performs the effects — the active-site flips, the drain check, the journal — in one store
//! transaction together with the new plan state, so a crash leaves the plan either before or
//! after a step, never between the flip and its record. [`report`] computes the seed's KPIs
//! (RTO, RPO, failback duration, fenced time, double-execution window) from the journal and the
//! run registry.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::fencing::{ActiveSite, Actor, SiteChange};
use crate::site::{SiteId, Topology};
use crate::store::{Commit, JournalEntry, JournalEvent, PlanWrite, RunRecord, Store};

/// Where the deployment stands. `Normal` and `RunningOnSecondary` are the steady states; in every
/// other state a plan is running and only the plan may change the active site.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// The primary is active; no plan running.
    Normal,
    /// Seed step 1: monitoring saw the primary down.
    IncidentDetected,
    /// Seed step 2: a person decided to fail over (manual gate).
    FailoverDecided,
    /// Seed step 3, first half: the primary is deactivated; waiting for its runs to end.
    FailoverDraining,
    /// Seed step 3, second half: the secondary is active.
    FailedOver,
    /// Seed step 4: services checked on the secondary (manual gate).
    SecondaryVerified,
    /// Seed steps 5–6: traffic is on the secondary; steady state.
    RunningOnSecondary,
    /// Seed step 7: the primary's infrastructure is back.
    PrimaryRestored,
    /// Seed step 8: replication secondary -> primary caught up.
    ReplicationSynced,
    /// Seed step 9: the primary's VMs booted — fenced: their jobs see `Standby`.
    PrimaryStartedFenced,
    /// Seed step 10: the primary was validated (manual gate).
    PrimaryValidated,
    /// Seed step 11, first half: the secondary is deactivated; waiting for its runs to end.
    FailbackDraining,
    /// Seed step 11, second half: the primary is active again.
    FailedBack,
    /// Seed step 12: traffic is back on the primary.
    TrafficOnPrimary,
    /// Seed step 13: the secondary's VMs are stopped.
    SecondaryStopped,
    /// Checklist item 13: replication primary -> secondary re-enabled.
    ReplicationReversed,
}

impl State {
    /// Every state, in the order of the seed's steps.
    pub const ALL: [State; 16] = [
        State::Normal,
        State::IncidentDetected,
        State::FailoverDecided,
        State::FailoverDraining,
        State::FailedOver,
        State::SecondaryVerified,
        State::RunningOnSecondary,
        State::PrimaryRestored,
        State::ReplicationSynced,
        State::PrimaryStartedFenced,
        State::PrimaryValidated,
        State::FailbackDraining,
        State::FailedBack,
        State::TrafficOnPrimary,
        State::SecondaryStopped,
        State::ReplicationReversed,
    ];

    /// The snake_case name used in the CLI, JSON and the journal.
    pub fn name(self) -> &'static str {
        match self {
            State::Normal => "normal",
            State::IncidentDetected => "incident_detected",
            State::FailoverDecided => "failover_decided",
            State::FailoverDraining => "failover_draining",
            State::FailedOver => "failed_over",
            State::SecondaryVerified => "secondary_verified",
            State::RunningOnSecondary => "running_on_secondary",
            State::PrimaryRestored => "primary_restored",
            State::ReplicationSynced => "replication_synced",
            State::PrimaryStartedFenced => "primary_started_fenced",
            State::PrimaryValidated => "primary_validated",
            State::FailbackDraining => "failback_draining",
            State::FailedBack => "failed_back",
            State::TrafficOnPrimary => "traffic_on_primary",
            State::SecondaryStopped => "secondary_stopped",
            State::ReplicationReversed => "replication_reversed",
        }
    }

    /// Whether a plan is running in this state (every state but the two steady ones).
    pub fn running(self) -> bool {
        !matches!(self, State::Normal | State::RunningOnSecondary)
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What can happen to the plan. Events that the seed gives to a person carry the operator's name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// Seed step 1.
    IncidentDetected,
    /// Seed step 2 (manual gate).
    FailoverDecided {
        /// Who decided.
        operator: String,
    },
    /// Seed step 3: deactivate the primary and start draining it.
    ExecuteFailover,
    /// The drain is over: no run of the old site is alive; activate the new site.
    Drained,
    /// Activate the new site although runs of the old site are still registered alive (the old
    /// site is dead and cannot report). Journaled with the reason.
    ForceDrain {
        /// Why the drain is forced.
        reason: String,
    },
    /// Seed step 4 (manual gate).
    SecondaryVerified {
        /// Who verified.
        operator: String,
    },
    /// Seed steps 5–6.
    TrafficOnSecondary,
    /// Seed step 7.
    PrimaryRestored,
    /// Seed step 8.
    ReplicationSynced,
    /// Seed step 9: the primary's VMs are up, and fenced.
    PrimaryStartedFenced,
    /// Seed step 10 (manual gate).
    PrimaryValidated {
        /// Who validated.
        operator: String,
    },
    /// Seed step 11: deactivate the secondary and start draining it.
    CommitFailback,
    /// Seed step 12.
    TrafficOnPrimary,
    /// Seed step 13.
    SecondaryStopped,
    /// Checklist item 13.
    ReplicationReversed,
    /// Checklist item 14: post-mortem done, back to normal.
    BackToNormal,
    /// Give up the plan before it is committed: back to the steady state it started from, with
    /// that state's site active again.
    Abort {
        /// Why.
        reason: String,
    },
}

/// The name of an [`Event`], without its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum EventKind {
    IncidentDetected,
    FailoverDecided,
    ExecuteFailover,
    Drained,
    ForceDrain,
    SecondaryVerified,
    TrafficOnSecondary,
    PrimaryRestored,
    ReplicationSynced,
    PrimaryStartedFenced,
    PrimaryValidated,
    CommitFailback,
    TrafficOnPrimary,
    SecondaryStopped,
    ReplicationReversed,
    BackToNormal,
    Abort,
}

impl EventKind {
    /// Every event kind.
    pub const ALL: [EventKind; 17] = [
        EventKind::IncidentDetected,
        EventKind::FailoverDecided,
        EventKind::ExecuteFailover,
        EventKind::Drained,
        EventKind::ForceDrain,
        EventKind::SecondaryVerified,
        EventKind::TrafficOnSecondary,
        EventKind::PrimaryRestored,
        EventKind::ReplicationSynced,
        EventKind::PrimaryStartedFenced,
        EventKind::PrimaryValidated,
        EventKind::CommitFailback,
        EventKind::TrafficOnPrimary,
        EventKind::SecondaryStopped,
        EventKind::ReplicationReversed,
        EventKind::BackToNormal,
        EventKind::Abort,
    ];

    /// The snake_case name.
    pub fn name(self) -> &'static str {
        match self {
            EventKind::IncidentDetected => "incident_detected",
            EventKind::FailoverDecided => "failover_decided",
            EventKind::ExecuteFailover => "execute_failover",
            EventKind::Drained => "drained",
            EventKind::ForceDrain => "force_drain",
            EventKind::SecondaryVerified => "secondary_verified",
            EventKind::TrafficOnSecondary => "traffic_on_secondary",
            EventKind::PrimaryRestored => "primary_restored",
            EventKind::ReplicationSynced => "replication_synced",
            EventKind::PrimaryStartedFenced => "primary_started_fenced",
            EventKind::PrimaryValidated => "primary_validated",
            EventKind::CommitFailback => "commit_failback",
            EventKind::TrafficOnPrimary => "traffic_on_primary",
            EventKind::SecondaryStopped => "secondary_stopped",
            EventKind::ReplicationReversed => "replication_reversed",
            EventKind::BackToNormal => "back_to_normal",
            EventKind::Abort => "abort",
        }
    }

    /// Parses a name (`-` and `_` alike).
    pub fn parse(name: &str) -> Result<EventKind> {
        let norm = name.trim().to_ascii_lowercase().replace('-', "_");
        EventKind::ALL
            .into_iter()
            .find(|k| k.name() == norm)
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "unknown plan event {name:?}; events: {}",
                    EventKind::ALL.map(EventKind::name).join(", ")
                ))
            })
    }

    /// Whether the event is a manual gate that needs an operator name.
    pub fn is_gate(self) -> bool {
        matches!(
            self,
            EventKind::FailoverDecided | EventKind::SecondaryVerified | EventKind::PrimaryValidated
        )
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Event {
    /// The event's kind.
    pub fn kind(&self) -> EventKind {
        match self {
            Event::IncidentDetected => EventKind::IncidentDetected,
            Event::FailoverDecided { .. } => EventKind::FailoverDecided,
            Event::ExecuteFailover => EventKind::ExecuteFailover,
            Event::Drained => EventKind::Drained,
            Event::ForceDrain { .. } => EventKind::ForceDrain,
            Event::SecondaryVerified { .. } => EventKind::SecondaryVerified,
            Event::TrafficOnSecondary => EventKind::TrafficOnSecondary,
            Event::PrimaryRestored => EventKind::PrimaryRestored,
            Event::ReplicationSynced => EventKind::ReplicationSynced,
            Event::PrimaryStartedFenced => EventKind::PrimaryStartedFenced,
            Event::PrimaryValidated { .. } => EventKind::PrimaryValidated,
            Event::CommitFailback => EventKind::CommitFailback,
            Event::TrafficOnPrimary => EventKind::TrafficOnPrimary,
            Event::SecondaryStopped => EventKind::SecondaryStopped,
            Event::ReplicationReversed => EventKind::ReplicationReversed,
            Event::BackToNormal => EventKind::BackToNormal,
            Event::Abort { .. } => EventKind::Abort,
        }
    }

    /// Builds an event from its kind and the operator (for gates) or reason (for `force_drain`
    /// and `abort`). A gate without an operator, or a force or abort without a reason, is an
    /// [`Error::InvalidArgument`].
    pub fn new(kind: EventKind, operator: Option<&str>, reason: Option<&str>) -> Result<Event> {
        let need = |v: Option<&str>, what: &str| -> Result<String> {
            match v.map(str::trim).filter(|s| !s.is_empty()) {
                Some(s) if !s.chars().any(char::is_control) && s.chars().count() <= 1024 => {
                    Ok(s.to_string())
                }
                Some(_) => Err(Error::InvalidArgument(format!(
                    "{what} may not contain control characters"
                ))),
                None => Err(Error::InvalidArgument(format!("event {kind} needs {what}"))),
            }
        };
        Ok(match kind {
            EventKind::IncidentDetected => Event::IncidentDetected,
            EventKind::FailoverDecided => Event::FailoverDecided {
                operator: need(operator, "an operator (--operator)")?,
            },
            EventKind::ExecuteFailover => Event::ExecuteFailover,
            EventKind::Drained => Event::Drained,
            EventKind::ForceDrain => Event::ForceDrain {
                reason: need(reason, "a reason (--reason)")?,
            },
            EventKind::SecondaryVerified => Event::SecondaryVerified {
                operator: need(operator, "an operator (--operator)")?,
            },
            EventKind::TrafficOnSecondary => Event::TrafficOnSecondary,
            EventKind::PrimaryRestored => Event::PrimaryRestored,
            EventKind::ReplicationSynced => Event::ReplicationSynced,
            EventKind::PrimaryStartedFenced => Event::PrimaryStartedFenced,
            EventKind::PrimaryValidated => Event::PrimaryValidated {
                operator: need(operator, "an operator (--operator)")?,
            },
            EventKind::CommitFailback => Event::CommitFailback,
            EventKind::TrafficOnPrimary => Event::TrafficOnPrimary,
            EventKind::SecondaryStopped => Event::SecondaryStopped,
            EventKind::ReplicationReversed => Event::ReplicationReversed,
            EventKind::BackToNormal => Event::BackToNormal,
            EventKind::Abort => Event::Abort {
                reason: need(reason, "a reason (--reason)")?,
            },
        })
    }

    /// The operator of a manual gate.
    pub fn operator(&self) -> Option<&str> {
        match self {
            Event::FailoverDecided { operator }
            | Event::SecondaryVerified { operator }
            | Event::PrimaryValidated { operator } => Some(operator),
            Event::IncidentDetected
            | Event::ExecuteFailover
            | Event::Drained
            | Event::ForceDrain { .. }
            | Event::TrafficOnSecondary
            | Event::PrimaryRestored
            | Event::ReplicationSynced
            | Event::PrimaryStartedFenced
            | Event::CommitFailback
            | Event::TrafficOnPrimary
            | Event::SecondaryStopped
            | Event::ReplicationReversed
            | Event::BackToNormal
            | Event::Abort { .. } => None,
        }
    }
}

/// Something the runner must do for a transition, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "effect", rename_all = "snake_case")]
pub enum Effect {
    /// Refuse the transition unless no run registered under an older token is alive.
    RequireDrained,
    /// Journal that the drain was forced, with the reason and the runs still alive.
    RecordForcedDrain {
        /// The operator's reason.
        reason: String,
    },
    /// `site` -> no site (it must be the active one).
    Deactivate {
        /// The site that loses the role.
        site: SiteId,
    },
    /// No site -> `site` (no site may be active).
    Activate {
        /// The site that gets the role.
        site: SiteId,
    },
}

/// The outcome of [`transition`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    /// State before.
    pub from: State,
    /// The event.
    pub event: EventKind,
    /// State after.
    pub to: State,
    /// What the runner must do.
    pub effects: Vec<Effect>,
}

/// The state `kind` leads to from `state`, or `None` if `state` refuses it.
pub fn target(state: State, kind: EventKind) -> Option<State> {
    use EventKind as K;
    use State as S;
    let from = |s: S, to: S| (state == s).then_some(to);
    match kind {
        K::IncidentDetected => from(S::Normal, S::IncidentDetected),
        K::FailoverDecided => from(S::IncidentDetected, S::FailoverDecided),
        K::ExecuteFailover => from(S::FailoverDecided, S::FailoverDraining),
        K::Drained | K::ForceDrain => match state {
            S::FailoverDraining => Some(S::FailedOver),
            S::FailbackDraining => Some(S::FailedBack),
            S::Normal
            | S::IncidentDetected
            | S::FailoverDecided
            | S::FailedOver
            | S::SecondaryVerified
            | S::RunningOnSecondary
            | S::PrimaryRestored
            | S::ReplicationSynced
            | S::PrimaryStartedFenced
            | S::PrimaryValidated
            | S::FailedBack
            | S::TrafficOnPrimary
            | S::SecondaryStopped
            | S::ReplicationReversed => None,
        },
        K::SecondaryVerified => from(S::FailedOver, S::SecondaryVerified),
        K::TrafficOnSecondary => from(S::SecondaryVerified, S::RunningOnSecondary),
        K::PrimaryRestored => from(S::RunningOnSecondary, S::PrimaryRestored),
        K::ReplicationSynced => from(S::PrimaryRestored, S::ReplicationSynced),
        K::PrimaryStartedFenced => from(S::ReplicationSynced, S::PrimaryStartedFenced),
        K::PrimaryValidated => from(S::PrimaryStartedFenced, S::PrimaryValidated),
        K::CommitFailback => from(S::PrimaryValidated, S::FailbackDraining),
        K::TrafficOnPrimary => from(S::FailedBack, S::TrafficOnPrimary),
        K::SecondaryStopped => from(S::TrafficOnPrimary, S::SecondaryStopped),
        K::ReplicationReversed => from(S::SecondaryStopped, S::ReplicationReversed),
        K::BackToNormal => from(S::ReplicationReversed, S::Normal),
        K::Abort => match state {
            S::IncidentDetected | S::FailoverDecided | S::FailoverDraining => Some(S::Normal),
            S::PrimaryRestored
            | S::ReplicationSynced
            | S::PrimaryStartedFenced
            | S::PrimaryValidated
            | S::FailbackDraining => Some(S::RunningOnSecondary),
            // Once the new site is active the flip is done; going back is a new plan.
            S::Normal
            | S::FailedOver
            | S::SecondaryVerified
            | S::RunningOnSecondary
            | S::FailedBack
            | S::TrafficOnPrimary
            | S::SecondaryStopped
            | S::ReplicationReversed => None,
        },
    }
}

/// The events `state` accepts.
pub fn allowed(state: State) -> Vec<EventKind> {
    EventKind::ALL
        .into_iter()
        .filter(|k| target(state, *k).is_some())
        .collect()
}

/// The pure transition: the next state and the effects, or [`Error::InvalidTransition`] naming
/// the state, the event and the events the state allows.
pub fn transition(state: State, event: &Event, topology: &Topology) -> Result<Transition> {
    let kind = event.kind();
    let to = target(state, kind).ok_or_else(|| Error::InvalidTransition {
        state: state.name().into(),
        event: kind.name().into(),
        allowed: allowed(state)
            .into_iter()
            .map(|k| k.name().to_string())
            .collect(),
    })?;
    let primary = topology.primary().clone();
    let secondary = topology.secondary().clone();
    let effects = match (event, state) {
        (Event::ExecuteFailover, _) => vec![Effect::Deactivate { site: primary }],
        (Event::CommitFailback, _) => vec![Effect::Deactivate { site: secondary }],
        (Event::Drained, State::FailoverDraining) => {
            vec![Effect::RequireDrained, Effect::Activate { site: secondary }]
        }
        (Event::Drained, _) => vec![Effect::RequireDrained, Effect::Activate { site: primary }],
        (Event::ForceDrain { reason }, State::FailoverDraining) => {
            vec![
                Effect::RecordForcedDrain {
                    reason: reason.clone(),
                },
                Effect::Activate { site: secondary },
            ]
        }
        (Event::ForceDrain { reason }, _) => vec![
            Effect::RecordForcedDrain {
                reason: reason.clone(),
            },
            Effect::Activate { site: primary },
        ],
        // Aborting a drain gives the role back to the site that just lost it.
        (Event::Abort { .. }, State::FailoverDraining) => vec![Effect::Activate { site: primary }],
        (Event::Abort { .. }, State::FailbackDraining) => {
            vec![Effect::Activate { site: secondary }]
        }
        (
            Event::Abort { .. }
            | Event::IncidentDetected
            | Event::FailoverDecided { .. }
            | Event::SecondaryVerified { .. }
            | Event::TrafficOnSecondary
            | Event::PrimaryRestored
            | Event::ReplicationSynced
            | Event::PrimaryStartedFenced
            | Event::PrimaryValidated { .. }
            | Event::TrafficOnPrimary
            | Event::SecondaryStopped
            | Event::ReplicationReversed
            | Event::BackToNormal,
            _,
        ) => Vec::new(),
    };
    Ok(Transition {
        from: state,
        event: kind,
        to,
        effects,
    })
}

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

impl Default for DrainPolicy {
    fn default() -> Self {
        DrainPolicy {
            lost_after: Duration::seconds(60),
            timeout: Duration::minutes(10),
            poll: Duration::seconds(1),
        }
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

/// A period during which no site was active (the flip's fenced time).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FencedPeriod {
    /// The site that lost the role.
    pub from_site: Option<SiteId>,
    /// The site that got it (`None`: still nobody).
    pub to_site: Option<SiteId>,
    /// Start.
    pub start: DateTime<Utc>,
    /// End (`None`: still fenced).
    pub end: Option<DateTime<Utc>>,
    /// Length in seconds (up to now if still fenced).
    pub seconds: f64,
}

/// Runs of the same job on two different sites at the same time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Overlap {
    /// The job.
    pub job: String,
    /// The two sites.
    pub sites: (SiteId, SiteId),
    /// Start of the overlap.
    pub start: DateTime<Utc>,
    /// End of the overlap.
    pub end: DateTime<Utc>,
}

/// A KPI against its target, as a DR test report states it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Check {
    /// What is measured.
    pub name: String,
    /// Measured value, in seconds (`None`: not measured in this plan).
    pub value_seconds: Option<f64>,
    /// Target, in words.
    pub target: String,
    /// Pass, fail, or `None` when not measured.
    pub pass: Option<bool>,
}

/// A plan step as the report lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportStep {
    /// When.
    pub at: DateTime<Utc>,
    /// The plan's id.
    pub plan: String,
    /// State before.
    pub from: String,
    /// The event.
    pub event: String,
    /// State after.
    pub to: String,
    /// The operator of a manual gate.
    pub operator: Option<String>,
}

impl Check {
    /// "PASS", "FAIL", or "not measured".
    pub fn verdict(&self) -> &'static str {
        match self.pass {
            Some(true) => "PASS",
            Some(false) => "FAIL",
            None => "not measured",
        }
    }
}

/// The KPIs of the seed's §7, computed from the journal and the run registry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// When the incident was detected (the last `incident_detected`).
    pub incident_at: Option<DateTime<Utc>>,
    /// Incident detected -> traffic on the secondary.
    pub rto_seconds: Option<f64>,
    /// Incident detected -> the last backup before it (when a backup time is known).
    pub rpo_seconds: Option<f64>,
    /// Primary restored -> traffic on the primary.
    pub failback_seconds: Option<f64>,
    /// Every period with no site active.
    pub fenced: Vec<FencedPeriod>,
    /// Total time during which runs of one job overlapped on two sites.
    pub double_execution_seconds: f64,
    /// The overlaps themselves.
    pub overlaps: Vec<Overlap>,
    /// How many drains were forced.
    pub forced_drains: u64,
    /// The plan steps, in order.
    pub steps: Vec<ReportStep>,
    /// Each KPI against its target.
    pub checks: Vec<Check>,
}

/// Computes the report from `journal` (whole), `runs` and, when known, the time of the last
/// backup before the incident. Runs still going count up to `now` (or their last heartbeat when
/// silent for longer than `lost_after`).
pub fn report(
    journal: &[JournalEntry],
    runs: &[RunRecord],
    last_backup: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    lost_after: Duration,
) -> Report {
    let secs = |d: Duration| {
        d.num_microseconds()
            .map_or(d.num_seconds() as f64, |us| us as f64 / 1e6)
    };
    let mut steps = Vec::new();
    let mut at_event: BTreeMap<&str, DateTime<Utc>> = BTreeMap::new();
    let mut incident_at = None;
    let mut fenced: Vec<FencedPeriod> = Vec::new();
    let mut forced_drains = 0;
    for e in journal {
        match &e.event {
            JournalEvent::PlanStep {
                plan,
                from,
                event,
                to,
                operator,
            } => {
                if event == "incident_detected" {
                    incident_at = Some(e.at);
                    at_event.clear();
                }
                at_event.insert(event_key(event), e.at);
                steps.push(ReportStep {
                    at: e.at,
                    plan: plan.clone(),
                    from: from.clone(),
                    event: event.clone(),
                    to: to.clone(),
                    operator: operator.clone(),
                });
            }
            JournalEvent::SiteChanged { old, new } => match (&old.site, &new.site) {
                (Some(_), None) => fenced.push(FencedPeriod {
                    from_site: old.site.clone(),
                    to_site: None,
                    start: e.at,
                    end: None,
                    seconds: 0.0,
                }),
                (None, Some(to)) => {
                    if let Some(p) = fenced.last_mut().filter(|p| p.end.is_none()) {
                        p.end = Some(e.at);
                        p.to_site = Some(to.clone());
                    }
                }
                (None, None) | (Some(_), Some(_)) => {}
            },
            JournalEvent::DrainForced { .. } => forced_drains += 1,
        }
    }
    for p in &mut fenced {
        p.seconds = secs(p.end.unwrap_or(now) - p.start);
    }
    let span = |a: &str, b: &str| Some(secs(*at_event.get(b)? - *at_event.get(a)?));
    let rto = span("incident_detected", "traffic_on_secondary");
    let failback = span("primary_restored", "traffic_on_primary");
    let rpo = match (incident_at, last_backup) {
        (Some(i), Some(b)) if b <= i => Some(secs(i - b)),
        _ => None,
    };
    let (double, overlaps) = ground_truth(&run_units(runs, now, lost_after));
    let check = |name: &str, v: Option<f64>, target: &str, limit: f64| Check {
        name: name.into(),
        value_seconds: v,
        target: target.into(),
        pass: v.map(|v| v <= limit),
    };
    let checks = vec![
        check("double-execution window", Some(double), "0 s", 0.0),
        check("failback duration", failback, "< 30 min", 30.0 * 60.0),
        check(
            "RTO (incident -> traffic on secondary)",
            rto,
            "<= 60 min (seed's phase 1)",
            60.0 * 60.0,
        ),
        check(
            "RPO (last backup before the incident)",
            rpo,
            "<= 60 s (backup every minute)",
            60.0,
        ),
    ];
    Report {
        incident_at,
        rto_seconds: rto,
        rpo_seconds: rpo,
        failback_seconds: failback,
        fenced,
        double_execution_seconds: double,
        overlaps,
        forced_drains,
        steps,
        checks,
    }
}

fn event_key(event: &str) -> &'static str {
    EventKind::ALL
        .into_iter()
        .map(EventKind::name)
        .find(|n| *n == event)
        .unwrap_or("unknown")
}

/// The overlaps between runs of the same job on different sites.
/// The registry's runs as units of work (a run still going counts up to `now`, or its last
/// heartbeat when silent for longer than `lost_after`).
fn run_units(runs: &[RunRecord], now: DateTime<Utc>, lost_after: Duration) -> Vec<WorkUnit> {
    let end = |r: &RunRecord| crate::run::reported_end(r, now, lost_after).unwrap_or(now);
    runs.iter()
        .map(|r| WorkUnit {
            job: r.start.job.clone(),
            site: r.start.site.clone(),
            start: r.started_at,
            end: end(r),
        })
        .collect()
}

/// A stretch of work as the job itself recorded it in the application's database: the ground
/// truth of what ran where, independent of pra's run registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkUnit {
    /// The job.
    pub job: String,
    /// The site it ran on.
    pub site: SiteId,
    /// When the work started.
    pub start: DateTime<Utc>,
    /// When it was last seen working.
    pub end: DateTime<Utc>,
}

/// The double-execution window measured from the jobs' own writes: the total time during which
/// the same job was working on two sites, and the overlaps themselves.
pub fn ground_truth(units: &[WorkUnit]) -> (f64, Vec<Overlap>) {
    let overlaps = unit_overlaps(units);
    let total = union_seconds(overlaps.iter().map(|o| (o.start, o.end)).collect());
    (total, overlaps)
}

fn unit_overlaps(units: &[WorkUnit]) -> Vec<Overlap> {
    let mut by_job: BTreeMap<&str, Vec<&WorkUnit>> = BTreeMap::new();
    for u in units {
        by_job.entry(u.job.as_str()).or_default().push(u);
    }
    let mut out = Vec::new();
    for (job, mut us) in by_job {
        us.sort_by_key(|u| u.start);
        for (i, a) in us.iter().enumerate() {
            // Sorted by start: once b starts after a ends, no later one overlaps a.
            for b in us[i + 1..].iter().take_while(|b| b.start < a.end) {
                if a.site == b.site {
                    continue;
                }
                let start = a.start.max(b.start);
                let stop = a.end.min(b.end);
                if start < stop {
                    out.push(Overlap {
                        job: job.to_string(),
                        sites: (a.site.clone(), b.site.clone()),
                        start,
                        end: stop,
                    });
                }
            }
        }
    }
    out
}

/// The total length of the union of `intervals`, in seconds.
fn union_seconds(mut intervals: Vec<(DateTime<Utc>, DateTime<Utc>)>) -> f64 {
    intervals.sort();
    let mut total = Duration::zero();
    let mut current: Option<(DateTime<Utc>, DateTime<Utc>)> = None;
    for (s, e) in intervals {
        current = match current {
            Some((cs, ce)) if s <= ce => Some((cs, ce.max(e))),
            Some((cs, ce)) => {
                total += ce - cs;
                Some((s, e))
            }
            None => Some((s, e)),
        };
    }
    if let Some((cs, ce)) = current {
        total += ce - cs;
    }
    total
        .num_microseconds()
        .map_or(total.num_seconds() as f64, |us| us as f64 / 1e6)
}

impl Report {
    /// The report as a plain-text table.
    pub fn table(&self) -> String {
        let fmt = |v: Option<f64>| v.map_or_else(|| "-".to_string(), human);
        let mut s = String::new();
        s.push_str(&format!(
            "{:<42} {:>12}  {:<30} {}\n",
            "KPI", "measured", "target", "verdict"
        ));
        for c in &self.checks {
            let verdict = c.verdict();
            s.push_str(&format!(
                "{:<42} {:>12}  {:<30} {}\n",
                c.name,
                fmt(c.value_seconds),
                c.target,
                verdict
            ));
        }
        for p in &self.fenced {
            s.push_str(&format!(
                "{:<42} {:>12}  {}\n",
                format!(
                    "fenced (no site active) {} -> {}",
                    p.from_site.as_ref().map_or("NONE", SiteId::as_str),
                    p.to_site.as_ref().map_or("...", SiteId::as_str)
                ),
                human(p.seconds),
                p.start.format("%H:%M:%S%.3f")
            ));
        }
        s.push_str(&format!(
            "{:<42} {:>12}\n",
            "forced drains", self.forced_drains
        ));
        s
    }
}

/// Seconds as `1h02m03s`, `2m03s` or `1.234s`.
pub fn human(secs: f64) -> String {
    if secs < 60.0 {
        format!("{secs:.3}s")
    } else if secs < 3600.0 {
        format!("{}m{:02}s", (secs / 60.0) as u64, (secs % 60.0) as u64)
    } else {
        format!(
            "{}h{:02}m{:02}s",
            (secs / 3600.0) as u64,
            ((secs % 3600.0) / 60.0) as u64,
            (secs % 60.0) as u64
        )
    }
}
