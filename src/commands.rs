//! The handlers of `pra`'s subcommands (but `run` and `drill`, which have their own modules):
//! each parses its arguments into a pra-core call and prints the answer as text or JSON.

use chrono::{DateTime, NaiveDateTime, Utc};
use pra_core::backup::restore::{self, RestorePoint};
use pra_core::backup::retention::{self, Policy};
use pra_core::backup::{self, Health, Method};
use pra_core::plan::{self, Applied, Event, EventKind, Needs, Runner};
use pra_core::store::{JournalEvent, Store};
use pra_core::{Actor, Error, FencingToken, SiteChange, SiteId, SystemClock, Verdict};
use serde::Serialize;

use crate::config::Config;
use crate::exit;

/// How to print.
pub struct Out {
    pub json: bool,
}

impl Out {
    /// Prints `value` as pretty JSON, or `text()` otherwise.
    pub fn print<T: Serialize>(&self, value: &T, text: impl FnOnce() -> String) {
        if self.json {
            println!(
                "{}",
                serde_json::to_string_pretty(value).expect("pra values serialize")
            );
        } else {
            let t = text();
            if !t.is_empty() {
                println!("{}", t.trim_end());
            }
        }
    }
}

#[derive(clap::Subcommand, Debug)]
pub enum SiteCmd {
    /// Show the active-site record.
    Show,
    /// Make SITE active; only while no site is active (break before make), and only once no
    /// run of an older token is alive (the same drain as the plan's).
    Activate {
        site: String,
        /// The token you saw in `pra site show`: the change fails if the record moved since.
        #[arg(long)]
        expect_token: u64,
        /// Do not wait for live runs of the old token: refuse (exit 8) while there are.
        #[arg(long)]
        no_wait: bool,
        /// Activate past live runs of the old token (needs --reason; journaled).
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        who: Who,
    },
    /// Make no site active (the seed's ACTIVE_SITE=NONE).
    Deactivate {
        /// The token you saw in `pra site show`.
        #[arg(long)]
        expect_token: u64,
        #[command(flatten)]
        who: Who,
    },
}

#[derive(clap::Args, Debug)]
pub struct Who {
    /// Who makes the change [default: $USER].
    #[arg(long, env = "USER", default_value = "unknown")]
    pub by: String,
    /// Why, for the journal.
    #[arg(long, default_value = "")]
    pub reason: String,
}

#[derive(clap::Subcommand, Debug)]
pub enum PlanCmd {
    /// Start a failover: the incident is detected (seed step 1).
    StartFailover {
        #[command(flatten)]
        who: Who,
    },
    /// Start a failback: the primary is restored (seed step 7).
    StartFailback {
        #[command(flatten)]
        who: Who,
    },
    /// Show the current state and the events it accepts.
    Next,
    /// Apply an event (e.g. failover-decided --operator alice, drained, commit-failback).
    #[command(after_help = events_help())]
    Apply {
        /// The event name (listed below).
        event: String,
        /// The operator who passes a manual gate.
        #[arg(long)]
        operator: Option<String>,
        /// For `drained`: try once instead of waiting up to drain_timeout_seconds.
        #[arg(long)]
        no_wait: bool,
        #[command(flatten)]
        who: Who,
    },
    /// Abort the plan before it is committed.
    Abort {
        #[command(flatten)]
        who: Who,
    },
    /// The plan's state and steps.
    Status,
    /// The KPIs of the last plan: RTO, RPO, failback time, fenced time, double execution.
    Report,
}

