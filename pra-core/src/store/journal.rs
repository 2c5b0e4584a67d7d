//! The journal: what happened, as hash-chained entries, and the check that the chain is whole
//! and ends where the store's record says it does.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::fencing::{ActiveSite, Actor};

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
    /// The gate checks of a plan event ran (see [`crate::plan::checks`]): whether they passed,
    /// and whether a person passed the gate anyway (the entry's actor, with its reason).
    GateChecked {
        /// The plan event they guard.
        event: String,
        /// Whether every check passed.
        passed: bool,
        /// Whether failing checks were overridden.
        overridden: bool,
        /// Each check's command, exit code and output.
        checks: Vec<crate::plan::checks::CheckResult>,
    },
    /// A drain was forced past runs still registered as alive.
    DrainForced {
        /// The plan's id.
        plan: String,
        /// How many runs were still alive.
        alive_runs: u64,
    },
    /// The entries before this one were archived to a file and removed from the store
    /// (`pra journal --checkpoint`): the chain continues from `continues`, the hash of the
    /// last archived entry (this entry's `prev_hash`), and the record history from `record`.
    Checkpoint {
        /// The hash of the last archived entry.
        continues: String,
        /// The active-site record when the checkpoint was written.
        record: ActiveSite,
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

/// Checks that `entries` form one unbroken chain and that the chain ends at `anchor`, the head
/// hash the store recorded beside the active-site record (so that removing the newest entries is
/// detected too). The chain starts at the genesis hash with entry 1 or, for a checkpointed
/// journal, at its first entry's [`JournalEvent::Checkpoint`], which vouches for the archived
/// entries before it (checked against them by [`verify_archived`]). Any break is an
/// [`Error::Corrupt`] naming the entry.
pub fn verify_chain(entries: &[JournalEntry], anchor: &str) -> Result<JournalCheck> {
    let (mut prev, first) = match entries.first() {
        Some(
            e @ JournalEntry {
                event: JournalEvent::Checkpoint { .. },
                ..
            },
        ) => (e.prev_hash.clone(), e.seq),
        _ => (GENESIS_HASH.to_string(), 1),
    };
    for (i, e) in entries.iter().enumerate() {
        let want_seq = first + i as u64;
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
        if let JournalEvent::Checkpoint { continues, .. } = &e.event
            && *continues != e.prev_hash
        {
            return Err(corrupt(
                "it is a checkpoint that continues from another hash than its prev_hash".into(),
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

/// Checks that the journal's record changes follow one another (each change starts from the
/// record the previous one left) and that `record`, the store's record now, is the one the last
/// change left — so that a record edited or rolled back by hand (a token handed out again) is
/// found even when the hash chain is intact. A journal without any record change accepts only a
/// record at token 0 (a store created by hand in the seed's format, `ACTIVE_SITE=SBG`).
pub fn verify_history(entries: &[JournalEntry], record: &ActiveSite) -> Result<()> {
    let mut last: Option<(&JournalEntry, &ActiveSite)> = None;
    for e in entries {
        if let JournalEvent::Checkpoint { record, .. } = &e.event {
            // A checkpoint restates the record; within a chain it must be the one left.
            if let Some((prev, left)) = last
                && record != left
            {
                return Err(Error::Corrupt {
                    what: format!("journal entry {}", e.seq),
                    detail: format!(
                        "it is a checkpoint of the record at token {} but entry {} left it at token {}",
                        record.token, prev.seq, left.token
                    ),
                });
            }
            last = Some((e, record));
        }
        if let JournalEvent::SiteChanged { old, new } = &e.event {
            if let Some((prev, left)) = last
                && old != left
            {
                return Err(Error::Corrupt {
                    what: format!("journal entry {}", e.seq),
                    detail: format!(
                        "it changes the record from token {} but entry {} left it at token {}: the record was rolled back or edited in between",
                        old.token, prev.seq, left.token
                    ),
                });
            }
            last = Some((e, new));
        }
    }
    match last {
        Some((e, left)) if left != record => Err(Error::Corrupt {
            what: "the active-site record".into(),
            detail: format!(
                "it says {} at token {}, but the journal's last change (entry {}) left {} at token {}: the record was edited or rolled back; restore it from the journal",
                record.site.as_ref().map_or("NONE", |s| s.as_str()),
                record.token,
                e.seq,
                left.site.as_ref().map_or("NONE", |s| s.as_str()),
                left.token
            ),
        }),
        None if record.token != crate::fencing::FencingToken::ZERO => Err(Error::Corrupt {
            what: "the active-site record".into(),
            detail: format!(
                "it is at token {} but the journal holds no change of it",
                record.token
            ),
        }),
        Some(_) | None => Ok(()),
    }
}

/// Checks the whole history: the archives `pra journal --checkpoint` wrote (`segments`, oldest
/// first, each a list of entries) followed by the store's `live` entries, as one chain from the
/// genesis hash to `anchor`, and its record history up to `record`. A segment missing, one
/// edited, or entries left out between two segments is an [`Error::Corrupt`].
pub fn verify_archived(
    segments: &[Vec<JournalEntry>],
    live: &[JournalEntry],
    anchor: &str,
    record: &ActiveSite,
) -> Result<JournalCheck> {
    let all: Vec<JournalEntry> = segments.iter().flatten().chain(live).cloned().collect();
    if let Some(first) = all.first()
        && first.seq != 1
    {
        return Err(Error::Corrupt {
            what: format!("journal entry {}", first.seq),
            detail: "the full history must start at entry 1: an older archive is missing".into(),
        });
    }
    let check = verify_chain(&all, anchor)?;
    verify_history(&all, record)?;
    Ok(check)
}

/// Writes `entries` to `path` as an archive (one JSON entry a line), atomically (the caller
/// refused an existing `path`).
pub(crate) fn write_archive(path: &std::path::Path, entries: &[JournalEntry]) -> Result<()> {
    let mut text = String::new();
    for e in entries {
        text.push_str(&serde_json::to_string(e).map_err(|e| Error::Internal(e.to_string()))?);
        text.push('\n');
    }
    crate::fsutil::write_atomic(path, text.as_bytes(), crate::fsutil::Sharing::PRIVATE)
}

/// Reads an archive [`write_archive`] wrote.
pub fn read_archive(path: &std::path::Path) -> Result<Vec<JournalEntry>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io("read", path, e))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| Error::Corrupt {
                what: format!("journal archive {}, line {}", path.display(), i + 1),
                detail: format!("unreadable: {e}"),
            })
        })
        .collect()
}

fn short(hash: &str) -> &str {
    &hash[..hash.len().min(12)]
}

/// Where a journal ends: how many entries it has and the last one's hash. Stores keep it beside
/// the record, written in the same atomic step, so that removing the newest entries shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalHead {
    /// Number of entries.
    pub len: u64,
    /// The last entry's hash ([`GENESIS_HASH`] for an empty journal).
    pub hash: String,
}

impl JournalHead {
    /// The head of an empty journal.
    pub fn genesis() -> Self {
        JournalHead {
            len: 0,
            hash: GENESIS_HASH.to_string(),
        }
    }
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
