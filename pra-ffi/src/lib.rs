//! pra-ffi (Rust crate `pra_ffi`): the C ABI over pra-core (`libpra.so` / `libpra.a`, header
//! `include/pra.h`).
//!
//! Conventions (after rustls-ffi): opaque handles with `pra_<type>_new/open` and `_free` pairs
//! (`_free(NULL)` is a no-op); every function returns a [`pra_result`] and writes its outputs to
//! trailing out-parameters only on success; the message of the last failure on the calling thread
//! is [`pra_last_error_message`]; no panic crosses the boundary (every body runs inside
//! `ffi_boundary!`, a panic becomes `PRA_RESULT_PANIC`); each fallible call also has an `_e` form
//! writing its failure to a caller-owned `pra_error` instead (the `errors` module); a string handed to C has its free
//! function (`pra_string_free`).
#![allow(non_camel_case_types)]

mod errors;
pub use errors::*;

use std::cell::RefCell;
use std::ffi::{CStr, CString, c_char};
use std::path::PathBuf;
use std::ptr;

use pra_core::{
    Actor, Error, ErrorKind, FencingToken, SiteChange, SiteId, Store, SystemClock, Verdict,
};

/// The result of every pra function. Numbers are part of the ABI: never reuse or renumber one.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum pra_result {
    /// Success (for `pra_guard_check`: this site may run jobs).
    Ok = 0,
    /// `pra_guard_check`: this site is standby and must not run jobs. Not an error.
    Standby = 1,
    /// An argument is NULL, not UTF-8, or invalid (unknown site, bad URL, bad name...).
    InvalidArgument = 100,
    /// The thing asked for does not exist (database, backup).
    NotFound = 101,
    /// Compare-and-swap lost (stale expected token, or the plan changed since it was loaded):
    /// reload and retry. (Earlier builds also returned it for a rule's refusal: now `Refused`.)
    Conflict = 102,
    /// A write carried a fencing token lower than one already admitted.
    StaleToken = 103,
    /// The plan does not accept that event in its current state.
    InvalidTransition = 104,
    /// Something else holds the resource (locked database, database in use).
    Busy = 105,
    /// The store cannot be reached or opened: do not run jobs.
    StoreUnavailable = 106,
    /// Stored data is damaged (lock file, journal, backup).
    Corrupt = 107,
    /// Not supported on this store or build.
    Unsupported = 108,
    /// An operating-system I/O error.
    Io = 109,
    /// A bug in pra.
    Internal = 110,
    /// A panic was caught at the boundary (a bug in pra); the call had no effect on C memory.
    Panic = 111,
    /// A rule said no (break before make, a plan is running, this site is not active):
    /// retrying the same call will not help.
    Refused = 112,
}

/// The one mapping from pra-core's errors to result codes.
fn map_error(e: &Error) -> pra_result {
    match e.kind() {
        ErrorKind::InvalidArgument => pra_result::InvalidArgument,
        ErrorKind::NotFound => pra_result::NotFound,
        ErrorKind::Conflict => pra_result::Conflict,
        ErrorKind::StaleToken => pra_result::StaleToken,
        ErrorKind::InvalidTransition => pra_result::InvalidTransition,
        ErrorKind::Busy => pra_result::Busy,
        ErrorKind::StoreUnavailable => pra_result::StoreUnavailable,
        ErrorKind::Corrupt => pra_result::Corrupt,
        ErrorKind::Unsupported => pra_result::Unsupported,
        ErrorKind::Io => pra_result::Io,
        ErrorKind::Internal => pra_result::Internal,
        ErrorKind::Refused => pra_result::Refused,
    }
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_last_error(msg: &str) {
    let c = CString::new(msg.replace('\0', "\\0")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = c);
}

fn fail(e: Error) -> pra_result {
    set_last_error(&e.to_string());
    map_error(&e)
}

/// Runs `$body` (which evaluates to `Result<pra_result, Error>`), turning errors into result codes
/// with their message, and panics into `Panic`.
macro_rules! ffi_boundary {
    ($body:block) => {{
        set_last_error("");
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(
            || -> Result<pra_result, Error> { $body },
        )) {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => fail(e),
            Err(p) => {
                let what = p
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| p.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                set_last_error(&format!("internal panic (a bug in pra): {what}"));
                pra_result::Panic
            }
        }
    }};
}

/// A `&str` from a C string, or `InvalidArgument` naming the parameter if NULL or not UTF-8.
///
/// # Safety
/// `p` is NULL or points to a NUL-terminated string valid for the call.
unsafe fn arg<'a>(p: *const c_char, name: &str) -> Result<&'a str, Error> {
    if p.is_null() {
        return Err(Error::InvalidArgument(format!("{name} is NULL")));
    }
    // SAFETY: non-NULL and NUL-terminated per the caller's contract.
    unsafe { CStr::from_ptr(p) }
        .to_str()
        .map_err(|_| Error::InvalidArgument(format!("{name} is not valid UTF-8")))
}

