//! The thread-independent error API: a caller-owned `pra_error` that the `_e` form of each
//! fallible call fills on failure, for callers whose code moves between OS threads (Go's
//! goroutines, async runtimes), where reading the thread-local `pra_last_error_message` in a
//! second call may read another call's message.

use std::ffi::{CString, c_char};

use super::*;

/// A failure's result and message, owned by the caller: from `pra_error_new`, released by
/// `pra_error_free`. Filled by the `_e` functions on failure only (left as it was on success);
/// one `pra_error` per thread or goroutine at a time.
pub struct pra_error {
    result: pra_result,
    message: CString,
}

/// A new, empty `pra_error` (result `PRA_RESULT_OK`, message ""), to be released with
/// `pra_error_free`. NULL only if memory is exhausted.
#[unsafe(no_mangle)]
pub extern "C" fn pra_error_new() -> *mut pra_error {
    Box::into_raw(Box::new(pra_error {
        result: pra_result::Ok,
        message: CString::default(),
    }))
}

/// Releases a `pra_error`. NULL is a no-op.
///
/// # Safety
/// `err` is NULL or from `pra_error_new`, not freed before.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pra_error_free(err: *mut pra_error) {
    if !err.is_null() {
        // SAFETY: from pra_error_new per the contract.
        drop(unsafe { Box::from_raw(err) });
    }
}

/// The result of the last failure written to `err` (`PRA_RESULT_OK` if none; for NULL too).
///
/// # Safety
/// `err` is NULL or a live `pra_error`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pra_error_result(err: *const pra_error) -> pra_result {
    // SAFETY: NULL or live per the contract.
    unsafe { err.as_ref() }.map_or(pra_result::Ok, |e| e.result)
}

/// The message of the last failure written to `err` ("" if none; for NULL too). Valid until
/// `err` is next written or freed; do not free it.
///
/// # Safety
/// `err` is NULL or a live `pra_error`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pra_error_message(err: *const pra_error) -> *const c_char {
    // SAFETY: NULL or live per the contract.
    match unsafe { err.as_ref() } {
        Some(e) => e.message.as_ptr(),
        None => c"".as_ptr(),
    }
}

/// Runs one pra call and, when it fails, copies its result and message into `*err`. Both the
/// call and the read of its thread-local message happen here, on one thread, within the one C
/// call the caller made: that is what makes the message the caller's own.
///
/// # Safety
/// `err` is NULL or a live `pra_error` not used by another thread meanwhile.
unsafe fn capture(err: *mut pra_error, call: impl FnOnce() -> pra_result) -> pra_result {
    let result = call();
    if matches!(result, pra_result::Ok | pra_result::Standby) {
        return result;
    }
    // SAFETY: NULL or live and unshared per the contract.
    if let Some(err) = unsafe { err.as_mut() } {
        err.result = result;
        err.message = LAST_ERROR.with(|e| e.borrow().clone());
    }
    result
}

/// `pra_store_open` with its failure written to `err` (when not NULL) instead of only to this
/// thread's last error.
///
/// # Safety
/// As for `pra_store_open`; `err` is NULL or a live `pra_error`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pra_store_open_e(
    url: *const c_char,
    out: *mut *mut pra_store,
    err: *mut pra_error,
) -> pra_result {
    // SAFETY: the caller's contract is `pra_store_open`'s, and `err`'s is `capture`'s.
    unsafe { capture(err, || pra_store_open(url, out)) }
}

/// `pra_store_open_with` with its failure written to `err` (when not NULL) instead of only to this
/// thread's last error.
///
/// # Safety
/// As for `pra_store_open_with`; `err` is NULL or a live `pra_error`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pra_store_open_with_e(
    url: *const c_char,
    timeout_ms: u32,
    lost_after_s: u32,
    out: *mut *mut pra_store,
    err: *mut pra_error,
) -> pra_result {
    // SAFETY: the caller's contract is `pra_store_open_with`'s, and `err`'s is `capture`'s.
    unsafe {
        capture(err, || {
            pra_store_open_with(url, timeout_ms, lost_after_s, out)
        })
    }
}

/// `pra_run_start` with its failure written to `err` (when not NULL) instead of only to this
/// thread's last error.
///
/// # Safety
/// As for `pra_run_start`; `err` is NULL or a live `pra_error`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pra_run_start_e(
    store: *const pra_store,
    site: *const c_char,
    job: *const c_char,
    out: *mut *mut pra_run,
    err: *mut pra_error,
) -> pra_result {
    // SAFETY: the caller's contract is `pra_run_start`'s, and `err`'s is `capture`'s.
    unsafe { capture(err, || pra_run_start(store, site, job, out)) }
}

/// `pra_run_check` with its failure written to `err` (when not NULL) instead of only to this
/// thread's last error.
///
/// # Safety
/// As for `pra_run_check`; `err` is NULL or a live `pra_error`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pra_run_check_e(run: *const pra_run, err: *mut pra_error) -> pra_result {
    // SAFETY: the caller's contract is `pra_run_check`'s, and `err`'s is `capture`'s.
    unsafe { capture(err, || pra_run_check(run)) }
}

