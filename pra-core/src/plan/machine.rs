//! The plan's machine: its states, its events, and [`RULES`], the one table of the transitions
//! between them, from which everything else about the machine is read.
//!
//! [`transition`] is pure: a state and an event give the next state and the effects to perform
//! (as data), or an error naming the state, the event and what the state accepts. [`target`],
//! [`allowed`], [`EventKind::is_gate`], the CLI's event list and the README's diagram
//! ([`mermaid`]) are all derived from [`RULES`] and the two vocabularies ([`State`],
//! [`EventKind`]), never written out a second time.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::site::{SiteId, Topology};

/// Declares a closed vocabulary once: the enum, `ALL` (in declaration order), `name()` (which is
/// also the serde name, so JSON, the journal and the CLI cannot drift apart) and `doc()` (the
/// variant's doc comment, which the help texts show).
macro_rules! vocabulary {
    (
        $(#[$meta:meta])*
        pub enum $T:ident {
            $( $(#[doc = $doc:literal])* $V:ident = $name:literal, )+
        }
    ) => {
        $(#[$meta])*
        pub enum $T {
            $( $(#[doc = $doc])* #[serde(rename = $name)] $V, )+
        }

        impl $T {
            /// Every value, in declaration order.
            pub const ALL: [$T; [$($name),+].len()] = [$($T::$V),+];

            /// The snake_case name used in the CLI, JSON and the journal.
            pub fn name(self) -> &'static str {
                match self {
                    $($T::$V => $name,)+
                }
            }

            /// What the value means: its doc comment, in one line.
            pub fn doc(self) -> &'static str {
                match self {
                    $($T::$V => concat!($($doc),*).trim_start(),)+
                }
            }
        }

        impl fmt::Display for $T {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.name())
            }
        }
    };
}

vocabulary! {
    /// Where the deployment stands. `Normal` and `RunningOnSecondary` are the steady states; in
    /// every other state a plan is running and only the plan may change the active site.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
    pub enum State {
        /// The primary is active; no plan running.
        Normal = "normal",
        /// Seed step 1: monitoring saw the primary down.
        IncidentDetected = "incident_detected",
        /// Seed step 2: a person decided to fail over (manual gate).
        FailoverDecided = "failover_decided",
        /// Seed step 3, first half: the primary is deactivated; waiting for its runs to end.
        FailoverDraining = "failover_draining",
        /// Seed step 3, second half: the secondary is active.
        FailedOver = "failed_over",
        /// Seed step 4: services checked on the secondary (manual gate).
        SecondaryVerified = "secondary_verified",
        /// Seed steps 5–6: traffic is on the secondary; steady state.
        RunningOnSecondary = "running_on_secondary",
        /// Seed step 7: the primary's infrastructure is back.
        PrimaryRestored = "primary_restored",
        /// Seed step 8: replication secondary -> primary caught up.
        ReplicationSynced = "replication_synced",
        /// Seed step 9: the primary's VMs booted — fenced: their jobs see `Standby`.
        PrimaryStartedFenced = "primary_started_fenced",
        /// Seed step 10: the primary was validated (manual gate).
        PrimaryValidated = "primary_validated",
        /// Seed step 11, first half: the secondary is deactivated; waiting for its runs to end.
        FailbackDraining = "failback_draining",
        /// Seed step 11, second half: the primary is active again.
        FailedBack = "failed_back",
        /// Seed step 12: traffic is back on the primary.
        TrafficOnPrimary = "traffic_on_primary",
        /// Seed step 13: the secondary's VMs are stopped.
        SecondaryStopped = "secondary_stopped",
        /// Checklist item 13: replication primary -> secondary re-enabled.
        ReplicationReversed = "replication_reversed",
    }
}

impl State {
    /// Parses a name (`-` and `_` alike).
    pub fn parse(name: &str) -> Result<State> {
        let norm = name.trim().to_ascii_lowercase().replace('-', "_");
        State::ALL
            .into_iter()
            .find(|s| s.name() == norm)
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "unknown plan state {name:?}; states: {}",
                    State::ALL.map(State::name).join(", ")
                ))
            })
    }

    /// Whether a plan is running in this state (every state but the two steady ones). The
    /// stores read it from the plan document to refuse manual flips while a plan runs.
    pub fn running(self) -> bool {
        // Every state is named, so that a new one is a decision, not a default.
        match self {
            State::Normal | State::RunningOnSecondary => false,
            State::IncidentDetected
            | State::FailoverDecided
            | State::FailoverDraining
            | State::FailedOver
            | State::SecondaryVerified
            | State::PrimaryRestored
            | State::ReplicationSynced
            | State::PrimaryStartedFenced
            | State::PrimaryValidated
            | State::FailbackDraining
            | State::FailedBack
            | State::TrafficOnPrimary
            | State::SecondaryStopped
            | State::ReplicationReversed => true,
        }
    }
}