fn null_out(name: &str) -> Error {
    Error::InvalidArgument(format!("{name} (the output pointer) is NULL"))
}

/// A store of the active-site record. Opaque; safe to use from several threads at once.
pub struct pra_store {
    inner: std::sync::Arc<dyn Store>,
    timings: pra_core::run::Timings,
}

/// Size of the site buffers: a site name is at most 32 bytes, plus the NUL.
pub const PRA_SITE_MAX: usize = 33;

/// The guard's answer for one site.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct pra_verdict {
    /// True when the site may run jobs.
    pub may_run: bool,
    /// The record's fencing token (carry it into fenced writes when `may_run`).
    pub token: u64,
    /// The active site, NUL-terminated; empty when no site is active.
    pub active_site: [c_char; PRA_SITE_MAX],
}

/// The active-site record.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct pra_record {
    /// The active site, NUL-terminated; empty when no site is active.
    pub site: [c_char; PRA_SITE_MAX],
    /// The fencing token.
    pub token: u64,
    /// When this version was written, in microseconds since the Unix epoch (UTC).
    pub changed_at_us: i64,
    /// Who wrote it, NUL-terminated (truncated at a character boundary if longer).
    pub changed_by: [c_char; 513],
    /// Why, NUL-terminated (truncated at a character boundary if longer).
    pub reason: [c_char; 4097],
}

/// Copies `s` into `buf` as a NUL-terminated string, truncating at a UTF-8 character boundary so
/// that it never writes past `buf`.
fn fill<const N: usize>(buf: &mut [c_char; N], s: &str) {
    let mut end = s.len().min(N - 1);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    for (d, b) in buf.iter_mut().zip(&s.as_bytes()[..end]) {
        *d = *b as c_char;
    }
    buf[end] = 0;
}

fn site_buf(site: Option<&SiteId>) -> [c_char; PRA_SITE_MAX] {
    let mut b = [0; PRA_SITE_MAX];
    fill(&mut b, site.map_or("", SiteId::as_str));
    b
}

fn record_of(r: &pra_core::ActiveSite) -> pra_record {
    let mut out = pra_record {
        site: site_buf(r.site.as_ref()),
        token: r.token.0,
        changed_at_us: r.changed_at.timestamp_micros(),
        changed_by: [0; 513],
        reason: [0; 4097],
    };
    fill(&mut out.changed_by, &r.changed_by);
    fill(&mut out.reason, &r.reason);
    out
}

/// The version of libpra ("0.1.0"), a static NUL-terminated string: never free it.
#[unsafe(no_mangle)]
pub extern "C" fn pra_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// The message of the last failed call on this thread ("" if the last call succeeded). Valid
/// until the next pra call on the same thread; do not free it.
#[unsafe(no_mangle)]
pub extern "C" fn pra_last_error_message() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

/// A static name for a result code ("PRA_RESULT_CONFLICT"...); "PRA_RESULT_UNKNOWN" for a number
/// that is not one. Never free it.
#[unsafe(no_mangle)]
pub extern "C" fn pra_result_name(result: u32) -> *const c_char {
    let name: &'static CStr = match result {
        0 => c"PRA_RESULT_OK",
        1 => c"PRA_RESULT_STANDBY",
        100 => c"PRA_RESULT_INVALID_ARGUMENT",
        101 => c"PRA_RESULT_NOT_FOUND",
        102 => c"PRA_RESULT_CONFLICT",
        103 => c"PRA_RESULT_STALE_TOKEN",
        104 => c"PRA_RESULT_INVALID_TRANSITION",
        105 => c"PRA_RESULT_BUSY",
        106 => c"PRA_RESULT_STORE_UNAVAILABLE",
        107 => c"PRA_RESULT_CORRUPT",
        108 => c"PRA_RESULT_UNSUPPORTED",
        109 => c"PRA_RESULT_IO",
        110 => c"PRA_RESULT_INTERNAL",
        111 => c"PRA_RESULT_PANIC",
        112 => c"PRA_RESULT_REFUSED",
        _ => c"PRA_RESULT_UNKNOWN",
    };
    name.as_ptr()
}

