//! The in-memory store: the record, journal, plan and run registry of one process, behind one
//! mutex. For tests and examples, and the smallest example of a [`Backend`]: everything it does
//! is read a snapshot and write what the rules decided.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, Utc};

use super::commit::admit;
use super::runs::tally;
use super::{
    Admission, Backend, Heartbeat, JournalEntry, JournalHead, Pulse, RunId, RunRecord, RunRegistry,
    RunStart, RunStats, Snapshot, UnfinishedRun, Writes,
};
use crate::clock::Clock;
use crate::error::Result;
use crate::fencing::{ActiveSite, FencingToken};
use crate::site::SiteId;

#[derive(Debug)]
struct State {
    snap: Snapshot,
    journal: Vec<JournalEntry>,
    runs: Vec<RunRecord>,
    next_id: i64,
    // The skips per job and site (their count and the latest).
    skips: BTreeMap<(String, SiteId), RunStats>,
    // The counts of the runs deleted from the history, per job and site.
    rolled: BTreeMap<(String, SiteId), RunStats>,
}

/// A store that lives in this process only (it is gone with it): every store's rules, no
/// durability. Safe to share between threads.
#[derive(Debug)]
pub struct MemoryStore {
    url: String,
    clock: Arc<dyn Clock>,
    history: std::time::Duration,
    state: Mutex<State>,
}

impl MemoryStore {
    /// An empty store (no site active, token 0) named `memory://<name>`.
    pub fn new(name: &str, clock: Arc<dyn Clock>) -> MemoryStore {
        MemoryStore {
            url: format!("memory://{name}"),
            clock,
            history: crate::defaults::HISTORY,
            state: Mutex::new(State {
                snap: Snapshot::initial(),
                journal: Vec::new(),
                runs: Vec::new(),
                next_id: 1,
                skips: BTreeMap::new(),
                rolled: BTreeMap::new(),
            }),
        }
    }

    /// The store, keeping finished runs in detail for `history` (default
    /// [`crate::defaults::HISTORY`]; see [`super::PRUNE_EVERY`]).
    pub fn with_history(mut self, history: std::time::Duration) -> Self {
        self.history = history;
        self
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Writes are applied only after every check passed, so a panic cannot leave half of
        // one: a poisoned lock is safe to reuse.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl State {
    fn unfinished(&mut self, id: RunId) -> Option<&mut RunRecord> {
        self.runs
            .iter_mut()
            .find(|r| r.id == id && r.finished_at.is_none())
    }

    /// Deletes up to [`super::PRUNE_BATCH`] finished runs started before `start`, oldest
    /// first, adding them to the rolled-up counts.
    fn prune(&mut self, start: DateTime<Utc>) {
        let mut old: Vec<(DateTime<Utc>, i64)> = self
            .runs
            .iter()
            .filter(|r| r.finished_at.is_some() && r.started_at < start)
            .map(|r| (r.started_at, r.id.0))
            .collect();
        old.sort();
        old.truncate(super::PRUNE_BATCH as usize);
        let gone: std::collections::HashSet<i64> = old.into_iter().map(|(_, id)| id).collect();
        let rolled = &mut self.rolled;
        self.runs.retain(|r| {
            if !gone.contains(&r.id.0) {
                return true;
            }
            rolled
                .entry((r.start.job.clone(), r.start.site.clone()))
                .or_insert_with(|| RunStats::new(&r.start.job, &r.start.site))
                .add_run(r);
            false
        });
    }
}

impl Backend for MemoryStore {
    fn url(&self) -> &str {
        &self.url
    }

    fn clock(&self) -> &dyn Clock {
        &*self.clock
    }

    fn load_record(&self) -> Result<ActiveSite> {
        Ok(self.state().snap.record.clone())
    }

    fn snapshot(&self) -> Result<Snapshot> {
        Ok(self.state().snap.clone())
    }

    fn transact(&self, decide: &mut dyn FnMut(&Snapshot) -> Result<Writes>) -> Result<Writes> {
        let mut state = self.state();
        let writes = decide(&state.snap)?;
        state.snap.record = writes.record.clone();
        state.snap.head = writes.head.clone();
        if let Some(plan) = &writes.plan {
            state.snap.plan = Some(plan.clone());
        }
        state.journal.extend(writes.entries.iter().cloned());
        Ok(writes)
    }

