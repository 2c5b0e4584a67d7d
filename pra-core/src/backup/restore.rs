//! Restore: choose a restore point, preview what it changes, verify it, and replace the
//! database atomically — refusing while any process holds the database, holding SQLite's
//! exclusive lock on it from before the copy to after the rename, keeping a (rolled-back,
//! checkpointed) safety copy, and never letting an old `-wal` file be applied to the restored
//! database.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OpenFlags};
use serde::{Deserialize, Serialize};

use super::{
    BackupEntry, Health, check_and_count, inspect, join, open_existing, open_regular, scan,
    table_counts, validate_name, verify,
};
use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::fsutil::{parent_dir, set_private, sync_dir, with_suffix};

/// Which backup to restore.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "point", content = "value", rename_all = "snake_case")]
pub enum RestorePoint {
    /// The newest usable backup.
    Latest,
    /// A backup by its exact file name (a bare name: no path separators, no `..`).
    Name(String),
    /// The newest usable backup taken at or before this time.
    Before(DateTime<Utc>),
}

/// Finds the backup `point` designates in `dir`. Corrupt backups are never chosen; naming one
/// is an error that says why it is corrupt.
pub fn select(dir: &Path, point: &RestorePoint) -> Result<BackupEntry> {
    match point {
        RestorePoint::Name(name) => {
            let id = validate_name(name)?;
            if !dir.join(name).is_file() {
                return Err(Error::NotFound(format!(
                    "no backup {name} in {}",
                    dir.display()
                )));
            }
            let e = verify::Verifier::load(dir).check(inspect(dir, id, name));
            match &e.health {
                Health::Corrupt { reason } => Err(Error::Corrupt {
                    what: format!("backup {name}"),
                    detail: reason.clone(),
                }),
                Health::Verified | Health::Unverified => Ok(e),
            }
        }
        RestorePoint::Latest | RestorePoint::Before(_) => {
            let limit = match point {
                RestorePoint::Before(t) => Some(*t),
                RestorePoint::Latest | RestorePoint::Name(_) => None,
            };
            let names = scan(dir)?;
            let mut verifier = verify::Verifier::load(dir);
            let found = names
                .iter()
                .filter(|(id, _)| limit.is_none_or(|t| id.time <= t))
                .map(|(id, name)| verifier.check(inspect(dir, *id, name)))
                .find(BackupEntry::usable);
            verifier.save(Some(names.iter().map(|(_, n)| n.as_str())));
            found.ok_or_else(|| {
                Error::NotFound(match limit {
                    Some(t) => format!(
                        "no usable backup taken at or before {t} in {}",
                        dir.display()
                    ),
                    None => format!("no usable backup in {}", dir.display()),
                })
            })
        }
    }
}

/// One table's row counts now and in the backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableChange {
    /// Table name.
    pub table: String,
    /// Rows in the current database (`None`: no such table, or no database).
    pub current: Option<u64>,
    /// Rows in the backup (`None`: no such table there).
    pub backup: Option<u64>,
}

/// What a restore would change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Preview {
    /// The backup that would be restored.
    pub backup: BackupEntry,
    /// Whether a database exists now.
    pub current_exists: bool,
    /// Per-table row counts, side by side.
    pub tables: Vec<TableChange>,
}

/// Per-table row counts of the backup `point` designates beside those of the current database.
pub fn preview(db: &Path, dir: &Path, point: &RestorePoint) -> Result<Preview> {
    let backup = select(dir, point)?;
    let in_backup = table_counts(&*open_existing(&backup.path, true)?)?;
    let current_exists = db.is_file();
    let now = if current_exists {
        table_counts(&*open_existing(db, true)?)?
    } else {
        BTreeMap::new()
    };
    let mut names: Vec<&String> = in_backup.keys().chain(now.keys()).collect();
    names.sort();
    names.dedup();
    let tables = names
        .into_iter()
        .map(|t| TableChange {
            table: t.clone(),
            current: now.get(t).copied(),
            backup: in_backup.get(t).copied(),
        })
        .collect();
    Ok(Preview {
        backup,
        current_exists,
        tables,
    })
}

