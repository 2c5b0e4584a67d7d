//! pra-py: the `pra._pra` extension module; the Python package `pra` (python/pra/) re-exports it.
//!
//! Thin: every function converts its arguments, runs pra-core inside [`blocking`] (GIL released),
//! and converts the answer. Errors go through the one `From<PraErr> for PyErr`, which maps each
//! core error kind to its exception class (all subclasses of `pra.PraError`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use pyo3::{IntoPyObjectExt, create_exception};

use pra_core::backup::restore::{self, RestorePoint};
use pra_core::backup::retention::{self, Policy};
use pra_core::backup::{self, BackupEntry, Health, Method};
use pra_core::{
    Actor, Error, ErrorKind, Fence, FencingToken, SiteChange, SiteId, SystemClock,
    Verdict as CoreVerdict,
};

create_exception!(pra, PraError, PyException, "Base class of every pra error.");
create_exception!(
    pra,
    InvalidArgumentError,
    PraError,
    "An argument pra cannot accept (unknown site, bad URL, bad name...)."
);
create_exception!(
    pra,
    NotFoundError,
    PraError,
    "The thing asked for does not exist (database, backup, configuration)."
);
create_exception!(
    pra,
    ConflictError,
    PraError,
    "The record or the plan moved since you read it (stale expected token): reload and retry."
);
create_exception!(
    pra,
    RefusedError,
    PraError,
    "A rule said no (break before make, a plan is running, this site is not active): retrying will not help."
);
create_exception!(
    pra,
    StaleTokenError,
    PraError,
    "A write carried a fencing token lower than one already admitted."
);
create_exception!(
    pra,
    InvalidTransitionError,
    PraError,
    "The plan does not accept that event in its current state."
);
create_exception!(
    pra,
    BusyError,
    PraError,
    "Something else holds the resource (database in use, drain not finished)."
);
create_exception!(
    pra,
    StoreUnavailableError,
    PraError,
    "The store cannot be reached: do not run jobs."
);
create_exception!(
    pra,
    CorruptError,
    PraError,
    "Stored data is damaged (lock file, journal, backup)."
);
create_exception!(
    pra,
    UnsupportedError,
    PraError,
    "Not supported on this store or build."
);
create_exception!(pra, PraIOError, PraError, "An operating-system I/O error.");
create_exception!(pra, InternalError, PraError, "A bug in pra.");
create_exception!(
    pra,
    StandbyError,
    PraError,
    "This site is standby: the guarded block must not run."
);

create_exception!(
    pra,
    RoleLostError,
    StandbyError,
    "The site lost the active role (or the store can no longer vouch for the run) while the guarded block ran: stop now."
);

/// A pra-core error on its way to Python.
pub struct PraErr(Error);

impl From<Error> for PraErr {
    fn from(e: Error) -> Self {
        PraErr(e)
    }
}

impl From<PraErr> for PyErr {
    fn from(PraErr(e): PraErr) -> PyErr {
        let msg = e.to_string();
        match e.kind() {
            ErrorKind::InvalidArgument => InvalidArgumentError::new_err(msg),
            ErrorKind::NotFound => NotFoundError::new_err(msg),
            ErrorKind::Conflict => ConflictError::new_err(msg),
            ErrorKind::Refused => RefusedError::new_err(msg),
            ErrorKind::StaleToken => StaleTokenError::new_err(msg),
            ErrorKind::InvalidTransition => InvalidTransitionError::new_err(msg),
            ErrorKind::Busy => BusyError::new_err(msg),
            ErrorKind::StoreUnavailable => StoreUnavailableError::new_err(msg),
            ErrorKind::Corrupt => CorruptError::new_err(msg),
            ErrorKind::Unsupported => UnsupportedError::new_err(msg),
            ErrorKind::Io => PraIOError::new_err(msg),
            ErrorKind::Internal => InternalError::new_err(msg),
        }
    }
}

type PraResult<T> = Result<T, PraErr>;

/// Runs blocking pra-core work with the GIL released, converting its error.
fn blocking<T: Send>(
    py: Python<'_>,
    f: impl FnOnce() -> pra_core::Result<T> + Send,
) -> PraResult<T> {
    py.detach(f).map_err(PraErr)
}