/// Opens the store at `url` (`sqlite:///var/lib/pra/state.db`, `file:///etc/app/pra-status.lock`,
/// `etcd://host:2379,host2:2379/prefix`, `etcds://...`). On success `*out` receives a new handle, to be released
/// with `pra_store_free`; on failure `*out` is left untouched. Opening an etcd store does not
/// contact the cluster: an unreachable one shows at the first call, as
/// `PRA_RESULT_STORE_UNAVAILABLE` after at most 5 seconds (and `pra_guard_check` denies). As
/// `pra_store_open_with(url, 5000, 60, out)`. `etcds://` (TLS) and etcd users take the CA,
/// client certificate, user and password from `PRA_ETCD_CA_FILE`, `PRA_ETCD_CERT_FILE`,
/// `PRA_ETCD_KEY_FILE`, `PRA_ETCD_USER`, `PRA_ETCD_PASSWORD_FILE` (or `PRA_ETCD_PASSWORD`);
/// with a user, opening authenticates (refused credentials fail here).
///
/// # Safety
/// `url` is NULL or a NUL-terminated string; `out` is NULL or valid for writing a pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pra_store_open(
    url: *const c_char,
    out: *mut *mut pra_store,
) -> pra_result {
    // SAFETY: same contract.
    unsafe { pra_store_open_with(url, 5000, 60, out) }
}

/// Opens the store at `url` like `pra_store_open`, with the deadline of each call to a network
/// store (`timeout_ms`, at least 1) and the time after which a silent run counts as lost
/// (`lost_after_s`, at least 1; on etcd, the TTL of each run's lease). Zero is
/// `PRA_RESULT_INVALID_ARGUMENT`.
///
/// # Safety
/// As for `pra_store_open`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pra_store_open_with(
    url: *const c_char,
    timeout_ms: u32,
    lost_after_s: u32,
    out: *mut *mut pra_store,
) -> pra_result {
    ffi_boundary!({
        // SAFETY: per this function's contract.
        let url = unsafe { arg(url, "url") }?;
        if out.is_null() {
            return Err(null_out("out"));
        }
        let opts = pra_core::store::OpenOptions {
            timeout: std::time::Duration::from_millis(u64::from(timeout_ms)),
            lost_after: std::time::Duration::from_secs(u64::from(lost_after_s)),
            // etcds:// stores: the CA, client certificate and credentials from PRA_ETCD_*.
            etcd: pra_core::store::EtcdSecurity::default().with_env()?,
            ..Default::default()
        };
        let store = pra_core::store::open_with(url, &opts)?;
        let timings = pra_core::run::Timings::in_process(opts.lost_after, opts.timeout, None);
        let handle = Box::into_raw(Box::new(pra_store {
            inner: std::sync::Arc::from(store),
            timings,
        }));
        // SAFETY: `out` is non-NULL and valid for writes per the contract.
        unsafe { *out = handle };
        Ok(pra_result::Ok)
    })
}

/// A run of a job registered from inside the calling process (the C counterpart of Python's
/// `pra.Guard`): a thread heartbeats while it lives. Opaque; from `pra_run_start`, released by
/// `pra_run_finish` or `pra_run_free`.
pub struct pra_run {
    inner: Option<pra_core::run::Registered>,
}

/// Registers a run of `job` on `site` if, and only if, `site` is the active site — the check
/// and the registration are one atomic step. `PRA_RESULT_OK`: `*out` is a new run handle (its
/// token from `pra_run_token`); `PRA_RESULT_STANDBY`: the job must not run (also when a flip
/// won the race with the registration), `*out` untouched. Any other result: do not run.
///
/// A thread heartbeats every lost_after/6 (at most 10 s) until the run is finished or freed.
/// The handle keeps its own reference to the store: the store handle may be freed first.
///
/// # Safety
/// `store` is NULL or a live handle; `site` and `job` are NULL or NUL-terminated strings; `out`
/// is NULL or valid for writing a pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pra_run_start(
    store: *const pra_store,
    site: *const c_char,
    job: *const c_char,
    out: *mut *mut pra_run,
) -> pra_result {
    ffi_boundary!({
        // SAFETY: per this function's contract.
        let (st, site, job) = unsafe {
            (
                store
                    .as_ref()
                    .ok_or_else(|| Error::InvalidArgument("store is NULL".into()))?,
                arg(site, "site")?,
                arg(job, "job")?,
            )
        };
        if out.is_null() {
            return Err(null_out("out"));
        }
        let site = pra_core::Topology::from_env()?.site(site)?;
        match pra_core::run::Registered::start(st.inner.clone(), &site, job, st.timings)? {
            pra_core::run::Started::Admitted(run) => {
                let handle = Box::into_raw(Box::new(pra_run { inner: Some(run) }));
                // SAFETY: non-NULL and valid for writes per the contract.
                unsafe { *out = handle };
                Ok(pra_result::Ok)
            }
            pra_core::run::Started::Standby { active, token } => {
                set_last_error(&format!(
                    "{site} is standby (active site {}, token {token})",
                    active.as_ref().map_or("NONE", SiteId::as_str)
                ));
                Ok(pra_result::Standby)
            }
        }
    })
}

