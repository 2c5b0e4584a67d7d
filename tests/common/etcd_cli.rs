//! Running the `pra` binary against the etcd fixture: a configuration file, a command with it,
//! and its output in words for assertion messages. Shared by tests/etcd.rs and
//! tests/etcd_tls.rs.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// A config file for the `pra` binary: short heartbeats, run leases of `lost_after` seconds.
pub fn write_config(dir: &Path, url: &str, lost_after: u32) -> PathBuf {
    let path = dir.join("pra.toml");
    std::fs::write(
        &path,
        format!(
            "store = \"{url}\"\nsites = \"rbx,sbg\"\nheartbeat_seconds = 1\nlost_after_seconds = {lost_after}\nrevoke_grace_seconds = 1\nstore_timeout_seconds = 1\nlock_dir = \"{}\"\n",
            dir.display()
        ),
    )
    .unwrap();
    path
}

/// `pra ARGS` on `site` with `config`, nothing taken from the test's environment.
pub fn pra(config: &Path, site: &str, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pra"));
    c.args(args)
        .env("PRA_CONFIG", config)
        .env("PRA_SITE", site)
        .env_remove("PRA_STORE")
        .env_remove("RUST_LOG");
    c
}

pub fn output(mut c: Command) -> Output {
    c.output().unwrap()
}

pub fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

pub fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    t.elapsed()
}

/// Asserts that `o` exited with `code` and that its stderr says `says`.
pub fn assert_exit(o: &Output, code: i32, says: &str) {
    assert_eq!(o.status.code(), Some(code), "{}", text(o));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains(says), "expected {says:?} in: {}", text(o));
}

/// `pra drill --store-url URL` in a scratch directory with the variables `env`: it must pass
/// with no double execution. Its JSON report.
pub fn drill_passes(url: &str, env: &[(&str, String)]) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let out = output({
        let mut c = Command::new(env!("CARGO_BIN_EXE_pra"));
        c.args(["drill", "--quiet", "--json", "--store-url", url])
            .arg("--dir")
            .arg(dir.path())
            .env_remove("PRA_STORE")
            .envs(env.iter().cloned());
        c
    });
    assert!(out.status.success(), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["passed"], true);
    assert_eq!(report["store"], url);
    assert_eq!(report["plan"]["double_execution_seconds"], 0.0);
    report
}
