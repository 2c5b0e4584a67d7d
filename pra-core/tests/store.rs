//! What the SQLite and lock-file stores promise beyond the shared contract (tests/contract.rs):
//! durability across reopening, their file formats and damage, tampering, clock skew.

use std::fs;
use std::path::Path;
use std::sync::Arc;

use chrono::{Duration, TimeZone, Utc};
use pra_core::store::{
    Admission, FileStore, Heartbeat, RunId, RunRegistry, RunStart, SqliteStore, Store, open,
    read_archive,
};
use pra_core::{Actor, ErrorKind, FencingToken, ManualClock, SiteChange, SiteId, Verdict, check};
use proptest::prelude::*;

fn site(s: &str) -> SiteId {
    SiteId::new(s).unwrap()
}
fn ops() -> Actor {
    Actor::new("ops", "test").unwrap()
}
fn clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(
        Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap(),
    ))
}

/// The id of a registration the store must admit.
fn admitted(r: &dyn RunRegistry, start: &RunStart) -> RunId {
    match r.run_start(start).unwrap() {
        Admission::Admitted { id, .. } => id,
        other => panic!("not admitted: {other:?}"),
    }
}

/// Activates rbx on a new store `s` (token 1).
fn activate_rbx(s: &dyn Store) {
    s.change(
        SiteChange::Activate {
            site: site("rbx"),
            expect: FencingToken(0),
        },
        &ops(),
    )
    .unwrap();
}

/// A run of `job` on rbx under token 1.
fn rbx_run(job: &str) -> RunStart {
    RunStart {
        job: job.into(),
        site: site("rbx"),
        token: FencingToken(1),
        host: "h".into(),
        pid: 1,
        containment: None,
        schedule: None,
    }
}

/// Three flips on `s`: rbx active (1), none (2), sbg active (3).
fn three_flips(s: &dyn Store) {
    for change in [
        SiteChange::Activate {
            site: site("rbx"),
            expect: FencingToken(0),
        },
        SiteChange::Deactivate {
            expect: FencingToken(1),
        },
        SiteChange::Activate {
            site: site("sbg"),
            expect: FencingToken(2),
        },
    ] {
        s.change(change, &ops()).unwrap();
    }
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Sqlite,
    File,
}

fn open_kind(kind: Kind, dir: &Path, clock: Arc<ManualClock>) -> Box<dyn Store> {
    match kind {
        Kind::Sqlite => Box::new(SqliteStore::open(&dir.join("state.db"), clock).unwrap()),
        Kind::File => Box::new(FileStore::open(&dir.join("pra-status.lock"), clock).unwrap()),
    }
}

const KINDS: [Kind; 2] = [Kind::Sqlite, Kind::File];

#[test]
fn tokens_survive_reopen_and_never_go_back() {
    for kind in KINDS {
        let dir = tempfile::tempdir().unwrap();
        let mut last = FencingToken(0);
        for round in 0..4 {
            let s = open_kind(kind, dir.path(), clock());
            let r = s.load().unwrap();
            assert_eq!(r.token, last, "{kind:?} round {round}");
            let change = match r.site {
                None => SiteChange::Activate {
                    site: site("rbx"),
                    expect: r.token,
                },
                Some(_) => SiteChange::Deactivate { expect: r.token },
            };
            last = s.change(change, &ops()).unwrap().token;
        }
        let s = open_kind(kind, dir.path(), clock());
        assert_eq!(s.load().unwrap().token, FencingToken(4));
        assert_eq!(s.verify_journal().unwrap().entries, 4);
    }
}

#[test]
fn store_urls_open_the_right_store() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&format!("sqlite://{}/s.db", dir.path().display())).unwrap();
    assert!(s.url().starts_with("sqlite://"));
    let f = open(&format!("file://{}/pra-status.lock", dir.path().display())).unwrap();
    assert!(f.url().starts_with("file://"));
    let e = open(&format!(
        "file://{}/missing-dir/x.lock",
        dir.path().display()
    ))
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::StoreUnavailable);
    // Opening an etcd store is lazy: no server is needed to open one.
    #[cfg(feature = "etcd")]
    assert_eq!(
        open("etcd://127.0.0.1:2379/pra").unwrap().url(),
        "etcd://127.0.0.1:2379/pra"
    );
    #[cfg(not(feature = "etcd"))]
    assert_eq!(
        open("etcd://127.0.0.1:2379/pra").unwrap_err().kind(),
        ErrorKind::Unsupported
    );
    assert_eq!(
        open("redis://x").unwrap_err().kind(),
        ErrorKind::InvalidArgument
    );
    // Deadlines and run TTLs of zero are refused, whatever the store.
    for (timeout, lost_after) in [(0, 60), (5000, 0)] {
        let opts = pra_core::store::OpenOptions {
            timeout: std::time::Duration::from_millis(timeout),
            lost_after: std::time::Duration::from_secs(lost_after),
            ..Default::default()
        };
        let url = format!("sqlite://{}/s.db", dir.path().display());
        let err = pra_core::store::open_with(&url, &opts).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    }
}

#[test]
fn sqlite_store_refuses_a_file_that_is_not_a_database() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("state.db");
    fs::write(
        &p,
        b"ACTIVE_SITE=SBG\nthis is no database at all, just some text that is long enough",
    )
    .unwrap();
    let e = SqliteStore::open(&p, clock()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
    // Nothing was lost: the file is untouched.
    assert!(
        fs::read_to_string(&p)
            .unwrap()
            .starts_with("ACTIVE_SITE=SBG")
    );
}

