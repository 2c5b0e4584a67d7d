//! Backups, catalog, retention, restore and status against real SQLite files.

use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use chrono::{Duration, TimeZone, Utc};
use pra_core::backup::restore::{self, Options, RestorePoint};
use pra_core::backup::retention::{self, Policy};
use pra_core::backup::{self, Health, Method};
use pra_core::status::{self, BackupState};
use pra_core::{ErrorKind, ManualClock};
use rusqlite::Connection;

fn clock() -> ManualClock {
    ManualClock::new(Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap())
}

fn make_db(path: &Path, rows: u32) {
    make_db_in(path, rows, "WAL");
}

fn make_db_in(path: &Path, rows: u32, journal_mode: &str) {
    let conn = Connection::open(path).unwrap();
    conn.execute_batch(&format!("PRAGMA journal_mode = {journal_mode}; CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY, body TEXT NOT NULL);")).unwrap();
    let tx = conn.unchecked_transaction().unwrap();
    for _ in 0..rows {
        tx.execute("INSERT INTO events (body) VALUES (hex(randomblob(32)))", [])
            .unwrap();
    }
    tx.commit().unwrap();
}

fn ids(path: &Path) -> Vec<i64> {
    let conn = Connection::open(path).unwrap();
    let mut stmt = conn.prepare("SELECT id FROM events ORDER BY id").unwrap();
    stmt.query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// Restores the newest usable backup of `bdir` over `db`, with the default options.
fn restore_latest(db: &Path, bdir: &Path) -> pra_core::Result<restore::Report> {
    restore::restore(
        db,
        bdir,
        &RestorePoint::Latest,
        Options::default(),
        &clock(),
    )
}

fn integrity(path: &Path) -> String {
    Connection::open(path)
        .unwrap()
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap()
}

#[test]
fn backup_of_a_database_under_continuous_writes_is_a_consistent_prefix() {
    for (method, journal_mode) in [
        (Method::OnlineBackup, "WAL"),
        (Method::VacuumInto, "WAL"),
        (Method::Auto, "WAL"),
        (Method::Auto, "DELETE"),
        (Method::FileCopy, "DELETE"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("app.db");
        make_db_in(&db, 20_000, journal_mode);
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let (db, stop) = (db.clone(), stop.clone());
            std::thread::spawn(move || {
                let conn = Connection::open(&db).unwrap();
                conn.busy_timeout(std::time::Duration::from_secs(10))
                    .unwrap();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    conn.execute("INSERT INTO events (body) VALUES (hex(randomblob(32)))", [])
                        .unwrap();
                    n += 1;
                    if journal_mode == "DELETE" {
                        // In rollback mode a writer committing back to back starves every
                        // reader (its PENDING lock wins each race): leave readers a gap.
                        std::thread::sleep(std::time::Duration::from_micros(200));
                    }
                }
                n
            })
        };
        // Let the writer get going, then take backups while it writes.
        while ids(&db).len() < 20_100 {
            std::thread::yield_now();
        }
        let c = clock();
        let mut taken = Vec::new();
        for _ in 0..3 {
            taken.push(backup::create(&db, &dir.path().join("backups"), method, &c).unwrap());
        }
        stop.store(true, Ordering::Relaxed);
        let written = writer.join().unwrap();
        assert!(written > 0);
        for b in &taken {
            assert_eq!(integrity(&b.path), "ok", "{method:?}");
            let got = ids(&b.path);
            // A prefix of the writes: ids 1..=n without holes.
            assert_eq!(
                got,
                (1..=got.len() as i64).collect::<Vec<_>>(),
                "{method:?}: not a prefix"
            );
            assert!(got.len() >= 20_000);
            assert_eq!(b.health, Health::Verified);
            let m = b.manifest.as_ref().unwrap();
            assert_eq!(m.tables["events"], got.len() as u64);
            match method {
                // Under a steady writer the WAL is rarely all in the file: either may be used.
                Method::Auto if journal_mode == "WAL" => {
                    assert!(matches!(m.method, Method::FileCopy | Method::OnlineBackup))
                }
                // In rollback mode the read lock keeps writers out: always the file copy.
                Method::Auto => assert_eq!(m.method, Method::FileCopy),
                _ => assert_eq!(m.method, method),
            }
        }
        // Same second on a fixed clock: three distinct names.
        let names: Vec<_> = taken.iter().map(|b| b.name.clone()).collect();
        assert_eq!(
            names,
            vec![
                "backup-2026-03-01-12-00-00.db",
                "backup-2026-03-01-12-00-00-1.db",
                "backup-2026-03-01-12-00-00-2.db"
            ]
        );
    }
}

#[test]
fn a_file_copy_is_taken_only_when_the_snapshot_is_the_file_alone() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let bdir = dir.path().join("backups");
    make_db(&db, 1_000);
    fs::set_permissions(&db, fs::Permissions::from_mode(0o644)).unwrap();
    let c = clock();
    // Idle: the last commit's frames are checkpointed by the probe, the file is the snapshot.
    let b = backup::create(&db, &bdir, Method::FileCopy, &c).unwrap();
    assert_eq!(b.manifest.as_ref().unwrap().method, Method::FileCopy);
    assert_eq!(ids(&b.path).len(), 1_000);
    assert_eq!(integrity(&b.path), "ok");
    assert_eq!(
        fs::metadata(&b.path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let mode: String = Connection::open(&b.path)
        .unwrap()
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "delete", "a backup needs no -wal beside it");

    // A reader pinned at an older snapshot keeps newer frames out of the file.
    let reader = Connection::open(&db).unwrap();
    reader.execute_batch("BEGIN").unwrap();
    let seen: i64 = reader
        .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
        .unwrap();
    assert_eq!(seen, 1_000);
    make_db(&db, 500);
    let err = backup::create(&db, &bdir, Method::FileCopy, &c).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Busy, "{err}");
    assert!(err.to_string().contains("WAL"), "{err}");
    let b = backup::create(&db, &bdir, Method::Auto, &c).unwrap();
    assert_eq!(b.manifest.as_ref().unwrap().method, Method::OnlineBackup);
    assert_eq!(ids(&b.path).len(), 1_500);
    // Once the reader is gone, the file copy is possible again.
    reader.execute_batch("COMMIT").unwrap();
    drop(reader);
    let b = backup::create(&db, &bdir, Method::Auto, &c).unwrap();
    assert_eq!(b.manifest.as_ref().unwrap().method, Method::FileCopy);
    assert_eq!(ids(&b.path), (1..=1_500).collect::<Vec<_>>());
    // No temporary file left behind by the refused attempt.
    let leftovers: Vec<_> = fs::read_dir(&bdir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.') && n != backup::index::STATE_DIR)
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn backups_and_manifests_are_private_and_checksummed() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    make_db(&db, 10);
    let bdir = dir.path().join("backups");
    let b = backup::create(&db, &bdir, Method::OnlineBackup, &clock()).unwrap();
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&b.path), 0o600);
    assert_eq!(mode(&bdir.join(format!("{}.json", b.name))), 0o600);
    assert_eq!(mode(&bdir), 0o700);
    let m = b.manifest.unwrap();
    assert_eq!(m.size, fs::metadata(&b.path).unwrap().len());
    assert_eq!(m.verification, "ok");
    assert_eq!((m.format, m.sha256.as_deref()), (2, None));
    assert_eq!(
        m.blake3.as_deref(),
        Some(blake3::hash(&fs::read(&b.path).unwrap()).to_hex().as_str())
    );
    // Self-contained: no -wal or -shm beside the backup, and no temp file left; pra's own
    // files (the index) are in a private subdirectory.
    let names: Vec<String> = fs::read_dir(&bdir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n != backup::index::STATE_DIR)
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert_eq!(mode(&bdir.join(backup::index::STATE_DIR)), 0o700);
}

