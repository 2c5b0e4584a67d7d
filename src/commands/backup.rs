//! `pra backup`, `pra backups`, `pra prune` and `pra restore`: the application database's
//! backups, taken, listed, pruned by a retention policy and restored.

use chrono::{DateTime, NaiveDateTime, Utc};
use pra_core::backup::restore::{self, RestorePoint};
use pra_core::backup::retention::{self, Policy};
use pra_core::backup::{self, Health, Method};
use pra_core::{Error, SystemClock};

use super::Out;
use crate::config::Config;
use crate::exit;

#[derive(clap::Args, Debug)]
pub struct BackupArgs {
    /// Upload to the offsite target only (the backup is taken in the backup directory, uploaded,
    /// then removed there; kept if the upload fails).
    #[arg(long)]
    pub remote_only: bool,
    /// Do not upload even when an offsite target is configured.
    #[arg(long, conflicts_with = "remote_only")]
    pub local_only: bool,
}

#[derive(clap::Args, Debug)]
pub struct BackupsArgs {
    /// List the offsite target's backups (with their verification state) instead.
    #[arg(long)]
    pub remote: bool,
}

#[derive(clap::Args, Debug)]
pub struct VerifyArgs {
    /// Verify the offsite target's backups: download, decrypt, checksum, quick_check.
    #[arg(long, required = true)]
    pub remote: bool,
    /// Only the N best (highest token, newest) backups.
    #[arg(long)]
    pub sample: Option<usize>,
}

#[derive(clap::Args, Debug)]
pub struct PruneArgs {
    /// Prune the offsite target (never its newest verified backup).
    #[arg(long)]
    pub remote: bool,
    /// Keep the newest N backups.
    #[arg(long)]
    pub keep_last: Option<u32>,
    /// Keep backups taken within this long of the newest (e.g. 90m, 36h, 7d, or seconds).
    #[arg(long, value_parser = parse_duration)]
    pub keep_within: Option<chrono::Duration>,
    /// Keep the newest backup of each of the last N hours.
    #[arg(long)]
    pub keep_hourly: Option<u32>,
    /// ... of each of the last N days.
    #[arg(long)]
    pub keep_daily: Option<u32>,
    /// ... of each of the last N ISO weeks.
    #[arg(long)]
    pub keep_weekly: Option<u32>,
    /// ... of each of the last N months.
    #[arg(long)]
    pub keep_monthly: Option<u32>,
    /// Show what would go, and which rule keeps the rest, without deleting.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(clap::Args, Debug)]
pub struct RestoreArgs {
    /// Restore from the offsite target (downloaded and verified before the database is touched).
    #[arg(long)]
    pub remote: bool,
    /// The newest usable backup (the default).
    #[arg(long, conflicts_with_all = ["name", "before"])]
    pub latest: bool,
    /// A backup by file name.
    #[arg(long, conflicts_with = "before")]
    pub name: Option<String>,
    /// The newest backup taken at or before this UTC time (RFC 3339, or "YYYY-MM-DD HH:MM[:SS]").
    #[arg(long, value_parser = parse_time)]
    pub before: Option<DateTime<Utc>>,
    /// Show the per-table row counts it would restore beside the current ones; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Do not keep a copy of the current database.
    #[arg(long)]
    pub no_safety_copy: bool,
}

/// Parses a `--keep-within` duration: a number with s, m, h, d or w (seconds without unit).
fn parse_duration(s: &str) -> Result<chrono::Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: i64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 90m, 36h, 7d"))?;
    let secs = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        "w" => 7 * 86400,
        _ => return Err(format!("unknown unit in {s:?}: use s, m, h, d or w")),
    };
    n.checked_mul(secs)
        .filter(|v| *v > 0 && *v < i64::MAX / 1000)
        .map(chrono::Duration::seconds)
        .ok_or_else(|| format!("{s:?} is out of range"))
}

