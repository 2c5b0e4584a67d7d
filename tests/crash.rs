//! Crash tests: `pra backup` and `pra restore` killed (SIGKILL) at random moments. Afterwards the
//! database passes integrity_check and holds either the old or the new content, and no partial
//! backup is ever listed. `pra site` on a lock file killed likewise leaves one record that
//! agrees with its journal.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::{Rng, iterations, kill_after, median_of, serial, timed};

use pra_core::backup::{self, Health};
use rusqlite::Connection;

fn make_db(path: &Path, marker: &str, rows: u32) {
    let conn = Connection::open(path).unwrap();
    conn.execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE events (id INTEGER PRIMARY KEY, body BLOB); CREATE TABLE marker (v TEXT);").unwrap();
    conn.execute("INSERT INTO marker VALUES (?1)", [marker])
        .unwrap();
    let tx = conn.unchecked_transaction().unwrap();
    for _ in 0..rows {
        tx.execute("INSERT INTO events (body) VALUES (randomblob(1000))", [])
            .unwrap();
    }
    tx.commit().unwrap();
}

fn pra(dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pra"));
    c.args(args)
        .env("PRA_STORE", format!("sqlite://{}/state.db", dir.display()))
        .env("PRA_DB", dir.join("app.db"))
        .env("PRA_BACKUP_DIR", dir.join("backup"))
        .env("PRA_CONFIG", dir.join("none.toml"))
        .env_remove("PRA_SITE")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    c
}

fn integrity(path: &Path) -> String {
    Connection::open(path)
        .unwrap()
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap()
}

#[test]
fn killed_backups_never_leave_a_partial_backup_listed() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("none.toml"), "").unwrap();
    make_db(&dir.path().join("app.db"), "old", 20_000); // ~20 MB
    let full = median_of(3, || pra(dir.path(), &["backup"]));
    let mut rng = Rng::new("crash");
    let mut killed = 0;
    for _ in 0..iterations() {
        let delay = rng.delay(full);
        killed += usize::from(kill_after(pra(dir.path(), &["backup"]), delay));
        for e in backup::list(&dir.path().join("backup")).unwrap() {
            assert_ne!(
                e.health,
                Health::Corrupt {
                    reason: String::new()
                },
                "{}",
                e.name
            );
            assert!(e.usable(), "{} listed but {:?}", e.name, e.health);
        }
    }
    // A later backup cleans the temporaries of killed ones, and every listed backup is whole.
    assert!(pra(dir.path(), &["backup"]).status().unwrap().success());
    let temps = std::fs::read_dir(dir.path().join("backup"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with(".backup-tmp")
        })
        .count();
    assert_eq!(
        temps, 0,
        "temporary files of killed backups were not cleaned"
    );
    for e in backup::list(&dir.path().join("backup")).unwrap() {
        assert_eq!(integrity(&e.path), "ok", "{}", e.name);
    }
    assert!(
        killed > iterations() / 4,
        "only {killed} of {} runs were killed mid-way: the test did not test much",
        iterations()
    );
    assert!(
        integrity(&dir.path().join("app.db")) == "ok",
        "the source was damaged"
    );
}

#[test]
fn killed_restores_leave_the_old_or_the_new_database() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("none.toml"), "").unwrap();
    let db = dir.path().join("app.db");
    make_db(&db, "new", 20_000);
    assert!(pra(dir.path(), &["backup"]).status().unwrap().success());
    let reset = || {
        for f in ["app.db", "app.db-wal", "app.db-shm"] {
            let _ = std::fs::remove_file(dir.path().join(f));
        }
        make_db(&db, "old", 2_000);
    };
    reset();
    let full = median_of(3, || {
        reset();
        pra(dir.path(), &["restore", "--latest", "--no-safety-copy"])
    });
    let mut rng = Rng::new("crash");
    let (mut old, mut new, mut killed) = (0, 0, 0);
    for _ in 0..iterations() {
        reset();
        let delay = rng.delay(full);
        killed += usize::from(kill_after(
            pra(dir.path(), &["restore", "--latest", "--no-safety-copy"]),
            delay,
        ));
        assert_eq!(integrity(&db), "ok");
        let marker: String = Connection::open(&db)
            .unwrap()
            .query_row("SELECT v FROM marker", [], |r| r.get(0))
            .unwrap();
        let rows: i64 = Connection::open(&db)
            .unwrap()
            .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
            .unwrap();
        match marker.as_str() {
            "old" => {
                assert_eq!(rows, 2_000);
                old += 1
            }
            "new" => {
                assert_eq!(rows, 20_000);
                new += 1
            }
            other => panic!("marker {other}"),
        }
    }
    eprintln!("restores killed: {killed}, old content: {old}, new content: {new}");
    assert!(
        killed > iterations() / 4,
        "only {killed} restores were killed mid-way"
    );
}

