//! Retention in the manner of restic's `forget`: keep-last, keep-within and hourly/daily/weekly/
//! monthly buckets; every kept backup says which rules kept it; the newest verified backup (its
//! checksum matched its manifest) is never removed, nor the newest usable one; corrupt files are
//! reported and left alone.

use std::path::Path;

use chrono::{DateTime, Datelike, Duration, Timelike, Utc};
use serde::{Deserialize, Serialize};

use super::{BackupEntry, list};
use crate::error::{Error, Result};

/// Which backups to keep. Counts are "how many", as in restic; unset rules keep nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// Keep the newest N backups.
    pub keep_last: Option<u32>,
    /// Keep every backup taken within this long before the newest one.
    #[serde(with = "opt_secs")]
    pub keep_within: Option<Duration>,
    /// Keep the newest backup of each of the last N hours that have one.
    pub keep_hourly: Option<u32>,
    /// Same, per day.
    pub keep_daily: Option<u32>,
    /// Same, per ISO week.
    pub keep_weekly: Option<u32>,
    /// Same, per month.
    pub keep_monthly: Option<u32>,
}

mod opt_secs {
    use chrono::Duration;
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&d.num_seconds()),
            None => s.serialize_none(),
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<i64>::deserialize(d)?.map(Duration::seconds))
    }
}

impl Policy {
    /// Refuses a policy that keeps nothing (it would delete every backup but the newest) and a
    /// negative keep-within.
    pub fn validate(&self) -> Result<()> {
        let counts = [
            self.keep_last,
            self.keep_hourly,
            self.keep_daily,
            self.keep_weekly,
            self.keep_monthly,
        ];
        if let Some(d) = self.keep_within {
            if d <= Duration::zero() {
                return Err(Error::InvalidArgument(
                    "keep-within must be a positive duration".into(),
                ));
            }
            return Ok(());
        }
        if counts.iter().all(|c| c.unwrap_or(0) == 0) {
            return Err(Error::InvalidArgument(
                "empty retention policy: give at least one of keep-last, keep-within, keep-hourly, keep-daily, keep-weekly, keep-monthly".into(),
            ));
        }
        Ok(())
    }
}

/// What retention decided for one backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// The backup.
    pub entry: BackupEntry,
    /// Whether it stays.
    pub keep: bool,
    /// The rules that keep it (empty when it goes).
    pub reasons: Vec<String>,
}

/// Applies `policy` to `entries` (any order) and returns one decision per entry, newest first.
/// Pure: nothing is deleted.
pub fn decide(entries: &[BackupEntry], policy: &Policy) -> Result<Vec<Decision>> {
    policy.validate()?;
    let mut sorted: Vec<&BackupEntry> = entries.iter().collect();
    sorted.sort_by_key(|e| std::cmp::Reverse(e.id));
    let newest = sorted.iter().find(|e| e.usable()).map(|e| e.id.time);
    let newest_verified = sorted
        .iter()
        .find(|e| e.health == super::Health::Verified)
        .map(|e| e.id);

    type Key = fn(DateTime<Utc>) -> (i32, u32, u32, u32);
    let buckets: [(&str, Option<u32>, Key); 4] = [
        ("hourly", policy.keep_hourly, |t| {
            (t.year(), t.month(), t.day(), t.hour())
        }),
        ("daily", policy.keep_daily, |t| {
            (t.year(), t.month(), t.day(), 0)
        }),
        ("weekly", policy.keep_weekly, |t| {
            let w = t.iso_week();
            (w.year(), w.week(), 0, 0)
        }),
        ("monthly", policy.keep_monthly, |t| {
            (t.year(), t.month(), 0, 0)
        }),
    ];
    let mut left: Vec<u32> = buckets.iter().map(|b| b.1.unwrap_or(0)).collect();
    let mut last_key: Vec<Option<(i32, u32, u32, u32)>> = vec![None; buckets.len()];
    let mut kept_last = 0u32;
    let mut out = Vec::with_capacity(sorted.len());
    let mut newest_done = false;
    for e in sorted {
        let mut reasons = Vec::new();
        if !e.usable() {
            out.push(Decision {
                entry: e.clone(),
                keep: true,
                reasons: vec!["corrupt: not touched by retention, inspect it by hand".into()],
            });
            continue;
        }
        if Some(e.id) == newest_verified {
            reasons.push("newest verified backup (always kept)".into());
        }
        if !newest_done {
            if Some(e.id) != newest_verified {
                reasons.push("newest usable backup (always kept)".into());
            }
            newest_done = true;
        }
        if kept_last < policy.keep_last.unwrap_or(0) {
            kept_last += 1;
            reasons.push(format!("last {}", policy.keep_last.unwrap_or(0)));
        }
        if let (Some(within), Some(newest)) = (policy.keep_within, newest)
            && newest - e.id.time <= within
        {
            reasons.push(format!("within {}s of the newest", within.num_seconds()));
        }
        for (i, (label, n, key)) in buckets.iter().enumerate() {
            let k = key(e.id.time);
            if left[i] > 0 && last_key[i] != Some(k) {
                left[i] -= 1;
                last_key[i] = Some(k);
                reasons.push(format!("{label} {}", n.unwrap_or(0)));
            }
        }
        out.push(Decision {
            entry: e.clone(),
            keep: !reasons.is_empty(),
            reasons,
        });
    }
    Ok(out)
}

