//! The drill's harness: the processes it runs (the app, one cron loop per site, the backup loop,
//! the job's worker), each in its own process group and killed with the drill, and the app
//! database's tables the job writes, read back as the ground truth of what ran where.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use pra_core::{Error, FencingToken};

use super::jobdb::{JobDb, Slice};
use super::report::JobFigures;
use crate::exit;

/// Hidden helper: the worker of the drill's cron job, started by the job's script (so it is a
/// grandchild of `pra run`) and deaf to SIGTERM, as real workers often are. It records its
/// work in the app database as it goes — one row per 50 ms slice: site, token, pid, start and
/// end — which is the drill's ground truth of what ran where, whatever pra's registry says;
/// then it admits its token at the app database's fence and commits its business row.
pub fn job(db: &str, job: &str, ms: u64, fence_each: bool) -> Result<u8, Error> {
    let token: u64 = std::env::var("PRA_TOKEN")
        .ok()
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| {
            Error::InvalidArgument("PRA_TOKEN is not set: run me through `pra run`".into())
        })?;
    // SAFETY: setting a signal's disposition to "ignore" has no memory effects.
    unsafe { libc::signal(libc::SIGTERM, libc::SIG_IGN) };
    let site = std::env::var("PRA_SITE").unwrap_or_default();
    let mut conn = JobDb::parse(db).connect()?;
    let us = |t: chrono::DateTime<Utc>| t.timestamp_micros();
    let slice = Duration::from_millis(50);
    let mut done = Duration::ZERO;
    while done < Duration::from_millis(ms) {
        let start = Utc::now();
        std::thread::sleep(slice);
        let s = Slice {
            job,
            site: &site,
            token: token as i64,
            pid: i64::from(std::process::id()),
            start_us: us(start),
            end_us: us(Utc::now()),
        };
        if fence_each {
            conn.fenced(&s)?;
        } else {
            conn.record(&s)?;
        }
        done += slice;
    }
    conn.finish(job, &site, token as i64)?;
    Ok(exit::OK)
}

/// Per-site figures of the drill's job: runs started and skipped (from the store's run
/// statistics) and the business rows the job committed (`rows`, from the job database).
pub(super) fn job_figures(
    store: &dyn pra_core::Store,
    rows: &[(String, i64)],
) -> Result<Vec<JobFigures>, Error> {
    let stats = store.require_registry()?.run_stats()?;
    Ok(["rbx", "sbg"]
        .iter()
        .map(|s| {
            let st = stats.iter().filter(|x| x.site.as_str() == *s);
            JobFigures {
                site: s.to_string(),
                runs_started: st.clone().map(|x| x.started).sum(),
                runs_skipped: st.map(|x| x.skipped).sum(),
                job_rows_written: rows.iter().filter(|(site, _)| site == s).count() as u64,
            }
        })
        .collect())
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
pub(super) struct Procs(Arc<Mutex<Vec<(String, Child)>>>);

impl Procs {
    /// Starts `cmd` in its own process group, output discarded, under `tag`; forgets the
    /// processes that ended.
    pub(super) fn spawn(&self, tag: &str, mut cmd: Command) -> Result<(), Error> {
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
    pub(super) fn kill(&self, tag: &str) {
        let mut all = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for (_, c) in all.iter_mut().filter(|(t, _)| t.starts_with(tag)) {
            // SAFETY: kill has no memory effects; the group id is our child's pid.
            unsafe { libc::kill(-(c.id() as i32), libc::SIGKILL) };
            let _ = c.wait();
        }
        all.retain(|(t, _)| !t.starts_with(tag));
    }

    /// Waits for every process with `tag` to end by itself (bounded).
    pub(super) fn wait(&self, tag: &str, limit: Duration) {
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
pub(super) struct Loop {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Loop {
    /// Starts the loop: `make()` is spawned under `tag` now and every `every` after.
    pub(super) fn start(
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

    /// Stops spawning and waits for the loop's thread (not for the processes it started).
    pub(super) fn stop(mut self) {
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

/// The drill's processes and its progress bar.
pub(super) struct Drill {
    pub(super) config: PathBuf,
    pub(super) exe: PathBuf,
    /// Where the job writes (`--db` of `__drill-job`): the app's SQLite file or PostgreSQL.
    pub(super) job_db: String,
    pub(super) procs: Procs,
    pub(super) bar: indicatif::ProgressBar,
    pub(super) quiet: bool,
}

impl Drill {
    /// `pra` as a process of `site` in the drill: its configuration, none from the environment.
    pub(super) fn pra(&self, site: &str) -> Command {
        let mut c = Command::new(&self.exe);
        c.env("PRA_CONFIG", &self.config)
            .env("PRA_SITE", site)
            .env_remove("PRA_STORE")
            .env_remove("PRA_DB")
            .env_remove("PRA_BACKUP_DIR");
        // The drill uploads only where it was told to (`pra drill --remote`), never to a target
        // the caller's environment happens to name.
        for k in OFFSITE_VARS {
            c.env_remove(k);
        }
        c
    }

    /// The cron of `site`: `pra run --job invoices` every 250 ms, whatever the site's role.
    pub(super) fn cron(&self, site: &str) -> Loop {
        let (exe, config, db, site) = (
            self.exe.clone(),
            self.config.clone(),
            self.job_db.clone(),
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
    pub(super) fn disturb_wrappers(
        &self,
        store: &dyn pra_core::Store,
        site: &str,
    ) -> (Option<libc::pid_t>, Option<libc::pid_t>) {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut pids: Vec<libc::pid_t> = Vec::new();
        while pids.len() < 2 && Instant::now() < deadline {
            pids = store
                .require_registry()
                .and_then(|r| r.unfinished_runs_below(FencingToken(i64::MAX as u64)))
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

    /// A line of progress (not with --quiet or --json).
    pub(super) fn say(&self, msg: &str) {
        if self.quiet {
            return;
        }
        self.bar.println(format!("  {msg}"));
    }

    /// The next phase of the scenario: the progress bar moves on.
    pub(super) fn phase(&self, msg: &str) {
        self.bar.inc(1);
        self.bar.set_message(msg.to_string());
        if !self.quiet {
            self.bar.println(format!("== {msg}"));
        }
    }
}

/// Sleeps `d` milliseconds.
pub(super) fn pause(d: u64) {
    std::thread::sleep(Duration::from_millis(d));
}

/// The variables that configure offsite backups.
pub(super) const OFFSITE_VARS: [&str; 6] = [
    "PRA_BACKUP_TARGET",
    "PRA_BACKUP_S3_ENDPOINT",
    "PRA_BACKUP_S3_REGION",
    "PRA_BACKUP_AGE_RECIPIENTS_FILE",
    "PRA_BACKUP_AGE_IDENTITY_FILE",
    "PRA_BACKUP_AGE_PASSPHRASE_FILE",
];
