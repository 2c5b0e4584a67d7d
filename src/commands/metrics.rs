//! `pra metrics`: the Prometheus text exposition for node_exporter's textfile collector.

use chrono::Utc;
use pra_core::backup;
use pra_core::plan;
use pra_core::{Error, SiteId};

use crate::config::Config;
use crate::exit;

/// Prints the metrics in the Prometheus text format. A store that keeps no plan state gives no
/// `pra_plan_state`; no verified backup gives no `pra_last_backup_age_seconds`.
pub fn metrics(cfg: &Config) -> Result<u8, Error> {
    let store = cfg.open_store()?;
    let record = store.load()?;
    let site = cfg.this_site().ok();
    let mut m = String::new();
    let mut metric = |name: &str, help: &str, kind: &str, samples: Vec<(String, String)>| {
        m.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        for (labels, value) in samples {
            m.push_str(&format!("{name}{labels} {value}\n"));
        }
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
                        label(&[("job", &s.job), ("site", s.site.as_str())]),
                        get(s).to_string(),
                    )
                })
                .collect(),
        );
    }
    if let Ok(Some(latest)) = backup::latest_verified(&cfg.backup_dir) {
        let age = (Utc::now() - latest.id.time).num_seconds();
        metric(
            "pra_last_backup_age_seconds",
            "Age of the newest verified backup.",
            "gauge",
            vec![(String::new(), age.to_string())],
        );
    }
    #[cfg(feature = "offsite")]
    if cfg.offsite.is_some() {
        let remote = super::offsite::listing(cfg);
        metric(
            "pra_offsite_up",
            "1 if the offsite backup target could be listed.",
            "gauge",
            vec![(String::new(), u8::from(remote.is_ok()).to_string())],
        );
        if let Ok(list) = &remote {
            metric(
                "pra_offsite_backups",
                "Backups listed at the offsite target.",
                "gauge",
                vec![(String::new(), list.len().to_string())],
            );
            if let Some(age) = pra_core::backup::offsite::since_last_verified(list, Utc::now()) {
                metric(
                    "pra_offsite_last_verified_age_seconds",
                    "Seconds since the last successful `pra verify --remote` of a backup.",
                    "gauge",
                    vec![(String::new(), age.to_string())],
                );
            }
        }
    }
    if let Some(plans) = store.plans() {
        let p = plans.load_plan()?;
        {
            let state = p
                .and_then(|p| serde_json::from_value::<plan::Plan>(p.doc).ok())
                .map_or(plan::State::Normal, |p| p.state);
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
    print!("{m}");
    Ok(exit::OK)
}