/// Parses a time option (`--before`, `--since`): RFC 3339, or "YYYY-MM-DD HH:MM[:SS]" in UTC.
pub(crate) fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    for fmt in [
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%d %H:%M",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%dT%H:%M",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, fmt) {
            return Ok(t.and_utc());
        }
    }
    Err(format!(
        "{s:?} is not a time: use RFC 3339 or \"YYYY-MM-DD HH:MM[:SS]\" (UTC)"
    ))
}

/// Fails early when a remote action is asked of a build without offsite support.
#[cfg(not(feature = "offsite"))]
fn no_offsite() -> Error {
    Error::Unsupported("this pra was built without the `offsite` feature".into())
}

/// Takes a consistent, verified backup and prints where it went; then uploads it when an
/// offsite target is configured (or only uploads it, with `--remote-only`).
pub fn backup(cfg: &Config, out: &Out, a: &BackupArgs) -> Result<u8, Error> {
    let upload = !a.local_only && (a.remote_only || cfg.offsite.is_some());
    if upload {
        // A key that cannot be used, or a standby site, is refused before the snapshot too.
        #[cfg(feature = "offsite")]
        super::offsite::preflight(cfg)?;
        #[cfg(not(feature = "offsite"))]
        return Err(no_offsite());
    }
    let b = backup::create(&cfg.db, &cfg.backup_dir, Method::Auto, &SystemClock)?;
    #[cfg(feature = "offsite")]
    if upload {
        let r = super::offsite::upload(cfg, out, &b);
        // A failed upload keeps the local backup, even with --remote-only: it may be the only one.
        if a.remote_only && r.is_ok() {
            let _ = std::fs::remove_file(&b.path);
            let _ = std::fs::remove_file(b.path.with_file_name(format!("{}.json", b.name)));
        }
        return r;
    }
    out.print(&b, || {
        let m = b.manifest.as_ref();
        let sum = m.and_then(|m| m.checksum());
        format!(
            "{}  {} bytes  {} ms  {} {}",
            b.path.display(),
            b.size,
            m.map_or(0, |m| m.duration_ms),
            sum.as_ref().map_or("checksum", |s| s.algorithm.name()),
            sum.as_ref().map_or("-", |s| s.short(16))
        )
    })?;
    Ok(exit::OK)
}

/// A backup's health as the listings print it.
fn health(h: &Health) -> String {
    match h {
        Health::Verified => "verified".into(),
        Health::Unverified => "unverified (no manifest)".into(),
        Health::Corrupt { reason } => format!("CORRUPT: {reason}"),
    }
}

/// Lists the backups, newest first, with their health.
pub fn backups(cfg: &Config, out: &Out, a: &BackupsArgs) -> Result<u8, Error> {
    if a.remote {
        #[cfg(feature = "offsite")]
        return super::offsite::list(cfg, out);
        #[cfg(not(feature = "offsite"))]
        return Err(no_offsite());
    }
    let list = backup::list(&cfg.backup_dir)?;
    out.print(&list, || {
        if list.is_empty() {
            return format!("no backups in {}", cfg.backup_dir.display());
        }
        list.iter()
            .map(|e| {
                format!(
                    "{:<36} {}  {:>12}  {}\n",
                    e.name,
                    e.id.time.format("%Y-%m-%d %H:%M:%S"),
                    e.size,
                    health(&e.health)
                )
            })
            .collect()
    })?;
    Ok(exit::OK)
}