/// serde_json value -> Python object (dict, list, str, int, float, bool, None); the values of
/// time keys (`at`, `*_at`) that hold RFC 3339 strings become timezone-aware datetimes.
fn to_py(py: Python<'_>, v: &serde_json::Value) -> PyResult<Py<PyAny>> {
    to_py_keyed(py, v, "")
}

fn is_time_key(key: &str) -> bool {
    key == "at" || key.ends_with("_at")
}

fn to_py_keyed(py: Python<'_>, v: &serde_json::Value, key: &str) -> PyResult<Py<PyAny>> {
    if let (true, serde_json::Value::String(s)) = (is_time_key(key), v)
        && let Ok(t) = DateTime::parse_from_rfc3339(s)
    {
        return t.with_timezone(&Utc).into_py_any(py);
    }
    Ok(match v {
        serde_json::Value::Null => py.None(),
        serde_json::Value::Bool(b) => b.into_py_any(py)?,
        serde_json::Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => i.into_py_any(py)?,
            (None, Some(u)) => u.into_py_any(py)?,
            (None, None) => n.as_f64().unwrap_or(f64::NAN).into_py_any(py)?,
        },
        serde_json::Value::String(s) => s.into_py_any(py)?,
        serde_json::Value::Array(a) => {
            let l = PyList::empty(py);
            for x in a {
                l.append(to_py_keyed(py, x, key)?)?;
            }
            l.into_any().unbind()
        }
        serde_json::Value::Object(o) => {
            let d = PyDict::new(py);
            for (k, x) in o {
                d.set_item(k, to_py_keyed(py, x, k)?)?;
            }
            d.into_any().unbind()
        }
    })
}

fn json_of<T: serde::Serialize>(py: Python<'_>, v: &T) -> PyResult<Py<PyAny>> {
    let value = serde_json::to_value(v).map_err(|e| InternalError::new_err(e.to_string()))?;
    to_py(py, &value)
}

/// The active-site record.
#[pyclass(frozen, get_all, module = "pra")]
pub struct ActiveSite {
    /// The active site, or None when no site may run jobs.
    site: Option<String>,
    /// The fencing token.
    token: u64,
    /// When this version was written (timezone-aware, UTC).
    changed_at: DateTime<Utc>,
    /// Who wrote it.
    changed_by: String,
    /// Why.
    reason: String,
}

impl From<pra_core::ActiveSite> for ActiveSite {
    fn from(r: pra_core::ActiveSite) -> Self {
        ActiveSite {
            site: r.site.map(String::from),
            token: r.token.0,
            changed_at: r.changed_at,
            changed_by: r.changed_by,
            reason: r.reason,
        }
    }
}

#[pymethods]
impl ActiveSite {
    fn __repr__(&self) -> String {
        let site = self
            .site
            .as_deref()
            .map_or_else(|| "None".to_string(), |a| format!("'{a}'"));
        format!(
            "ActiveSite(site={site}, token={}, changed_by='{}')",
            self.token, self.changed_by
        )
    }
}

/// The guard's answer: truthy when the site may run jobs.
#[pyclass(frozen, get_all, module = "pra")]
pub struct Verdict {
    /// Whether the site may run jobs.
    may_run: bool,
    /// The token to carry into fenced writes.
    token: u64,
    /// The active site, if any.
    active: Option<String>,
}

impl From<CoreVerdict> for Verdict {
    fn from(v: CoreVerdict) -> Self {
        match v {
            CoreVerdict::Run { token } => Verdict {
                may_run: true,
                token: token.0,
                active: None,
            },
            CoreVerdict::Standby { active, token } => Verdict {
                may_run: false,
                token: token.0,
                active: active.map(String::from),
            },
        }
    }
}

#[pymethods]
impl Verdict {
    fn __bool__(&self) -> bool {
        self.may_run
    }
    fn __repr__(&self) -> String {
        let py_bool = if self.may_run { "True" } else { "False" };
        let active = self
            .active
            .as_deref()
            .map_or_else(|| "None".to_string(), |a| format!("'{a}'"));
        format!(
            "Verdict(may_run={py_bool}, token={}, active={active})",
            self.token
        )
    }
}

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