/// # Safety
/// `run` is NULL or a live handle.
unsafe fn run_ref<'a>(run: *const pra_run) -> Result<&'a pra_core::run::Registered, Error> {
    // SAFETY: non-NULL handles are live per the caller's contract.
    unsafe { run.as_ref() }
        .and_then(|r| r.inner.as_ref())
        .ok_or_else(|| Error::InvalidArgument("run is NULL".into()))
}

/// The fencing token the run holds (0 for NULL): carry it into every fenced write.
///
/// # Safety
/// `run` is NULL or a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pra_run_token(run: *const pra_run) -> u64 {
    // SAFETY: per this function's contract.
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        unsafe { run_ref(run) }.map_or(0, |r| r.token().0)
    }))
    .unwrap_or(0)
}

/// May the run go on? `PRA_RESULT_OK`: yes. `PRA_RESULT_STANDBY`: stop now — the site lost the
/// active role, the store dropped the registration, or no heartbeat got through for long
/// enough that a drain may soon count the run lost (`pra_last_error_message` says which).
///
/// # Safety
/// `run` is NULL or a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pra_run_check(run: *const pra_run) -> pra_result {
    ffi_boundary!({
        // SAFETY: per this function's contract.
        let run = unsafe { run_ref(run)? };
        Ok(match run.lost() {
            Some(why) => {
                set_last_error(&why);
                pra_result::Standby
            }
            None => pra_result::Ok,
        })
    })
}

/// Records the end of the run (`exit_code`, and `outcome`: a short note, or NULL for "exited
/// N") and releases the handle, whatever the result.
///
/// # Safety
/// `run` is NULL or a handle from `pra_run_start` not released yet; `outcome` is NULL or a
/// NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pra_run_finish(
    run: *mut pra_run,
    exit_code: i32,
    outcome: *const c_char,
) -> pra_result {
    ffi_boundary!({
        if run.is_null() {
            return Err(Error::InvalidArgument("run is NULL".into()));
        }
        // SAFETY: the handle came from Box::into_raw in pra_run_start and is released once.
        let mut handle = unsafe { Box::from_raw(run) };
        let outcome = if outcome.is_null() {
            format!("exited {exit_code}")
        } else {
            // SAFETY: per this function's contract.
            unsafe { arg(outcome, "outcome")? }.to_string()
        };
        match handle.inner.take() {
            Some(r) => r.finish(Some(exit_code), &outcome)?,
            None => return Err(Error::InvalidArgument("run already finished".into())),
        }
        Ok(pra_result::Ok)
    })
}

/// Releases a run handle without recording an end ("abandoned"). `pra_run_free(NULL)` does
/// nothing.
///
/// # Safety
/// `run` is NULL or a handle from `pra_run_start` not released yet.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pra_run_free(run: *mut pra_run) {
    if !run.is_null() {
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            // SAFETY: the handle came from Box::into_raw in pra_run_start and is freed once.
            drop(unsafe { Box::from_raw(run) })
        }));
    }
}

/// The fence's SQL, for a C program to run with its own SQLite connection inside its own
/// `BEGIN IMMEDIATE` transaction (libpra never opens the application's database: two SQLite
/// libraries on one file in one process break each other's locks). `which`: 0 creates the
/// table, 1 reads the highest token (no row: 0), 2 records `?1` (the highest only ever
/// rises). NULL for another value. Static strings: do not free.
#[unsafe(no_mangle)]
pub extern "C" fn pra_fence_sql(which: u32) -> *const c_char {
    match which {
        0 => c"CREATE TABLE IF NOT EXISTS pra_fence (id INTEGER PRIMARY KEY CHECK (id = 1), token INTEGER NOT NULL)".as_ptr(),
        1 => c"SELECT token FROM pra_fence WHERE id = 1".as_ptr(),
        2 => c"INSERT INTO pra_fence (id, token) VALUES (1, ?1) ON CONFLICT(id) DO UPDATE SET token = max(token, excluded.token)".as_ptr(),
        _ => ptr::null(),
    }
}

/// The fence's rule: `PRA_RESULT_OK` if `presented` may be admitted given the `highest` token
/// the fence table holds (then record it with `pra_fence_sql(2)`), `PRA_RESULT_STALE_TOKEN`
/// if a newer token was already admitted (roll the transaction back).
#[unsafe(no_mangle)]
pub extern "C" fn pra_fence_decide(presented: u64, highest: u64) -> pra_result {
    ffi_boundary!({
        pra_core::Fence::decide(FencingToken(presented), FencingToken(highest))?;
        Ok(pra_result::Ok)
    })
}