/// A process that holds one of the database's files open.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// Its process id.
    pub pid: u32,
    /// Its command name (`/proc/<pid>/comm`).
    pub command: String,
    /// The file it holds: the database, its `-wal`, `-journal` or `-shm`.
    pub file: PathBuf,
}

/// The device and inode of each of `db`'s files that exists: the database, `-wal`, `-journal`,
/// `-shm`. `stat(2)` only: nothing is opened.
fn db_files(db: &Path) -> Vec<(PathBuf, (u64, u64))> {
    use std::os::unix::fs::MetadataExt;
    ["", "-wal", "-journal", "-shm"]
        .iter()
        .map(|s| with_suffix(db, s))
        .filter_map(|p| {
            let m = fs::metadata(&p).ok()?;
            Some((p, (m.dev(), m.ino())))
        })
        .collect()
}

/// The processes of this host that hold `db` (or its `-wal`, `-journal`, `-shm`) open, found as
/// `fuser` does: the device and inode behind every descriptor in `/proc/*/fd`, read with
/// `stat(2)` on the link, so nothing is opened (closing a descriptor of the database would drop
/// this process's POSIX locks on it). This sees every connection whatever its journal mode, an
/// idle rollback-mode one included, which holds no lock at all. Processes whose descriptors this
/// user may not read (another user's, unless root) are not seen; nor are other hosts.
/// `include_self`: this process too.
pub fn holders(db: &Path, include_self: bool) -> Result<Vec<Holder>> {
    use std::os::unix::fs::MetadataExt;
    let files = db_files(db);
    if files.is_empty() {
        return Ok(Vec::new());
    }
    let me = std::process::id();
    let proc_dir = Path::new("/proc");
    let rd = fs::read_dir(proc_dir).map_err(|e| Error::io("list", proc_dir, e))?;
    let mut out = Vec::new();
    for ent in rd.flatten() {
        let Some(pid) = ent.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me && !include_self {
            continue;
        }
        // Gone, or not ours to read: skipped, as fuser does.
        let Ok(fds) = fs::read_dir(ent.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(m) = fs::metadata(fd.path()) else {
                continue;
            };
            if let Some((file, _)) = files.iter().find(|(_, id)| *id == (m.dev(), m.ino())) {
                let command = fs::read_to_string(ent.path().join("comm"))
                    .map(|c| c.trim().to_string())
                    .unwrap_or_default();
                out.push(Holder {
                    pid,
                    command,
                    file: file.clone(),
                });
                break;
            }
        }
    }
    Ok(out)
}

/// Whether a process of this host (this one included) holds `db` open: `Some(who)` names them.
/// See [`holders`].
pub fn in_use(db: &Path) -> Result<Option<String>> {
    let db = resolve(db)?;
    let found = holders(&db, true)?;
    Ok((!found.is_empty()).then(|| describe(&found)))
}

fn describe(found: &[Holder]) -> String {
    let me = std::process::id();
    let who: Vec<String> = found
        .iter()
        .map(|h| {
            let this = if h.pid == me { ", this process" } else { "" };
            format!(
                "pid {} ({}{this}) holds {}",
                h.pid,
                h.command,
                h.file.display()
            )
        })
        .collect();
    who.join("; ")
}

fn busy(db: &Path, why: &str) -> Error {
    Error::Busy(format!(
        "{} is in use: {why}. Stop the application first (as the seed's runbook does with `kubectl scale deployment flask --replicas=0`)",
        db.display()
    ))
}

/// Refuses if a process holds `db` open.
fn refuse_if_held(db: &Path, include_self: bool) -> Result<()> {
    let found = holders(db, include_self)?;
    if found.is_empty() {
        Ok(())
    } else {
        Err(busy(db, &describe(&found)))
    }
}