#[test]
fn sqlite_store_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("state.db");
    SqliteStore::open(&p, clock()).unwrap();
    assert_eq!(
        fs::metadata(&p).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

#[test]
fn sqlite_journal_tampering_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("state.db");
    let s = SqliteStore::open(&p, clock()).unwrap();
    three_flips(&s);
    drop(s);

    let conn = rusqlite::Connection::open(&p).unwrap();
    // Edit who made change 2.
    conn.execute(
        "UPDATE journal SET body = replace(body, '\"by\":\"ops\"', '\"by\":\"eve\"') WHERE seq = 2",
        [],
    )
    .unwrap();
    let s = SqliteStore::open(&p, clock()).unwrap();
    let e = s.verify_journal().unwrap_err();
    assert!(e.to_string().contains("entry 2"), "{e}");
    drop(s);
    conn.execute(
        "UPDATE journal SET body = replace(body, '\"by\":\"eve\"', '\"by\":\"ops\"') WHERE seq = 2",
        [],
    )
    .unwrap();
    assert!(
        SqliteStore::open(&p, clock())
            .unwrap()
            .verify_journal()
            .is_ok()
    );

    // Delete the newest entry: the record's anchor catches it.
    conn.execute("DELETE FROM journal WHERE seq = 3", [])
        .unwrap();
    let e = SqliteStore::open(&p, clock())
        .unwrap()
        .verify_journal()
        .unwrap_err();
    assert!(e.to_string().contains("removed"), "{e}");
}

#[test]
fn file_store_reads_and_upgrades_the_seed_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("pra-status.lock");
    fs::write(&p, "ACTIVE_SITE=SBG\n").unwrap();
    let s = FileStore::open(&p, clock()).unwrap();
    let r = s.load().unwrap();
    assert_eq!((r.site, r.token), (Some(site("sbg")), FencingToken(0)));
    assert_eq!(
        check(&s, &site("sbg")).unwrap(),
        Verdict::Run {
            token: FencingToken(0)
        }
    );

    // The seed's failback step 5 ("ACTIVE_SITE=NONE on SBG"), then RBX.
    s.change(
        SiteChange::Deactivate {
            expect: FencingToken(0),
        },
        &ops(),
    )
    .unwrap();
    let text = fs::read_to_string(&p).unwrap();
    assert!(text.contains("\nACTIVE_SITE=NONE\nTOKEN=1\n"), "{text}");
    s.change(
        SiteChange::Activate {
            site: site("rbx"),
            expect: FencingToken(1),
        },
        &ops(),
    )
    .unwrap();
    let text = fs::read_to_string(&p).unwrap();
    // The seed's wrapper does `grep ACTIVE_SITE | cut -d= -f2`: it must still find one line.
    let lines: Vec<&str> = text.lines().filter(|l| l.contains("ACTIVE_SITE")).collect();
    assert_eq!(lines, vec!["ACTIVE_SITE=RBX"]);
    assert_eq!(s.verify_journal().unwrap().entries, 2);
}

#[test]
fn file_store_corrupt_file_is_an_error_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("pra-status.lock");
    let s = FileStore::open(&p, clock()).unwrap();
    activate_rbx(&s);
    let good = fs::read_to_string(&p).unwrap();
    let truncated = &good[..good.find("CHANGED_BY").unwrap()];
    fs::write(&p, truncated).unwrap();
    for e in [
        s.load().unwrap_err(),
        check(&s, &site("rbx")).unwrap_err(),
        s.change(
            SiteChange::Deactivate {
                expect: FencingToken(1),
            },
            &ops(),
        )
        .unwrap_err(),
    ] {
        assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
        assert!(e.to_string().contains("pra-status.lock"), "{e}");
    }
    assert_eq!(
        fs::read_to_string(&p).unwrap(),
        truncated,
        "a failed change must not rewrite the file"
    );
    fs::write(&p, &good).unwrap();
    assert_eq!(s.load().unwrap().token, FencingToken(1));
}

#[test]
fn file_store_lost_lock_file_does_not_restart_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("pra-status.lock");
    let s = FileStore::open(&p, clock()).unwrap();
    activate_rbx(&s);
    fs::remove_file(&p).unwrap();
    let e = s.load().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
    let e = s
        .change(
            SiteChange::Activate {
                site: site("sbg"),
                expect: FencingToken(0),
            },
            &ops(),
        )
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
}

