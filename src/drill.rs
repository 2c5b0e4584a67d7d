//! `pra drill`: a full disaster-recovery drill in a scratch directory, with real processes — an
//! app writing to its SQLite database, one cron loop per site calling `pra run` every 250 ms, a
//! backup loop calling `pra backup` — through an incident on the primary, failover, a failback in
//! which the primary boots while the secondary still runs its crons, and finally the loss of the
//! app's database and its restore. It ends with the measured KPIs against their targets.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use pra_core::backup::restore::{self, RestorePoint};
use pra_core::plan::{self, Applied, DrainPolicy, Event, EventKind, Runner};
use pra_core::{Actor, Error, FencingToken, SiteChange, SiteId, SystemClock, Topology};
use serde::Serialize;

use crate::exit;

/// Hidden helper: the worker of the drill's cron job, started by the job's script (so it is a
/// grandchild of `pra run`) and deaf to SIGTERM, as real workers often are. It records its
/// work in the app database as it goes — one row per 50 ms slice: site, token, pid, start and
/// end — which is the drill's ground truth of what ran where, whatever pra's registry says;
/// then it admits its token at the app database's fence and commits its business row.
pub fn job(db: &Path, job: &str, ms: u64, fence_each: bool) -> Result<u8, Error> {
    let token: u64 = std::env::var("PRA_TOKEN")
        .ok()
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| {
            Error::InvalidArgument("PRA_TOKEN is not set: run me through `pra run`".into())
        })?;
    // SAFETY: setting a signal's disposition to "ignore" has no memory effects.
    unsafe { libc::signal(libc::SIGTERM, libc::SIG_IGN) };
    let site = std::env::var("PRA_SITE").unwrap_or_default();
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE)
            .map_err(|e| Error::sqlite("open", &db.display().to_string(), e))?;
    conn.busy_timeout(Duration::from_secs(5))
        .map_err(|e| Error::sqlite("open", "app", e))?;
    let sql = |what: &'static str| move |e| Error::sqlite(what, "app", e);
    conn.execute_batch(WORK_TABLES).map_err(sql("create"))?;
    let us = |t: chrono::DateTime<Utc>| t.timestamp_micros();
    let slice = Duration::from_millis(50);
    let mut done = Duration::ZERO;
    while done < Duration::from_millis(ms) {
        let start = Utc::now();
        std::thread::sleep(slice);
        let row = rusqlite::params![
            job,
            site,
            token as i64,
            std::process::id(),
            us(start),
            us(Utc::now())
        ];
        if fence_each {
            conn.execute_batch("BEGIN IMMEDIATE")
                .map_err(sql("begin"))?;
            match pra_core::Fence::admit_in(&conn, FencingToken(token)) {
                Ok(_) => {
                    conn.execute(
                        "INSERT INTO work (job, site, token, pid, start_us, end_us) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                        row,
                    )
                    .map_err(sql("insert"))?;
                    conn.execute_batch("COMMIT").map_err(sql("commit"))?;
                }
                Err(Error::StaleToken { .. }) => {
                    conn.execute_batch("ROLLBACK").map_err(sql("rollback"))?;
                    conn.execute(
                        "INSERT INTO refused (job, site, token, pid, start_us, end_us) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                        row,
                    )
                    .map_err(sql("insert"))?;
                }
                Err(e) => return Err(e),
            }
        } else {
            conn.execute(
                "INSERT INTO work (job, site, token, pid, start_us, end_us) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                row,
            )
            .map_err(sql("insert"))?;
        }
        done += slice;
    }
    conn.execute_batch("BEGIN IMMEDIATE")
        .map_err(|e| Error::sqlite("begin", "app", e))?;
    pra_core::Fence::admit_in(&conn, FencingToken(token))?;
    conn.execute(
        "INSERT INTO job_runs (job, site, token, at) VALUES (?1, ?2, ?3, ?4)",
        rusqlite::params![job, site, token as i64, Utc::now().to_rfc3339()],
    )
    .map_err(|e| Error::sqlite("insert", "app", e))?;
    conn.execute_batch("COMMIT")
        .map_err(|e| Error::sqlite("commit", "app", e))?;
    Ok(exit::OK)
}

