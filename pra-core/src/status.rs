//! The status the application serves on `GET /status`: the seed's `count`, `last_backup_file`
//! and `backup_age_seconds`, plus backup freshness, the active site and any problems found.

use std::path::Path;

use chrono::Duration;
use serde::{Deserialize, Serialize};

use crate::backup;
use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::store::Store;

/// How status is computed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// The table whose rows `count` counts (the seed's app stores events).
    pub table: String,
    /// The backup interval (the seed's CronJob runs every minute).
    pub backup_interval: Duration,
    /// Backup age from which the state is `warn` (default: 2 intervals).
    pub warn_after: Option<Duration>,
    /// Backup age from which the state is `critical` (default: 5 intervals).
    pub critical_after: Option<Duration>,
    /// Missed scheduled runs tolerated before a job is reported late
    /// ([`crate::jobs::MISSED_INTERVALS`]).
    pub missed_intervals: u32,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            table: crate::defaults::TABLE.into(),
            backup_interval: Duration::from_std(crate::defaults::BACKUP_INTERVAL)
                .unwrap_or(Duration::MAX),
            warn_after: None,
            critical_after: None,
            missed_intervals: crate::jobs::MISSED_INTERVALS,
        }
    }
}

/// How far in the future a backup's time may be (clocks a little apart) before status says so.
const FUTURE_TOLERANCE_SECONDS: i64 = 60;

/// Freshness of the newest verified backup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackupState {
    /// Younger than the warn threshold.
    Ok,
    /// Older than the warn threshold.
    Warn,
    /// Older than the critical threshold.
    Critical,
    /// No verified backup at all.
    None,
}

impl BackupState {
    /// Its name, as in the document: `ok`, `warn`, `critical`, `none`.
    pub fn name(self) -> &'static str {
        match self {
            BackupState::Ok => "ok",
            BackupState::Warn => "warn",
            BackupState::Critical => "critical",
            BackupState::None => "none",
        }
    }
}

/// The status document. The seed's three keys come first, with the seed's meaning; `null` where
/// there is nothing to report (no backup yet, no database).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// Rows in the counted table (`null` if the database is unavailable).
    pub count: Option<u64>,
    /// File name of the newest verified backup (its checksum matched its manifest).
    pub last_backup_file: Option<String>,
    /// Its age in seconds.
    pub backup_age_seconds: Option<i64>,
    /// Backup-named files in the backup directory (usable or not).
    pub backup_count: usize,
    /// Freshness of the newest usable backup.
    pub backup_state: BackupState,
    /// Whether the database could be read.
    pub database_ok: bool,
    /// The active site, when a store was given and could be read.
    pub active_site: Option<String>,
    /// Its fencing token.
    pub token: Option<u64>,
    /// Everything that is wrong, in words.
    pub problems: Vec<String>,
}

/// Validates a table name for counting: letters, digits and `_`, not starting with a digit.
pub fn validate_table(table: &str) -> Result<()> {
    let ok = !table.is_empty()
        && table.len() <= 128
        && !table.as_bytes()[0].is_ascii_digit()
        && table
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "invalid table name {table:?}: use letters, digits and '_'"
        )))
    }
}

/// Computes the status of database `db` and backup directory `dir`. Problems (missing database,
/// unreadable directory, old backups, unreadable store, jobs late, failed or run on both sites
/// as [`crate::jobs`] judges them) are reported in the status, not as errors; only invalid
/// options are errors.
#[tracing::instrument(level = "debug", skip(store, clock), fields(db = %db.display()))]
pub fn status(
    db: &Path,
    dir: &Path,
    opts: &Options,
    store: Option<&dyn Store>,
    clock: &dyn Clock,
) -> Result<Status> {
    status_counted(
        || backup::count_rows(db, &opts.table),
        dir,
        opts,
        store,
        clock,
    )
}

