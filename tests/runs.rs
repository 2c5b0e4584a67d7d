//! The run promise against real processes, on the SQLite store and on etcd: a run is its whole
//! process tree (scripts' workers, `setsid`, double forks, SIGTERM ignored), it dies with its
//! wrapper, its liveness trusts no other host's clock, it stops itself before a drain gives up
//! on it whatever `--on-revoke` says, every flip drains, and a paused host's resumed writes are
//! fenced. Each test names the case of the run issue it covers.
//!
//! `PRA_BIN` runs them against another build of `pra` (how they were seen failing on the code
//! before the fix).

#[path = "common/etcd.rs"]
mod etcd_fixture;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_fixture::Etcd;

fn bin() -> PathBuf {
    std::env::var_os("PRA_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_pra")))
}

/// Timings of every test: heartbeat 1 s, lost_after 5 s, grace 1 s, store timeout 1 s: the run
/// gets SIGTERM 3 s and SIGKILL 4 s after its last accepted heartbeat started.
const LOST_AFTER: Duration = Duration::from_secs(5);
const KILL_AFTER: Duration = Duration::from_secs(4);

struct Env {
    dir: tempfile::TempDir,
    config: PathBuf,
    /// The configuration the wrapper under test reads (through the proxy, on etcd).
    run_config: PathBuf,
    store: String,
    marker: String,
    _etcd: Option<Etcd>,
    proxy: Option<Proxy>,
}

