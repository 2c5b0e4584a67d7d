//! Crash tests: `pra backup` and `pra restore` killed (SIGKILL) at random moments. Afterwards the
//! database passes integrity_check and holds either the old or the new content, and no partial
//! backup is ever listed.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::{Rng, iterations, kill_after, timed};

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
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("none.toml"), "").unwrap();
    make_db(&dir.path().join("app.db"), "old", 20_000); // ~20 MB
    let full = timed(pra(dir.path(), &["backup"]));
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
    let full = timed(pra(
        dir.path(),
        &["restore", "--latest", "--no-safety-copy"],
    ));
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
