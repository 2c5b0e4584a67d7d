//! `pra plan`: the failover/failback plan's commands, from starting a plan to its KPI report.
//! The events, what they need and what they mean come from pra-core's plan vocabulary.

use pra_core::plan::{self, Applied, Event, EventKind, Needs, Runner};
use pra_core::store::Store;
use pra_core::{Error, SystemClock};

use super::{Out, Who, site_name};
use crate::config::Config;
use crate::exit;

#[derive(clap::Subcommand, Debug)]
pub enum PlanCmd {
    /// Start a failover: the incident is detected (seed step 1).
    StartFailover {
        #[command(flatten)]
        who: Who,
    },
    /// Start a failback: the primary is restored (seed step 7).
    StartFailback {
        #[command(flatten)]
        who: Who,
    },
    /// Show the current state and the events it accepts.
    Next,
    /// Apply an event (e.g. failover-decided --operator alice, drained, commit-failback).
    #[command(after_help = events_help())]
    Apply {
        /// The event name (listed below).
        event: String,
        /// The operator who passes a manual gate.
        #[arg(long)]
        operator: Option<String>,
        /// For `drained`: try once instead of waiting up to drain_timeout_seconds.
        #[arg(long)]
        no_wait: bool,
        /// Apply the event even though its gate checks fail (needs --reason; journaled).
        #[arg(long = "override")]
        override_checks: bool,
        #[command(flatten)]
        who: Who,
    },
    /// Abort the plan before it is committed.
    Abort {
        #[command(flatten)]
        who: Who,
    },
    /// The plan's state and steps.
    Status,
    /// Have the plan in STATE, safe to run again: nothing if it is there or went through it
    /// already, the one ordinary event that leads there otherwise (with its checks, and
    /// `--operator` for a manual gate); refused with what the plan accepts when no single
    /// event does. For scripts (the Zerto hooks) that may run twice.
    Ensure {
        /// The state (e.g. failover-decided, failed-over, running-on-secondary).
        state: String,
        /// The operator who passes a manual gate, if that is the event.
        #[arg(long)]
        operator: Option<String>,
        /// Apply the event even though its gate checks fail (needs --reason; journaled).
        #[arg(long = "override")]
        override_checks: bool,
        #[command(flatten)]
        who: Who,
    },
    /// The KPIs of the last plan: RTO, RPO, failback time, fenced time, double execution.
    Report {
        /// Read the runs started from this UTC time (RFC 3339, or "YYYY-MM-DD HH:MM[:SS]")
        /// [default: the last incident or the start of the history window, whichever is later].
        #[arg(long, value_parser = super::backup::parse_time)]
        since: Option<chrono::DateTime<chrono::Utc>>,
    },
}

/// How an event is written on the command line, with what it needs: `failover-decided
/// --operator NAME`.
fn usage(kind: EventKind) -> String {
    let needs = match kind.needs() {
        Needs::Nothing => "",
        Needs::Operator => " --operator NAME",
        Needs::Reason => " --reason WHY",
    };
    format!("{}{needs}", kind.name().replace('_', "-"))
}

/// The end of `pra plan apply`'s help: every event of the plan's vocabulary, with what it needs
/// and what it means.
fn events_help() -> String {
    let mut s =
        String::from("Events (each state accepts only some: `pra plan next` lists those):\n");
    let width = EventKind::ALL.map(|k| usage(k).len()).into_iter().max();
    for k in EventKind::ALL {
        let width = width.unwrap_or_default();
        s.push_str(&format!("  {:<width$}  {}\n", usage(k), k.doc()));
    }
    s
}