#[test]
fn file_store_rolls_an_interrupted_change_forward_never_back() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("pra-status.lock");
    let s = FileStore::open(&p, clock()).unwrap();
    activate_rbx(&s);
    let lock_before = fs::read_to_string(&p).unwrap();
    // A crash after the journal append but before the rename — or the lock file put back from
    // a copy one change old (red team, session 4): the two look the same. Do a real change,
    // then put the old lock file back.
    s.change(
        SiteChange::Deactivate {
            expect: FencingToken(1),
        },
        &ops(),
    )
    .unwrap();
    fs::write(&p, &lock_before).unwrap();
    assert_eq!(
        s.load().unwrap().token,
        FencingToken(1),
        "until a change recovers it, the guard reads the file as it is"
    );
    assert_eq!(s.journal().unwrap().len(), 1);
    assert_eq!(s.verify_journal().unwrap().entries, 1);
    // The next change rolls the journaled change forward before deciding: token 2 stays the
    // deactivation's, and a retry made from the old file is a lost race, not token 2 again.
    let e = s
        .change(
            SiteChange::Deactivate {
                expect: FencingToken(1),
            },
            &Actor::new("bob", "retry").unwrap(),
        )
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
    assert_eq!(
        s.load().unwrap().token,
        FencingToken(2),
        "the file was recovered"
    );
    assert_eq!(s.load().unwrap().site, None);
    let r = s
        .change(
            SiteChange::Activate {
                site: site("sbg"),
                expect: FencingToken(2),
            },
            &Actor::new("bob", "retry").unwrap(),
        )
        .unwrap();
    assert_eq!(r.token, FencingToken(3));
    let j = s.journal().unwrap();
    assert_eq!(
        j.iter().map(|e| e.by.as_str()).collect::<Vec<_>>(),
        ["ops", "ops", "bob"]
    );
    assert_eq!(s.verify_journal().unwrap().entries, 3);
}

#[test]
fn file_store_journal_tampering_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("pra-status.lock");
    let s = FileStore::open(&p, clock()).unwrap();
    activate_rbx(&s);
    s.change(
        SiteChange::Deactivate {
            expect: FencingToken(1),
        },
        &ops(),
    )
    .unwrap();
    let jp = dir.path().join("pra-status.lock.journal");
    let text = fs::read_to_string(&jp).unwrap();
    fs::write(&jp, text.replacen("\"by\":\"ops\"", "\"by\":\"eve\"", 1)).unwrap();
    let e = s.verify_journal().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
    // And no further change is made on top of a broken journal.
    let e = s
        .change(
            SiteChange::Activate {
                site: site("sbg"),
                expect: FencingToken(2),
            },
            &ops(),
        )
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
}

#[test]
fn run_registry_tracks_running_finished_and_lost_runs() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let s = SqliteStore::open(&dir.path().join("state.db"), clock.clone()).unwrap();
    let t0 = clock.now_for_test();
    let start = |token: u64, job: &str| RunStart {
        job: job.into(),
        site: site("sbg"),
        token: FencingToken(token),
        host: "sbg-vm1".into(),
        pid: 4242,
        containment: Some(pra_core::run::Containment::PidNamespace),
        schedule: None,
    };
    // No site active: nothing is admitted.
    assert!(matches!(
        s.run_start(&start(0, "invoices")).unwrap(),
        Admission::Standby { .. }
    ));
    s.change(
        SiteChange::Activate {
            site: site("sbg"),
            expect: FencingToken(0),
        },
        &ops(),
    )
    .unwrap();
    let a = admitted(&s, &start(1, "invoices"));
    let b = admitted(&s, &start(1, "mailer"));
    // The other site, or a stale token, is not admitted either.
    let mut other = start(1, "invoices");
    other.site = site("rbx");
    assert!(matches!(
        s.run_start(&other).unwrap(),
        Admission::Standby { .. }
    ));
    s.change(
        SiteChange::Deactivate {
            expect: FencingToken(1),
        },
        &ops(),
    )
    .unwrap();
    s.change(
        SiteChange::Activate {
            site: site("sbg"),
            expect: FencingToken(2),
        },
        &ops(),
    )
    .unwrap();
    assert_eq!(
        s.run_start(&start(1, "late")).unwrap(),
        Admission::Standby {
            active: Some(site("sbg")),
            token: FencingToken(3)
        }
    );
    let c = admitted(&s, &start(3, "invoices"));
    clock.advance(Duration::seconds(20));
    assert_eq!(s.run_heartbeat(a).unwrap(), Heartbeat::Alive);
    assert!(s.run_finish(b, Some(0), "exited").unwrap());
    assert_eq!(
        s.run_heartbeat(b).unwrap(),
        Heartbeat::Expired,
        "no heartbeat after finish"
    );
    assert!(!s.run_finish(b, Some(1), "again").unwrap());

    // Below token 3: only `a` is unfinished (b finished, c is under token 3); one beat counted.
    let unfinished = s.unfinished_runs_below(FencingToken(3)).unwrap();
    assert_eq!(
        unfinished.iter().map(|u| u.run.id).collect::<Vec<_>>(),
        vec![a]
    );
    assert_eq!(
        unfinished[0].pulse,
        pra_core::store::Pulse::Counter { beats: 1 }
    );
    assert_eq!(
        unfinished[0].run.start.containment,
        Some(pra_core::run::Containment::PidNamespace)
    );
    // A drain judges on its own clock: `a` is alive until its counter stays still for 30 s.
    let drainer = pra_core::run::Drainer::new(&s, &*clock, std::time::Duration::from_secs(30));
    assert_eq!(drainer.alive_below(FencingToken(3)).unwrap().len(), 1);
    clock.advance(Duration::seconds(29));
    assert_eq!(drainer.alive_below(FencingToken(3)).unwrap().len(), 1);
    clock.advance(Duration::seconds(1));
    assert!(drainer.alive_below(FencingToken(3)).unwrap().is_empty());
    // Judged lost, it was recorded so: a new drain does not wait for it again.
    assert!(s.unfinished_runs_below(FencingToken(3)).unwrap().is_empty());
    assert_eq!(
        s.run_heartbeat(a).unwrap(),
        Heartbeat::Expired,
        "a run counted lost hears it at its next heartbeat, and stops"
    );

    let runs = s.runs(t0).unwrap();
    assert_eq!(runs.len(), 3);
    assert!(runs[0].finished_at.is_some());
    assert!(runs[0].outcome.as_deref().unwrap().starts_with("lost"));
    assert!(runs[2].finished_at.is_none());
    assert!(runs[1].finished_at.is_some());
    assert_eq!(runs[1].exit_code, Some(0));
    assert_eq!(runs[2].id, c);
    let _ = c;
    assert_eq!(runs[0].started_at, t0);
}

