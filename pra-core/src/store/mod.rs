//! Stores: where the active-site record, its hash-chained journal, the plan state and the run
//! registry live. One trait, [`Store`], opened from a URL; [`SqliteStore`] is the embedded
//! default, [`FileStore`] speaks the seed's `ACTIVE_SITE=SBG` lock-file format, `EtcdStore`
//! (cargo feature `etcd`) shares the record between sites on an etcd cluster, and
//! [`MemoryStore`] lives in one process (tests, examples).
//!
//! # Advice for hackers
//!
//! The rules are written once, above the stores; a store is I/O only.
//! - **Adding a store** means implementing [`Backend`]: read a [`Snapshot`] (record, journal
//!   head, plan) and write the [`Writes`] that [`commit::decide`] returns, atomically — one
//!   transaction, one compare-and-swap, or write-ahead journal + rename. Never decide anything
//!   there: [`Store`] is implemented for every [`Backend`] by calling `decide`. If your store
//!   keeps runs, implement [`RunRegistry`] and admit registrations with [`commit::admit`]
//!   inside the same atomic step as the registration. Then add it to `open_with`, to
//!   [`StoreUrl`], and to the contract suite (`tests/contract.rs`), which every store passes.
//! - **Changing a rule** (who may flip, what is journaled) happens in [`commit`] and
//!   [`crate::fencing::next_record`] and nowhere else; the contract suite says whether every
//!   store still keeps it.
//! - **Changing what is stored** (a field of [`Snapshot`], [`JournalEntry`], [`RunRecord`])
//!   touches every backend's encoding: SQLite needs a migration appended to its list (never an
//!   edited one), etcd and the lock file must keep reading what older versions wrote.
//! - Expected outcomes are values ([`Admission`], [`Heartbeat`], `bool`), not errors; errors
//!   are for what the caller did not expect ([`Error::Conflict`]: a lost race, retry;
//!   [`Error::Refused`]: a rule said no).

pub mod commit;
#[cfg(feature = "etcd")]
mod etcd;
mod file;
mod journal;
mod memory;
mod runs;
mod security;
mod sqlite;
mod url;

use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, SubsecRound, Utc};

use crate::clock::{Clock, SystemClock};
use crate::error::{Error, Result};
use crate::fencing::{ActiveSite, Actor, SiteChange};

pub use commit::{Commit, Committed, PlanHead, PlanWrite, Snapshot, StoredPlan, Writes};
#[cfg(feature = "etcd")]
pub use etcd::{EtcdOptions, EtcdStore, UNCOMPACTED_WARN_AFTER};
pub use file::{FileStore, LockFile};
pub use journal::{
    GENESIS_HASH, JournalCheck, JournalEntry, JournalEvent, JournalHead, read_archive,
    verify_archived, verify_chain, verify_history,
};
pub use memory::MemoryStore;
pub(crate) use runs::history_start;
pub use runs::{
    Admission, Heartbeat, PRUNE_BATCH, PRUNE_EVERY, Pulse, RunId, RunRecord, RunRegistry, RunStart,
    RunStats, UnfinishedRun,
};
pub use security::{EtcdSecurity, Secret};
pub use sqlite::SqliteStore;
pub use url::StoreUrl;

/// A place that keeps the active-site record and its journal — the core every store offers —
/// and, as capabilities a store offers or not, the plan state ([`Store::plans`]) and the run
/// registry ([`Store::registry`]). Safe to call from several threads and processes at once;
/// every change is atomic.
pub trait Store: Send + Sync + std::fmt::Debug {
    /// The URL the store was opened from.
    fn url(&self) -> &str;

    /// The current active-site record ([`ActiveSite::initial`] for a new store).
    fn load(&self) -> Result<ActiveSite>;

    /// Applies `commit` atomically (all of it or none of it), by the rules of
    /// [`commit::decide`].
    fn commit(&self, commit: &Commit) -> Result<Committed>;

