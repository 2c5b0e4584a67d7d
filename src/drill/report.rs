//! The drill's report: what the scenario measured ([`Measured`]), judged against the seed's
//! targets ([`DrillReport::judge`]), as JSON and as markdown.

use std::path::{Path, PathBuf};
use std::time::Duration;

use pra_core::plan;
use pra_core::{Error, SiteId};
use serde::Serialize;

/// The restore part of the report.
#[derive(Debug, Serialize)]
pub(super) struct RestoreKpis {
    pub(super) backup: String,
    pub(super) rows_before_loss: u64,
    pub(super) rows_after_restore: u64,
    pub(super) rows_lost: u64,
    pub(super) rpo_seconds: f64,
    pub(super) rto_seconds: f64,
}

/// Per-site job figures.
#[derive(Debug, Serialize)]
pub(super) struct JobFigures {
    pub(super) site: String,
    pub(super) runs_started: u64,
    pub(super) runs_skipped: u64,
    pub(super) job_rows_written: u64,
}

/// The double-execution window measured from the jobs' own writes in the app database.
#[derive(Debug, Serialize)]
pub(super) struct GroundTruth {
    /// Slices of work the jobs recorded.
    units: usize,
    /// Seconds during which the same job worked on both sites.
    double_execution_seconds: f64,
    /// Where.
    overlaps: Vec<plan::Overlap>,
}

/// The faults the drill injected into the secondary's wrappers during the failback.
#[derive(Debug, Serialize)]
pub(super) struct Disturbed {
    /// The wrapper SIGKILLed while its job ran.
    pub(super) killed_wrapper: Option<i32>,
    /// The wrapper SIGSTOPped (and resumed after the flip) while its job ran.
    pub(super) paused_wrapper: Option<i32>,
}

/// The drill's report.
#[derive(Debug, Serialize)]
pub(super) struct DrillReport {
    scratch: PathBuf,
    store: String,
    plan: plan::Report,
    ground_truth: GroundTruth,
    disturbed: Disturbed,
    restore: RestoreKpis,
    jobs: Vec<JobFigures>,
    checks: Vec<plan::Check>,
    pub(super) passed: bool,
}

/// What the scenario measured, for [`DrillReport::judge`].
pub(super) struct Measured {
    pub(super) scratch: PathBuf,
    pub(super) store: String,
    /// The plan's KPIs, from the journal and the run registry.
    pub(super) plan: plan::Report,
    pub(super) disturbed: Disturbed,
    pub(super) restore: RestoreKpis,
    pub(super) jobs: Vec<JobFigures>,
    /// The slices of work the jobs recorded in the job database.
    pub(super) units: Vec<plan::WorkUnit>,
    /// Where the job wrote (the app's SQLite, or PostgreSQL), for the report.
    pub(super) job_db: String,
    /// Business rows committed after a row of a higher token (from the job database's rows in
    /// commit order): a stale token's write the fence let through.
    pub(super) stale_writes: u64,
}

impl DrillReport {
    /// The plan's checks (but its RPO, which the database loss measures better), the drill's
    /// own, and the double-execution window from the jobs' own writes, which must be 0 and agree
    /// with the registry's. The drill passes when no check fails and both windows are 0.
    pub(super) fn judge(m: Measured) -> DrillReport {
        let Measured {
            scratch,
            store,
            plan: plan_report,
            disturbed,
            restore: restore_kpis,
            jobs,
            units,
            job_db,
            stale_writes,
        } = m;
        let mut checks = plan_report.checks.clone();
        checks.retain(|c| !c.name.starts_with("RPO"));
        checks.push(plan::Check {
            name: "fenced time, total (no site active)".into(),
            value_seconds: Some(plan_report.fenced.iter().map(|p| p.seconds).sum()),
            target: "<= drain timeout (20 s)".into(),
            pass: Some(
                plan_report
                    .fenced
                    .iter()
                    .all(|p| p.end.is_some() && p.seconds <= 20.0),
            ),
        });
        checks.push(plan::Check {
            name: format!("stale writes admitted at the fence ({job_db}, from its rows)"),
            value_seconds: None,
            target: format!("0 (found {stale_writes})"),
            pass: Some(stale_writes == 0),
        });
        checks.push(plan::Check {
            name: "RPO after database loss (backup age)".into(),
            value_seconds: Some(restore_kpis.rpo_seconds),
            target: "<= 60 s (seed: backup every minute)".into(),
            pass: Some(restore_kpis.rpo_seconds <= 60.0),
        });
        checks.push(plan::Check {
            name: "RTO of the restore".into(),
            value_seconds: Some(restore_kpis.rto_seconds),
            target: "<= 180 s (seed: 1-3 min)".into(),
            pass: Some(restore_kpis.rto_seconds <= 180.0),
        });
        let rbx_skipped = jobs
            .iter()
            .find(|j| j.site == "rbx")
            .map_or(0, |j| j.runs_skipped);
        checks.push(plan::Check {
            name: "primary's crons fenced while it booted".into(),
            value_seconds: None,
            target: "skipped > 0 during the failback".into(),
            pass: Some(rbx_skipped > 0),
        });
        // Ground truth: what the jobs wrote, not what pra's registry believes.
        let (truth, truth_overlaps) = plan::ground_truth(&units);
        let registry = plan_report.double_execution_seconds;
        checks.insert(
            1,
            plan::Check {
                name: "double-execution window, from the jobs' own writes".into(),
                value_seconds: Some(truth),
                target: "0 s, and equal to the registry's".into(),
                pass: Some(truth == 0.0 && registry == truth && !units.is_empty()),
            },
        );
        let ground_truth = GroundTruth {
            units: units.len(),
            double_execution_seconds: truth,
            overlaps: truth_overlaps,
        };
        let passed =
            checks.iter().all(|c| c.pass != Some(false)) && registry == 0.0 && truth == 0.0;
        DrillReport {
            scratch,
            store,
            plan: plan_report,
            ground_truth,
            disturbed,
            restore: restore_kpis,
            jobs,
            checks,
            passed,
        }
    }