#[derive(clap::Args, Debug)]
pub struct PruneArgs {
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

/// How an event is written on the command line, with what it needs: `failover-decided
/// --operator NAME`.
fn usage(kind: EventKind) -> String {
    let needs = match kind.needs() {
        Needs::Nothing => "",
        Needs::Operator => " --operator NAME",
        Needs::Reason => " --reason WHY",
    };
    format!("{}{needs}", kind.name().replace('_', "-"))
}

/// The end of `pra plan apply`'s help: every event of the plan's vocabulary, with what it needs
/// and what it means.
fn events_help() -> String {
    let mut s =
        String::from("Events (each state accepts only some: `pra plan next` lists those):\n");
    let width = EventKind::ALL.map(|k| usage(k).len()).into_iter().max();
    for k in EventKind::ALL {
        let width = width.unwrap_or_default();
        s.push_str(&format!("  {:<width$}  {}\n", usage(k), k.doc()));
    }
    s
}

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

fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
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

fn site_name(s: Option<&SiteId>) -> &str {
    s.map_or("NONE", SiteId::as_str)
}

pub fn check(cfg: &Config, out: &Out) -> Result<u8, Error> {
    let site = cfg.this_site()?;
    let store = cfg.open_store()?;
    let verdict = pra_core::check(&*store, &site)?;
    out.print(&verdict, || match &verdict {
        Verdict::Run { token } => format!("{site}: active (token {token}): jobs may run"),
        Verdict::Standby { active, token } => {
            format!(
                "{site}: standby: active site is {} (token {token}): jobs must not run",
                site_name(active.as_ref())
            )
        }
    });
    Ok(if verdict.may_run() {
        exit::OK
    } else {
        exit::STANDBY
    })
}

pub fn site(cfg: &Config, out: &Out, cmd: &SiteCmd) -> Result<u8, Error> {
    let store = cfg.open_store()?;
    let record = match cmd {
        SiteCmd::Show => store.load()?,
        SiteCmd::Activate {
            site,
            expect_token,
            no_wait,
            force,
            who,
        } => {
            let std = |d: chrono::Duration| d.to_std().unwrap_or_default();
            let (record, drained) = pra_core::run::activate(
                &*store,
                &SystemClock,
                &cfg.topology.site(site)?,
                FencingToken(*expect_token),
                &Actor::new(&who.by, &who.reason)?,
                &pra_core::run::ActivateOptions {
                    wait: !no_wait,
                    timeout: std(cfg.drain_timeout),
                    poll: std::time::Duration::from_millis(500),
                    lost_after: std(cfg.lost_after),
                    force: *force,
                },
            )?;
            match drained {
                pra_core::run::Drained::Clean => {}
                pra_core::run::Drained::Forced { alive_runs } => eprintln!(
                    "pra: activated past {alive_runs} live run(s) of the old token (forced; journaled)"
                ),
                pra_core::run::Drained::NoRegistry => eprintln!(
                    "pra: warning: {} keeps no run registry: nothing was drained; jobs of the old site may still run",
                    store.url()
                ),
            }
            record
        }
        SiteCmd::Deactivate { expect_token, who } => store.change(
            SiteChange::Deactivate {
                expect: FencingToken(*expect_token),
            },
            &Actor::new(&who.by, &who.reason)?,
        )?,
    };
    out.print(&record, || {
        format!(
            "active site: {}  token: {}  changed {} by {}{}",
            site_name(record.site.as_ref()),
            record.token,
            record.changed_at.format("%Y-%m-%d %H:%M:%S UTC"),
            record.changed_by,
            if record.reason.is_empty() {
                String::new()
            } else {
                format!(" ({})", record.reason)
            }
        )
    });
    Ok(exit::OK)
}

pub fn journal(cfg: &Config, out: &Out, verify: bool) -> Result<u8, Error> {
    let store = cfg.open_store()?;
    if verify {
        let check = store.verify_journal()?;
        out.print(&check, || {
            format!(
                "journal intact: {} entries, head {}",
                check.entries, check.head
            )
        });
        return Ok(exit::OK);
    }
    let entries = store.journal()?;
    out.print(&entries, || {
        entries
            .iter()
            .map(|e| {
                format!(
                    "{:>5}  {}  {:<12} {}\n",
                    e.seq,
                    e.at.format("%Y-%m-%d %H:%M:%S%.3f"),
                    e.by,
                    describe(&e.event)
                )
            })
            .collect()
    });
    Ok(exit::OK)
}

/// One line for a journal event.
pub fn describe(event: &JournalEvent) -> String {
    match event {
        JournalEvent::SiteChanged { old, new } => format!(
            "active site {} -> {} (token {} -> {}){}",
            site_name(old.site.as_ref()),
            site_name(new.site.as_ref()),
            old.token,
            new.token,
            if new.reason.is_empty() {
                String::new()
            } else {
                format!(": {}", new.reason)
            }
        ),
        JournalEvent::PlanStep {
            plan,
            from,
            event,
            to,
            operator,
        } => format!(
            "plan {plan}: {from} --{event}--> {to}{}",
            operator
                .as_ref()
                .map_or(String::new(), |o| format!(" (gate passed by {o})"))
        ),
        JournalEvent::DrainForced { plan, alive_runs } => {
            format!("plan {plan}: drain FORCED past {alive_runs} live run(s)")
        }
    }
}

pub fn plan(cfg: &Config, out: &Out, cmd: &PlanCmd) -> Result<u8, Error> {
    let store = cfg.open_store()?;
    let clock = SystemClock;
    let runner = Runner::new(&*store, &cfg.topology, &clock, cfg.drain_policy());
    let (event, who, wait) = match cmd {
        PlanCmd::StartFailover { who } => (Event::IncidentDetected, who, false),
        PlanCmd::StartFailback { who } => (Event::PrimaryRestored, who, false),
        PlanCmd::Abort { who } => (
            Event::new(EventKind::Abort, None, Some(&who.reason))?,
            who,
            false,
        ),
        PlanCmd::Apply {
            event,
            operator,
            no_wait,
            who,
        } => {
            let kind = EventKind::parse(event)?;
            (
                Event::new(kind, operator.as_deref(), Some(&who.reason))?,
                who,
                kind == EventKind::Drained && !no_wait,
            )
        }
        PlanCmd::Next | PlanCmd::Status => {
            let p = runner.plan()?;
            let record = store.load()?;
            let next = plan::allowed(p.state);
            out.print(
                &serde_json::json!({ "plan": p, "allowed": next, "record": record }),
                || {
                    let mut s = format!(
                        "plan: {}  state: {}  active site: {} (token {})\n",
                        p.id.as_deref().unwrap_or("-"),
                        p.state,
                        site_name(record.site.as_ref()),
                        record.token
                    );
                    if matches!(cmd, PlanCmd::Status) {
                        for st in &p.steps {
                            s.push_str(&format!(
                                "  {}  {:<24} {} -> {}  by {}\n",
                                st.at.format("%H:%M:%S"),
                                st.event.kind(),
                                st.from,
                                st.to,
                                st.by
                            ));
                        }
                    }
                    s.push_str("next:\n");
                    for k in next {
                        s.push_str(&format!("  pra plan apply {}\n", usage(k)));
                    }
                    s
                },
            );
            return Ok(exit::OK);
        }
        PlanCmd::Report => return plan_report(cfg, out, &*store),
    };
    let actor = Actor::new(&who.by, &who.reason)?;
    let applied = if wait {
        runner.drain(&actor)?
    } else {
        runner.apply(event, &actor)?
    };
    match &applied {
        Applied::Done {
            transition,
            record,
            plan,
        } => out.print(
            &serde_json::json!({"applied": transition, "record": record, "plan": plan}),
            || {
                format!(
                    "plan {}: {} --{}--> {}\nactive site: {} (token {})",
                    plan.id.as_deref().unwrap_or("-"),
                    transition.from,
                    transition.event,
                    transition.to,
                    site_name(record.site.as_ref()),
                    record.token
                )
            },
        ),
        Applied::AlreadyApplied { step } => {
            out.print(&serde_json::json!({"already_applied": step}), || {
                format!(
                    "already applied at {} by {}: {} -> {}; nothing repeated",
                    step.at.format("%Y-%m-%d %H:%M:%S"),
                    step.by,
                    step.from,
                    step.to
                )
            })
        }
    }
    Ok(exit::OK)
}

fn plan_report(cfg: &Config, out: &Out, store: &dyn Store) -> Result<u8, Error> {
    let r = plan::report::build(store, &cfg.backup_dir, cfg.lost_after, &SystemClock)?;
    out.print(&r, || r.table());
    Ok(exit::OK)
}

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
    let stats = store.run_stats()?;
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
    match store.load_plan() {
        Ok(p) => {
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
        Err(e) if e.kind() == pra_core::ErrorKind::Unsupported => {}
        Err(e) => return Err(e),
    }
    print!("{m}");
    Ok(exit::OK)
}

pub fn backup(cfg: &Config, out: &Out) -> Result<u8, Error> {
    let b = backup::create(&cfg.db, &cfg.backup_dir, Method::Auto, &SystemClock)?;
    out.print(&b, || {
        let m = b.manifest.as_ref();
        format!(
            "{}  {} bytes  {} ms  sha256 {}",
            b.path.display(),
            b.size,
            m.map_or(0, |m| m.duration_ms),
            m.map_or("-", |m| &m.sha256[..16])
        )
    });
    Ok(exit::OK)
}

fn health(h: &Health) -> String {
    match h {
        Health::Verified => "verified".into(),
        Health::Unverified => "unverified (no manifest)".into(),
        Health::Corrupt { reason } => format!("CORRUPT: {reason}"),
    }
}

pub fn backups(cfg: &Config, out: &Out) -> Result<u8, Error> {
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
    });
    Ok(exit::OK)
}