/// One journal entry.
#[pyclass(frozen, get_all, module = "pra")]
pub struct JournalEntry {
    /// Position, from 1.
    seq: u64,
    /// When (UTC).
    at: DateTime<Utc>,
    /// Who.
    by: String,
    /// Why.
    reason: String,
    /// What happened, as a dict with a "type" key.
    event: Py<PyAny>,
    /// SHA-256 chaining it to the previous entry.
    hash: String,
}

/// A store of the active-site record, opened from a URL (`sqlite://PATH`, `file://PATH`,
/// `etcd://HOST:PORT[,HOST:PORT]/PREFIX`). Safe to share between threads. An etcd store contacts
/// the cluster at its first call; every call waits at most `timeout` seconds (GIL released),
/// then raises `StoreUnavailableError`. A run registered by `Guard` counts as lost when it has
/// not called `heartbeat()` for `lost_after` seconds (on etcd, its lease expires): heartbeat
/// more often than that.
#[pyclass(frozen, module = "pra")]
pub struct Store {
    url: String,
    opts: pra_core::store::OpenOptions,
    handle: ForkSafe,
}

/// The store handle of this process. After `fork()` (gunicorn `--preload`, multiprocessing)
/// the child must not use the parent's handle: its SQLite connection must not cross a fork
/// (<https://sqlite.org/howtocorrupt.html>, 2.6) and its etcd client's threads are not in the
/// child. The child reopens the store at its first call; the parent's handle is left alone
/// (never dropped in the child: its destructor would wait for threads that do not exist
/// there). The lock is stamped with its holder's pid, so a lock a parent thread held at the
/// moment of the fork is recognised as stale in the child instead of hanging it.
struct ForkSafe {
    owner: std::sync::atomic::AtomicU32,
    cell: std::cell::UnsafeCell<(u32, Arc<dyn pra_core::Store>)>,
}

// SAFETY: `cell` is only touched while `owner` holds this process's pid (see `get`).
unsafe impl Sync for ForkSafe {}

impl ForkSafe {
    fn new(store: Arc<dyn pra_core::Store>) -> Self {
        ForkSafe {
            owner: std::sync::atomic::AtomicU32::new(0),
            cell: std::cell::UnsafeCell::new((std::process::id(), store)),
        }
    }

    /// The handle for this process, reopening with `open` after a fork.
    fn get(
        &self,
        open: impl FnOnce() -> pra_core::Result<Arc<dyn pra_core::Store>>,
    ) -> pra_core::Result<Arc<dyn pra_core::Store>> {
        use std::sync::atomic::Ordering::{Acquire, Release};
        let me = std::process::id();
        loop {
            match self.owner.compare_exchange(0, me, Acquire, Acquire) {
                Ok(_) => break,
                // Held at the fork by a thread of the parent: that thread is not here.
                Err(holder) if holder != me => {
                    if self
                        .owner
                        .compare_exchange(holder, me, Acquire, Acquire)
                        .is_ok()
                    {
                        break;
                    }
                }
                Err(_) => std::thread::yield_now(),
            }
        }
        // SAFETY: this thread holds the lock.
        let slot = unsafe { &mut *self.cell.get() };
        let out = if slot.0 == me {
            Ok(slot.1.clone())
        } else {
            match open() {
                Ok(fresh) => {
                    let old = std::mem::replace(slot, (me, fresh.clone()));
                    std::mem::forget(old.1);
                    Ok(fresh)
                }
                Err(e) => Err(e),
            }
        };
        self.owner.store(0, Release);
        out
    }
}

fn actor(by: &str, reason: &str) -> PraResult<Actor> {
    Ok(Actor::new(by, reason)?)
}

impl Store {
    /// This process's handle (reopened after a fork).
    fn inner(&self) -> PraResult<Arc<dyn pra_core::Store>> {
        Ok(self
            .handle
            .get(|| pra_core::store::open_with(&self.url, &self.opts).map(Arc::from))?)
    }

    /// One change of the record, made with the GIL released.
    fn change(&self, py: Python<'_>, change: SiteChange, a: Actor) -> PraResult<ActiveSite> {
        let s = self.inner()?;
        Ok(blocking(py, move || s.change(change, &a))?.into())
    }
}