    fn read_journal(&self) -> Result<(Vec<JournalEntry>, JournalHead)> {
        let state = self.state();
        Ok((state.journal.clone(), state.snap.head.clone()))
    }

    fn keeps_plans(&self) -> bool {
        true
    }

    fn drop_journal_before(&self, seq: u64) -> Result<()> {
        self.state().journal.retain(|e| e.seq >= seq);
        Ok(())
    }

    fn run_registry(&self) -> Option<&dyn RunRegistry> {
        Some(self)
    }
}

impl RunRegistry for MemoryStore {
    fn run_start(&self, run: &RunStart) -> Result<Admission> {
        let now = self.clock.now();
        let mut state = self.state();
        let record = &state.snap.record;
        if admit(record, run).is_err() {
            return Ok(Admission::Standby {
                active: record.site.clone(),
                token: record.token,
            });
        }
        let id = RunId(state.next_id);
        state.next_id += 1;
        state.runs.push(RunRecord {
            id,
            start: run.clone(),
            started_at: now,
            heartbeat_at: now,
            beats: 0,
            finished_at: None,
            exit_code: None,
            outcome: None,
        });
        Ok(Admission::Admitted {
            id,
            token: run.token,
        })
    }

    fn run_heartbeat(&self, id: RunId) -> Result<Heartbeat> {
        let now = self.clock.now();
        Ok(match self.state().unfinished(id) {
            Some(r) => {
                r.heartbeat_at = now;
                r.beats += 1;
                Heartbeat::Alive
            }
            None => Heartbeat::Expired,
        })
    }

    fn run_finish(&self, id: RunId, exit_code: Option<i32>, outcome: &str) -> Result<bool> {
        let now = self.clock.now();
        let mut state = self.state();
        let finished = match state.unfinished(id) {
            Some(r) => {
                r.finished_at = Some(now);
                r.heartbeat_at = now;
                r.exit_code = exit_code;
                r.outcome = Some(outcome.to_string());
                true
            }
            None => false,
        };
        if super::runs::prunes_at(id) {
            state.prune(super::runs::history_start(now, self.history));
        }
        Ok(finished)
    }

    fn runs(&self, since: DateTime<Utc>) -> Result<Vec<RunRecord>> {
        let mut runs: Vec<RunRecord> = self
            .state()
            .runs
            .iter()
            .filter(|r| r.started_at >= since)
            .cloned()
            .collect();
        runs.sort_by_key(|r| (r.started_at, r.id.0));
        Ok(runs)
    }

    fn unfinished_runs_below(&self, below: FencingToken) -> Result<Vec<UnfinishedRun>> {
        Ok(self
            .state()
            .runs
            .iter()
            .filter(|r| r.finished_at.is_none() && r.start.token < below)
            .map(|r| UnfinishedRun {
                pulse: Pulse::Counter { beats: r.beats },
                run: r.clone(),
            })
            .collect())
    }

    fn run_mark_lost(&self, id: RunId, pulse: Pulse, outcome: &str) -> Result<bool> {
        let Pulse::Counter { beats } = pulse else {
            return Ok(false);
        };
        let now = self.clock.now();
        Ok(match self.state().unfinished(id) {
            Some(r) if r.beats == beats => {
                r.finished_at = Some(now);
                r.outcome = Some(outcome.to_string());
                true
            }
            _ => false,
        })
    }

    fn note_skip(&self, job: &str, site: &SiteId) -> Result<()> {
        let now = self.clock.now();
        let mut state = self.state();
        let s = state
            .skips
            .entry((job.to_string(), site.clone()))
            .or_insert_with(|| RunStats::new(job, site));
        s.skipped += 1;
        s.last_skip_at = Some(now);
        Ok(())
    }

    fn run_stats(&self) -> Result<Vec<RunStats>> {
        let state = self.state();
        let others: Vec<RunStats> = state
            .skips
            .values()
            .chain(state.rolled.values())
            .cloned()
            .collect();
        Ok(tally(&state.runs, &others))
    }
}