vocabulary! {
    /// The name of an [`Event`], without its data. What each kind needs from the operator is
    /// [`EventKind::needs`]; where it leads is [`RULES`].
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
    pub enum EventKind {
        /// Monitoring saw the primary down (seed step 1; `pra plan start-failover`).
        IncidentDetected = "incident_detected",
        /// A person decided to fail over (seed step 2, manual gate).
        FailoverDecided = "failover_decided",
        /// Deactivate the primary and start draining its runs (seed step 3).
        ExecuteFailover = "execute_failover",
        /// No run of the old site is alive any more: activate the new site (waits for it).
        Drained = "drained",
        /// Activate the new site although runs of the old site are still alive (journaled).
        ForceDrain = "force_drain",
        /// Services checked on the secondary (seed step 4, manual gate).
        SecondaryVerified = "secondary_verified",
        /// DNS switched and users told: traffic is on the secondary (seed steps 5-6).
        TrafficOnSecondary = "traffic_on_secondary",
        /// The primary's infrastructure is back (seed step 7; `pra plan start-failback`).
        PrimaryRestored = "primary_restored",
        /// Replication secondary -> primary caught up (seed step 8).
        ReplicationSynced = "replication_synced",
        /// The primary's VMs are up, and fenced: their jobs see standby (seed step 9).
        PrimaryStartedFenced = "primary_started_fenced",
        /// The primary was validated (seed step 10, manual gate).
        PrimaryValidated = "primary_validated",
        /// Deactivate the secondary and start draining its runs (seed step 11).
        CommitFailback = "commit_failback",
        /// DNS switched back: traffic is on the primary (seed step 12).
        TrafficOnPrimary = "traffic_on_primary",
        /// The secondary's VMs are stopped (seed step 13).
        SecondaryStopped = "secondary_stopped",
        /// Replication primary -> secondary re-enabled (checklist item 13).
        ReplicationReversed = "replication_reversed",
        /// Post-mortem done: back to normal (checklist item 14).
        BackToNormal = "back_to_normal",
        /// Give up the plan before it is committed (`pra plan abort`).
        Abort = "abort",
    }
}

/// What an event needs besides its name: the operator of a manual gate, or the reason of a
/// forced drain or an abort. [`Event::new`] refuses an event without it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needs {
    /// Nothing.
    Nothing,
    /// The operator who passes a manual gate (`--operator`).
    Operator,
    /// Why (`--reason`), for the journal.
    Reason,
}

impl EventKind {
    /// What the event needs besides its name. [`Event`]'s variants carry the same data (an
    /// `operator` for [`Needs::Operator`], a `reason` for [`Needs::Reason`]); a unit test holds
    /// the two together.
    pub fn needs(self) -> Needs {
        use EventKind as K;
        match self {
            K::FailoverDecided | K::SecondaryVerified | K::PrimaryValidated => Needs::Operator,
            K::ForceDrain | K::Abort => Needs::Reason,
            K::IncidentDetected
            | K::ExecuteFailover
            | K::Drained
            | K::TrafficOnSecondary
            | K::PrimaryRestored
            | K::ReplicationSynced
            | K::PrimaryStartedFenced
            | K::CommitFailback
            | K::TrafficOnPrimary
            | K::SecondaryStopped
            | K::ReplicationReversed
            | K::BackToNormal => Needs::Nothing,
        }
    }

