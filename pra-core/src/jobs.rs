//! Role-aware missed-run detection: from the run registry's per job and site counters and the
//! active-site record, which jobs are late on the active site, skipped everywhere, ran on both
//! sites, or failed last — what a heartbeat monitor cannot tell from a legitimate standby skip.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::clock::Clock;
use crate::error::Result;
use crate::fencing::ActiveSite;
use crate::schedule::Schedule;
use crate::store::{RunStats, Store};

/// Missed runs tolerated before a job counts as late, by default: one missed run may be a slow
/// cron or a flip in between; two in a row is a job that does not run.
pub const MISSED_INTERVALS: u32 = 2;

/// What is wrong with a job, most urgent first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Problem {
    /// Its latest runs on the two sites overlapped in time: must never happen.
    BothSites,
    /// No site is active and the job was skipped since it last succeeded: it runs nowhere.
    SkippedEverywhere,
    /// Not run successfully on the active site for more than the tolerated missed runs.
    Late,
    /// Its latest finished run on the active site failed.
    LastRunFailed,
}

impl Problem {
    /// The name in `pra jobs` and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Problem::BothSites => "both_sites",
            Problem::SkippedEverywhere => "skipped_everywhere",
            Problem::Late => "late",
            Problem::LastRunFailed => "last_run_failed",
        }
    }
}

/// One job's health.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobHealth {
    /// The job.
    pub job: String,
    /// Its declared schedule (the latest run that declared one), if any: without one a job is
    /// never judged late.
    pub schedule: Option<Schedule>,
    /// Seconds between two runs by its schedule.
    pub interval_seconds: Option<u64>,
    /// When its latest successful run finished, on any site.
    pub last_success_at: Option<DateTime<Utc>>,
    /// Since when it should have run successfully on the active site (its `missed`-th previous
    /// scheduled time): no success since then makes it late, unless the site became active
    /// after it.
    pub due_since: Option<DateTime<Utc>>,
    /// What is wrong, most urgent first (empty: all is well).
    pub problems: Vec<Problem>,
    /// Its counters per site.
    pub sites: Vec<RunStats>,
}

/// The health of every job the registry knows, by name. `missed` missed runs are tolerated
/// ([`MISSED_INTERVALS`] by default).
pub fn assess(
    stats: &[RunStats],
    record: &ActiveSite,
    now: DateTime<Utc>,
    missed: u32,
) -> Vec<JobHealth> {
    let mut jobs: Vec<JobHealth> = Vec::new();
    for s in stats {
        match jobs.last_mut() {
            Some(j) if j.job == s.job => j.sites.push(s.clone()),
            _ => jobs.push(JobHealth {
                job: s.job.clone(),
                schedule: None,
                interval_seconds: None,
                last_success_at: None,
                due_since: None,
                problems: Vec::new(),
                sites: vec![s.clone()],
            }),
        }
    }
    for j in &mut jobs {
        judge(j, record, now, missed);
    }
    jobs
}

fn judge(j: &mut JobHealth, record: &ActiveSite, now: DateTime<Utc>, missed: u32) {
    // The schedule of the latest run that declared one.
    j.schedule = j
        .sites
        .iter()
        .filter(|s| s.schedule.is_some())
        .max_by_key(|s| s.last_started_at)
        .and_then(|s| s.schedule.clone());
    j.interval_seconds = j.schedule.as_ref().map(|s| s.interval_seconds(now));
    j.last_success_at = j.sites.iter().filter_map(|s| s.last_success_at).max();
    // The span of each site's latest run: from its start to its finish, or to now while a run
    // is unfinished (a run counted lost is finished). Two spans that meet: both sites ran it.
    let spans: Vec<(DateTime<Utc>, DateTime<Utc>)> = j
        .sites
        .iter()
        .filter_map(|s| {
            let start = s.last_started_at?;
            let end = if s.unfinished > 0 {
                now
            } else {
                s.last_finished_at.filter(|&f| f >= start).unwrap_or(start)
            };
            Some((start, end))
        })
        .collect();
    for (i, a) in spans.iter().enumerate() {
        for b in &spans[i + 1..] {
            if a.0 <= b.1 && b.0 <= a.1 {
                j.problems.push(Problem::BothSites);
            }
        }
    }
    match &record.site {
        None => {
            let skipped_since_success = j
                .sites
                .iter()
                .filter_map(|s| s.last_skip_at)
                .max()
                .is_some_and(|skip| j.last_success_at.is_none_or(|ok| skip > ok));
            if skipped_since_success {
                j.problems.push(Problem::SkippedEverywhere);
            }
        }
        Some(active) => {
            let here = j.sites.iter().find(|s| &s.site == active);
            if let Some(schedule) = &j.schedule {
                // Late: no success since the time `missed` scheduled runs back — unless the site
                // became active after it (fewer runs were due here since the flip).
                let due = schedule.nth_previous(now, missed.max(1));
                j.due_since = Some(due);
                let ok = here.and_then(|s| s.last_success_at);
                if record.changed_at <= due && ok.is_none_or(|t| t < due) {
                    j.problems.push(Problem::Late);
                }
            }
            if here.and_then(|s| s.last_failed) == Some(true) {
                j.problems.push(Problem::LastRunFailed);
            }
        }
    }
    j.problems.sort();
    j.problems.dedup();
}

