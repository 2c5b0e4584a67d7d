//! Exit codes of the `pra` command: one per error kind, documented in `pra --help` and README.

use pra_core::{Error, ErrorKind};

/// Success; for `pra check`: this site may run jobs.
pub const OK: u8 = 0;
/// `pra check`: this site is standby (another site or none is active).
pub const STANDBY: u8 = 1;

/// `pra run --strict`: skipped because this site is standby (EX_TEMPFAIL).
pub const STANDBY_STRICT: u8 = 75;
/// `pra run --no-overlap`: the same job still runs on this host.
pub const RUN_BUSY: u8 = 76;

/// `pra drill`: the drill ran, and a KPI missed its target (e.g. double execution seen).
pub const DRILL_FAILED: u8 = 77;

/// `pra status`: the document was printed, and the database is unavailable, there is no
/// verified backup, or the store cannot be read.
pub const STATUS_FAILING: u8 = 78;

/// The exit code for an error kind. Every kind has its own, so scripts can tell a lost race
/// (retry) from a dead store (page someone).
pub fn code(kind: ErrorKind) -> u8 {
    match kind {
        ErrorKind::InvalidArgument => 3,
        ErrorKind::NotFound => 4,
        ErrorKind::Conflict => 5,
        ErrorKind::StaleToken => 6,
        ErrorKind::InvalidTransition => 7,
        ErrorKind::Busy => 8,
        ErrorKind::StoreUnavailable => 9,
        ErrorKind::Corrupt => 10,
        ErrorKind::Unsupported => 11,
        ErrorKind::Io => 12,
        ErrorKind::Internal => 70,
        ErrorKind::Refused => 13,
    }
}

/// The exit code for an error.
pub fn for_error(e: &Error) -> u8 {
    code(e.kind())
}

/// The table printed at the end of `pra --help`.
pub const HELP: &str = "\
Exit codes:
   0  success; `pra check`: this site may run jobs
   1  `pra check`: this site is standby (another site, or none, is active)
   2  bad command line
   3  invalid argument (unknown site, bad URL, bad name)
   4  not found (no such backup, run or plan)
   5  conflict: the record or the plan changed under you (stale --expect-token); reload, retry
   6  stale fencing token
   7  the plan does not accept that event in its current state
   8  busy (database locked, job still running, drain not finished)
   9  store unavailable (fail closed: jobs do not run)
  10  corrupt data (lock file, journal, backup)
  11  unsupported on this store or build
  12  I/O error
  13  refused: a rule said no (break before make, a plan is running, this site is not
      active); retrying will not help
  70  internal error (a bug: please report it)
  75  `pra run --strict`: skipped because this site is standby
  76  `pra run --no-overlap`: the same job still runs on this host
  77  `pra drill`: a KPI missed its target (the report says which)
  78  `pra status`: the database is unavailable, there is no verified backup or the
      store cannot be read (the document, printed all the same, says which)
`pra run` otherwise exits with the command's own status (128+N if killed by signal N).
";
