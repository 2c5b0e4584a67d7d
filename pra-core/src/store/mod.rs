//! Stores: where the active-site record, its hash-chained journal, the plan state and the run
//! registry live. One trait, [`Store`], opened from a URL; [`SqliteStore`] is the embedded
//! default, [`FileStore`] speaks the seed's `ACTIVE_SITE=SBG` lock-file format, and `EtcdStore`
//! (cargo feature `etcd`) shares the record between sites on an etcd cluster.

#[cfg(feature = "etcd")]
mod etcd;
mod file;
mod sqlite;
mod url;

use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::clock::{Clock, SystemClock};
use crate::error::{Error, Result};
use crate::fencing::{ActiveSite, Actor, FencingToken, SiteChange};
use crate::site::SiteId;

#[cfg(feature = "etcd")]
pub use etcd::{EtcdOptions, EtcdStore};
pub use file::{FileStore, LockFile};
pub use sqlite::SqliteStore;
pub use url::StoreUrl;

/// The hash that the first journal entry chains to.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Something that happened, as the journal records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum JournalEvent {
    /// The active-site record changed from `old` to `new`.
    SiteChanged {
        /// The record before.
        old: ActiveSite,
        /// The record after.
        new: ActiveSite,
    },
    /// A plan moved from one state to another on an event.
    PlanStep {
        /// The plan's id.
        plan: String,
        /// Its state before.
        from: String,
        /// The event applied.
        event: String,
        /// Its state after.
        to: String,
        /// The operator who passed a manual gate, if the event is one.
        operator: Option<String>,
    },
    /// A drain was forced past runs still registered as alive.
    DrainForced {
        /// The plan's id.
        plan: String,
        /// How many runs were still alive.
        alive_runs: u64,
    },
}

/// One journal entry. `hash` is the SHA-256 of the entry's other fields (canonical JSON), and
/// `prev_hash` the previous entry's `hash`, so that an edited, deleted or reordered entry breaks
/// the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalEntry {
    /// Position in the journal, from 1, without gaps.
    pub seq: u64,
    /// When it was written.
    pub at: DateTime<Utc>,
    /// Who made the change.
    pub by: String,
    /// Why.
    pub reason: String,
    /// What happened.
    pub event: JournalEvent,
    /// The previous entry's hash ([`GENESIS_HASH`] for the first).
    pub prev_hash: String,
    /// This entry's hash.
    pub hash: String,
}

#[derive(Serialize)]
struct HashedPart<'a> {
    seq: u64,
    at: &'a DateTime<Utc>,
    by: &'a str,
    reason: &'a str,
    event: &'a JournalEvent,
    prev_hash: &'a str,
}

impl JournalEntry {
    /// Builds and seals the entry that follows `prev_hash` at position `seq`.
    pub fn seal(
        seq: u64,
        at: DateTime<Utc>,
        actor: &Actor,
        event: JournalEvent,
        prev_hash: &str,
    ) -> Self {
        let mut e = JournalEntry {
            seq,
            at,
            by: actor.by.clone(),
            reason: actor.reason.clone(),
            event,
            prev_hash: prev_hash.to_string(),
            hash: String::new(),
        };
        e.hash = e.compute_hash();
        e
    }

    /// The hash this entry should carry, computed from its other fields.
    pub fn compute_hash(&self) -> String {
        let part = HashedPart {
            seq: self.seq,
            at: &self.at,
            by: &self.by,
            reason: &self.reason,
            event: &self.event,
            prev_hash: &self.prev_hash,
        };
        let json = serde_json::to_vec(&part).expect("journal entries always serialize");
        hex::encode(Sha256::digest(&json))
    }
}

/// What [`verify_chain`] found when the journal is intact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalCheck {
    /// Number of entries checked.
    pub entries: u64,
    /// The hash of the last entry ([`GENESIS_HASH`] for an empty journal).
    pub head: String,
}

