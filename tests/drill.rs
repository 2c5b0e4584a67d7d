//! `pra drill`, the main job of `make demo`: real processes through failover, failback and a
//! restore, ending with a zero double-execution window.

use std::process::Command;

#[test]
fn the_drill_passes_with_a_zero_window_and_writes_its_reports() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pra"))
        .args(["drill", "--quiet", "--json", "--dir"])
        .arg(dir.path())
        .env_remove("PRA_STORE")
        .env_remove("PRA_CONFIG")
        .env_remove("PRA_SITE")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(r["passed"], true);
    assert_eq!(r["plan"]["double_execution_seconds"], 0.0);
    // Ground truth: the jobs' own writes in the app database, independent of the registry.
    assert!(
        r["ground_truth"]["units"].as_u64().unwrap() > 20,
        "the jobs recorded their work"
    );
    assert_eq!(r["ground_truth"]["double_execution_seconds"], 0.0);
    assert!(r["ground_truth"]["overlaps"].as_array().unwrap().is_empty());
    // The failback was disturbed as promised: a wrapper killed, another paused.
    assert!(
        r["disturbed"]["killed_wrapper"].as_i64().is_some(),
        "{stdout}"
    );
    assert!(
        r["disturbed"]["paused_wrapper"].as_i64().is_some(),
        "{stdout}"
    );
    assert_eq!(
        r["plan"]["fenced"].as_array().unwrap().len(),
        2,
        "two flips, each through NONE"
    );
    assert!(r["plan"]["rto_seconds"].as_f64().unwrap() > 0.0);
    assert!(r["plan"]["failback_seconds"].as_f64().unwrap() > 0.0);
    let jobs = r["jobs"].as_array().unwrap();
    let rbx = jobs.iter().find(|j| j["site"] == "rbx").unwrap();
    let sbg = jobs.iter().find(|j| j["site"] == "sbg").unwrap();
    assert!(
        rbx["runs_skipped"].as_u64().unwrap() > 0,
        "rbx's crons were fenced while it booted"
    );
    assert!(
        sbg["runs_started"].as_u64().unwrap() > 0,
        "sbg ran the jobs after the failover"
    );
    assert!(r["restore"]["rows_after_restore"].as_u64().unwrap() > 0);
    assert!(dir.path().join("report.md").exists() && dir.path().join("report.json").exists());
    let md = std::fs::read_to_string(dir.path().join("report.md")).unwrap();
    assert!(
        md.contains("| double-execution window | 0.000s | 0 s | PASS |"),
        "{md}"
    );
    assert!(
        md.contains("| double-execution window, from the jobs' own writes | 0.000s |"),
        "{md}"
    );
}
