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

/// The `[...]` flow sequence after `key:` in a manifest (written as JSON arrays).
fn manifest_array(text: &str, key: &str) -> Vec<String> {
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with(key))
        .unwrap_or_else(|| panic!("no `{key}` line"));
    let json = line.trim_start()[key.len()..].trim();
    serde_json::from_str(json).unwrap_or_else(|e| panic!("`{key}` is not a JSON array: {e}"))
}

#[test]
fn kubernetes_manifests_name_the_image_the_dockerfile_builds() {
    let tag = format!("pra-flask:{}", env!("CARGO_PKG_VERSION"));
    let dockerfile = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/container/Dockerfile"),
    )
    .unwrap();
    assert!(
        dockerfile.contains(&format!("-t {tag} ")),
        "the Dockerfile's build line does not tag {tag}"
    );
    let mut images = 0;
    for entry in std::fs::read_dir(Path::new(DEPLOY).join("k8s")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        for line in text
            .lines()
            .filter(|l| l.trim_start().starts_with("image:"))
        {
            assert_eq!(line.trim_start(), format!("image: {tag}"), "{path:?}");
            images += 1;
        }
    }
    assert_eq!(
        images, 3,
        "the Deployment, the backup CronJob and the restore Job"
    );
    let deployment =
        std::fs::read_to_string(Path::new(DEPLOY).join("k8s/20-deployment.yaml")).unwrap();
    assert!(deployment.contains("strategy: {type: Recreate}"));
    assert!(deployment.contains("{name: backup, mountPath: /backup, readOnly: true}"));
}

/// The restore Job, as shipped, works on any cluster: its command line is run against a
/// scratch database and backup directory (no hard-coded restore point).
#[test]
fn the_kubernetes_restore_job_restores_the_newest_backup_as_shipped() {
    let text = std::fs::read_to_string(Path::new(DEPLOY).join("k8s/50-job-restore.yaml")).unwrap();
    let mut argv = manifest_array(&text, "command:");
    argv.extend(manifest_array(&text, "args:"));
    assert_eq!(argv[0], "pra");
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let backups = dir.path().join("backup");
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch("CREATE TABLE events (id INTEGER PRIMARY KEY, body TEXT); INSERT INTO events (body) VALUES ('kept');")
        .unwrap();
    drop(conn);
    let pra = |args: &[String]| {
        Command::new(env!("CARGO_BIN_EXE_pra"))
            .args(args)
            .env("PRA_DB", &db)
            .env("PRA_BACKUP_DIR", &backups)
            .env(
                "PRA_STORE",
                format!("sqlite://{}/state.db", dir.path().display()),
            )
            .env("PRA_SITE", "rbx")
            .output()
            .unwrap()
    };
    let out = pra(&["backup".to_string()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The data is lost after the backup: the Job must bring it back.
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute("DELETE FROM events", []).unwrap();
    drop(conn);
    let out = pra(&argv[1..]);
    assert!(
        out.status.success(),
        "{argv:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let conn = rusqlite::Connection::open(&db).unwrap();
    let kept: String = conn
        .query_row("SELECT body FROM events", [], |r| r.get(0))
        .unwrap();
    assert_eq!(kept, "kept");
}
