//! The store contract: one suite of what every store promises (the record's rules, the journal,
//! the plan and run-registry capabilities where offered, and concurrent writers), run against
//! the four stores — in memory, SQLite, the lock file and a real etcd server (plaintext, and
//! over TLS with authentication on one and three members). A new store is
//! added here with one factory; store-specific behaviour (file formats, crash recovery, leases
//! timing out) is tested beside each store.

#[path = "common/etcd.rs"]
mod etcd_fixture;

use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use pra_core::store::{
    Admission, Commit, Heartbeat, JournalEvent, MemoryStore, PlanWrite, Pulse, RunStart, Store,
};
use pra_core::{Actor, ErrorKind, FencingToken, SiteChange, SiteId, SystemClock, Verdict};

/// A store under test: `open` gives another handle on the same store (another process would
/// open one the same way), `keeps` says which capabilities it must offer.
struct Subject {
    open: Box<dyn Fn() -> Arc<dyn Store>>,
    plans: bool,
    registry: bool,
    _guard: Option<tempfile::TempDir>,
}

impl Subject {
    fn store(&self) -> Arc<dyn Store> {
        (self.open)()
    }
}

type Item = (&'static str, fn(&Subject));

/// Every promise, by name: a failure names the item and the store.
const ITEMS: &[Item] = &[
    ("a new store is empty", a_new_store_is_empty),
    ("activation rules", activation_rules),
    ("the journal is one chain", the_journal_is_one_chain),
    ("capabilities are as declared", capabilities_are_as_declared),
    ("plans are guarded", plans_are_guarded),
    ("runs are admitted atomically", runs_are_admitted_atomically),
    ("run lifecycle", run_lifecycle),
    (
        "the latest run, success, skip and schedule are kept",
        job_times,
    ),
    ("concurrent flips never share a token", concurrent_flips),
    ("the journal can be checkpointed", journal_checkpoints),
];

fn run_contract(name: &str, fresh: &mut dyn FnMut() -> Subject) {
    for (item, check) in ITEMS {
        eprintln!("contract on {name}: {item}");
        let subject = fresh();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&subject)));
        if let Err(panic) = outcome {
            let why = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!("the {name} store breaks the contract: {item}: {why}");
        }
    }
}

#[test]
fn the_memory_store_keeps_the_contract() {
    run_contract("memory", &mut || {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new("contract", Arc::new(SystemClock)));
        Subject {
            open: Box::new(move || store.clone()),
            plans: true,
            registry: true,
            _guard: None,
        }
    });
}

#[test]
fn the_sqlite_store_keeps_the_contract() {
    run_contract("sqlite", &mut || {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("state.db").display());
        Subject {
            open: Box::new(move || Arc::from(pra_core::store::open(&url).unwrap())),
            plans: true,
            registry: true,
            _guard: Some(dir),
        }
    });
}

#[test]
fn the_lock_file_store_keeps_the_contract() {
    run_contract("lock file", &mut || {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().join("pra-status.lock").display());
        Subject {
            open: Box::new(move || Arc::from(pra_core::store::open(&url).unwrap())),
            plans: false,
            registry: false,
            _guard: Some(dir),
        }
    });
}

#[test]
fn the_etcd_store_keeps_the_contract() {
    let etcd = etcd_fixture::Etcd::start();
    let mut n = 0;
    run_contract("etcd", &mut || {
        n += 1;
        let url = etcd.url(&format!("/contract-{n}"));
        Subject {
            open: Box::new(move || Arc::from(pra_core::store::open(&url).unwrap())),
            plans: true,
            registry: true,
            _guard: None,
        }
    });
}

/// etcd over TLS (client certificates required) with authentication, as a non-root user
/// whose role may read and write every key.
fn etcds_contract(members: usize) {
    let etcd = etcd_fixture::Etcd::secure(members);
    let mut n = 0;
    run_contract(&format!("etcds ({members} members)"), &mut || {
        n += 1;
        let url = etcd.url(&format!("/contract-{n}"));
        let opts = pra_core::store::OpenOptions {
            etcd: etcd.security(etcd_fixture::OPERATOR),
            ..Default::default()
        };
        Subject {
            open: Box::new(move || Arc::from(pra_core::store::open_with(&url, &opts).unwrap())),
            plans: true,
            registry: true,
            _guard: None,
        }
    });
}

#[test]
fn the_etcd_store_over_tls_and_auth_keeps_the_contract() {
    etcds_contract(1);
}

