//! Restore: choose a restore point, preview what it changes, verify it, and replace the
//! database atomically — refusing while the app still holds the database, keeping a safety copy,
//! and never letting an old `-wal` file be applied to the restored database.

use std::collections::BTreeMap;
use std::fs;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{
    BackupEntry, Health, check_and_count, inspect, join, open_existing, open_regular, scan,
    sha256_file, table_counts, validate_name, verify,
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
            verifier.save(names.iter().map(|(_, n)| n.as_str()));
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
    let in_backup = table_counts(&open_existing(&backup.path, true)?)?;
    let current_exists = db.is_file();
    let now = if current_exists {
        table_counts(&open_existing(db, true)?)?
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

/// Whether another connection holds `db`: an open WAL connection (the shared lock every WAL
/// connection keeps on the `-shm` dead-man byte) or a transaction in any journal mode (the lock
/// bytes of the database file). Uses open-file-description locks, which see the locks of other
/// connections in this very process too. An idle connection in rollback-journal mode holds no
/// lock and cannot be seen.
pub fn in_use(db: &Path) -> Result<Option<String>> {
    const PENDING_BYTE: i64 = 0x4000_0000;
    const SHM_DMS_BYTE: i64 = 128;
    let probe = |path: &Path, start: i64, len: i64| -> Result<bool> {
        let f = match fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(Error::io("open", path, e)),
        };
        // SAFETY: a zeroed flock is a valid value; F_OFD_GETLK only reads and writes it.
        let mut fl: libc::flock = unsafe { std::mem::zeroed() };
        fl.l_type = libc::F_WRLCK as libc::c_short;
        fl.l_whence = libc::SEEK_SET as libc::c_short;
        fl.l_start = start;
        fl.l_len = len;
        // SAFETY: valid fd and pointer to an initialised flock.
        let rc = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_OFD_GETLK, &mut fl) };
        if rc != 0 {
            return Err(Error::io(
                "probe locks of",
                path,
                std::io::Error::last_os_error(),
            ));
        }
        Ok(fl.l_type != libc::F_UNLCK as libc::c_short)
    };
    if probe(&with_suffix(db, "-shm"), SHM_DMS_BYTE, 1)? {
        return Ok(Some("a connection has it open (WAL mode)".into()));
    }
    if probe(db, PENDING_BYTE, 512)? {
        return Ok(Some("a connection is reading or writing it".into()));
    }
    Ok(None)
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

/// Restores the backup `point` designates over `db`.
///
/// Order, so that a crash at any moment leaves either the old or the new database, never a mix:
/// the backup is copied next to `db` and verified (the copy's checksum against the manifest,
/// and `quick_check`); the current database, if any, is kept aside (a hard link) and its `-wal`
/// checkpointed into it (or, if that fails, moved aside) so no old WAL can be applied to the new
/// file; then one `rename(2)` puts the new database in place and the directory is fsynced.
#[tracing::instrument(level = "info", skip(clock), fields(db = %db.display(), dir = %dir.display()))]
pub fn restore(
    db: &Path,
    dir: &Path,
    point: &RestorePoint,
    opts: Options,
    clock: &dyn Clock,
) -> Result<Report> {
    let entry = select(dir, point)?;
    let target_dir = parent_dir(db);
    if !target_dir.is_dir() {
        return Err(Error::NotFound(format!(
            "directory {} of the database does not exist",
            target_dir.display()
        )));
    }
    if let Some(why) = in_use(db)? {
        return Err(Error::Busy(format!(
            "{} is in use: {why}. Stop the application first (as the seed's runbook does with `kubectl scale deployment flask --replicas=0`)",
            db.display()
        )));
    }
    let file_name = db.file_name().and_then(|n| n.to_str()).unwrap_or("db");
    crate::fsutil::remove_dead_temps(target_dir, &format!(".{file_name}{TEMP_MARK}"));
    let tmp = target_dir.join(format!(".{file_name}{TEMP_MARK}{}", std::process::id()));
    let result = (|| {
        let tables = copy_verified(&entry, &tmp)?;

        let stamp = clock.now().format("%Y%m%dT%H%M%SZ");
        let wal = with_suffix(db, "-wal");
        let replaced = db.is_file();
        let mut safety_copy = None;
        if replaced {
            if opts.safety_copy {
                let keep = with_suffix(db, &format!(".pre-restore-{stamp}"));
                // The old file is about to be replaced by a rename, never written again: a
                // second name for it (a hard link) keeps it without copying it.
                if let Err(e) = fs::hard_link(db, &keep) {
                    tracing::debug!(error = %e, "no hard link here; copying the database aside");
                    copy_synced(db, &keep)?;
                }
                if wal.is_file() {
                    copy_synced(&wal, &with_suffix(&keep, "-wal"))?;
                }
                safety_copy = Some(keep);
            }
            if fs::metadata(&wal).is_ok_and(|m| m.len() > 0)
                && let Err(e) = checkpoint(db)
            {
                let aside = with_suffix(&wal, &format!(".pre-restore-{stamp}"));
                tracing::warn!(error = %e, aside = %aside.display(), "cannot checkpoint the old database; moving its WAL aside");
                fs::rename(&wal, &aside).map_err(|e| Error::io("move aside", &wal, e))?;
            }
        }
        for stale in [wal, with_suffix(db, "-shm"), with_suffix(db, "-journal")] {
            match fs::remove_file(&stale) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(Error::io("remove", stale, e));
                }
                _ => {}
            }
        }
        fs::rename(&tmp, db).map_err(|e| Error::io("rename into place", db, e))?;
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
    result
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
    let copy_hash_sync = || -> Result<Option<String>> {
        let mut from = open_regular(&entry.path).map_err(|e| Error::io("open", &entry.path, e))?;
        let _ = fs::remove_file(copy);
        let mut to = crate::fsutil::create_private_file(copy)?;
        std::io::copy(&mut from, &mut to).map_err(|e| Error::io("copy backup to", copy, e))?;
        drop(to);
        set_private(copy)?;
        let sha = match &entry.manifest {
            Some(_) => Some(sha256_file(copy)?),
            None => None,
        };
        fs::File::open(copy)
            .and_then(|f| f.sync_all())
            .map_err(|e| Error::io("fsync", copy, e))?;
        Ok(sha)
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
    let sha = sha?;
    if let (Some(sha), Some(m)) = (sha, &entry.manifest)
        && sha != m.sha256
    {
        return Err(corrupt(format!(
            "checksum {} does not match the manifest's {}",
            &sha[..12],
            &m.sha256[..12.min(m.sha256.len())]
        )));
    }
    let (check, tables) = checked.map_err(|e| corrupt(e.to_string()))?;
    if check != "ok" {
        return Err(corrupt(format!("quick_check: {check}")));
    }
    Ok(tables)
}

/// Folds `db`'s WAL into the database file and truncates it.
fn checkpoint(db: &Path) -> Result<()> {
    let conn = open_existing(db, false)?;
    let (busy, _, _): (i64, i64, i64) = conn
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .map_err(|e| Error::sqlite("checkpoint", &db.display().to_string(), e))?;
    if busy != 0 {
        return Err(Error::Busy(format!(
            "checkpoint of {} could not complete",
            db.display()
        )));
    }
    conn.close()
        .map_err(|(_, e)| Error::sqlite("close", &db.display().to_string(), e))
}

fn copy_synced(from: &Path, to: &Path) -> Result<()> {
    fs::copy(from, to).map_err(|e| Error::io("copy to", to, e))?;
    set_private(to)?;
    fs::File::open(to)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io("fsync", to, e))
}
