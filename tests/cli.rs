//! The `pra` binary, run for real: every subcommand, exit codes and messages, bad input.

#[path = "common/output.rs"]
mod output;

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use output::{code, json, ok, text};

/// A scratch deployment: a store, an app database, a backup dir and a config file.
struct Env {
    dir: tempfile::TempDir,
    store: String,
}

impl Env {
    fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let store = format!("sqlite://{}/state.db", dir.path().display());
        std::fs::write(
            dir.path().join("pra.toml"),
            "heartbeat_seconds = 1\nrevoke_grace_seconds = 1\nlost_after_seconds = 5\nstore_timeout_seconds = 1\n",
        )
        .unwrap();
        Env { dir, store }
    }
    fn with_store(store: &str) -> Env {
        let mut e = Env::new();
        e.store = store.to_string();
        e
    }
    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }
    fn cmd(&self, site: Option<&str>, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_pra"));
        c.args(args)
            .env("PRA_STORE", &self.store)
            .env("PRA_SITES", "rbx,sbg")
            .env("PRA_CONFIG", self.path("pra.toml"))
            .env("PRA_DB", self.path("app.db"))
            .env("PRA_BACKUP_DIR", self.path("backup"))
            .env_remove("RUST_LOG");
        match site {
            Some(s) => c.env("PRA_SITE", s),
            None => c.env_remove("PRA_SITE"),
        };
        c
    }
    fn pra(&self, args: &[&str]) -> Output {
        self.cmd(None, args).output().unwrap()
    }
    fn on(&self, site: &str, args: &[&str]) -> Output {
        self.cmd(Some(site), args).output().unwrap()
    }
    /// Activates rbx on the new store (token 0 to 1).
    fn activate_rbx(&self) {
        ok(self.on(
            "rbx",
            &[
                "site",
                "activate",
                "rbx",
                "--expect-token",
                "0",
                "--by",
                "t",
            ],
        ));
    }
    fn make_db(&self, rows: u32) {
        let conn = rusqlite::Connection::open(self.path("app.db")).unwrap();
        conn.execute_batch("CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY, body TEXT)")
            .unwrap();
        for _ in 0..rows {
            conn.execute("INSERT INTO events (body) VALUES ('x')", [])
                .unwrap();
        }
    }
}

#[test]
fn version_and_help_document_exit_codes() {
    let e = Env::new();
    let o = ok(e.pra(&["--version"]));
    assert!(text(&o).contains(env!("CARGO_PKG_VERSION")));
    let o = ok(e.pra(&["--help"]));
    for needle in ["Exit codes", "75", "store unavailable"] {
        assert!(text(&o).contains(needle), "{needle}");
    }
}

#[test]
fn check_exit_codes_follow_the_record() {
    let e = Env::new();
    assert_eq!(code(&e.on("rbx", &["check"])), 1, "deny by default");
    ok(e.pra(&[
        "site",
        "activate",
        "rbx",
        "--expect-token",
        "0",
        "--by",
        "ci",
    ]));
    assert_eq!(code(&e.on("rbx", &["check"])), 0);
    let o = e.on("sbg", &["check"]);
    assert_eq!(code(&o), 1);
    assert!(
        text(&o).contains("active site is rbx (token 1)"),
        "{}",
        text(&o)
    );
    let v = json(&e.on("sbg", &["check", "--json"]));
    assert_eq!(
        (
            v["verdict"].as_str(),
            v["active"].as_str(),
            v["token"].as_u64()
        ),
        (Some("standby"), Some("rbx"), Some(1))
    );
}

#[test]
fn bad_input_gets_its_documented_exit_code() {
    let e = Env::new();
    let o = e.pra(&["site", "activate", "gra", "--expect-token", "0"]);
    assert_eq!(code(&o), 3);
    assert!(text(&o).contains("unknown site \"gra\""), "{}", text(&o));
    assert_eq!(code(&e.on("gra", &["check"])), 3);
    // An empty site falls back to the hostname; one that names neither site is an error.
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap_or_default()
        .to_lowercase();
    if !host.contains("rbx") && !host.contains("sbg") {
        let o = e.pra(&["check", "--site", ""]);
        assert_eq!(code(&o), 3, "{}", text(&o));
        assert!(text(&o).contains("set PRA_SITE"), "{}", text(&o));
    }
    ok(e.pra(&["site", "activate", "sbg", "--expect-token", "0"]));
    let o = e.pra(&["site", "deactivate", "--expect-token", "0"]);
    assert_eq!(code(&o), 5);
    assert!(text(&o).contains("expected token 0"), "{}", text(&o));
    let o = e.pra(&["site", "activate", "rbx", "--expect-token", "1"]);
    assert_eq!(
        code(&o),
        13,
        "break before make is a refusal, not a lost race"
    );
    assert!(text(&o).contains("break before make"), "{}", text(&o));
    // A store that cannot be opened: fail closed with its own code.
    let dead = Env::with_store("sqlite:///nonexistent-dir/state.db");
    assert_eq!(code(&dead.on("rbx", &["check"])), 9);
    assert_eq!(
        code(&Env::with_store("mysql://x").pra(&["site", "show"])),
        3
    );
    assert_eq!(
        code(&e.pra(&["site", "activate", "rbx", "--expect-token", "-1"])),
        2
    );
    assert_eq!(code(&e.pra(&["site", "show", "--by", "x\ny"])), 2);
}

#[test]
fn configuration_file_and_its_errors() {
    let e = Env::new();
    // A missing configuration file that was named explicitly.
    let o = e
        .cmd(None, &["site", "show"])
        .env("PRA_CONFIG", e.path("missing.toml"))
        .output()
        .unwrap();
    assert_eq!(code(&o), 4, "{}", text(&o));
    assert!(text(&o).contains("missing.toml"));
    // A typo in a key is an error, not a silent default.
    std::fs::write(e.path("typo.toml"), "stor = \"sqlite:///x\"\n").unwrap();
    let o = e
        .cmd(None, &["site", "show"])
        .env("PRA_CONFIG", e.path("typo.toml"))
        .output()
        .unwrap();
    assert_eq!(code(&o), 3);
    assert!(text(&o).contains("stor"), "{}", text(&o));
    // Keys from the file are used when no flag or variable overrides them.
    let lock = e.path("pra-status.lock");
    std::fs::write(&lock, "ACTIVE_SITE=SBG\n").unwrap();
    std::fs::write(
        e.path("file.toml"),
        format!(
            "store = \"file://{}\"\nsites = \"rbx,sbg\"\nsite = \"sbg\"\n",
            lock.display()
        ),
    )
    .unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_pra"))
        .arg("check")
        .env("PRA_CONFIG", e.path("file.toml"))
        .env_remove("PRA_STORE")
        .env_remove("PRA_SITE")
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "{}", text(&o));
}