#[test]
fn the_etcd_store_over_tls_and_auth_on_three_members_keeps_the_contract() {
    etcds_contract(3);
}

fn site(s: &str) -> SiteId {
    SiteId::new(s).unwrap()
}

fn actor() -> Actor {
    Actor::new("contract", "the store contract").unwrap()
}

fn activate(store: &dyn Store, s: &str, expect: u64) -> pra_core::Result<FencingToken> {
    let change = SiteChange::Activate {
        site: site(s),
        expect: FencingToken(expect),
    };
    Ok(store.change(change, &actor())?.token)
}

fn deactivate(store: &dyn Store, expect: u64) -> pra_core::Result<FencingToken> {
    let change = SiteChange::Deactivate {
        expect: FencingToken(expect),
    };
    Ok(store.change(change, &actor())?.token)
}

fn a_new_store_is_empty(s: &Subject) {
    let store = s.store();
    let record = store.load().unwrap();
    assert_eq!((record.site, record.token), (None, FencingToken(0)));
    assert_eq!(store.verify_journal().unwrap().entries, 0);
    assert!(store.journal().unwrap().is_empty());
    if let Some(plans) = store.plans() {
        assert!(plans.load_plan().unwrap().is_none());
    }
    assert!(matches!(
        pra_core::check(&*store, &site("rbx")).unwrap(),
        Verdict::Standby { active: None, .. }
    ));
}

fn activation_rules(s: &Subject) {
    let store = s.store();
    // Nothing to deactivate: a rule says no.
    assert_eq!(
        deactivate(&*store, 0).unwrap_err().kind(),
        ErrorKind::Refused
    );
    assert_eq!(activate(&*store, "rbx", 0).unwrap(), FencingToken(1));
    // Break before make: a rule, whatever the token.
    let e = activate(&*store, "sbg", 1).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Refused, "{e}");
    assert!(e.to_string().contains("break before make"), "{e}");
    // A stale expectation is a lost race that names both tokens, and changes nothing.
    let e = deactivate(&*store, 0).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
    assert!(e.to_string().contains("expected token 0"), "{e}");
    // Another handle (another process) sees the same record and the same verdicts.
    let other = s.store();
    assert_eq!(other.load().unwrap().token, FencingToken(1));
    assert_eq!(
        pra_core::check(&*other, &site("rbx")).unwrap(),
        Verdict::Run {
            token: FencingToken(1)
        }
    );
    assert!(matches!(
        pra_core::check(&*other, &site("sbg")).unwrap(),
        Verdict::Standby { .. }
    ));
    assert_eq!(deactivate(&*other, 1).unwrap(), FencingToken(2));
    assert_eq!(activate(&*store, "sbg", 2).unwrap(), FencingToken(3));
    let record = store.load().unwrap();
    assert_eq!(record.site, Some(site("sbg")));
    // `by`, and the identity the store authenticated as if it has one ("contract (etcd user
    // operator)").
    assert!(
        record.changed_by == "contract" || record.changed_by.starts_with("contract ("),
        "{record:?}"
    );
}