    /// Writes report.json and report.md into `dir`.
    pub(super) fn write(&self, dir: &Path, md: &str) -> Result<(), Error> {
        std::fs::write(
            dir.join("report.json"),
            serde_json::to_vec_pretty(self).map_err(|e| Error::Internal(e.to_string()))?,
        )
        .map_err(|e| Error::io("write", dir.join("report.json"), e))?;
        std::fs::write(dir.join("report.md"), md)
            .map_err(|e| Error::io("write", dir.join("report.md"), e))
    }
}

/// The report as markdown, with how long the drill took.
pub(super) fn markdown(r: &DrillReport, took: Duration) -> String {
    let v = |s: Option<f64>| s.map_or("-".to_string(), plan::human);
    let mut m = String::from("# pra disaster-recovery drill\n\n");
    m.push_str(&format!(
        "Scratch directory `{}`, store `{}`, sites rbx (primary) and sbg; ran {:.1} s.\n\n",
        r.scratch.display(),
        r.store,
        took.as_secs_f64()
    ));
    m.push_str(&format!(
        "**Double-execution window: {} from the run registry, {} from the jobs' own writes ({} slices of work)**\n\n",
        plan::human(r.plan.double_execution_seconds),
        plan::human(r.ground_truth.double_execution_seconds),
        r.ground_truth.units
    ));
    m.push_str(&format!(
        "During the failback, one of sbg's wrappers was SIGKILLed (pid {}) and one SIGSTOPped until after the flip (pid {}), while their jobs ran.\n\n",
        r.disturbed.killed_wrapper.map_or("none found".into(), |p| p.to_string()),
        r.disturbed.paused_wrapper.map_or("none found".into(), |p| p.to_string())
    ));
    m.push_str("| KPI | measured | target | verdict |\n|---|---|---|---|\n");
    for c in &r.checks {
        let verdict = if c.pass == Some(false) {
            "**FAIL**"
        } else {
            c.verdict()
        };
        m.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            c.name,
            v(c.value_seconds),
            c.target,
            verdict
        ));
    }
    m.push_str("\n| site | runs started | runs skipped (standby) | job rows written |\n|---|---|---|---|\n");
    for j in &r.jobs {
        m.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            j.site, j.runs_started, j.runs_skipped, j.job_rows_written
        ));
    }
    m.push_str(&format!(
        "\nDatabase loss: {} rows before, {} after restoring `{}` ({} rows lost, backup {} old, restore took {}).\n",
        r.restore.rows_before_loss,
        r.restore.rows_after_restore,
        r.restore.backup,
        r.restore.rows_lost,
        plan::human(r.restore.rpo_seconds),
        plan::human(r.restore.rto_seconds)
    ));
    m.push_str("\nFenced periods (no site active):\n\n");
    for p in &r.plan.fenced {
        m.push_str(&format!(
            "- {} -> {}: {}\n",
            p.from_site.as_ref().map_or("NONE", SiteId::as_str),
            p.to_site.as_ref().map_or("...", SiteId::as_str),
            plan::human(p.seconds)
        ));
    }
    m.push_str("\nThe drill is compressed in time (seconds instead of minutes): the KPIs are the seed's, the durations are the drill's.\n");
    m
}
