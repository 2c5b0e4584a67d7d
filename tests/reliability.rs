//! Reliability: processes killed at random moments (site flips, plan steps, prune), races
//! between processes and threads, a full disk and a read-only directory, world-writable stores.
//! Each test prints what it injected and what held; RELIABILITY.md tabulates those lines.

mod common;

use std::collections::HashMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{Rng, iterations, kill_after, median_of, serial};

use pra_core::plan::{DrainPolicy, Runner, State};
use pra_core::store::{SqliteStore, Store};
use pra_core::{SiteId, SystemClock, Topology, Verdict};

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("pra.toml"),
            "heartbeat_seconds = 1\nlost_after_seconds = 5\nrevoke_grace_seconds = 1\nstore_timeout_seconds = 1\n",
        )
        .unwrap();
        Env { dir }
    }
    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }
    fn url(&self) -> String {
        format!("sqlite://{}/state.db", self.dir.path().display())
    }
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_pra"));
        c.args(args)
            .env("PRA_STORE", self.url())
            .env("PRA_SITES", "rbx,sbg")
            .env("PRA_CONFIG", self.path("pra.toml"))
            .env("PRA_DB", self.path("app.db"))
            .env("PRA_BACKUP_DIR", self.path("backup"))
            .env_remove("PRA_SITE")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }
    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }
    fn store(&self) -> SqliteStore {
        SqliteStore::open(&self.path("state.db"), Arc::new(SystemClock)).unwrap()
    }
}