/// Releases a store handle. `pra_store_free(NULL)` does nothing. The handle must not be used
/// afterwards, nor be in use by another thread.
///
/// # Safety
/// `store` is NULL or a handle from `pra_store_open` or `pra_store_open_with` not freed yet.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pra_store_free(store: *mut pra_store) {
    if !store.is_null() {
        // SAFETY: the handle came from Box::into_raw in pra_store_open_with and is freed once.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            drop(unsafe { Box::from_raw(store) })
        }));
    }
}

/// # Safety
/// `store` is NULL or a live handle.
unsafe fn store_ref<'a>(store: *const pra_store) -> Result<&'a dyn Store, Error> {
    // SAFETY: non-NULL handles are live per the caller's contract.
    unsafe { store.as_ref() }
        .map(|s| &*s.inner)
        .ok_or_else(|| Error::InvalidArgument("store is NULL".into()))
}

/// May `site` run jobs now? Fills `*out` and returns `PRA_RESULT_OK` if it may,
/// `PRA_RESULT_STANDBY` if it may not; on any other result `*out` is untouched and the caller
/// must not run jobs (fail closed).
///
/// # Safety
/// `store` is NULL or a live handle; `site` is NULL or a NUL-terminated string; `out` is NULL or
/// valid for writing a `pra_verdict`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pra_guard_check(
    store: *const pra_store,
    site: *const c_char,
    out: *mut pra_verdict,
) -> pra_result {
    ffi_boundary!({
        // SAFETY: per this function's contract.
        let (store, site) = unsafe { (store_ref(store)?, arg(site, "site")?) };
        if out.is_null() {
            return Err(null_out("out"));
        }
        let site = pra_core::Topology::from_env()?.site(site)?;
        let verdict = pra_core::check(store, &site)?;
        let (v, r) = match &verdict {
            Verdict::Run { token } => (
                pra_verdict {
                    may_run: true,
                    token: token.0,
                    active_site: site_buf(Some(&site)),
                },
                pra_result::Ok,
            ),
            Verdict::Standby { active, token } => (
                pra_verdict {
                    may_run: false,
                    token: token.0,
                    active_site: site_buf(active.as_ref()),
                },
                pra_result::Standby,
            ),
        };
        // SAFETY: non-NULL and valid for writes per the contract.
        unsafe { *out = v };
        Ok(r)
    })
}

/// The active-site record, into `*out` on success.
///
/// # Safety
/// `store` is NULL or a live handle; `out` is NULL or valid for writing a `pra_record`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pra_active_site(
    store: *const pra_store,
    out: *mut pra_record,
) -> pra_result {
    ffi_boundary!({
        // SAFETY: per this function's contract.
        let store = unsafe { store_ref(store)? };
        if out.is_null() {
            return Err(null_out("out"));
        }
        let r = record_of(&store.load()?);
        // SAFETY: non-NULL and valid for writes per the contract.
        unsafe { *out = r };
        Ok(pra_result::Ok)
    })
}

/// # Safety
/// As for the public functions that call it.
unsafe fn change(
    store: *const pra_store,
    change: impl FnOnce() -> Result<SiteChange, Error>,
    by: *const c_char,
    reason: *const c_char,
    out: *mut pra_record,
) -> Result<pra_result, Error> {
    // SAFETY: per the caller's contract.
    let (store, by) = unsafe { (store_ref(store)?, arg(by, "by")?) };
    // SAFETY: per the caller's contract.
    let reason = if reason.is_null() {
        ""
    } else {
        unsafe { arg(reason, "reason")? }
    };
    let actor = Actor::new(by, reason)?;
    let r = record_of(&store.change(change()?, &actor)?);
    if !out.is_null() {
        // SAFETY: non-NULL and valid for writes per the contract.
        unsafe { *out = r };
    }
    Ok(pra_result::Ok)
}