impl Env {
    fn sqlite() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let store = format!("sqlite://{}", dir.path().join("state.db").display());
        Env::with(dir, store.clone(), store, None, None)
    }

    fn etcd() -> Env {
        let etcd = Etcd::start();
        let dir = tempfile::tempdir().unwrap();
        let prefix = format!("/runs-{}", std::process::id());
        let store = etcd.url(&prefix);
        let proxy = Proxy::start(etcd.endpoint(0).trim_start_matches("http://"));
        let via_proxy = format!("etcd://127.0.0.1:{}{prefix}", proxy.port);
        Env::with(dir, store, via_proxy, Some(etcd), Some(proxy))
    }

    fn with(
        dir: tempfile::TempDir,
        store: String,
        run_store: String,
        etcd: Option<Etcd>,
        proxy: Option<Proxy>,
    ) -> Env {
        let write = |name: &str, url: &str| {
            let p = dir.path().join(name);
            std::fs::write(
                &p,
                format!(
                    "store = \"{url}\"\nsites = \"rbx,sbg\"\nheartbeat_seconds = 1\nlost_after_seconds = {}\nrevoke_grace_seconds = 1\nstore_timeout_seconds = 1\ndrain_timeout_seconds = 20\nlock_dir = \"{}\"\n",
                    LOST_AFTER.as_secs(),
                    dir.path().display()
                ),
            )
            .unwrap();
            p
        };
        let config = write("pra.toml", &store);
        let run_config = write("run.toml", &run_store);
        let marker = format!(
            "WORKER{}",
            dir.path()
                .file_name()
                .unwrap()
                .to_string_lossy()
                .replace('.', "")
        );
        let env = Env {
            config,
            run_config,
            store,
            marker,
            dir,
            _etcd: etcd,
            proxy,
        };
        env.write_job_script();
        env
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn cmd(&self, config: &Path, site: &str, args: &[&str]) -> Command {
        let mut c = Command::new(bin());
        c.args(args)
            .env("PRA_CONFIG", config)
            .env("PRA_SITE", site)
            .env_remove("PRA_STORE")
            .env_remove("RUST_LOG")
            .current_dir(self.dir.path());
        c
    }

    /// An operator's command (direct to the store).
    fn ops(&self, site: &str, args: &[&str]) -> Output {
        self.cmd(&self.config, site, args).output().unwrap()
    }

    fn ok(&self, args: &[&str]) -> Output {
        let o = self.ops("rbx", args);
        assert!(o.status.success(), "{args:?}: {}", text(&o));
        o
    }

    fn token(&self) -> u64 {
        let o = self.ok(&["--json", "site", "show"]);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v["token"].as_u64().unwrap()
    }

    fn activate(&self, site: &str) {
        let t = self.token().to_string();
        self.ok(&[
            "site",
            "activate",
            site,
            "--expect-token",
            &t,
            "--reason",
            "test",
        ]);
    }

    /// `pra site activate sbg` at the current token, with `extra` flags.
    fn activate_sbg(&self, extra: &[&str]) -> Output {
        let t = self.token().to_string();
        let mut args = vec!["site", "activate", "sbg", "--expect-token", &t];
        args.extend_from_slice(extra);
        self.ops("sbg", &args)
    }

    fn deactivate(&self) {
        let t = self.token().to_string();
        self.ok(&[
            "site",
            "deactivate",
            "--expect-token",
            &t,
            "--reason",
            "test",
        ]);
    }

    /// `pra run` of the wrapper under test, in its own process group.
    fn run(&self, site: &str, args: &[&str]) -> Child {
        let mut c = self.cmd(&self.run_config, site, args);
        c.process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        c.spawn().unwrap()
    }

    /// A job script with three workers: a child that ignores SIGTERM, a `setsid` one, and a
    /// double-forked one that also ignores SIGTERM; each appends to its log every 50 ms.
    fn write_job_script(&self) {
        let m = &self.marker;
        let script = format!(
            "#!/bin/sh\n\
             sh -c 'trap \"\" TERM; while :; do echo x >> a.log; sleep 0.05; done' {m}a &\n\
             setsid sh -c 'while :; do echo x >> b.log; sleep 0.05; done' {m}b &\n\
             ( ( trap '' TERM; exec sh -c 'trap \"\" TERM; while :; do echo x >> c.log; sleep 0.05; done' {m}c ) & )\n\
             sleep 1000\n"
        );
        let p = self.path("job.sh");
        std::fs::write(&p, script).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// Host pids of the job's processes still alive (zombies excluded; pra's own wrapper and
    /// init, whose command lines name the job, are not the job).
    fn survivors(&self) -> Vec<i32> {
        let mut out = Vec::new();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
                continue;
            };
            let cmdline = String::from_utf8_lossy(&cmdline);
            let argv0 = cmdline.split('\0').next().unwrap_or("");
            if !cmdline.contains(&self.marker) || Path::new(argv0) == bin() {
                continue;
            }
            let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
            let state = stat.rsplit(')').next().unwrap_or("").trim().chars().next();
            if state != Some('Z') && state.is_some() {
                out.push(pid);
            }
        }
        out
    }

    fn wait_workers(&self, n: usize) {
        wait_until("the job's workers start", Duration::from_secs(10), || {
            self.survivors().len() >= n
        });
    }

    fn log_sizes(&self) -> Vec<u64> {
        ["a.log", "b.log", "c.log"]
            .iter()
            .map(|f| std::fs::metadata(self.path(f)).map_or(0, |m| m.len()))
            .collect()
    }

    /// Cuts the wrapper under test off its store: on etcd the proxy drops every connection; on
    /// SQLite another process holds the database locked (until the returned connection drops).
    fn store_outage(&self) -> Option<rusqlite::Connection> {
        match &self.proxy {
            Some(p) => {
                p.cut();
                None
            }
            None => {
                let c = rusqlite::Connection::open(self.path("state.db")).unwrap();
                c.execute_batch("BEGIN EXCLUSIVE").unwrap();
                Some(c)
            }
        }
    }

    fn assert_nothing_runs(&self, when: &str) {
        let s = self.survivors();
        assert!(
            s.is_empty(),
            "{when}: workers still alive: {s:?} ({})",
            self.store
        );
        let before = self.log_sizes();
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(
            before,
            self.log_sizes(),
            "{when}: the job still writes ({})",
            self.store
        );
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        for pid in self.survivors() {
            // SAFETY: kill(2) on leftovers of this test.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < limit, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
    t.elapsed()
}

fn wait_exit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let t = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        if t.elapsed() > limit {
            let _ = child.kill();
            panic!("the wrapper did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn both(test: impl Fn(&Env)) {
    test(&Env::sqlite());
    test(&Env::etcd());
}

/// A TCP proxy the test can cut: the wrapper's only path to etcd.
struct Proxy {
    port: u16,
    cut: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    fn start(target: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (c, k, target) = (cut.clone(), conns.clone(), target.to_string());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if c.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(&target) else {
                    continue;
                };
                let mut all = k.lock().unwrap();
                all.push(client.try_clone().unwrap());
                all.push(server.try_clone().unwrap());
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 16384];
                        while let Ok(n) = from.read(&mut buf) {
                            if n == 0 || to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Proxy { port, cut, conns }
    }

    /// A partition: every connection dropped, new ones refused.
    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for s in self.conns.lock().unwrap().drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }

    /// The end of the partition: new connections go through again.
    fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

/// Case 1: on revocation the whole tree goes — the script, its child that ignores SIGTERM, a
/// `setsid` worker and a double-forked one — and the run ends only once the last is gone.
#[test]
fn revocation_stops_the_whole_process_tree() {
    both(|env| {
        env.activate("rbx");
        let mut run = env.run("rbx", &["run", "--job", "invoices", "--", "./job.sh"]);
        env.wait_workers(3);
        env.deactivate();
        let st = wait_exit(&mut run, Duration::from_secs(10));
        assert_eq!(st.code(), Some(143), "the script got SIGTERM");
        env.assert_nothing_runs("right after the revoked run ended");
    });
}

/// Case 1, the command's own end: a job that exits leaving a daemonized worker behind does not
/// leave it running (systemd's KillMode=control-group).
#[test]
fn a_command_that_exits_takes_its_leftovers_with_it() {
    let env = Env::sqlite();
    env.activate("rbx");
    let m = &env.marker;
    let script = format!(
        "setsid sh -c 'while :; do echo x >> b.log; sleep 0.05; done' {m}b & sleep 0.3; exit 3"
    );
    let mut run = env.run(
        "rbx",
        &["run", "--job", "leaves", "--", "sh", "-c", &script],
    );
    let st = wait_exit(&mut run, Duration::from_secs(10));
    assert_eq!(st.code(), Some(3), "the command's own status");
    env.assert_nothing_runs("after the command exited");
}

/// Case 2: a SIGKILLed wrapper (OOM killer, kill -9, a supervisor's hard timeout) takes its
/// command and every worker with it; `--no-overlap` cannot start a second instance beside them.
#[test]
fn a_killed_wrapper_takes_its_whole_tree_with_it() {
    both(|env| {
        env.activate("rbx");
        let mut run = env.run(
            "rbx",
            &["run", "--no-overlap", "--job", "invoices", "--", "./job.sh"],
        );
        env.wait_workers(3);
        // SAFETY: kill(2) on the wrapper this test started.
        unsafe { libc::kill(run.id() as i32, libc::SIGKILL) };
        run.wait().unwrap();
        // The next run of the same job, as soon as --no-overlap lets it start, must find no
        // worker of the old one (its check spells the marker in two halves, to not match itself).
        let (a, b) = env.marker.split_at(4);
        let check = format!(
            "m={a}; m=\"${{m}}{b}\"; for f in /proc/[0-9]*/cmdline; do c=$(tr '\\0' ' ' < $f 2>/dev/null); case \"$c\" in *\"$m\"*) echo \"$f: $c\"; exit 1;; esac; done; exit 0"
        );
        let t = Instant::now();
        loop {
            let o = env
                .cmd(
                    &env.run_config,
                    "rbx",
                    &[
                        "run",
                        "--no-overlap",
                        "--job",
                        "invoices",
                        "--",
                        "sh",
                        "-c",
                        &check,
                    ],
                )
                .output()
                .unwrap();
            match o.status.code() {
                Some(76) if t.elapsed() < Duration::from_secs(5) => continue,
                Some(0) => break,
                _ => panic!("the next run found the old workers alive: {}", text(&o)),
            }
        }
        env.assert_nothing_runs("after the wrapper was SIGKILLed");
    });
}

/// Case 3: a wrapper whose clock is an hour behind (a VM restored before NTP converged)
/// writes heartbeat times far in the past; the drain must still see its run alive.
#[test]
fn clock_skew_does_not_make_a_live_run_lost() {
    if Command::new("faketime").arg("--version").output().is_err() {
        panic!("faketime is missing: `make apt-tools` installs Debian's faketime");
    }
    both(|env| {
        env.activate("rbx");
        let mut c = Command::new("faketime");
        c.args(["-f", "-1h"])
            .arg(bin())
            .args([
                "run",
                "--on-revoke",
                "wait",
                "--job",
                "invoices",
                "--",
                "./job.sh",
            ])
            .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
            .env("PRA_CONFIG", &env.run_config)
            .env("PRA_SITE", "rbx")
            .env_remove("PRA_STORE")
            .current_dir(env.dir.path())
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut run = c.spawn().unwrap();
        env.wait_workers(3);
        std::thread::sleep(Duration::from_secs(2));
        for step in [
            &["plan", "start-failover", "--by", "t", "--reason", "skew"][..],
            &["plan", "apply", "failover-decided", "--operator", "t"],
            &["plan", "apply", "execute-failover"],
        ] {
            env.ok(step);
        }
        // The run heartbeats (with times an hour old): it is alive, the drain is not done.
        for _ in 0..3 {
            let o = env.ops("sbg", &["plan", "apply", "drained", "--no-wait"]);
            assert_eq!(
                o.status.code(),
                Some(8),
                "drain must wait for the skewed run: {}",
                text(&o)
            );
            std::thread::sleep(Duration::from_secs(1));
        }
        assert!(!env.survivors().is_empty());
        // SAFETY: kill(2) on the wrapper's process group, started by this test.
        unsafe { libc::kill(-(run.id() as i32), libc::SIGKILL) };
        run.wait().unwrap();
    });
}

/// Case 4: `--on-revoke wait` cut off from the store still stops its command before a drain
/// could count the run lost (SQLite: the store locked by another process; etcd: the network
/// path cut by a proxy).
#[test]
fn a_partitioned_run_stops_itself_before_it_could_be_counted_lost() {
    both(|env| {
        env.activate("rbx");
        let mut run = env.run(
            "rbx",
            &[
                "run",
                "--on-revoke",
                "wait",
                "--job",
                "invoices",
                "--",
                "./job.sh",
            ],
        );
        env.wait_workers(3);
        std::thread::sleep(Duration::from_millis(1500));
        let lock = env.store_outage();
        // The last heartbeat that got through started before the cut: SIGKILL is due at most
        // KILL_AFTER later, before anyone may count the run lost (LOST_AFTER).
        let gone = wait_until("the run stops itself", LOST_AFTER, || {
            env.survivors().is_empty()
        });
        assert!(
            gone <= KILL_AFTER + Duration::from_millis(500),
            "stopped {gone:?} after the cut"
        );
        assert!(gone < LOST_AFTER);
        drop(lock);
        let st = wait_exit(&mut run, Duration::from_secs(15));
        assert!(!st.success());
        eprintln!(
            "{}: partitioned run stopped {gone:?} after the cut",
            env.store
        );
    });
}

/// Case 5: timings under which self-fencing could finish after the drain gives up are refused,
/// naming the keys and the inequality.
#[test]
fn unsafe_timings_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("pra.toml");
    std::fs::write(
        &p,
        format!(
            "store = \"sqlite://{}/state.db\"\nheartbeat_seconds = 10\nlost_after_seconds = 40\nrevoke_grace_seconds = 30\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let o = Command::new(bin())
        .args(["run", "--job", "j", "--", "true"])
        .env("PRA_CONFIG", &p)
        .env("PRA_SITE", "rbx")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    for key in [
        "revoke_grace_seconds",
        "heartbeat_seconds",
        "store_timeout_seconds",
        "lost_after_seconds",
    ] {
        assert!(err.contains(key), "{key} not named: {err}");
    }
}

/// Case 6: a manual flip (deactivate, then activate the other site: what an Ansible port of
/// the seed's Solution 2 does) drains like the plan: refused with --no-wait while an old run
/// lives, waits for it otherwise, and --force is journaled.
#[test]
fn manual_activation_drains_old_runs() {
    both(|env| {
        env.activate("rbx");
        let started = Instant::now();
        let mut run = env.run(
            "rbx",
            &[
                "run",
                "--on-revoke",
                "wait",
                "--job",
                "invoices",
                "--",
                "sh",
                "-c",
                "sleep 4; true",
                &env.marker,
            ],
        );
        std::thread::sleep(Duration::from_millis(1200));
        env.deactivate();
        let o = env.activate_sbg(&["--no-wait", "--reason", "x"]);
        assert_eq!(
            o.status.code(),
            Some(8),
            "refused while rbx's run lives: {}",
            text(&o)
        );
        let o = env.activate_sbg(&["--reason", "failback"]);
        assert!(o.status.success(), "{}", text(&o));
        assert!(
            started.elapsed() >= Duration::from_secs(4),
            "activated before the run ended"
        );
        assert!(
            env.survivors().is_empty(),
            "sbg was activated while rbx's run still ran"
        );
        // --force, with a reason, goes past a live run and is journaled.
        env.deactivate();
        env.activate("rbx");
        let mut run2 = env.run(
            "rbx",
            &[
                "run",
                "--on-revoke",
                "wait",
                "--job",
                "invoices",
                "--",
                "sleep",
                "3",
            ],
        );
        std::thread::sleep(Duration::from_millis(800));
        env.deactivate();
        let o = env.activate_sbg(&["--force"]);
        assert_eq!(
            o.status.code(),
            Some(3),
            "--force needs a reason: {}",
            text(&o)
        );
        let o = env.activate_sbg(&["--force", "--reason", "rbx is gone"]);
        assert!(o.status.success(), "{}", text(&o));
        let j = env.ok(&["journal"]);
        assert!(
            String::from_utf8_lossy(&j.stdout).contains("FORCED"),
            "{}",
            text(&j)
        );
        wait_exit(&mut run, Duration::from_secs(10));
        wait_exit(&mut run2, Duration::from_secs(10));
    });
}

/// Case 6, stores without a run registry: activation says nothing could be drained.
#[test]
fn activation_on_a_store_without_registry_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let o = Command::new(bin())
        .args(["site", "activate", "rbx", "--expect-token", "0"])
        .env(
            "PRA_STORE",
            format!("file://{}/pra-status.lock", dir.path().display()),
        )
        .env("PRA_SITE", "rbx")
        .env_remove("PRA_CONFIG")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("keeps no run registry"),
        "{}",
        text(&o)
    );
}

/// Case 7: a paused host (the whole tree SIGSTOPped, as a paused VM) resumed after the flip:
/// its writes are refused by the fence, and its processes are gone within heartbeat + grace.
#[test]
fn a_paused_run_resumed_after_the_flip_is_fenced_and_stopped() {
    both(|env| {
        let db = env.path("app.db");
        rusqlite::Connection::open(&db)
            .unwrap()
            .execute_batch("PRAGMA journal_mode = WAL;")
            .unwrap();
        let db_s = db.to_str().unwrap();
        let job = |site: &str, ms: &str| {
            env.run(
                site,
                &[
                    "run",
                    "--job",
                    "invoices",
                    "--",
                    bin().to_str().unwrap(),
                    "__drill-job",
                    "--job",
                    "invoices",
                    "--ms",
                    ms,
                    "--fence-each",
                    "--db",
                    db_s,
                ],
            )
        };
        env.activate("rbx");
        let mut paused = job("rbx", "60000");
        let rows = |sql: &str| -> i64 {
            let c = rusqlite::Connection::open(&db).unwrap();
            c.query_row(sql, [], |r| r.get(0)).unwrap_or(0)
        };
        wait_until("rbx's job works", Duration::from_secs(10), || {
            rows("SELECT count(*) FROM work WHERE site = 'rbx'") > 2
        });
        // The host is paused: wrapper, init and job alike.
        let pgid = paused.id() as i32;
        // SAFETY: kill(2) on the process group this test started.
        unsafe { libc::kill(-pgid, libc::SIGSTOP) };
        env.deactivate();
        // The drain waits for the silent run for lost_after, then activates sbg.
        let o = env.activate_sbg(&["--reason", "failover"]);
        assert!(o.status.success(), "{}", text(&o));
        let mut sbg = job("sbg", "300");
        assert!(wait_exit(&mut sbg, Duration::from_secs(10)).success());
        let sbg_first: i64 = rows("SELECT min(start_us) FROM work WHERE site = 'sbg'");
        assert!(sbg_first > 0);
        // The host resumes.
        // SAFETY: as above.
        unsafe { libc::kill(-pgid, libc::SIGCONT) };
        let resumed = Instant::now();
        wait_exit(&mut paused, Duration::from_secs(10));
        let took = resumed.elapsed();
        assert!(
            took <= Duration::from_secs(1 + 1) + Duration::from_millis(800),
            "the resumed run lived {took:?} (bound: heartbeat + grace)"
        );
        let late: i64 = rows(&format!(
            "SELECT count(*) FROM work WHERE site = 'rbx' AND end_us > {sbg_first}"
        ));
        assert_eq!(
            late, 0,
            "a write of the resumed job was admitted after sbg's"
        );
        eprintln!(
            "{}: resumed run stopped {took:?} after SIGCONT; {} of its slices refused by the fence",
            env.store,
            rows("SELECT count(*) FROM refused WHERE site = 'rbx'")
        );
    });
}

/// `--strict-containment` (and `--containment namespace`) say which containment applied, and
/// the process-group fallback still stops the whole tree on revocation.
#[test]
fn containment_is_recorded_and_the_fallback_stops_the_tree() {
    let env = Env::sqlite();
    env.activate("rbx");
    let mut run = env.run(
        "rbx",
        &[
            "run",
            "--containment",
            "process-group",
            "--job",
            "pg",
            "--",
            "./job.sh",
        ],
    );
    env.wait_workers(3);
    env.deactivate();
    wait_exit(&mut run, Duration::from_secs(10));
    env.assert_nothing_runs("after a revoked run under the process-group fallback");
    env.activate("rbx");
    let o = env.ops(
        "rbx",
        &["run", "--strict-containment", "--job", "ns", "--", "true"],
    );
    assert!(o.status.success(), "{}", text(&o));
    let c = rusqlite::Connection::open(env.path("state.db")).unwrap();
    let kinds: Vec<String> = c
        .prepare(
            "SELECT name FROM runs JOIN run_names ON run_names.id = runs.containment_id
             ORDER BY runs.id",
        )
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(kinds, vec!["process-group", "pid-namespace"]);
}

/// Red team F1: SIGSTOP of the wrapper's whole process group (wrapper, and before the fix the
/// init and the command too; a terminal's Ctrl-Z stops a group the same way) while a `setsid`
/// worker goes on: the init, in a session of its own, still enforces the deadline, so the
/// worker is dead before the drain lets the other site start.
#[test]
fn stopping_the_wrappers_process_group_does_not_suspend_the_deadline() {
    let env = Env::sqlite();
    env.activate("rbx");
    let mut run = env.run("rbx", &["run", "--job", "invoices", "--", "./job.sh"]);
    env.wait_workers(3);
    let pgid = run.id() as i32;
    // SAFETY: kill(2) on the process group this test started.
    unsafe { libc::kill(-pgid, libc::SIGSTOP) };
    env.deactivate();
    let o = env.activate_sbg(&["--reason", "failover"]);
    assert!(o.status.success(), "{}", text(&o));
    env.assert_nothing_runs("when sbg was activated");
    // SAFETY: as above.
    unsafe { libc::kill(-pgid, libc::SIGCONT) };
    wait_exit(&mut run, Duration::from_secs(10));
}

/// Red team F2: the store file moved away (and a new one created) under a live run: the
/// wrapper must not keep heartbeating into the old file; it fences itself by its deadline.
#[test]
fn a_store_file_replaced_under_a_live_run_stops_the_run() {
    let env = Env::sqlite();
    env.activate("rbx");
    let mut run = env.run("rbx", &["run", "--job", "invoices", "--", "./job.sh"]);
    env.wait_workers(3);
    std::fs::create_dir(env.path("old")).unwrap();
    for f in ["state.db", "state.db-wal", "state.db-shm"] {
        let _ = std::fs::rename(env.path(f), env.path("old").join(f));
    }
    let moved = Instant::now();
    // Someone reads the store again: a new, empty one is created at the path.
    env.ok(&["site", "show"]);
    let gone = wait_until("the run stops itself", LOST_AFTER, || {
        env.survivors().is_empty()
    });
    assert!(
        gone <= KILL_AFTER + Duration::from_millis(500),
        "stopped {gone:?} after the move"
    );
    assert!(moved.elapsed() < LOST_AFTER + Duration::from_secs(1));
    wait_exit(&mut run, Duration::from_secs(10));
}

/// A command that cannot be run exits 127 (not found) or 126 (not executable), as shells do;
/// the `--no-overlap` lock is never a symlink another user planted.
#[test]
fn unrunnable_commands_and_planted_lock_files() {
    let env = Env::sqlite();
    env.activate("rbx");
    let o = env.ops("rbx", &["run", "--job", "nope", "--", "./does-not-exist"]);
    assert_eq!(o.status.code(), Some(127), "{}", text(&o));
    std::fs::write(env.path("plain.txt"), "x").unwrap();
    let o = env.ops("rbx", &["run", "--job", "nope", "--", "./plain.txt"]);
    assert_eq!(o.status.code(), Some(126), "{}", text(&o));
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    let victim = env.path("victim");
    std::os::unix::fs::symlink(&victim, env.path(&format!("pra-run-{uid}-planted.lock"))).unwrap();
    let o = env.ops(
        "rbx",
        &["run", "--no-overlap", "--job", "planted", "--", "true"],
    );
    assert_ne!(o.status.code(), Some(0), "{}", text(&o));
    assert!(!victim.exists(), "the lock followed a planted symlink");
}

/// Cron jobs often run as an unprivileged user (`app`): containment then takes a user and PID
/// namespace (when the kernel allows unprivileged user namespaces), the command keeps its uid,
/// and the whole tree still dies with the run. Runs as nobody through setpriv when the test
/// runs as root (CI), and is skipped with a message otherwise.
#[test]
fn an_unprivileged_run_is_contained_in_a_user_namespace() {
    use std::os::unix::fs::PermissionsExt;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("not root: cannot switch to an unprivileged user; skipped");
        return;
    }
    let env = Env::sqlite();
    std::fs::set_permissions(env.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let chown = Command::new("chown")
        .args(["-R", "65534:65534"])
        .arg(env.dir.path())
        .status()
        .unwrap();
    assert!(chown.success());
    let as_nobody = |args: &[&str]| {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(bin())
            .args(args)
            .env("PRA_CONFIG", &env.config)
            .env("PRA_SITE", "rbx")
            .env_remove("PRA_STORE")
            .current_dir(env.dir.path());
        c
    };
    let o = as_nobody(&[
        "site",
        "activate",
        "rbx",
        "--expect-token",
        "0",
        "--reason",
        "t",
    ])
    .output()
    .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let mut run = as_nobody(&[
        "run",
        "--strict-containment",
        "--job",
        "app",
        "--",
        "./job.sh",
    ])
    .process_group(0)
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    env.wait_workers(3);
    for pid in env.survivors() {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        assert!(
            status.lines().any(|l| l.starts_with("Uid:\t65534")),
            "the job keeps its uid: {status}"
        );
    }
    let o = as_nobody(&["site", "deactivate", "--expect-token", "1", "--reason", "t"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    wait_exit(&mut run, Duration::from_secs(10));
    env.assert_nothing_runs("after the unprivileged run was revoked");
    let c = rusqlite::Connection::open(env.path("state.db")).unwrap();
    let kind: String = c
        .query_row(
            "SELECT name FROM runs JOIN run_names ON run_names.id = runs.containment_id",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(kind, "user-pid-namespace");
}

// ---- `pra follow`: a long-running command that runs only while its site is active ----------

/// One instance of the followed command, from its own writes: its site and the wall-clock
/// times (ns) of its first and last tick.
#[derive(Debug, Clone)]
struct Instance {
    site: String,
    first: u128,
    last: u128,
}

impl Env {
    /// `follow.sh`: a long-running command whose worker (a child that ignores SIGTERM) appends
    /// `SITE INSTANCE NANOS` to ticks.log every 50 ms, INSTANCE unique to each start.
    fn write_follow_script(&self) {
        let m = &self.marker;
        let script = format!(
            "#!/bin/sh\n\
             id=$(cat /proc/sys/kernel/random/uuid)\n\
             sh -c 'trap \"\" TERM; while :; do echo \"$PRA_SITE '$id' $(date +%s%N)\" >> ticks.log; sleep 0.05; done' {m}t &\n\
             exec sleep 100000\n"
        );
        let p = self.path("follow.sh");
        std::fs::write(&p, script).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// `pra follow --job w [extra] -- ./follow.sh` on `site` (through the proxy, on etcd).
    fn follow(&self, site: &str, extra: &[&str], command: &[&str]) -> Child {
        let mut args = vec!["follow", "--job", "w"];
        args.extend_from_slice(extra);
        args.push("--");
        args.extend_from_slice(command);
        self.run(site, &args)
    }

    /// The instances of the followed command so far, by first tick.
    fn instances(&self) -> Vec<Instance> {
        let text = std::fs::read_to_string(self.path("ticks.log")).unwrap_or_default();
        let mut by_id: Vec<(String, Instance)> = Vec::new();
        for line in text.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            let [site, id, t] = f[..] else { continue };
            let Ok(t) = t.parse::<u128>() else { continue };
            match by_id.iter_mut().find(|(i, _)| i == id) {
                Some((_, inst)) => inst.last = inst.last.max(t),
                None => by_id.push((
                    id.to_string(),
                    Instance {
                        site: site.to_string(),
                        first: t,
                        last: t,
                    },
                )),
            }
        }
        let mut out: Vec<Instance> = by_id.into_iter().map(|(_, i)| i).collect();
        out.sort_by_key(|i| i.first);
        out
    }

    /// Waits until an instance of the command on `site` is ticking (a tick in the last 200 ms).
    fn wait_ticking(&self, site: &str, limit: Duration) {
        wait_until(&format!("{site}'s command ticks"), limit, || {
            let now = now_ns();
            self.instances()
                .iter()
                .any(|i| i.site == site && now.saturating_sub(i.last) < 200_000_000)
        });
    }

    /// Ground truth: no two instances of different sites ever ticked at overlapping times.
    fn assert_never_both(&self) -> Vec<Instance> {
        let all = self.instances();
        for (n, a) in all.iter().enumerate() {
            for b in &all[n + 1..] {
                if a.site != b.site {
                    assert!(
                        b.first > a.last,
                        "{}: {a:?} and {b:?} ran at the same time: {all:?}",
                        self.store
                    );
                }
            }
        }
        all
    }

    fn metric(&self, name: &str, site: &str) -> u64 {
        let o = self.ok(&["metrics"]);
        let want = format!("{name}{{pra_job=\"w\",site=\"{site}\"}} ");
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .find_map(|l| l.strip_prefix(&want)?.parse().ok())
            .unwrap_or(0)
    }
}

fn now_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// SIGTERM to a follower: it stops its command's tree, records the end and exits 0.
fn stop_follower(env: &Env, mut f: Child) {
    // SAFETY: kill(2) on the follower this test started.
    unsafe { libc::kill(f.id() as i32, libc::SIGTERM) };
    let st = wait_exit(&mut f, Duration::from_secs(10));
    let mut err = String::new();
    if let Some(mut e) = f.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    assert_eq!(st.code(), Some(0), "{}: follower: {err}", env.store);
}

/// `pra follow` on both sites: the command runs only on the active site; on each flip
/// (`pra site deactivate`, then `pra site activate OTHER`, which drains) the old site's tree
/// (a worker that ignores SIGTERM) is gone before the other site's command starts — checked
/// on the command's own writes —; every start and stop is a run (`pra metrics`); SIGTERM stops
/// the follower cleanly.
#[test]
fn follow_runs_the_command_on_the_active_site_only_across_flips() {
    both(|env| {
        env.write_follow_script();
        env.activate("rbx");
        let rbx = env.follow("rbx", &[], &["./follow.sh"]);
        let sbg = env.follow("sbg", &[], &["./follow.sh"]);
        env.wait_ticking("rbx", Duration::from_secs(10));
        std::thread::sleep(Duration::from_secs(2));
        assert!(
            env.instances().iter().all(|i| i.site == "rbx"),
            "the standby site's command started"
        );
        for (from, to) in [("rbx", "sbg"), ("sbg", "rbx")] {
            env.deactivate();
            let t = env.token().to_string();
            let o = env.ops(
                to,
                &[
                    "site",
                    "activate",
                    to,
                    "--expect-token",
                    &t,
                    "--reason",
                    "t",
                ],
            );
            assert!(o.status.success(), "{}", text(&o));
            env.wait_ticking(to, Duration::from_secs(10));
            std::thread::sleep(Duration::from_secs(2));
            let last = env.instances();
            assert!(
                last.iter()
                    .filter(|i| i.site == from)
                    .all(|i| i.last < now_ns() - 1_000_000_000),
                "{from}'s command still ticks after the flip to {to}"
            );
        }
        stop_follower(env, rbx);
        stop_follower(env, sbg);
        env.assert_nothing_runs("after both followers got SIGTERM");
        let all = env.assert_never_both();
        let sites: Vec<&str> = all.iter().map(|i| i.site.as_str()).collect();
        assert_eq!(sites, ["rbx", "sbg", "rbx"], "{all:?}");
        assert_eq!(env.metric("pra_runs_started_total", "rbx"), 2);
        assert_eq!(env.metric("pra_runs_started_total", "sbg"), 1);
        assert_eq!(env.metric("pra_runs_revoked_total", "rbx"), 1);
        assert_eq!(env.metric("pra_runs_revoked_total", "sbg"), 1);
        assert_eq!(env.metric("pra_runs_unfinished", "rbx"), 0);
    });
}

/// A store outage (SQLite: the database locked by another process; etcd: the follower's path
/// cut by a proxy) stops the followed command's tree before a drain could count its run lost
/// (fail closed); nothing starts while the store cannot be read; it starts again once the
/// store answers and the site is still active.
#[test]
fn follow_stops_on_a_store_outage_and_resumes_after_it() {
    both(|env| {
        env.write_follow_script();
        env.activate("rbx");
        let f = env.follow("rbx", &[], &["./follow.sh"]);
        env.wait_ticking("rbx", Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(1500));
        let cut_at = now_ns();
        let lock = env.store_outage();
        wait_until("the command stops itself", LOST_AFTER, || {
            env.survivors().is_empty()
        });
        let stopped = env.instances().last().unwrap().last;
        assert!(
            stopped < cut_at + (KILL_AFTER + Duration::from_millis(500)).as_nanos(),
            "stopped {:?} after the cut",
            Duration::from_nanos((stopped - cut_at) as u64)
        );
        // Twice lost_after without the store: nothing starts.
        std::thread::sleep(2 * LOST_AFTER);
        assert_eq!(
            env.instances().len(),
            1,
            "a command started during the outage"
        );
        drop(lock);
        if let Some(p) = &env.proxy {
            p.heal();
        }
        let healed = Instant::now();
        env.wait_ticking("rbx", Duration::from_secs(15));
        eprintln!(
            "{}: stopped {:?} after the cut, restarted {:?} after the store came back",
            env.store,
            Duration::from_nanos((stopped - cut_at) as u64),
            healed.elapsed()
        );
        assert_eq!(env.instances().len(), 2);
        stop_follower(env, f);
        env.assert_nothing_runs("after the follower got SIGTERM");
    });
}

/// A command that dies while its site is active is started again after a back-off that
/// doubles up to its maximum (0.4 s, 0.8 s, 1.6 s, 1.6 s here); each death is a run ended
/// `exited 3`.
#[test]
fn follow_restarts_a_dying_command_with_backoff() {
    let env = Env::sqlite();
    env.activate("rbx");
    let f = env.follow(
        "rbx",
        &[
            "--backoff-initial",
            "0.4",
            "--backoff-max",
            "1.6",
            "--healthy-after",
            "60",
        ],
        &["sh", "-c", "date +%s%N >> starts.log; sleep 0.2; exit 3"],
    );
    let starts = || -> Vec<u128> {
        std::fs::read_to_string(env.path("starts.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    };
    wait_until("five starts", Duration::from_secs(20), || {
        starts().len() >= 5
    });
    stop_follower(&env, f);
    let s = starts();
    let gaps: Vec<f64> = s.windows(2).map(|w| (w[1] - w[0]) as f64 / 1e9).collect();
    for (gap, delay) in gaps.iter().zip([0.4, 0.8, 1.6, 1.6]) {
        assert!(
            *gap >= delay + 0.2 && *gap < delay + 1.0,
            "gaps between starts {gaps:?}: expected about 0.2 s + {delay} s"
        );
    }
    let c = rusqlite::Connection::open(env.path("state.db")).unwrap();
    let exited: i64 = c
        .query_row(
            "SELECT count(*) FROM runs WHERE outcome = 'exited 3'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(exited >= 4, "{exited} runs recorded as exited 3");
}

/// Debian's `cron -f` under `pra follow` on both sites (two followers on this host play the two
/// sites' hosts): a `* * * * *` entry in /etc/cron.d (Debian's cron reads only its compiled-in
/// paths: /etc/crontab, /etc/cron.d, /var/spool/cron; there is no private crontab directory)
/// runs on the active site only, across one flip. Each cron writes its site and PID namespace
/// when it starts; the entry writes its PID namespace and time, so every execution is traced to
/// the cron, hence the site, that ran it. Takes one to three minutes (cron's granularity).
/// Needs root (cron reads /etc/cron.d and locks /run/crond.pid) and /usr/sbin/cron (`make
/// apt-tools` installs it); skipped with a message otherwise, or when another cron runs.
#[test]
fn cron_under_follow_runs_its_entries_on_the_active_site_only() {
    use std::os::unix::fs::PermissionsExt;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || !Path::new("/usr/sbin/cron").exists() {
        // Never a silent skip in CI: there, `make apt-tools` installed cron and we are root.
        assert!(
            std::env::var_os("CI").is_none(),
            "CI: this test needs root and /usr/sbin/cron (make apt-tools)"
        );
        eprintln!("needs root and /usr/sbin/cron (make apt-tools); skipped");
        return;
    }
    let other_cron = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .any(|e| std::fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim() == "cron"));
    if other_cron {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI: a cron already runs on this host (it holds /run/crond.pid)"
        );
        eprintln!("a cron already runs on this host (it holds /run/crond.pid); skipped");
        return;
    }
    let env = Env::sqlite();
    let dir = env.dir.path().display().to_string();
    let script = |name: &str, body: String| {
        let p = env.path(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    };
    script(
        "cron.sh",
        format!(
            "echo \"$PRA_SITE $(readlink /proc/self/ns/pid) $(date +%s%N)\" >> {dir}/ns.log\nexec /usr/sbin/cron -f"
        ),
    );
    script(
        "entry.sh",
        format!("echo \"$(readlink /proc/self/ns/pid) $(date +%s%N)\" >> {dir}/cron.log"),
    );
    struct CronD(PathBuf);
    impl Drop for CronD {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    // No dot in the name: cron ignores such files in /etc/cron.d.
    let crond = CronD(PathBuf::from(format!(
        "/etc/cron.d/pra-follow-test-{}",
        std::process::id()
    )));
    std::fs::write(&crond.0, format!("* * * * * root {dir}/entry.sh\n")).unwrap();
    std::fs::set_permissions(&crond.0, std::fs::Permissions::from_mode(0o644)).unwrap();

    env.activate("rbx");
    let rbx = env.follow("rbx", &[], &["./cron.sh"]);
    let sbg = env.follow("sbg", &[], &["./cron.sh"]);
    // (site, time) of each execution of the entry: the site of the cron that ran it, known by
    // its PID namespace. The kernel reuses a freed namespace's number, so an entry belongs to
    // the latest cron started before it in that namespace (two live crons never share one).
    let runs = || -> Vec<(String, u128)> {
        let ns = std::fs::read_to_string(env.path("ns.log")).unwrap_or_default();
        let crons: Vec<(&str, &str, u128)> = ns
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                let [site, n, t] = f[..] else { return None };
                Some((site, n, t.parse().ok()?))
            })
            .collect();
        std::fs::read_to_string(env.path("cron.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let (n, t) = l.split_once(' ')?;
                let t: u128 = t.trim().parse().ok()?;
                let site = crons
                    .iter()
                    .filter(|(_, cn, ct)| *cn == n && *ct < t)
                    .max_by_key(|(_, _, ct)| *ct)
                    .map_or("?", |(s, _, _)| *s);
                Some((site.to_string(), t))
            })
            .collect()
    };
    let ran_on = |site: &str| runs().iter().any(|(s, _)| s == site);
    wait_until("the entry runs on rbx", Duration::from_secs(75), || {
        ran_on("rbx")
    });
    env.deactivate();
    let t = env.token().to_string();
    let o = env.ops(
        "sbg",
        &[
            "site",
            "activate",
            "sbg",
            "--expect-token",
            &t,
            "--reason",
            "t",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let flipped = now_ns();
    wait_until("the entry runs on sbg", Duration::from_secs(75), || {
        ran_on("sbg")
    });
    stop_follower(&env, rbx);
    stop_follower(&env, sbg);
    let all = runs();
    eprintln!("cron entry executions (site, ns): {all:?}");
    assert!(all.iter().all(|(s, _)| s == "rbx" || s == "sbg"), "{all:?}");
    for (site, t) in &all {
        match site.as_str() {
            "rbx" => assert!(
                *t < flipped,
                "rbx's cron ran the entry after the flip: {all:?}"
            ),
            _ => assert!(
                *t > flipped,
                "sbg's cron ran the entry before the flip: {all:?}"
            ),
        }
    }
    // One execution per minute: never one by each site's cron.
    let mut minutes: Vec<u128> = all.iter().map(|(_, t)| t / 60_000_000_000).collect();
    minutes.dedup();
    assert_eq!(
        minutes.len(),
        all.len(),
        "two executions in one minute: {all:?}"
    );
    let ns = std::fs::read_to_string(env.path("ns.log")).unwrap();
    let started: Vec<&str> = ns
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(started, ["rbx", "sbg"], "cron starts: {ns}");
}

/// A follower started while its store cannot be opened (here a SQLite store file refused for
/// being world-writable, as after a bad restore) waits instead of exiting, runs nothing, and
/// starts the command once the store can be opened; SIGTERM while it waits exits 0.
#[test]
fn follow_waits_for_a_store_it_cannot_open_yet() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::sqlite();
    env.write_follow_script();
    env.activate("rbx");
    let db = env.path("state.db");
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o666)).unwrap();
    let mut f = env.follow("rbx", &[], &["./follow.sh"]);
    std::thread::sleep(Duration::from_secs(3));
    assert!(f.try_wait().unwrap().is_none(), "the follower exited");
    assert!(
        env.instances().is_empty(),
        "the command ran on a refused store"
    );
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o600)).unwrap();
    env.wait_ticking("rbx", Duration::from_secs(10));
    stop_follower(&env, f);
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o666)).unwrap();
    let f = env.follow("rbx", &[], &["./follow.sh"]);
    std::thread::sleep(Duration::from_secs(1));
    stop_follower(&env, f);
    env.assert_nothing_runs("after the follower got SIGTERM");
}

/// Red team (session 4): a store file replaced under `pra follow` (restored, moved over) made
/// it fail closed — right — and then never recover: it kept the handle on the old file. The
/// follower now opens the store again after a failure, and follows the new file's record.
#[test]
fn follow_recovers_when_its_store_file_is_replaced() {
    let env = Env::sqlite();
    env.write_follow_script();
    env.activate("rbx");
    let mut f = env.follow("rbx", &[], &["./follow.sh"]);
    env.wait_ticking("rbx", Duration::from_secs(10));
    // The replacement: a copy of the store with no site active, renamed over it.
    let db = env.path("state.db");
    let copy = env.path("replacement.db");
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute("VACUUM INTO ?1", [copy.to_str().unwrap()])
        .unwrap();
    {
        use pra_core::store::Store;
        let replacement =
            pra_core::store::SqliteStore::open(&copy, std::sync::Arc::new(pra_core::SystemClock))
                .unwrap();
        let t = replacement.load().unwrap().token;
        replacement
            .change(
                pra_core::SiteChange::Deactivate { expect: t },
                &pra_core::Actor::new("test", "replaced").unwrap(),
            )
            .unwrap();
    }
    // As a restore does: the old file's WAL and shared memory go with it.
    for side in ["state.db-wal", "state.db-shm"] {
        let _ = std::fs::remove_file(env.path(side));
    }
    std::fs::rename(&copy, &db).unwrap();
    // The old handle can no longer vouch for the run: it stops, and the follower stays up.
    wait_until("rbx's command stops", Duration::from_secs(10), || {
        let now = now_ns();
        env.instances()
            .iter()
            .all(|i| now.saturating_sub(i.last) > 500_000_000)
    });
    assert!(f.try_wait().unwrap().is_none(), "the follower exited");
    // Activated again in the new file: the follower reads it, and starts its command.
    let before = env.instances().len();
    env.activate("rbx");
    wait_until(
        "the follower starts again on the new store file",
        Duration::from_secs(20),
        || env.instances().len() > before,
    );
    stop_follower(&env, f);
    env.assert_nothing_runs("after the follower got SIGTERM");
}
