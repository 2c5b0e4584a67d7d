//! The failover/failback plan: transitions, the runner against a real store, KPIs, and a model
//! test of the zero double-execution promise.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Duration, TimeZone, Utc};
use pra_core::plan::{self, Applied, DrainPolicy, Event, EventKind, Runner, State};
use pra_core::store::{Admission, RunId, RunRecord, RunRegistry, RunStart, SqliteStore, Store};
use pra_core::{
    Actor, Clock, Error, ErrorKind, FencingToken, ManualClock, SiteChange, SiteId, Topology,
    Verdict, check,
};
use proptest::prelude::*;

fn topo() -> Topology {
    Topology::parse("rbx,sbg").unwrap()
}
fn site(s: &str) -> SiteId {
    SiteId::new(s).unwrap()
}
fn ops() -> Actor {
    Actor::new("ops", "drill").unwrap()
}
fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 1, 2, 0, 0).unwrap()
}
fn ev(kind: EventKind) -> Event {
    Event::new(kind, Some("alice"), Some("test reason")).unwrap()
}

struct World {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    clock: Arc<ManualClock>,
    store: SqliteStore,
    topo: Topology,
}

impl World {
    fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let clock = Arc::new(ManualClock::new(t0()));
        let store = SqliteStore::open(&path, clock.clone()).unwrap();
        store
            .change(
                SiteChange::Activate {
                    site: site("rbx"),
                    expect: FencingToken(0),
                },
                &ops(),
            )
            .unwrap();
        World {
            _dir: dir,
            path,
            clock,
            store,
            topo: topo(),
        }
    }
    fn runner(&self) -> Runner<'_> {
        Runner::new(
            &self.store,
            &self.topo,
            &*self.clock,
            DrainPolicy::default(),
        )
    }
    fn apply(&self, kind: EventKind) -> Result<Applied, Error> {
        self.runner().apply(ev(kind), &ops())
    }
    fn state(&self) -> State {
        self.runner().plan().unwrap().state
    }
    fn active(&self) -> Option<String> {
        self.store.load().unwrap().site.map(|s| s.to_string())
    }
    fn start_run(&self, on: &str, job: &str) -> pra_core::Result<RunId> {
        let token = self.store.load()?.token;
        let admission = self.store.run_start(&RunStart {
            job: job.into(),
            site: site(on),
            token,
            host: format!("{on}-vm"),
            pid: 1,
            containment: None,
            schedule: None,
        })?;
        match admission {
            Admission::Admitted { id, .. } => Ok(id),
            Admission::Standby { .. } => Err(pra_core::Error::Refused(format!("{on} is standby"))),
        }
    }
}

#[test]
fn every_state_accepts_exactly_the_documented_events() {
    use EventKind as K;
    use State as S;
    let expected: Vec<(S, Vec<K>)> = vec![
        (S::Normal, vec![K::IncidentDetected]),
        (S::IncidentDetected, vec![K::FailoverDecided, K::Abort]),
        (S::FailoverDecided, vec![K::ExecuteFailover, K::Abort]),
        (
            S::FailoverDraining,
            vec![K::Drained, K::ForceDrain, K::Abort],
        ),
        (S::FailedOver, vec![K::SecondaryVerified]),
        (S::SecondaryVerified, vec![K::TrafficOnSecondary]),
        (S::RunningOnSecondary, vec![K::PrimaryRestored]),
        (S::PrimaryRestored, vec![K::ReplicationSynced, K::Abort]),
        (
            S::ReplicationSynced,
            vec![K::PrimaryStartedFenced, K::Abort],
        ),
        (S::PrimaryStartedFenced, vec![K::PrimaryValidated, K::Abort]),
        (S::PrimaryValidated, vec![K::CommitFailback, K::Abort]),
        (
            S::FailbackDraining,
            vec![K::Drained, K::ForceDrain, K::Abort],
        ),
        (S::FailedBack, vec![K::TrafficOnPrimary]),
        (S::TrafficOnPrimary, vec![K::SecondaryStopped]),
        (S::SecondaryStopped, vec![K::ReplicationReversed]),
        (S::ReplicationReversed, vec![K::BackToNormal]),
    ];
    assert_eq!(expected.len(), State::ALL.len());
    for (state, allowed) in expected {
        assert_eq!(plan::allowed(state), allowed, "{state}");
        for kind in EventKind::ALL {
            match plan::transition(state, &ev(kind), &topo()) {
                Ok(t) => assert!(allowed.contains(&kind), "{state} accepted {kind}: {t:?}"),
                Err(e) => {
                    assert!(!allowed.contains(&kind), "{state} refused {kind}: {e}");
                    let msg = e.to_string();
                    assert_eq!(e.kind(), ErrorKind::InvalidTransition);
                    assert!(
                        msg.contains(state.name()) && msg.contains(kind.name()),
                        "{msg}"
                    );
                    for a in &allowed {
                        assert!(msg.contains(a.name()), "{msg} should list {a}");
                    }
                }
            }
        }
    }
}