#[test]
fn backup_of_a_missing_database_is_not_found_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let e = backup::create(
        &dir.path().join("nope.db"),
        &dir.path().join("b"),
        Method::OnlineBackup,
        &clock(),
    )
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert!(!dir.path().join("nope.db").exists());
}

#[test]
fn catalog_lists_backups_newest_first_and_flags_corrupt_ones() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    make_db(&db, 5);
    let bdir = dir.path().join("backups");
    let c = clock();
    let good = backup::create(&db, &bdir, Method::OnlineBackup, &c).unwrap();
    // The seed's cp backup, minute format, one minute earlier: usable but unverified.
    fs::copy(&good.path, bdir.join("backup-2026-03-01-11-59.db")).unwrap();
    // A truncated one, a text file with a backup name, and a tampered-size one, all newer.
    let bytes = fs::read(&good.path).unwrap();
    fs::write(
        bdir.join("backup-2026-03-01-12-01-00.db"),
        &bytes[..bytes.len() - 100],
    )
    .unwrap();
    fs::write(
        bdir.join("backup-2026-03-01-12-02-00.db"),
        b"not a database",
    )
    .unwrap();
    // Foreign and temporary files are ignored.
    fs::write(bdir.join("notes.txt"), b"x").unwrap();
    fs::write(bdir.join(".backup-tmp-999999-1.db"), b"partial").unwrap();
    fs::create_dir(bdir.join("backup-2026-03-01-13-00-00.db.d")).unwrap();

    let list = backup::list(&bdir).unwrap();
    let names: Vec<&str> = list.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(
        names,
        vec![
            "backup-2026-03-01-12-02-00.db",
            "backup-2026-03-01-12-01-00.db",
            "backup-2026-03-01-12-00-00.db",
            "backup-2026-03-01-11-59.db"
        ]
    );
    assert!(
        matches!(&list[0].health, Health::Corrupt { reason } if reason.contains("not a SQLite database"))
    );
    assert!(matches!(&list[1].health, Health::Corrupt { reason } if reason.contains("truncated")));
    assert_eq!(list[2].health, Health::Verified);
    assert_eq!(list[3].health, Health::Unverified);
    assert_eq!(
        backup::latest_usable(&bdir).unwrap().unwrap().name,
        "backup-2026-03-01-12-00-00.db"
    );
}

#[test]
fn prune_removes_what_the_policy_drops_and_keeps_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    make_db(&db, 5);
    let bdir = dir.path().join("backups");
    let c = clock();
    for _ in 0..5 {
        backup::create(&db, &bdir, Method::OnlineBackup, &c).unwrap();
        c.advance(Duration::minutes(30));
    }
    // Backups at 12:00, 12:30, 13:00, 13:30, 14:00. keep-last 1 + hourly 2: 14:00 and 13:30.
    let policy = Policy {
        keep_last: Some(1),
        keep_hourly: Some(2),
        ..Policy::default()
    };
    let dry = retention::prune(&bdir, &policy, true).unwrap();
    assert_eq!(dry.iter().filter(|d| d.keep).count(), 2);
    assert_eq!(
        backup::list(&bdir).unwrap().len(),
        5,
        "dry run deletes nothing"
    );
    retention::prune(&bdir, &policy, false).unwrap();
    let left: Vec<String> = backup::list(&bdir)
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(
        left,
        vec![
            "backup-2026-03-01-14-00-00.db",
            "backup-2026-03-01-13-30-00.db"
        ]
    );
    let files = fs::read_dir(&bdir)
        .unwrap()
        .filter(|e| {
            !e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with('.')
        })
        .count();
    assert_eq!(files, 4, "manifests of pruned backups are gone too");
    assert_eq!(
        retention::prune(&bdir, &Policy::default(), true)
            .unwrap_err()
            .kind(),
        ErrorKind::InvalidArgument
    );
}

