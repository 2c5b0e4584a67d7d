//! The active-site record from Python: `Store` (opened from a URL, reopened after a fork), its
//! record and journal (`ActiveSite`, `JournalEntry`), `Guard` (the check, and a `with` block
//! registered as a run) with its `Verdict`, and `fence_admit` in the app's own transaction.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use pyo3::prelude::*;

use pra_core::{
    Actor, Fence, FencingToken, SiteChange, SiteId, SystemClock, Verdict as CoreVerdict,
};

use crate::convert::{json_of, seconds};
use crate::errors::{
    InvalidArgumentError, PraErr, PraResult, RoleLostError, StandbyError, blocking,
};

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
/// more often than that. `etcds://` (TLS) stores and etcd users take the CA, client
/// certificate, user and password from the `PRA_ETCD_*` environment variables, read when the
/// store is opened (README, Security).
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
    pub(crate) fn inner(&self) -> PraResult<Arc<dyn pra_core::Store>> {
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
    // The defaults are literals so that Python shows them (and stubtest checks the stubs against
    // them); tests/test_pra.py checks them against pra_core::defaults.
    #[pyo3(signature = (url, *, timeout = 5.0, lost_after = 60.0))]
    fn new(py: Python<'_>, url: String, timeout: f64, lost_after: f64) -> PraResult<Self> {
        let opts = pra_core::store::OpenOptions {
            timeout: seconds(timeout, "timeout", ">= 0")?,
            lost_after: seconds(lost_after, "lost_after", ">= 0")?,
            // etcds:// stores: the CA, client certificate and credentials from PRA_ETCD_*.
            etcd: pra_core::store::EtcdSecurity::default().with_env()?,
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
        let site = pra_core::Topology::from_env()?.site(&site)?;
        let timeout = match drain_timeout {
            Some(t) => seconds(t, "drain_timeout", ">= 0")?,
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
            .map(|h| seconds(h, "heartbeat", "> 0"))
            .transpose()?;
        Ok(Guard {
            store: store.unbind(),
            site: pra_core::Topology::from_env()?.site(site)?,
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

/// `pra follow` inside a long-running worker: `may_work()` before each unit of work says
/// whether this site holds the role now. While it does, the follower holds a registered run
/// (a thread heartbeats, so a flip's drain waits for it); once the role is lost, or the store
/// can no longer vouch for the run, it records the run's end and says False; while the site is
/// standby or the store cannot be read it says False, reading the record at most once per
/// `poll` seconds (the heartbeat interval by default), and registers a new run under the new
/// token when the site is active again. `wait(timeout)` blocks until it may work. Leaving a
/// `with` block (or `release()`) records the end of the run it holds.
#[pyclass(module = "pra")]
pub struct Follower {
    store: Py<Store>,
    inner: pra_core::run::Follower,
}

#[pymethods]
impl Follower {
    #[new]
    #[pyo3(signature = (store, site, *, job, heartbeat = None, poll = None))]
    fn new(
        store: Bound<'_, Store>,
        site: &str,
        job: String,
        heartbeat: Option<f64>,
        poll: Option<f64>,
    ) -> PraResult<Self> {
        let (lost_after, timeout) = (store.get().opts.lost_after, store.get().opts.timeout);
        let heartbeat = heartbeat
            .map(|h| seconds(h, "heartbeat", "> 0"))
            .transpose()?;
        let poll = poll.map(|p| seconds(p, "poll", ">= 0")).transpose()?;
        let timings = pra_core::run::Timings::in_process(lost_after, timeout, heartbeat);
        let inner = pra_core::run::Follower::new(
            store.get().inner()?,
            pra_core::Topology::from_env()?.site(site)?,
            &job,
            timings,
            poll,
        )?;
        Ok(Follower {
            store: store.unbind(),
            inner,
        })
    }

    /// True if this site holds the role and a run is registered: do one unit of work (with
    /// `token`), then ask again.
    fn may_work(&mut self, py: Python<'_>) -> PraResult<bool> {
        let inner = &mut self.inner;
        blocking(py, move || inner.may_work())
    }

    /// Blocks until `may_work()` is True (returns True), or `timeout` seconds have passed
    /// (returns False). The GIL is released while it waits; signals (Ctrl-C) are handled.
    #[pyo3(signature = (timeout = None))]
    fn wait(&mut self, py: Python<'_>, timeout: Option<f64>) -> PyResult<bool> {
        let timeout = timeout
            .map(|t| seconds(t, "timeout", ">= 0"))
            .transpose()
            .map_err(PraErr)?;
        let start = std::time::Instant::now();
        loop {
            if self.may_work(py)? {
                return Ok(true);
            }
            if timeout.is_some_and(|t| start.elapsed() >= t) {
                return Ok(false);
            }
            py.detach(|| std::thread::sleep(std::time::Duration::from_millis(50)));
            py.check_signals()?;
        }
    }

    /// The token of the run held now (carry it into fenced writes), or None.
    #[getter]
    fn token(&self) -> Option<u64> {
        self.inner.token().map(|t| t.0)
    }

    /// Why the run held now must stop (the next `may_work()` says False), or None.
    #[getter]
    fn lost(&self) -> Option<String> {
        self.inner.lost()
    }

    /// Records the end of the run held now, if any ("stopped").
    fn release(&mut self, py: Python<'_>) -> PraResult<()> {
        let inner = &mut self.inner;
        blocking(py, move || inner.release("stopped"))
    }

    fn __enter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    fn __exit__(
        &mut self,
        py: Python<'_>,
        _exc_type: Option<Bound<'_, PyAny>>,
        _exc: Option<Bound<'_, PyAny>>,
        _tb: Option<Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        self.release(py)?;
        Ok(false)
    }

    fn __repr__(&self) -> String {
        format!(
            "Follower(store={:?}, token={})",
            self.store.get().url,
            self.inner
                .token()
                .map_or("None".into(), |t| t.0.to_string())
        )
    }
}

/// Admits `token` at the fence of the app's own database, through the app's connection and
/// inside its current transaction: raises StaleTokenError if a higher token was admitted. An
/// `sqlite3.Connection` keeps the fence in a table of that database; a PostgreSQL or MySQL
/// connection calls the fence installed there (`fence_install`, see crate::dbfence).
#[pyfunction]
fn fence_admit(conn: &Bound<'_, PyAny>, token: u64) -> PyResult<u64> {
    if let Some(dialect) = crate::dbfence::dialect_of(conn)? {
        return crate::dbfence::admit(conn, dialect, token);
    }
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

/// Adds the classes and functions of this module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<ActiveSite>()?;
    m.add_class::<Verdict>()?;
    m.add_class::<JournalEntry>()?;
    m.add_class::<Store>()?;
    m.add_class::<Guard>()?;
    m.add_class::<Follower>()?;
    m.add_function(wrap_pyfunction!(fence_admit, m)?)?;
    Ok(())
}
