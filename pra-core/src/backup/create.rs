//! Taking a backup: a consistent snapshot of the live database ([`Method`]), checked, fsynced,
//! linked under its final name, then its manifest.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io;
use std::path::Path;
use std::time::Instant;

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OpenFlags};
use serde::{Deserialize, Serialize};

use super::catalog::{BackupEntry, Manifest, inspect};
use super::checksum::{self, Algorithm, Checksum};
use super::copy::{as_rollback_journal, copy_hashed};
use super::join;
use super::name::{BackupName, TEMP_PREFIX};
use super::sqlite::{check_and_count, check_and_count_on, open_existing, sql_err};
use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::fsutil::{
    Sharing, create_private_dir, create_private_file, set_private, sync_dir, write_atomic,
};

/// How the snapshot is taken. Each gives a consistent copy of a live database; the manifest
/// records the one used ([`Method::FileCopy`] or [`Method::OnlineBackup`] for `Auto`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// [`Method::FileCopy`] when the snapshot lies entirely in the database file, else
    /// [`Method::OnlineBackup`]. For a process that does not itself use the database (the
    /// `pra backup` command): see [`Method::FileCopy`].
    #[default]
    Auto,
    /// SQLite's online backup API, all pages in one step inside one read transaction (a steady
    /// writer cannot make it restart, and in WAL mode writers are never blocked).
    OnlineBackup,
    /// `VACUUM INTO`: a compacted copy, also in one read transaction.
    VacuumInto,
    /// A kernel copy of the database file (`copy_file_range`, as `cp` does) inside one read
    /// transaction, taken only when that transaction's snapshot is the file alone: in
    /// rollback-journal mode (its SHARED lock keeps writers out of the file), or in WAL mode
    /// when, after the snapshot was taken, a passive checkpoint finds every WAL frame already in
    /// the file (checkpoints cannot then write past the snapshot). Otherwise the backup is
    /// refused as [`Error::Busy`] (`Auto` falls back to the online backup API).
    ///
    /// It reads the file through a descriptor of its own, and closing it drops, by POSIX rules,
    /// every `fcntl` lock this process holds on the file — harmless once the copy is done for a
    /// process whose only connections are the backup's own, but not inside the application:
    /// the C and Python bindings, which run in applications, use [`Method::OnlineBackup`].
    FileCopy,
}

/// Takes a consistent backup of the live database `db` into `dir` (created 0700 if missing) and
/// returns its catalog entry. The backup is verified (`quick_check`) before it gets its final
/// name; the source is only read.
#[tracing::instrument(level = "info", skip(clock), fields(db = %db.display(), dir = %dir.display()))]
pub fn create(db: &Path, dir: &Path, method: Method, clock: &dyn Clock) -> Result<BackupEntry> {
    // The file the connection is about to open: the file copy must copy that one.
    let opened = file_id(db);
    let src = open_existing(db, true)?;
    let opened = opened?;
    create_taken(db, dir, clock, |tmp| {
        let taken = snapshot(&src, db, opened, tmp, method);
        drop(src);
        // Whatever the method: SQLite opens a database's `-wal` by name at its first read, so
        // a connection opened on a file whose path was replaced before that read pairs the old
        // file with the new file's WAL — a torn snapshot that its own checks find consistent.
        if taken.is_ok() && file_id(db).ok() != Some(opened) {
            return Err(replaced(db));
        }
        taken
    })
}

fn replaced(db: &Path) -> Error {
    Error::Busy(format!(
        "{} was replaced while it was being backed up (a restore, a deploy?): nothing was kept; take the backup again",
        db.display()
    ))
}

/// A file's device and inode (through symlinks, as SQLite opens it).
type FileId = (u64, u64);

fn file_id(path: &Path) -> Result<FileId> {
    use std::os::unix::fs::MetadataExt;
    let m = fs::metadata(path).map_err(|e| Error::io("stat", path, e))?;
    Ok((m.dev(), m.ino()))
}

/// What a snapshot left in the temporary file.
struct Taken {
    /// The source's page count.
    pages: u64,
    /// The method used.
    method: Method,
    /// Set when the snapshot already did the rest (the file copy): the file is in
    /// rollback-journal format and fsynced, this is its checksum, and this the `quick_check`
    /// and row counts of the very snapshot it holds.
    done: Option<(Checksum, Checked)>,
}

/// `quick_check`'s answer and the row counts.
type Checked = (String, BTreeMap<String, u64>);