/// `pra site` on the lock file `lock`, as operator `ops`.
fn flip(lock: &Path, token: u64, active: bool) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pra"));
    c.arg("site");
    if active {
        c.arg("deactivate");
    } else {
        c.args(["activate", "rbx"]);
    }
    c.args(["--expect-token", &token.to_string(), "--by", "ops"])
        .env("PRA_STORE", format!("file://{}", lock.display()))
        .env("PRA_CONFIG", lock.with_file_name("none.toml"))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    c
}

#[test]
fn killed_lock_file_changes_leave_one_record_that_agrees_with_its_journal() {
    let _serial = serial();
    use pra_core::Store;
    use pra_core::store::FileStore;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("none.toml"), "").unwrap();
    let lock = dir.path().join("pra-status.lock");
    let store = || FileStore::open(&lock, std::sync::Arc::new(pra_core::SystemClock)).unwrap();
    let scratch = tempfile::tempdir().unwrap();
    std::fs::write(scratch.path().join("none.toml"), "").unwrap();
    let mut n = 0;
    let full = median_of(5, || {
        n += 1;
        flip(&scratch.path().join(format!("{n}.lock")), 0, false)
    });
    let mut rng = Rng::new("killed_lock_file_changes");
    let mut killed = 0;
    let mut token = 0;
    for i in 0..iterations() {
        if i % 8 == 0 {
            // Start again from a seed file now and then: its first change rewrites it first.
            std::fs::write(&lock, "ACTIVE_SITE=SBG\n").unwrap();
            let _ = std::fs::remove_file(dir.path().join("pra-status.lock.journal"));
            token = 0;
        }
        let before = store().load().unwrap();
        assert_eq!(before.token.0, token, "iteration {i}");
        if kill_after(flip(&lock, token, before.site.is_some()), rng.delay(full)) {
            killed += 1;
        }
        // Whatever the moment of the kill: one record, the old or the new, that agrees with
        // its journal (every change is one entry), and the next change can be made.
        let s = store();
        let after = s.load().unwrap_or_else(|e| panic!("iteration {i}: {e}"));
        assert!(
            after.token.0 == token || after.token.0 == token + 1,
            "iteration {i}: token {} after {token}",
            after.token
        );
        let check = s
            .verify_journal()
            .unwrap_or_else(|e| panic!("iteration {i}: {e}"));
        assert_eq!(check.entries, after.token.0, "iteration {i}");
        token = after.token.0;
    }
    assert!(
        killed > iterations() / 4,
        "only {killed} of {} changes were killed mid-way: the test did not test much",
        iterations()
    );
    // The last change, unkilled, goes through. A change killed between its journal entry and
    // its rename is rolled forward first (dropping it could hand its token out twice), so the
    // change made with the token last read may be refused as a conflict: the operator reloads
    // and retries, as the message says, and that goes through.
    let status = flip(&lock, token, store().load().unwrap().site.is_some())
        .status()
        .unwrap();
    if !status.success() {
        assert_eq!(status.code(), Some(5), "a refusal is a conflict");
        let reloaded = store().load().unwrap();
        assert_eq!(
            reloaded.token.0,
            token + 1,
            "the conflict is the rolled-forward change"
        );
        token = reloaded.token.0;
        timed(flip(&lock, token, reloaded.site.is_some()));
    }
    assert_eq!(store().verify_journal().unwrap().entries, token + 1);
}