trait NowForTest {
    fn now_for_test(&self) -> chrono::DateTime<Utc>;
}
impl NowForTest for ManualClock {
    fn now_for_test(&self) -> chrono::DateTime<Utc> {
        pra_core::Clock::now(self)
    }
}

#[derive(Debug, Clone)]
enum Op {
    Activate(usize, u64),
    Deactivate(u64),
    Check,
    ActivateFresh(usize),
    DeactivateFresh,
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..2usize, 0..6u64).prop_map(|(s, d)| Op::Activate(s, d)),
        (0..6u64).prop_map(Op::Deactivate),
        Just(Op::Check),
        (0..2usize).prop_map(Op::ActivateFresh),
        Just(Op::DeactivateFresh),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Whatever two sites do, in any order, with stale or fresh tokens: no token ever yields
    /// `Run` for two different sites, and tokens only grow by one per change.
    #[test]
    fn no_token_runs_two_sites(ops_seq in proptest::collection::vec(op_strategy(), 1..40), file in any::<bool>()) {
        let dir = tempfile::tempdir().unwrap();
        let kind = if file { Kind::File } else { Kind::Sqlite };
        let s = open_kind(kind, dir.path(), clock());
        let sites = [site("rbx"), site("sbg")];
        let mut runs_under: std::collections::HashMap<u64, SiteId> = Default::default();
        let mut last = 0u64;
        for op in ops_seq {
            let current = s.load().unwrap().token.0;
            prop_assert!(current >= last);
            let result = match op {
                Op::Activate(i, d) => s.change(SiteChange::Activate { site: sites[i].clone(), expect: FencingToken(current.saturating_sub(d)) }, &ops()).map(|_| ()),
                Op::Deactivate(d) => s.change(SiteChange::Deactivate { expect: FencingToken(current.saturating_sub(d)) }, &ops()).map(|_| ()),
                Op::ActivateFresh(i) => s.change(SiteChange::Activate { site: sites[i].clone(), expect: FencingToken(current) }, &ops()).map(|_| ()),
                Op::DeactivateFresh => s.change(SiteChange::Deactivate { expect: FencingToken(current) }, &ops()).map(|_| ()),
                Op::Check => Ok(()),
            };
            if let Err(e) = result {
                // A stale expectation is a lost race; a fresh one can only break a rule.
                let stale = matches!(op, Op::Activate(_, d) | Op::Deactivate(d) if d > 0 && current > 0);
                prop_assert_eq!(e.kind(), if stale { ErrorKind::Conflict } else { ErrorKind::Refused });
            }
            let after = s.load().unwrap().token.0;
            prop_assert!(after == current || after == current + 1);
            last = after;
            for site in &sites {
                if let Verdict::Run { token } = check(&*s, site).unwrap() {
                    let prev = runs_under.entry(token.0).or_insert_with(|| site.clone());
                    prop_assert_eq!(&*prev, site, "token {} gave Run to two sites", token.0);
                }
            }
        }
        prop_assert_eq!(s.verify_journal().unwrap().entries, last);
    }
}

/// Case 3 of the run issue: a site whose clock is behind (a VM restored from a replica before
/// NTP converges) writes heartbeat times far in the past. Liveness never compares them: the
/// run stays alive for the drain as long as its counter moves.
#[test]
fn a_heartbeating_run_of_a_skewed_host_is_never_counted_lost() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let drainer_clock = clock();
    // The wrapper's host is an hour behind.
    let skewed = Arc::new(ManualClock::new(
        drainer_clock.now_for_test() - Duration::hours(1),
    ));
    let on_drainer = SqliteStore::open(&path, drainer_clock.clone()).unwrap();
    let on_wrapper = SqliteStore::open(&path, skewed.clone()).unwrap();
    on_drainer
        .change(
            SiteChange::Activate {
                site: site("rbx"),
                expect: FencingToken(0),
            },
            &ops(),
        )
        .unwrap();
    let id = admitted(
        &on_wrapper,
        &RunStart {
            job: "invoices".into(),
            site: site("rbx"),
            token: FencingToken(1),
            host: "rbx-vm".into(),
            pid: 7,
            containment: None,
            schedule: None,
        },
    );
    on_drainer
        .change(
            SiteChange::Deactivate {
                expect: FencingToken(1),
            },
            &ops(),
        )
        .unwrap();
    let drainer = pra_core::run::Drainer::new(
        &on_drainer,
        &*drainer_clock,
        std::time::Duration::from_secs(60),
    );
    for _ in 0..10 {
        assert_eq!(
            drainer.alive_below(FencingToken(2)).unwrap().len(),
            1,
            "a live run of a skewed host must hold the drain"
        );
        on_wrapper.run_heartbeat(id).unwrap();
        drainer_clock.advance(Duration::seconds(50));
    }
    // Its wrapper stops beating: lost 60 s (of the drainer's clock) after the last change seen.
    assert_eq!(drainer.alive_below(FencingToken(2)).unwrap().len(), 1);
    drainer_clock.advance(Duration::seconds(60));
    assert!(drainer.alive_below(FencingToken(2)).unwrap().is_empty());
}