#[test]
fn corrupt_lock_file_is_reported_with_file_and_line() {
    let e = Env::new();
    let lock = e.path("pra-status.lock");
    std::fs::write(&lock, "# x\nACTIVE_SITE SBG\n").unwrap();
    let f = Env::with_store(&format!("file://{}", lock.display()));
    let o = f.on("sbg", &["check"]);
    assert_eq!(code(&o), 10);
    assert!(text(&o).contains("pra-status.lock, line 2"), "{}", text(&o));
    std::fs::write(&lock, "ACTIVE_SITE=SBG\n").unwrap();
    assert_eq!(code(&f.on("sbg", &["check"])), 0);
    assert_eq!(code(&f.on("rbx", &["check"])), 1);
    // A lock file that is a directory.
    let d = Env::with_store(&format!("file://{}/", e.dir.path().display()));
    assert_eq!(
        code(&d.on("rbx", &["check"])),
        3,
        "a URL ending in / names no file"
    );
    std::fs::create_dir(e.path("dir.lock")).unwrap();
    let d = Env::with_store(&format!("file://{}", e.path("dir.lock").display()));
    assert_eq!(code(&d.on("rbx", &["check"])), 9);
}

#[test]
fn journal_lists_and_verifies_and_detects_tampering() {
    let e = Env::new();
    ok(e.pra(&[
        "site",
        "activate",
        "rbx",
        "--expect-token",
        "0",
        "--by",
        "alice",
        "--reason",
        "go live",
    ]));
    let o = ok(e.pra(&["journal"]));
    assert!(
        text(&o).contains("alice") && text(&o).contains("NONE -> rbx"),
        "{}",
        text(&o)
    );
    assert!(text(&ok(e.pra(&["journal", "--verify"]))).contains("1 entries"));
    let conn = rusqlite::Connection::open(e.path("state.db")).unwrap();
    conn.execute(
        "UPDATE journal SET body = replace(body, 'alice', 'mallory')",
        [],
    )
    .unwrap();
    let o = e.pra(&["journal", "--verify"]);
    assert_eq!(code(&o), 10, "{}", text(&o));
}

/// `pra journal --checkpoint --archive FILE` moves the journal so far to FILE; `--verify`
/// starts at the checkpoint, `--verify --full --archive FILE` checks FILE and the store as one
/// chain, and finds the archive missing or edited.
#[test]
fn journal_checkpoint_archives_and_full_verify_checks_the_archive() {
    let e = Env::new();
    ok(e.pra(&["site", "activate", "rbx", "--expect-token", "0"]));
    ok(e.pra(&["site", "deactivate", "--expect-token", "1"]));
    let archive = e.path("journal-1.jsonl");
    let a = archive.to_str().unwrap();
    let o = ok(e.pra(&["journal", "--checkpoint", "--archive", a]));
    assert!(text(&o).contains("2 entries archived"), "{}", text(&o));
    let o = ok(e.pra(&["journal"]));
    assert!(text(&o).contains("checkpoint"), "{}", text(&o));
    ok(e.pra(&["site", "activate", "sbg", "--expect-token", "2"]));
    assert!(text(&ok(e.pra(&["journal", "--verify"]))).contains("2 entries"));
    let o = ok(e.pra(&["journal", "--verify", "--full", "--archive", a]));
    assert!(text(&o).contains("4 entries"), "{}", text(&o));
    // Without the archive, the full history has a gap.
    let o = e.pra(&["journal", "--verify", "--full"]);
    assert_eq!(code(&o), 10, "{}", text(&o));
    let edited = std::fs::read_to_string(&archive)
        .unwrap()
        .replace("\"token\":1", "\"token\":7");
    std::fs::write(&archive, edited).unwrap();
    let o = e.pra(&["journal", "--verify", "--full", "--archive", a]);
    assert_eq!(code(&o), 10, "{}", text(&o));
}

#[test]
fn run_only_on_the_active_site_with_its_token() {
    let e = Env::new();
    ok(e.pra(&["site", "activate", "rbx", "--expect-token", "0"]));
    let marker = e.path("ran");
    let script = format!(
        "echo \"$PRA_SITE $PRA_TOKEN $PRA_JOB\" > {}; exit 3",
        marker.display()
    );
    let o = e.on(
        "rbx",
        &["run", "--job", "invoices", "--", "sh", "-c", &script],
    );
    assert_eq!(code(&o), 3, "the command's own status: {}", text(&o));
    assert_eq!(
        std::fs::read_to_string(&marker).unwrap().trim(),
        "rbx 1 invoices"
    );
    std::fs::remove_file(&marker).unwrap();
    // Standby: skipped, exit 0 and no output (cron mails nothing), or 75 with --strict.
    let o = e.on(
        "sbg",
        &["run", "--job", "invoices", "--", "sh", "-c", &script],
    );
    assert_eq!(code(&o), 0);
    assert!(o.stdout.is_empty() && o.stderr.is_empty(), "{}", text(&o));
    assert!(!marker.exists());
    assert_eq!(
        code(&e.on(
            "sbg",
            &["run", "--strict", "--job", "invoices", "--", "true"]
        )),
        75
    );
    let o = e.on(
        "sbg",
        &["run", "--verbose", "--job", "invoices", "--", "true"],
    );
    assert!(
        text(&o).contains("skipped: sbg is standby; active site is rbx (token 1)"),
        "{}",
        text(&o)
    );
    // Store unreachable: not run, non-zero.
    let dead = Env::with_store("sqlite:///nonexistent-dir/state.db");
    let o = dead.on(
        "rbx",
        &["run", "--job", "invoices", "--", "sh", "-c", &script],
    );
    assert_eq!(code(&o), 9);
    assert!(!marker.exists());
    // Killed by a signal: 128 + N. Bad job name: 3. Missing command: 2.
    assert_eq!(
        code(&e.on(
            "rbx",
            &["run", "--job", "k", "--", "sh", "-c", "kill -9 $$"]
        )),
        137
    );
    assert_eq!(
        code(&e.on("rbx", &["run", "--job", "../x", "--", "true"])),
        3
    );
    assert_eq!(code(&e.on("rbx", &["run", "--job", "x"])), 2);
    // Metrics count what happened.
    let m = String::from_utf8(ok(e.on("rbx", &["metrics"])).stdout).unwrap();
    for line in [
        "pra_active_site{site=\"rbx\"} 1",
        "pra_fencing_token 1",
        "pra_site_active{site=\"rbx\"} 1",
        "pra_runs_started_total{pra_job=\"invoices\",site=\"rbx\"} 1",
        "pra_runs_skipped_total{pra_job=\"invoices\",site=\"sbg\"} 3",
        "pra_plan_state{state=\"normal\"} 1",
    ] {
        assert!(m.lines().any(|l| l == line), "missing {line:?} in\n{m}");
    }
}

