//! The drill's scenario: the script of an incident on the primary, its failover, a failback in
//! which the primary boots while the secondary still runs its crons, and the loss and restore
//! of the app's database, played on real processes through the plan's runner.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use chrono::Utc;
use pra_core::backup::restore::{self, RestorePoint};
use pra_core::plan::{self, Applied, DrainPolicy, Event, EventKind, Runner};
use pra_core::{Actor, Error, FencingToken, SiteChange, SiteId, SystemClock, Topology};

use super::harness::{self, Drill, Loop, Procs, pause};
use super::jobdb::{self, JobDb};
use super::report::{self, Disturbed, DrillReport, Measured, RestoreKpis};
use crate::exit;

/// Applies one event of the script with the drill's operator and reason (waiting for a drain);
/// an event found already applied is a bug in the script.
fn apply(runner: &Runner<'_>, kind: EventKind, actor: &Actor) -> Result<(), Error> {
    let event = Event::new(kind, Some("drill-operator"), Some("drill"))?;
    let applied = if kind == EventKind::Drained {
        runner.drain(actor)?
    } else {
        runner.apply(event, actor)?
    };
    match applied {
        Applied::Done { .. } => Ok(()),
        Applied::AlreadyApplied { step } => Err(Error::Internal(format!(
            "{kind} was already applied at {}",
            step.at
        ))),
    }
}