    /// Whether the event is a manual gate that needs an operator name.
    pub fn is_gate(self) -> bool {
        self.needs() == Needs::Operator
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
}

/// What can happen to the plan. Events that the seed gives to a person carry the operator's name;
/// a forced drain and an abort carry their reason.
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
    /// and `abort`): what [`EventKind::needs`] says it needs. A gate without an operator, or a
    /// force or abort without a reason, is an [`Error::InvalidArgument`]; what it does not need
    /// is ignored.
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
        let operator = || need(operator, "an operator (--operator)");
        let reason = || need(reason, "a reason (--reason)");
        Ok(match kind {
            EventKind::IncidentDetected => Event::IncidentDetected,
            EventKind::FailoverDecided => Event::FailoverDecided {
                operator: operator()?,
            },
            EventKind::ExecuteFailover => Event::ExecuteFailover,
            EventKind::Drained => Event::Drained,
            EventKind::ForceDrain => Event::ForceDrain { reason: reason()? },
            EventKind::SecondaryVerified => Event::SecondaryVerified {
                operator: operator()?,
            },
            EventKind::TrafficOnSecondary => Event::TrafficOnSecondary,
            EventKind::PrimaryRestored => Event::PrimaryRestored,
            EventKind::ReplicationSynced => Event::ReplicationSynced,
            EventKind::PrimaryStartedFenced => Event::PrimaryStartedFenced,
            EventKind::PrimaryValidated => Event::PrimaryValidated {
                operator: operator()?,
            },
            EventKind::CommitFailback => Event::CommitFailback,
            EventKind::TrafficOnPrimary => Event::TrafficOnPrimary,
            EventKind::SecondaryStopped => Event::SecondaryStopped,
            EventKind::ReplicationReversed => Event::ReplicationReversed,
            EventKind::BackToNormal => Event::BackToNormal,
            EventKind::Abort => Event::Abort { reason: reason()? },
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

    /// The reason of a forced drain or an abort.
    pub fn reason(&self) -> Option<&str> {
        match self {
            Event::ForceDrain { reason } | Event::Abort { reason } => Some(reason),
            Event::IncidentDetected
            | Event::FailoverDecided { .. }
            | Event::ExecuteFailover
            | Event::Drained
            | Event::SecondaryVerified { .. }
            | Event::TrafficOnSecondary
            | Event::PrimaryRestored
            | Event::ReplicationSynced
            | Event::PrimaryStartedFenced
            | Event::PrimaryValidated { .. }
            | Event::CommitFailback
            | Event::TrafficOnPrimary
            | Event::SecondaryStopped
            | Event::ReplicationReversed
            | Event::BackToNormal => None,
        }
    }
}

/// A site by its role in the topology. [`RULES`] speaks in roles, so the one table holds for any
/// pair of sites; [`transition`] resolves them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The topology's first site (rbx in the seed).
    Primary,
    /// The topology's second site (sbg in the seed).
    Secondary,
}

impl Role {
    /// The site that has this role in `topology`.
    pub fn site(self, topology: &Topology) -> &SiteId {
        match self {
            Role::Primary => topology.primary(),
            Role::Secondary => topology.secondary(),
        }
    }
}

/// An effect as [`RULES`] declares it; [`transition`] turns it into an [`Effect`] for a topology
/// and an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    /// [`Effect::RequireDrained`].
    RequireDrained,
    /// [`Effect::RecordForcedDrain`], with the event's reason.
    RecordForcedDrain,
    /// [`Effect::Deactivate`] the site of this role.
    Deactivate(Role),
    /// [`Effect::Activate`] the site of this role.
    Activate(Role),
}

/// One transition of the machine: in state `from`, event `on` leads to `to`, and the runner
/// performs `effects` in order, in the same store transaction as the new state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// The state the rule applies in.
    pub from: State,
    /// The event.
    pub on: EventKind,
    /// The state after it.
    pub to: State,
    /// What the runner does, in order.
    pub effects: &'static [Act],
    /// The seed's step (or checklist item) the rule carries out, as the README's diagram labels
    /// it; empty for the rules the seed does not have (aborts).
    pub seed: &'static str,
}