#[test]
fn run_forwards_signals_to_the_command() {
    let e = Env::new();
    ok(e.pra(&["site", "activate", "rbx", "--expect-token", "0"]));
    let ready = e.path("ready");
    // The command traps SIGTERM and exits 42: seeing 42 proves the wrapper forwarded it.
    let script = format!(
        "trap 'exit 42' TERM; touch {}; while :; do sleep 0.05; done",
        ready.display()
    );
    let child = e
        .cmd(
            Some("rbx"),
            &["run", "--job", "sig", "--", "sh", "-c", &script],
        )
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ready.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: kill has no memory effects; the pid is our child's.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(42),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let conn = rusqlite::Connection::open(e.path("state.db")).unwrap();
    let (code, outcome): (i32, String) = conn
        .query_row(
            "SELECT exit_code, outcome FROM runs WHERE job = 'sig'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((code, outcome.as_str()), (42, "exited 42"));
}

#[test]
fn run_no_overlap_refuses_a_second_instance() {
    let e = Env::new();
    ok(e.pra(&["site", "activate", "rbx", "--expect-token", "0"]));
    let mut first = e
        .cmd(
            Some("rbx"),
            &["run", "--no-overlap", "--job", "slow", "--", "sleep", "2"],
        )
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        code(&e.on(
            "rbx",
            &["run", "--no-overlap", "--job", "slow", "--", "true"]
        )),
        76
    );
    assert_eq!(
        code(&e.on(
            "rbx",
            &["run", "--no-overlap", "--job", "other", "--", "true"]
        )),
        0
    );
    assert!(first.wait().unwrap().success());
    assert_eq!(
        code(&e.on(
            "rbx",
            &["run", "--no-overlap", "--job", "slow", "--", "true"]
        )),
        0
    );
}