/// The file `db` names, through any symlinks (the symlinks stay as they are; their target is
/// what gets restored). A dangling symlink resolves to the file it would name.
fn resolve(db: &Path) -> Result<PathBuf> {
    let mut p = db.to_path_buf();
    for _ in 0..40 {
        match fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => {
                let t = fs::read_link(&p).map_err(|e| Error::io("read link", &p, e))?;
                p = if t.is_absolute() {
                    t
                } else {
                    parent_dir(&p).join(t)
                };
            }
            _ => return Ok(p),
        }
    }
    Err(Error::InvalidArgument(format!(
        "{}: too many levels of symbolic links",
        db.display()
    )))
}

/// The restore's exclusive claim on the live database, through SQLite's own locking: a
/// connection in `EXCLUSIVE` locking mode that has taken the EXCLUSIVE lock (in WAL mode, with
/// its WAL index in its own memory, so every other connection is shut out too). No other
/// connection can read or write until it is closed, which is after the final rename.
struct Claim {
    conn: Connection,
    db: PathBuf,
    wal: bool,
    // Held as long as the connection lives (see crate::forkguard).
    _fork: crate::forkguard::Guard,
}

impl Claim {
    /// Takes the claim. Opening the database with SQLite first also rolls back a hot
    /// `-journal` left by a crashed writer, so the old database is consistent before it is
    /// kept. `Ok(None)`: the file is not a database SQLite can lock (a damaged one).
    fn take(db: &Path) -> Result<Option<Claim>> {
        let name = db.display().to_string();
        let name = name.as_str();
        let err = |what: &'static str| move |e| Error::sqlite(what, name, e);
        let fork = crate::forkguard::enter();
        let conn = Connection::open_with_flags(
            db,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| {
            Error::io(
                "open",
                db,
                std::io::Error::other(format!("cannot open the database to lock it: {e}")),
            )
        })?;
        conn.busy_timeout(std::time::Duration::from_secs(1))
            .map_err(err("busy_timeout"))?;
        conn.query_row("PRAGMA locking_mode = EXCLUSIVE", [], |_| Ok(()))
            .map_err(err("locking mode"))?;
        // Ended at once: in EXCLUSIVE locking mode the lock outlives the transaction (a
        // transaction left open would stop the online-backup fallback of the safety copy).
        let taken = conn.execute_batch("BEGIN EXCLUSIVE; COMMIT;");
        match taken.map_err(|e| Error::sqlite("lock", &db.display().to_string(), e)) {
            Ok(()) => {}
            Err(Error::Busy(_)) => {
                return Err(busy(db, "a connection holds a lock on it"));
            }
            Err(Error::Corrupt { detail, .. }) => {
                tracing::warn!(db = %db.display(), %detail, "not a database SQLite can lock: restoring over it without its locks");
                return Ok(None);
            }
            Err(e) => return Err(e),
        }
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .map_err(err("journal mode"))?;
        Ok(Some(Claim {
            conn,
            db: db.to_path_buf(),
            wal: mode.eq_ignore_ascii_case("wal"),
            _fork: fork,
        }))
    }

    /// Readies the old database to be replaced, still under the claim: in WAL mode its WAL is
    /// checkpointed into it and it is switched to rollback-journal mode. A connection that
    /// opened the old file while the claim held it then finds, once the claim is released, a
    /// rollback-mode database that was moved, and SQLite refuses its writes
    /// (`SQLITE_READONLY_DBMOVED`) instead of committing them into a WAL beside the new file.
    fn seal(&self) -> Result<()> {
        if !self.wal {
            return Ok(());
        }
        let name = self.db.display().to_string();
        let name = name.as_str();
        let err = |what: &'static str| move |e| Error::sqlite(what, name, e);
        let (busy, _, _): (i64, i64, i64) = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .map_err(err("checkpoint"))?;
        if busy != 0 {
            return Err(Error::Busy(format!(
                "checkpoint of {} could not complete",
                self.db.display()
            )));
        }
        let mode: String = self
            .conn
            .query_row("PRAGMA journal_mode = DELETE", [], |r| r.get(0))
            .map_err(err("leave WAL mode"))?;
        if !mode.eq_ignore_ascii_case("delete") {
            return Err(Error::Busy(format!(
                "{} could not leave WAL mode (still {mode})",
                self.db.display()
            )));
        }
        Ok(())
    }
}