fn the_journal_is_one_chain(s: &Subject) {
    let store = s.store();
    activate(&*store, "rbx", 0).unwrap();
    // A commit's own time stamps the record and every entry it writes.
    let at = Utc.with_ymd_and_hms(2030, 1, 2, 3, 4, 5).unwrap();
    store
        .commit(&Commit {
            site: Some(SiteChange::Deactivate {
                expect: FencingToken(1),
            }),
            events: vec![JournalEvent::DrainForced {
                plan: "p".into(),
                alive_runs: 2,
            }],
            at: Some(at),
            ..Commit::by(&actor())
        })
        .unwrap();
    assert_eq!(store.load().unwrap().changed_at, at);
    // A commit of events only leaves the record alone.
    let c = store
        .commit(&Commit {
            events: vec![JournalEvent::DrainForced {
                plan: "q".into(),
                alive_runs: 0,
            }],
            ..Commit::by(&actor())
        })
        .unwrap();
    assert_eq!(c.record.token, FencingToken(2));
    let journal = s.store().journal().unwrap();
    let kinds: Vec<&str> = journal
        .iter()
        .map(|e| match &e.event {
            JournalEvent::SiteChanged { .. } => "site",
            JournalEvent::DrainForced { .. } => "forced",
            JournalEvent::PlanStep { .. } => "step",
            JournalEvent::Checkpoint { .. } => "checkpoint",
            JournalEvent::GateChecked { .. } => "checks",
        })
        .collect();
    assert_eq!(kinds, ["site", "site", "forced", "forced"]);
    assert_eq!(
        journal.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    assert!(journal[1..3].iter().all(|e| e.at == at));
    match &journal[1].event {
        JournalEvent::SiteChanged { old, new } => {
            assert_eq!((old.token, new.token), (FencingToken(1), FencingToken(2)));
        }
        other => panic!("expected the flip first, got {other:?}"),
    }
    let check = store.verify_journal().unwrap();
    assert_eq!(check.entries, 4);
    assert_eq!(check.head, journal[3].hash);
    // A refused commit writes nothing, not even its events.
    let refused = store.commit(&Commit {
        site: Some(SiteChange::Deactivate {
            expect: FencingToken(2),
        }),
        events: vec![JournalEvent::DrainForced {
            plan: "r".into(),
            alive_runs: 0,
        }],
        ..Commit::by(&actor())
    });
    assert_eq!(refused.unwrap_err().kind(), ErrorKind::Refused);
    assert_eq!(store.verify_journal().unwrap().entries, 4);
}

/// A checkpoint archives the entries before it to a file and leaves one entry carrying their
/// head: later flips chain on from it (on another handle too), the default verification starts
/// there, and the archive and the store verify as one chain; a second checkpoint on the same
/// archive file writes nothing.
fn journal_checkpoints(s: &Subject) {
    let store = s.store();
    let dir = tempfile::tempdir().unwrap();
    let (a1, a2) = (dir.path().join("j1.jsonl"), dir.path().join("j2.jsonl"));
    activate(&*store, "rbx", 0).unwrap();
    deactivate(&*store, 1).unwrap();
    activate(&*store, "sbg", 2).unwrap();
    let first = store.checkpoint_journal(&a1, &actor()).unwrap();
    assert_eq!(first.entries, 3);
    let live = s.store().journal().unwrap();
    assert_eq!(live.len(), 1, "only the checkpoint stays: {live:?}");
    assert_eq!((live[0].seq, &live[0].prev_hash), (4, &first.head));
    assert!(matches!(live[0].event, JournalEvent::Checkpoint { .. }));
    assert_eq!(
        store.checkpoint_journal(&a1, &actor()).unwrap_err().kind(),
        ErrorKind::InvalidArgument
    );
    assert_eq!(s.store().journal().unwrap(), live);
    let other = s.store();
    deactivate(&*other, 3).unwrap();
    activate(&*other, "rbx", 4).unwrap();
    assert_eq!(other.load().unwrap().token, FencingToken(5));
    assert_eq!(store.verify_journal().unwrap().entries, 3);
    assert_eq!(
        store
            .verify_journal_full(std::slice::from_ref(&a1))
            .unwrap()
            .entries,
        6
    );
    assert_eq!(store.checkpoint_journal(&a2, &actor()).unwrap().entries, 3);
    let full = other
        .verify_journal_full(&[a1.clone(), a2.clone()])
        .unwrap();
    assert_eq!(full.entries, 7);
    assert_eq!(full.head, store.verify_journal().unwrap().head);
    assert_eq!(
        other
            .verify_journal_full(std::slice::from_ref(&a2))
            .unwrap_err()
            .kind(),
        ErrorKind::Corrupt
    );
}

fn capabilities_are_as_declared(s: &Subject) {
    let store = s.store();
    assert_eq!(store.plans().is_some(), s.plans);
    assert_eq!(store.registry().is_some(), s.registry);
    if !s.plans {
        let e = store.require_plans().err().unwrap();
        assert_eq!(e.kind(), ErrorKind::Unsupported);
        assert!(e.to_string().contains(store.url()), "{e}");
        // A plan write is refused before anything is written.
        let e = store
            .commit(&Commit {
                plan: Some(PlanWrite {
                    expect_revision: 0,
                    doc: serde_json::json!({"running": false, "state": "normal"}),
                }),
                events: vec![JournalEvent::DrainForced {
                    plan: "p".into(),
                    alive_runs: 0,
                }],
                ..Commit::by(&actor())
            })
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
        assert_eq!(store.verify_journal().unwrap().entries, 0);
    }
    if !s.registry {
        let e = store.require_registry().err().unwrap();
        assert_eq!(e.kind(), ErrorKind::Unsupported);
        assert!(e.to_string().contains(store.url()), "{e}");
        // Checked at open, when the caller says what it needs.
        let opts = pra_core::store::OpenOptions {
            needs: pra_core::store::Needs {
                registry: true,
                ..Default::default()
            },
            ..Default::default()
        };
        let e = pra_core::store::open_with(store.url(), &opts).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
    }
}

fn plans_are_guarded(s: &Subject) {
    let store = s.store();
    let Some(plans) = store.plans() else { return };
    activate(&*store, "rbx", 0).unwrap();
    let running = serde_json::json!({"running": true, "state": "failover_draining"});
    let write = |expect_revision, doc: &serde_json::Value, site| Commit {
        site,
        plan: Some(PlanWrite {
            expect_revision,
            doc: doc.clone(),
        }),
        ..Commit::by(&actor())
    };
    let c = store.commit(&write(0, &running, None)).unwrap();
    assert_eq!(c.plan_revision, Some(1));
    let stored = plans.load_plan().unwrap().unwrap();
    assert_eq!((stored.revision, &stored.doc), (1, &running));
    // Written by someone else since it was loaded: a lost race, reload and retry.
    let e = store.commit(&write(0, &running, None)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
    assert!(e.to_string().contains("revision 1"), "{e}");
    // While it runs, the plan alone flips the record.
    let e = deactivate(&*store, 1).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Refused, "{e}");
    assert!(e.to_string().contains("failover_draining"), "{e}");
    let done = serde_json::json!({"running": false, "state": "normal"});
    let flip = Some(SiteChange::Deactivate {
        expect: FencingToken(1),
    });
    let c = store.commit(&write(1, &done, flip)).unwrap();
    assert_eq!(
        (c.record.token, c.plan_revision),
        (FencingToken(2), Some(2))
    );
    // A plan write and a flip are one: a refused flip leaves the plan unwritten.
    let bad_flip = Some(SiteChange::Deactivate {
        expect: FencingToken(2),
    });
    assert_eq!(
        store
            .commit(&write(2, &running, bad_flip))
            .unwrap_err()
            .kind(),
        ErrorKind::Refused
    );
    assert_eq!(
        s.store()
            .plans()
            .unwrap()
            .load_plan()
            .unwrap()
            .unwrap()
            .revision,
        2
    );
    assert_eq!(activate(&*store, "sbg", 2).unwrap(), FencingToken(3));
}

fn start(site_name: &str, token: u64, job: &str) -> RunStart {
    RunStart {
        job: job.into(),
        site: site(site_name),
        token: FencingToken(token),
        host: "contract-host".into(),
        pid: 4242,
        containment: None,
        schedule: None,
    }
}

fn runs_are_admitted_atomically(s: &Subject) {
    let store = s.store();
    let Some(registry) = store.registry() else {
        return;
    };
    let standby = |a: Admission, token| {
        assert!(
            matches!(a, Admission::Standby { token: t, .. } if t == FencingToken(token)),
            "{a:?}"
        )
    };
    // No site active: nothing is admitted.
    standby(registry.run_start(&start("rbx", 0, "j")).unwrap(), 0);
    activate(&*store, "rbx", 0).unwrap();
    // The other site, or a token the record has left, is not admitted: the record found is
    // returned, so the caller skips without another read.
    match registry.run_start(&start("sbg", 1, "j")).unwrap() {
        Admission::Standby { active, token } => {
            assert_eq!((active, token), (Some(site("rbx")), FencingToken(1)));
        }
        other => panic!("{other:?}"),
    }
    standby(registry.run_start(&start("rbx", 0, "j")).unwrap(), 1);
    let Admission::Admitted { id, token } = registry.run_start(&start("rbx", 1, "j")).unwrap()
    else {
        panic!("the active site under its token must be admitted")
    };
    assert_eq!(token, FencingToken(1));
    deactivate(&*store, 1).unwrap();
    standby(registry.run_start(&start("rbx", 1, "j")).unwrap(), 2);
    // The admitted run is what a drain of the new token waits for.
    let below = registry.unfinished_runs_below(FencingToken(2)).unwrap();
    assert_eq!(below.len(), 1);
    assert_eq!(below[0].run.id, id);
    assert!(
        registry
            .unfinished_runs_below(FencingToken(1))
            .unwrap()
            .is_empty(),
        "a run is not below its own token"
    );
}

fn run_lifecycle(s: &Subject) {
    let store = s.store();
    let Some(registry) = store.registry() else {
        return;
    };
    activate(&*store, "sbg", 0).unwrap();
    let since = Utc::now() - chrono::Duration::seconds(5);
    let admitted = |job| match registry.run_start(&start("sbg", 1, job)).unwrap() {
        Admission::Admitted { id, .. } => id,
        other => panic!("{other:?}"),
    };
    let a = admitted("invoices");
    let b = admitted("mailer");
    assert_eq!(registry.run_heartbeat(a).unwrap(), Heartbeat::Alive);
    let pulse_of = |id| {
        registry
            .unfinished_runs_below(FencingToken(9))
            .unwrap()
            .into_iter()
            .find(|u| u.run.id == id)
            .map(|u| (u.run.beats, u.pulse))
    };
    let (beats, pulse) = pulse_of(a).unwrap();
    match pulse {
        Pulse::Counter { .. } => assert_eq!(beats, 1, "one heartbeat counted"),
        // A lease store writes nothing per heartbeat: the lease's keep-alive is the heartbeat.
        Pulse::Lease { alive } => assert!(alive, "a run that just beat has a live lease"),
    }
    // A run that beat after its pulse was read is never counted lost on that pulse.
    assert_eq!(registry.run_heartbeat(a).unwrap(), Heartbeat::Alive);
    assert!(!registry.run_mark_lost(a, pulse, "lost").unwrap());
    assert!(pulse_of(a).is_some());
    // Counted lost on an unchanged counter: ended for everyone, and the wrapper learns it.
    if let (_, Pulse::Counter { .. }) = pulse_of(b).unwrap() {
        let (_, pulse) = pulse_of(b).unwrap();
        assert!(registry.run_mark_lost(b, pulse, "lost: silent").unwrap());
        assert!(pulse_of(b).is_none());
        assert_eq!(registry.run_heartbeat(b).unwrap(), Heartbeat::Expired);
        assert!(!registry.run_finish(b, Some(0), "exited 0").unwrap());
    } else {
        assert!(registry.run_finish(b, None, "revoked").unwrap());
    }
    assert!(registry.run_finish(a, Some(0), "exited 0").unwrap());
    assert!(!registry.run_finish(a, Some(0), "again").unwrap());
    assert_eq!(registry.run_heartbeat(a).unwrap(), Heartbeat::Expired);
    assert!(
        registry
            .unfinished_runs_below(FencingToken(9))
            .unwrap()
            .is_empty()
    );
    let runs = s.store().registry().unwrap().runs(since).unwrap();
    assert_eq!(runs.iter().map(|r| r.id).collect::<Vec<_>>(), [a, b]);
    assert_eq!(
        (runs[0].exit_code, runs[0].outcome.as_deref()),
        (Some(0), Some("exited 0"))
    );
    assert!(runs.iter().all(|r| r.finished_at.is_some()));
    assert!(
        registry
            .runs(Utc::now() + chrono::Duration::seconds(60))
            .unwrap()
            .is_empty()
    );
    registry.note_skip("invoices", &site("rbx")).unwrap();
    registry.note_skip("invoices", &site("rbx")).unwrap();
    let stats = registry.run_stats().unwrap();
    let of = |job: &str, s: &str| {
        stats
            .iter()
            .find(|x| x.job == job && x.site.as_str() == s)
            .cloned()
            .unwrap_or_else(|| panic!("no stats for {job} on {s}: {stats:?}"))
    };
    assert_eq!(
        (
            of("invoices", "sbg").started,
            of("invoices", "sbg").unfinished
        ),
        (1, 0)
    );
    assert_eq!(of("invoices", "rbx").skipped, 2);
    assert_eq!(of("mailer", "sbg").started, 1);
    let keys: Vec<(String, String)> = stats
        .iter()
        .map(|x| (x.job.clone(), x.site.to_string()))
        .collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted, "stats come ordered by job, then site");
}