#[test]
fn run_is_stopped_when_its_site_loses_the_role() {
    let e = Env::new();
    ok(e.pra(&["site", "activate", "rbx", "--expect-token", "0"]));
    let start = Instant::now();
    let child = e
        .cmd(Some("rbx"), &["run", "--job", "long", "--", "sleep", "30"])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    ok(e.pra(&[
        "site",
        "deactivate",
        "--expect-token",
        "1",
        "--reason",
        "failover",
    ]));
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(128 + 15),
        "SIGTERM at the next heartbeat"
    );
    assert!(start.elapsed() < Duration::from_secs(10));
    let conn = rusqlite::Connection::open(e.path("state.db")).unwrap();
    let outcome: String = conn
        .query_row("SELECT outcome FROM runs WHERE job = 'long'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(outcome, "revoked");
    // --on-revoke wait: the command finishes, the revocation is still recorded.
    ok(e.pra(&["site", "activate", "rbx", "--expect-token", "2"]));
    let child = e
        .cmd(
            Some("rbx"),
            &[
                "run",
                "--on-revoke",
                "wait",
                "--job",
                "patient",
                "--",
                "sh",
                "-c",
                "sleep 2; exit 0",
            ],
        )
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    ok(e.pra(&["site", "deactivate", "--expect-token", "3"]));
    assert_eq!(child.wait_with_output().unwrap().status.code(), Some(0));
    let outcome: String = conn
        .query_row("SELECT outcome FROM runs WHERE job = 'patient'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(outcome, "revoked");
}

#[test]
fn plan_commands_walk_a_failover() {
    let e = Env::new();
    ok(e.pra(&["site", "activate", "rbx", "--expect-token", "0"]));
    let o = ok(e.pra(&["plan", "next"]));
    assert!(
        text(&o).contains("pra plan apply incident-detected"),
        "{}",
        text(&o)
    );
    ok(e.pra(&["plan", "start-failover", "--by", "oncall"]));
    // A gate without an operator; an event the state does not accept; an unknown event.
    assert_eq!(code(&e.pra(&["plan", "apply", "failover-decided"])), 3);
    let o = e.pra(&["plan", "apply", "commit-failback"]);
    assert_eq!(code(&o), 7);
    assert!(
        text(&o).contains("incident_detected") && text(&o).contains("failover_decided"),
        "{}",
        text(&o)
    );
    assert_eq!(code(&e.pra(&["plan", "apply", "reboot"])), 3);
    // Manual flips are refused while the plan runs.
    assert_eq!(
        code(&e.pra(&["site", "deactivate", "--expect-token", "1"])),
        13
    );
    ok(e.pra(&["plan", "apply", "failover-decided", "--operator", "alice"]));
    ok(e.pra(&["plan", "apply", "execute-failover"]));
    let o = ok(e.pra(&["plan", "apply", "execute-failover"]));
    assert!(text(&o).contains("already applied"), "{}", text(&o));
    ok(e.pra(&["plan", "apply", "drained", "--no-wait"]));
    assert_eq!(code(&e.on("sbg", &["check"])), 0);
    let v = json(&ok(e.pra(&["plan", "status", "--json"])));
    assert_eq!(v["plan"]["state"], "failed_over");
    assert_eq!(v["record"]["site"], "sbg");
    let v = json(&ok(e.pra(&["plan", "report", "--json"])));
    assert_eq!(v["double_execution_seconds"], 0.0);
    assert_eq!(v["fenced"].as_array().unwrap().len(), 1);
    ok(e.pra(&["plan", "apply", "secondary-verified", "--operator", "bob"]));
    ok(e.pra(&["plan", "apply", "traffic-on-secondary"]));
    ok(e.pra(&["plan", "start-failback"]));
    ok(e.pra(&["plan", "abort", "--reason", "rbx not ready"]));
    let v = json(&ok(e.pra(&["plan", "status", "--json"])));
    assert_eq!(v["plan"]["state"], "running_on_secondary");
    assert!(text(&ok(e.pra(&["plan", "report"]))).contains("double-execution window"));
}

#[test]
fn backup_list_prune_restore_and_status() {
    let e = Env::new();
    // No database yet: status reports it (and fails), backup says so.
    let o = e.pra(&["status", "--json"]);
    assert_eq!(code(&o), 78, "{}", text(&o));
    let v = json(&o);
    assert!(
        v["count"].is_null()
            && v["last_backup_file"].is_null()
            && v["backup_age_seconds"].is_null()
    );
    assert_eq!(code(&e.pra(&["backup"])), 4);
    e.make_db(5);
    let v = json(&ok(e.pra(&["backup", "--json"])));
    let name = v["name"].as_str().unwrap().to_string();
    assert_eq!(v["health"]["state"], "verified");
    // An idle database: the command copies the file itself (Method::Auto).
    assert_eq!(v["manifest"]["method"], "file_copy", "{v}");
    ok(e.pra(&["backup"]));
    let v = json(&ok(e.pra(&["backups", "--json"])));
    assert_eq!(v.as_array().unwrap().len(), 2);
    let v = json(&ok(e.pra(&["status", "--json"])));
    assert_eq!(v["count"], 5);
    assert!(
        v["last_backup_file"]
            .as_str()
            .unwrap()
            .starts_with("backup-")
    );
    // Prune: an empty policy, a negative count and a bad duration are refused.
    assert_eq!(code(&e.pra(&["prune"])), 3);
    assert_eq!(code(&e.pra(&["prune", "--keep-last", "-1"])), 2);
    assert_eq!(code(&e.pra(&["prune", "--keep-within", "3 fortnights"])), 2);
    assert_eq!(code(&e.pra(&["prune", "--keep-last", "99999999999"])), 2);
    let o = ok(e.pra(&["prune", "--keep-last", "1", "--dry-run"]));
    assert!(text(&o).contains("would remove"), "{}", text(&o));
    assert_eq!(
        json(&ok(e.pra(&["backups", "--json"])))
            .as_array()
            .unwrap()
            .len(),
        2
    );
    ok(e.pra(&["prune", "--keep-last", "1"]));
    assert_eq!(
        json(&ok(e.pra(&["backups", "--json"])))
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // Restore: preview, refused names, then for real.
    e.make_db(3);
    let o = ok(e.pra(&["restore", "--dry-run"]));
    assert!(
        text(&o).contains("events") && text(&o).contains('8') && text(&o).contains('5'),
        "{}",
        text(&o)
    );
    assert_eq!(code(&e.pra(&["restore", "--name", "../../etc/passwd"])), 3);
    assert_eq!(code(&e.pra(&["restore", "--name", &name])), 4, "pruned");
    assert_eq!(
        code(&e.pra(&["restore", "--before", "2000-01-01 00:00"])),
        4
    );
    assert_eq!(code(&e.pra(&["restore", "--before", "yesterday"])), 2);
    assert_eq!(code(&e.pra(&["restore", "--latest", "--name", "x"])), 2);
    let o = ok(e.pra(&["restore", "--latest"]));
    assert!(text(&o).contains("previous database kept"), "{}", text(&o));
    assert_eq!(json(&ok(e.pra(&["status", "--json"])))["count"], 5);
    // Refused while the app holds the database.
    let app = rusqlite::Connection::open(e.path("app.db")).unwrap();
    app.execute_batch("PRAGMA journal_mode = WAL;").unwrap();
    let _: i64 = app
        .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
        .unwrap();
    let o = e.pra(&["restore", "--latest"]);
    assert_eq!(code(&o), 8, "{}", text(&o));
    assert!(text(&o).contains("Stop the application"));
}

/// Runs `cmd`; fails the test if it has not finished within `limit` (it is killed then).
fn within(mut cmd: Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} still running after {limit:?}: it hangs");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().unwrap()
}

fn mkfifo(path: &std::path::Path) {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
}

#[test]
fn status_exits_non_zero_when_the_database_the_backups_or_the_store_are_gone() {
    let e = Env::new();
    // Nothing yet: no database, no backup. The document is printed all the same.
    let o = e.pra(&["status", "--json"]);
    assert_eq!(code(&o), 78, "{}", text(&o));
    let v = json(&o);
    assert!(v["count"].is_null() && v["last_backup_file"].is_null());
    e.make_db(3);
    let o = e.pra(&["status"]);
    assert_eq!(code(&o), 78, "no usable backup: {}", text(&o));
    assert!(text(&o).contains("no usable backup"), "{}", text(&o));
    ok(e.pra(&["backup"]));
    let v = json(&ok(e.pra(&["status", "--json"])));
    assert_eq!(v["count"], 3);
    // The database lost.
    std::fs::rename(e.path("app.db"), e.path("lost.db")).unwrap();
    let o = e.pra(&["status", "--json"]);
    assert_eq!(code(&o), 78, "{}", text(&o));
    assert_eq!(json(&o)["database_ok"], false);
    std::fs::rename(e.path("lost.db"), e.path("app.db")).unwrap();
    ok(e.pra(&["status"]));
    // The store unreadable.
    let o = e
        .cmd(None, &["status", "--json"])
        .env("PRA_STORE", "sqlite:///nonexistent-dir/state.db")
        .output()
        .unwrap();
    assert_eq!(code(&o), 78, "{}", text(&o));
    let v = json(&o);
    assert_eq!(v["count"], 3);
    assert!(
        v["problems"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p.as_str().unwrap().contains("store")),
        "{v}"
    );
    let o = ok(e.pra(&["--help"]));
    assert!(text(&o).contains("78"), "documented in --help");
}

#[test]
fn special_files_with_backup_names_are_ignored_and_never_opened() {
    let e = Env::new();
    e.make_db(3);
    ok(e.pra(&["backup"]));
    let real = json(&ok(e.pra(&["backups", "--json"])))[0]["name"]
        .as_str()
        .unwrap()
        .to_string();
    // A FIFO and a directory with backup names, newer than the real backup, and an older copy
    // of it whose manifest is a FIFO: opening any of them for reading would block.
    mkfifo(&e.path("backup/backup-2099-01-01-00-00-00.db"));
    std::fs::create_dir(e.path("backup/backup-2098-01-01-00-00-00.db")).unwrap();
    std::fs::copy(
        e.path("backup").join(&real),
        e.path("backup/backup-2000-01-01-00-00-00.db"),
    )
    .unwrap();
    mkfifo(&e.path("backup/backup-2000-01-01-00-00-00.db.json"));
    let limit = Duration::from_secs(20);
    let o = within(e.cmd(None, &["status", "--json"]), limit);
    assert_eq!(code(&o), 0, "{}", text(&o));
    assert_eq!(json(&o)["last_backup_file"], real.as_str());
    assert!(text(&o).contains("not a regular file"), "{}", text(&o));
    let o = within(e.cmd(None, &["backups", "--json"]), limit);
    let names: Vec<String> = json(&ok(o))
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        names,
        vec![real.clone(), "backup-2000-01-01-00-00-00.db".into()]
    );
    ok(within(e.cmd(None, &["prune", "--keep-last", "1"]), limit));
    ok(within(e.cmd(None, &["restore", "--dry-run"]), limit));
    let o = ok(within(e.cmd(None, &["restore", "--latest"]), limit));
    assert!(text(&o).contains(&real), "{}", text(&o));
    assert!(e.path("backup/backup-2099-01-01-00-00-00.db").exists());
    assert!(e.path("backup").join(&real).exists());
}