#[test]
fn restore_point_selection() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    make_db(&db, 1);
    let bdir = dir.path().join("backups");
    let c = clock();
    for _ in 0..3 {
        backup::create(&db, &bdir, Method::OnlineBackup, &c).unwrap();
        c.advance(Duration::minutes(1));
    }
    let at = |h, m, s| Utc.with_ymd_and_hms(2026, 3, 1, h, m, s).unwrap();
    assert_eq!(
        restore::select(&bdir, &RestorePoint::Latest).unwrap().name,
        "backup-2026-03-01-12-02-00.db"
    );
    assert_eq!(
        restore::select(&bdir, &RestorePoint::Before(at(12, 1, 30)))
            .unwrap()
            .name,
        "backup-2026-03-01-12-01-00.db"
    );
    assert_eq!(
        restore::select(&bdir, &RestorePoint::Before(at(12, 1, 0)))
            .unwrap()
            .name,
        "backup-2026-03-01-12-01-00.db"
    );
    assert_eq!(
        restore::select(&bdir, &RestorePoint::Before(at(11, 0, 0)))
            .unwrap_err()
            .kind(),
        ErrorKind::NotFound
    );
    assert_eq!(
        restore::select(
            &bdir,
            &RestorePoint::Name("backup-2026-03-01-12-00-00.db".into())
        )
        .unwrap()
        .name,
        "backup-2026-03-01-12-00-00.db"
    );
    for bad in [
        "../backup-2026-03-01-12-00-00.db",
        "backup-2026-03-01-12-00-00.db/../../etc/passwd",
        "/etc/passwd",
    ] {
        assert_eq!(
            restore::select(&bdir, &RestorePoint::Name(bad.into()))
                .unwrap_err()
                .kind(),
            ErrorKind::InvalidArgument,
            "{bad}"
        );
    }
    assert_eq!(
        restore::select(
            &bdir,
            &RestorePoint::Name("backup-2020-01-01-00-00-00.db".into())
        )
        .unwrap_err()
        .kind(),
        ErrorKind::NotFound
    );
}

#[test]
fn restore_preview_then_restore_replaces_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    make_db(&db, 10);
    let bdir = dir.path().join("backups");
    let c = clock();
    backup::create(&db, &bdir, Method::OnlineBackup, &c).unwrap();
    make_db(&db, 5); // 15 rows now
    let p = restore::preview(&db, &bdir, &RestorePoint::Latest).unwrap();
    assert_eq!(p.tables.len(), 1);
    assert_eq!(
        (p.tables[0].current, p.tables[0].backup),
        (Some(15), Some(10))
    );
    assert_eq!(ids(&db).len(), 15, "preview changes nothing");

    let r = restore::restore(&db, &bdir, &RestorePoint::Latest, Options::default(), &c).unwrap();
    assert!(r.replaced);
    assert_eq!(r.tables["events"], 10);
    assert_eq!(ids(&db), (1..=10).collect::<Vec<_>>());
    assert_eq!(integrity(&db), "ok");
    let safety = r.safety_copy.unwrap();
    assert_eq!(
        ids(&safety).len(),
        15,
        "the safety copy holds the previous database"
    );
}

/// Two restores within the same second (a retried Job, a wrong backup put right at once):
/// each keeps the database it replaced. The second used to write its safety copy over the
/// first's (the same per-second name: the hard link failed with EEXIST and the fallback
/// copied over it), losing the only copy of what the first restore replaced — every write
/// since the last backup.
#[test]
fn restores_in_the_same_second_each_keep_what_they_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    make_db(&db, 10);
    let bdir = dir.path().join("backups");
    let c = clock();
    backup::create(&db, &bdir, Method::OnlineBackup, &c).unwrap();
    make_db(&db, 7); // 17 rows: 7 written since the backup, here only
    let first =
        restore::restore(&db, &bdir, &RestorePoint::Latest, Options::default(), &c).unwrap();
    make_db(&db, 1); // 11 rows
    let second =
        restore::restore(&db, &bdir, &RestorePoint::Latest, Options::default(), &c).unwrap();
    let (a, b) = (first.safety_copy.unwrap(), second.safety_copy.unwrap());
    assert_ne!(a, b);
    assert_eq!(
        ids(&a).len(),
        17,
        "the first restore's safety copy was overwritten"
    );
    assert_eq!(ids(&b).len(), 11);
    // And a third, with WAL files to move aside under the same stamp.
    make_db_in(&db, 2, "wal");
    let third =
        restore::restore(&db, &bdir, &RestorePoint::Latest, Options::default(), &c).unwrap();
    let kept = third.safety_copy.unwrap();
    assert!(kept != a && kept != b);
    assert_eq!(ids(&kept).len(), 12);
    assert_eq!((ids(&a).len(), ids(&b).len()), (17, 11));
}

/// The database's path replaced (a rename, a symlink switched) after pra opened it and before
/// it copies the file: the file copy read the new file while `quick_check` and the counts had
/// read the old one, and the backup was listed verified though torn or malformed (found by
/// the red team). Through the online backup API, a connection whose first read came after the
/// replacement paired the old file with the new one's WAL. Either way the backup must fail and
/// keep nothing; the next backup takes the new file.
#[test]
fn a_database_replaced_while_it_is_backed_up_is_never_listed_verified() {
    for method in [Method::Auto, Method::OnlineBackup] {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("app.db");
        make_db_in(&db, 200, "DELETE");
        // Another database of the same size: only its rows differ.
        let other = dir.path().join("other.db");
        std::fs::copy(&db, &other).unwrap();
        Connection::open(&other)
            .unwrap()
            .execute_batch(
                "UPDATE events SET body = hex(randomblob(32)); DELETE FROM events WHERE id > 150;",
            )
            .unwrap();
        assert_eq!(
            std::fs::metadata(&db).unwrap().len(),
            std::fs::metadata(&other).unwrap().len()
        );
        let bdir = dir.path().join("backups");
        // Another connection holds the database: pra's connection opens it and waits for it.
        let holder = Connection::open(&db).unwrap();
        holder.execute_batch("BEGIN EXCLUSIVE").unwrap();
        let (db2, bdir2) = (db.clone(), bdir.clone());
        let backup = std::thread::spawn(move || backup::create(&db2, &bdir2, method, &clock()));
        std::thread::sleep(std::time::Duration::from_millis(400));
        std::fs::rename(&other, &db).unwrap();
        holder.execute_batch("COMMIT").unwrap();
        drop(holder);
        let taken = backup.join().unwrap();
        let e = taken.expect_err(&format!(
            "{method:?}: a backup of a replaced database was kept"
        ));
        assert!(e.to_string().contains("replaced"), "{e}");
        let listed = backup::list(&bdir).unwrap_or_default();
        assert!(listed.is_empty(), "{listed:?}");
        // The next backup takes the database now at the path.
        let entry = backup::create(&db, &bdir, method, &clock()).unwrap();
        assert_eq!(ids(&entry.path).len(), 150);
    }
}