#[test]
fn flips_are_break_before_make_and_only_in_the_drain_steps() {
    let t = topo();
    let effects = |s, k| plan::transition(s, &ev(k), &t).unwrap().effects;
    use plan::Effect as E;
    assert_eq!(
        effects(State::FailoverDecided, EventKind::ExecuteFailover),
        vec![E::Deactivate { site: site("rbx") }]
    );
    assert_eq!(
        effects(State::FailoverDraining, EventKind::Drained),
        vec![E::RequireDrained, E::Activate { site: site("sbg") }]
    );
    assert_eq!(
        effects(State::PrimaryValidated, EventKind::CommitFailback),
        vec![E::Deactivate { site: site("sbg") }]
    );
    assert_eq!(
        effects(State::FailbackDraining, EventKind::Drained),
        vec![E::RequireDrained, E::Activate { site: site("rbx") }]
    );
    assert_eq!(
        effects(State::FailbackDraining, EventKind::ForceDrain),
        vec![
            E::RecordForcedDrain {
                reason: "test reason".into()
            },
            E::Activate { site: site("rbx") }
        ]
    );
    // No transition both deactivates and activates.
    for s in State::ALL {
        for k in plan::allowed(s) {
            let e = effects(s, k);
            let flips = e
                .iter()
                .filter(|e| matches!(e, E::Activate { .. } | E::Deactivate { .. }))
                .count();
            assert!(flips <= 1, "{s} --{k}--> flips twice: {e:?}");
        }
    }
}

#[test]
fn gates_need_an_operator_and_forces_need_a_reason() {
    for k in [
        EventKind::FailoverDecided,
        EventKind::SecondaryVerified,
        EventKind::PrimaryValidated,
    ] {
        assert!(k.is_gate());
        assert_eq!(
            Event::new(k, None, None).unwrap_err().kind(),
            ErrorKind::InvalidArgument
        );
        assert_eq!(
            Event::new(k, Some("  "), None).unwrap_err().kind(),
            ErrorKind::InvalidArgument
        );
        assert_eq!(
            Event::new(k, Some("bob"), None).unwrap().operator(),
            Some("bob")
        );
    }
    assert!(Event::new(EventKind::ForceDrain, Some("bob"), None).is_err());
    assert!(Event::new(EventKind::Abort, None, Some("a\nb")).is_err());
    assert_eq!(
        EventKind::parse("commit-failback").unwrap(),
        EventKind::CommitFailback
    );
    assert_eq!(
        EventKind::parse("reboot").unwrap_err().kind(),
        ErrorKind::InvalidArgument
    );
}