/// Makes `site` the active site, if the record is at `expect_token` and no site is active
/// (break before make), once no run of an older token is alive — the same drain as `pra site
/// activate`: it waits (blocking) up to twice the store's `lost_after` for them to finish or
/// be counted lost, then fails with `PRA_RESULT_BUSY` naming them. On a store without a run
/// registry (the lock file) nothing can be drained and the site is activated. `by` (who) is
/// required, `reason` may be NULL. On success, when `out` is not NULL, `*out` receives the new
/// record.
///
/// # Safety
/// `store` is NULL or a live handle; the strings are NULL or NUL-terminated; `out` is NULL or
/// valid for writing a `pra_record`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pra_activate(
    store: *const pra_store,
    site: *const c_char,
    expect_token: u64,
    by: *const c_char,
    reason: *const c_char,
    out: *mut pra_record,
) -> pra_result {
    ffi_boundary!({
        // SAFETY: per this function's contract.
        let (st, site, by) = unsafe {
            (
                store
                    .as_ref()
                    .ok_or_else(|| Error::InvalidArgument("store is NULL".into()))?,
                arg(site, "site")?,
                arg(by, "by")?,
            )
        };
        // SAFETY: per this function's contract.
        let reason = if reason.is_null() {
            ""
        } else {
            unsafe { arg(reason, "reason")? }
        };
        let (record, _) = pra_core::run::activate(
            &*st.inner,
            &SystemClock,
            &pra_core::Topology::from_env()?.site(site)?,
            FencingToken(expect_token),
            &Actor::new(by, reason)?,
            &pra_core::run::ActivateOptions {
                wait: true,
                timeout: st.timings.lost_after * 2,
                poll: std::time::Duration::from_millis(200),
                lost_after: st.timings.lost_after,
                force: false,
            },
        )?;
        if !out.is_null() {
            // SAFETY: non-NULL and valid for writes per the contract.
            unsafe { *out = record_of(&record) };
        }
        Ok(pra_result::Ok)
    })
}

/// Makes no site active, if the record is at `expect_token`. As `pra_activate` otherwise.
///
/// # Safety
/// As for `pra_activate`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pra_deactivate(
    store: *const pra_store,
    expect_token: u64,
    by: *const c_char,
    reason: *const c_char,
    out: *mut pra_record,
) -> pra_result {
    ffi_boundary!({
        // SAFETY: per this function's contract.
        unsafe {
            change(
                store,
                || {
                    Ok(SiteChange::Deactivate {
                        expect: FencingToken(expect_token),
                    })
                },
                by,
                reason,
                out,
            )
        }
    })
}

/// The status document of the app (the seed's `count`, `last_backup_file`, `backup_age_seconds`,
/// and more) as JSON for database `db`, backup directory `backup_dir` and the table `table`
/// counts (NULL: "events"). A missing database is reported inside the document, not as an
/// error. On success `*out` receives a new string, to be released with `pra_string_free`.
///
/// **One SQLite per database file per process:** this function opens `db` with libpra's own
/// SQLite. In a program that has `db` open through another SQLite library (the system's
/// libsqlite3), closing libpra's descriptor drops that program's POSIX locks on the file and
/// can lose its committed writes (<https://sqlite.org/howtocorrupt.html>, 2.2). Such a program
/// counts with its own connection and calls `pra_status_json_counted`, and takes backups with
/// its own `sqlite3_backup_*` and `pra_backup_adopt`.
///
/// # Safety
/// The strings are NULL or NUL-terminated; `out` is NULL or valid for writing a pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pra_status_json(
    db: *const c_char,
    backup_dir: *const c_char,
    table: *const c_char,
    out: *mut *mut c_char,
) -> pra_result {
    ffi_boundary!({
        // SAFETY: per this function's contract.
        let (db, dir) = unsafe { (arg(db, "db")?, arg(backup_dir, "backup_dir")?) };
        // SAFETY: per this function's contract.
        unsafe {
            status_to(
                |table| pra_core::backup::count_rows(&PathBuf::from(db), table),
                dir,
                table,
                out,
            )
        }
    })
}

/// The status of `backup_dir` with the row count `count` gives, written to `out` as JSON: the
/// one body of `pra_status_json` and `pra_status_json_counted`.
///
/// # Safety
/// `table` is NULL or NUL-terminated; `out` is NULL or valid for writing a pointer.
unsafe fn status_to(
    count: impl FnOnce(&str) -> Result<u64, Error>,
    dir: &str,
    table: *const c_char,
    out: *mut *mut c_char,
) -> Result<pra_result, Error> {
    // SAFETY: per this function's contract.
    let table = if table.is_null() {
        pra_core::defaults::TABLE
    } else {
        unsafe { arg(table, "table")? }
    };
    if out.is_null() {
        return Err(null_out("out"));
    }
    let opts = pra_core::status::Options {
        table: table.into(),
        ..Default::default()
    };
    let status = pra_core::status::status_counted(
        || count(table),
        &PathBuf::from(dir),
        &opts,
        None,
        &SystemClock,
    )?;
    // SAFETY: `out` is non-NULL and valid for writes per the contract.
    unsafe { write_json(&status, out)? };
    Ok(pra_result::Ok)
}