#[pymethods]
impl Store {
    #[new]
    #[pyo3(signature = (url, *, timeout = 5.0, lost_after = 60.0))]
    fn new(py: Python<'_>, url: String, timeout: f64, lost_after: f64) -> PraResult<Self> {
        let secs = |v: f64, what: &str| {
            std::time::Duration::try_from_secs_f64(v).map_err(|_| {
                pra_core::Error::InvalidArgument(format!(
                    "{what} must be a finite number of seconds >= 0, not {v}"
                ))
            })
        };
        let opts = pra_core::store::OpenOptions {
            timeout: secs(timeout, "timeout")?,
            lost_after: secs(lost_after, "lost_after")?,
            ..Default::default()
        };
        let (u, o) = (url.clone(), opts.clone());
        let inner = blocking(py, move || pra_core::store::open_with(&u, &o))?;
        Ok(Store {
            url: inner.url().to_string(),
            opts,
            handle: ForkSafe::new(Arc::from(inner)),
        })
    }

    /// The URL the store was opened from.
    #[getter]
    fn url(&self) -> String {
        self.url.clone()
    }

    /// The current active-site record.
    fn active(&self, py: Python<'_>) -> PraResult<ActiveSite> {
        let s = self.inner()?;
        Ok(blocking(py, move || s.load())?.into())
    }

    /// Makes `site` active if the record is at `expect_token` and no site is active, once no
    /// run of an older token is alive (the drain of `pra site activate`): waits up to
    /// `drain_timeout` seconds (default: twice `lost_after`, GIL released), then raises
    /// BusyError naming them. `force=True` (with a reason) goes past them, journaled.
    #[pyo3(signature = (site, *, expect_token, by, reason = String::new(), drain_timeout = None, force = false))]
    #[allow(clippy::too_many_arguments)]
    fn activate(
        &self,
        py: Python<'_>,
        site: String,
        expect_token: u64,
        by: String,
        reason: String,
        drain_timeout: Option<f64>,
        force: bool,
    ) -> PraResult<ActiveSite> {
        let a = actor(&by, &reason)?;
        let site = SiteId::new(&site)?;
        let timeout = match drain_timeout {
            Some(t) => std::time::Duration::try_from_secs_f64(t).map_err(|_| {
                pra_core::Error::InvalidArgument(format!(
                    "drain_timeout must be a finite number of seconds >= 0, not {t}"
                ))
            })?,
            None => self.opts.lost_after * 2,
        };
        let opts = pra_core::run::ActivateOptions {
            wait: !timeout.is_zero(),
            timeout,
            poll: std::time::Duration::from_millis(200),
            lost_after: self.opts.lost_after,
            force,
        };
        let s = self.inner()?;
        let (record, _) = blocking(py, move || {
            pra_core::run::activate(
                &*s,
                &SystemClock,
                &site,
                FencingToken(expect_token),
                &a,
                &opts,
            )
        })?;
        Ok(record.into())
    }

    /// Makes no site active if the record is at `expect_token`.
    #[pyo3(signature = (*, expect_token, by, reason = String::new()))]
    fn deactivate(
        &self,
        py: Python<'_>,
        expect_token: u64,
        by: String,
        reason: String,
    ) -> PraResult<ActiveSite> {
        let a = actor(&by, &reason)?;
        let change = SiteChange::Deactivate {
            expect: FencingToken(expect_token),
        };
        self.change(py, change, a)
    }

    /// The audit journal, oldest first.
    fn journal(&self, py: Python<'_>) -> PyResult<Vec<JournalEntry>> {
        let s = self.inner()?;
        let entries = blocking(py, move || s.journal())?;
        entries
            .into_iter()
            .map(|e| {
                Ok(JournalEntry {
                    seq: e.seq,
                    at: e.at,
                    by: e.by,
                    reason: e.reason,
                    event: json_of(py, &e.event)?,
                    hash: e.hash,
                })
            })
            .collect()
    }

    /// Checks the journal's hash chain; returns the number of entries (CorruptError if broken).
    fn verify_journal(&self, py: Python<'_>) -> PraResult<u64> {
        let s = self.inner()?;
        Ok(blocking(py, move || s.verify_journal())?.entries)
    }

    fn __repr__(&self) -> String {
        format!("Store({:?})", self.url)
    }
}

