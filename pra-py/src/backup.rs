//! Backups from Python: `backup` (the snapshot through Python's own `sqlite3`), `list_backups`
//! (`Backup`), `prune` (`PruneDecision`), `restore` (`RestoreReport`, or `RestorePreview` on a
//! dry run) and `status` (`Status`, the seed's `/status` document).

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use pyo3::prelude::*;

use pra_core::SystemClock;
use pra_core::backup::restore::{self, RestorePoint};
use pra_core::backup::retention::{self, Policy};
use pra_core::backup::{self, BackupEntry, Health, Method};

use crate::convert::json_of;
use crate::errors::{InvalidArgumentError, PraErr, PraResult, blocking};
use crate::store::Store;

/// One backup of the catalog.
#[pyclass(frozen, get_all, module = "pra")]
pub struct Backup {
    /// File name.
    name: String,
    /// Full path.
    path: String,
    /// When it was taken (from its name; UTC).
    time: DateTime<Utc>,
    /// Size in bytes.
    size: u64,
    /// "verified", "unverified" (no manifest) or "corrupt".
    state: String,
    /// Why it is corrupt, if it is.
    problem: Option<String>,
    /// SHA-256 from the manifest.
    sha256: Option<String>,
    /// Rows per table from the manifest.
    tables: Option<std::collections::BTreeMap<String, u64>>,
}

impl From<BackupEntry> for Backup {
    fn from(e: BackupEntry) -> Self {
        let (state, problem) = match e.health {
            Health::Verified => ("verified", None),
            Health::Unverified => ("unverified", None),
            Health::Corrupt { reason } => ("corrupt", Some(reason)),
        };
        Backup {
            name: e.name,
            path: e.path.display().to_string(),
            time: e.id.time,
            size: e.size,
            state: state.into(),
            problem,
            sha256: e.manifest.as_ref().map(|m| m.sha256.clone()),
            tables: e.manifest.map(|m| m.tables),
        }
    }
}

#[pymethods]
impl Backup {
    fn __repr__(&self) -> String {
        format!(
            "Backup({:?}, state={:?}, size={})",
            self.name, self.state, self.size
        )
    }
}

/// Python's own `sqlite3` module: the SQLite library the application uses.
fn py_sqlite_connect<'py>(py: Python<'py>, db: &Path, mode: &str) -> PyResult<Bound<'py, PyAny>> {
    let sqlite3 = py.import("sqlite3")?;
    // A URI, so that mode=ro never creates an empty database in place of a lost one.
    let quoted: String = db
        .to_string_lossy()
        .chars()
        .map(|c| match c {
            '?' => "%3f".to_string(),
            '#' => "%23".to_string(),
            '%' => "%25".to_string(),
            c => c.to_string(),
        })
        .collect();
    let kwargs = pyo3::types::PyDict::new(py);
    kwargs.set_item("uri", true)?;
    kwargs.set_item("timeout", 5.0)?;
    sqlite3.call_method(
        "connect",
        (format!("file:{quoted}?mode={mode}"),),
        Some(&kwargs),
    )
}

/// A Python sqlite3 error as a pra error about `db`.
fn py_sqlite_err(py: Python<'_>, what: &'static str, db: &Path, e: PyErr) -> pra_core::Error {
    let msg = e.value(py).to_string();
    if msg.contains("locked") || msg.contains("busy") {
        pra_core::Error::Busy(format!("{what} {}: {msg}", db.display()))
    } else {
        pra_core::Error::io(what, db, std::io::Error::other(msg))
    }
}

/// Counts the rows of `table` in `db` through Python's `sqlite3`, never through pra's SQLite:
/// two SQLite libraries opening one database file in one process drop each other's POSIX
/// locks (<https://sqlite.org/howtocorrupt.html>, 2.2).
fn count_via_python(py: Python<'_>, db: &Path, table: &str) -> pra_core::Result<u64> {
    if !db.is_file() {
        return Err(pra_core::Error::NotFound(format!(
            "database {} does not exist",
            db.display()
        )));
    }
    let sql = format!("SELECT count(*) FROM \"{}\"", table.replace('"', "\"\""));
    let conn = py_sqlite_connect(py, db, "ro").map_err(|e| py_sqlite_err(py, "open", db, e))?;
    let counted = conn
        .call_method1("execute", (sql,))
        .and_then(|c| c.call_method0("fetchone"))
        .and_then(|row| row.get_item(0))
        .and_then(|v| v.extract::<i64>());
    let _ = conn.call_method0("close");
    counted
        .map(|n| n.max(0) as u64)
        .map_err(|e| py_sqlite_err(py, "count rows of", db, e))
}

/// The status document of the app: `count`, `last_backup_file`, `backup_age_seconds` (the
/// seed's keys) and more. A missing database is reported in it, not raised. The count goes
/// through Python's `sqlite3` (the application's SQLite); the backup directory is listed at
/// the same time with the GIL released.
#[pyfunction]
#[pyo3(signature = (db, backup_dir, table = "events", *, backup_interval = 60, store = None))]
fn status(
    py: Python<'_>,
    db: PathBuf,
    backup_dir: PathBuf,
    table: &str,
    backup_interval: u32,
    store: Option<&Store>,
) -> PyResult<Py<PyAny>> {
    let s = store.map(Store::inner).transpose()?;
    let opts = pra_core::status::Options {
        table: table.to_string(),
        backup_interval: chrono::Duration::seconds(i64::from(backup_interval)),
        ..Default::default()
    };
    pra_core::status::validate_table(table).map_err(PraErr)?;
    let st = blocking(py, move || {
        pra_core::status::status_counted(
            || Python::attach(|py| count_via_python(py, &db, &opts.table)),
            &backup_dir,
            &opts,
            s.as_deref(),
            &SystemClock,
        )
    })?;
    json_of(py, &st)
}