/// What missed-run detection reads: per job and site, the latest start, finish (failed or not),
/// success, skip and declared schedule, the same on every store.
fn job_times(s: &Subject) {
    let store = s.store();
    let Some(registry) = store.registry() else {
        return;
    };
    activate(&*store, "rbx", 0).unwrap();
    let admitted = |start: &RunStart| match registry.run_start(start).unwrap() {
        Admission::Admitted { id, .. } => id,
        other => panic!("{other:?}"),
    };
    let every = |secs| Some(pra_core::schedule::Schedule::Every(secs));
    let ok = admitted(&RunStart {
        schedule: every(300),
        ..start("rbx", 1, "nightly")
    });
    assert!(registry.run_finish(ok, Some(0), "exited 0").unwrap());
    let after_success = registry.run_stats().unwrap();
    std::thread::sleep(Duration::from_millis(5));
    let failed = admitted(&RunStart {
        schedule: every(600),
        ..start("rbx", 1, "nightly")
    });
    assert!(registry.run_finish(failed, Some(3), "exited 3").unwrap());
    std::thread::sleep(Duration::from_millis(5));
    // A run that declares no schedule keeps the declared one.
    let running = admitted(&start("rbx", 1, "nightly"));
    registry.note_skip("nightly", &site("sbg")).unwrap();
    let stats = registry.run_stats().unwrap();
    let rbx = stats
        .iter()
        .find(|x| x.job == "nightly" && x.site.as_str() == "rbx")
        .unwrap_or_else(|| panic!("{stats:?}"));
    let runs = registry.runs(chrono::DateTime::UNIX_EPOCH).unwrap();
    let of = |id| runs.iter().find(|r| r.id == id).unwrap();
    assert_eq!(rbx.started, 3);
    assert_eq!(rbx.unfinished, 1);
    assert_eq!(rbx.last_started_at, Some(of(running).started_at));
    assert_eq!(rbx.last_finished_at, of(failed).finished_at);
    assert_eq!(rbx.last_failed, Some(true));
    assert_eq!(rbx.last_success_at, of(ok).finished_at);
    assert_eq!(after_success[0].last_failed, Some(false));
    assert_eq!(rbx.schedule, every(600));
    assert_eq!(rbx.last_skip_at, None);
    let sbg = stats
        .iter()
        .find(|x| x.job == "nightly" && x.site.as_str() == "sbg")
        .unwrap_or_else(|| panic!("{stats:?}"));
    assert_eq!((sbg.skipped, sbg.started), (1, 0));
    assert!(
        sbg.last_skip_at
            .is_some_and(|t| t >= of(failed).finished_at.unwrap())
    );
    // A revoked run with exit code 0 is no success.
    let revoked = admitted(&start("rbx", 1, "reports"));
    assert!(registry.run_finish(revoked, Some(0), "revoked").unwrap());
    let stats = registry.run_stats().unwrap();
    let reports = stats.iter().find(|x| x.job == "reports").unwrap();
    assert_eq!(
        (reports.last_failed, reports.last_success_at),
        (Some(true), None)
    );
    assert!(registry.run_finish(running, Some(0), "exited 0").unwrap());
}