/// Applies a plan event (or shows the plan, its next events or its KPI report) and prints the
/// transition and the record after it; an event already applied last is reported, not repeated.
pub fn plan(cfg: &Config, out: &Out, cmd: &PlanCmd) -> Result<u8, Error> {
    let store = cfg.open_store()?;
    let clock = SystemClock;
    let runner = Runner::new(&*store, &cfg.topology, &clock, cfg.drain_policy());
    let mut overridden = false;
    let (event, who, wait) = match cmd {
        PlanCmd::StartFailover { who } => (Event::IncidentDetected, who, false),
        PlanCmd::StartFailback { who } => (Event::PrimaryRestored, who, false),
        PlanCmd::Abort { who } => (
            Event::new(EventKind::Abort, None, Some(&who.reason))?,
            who,
            false,
        ),
        PlanCmd::Apply {
            event,
            operator,
            no_wait,
            override_checks,
            who,
        } => {
            overridden = *override_checks;
            let kind = EventKind::parse(event)?;
            (
                Event::new(kind, operator.as_deref(), Some(&who.reason))?,
                who,
                kind == EventKind::Drained && !no_wait,
            )
        }
        PlanCmd::Next | PlanCmd::Status => {
            let p = runner.plan()?;
            let record = store.load()?;
            let next = plan::allowed(p.state);
            out.print(
                &serde_json::json!({ "plan": p, "allowed": next, "record": record }),
                || {
                    let mut s = format!(
                        "plan: {}  state: {}  active site: {} (token {})\n",
                        p.id.as_deref().unwrap_or("-"),
                        p.state,
                        site_name(record.site.as_ref()),
                        record.token
                    );
                    if matches!(cmd, PlanCmd::Status) {
                        for st in &p.steps {
                            s.push_str(&format!(
                                "  {}  {:<24} {} -> {}  by {}\n",
                                st.at.format("%H:%M:%S"),
                                st.event.kind(),
                                st.from,
                                st.to,
                                st.by
                            ));
                        }
                    }
                    s.push_str("next:\n");
                    for k in next {
                        s.push_str(&format!("  pra plan apply {}\n", usage(k)));
                    }
                    s
                },
            )?;
            return Ok(exit::OK);
        }
        PlanCmd::Report { since } => return plan_report(cfg, out, &*store, *since),
        PlanCmd::Ensure {
            state,
            operator,
            override_checks,
            who,
        } => {
            overridden = *override_checks;
            let want = plan::State::parse(state)?;
            let now = runner.plan()?.state;
            match plan::ensure(now, want) {
                plan::Ensure::Already | plan::Ensure::Past => {
                    let already = now == want;
                    out.print(
                        &serde_json::json!({"state": now, "ensured": want, "applied": null}),
                        || {
                            if already {
                                format!("plan already in {want}: nothing to do")
                            } else {
                                format!(
                                    "plan went through {want} already (now {now}): nothing to do"
                                )
                            }
                        },
                    )?;
                    return Ok(exit::OK);
                }
                plan::Ensure::Apply(kind) => (
                    Event::new(kind, operator.as_deref(), Some(&who.reason))?,
                    who,
                    kind == EventKind::Drained,
                ),
                plan::Ensure::Unreachable(accepted) => {
                    return Err(Error::InvalidTransition {
                        state: now.name().into(),
                        event: format!("(no single event leads to {want})"),
                        allowed: accepted.iter().map(|k| k.name().to_string()).collect(),
                    });
                }
            }
        }
    };
    let actor = who.actor()?;
    // The event's gate checks first (pra.toml [plan_checks]): journaled, and a failure blocks
    // the event unless overridden on the record. Only for an event the plan accepts now: a
    // refused or repeated event runs nothing.
    let kind = event.kind();
    if let Some(commands) = cfg.plan_checks.get(kind.name())
        && plan::target(runner.plan()?.state, kind).is_some()
    {
        let results = plan::checks::run(commands, cfg.plan_check_timeout);
        for r in &results {
            tracing::info!(command = %r.command, exit = ?r.exit_code, passed = r.passed(), "gate check");
        }
        plan::checks::gate(&*store, &actor, kind.name(), results, overridden)?;
    }
    let applied = if wait {
        runner.drain(&actor)?
    } else {
        runner.apply(event, &actor)?
    };
    match &applied {
        Applied::Done {
            transition,
            record,
            plan,
        } => out.print(
            &serde_json::json!({"applied": transition, "record": record, "plan": plan}),
            || {
                format!(
                    "plan {}: {} --{}--> {}\nactive site: {} (token {})",
                    plan.id.as_deref().unwrap_or("-"),
                    transition.from,
                    transition.event,
                    transition.to,
                    site_name(record.site.as_ref()),
                    record.token
                )
            },
        )?,
        Applied::AlreadyApplied { step } => {
            out.print(&serde_json::json!({"already_applied": step}), || {
                format!(
                    "already applied at {} by {}: {} -> {}; nothing repeated",
                    step.at.format("%Y-%m-%d %H:%M:%S"),
                    step.by,
                    step.from,
                    step.to
                )
            })?
        }
    }
    Ok(exit::OK)
}

/// Prints the KPI report of the last plan (pra-core gathers it).
fn plan_report(
    cfg: &Config,
    out: &Out,
    store: &dyn Store,
    since: Option<chrono::DateTime<chrono::Utc>>,
) -> Result<u8, Error> {
    let window = match since {
        Some(t) => plan::report::Window::Since(t),
        None => plan::report::Window::Recent {
            history: cfg.history_window(),
        },
    };
    let r = plan::report::build(store, &cfg.backup_dir, cfg.lost_after, &SystemClock, window)?;
    out.print(&r, || r.table())?;
    Ok(exit::OK)
}
