//! `pra metrics`: the Prometheus text exposition for node_exporter's textfile collector, by the
//! conventions of Prometheus exporters: our job label is `pra_job` (a `job` label would become
//! `exported_job` behind node_exporter), times are `*_timestamp_seconds` gauges (an age frozen
//! in a stale textfile would look fresh), `pra_store_up` says whether the store answered.

use std::path::PathBuf;

use chrono::Utc;
use pra_core::backup;
use pra_core::plan;
use pra_core::{Error, SiteId};

use crate::config::Config;
use crate::exit;

/// `pra metrics` options.
#[derive(clap::Args, Debug)]
pub struct MetricsArgs {
    /// Write the metrics to FILE atomically (written beside it, then renamed over it: the
    /// textfile collector never reads half a file) instead of standard output.
    #[arg(long, value_name = "FILE")]
    output: Option<PathBuf>,
}

/// Prints (or writes) the metrics in the Prometheus text format. When the store cannot be read
/// the metrics still go out, with `pra_store_up 0` and without what the store would have
/// said, and pra exits with the store's error code (9). A store that keeps no plan state gives
/// no `pra_plan_state`; no verified backup gives no `pra_last_backup_timestamp_seconds`.
pub fn metrics(cfg: &Config, args: &MetricsArgs) -> Result<u8, Error> {
    let (text, failed) = exposition(cfg);
    match &args.output {
        Some(path) => crate::output::write_file_atomic(path, &text)?,
        None => crate::output::stdout(&text)?,
    }
    match failed {
        None => Ok(exit::OK),
        Some(e) => Err(e),
    }
}

/// The metrics text, and the store's error if it could not be read (the text says so with
/// `pra_store_up 0`): what `pra metrics` prints and `pra serve` answers on /metrics.
pub fn exposition(cfg: &Config) -> (String, Option<Error>) {
    let mut m = String::new();
    let failed = collect(cfg, &mut m).err();
    let mut up = String::new();
    metric(
        &mut up,
        "pra_store_up",
        "1 if the store answered, 0 if it could not be read.",
        "gauge",
        vec![(String::new(), u8::from(failed.is_none()).to_string())],
    );
    metric(
        &mut up,
        "pra_metrics_timestamp_seconds",
        "When these metrics were taken (Unix time).",
        "gauge",
        vec![(String::new(), Utc::now().timestamp().to_string())],
    );
    // The settings the alert rules compare with (examples/monitoring).
    for (name, help, value) in [
        (
            "pra_config_drain_timeout_seconds",
            "drain_timeout_seconds: how long a flip waits for the old site's runs.",
            cfg.drain_timeout,
        ),
        (
            "pra_config_backup_interval_seconds",
            "backup_interval_seconds: how often a backup is expected.",
            cfg.backup_interval,
        ),
    ] {
        metric(
            &mut up,
            name,
            help,
            "gauge",
            vec![(String::new(), value.num_seconds().to_string())],
        );
    }
    if let Ok(Some(latest)) = backup::latest_verified(&cfg.backup_dir) {
        metric(
            &mut up,
            "pra_last_backup_timestamp_seconds",
            "When the newest verified backup was taken (Unix time).",
            "gauge",
            vec![(String::new(), latest.id.time.timestamp().to_string())],
        );
    }
    #[cfg(feature = "offsite")]
    if cfg.offsite.is_some() {
        let remote = super::offsite::listing(cfg);
        metric(
            &mut up,
            "pra_offsite_up",
            "1 if the offsite backup target could be listed.",
            "gauge",
            vec![(String::new(), u8::from(remote.is_ok()).to_string())],
        );
        if let Ok(list) = &remote {
            metric(
                &mut up,
                "pra_offsite_backups",
                "Backups listed at the offsite target.",
                "gauge",
                vec![(String::new(), list.len().to_string())],
            );
            if let Some(at) = backup::offsite::last_verified(list) {
                metric(
                    &mut up,
                    "pra_offsite_last_verified_timestamp_seconds",
                    "When a backup at the offsite target last passed `pra verify --remote` (Unix time).",
                    "gauge",
                    vec![(String::new(), at.timestamp().to_string())],
                );
            }
        }
    }
    (format!("{up}{m}"), failed)
}

/// Appends one metric (its HELP, its TYPE and its samples: labels, value) to `m`.
fn metric(m: &mut String, name: &str, help: &str, kind: &str, samples: Vec<(String, String)>) {
    m.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
    for (labels, value) in samples {
        m.push_str(&format!("{name}{labels} {value}\n"));
    }
}

