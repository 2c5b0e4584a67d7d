//! The run registry: the runs each site's wrappers registered, with their liveness evidence —
//! a capability of the stores that offer it ([`RunRegistry`]), with typed answers for the
//! expected outcomes (admitted or not, registration alive or expired).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::fencing::FencingToken;
use crate::site::SiteId;

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
    /// The job's declared schedule (`pra run --every/--cron`), if it declared one: the store
    /// keeps the latest per job and site, for missed-run detection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<crate::schedule::Schedule>,
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
    /// When the latest run started.
    #[serde(default)]
    pub last_started_at: Option<DateTime<Utc>>,
    /// When the latest finished run (by its finish) finished, and whether it failed (anything
    /// but exit code 0: a signal, a revocation, a run counted lost).
    #[serde(default)]
    pub last_finished_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub last_failed: Option<bool>,
    /// When the latest successful run finished.
    #[serde(default)]
    pub last_success_at: Option<DateTime<Utc>>,
    /// When the latest skip (standby) happened.
    #[serde(default)]
    pub last_skip_at: Option<DateTime<Utc>>,
    /// The schedule the latest run that declared one declared.
    #[serde(default)]
    pub schedule: Option<crate::schedule::Schedule>,
}

impl RunStats {
    /// No runs, no skips.
    pub fn new(job: &str, site: &SiteId) -> RunStats {
        RunStats {
            job: job.to_string(),
            site: site.clone(),
            started: 0,
            skipped: 0,
            revoked: 0,
            unfinished: 0,
            last_started_at: None,
            last_finished_at: None,
            last_failed: None,
            last_success_at: None,
            last_skip_at: None,
            schedule: None,
        }
    }

    /// Counts `run` (started, revoked, unfinished) and takes its times and schedule where they
    /// are the latest.
    pub fn add_run(&mut self, run: &RunRecord) {
        self.started += 1;
        self.revoked += u64::from(run.outcome.as_deref() == Some("revoked"));
        self.unfinished += u64::from(run.finished_at.is_none());
        self.add_times(run);
    }

    /// [`RunStats::add_run`]'s times and schedule only (for a run counted elsewhere).
    pub fn add_times(&mut self, run: &RunRecord) {
        if self.last_started_at.is_none_or(|t| run.started_at >= t) {
            self.last_started_at = Some(run.started_at);
            if run.start.schedule.is_some() {
                self.schedule = run.start.schedule.clone();
            }
        }
        if let Some(done) = run.finished_at {
            if self.last_finished_at.is_none_or(|t| done >= t) {
                self.last_finished_at = Some(done);
                self.last_failed = Some(!run.succeeded());
            }
            if run.succeeded() && self.last_success_at.is_none_or(|t| done >= t) {
                self.last_success_at = Some(done);
            }
        }
    }

    /// Adds `other`'s counts and takes its times and schedule where they are later.
    pub fn merge(&mut self, other: &RunStats) {
        self.started += other.started;
        self.skipped += other.skipped;
        self.revoked += other.revoked;
        self.unfinished += other.unfinished;
        // The latest run's schedule, else whichever is known.
        self.schedule = if other.last_started_at > self.last_started_at {
            other.schedule.clone().or(self.schedule.take())
        } else {
            self.schedule.take().or_else(|| other.schedule.clone())
        };
        if other.last_finished_at > self.last_finished_at {
            self.last_failed = other.last_failed;
        }
        self.last_started_at = self.last_started_at.max(other.last_started_at);
        self.last_finished_at = self.last_finished_at.max(other.last_finished_at);
        self.last_success_at = self.last_success_at.max(other.last_success_at);
        self.last_skip_at = self.last_skip_at.max(other.last_skip_at);
    }
}

impl RunRecord {
    /// Finished with exit code 0 (not revoked, not killed, not counted lost).
    pub fn succeeded(&self) -> bool {
        self.finished_at.is_some()
            && self.exit_code == Some(0)
            && self.outcome.as_deref() != Some("revoked")
    }
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

/// The guard's answer and, when it is "run", the run registered under it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Registered: the run may start.
    Admitted {
        /// The registration.
        id: RunId,
        /// The token the run holds.
        token: FencingToken,
    },
    /// This site is standby (or lost the race with a flip): do not run.
    Standby {
        /// The active site, if any.
        active: Option<SiteId>,
        /// The record's token.
        token: FencingToken,
    },
}

/// What a heartbeat found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heartbeat {
    /// Recorded: the run is registered and unfinished.
    Alive,
    /// The registration has ended (an observer counted the run lost, or its lease expired): a
    /// drain may already have let the other site start.
    Expired,
}