pub fn prune(cfg: &Config, out: &Out, a: &PruneArgs) -> Result<u8, Error> {
    let policy = Policy {
        keep_last: a.keep_last,
        keep_within: a.keep_within,
        keep_hourly: a.keep_hourly,
        keep_daily: a.keep_daily,
        keep_weekly: a.keep_weekly,
        keep_monthly: a.keep_monthly,
    };
    let decisions = retention::prune(&cfg.backup_dir, &policy, a.dry_run)?;
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
    });
    Ok(exit::OK)
}

pub fn restore(cfg: &Config, out: &Out, a: &RestoreArgs) -> Result<u8, Error> {
    let point = match (&a.name, a.before) {
        (Some(n), _) => RestorePoint::Name(n.clone()),
        (None, Some(t)) => RestorePoint::Before(t),
        (None, None) => RestorePoint::Latest,
    };
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
        });
        return Ok(exit::OK);
    }
    let opts = restore::Options {
        safety_copy: !a.no_safety_copy,
    };
    let r = restore::restore(&cfg.db, &cfg.backup_dir, &point, opts, &SystemClock)?;
    out.print(&r, || {
        format!(
            "restored {} over {}{}",
            r.backup,
            cfg.db.display(),
            r.safety_copy.as_ref().map_or(String::new(), |p| format!(
                "; previous database kept as {}",
                p.display()
            ))
        )
    });
    Ok(exit::OK)
}