/// The tables the drill's job writes: its slices of work (the ground truth), the slices the
/// fence refused, and its business rows.
const WORK_TABLES: &str = "
    CREATE TABLE IF NOT EXISTS work (id INTEGER PRIMARY KEY, job TEXT NOT NULL, site TEXT NOT NULL,
        token INTEGER NOT NULL, pid INTEGER NOT NULL, start_us INTEGER NOT NULL, end_us INTEGER NOT NULL);
    CREATE TABLE IF NOT EXISTS refused (id INTEGER PRIMARY KEY, job TEXT NOT NULL, site TEXT NOT NULL,
        token INTEGER NOT NULL, pid INTEGER NOT NULL, start_us INTEGER NOT NULL, end_us INTEGER NOT NULL);
    CREATE TABLE IF NOT EXISTS job_runs (id INTEGER PRIMARY KEY, job TEXT, site TEXT, token INTEGER, at TEXT);";

/// The work units the drill's jobs recorded in the app database.
fn work_units(db: &Path) -> Result<Vec<plan::WorkUnit>, Error> {
    let conn = rusqlite::Connection::open(db).map_err(|e| Error::sqlite("open", "app", e))?;
    let mut stmt = conn
        .prepare("SELECT job, site, start_us, end_us FROM work ORDER BY start_us")
        .map_err(|e| Error::sqlite("read work", "app", e))?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
            ))
        })
        .map_err(|e| Error::sqlite("read work", "app", e))?;
    let time = |us: i64| chrono::DateTime::<Utc>::from_timestamp_micros(us).unwrap_or_default();
    rows.map(|r| {
        let (job, site, start, end) = r.map_err(|e| Error::sqlite("read work", "app", e))?;
        Ok(plan::WorkUnit {
            job,
            site: SiteId::new(&site)?,
            start: time(start),
            end: time(end),
        })
    })
    .collect()
}

/// Hidden helper: the app. Inserts an event every `ms` until killed.
pub fn app(db: &Path, ms: u64) -> Result<u8, Error> {
    let conn = rusqlite::Connection::open(db).map_err(|e| Error::sqlite("open", "app", e))?;
    conn.busy_timeout(Duration::from_secs(5))
        .map_err(|e| Error::sqlite("open", "app", e))?;
    loop {
        conn.execute(
            "INSERT INTO events (body, at) VALUES ('drill event', ?1)",
            [Utc::now().to_rfc3339()],
        )
        .map_err(|e| Error::sqlite("insert", "app", e))?;
        std::thread::sleep(Duration::from_millis(ms));
    }
}

/// Child processes, each in its own process group, killed (group and all) on drop.
#[derive(Default, Clone)]
struct Procs(Arc<Mutex<Vec<(String, Child)>>>);

impl Procs {
    fn spawn(&self, tag: &str, mut cmd: Command) -> Result<(), Error> {
        let child = cmd
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| Error::io("start", "pra", e))?;
        let mut all = self.0.lock().unwrap_or_else(|p| p.into_inner());
        all.retain_mut(|(_, c)| matches!(c.try_wait(), Ok(None)));
        all.push((tag.to_string(), child));
        Ok(())
    }

    /// SIGKILLs every process group whose tag starts with `tag` (a site dying at once).
    fn kill(&self, tag: &str) {
        let mut all = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for (_, c) in all.iter_mut().filter(|(t, _)| t.starts_with(tag)) {
            // SAFETY: kill has no memory effects; the group id is our child's pid.
            unsafe { libc::kill(-(c.id() as i32), libc::SIGKILL) };
            let _ = c.wait();
        }
        all.retain(|(t, _)| !t.starts_with(tag));
    }

    /// Waits for every process with `tag` to end by itself (bounded).
    fn wait(&self, tag: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let mut all = self.0.lock().unwrap_or_else(|p| p.into_inner());
            all.retain_mut(|(t, c)| !t.starts_with(tag) || matches!(c.try_wait(), Ok(None)));
            if !all.iter().any(|(t, _)| t.starts_with(tag)) || Instant::now() > deadline {
                return;
            }
            drop(all);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        if Arc::strong_count(&self.0) == 1 {
            self.kill("");
        }
    }
}

/// A loop in a thread that spawns a command every `every` until stopped.
struct Loop {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Loop {
    fn start(
        procs: &Procs,
        tag: &str,
        every: Duration,
        make: impl Fn() -> Command + Send + 'static,
    ) -> Loop {
        let stop = Arc::new(AtomicBool::new(false));
        let (s, p, t) = (stop.clone(), procs.clone(), tag.to_string());
        let handle = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                let _ = p.spawn(&t, make());
                std::thread::sleep(every);
            }
        });
        Loop {
            stop,
            handle: Some(handle),
        }
    }

    fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// The restore part of the report.