/// The machine: every transition there is. A (state, event) pair that is not here is refused.
/// Read by [`target`], [`allowed`], [`transition`] and [`mermaid`]; the README's diagram is
/// [`mermaid`]'s output, checked by a test.
#[rustfmt::skip]
pub const RULES: &[Rule] = {
    use Act::{Activate, Deactivate, RecordForcedDrain, RequireDrained};
    use EventKind as E;
    use Role::{Primary, Secondary};
    use State as S;
    const fn rule(
        from: S,
        on: E,
        to: S,
        effects: &'static [Act],
        seed: &'static str,
    ) -> Rule {
        Rule {
            from,
            on,
            to,
            effects,
            seed,
        }
    }
    &[
        // Failover: seed steps 1-6. The flip is break before make: deactivate, drain, activate.
        rule(S::Normal, E::IncidentDetected, S::IncidentDetected, &[], "1"),
        rule(S::IncidentDetected, E::FailoverDecided, S::FailoverDecided, &[], "2"),
        rule(S::FailoverDecided, E::ExecuteFailover, S::FailoverDraining, &[Deactivate(Primary)], "3"),
        rule(S::FailoverDraining, E::Drained, S::FailedOver, &[RequireDrained, Activate(Secondary)], "3"),
        rule(S::FailoverDraining, E::ForceDrain, S::FailedOver, &[RecordForcedDrain, Activate(Secondary)], "3"),
        rule(S::FailedOver, E::SecondaryVerified, S::SecondaryVerified, &[], "4"),
        rule(S::SecondaryVerified, E::TrafficOnSecondary, S::RunningOnSecondary, &[], "5, 6"),
        // Failback: seed steps 7-13 and the checklist's last items.
        rule(S::RunningOnSecondary, E::PrimaryRestored, S::PrimaryRestored, &[], "7"),
        rule(S::PrimaryRestored, E::ReplicationSynced, S::ReplicationSynced, &[], "8"),
        rule(S::ReplicationSynced, E::PrimaryStartedFenced, S::PrimaryStartedFenced, &[], "9"),
        rule(S::PrimaryStartedFenced, E::PrimaryValidated, S::PrimaryValidated, &[], "10"),
        rule(S::PrimaryValidated, E::CommitFailback, S::FailbackDraining, &[Deactivate(Secondary)], "11"),
        rule(S::FailbackDraining, E::Drained, S::FailedBack, &[RequireDrained, Activate(Primary)], "11"),
        rule(S::FailbackDraining, E::ForceDrain, S::FailedBack, &[RecordForcedDrain, Activate(Primary)], "11"),
        rule(S::FailedBack, E::TrafficOnPrimary, S::TrafficOnPrimary, &[], "12"),
        rule(S::TrafficOnPrimary, E::SecondaryStopped, S::SecondaryStopped, &[], "13"),
        rule(S::SecondaryStopped, E::ReplicationReversed, S::ReplicationReversed, &[], "checklist 13"),
        rule(S::ReplicationReversed, E::BackToNormal, S::Normal, &[], "checklist 14"),
        // Aborts: back to the steady state the plan started from. Aborting a drain gives the
        // role back to the site that just lost it. Once the new site is active the flip is
        // done, and going back is a new plan: no abort from there.
        rule(S::IncidentDetected, E::Abort, S::Normal, &[], ""),
        rule(S::FailoverDecided, E::Abort, S::Normal, &[], ""),
        rule(S::FailoverDraining, E::Abort, S::Normal, &[Activate(Primary)], ""),
        rule(S::PrimaryRestored, E::Abort, S::RunningOnSecondary, &[], ""),
        rule(S::ReplicationSynced, E::Abort, S::RunningOnSecondary, &[], ""),
        rule(S::PrimaryStartedFenced, E::Abort, S::RunningOnSecondary, &[], ""),
        rule(S::PrimaryValidated, E::Abort, S::RunningOnSecondary, &[], ""),
        rule(S::FailbackDraining, E::Abort, S::RunningOnSecondary, &[Activate(Secondary)], ""),
    ]
};

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

/// The rule for `kind` in `state`, if there is one.
pub fn rule(state: State, kind: EventKind) -> Option<&'static Rule> {
    RULES.iter().find(|r| r.from == state && r.on == kind)
}

/// The state `kind` leads to from `state`, or `None` if `state` refuses it.
pub fn target(state: State, kind: EventKind) -> Option<State> {
    rule(state, kind).map(|r| r.to)
}

/// What `pra plan ensure` does to have the plan in a state: scripts (the Zerto hooks) can run
/// it again and again and nothing happens twice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ensure {
    /// The plan is in that state: nothing to do.
    Already,
    /// The plan went through that state on its way to where it is: nothing to do.
    Past,
    /// This one event leads there from where the plan is.
    Apply(EventKind),
    /// No one ordinary event leads there; these are the events the current state accepts.
    Unreachable(Vec<EventKind>),
}