#[test]
fn restore_is_refused_while_the_app_holds_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    make_db(&db, 3);
    let bdir = dir.path().join("backups");
    backup::create(&db, &bdir, Method::OnlineBackup, &clock()).unwrap();
    let before = fs::read(&db).unwrap();
    {
        // An idle WAL connection, as the Flask app keeps.
        let app = Connection::open(&db).unwrap();
        app.query_row("SELECT count(*) FROM events", [], |r| r.get::<_, i64>(0))
            .unwrap();
        let e = restore::restore(
            &db,
            &bdir,
            &RestorePoint::Latest,
            Options::default(),
            &clock(),
        )
        .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Busy);
        assert!(e.to_string().contains("Stop the application"), "{e}");
    }
    assert_eq!(fs::read(&db).unwrap(), before, "nothing was touched");
    // A rollback-journal database in the middle of a transaction.
    let db2 = dir.path().join("rollback.db");
    let app = Connection::open(&db2).unwrap();
    app.execute_batch("CREATE TABLE events (id INTEGER PRIMARY KEY, body TEXT); BEGIN IMMEDIATE; INSERT INTO events (body) VALUES ('x');").unwrap();
    let e = restore::restore(
        &db2,
        &bdir,
        &RestorePoint::Latest,
        Options::default(),
        &clock(),
    )
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Busy, "{e}");
    app.execute_batch("COMMIT").unwrap();
    drop(app);
    restore::restore(
        &db2,
        &bdir,
        &RestorePoint::Latest,
        Options::default(),
        &clock(),
    )
    .unwrap();
}

#[test]
fn restore_after_the_database_was_lost() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    make_db(&db, 7);
    let bdir = dir.path().join("backups");
    backup::create(&db, &bdir, Method::OnlineBackup, &clock()).unwrap();
    for f in ["app.db", "app.db-wal", "app.db-shm"] {
        let _ = fs::remove_file(dir.path().join(f));
    }
    let r = restore_latest(&db, &bdir).unwrap();
    assert!(!r.replaced);
    assert_eq!(r.safety_copy, None);
    assert_eq!(ids(&db).len(), 7);
}

#[test]
fn restore_never_applies_the_old_wal_to_the_new_database() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.db");
    make_db(&src, 4);
    let bdir = dir.path().join("backups");
    backup::create(&src, &bdir, Method::OnlineBackup, &clock()).unwrap();
    // A database whose last writes are only in its -wal (the app died without a checkpoint):
    // copy the files while a connection with autocheckpoint off holds them.
    let app = Connection::open(&src).unwrap();
    app.execute_batch("PRAGMA wal_autocheckpoint = 0;").unwrap();
    for _ in 0..50 {
        app.execute("INSERT INTO events (body) VALUES ('only in the wal')", [])
            .unwrap();
    }
    let db = dir.path().join("app.db");
    fs::copy(&src, &db).unwrap();
    fs::copy(dir.path().join("src.db-wal"), dir.path().join("app.db-wal")).unwrap();
    drop(app);
    assert!(fs::metadata(dir.path().join("app.db-wal")).unwrap().len() > 0);

    let r = restore_latest(&db, &bdir).unwrap();
    assert!(!dir.path().join("app.db-wal").exists());
    assert_eq!(
        ids(&db),
        vec![1, 2, 3, 4],
        "the restored database, without the old WAL's rows"
    );
    assert_eq!(integrity(&db), "ok");
    // The old rows, WAL included, are in the safety copy.
    assert_eq!(ids(&r.safety_copy.unwrap()).len(), 54);
}

#[test]
fn restore_refuses_a_backup_that_fails_its_checksum_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    make_db(&db, 3);
    let bdir = dir.path().join("backups");
    let b = backup::create(&db, &bdir, Method::OnlineBackup, &clock()).unwrap();
    let mut bytes = fs::read(&b.path).unwrap();
    let n = bytes.len();
    bytes[n - 10] ^= 0xff; // same size, one flipped byte
    fs::write(&b.path, &bytes).unwrap();
    let before = ids(&db);
    // The latest usable backup: there is none left.
    let e = restore_latest(&db, &bdir).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    // Named: refused, saying why.
    let e = restore::restore(
        &db,
        &bdir,
        &RestorePoint::Name(b.name.clone()),
        Options::default(),
        &clock(),
    )
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt);
    assert!(e.to_string().contains("checksum"), "{e}");
    assert_eq!(ids(&db), before);
    let leftovers: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().contains("restore"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// A backup taken while the clock was ahead (stepped back since) stays the newest by its name:
/// `restore --latest` would take it over newer ones. Status must not call that ok.
#[test]
fn a_backup_dated_in_the_future_is_not_ok() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let bdir = dir.path().join("backups");
    make_db(&db, 3);
    let c = clock();
    c.advance(Duration::hours(1));
    backup::create(&db, &bdir, Method::OnlineBackup, &c).unwrap();
    c.advance(Duration::hours(-1));
    let s = status::status(&db, &bdir, &status::Options::default(), None, &c).unwrap();
    assert_eq!(s.backup_age_seconds, Some(-3600));
    assert_eq!(s.backup_state, BackupState::Warn, "{:?}", s.problems);
    assert!(
        s.problems
            .iter()
            .any(|p| p.contains("future") && p.contains("--latest")),
        "{:?}",
        s.problems
    );
}

/// After the clock is set back, a new backup still ranks after every backup already there:
/// `restore --latest` and `prune` take the newest one taken, not one named by a clock that
/// ran ahead (found by the red team: `restore --latest` installed the stale backup, 1 row of
/// 4, and `prune --keep-last 2` removed the newer ones).
#[test]
fn backups_taken_after_the_clock_was_set_back_rank_after_the_ones_before() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let bdir = dir.path().join("backups");
    make_db(&db, 1);
    let c = clock();
    c.advance(Duration::hours(1));
    let ahead = backup::create(&db, &bdir, Method::OnlineBackup, &c).unwrap();
    c.advance(Duration::hours(-1));
    make_db(&db, 3);
    let after = backup::create(&db, &bdir, Method::OnlineBackup, &c).unwrap();
    assert!(
        after.id > ahead.id,
        "{} ranks before {}",
        after.name,
        ahead.name
    );
    let listed = backup::list(&bdir).unwrap();
    assert_eq!(listed[0].name, after.name);
    make_db(&db, 5);
    restore::restore(&db, &bdir, &RestorePoint::Latest, Options::default(), &c).unwrap();
    assert_eq!(
        ids(&db).len(),
        4,
        "restore --latest took the backup named by the clock ahead"
    );
    // A file named by hand in the far future does not drag later names there.
    std::fs::copy(&after.path, bdir.join("backup-2099-01-01-00-00-00.db")).unwrap();
    let next = backup::create(&db, &bdir, Method::OnlineBackup, &c).unwrap();
    assert!(next.name.starts_with("backup-2026-"), "{}", next.name);
}

