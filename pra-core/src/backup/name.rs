//! Backup file names: `backup-YYYY-MM-DD-HH-MM-SS[-N].db` (and the seed's minute names), their
//! parsing and validation, and the temporary name a backup is written under.

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The prefix of every backup file name.
pub const PREFIX: &str = "backup-";
/// The prefix of a backup being written, never listed.
pub(super) const TEMP_PREFIX: &str = ".backup-tmp-";

/// A parsed backup file name: when it was taken and its same-second sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct BackupName {
    /// When the backup was taken (UTC, to the second; to the minute for the seed's names).
    pub time: DateTime<Utc>,
    /// 0 for the first backup of that second, then 1, 2...
    pub seq: u32,
}

impl BackupName {
    /// Parses `backup-YYYY-MM-DD-HH-MM[-SS[-N]].db`. Anything else, including any path
    /// separator, is `None`.
    pub fn parse(name: &str) -> Option<BackupName> {
        let mid = name.strip_prefix(PREFIX)?.strip_suffix(".db")?;
        // Up to 7 dash-separated numbers, parsed without allocating (status scans thousands).
        let widths = [4, 2, 2, 2, 2, 2];
        let mut nums = [0u32; 7];
        let mut count = 0;
        for p in mid.split('-') {
            if count == 7 {
                return None;
            }
            let width_ok = if count < 6 {
                p.len() == widths[count]
            } else {
                (1..=9).contains(&p.len())
            };
            if !width_ok || !p.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            nums[count] = p.parse().ok()?;
            count += 1;
        }
        if count < 5 || (count == 7 && nums[6] == 0) {
            return None; // the first of a second has no suffix: one name per backup
        }
        let time = NaiveDate::from_ymd_opt(nums[0] as i32, nums[1], nums[2])?
            .and_hms_opt(nums[3], nums[4], nums[5])?
            .and_utc();
        Some(BackupName { time, seq: nums[6] })
    }

    /// The file name for this time and sequence number (always with seconds).
    pub fn file_name(&self) -> String {
        let base = format!("{PREFIX}{}", self.time.format("%Y-%m-%d-%H-%M-%S"));
        if self.seq == 0 {
            format!("{base}.db")
        } else {
            format!("{base}-{}.db", self.seq)
        }
    }
}

/// Checks that `name` is a bare backup file name (no directory, no `..`) and parses it.
pub fn validate_name(name: &str) -> Result<BackupName> {
    if name.contains(['/', '\\', '\0']) || name.contains("..") {
        return Err(Error::InvalidArgument(format!(
            "backup name {name:?} must be a bare file name, without path separators or '..'"
        )));
    }
    BackupName::parse(name).ok_or_else(|| {
        Error::InvalidArgument(format!(
            "{name:?} is not a backup name (expected backup-YYYY-MM-DD-HH-MM-SS.db)"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn names_parse_in_both_formats() {
        let t = |y, mo, d, h, mi, s| Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap();
        assert_eq!(
            BackupName::parse("backup-2025-01-10-12-00.db"),
            Some(BackupName {
                time: t(2025, 1, 10, 12, 0, 0),
                seq: 0
            })
        );
        assert_eq!(
            BackupName::parse("backup-2025-01-10-12-00-59.db"),
            Some(BackupName {
                time: t(2025, 1, 10, 12, 0, 59),
                seq: 0
            })
        );
        assert_eq!(
            BackupName::parse("backup-2025-01-10-12-00-59-2.db"),
            Some(BackupName {
                time: t(2025, 1, 10, 12, 0, 59),
                seq: 2
            })
        );
        for bad in [
            "backup-2025-01-10-12.db",
            "backup-2025-13-10-12-00.db",
            "backup-2025-02-30-12-00.db",
            "backup-2025-01-10-12-00-59-0.db",
            "backup-2025-1-10-12-00.db",
            "x-2025-01-10-12-00.db",
            "backup-2025-01-10-12-00.db.json",
            ".backup-tmp-1-2.db",
            "backup-2025-01-10-12-00-61.db",
            "backup-2025-01-10-12-00-5a.db",
            "backup-+025-01-10-12-00.db",
        ] {
            assert_eq!(BackupName::parse(bad), None, "{bad}");
        }
        let id = BackupName {
            time: t(2026, 3, 1, 9, 5, 7),
            seq: 0,
        };
        assert_eq!(id.file_name(), "backup-2026-03-01-09-05-07.db");
        assert_eq!(
            BackupName::parse(&BackupName { seq: 3, ..id }.file_name()),
            Some(BackupName { seq: 3, ..id })
        );
    }

    #[test]
    fn names_with_paths_are_refused() {
        for bad in [
            "../backup-2025-01-10-12-00.db",
            "/backup/backup-2025-01-10-12-00.db",
            "backup-2025-01-10-12-00.db/..",
            "a\\b",
        ] {
            assert_eq!(
                validate_name(bad).unwrap_err().kind(),
                crate::ErrorKind::InvalidArgument,
                "{bad}"
            );
        }
        assert!(validate_name("backup-2025-01-10-12-00.db").is_ok());
    }
}