/// [`status`] with the row count taken by `count`, on the calling thread, while the backup
/// directory is listed on another. For callers inside the application's process: they count
/// through the SQLite library the application uses (Python's `sqlite3`, the C program's own),
/// because a second SQLite library opening and closing the same database file in one process
/// drops the application's POSIX locks (<https://sqlite.org/howtocorrupt.html>, 2.2).
pub fn status_counted(
    count: impl FnOnce() -> Result<u64>,
    dir: &Path,
    opts: &Options,
    store: Option<&dyn Store>,
    clock: &dyn Clock,
) -> Result<Status> {
    validate_table(&opts.table)?;
    if opts.backup_interval <= Duration::zero() {
        return Err(Error::InvalidArgument(
            "the backup interval must be positive".into(),
        ));
    }
    let mut problems = Vec::new();
    // The count reads the database, the scan lists the backup directory: independent, so the
    // scan runs on a second thread and the status costs about as much as the count alone.
    let (counted, scanned) = std::thread::scope(|s| {
        let scan = s.spawn(|| backup::newest_verified(dir));
        let counted = count();
        (counted, backup::join(scan))
    });
    let count = match counted {
        Ok(n) => Some(n),
        Err(e) => {
            problems.push(format!("database: {e}"));
            None
        }
    };
    let (backup_count, latest) = match scanned {
        Ok((n, latest, corrupt)) => {
            // A few by name, then how many more: a directory of ten thousand `cp` backups
            // without manifests must not make a ten-thousand-line document.
            const NAMED: usize = 5;
            if corrupt.len() > NAMED {
                problems.push(format!(
                    "{} more backups newer than the newest verified one are corrupt or have no manifest (`pra backups` lists them)",
                    corrupt.len() - NAMED
                ));
            }
            for e in corrupt.into_iter().take(NAMED) {
                match &e.health {
                    backup::Health::Corrupt { reason } => {
                        problems.push(format!("backup {} is corrupt: {reason}", e.name));
                    }
                    backup::Health::Unverified => problems.push(format!(
                        "backup {} has no manifest: its checksum cannot be verified, so it is not counted",
                        e.name
                    )),
                    backup::Health::Verified => {}
                }
            }
            (n, latest)
        }
        Err(e) => {
            problems.push(format!("backups: {e}"));
            (0, None)
        }
    };
    let now = clock.now();
    let age = latest.as_ref().map(|e| (now - e.id.time).num_seconds());
    let warn = opts.warn_after.unwrap_or(opts.backup_interval * 2);
    let critical = opts.critical_after.unwrap_or(opts.backup_interval * 5);
    let backup_state = match age {
        None => {
            problems.push(format!("no usable backup in {}", dir.display()));
            BackupState::None
        }
        Some(a) if a >= critical.num_seconds() => {
            problems.push(format!(
                "the newest backup is {a}s old (critical from {}s)",
                critical.num_seconds()
            ));
            BackupState::Critical
        }
        Some(a) if a >= warn.num_seconds() => {
            problems.push(format!(
                "the newest backup is {a}s old (warn from {}s)",
                warn.num_seconds()
            ));
            BackupState::Warn
        }
        // Backups are ordered by the time in their names: one taken while the clock was
        // ahead stays the newest after it is set back, before newer ones.
        Some(a) if a < -FUTURE_TOLERANCE_SECONDS => {
            problems.push(format!(
                "the newest backup is dated {}s in the future (a clock stepped back?): it ranks before every backup taken since, for prune and restore --latest; check the clocks, and restore by --name",
                -a
            ));
            BackupState::Warn
        }
        Some(_) => BackupState::Ok,
    };
    let (active_site, token) = match store.map(|s| s.load().map(|r| (s, r))) {
        None => (None, None),
        Some(Ok((store, r))) => {
            // The jobs' missed runs, failures and double executions, in words.
            if let Some(registry) = store.registry() {
                match registry.run_stats() {
                    Ok(stats) => {
                        for j in crate::jobs::assess(&stats, &r, clock.now(), opts.missed_intervals)
                        {
                            if !j.problems.is_empty() {
                                let names: Vec<&str> =
                                    j.problems.iter().map(|p| p.name()).collect();
                                problems.push(format!("job {}: {}", j.job, names.join(", ")));
                            }
                        }
                    }
                    Err(e) => problems.push(format!("store: run registry: {e}")),
                }
            }
            (
                Some(r.site.map_or_else(|| "none".to_string(), |s| s.to_string())),
                Some(r.token.0),
            )
        }
        Some(Err(e)) => {
            problems.push(format!("store: {e}"));
            (None, None)
        }
    };
    Ok(Status {
        count,
        last_backup_file: latest.map(|e| e.name),
        backup_age_seconds: age,
        backup_count,
        backup_state,
        database_ok: count.is_some(),
        active_site,
        token,
        problems,
    })
}