/// Checks that `entries` form one unbroken chain from the genesis hash and that the chain ends
/// at `anchor`, the head hash the store recorded beside the active-site record (so that removing
/// the newest entries is detected too). Any break is an [`Error::Corrupt`] naming the entry.
pub fn verify_chain(entries: &[JournalEntry], anchor: &str) -> Result<JournalCheck> {
    let mut prev = GENESIS_HASH.to_string();
    for (i, e) in entries.iter().enumerate() {
        let want_seq = i as u64 + 1;
        let corrupt = |detail: String| Error::Corrupt {
            what: format!("journal entry {}", e.seq),
            detail,
        };
        if e.seq != want_seq {
            return Err(corrupt(format!(
                "expected entry {want_seq} here: an entry was deleted or reordered"
            )));
        }
        if e.prev_hash != prev {
            return Err(corrupt(
                "its prev_hash does not match the previous entry: the chain is broken".into(),
            ));
        }
        if e.compute_hash() != e.hash {
            return Err(corrupt(
                "its content does not match its hash: the entry was edited".into(),
            ));
        }
        prev = e.hash.clone();
    }
    if prev != anchor {
        return Err(Error::Corrupt {
            what: "journal".into(),
            detail: format!(
                "the journal ends at {} but the store's record points to head {anchor}: entries were removed",
                short(&prev)
            ),
        });
    }
    Ok(JournalCheck {
        entries: entries.len() as u64,
        head: prev,
    })
}

fn short(hash: &str) -> &str {
    &hash[..hash.len().min(12)]
}

/// A plan state as a store keeps it: a JSON document and a revision bumped on every write, so
/// that two writers cannot both move the plan from the same state. Stores read two fields of the
/// document: while `running` is true, changes of the active site that do not come with a plan
/// write are refused (the plan is the only one allowed to flip), and `state` names it in the
/// refusal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredPlan {
    /// Bumped by one at every write; 0 means "no plan was ever written".
    pub revision: u64,
    /// The plan itself.
    pub doc: serde_json::Value,
}

/// A write of the plan state, made against the revision the caller loaded.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanWrite {
    /// The revision the caller expects to replace.
    pub expect_revision: u64,
    /// The new plan document.
    pub doc: serde_json::Value,
}

/// Everything one change writes, in one transaction: an optional change of the active-site
/// record, an optional plan write, and journal events. The record change is journaled first
/// (as a [`JournalEvent::SiteChanged`]), then `events` in order.
#[derive(Debug, Clone)]
pub struct Commit {
    /// Who and why, for the record and every journal entry.
    pub actor: Actor,
    /// The change of the active-site record, if any.
    pub site: Option<SiteChange>,
    /// The plan write, if any.
    pub plan: Option<PlanWrite>,
    /// More journal events.
    pub events: Vec<JournalEvent>,
}

/// What a [`Commit`] left in the store.
#[derive(Debug, Clone, PartialEq)]
pub struct Committed {
    /// The active-site record after the commit.
    pub record: ActiveSite,
    /// The plan revision after the commit, when the commit wrote the plan.
    pub plan_revision: Option<u64>,
}

/// A run of a job, as registered by the wrapper that started it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunStart {
    /// The job's name (the same on both sites: that is how double execution is seen).
    pub job: String,
    /// The site it runs on.
    pub site: SiteId,
    /// The token its guard check returned.
    pub token: FencingToken,
    /// The host it runs on.
    pub host: String,
    /// Its process id.
    pub pid: u32,
    /// How its processes are held together (`None`: not a process tree pra started, e.g. a
    /// Python guard in the job's own process).
    #[serde(default)]
    pub containment: Option<crate::run::Containment>,
}

/// The id of a registered run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RunId(pub i64);

/// A registered run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    /// Its id.
    pub id: RunId,
    /// What it was started as.
    #[serde(flatten)]
    pub start: RunStart,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// Its last heartbeat (the start counts as one), on the clock of the host that wrote it: for
    /// reading only, never compared to decide liveness.
    pub heartbeat_at: DateTime<Utc>,
    /// Heartbeats recorded so far: a drain judges liveness by whether this counter moves
    /// within `lost_after` on its own monotonic clock.
    #[serde(default)]
    pub beats: u64,
    /// When it finished, if it did.
    pub finished_at: Option<DateTime<Utc>>,
    /// Its exit code, if it exited normally.
    pub exit_code: Option<i32>,
    /// A note on how it ended ("exited", "killed by signal 9", "revoked"...).
    pub outcome: Option<String>,
}

/// Counters of one job on one site, for metrics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunStats {
    /// The job.
    pub job: String,
    /// The site.
    pub site: SiteId,
    /// Runs started.
    pub started: u64,
    /// Runs skipped because the site was standby.
    pub skipped: u64,
    /// Runs stopped because the site lost the active role while they ran.
    pub revoked: u64,
    /// Runs not finished yet.
    pub unfinished: u64,
}