#[test]
fn a_store_url_naming_an_application_database_is_refused_and_leaves_it_alone() {
    let e = Env::new();
    e.make_db(2);
    let app = e.path("app.db");
    let o = e
        .cmd(None, &["site", "activate", "rbx", "--expect-token", "0"])
        .env("PRA_STORE", format!("sqlite://{}", app.display()))
        .output()
        .unwrap();
    assert_eq!(code(&o), 3, "{}", text(&o));
    assert!(text(&o).contains("not a pra store"), "{}", text(&o));
    let conn = rusqlite::Connection::open(&app).unwrap();
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(tables, vec!["events"]);
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "delete", "its journal mode is the app's");
}

/// A CLI that behaves at 3 a.m. (issue 20): what it prints and how it ends when stdout is full
/// or closed, when stderr is not a terminal, with --json, without $USER.
#[test]
fn a_full_stdout_is_an_error_and_a_closed_one_a_quiet_exit() {
    let e = Env::new();
    e.activate_rbx();
    // /dev/full: an I/O error with its message and exit code, never a panic (101).
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let o = e
        .cmd(None, &["site", "show"])
        .stdout(full)
        .output()
        .unwrap();
    assert_eq!(code(&o), 12, "{}", text(&o));
    assert!(
        text(&o).contains("write standard output: No space left on device"),
        "{}",
        text(&o)
    );
    assert!(!text(&o).contains("panicked"));
    // A reader that goes away: pra ends as coreutils do, by SIGPIPE, silently.
    for i in 0..200 {
        let (t, by) = (
            2 * i + 1,
            "someone with a long name for a long journal line",
        );
        ok(e.pra(&[
            "site",
            "deactivate",
            "--expect-token",
            &t.to_string(),
            "--by",
            by,
        ]));
        ok(e.pra(&[
            "site",
            "activate",
            "rbx",
            "--expect-token",
            &(t + 1).to_string(),
            "--by",
            by,
        ]));
    }
    let mut child = e
        .cmd(None, &["journal", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // the reader closes at once
    let o = child.wait_with_output().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        o.status.signal(),
        Some(libc::SIGPIPE),
        "{:?} {}",
        o.status,
        text(&o)
    );
    assert!(o.stderr.is_empty(), "{}", text(&o));
}

#[test]
fn errors_and_logs_are_plain_text_off_a_terminal_and_json_with_json() {
    let e = Env::with_store("redis://nowhere");
    let o = e
        .cmd(None, &["site", "show"])
        .env("RUST_LOG", "debug")
        .output()
        .unwrap();
    assert_eq!(code(&o), 3);
    assert!(
        !text(&o).contains('\u{1b}'),
        "ANSI escapes off a terminal: {}",
        text(&o)
    );
    let o = e.pra(&["--json", "site", "show"]);
    assert_eq!(code(&o), 3);
    let err: serde_json::Value = serde_json::from_slice(&o.stderr).unwrap();
    assert_eq!(err["kind"], "invalid_argument");
    assert_eq!(err["code"], 3);
    assert!(err["message"].as_str().unwrap().contains("redis://nowhere"));
    // Text output never shows Rust's Debug forms.
    let e = Env::new();
    e.activate_rbx();
    e.make_db(3);
    ok(e.on("rbx", &["backup"]));
    ok(e.on("rbx", &["run", "--job", "j", "--every", "1h", "--", "true"]));
    for args in [
        &["site", "show"][..],
        &["config"],
        &["check"],
        &["status"],
        &["jobs"],
        &["backups"],
        &["journal"],
        &["plan", "status"],
        &["plan", "next"],
    ] {
        let o = e.on("rbx", args);
        for debug in [
            "Some(",
            "None",
            "SiteId(",
            "FencingToken(",
            "Duration {",
            "Ok",
            "Warn",
            "Critical",
            "Every(",
        ] {
            assert!(
                !text(&o).contains(debug),
                "{args:?} shows {debug}: {}",
                text(&o)
            );
        }
    }
}

#[test]
fn site_show_names_the_store_and_changes_are_signed_without_user() {
    let e = Env::new();
    let o = ok(e.pra(&["site", "show"]));
    assert!(
        text(&o).contains(&format!("store: {}", e.store)),
        "{}",
        text(&o)
    );
    assert_eq!(
        json(&ok(e.pra(&["--json", "site", "show"])))["store"],
        e.store.as_str()
    );
    // cron and systemd give no $USER: the journal still names someone.
    let o = e
        .cmd(None, &["site", "activate", "rbx", "--expect-token", "0"])
        .env_remove("USER")
        .env_remove("LOGNAME")
        .env_remove("SUDO_USER")
        .output()
        .unwrap();
    ok(o);
    // SAFETY: getuid cannot fail.
    let uid = unsafe { libc::getuid() };
    let who = json(&ok(e.pra(&["--json", "site", "show"])))["changed_by"].clone();
    let who = who.as_str().unwrap();
    assert!(
        who == "root" || who == format!("uid {uid}") || !who.is_empty() && who != "unknown",
        "{who}"
    );
    let o = e
        .cmd(None, &["site", "deactivate", "--expect-token", "1"])
        .env_remove("USER")
        .env("SUDO_USER", "alice")
        .output()
        .unwrap();
    ok(o);
    assert_eq!(
        json(&ok(e.pra(&["--json", "site", "show"])))["changed_by"],
        "alice"
    );
}

#[test]
fn every_configuration_key_is_overridden_by_its_variable() {
    let e = Env::new();
    let keys: Vec<String> = json(&ok(e.pra(&["--json", "config"])))
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert!(keys.len() >= 19, "{keys:?}");
    for key in &keys {
        // Tables are file only (`[plan_checks]`): no variable holds a table.
        if key == "plan_checks" {
            continue;
        }
        let var = format!("PRA_{}", key.to_uppercase());
        let value = if ["_seconds", "_days", "_intervals"]
            .iter()
            .any(|s| key.ends_with(s))
        {
            "4242"
        } else {
            "/from/env"
        };
        let value = match key.as_str() {
            "sites" => "par,lyo",
            "store" => "sqlite:///from/env.db",
            "table" => "from_env",
            // Within the timing inequality the configuration checks (grace + heartbeat +
            // store timeout < lost_after; the file sets 1, 1, 1 and 5).
            "heartbeat_seconds" | "revoke_grace_seconds" | "store_timeout_seconds" => "2",
            "lost_after_seconds" => "9",
            _ => value,
        };
        let mut c = e.cmd(None, &["--json", "config"]);
        if key == "site" {
            c.env_remove("PRA_SITE");
        }
        let o = c.env(&var, value).output().unwrap();
        let shown = json(&ok(o));
        let got = match &shown[key] {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        assert_eq!(got, value, "{var} did not set {key}");
    }
}

#[test]
fn completions_and_the_man_page_are_generated_from_the_parser() {
    let e = Env::new();
    let bash = ok(e.pra(&["completions", "bash"]));
    let check = std::process::Command::new("bash")
        .arg("-n")
        .stdin(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(&bash.stdout)?;
            c.wait()
        })
        .unwrap();
    assert!(check.success());
    assert!(text(&bash).contains("fence") && text(&bash).contains("--expect-token"));
    for shell in ["zsh", "fish"] {
        assert!(!ok(e.pra(&["completions", shell])).stdout.is_empty());
    }
    let man = ok(e.pra(&["man"]));
    assert!(
        text(&man).starts_with(".ie") || text(&man).contains(".TH pra 1"),
        "{}",
        &text(&man)[..200]
    );
}

#[test]
fn run_passes_arguments_that_are_not_utf8_unchanged() {
    use std::os::unix::ffi::OsStrExt;
    let e = Env::new();
    e.activate_rbx();
    let latin1 = std::ffi::OsStr::from_bytes(b"caf\xe9 \xff");
    let o = e
        .cmd(
            Some("rbx"),
            &["run", "--job", "bytes", "--", "printf", "%s"],
        )
        .arg(latin1)
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "{}", text(&o));
    assert_eq!(o.stdout, b"caf\xe9 \xff");
}

