//! The deployment examples stay valid: the example configuration is accepted by `pra`, the
//! scripts parse, and every pra command line they contain parses too.

// Only the server and its environment: the restore Job runs against it.
#[allow(dead_code)]
#[path = "common/s3.rs"]
mod s3_fixture;

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

/// The `{name: NAME, value: VALUE}` env entries of a manifest.
fn manifest_env(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| l.trim_start().strip_prefix("- {name: "))
        .filter_map(|l| {
            let (name, rest) = l.split_once(", value: ")?;
            Some((
                name.to_string(),
                rest.trim_end_matches('}').trim_matches('"').to_string(),
            ))
        })
        .collect()
}

/// The restore Job, as shipped, works on any cluster: its command line and environment are run
/// against a scratch database and an offsite target (moto on loopback) holding a backup the
/// CronJob's environment encrypted and uploaded — no hard-coded restore point; only the
/// endpoint and the key files are the test's.
#[test]
fn the_kubernetes_restore_job_restores_the_newest_offsite_backup_as_shipped() {
    let job = std::fs::read_to_string(Path::new(DEPLOY).join("k8s/50-job-restore.yaml")).unwrap();
    let cron =
        std::fs::read_to_string(Path::new(DEPLOY).join("k8s/30-cronjob-backup.yaml")).unwrap();
    let secret =
        std::fs::read_to_string(Path::new(DEPLOY).join("k8s/15-secret-offsite.yaml")).unwrap();
    let mut argv = manifest_array(&job, "command:");
    argv.extend(manifest_array(&job, "args:"));
    assert_eq!(argv[0], "pra");
    assert!(argv.contains(&"--remote".to_string()), "{argv:?}");
    // Both name the same target; credentials come from the Secret, which holds them all.
    for (text, key) in [
        (&job, "PRA_BACKUP_AGE_IDENTITY_FILE"),
        (&cron, "PRA_BACKUP_AGE_RECIPIENTS_FILE"),
    ] {
        let env = manifest_env(text);
        assert!(env.iter().any(|(k, _)| k == key), "{key}");
        assert!(
            env.iter()
                .any(|(k, v)| k == "PRA_BACKUP_TARGET" && v.starts_with("s3://"))
        );
        for cred in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"] {
            assert!(text.contains(&format!("secretKeyRef: {{name: pra-offsite, key: {cred}}}")));
            assert!(secret.contains(&format!("  {cred}: ")));
        }
    }
    assert_eq!(
        manifest_env(&job)
            .iter()
            .find(|(k, _)| k == "PRA_BACKUP_TARGET"),
        manifest_env(&cron)
            .iter()
            .find(|(k, _)| k == "PRA_BACKUP_TARGET")
    );
    let s3 = s3_fixture::S3::start();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let id = age::x25519::Identity::generate();
    std::fs::write(dir.path().join("backup.pub"), id.to_public().to_string()).unwrap();
    std::fs::write(
        dir.path().join("backup.key"),
        age::secrecy::ExposeSecret::expose_secret(&id.to_string()),
    )
    .unwrap();
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch("CREATE TABLE events (id INTEGER PRIMARY KEY, body TEXT); INSERT INTO events (body) VALUES ('kept');")
        .unwrap();
    drop(conn);
    let pra = |manifest: &str, args: &[String]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_pra"));
        c.args(args)
            .env(
                "PRA_STORE",
                format!("sqlite://{}/state.db", dir.path().display()),
            )
            .env_remove("PRA_CONFIG");
        for (k, v) in manifest_env(manifest) {
            let v = match k.as_str() {
                "PRA_DB" => db.display().to_string(),
                "PRA_BACKUP_DIR" => dir
                    .path()
                    .join(v.trim_start_matches('/'))
                    .display()
                    .to_string(),
                "PRA_BACKUP_AGE_RECIPIENTS_FILE" | "PRA_BACKUP_AGE_IDENTITY_FILE" => dir
                    .path()
                    .join(Path::new(&v).file_name().unwrap())
                    .display()
                    .to_string(),
                _ => v,
            };
            c.env(k, v);
        }
        s3.env(&mut c, "prod");
        c.output().unwrap()
    };
    let ok = |o: std::process::Output| {
        assert!(
            o.status.success(),
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    };
    ok(pra(
        &cron,
        &[
            "site".into(),
            "activate".into(),
            "rbx".into(),
            "--expect-token".into(),
            "0".into(),
        ],
    ));
    ok(pra(&cron, &["backup".to_string()]));
    // The data is lost after the backup, and so is the backup volume: the Job brings it back.
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute("DELETE FROM events", []).unwrap();
    drop(conn);
    std::fs::remove_dir_all(dir.path().join("backup")).unwrap();
    ok(pra(&job, &argv[1..]));
    let conn = rusqlite::Connection::open(&db).unwrap();
    let kept: String = conn
        .query_row("SELECT body FROM events", [], |r| r.get(0))
        .unwrap();
    assert_eq!(kept, "kept");
}