/// Applies `policy` to the backups of `dir`, their checksums verified ([`list`]); unless `dry_run`, removes each backup that goes
/// (and its manifest). Returns the decisions, newest first.
#[tracing::instrument(level = "info", skip(policy), fields(dir = %dir.display()))]
pub fn prune(dir: &Path, policy: &Policy, dry_run: bool) -> Result<Vec<Decision>> {
    // A deletion trusts no cached verification: the backups it keeps are hashed now.
    let entries = if dry_run {
        list(dir)?
    } else {
        super::list_rehashed(dir)?
    };
    let decisions = decide(&entries, policy)?;
    if !dry_run {
        let going = decisions.iter().filter(|d| !d.keep).count();
        let phase = crate::progress::phase("prune: removing backups", Some(going as u64));
        for (i, d) in decisions.iter().filter(|d| !d.keep).enumerate() {
            // The manifest first: a crash in between leaves an unverified backup, never a
            // manifest pointing at nothing.
            let manifest = dir.join(format!("{}.json", d.entry.name));
            match std::fs::remove_file(&manifest) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(Error::io("remove", manifest, e));
                }
                _ => {}
            }
            std::fs::remove_file(&d.entry.path)
                .map_err(|e| Error::io("remove", &d.entry.path, e))?;
            tracing::info!(backup = %d.entry.name, "pruned");
            phase.set(i as u64 + 1);
        }
        crate::fsutil::sync_dir(dir)?;
    }
    Ok(decisions)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::{BackupName, Health};
    use chrono::TimeZone;

    fn entry(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> BackupEntry {
        let id = BackupName {
            time: Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap(),
            seq: 0,
        };
        BackupEntry {
            name: id.file_name(),
            path: id.file_name().into(),
            id,
            size: 4096,
            health: Health::Verified,
            manifest: None,
        }
    }

    fn kept(ds: &[Decision]) -> Vec<String> {
        ds.iter()
            .filter(|d| d.keep)
            .map(|d| d.entry.id.time.format("%m-%d %H:%M").to_string())
            .collect()
    }

    #[test]
    fn empty_policy_is_refused() {
        assert!(decide(&[entry(2026, 1, 1, 0, 0)], &Policy::default()).is_err());
        assert!(
            decide(
                &[],
                &Policy {
                    keep_last: Some(0),
                    ..Policy::default()
                }
            )
            .is_err()
        );
        assert!(
            Policy {
                keep_within: Some(Duration::seconds(-1)),
                ..Policy::default()
            }
            .validate()
            .is_err()
        );
    }

    #[test]
    fn keep_last_keeps_the_newest_n() {
        let es: Vec<_> = (0..5).map(|m| entry(2026, 1, 1, 10, m)).collect();
        let ds = decide(
            &es,
            &Policy {
                keep_last: Some(2),
                ..Policy::default()
            },
        )
        .unwrap();
        assert_eq!(kept(&ds), vec!["01-01 10:04", "01-01 10:03"]);
        assert!(ds[0].reasons.iter().any(|r| r == "last 2"));
    }

    #[test]
    fn buckets_keep_the_newest_of_each_period_by_hand_computed_expectation() {
        // Two days, backups at 09:00, 09:30, 10:15 on Jan 1 and 08:00, 08:45 on Jan 2.
        let es = vec![
            entry(2026, 1, 1, 9, 0),
            entry(2026, 1, 1, 9, 30),
            entry(2026, 1, 1, 10, 15),
            entry(2026, 1, 2, 8, 0),
            entry(2026, 1, 2, 8, 45),
        ];
        // hourly 3: 01-02 08:45 (hour 8 of Jan 2), 01-01 10:15, 01-01 09:30.
        let ds = decide(
            &es,
            &Policy {
                keep_hourly: Some(3),
                ..Policy::default()
            },
        )
        .unwrap();
        assert_eq!(kept(&ds), vec!["01-02 08:45", "01-01 10:15", "01-01 09:30"]);
        // daily 2: the newest of each day.
        let ds = decide(
            &es,
            &Policy {
                keep_daily: Some(2),
                ..Policy::default()
            },
        )
        .unwrap();
        assert_eq!(kept(&ds), vec!["01-02 08:45", "01-01 10:15"]);
        // within 1 hour of the newest (08:45 Jan 2): 08:00 and 08:45.
        let ds = decide(
            &es,
            &Policy {
                keep_within: Some(Duration::hours(1)),
                ..Policy::default()
            },
        )
        .unwrap();
        assert_eq!(kept(&ds), vec!["01-02 08:45", "01-02 08:00"]);
    }

    #[test]
    fn weekly_and_monthly_use_iso_weeks_and_months() {
        // 2026-01-04 is a Sunday (ISO week 1), 2026-01-05 a Monday (week 2).
        let es = vec![
            entry(2025, 12, 31, 12, 0),
            entry(2026, 1, 4, 12, 0),
            entry(2026, 1, 5, 12, 0),
            entry(2026, 2, 1, 12, 0),
        ];
        let ds = decide(
            &es,
            &Policy {
                keep_weekly: Some(3),
                ..Policy::default()
            },
        )
        .unwrap();
        // Weeks: 02-01 (W05), 01-05 (W02), 01-04 (W01); 12-31 is also 2026-W01, already taken.
        assert_eq!(kept(&ds), vec!["02-01 12:00", "01-05 12:00", "01-04 12:00"]);
        let ds = decide(
            &es,
            &Policy {
                keep_monthly: Some(5),
                ..Policy::default()
            },
        )
        .unwrap();
        assert_eq!(kept(&ds), vec!["02-01 12:00", "01-05 12:00", "12-31 12:00"]);
    }

    #[test]
    fn the_newest_usable_is_always_kept_and_corrupt_files_are_left_alone() {
        let mut es = vec![
            entry(2026, 1, 1, 9, 0),
            entry(2026, 1, 1, 10, 0),
            entry(2026, 1, 1, 11, 0),
        ];
        es[2].health = Health::Corrupt {
            reason: "truncated".into(),
        };
        let ds = decide(
            &es,
            &Policy {
                keep_monthly: Some(1),
                ..Policy::default()
            },
        )
        .unwrap();
        assert!(ds[0].keep && ds[0].reasons[0].starts_with("corrupt"));
        assert!(ds[1].keep && ds[1].reasons.iter().any(|r| r.contains("newest verified")));
        assert!(!ds[2].keep && ds[2].reasons.is_empty());
    }
}