#[derive(Debug, Serialize)]
struct RestoreKpis {
    backup: String,
    rows_before_loss: u64,
    rows_after_restore: u64,
    rows_lost: u64,
    rpo_seconds: f64,
    rto_seconds: f64,
}

/// Per-site job figures.
#[derive(Debug, Serialize)]
struct JobFigures {
    site: String,
    runs_started: u64,
    runs_skipped: u64,
    job_rows_written: u64,
}

/// The double-execution window measured from the jobs' own writes in the app database.
#[derive(Debug, Serialize)]
struct GroundTruth {
    /// Slices of work the jobs recorded.
    units: usize,
    /// Seconds during which the same job worked on both sites.
    double_execution_seconds: f64,
    /// Where.
    overlaps: Vec<plan::Overlap>,
}

/// The faults the drill injected into the secondary's wrappers during the failback.
#[derive(Debug, Serialize)]
struct Disturbed {
    /// The wrapper SIGKILLed while its job ran.
    killed_wrapper: Option<i32>,
    /// The wrapper SIGSTOPped (and resumed after the flip) while its job ran.
    paused_wrapper: Option<i32>,
}

/// The drill's report.
#[derive(Debug, Serialize)]
struct DrillReport {
    scratch: PathBuf,
    store: String,
    plan: plan::Report,
    ground_truth: GroundTruth,
    disturbed: Disturbed,
    restore: RestoreKpis,
    jobs: Vec<JobFigures>,
    checks: Vec<plan::Check>,
    passed: bool,
}

struct Drill {
    config: PathBuf,
    exe: PathBuf,
    db: PathBuf,
    procs: Procs,
    bar: indicatif::ProgressBar,
    quiet: bool,
}

impl Drill {
    fn pra(&self, site: &str) -> Command {
        let mut c = Command::new(&self.exe);
        c.env("PRA_CONFIG", &self.config)
            .env("PRA_SITE", site)
            .env_remove("PRA_STORE")
            .env_remove("PRA_DB")
            .env_remove("PRA_BACKUP_DIR");
        c
    }

    fn cron(&self, site: &str) -> Loop {
        let (exe, config, db, site) = (
            self.exe.clone(),
            self.config.clone(),
            self.db.clone(),
            site.to_string(),
        );
        Loop::start(
            &self.procs,
            &format!("cron-{site}"),
            Duration::from_millis(250),
            move || {
                let mut c = Command::new(&exe);
                c.env("PRA_CONFIG", &config)
                    .env("PRA_SITE", &site)
                    .env_remove("PRA_STORE");
                // The job is a script whose worker is its child: the process tree a revocation
                // must take down whole (the shell dies on SIGTERM; the worker ignores it).
                c.args([
                    "run",
                    "--job",
                    "invoices",
                    "--",
                    "/bin/sh",
                    "-c",
                    "\"$0\" __drill-job --job invoices --ms 300 --db \"$1\" & wait",
                ]);
                c.arg(&exe).arg(&db);
                c
            },
        )
    }

    /// SIGSTOPs one running wrapper of `site` and SIGKILLs another (found in the registry);
    /// returns their pids.
    fn disturb_wrappers(
        &self,
        store: &dyn pra_core::Store,
        site: &str,
    ) -> (Option<libc::pid_t>, Option<libc::pid_t>) {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut pids: Vec<libc::pid_t> = Vec::new();
        while pids.len() < 2 && Instant::now() < deadline {
            pids = store
                .unfinished_runs_below(FencingToken(i64::MAX as u64))
                .unwrap_or_default()
                .into_iter()
                .filter(|u| u.run.start.site.as_str() == site)
                .map(|u| u.run.start.pid as libc::pid_t)
                .collect();
            pause(20);
        }
        let paused = pids.first().copied();
        let killed = pids.get(1).copied();
        // SAFETY: kill(2) on processes the drill started.
        unsafe {
            if let Some(p) = paused {
                libc::kill(p, libc::SIGSTOP);
            }
            if let Some(p) = killed {
                libc::kill(p, libc::SIGKILL);
            }
        }
        (paused, killed)
    }

    fn say(&self, msg: &str) {
        if self.quiet {
            return;
        }
        self.bar.println(format!("  {msg}"));
    }