/// Restore options.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Options {
    /// Keep a copy of the current database (and its `-wal`) as `<db>.pre-restore-<time>`.
    pub safety_copy: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options { safety_copy: true }
    }
}

/// What a restore did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// The backup restored.
    pub backup: String,
    /// Where the previous database was kept, if it existed and a safety copy was asked for.
    pub safety_copy: Option<PathBuf>,
    /// Whether a database was replaced (false: restored where it was lost).
    pub replaced: bool,
    /// Rows per table in the restored database.
    pub tables: BTreeMap<String, u64>,
}

const TEMP_MARK: &str = ".pra-restore-tmp-";

/// Restores the backup `point` designates over `db` (through a symlink: over its target).
///
/// The restore holds the database while it works: it refuses if any process of this host holds
/// the database or its `-wal`, `-journal` or `-shm` open ([`holders`]; this process included),
/// then takes SQLite's EXCLUSIVE lock on it (a hot journal is rolled back on the way)
/// and keeps it across the final rename, so no writer can commit in between. A process that
/// opens the database during the copy waits on that lock and is seen by the last look before
/// the rename: the restore is refused and the process goes on with the old database.
///
/// Order, so that a crash at any moment leaves either the old or the new database, never a mix:
/// the backup is copied next to `db`, verified (the copy's checksum against the manifest, and
/// `quick_check`) and given the old file's owner, group and mode; the old database has its WAL
/// checkpointed into it and leaves WAL mode, and is kept aside (a hard link); then one
/// `rename(2)` puts the new database in place and the directory is fsynced.
#[tracing::instrument(level = "info", skip(clock), fields(db = %db.display(), dir = %dir.display()))]
pub fn restore(
    db: &Path,
    dir: &Path,
    point: &RestorePoint,
    opts: Options,
    clock: &dyn Clock,
) -> Result<Report> {
    let entry = select(dir, point)?;
    let db = &resolve(db)?;
    let target_dir = parent_dir(db);
    if !target_dir.is_dir() {
        return Err(Error::NotFound(format!(
            "directory {} of the database does not exist",
            target_dir.display()
        )));
    }
    // Before anything is opened: any process holding the files, this one included.
    refuse_if_held(db, true)?;
    let replaced = db.is_file();
    let claim = if replaced { Claim::take(db)? } else { None };
    // Under the claim: whoever opened the files since the first look.
    refuse_if_held(db, false)?;
    let file_name = db.file_name().and_then(|n| n.to_str()).unwrap_or("db");
    crate::fsutil::remove_dead_temps(target_dir, &format!(".{file_name}{TEMP_MARK}"));
    let tmp = target_dir.join(format!(".{file_name}{TEMP_MARK}{}", std::process::id()));
    let result = (|| {
        let tables = copy_verified(&entry, &tmp)?;
        if replaced {
            same_owner_and_mode(db, &tmp)?;
        }
        // The last look: a process that opened the database during the copy waits on the
        // claim. Refused, it goes on with the old database, which stays.
        refuse_if_held(db, false)?;
        if let Some(c) = &claim {
            c.seal()?;
        }
        let wal = with_suffix(db, "-wal");
        let journal = with_suffix(db, "-journal");
        // A name no earlier restore's copies have: two restores in one second must not write
        // the second's copy over the first's (the only copy of what the first replaced).
        let second = clock.now().format("%Y%m%dT%H%M%SZ").to_string();
        let stamp = (0u32..)
            .map(|n| match n {
                0 => second.clone(),
                n => format!("{second}-{n}"),
            })
            .find(|stamp| {
                [db, &wal, &journal].iter().all(|f| {
                    fs::symlink_metadata(with_suffix(f, &format!(".pre-restore-{stamp}"))).is_err()
                })
            })
            .unwrap_or(second);
        let mut safety_copy = None;
        if replaced && opts.safety_copy {
            let keep = with_suffix(db, &format!(".pre-restore-{stamp}"));
            // The old file is about to be replaced by a rename, never written again: a second
            // name for it (a hard link) keeps it without copying it.
            if let Err(e) = fs::hard_link(db, &keep) {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    // Made since the name was chosen: never written over.
                    return Err(Error::io("keep the database as", &keep, e));
                }
                tracing::debug!(error = %e, "no hard link here; copying the database aside");
                match &claim {
                    // Through the claim's own connection: another descriptor of the file,
                    // closed in this process, would drop the claim's locks.
                    Some(c) => {
                        c.conn
                            .backup(
                                rusqlite::MAIN_DB,
                                &keep,
                                None::<fn(rusqlite::backup::Progress)>,
                            )
                            .map_err(|e| {
                                Error::sqlite("copy aside", &db.display().to_string(), e)
                            })?;
                        set_private(&keep)?;
                        fs::File::open(&keep)
                            .and_then(|f| f.sync_all())
                            .map_err(|e| Error::io("fsync", &keep, e))?;
                    }
                    None => copy_synced(db, &keep)?,
                }
            }
            safety_copy = Some(keep);
        }
        if replaced && claim.is_none() {
            // A damaged file SQLite could not open: its WAL or journal go aside, unread.
            for f in [&wal, &journal] {
                if fs::metadata(f).is_ok_and(|m| m.len() > 0) {
                    let aside = with_suffix(f, &format!(".pre-restore-{stamp}"));
                    tracing::warn!(file = %f.display(), aside = %aside.display(), "moving aside");
                    fs::rename(f, &aside).map_err(|e| Error::io("move aside", f, e))?;
                }
            }
        }
        if !replaced && fs::symlink_metadata(db).is_ok() {
            // Created during the copy (the app started): it is the live database now.
            return Err(appeared(db));
        }
        // The claim checkpointed the WAL and rolled back any hot journal: what is left of them
        // is stale, and must not meet the new file.
        for stale in [wal, with_suffix(db, "-shm"), journal] {
            match fs::remove_file(&stale) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(Error::io("remove", stale, e));
                }
                _ => {}
            }
        }
        if replaced {
            fs::rename(&tmp, db).map_err(|e| Error::io("rename into place", db, e))?;
        } else {
            rename_noreplace(&tmp, db)?;
        }
        sync_dir(target_dir)?;
        tracing::info!(backup = %entry.name, replaced, "restored");
        Ok(Report {
            backup: entry.name.clone(),
            safety_copy,
            replaced,
            tables,
        })
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    // Released only now, after the rename.
    drop(claim);
    result
}