#[test]
fn full_failover_and_failback_walk() {
    let w = World::new();
    use EventKind as K;
    let guard = |s: &str| check(&w.store, &site(s)).unwrap();
    assert_eq!(w.state(), State::Normal);
    w.apply(K::IncidentDetected).unwrap();
    w.apply(K::FailoverDecided).unwrap();
    assert_eq!(w.active().as_deref(), Some("rbx"));
    w.apply(K::ExecuteFailover).unwrap();
    assert_eq!(w.active(), None, "break before make");
    assert!(!guard("rbx").may_run() && !guard("sbg").may_run());
    w.runner().drain(&ops()).unwrap();
    assert_eq!(w.active().as_deref(), Some("sbg"));
    for k in [
        K::SecondaryVerified,
        K::TrafficOnSecondary,
        K::PrimaryRestored,
        K::ReplicationSynced,
        K::PrimaryStartedFenced,
    ] {
        w.apply(k).unwrap();
    }
    // Seed step 9: the primary's VMs are up, and their crons see Standby.
    assert_eq!(
        guard("rbx"),
        Verdict::Standby {
            active: Some(site("sbg")),
            token: FencingToken(3)
        }
    );
    w.apply(K::PrimaryValidated).unwrap();
    w.apply(K::CommitFailback).unwrap();
    assert_eq!(w.active(), None);
    w.runner().drain(&ops()).unwrap();
    assert_eq!(w.active().as_deref(), Some("rbx"));
    for k in [
        K::TrafficOnPrimary,
        K::SecondaryStopped,
        K::ReplicationReversed,
        K::BackToNormal,
    ] {
        w.apply(k).unwrap();
    }
    assert_eq!(w.state(), State::Normal);
    assert_eq!(w.store.load().unwrap().token, FencingToken(5));
    // Every step is journaled, with the operators of the gates, and the chain is intact.
    let journal = w.store.journal().unwrap();
    let gates: Vec<_> = journal
        .iter()
        .filter_map(|e| match &e.event {
            pra_core::store::JournalEvent::PlanStep {
                event,
                operator: Some(op),
                ..
            } => Some((event.clone(), op.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(gates.len(), 3);
    assert!(gates.iter().all(|(_, op)| op == "alice"));
    assert_eq!(
        w.store.verify_journal().unwrap().entries as usize,
        journal.len()
    );
    assert_eq!(
        journal.len(),
        1 + 16 + 4,
        "1 activation, 16 plan steps, 4 flips"
    );
}

#[test]
fn manual_flips_are_refused_while_a_plan_runs() {
    let w = World::new();
    w.apply(EventKind::IncidentDetected).unwrap();
    let e = w
        .store
        .change(
            SiteChange::Deactivate {
                expect: FencingToken(1),
            },
            &ops(),
        )
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Refused);
    assert!(e.to_string().contains("incident_detected"), "{e}");
    w.apply(EventKind::Abort).unwrap();
    w.store
        .change(
            SiteChange::Deactivate {
                expect: FencingToken(1),
            },
            &ops(),
        )
        .unwrap();
}

#[test]
fn abort_a_failback_before_commit_keeps_or_gives_back_the_secondary() {
    use EventKind as K;
    let w = World::new();
    for k in [
        K::IncidentDetected,
        K::FailoverDecided,
        K::ExecuteFailover,
        K::Drained,
        K::SecondaryVerified,
        K::TrafficOnSecondary,
    ] {
        w.apply(k).unwrap();
    }
    // Abort before the flip: the secondary was active all along.
    for k in [
        K::PrimaryRestored,
        K::ReplicationSynced,
        K::PrimaryStartedFenced,
        K::PrimaryValidated,
    ] {
        w.apply(k).unwrap();
    }
    w.apply(K::Abort).unwrap();
    assert_eq!(
        (w.state(), w.active().as_deref()),
        (State::RunningOnSecondary, Some("sbg"))
    );
    // Abort during the drain: the secondary gets the role back.
    for k in [
        K::PrimaryRestored,
        K::ReplicationSynced,
        K::PrimaryStartedFenced,
        K::PrimaryValidated,
        K::CommitFailback,
    ] {
        w.apply(k).unwrap();
    }
    assert_eq!(w.active(), None);
    let before = w.store.load().unwrap().token;
    w.apply(K::Abort).unwrap();
    assert_eq!(
        (w.state(), w.active().as_deref()),
        (State::RunningOnSecondary, Some("sbg"))
    );
    assert_eq!(
        w.store.load().unwrap().token,
        before.checked_next().unwrap()
    );
    // After the commit there is no abort.
    for k in [
        K::PrimaryRestored,
        K::ReplicationSynced,
        K::PrimaryStartedFenced,
        K::PrimaryValidated,
        K::CommitFailback,
        K::Drained,
    ] {
        w.apply(k).unwrap();
    }
    assert_eq!(
        w.apply(K::Abort).unwrap_err().kind(),
        ErrorKind::InvalidTransition
    );
}

#[test]
fn drain_waits_for_old_runs_and_can_be_forced() {
    use EventKind as K;
    let w = World::new();
    let run = w.start_run("rbx", "invoices").unwrap();
    w.apply(K::IncidentDetected).unwrap();
    w.apply(K::FailoverDecided).unwrap();
    w.apply(K::ExecuteFailover).unwrap();
    // No new run can start anywhere while nobody is active.
    assert!(w.start_run("sbg", "invoices").is_err());
    // The rbx run heartbeats: Drained is refused and names it.
    let e = w.apply(K::Drained).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Busy);
    assert!(e.to_string().contains("invoices on rbx"), "{e}");
    // drain() waits on the clock and gives up after its timeout (no real sleep: ManualClock).
    let short = DrainPolicy {
        timeout: Duration::seconds(30),
        lost_after: Duration::hours(1),
        poll: Duration::seconds(5),
    };
    let started = w.clock.now();
    let e = Runner::new(&w.store, &w.topo, &*w.clock, short)
        .drain(&ops())
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Busy);
    assert!(w.clock.now() - started >= Duration::seconds(30));
    // The run ends: the drain completes.
    w.store.run_finish(run, Some(0), "exited").unwrap();
    w.runner().drain(&ops()).unwrap();
    assert_eq!(w.state(), State::FailedOver);

    // Failback with a secondary run that never reports again (site dead): force it.
    for k in [
        K::SecondaryVerified,
        K::TrafficOnSecondary,
        K::PrimaryRestored,
        K::ReplicationSynced,
        K::PrimaryStartedFenced,
        K::PrimaryValidated,
    ] {
        w.apply(k).unwrap();
    }
    w.start_run("sbg", "mailer").unwrap();
    w.apply(K::CommitFailback).unwrap();
    assert_eq!(w.apply(K::Drained).unwrap_err().kind(), ErrorKind::Busy);
    w.apply(K::ForceDrain).unwrap();
    assert_eq!(w.active().as_deref(), Some("rbx"));
    let forced: Vec<_> = w
        .store
        .journal()
        .unwrap()
        .into_iter()
        .filter(|e| {
            matches!(
                e.event,
                pra_core::store::JournalEvent::DrainForced { alive_runs: 1, .. }
            )
        })
        .collect();
    assert_eq!(forced.len(), 1);
    assert_eq!(forced[0].reason, "drill");
}

#[test]
fn lost_runs_do_not_hold_a_drain() {
    let w = World::new();
    w.start_run("rbx", "invoices").unwrap();
    for k in [
        EventKind::IncidentDetected,
        EventKind::FailoverDecided,
        EventKind::ExecuteFailover,
    ] {
        w.apply(k).unwrap();
    }
    // A wall clock that jumps (NTP, a skewed host) proves nothing: a runner that has not
    // watched the run for lost_after on its own monotonic clock counts it alive.
    w.clock.set(t0() + Duration::days(1));
    let e = w.apply(EventKind::Drained).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Busy, "{e}");
    // A drain watches it: silent for lost_after (60 s) of the drain's own clock, it is lost.
    let runner = w.runner();
    let before = w.clock.monotonic();
    runner.drain(&ops()).unwrap();
    let waited = w.clock.monotonic() - before;
    assert!(
        waited >= std::time::Duration::from_secs(60),
        "the drain waited {waited:?}"
    );
    assert_eq!(w.active().as_deref(), Some("sbg"));
}