/// Red team (session 4): a record edited or rolled back by hand while its journal stays
/// intact passed `pra journal --verify`, and the next change chained "token 1 → 2" after
/// "2 → 3" — tokens handed out again. The verification now holds the record to the journal's
/// last change, and every change to the one before it.
#[test]
fn verify_catches_a_record_that_disagrees_with_its_journal() {
    // The lock file, edited in its full format.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pra-status.lock");
    let s = FileStore::open(&path, clock()).unwrap();
    three_flips(&s);
    let text = fs::read_to_string(&path).unwrap();
    fs::write(
        &path,
        text.replace("ACTIVE_SITE=SBG", "ACTIVE_SITE=RBX")
            .replace("TOKEN=3", "TOKEN=1"),
    )
    .unwrap();
    let e = s.verify_journal().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
    assert!(
        e.to_string().contains("token 1") && e.to_string().contains("token 3"),
        "{e}"
    );

    // SQLite, its record row rolled back.
    let p = dir.path().join("state.db");
    let s = SqliteStore::open(&p, clock()).unwrap();
    three_flips(&s);
    let conn = rusqlite::Connection::open(&p).unwrap();
    conn.execute(
        "UPDATE active_site SET site = 'rbx', token = 1 WHERE id = 1",
        [],
    )
    .unwrap();
    let e = s.verify_journal().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
    // The next change from the rolled-back record would reuse token 2: the history check
    // names it at the next verification.
    s.change(
        SiteChange::Deactivate {
            expect: FencingToken(1),
        },
        &ops(),
    )
    .unwrap();
    let e = s.verify_journal().unwrap_err();
    assert!(e.to_string().contains("entry 4"), "{e}");
}

/// The SQLite store's per job and site counters (kept by triggers, so that metrics do not read
/// every run ever) agree with the runs themselves — after starts, finishes, revocations and
/// runs counted lost, and after the migration that builds them from an older store's runs.
#[test]
fn sqlite_run_counters_agree_with_the_runs() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("state.db");
    let clock = clock();
    let s = SqliteStore::open(&p, clock.clone()).unwrap();
    activate_rbx(&s);
    let start = rbx_run;
    let ids: Vec<RunId> = (0..12)
        .map(|i| admitted(&s, &start(["a", "b", "c"][i % 3])))
        .collect();
    assert!(s.run_finish(ids[0], Some(0), "exited 0").unwrap());
    assert!(s.run_finish(ids[1], None, "revoked").unwrap());
    assert!(s.run_finish(ids[4], None, "revoked").unwrap());
    let lost = s
        .unfinished_runs_below(FencingToken(2))
        .unwrap()
        .into_iter()
        .find(|u| u.run.id == ids[2])
        .unwrap();
    assert!(s.run_mark_lost(ids[2], lost.pulse, "lost").unwrap());
    s.note_skip("a", &site("sbg")).unwrap();
    let expected = |s: &SqliteStore| {
        let runs = s.runs(chrono::DateTime::<Utc>::UNIX_EPOCH).unwrap();
        let mut by: std::collections::BTreeMap<(String, String), (u64, u64, u64)> =
            Default::default();
        for r in runs {
            let e = by
                .entry((r.start.job.clone(), r.start.site.to_string()))
                .or_default();
            e.0 += 1;
            e.1 += u64::from(r.outcome.as_deref() == Some("revoked"));
            e.2 += u64::from(r.finished_at.is_none());
        }
        by
    };
    let counted = |s: &SqliteStore| {
        s.run_stats()
            .unwrap()
            .into_iter()
            .filter(|x| x.started > 0)
            .map(|x| {
                (
                    (x.job, x.site.to_string()),
                    (x.started, x.revoked, x.unfinished),
                )
            })
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    assert_eq!(counted(&s), expected(&s));
    assert_eq!(
        counted(&s)[&("b".to_string(), "rbx".to_string())],
        (4, 2, 2)
    );
    let skipped = s.run_stats().unwrap();
    assert!(
        skipped
            .iter()
            .any(|x| x.job == "a" && x.site.as_str() == "sbg" && x.skipped == 1)
    );
    drop(s);

    // A store of schema 3 (no counters): the migration builds them from its runs.
    let conn = rusqlite::Connection::open(&p).unwrap();
    conn.execute_batch(
        "DROP TRIGGER runs_pruned; DROP TABLE outlived; DROP TABLE meta;
         DROP INDEX runs_unfinished; CREATE INDEX runs_unfinished ON runs (finished_at, token);
         DROP TRIGGER runs_counted; DROP TRIGGER runs_recounted; DROP TABLE run_counts;
         ALTER TABLE runs DROP COLUMN schedule;
         ALTER TABLE runs DROP COLUMN host_id; ALTER TABLE runs DROP COLUMN containment_id;
         DROP TABLE run_names;
         PRAGMA user_version = 3;",
    )
    .unwrap();
    drop(conn);
    let s = SqliteStore::open(&p, clock).unwrap();
    assert_eq!(counted(&s), expected(&s));
    assert!(s.run_finish(ids[3], Some(0), "exited 0").unwrap());
    assert_eq!(counted(&s), expected(&s));
}

