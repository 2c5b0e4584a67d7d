//! `pra jobs`: every job the run registry knows, with its schedule, its latest success and
//! what is wrong with it (late on the active site, skipped everywhere, run on both sites, last
//! run failed), as [`pra_core::jobs`] judges it.

use chrono::{DateTime, Utc};
use pra_core::jobs::{self, JobHealth};
use pra_core::{Error, SystemClock};

use super::Out;
use crate::config::Config;
use crate::exit;

/// Prints the jobs' health; exits [`exit::STATUS_FAILING`] when a job has a problem, so that a
/// check script can page on the exit code alone.
pub fn jobs(cfg: &Config, out: &Out) -> Result<u8, Error> {
    let store = crate::run::open_job_store(cfg)?;
    let health = jobs::health(&*store, &SystemClock, cfg.missed_intervals)?;
    let now = Utc::now();
    out.print(&health, || table(&health, now))?;
    Ok(if health.iter().any(|j| !j.problems.is_empty()) {
        exit::STATUS_FAILING
    } else {
        exit::OK
    })
}

/// `3m ago`, `2h ago`, `-` for never.
fn ago(t: Option<DateTime<Utc>>, now: DateTime<Utc>) -> String {
    let Some(t) = t else {
        return "-".into();
    };
    let s = (now - t).num_seconds().max(0);
    match s {
        0..120 => format!("{s}s ago"),
        120..7200 => format!("{}m ago", s / 60),
        7200..172_800 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86_400),
    }
}

fn table(health: &[JobHealth], now: DateTime<Utc>) -> String {
    if health.is_empty() {
        return "no jobs yet: a job appears once `pra run --job NAME` ran or skipped it".into();
    }
    let mut rows = vec![[
        "JOB".to_string(),
        "SCHEDULE".into(),
        "LAST SUCCESS".into(),
        "LAST RUN PER SITE".into(),
        "PROBLEMS".into(),
    ]];
    for j in health {
        let per_site: Vec<String> = j
            .sites
            .iter()
            .map(|s| {
                let last = if s.unfinished > 0 {
                    "running".to_string()
                } else {
                    match s.last_failed {
                        Some(true) => format!("failed {}", ago(s.last_finished_at, now)),
                        Some(false) => format!("ok {}", ago(s.last_finished_at, now)),
                        None if s.skipped > 0 => format!("skipped {}", ago(s.last_skip_at, now)),
                        None => "-".into(),
                    }
                };
                format!("{}: {last}", s.site)
            })
            .collect();
        let problems: Vec<&str> = j.problems.iter().map(|p| p.name()).collect();
        rows.push([
            j.job.clone(),
            j.schedule.as_ref().map_or("-".into(), |s| s.to_string()),
            ago(j.last_success_at, now),
            per_site.join(", "),
            if problems.is_empty() {
                "ok".into()
            } else {
                problems.join(", ")
            },
        ]);
    }
    let widths: Vec<usize> = (0..5)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    rows.iter()
        .map(|r| {
            let cells: Vec<String> = r
                .iter()
                .zip(&widths)
                .map(|(cell, w)| format!("{cell:<w$}"))
                .collect();
            cells.join("  ").trim_end().to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}