#[test]
fn a_plan_resumes_after_reopen_and_retries_are_not_repeated() {
    use EventKind as K;
    let w = World::new();
    for k in [K::IncidentDetected, K::FailoverDecided, K::ExecuteFailover] {
        w.apply(k).unwrap();
    }
    let token = w.store.load().unwrap().token;
    // The same event again (a retry after a lost answer) is reported, not repeated.
    match w.apply(K::ExecuteFailover).unwrap() {
        Applied::AlreadyApplied { step } => assert_eq!(step.to, State::FailoverDraining),
        other => panic!("expected AlreadyApplied, got {other:?}"),
    }
    assert_eq!(w.store.load().unwrap().token, token, "no second flip");
    // A new process opens the store and carries on.
    let reopened = SqliteStore::open(&w.path, w.clock.clone()).unwrap();
    let r = Runner::new(&reopened, &w.topo, &*w.clock, DrainPolicy::default());
    assert_eq!(r.plan().unwrap().state, State::FailoverDraining);
    r.apply(Event::Drained, &ops()).unwrap();
    assert_eq!(reopened.load().unwrap().site, Some(site("sbg")));
}

#[test]
fn two_runners_racing_on_one_event_apply_it_once() {
    let w = World::new();
    w.apply(EventKind::IncidentDetected).unwrap();
    w.apply(EventKind::FailoverDecided).unwrap();
    let other = SqliteStore::open(&w.path, w.clock.clone()).unwrap();
    let results: Vec<_> = std::thread::scope(|s| {
        let a = s.spawn(|| w.apply(EventKind::ExecuteFailover));
        let b = s.spawn(|| {
            Runner::new(&other, &w.topo, &*w.clock, DrainPolicy::default())
                .apply(Event::ExecuteFailover, &ops())
        });
        vec![a.join().unwrap(), b.join().unwrap()]
    });
    let done = results
        .iter()
        .filter(|r| matches!(r, Ok(Applied::Done { .. })))
        .count();
    let again = results
        .iter()
        .filter(|r| matches!(r, Ok(Applied::AlreadyApplied { .. })))
        .count();
    assert_eq!((done, again), (1, 1), "{results:?}");
    assert_eq!(w.store.load().unwrap().token, FencingToken(2));
}

