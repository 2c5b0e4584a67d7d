//! The rules of a change, written once for every store: given what a store holds (a
//! [`Snapshot`]) and what a caller asks (a [`Commit`]), [`decide`] returns what to write (the
//! [`Writes`]) or the refusal. It is pure; stores only read the snapshot and write the result
//! atomically. The run registry's admission rule ([`admit`]) lives here too.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::journal::{JournalEntry, JournalEvent, JournalHead};
use super::runs::RunStart;
use crate::error::{Error, Result};
use crate::fencing::{ActiveSite, Actor, SiteChange, next_record};

/// A plan state as a store keeps it: a document and a revision bumped on every write, so that
/// two writers cannot both move the plan from the same state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredPlan {
    /// Bumped by one at every write; 0 means "no plan was ever written".
    pub revision: u64,
    /// The plan itself ([`crate::plan::Plan`], serialized).
    pub doc: serde_json::Value,
}

/// What the commit rules need to know of a plan, read through the plan's own field names once,
/// here: whether it is running (then it alone may flip the active site) and its state's name.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PlanHead {
    /// A plan is under way.
    pub running: bool,
    /// The name of its state.
    pub state: String,
}

impl StoredPlan {
    /// The plan's [`PlanHead`]; a document without one is corrupt.
    pub fn head(&self) -> Result<PlanHead> {
        PlanHead::deserialize(&self.doc).map_err(|e| Error::Corrupt {
            what: "the stored plan".into(),
            detail: format!("no running flag or state: {e}"),
        })
    }
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
    /// The time to stamp the record and the journal entries with (the caller's, so that a plan
    /// step and its journal entry carry one time); `None`: the store's clock.
    pub at: Option<DateTime<Utc>>,
}

impl Commit {
    /// A commit of `actor` changing nothing yet: fill in what it writes.
    pub fn by(actor: &Actor) -> Commit {
        Commit {
            actor: actor.clone(),
            site: None,
            plan: None,
            events: Vec::new(),
            at: None,
        }
    }
}

/// What a [`Commit`] left in the store.
#[derive(Debug, Clone, PartialEq)]
pub struct Committed {
    /// The active-site record after the commit.
    pub record: ActiveSite,
    /// The plan revision after the commit, when the commit wrote the plan.
    pub plan_revision: Option<u64>,
}

/// What a store holds that the commit rules read, as one consistent view.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// The active-site record.
    pub record: ActiveSite,
    /// Where the journal ends.
    pub head: JournalHead,
    /// The plan state, if the store keeps one and a plan was ever written.
    pub plan: Option<StoredPlan>,
}

impl Snapshot {
    /// The snapshot of a store nobody has written to.
    pub fn initial() -> Snapshot {
        Snapshot {
            record: ActiveSite::initial(),
            head: JournalHead::genesis(),
            plan: None,
        }
    }
}

/// What [`decide`] says to write, all of it atomically.
#[derive(Debug, Clone, PartialEq)]
pub struct Writes {
    /// The record after the commit (unchanged when `record_changed` is false).
    pub record: ActiveSite,
    /// Whether the record is new.
    pub record_changed: bool,
    /// The journal's head after the entries are appended.
    pub head: JournalHead,
    /// The entries to append, in order, each chained to the one before.
    pub entries: Vec<JournalEntry>,
    /// The plan to store, with its new revision.
    pub plan: Option<StoredPlan>,
}

impl Writes {
    /// Nothing to write (a commit with no change and no event).
    pub fn is_empty(&self) -> bool {
        !self.record_changed && self.entries.is_empty() && self.plan.is_none()
    }

    /// What the caller learns once the writes are in.
    pub fn committed(&self) -> Committed {
        Committed {
            record: self.record.clone(),
            plan_revision: self.plan.as_ref().map(|p| p.revision),
        }
    }
}