/// Where a run stands at a given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// Not finished and heartbeating.
    Running,
    /// Not finished and silent for longer than the limit: its host probably died.
    Lost,
    /// Finished.
    Finished,
}

/// How a store vouches that an unfinished run is alive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Pulse {
    /// The run's heartbeat counter: alive while it moves (judged by the observer, see
    /// [`crate::run::Liveness`]).
    Counter {
        /// The counter's value now.
        beats: u64,
    },
    /// A server-side lease (etcd): the server's own clock decides.
    Lease {
        /// Whether the lease is still alive.
        alive: bool,
    },
}

/// An unfinished run and how the store vouches for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnfinishedRun {
    /// The run.
    pub run: RunRecord,
    /// Its liveness evidence.
    pub pulse: Pulse,
}

impl RunRecord {
    /// The run's state at `now` for display (`pra runs`, reports): a run whose last heartbeat,
    /// on the writer's clock, is more than `lost_after` before `now` shows as lost. Never used
    /// for safety: drains use [`crate::run::Liveness`].
    pub fn state(&self, now: DateTime<Utc>, lost_after: chrono::Duration) -> RunState {
        if self.finished_at.is_some() {
            RunState::Finished
        } else if now - self.heartbeat_at > lost_after {
            RunState::Lost
        } else {
            RunState::Running
        }
    }
}

/// A place that keeps the active-site record. All methods are safe to call from several threads
/// and several processes at once; every change is one atomic compare-and-swap on the token.
pub trait Store: Send + Sync + std::fmt::Debug {
    /// The URL the store was opened from.
    fn url(&self) -> &str;

    /// The current active-site record ([`ActiveSite::initial`] for a new store).
    fn load(&self) -> Result<ActiveSite>;

    /// Applies `commit` atomically: all of it or none of it.
    fn commit(&self, commit: &Commit) -> Result<Committed>;

    /// The whole journal, oldest first.
    fn journal(&self) -> Result<Vec<JournalEntry>>;

    /// Checks the journal's hash chain and its anchor in the record.
    fn verify_journal(&self) -> Result<JournalCheck>;

    /// Changes the active-site record (activation rules in [`crate::fencing::next_record`]).
    fn change(&self, change: SiteChange, actor: &Actor) -> Result<ActiveSite> {
        let c = Commit {
            actor: actor.clone(),
            site: Some(change),
            plan: None,
            events: Vec::new(),
        };
        Ok(self.commit(&c)?.record)
    }

    /// The plan state, if a plan was ever written.
    fn load_plan(&self) -> Result<Option<StoredPlan>> {
        Err(self.no_plans())
    }

    /// Registers the start of a run, atomically with its admission: refused with
    /// [`Error::StaleToken`] if the record is no longer at `run.token`, and with
    /// [`Error::Refused`] if `run.site` is not the active site. The start counts as the run's
    /// first heartbeat.
    fn run_start(&self, _run: &RunStart) -> Result<RunId> {
        Err(self.no_runs())
    }

    /// Records a heartbeat of a run that has not finished.
    fn run_heartbeat(&self, _id: RunId) -> Result<()> {
        Err(self.no_runs())
    }

    /// Records the end of a run.
    fn run_finish(&self, _id: RunId, _exit_code: Option<i32>, _outcome: &str) -> Result<()> {
        Err(self.no_runs())
    }

    /// All runs started at or after `since`, oldest first.
    fn runs(&self, _since: DateTime<Utc>) -> Result<Vec<RunRecord>> {
        Err(self.no_runs())
    }

    /// Runs not finished and started under a token lower than `below`, each with its liveness
    /// evidence: what a drain judges.
    fn unfinished_runs_below(&self, _below: FencingToken) -> Result<Vec<UnfinishedRun>> {
        Err(self.no_runs())
    }

    /// Records that an observer judged run `id` lost, if its pulse is still `pulse` (a run
    /// that beat meanwhile is left alone): `Ok(true)` when the run was marked finished with
    /// `outcome`. Lets later drains skip it without waiting for it again.
    fn run_mark_lost(&self, _id: RunId, _pulse: Pulse, _outcome: &str) -> Result<bool> {
        Err(self.no_runs())
    }

    /// Counts a run skipped because its site was standby (for metrics). Stores without a run
    /// registry ignore it.
    fn note_skip(&self, _job: &str, _site: &SiteId) -> Result<()> {
        Ok(())
    }