#[test]
fn status_with_and_without_backups() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let bdir = dir.path().join("backups");
    let c = clock();
    let opts = status::Options::default();

    // No database, no backups: nulls and problems, not a crash.
    let s = status::status(&db, &bdir, &opts, None, &c).unwrap();
    assert_eq!(
        (s.count, s.last_backup_file.clone(), s.backup_age_seconds),
        (None, None, None)
    );
    assert_eq!(s.backup_state, BackupState::None);
    assert!(!s.database_ok);
    assert_eq!(s.problems.len(), 2, "{:?}", s.problems);
    let json = serde_json::to_value(&s).unwrap();
    assert!(
        json["last_backup_file"].is_null()
            && json["backup_age_seconds"].is_null()
            && json["count"].is_null()
    );

    make_db(&db, 12);
    backup::create(&db, &bdir, Method::OnlineBackup, &c).unwrap();
    c.advance(Duration::seconds(42));
    let s = status::status(&db, &bdir, &opts, None, &c).unwrap();
    assert_eq!(s.count, Some(12));
    assert_eq!(
        s.last_backup_file.as_deref(),
        Some("backup-2026-03-01-12-00-00.db")
    );
    assert_eq!(s.backup_age_seconds, Some(42));
    assert_eq!(s.backup_state, BackupState::Ok);
    assert!(s.problems.is_empty(), "{:?}", s.problems);
    // The seed's three keys come first.
    let text = serde_json::to_string(&s).unwrap();
    assert!(text.starts_with("{\"count\":12,\"last_backup_file\":\"backup-2026-03-01-12-00-00.db\",\"backup_age_seconds\":42,"), "{text}");

    c.advance(Duration::seconds(100)); // 142 s: warn from 120 s
    assert_eq!(
        status::status(&db, &bdir, &opts, None, &c)
            .unwrap()
            .backup_state,
        BackupState::Warn
    );
    c.advance(Duration::seconds(200)); // 342 s: critical from 300 s
    assert_eq!(
        status::status(&db, &bdir, &opts, None, &c)
            .unwrap()
            .backup_state,
        BackupState::Critical
    );

    let bad = status::Options {
        table: "events; DROP TABLE events".into(),
        ..Default::default()
    };
    assert_eq!(
        status::status(&db, &bdir, &bad, None, &c)
            .unwrap_err()
            .kind(),
        ErrorKind::InvalidArgument
    );
    let missing = status::Options {
        table: "nope".into(),
        ..Default::default()
    };
    let s = status::status(&db, &bdir, &missing, None, &c).unwrap();
    assert_eq!(s.count, None);
    assert!(s.problems[0].contains("nope"), "{:?}", s.problems);
}

/// A Python process (the system's SQLite, not pra's) running `script` with `args`; it talks on
/// stdout, one line at a time.
struct Py {
    child: std::process::Child,
    out: std::io::BufReader<std::process::ChildStdout>,
}

impl Py {
    fn start(script: &str, args: &[&Path]) -> Py {
        let mut child = std::process::Command::new("python3")
            .arg("-c")
            .arg(script)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3");
        let out = std::io::BufReader::new(child.stdout.take().unwrap());
        Py { child, out }
    }
    fn line(&mut self) -> String {
        use std::io::BufRead;
        let mut s = String::new();
        self.out.read_line(&mut s).unwrap();
        s.trim().to_string()
    }
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Py {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn bodies(path: &Path, body: &str) -> i64 {
    Connection::open(path)
        .unwrap()
        .query_row("SELECT count(*) FROM events WHERE body = ?1", [body], |r| {
            r.get(0)
        })
        .unwrap()
}

#[test]
fn a_writer_that_connects_mid_restore_never_loses_an_acknowledged_commit() {
    // A separate process waits for the restore's temporary file, then connects and commits.
    const WRITER: &str = r#"
import os, sqlite3, sys, time
db = sys.argv[1]; d = os.path.dirname(db)
print("ready", flush=True)
deadline = time.time() + 60
while not any(".pra-restore-tmp-" in n for n in os.listdir(d)):
    if time.time() > deadline:
        print("no restore seen", flush=True); sys.exit(1)
try:
    c = sqlite3.connect(db, timeout=20, isolation_level=None)
    c.execute("BEGIN IMMEDIATE")
    c.execute("INSERT INTO events (body) VALUES ('mid-restore')")
    c.execute("COMMIT")
    print("committed", flush=True)
except sqlite3.Error as e:
    print("refused", e, flush=True)
"#;
    for journal_mode in ["WAL", "DELETE"] {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("app.db");
        // Big enough that the copy takes far longer than the writer needs to connect.
        make_db_in(&db, 300_000, journal_mode);
        let bdir = dir.path().join("backups");
        backup::create(&db, &bdir, Method::OnlineBackup, &clock()).unwrap();
        let mut writer = Py::start(WRITER, &[&db]);
        assert_eq!(writer.line(), "ready");
        let restored = restore::restore(
            &db,
            &bdir,
            &RestorePoint::Latest,
            Options::default(),
            &clock(),
        );
        let said = writer.line();
        eprintln!("{journal_mode}: restore {restored:?}, writer {said}");
        assert!(said == "committed" || said.starts_with("refused"), "{said}");
        if said == "committed" {
            assert_eq!(
                bodies(&db, "mid-restore"),
                1,
                "{journal_mode}: an acknowledged commit is not in the database"
            );
        }
        match restored {
            Ok(_) => assert!(said.starts_with("refused"), "{journal_mode}: {said}"),
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::Busy, "{e}");
                assert!(e.to_string().contains(&writer.pid().to_string()), "{e}");
            }
        }
        assert_eq!(integrity(&db), "ok");
    }
}