/// The status document, as `pra_status_json`, with the row count the caller took through its
/// own SQLite connection: libpra never opens `db`. `count` < 0 says the caller could not read
/// the database (`reason`, or NULL, says why); it is reported in the document.
///
/// # Safety
/// The strings are NULL (`reason`) or NUL-terminated; `out` is NULL or valid for writing a
/// pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pra_status_json_counted(
    count: i64,
    reason: *const c_char,
    backup_dir: *const c_char,
    table: *const c_char,
    out: *mut *mut c_char,
) -> pra_result {
    ffi_boundary!({
        // SAFETY: per this function's contract.
        let dir = unsafe { arg(backup_dir, "backup_dir")? };
        // SAFETY: per this function's contract.
        let reason = if reason.is_null() {
            "the application could not read its database".to_string()
        } else {
            unsafe { arg(reason, "reason")? }.to_string()
        };
        let count = |table: &str| {
            u64::try_from(count)
                .map_err(|_| Error::io("count rows of", table, std::io::Error::other(reason)))
        };
        // SAFETY: per this function's contract.
        unsafe { status_to(count, dir, table, out) }
    })
}

/// Files a snapshot of `db` that the caller took with its own SQLite (`sqlite3_backup_*` into
/// the file `snapshot`, which must be on the same file system as `backup_dir`): checks it,
/// checksums it and puts it in place with its manifest, as `pra_backup` does. `snapshot` is
/// moved (it no longer exists on success). `*out` as for `pra_backup`.
///
/// # Safety
/// The strings are NULL or NUL-terminated; `out` is NULL or valid for writing a pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pra_backup_adopt(
    snapshot: *const c_char,
    db: *const c_char,
    backup_dir: *const c_char,
    out: *mut *mut c_char,
) -> pra_result {
    ffi_boundary!({
        // SAFETY: per this function's contract.
        let (snap, db, dir) = unsafe {
            (
                arg(snapshot, "snapshot")?,
                arg(db, "db")?,
                arg(backup_dir, "backup_dir")?,
            )
        };
        let snap = PathBuf::from(snap);
        let entry = pra_core::backup::create_from(
            &PathBuf::from(db),
            &PathBuf::from(dir),
            &SystemClock,
            |tmp| {
                std::fs::rename(&snap, tmp).map_err(|e| Error::io("move", &snap, e))?;
                Ok((0, pra_core::backup::Method::OnlineBackup))
            },
        )?;
        if !out.is_null() {
            // SAFETY: `out` is non-NULL and valid for writes per the contract.
            unsafe { write_json(&entry, out)? };
        }
        Ok(pra_result::Ok)
    })
}

/// Takes a consistent, verified backup of `db` into `backup_dir` (created if missing), with
/// SQLite's online backup API through libpra's own SQLite (see `pra_status_json` for when a
/// program must use `pra_backup_adopt` instead). On success,
/// when `out` is not NULL, `*out` receives the backup's catalog entry as JSON, to be released
/// with `pra_string_free`.
///
/// # Safety
/// The strings are NULL or NUL-terminated; `out` is NULL or valid for writing a pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pra_backup(
    db: *const c_char,
    backup_dir: *const c_char,
    out: *mut *mut c_char,
) -> pra_result {
    ffi_boundary!({
        // SAFETY: per this function's contract.
        let (db, dir) = unsafe { (arg(db, "db")?, arg(backup_dir, "backup_dir")?) };
        let entry = pra_core::backup::create(
            &PathBuf::from(db),
            &PathBuf::from(dir),
            pra_core::backup::Method::OnlineBackup,
            &SystemClock,
        )?;
        if !out.is_null() {
            // SAFETY: `out` is non-NULL and valid for writes per the contract.
            unsafe { write_json(&entry, out)? };
        }
        Ok(pra_result::Ok)
    })
}

/// Serializes `value` and hands it to C through `out` (freed with `pra_string_free`). Nothing is
/// written if serialization fails.
///
/// # Safety
/// `out` is non-NULL and valid for writing a pointer.
unsafe fn write_json<T: serde::Serialize>(value: &T, out: *mut *mut c_char) -> Result<(), Error> {
    let json = serde_json::to_string(value).map_err(|e| Error::Internal(e.to_string()))?;
    let c = CString::new(json).map_err(|e| Error::Internal(e.to_string()))?;
    // SAFETY: per this function's contract.
    unsafe { *out = c.into_raw() };
    Ok(())
}

/// Releases a string returned by pra. `pra_string_free(NULL)` does nothing.
///
/// # Safety
/// `s` is NULL or a string returned by pra and not freed yet.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pra_string_free(s: *mut c_char) {
    if !s.is_null() {
        // SAFETY: the string came from CString::into_raw in this library and is freed once.
        drop(unsafe { CString::from_raw(s) });
    }
}