    /// Per job and site: runs started, skipped, revoked, and still unfinished.
    fn run_stats(&self) -> Result<Vec<RunStats>> {
        Ok(Vec::new())
    }

    #[doc(hidden)]
    fn no_runs(&self) -> Error {
        Error::Unsupported(format!(
            "{} keeps no run registry; use a sqlite:// store for `pra run`, drains and reports",
            self.url()
        ))
    }

    #[doc(hidden)]
    fn no_plans(&self) -> Error {
        Error::Unsupported(format!(
            "{} keeps no plan state; use a sqlite:// store for failover/failback plans",
            self.url()
        ))
    }
}

/// How to open a store. Only network stores read `timeout` and `lost_after`.
#[derive(Clone)]
pub struct OpenOptions {
    /// Where every timestamp comes from.
    pub clock: Arc<dyn Clock>,
    /// The deadline of each call to a network store (etcd): past it, the call fails with
    /// [`Error::StoreUnavailable`] and the guard denies.
    pub timeout: std::time::Duration,
    /// How long a run may stay silent before it counts as lost; on etcd, the TTL of each run's
    /// lease.
    pub lost_after: std::time::Duration,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            clock: Arc::new(SystemClock),
            timeout: std::time::Duration::from_secs(5),
            lost_after: std::time::Duration::from_secs(60),
        }
    }
}

/// Opens the store at `url` with the system clock.
pub fn open(url: &str) -> Result<Box<dyn Store>> {
    open_with(url, &OpenOptions::default())
}

/// Opens the store at `url`, taking every timestamp from `clock`.
pub fn open_with_clock(url: &str, clock: Arc<dyn Clock>) -> Result<Box<dyn Store>> {
    open_with(
        url,
        &OpenOptions {
            clock,
            ..OpenOptions::default()
        },
    )
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
    let clock = opts.clock.clone();
    match StoreUrl::parse(url)? {
        StoreUrl::Sqlite(path) => Ok(Box::new(SqliteStore::open(&path, clock)?)),
        StoreUrl::File(path) => Ok(Box::new(FileStore::open(&path, clock)?)),
        #[cfg(feature = "etcd")]
        StoreUrl::Etcd { endpoints, prefix } => Ok(Box::new(EtcdStore::open(
            &endpoints,
            &prefix,
            clock,
            EtcdOptions {
                timeout: opts.timeout,
                run_ttl: opts.lost_after,
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

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn chain(n: u64) -> Vec<JournalEntry> {
        let actor = Actor::new("t", "r").unwrap();
        let mut prev = GENESIS_HASH.to_string();
        (1..=n)
            .map(|seq| {
                let e = JournalEntry::seal(
                    seq,
                    Utc.timestamp_opt(seq as i64, 0).unwrap(),
                    &actor,
                    JournalEvent::DrainForced {
                        plan: "p".into(),
                        alive_runs: seq,
                    },
                    &prev,
                );
                prev = e.hash.clone();
                e
            })
            .collect()
    }

    #[test]
    fn intact_chain_verifies() {
        let c = chain(5);
        let check = verify_chain(&c, &c[4].hash).unwrap();
        assert_eq!(check.entries, 5);
        assert_eq!(verify_chain(&[], GENESIS_HASH).unwrap().entries, 0);
    }

    #[test]
    fn edited_deleted_or_truncated_entries_are_detected() {
        let c = chain(5);
        let head = c[4].hash.clone();

        let mut edited = c.clone();
        edited[2].by = "mallory".into();
        assert!(
            verify_chain(&edited, &head)
                .unwrap_err()
                .to_string()
                .contains("entry 3")
        );

        let mut deleted = c.clone();
        deleted.remove(1);
        assert!(verify_chain(&deleted, &head).is_err());

        let truncated = &c[..4];
        assert!(
            verify_chain(truncated, &head)
                .unwrap_err()
                .to_string()
                .contains("removed")
        );

        // Re-sealing an edited entry does not help: the next entry still points to the old hash.
        let mut resealed = c.clone();
        resealed[2].reason = "nothing happened".into();
        resealed[2].hash = resealed[2].compute_hash();
        assert!(
            verify_chain(&resealed, &head)
                .unwrap_err()
                .to_string()
                .contains("entry 4")
        );
    }
}
