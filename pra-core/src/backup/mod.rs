//! SQLite backups of the application's database: consistent online snapshots, their names and
//! manifests, the catalog of a backup directory, retention ([`retention`]) and restore
//! ([`restore`]).
//!
//! A backup is `backup-YYYY-MM-DD-HH-MM-SS.db` (UTC; `-N` appended when two are taken in the
//! same second) with a manifest `<name>.json` beside it. The seed's minute names
//! (`backup-2025-01-10-12-00.db`) are read too. A backup is written under a hidden temporary
//! name, verified, fsynced and only then linked under its final name, so a half-written file can
//! never be listed, let alone become "the latest".
//!
//! One file per concern, their items re-exported here: `name` (file names), `catalog` (listing,
//! manifests, health), `create` (taking a backup), `sqlite` (pra's own connections, row counts,
//! `quick_check`); [`retention`], [`restore`] and [`verify`] beside them.

mod catalog;
pub mod checksum;
mod copy;
mod create;
pub mod index;
mod name;
#[cfg(feature = "offsite")]
pub mod offsite;
pub mod restore;
pub mod retention;
mod sqlite;
pub mod verify;

pub(crate) use catalog::open_regular;
pub use catalog::{
    BackupEntry, Health, Manifest, inspect, latest_usable, latest_verified, list, list_rehashed,
    newest_verified, scan,
};
pub use checksum::Checksum;
pub use create::{Method, create, create_from};
pub use name::{BackupName, PREFIX, validate_name};
pub(crate) use sqlite::{check_and_count, open_existing};
pub use sqlite::{count_rows, count_sql, table_counts};

/// The result of a scoped thread; its panic, if any, goes on in the caller.
pub(crate) fn join<T>(h: std::thread::ScopedJoinHandle<'_, T>) -> T {
    h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
}