/// The plan's ordinary walk: from `Normal` through failover and failback back to it, by the
/// events that are not exceptions (an abort, a forced drain), derived from [`RULES`].
pub fn walk() -> Vec<State> {
    let mut states = vec![State::Normal];
    loop {
        let here = *states.last().unwrap_or(&State::Normal);
        let next = RULES
            .iter()
            .find(|r| r.from == here && r.on.needs() != Needs::Reason)
            .map(|r| r.to);
        match next {
            Some(s) if !states.contains(&s) => states.push(s),
            _ => return states,
        }
    }
}

/// What it takes to have the plan in `want` from `state`, by [`RULES`] (exceptions — aborts,
/// forced drains — are never taken by themselves: they need a person's reason).
pub fn ensure(state: State, want: State) -> Ensure {
    if state == want {
        return Ensure::Already;
    }
    let walk = walk();
    let at = walk.iter().position(|s| *s == state);
    let was = walk.iter().position(|s| *s == want);
    if let (Some(at), Some(was)) = (at, was)
        && was > 0
        && was < at
    {
        return Ensure::Past;
    }
    let leading: Vec<EventKind> = RULES
        .iter()
        .filter(|r| r.from == state && r.to == want && r.on.needs() != Needs::Reason)
        .map(|r| r.on)
        .collect();
    match leading.as_slice() {
        [one] => Ensure::Apply(*one),
        _ => Ensure::Unreachable(allowed(state)),
    }
}

/// The events `state` accepts, in the order of [`EventKind::ALL`].
pub fn allowed(state: State) -> Vec<EventKind> {
    EventKind::ALL
        .into_iter()
        .filter(|k| rule(state, *k).is_some())
        .collect()
}

/// The pure transition: the next state and the effects, or [`Error::InvalidTransition`] naming
/// the state, the event and the events the state allows.
pub fn transition(state: State, event: &Event, topology: &Topology) -> Result<Transition> {
    let kind = event.kind();
    let rule = rule(state, kind).ok_or_else(|| Error::InvalidTransition {
        state: state.name().into(),
        event: kind.name().into(),
        allowed: allowed(state)
            .into_iter()
            .map(|k| k.name().to_string())
            .collect(),
    })?;
    let effects = rule
        .effects
        .iter()
        .map(|act| match act {
            Act::RequireDrained => Effect::RequireDrained,
            // The table pairs RecordForcedDrain only with events that need a reason (a unit
            // test checks it), so the reason is there.
            Act::RecordForcedDrain => Effect::RecordForcedDrain {
                reason: event.reason().unwrap_or_default().to_string(),
            },
            Act::Deactivate(role) => Effect::Deactivate {
                site: role.site(topology).clone(),
            },
            Act::Activate(role) => Effect::Activate {
                site: role.site(topology).clone(),
            },
        })
        .collect();
    Ok(Transition {
        from: state,
        event: kind,
        to: rule.to,
        effects,
    })
}