fn ok(o: Output) -> Output {
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

#[test]
fn killed_site_flips_never_move_the_token_back() {
    let e = Env::new();
    ok(e.run(&["site", "activate", "rbx", "--expect-token", "0"]));
    let _serial = serial();
    let mut token = 0;
    let full = median_of(3, || {
        token += 1;
        let t = token.to_string();
        if token % 2 == 1 {
            e.cmd(&["site", "deactivate", "--expect-token", &t])
        } else {
            e.cmd(&["site", "activate", "rbx", "--expect-token", &t])
        }
    });
    let mut rng = Rng::new("site flips");
    let mut killed = 0;
    for _ in 0..iterations() {
        let before = e.store().load().unwrap();
        let (args, token) = match &before.site {
            Some(_) => (
                vec!["site", "deactivate", "--expect-token"],
                before.token.0.to_string(),
            ),
            None => (
                vec!["site", "activate", "sbg", "--expect-token"],
                before.token.0.to_string(),
            ),
        };
        let mut a = args.clone();
        a.push(&token);
        killed += usize::from(kill_after(e.cmd(&a), rng.delay(full)));
        let store = e.store();
        let after = store.load().unwrap();
        assert!(
            after.token == before.token || after.token.0 == before.token.0 + 1,
            "{before:?} -> {after:?}"
        );
        assert_eq!(store.verify_journal().unwrap().entries, after.token.0);
    }
    eprintln!(
        "site flips: {} runs, {killed} killed mid-way; token monotonic, journal intact every time",
        iterations()
    );
    assert!(killed > 0);
}

/// The events of a full failover + failback, in order.
const WALK: &[&str] = &[
    "incident-detected",
    "failover-decided",
    "execute-failover",
    "drained",
    "secondary-verified",
    "traffic-on-secondary",
    "primary-restored",
    "replication-synced",
    "primary-started-fenced",
    "primary-validated",
    "commit-failback",
    "drained",
    "traffic-on-primary",
    "secondary-stopped",
    "replication-reversed",
    "back-to-normal",
];

#[test]
fn killed_plan_steps_leave_a_plan_that_resumes() {
    let e = Env::new();
    ok(e.run(&["site", "activate", "rbx", "--expect-token", "0"]));
    let topo = Topology::parse("rbx,sbg").unwrap();
    let mut rng = Rng::new("plan steps");
    let (mut killed, mut steps) = (0, 0);
    let full = Duration::from_millis(15);
    for round in 0..iterations().div_ceil(WALK.len()) + 1 {
        for event in WALK {
            let args = [
                "plan",
                "apply",
                event,
                "--operator",
                "chaos",
                "--no-wait",
                "--reason",
                "crash test",
            ];
            killed += usize::from(kill_after(
                e.cmd(&args),
                Duration::from_micros(rng.below(full.as_micros() as u64)),
            ));
            steps += 1;
            // Whatever happened, the plan loads and the same command finishes the step (or says
            // it was already applied): the plan resumes.
            let o = ok(e.run(&args));
            let text = String::from_utf8_lossy(&o.stdout).to_string();
            assert!(
                text.contains("-->") || text.contains("already applied"),
                "round {round} {event}: {text}"
            );
            let store = e.store();
            let plan = Runner::new(&store, &topo, &SystemClock, DrainPolicy::default())
                .plan()
                .unwrap();
            let record = store.load().unwrap();
            // The record agrees with the plan's state.
            let expected_site = match plan.state {
                State::FailoverDraining | State::FailbackDraining => None,
                State::FailedOver
                | State::SecondaryVerified
                | State::RunningOnSecondary
                | State::PrimaryRestored
                | State::ReplicationSynced
                | State::PrimaryStartedFenced
                | State::PrimaryValidated => Some("sbg"),
                State::Normal
                | State::IncidentDetected
                | State::FailoverDecided
                | State::FailedBack
                | State::TrafficOnPrimary
                | State::SecondaryStopped
                | State::ReplicationReversed => Some("rbx"),
            };
            assert_eq!(
                record.site.as_ref().map(SiteId::as_str),
                expected_site,
                "{:?}",
                plan.state
            );
            assert_eq!(
                store.verify_journal().unwrap().entries as usize,
                store.journal().unwrap().len()
            );
        }
    }
    eprintln!(
        "plan steps: {steps} runs, {killed} killed mid-way; the plan resumed and the record matched its state every time"
    );
}

fn make_app_db(path: &Path, rows: u32) {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.execute_batch("CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY, body BLOB)")
        .unwrap();
    let tx = conn.unchecked_transaction().unwrap();
    for _ in 0..rows {
        tx.execute("INSERT INTO events (body) VALUES (randomblob(200))", [])
            .unwrap();
    }
    tx.commit().unwrap();
}

#[test]
fn killed_prunes_leave_only_whole_backups() {
    let e = Env::new();
    make_app_db(&e.path("app.db"), 500);
    let mut rng = Rng::new("prune");
    let mut killed = 0;
    for _ in 0..iterations() {
        for _ in 0..3 {
            ok(e.run(&["backup"]));
        }
        let full = Duration::from_millis(10);
        killed += usize::from(kill_after(
            e.cmd(&["prune", "--keep-last", "2"]),
            Duration::from_micros(rng.below(full.as_micros() as u64)),
        ));
        let list = pra_core::backup::list(&e.path("backup")).unwrap();
        assert!(list.len() >= 2, "prune never goes below its policy");
        for b in &list {
            assert!(b.usable(), "{} is {:?}", b.name, b.health);
        }
        // No manifest is left without its backup.
        for f in std::fs::read_dir(e.path("backup")).unwrap() {
            let name = f.unwrap().file_name().into_string().unwrap();
            if let Some(db) = name.strip_suffix(".json") {
                assert!(e.path("backup").join(db).exists(), "orphan manifest {name}");
            }
        }
        ok(e.run(&["prune", "--keep-last", "2"]));
    }
    eprintln!(
        "prune: {} runs, {killed} killed mid-way; only whole backups listed, no orphan manifest",
        iterations()
    );
}

#[test]
fn two_plan_apply_processes_apply_an_event_once() {
    let rounds = 20;
    for _ in 0..rounds {
        let e = Env::new();
        ok(e.run(&["site", "activate", "rbx", "--expect-token", "0"]));
        ok(e.run(&["plan", "start-failover"]));
        ok(e.run(&["plan", "apply", "failover-decided", "--operator", "a"]));
        let a = e
            .cmd(&["plan", "apply", "execute-failover"])
            .spawn()
            .unwrap();
        let b = e
            .cmd(&["plan", "apply", "execute-failover"])
            .spawn()
            .unwrap();
        let outs = [a.wait_with_output().unwrap(), b.wait_with_output().unwrap()];
        let texts: Vec<String> = outs
            .iter()
            .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
            .collect();
        assert!(outs.iter().all(|o| o.status.success()), "{texts:?}");
        assert_eq!(
            texts
                .iter()
                .filter(|t| t.contains("already applied"))
                .count(),
            1,
            "{texts:?}"
        );
        assert_eq!(e.store().load().unwrap().token.0, 2, "one flip, not two");
    }
    eprintln!(
        "plan race: {rounds} rounds of two processes applying one event: applied once every time"
    );
}

#[test]
fn two_operators_with_the_same_token_one_wins() {
    let rounds = 20;
    for _ in 0..rounds {
        let e = Env::new();
        let a = e
            .cmd(&[
                "site",
                "activate",
                "rbx",
                "--expect-token",
                "0",
                "--by",
                "alice",
            ])
            .spawn()
            .unwrap();
        let b = e
            .cmd(&[
                "site",
                "activate",
                "sbg",
                "--expect-token",
                "0",
                "--by",
                "bob",
            ])
            .spawn()
            .unwrap();
        let codes = [
            a.wait_with_output().unwrap().status.code(),
            b.wait_with_output().unwrap().status.code(),
        ];
        let mut sorted = codes;
        sorted.sort();
        assert_eq!(
            sorted,
            [Some(0), Some(5)],
            "exactly one wins, the other gets a conflict"
        );
        let r = e.store().load().unwrap();
        assert_eq!(r.token.0, 1);
        let winner = if codes[0] == Some(0) { "rbx" } else { "sbg" };
        assert_eq!(r.site.unwrap().as_str(), winner);
    }
    eprintln!(
        "operator race: {rounds} rounds of two activations with one token: one winner, one conflict"
    );
}

#[test]
fn eight_checking_threads_never_see_two_sites_run_under_one_token() {
    let e = Env::new();
    let flips = 1000u64;
    let stop = Arc::new(AtomicBool::new(false));
    let path = e.path("state.db");
    SqliteStore::open(&path, Arc::new(SystemClock)).unwrap();
    let checkers: Vec<_> = (0..8)
        .map(|i| {
            let (stop, path) = (stop.clone(), path.clone());
            std::thread::spawn(move || {
                let store = SqliteStore::open(&path, Arc::new(SystemClock)).unwrap();
                let site = SiteId::new(if i % 2 == 0 { "rbx" } else { "sbg" }).unwrap();
                let mut seen: Vec<(u64, SiteId)> = Vec::new();
                let mut checks = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    if let Verdict::Run { token } = pra_core::check(&store, &site).unwrap() {
                        seen.push((token.0, site.clone()));
                    }
                    checks += 1;
                }
                (seen, checks)
            })
        })
        .collect();
    let flipper = SqliteStore::open(&path, Arc::new(SystemClock)).unwrap();
    let by = pra_core::Actor::new("flipper", "").unwrap();
    for i in 0..flips {
        let r = flipper.load().unwrap();
        let change = match r.site {
            Some(_) => pra_core::SiteChange::Deactivate { expect: r.token },
            None => pra_core::SiteChange::Activate {
                site: SiteId::new(if i % 4 == 0 { "rbx" } else { "sbg" }).unwrap(),
                expect: r.token,
            },
        };
        flipper.change(change, &by).unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let mut owner: HashMap<u64, SiteId> = HashMap::new();
    let (mut runs, mut checks) = (0, 0);
    for c in checkers {
        let (seen, n) = c.join().unwrap();
        checks += n;
        for (token, site) in seen {
            runs += 1;
            let first = owner.entry(token).or_insert_with(|| site.clone());
            assert_eq!(*first, site, "token {token} gave Run to two sites");
        }
    }
    eprintln!(
        "guard race: {checks} checks from 8 threads during {flips} flips, {runs} Run verdicts, never two sites under one token"
    );
    assert!(runs > 0 && owner.len() > 1);
}

/// `pra backup` with a file-size limit: every write past it fails (EFBIG), as on a full disk.
#[test]
fn backup_onto_a_full_disk_fails_cleanly_and_leaves_no_partial_file() {
    let e = Env::new();
    make_app_db(&e.path("app.db"), 5000); // ~1.2 MB
    let before = std::fs::read(e.path("app.db")).unwrap();
    let mut cmd = e.cmd(&["backup"]);
    // SAFETY: async-signal-safe calls only, between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let lim = libc::rlimit {
                rlim_cur: 256 * 1024,
                rlim_max: 256 * 1024,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let o = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(12), "an I/O error: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    // pra's own subdirectory (its index lock) is no partial file.
    let left: Vec<String> = std::fs::read_dir(e.path("backup")).map_or(vec![], |d| {
        d.map(|f| f.unwrap().file_name().into_string().unwrap())
            .filter(|n| n != pra_core::backup::index::STATE_DIR)
            .collect()
    });
    assert!(left.is_empty(), "partial files left: {left:?}");
    assert_eq!(
        std::fs::read(e.path("app.db")).unwrap(),
        before,
        "the source is untouched"
    );
    eprintln!(
        "disk full: backup failed with exit 12 ({}), nothing left behind, source untouched",
        stderr.trim()
    );
}

/// `pra backup` as an unprivileged user into a directory it cannot write.
#[test]
fn backup_into_a_read_only_directory_fails_cleanly() {
    use std::os::unix::fs::PermissionsExt;
    let e = Env::new();
    // The unprivileged user must be able to reach and read the source.
    std::fs::set_permissions(e.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    make_app_db(&e.path("app.db"), 100);
    std::fs::set_permissions(e.path("app.db"), std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::create_dir(e.path("backup")).unwrap();
    std::fs::set_permissions(e.path("backup"), std::fs::Permissions::from_mode(0o555)).unwrap();
    let mut cmd = e.cmd(&["backup"]);
    // SAFETY: async-signal-safe calls only, between fork and exec.
    let as_root = unsafe { libc::geteuid() } == 0;
    if as_root {
        unsafe {
            cmd.pre_exec(|| {
                if libc::setgid(65534) != 0 || libc::setuid(65534) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let o = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(12), "{stderr}");
    assert!(stderr.contains("backup"), "{stderr}");
    assert_eq!(std::fs::read_dir(e.path("backup")).unwrap().count(), 0);
    eprintln!(
        "read-only directory: backup failed with exit 12, nothing written ({})",
        stderr.trim()
    );
}

#[test]
fn world_writable_stores_are_refused() {
    use std::os::unix::fs::PermissionsExt;
    let e = Env::new();
    let lock = e.path("pra-status.lock");
    std::fs::write(&lock, "ACTIVE_SITE=SBG\n").unwrap();
    std::fs::set_permissions(&lock, std::fs::Permissions::from_mode(0o666)).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_pra"))
        .args(["check", "--site", "sbg"])
        .env("PRA_STORE", format!("file://{}", lock.display()))
        .env("PRA_CONFIG", e.path("pra.toml"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(9), "fail closed");
    assert!(String::from_utf8_lossy(&o.stderr).contains("world-writable"));
    ok(e.run(&["site", "show"]));
    std::fs::set_permissions(e.path("state.db"), std::fs::Permissions::from_mode(0o646)).unwrap();
    assert_eq!(e.run(&["site", "show"]).status.code(), Some(9));
    eprintln!("world-writable lock file and SQLite store: refused (exit 9) with the chmod to run");
}