/// The guard of one site: `check()`, or `with Guard(store, site, job=...) as verdict:` to run
/// a block only on the active site, registered as a run (raises StandbyError otherwise, also
/// when a flip wins the race with the registration). While the block runs, a thread
/// heartbeats; `guard.lost` says why the block must stop (the site lost the role, or the store
/// can no longer vouch for the run) and `guard.ensure()` raises RoleLostError then.
#[pyclass(module = "pra")]
pub struct Guard {
    store: Py<Store>,
    site: SiteId,
    job: Option<String>,
    timings: pra_core::run::Timings,
    run: Option<pra_core::run::Registered>,
}

#[pymethods]
impl Guard {
    #[new]
    #[pyo3(signature = (store, site, *, job = None, heartbeat = None))]
    fn new(
        store: Bound<'_, Store>,
        site: &str,
        job: Option<String>,
        heartbeat: Option<f64>,
    ) -> PraResult<Self> {
        let (lost_after, timeout) = (store.get().opts.lost_after, store.get().opts.timeout);
        let heartbeat = heartbeat
            .map(|h| {
                std::time::Duration::try_from_secs_f64(h).map_err(|_| {
                    pra_core::Error::InvalidArgument(format!(
                        "heartbeat must be a finite number of seconds > 0, not {h}"
                    ))
                })
            })
            .transpose()?;
        Ok(Guard {
            store: store.unbind(),
            site: SiteId::new(site)?,
            job,
            timings: pra_core::run::Timings::in_process(lost_after, timeout, heartbeat),
            run: None,
        })
    }

    /// May this site run jobs now? (Raises if the store cannot be read: do not run then.)
    fn check(&self, py: Python<'_>) -> PraResult<Verdict> {
        let (s, site) = (self.store.get().inner()?, self.site.clone());
        Ok(blocking(py, move || pra_core::check(&*s, &site))?.into())
    }

    fn __enter__(&mut self, py: Python<'_>) -> PyResult<Verdict> {
        let job = self.job.clone().ok_or_else(|| {
            InvalidArgumentError::new_err("Guard(..., job=NAME) is needed to register a run")
        })?;
        if self.run.is_some() {
            return Err(InvalidArgumentError::new_err(
                "this guard already runs a block: one `with` at a time",
            ));
        }
        let (s, site, timings) = (self.store.get().inner()?, self.site.clone(), self.timings);
        let started = blocking(py, move || {
            pra_core::run::Registered::start(s, &site, &job, timings)
        })?;
        match started {
            pra_core::run::Started::Admitted(run) => {
                let token = run.token();
                self.run = Some(run);
                Ok(CoreVerdict::Run { token }.into())
            }
            pra_core::run::Started::Standby { active, token } => {
                Err(StandbyError::new_err(format!(
                    "{} is standby (active site {}, token {token}): the block must not run",
                    self.site,
                    active.as_ref().map_or("NONE", SiteId::as_str)
                )))
            }
        }
    }

    /// Why the running block must stop, or None: the site lost the active role, the store
    /// dropped the run's registration, or no heartbeat got through for long enough that a
    /// drain may soon count the run lost.
    #[getter]
    fn lost(&self) -> Option<String> {
        self.run.as_ref().and_then(pra_core::run::Registered::lost)
    }

    /// The token of the running block (carry it into fenced writes), or None.
    #[getter]
    fn token(&self) -> Option<u64> {
        self.run.as_ref().map(|r| r.token().0)
    }

    /// Raises RoleLostError if the running block must stop (see `lost`).
    fn ensure(&self) -> PyResult<()> {
        match self.lost() {
            Some(why) => Err(RoleLostError::new_err(why)),
            None => Ok(()),
        }
    }

    /// Records a heartbeat of the registered run now (a thread already does it every
    /// `heartbeat` seconds).
    fn heartbeat(&self, py: Python<'_>) -> PyResult<()> {
        let id = self.run.as_ref().map(|r| r.id()).ok_or_else(|| {
            InvalidArgumentError::new_err("no run is registered: use `with guard:` first")
        })?;
        let s = self.store.get().inner()?;
        Ok(blocking(py, move || {
            match s.require_registry()?.run_heartbeat(id)? {
                pra_core::store::Heartbeat::Alive => Ok(()),
                pra_core::store::Heartbeat::Expired => Err(pra_core::Error::NotFound(format!(
                    "run {} is no longer registered in {} (counted lost, or its lease expired)",
                    id.0,
                    s.url()
                ))),
            }
        })?)
    }

