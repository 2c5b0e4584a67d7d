//! The exceptions of `pra` (one subclass of `pra.PraError` per pra-core error kind), the one
//! conversion of a pra-core error into them, and [`blocking`]: the one way to run pra-core work,
//! with the GIL released and its error converted.

use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;

use pra_core::{Error, ErrorKind};

/// Declares each exception class once: `create_exception!` for it, and its line in
/// [`register`] (in this order).
macro_rules! exceptions {
    ($($name:ident($base:ty): $doc:literal;)+) => {
        $(create_exception!(pra, $name, $base, $doc);)+

        /// Adds the exception classes to the module.
        pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
            $(m.add(stringify!($name), m.py().get_type::<$name>())?;)+
            Ok(())
        }
    };
}

exceptions! {
    PraError(PyException):
        "Base class of every pra error.";
    InvalidArgumentError(PraError):
        "An argument pra cannot accept (unknown site, bad URL, bad name...).";
    NotFoundError(PraError):
        "The thing asked for does not exist (database, backup, configuration).";
    ConflictError(PraError):
        "The record or the plan moved since you read it (stale expected token): reload and retry.";
    RefusedError(PraError):
        "A rule said no (break before make, a plan is running, this site is not active): retrying will not help.";
    StaleTokenError(PraError):
        "A write carried a fencing token lower than one already admitted.";
    InvalidTransitionError(PraError):
        "The plan does not accept that event in its current state.";
    BusyError(PraError):
        "Something else holds the resource (database in use, drain not finished).";
    StoreUnavailableError(PraError):
        "The store cannot be reached: do not run jobs.";
    CorruptError(PraError):
        "Stored data is damaged (lock file, journal, backup).";
    UnsupportedError(PraError):
        "Not supported on this store or build.";
    PraIOError(PraError):
        "An operating-system I/O error.";
    InternalError(PraError):
        "A bug in pra.";
    StandbyError(PraError):
        "This site is standby: the guarded block must not run.";
    RoleLostError(StandbyError):
        "The site lost the active role (or the store can no longer vouch for the run) while the guarded block ran: stop now.";
}

/// A pra-core error on its way to Python.
pub struct PraErr(pub Error);

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

pub type PraResult<T> = Result<T, PraErr>;

/// Runs blocking pra-core work with the GIL released, converting its error.
pub fn blocking<T: Send>(
    py: Python<'_>,
    f: impl FnOnce() -> pra_core::Result<T> + Send,
) -> PraResult<T> {
    py.detach(f).map_err(PraErr)
}