/// Prints the status document; exits [`exit::STATUS_FAILING`] when the database is unavailable,
/// there is no verified backup or the store cannot be read (the document says which).
pub fn status(cfg: &Config, out: &Out) -> Result<u8, Error> {
    let (store, store_error) = match cfg.open_store() {
        Ok(s) => (Some(s), None),
        Err(e) => (None, Some(e)),
    };
    let opts = pra_core::status::Options {
        table: cfg.table.clone(),
        backup_interval: cfg.backup_interval,
        ..Default::default()
    };
    let mut s = pra_core::status::status(
        &cfg.db,
        &cfg.backup_dir,
        &opts,
        store.as_deref(),
        &SystemClock,
    )?;
    if let Some(e) = &store_error {
        s.problems.push(format!("store: {e}"));
    }
    // A store that opened but could not be read left `active_site` empty ("none" when no site
    // is active).
    let store_unreadable = store_error.is_some() || s.active_site.is_none();
    let failing =
        !s.database_ok || s.backup_state == pra_core::status::BackupState::None || store_unreadable;
    out.print(&s, || {
        let mut t = format!(
            "count: {}\nlast backup: {} ({})\nbackups: {}  state: {:?}\nactive site: {} (token {})\n",
            s.count.map_or("unavailable".into(), |c| c.to_string()),
            s.last_backup_file.as_deref().unwrap_or("none"),
            s.backup_age_seconds.map_or("-".into(), |a| format!("{a}s old")),
            s.backup_count,
            s.backup_state,
            s.active_site.as_deref().unwrap_or("unknown"),
            s.token.map_or("-".into(), |t| t.to_string())
        );
        for p in &s.problems {
            t.push_str(&format!("problem: {p}\n"));
        }
        t
    });
    Ok(if failing {
        exit::STATUS_FAILING
    } else {
        exit::OK
    })
}