/// Takes a backup of `db` whose snapshot `take` writes into the temporary file it is given
/// (returning the source's page count and the method it used); then verifies it, checksums
/// it and puts it in place with its manifest, as [`create`] does. For callers inside the
/// application's process: they snapshot through the SQLite library the application uses
/// (Python's `sqlite3` backup API), so that pra's own SQLite never opens the live database
/// there (see [`crate::status::status_counted`]).
pub fn create_from(
    db: &Path,
    dir: &Path,
    clock: &dyn Clock,
    take: impl FnOnce(&Path) -> Result<(u64, Method)>,
) -> Result<BackupEntry> {
    create_taken(db, dir, clock, |tmp| {
        take(tmp).map(|(pages, method)| Taken {
            pages,
            method,
            done: None,
        })
    })
}

fn create_taken(
    db: &Path,
    dir: &Path,
    clock: &dyn Clock,
    take: impl FnOnce(&Path) -> Result<Taken>,
) -> Result<BackupEntry> {
    let started = Instant::now();
    create_private_dir(dir)?;
    // Backups of one directory are taken one at a time, so that each adds itself to the index
    // the directory had before it (see [`super::index`]).
    let held = super::index::lock(dir)?;
    let index = super::index::read_fresh(dir);
    if index.is_none() {
        // The index is stale: the directory is listed anyway; a crashed backup's temporary
        // file (which made it stale) goes now.
        crate::fsutil::remove_dead_temps(dir, TEMP_PREFIX);
    }
    let now = clock.now();
    let tmp = dir.join(format!(
        "{TEMP_PREFIX}{}-{}.db",
        std::process::id(),
        now.timestamp_micros()
    ));
    let result = (|| {
        let Taken {
            pages: source_page_count,
            method,
            done,
        } = take(&tmp)?;
        let (checksum, checked) = match done {
            Some(done) => done,
            None => finish(&tmp)?,
        };
        let (verification, tables) = checked;
        if verification != "ok" {
            return Err(Error::Corrupt {
                what: format!("backup of {}", db.display()),
                detail: format!("the snapshot failed quick_check: {verification}"),
            });
        }
        let size = fs::metadata(&tmp)
            .map_err(|e| Error::io("stat", &tmp, e))?
            .len();
        // Names order the backups (`--latest`, prune): a new one sorts after every backup
        // there, even when the clock was set back (up to a day) since the newest was named —
        // it then takes the newest's second with the next sequence number (its manifest keeps
        // the time).
        let newest = match &index {
            Some(index) => index.newest.first().and_then(|n| BackupName::parse(n)),
            None => super::scan(dir)?.first().map(|(id, _)| *id),
        };
        let mut id = BackupName {
            time: now.with_nanosecond_zero(),
            seq: 0,
        };
        // Not behind a name more than a day ahead: a file named by hand in the far future
        // must not drag every later name there (status flags it).
        if let Some(newest) = newest
            && newest >= id
            && newest.time - now <= chrono::Duration::days(1)
        {
            tracing::warn!(newest = %newest.file_name(), now = %now, "the clock is behind the newest backup (set back?): this one is named after it");
            id = BackupName {
                time: newest.time,
                seq: newest.seq + 1,
            };
        }
        // Claim a final name without ever replacing one: link(2) fails if the name exists.
        let name = loop {
            let name = id.file_name();
            match fs::hard_link(&tmp, dir.join(&name)) {
                Ok(()) => break name,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => id.seq += 1,
                Err(e) => return Err(Error::io("link backup into place", dir.join(&name), e)),
            }
        };
        let manifest = Manifest {
            format: Manifest::FORMAT,
            file: name.clone(),
            created_at: clock.now(),
            sha256: None,
            blake3: Some(checksum.hex),
            size,
            tables,
            source: db.to_path_buf(),
            source_page_count,
            duration_ms: started.elapsed().as_millis() as u64,
            method,
            verification,
            pra_version: crate::VERSION.to_string(),
        };
        let json =
            serde_json::to_vec_pretty(&manifest).map_err(|e| Error::Internal(e.to_string()))?;
        write_atomic(&dir.join(format!("{name}.json")), &json, Sharing::PRIVATE)?;
        fs::remove_file(&tmp).map_err(|e| Error::io("remove", &tmp, e))?;
        sync_dir(dir)?;
        tracing::info!(backup = %name, size, ms = manifest.duration_ms, "backup taken");
        let indexed = match index {
            Some(index) => super::index::write(dir, &index.with(id, &name), &held),
            None => super::scan(dir).and_then(|names| {
                super::index::write(dir, &super::index::Index::of(&names), &held)
            }),
        };
        if let Err(e) = indexed {
            // The backup is in place; the next reader lists the directory instead.
            tracing::warn!(error = %e, "backup index not written");
        }
        Ok(inspect(dir, id, &name))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
        let _ = fs::remove_file(crate::fsutil::with_suffix(&tmp, "-journal"));
    }
    result
}

/// The rest of a snapshot SQLite wrote (the online backup API, `VACUUM INTO`, the
/// application's own): rollback-journal mode, so that it needs no `-wal`/`-shm` beside it; then
/// its checksum and its fsync beside the integrity check (three reads of the same cached pages,
/// on as many cores).
fn finish(tmp: &Path) -> Result<(Checksum, Checked)> {
    {
        let _fork = crate::forkguard::enter();
        let dst = Connection::open(tmp).map_err(sql_err("open backup", tmp))?;
        dst.query_row("PRAGMA journal_mode = DELETE", [], |_| Ok(()))
            .map_err(sql_err("journal mode", tmp))?;
        dst.close()
            .map_err(|(_, e)| sql_err("close backup", tmp)(e))?;
    }
    let (checked, hash, synced) = std::thread::scope(|s| {
        let hash = s.spawn(|| checksum::of_file(tmp, Algorithm::Blake3));
        let sync = s.spawn(|| {
            File::open(tmp)
                .and_then(|f| f.sync_all())
                .map_err(|e| Error::io("fsync", tmp, e))
        });
        let checked = check_and_count(tmp);
        (checked, join(hash), join(sync))
    });
    let checked = checked?;
    synced?;
    Ok((hash?, checked))
}

trait ZeroNanos {
    fn with_nanosecond_zero(self) -> Self;
}
impl ZeroNanos for DateTime<Utc> {
    fn with_nanosecond_zero(self) -> Self {
        use chrono::Timelike;
        self.with_nanosecond(0).unwrap_or(self)
    }
}

/// Copies `src` (the database at `db`) into the new file `dst` in one read transaction.
fn snapshot(
    src: &Connection,
    db: &Path,
    opened: FileId,
    dst: &Path,
    method: Method,
) -> Result<Taken> {
    let taken = |pages: u64, method: Method| Taken {
        pages,
        method,
        done: None,
    };
    let f = create_private_file(dst)?;
    drop(f);
    match method {
        Method::Auto => match file_copy(src, db, opened, dst)? {
            Some(taken) => Ok(taken),
            None => {
                // Nothing was copied; start over on a fresh file.
                fs::remove_file(dst).map_err(|e| Error::io("remove", dst, e))?;
                snapshot(src, db, opened, dst, Method::OnlineBackup)
            }
        },
        Method::FileCopy => match file_copy(src, db, opened, dst)? {
            Some(taken) => Ok(taken),
            None => Err(Error::Busy(format!(
                "{}: its WAL holds frames not yet in the database file (a writer or a long reader is active); use the online backup method",
                db.display()
            ))),
        },
        Method::OnlineBackup => {
            let _fork = crate::forkguard::enter();
            let mut out = Connection::open(dst).map_err(sql_err("open backup", dst))?;
            // A new file nobody else sees: no journal, no syncs while copying (the finished file
            // is fsynced once, before it gets its name).
            out.execute_batch("PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF;")
                .map_err(sql_err("open backup", dst))?;
            let backup = rusqlite::backup::Backup::new(src, &mut out)
                .map_err(sql_err("start backup", dst))?;
            // -1: every page in one step, under one read lock, so concurrent writes cannot make
            // the copy restart (the small-step API restarts on every foreign write). Its pages
            // are written back as they come (see written_back_while).
            let _phase = crate::progress::phase("backup: SQLite online backup", None);
            super::copy::written_back_while(dst, || -> Result<()> {
                loop {
                    match backup.step(-1).map_err(sql_err("backup", dst))? {
                        rusqlite::backup::StepResult::Done => return Ok(()),
                        rusqlite::backup::StepResult::More => continue,
                        // Busy/Locked: another connection holds a lock we need; wait, retry.
                        _ => std::thread::sleep(std::time::Duration::from_millis(5)),
                    }
                }
            })?;
            Ok(taken(
                backup.progress().pagecount as u64,
                Method::OnlineBackup,
            ))
        }
        Method::VacuumInto => {
            // VACUUM INTO refuses an existing file, even empty: hand it a fresh name.
            fs::remove_file(dst).map_err(|e| Error::io("remove", dst, e))?;
            // VACUUM INTO runs in its own read transaction; the page count read just before is
            // informational only.
            let pages: i64 = src
                .query_row("PRAGMA page_count", [], |r| r.get(0))
                .map_err(sql_err("page_count", dst))?;
            let target = dst.to_str().ok_or_else(|| {
                Error::InvalidArgument(format!("path {} is not UTF-8", dst.display()))
            })?;
            src.execute("VACUUM INTO ?1", [target])
                .map_err(sql_err("VACUUM INTO", dst))?;
            set_private(dst)?;
            Ok(taken(pages as u64, Method::VacuumInto))
        }
    }
}

/// The [`Method::FileCopy`] snapshot: `Ok(None)` when the snapshot is not the file alone (or
/// the checkpoint probe cannot run), and nothing is copied then. The copy is hashed as it is
/// written and flushed in slices, and while it is made, `quick_check` and the row counts read
/// the same snapshot through `src` (on the other core): that snapshot is the file's bytes, so
/// the check is the copy's, and the copy's bytes are never read a second time.
fn file_copy(src: &Connection, db: &Path, opened: FileId, dst: &Path) -> Result<Option<Taken>> {
    // Dropped (rolled back) on every way out: the read transaction spans the whole copy.
    let tx = src.unchecked_transaction().map_err(sql_err("begin", db))?;
    // The first read takes the snapshot.
    let (pages, page_size): (i64, i64) = tx
        .query_row(
            "SELECT page_count, page_size FROM pragma_page_count(), pragma_page_size()
             WHERE (SELECT count(*) FROM sqlite_schema) >= 0",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .map_err(sql_err("read the page count", db))?;
    // Read inside the transaction: switching modes needs an exclusive lock, which our read
    // lock holds off until the copy is done.
    let mode: String = tx
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .map_err(sql_err("journal mode", db))?;
    if mode.eq_ignore_ascii_case("wal") {
        // Asked after our snapshot was taken: if every frame is in the file, our snapshot is in
        // the file, and no checkpoint can write a newer page into it while we read.
        let _fork = crate::forkguard::enter();
        let probe = match Connection::open_with_flags(
            db,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        ) {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "no checkpoint probe (read-only access?): online backup");
                return Ok(None);
            }
        };
        let frames = probe.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
            ))
        });
        match frames {
            Ok((0, log, done)) if log >= 0 && log == done => {}
            Ok((busy, log, done)) => {
                tracing::debug!(busy, log, done, "WAL frames not in the file: online backup");
                return Ok(None);
            }
            Err(e) => {
                tracing::debug!(error = %e, "checkpoint probe failed: online backup");
                return Ok(None);
            }
        }
    } else if !["delete", "truncate", "persist"].contains(&mode.to_ascii_lowercase().as_str()) {
        // memory/off journals: no lock discipline to rely on.
        return Ok(None);
    }
    let want = (pages * page_size) as u64;
    // Through symlinks, as SQLite opened it (a database reached through a link is common);
    // what it names was just opened as a database, so no FIFO or device can be behind it.
    let mut from = File::open(db).map_err(|e| Error::io("open", db, e))?;
    // The file opened here must be the one the connection opened, whose snapshot is checked
    // and counted: a path replaced meanwhile (a rename, a symlink switched: a restore, a
    // deploy) would have the check read one file and the copy another. (Replaced and put
    // back in between is not caught; nothing does that by accident.)
    let copied_from = {
        use std::os::unix::fs::MetadataExt;
        let m = from.metadata().map_err(|e| Error::io("stat", db, e))?;
        (m.dev(), m.ino())
    };
    if copied_from != opened {
        return Err(replaced(db));
    }
    let mut to = fs::OpenOptions::new()
        .write(true)
        .open(dst)
        .map_err(|e| Error::io("open", dst, e))?;
    let t0 = Instant::now();
    let ms = || t0.elapsed().as_millis() as u64;
    let (copied, checked) = std::thread::scope(|s| {
        let copy = s.spawn(|| {
            let phase = crate::progress::phase("backup: copying", Some(want));
            let copied = copy_hashed(
                &mut from,
                db,
                &mut to,
                dst,
                Some(want),
                Algorithm::Blake3,
                |offset, chunk| {
                    as_rollback_journal(offset, chunk);
                    phase.set(offset + chunk.len() as u64);
                },
            );
            tracing::debug!(ms = ms(), "copied, hashed and synced");
            copied
        });
        let checked = check_and_count_on(&tx);
        tracing::debug!(ms = ms(), "snapshot checked and counted");
        (join(copy), checked)
    });
    // Our read transaction ends only now that both are done. Closing `from` then drops, by
    // POSIX rules, every lock this process holds on `db` (the transaction's included): after
    // the copy and the check, and nothing reads `db` afterwards.
    drop(tx);
    drop(from);
    let copied = copied?;
    Ok(Some(Taken {
        pages: pages as u64,
        method: Method::FileCopy,
        done: Some((copied.checksum, checked?)),
    }))
}