/// Writers on several handles flip as fast as they can, each from the record it loaded: every
/// success takes the next token exactly once, losers get a lost race or a refusal, and the
/// journal holds exactly the successes.
fn concurrent_flips(s: &Subject) {
    let wins = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for w in 0..4 {
            let store = s.store();
            let wins = &wins;
            scope.spawn(move || {
                let me = if w % 2 == 0 { "rbx" } else { "sbg" };
                let deadline = std::time::Instant::now() + Duration::from_secs(20);
                let mut mine = 0;
                while mine < 5 && std::time::Instant::now() < deadline {
                    let record = store.load().unwrap();
                    let change = match record.site {
                        None => SiteChange::Activate {
                            site: site(me),
                            expect: record.token,
                        },
                        Some(_) => SiteChange::Deactivate {
                            expect: record.token,
                        },
                    };
                    match store.change(change, &actor()) {
                        Ok(r) => {
                            mine += 1;
                            wins.lock().unwrap().push(r.token.0);
                        }
                        Err(e) => assert!(
                            matches!(
                                e.kind(),
                                ErrorKind::Conflict | ErrorKind::Refused | ErrorKind::Busy
                            ),
                            "{e}"
                        ),
                    }
                }
            });
        }
    });
    let mut wins = wins.into_inner().unwrap();
    wins.sort_unstable();
    let n = wins.len() as u64;
    assert!(n >= 4, "only {n} flips in 20 s");
    assert_eq!(wins, (1..=n).collect::<Vec<_>>(), "each token granted once");
    let store = s.store();
    assert_eq!(store.load().unwrap().token, FencingToken(n));
    assert_eq!(store.verify_journal().unwrap().entries, n);
    // Never two sites under one token: each activation follows a deactivation.
    let journal = store.journal().unwrap();
    for e in &journal {
        if let JournalEvent::SiteChanged { old, new } = &e.event {
            assert!(
                old.site.is_none() || new.site.is_none(),
                "{old:?} -> {new:?}"
            );
            assert_eq!(new.token.0, old.token.0 + 1);
        }
    }
}
