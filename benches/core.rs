//! Criterion benches of pra-core and libpra: guard checks (in process and through the C ABI),
//! plan transitions (pure and persisted), backup and restore of a 100 MB and a 1 GB database,
//! status over 100k rows / 5,000 backups and 1M rows / 10,000 backups.
//!
//! `cargo bench --bench core`. `PRA_BENCH_MB="100 1024"` and `PRA_BENCH_STATUS="100000:5000
//! 1000000:10000"` (the defaults) choose the sizes.

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use pra_core::backup::restore::{self, RestorePoint};
use pra_core::backup::{self, Method};
use pra_core::plan::{self, DrainPolicy, Event, Runner, State};
use pra_core::store::{FileStore, SqliteStore, Store};
use pra_core::{
    Actor, FencingToken, ManualClock, SiteChange, SiteId, SystemClock, Topology, status,
};

fn make_db(path: &Path, rows: u64, blob: usize) {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; CREATE TABLE events (id INTEGER PRIMARY KEY, body BLOB);",
    )
    .unwrap();
    let tx = conn.unchecked_transaction().unwrap();
    {
        let mut st = tx
            .prepare("INSERT INTO events (body) VALUES (randomblob(?1))")
            .unwrap();
        for _ in 0..rows {
            st.execute([blob as i64]).unwrap();
        }
    }
    tx.commit().unwrap();
}

fn guard(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(SystemClock);
    let sq = SqliteStore::open(&dir.path().join("state.db"), clock.clone()).unwrap();
    let fs = FileStore::open(&dir.path().join("pra-status.lock"), clock).unwrap();
    let by = Actor::new("bench", "").unwrap();
    let rbx = SiteId::new("rbx").unwrap();
    for s in [&sq as &dyn Store, &fs] {
        s.change(
            SiteChange::Activate {
                site: rbx.clone(),
                expect: FencingToken(0),
            },
            &by,
        )
        .unwrap();
    }
    c.bench_function("guard check, sqlite store", |b| {
        b.iter(|| black_box(pra_core::check(&sq, &rbx).unwrap()))
    });
    c.bench_function("guard check, file store", |b| {
        b.iter(|| black_box(pra_core::check(&fs, &rbx).unwrap()))
    });

    // The same checks through the C ABI (what a C or Go program pays).
    for (name, url) in [
        (
            "sqlite",
            format!("sqlite://{}", dir.path().join("state.db").display()),
        ),
        (
            "file",
            format!("file://{}", dir.path().join("pra-status.lock").display()),
        ),
    ] {
        let url = std::ffi::CString::new(url).unwrap();
        let mut store: *mut pra_ffi::pra_store = std::ptr::null_mut();
        // SAFETY: a valid string and out-pointer.
        assert_eq!(
            unsafe { pra_ffi::pra_store_open(url.as_ptr(), &mut store) },
            pra_ffi::pra_result::Ok
        );
        let mut v = std::mem::MaybeUninit::<pra_ffi::pra_verdict>::uninit();
        c.bench_function(&format!("guard check, {name} store, C ABI"), |b| {
            // SAFETY: a live handle, a static string, a valid out-pointer.
            b.iter(|| {
                black_box(unsafe {
                    pra_ffi::pra_guard_check(store, c"rbx".as_ptr(), v.as_mut_ptr())
                })
            })
        });
        // SAFETY: the handle from pra_store_open, freed once.
        unsafe { pra_ffi::pra_store_free(store) };
    }
}

fn transitions(c: &mut Criterion) {
    let topo = Topology::parse("rbx,sbg").unwrap();
    c.bench_function("plan transition, in memory", |b| {
        b.iter(|| {
            black_box(
                plan::transition(
                    black_box(State::FailoverDecided),
                    &Event::ExecuteFailover,
                    &topo,
                )
                .unwrap(),
            )
        })
    });
    // Persisted: a full plan transition (load plan + record, commit plan + journal) in SQLite,
    // alternating two events that need no flip so the cycle can repeat forever.
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(chrono::Utc::now()));
    let store = SqliteStore::open(&dir.path().join("state.db"), clock.clone()).unwrap();
    let by = Actor::new("bench", "").unwrap();
    store
        .change(
            SiteChange::Activate {
                site: SiteId::new("rbx").unwrap(),
                expect: FencingToken(0),
            },
            &by,
        )
        .unwrap();
    let runner = Runner::new(&store, &topo, &*clock, DrainPolicy::default());
    c.bench_function("plan transition, persisted (sqlite)", |b| {
        b.iter(|| {
            runner.apply(Event::IncidentDetected, &by).unwrap();
            runner
                .apply(
                    Event::Abort {
                        reason: "bench".into(),
                    },
                    &by,
                )
                .unwrap();
        })
    });
}