/// Per job and site (started, skipped, revoked, unfinished), as the store's metrics say.
fn stats_of(r: &dyn RunRegistry) -> std::collections::BTreeMap<(String, String), [u64; 4]> {
    r.run_stats()
        .unwrap()
        .into_iter()
        .map(|x| {
            (
                (x.job, x.site.to_string()),
                [x.started, x.skipped, x.revoked, x.unfinished],
            )
        })
        .collect()
}

/// The same counts from the rows themselves (and `skips`), without the store's counters.
fn stats_of_rows(
    runs: &[pra_core::store::RunRecord],
    skips: &[(&str, &str, u64)],
) -> std::collections::BTreeMap<(String, String), [u64; 4]> {
    let mut by: std::collections::BTreeMap<(String, String), [u64; 4]> = Default::default();
    for r in runs {
        let e = by
            .entry((r.start.job.clone(), r.start.site.to_string()))
            .or_default();
        e[0] += 1;
        e[2] += u64::from(r.outcome.as_deref() == Some("revoked"));
        e[3] += u64::from(r.finished_at.is_none());
    }
    for (job, site, n) in skips {
        by.entry((job.to_string(), site.to_string())).or_default()[1] += n;
    }
    by
}

/// Bounded history: finished runs started before the window are deleted as later runs finish, the
/// metrics' counters stay exact (checked against the rows counted before they were deleted),
/// unfinished runs are never deleted and a drain still finds them — on the SQLite store
/// (opened through the options the front ends use) and the memory store.
#[test]
fn finished_runs_older_than_the_history_window_are_pruned_and_still_counted() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/state.db", dir.path().display());
    let history = std::time::Duration::from_secs(2 * 86_400);
    // Less than a day is refused.
    let short = pra_core::store::OpenOptions {
        history: Some(std::time::Duration::from_secs(3600)),
        ..Default::default()
    };
    let e = pra_core::store::open_with(&url, &short).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    let sqlite_clock = clock();
    let sqlite = pra_core::store::open_with(
        &url,
        &pra_core::store::OpenOptions {
            clock: sqlite_clock.clone(),
            history: Some(history),
            ..Default::default()
        },
    )
    .unwrap();
    let memory_clock = clock();
    let memory =
        pra_core::store::MemoryStore::new("pruned", memory_clock.clone()).with_history(history);
    let stores: [(&dyn Store, Arc<ManualClock>); 2] =
        [(&*sqlite, sqlite_clock), (&memory, memory_clock)];
    for (s, clock) in stores {
        let r = s.registry().unwrap();
        activate_rbx(s);
        let start = rbx_run;
        // 40 old runs: finished, some revoked, two never finished; and skips.
        let old: Vec<RunId> = (0..40)
            .map(|i| admitted(r, &start(["a", "b"][i % 2])))
            .collect();
        for (i, id) in old.iter().enumerate() {
            clock.advance(Duration::seconds(1));
            match i {
                5 | 6 => {}
                i if i % 7 == 0 => assert!(r.run_finish(*id, None, "revoked").unwrap()),
                _ => assert!(r.run_finish(*id, Some(0), "exited 0").unwrap()),
            }
        }
        r.note_skip("a", &site("sbg")).unwrap();
        r.note_skip("a", &site("sbg")).unwrap();
        let skips = [("a", "sbg", 2)];
        let epoch = chrono::DateTime::<Utc>::UNIX_EPOCH;
        // Ground truth, from the rows, before anything is pruned.
        let old_rows = r.runs(epoch).unwrap();
        assert_eq!(old_rows.len(), 40);
        let before = stats_of_rows(&old_rows, &skips);
        assert_eq!(stats_of(r), before);

        // Three days later, 24 new runs (ids 41 to 64): the finishes of 48 and 64 prune.
        clock.advance(Duration::days(3));
        let new: Vec<RunId> = (0..24).map(|_| admitted(r, &start("b"))).collect();
        for id in &new {
            assert!(r.run_finish(*id, Some(1), "exited 1").unwrap());
        }
        let rows = r.runs(epoch).unwrap();
        let kept: Vec<RunId> = rows.iter().map(|x| x.id).collect();
        let mut want = vec![old[5], old[6]];
        want.extend(&new);
        assert_eq!(kept, want, "only the unfinished old runs stay");
        // Counters: the old rows' truth plus the new rows, exactly.
        let mut expected = before.clone();
        for (k, v) in stats_of_rows(&rows[2..], &[]) {
            let e = expected.entry(k).or_default();
            for i in 0..4 {
                e[i] += v[i];
            }
        }
        assert_eq!(stats_of(r), expected);
        // A drain still sees the old unfinished runs.
        let unfinished: Vec<RunId> = r
            .unfinished_runs_below(FencingToken(2))
            .unwrap()
            .into_iter()
            .map(|u| u.run.id)
            .collect();
        assert_eq!(unfinished, vec![old[5], old[6]]);
        // Finishing one of them still counts.
        assert!(r.run_finish(old[5], Some(0), "exited 0").unwrap());
        expected
            .get_mut(&("b".to_string(), "rbx".to_string()))
            .unwrap()[3] -= 1;
        assert_eq!(stats_of(r), expected);
    }
}