    /// The journal the store keeps, oldest first: all of it, or from its last checkpoint
    /// ([`Store::checkpoint_journal`]) on.
    fn journal(&self) -> Result<Vec<JournalEntry>>;

    /// Checks the journal's hash chain and its anchor in the record — from the last checkpoint,
    /// so the cost does not grow with what was archived.
    fn verify_journal(&self) -> Result<JournalCheck>;

    /// Checks the whole history: the checkpoint archives at `archives` (oldest first) and the
    /// store's journal, as one chain from the first entry ([`verify_archived`]).
    fn verify_journal_full(&self, archives: &[std::path::PathBuf]) -> Result<JournalCheck>;

    /// Checkpoints the journal: appends a [`JournalEvent::Checkpoint`] carrying the head hash,
    /// writes every entry before it to the new file `archive` atomically, then removes those
    /// entries from the store (a crash in between leaves them in both: harmless, the next
    /// checkpoint archives them again). Returns what was archived. [`Error::Unsupported`] on a
    /// store whose journal cannot be checkpointed (every store of pra's can).
    fn checkpoint_journal(&self, archive: &Path, actor: &Actor) -> Result<JournalCheck>;

    /// The plan state, if this store keeps one.
    fn plans(&self) -> Option<&dyn Plans>;

    /// The run registry, if this store keeps one.
    fn registry(&self) -> Option<&dyn RunRegistry>;

    /// Changes the active-site record (activation rules in [`crate::fencing::next_record`]).
    fn change(&self, change: SiteChange, actor: &Actor) -> Result<ActiveSite> {
        let c = Commit {
            site: Some(change),
            ..Commit::by(actor)
        };
        Ok(self.commit(&c)?.record)
    }
}

/// The plan-state capability.
pub trait Plans: Send + Sync {
    /// The plan state, if a plan was ever written.
    fn load_plan(&self) -> Result<Option<StoredPlan>>;
}

impl dyn Store + '_ {
    /// The plan state, or [`Error::Unsupported`] naming the store.
    pub fn require_plans(&self) -> Result<&dyn Plans> {
        self.plans().ok_or_else(|| {
            Error::Unsupported(format!(
                "{} keeps no plan state; use a sqlite:// or etcd:// store for failover/failback plans",
                self.url()
            ))
        })
    }

    /// The run registry, or [`Error::Unsupported`] naming the store.
    pub fn require_registry(&self) -> Result<&dyn RunRegistry> {
        self.registry().ok_or_else(|| {
            Error::Unsupported(format!(
                "{} keeps no run registry; use a sqlite:// or etcd:// store for `pra run`, drains and reports",
                self.url()
            ))
        })
    }
}

/// The I/O a store implements; everything else ([`Store`]) is written once over it.
pub trait Backend: Send + Sync + std::fmt::Debug {
    /// The URL the store was opened from.
    fn url(&self) -> &str;

    /// Where the store's timestamps come from.
    fn clock(&self) -> &dyn Clock;

    /// The active-site record alone (the guard's hot path).
    fn load_record(&self) -> Result<ActiveSite>;

    /// The record, the journal's head and the plan, as one consistent view.
    fn snapshot(&self) -> Result<Snapshot>;

    /// Reads a snapshot, calls `decide` on it, and writes what it returns — all of it
    /// atomically, and nothing when it fails or returns [`Writes::is_empty`]. A backend that
    /// finds that another writer committed between its read and its write reads again and
    /// decides again (`decide` is pure).
    fn transact(&self, decide: &mut dyn FnMut(&Snapshot) -> Result<Writes>) -> Result<Writes>;

    /// The committed journal entries and the head that the record anchors, read consistently.
    fn read_journal(&self) -> Result<(Vec<JournalEntry>, JournalHead)>;

    /// Whether the backend stores plan states.
    fn keeps_plans(&self) -> bool;