fn run(id: i64, job: &str, on: &str, start: i64, end: Option<i64>) -> RunRecord {
    RunRecord {
        id: RunId(id),
        start: RunStart {
            job: job.into(),
            site: site(on),
            token: FencingToken(1),
            host: "h".into(),
            pid: 1,
            containment: None,
            schedule: None,
        },
        beats: 0,
        started_at: t0() + Duration::seconds(start),
        heartbeat_at: t0() + Duration::seconds(end.unwrap_or(start)),
        finished_at: end.map(|e| t0() + Duration::seconds(e)),
        exit_code: Some(0),
        outcome: None,
    }
}

#[test]
fn kpis_from_a_scripted_plan_match_hand_computed_answers() {
    use EventKind as K;
    let w = World::new();
    let step = |k: K, after_secs: i64| {
        w.clock.advance(Duration::seconds(after_secs));
        w.apply(k).unwrap();
    };
    // t0 + 0: incident. +300 decided, +60 execute (fence rbx), +90 drained (sbg active):
    // fenced 90 s. +600 verified, +300 traffic: RTO = 300+60+90+600+300 = 1350 s.
    step(K::IncidentDetected, 0);
    step(K::FailoverDecided, 300);
    step(K::ExecuteFailover, 60);
    step(K::Drained, 90);
    step(K::SecondaryVerified, 600);
    step(K::TrafficOnSecondary, 300);
    // Failback: restored +3600, then 120, 60, 600, commit +60, drained +30 (fenced 30 s),
    // traffic +240: failback = 120+60+600+60+30+240 = 1110 s.
    step(K::PrimaryRestored, 3600);
    step(K::ReplicationSynced, 120);
    step(K::PrimaryStartedFenced, 60);
    step(K::PrimaryValidated, 600);
    step(K::CommitFailback, 60);
    step(K::Drained, 30);
    step(K::TrafficOnPrimary, 240);
    let journal = w.store.journal().unwrap();
    let last_backup = t0() - Duration::seconds(40);
    let r = plan::report(
        &journal,
        &[],
        Some(last_backup),
        w.clock.now(),
        Duration::seconds(60),
    );
    assert_eq!(r.rto_seconds, Some(1350.0));
    assert_eq!(r.failback_seconds, Some(1110.0));
    assert_eq!(r.rpo_seconds, Some(40.0));
    let fenced: Vec<f64> = r.fenced.iter().map(|p| p.seconds).collect();
    assert_eq!(fenced, vec![90.0, 30.0]);
    assert_eq!(r.double_execution_seconds, 0.0);
    assert!(
        r.checks.iter().all(|c| c.pass == Some(true)),
        "{:?}",
        r.checks
    );
    assert!(r.table().contains("PASS"));

    // Double execution from hand-made runs: invoices overlaps rbx/sbg on [100,150] and
    // [140,200] (union 100 s); mailer runs on one site only; reports on two sites without overlap.
    let runs = vec![
        run(1, "invoices", "rbx", 0, Some(150)),
        run(2, "invoices", "sbg", 100, Some(200)),
        run(3, "invoices", "rbx", 140, Some(260)),
        run(4, "mailer", "rbx", 0, Some(1000)),
        run(5, "mailer", "rbx", 10, Some(20)),
        run(6, "reports", "rbx", 0, Some(10)),
        run(7, "reports", "sbg", 10, Some(20)),
    ];
    let r = plan::report(&journal, &runs, None, w.clock.now(), Duration::seconds(60));
    assert_eq!(r.double_execution_seconds, 100.0);
    // One window: rbx worked throughout [0, 260], sbg on [100, 200].
    assert_eq!(r.overlaps.len(), 1);
    assert_eq!(
        (r.overlaps[0].start, r.overlaps[0].end),
        (t0() + Duration::seconds(100), t0() + Duration::seconds(200))
    );
    assert_eq!(r.checks[0].pass, Some(false));
    assert_eq!(r.rpo_seconds, None);
}