/// Applies the retention policy (or shows it, with `--dry-run`) and prints each backup's fate
/// with the rules that keep it.
pub fn prune(cfg: &Config, out: &Out, a: &PruneArgs) -> Result<u8, Error> {
    let policy = Policy {
        keep_last: a.keep_last,
        keep_within: a.keep_within,
        keep_hourly: a.keep_hourly,
        keep_daily: a.keep_daily,
        keep_weekly: a.keep_weekly,
        keep_monthly: a.keep_monthly,
    };
    let decisions = if a.remote {
        #[cfg(feature = "offsite")]
        {
            super::offsite::prune(cfg, &policy, a.dry_run)?
        }
        #[cfg(not(feature = "offsite"))]
        return Err(no_offsite());
    } else {
        retention::prune(&cfg.backup_dir, &policy, a.dry_run)?
    };
    out.print(&decisions, || {
        let mut s: String = decisions
            .iter()
            .map(|d| {
                let what = if d.keep {
                    "keep  "
                } else if a.dry_run {
                    "would remove"
                } else {
                    "removed"
                };
                format!("{what:<12} {:<36} {}\n", d.entry.name, d.reasons.join(", "))
            })
            .collect();
        let gone = decisions.iter().filter(|d| !d.keep).count();
        s.push_str(&format!(
            "{} kept, {gone} {}",
            decisions.len() - gone,
            if a.dry_run {
                "would be removed (dry run)"
            } else {
                "removed"
            }
        ));
        s
    })?;
    Ok(exit::OK)
}

/// Restores a backup over the database, atomically, keeping a safety copy unless told not to;
/// with `--dry-run`, prints the row counts it would restore beside the current ones.
pub fn restore(cfg: &Config, out: &Out, a: &RestoreArgs) -> Result<u8, Error> {
    let point = match (&a.name, a.before) {
        (Some(n), _) => RestorePoint::Name(n.clone()),
        (None, Some(t)) => RestorePoint::Before(t),
        (None, None) => RestorePoint::Latest,
    };
    if a.remote {
        if a.dry_run {
            return Err(Error::InvalidArgument(
                "--dry-run is not available with --remote".into(),
            ));
        }
        #[cfg(feature = "offsite")]
        return super::offsite::restore(
            cfg,
            out,
            &point,
            restore::Options {
                safety_copy: !a.no_safety_copy,
            },
        );
        #[cfg(not(feature = "offsite"))]
        return Err(no_offsite());
    }
    if a.dry_run {
        let p = restore::preview(&cfg.db, &cfg.backup_dir, &point)?;
        out.print(&p, || {
            let n = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
            let mut s = format!(
                "would restore {} ({}) over {}\n",
                p.backup.name,
                health(&p.backup.health),
                cfg.db.display()
            );
            s.push_str(&format!("{:<32} {:>12} {:>12}\n", "table", "now", "after"));
            for t in &p.tables {
                s.push_str(&format!(
                    "{:<32} {:>12} {:>12}\n",
                    t.table,
                    n(t.current),
                    n(t.backup)
                ));
            }
            s
        })?;
        return Ok(exit::OK);
    }
    let opts = restore::Options {
        safety_copy: !a.no_safety_copy,
    };
    let r = restore::restore(&cfg.db, &cfg.backup_dir, &point, opts, &SystemClock)?;
    out.print(&r, || restored(&r, None, &cfg.db))?;
    Ok(exit::OK)
}

/// What a restore prints: the backup, where from (an offsite target), and the safety copy.
pub(super) fn restored(r: &restore::Report, from: Option<&str>, db: &std::path::Path) -> String {
    format!(
        "restored {}{} over {}{}",
        r.backup,
        from.map_or(String::new(), |t| format!(" from {t}")),
        db.display(),
        r.safety_copy.as_ref().map_or(String::new(), |p| format!(
            "; previous database kept as {}",
            p.display()
        ))
    )
}

/// `pra verify --remote [--sample N]`.
pub fn verify(cfg: &Config, out: &Out, a: &VerifyArgs) -> Result<u8, Error> {
    #[cfg(feature = "offsite")]
    {
        let _ = a.remote;
        super::offsite::verify(cfg, out, a.sample)
    }
    #[cfg(not(feature = "offsite"))]
    {
        let _ = (cfg, out, a);
        Err(no_offsite())
    }
}