    fn phase(&self, msg: &str) {
        self.bar.inc(1);
        self.bar.set_message(msg.to_string());
        if !self.quiet {
            self.bar.println(format!("== {msg}"));
        }
    }
}

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

fn pause(d: u64) {
    std::thread::sleep(Duration::from_millis(d));
}

/// Runs the drill; exit 0 only if every KPI passes (and the double-execution window is 0).
pub fn run(
    dir: Option<&Path>,
    store_url: Option<&str>,
    quiet: bool,
    json: bool,
) -> Result<u8, Error> {
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
    let d = Drill {
        config,
        exe: std::env::current_exe().map_err(|e| Error::io("locate", "pra", e))?,
        db: db.clone(),
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
        .and_then(|()| conn.execute_batch(WORK_TABLES))
        .map_err(|e| Error::sqlite("create", "app", e))?;
    }
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
            .arg("backup");
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
    d.procs.spawn("backup", b)?;
    d.procs.wait("backup", Duration::from_secs(10));
    pause(400);
    d.procs.kill("app");
    let rows_before = pra_core::backup::count_rows(&db, "events")?;
    let lost_at = Utc::now();
    for f in ["app.db", "app.db-wal", "app.db-shm"] {
        let _ = std::fs::remove_file(db.with_file_name(f));
    }

    d.phase("restore the latest backup (the app is stopped)");
    let t = Instant::now();
    let report = restore::restore(
        &db,
        &backups,
        &RestorePoint::Latest,
        restore::Options::default(),
        &clock,
    )?;
    let restore_secs = t.elapsed().as_secs_f64();
    let rows_after = pra_core::backup::count_rows(&db, "events")?;
    let backup_time =
        pra_core::backup::BackupName::parse(&report.backup).map_or(lost_at, |n| n.time);

    d.phase("report");
    let plan_report = plan::report::build(&*store, &cfg.backup_dir, cfg.lost_after, &clock)?;
    let stats = store.run_stats()?;
    let conn = rusqlite::Connection::open(&db).map_err(|e| Error::sqlite("open", "app", e))?;
    let jobs: Vec<JobFigures> = ["rbx", "sbg"]
        .iter()
        .map(|s| {
            let rows: i64 = conn
                .query_row("SELECT count(*) FROM job_runs WHERE site = ?1", [s], |r| {
                    r.get(0)
                })
                .unwrap_or(0);
            let st = stats.iter().filter(|x| x.site.as_str() == *s);
            JobFigures {
                site: s.to_string(),
                runs_started: st.clone().map(|x| x.started).sum(),
                runs_skipped: st.map(|x| x.skipped).sum(),
                job_rows_written: rows as u64,
            }
        })
        .collect();
    let restore_kpis = RestoreKpis {
        backup: report.backup.clone(),
        rows_before_loss: rows_before,
        rows_after_restore: rows_after,
        rows_lost: rows_before.saturating_sub(rows_after),
        rpo_seconds: (lost_at - backup_time).num_milliseconds() as f64 / 1000.0,
        rto_seconds: restore_secs,
    };
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
    let units = work_units(&db)?;
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
    let passed = checks.iter().all(|c| c.pass != Some(false)) && registry == 0.0 && truth == 0.0;
    let drill = DrillReport {
        scratch: dir.clone(),
        store: store_url.clone(),
        plan: plan_report,
        ground_truth,
        disturbed: Disturbed {
            killed_wrapper: killed,
            paused_wrapper: paused,
        },
        restore: restore_kpis,
        jobs,
        checks,
        passed,
    };
    let md = markdown(&drill, started.elapsed());
    std::fs::write(
        dir.join("report.json"),
        serde_json::to_vec_pretty(&drill).map_err(|e| Error::Internal(e.to_string()))?,
    )
    .map_err(|e| Error::io("write", dir.join("report.json"), e))?;
    std::fs::write(dir.join("report.md"), &md)
        .map_err(|e| Error::io("write", dir.join("report.md"), e))?;
    d.bar.finish_and_clear();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&drill).map_err(|e| Error::Internal(e.to_string()))?
        );
    } else {
        println!("{md}");
        println!(
            "report: {} and report.json",
            dir.join("report.md").display()
        );
    }
    Ok(if passed { exit::OK } else { exit::DRILL_FAILED })
}

fn markdown(r: &DrillReport, took: Duration) -> String {
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
