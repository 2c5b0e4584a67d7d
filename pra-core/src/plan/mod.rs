//! The failover/failback plan: the seed's 13 steps and its checklist as a state machine
//! ([`machine`]), the runner that performs its steps against a store ([`runner`]), and the KPI
//! report computed from what the steps left in the journal ([`report`](mod@report)).
//!
//! # Advice for hackers
//!
//! The machine is declared once, in [`machine::RULES`] (one row per transition: from, event,
//! to, effects as data, the seed's step) and in the two vocabularies [`State`] and
//! [`EventKind`] (each value's name — also its serde name — and its doc comment, which is its
//! help text). [`target`], [`allowed`], [`transition`], [`EventKind::is_gate`], the CLI's event
//! list (`pra plan apply --help`, `pra plan next`) and the README's diagram are read from them.
//! What must still change together:
//!
//! * **A new state**: a variant in [`State`] (name and doc), the rows that enter and leave it,
//!   and its arm in [`State::running`] (is it a steady state?). Stored plan documents and the
//!   journal name states, so a state is never renamed, only added.
//! * **A new event**: a variant in [`EventKind`], its data in [`Event`] (an `operator` for a
//!   gate, a `reason` for a forced step) with the arms of [`Event::kind`], [`Event::new`],
//!   [`Event::operator`] and [`Event::reason`], and [`EventKind::needs`]. The compiler finds
//!   every arm (no match has a `_` arm); a unit test holds `needs` and the data together.
//! * **A new kind of effect**: a variant in [`machine::Act`] (as the table writes it) and in
//!   [`Effect`] (as the runner receives it), its translation in [`transition`] and its label
//!   in [`mermaid`], and its handling in [`Runner::apply`], which does it inside the one store commit. Effects that
//!   flip the active site must stay break before make: no row both deactivates and activates.
//! * **Any change to the table**: the README's diagram is [`mermaid`]'s output; run
//!   `make readme` (`PRA_BLESS_README=1 cargo test -p pra-core --test readme`) and commit the
//!   README, or that test fails. The table in pra-core/tests/plan.rs that lists what each state
//!   accepts is written out by hand on purpose: it is the check on the table, not a copy of it.
//! * **The report** reads the journal's `plan_step` entries by event name: a renamed event would
//!   silently drop out of the KPIs, which is one more reason never to rename.
//! * The stores read the plan document's `running` and `state` fields (to refuse manual flips
//!   while a plan runs): [`Plan`]'s field names are a format, and a unit test pins them.

pub mod checks;
pub mod machine;
pub mod report;
pub mod runner;

pub use machine::{
    Effect, Ensure, Event, EventKind, Needs, RULES, Rule, State, Transition, allowed, ensure,
    mermaid, target, transition, walk,
};
pub use report::{
    Check, FencedPeriod, Overlap, Report, ReportStep, WorkUnit, ground_truth, human, report,
};
pub use runner::{Applied, DrainPolicy, Plan, Runner, Step};