/// Metrics by the conventions of Prometheus exporters (issue 20): `pra_job`, not `job`; times as
/// timestamps; `pra_store_up 0` written (atomically, to --output) when the store is down, with
/// the store's exit code.
#[test]
fn metrics_follow_the_exporter_conventions_and_say_when_the_store_is_down() {
    let e = Env::new();
    e.activate_rbx();
    ok(e.on("rbx", &["run", "--job", "invoices", "--", "true"]));
    let file = e.path("pra.prom");
    let f = file.to_str().unwrap();
    ok(e.on("rbx", &["metrics", "--output", f]));
    let m = std::fs::read_to_string(&file).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o644
    );
    for line in [
        "pra_store_up 1",
        "pra_runs_started_total{pra_job=\"invoices\",site=\"rbx\"} 1",
    ] {
        assert!(m.lines().any(|l| l == line), "missing {line:?} in\n{m}");
    }
    assert!(
        !m.contains("{job="),
        "a job label becomes exported_job: {m}"
    );
    let changed = m
        .lines()
        .find_map(|l| l.strip_prefix("pra_active_site_changed_timestamp_seconds "))
        .unwrap();
    let now = chrono::Utc::now().timestamp();
    assert!((now - changed.parse::<i64>().unwrap()).abs() < 60, "{m}");
    // Every sample has its HELP and TYPE.
    for l in m.lines().filter(|l| !l.starts_with('#')) {
        let name = l.split(['{', ' ']).next().unwrap();
        assert!(m.contains(&format!("# TYPE {name} ")), "{name} has no TYPE");
    }
    // The store is gone: the file still says so, and pra exits 9.
    let o = Env::with_store("sqlite:///nonexistent-dir/state.db")
        .on("rbx", &["metrics", "--output", f]);
    assert_eq!(code(&o), 9, "{}", text(&o));
    let m = std::fs::read_to_string(&file).unwrap();
    assert!(m.lines().any(|l| l == "pra_store_up 0"), "{m}");
    assert!(
        !m.contains("pra_active_site{"),
        "nothing the store would have said: {m}"
    );
    let tmp: Vec<_> = std::fs::read_dir(e.dir.path())
        .unwrap()
        .filter_map(|d| d.ok())
        .filter(|d| d.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(tmp.is_empty(), "no temporary file left");
}

/// `pra jobs --json` as (job, problems), with `PRA_MISSED_INTERVALS` if given; its exit code
/// must be 78 when a job has a problem, 0 otherwise.
fn job_problems(e: &Env, missed: Option<&str>) -> Vec<(String, Vec<String>)> {
    let mut c = e.cmd(None, &["jobs", "--json"]);
    if let Some(n) = missed {
        c.env("PRA_MISSED_INTERVALS", n);
    }
    let o = c.output().unwrap();
    let jobs: Vec<(String, Vec<String>)> = json(&o)
        .as_array()
        .unwrap_or_else(|| panic!("{}", text(&o)))
        .iter()
        .map(|j| {
            let problems = serde_json::from_value(j["problems"].clone()).unwrap();
            (j["job"].as_str().unwrap().to_string(), problems)
        })
        .collect();
    let any = jobs.iter().any(|(_, p)| !p.is_empty());
    assert_eq!(code(&o), if any { 78 } else { 0 }, "{}", text(&o));
    jobs
}