/// The refusal when a database was created at `db` while a restore into a missing one ran.
fn appeared(db: &Path) -> Error {
    Error::Busy(format!(
        "{} appeared during the restore (an application created it): it was left as is and the backup was not installed; stop the application and restore again",
        db.display()
    ))
}

/// `rename(2)` that fails if `to` exists (renameat2 RENAME_NOREPLACE): a database created at
/// the path since the restore began is never replaced.
fn rename_noreplace(from: &Path, to: &Path) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| {
        std::ffi::CString::new(p.as_os_str().as_bytes())
            .map_err(|_| Error::InvalidArgument(format!("{} contains a NUL byte", p.display())))
    };
    let (f, t) = (c(from)?, c(to)?);
    // SAFETY: two NUL-terminated paths that outlive the call.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            f.as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if r == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EEXIST) {
        return Err(appeared(to));
    }
    Err(Error::io("rename into place", to, e))
}

/// Gives `new` the owner, group and mode of `old` (run as root, a restore would otherwise leave
/// a root-owned 0600 file the application cannot open).
fn same_owner_and_mode(old: &Path, new: &Path) -> Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let want = fs::metadata(old).map_err(|e| Error::io("stat", old, e))?;
    let f = fs::OpenOptions::new()
        .write(true)
        .open(new)
        .map_err(|e| Error::io("open", new, e))?;
    let has = f.metadata().map_err(|e| Error::io("stat", new, e))?;
    if (has.uid(), has.gid()) != (want.uid(), want.gid()) {
        std::os::unix::fs::fchown(&f, Some(want.uid()), Some(want.gid()))
            .map_err(|e| Error::io("give the old database's owner to", new, e))?;
    }
    f.set_permissions(fs::Permissions::from_mode(want.mode() & 0o7777))
        .map_err(|e| Error::io("chmod", new, e))?;
    f.sync_all().map_err(|e| Error::io("fsync", new, e))
}