/// [`assess`] over `store`'s registry and record, now by `clock`.
pub fn health(store: &dyn Store, clock: &dyn Clock, missed: u32) -> Result<Vec<JobHealth>> {
    let record = store.load()?;
    let stats = store.require_registry()?.run_stats()?;
    Ok(assess(&stats, &record, clock.now(), missed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fencing::FencingToken;
    use crate::site::SiteId;
    use chrono::Duration;

    fn t(mins: i64) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-01-01T12:00:00Z")
            .unwrap()
            .to_utc()
            + Duration::minutes(mins)
    }

    fn record(site: Option<&str>, changed: i64) -> ActiveSite {
        let mut r = ActiveSite::initial();
        r.site = site.map(|s| SiteId::new(s).unwrap());
        r.token = FencingToken(1);
        r.changed_at = t(changed);
        r
    }

    /// `job` on `site`: latest start, latest finish (failed or not), latest success, latest
    /// skip, in minutes from 12:00; every 5 minutes.
    fn stats(
        site: &str,
        started: Option<i64>,
        finished: Option<(i64, bool)>,
        success: Option<i64>,
        skip: Option<i64>,
    ) -> RunStats {
        RunStats {
            started: u64::from(started.is_some()),
            skipped: u64::from(skip.is_some()),
            unfinished: u64::from(started.is_some() && finished.is_none()),
            last_started_at: started.map(t),
            last_finished_at: finished.map(|(m, _)| t(m)),
            last_failed: finished.map(|(_, failed)| failed),
            last_success_at: success.map(t),
            last_skip_at: skip.map(t),
            schedule: started.map(|_| Schedule::Every(300)),
            ..RunStats::new("j", &SiteId::new(site).unwrap())
        }
    }

    fn problems(s: &[RunStats], r: &ActiveSite, now: i64) -> Vec<Problem> {
        let h = assess(s, r, t(now), MISSED_INTERVALS);
        assert_eq!(h.len(), 1);
        h[0].problems.clone()
    }

    #[test]
    fn a_standby_sites_skips_are_not_missed_runs() {
        let s = [
            stats("rbx", Some(-4), Some((-3, false)), Some(-3), None),
            stats("sbg", None, None, None, Some(-4)),
        ];
        assert_eq!(problems(&s, &record(Some("rbx"), -100), 0), vec![]);
    }

    #[test]
    fn the_active_site_is_late_after_the_tolerated_missed_runs_only() {
        let s = [stats("rbx", Some(-13), Some((-12, false)), Some(-12), None)];
        let r = record(Some("rbx"), -100);
        // Due since 2 intervals back: 12:00 - 10 min; the success at -12 is before it.
        assert_eq!(problems(&s, &r, 0), vec![Problem::Late]);
        assert_eq!(problems(&s, &r, -3), vec![]);
    }

    #[test]
    fn a_site_just_made_active_is_due_from_the_flip() {
        // sbg never ran; it became active 2 minutes ago: not late yet, late 10 minutes later.
        let s = [
            stats("rbx", Some(-30), Some((-29, false)), Some(-29), Some(-1)),
            stats("sbg", None, None, None, Some(-6)),
        ];
        let r = record(Some("sbg"), -2);
        assert_eq!(problems(&s, &r, 0), vec![]);
        assert_eq!(problems(&s, &r, 9), vec![Problem::Late]);
    }

    #[test]
    fn no_site_active_and_skips_since_the_last_success_is_skipped_everywhere() {
        let s = [
            stats("rbx", Some(-30), Some((-29, false)), Some(-29), Some(-5)),
            stats("sbg", None, None, None, Some(-5)),
        ];
        assert_eq!(
            problems(&s, &record(None, -20), 0),
            vec![Problem::SkippedEverywhere]
        );
        // No skip since the success: nothing was prevented yet.
        let quiet = [stats("rbx", Some(-30), Some((-29, false)), Some(-29), None)];
        assert_eq!(problems(&quiet, &record(None, -20), 0), vec![]);
    }

    #[test]
    fn overlapping_latest_runs_on_two_sites_are_both_sites() {
        let r = record(Some("sbg"), -10);
        // rbx still running (unfinished) while sbg's run started: both.
        let s = [
            stats("rbx", Some(-12), None, Some(-20), None),
            stats("sbg", Some(-1), Some((0, false)), Some(0), None),
        ];
        assert!(problems(&s, &r, 1).contains(&Problem::BothSites));
        // rbx finished before sbg started: not both.
        let s = [
            stats("rbx", Some(-12), Some((-11, false)), Some(-11), None),
            stats("sbg", Some(-1), Some((0, false)), Some(0), None),
        ];
        assert!(!problems(&s, &r, 1).contains(&Problem::BothSites));
    }

    #[test]
    fn a_failed_last_run_on_the_active_site_is_reported_not_the_standbys() {
        let s = [
            stats("rbx", Some(-2), Some((-1, true)), Some(-6), None),
            stats("sbg", Some(-50), Some((-49, true)), None, None),
        ];
        assert_eq!(
            problems(&s, &record(Some("rbx"), -100), 0),
            vec![Problem::LastRunFailed]
        );
    }

    #[test]
    fn a_job_without_a_schedule_is_never_late() {
        let mut s = stats("rbx", Some(-500), Some((-499, false)), Some(-499), None);
        s.schedule = None;
        assert_eq!(problems(&[s], &record(Some("rbx"), -1000), 0), vec![]);
    }
}