#[derive(Debug, Clone)]
enum Act {
    Plan(usize),
    AnyEvent(usize),
    Force,
    CheckThenStart(usize, usize),
    Finish(usize),
    Heartbeat,
    Tick(u8),
}

fn act() -> impl Strategy<Value = Act> {
    prop_oneof![
        5 => (0..8usize).prop_map(Act::Plan),
        1 => (0..EventKind::ALL.len()).prop_map(Act::AnyEvent),
        1 => Just(Act::Force),
        6 => (0..2usize, 0..2usize).prop_map(|(s, j)| Act::CheckThenStart(s, j)),
        2 => (0..8usize).prop_map(Act::Finish),
        2 => Just(Act::Heartbeat),
        2 => (1..30u8).prop_map(Act::Tick),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Random plan events interleaved with guard checks and job runs from both sites (a job may
    /// check, then start later, after a flip): without a forced drain, runs of one job never
    /// overlap on two sites.
    #[test]
    fn double_execution_window_is_zero_unless_forced(acts in proptest::collection::vec(act(), 1..200)) {
        let w = World::new();
        let sites = [site("rbx"), site("sbg")];
        let jobs = ["invoices", "mailer", "reports"];
        let mut running: Vec<RunId> = Vec::new();
        let mut pending: HashMap<(usize, usize), Verdict> = HashMap::new();
        let mut forced = false;
        for a in acts {
            match a {
                Act::Plan(i) => {
                    // One of the events the current state accepts (the plan moves on), but
                    // never a forced drain: that is Act::Force.
                    let ok: Vec<EventKind> = plan::allowed(w.state())
                        .into_iter()
                        .filter(|k| !matches!(k, EventKind::ForceDrain | EventKind::Abort))
                        .collect();
                    let _ = w.apply(ok[i % ok.len()]);
                }
                Act::AnyEvent(i) => {
                    if EventKind::ALL[i] != EventKind::ForceDrain {
                        let _ = w.apply(EventKind::ALL[i]);
                    }
                }
                Act::Force => {
                    if w.apply(EventKind::ForceDrain).is_ok() {
                        forced = true;
                    }
                }
                Act::CheckThenStart(s, j) => {
                    // The first time: a guard check. The second time: start on its verdict.
                    match pending.remove(&(s, j)) {
                        None => {
                            pending.insert((s, j), check(&w.store, &sites[s]).unwrap());
                        }
                        Some(Verdict::Run { token }) => {
                            let start = RunStart { job: jobs[j].into(), site: sites[s].clone(), token, host: "h".into(), pid: 1, containment: None, schedule: None };
                            if let Ok(Admission::Admitted { id, .. }) = w.store.run_start(&start) {
                                running.push(id);
                            }
                        }
                        Some(Verdict::Standby { .. }) => {}
                    }
                }
                Act::Finish(i) => {
                    if !running.is_empty() {
                        let id = running.remove(i % running.len());
                        w.store.run_finish(id, Some(0), "exited").unwrap();
                    }
                }
                Act::Heartbeat => {
                    for id in &running {
                        w.store.run_heartbeat(*id).unwrap();
                    }
                }
                Act::Tick(s) => {
                    // Runs heartbeat at least every 30 s, well within lost_after (60 s).
                    for id in &running {
                        w.store.run_heartbeat(*id).unwrap();
                    }
                    w.clock.advance(Duration::seconds(i64::from(s)));
                }
            }
        }
        let runs = w.store.runs(t0() - Duration::days(1)).unwrap();
        let r = plan::report(&w.store.journal().unwrap(), &runs, None, w.clock.now(), Duration::seconds(60));
        if !forced {
            prop_assert_eq!(r.double_execution_seconds, 0.0, "overlaps: {:?}", r.overlaps);
        }
        // The journal of whatever happened is intact.
        prop_assert!(w.store.verify_journal().is_ok());
        prop_assert_eq!(r.forced_drains > 0, forced);
    }
}

/// The drill's ground truth: overlapping work of one job on two sites is measured from the
/// jobs' own records, whatever the registry says; same-site and other-job overlaps are not
/// double execution.
#[test]
fn ground_truth_measures_overlaps_from_the_jobs_writes() {
    let u = |job: &str, on: &str, start_ms: i64, end_ms: i64| plan::WorkUnit {
        job: job.into(),
        site: site(on),
        start: t0() + Duration::milliseconds(start_ms),
        end: t0() + Duration::milliseconds(end_ms),
    };
    let none = [
        u("a", "rbx", 0, 50),
        u("a", "rbx", 40, 90),
        u("b", "sbg", 0, 100),
        u("a", "sbg", 90, 140),
    ];
    assert_eq!(plan::ground_truth(&none).0, 0.0);
    // A worker of rbx that survived its revocation, working beside sbg's for 70 ms in all.
    let twice = [
        u("a", "rbx", 0, 50),
        u("a", "sbg", 30, 80),
        u("a", "rbx", 60, 110),
        u("a", "sbg", 100, 130),
    ];
    let (secs, overlaps) = plan::ground_truth(&twice);
    assert!((secs - 0.050).abs() < 1e-9, "{secs}: {overlaps:?}");
    assert_eq!(overlaps.len(), 3);
}

proptest! {
    /// The sweep that measures double execution agrees with the definition: the union, over
    /// every pair of units of one job on two sites, of their intersections.
    #[test]
    fn the_overlap_sweep_agrees_with_every_pair(
        raw in proptest::collection::vec((0..3usize, 0..2usize, 0..200i64, 0..60i64), 0..40)
    ) {
        let jobs = ["a", "b", "c"];
        let sites = ["rbx", "sbg"];
        let units: Vec<plan::WorkUnit> = raw
            .iter()
            .map(|&(j, s, start, len)| plan::WorkUnit {
                job: jobs[j].into(),
                site: site(sites[s]),
                start: t0() + Duration::seconds(start),
                end: t0() + Duration::seconds(start + len),
            })
            .collect();
        let mut pairs = Vec::new();
        for (i, a) in units.iter().enumerate() {
            for b in &units[i + 1..] {
                let (s, e) = (a.start.max(b.start), a.end.min(b.end));
                if a.job == b.job && a.site != b.site && s < e {
                    pairs.push((s, e));
                }
            }
        }
        pairs.sort();
        let mut expected = 0i64;
        let mut cur: Option<(DateTime<Utc>, DateTime<Utc>)> = None;
        for (s, e) in pairs {
            cur = match cur {
                Some((cs, ce)) if s <= ce => Some((cs, ce.max(e))),
                Some((cs, ce)) => {
                    expected += (ce - cs).num_seconds();
                    Some((s, e))
                }
                None => Some((s, e)),
            };
        }
        if let Some((cs, ce)) = cur {
            expected += (ce - cs).num_seconds();
        }
        let (secs, overlaps) = plan::ground_truth(&units);
        prop_assert_eq!(secs, expected as f64);
        // Each job's windows are disjoint, and all of them cover what the pairs cover.
        for job in jobs {
            let mut mine: Vec<_> = overlaps.iter().filter(|o| o.job == job).collect();
            mine.sort_by_key(|o| o.start);
            prop_assert!(mine.windows(2).all(|w| w[0].end <= w[1].start), "{:?}", mine);
            let listed: i64 = mine.iter().map(|o| (o.end - o.start).num_seconds()).sum();
            let of_job: Vec<_> = units.iter().filter(|u| u.job == job).cloned().collect();
            prop_assert_eq!(listed as f64, plan::ground_truth(&of_job).0);
        }
    }
}