/// The metrics that come from the store, appended to `m`.
fn collect(cfg: &Config, m: &mut String) -> Result<(), Error> {
    let store = cfg.open_store()?;
    let record = store.load()?;
    let site = cfg.this_site().ok();
    let mut metric = |name: &str, help: &str, kind: &str, samples: Vec<(String, String)>| {
        metric(m, name, help, kind, samples)
    };
    let label = |pairs: &[(&str, &str)]| {
        let inner: Vec<String> = pairs
            .iter()
            .map(|(k, v)| {
                format!(
                    "{k}=\"{}\"",
                    v.replace('\\', "\\\\")
                        .replace('"', "\\\"")
                        .replace('\n', "\\n")
                )
            })
            .collect();
        format!("{{{}}}", inner.join(","))
    };
    metric(
        "pra_active_site",
        "1 for the site that holds the active role (site=\"none\" when no site does).",
        "gauge",
        vec![(
            label(&[("site", record.site.as_ref().map_or("none", SiteId::as_str))]),
            "1".into(),
        )],
    );
    metric(
        "pra_fencing_token",
        "The active-site record's fencing token.",
        "gauge",
        vec![(String::new(), record.token.to_string())],
    );
    metric(
        "pra_active_site_changed_timestamp_seconds",
        "When the active-site record last changed (Unix time): with pra_active_site{site=\"none\"}, how long no site has been active.",
        "gauge",
        vec![(String::new(), record.changed_at.timestamp().to_string())],
    );
    if let Some(site) = &site {
        let active = record.site.as_ref() == Some(site);
        metric(
            "pra_site_active",
            "1 if this host's site may run jobs, 0 if it is standby.",
            "gauge",
            vec![(
                label(&[("site", site.as_str())]),
                u8::from(active).to_string(),
            )],
        );
    }
    let stats = match store.registry() {
        Some(registry) => registry.run_stats()?,
        None => Vec::new(),
    };
    for (name, help, get) in [
        (
            "pra_runs_started_total",
            "Runs started by `pra run`.",
            (|s: &pra_core::store::RunStats| s.started) as fn(&_) -> u64,
        ),
        (
            "pra_runs_skipped_total",
            "Runs skipped because their site was standby.",
            |s| s.skipped,
        ),
        (
            "pra_runs_revoked_total",
            "Runs stopped because their site lost the active role.",
            |s| s.revoked,
        ),
        ("pra_runs_unfinished", "Runs not finished yet.", |s| {
            s.unfinished
        }),
    ] {
        let kind = if name.ends_with("_total") {
            "counter"
        } else {
            "gauge"
        };
        metric(
            name,
            help,
            kind,
            stats
                .iter()
                .map(|s| {
                    (
                        label(&[("pra_job", &s.job), ("site", s.site.as_str())]),
                        get(s).to_string(),
                    )
                })
                .collect(),
        );
    }
    let ts = |t: Option<chrono::DateTime<Utc>>| t.map(|t| t.timestamp().to_string());
    let health = pra_core::jobs::assess(&stats, &record, Utc::now(), cfg.missed_intervals);
    let per_job = |get: &dyn Fn(&pra_core::jobs::JobHealth) -> Option<String>| {
        health
            .iter()
            .filter_map(|j| Some((label(&[("pra_job", &j.job)]), get(j)?)))
            .collect::<Vec<_>>()
    };
    let per_site = |get: &dyn Fn(&pra_core::store::RunStats) -> Option<String>| {
        stats
            .iter()
            .filter_map(|s| {
                Some((
                    label(&[("pra_job", &s.job), ("site", s.site.as_str())]),
                    get(s)?,
                ))
            })
            .collect::<Vec<_>>()
    };
    metric(
        "pra_job_interval_seconds",
        "Seconds between two runs by the job's declared schedule (pra run --every/--cron).",
        "gauge",
        per_job(&|j| j.interval_seconds.map(|s| s.to_string())),
    );
    metric(
        "pra_job_last_success_timestamp_seconds",
        "When the job's latest successful run on the site finished (Unix time).",
        "gauge",
        per_site(&|s| ts(s.last_success_at)),
    );
    metric(
        "pra_job_last_skip_timestamp_seconds",
        "When the job was last skipped on the site because it was standby (Unix time).",
        "gauge",
        per_site(&|s| ts(s.last_skip_at)),
    );
    metric(
        "pra_job_last_failed",
        "1 if the job's latest finished run on the site failed (exit code not 0, killed, revoked, lost).",
        "gauge",
        per_site(&|s| s.last_failed.map(|f| u8::from(f).to_string())),
    );
    for (problem, name, help) in [
        (
            pra_core::jobs::Problem::Late,
            "pra_job_late",
            "1 if the job has not run successfully on the active site for more than missed_intervals of its schedule.",
        ),
        (
            pra_core::jobs::Problem::BothSites,
            "pra_job_both_sites",
            "1 if the job's latest runs on the two sites overlapped in time (must never happen).",
        ),
        (
            pra_core::jobs::Problem::SkippedEverywhere,
            "pra_job_skipped_everywhere",
            "1 if no site is active and the job was skipped since it last succeeded.",
        ),
    ] {
        metric(
            name,
            help,
            "gauge",
            per_job(&|j| Some(u8::from(j.problems.contains(&problem)).to_string())),
        );
    }
    if let Some(plans) = store.plans() {
        let p = plans.load_plan()?;
        {
            let p = p.and_then(|p| serde_json::from_value::<plan::Plan>(p.doc).ok());
            if let Some(at) = p.as_ref().and_then(|p| p.steps.last()).map(|s| s.at) {
                metric(
                    "pra_plan_state_changed_timestamp_seconds",
                    "When the plan last changed state (Unix time).",
                    "gauge",
                    vec![(String::new(), at.timestamp().to_string())],
                );
            }
            let state = p.map_or(plan::State::Normal, |p| p.state);
            metric(
                "pra_plan_state",
                "1 for the plan's current state.",
                "gauge",
                plan::State::ALL
                    .iter()
                    .map(|s| {
                        (
                            label(&[("state", s.name())]),
                            u8::from(*s == state).to_string(),
                        )
                    })
                    .collect(),
            );
        }
    }
    Ok(())
}