    /// Removes the journal entries before `seq` (archived by a checkpoint), in small
    /// transactions; [`Error::Unsupported`] by default (the backend cannot checkpoint).
    fn drop_journal_before(&self, seq: u64) -> Result<()> {
        let _ = seq;
        Err(Error::Unsupported(format!(
            "{}: this store's journal cannot be checkpointed",
            self.url()
        )))
    }

    /// The run registry, if the backend keeps one.
    fn run_registry(&self) -> Option<&dyn RunRegistry> {
        None
    }

    /// The identity the store itself authenticated as (`etcd user jobs`), if any: every change
    /// records it beside the actor's `by`, as `changed_by = "alice (etcd user ops)"`.
    fn identity(&self) -> Option<&str> {
        None
    }
}

impl<B: Backend> Store for B {
    fn url(&self) -> &str {
        Backend::url(self)
    }

    fn load(&self) -> Result<ActiveSite> {
        self.load_record()
    }

    #[tracing::instrument(level = "debug", skip_all, fields(store = %Backend::url(self), by = %commit.actor.by))]
    fn commit(&self, commit: &Commit) -> Result<Committed> {
        if commit.plan.is_some() {
            // A plan write on a store without plans: refused before anything is read or written.
            (self as &dyn Store).require_plans()?;
        }
        let stamped;
        let commit = match self.identity() {
            Some(identity) => {
                stamped = Commit {
                    actor: Actor {
                        by: format!("{} ({identity})", commit.actor.by),
                        reason: commit.actor.reason.clone(),
                    },
                    ..commit.clone()
                };
                &stamped
            }
            None => commit,
        };
        // Every store keeps microseconds: the journal's copy of the record must equal the
        // record as stored, or the verification of the history would see an edit.
        let at = commit
            .at
            .unwrap_or_else(|| self.clock().now())
            .trunc_subsecs(6);
        let writes = self.transact(&mut |snap| commit::decide(snap, commit, at))?;
        if !writes.is_empty() {
            tracing::info!(store = %Backend::url(self), site = ?writes.record.site, token = %writes.record.token, "committed");
        }
        Ok(writes.committed())
    }

    fn journal(&self) -> Result<Vec<JournalEntry>> {
        Ok(self.read_journal()?.0)
    }

    fn verify_journal(&self) -> Result<JournalCheck> {
        // The record is read on both sides of the journal: if a commit lands in between, look
        // again rather than compare a record with a journal of another moment.
        for _ in 0..5 {
            let before = self.load_record()?;
            let (entries, head) = self.read_journal()?;
            let check = verify_chain(&entries, &head.hash)?;
            let last = entries.last().map_or(0, |e| e.seq);
            if last != head.len {
                return Err(Error::Corrupt {
                    what: "journal".into(),
                    detail: format!(
                        "the record counts {} entries but the chain ends at entry {last}",
                        head.len
                    ),
                });
            }
            if self.load_record()? != before {
                continue;
            }
            journal::verify_history(&entries, &before)?;
            return Ok(check);
        }
        Err(Error::Busy(format!(
            "{}: the record kept changing while the journal was verified",
            Backend::url(self)
        )))
    }

    fn verify_journal_full(&self, archives: &[std::path::PathBuf]) -> Result<JournalCheck> {
        let segments = archives
            .iter()
            .map(|p| journal::read_archive(p))
            .collect::<Result<Vec<_>>>()?;
        for _ in 0..5 {
            let before = self.load_record()?;
            let (entries, head) = self.read_journal()?;
            if self.load_record()? != before {
                continue;
            }
            return verify_archived(&segments, &entries, &head.hash, &before);
        }
        Err(Error::Busy(format!(
            "{}: the record kept changing while the journal was verified",
            Backend::url(self)
        )))
    }