impl Env {
    /// `pra run --job JOB --on-revoke wait -- sleep SECS` started on rbx, once it is registered:
    /// a run that goes on after its site loses the role.
    fn waiting_run(&self, job: &str, secs: &str) -> std::process::Child {
        let args = [
            "run",
            "--job",
            job,
            "--on-revoke",
            "wait",
            "--",
            "sleep",
            secs,
        ];
        let child = self
            .cmd(Some("rbx"), &args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let unfinished = format!("pra_runs_unfinished{{pra_job=\"{job}\",site=\"rbx\"}}");
        while metric_value(self, &unfinished).as_deref() != Some("1") {
            assert!(Instant::now() < deadline, "the run never registered");
            std::thread::sleep(Duration::from_millis(50));
        }
        child
    }

    /// `pra run --job JOB --every EVERY -- true` on `site` (it must succeed: a skip does).
    fn run_every(&self, site: &str, job: &str, every: &str) {
        ok(self.on(site, &["run", "--job", job, "--every", every, "--", "true"]));
    }
}

/// The value of the metric line `name{labels}` in `pra metrics`.
fn metric_value(e: &Env, line: &str) -> Option<String> {
    let m = text(&e.on("rbx", &["metrics"]));
    m.lines()
        .find_map(|l| l.strip_prefix(line)?.strip_prefix(' ').map(str::to_string))
}

fn owned(job: &str, problems: &[&str]) -> (String, Vec<String>) {
    (
        job.to_string(),
        problems.iter().map(|p| p.to_string()).collect(),
    )
}

#[test]
fn jobs_tell_standby_skips_from_missed_runs() {
    let e = Env::new();
    e.activate_rbx();
    // Active rbx runs it, standby sbg skips it: all is well, nothing pages.
    e.run_every("rbx", "nightly", "1h");
    e.run_every("sbg", "nightly", "1h");
    assert_eq!(job_problems(&e, None), [owned("nightly", &[])]);
    ok(e.pra(&["jobs"]));
    assert_eq!(
        metric_value(&e, "pra_job_late{pra_job=\"nightly\"}").as_deref(),
        Some("0")
    );
    assert_eq!(
        metric_value(&e, "pra_job_interval_seconds{pra_job=\"nightly\"}").as_deref(),
        Some("3600")
    );
    let skip = "pra_job_last_skip_timestamp_seconds{pra_job=\"nightly\",site=\"sbg\"}";
    assert!(metric_value(&e, skip).is_some());
    // A schedule that cannot be read is refused before anything runs.
    for bad in [&["--every", "5 fortnights"][..], &["--cron", "* * *"]] {
        let mut args = vec!["run", "--job", "nightly"];
        args.extend_from_slice(bad);
        args.extend_from_slice(&["--", "touch", "ran"]);
        let o = e.on("rbx", &args);
        assert_eq!(code(&o), 3, "{}", text(&o));
        assert!(text(&o).contains("invalid schedule"), "{}", text(&o));
    }
    assert!(!e.path("ran").exists());
}

#[test]
fn a_job_not_run_on_the_active_site_for_its_intervals_is_late_and_a_failure_shows() {
    let e = Env::new();
    e.activate_rbx();
    e.run_every("rbx", "tick", "2s");
    let failed = e.on("rbx", &["run", "--job", "broken", "--", "false"]);
    assert_eq!(code(&failed), 1, "{}", text(&failed));
    // One missed run tolerated: late once more than one interval passed without a success.
    // (Real time: the CLI's clock is the system's. After the second run below, the check has
    // a whole interval of margin.)
    std::thread::sleep(Duration::from_millis(2200));
    assert_eq!(
        job_problems(&e, Some("1")),
        // No schedule: never late; its last run failed.
        [
            owned("broken", &["last_run_failed"]),
            owned("tick", &["late"])
        ]
    );
    let mut c = e.cmd(Some("rbx"), &["status"]);
    c.env("PRA_MISSED_INTERVALS", "1");
    let status = text(&c.output().unwrap());
    assert!(status.contains("job tick: late"), "{status}");
    assert!(status.contains("job broken: last_run_failed"), "{status}");
    // It runs again: not late any more.
    e.run_every("rbx", "tick", "2s");
    assert_eq!(job_problems(&e, Some("1"))[1], owned("tick", &[]));
}

#[test]
fn no_site_active_makes_skips_everywhere_a_problem() {
    let e = Env::new();
    e.activate_rbx();
    e.run_every("rbx", "nightly", "1h");
    ok(e.pra(&["site", "deactivate", "--expect-token", "1", "--by", "t"]));
    assert_eq!(
        job_problems(&e, None),
        [owned("nightly", &[])],
        "no skip yet"
    );
    e.run_every("rbx", "nightly", "1h");
    e.run_every("sbg", "nightly", "1h");
    assert_eq!(
        job_problems(&e, None),
        [owned("nightly", &["skipped_everywhere"])]
    );
    assert_eq!(
        metric_value(&e, "pra_job_skipped_everywhere{pra_job=\"nightly\"}").as_deref(),
        Some("1")
    );
}

/// The one way two sites run a job at once: an operator forces sbg active past a run of rbx
/// that waits out its revocation (`--on-revoke wait`). `pra jobs` and the metric say so.
#[test]
fn a_job_running_on_both_sites_is_reported() {
    let e = Env::new();
    e.activate_rbx();
    let mut long = e.waiting_run("sync", "30");
    ok(e.pra(&["site", "deactivate", "--expect-token", "1", "--by", "t"]));
    ok(e.pra(&[
        "site",
        "activate",
        "sbg",
        "--expect-token",
        "2",
        "--force",
        "--by",
        "t",
        "--reason",
        "test: forced past a live run",
    ]));
    ok(e.on("sbg", &["run", "--job", "sync", "--", "true"]));
    let problems = job_problems(&e, None);
    let both = metric_value(&e, "pra_job_both_sites{pra_job=\"sync\"}");
    let _ = long.kill();
    let _ = long.wait();
    assert_eq!(problems, [owned("sync", &["both_sites"])]);
    assert_eq!(both.as_deref(), Some("1"));
}

/// The history window defaults by store: 7 days on etcd (its space quota), 30 elsewhere;
/// `history_days` sets it for any store.
#[test]
fn the_history_window_defaults_by_store() {
    let days = |store: &str, set: Option<&str>| {
        let e = Env::with_store(store);
        let mut c = e.cmd(None, &["config", "--json"]);
        if let Some(d) = set {
            c.env("PRA_HISTORY_DAYS", d);
        }
        json(&ok(c.output().unwrap()))["history_days"].as_u64()
    };
    assert_eq!(days("etcd://127.0.0.1:1/pra", None), Some(7));
    assert_eq!(days("etcds://127.0.0.1:1/pra", None), Some(7));
    assert_eq!(days("sqlite:///tmp/x.db", None), Some(30));
    assert_eq!(days("etcd://127.0.0.1:1/pra", Some("20")), Some(20));
}

/// `pra ARGS` on a pseudo-terminal (util-linux's `script`), in `e`'s environment: what the
/// terminal showed.
fn on_a_terminal(e: &Env, args: &str) -> String {
    let line = format!("{} {args}", env!("CARGO_BIN_EXE_pra"));
    let c = e.cmd(None, &[]);
    let o = Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .envs(c.get_envs().filter_map(|(k, v)| Some((k, v?))))
        .env_remove("PRA_SITE")
        .output()
        .expect("script (util-linux) runs a command on a pseudo-terminal");
    assert!(o.status.success(), "{line}: {}", text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A drain on a terminal shows what it waits for.
#[test]
fn a_drain_on_a_terminal_shows_a_spinner_with_the_runs_it_waits_for() {
    let e = Env::new();
    e.activate_rbx();
    let mut job = e.waiting_run("slow", "2");
    ok(e.pra(&["site", "deactivate", "--expect-token", "1", "--by", "t"]));
    let shown = on_a_terminal(&e, "site activate sbg --expect-token 2 --by t");
    job.wait().unwrap();
    assert!(
        shown.contains("drain: waiting for the old site's runs"),
        "{shown}"
    );
    assert!(
        shown.contains("1 run(s) of token < 2 still alive"),
        "{shown}"
    );
}

/// Progress bars on a terminal (a pseudo-terminal from util-linux's `script`), for backup,
/// restore and prune; nothing of them off a terminal (cron mails, pipes).
#[test]
fn progress_bars_show_on_a_terminal_only() {
    let e = Env::new();
    let conn = rusqlite::Connection::open(e.path("app.db")).unwrap();
    conn.execute_batch(
        "CREATE TABLE events (id INTEGER PRIMARY KEY, body BLOB);
         WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 20000)
         INSERT INTO events (body) SELECT randomblob(1000) FROM c;",
    )
    .unwrap();
    drop(conn);
    let shown = on_a_terminal(&e, "backup");
    assert!(shown.contains("backup: copying"), "{shown}");
    on_a_terminal(&e, "backup");
    let shown = on_a_terminal(&e, "restore --latest --no-safety-copy");
    assert!(shown.contains("restore: copying"), "{shown}");
    let shown = on_a_terminal(&e, "prune --keep-last 1");
    assert!(shown.contains("prune: removing backups"), "{shown}");
    // Off a terminal: the result only.
    let o = ok(e.pra(&["backup"]));
    assert!(!text(&o).contains("copying"), "{}", text(&o));
    assert!(!text(&o).contains('\u{1b}'), "{}", text(&o));
}

/// Every metric the alert rules and the dashboard use (examples/monitoring/METRICS) is one
/// `pra metrics` writes — the offsite ones are checked in tests/offsite.rs, where a target
/// answers.
#[test]
fn pra_metrics_writes_every_name_the_alert_rules_use() {
    let e = Env::new();
    e.activate_rbx();
    e.make_db(2);
    ok(e.on("rbx", &["backup"]));
    e.run_every("rbx", "nightly", "5m");
    e.run_every("sbg", "nightly", "5m");
    ok(e.pra(&["plan", "start-failover", "--by", "t"]));
    let m = text(&ok(e.on("rbx", &["metrics"])));
    let written: std::collections::BTreeSet<&str> = m
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let wanted = include_str!("../examples/monitoring/METRICS");
    let missing: Vec<&str> = wanted
        .lines()
        .filter(|n| !n.starts_with("pra_offsite_") && !written.contains(n))
        .collect();
    assert!(missing.is_empty(), "not written: {missing:?}\n{m}");
}

/// `pra plan ensure STATE`: safe to run twice — nothing when the plan is there or went through
/// it, the one ordinary event otherwise, refused (exit 7) when no single event leads there.
#[test]
fn plan_ensure_is_safe_to_run_again() {
    let e = Env::new();
    e.activate_rbx();
    let entries = |e: &Env| {
        json(&ok(e.pra(&["--json", "journal"])))
            .as_array()
            .map_or(0, Vec::len)
    };
    let ensure = |e: &Env, args: &[&str]| {
        let mut a = vec!["plan", "ensure"];
        a.extend_from_slice(args);
        a.extend_from_slice(&["--by", "zerto-hook"]);
        e.pra(&a)
    };
    ok(ensure(&e, &["incident-detected"]));
    let after_one = entries(&e);
    assert!(after_one >= 2, "the activation and the event are journaled");
    let o = ok(ensure(&e, &["incident-detected"]));
    assert!(
        text(&o).contains("already in incident_detected"),
        "{}",
        text(&o)
    );
    assert_eq!(entries(&e), after_one, "nothing journaled the second time");
    // Two events away: refused, naming what the state accepts.
    let o = ensure(&e, &["failed-over"]);
    assert_eq!(code(&o), 7, "{}", text(&o));
    assert!(text(&o).contains("failover_decided"), "{}", text(&o));
    // A manual gate needs its operator, as `apply` does.
    assert_eq!(code(&ensure(&e, &["failover-decided"])), 3);
    ok(ensure(&e, &["failover-decided", "--operator", "alice"]));
    ok(ensure(&e, &["failover-draining"]));
    ok(ensure(&e, &["failed-over"]));
    let record = json(&ok(e.pra(&["--json", "site", "show"])));
    assert_eq!(record["site"], "sbg", "{record}");
    let before = entries(&e);
    let o = ok(ensure(&e, &["failover-decided"]));
    assert!(
        text(&o).contains("went through failover_decided"),
        "{}",
        text(&o)
    );
    ok(ensure(&e, &["failed-over"]));
    assert_eq!(entries(&e), before);
}

/// Gate checks (pra.toml `[plan_checks]`): run before their event, journaled; a failure blocks
/// the event with its output, `--override --reason` passes it on the record; an unknown event
/// name is refused at load.
#[test]
fn gate_checks_block_a_failing_gate_and_an_override_is_journaled() {
    let e = Env::new();
    e.activate_rbx();
    let ready = e.path("sbg-ready");
    let mut toml = std::fs::read_to_string(e.path("pra.toml")).unwrap();
    toml.push_str(&format!(
        "plan_check_timeout_seconds = 5\n[plan_checks]\nincident_detected = [\"true\"]\nfailover-decided = [\"echo checking sbg\", \"echo sbg not ready >&2; test -e {}\"]\n",
        ready.display()
    ));
    std::fs::write(e.path("pra.toml"), &toml).unwrap();
    let journal = |e: &Env| text(&ok(e.pra(&["journal"])));
    ok(e.pra(&["plan", "start-failover", "--by", "t"]));
    assert!(
        journal(&e).contains("checks of incident_detected: 1 run, passed"),
        "{}",
        journal(&e)
    );
    let gate = [
        "plan",
        "apply",
        "failover-decided",
        "--operator",
        "alice",
        "--by",
        "alice",
    ];
    let o = e.pra(&gate);
    assert_eq!(code(&o), 13, "{}", text(&o));
    assert!(text(&o).contains("sbg not ready"), "{}", text(&o));
    let state = json(&ok(e.pra(&["--json", "plan", "status"])));
    assert_eq!(
        state["plan"]["state"], "incident_detected",
        "the event was not applied"
    );
    assert!(
        journal(&e).contains("checks of failover_decided: 2 run, 1 FAILED: event refused"),
        "{}",
        journal(&e)
    );
    // An override needs a reason, and is on the record.
    let mut over = gate.to_vec();
    over.push("--override");
    assert_eq!(code(&e.pra(&over)), 3);
    over.extend_from_slice(&["--reason", "sbg checked by phone"]);
    ok(e.pra(&over));
    let j = journal(&e);
    assert!(j.contains("1 FAILED, OVERRIDDEN"), "{j}");
    let state = json(&ok(e.pra(&["--json", "plan", "status"])));
    assert_eq!(state["plan"]["state"], "failover_decided");
    // The whole record: the failed output, in the JSON journal.
    let all = text(&ok(e.pra(&["--json", "journal"])));
    assert!(all.contains("sbg not ready"), "{all}");
    // Passing checks pass.
    std::fs::write(&ready, "").unwrap();
    // A typo in an event name is an error, not a skipped check.
    toml.push_str("failover_decidd = [\"true\"]\n");
    std::fs::write(e.path("pra.toml"), &toml).unwrap();
    let o = e.pra(&["plan", "status"]);
    assert_eq!(code(&o), 3, "{}", text(&o));
    assert!(text(&o).contains("failover_decidd"), "{}", text(&o));
}
