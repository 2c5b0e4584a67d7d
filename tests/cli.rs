//! The `pra` binary, run for real: subcommands, exit codes and messages.

use std::path::Path;
use std::process::{Command, Output};

fn pra(store: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pra"))
        .args(args)
        .env("PRA_STORE", store)
        .env("PRA_SITES", "rbx,sbg")
        .env_remove("PRA_SITE")
        .output()
        .unwrap()
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn sqlite_url(dir: &Path) -> String {
    format!("sqlite://{}/state.db", dir.display())
}

#[test]
fn version_prints_the_crate_version() {
    let o = pra("sqlite:///nonexistent/x.db", &["--version"]);
    assert_eq!(code(&o), 0);
    assert!(text(&o).contains(env!("CARGO_PKG_VERSION")));
}

#[test]
fn check_exit_codes_follow_the_record() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(dir.path());
    assert_eq!(
        code(&pra(&url, &["check", "--site", "rbx"])),
        1,
        "deny by default"
    );
    let o = pra(
        &url,
        &[
            "site",
            "activate",
            "rbx",
            "--expect-token",
            "0",
            "--by",
            "ci",
        ],
    );
    assert_eq!(code(&o), 0, "{}", text(&o));
    assert_eq!(code(&pra(&url, &["check", "--site", "rbx"])), 0);
    let o = pra(&url, &["check", "--site", "sbg"]);
    assert_eq!(code(&o), 1);
    assert!(
        text(&o).contains("active site is rbx (token 1)"),
        "{}",
        text(&o)
    );
    let o = pra(&url, &["check", "--site", "sbg", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["verdict"], "standby");
    assert_eq!(v["active"], "rbx");
    assert_eq!(v["token"], 1);
}

#[test]
fn bad_input_gets_its_documented_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(dir.path());
    // Unknown site.
    let o = pra(&url, &["site", "activate", "gra", "--expect-token", "0"]);
    assert_eq!(code(&o), 3);
    assert!(text(&o).contains("unknown site \"gra\""), "{}", text(&o));
    let o = pra(&url, &["check", "--site", "gra"]);
    assert_eq!(code(&o), 3);
    // Stale token.
    pra(&url, &["site", "activate", "sbg", "--expect-token", "0"]);
    let o = pra(&url, &["site", "deactivate", "--expect-token", "0"]);
    assert_eq!(code(&o), 5);
    assert!(text(&o).contains("expected token 0"), "{}", text(&o));
    // Store that cannot be opened: check fails closed with its own code.
    let o = pra(
        "sqlite:///nonexistent-dir/state.db",
        &["check", "--site", "rbx"],
    );
    assert_eq!(code(&o), 9, "{}", text(&o));
    // Bad URL.
    assert_eq!(code(&pra("mysql://x", &["site", "show"])), 3);
}

#[test]
fn corrupt_lock_file_is_reported_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let lock = dir.path().join("pra-status.lock");
    std::fs::write(&lock, "# x\nACTIVE_SITE SBG\n").unwrap();
    let url = format!("file://{}", lock.display());
    let o = pra(&url, &["check", "--site", "sbg"]);
    assert_eq!(code(&o), 10);
    assert!(text(&o).contains("pra-status.lock, line 2"), "{}", text(&o));
    // The seed's own file is read as it is.
    std::fs::write(&lock, "ACTIVE_SITE=SBG\n").unwrap();
    assert_eq!(code(&pra(&url, &["check", "--site", "sbg"])), 0);
    assert_eq!(code(&pra(&url, &["check", "--site", "rbx"])), 1);
}

#[test]
fn journal_lists_and_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(dir.path());
    pra(
        &url,
        &[
            "site",
            "activate",
            "rbx",
            "--expect-token",
            "0",
            "--by",
            "alice",
            "--reason",
            "go live",
        ],
    );
    let o = pra(&url, &["journal"]);
    assert!(
        text(&o).contains("alice") && text(&o).contains("NONE -> rbx"),
        "{}",
        text(&o)
    );
    let o = pra(&url, &["journal", "--verify"]);
    assert_eq!(code(&o), 0);
    assert!(text(&o).contains("1 entries"), "{}", text(&o));
}