    fn checkpoint_journal(&self, archive: &Path, actor: &Actor) -> Result<JournalCheck> {
        // Removing nothing (no entry is before 0) asks the backend whether it can checkpoint,
        // before anything is written.
        self.drop_journal_before(0)?;
        if std::fs::symlink_metadata(archive).is_ok() {
            return Err(Error::InvalidArgument(format!(
                "{} exists: give each checkpoint's archive a new file",
                archive.display()
            )));
        }
        let at = self.clock().now().trunc_subsecs(6);
        let writes = self.transact(&mut |snap| {
            if snap.head.len == 0 {
                return Err(Error::Refused(
                    "the journal is empty: nothing to checkpoint".into(),
                ));
            }
            let entry = JournalEntry::seal(
                snap.head.len + 1,
                at,
                actor,
                JournalEvent::Checkpoint {
                    continues: snap.head.hash.clone(),
                    record: snap.record.clone(),
                },
                &snap.head.hash,
            );
            Ok(Writes {
                record: snap.record.clone(),
                record_changed: false,
                head: JournalHead {
                    len: entry.seq,
                    hash: entry.hash.clone(),
                },
                entries: vec![entry],
                plan: None,
            })
        })?;
        let checkpoint = &writes.entries[0];
        let (entries, _) = self.read_journal()?;
        let older: Vec<JournalEntry> = entries
            .into_iter()
            .filter(|e| e.seq < checkpoint.seq)
            .collect();
        // What goes to the archive must be whole: a broken chain is not archived away.
        let check = verify_chain(&older, &checkpoint.prev_hash)?;
        journal::write_archive(archive, &older)?;
        self.drop_journal_before(checkpoint.seq)?;
        tracing::info!(store = %Backend::url(self), archived = check.entries, archive = %archive.display(), "journal checkpointed");
        Ok(check)
    }

    fn plans(&self) -> Option<&dyn Plans> {
        if self.keeps_plans() { Some(self) } else { None }
    }

    fn registry(&self) -> Option<&dyn RunRegistry> {
        self.run_registry()
    }
}

impl<B: Backend> Plans for B {
    fn load_plan(&self) -> Result<Option<StoredPlan>> {
        Ok(self.snapshot()?.plan)
    }
}

/// What a caller will use a store for, checked at open so that a store without it is refused
/// up front, with a message naming the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Needs {
    /// Plans (`pra plan`, drills).
    pub plans: bool,
    /// The run registry (`pra run`, drains, reports).
    pub registry: bool,
}

/// How to open a store. Only network stores read `timeout` and `lost_after`.
#[derive(Clone)]
pub struct OpenOptions {
    /// Capabilities the store must offer.
    pub needs: Needs,
    /// Where every timestamp comes from.
    pub clock: Arc<dyn Clock>,
    /// The deadline of each call to a network store (etcd): past it, the call fails with
    /// [`Error::StoreUnavailable`] and the guard denies.
    pub timeout: std::time::Duration,
    /// How long a run may stay silent before it counts as lost; on etcd, the TTL of each run's
    /// lease.
    pub lost_after: std::time::Duration,
    /// The group (name or number) that shares the store's files with their owner (SQLite and
    /// lock-file stores): files pra creates are mode 0660 and belong to it, and the directory
    /// is expected to be that group's with mode 2770. `None`: files are created 0600. Either
    /// way, a file pra rewrites keeps its owner, group and mode.
    pub store_group: Option<String>,
    /// TLS material and credentials of an etcd store (empty: plaintext, no user); see
    /// [`EtcdSecurity::with_env`] for the `PRA_ETCD_*` variables front ends read.
    pub etcd: EtcdSecurity,
    /// How long finished runs are kept in detail (`history_days`): the SQLite and memory
    /// stores delete older ones as runs finish, a few hundred at a time, and keep their
    /// counts (see [`runs::PRUNE_EVERY`]); the etcd store deletes them as runs finish too
    /// (its finished runs live under `P/runs/done/`). At least one day; `None`: the store's
    /// default ([`crate::defaults::history_days_for`]: 7 days on etcd, 30 elsewhere).
    pub history: Option<std::time::Duration>,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            needs: Needs::default(),
            clock: Arc::new(SystemClock),
            timeout: crate::defaults::STORE_TIMEOUT,
            lost_after: crate::defaults::LOST_AFTER,
            store_group: None,
            etcd: EtcdSecurity::default(),
            history: None,
        }
    }
}