/// Runs the drill; exit 0 only if every KPI passes (and the double-execution window is 0).
/// With `remote`, the database-loss scenario's last backup is uploaded to that offsite target
/// and the restore comes from there (downloaded, decrypted, checked), not from the backup
/// directory.
pub fn run(
    dir: Option<&Path>,
    store_url: Option<&str>,
    job_db: Option<&str>,
    remote: Option<&crate::config::Offsite>,
    quiet: bool,
    json: bool,
) -> Result<u8, Error> {
    #[cfg(not(feature = "offsite"))]
    if remote.is_some() {
        return Err(Error::Unsupported(
            "this pra was built without the `offsite` feature".into(),
        ));
    }
    let dir = match dir {
        Some(d) => {
            std::fs::create_dir_all(d).map_err(|e| Error::io("create", d, e))?;
            d.to_path_buf()
        }
        None => {
            let d = std::env::temp_dir().join(format!(
                "pra-drill-{}",
                Utc::now().format("%Y%m%dT%H%M%S%.3f")
            ));
            std::fs::create_dir_all(&d).map_err(|e| Error::io("create", &d, e))?;
            d
        }
    };
    let db = dir.join("data").join("app.db");
    let backups = dir.join("backup");
    std::fs::create_dir_all(db.parent().unwrap_or(&dir))
        .map_err(|e| Error::io("create", &dir, e))?;
    let config = dir.join("pra.toml");
    let store_url = match store_url {
        Some(u) => u.to_string(),
        None => format!("sqlite://{}", dir.join("state.db").display()),
    };
    let toml = format!(
        "store = \"{}\"\nsites = \"rbx,sbg\"\ndb = \"{}\"\nbackup_dir = \"{}\"\ntable = \"events\"\n\
         backup_interval_seconds = 1\nheartbeat_seconds = 1\nlost_after_seconds = 5\nrevoke_grace_seconds = 1\nstore_timeout_seconds = 1\ndrain_timeout_seconds = 20\n",
        store_url,
        db.display(),
        backups.display()
    );
    std::fs::write(&config, toml).map_err(|e| Error::io("write", &config, e))?;
    let bar = if quiet || json {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(9)
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("[{elapsed_precise}] {bar:30} {pos}/{len} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    // The job writes in the app's database unless pointed at PostgreSQL.
    let job_db = match job_db {
        Some(url) => JobDb::parse(url),
        None => JobDb::Sqlite(db.clone()),
    };
    let d = Drill {
        config,
        exe: std::env::current_exe().map_err(|e| Error::io("locate", "pra", e))?,
        job_db: job_db.arg(),
        procs: Procs::default(),
        bar,
        quiet: quiet || json,
    };
    let started = Instant::now();
    let topology = Topology::parse("rbx,sbg")?;
    // The drill's own configuration, as its `pra` processes read it: one source for the store,
    // its run TTL and the drain.
    let cfg = crate::config::Config::load(&crate::config::Overrides {
        config: Some(d.config.clone()),
        ..Default::default()
    })?;
    let store = cfg.open_store()?;
    let initial = store.load()?;
    if initial.token != FencingToken(0) {
        return Err(Error::InvalidArgument(format!(
            "the drill needs an empty store, and {store_url} is at token {} (active site {}); use a new one (a new etcd prefix)",
            initial.token,
            initial.site.as_ref().map_or("NONE", SiteId::as_str)
        )));
    }
    let clock = SystemClock;
    let policy = DrainPolicy {
        poll: chrono::Duration::milliseconds(100),
        ..cfg.drain_policy()
    };
    let runner = Runner::new(&*store, &topology, &clock, policy);
    let ops = Actor::new("drill", "disaster-recovery drill")?;

    d.phase("normal operation on rbx: app, crons on both sites, backups");
    {
        let conn =
            rusqlite::Connection::open(&db).map_err(|e| Error::sqlite("create", "app", e))?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             CREATE TABLE events (id INTEGER PRIMARY KEY, body TEXT NOT NULL, at TEXT NOT NULL);",
        )
        .map_err(|e| Error::sqlite("create", "app", e))?;
    }
    job_db.create()?;
    store.change(
        SiteChange::Activate {
            site: SiteId::new("rbx")?,
            expect: FencingToken(0),
        },
        &ops,
    )?;
    let mut app = d.pra("rbx");
    app.arg("__drill-app")
        .arg("--ms")
        .arg("20")
        .arg("--db")
        .arg(&db);
    d.procs.spawn("app", app)?;
    let cron_rbx = d.cron("rbx");
    let cron_sbg = d.cron("sbg");
    let (exe, config) = (d.exe.clone(), d.config.clone());
    let backup_loop = Loop::start(&d.procs, "backup", Duration::from_millis(500), move || {
        let mut c = Command::new(&exe);
        c.env("PRA_CONFIG", &config)
            .env("PRA_SITE", "rbx")
            .env_remove("PRA_STORE")
            .env_remove("PRA_DB")
            .env_remove("PRA_BACKUP_DIR")
            .args(["backup", "--local-only"]);
        for k in super::harness::OFFSITE_VARS {
            c.env_remove(k);
        }
        c
    });
    pause(1500);
    d.say("rbx runs the crons; sbg's crons start too but `pra run` skips them (standby)");

    d.phase("incident: rbx dies (its VMs, crons and running jobs are killed)");
    cron_rbx.stop();
    d.procs.kill("cron-rbx");
    apply(&runner, EventKind::IncidentDetected, &ops)?;
    pause(200);
    apply(&runner, EventKind::FailoverDecided, &ops)?;

    d.phase("failover: rbx fenced, drain (rbx's killed runs expire as lost), sbg activated");
    apply(&runner, EventKind::ExecuteFailover, &ops)?;
    apply(&runner, EventKind::Drained, &ops)?;
    apply(&runner, EventKind::SecondaryVerified, &ops)?;
    apply(&runner, EventKind::TrafficOnSecondary, &ops)?;
    d.say("sbg is active: its crons run now");
    pause(1200);

    d.phase("failback: rbx restored; its VMs boot while sbg still runs its crons");
    apply(&runner, EventKind::PrimaryRestored, &ops)?;
    apply(&runner, EventKind::ReplicationSynced, &ops)?;
    let cron_rbx = d.cron("rbx");
    apply(&runner, EventKind::PrimaryStartedFenced, &ops)?;
    pause(1200);
    d.say("the seed's danger zone (steps 9-13): rbx's crons fire but are fenced: skipped");
    apply(&runner, EventKind::PrimaryValidated, &ops)?;

    d.phase("commit failback: sbg fenced, drain its running jobs, rbx activated");
    // The worst of a failback: one of sbg's wrappers is SIGKILLed (OOM killer, kill -9) and
    // another is paused (SIGSTOP) while their jobs run. Neither may let its job outlive the
    // drain.
    let (paused, killed) = d.disturb_wrappers(&*store, "sbg");
    d.say(&format!(
        "sbg: wrapper {} SIGKILLed, wrapper {} paused (SIGSTOP) while their jobs run",
        killed.map_or("-".into(), |p| p.to_string()),
        paused.map_or("-".into(), |p| p.to_string())
    ));
    apply(&runner, EventKind::CommitFailback, &ops)?;
    apply(&runner, EventKind::Drained, &ops)?;
    if let Some(p) = paused {
        // SAFETY: kill(2) on a process the drill started.
        unsafe { libc::kill(p, libc::SIGCONT) };
    }
    apply(&runner, EventKind::TrafficOnPrimary, &ops)?;
    cron_sbg.stop();
    d.procs.wait("cron-sbg", Duration::from_secs(5));
    apply(&runner, EventKind::SecondaryStopped, &ops)?;
    apply(&runner, EventKind::ReplicationReversed, &ops)?;
    pause(800);
    apply(&runner, EventKind::BackToNormal, &ops)?;

    d.phase("data loss: the app's database volume is lost");
    cron_rbx.stop();
    d.procs.wait("cron-rbx", Duration::from_secs(5));
    backup_loop.stop();
    d.procs.wait("backup", Duration::from_secs(10));
    // One more backup cycle as the CronJob would, then the app keeps writing for a while.
    let mut b = d.pra("rbx");
    b.arg("backup");
    #[cfg(feature = "offsite")]
    if let Some(o) = remote {
        let e = &o.encryption;
        for (k, v) in [
            ("PRA_BACKUP_TARGET", Some(o.target.clone())),
            ("PRA_BACKUP_S3_ENDPOINT", o.s3.endpoint.clone()),
            ("PRA_BACKUP_S3_REGION", o.s3.region.clone()),
            ("PRA_BACKUP_AGE_RECIPIENTS_FILE", path(&e.recipients_file)),
            ("PRA_BACKUP_AGE_PASSPHRASE_FILE", path(&e.passphrase_file)),
        ] {
            if let Some(v) = v {
                b.env(k, v);
            }
        }
    }
    d.procs.spawn("backup", b)?;
    d.procs.wait("backup", Duration::from_secs(10));
    pause(400);
    d.procs.kill("app");
    let rows_before = pra_core::backup::count_rows(&db, "events")?;
    let lost_at = Utc::now();
    for f in ["app.db", "app.db-wal", "app.db-shm"] {
        let _ = std::fs::remove_file(db.with_file_name(f));
    }

    d.phase(if remote.is_some() {
        "restore the latest backup from the offsite target (the app is stopped)"
    } else {
        "restore the latest backup (the app is stopped)"
    });
    let t = Instant::now();
    let report = match remote {
        #[cfg(feature = "offsite")]
        Some(o) => {
            let target = pra_core::backup::offsite::open(&o.target, &o.s3, None)?;
            pra_core::backup::offsite::Offsite {
                target: target.as_ref(),
                encryption: &o.encryption,
            }
            .restore(
                &db,
                &backups.join(".offsite"),
                &RestorePoint::Latest,
                restore::Options::default(),
                &clock,
            )?
        }
        _ => restore::restore(
            &db,
            &backups,
            &RestorePoint::Latest,
            restore::Options::default(),
            &clock,
        )?,
    };
    let restore_secs = t.elapsed().as_secs_f64();
    let rows_after = pra_core::backup::count_rows(&db, "events")?;
    let backup_time =
        pra_core::backup::BackupName::parse(&report.backup).map_or(lost_at, |n| n.time);

    d.phase("report");
    let plan_report = plan::report::build(
        &*store,
        &cfg.backup_dir,
        cfg.lost_after,
        &clock,
        plan::report::Window::Recent {
            history: cfg.history_window(),
        },
    )?;
    let business = job_db.business_rows()?;
    let jobs = harness::job_figures(&*store, &business)?;
    let restore_kpis = RestoreKpis {
        backup: report.backup.clone(),
        rows_before_loss: rows_before,
        rows_after_restore: rows_after,
        rows_lost: rows_before.saturating_sub(rows_after),
        rpo_seconds: (lost_at - backup_time).num_milliseconds() as f64 / 1000.0,
        rto_seconds: restore_secs,
    };
    let units = job_db.work_units()?;
    let drill = DrillReport::judge(Measured {
        scratch: dir.clone(),
        store: store_url.clone(),
        plan: plan_report,
        disturbed: Disturbed {
            killed_wrapper: killed,
            paused_wrapper: paused,
        },
        restore: restore_kpis,
        jobs,
        units,
        job_db: match &job_db {
            JobDb::Sqlite(_) => "the app's SQLite database".into(),
            JobDb::Postgres(url) => pra_core::dbfence::redact(url),
        },
        stale_writes: jobdb::stale_writes(&business),
    });
    let md = report::markdown(&drill, started.elapsed());
    drill.write(&dir, &md)?;
    d.bar.finish_and_clear();
    if json {
        crate::output::line(
            &serde_json::to_string_pretty(&drill).map_err(|e| Error::Internal(e.to_string()))?,
        )?;
    } else {
        crate::output::line(&md)?;
        crate::output::line(&format!(
            "report: {} and report.json",
            dir.join("report.md").display()
        ))?;
    }
    Ok(if drill.passed {
        exit::OK
    } else {
        exit::DRILL_FAILED
    })
}

#[cfg(feature = "offsite")]
fn path(p: &Option<std::path::PathBuf>) -> Option<String> {
    p.as_ref().map(|p| p.display().to_string())
}
