//! pra-core: the pure library behind pra — sites, fencing tokens, stores, the failover/failback
//! plan, SQLite backup/retention/restore and the status the app serves.
//!
//! Only the [`store`] and [`backup`] modules touch the file system; everything else is pure and
//! takes its time from a [`Clock`]. Errors are one enum, [`Error`], whose [`ErrorKind`] the front
//! ends (CLI, C, Python) map to exit codes, result codes and exception classes.

pub mod backup;
pub mod clock;
pub mod dbfence;
pub mod defaults;
pub mod error;
pub mod fencing;
pub mod forkguard;
mod fsutil;
pub mod guard;
pub mod jobs;
pub mod plan;
pub mod progress;
pub mod run;
pub mod schedule;
pub mod site;
pub mod status;
pub mod store;
mod token;

pub use clock::{Clock, ManualClock, SystemClock};
pub use error::{Error, ErrorKind, Result};
pub use fencing::{ActiveSite, Actor, Fence, FencingToken, SiteChange};
pub use fsutil::{SMALL_FILE_LIMIT, read_regular};
pub use guard::{Verdict, check};
pub use site::{SiteId, Topology};
pub use store::{Store, StoreUrl, open};

/// The version of pra-core, as in its Cargo.toml.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
