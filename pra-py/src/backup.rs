//! Backups from Python: `backup` (the snapshot through Python's own `sqlite3`), `list_backups`
//! (`Backup`), `prune` (`PruneDecision`), `restore` (`RestoreReport`, or `RestorePreview` on a
//! dry run) and `status` (`Status`, the seed's `/status` document).

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use pyo3::IntoPyObjectExt;
use pyo3::prelude::*;

use pra_core::SystemClock;
use pra_core::backup::restore::{self, RestorePoint};
use pra_core::backup::retention::{self, Policy};
use pra_core::backup::{self, BackupEntry, Health, Method};

use crate::convert::{json_of, serde_name};
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
    /// The manifest's checksum, `algorithm:hex` (`blake3:...`; `sha256:...` for format 1
    /// manifests).
    checksum: Option<String>,
    /// SHA-256 from a format 1 manifest (pra now writes BLAKE3: see `checksum`).
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
            checksum: e
                .manifest
                .as_ref()
                .and_then(|m| m.checksum())
                .map(|c| c.to_string()),
            sha256: e.manifest.as_ref().and_then(|m| m.sha256.clone()),
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
    let sql = backup::count_sql(table);
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

/// The status of the app: `count`, `last_backup_file`, `backup_age_seconds` (the seed's keys)
/// and more; `to_dict()` is the JSON document. A missing database is reported in it, not raised. The count goes
/// through Python's `sqlite3` (the application's SQLite); the backup directory is listed at
/// the same time with the GIL released.
#[pyfunction]
// The defaults are literals so that Python shows them (and stubtest checks the stubs against
// them); tests/test_pra.py checks them against pra_core::defaults.
#[pyo3(signature = (db, backup_dir, table = "events", *, backup_interval = 60, store = None))]
fn status(
    py: Python<'_>,
    db: PathBuf,
    backup_dir: PathBuf,
    table: &str,
    backup_interval: u32,
    store: Option<&Store>,
) -> PyResult<Status> {
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
    Ok(Status(st))
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
/// `PruneDecision` per backup: name, keep, reasons.
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
) -> PraResult<Vec<PruneDecision>> {
    let policy = Policy {
        keep_last,
        keep_within,
        keep_hourly,
        keep_daily,
        keep_weekly,
        keep_monthly,
    };
    let decisions = blocking(py, move || retention::prune(&backup_dir, &policy, dry_run))?;
    Ok(decisions.into_iter().map(PruneDecision).collect())
}

/// Restores a backup over `db`: the latest, the one `name`d, or the newest `before` a time, and
/// returns a `RestoreReport`. With dry_run, returns a `RestorePreview` instead and changes
/// nothing.
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
        return RestorePreview(p).into_py_any(py);
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
    RestoreReport(r).into_py_any(py)
}

/// The status of the app (`pra.status`). Its attributes are the keys of the status document,
/// which `to_dict()` returns: the JSON of `GET /status` and of `pra status --json`.
#[pyclass(frozen, module = "pra")]
pub struct Status(pra_core::status::Status);

#[pymethods]
impl Status {
    /// Rows in the counted table (None if the database is unavailable).
    #[getter]
    fn count(&self) -> Option<u64> {
        self.0.count
    }
    /// File name of the newest verified backup.
    #[getter]
    fn last_backup_file(&self) -> Option<String> {
        self.0.last_backup_file.clone()
    }
    /// Its age in seconds.
    #[getter]
    fn backup_age_seconds(&self) -> Option<i64> {
        self.0.backup_age_seconds
    }
    /// Backup-named files in the backup directory (usable or not).
    #[getter]
    fn backup_count(&self) -> usize {
        self.0.backup_count
    }
    /// Freshness of the newest verified backup: "ok", "warn", "critical" or "none".
    #[getter]
    fn backup_state(&self) -> PyResult<String> {
        serde_name(&self.0.backup_state)
    }
    /// Whether the database could be read.
    #[getter]
    fn database_ok(&self) -> bool {
        self.0.database_ok
    }
    /// The active site ("none" when no site is), when a store was given and could be read.
    #[getter]
    fn active_site(&self) -> Option<String> {
        self.0.active_site.clone()
    }
    /// Its fencing token.
    #[getter]
    fn token(&self) -> Option<u64> {
        self.0.token
    }
    /// Everything that is wrong, in words.
    #[getter]
    fn problems(&self) -> Vec<String> {
        self.0.problems.clone()
    }
    /// The status document: the seed's keys first (`count`, `last_backup_file`,
    /// `backup_age_seconds`), then the others, in this order.
    fn to_dict(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        json_of(py, &self.0)
    }
    fn __repr__(&self) -> PyResult<String> {
        Ok(format!(
            "Status(count={}, last_backup_file={}, backup_age_seconds={}, backup_state='{}', database_ok={})",
            py_opt(self.0.count),
            py_opt(self.0.last_backup_file.as_ref().map(|f| format!("'{f}'"))),
            py_opt(self.0.backup_age_seconds),
            self.backup_state()?,
            if self.0.database_ok { "True" } else { "False" },
        ))
    }
}

