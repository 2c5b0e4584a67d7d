//! The one error type of pra-core, and the kinds that every front end maps exhaustively.

use std::path::PathBuf;

use crate::token::FencingToken;

/// Result with pra's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in pra. Each variant belongs to exactly one [`ErrorKind`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The caller passed something pra cannot accept (bad site name, bad URL, bad backup name...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// The thing asked for does not exist (no such backup, no such run, no plan running...).
    #[error("not found: {0}")]
    NotFound(String),

    /// Compare-and-swap lost: the record is not at the token the caller expected.
    #[error(
        "conflict: expected token {expected}, but the store is at token {found}; reload and retry"
    )]
    Conflict {
        /// The token the caller expected.
        expected: FencingToken,
        /// The token the store actually holds.
        found: FencingToken,
    },

    /// The plan was written by someone else since the caller loaded it: reload and retry.
    #[error(
        "conflict: the plan changed since it was loaded (now at revision {found}, expected {expected}); reload it"
    )]
    PlanChanged {
        /// The revision the caller loaded.
        expected: u64,
        /// The revision the store holds.
        found: u64,
    },

    /// A rule said no: the change breaks an activation rule (activating while another site is
    /// active, flipping by hand while a plan runs, a run on a standby site). Retrying the same
    /// request will not help; unlike [`Error::Conflict`], nobody raced the caller.
    #[error("refused: {0}")]
    Refused(String),

    /// A write carried a fencing token lower than one already admitted.
    #[error("stale fencing token {presented}: token {highest} has already been admitted")]
    StaleToken {
        /// The token presented by the writer.
        presented: FencingToken,
        /// The highest token admitted so far.
        highest: FencingToken,
    },

    /// The plan cannot take this event in its current state.
    #[error("plan state `{state}` does not accept event `{event}`; allowed here: {}", if allowed.is_empty() { "nothing (final state)".to_string() } else { allowed.join(", ") })]
    InvalidTransition {
        /// The state the plan is in.
        state: String,
        /// The refused event.
        event: String,
        /// The events the state does accept.
        allowed: Vec<String>,
    },

    /// Something else holds the resource (a locked database, a job still running, a drain not
    /// finished in time).
    #[error("busy: {0}")]
    Busy(String),

    /// The store cannot be reached or opened.
    #[error("store {url} unavailable: {reason}")]
    StoreUnavailable {
        /// The store's URL.
        url: String,
        /// Why it could not be used.
        reason: String,
    },

    /// Stored data is damaged: a corrupt lock file (with file and line), a broken journal chain, a
    /// backup that fails its checksum or integrity check.
    #[error("corrupt {what}: {detail}")]
    Corrupt {
        /// What is corrupt (a file, a journal entry, a backup).
        what: String,
        /// What is wrong with it.
        detail: String,
    },

    /// The operation exists, but not on this store or build.
    #[error("unsupported: {0}")]
    Unsupported(String),

    /// An operating-system I/O error on a path.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What pra was doing.
        op: &'static str,
        /// The path it was doing it to.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },

    /// A bug in pra (or a panic caught at a boundary).
    #[error("internal error: {0}")]
    Internal(String),
}

/// The coarse class of an [`Error`]: what front ends map to C result codes, Python exception
/// classes and CLI exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// See [`Error::InvalidArgument`].
    InvalidArgument,
    /// See [`Error::NotFound`].
    NotFound,
    /// A lost race: see [`Error::Conflict`] and [`Error::PlanChanged`]. Reload and retry.
    Conflict,
    /// A rule said no: see [`Error::Refused`]. Retrying will not help.
    Refused,
    /// See [`Error::StaleToken`].
    StaleToken,
    /// See [`Error::InvalidTransition`].
    InvalidTransition,
    /// See [`Error::Busy`].
    Busy,
    /// See [`Error::StoreUnavailable`].
    StoreUnavailable,
    /// See [`Error::Corrupt`].
    Corrupt,
    /// See [`Error::Unsupported`].
    Unsupported,
    /// See [`Error::Io`].
    Io,
    /// See [`Error::Internal`].
    Internal,
}

impl ErrorKind {
    /// The kind's name in machine-readable output (`pra --json` errors): snake_case.
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::InvalidArgument => "invalid_argument",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Conflict => "conflict",
            ErrorKind::Refused => "refused",
            ErrorKind::StaleToken => "stale_token",
            ErrorKind::InvalidTransition => "invalid_transition",
            ErrorKind::Busy => "busy",
            ErrorKind::StoreUnavailable => "store_unavailable",
            ErrorKind::Corrupt => "corrupt",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::Io => "io",
            ErrorKind::Internal => "internal",
        }
    }
}

impl Error {
    /// The kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::InvalidArgument(_) => ErrorKind::InvalidArgument,
            Error::NotFound(_) => ErrorKind::NotFound,
            Error::Conflict { .. } | Error::PlanChanged { .. } => ErrorKind::Conflict,
            Error::Refused(_) => ErrorKind::Refused,
            Error::StaleToken { .. } => ErrorKind::StaleToken,
            Error::InvalidTransition { .. } => ErrorKind::InvalidTransition,
            Error::Busy(_) => ErrorKind::Busy,
            Error::StoreUnavailable { .. } => ErrorKind::StoreUnavailable,
            Error::Corrupt { .. } => ErrorKind::Corrupt,
            Error::Unsupported(_) => ErrorKind::Unsupported,
            Error::Io { .. } => ErrorKind::Io,
            Error::Internal(_) => ErrorKind::Internal,
        }
    }

    /// An [`Error::Io`] for `op` on `path`.
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// Maps a SQLite error met while doing `what` on `url` to the right kind: a busy or locked
    /// database is [`Error::Busy`], an unopenable one [`Error::StoreUnavailable`], a full disk or
    /// a failed write [`Error::Io`], a damaged one [`Error::Corrupt`], anything else
    /// [`Error::Internal`].
    pub fn sqlite(what: &str, url: &str, err: rusqlite::Error) -> Self {
        use rusqlite::ErrorCode as C;
        match err.sqlite_error_code() {
            Some(C::DatabaseBusy | C::DatabaseLocked) => {
                Error::Busy(format!("{what} on {url}: database is locked ({err})"))
            }
            Some(C::DiskFull | C::SystemIoFailure) => Error::Io {
                op: "write",
                path: url.into(),
                source: std::io::Error::other(format!("{what}: {err}")),
            },
            Some(C::CannotOpen | C::PermissionDenied | C::ReadOnly) => Error::StoreUnavailable {
                url: url.to_string(),
                reason: format!("{what}: {err}"),
            },
            Some(C::DatabaseCorrupt | C::NotADatabase) => Error::Corrupt {
                what: url.to_string(),
                detail: format!("{what}: {err}"),
            },
            _ => Error::Internal(format!("{what} on {url}: {err}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_transition_names_state_event_and_allowed() {
        let e = Error::InvalidTransition {
            state: "normal".into(),
            event: "commit_failback".into(),
            allowed: vec!["incident_detected".into()],
        };
        let msg = e.to_string();
        assert!(
            msg.contains("normal")
                && msg.contains("commit_failback")
                && msg.contains("incident_detected"),
            "{msg}"
        );
        assert_eq!(e.kind(), ErrorKind::InvalidTransition);
    }

    #[test]
    fn sqlite_busy_maps_to_busy() {
        let err = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
            None,
        );
        assert_eq!(
            Error::sqlite("load", "sqlite:///x", err).kind(),
            ErrorKind::Busy
        );
    }
}