    fn __exit__(
        &mut self,
        py: Python<'_>,
        exc_type: Option<Bound<'_, PyAny>>,
        _exc: Option<Bound<'_, PyAny>>,
        _tb: Option<Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        if let Some(run) = self.run.take() {
            let lost = run.lost();
            let (code, outcome) = match (exc_type.is_some(), lost) {
                (_, Some(why)) => (Some(1), format!("revoked: {why}")),
                (true, None) => (Some(1), "raised".to_string()),
                (false, None) => (Some(0), "exited 0".to_string()),
            };
            blocking(py, move || run.finish(code, &outcome))?;
        }
        Ok(false)
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

/// Admits `token` at the fence of the app's own database, through the app's `sqlite3.Connection`
/// and inside its current transaction: raises StaleTokenError if a higher token was admitted.
#[pyfunction]
fn fence_admit(conn: &Bound<'_, PyAny>, token: u64) -> PyResult<u64> {
    // The check and the record must be one transaction with the caller's writes. Under Python's
    // default isolation level no transaction is open before the first INSERT, so the read
    // below would stand alone: open one (taking the write lock first) when there is none.
    let opened = !conn.getattr("in_transaction")?.extract::<bool>()?;
    if opened {
        conn.call_method1("execute", ("BEGIN IMMEDIATE",))?;
    }
    let admitted = fence_admit_in(conn, token);
    if opened && admitted.is_err() {
        // Refused in the transaction we opened: do not leave it holding the write lock.
        let _ = conn.call_method1("execute", ("ROLLBACK",));
    }
    admitted
}

fn fence_admit_in(conn: &Bound<'_, PyAny>, token: u64) -> PyResult<u64> {
    conn.call_method1("execute", (Fence::SQL_CREATE,))?;
    let row = conn
        .call_method1("execute", (Fence::SQL_HIGHEST,))?
        .call_method0("fetchone")?;
    let highest: u64 = if row.is_none() {
        0
    } else {
        row.get_item(0)?.extract::<i64>()?.max(0) as u64
    };
    let raw = Fence::decide(FencingToken(token), FencingToken(highest)).map_err(PraErr)?;
    conn.call_method1("execute", (Fence::SQL_RECORD, (raw,)))?;
    Ok(token)
}

/// The `pra._pra` module.
#[pymodule]
fn _pra(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("__version__", pra_core::VERSION)?;
    for (name, ty) in [
        ("PraError", py.get_type::<PraError>()),
        (
            "InvalidArgumentError",
            py.get_type::<InvalidArgumentError>(),
        ),
        ("NotFoundError", py.get_type::<NotFoundError>()),
        ("ConflictError", py.get_type::<ConflictError>()),
        ("RefusedError", py.get_type::<RefusedError>()),
        ("StaleTokenError", py.get_type::<StaleTokenError>()),
        (
            "InvalidTransitionError",
            py.get_type::<InvalidTransitionError>(),
        ),
        ("BusyError", py.get_type::<BusyError>()),
        (
            "StoreUnavailableError",
            py.get_type::<StoreUnavailableError>(),
        ),
        ("CorruptError", py.get_type::<CorruptError>()),
        ("UnsupportedError", py.get_type::<UnsupportedError>()),
        ("PraIOError", py.get_type::<PraIOError>()),
        ("InternalError", py.get_type::<InternalError>()),
        ("StandbyError", py.get_type::<StandbyError>()),
        ("RoleLostError", py.get_type::<RoleLostError>()),
    ] {
        m.add(name, ty)?;
    }
    m.add_class::<ActiveSite>()?;
    m.add_class::<Verdict>()?;
    m.add_class::<Backup>()?;
    m.add_class::<JournalEntry>()?;
    m.add_class::<Store>()?;
    m.add_class::<Guard>()?;
    m.add_function(wrap_pyfunction!(status, m)?)?;
    m.add_function(wrap_pyfunction!(backup_fn, m)?)?;
    m.add_function(wrap_pyfunction!(list_backups, m)?)?;
    m.add_function(wrap_pyfunction!(prune, m)?)?;
    m.add_function(wrap_pyfunction!(restore_fn, m)?)?;
    m.add_function(wrap_pyfunction!(fence_admit, m)?)?;
    Ok(())
}