/// Copies the backup to `copy` (fsynced) and verifies what will be installed: the copy's
/// checksum against the manifest, and `quick_check`. With a manifest, the checksum ties the copy
/// to the backup's bytes, so the integrity check reads the backup itself, beside the copy and
/// its hash; without one, it reads the copy after it is made. Returns the row counts.
fn copy_verified(entry: &BackupEntry, copy: &Path) -> Result<BTreeMap<String, u64>> {
    let corrupt = |detail: String| Error::Corrupt {
        what: format!("backup {}", entry.name),
        detail,
    };
    // The bytes pass once: hashed as they are written, flushed in slices (see super::copy).
    let want = entry.manifest.as_ref().and_then(|m| m.checksum());
    let copy_hash_sync = || -> Result<super::Checksum> {
        let mut from = open_regular(&entry.path).map_err(|e| Error::io("open", &entry.path, e))?;
        let _ = fs::remove_file(copy);
        let mut to = crate::fsutil::create_private_file(copy)?;
        let algorithm = want
            .as_ref()
            .map_or(super::checksum::Algorithm::Blake3, |w| w.algorithm);
        let phase = crate::progress::phase("restore: copying", Some(entry.size));
        let copied = super::copy::copy_hashed(
            &mut from,
            &entry.path,
            &mut to,
            copy,
            None,
            algorithm,
            |offset, chunk| phase.set(offset + chunk.len() as u64),
        )?;
        Ok(copied.checksum)
    };
    let (sha, checked) = match &entry.manifest {
        Some(_) => std::thread::scope(|s| {
            let copied = s.spawn(copy_hash_sync);
            let checked = check_and_count(&entry.path);
            (join(copied), checked)
        }),
        None => {
            tracing::warn!(backup = %entry.name, "no manifest: checking integrity only");
            let sha = copy_hash_sync();
            (sha, check_and_count(copy))
        }
    };
    let sum = sha?;
    if let Some(want) = &want
        && sum != *want
    {
        return Err(corrupt(format!(
            "{} checksum {} does not match the manifest's {}",
            sum.algorithm.name(),
            sum.short(12),
            want.short(12)
        )));
    }
    let (check, tables) = checked.map_err(|e| corrupt(e.to_string()))?;
    if check != "ok" {
        return Err(corrupt(format!("quick_check: {check}")));
    }
    Ok(tables)
}

fn copy_synced(from: &Path, to: &Path) -> Result<()> {
    fs::copy(from, to).map_err(|e| Error::io("copy to", to, e))?;
    set_private(to)?;
    fs::File::open(to)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io("fsync", to, e))
}