/// `pra_run_finish` with its failure written to `err` (when not NULL) instead of only to this
/// thread's last error.
///
/// # Safety
/// As for `pra_run_finish`; `err` is NULL or a live `pra_error`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pra_run_finish_e(
    run: *mut pra_run,
    exit_code: i32,
    outcome: *const c_char,
    err: *mut pra_error,
) -> pra_result {
    // SAFETY: the caller's contract is `pra_run_finish`'s, and `err`'s is `capture`'s.
    unsafe { capture(err, || pra_run_finish(run, exit_code, outcome)) }
}

/// `pra_guard_check` with its failure written to `err` (when not NULL) instead of only to this
/// thread's last error.
///
/// # Safety
/// As for `pra_guard_check`; `err` is NULL or a live `pra_error`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pra_guard_check_e(
    store: *const pra_store,
    site: *const c_char,
    out: *mut pra_verdict,
    err: *mut pra_error,
) -> pra_result {
    // SAFETY: the caller's contract is `pra_guard_check`'s, and `err`'s is `capture`'s.
    unsafe { capture(err, || pra_guard_check(store, site, out)) }
}

/// `pra_active_site` with its failure written to `err` (when not NULL) instead of only to this
/// thread's last error.
///
/// # Safety
/// As for `pra_active_site`; `err` is NULL or a live `pra_error`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pra_active_site_e(
    store: *const pra_store,
    out: *mut pra_record,
    err: *mut pra_error,
) -> pra_result {
    // SAFETY: the caller's contract is `pra_active_site`'s, and `err`'s is `capture`'s.
    unsafe { capture(err, || pra_active_site(store, out)) }
}

/// `pra_activate` with its failure written to `err` (when not NULL) instead of only to this
/// thread's last error.
///
/// # Safety
/// As for `pra_activate`; `err` is NULL or a live `pra_error`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pra_activate_e(
    store: *const pra_store,
    site: *const c_char,
    expect_token: u64,
    by: *const c_char,
    reason: *const c_char,
    out: *mut pra_record,
    err: *mut pra_error,
) -> pra_result {
    // SAFETY: the caller's contract is `pra_activate`'s, and `err`'s is `capture`'s.
    unsafe {
        capture(err, || {
            pra_activate(store, site, expect_token, by, reason, out)
        })
    }
}

/// `pra_deactivate` with its failure written to `err` (when not NULL) instead of only to this
/// thread's last error.
///
/// # Safety
/// As for `pra_deactivate`; `err` is NULL or a live `pra_error`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pra_deactivate_e(
    store: *const pra_store,
    expect_token: u64,
    by: *const c_char,
    reason: *const c_char,
    out: *mut pra_record,
    err: *mut pra_error,
) -> pra_result {
    // SAFETY: the caller's contract is `pra_deactivate`'s, and `err`'s is `capture`'s.
    unsafe { capture(err, || pra_deactivate(store, expect_token, by, reason, out)) }
}

/// `pra_status_json` with its failure written to `err` (when not NULL) instead of only to this
/// thread's last error.
///
/// # Safety
/// As for `pra_status_json`; `err` is NULL or a live `pra_error`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pra_status_json_e(
    db: *const c_char,
    backup_dir: *const c_char,
    table: *const c_char,
    out: *mut *mut c_char,
    err: *mut pra_error,
) -> pra_result {
    // SAFETY: the caller's contract is `pra_status_json`'s, and `err`'s is `capture`'s.
    unsafe { capture(err, || pra_status_json(db, backup_dir, table, out)) }
}

/// `pra_status_json_counted` with its failure written to `err` (when not NULL) instead of only to this
/// thread's last error.
///
/// # Safety
/// As for `pra_status_json_counted`; `err` is NULL or a live `pra_error`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pra_status_json_counted_e(
    count: i64,
    reason: *const c_char,
    backup_dir: *const c_char,
    table: *const c_char,
    out: *mut *mut c_char,
    err: *mut pra_error,
) -> pra_result {
    // SAFETY: the caller's contract is `pra_status_json_counted`'s, and `err`'s is `capture`'s.
    unsafe {
        capture(err, || {
            pra_status_json_counted(count, reason, backup_dir, table, out)
        })
    }
}

/// `pra_backup_adopt` with its failure written to `err` (when not NULL) instead of only to this
/// thread's last error.
///
/// # Safety
/// As for `pra_backup_adopt`; `err` is NULL or a live `pra_error`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pra_backup_adopt_e(
    snapshot: *const c_char,
    db: *const c_char,
    backup_dir: *const c_char,
    out: *mut *mut c_char,
    err: *mut pra_error,
) -> pra_result {
    // SAFETY: the caller's contract is `pra_backup_adopt`'s, and `err`'s is `capture`'s.
    unsafe { capture(err, || pra_backup_adopt(snapshot, db, backup_dir, out)) }
}

/// `pra_backup` with its failure written to `err` (when not NULL) instead of only to this
/// thread's last error.
///
/// # Safety
/// As for `pra_backup`; `err` is NULL or a live `pra_error`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pra_backup_e(
    db: *const c_char,
    backup_dir: *const c_char,
    out: *mut *mut c_char,
    err: *mut pra_error,
) -> pra_result {
    // SAFETY: the caller's contract is `pra_backup`'s, and `err`'s is `capture`'s.
    unsafe { capture(err, || pra_backup(db, backup_dir, out)) }
}