impl OpenOptions {
    /// The options for runs with `timings`: each store call's deadline is its `store_timeout`,
    /// and a run is lost (on etcd, its lease expires) after its `lost_after` — the one setting
    /// that drains, leases and self-fencing all read.
    pub fn for_timings(timings: &crate::run::Timings) -> OpenOptions {
        OpenOptions {
            timeout: timings.store_timeout,
            lost_after: timings.lost_after,
            ..OpenOptions::default()
        }
    }
}

/// Opens the store at `url` with the system clock.
pub fn open(url: &str) -> Result<Box<dyn Store>> {
    open_with(url, &OpenOptions::default())
}

/// Opens the store at `url` with `opts` (a zero timeout, or `lost_after` under one second, is
/// [`Error::InvalidArgument`], whatever the store).
pub fn open_with(url: &str, opts: &OpenOptions) -> Result<Box<dyn Store>> {
    if opts.timeout.is_zero() || opts.lost_after < std::time::Duration::from_secs(1) {
        return Err(Error::InvalidArgument(format!(
            "opening {url}: the timeout must be positive and lost_after at least 1 second (got {:?} and {:?})",
            opts.timeout, opts.lost_after
        )));
    }
    if let Some(history) = opts
        .history
        .filter(|h| *h < std::time::Duration::from_secs(86_400))
    {
        return Err(Error::InvalidArgument(format!(
            "opening {url}: the history window (history_days) must be at least 1 day (got {history:?})"
        )));
    }
    let store = open_unchecked(url, opts)?;
    if opts.needs.plans {
        store.require_plans()?;
    }
    if opts.needs.registry {
        store.require_registry()?;
    }
    Ok(store)
}

fn open_unchecked(url: &str, opts: &OpenOptions) -> Result<Box<dyn Store>> {
    let clock = opts.clock.clone();
    let history = opts.history.unwrap_or_else(|| {
        std::time::Duration::from_secs(u64::from(crate::defaults::history_days_for(url)) * 86_400)
    });
    let sharing = match &opts.store_group {
        Some(group) => crate::fsutil::Sharing::group(group)?,
        None => crate::fsutil::Sharing::PRIVATE,
    };
    match StoreUrl::parse(url)? {
        StoreUrl::Sqlite(path) => Ok(Box::new(
            SqliteStore::open_shared(&path, clock, sharing)?.with_history(history),
        )),
        StoreUrl::File(path) => Ok(Box::new(FileStore::open_shared(&path, clock, sharing)?)),
        #[cfg(feature = "etcd")]
        StoreUrl::Etcd {
            tls,
            endpoints,
            prefix,
        } => Ok(Box::new(EtcdStore::open(
            &endpoints,
            &prefix,
            clock,
            EtcdOptions {
                timeout: opts.timeout,
                run_ttl: opts.lost_after,
                tls,
                security: opts.etcd.clone(),
                history,
            },
        )?)),
        #[cfg(not(feature = "etcd"))]
        StoreUrl::Etcd { .. } => Err(Error::Unsupported(
            "etcd:// stores need pra built with the `etcd` feature".into(),
        )),
    }
}

pub(crate) fn display(path: &Path) -> String {
    path.display().to_string()
}

pub(crate) fn us_to_time(us: i64) -> DateTime<Utc> {
    DateTime::<Utc>::from_timestamp_micros(us).unwrap_or(DateTime::<Utc>::UNIX_EPOCH)
}

pub(crate) fn time_to_us(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}