/// What retention decided for one backup (`pra.prune`).
#[pyclass(frozen, module = "pra")]
pub struct PruneDecision(retention::Decision);

#[pymethods]
impl PruneDecision {
    /// The backup's file name.
    #[getter]
    fn name(&self) -> String {
        self.0.entry.name.clone()
    }
    /// Whether it stays.
    #[getter]
    fn keep(&self) -> bool {
        self.0.keep
    }
    /// The rules that keep it (empty when it goes).
    #[getter]
    fn reasons(&self) -> Vec<String> {
        self.0.reasons.clone()
    }
    /// `{"name", "keep", "reasons"}`.
    fn to_dict(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let d = &self.0;
        json_of(
            py,
            &serde_json::json!({"name": d.entry.name, "keep": d.keep, "reasons": d.reasons}),
        )
    }
    fn __repr__(&self) -> String {
        let keep = if self.0.keep { "True" } else { "False" };
        format!(
            "PruneDecision('{}', keep={keep}, reasons={:?})",
            self.0.entry.name, self.0.reasons
        )
    }
}

/// What a restore did (`pra.restore`).
#[pyclass(frozen, module = "pra")]
pub struct RestoreReport(restore::Report);

#[pymethods]
impl RestoreReport {
    /// The backup restored (its file name).
    #[getter]
    fn backup(&self) -> String {
        self.0.backup.clone()
    }
    /// Where the previous database was kept, if it existed and a safety copy was asked for.
    #[getter]
    fn safety_copy(&self) -> Option<String> {
        self.0
            .safety_copy
            .as_ref()
            .map(|p| p.to_string_lossy().into_owned())
    }
    /// Whether a database was replaced (False: restored where it was lost).
    #[getter]
    fn replaced(&self) -> bool {
        self.0.replaced
    }
    /// Rows per table in the restored database.
    #[getter]
    fn tables(&self) -> std::collections::BTreeMap<String, u64> {
        self.0.tables.clone()
    }
    /// `{"backup", "safety_copy", "replaced", "tables"}`.
    fn to_dict(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        json_of(py, &self.0)
    }
    fn __repr__(&self) -> String {
        let replaced = if self.0.replaced { "True" } else { "False" };
        format!(
            "RestoreReport('{}', replaced={replaced}, tables={:?})",
            self.0.backup, self.0.tables
        )
    }
}

/// What a restore would change (`pra.restore(..., dry_run=True)`).
#[pyclass(frozen, module = "pra")]
pub struct RestorePreview(restore::Preview);

#[pymethods]
impl RestorePreview {
    /// The backup that would be restored (its file name).
    #[getter]
    fn backup(&self) -> String {
        self.0.backup.name.clone()
    }
    /// Whether a database exists now.
    #[getter]
    fn current_exists(&self) -> bool {
        self.0.current_exists
    }
    /// Per table, side by side: `{"table", "current", "backup"}` (row counts; None where the
    /// table or the database is missing).
    #[getter]
    fn tables(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        json_of(py, &self.0.tables)
    }
    /// `{"backup", "current_exists", "tables"}`.
    fn to_dict(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let p = &self.0;
        json_of(
            py,
            &serde_json::json!({"backup": p.backup.name, "current_exists": p.current_exists, "tables": p.tables}),
        )
    }
    fn __repr__(&self) -> String {
        let exists = if self.0.current_exists {
            "True"
        } else {
            "False"
        };
        format!(
            "RestorePreview('{}', current_exists={exists})",
            self.0.backup.name
        )
    }
}

/// `None` or the value, as Python prints it.
fn py_opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "None".to_string(), |v| v.to_string())
}

/// Adds the classes and functions of this module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Backup>()?;
    m.add_class::<Status>()?;
    m.add_class::<PruneDecision>()?;
    m.add_class::<RestoreReport>()?;
    m.add_class::<RestorePreview>()?;
    m.add_function(wrap_pyfunction!(status, m)?)?;
    m.add_function(wrap_pyfunction!(backup_fn, m)?)?;
    m.add_function(wrap_pyfunction!(list_backups, m)?)?;
    m.add_function(wrap_pyfunction!(prune, m)?)?;
    m.add_function(wrap_pyfunction!(restore_fn, m)?)?;
    Ok(())
}