/// TEST ONLY, in a build with the cargo feature `test-panic` (tests/c/run.sh): panics inside the
/// boundary, returns PRA_RESULT_PANIC. Not in include/pra.h (cbindgen.toml excludes it).
#[cfg(any(test, feature = "test-panic"))]
#[doc(hidden)]
#[unsafe(no_mangle)]
pub extern "C" fn pra_test_panic() -> pra_result {
    ffi_boundary!({
        if ptr::null::<u8>().is_null() {
            panic!("deliberate test panic");
        }
        Ok(pra_result::Ok)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg() -> String {
        // SAFETY: pra_last_error_message returns a valid NUL-terminated string.
        unsafe { CStr::from_ptr(pra_last_error_message()) }
            .to_string_lossy()
            .into_owned()
    }

    #[test]
    fn version_is_the_crate_version() {
        // SAFETY: static string.
        let v = unsafe { CStr::from_ptr(pra_version()) };
        assert_eq!(v.to_str().unwrap(), pra_core::VERSION);
    }

    #[test]
    fn every_error_kind_has_its_own_code_and_name() {
        let errors = [
            Error::InvalidArgument(String::new()),
            Error::NotFound(String::new()),
            Error::Conflict {
                expected: FencingToken(0),
                found: FencingToken(1),
            },
            Error::StaleToken {
                presented: FencingToken(0),
                highest: FencingToken(1),
            },
            Error::InvalidTransition {
                state: String::new(),
                event: String::new(),
                allowed: vec![],
            },
            Error::Busy(String::new()),
            Error::StoreUnavailable {
                url: String::new(),
                reason: String::new(),
            },
            Error::Corrupt {
                what: String::new(),
                detail: String::new(),
            },
            Error::Unsupported(String::new()),
            Error::io("x", "y", std::io::Error::other("z")),
            Error::Internal(String::new()),
        ];
        let codes: std::collections::HashSet<u32> =
            errors.iter().map(|e| map_error(e) as u32).collect();
        assert_eq!(codes.len(), errors.len());
        for code in codes.iter().copied().chain([0, 1, 111]) {
            // SAFETY: static strings.
            let name = unsafe { CStr::from_ptr(pra_result_name(code)) }
                .to_str()
                .unwrap();
            assert!(
                name.starts_with("PRA_RESULT_") && name != "PRA_RESULT_UNKNOWN",
                "{code}"
            );
        }
        // SAFETY: static string.
        assert_eq!(
            unsafe { CStr::from_ptr(pra_result_name(42)) }
                .to_str()
                .unwrap(),
            "PRA_RESULT_UNKNOWN"
        );
    }

    #[test]
    fn panics_do_not_cross_the_boundary() {
        assert_eq!(pra_test_panic(), pra_result::Panic);
        assert!(msg().contains("deliberate test panic"));
    }

    #[test]
    fn busy_and_not_found_from_backups() {
        let dir = tempfile::tempdir().unwrap();
        let db = CString::new(dir.path().join("app.db").to_str().unwrap()).unwrap();
        let bdir = CString::new(dir.path().join("b").to_str().unwrap()).unwrap();
        // SAFETY: valid strings; NULL out is allowed.
        assert_eq!(
            unsafe { pra_backup(db.as_ptr(), bdir.as_ptr(), ptr::null_mut()) },
            pra_result::NotFound
        );
        let conn = rusqlite::Connection::open(dir.path().join("app.db")).unwrap();
        conn.execute_batch("CREATE TABLE events (id INTEGER PRIMARY KEY)")
            .unwrap();
        let mut out: *mut c_char = ptr::null_mut();
        // SAFETY: valid strings and out pointer.
        assert_eq!(
            unsafe { pra_backup(db.as_ptr(), bdir.as_ptr(), &mut out) },
            pra_result::Ok
        );
        // SAFETY: a string returned by pra.
        let json = unsafe { CStr::from_ptr(out) }.to_str().unwrap().to_string();
        assert!(
            json.contains("\"health\":{\"state\":\"verified\"}"),
            "{json}"
        );
        // SAFETY: a string returned by pra, freed once.
        unsafe { pra_string_free(out) };
    }

    #[test]
    fn fill_never_writes_past_the_buffer_and_keeps_utf8_whole() {
        let mut b = [1 as c_char; 5];
        fill(&mut b, "éééé"); // 8 bytes: only 2 characters (4 bytes) fit before the NUL
        let bytes: Vec<u8> = b.iter().map(|c| *c as u8).collect();
        assert_eq!(&bytes, &[0xc3, 0xa9, 0xc3, 0xa9, 0]);
        let mut b = [1 as c_char; 4];
        fill(&mut b, "aé€"); // a (1) + é (2) = 3 bytes fit exactly
        assert_eq!(b[3], 0);
        assert_eq!(std::str::from_utf8(&b.map(|c| c as u8)[..3]).unwrap(), "aé");
    }
}