/// The machine as a mermaid `stateDiagram-v2`, for the sites of `topology`: one arrow per
/// (from, to) pair of [`RULES`], labelled with its events (and what they need), the seed's step
/// and the flip it makes. The README's diagram is this, for `rbx,sbg`.
pub fn mermaid(topology: &Topology) -> String {
    let flips = |rule: &Rule| -> String {
        rule.effects
            .iter()
            .filter_map(|act| match act {
                Act::Deactivate(role) => Some(format!(" {} -> NONE", role.site(topology))),
                Act::Activate(role) => Some(format!(" NONE -> {}", role.site(topology))),
                Act::RequireDrained | Act::RecordForcedDrain => None,
            })
            .collect()
    };
    let event = |kind: EventKind| -> String {
        match kind.needs() {
            Needs::Nothing => kind.name().to_string(),
            Needs::Operator => format!("{kind} --operator"),
            Needs::Reason => format!("{kind} --reason"),
        }
    };
    let mut out = String::from("stateDiagram-v2\n");
    out.push_str(&format!("    [*] --> {}\n", State::Normal));
    // Rules with the same arrow (drained and force_drain) share one line.
    let mut done = vec![false; RULES.len()];
    for (i, rule) in RULES.iter().enumerate() {
        if done[i] {
            continue;
        }
        let same = |r: &Rule| r.from == rule.from && r.to == rule.to && r.seed == rule.seed;
        let mut events = Vec::new();
        for (j, other) in RULES.iter().enumerate().skip(i) {
            if same(other) && flips(other) == flips(rule) {
                done[j] = true;
                events.push(event(other.on));
            }
        }
        let seed = if rule.seed.is_empty() {
            String::new()
        } else {
            format!(" ({})", rule.seed)
        };
        out.push_str(&format!(
            "    {} --> {}: {}{seed}{}\n",
            rule.from,
            rule.to,
            events.join(" / "),
            flips(rule)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vocabulary_names_are_the_serde_names() {
        for s in State::ALL {
            assert_eq!(serde_json::to_value(s).unwrap(), s.name());
        }
        for k in EventKind::ALL {
            assert_eq!(serde_json::to_value(k).unwrap(), k.name());
            // The data-carrying Event is tagged with the same name.
            let e = Event::new(k, Some("op"), Some("why")).unwrap();
            assert_eq!(serde_json::to_value(&e).unwrap()["event"], k.name());
            assert_eq!(EventKind::parse(&k.name().replace('_', "-")).unwrap(), k);
        }
    }

    #[test]
    fn needs_match_the_data_events_carry() {
        for k in EventKind::ALL {
            let e = Event::new(k, Some("op"), Some("why")).unwrap();
            assert_eq!(e.kind(), k);
            assert_eq!(e.operator().is_some(), k.needs() == Needs::Operator, "{k}");
            assert_eq!(e.reason().is_some(), k.needs() == Needs::Reason, "{k}");
            assert_eq!(
                Event::new(k, None, None).is_ok(),
                k.needs() == Needs::Nothing
            );
        }
    }

    #[test]
    fn the_table_is_a_function_and_reaches_every_state() {
        for (i, a) in RULES.iter().enumerate() {
            for b in &RULES[i + 1..] {
                assert!(
                    (a.from, a.on) != (b.from, b.on),
                    "two rules for {} --{}-->",
                    a.from,
                    a.on
                );
            }
            // A forced drain's reason comes from the event.
            if a.effects.contains(&Act::RecordForcedDrain) {
                assert_eq!(a.on.needs(), Needs::Reason, "{} --{}-->", a.from, a.on);
            }
        }
        for s in State::ALL {
            assert!(RULES.iter().any(|r| r.to == s), "{s} is unreachable");
            assert!(!allowed(s).is_empty(), "{s} is a dead end");
        }
        for k in EventKind::ALL {
            assert!(RULES.iter().any(|r| r.on == k), "{k} is never accepted");
        }
    }

    #[test]
    fn doc_is_the_first_words_of_the_doc_comment() {
        assert_eq!(
            State::Normal.doc(),
            "The primary is active; no plan running."
        );
        for k in EventKind::ALL {
            assert!(!k.doc().is_empty() && !k.doc().starts_with(' '), "{k}");
        }
    }

    #[test]
    fn ensure_is_idempotent_along_the_walk() {
        let walk = walk();
        assert_eq!(walk.first(), Some(&State::Normal));
        assert_eq!(walk.last(), Some(&State::ReplicationReversed));
        assert_eq!(walk.len(), 16, "{walk:?}");
        for (i, s) in walk.iter().enumerate() {
            assert_eq!(ensure(*s, *s), Ensure::Already);
            if let Some(next) = walk.get(i + 1) {
                match ensure(*s, *next) {
                    Ensure::Apply(k) => assert_eq!(target(*s, k), Some(*next)),
                    other => panic!("{s:?} -> {next:?}: {other:?}"),
                }
            }
            for before in walk.iter().take(i).skip(1) {
                assert_eq!(ensure(*s, *before), Ensure::Past, "{s:?} past {before:?}");
            }
        }
        // The drain's exit is `drained`, never the forced one.
        assert_eq!(
            ensure(State::FailoverDraining, State::FailedOver),
            Ensure::Apply(EventKind::Drained)
        );
        // Two steps away, or an abort: refused with what the state accepts.
        assert_eq!(
            ensure(State::Normal, State::FailoverDecided),
            Ensure::Unreachable(vec![EventKind::IncidentDetected])
        );
        assert!(matches!(
            ensure(State::IncidentDetected, State::Normal),
            Ensure::Unreachable(_)
        ));
    }
}