#[test]
fn an_idle_rollback_mode_connection_is_seen_and_named() {
    // Python's default: rollback-journal mode, no transaction between statements, so no lock.
    const IDLE: &str = r#"
import sqlite3, sys
c = sqlite3.connect(sys.argv[1])
c.execute("SELECT count(*) FROM events").fetchall()
print("ready", flush=True)
sys.stdin.read()
"#;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    make_db_in(&db, 10, "DELETE");
    let bdir = dir.path().join("backups");
    backup::create(&db, &bdir, Method::OnlineBackup, &clock()).unwrap();
    make_db_in(&db, 5, "DELETE");
    let mut app = Py::start(IDLE, &[&db]);
    assert_eq!(app.line(), "ready");
    let e = restore_latest(&db, &bdir).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Busy, "{e}");
    assert!(e.to_string().contains(&app.pid().to_string()), "{e}");
    assert!(e.to_string().contains("Stop the application"), "{e}");
    assert_eq!(ids(&db).len(), 15, "nothing was touched");
    drop(app);
    restore_latest(&db, &bdir).unwrap();
    assert_eq!(ids(&db).len(), 10);
}

#[test]
fn a_hot_journal_is_rolled_back_into_the_safety_copy() {
    // A writer killed mid-transaction, its cache spilled into the database file: the file alone
    // is torn, its -journal holds what it overwrote.
    const CRASH: &str = r#"
import os, sqlite3, sys
c = sqlite3.connect(sys.argv[1], isolation_level=None)
c.execute("PRAGMA cache_size = 2")
c.execute("BEGIN")
c.execute("UPDATE events SET body = 'torn'")
os.kill(os.getpid(), 9)
"#;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    make_db_in(&db, 5000, "DELETE");
    let bdir = dir.path().join("backups");
    backup::create(&db, &bdir, Method::OnlineBackup, &clock()).unwrap();
    let before = ids(&db);
    let mut crash = Py::start(CRASH, &[&db]);
    assert!(!crash.child.wait().unwrap().success());
    let journal = dir.path().join("app.db-journal");
    assert!(fs::metadata(&journal).unwrap().len() > 0, "a hot journal");
    let raw = dir.path().join("raw.db");
    fs::copy(&db, &raw).unwrap();
    assert!(bodies(&raw, "torn") > 0, "the file alone is torn");

    let r = restore_latest(&db, &bdir).unwrap();
    let safety = r.safety_copy.unwrap();
    assert_eq!(integrity(&safety), "ok");
    assert_eq!(
        bodies(&safety, "torn"),
        0,
        "the safety copy was rolled back"
    );
    assert_eq!(ids(&safety), before);
    assert_eq!(ids(&db), before);
    assert!(!journal.exists());
}

#[test]
fn restore_through_a_symlink_replaces_its_target() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("data")).unwrap();
    let real = dir.path().join("data/real.db");
    make_db(&real, 4);
    let db = dir.path().join("app.db");
    std::os::unix::fs::symlink("data/real.db", &db).unwrap();
    let bdir = dir.path().join("backups");
    backup::create(&db, &bdir, Method::OnlineBackup, &clock()).unwrap();
    make_db(&db, 6);
    let r = restore_latest(&db, &bdir).unwrap();
    let meta = fs::symlink_metadata(&db).unwrap();
    assert!(meta.file_type().is_symlink(), "the symlink stays a symlink");
    assert_eq!(fs::read_link(&db).unwrap(), Path::new("data/real.db"));
    assert_eq!(ids(&real), vec![1, 2, 3, 4], "its target was restored");
    assert_eq!(ids(&r.safety_copy.unwrap()).len(), 10);
}

#[test]
fn restore_keeps_the_owner_group_and_mode_of_the_database() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: changing a file's owner needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    make_db(&db, 3);
    let bdir = dir.path().join("backups");
    backup::create(&db, &bdir, Method::OnlineBackup, &clock()).unwrap();
    std::os::unix::fs::chown(&db, Some(65534), Some(65534)).unwrap();
    fs::set_permissions(&db, fs::Permissions::from_mode(0o640)).unwrap();
    restore_latest(&db, &bdir).unwrap();
    let m = fs::metadata(&db).unwrap();
    assert_eq!((m.uid(), m.gid()), (65534, 65534));
    assert_eq!(m.mode() & 0o7777, 0o640);
}

#[test]
fn a_rotted_newest_backup_is_not_trusted_and_prune_keeps_the_good_ones() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    make_db(&db, 5);
    let bdir = dir.path().join("backups");
    let c = clock();
    let good = backup::create(&db, &bdir, Method::OnlineBackup, &c).unwrap();
    c.advance(Duration::seconds(30));
    make_db(&db, 5);
    let newest = backup::create(&db, &bdir, Method::OnlineBackup, &c).unwrap();
    // Both verified once (the verification is cached) ...
    assert!(
        backup::list(&bdir)
            .unwrap()
            .iter()
            .all(|e| e.health == Health::Verified)
    );
    // ... then the newest rots: same size, a byte changed in a row.
    let mut bytes = fs::read(&newest.path).unwrap();
    let n = bytes.len();
    bytes[n - 10] ^= 0xff;
    fs::write(&newest.path, &bytes).unwrap();
    assert_eq!(fs::metadata(&newest.path).unwrap().len(), newest.size);

    let list = backup::list(&bdir).unwrap();
    assert!(
        matches!(&list[0].health, Health::Corrupt { reason } if reason.contains("checksum")),
        "{:?}",
        list[0].health
    );
    let s = status::status(&db, &bdir, &status::Options::default(), None, &c).unwrap();
    assert_eq!(s.last_backup_file.as_deref(), Some(good.name.as_str()));
    assert!(
        s.problems.iter().any(|p| p.contains(&newest.name)),
        "{:?}",
        s.problems
    );
    let policy = Policy {
        keep_last: Some(1),
        ..Policy::default()
    };
    retention::prune(&bdir, &policy, false).unwrap();
    assert!(
        good.path.exists(),
        "the newest verified backup is never pruned"
    );
    assert!(newest.path.exists(), "a corrupt backup is left for a human");
    assert_eq!(
        restore::select(&bdir, &RestorePoint::Latest).unwrap().name,
        good.name
    );
}

