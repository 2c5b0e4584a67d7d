//! Concurrency across OS processes: two processes racing compare-and-swap on one store
//! (SQLite, lock file, and a real etcd server started by the fixture).

#[path = "common/etcd.rs"]
mod etcd_fixture;

use std::collections::HashSet;
use std::process::Command;

use pra_core::{Actor, ErrorKind, SiteChange, SiteId, open};

const ATTEMPTS: usize = 500;
const RACER_ENV: &str = "PRA_TEST_RACER_URL";

/// Runs in the child processes: `ATTEMPTS` compare-and-swaps on the store, printing the token of
/// each one that won. Any error other than a lost race fails the child.
#[test]
fn racer_child() {
    let Ok(url) = std::env::var(RACER_ENV) else {
        return;
    };
    let me = std::env::var("PRA_TEST_RACER_SITE").unwrap();
    let store = open(&url).unwrap();
    // Start together: wait for the parent's go file (both children are spawned by then).
    let go = std::path::PathBuf::from(std::env::var("PRA_TEST_RACER_GO").unwrap());
    while !go.exists() {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    let site = SiteId::new(&me).unwrap();
    let actor = Actor::new(&me, "race").unwrap();
    let mut won = Vec::new();
    for _ in 0..ATTEMPTS {
        let r = store.load().unwrap();
        let change = match r.site {
            None => SiteChange::Activate {
                site: site.clone(),
                expect: r.token,
            },
            Some(_) => SiteChange::Deactivate { expect: r.token },
        };
        match store.change(change, &actor) {
            Ok(rec) => won.push(rec.token.0),
            Err(e) if e.kind() == ErrorKind::Conflict => {}
            Err(e) => panic!("racer {me}: unexpected error {e}"),
        }
    }
    println!(
        "WON {}",
        won.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
    );
}

fn race(dir: &std::path::Path, url: &str) {
    let go = dir.join("go");
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = ["rbx", "sbg"]
        .iter()
        .map(|site| {
            Command::new(&exe)
                .args(["racer_child", "--exact", "--nocapture", "--test-threads=1"])
                .env(RACER_ENV, url)
                .env("PRA_TEST_RACER_SITE", site)
                .env("PRA_TEST_RACER_GO", &go)
                .output_async()
        })
        .collect();
    std::fs::write(&go, b"").unwrap();
    let mut all = Vec::new();
    for child in children {
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "racer failed: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let line = stdout
            .lines()
            .find_map(|l| l.split_once("WON ").map(|(_, t)| t))
            .unwrap_or_else(|| panic!("no result line in {stdout}"));
        let won: Vec<u64> = line
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|t| t.parse().unwrap())
            .collect();
        // Both processes must win some races, or this test proved nothing about racing.
        assert!(
            !won.is_empty(),
            "one racer never won: the processes did not overlap"
        );
        all.extend(won);
    }
    let unique: HashSet<u64> = all.iter().copied().collect();
    assert_eq!(unique.len(), all.len(), "a token was handed out twice");
    let store = open(url).unwrap();
    let final_token = store.load().unwrap().token.0;
    // No lost update: every won CAS is one token, and they are exactly 1..=final.
    assert_eq!(final_token as usize, all.len());
    assert_eq!(unique, (1..=final_token).collect::<HashSet<_>>());
    assert_eq!(store.verify_journal().unwrap().entries, final_token);
    assert!(final_token > 0);
}

trait SpawnPiped {
    fn output_async(&mut self) -> std::process::Child;
}
impl SpawnPiped for Command {
    fn output_async(&mut self) -> std::process::Child {
        self.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    }
}

#[test]
fn two_processes_race_on_sqlite_store() {
    if std::env::var(RACER_ENV).is_ok() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    race(
        dir.path(),
        &format!("sqlite://{}/state.db", dir.path().display()),
    );
}

#[test]
fn two_processes_race_on_file_store() {
    if std::env::var(RACER_ENV).is_ok() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    race(
        dir.path(),
        &format!("file://{}/pra-status.lock", dir.path().display()),
    );
}

#[test]
fn two_processes_race_on_etcd_store() {
    if std::env::var(RACER_ENV).is_ok() {
        return;
    }
    let etcd = etcd_fixture::Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    race(dir.path(), &etcd.url("/race"));
}