/// Journal checkpoints: the older entries go to an archive file and the store keeps one
/// checkpoint entry carrying their head hash; the default verification starts there, the full
/// one checks the archives and the store as one chain and finds a tampered archive or a gap.
#[test]
fn journal_checkpoints_archive_the_past_and_still_verify_as_one_chain() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("state.db");
    let s = SqliteStore::open(&p, clock()).unwrap();
    let (a1, a2) = (dir.path().join("j1.jsonl"), dir.path().join("j2.jsonl"));
    // An empty journal has nothing to checkpoint, and writes no archive.
    assert_eq!(
        s.checkpoint_journal(&a1, &ops()).unwrap_err().kind(),
        ErrorKind::Refused
    );
    assert!(!a1.exists());
    three_flips(&s);
    let first = s.checkpoint_journal(&a1, &ops()).unwrap();
    assert_eq!(first.entries, 3);
    assert_eq!(read_archive(&a1).unwrap().len(), 3);
    let live = s.journal().unwrap();
    assert_eq!(live.len(), 1, "only the checkpoint stays: {live:?}");
    assert_eq!(live[0].seq, 4);
    assert_eq!(live[0].prev_hash, first.head);
    // An existing archive is never overwritten, and the store is left as it was.
    assert_eq!(
        s.checkpoint_journal(&a1, &ops()).unwrap_err().kind(),
        ErrorKind::InvalidArgument
    );
    assert_eq!(s.journal().unwrap(), live);
    // Life goes on after a checkpoint (also after reopening): flips chain on from it.
    drop(s);
    let s = SqliteStore::open(&p, clock()).unwrap();
    for change in [
        SiteChange::Deactivate {
            expect: FencingToken(3),
        },
        SiteChange::Activate {
            site: site("rbx"),
            expect: FencingToken(4),
        },
    ] {
        s.change(change, &ops()).unwrap();
    }
    assert_eq!(s.verify_journal().unwrap().entries, 3);
    assert_eq!(s.checkpoint_journal(&a2, &ops()).unwrap().entries, 3);
    s.change(
        SiteChange::Deactivate {
            expect: FencingToken(5),
        },
        &ops(),
    )
    .unwrap();
    // From the last checkpoint: two entries, whatever the archives hold.
    assert_eq!(s.verify_journal().unwrap().entries, 2);
    // The whole history: 3 + 3 archived, the checkpoint and the last flip.
    let full = s.verify_journal_full(&[a1.clone(), a2.clone()]).unwrap();
    assert_eq!(full.entries, 8);
    assert_eq!(full.head, s.verify_journal().unwrap().head);
    // A gap: the first archive missing, or given out of order.
    for archives in [vec![a2.clone()], vec![a2.clone(), a1.clone()]] {
        let e = s.verify_journal_full(&archives).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
    }
    // A tampered archive: a changed reason, even re-sealed, breaks the chain.
    let text = fs::read_to_string(&a1).unwrap();
    let mut entries = read_archive(&a1).unwrap();
    entries[1].reason = "nothing to see".into();
    entries[1].hash = entries[1].compute_hash();
    let tampered: String = entries
        .iter()
        .map(|e| serde_json::to_string(e).unwrap() + "\n")
        .collect();
    fs::write(&a1, tampered).unwrap();
    let e = s
        .verify_journal_full(&[a1.clone(), a2.clone()])
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
    assert!(e.to_string().contains("entry 3"), "{e}");
    fs::write(&a1, text).unwrap();
    s.verify_journal_full(&[a1.clone(), a2.clone()]).unwrap();
    // The live journal is still guarded: a checkpoint's record edited in the store is found.
    drop(s);
    let conn = rusqlite::Connection::open(&p).unwrap();
    let body: String = conn
        .query_row("SELECT body FROM journal ORDER BY seq LIMIT 1", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert!(body.contains("\"checkpoint\""), "{body}");
    conn.execute(
        "UPDATE journal SET body = ?1 WHERE seq = (SELECT MIN(seq) FROM journal)",
        [body.replace("\"token\":5", "\"token\":9")],
    )
    .unwrap();
    drop(conn);
    let s = SqliteStore::open(&p, clock()).unwrap();
    assert_eq!(s.verify_journal().unwrap_err().kind(), ErrorKind::Corrupt);
    // The lock file checkpoints too: its journal file keeps the checkpoint on, and changes
    // (with their write-ahead check of what follows the file's head) number on from it.
    let lock = dir.path().join("pra-status.lock");
    let f = FileStore::open(&lock, clock()).unwrap();
    three_flips(&f);
    let a3 = dir.path().join("j3.jsonl");
    assert_eq!(f.checkpoint_journal(&a3, &ops()).unwrap().entries, 3);
    let journal_file = fs::read_to_string(dir.path().join("pra-status.lock.journal")).unwrap();
    assert_eq!(journal_file.lines().count(), 1, "{journal_file}");
    drop(f);
    let f = FileStore::open(&lock, clock()).unwrap();
    f.change(
        SiteChange::Deactivate {
            expect: FencingToken(3),
        },
        &ops(),
    )
    .unwrap();
    assert_eq!(f.load().unwrap().token, FencingToken(4));
    assert_eq!(f.verify_journal().unwrap().entries, 2);
    assert_eq!(
        f.verify_journal_full(std::slice::from_ref(&a3))
            .unwrap()
            .entries,
        5
    );
    assert_eq!(
        f.verify_journal_full(&[]).unwrap_err().kind(),
        ErrorKind::Corrupt
    );
    // An existing archive is refused before anything is written (here on the memory store).
    let m = pra_core::store::MemoryStore::new("cp", clock());
    three_flips(&m);
    assert_eq!(
        m.checkpoint_journal(&a3, &ops()).unwrap_err().kind(),
        ErrorKind::InvalidArgument
    );
    assert_eq!(m.journal().unwrap().len(), 3);
}