/// Red team: restoring into a missing database while the application creates it (and commits)
/// during the copy must never replace that new database: the restore is refused instead.
#[test]
fn a_database_created_during_a_restore_is_never_replaced() {
    const CREATOR: &str = r#"
import os, sqlite3, sys, time
db = sys.argv[1]; d = os.path.dirname(db)
print("ready", flush=True)
deadline = time.time() + 60
while not any(".pra-restore-tmp-" in n for n in os.listdir(d)):
    if time.time() > deadline:
        print("no restore seen", flush=True); sys.exit(1)
c = sqlite3.connect(db)
c.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, body TEXT)")
c.execute("INSERT INTO events (body) VALUES ('created-during-restore')")
c.commit(); c.close()
print("committed", flush=True)
"#;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    make_db_in(&db, 300_000, "DELETE");
    let bdir = dir.path().join("backups");
    backup::create(&db, &bdir, Method::OnlineBackup, &clock()).unwrap();
    std::fs::remove_file(&db).unwrap();
    let mut creator = Py::start(CREATOR, &[&db]);
    assert_eq!(creator.line(), "ready");
    let restored = restore_latest(&db, &bdir);
    let said = creator.line();
    assert_eq!(said, "committed");
    match restored {
        // The copy finished before the database appeared: nothing was committed over.
        Ok(r) => panic!("the restore replaced a database created during it: {r:?}"),
        Err(e) => assert_eq!(e.kind(), ErrorKind::Busy, "{e}"),
    }
    assert_eq!(bodies(&db, "created-during-restore"), 1);
}

/// Red team: bytes changed through a shared memory map whose page was already dirty change no
/// size, mtime or ctime — the verification cache cannot see it. Prune (a deletion) hashes what
/// it keeps anyway: the rotted newest backup never justifies deleting the good one.
#[test]
fn prune_rehashes_what_the_cache_cannot_see() {
    use std::os::fd::AsRawFd;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    make_db(&db, 5);
    let bdir = dir.path().join("backups");
    let c = clock();
    let good = backup::create(&db, &bdir, Method::OnlineBackup, &c).unwrap();
    c.advance(Duration::seconds(30));
    make_db(&db, 5);
    let newest = backup::create(&db, &bdir, Method::OnlineBackup, &c).unwrap();
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&newest.path)
        .unwrap();
    let len = f.metadata().unwrap().len() as usize;
    // SAFETY: a shared mapping of a file this test owns, unmapped below.
    let map = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        )
    } as *mut u8;
    assert!(!map.is_null() && map as isize != -1);
    // Dirty the page first (this write updates the times), then let the cache see the file.
    // SAFETY: inside the mapping.
    unsafe { *map.add(len - 100) = *map.add(len - 100) };
    assert!(
        backup::list(&bdir)
            .unwrap()
            .iter()
            .all(|e| e.health == Health::Verified)
    );
    let stamp = |p: &std::path::Path| {
        use std::os::unix::fs::MetadataExt;
        let m = fs::metadata(p).unwrap();
        (m.len(), m.mtime_nsec(), m.ctime_nsec(), m.ino())
    };
    let before = stamp(&newest.path);
    // SAFETY: inside the mapping, in the page already dirtied: no fault, no time update.
    unsafe { *map.add(len - 10) ^= 0xff };
    // SAFETY: the mapping made above.
    unsafe { libc::munmap(map.cast(), len) };
    assert_eq!(before, stamp(&newest.path), "the edit changed no stamp");
    let policy = Policy {
        keep_last: Some(1),
        ..Policy::default()
    };
    retention::prune(&bdir, &policy, false).unwrap();
    assert!(
        good.path.exists(),
        "prune deleted the good backup on a cached verification"
    );
    let list = backup::list(&bdir).unwrap();
    assert!(
        matches!(&list[0].health, Health::Corrupt { .. }),
        "{:?}",
        list[0].health
    );
}

/// Red team: a backup name that is a symlink (to the live database, say) is never opened, so
/// verifying backups inside the application's process cannot close a descriptor of its
/// database (which would drop its locks); it is not a verified backup either.
#[test]
fn a_symlinked_backup_is_never_opened_nor_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    make_db(&db, 5);
    let bdir = dir.path().join("backups");
    let b = backup::create(&db, &bdir, Method::OnlineBackup, &clock()).unwrap();
    // The backup's bytes are those of the live database now: a symlink to it would "verify".
    fs::copy(&b.path, &db).unwrap();
    fs::remove_file(&b.path).unwrap();
    std::os::unix::fs::symlink(&db, &b.path).unwrap();
    let list = backup::list(&bdir).unwrap();
    assert!(
        list.iter().all(|e| e.health != Health::Verified),
        "a symlink was trusted: {list:?}"
    );
}