fn sizes(var: &str, default: &str) -> Vec<String> {
    std::env::var(var)
        .unwrap_or_else(|_| default.into())
        .split_whitespace()
        .map(String::from)
        .collect()
}

fn backup_restore(c: &mut Criterion) {
    for mb in sizes("PRA_BENCH_MB", "100 1024") {
        let mb: u64 = mb.parse().expect("PRA_BENCH_MB: sizes in MB");
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("app.db");
        make_db(&db, mb * 1024, 1000);
        let mut g = c.benchmark_group(format!("{mb} MB database"));
        g.sample_size(10);
        for method in [Method::OnlineBackup, Method::VacuumInto] {
            g.bench_function(format!("backup ({method:?})"), |b| {
                b.iter(|| {
                    let bdir = dir.path().join("b");
                    black_box(backup::create(&db, &bdir, method, &SystemClock).unwrap());
                    std::fs::remove_dir_all(&bdir).unwrap();
                })
            });
        }
        let bdir = dir.path().join("backups");
        backup::create(&db, &bdir, Method::OnlineBackup, &SystemClock).unwrap();
        let target = dir.path().join("restored.db");
        g.bench_function("restore", |b| {
            b.iter(|| {
                black_box(
                    restore::restore(
                        &target,
                        &bdir,
                        &RestorePoint::Latest,
                        restore::Options { safety_copy: false },
                        &SystemClock,
                    )
                    .unwrap(),
                )
            })
        });
        g.finish();
    }
}

fn status_bench(c: &mut Criterion) {
    for spec in sizes("PRA_BENCH_STATUS", "100000:5000 1000000:10000") {
        let (rows, backups) = spec
            .split_once(':')
            .expect("PRA_BENCH_STATUS: ROWS:BACKUPS");
        let (rows, backups): (u64, i64) = (rows.parse().unwrap(), backups.parse().unwrap());
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("app.db");
        make_db(&db, rows, 16);
        let bdir = dir.path().join("backup");
        std::fs::create_dir(&bdir).unwrap();
        let one = dir.path().join("one");
        let src = backup::create(&db, &one, Method::OnlineBackup, &SystemClock).unwrap();
        let start = chrono::Utc::now() - chrono::Duration::days(30);
        for i in 0..backups {
            let name = backup::BackupName {
                time: start + chrono::Duration::minutes(i),
                seq: 0,
            }
            .file_name();
            std::fs::hard_link(&src.path, bdir.join(&name)).unwrap();
        }
        let opts = status::Options::default();
        c.bench_function(&format!("status, {rows} rows, {backups} backups"), |b| {
            b.iter(|| black_box(status::status(&db, &bdir, &opts, None, &SystemClock).unwrap()))
        });
        // The floor: open the database read-only and count, as a /status handler must.
        c.bench_function(&format!("open + SELECT count(*) alone, {rows} rows"), |b| {
            b.iter(|| {
                let conn = rusqlite::Connection::open_with_flags(
                    &db,
                    rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
                )
                .unwrap();
                black_box(
                    conn.query_row("SELECT count(*) FROM events", [], |r| r.get::<_, i64>(0))
                        .unwrap(),
                )
            })
        });
    }
}

/// The double-execution measure over a year-like history: 100 k short runs alternating between
/// the sites of one job, and one run still going since the start (the case a pairwise
/// comparison pays O(n²) for).
fn ground_truth_bench(c: &mut Criterion) {
    use pra_core::plan::{WorkUnit, ground_truth};
    let t0 = chrono::Utc::now();
    let rbx = pra_core::SiteId::new("rbx").unwrap();
    let sbg = pra_core::SiteId::new("sbg").unwrap();
    let mut units: Vec<WorkUnit> = (0..100_000)
        .map(|i| WorkUnit {
            job: "invoices".into(),
            site: if i % 2 == 0 { rbx.clone() } else { sbg.clone() },
            start: t0 + chrono::Duration::seconds(60 * i),
            end: t0 + chrono::Duration::seconds(60 * i + 30),
        })
        .collect();
    units.push(WorkUnit {
        job: "invoices".into(),
        site: rbx.clone(),
        start: t0,
        end: t0 + chrono::Duration::days(365),
    });
    c.bench_function("ground truth, 100k runs and one long run", |b| {
        b.iter(|| ground_truth(&units))
    });
}

criterion_group!(
    benches,
    guard,
    transitions,
    backup_restore,
    status_bench,
    ground_truth_bench
);
criterion_main!(benches);