/// A backlog of old runs (after an upgrade, say) is pruned a batch at a time: one finish deletes
/// at most `PRUNE_BATCH` runs, so no writer waits behind a long delete, and later finishes take
/// the rest.
#[test]
fn a_backlog_of_old_runs_is_pruned_a_batch_per_finish() {
    use pra_core::store::{PRUNE_BATCH, PRUNE_EVERY};
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let s = SqliteStore::open(&dir.path().join("state.db"), clock.clone())
        .unwrap()
        .with_history(std::time::Duration::from_secs(86_400));
    activate_rbx(&s);
    let old = 2 * PRUNE_BATCH + 10;
    for _ in 0..old {
        let id = admitted(&s, &rbx_run("a"));
        // Finishing them prunes nothing yet: they are all within the window.
        assert!(s.run_finish(id, Some(0), "exited 0").unwrap());
    }
    let epoch = chrono::DateTime::<Utc>::UNIX_EPOCH;
    assert_eq!(s.runs(epoch).unwrap().len() as i64, old);
    clock.advance(Duration::days(2));
    let mut left = vec![];
    for _ in 0..3 * PRUNE_EVERY {
        let id = admitted(&s, &rbx_run("b"));
        assert!(s.run_finish(id, Some(0), "exited 0").unwrap());
        if id.0 % PRUNE_EVERY == 0 {
            left.push(
                s.runs(epoch)
                    .unwrap()
                    .iter()
                    .filter(|r| r.start.job == "a")
                    .count() as i64,
            );
        }
    }
    assert_eq!(left, [old - PRUNE_BATCH, old - 2 * PRUNE_BATCH, 0]);
    assert_eq!(s.run_stats().unwrap()[0].started as i64, old);
}

/// The SQLite store notes the runs still going when the record moves past their token (schema
/// v6), so that the report reads only those and the runs started while they went on: the same
/// double execution as a sweep over every run, from a fraction of them.
#[test]
fn the_report_reads_only_runs_that_may_overlap_and_finds_the_same_double_execution() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("state.db");
    let clock = clock();
    let s = SqliteStore::open(&p, clock.clone()).unwrap();
    // Noting began before this test's clock (a store created now notes from now).
    rusqlite::Connection::open(&p)
        .unwrap()
        .execute("UPDATE meta SET value = 0 WHERE key = 'outlived_since'", [])
        .unwrap();
    activate_rbx(&s);
    let at = |job: &str, site_name: &str, token: u64| RunStart {
        job: job.into(),
        site: site(site_name),
        token: FencingToken(token),
        host: "h".into(),
        pid: 1,
        containment: None,
        schedule: None,
    };
    let step = |secs| clock.advance(Duration::seconds(secs));
    let short = |job: &str, site_name: &str, token: u64, secs| {
        let id = admitted(&s, &at(job, site_name, token));
        step(secs);
        assert!(s.run_finish(id, Some(0), "exited 0").unwrap());
    };
    for _ in 0..20 {
        short("a", "rbx", 1, 1);
    }
    let long = admitted(&s, &at("a", "rbx", 1));
    step(10);
    s.change(
        SiteChange::Deactivate {
            expect: FencingToken(1),
        },
        &ops(),
    )
    .unwrap();
    step(1);
    s.change(
        SiteChange::Activate {
            site: site("sbg"),
            expect: FencingToken(2),
        },
        &ops(),
    )
    .unwrap();
    short("a", "sbg", 3, 5); // overlaps the long run
    short("c", "sbg", 3, 1); // started while it went on, but another job
    step(4);
    assert!(s.run_finish(long, Some(0), "exited 0").unwrap());
    step(1);
    for _ in 0..30 {
        short("b", "sbg", 3, 1);
    }
    let epoch = chrono::DateTime::<Utc>::UNIX_EPOCH;
    let all = s.runs(epoch).unwrap();
    let mut read = Vec::new();
    s.each_run_that_may_overlap(epoch, &mut |r| {
        read.push(r.id);
        Ok(())
    })
    .unwrap();
    assert_eq!(
        read.len(),
        3,
        "the long run, and the two started while it went on: {read:?}"
    );
    let now = pra_core::Clock::now(&*clock);
    let full = pra_core::plan::report::report(
        &s.journal().unwrap(),
        &all,
        None,
        now,
        Duration::seconds(60),
    );
    let built = pra_core::plan::report::build(
        &s,
        dir.path(),
        Duration::seconds(60),
        &*clock,
        pra_core::plan::report::Window::Since(epoch),
    )
    .unwrap();
    assert_eq!(built.overlaps, full.overlaps);
    assert_eq!(built.overlaps.len(), 1);
    assert_eq!(built.double_execution_seconds, 5.0);
}