/// The backup directory's index: `pra backup` keeps the newest backups' names in it, and status
/// finds the newest backup there without listing the directory — until the directory changes
/// behind pra's back (stale), or the index is missing, unreadable or names a file that is gone:
/// then the full scan, which writes the index back.
#[test]
fn status_finds_the_newest_backup_through_the_index_and_lists_the_directory_when_it_cannot() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    make_db(&db, 10);
    let bdir = dir.path().join("backups");
    let c = clock();
    let mut taken = Vec::new();
    for _ in 0..3 {
        taken.push(backup::create(&db, &bdir, Method::OnlineBackup, &c).unwrap());
        c.advance(Duration::seconds(1));
    }
    let newest = |bdir: &Path| {
        let (n, found, _) = backup::newest_verified(bdir).unwrap();
        (n, found.unwrap().name)
    };
    assert_eq!(newest(&bdir), (3, taken[2].name.clone()));
    // A verified backup put in by hand, one hour newer, with its manifest.
    let slip_in = |hours: i64| {
        let name = backup::BackupName {
            time: pra_core::Clock::now(&c) + Duration::hours(hours),
            seq: 0,
        }
        .file_name();
        fs::copy(&taken[2].path, bdir.join(&name)).unwrap();
        let mut m: serde_json::Value = serde_json::from_slice(
            &fs::read(bdir.join(format!("{}.json", taken[2].name))).unwrap(),
        )
        .unwrap();
        m["file"] = name.clone().into();
        fs::write(bdir.join(format!("{name}.json")), m.to_string()).unwrap();
        name
    };
    let mtime = |p: &Path| fs::metadata(p).unwrap().modified().unwrap();
    let set_mtime = |p: &Path, t| {
        fs::File::open(p).unwrap().set_modified(t).unwrap();
    };
    // With the directory's mtime put back, the index is fresh: the slipped-in file is not seen,
    // which shows the directory was not listed.
    let stamp = mtime(&bdir);
    let hidden = slip_in(1);
    set_mtime(&bdir, stamp);
    assert_eq!(newest(&bdir), (3, taken[2].name.clone()));
    // Stale: the directory changed since the index was written (its mtime moved).
    set_mtime(&bdir, stamp + std::time::Duration::from_secs(5));
    assert_eq!(newest(&bdir), (4, hidden.clone()));
    // ... and the scan wrote the index back: fresh again, another hidden file is not seen.
    let stamp = mtime(&bdir);
    let hidden2 = slip_in(2);
    set_mtime(&bdir, stamp);
    assert_eq!(newest(&bdir), (4, hidden.clone()));
    // Missing: the scan.
    let index = bdir.join(backup::index::STATE_DIR).join("index.json");
    fs::remove_file(&index).unwrap();
    assert_eq!(newest(&bdir), (5, hidden2.clone()));
    assert!(index.exists(), "the scan writes the index back");
    // Unreadable, though stamped as fresh: the scan.
    let hidden3 = slip_in(3);
    let stamp = mtime(&bdir);
    fs::write(&index, b"{ not json").unwrap();
    set_mtime(&index, stamp);
    assert_eq!(newest(&bdir), (6, hidden3.clone()));
    // Naming a file that is gone, though fresh: the scan.
    let stamp = mtime(&bdir);
    fs::remove_file(bdir.join(&hidden3)).unwrap();
    fs::remove_file(bdir.join(format!("{hidden3}.json"))).unwrap();
    set_mtime(&bdir, stamp);
    assert_eq!(newest(&bdir), (5, hidden2.clone()));
    // A backup taken on a stale index lists the directory and counts right; on a fresh one, it
    // adds itself.
    set_mtime(&bdir, stamp + std::time::Duration::from_secs(9));
    c.advance(Duration::hours(5));
    let b = backup::create(&db, &bdir, Method::OnlineBackup, &c).unwrap();
    assert_eq!(newest(&bdir), (6, b.name.clone()));
    c.advance(Duration::seconds(1));
    let b = backup::create(&db, &bdir, Method::OnlineBackup, &c).unwrap();
    let stamp = mtime(&bdir);
    slip_in(9);
    set_mtime(&bdir, stamp);
    assert_eq!(newest(&bdir), (7, b.name));
}

/// Backups taken before BLAKE3 (manifest format 1, SHA-256) are still verified, listed and
/// restored, and a changed byte in one is still caught.
#[test]
fn format_1_manifests_with_sha256_are_still_verified_and_restored() {
    use sha2::Digest;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    make_db(&db, 7);
    let bdir = dir.path().join("backups");
    let b = backup::create(&db, &bdir, Method::Auto, &clock()).unwrap();
    let manifest_path = bdir.join(format!("{}.json", b.name));
    let mut m: serde_json::Value =
        serde_json::from_slice(&fs::read(&manifest_path).unwrap()).unwrap();
    let obj = m.as_object_mut().unwrap();
    obj.remove("blake3");
    obj.insert("format".into(), 1.into());
    obj.insert(
        "sha256".into(),
        hex::encode(sha2::Sha256::digest(fs::read(&b.path).unwrap())).into(),
    );
    fs::write(&manifest_path, serde_json::to_vec(&m).unwrap()).unwrap();
    let listed = backup::list(&bdir).unwrap();
    assert_eq!(listed[0].health, Health::Verified, "{:?}", listed[0]);
    make_db(&db, 3);
    restore_latest(&db, &bdir).unwrap();
    assert_eq!(ids(&db).len(), 7);
    // One byte changed, same size: the SHA-256 says so.
    let mut bytes = fs::read(&b.path).unwrap();
    let n = bytes.len();
    bytes[n - 10] ^= 0xff;
    fs::write(&b.path, &bytes).unwrap();
    let listed = backup::list_rehashed(&bdir).unwrap();
    match &listed[0].health {
        Health::Corrupt { reason } => assert!(reason.contains("sha256 checksum"), "{reason}"),
        other => panic!("{other:?}"),
    }
}

/// Backups newer than the newest verified one that cannot be trusted are named, a few, then
/// counted: ten thousand `cp` backups without manifests make one line, not ten thousand.
#[test]
fn status_names_a_few_untrusted_backups_and_counts_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    make_db(&db, 4);
    let bdir = dir.path().join("backups");
    let c = clock();
    let good = backup::create(&db, &bdir, Method::Auto, &c).unwrap();
    for m in 1..=8 {
        let name = (good.id.time + Duration::minutes(m))
            .format("backup-%Y-%m-%d-%H-%M-%S.db")
            .to_string();
        fs::copy(&good.path, bdir.join(name)).unwrap();
    }
    let s = status::status(&db, &bdir, &status::Options::default(), None, &c).unwrap();
    assert_eq!(s.last_backup_file.as_deref(), Some(good.name.as_str()));
    let manifestless: Vec<&String> = s
        .problems
        .iter()
        .filter(|p| p.contains("has no manifest"))
        .collect();
    assert_eq!(manifestless.len(), 5, "{:?}", s.problems);
    assert!(
        s.problems
            .iter()
            .any(|p| p.starts_with("3 more backups newer than the newest verified one")),
        "{:?}",
        s.problems
    );
}

/// A database reached through a symlink is backed up by the file copy, as SQLite reads it.
#[test]
fn a_database_behind_a_symlink_is_copied() {
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("real.db");
    make_db(&real, 12);
    let link = dir.path().join("app.db");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let b = backup::create(&link, &dir.path().join("b"), Method::Auto, &clock()).unwrap();
    assert_eq!(b.manifest.as_ref().unwrap().method, Method::FileCopy);
    assert_eq!(ids(&b.path).len(), 12);
    assert_eq!(integrity(&b.path), "ok");
}