/// The run registry, offered by the stores that keep one ([`super::Store::runs`]). Every
/// method is safe to call from several threads and processes at once.
pub trait RunRegistry: Send + Sync {
    /// Registers the start of a run, atomically with its admission
    /// ([`super::commit::admit`]): [`Admission::Standby`], with the record found, when the
    /// record is no longer at `run.token` or `run.site` is not active. The start counts as the
    /// run's first heartbeat.
    fn run_start(&self, run: &RunStart) -> Result<Admission>;

    /// Records a heartbeat of a run.
    fn run_heartbeat(&self, id: RunId) -> Result<Heartbeat>;

    /// Records the end of a run: `Ok(false)` when its registration had already ended (counted
    /// lost, lease expired).
    fn run_finish(&self, id: RunId, exit_code: Option<i32>, outcome: &str) -> Result<bool>;

    /// All runs started at or after `since`, oldest first.
    fn runs(&self, since: DateTime<Utc>) -> Result<Vec<RunRecord>>;

    /// Calls `f` on each run started at or after `since`, oldest first, stopping at its first
    /// error: [`RunRegistry::runs`] without holding them all (the SQLite store streams them).
    fn each_run(
        &self,
        since: DateTime<Utc>,
        f: &mut dyn FnMut(RunRecord) -> Result<()>,
    ) -> Result<()> {
        self.runs(since)?.into_iter().try_for_each(f)
    }

    /// [`RunRegistry::each_run`], but a store may leave out runs that cannot overlap a run of
    /// another site: a run that ended before the record moved past its token, and started
    /// while no such run went on (the SQLite store notes the runs that outlive their token at
    /// each change). What the double-execution report reads.
    fn each_run_that_may_overlap(
        &self,
        since: DateTime<Utc>,
        f: &mut dyn FnMut(RunRecord) -> Result<()>,
    ) -> Result<()> {
        self.each_run(since, f)
    }

    /// Runs not finished and started under a token lower than `below`, each with its liveness
    /// evidence: what a drain judges.
    fn unfinished_runs_below(&self, below: FencingToken) -> Result<Vec<UnfinishedRun>>;

    /// Records that an observer judged run `id` lost, if its pulse is still `pulse` (a run
    /// that beat meanwhile is left alone): `Ok(true)` when the run was marked finished with
    /// `outcome`. Lets later drains skip it without waiting for it again.
    fn run_mark_lost(&self, id: RunId, pulse: Pulse, outcome: &str) -> Result<bool>;

    /// Counts a run skipped because its site was standby (for metrics).
    fn note_skip(&self, job: &str, site: &SiteId) -> Result<()>;

    /// Per job and site: runs started, skipped, revoked, and still unfinished.
    fn run_stats(&self) -> Result<Vec<RunStats>>;
}

/// Bounded history: the finish of every `PRUNE_EVERY`-th run (by id) also deletes up to
/// [`PRUNE_BATCH`] finished runs started before the history window, in the same transaction — no
/// separate cron, no long transaction a writer would wait behind, and room to catch up
/// ([`PRUNE_BATCH`] / `PRUNE_EVERY` = 16 old runs per new one) with a backlog. Unfinished
/// runs are never deleted (a drain must see them), and the per job and site counters of
/// metrics keep counting the deleted runs.
pub const PRUNE_EVERY: i64 = 16;
/// The most runs one finish deletes (see [`PRUNE_EVERY`]).
pub const PRUNE_BATCH: i64 = 256;

/// Whether the finish of run `id` also prunes the history (see [`PRUNE_EVERY`]).
pub(crate) fn prunes_at(id: RunId) -> bool {
    id.0 % PRUNE_EVERY == 0
}

/// The start of the history window `history` long that ends `now` (the epoch if it reaches
/// further back).
pub(crate) fn history_start(now: DateTime<Utc>, history: std::time::Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(history)
        .ok()
        .and_then(|h| now.checked_sub_signed(h))
        .unwrap_or(DateTime::<Utc>::UNIX_EPOCH)
}

/// Per job and site (ordered by job, then site name): the runs of `runs` counted
/// ([`RunStats::add_run`]), merged with the counters of `others` (skip counters, runs deleted
/// from the history): the one tally of the stores that cannot ask a database to do it.
pub(crate) fn tally(runs: &[RunRecord], others: &[RunStats]) -> Vec<RunStats> {
    use std::collections::BTreeMap;
    fn of<'a>(
        stats: &'a mut BTreeMap<(String, String), RunStats>,
        job: &str,
        site: &SiteId,
    ) -> &'a mut RunStats {
        stats
            .entry((job.to_string(), site.to_string()))
            .or_insert_with(|| RunStats::new(job, site))
    }
    let mut stats = BTreeMap::new();
    for r in runs {
        of(&mut stats, &r.start.job, &r.start.site).add_run(r);
    }
    for o in others {
        of(&mut stats, &o.job, &o.site).merge(o);
    }
    stats.into_values().collect()
}