/// Takes a consistent, verified backup of `db` into `backup_dir`. The snapshot is taken with
/// Python's `sqlite3` backup API (the application's SQLite, safe beside the application's own
/// connections); pra then checks, checksums and files it with its manifest.
#[pyfunction]
#[pyo3(name = "backup")]
fn backup_fn(py: Python<'_>, db: PathBuf, backup_dir: PathBuf) -> PraResult<Backup> {
    if !db.is_file() {
        return Err(PraErr(pra_core::Error::NotFound(format!(
            "database {} does not exist",
            db.display()
        ))));
    }
    let source = db.clone();
    Ok(blocking(py, move || {
        backup::create_from(&source, &backup_dir, &SystemClock, |tmp| {
            Python::attach(|py| {
                let take = || -> PyResult<u64> {
                    let src = py_sqlite_connect(py, &db, "ro")?;
                    let dst = py_sqlite_connect(py, tmp, "rwc");
                    let result = dst.and_then(|dst| {
                        let r = src.call_method1("backup", (&dst,));
                        let _ = dst.call_method0("close");
                        r
                    });
                    let pages = src
                        .call_method1("execute", ("PRAGMA page_count",))
                        .and_then(|c| c.call_method0("fetchone"))
                        .and_then(|row| row.get_item(0))
                        .and_then(|v| v.extract::<i64>());
                    let _ = src.call_method0("close");
                    result?;
                    Ok(pages?.max(0) as u64)
                };
                take()
                    .map(|pages| (pages, Method::OnlineBackup))
                    .map_err(|e| py_sqlite_err(py, "back up", &db, e))
            })
        })
    })?
    .into())
}

/// The backups of `backup_dir`, newest first.
#[pyfunction]
fn list_backups(py: Python<'_>, backup_dir: PathBuf) -> PraResult<Vec<Backup>> {
    Ok(blocking(py, move || backup::list(&backup_dir))?
        .into_iter()
        .map(Backup::from)
        .collect())
}

/// Applies a retention policy to `backup_dir` (dry_run: only say what would go). Returns one
/// dict per backup: name, keep, reasons.
#[pyfunction]
#[pyo3(signature = (backup_dir, *, keep_last = None, keep_within = None, keep_hourly = None, keep_daily = None, keep_weekly = None, keep_monthly = None, dry_run = false))]
#[allow(clippy::too_many_arguments)]
fn prune(
    py: Python<'_>,
    backup_dir: PathBuf,
    keep_last: Option<u32>,
    keep_within: Option<chrono::Duration>,
    keep_hourly: Option<u32>,
    keep_daily: Option<u32>,
    keep_weekly: Option<u32>,
    keep_monthly: Option<u32>,
    dry_run: bool,
) -> PyResult<Py<PyAny>> {
    let policy = Policy {
        keep_last,
        keep_within,
        keep_hourly,
        keep_daily,
        keep_weekly,
        keep_monthly,
    };
    let decisions = blocking(py, move || retention::prune(&backup_dir, &policy, dry_run))?;
    let out: Vec<serde_json::Value> = decisions
        .iter()
        .map(|d| serde_json::json!({"name": d.entry.name, "keep": d.keep, "reasons": d.reasons}))
        .collect();
    json_of(py, &out)
}

/// Restores a backup over `db`: the latest, the one `name`d, or the newest `before` a time. With
/// dry_run, returns the per-table preview instead and changes nothing.
#[pyfunction]
#[pyo3(name = "restore", signature = (db, backup_dir, *, name = None, before = None, safety_copy = true, dry_run = false))]
fn restore_fn(
    py: Python<'_>,
    db: PathBuf,
    backup_dir: PathBuf,
    name: Option<String>,
    before: Option<DateTime<Utc>>,
    safety_copy: bool,
    dry_run: bool,
) -> PyResult<Py<PyAny>> {
    let point = match (name, before) {
        (Some(_), Some(_)) => {
            return Err(InvalidArgumentError::new_err(
                "give name or before, not both",
            ));
        }
        (Some(n), None) => RestorePoint::Name(n),
        (None, Some(t)) => RestorePoint::Before(t),
        (None, None) => RestorePoint::Latest,
    };
    if dry_run {
        let p = blocking(py, move || restore::preview(&db, &backup_dir, &point))?;
        return json_of(
            py,
            &serde_json::json!({"backup": p.backup.name, "current_exists": p.current_exists, "tables": p.tables}),
        );
    }
    let r = blocking(py, move || {
        restore::restore(
            &db,
            &backup_dir,
            &point,
            restore::Options { safety_copy },
            &SystemClock,
        )
    })?;
    json_of(py, &r)
}

/// Adds the classes and functions of this module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Backup>()?;
    m.add_function(wrap_pyfunction!(status, m)?)?;
    m.add_function(wrap_pyfunction!(backup_fn, m)?)?;
    m.add_function(wrap_pyfunction!(list_backups, m)?)?;
    m.add_function(wrap_pyfunction!(prune, m)?)?;
    m.add_function(wrap_pyfunction!(restore_fn, m)?)?;
    Ok(())
}