/// The rules of a change, in order: while a plan runs, only a commit that also writes the plan
/// may change the active site; the record moves only by the activation rules
/// ([`next_record`]: expected token, break before make); a plan write must find the revision it
/// was loaded at; the record change is journaled first, then the commit's events, sealed and
/// chained from the snapshot's head, all stamped `at`.
pub fn decide(snap: &Snapshot, commit: &Commit, at: DateTime<Utc>) -> Result<Writes> {
    if commit.site.is_some()
        && commit.plan.is_none()
        && let Some(plan) = &snap.plan
    {
        let head = plan.head()?;
        if head.running {
            return Err(Error::Refused(format!(
                "a failover/failback plan is running (state {}): the active site changes only through `pra plan`, or abort the plan first",
                head.state
            )));
        }
    }
    let mut events = Vec::with_capacity(commit.events.len() + 1);
    let mut record = snap.record.clone();
    if let Some(change) = &commit.site {
        record = next_record(&snap.record, change, at, &commit.actor)?;
        events.push(JournalEvent::SiteChanged {
            old: snap.record.clone(),
            new: record.clone(),
        });
    }
    let plan = match &commit.plan {
        None => None,
        Some(write) => {
            let found = snap.plan.as_ref().map_or(0, |p| p.revision);
            if found != write.expect_revision {
                return Err(Error::PlanChanged {
                    expected: write.expect_revision,
                    found,
                });
            }
            Some(StoredPlan {
                revision: found + 1,
                doc: write.doc.clone(),
            })
        }
    };
    events.extend(commit.events.iter().cloned());
    let mut head = snap.head.clone();
    let mut entries = Vec::with_capacity(events.len());
    for event in events {
        let entry = JournalEntry::seal(head.len + 1, at, &commit.actor, event, &head.hash);
        head = JournalHead {
            len: entry.seq,
            hash: entry.hash.clone(),
        };
        entries.push(entry);
    }
    Ok(Writes {
        record_changed: commit.site.is_some(),
        record,
        head,
        entries,
        plan,
    })
}

/// The admission rule of the run registry, checked atomically with a registration: a run is
/// admitted only under the record's current token ([`Error::StaleToken`] otherwise: the record
/// moved since the guard's check) and only on the active site ([`Error::Refused`]).
pub fn admit(record: &ActiveSite, run: &RunStart) -> Result<()> {
    if record.token != run.token {
        return Err(Error::StaleToken {
            presented: run.token,
            highest: record.token,
        });
    }
    if record.site.as_ref() != Some(&run.site) {
        return Err(Error::Refused(format!(
            "{} is not the active site (token {}): the run is not admitted",
            run.site, record.token
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fencing::FencingToken;
    use crate::site::SiteId;
    use crate::store::journal::verify_chain;

    fn actor() -> Actor {
        Actor::new("t", "r").unwrap()
    }

    fn activate(site: &str, expect: u64) -> Commit {
        Commit {
            site: Some(SiteChange::Activate {
                site: SiteId::new(site).unwrap(),
                expect: FencingToken(expect),
            }),
            ..Commit::by(&actor())
        }
    }

    fn apply(snap: &mut Snapshot, w: &Writes) {
        snap.record = w.record.clone();
        snap.head = w.head.clone();
        if let Some(p) = &w.plan {
            snap.plan = Some(p.clone());
        }
    }

    #[test]
    fn a_change_is_journaled_first_and_chained() {
        let mut snap = Snapshot::initial();
        let mut all = Vec::new();
        let mut c = activate("rbx", 0);
        c.events.push(JournalEvent::DrainForced {
            plan: "p".into(),
            alive_runs: 1,
        });
        let w = decide(&snap, &c, Utc::now()).unwrap();
        assert_eq!(w.record.token, FencingToken(1));
        assert!(matches!(
            w.entries[0].event,
            JournalEvent::SiteChanged { .. }
        ));
        assert_eq!(w.head.len, 2);
        all.extend(w.entries.clone());
        apply(&mut snap, &w);
        let w = decide(&snap, &Commit::by(&actor()), Utc::now()).unwrap();
        assert!(w.is_empty());
        verify_chain(&all, &snap.head.hash).unwrap();
    }

    #[test]
    fn a_running_plan_owns_flips_and_revisions_must_match() {
        let mut snap = Snapshot::initial();
        snap.plan = Some(StoredPlan {
            revision: 3,
            doc: serde_json::json!({"running": true, "state": "failover_draining"}),
        });
        let e = decide(&snap, &activate("rbx", 0), Utc::now()).unwrap_err();
        assert!(matches!(e, Error::Refused(_)) && e.to_string().contains("failover_draining"));
        let mut c = activate("rbx", 0);
        c.plan = Some(PlanWrite {
            expect_revision: 2,
            doc: serde_json::json!({"running": true, "state": "x"}),
        });
        assert!(matches!(
            decide(&snap, &c, Utc::now()).unwrap_err(),
            Error::PlanChanged {
                expected: 2,
                found: 3
            }
        ));
        c.plan.as_mut().unwrap().expect_revision = 3;
        let w = decide(&snap, &c, Utc::now()).unwrap();
        assert_eq!(w.plan.unwrap().revision, 4);
        // A plan document without the fields the rules read is corrupt, not "not running".
        snap.plan = Some(StoredPlan {
            revision: 1,
            doc: serde_json::json!({"runing": true}),
        });
        assert_eq!(
            decide(&snap, &activate("rbx", 0), Utc::now())
                .unwrap_err()
                .kind(),
            crate::ErrorKind::Corrupt
        );
    }
}
