//! The deployment examples stay valid: the example configuration is accepted by `pra`, the
//! scripts parse, and every pra command line they contain parses too.

use std::path::Path;
use std::process::Command;

const DEPLOY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/deploy");

#[test]
fn example_configuration_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pra"))
        .args(["site", "show"])
        .env("PRA_CONFIG", Path::new(DEPLOY).join("pra.toml"))
        .env(
            "PRA_STORE",
            format!("sqlite://{}/state.db", dir.path().display()),
        )
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn example_scripts_are_valid_shell() {
    for script in [
        "cron/check-then-run.sh",
        "zerto/pre-failback.sh",
        "zerto/post-failback.sh",
    ] {
        let out = Command::new("bash")
            .arg("-n")
            .arg(Path::new(DEPLOY).join(script))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn every_pra_command_in_the_examples_parses() {
    // `pra <args> --help` fails (exit 2) on an unknown subcommand or flag.
    let mut seen = 0;
    for file in [
        "cron/pra-jobs",
        "systemd/pra-job@.service",
        "systemd/pra-follow@.service",
        "systemd/cron.service.d/pra-follow.conf",
        "zerto/pre-failback.sh",
        "zerto/post-failback.sh",
        "k8s/30-cronjob-backup.yaml",
    ] {
        let text = std::fs::read_to_string(Path::new(DEPLOY).join(file)).unwrap();
        for line in text.lines().filter(|l| !l.trim_start().starts_with('#')) {
            for part in line.split("&&") {
                let Some(i) = part.find("pra ") else { continue };
                let words: Vec<String> = part[i + 4..]
                    .split_whitespace()
                    .take_while(|w| {
                        *w != "--" && !w.starts_with('#') && !w.contains('$') && !w.contains('%')
                    })
                    .map(|w| w.trim_matches('"').to_string())
                    .filter(|w| !w.is_empty())
                    .collect();
                if words.is_empty() {
                    continue;
                }
                // The subcommand path must exist, and each flag must be one its help lists.
                let path: Vec<&String> = words.iter().take_while(|w| !w.starts_with('-')).collect();
                let out = Command::new(env!("CARGO_BIN_EXE_pra"))
                    .args(&path)
                    .arg("--help")
                    .output()
                    .unwrap();
                let help = String::from_utf8_lossy(&out.stdout);
                assert!(
                    out.status.success(),
                    "{file}: `pra {path:?}` is no subcommand"
                );
                for flag in words.iter().filter(|w| w.starts_with("--")) {
                    let name = flag.split('=').next().unwrap_or(flag);
                    assert!(
                        help.contains(name),
                        "{file}: `pra {path:?}` has no flag {name}"
                    );
                }
                seen += 1;
            }
        }
    }
    assert!(seen >= 8, "only {seen} commands found");
}
