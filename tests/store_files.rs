//! The files of a store and of the configuration, through the `pra` binary: special and huge
//! files are refused at once (issue 18).

use std::path::Path;
use std::process::{Command, Output};

/// `pra args` in `dir` on `store` with `config`, killed after 10 s (exit 124: it hangs).
fn pra(dir: &Path, store: &str, config: &Path, args: &[&str]) -> Command {
    let mut c = Command::new("timeout");
    c.arg("10")
        .arg(env!("CARGO_BIN_EXE_pra"))
        .args(args)
        .current_dir(dir)
        .env("PRA_STORE", store)
        .env("PRA_SITES", "rbx,sbg")
        .env("PRA_SITE", "rbx")
        .env("PRA_CONFIG", config)
        .env_remove("RUST_LOG");
    c
}

/// Runs `cmd` to its end.
fn run(mut cmd: Command) -> Output {
    cmd.output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn mkfifo(path: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
}

#[test]
fn a_fifo_or_a_huge_file_as_configuration_or_lock_file_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let empty = d.join("empty.toml");
    std::fs::write(&empty, "").unwrap();
    for name in ["fifo.toml", "fifo.lock"] {
        mkfifo(&d.join(name));
    }
    for name in ["huge.toml", "huge.lock"] {
        std::fs::File::create(d.join(name))
            .unwrap()
            .set_len(1 << 30)
            .unwrap();
    }
    let url = |name: &str| format!("file://{}", d.join(name).display());
    // (configuration file, lock file, exit code, what the message names)
    for (config, lock, code, want) in [
        (
            d.join("fifo.toml"),
            url("pra-status.lock"),
            3,
            "fifo.toml: a FIFO",
        ),
        (
            d.join("huge.toml"),
            url("pra-status.lock"),
            3,
            "huge.toml: larger than the 64 KiB",
        ),
        (empty.clone(), url("fifo.lock"), 9, "fifo.lock is a FIFO"),
        (empty.clone(), url("huge.lock"), 10, "64 KiB"),
    ] {
        let o = run(pra(d, &lock, &config, &["check"]));
        assert_eq!(o.status.code(), Some(code), "{}", text(&o));
        assert!(
            text(&o).contains(want),
            "{want:?} missing from: {}",
            text(&o)
        );
    }
}

/// A system group and two users made for one test (root only), removed when dropped: `job`
/// is a member of the group, `outsider` is not.
struct Users {
    group: String,
    job: String,
    outsider: String,
}

impl Users {
    fn create() -> Option<Users> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("not root: the test with real users is skipped");
            return None;
        }
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = format!("{}{n}", std::process::id() % 100_000);
        let u = Users {
            group: format!("prag{id}"),
            job: format!("praj{id}"),
            outsider: format!("prax{id}"),
        };
        let run = |args: &[&str]| {
            let o = Command::new(args[0]).args(&args[1..]).output().unwrap();
            assert!(o.status.success(), "{args:?}: {}", text(&o));
        };
        run(&["groupadd", "--system", &u.group]);
        for (user, groups) in [(&u.job, u.group.as_str()), (&u.outsider, "")] {
            let mut args = vec!["useradd", "--system", "--no-create-home", "--user-group"];
            if !groups.is_empty() {
                args.extend(["--groups", groups]);
            }
            args.extend(["--shell", "/usr/sbin/nologin", user]);
            run(&args);
        }
        Some(u)
    }

    /// `cmd` run as `user` (its own group and supplementary groups), environment kept.
    fn as_user(user: &str, cmd: &Command) -> Command {
        let mut c = Command::new("setpriv");
        c.args([
            &format!("--reuid={user}"),
            &format!("--regid={user}"),
            "--init-groups",
            "--",
        ])
        .arg(cmd.get_program())
        .args(cmd.get_args());
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => c.env(k, v),
                None => c.env_remove(k),
            };
        }
        if let Some(d) = cmd.get_current_dir() {
            c.current_dir(d);
        }
        c
    }
}

impl Drop for Users {
    fn drop(&mut self) {
        for user in [&self.job, &self.outsider] {
            let _ = Command::new("userdel").arg(user).output();
        }
        let _ = Command::new("groupdel").arg(&self.group).output();
    }
}

fn mode_and_group(path: &Path) -> (u32, u32) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).unwrap();
    (m.mode() & 0o7777, m.gid())
}

fn gid_of(group: &str) -> u32 {
    let o = Command::new("getent")
        .args(["group", group])
        .output()
        .unwrap();
    String::from_utf8(o.stdout)
        .unwrap()
        .split(':')
        .nth(2)
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn a_store_root_created_with_store_group_is_usable_by_the_jobs_of_that_group() {
    use std::os::unix::fs::PermissionsExt;
    let Some(users) = Users::create() else { return };
    let gid = gid_of(&users.group);
    let top = tempfile::tempdir().unwrap();
    std::fs::set_permissions(top.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = top.path().join("pra.toml");
    std::fs::write(
        &config,
        format!(
            "store_group = \"{}\"\nheartbeat_seconds = 1\nrevoke_grace_seconds = 1\nlost_after_seconds = 5\nstore_timeout_seconds = 1\n",
            users.group
        ),
    )
    .unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    // A directory that is not the group's, 2770: pra says what to run.
    let plain = top.path().join("plain");
    std::fs::create_dir(&plain).unwrap();
    let url = format!("file://{}", plain.join("pra-status.lock").display());
    let o = run(pra(top.path(), &url, &config, &["site", "show"]));
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let want = format!("chgrp {} {} && chmod 2770", users.group, plain.display());
    assert!(
        text(&o).contains(&want),
        "{want:?} missing from: {}",
        text(&o)
    );
    for (name, store_file, files) in [
        (
            "sqlite",
            "state.db",
            &["state.db", "state.db-wal", "state.db-shm"][..],
        ),
        (
            "file",
            "pra-status.lock",
            &[
                "pra-status.lock",
                "pra-status.lock.journal",
                "pra-status.lock.pra-lock",
            ][..],
        ),
    ] {
        // The documented layout: the directory is the group's, 2770.
        let dir = top.path().join(name);
        std::fs::create_dir(&dir).unwrap();
        std::os::unix::fs::chown(&dir, None, Some(gid)).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o2770)).unwrap();
        let url = format!("{name}://{}", dir.join(store_file).display());
        let root = |args: &[&str]| {
            let o = run(pra(top.path(), &url, &config, args));
            assert_eq!(o.status.code(), Some(0), "root {args:?}: {}", text(&o));
        };
        let job = |user: &str, args: &[&str]| {
            run(Users::as_user(user, &pra(top.path(), &url, &config, args)))
        };
        // The operator, root, creates the store and activates rbx.
        root(&["site", "activate", "rbx", "--expect-token", "0"]);
        // (SQLite removes its -wal and -shm when its last connection closes.)
        assert!(dir.join(files[0]).exists());
        for f in files.iter().filter(|f| dir.join(f).exists()) {
            assert_eq!(
                mode_and_group(&dir.join(f)),
                (0o660, gid),
                "{name}: {f} is not the group's, 0660"
            );
        }
        // The job user, a member of the group, checks and runs.
        let o = job(&users.job, &["check"]);
        assert_eq!(o.status.code(), Some(0), "{name}: {}", text(&o));
        if name == "sqlite" {
            let o = job(&users.job, &["run", "--job", "invoices", "--", "true"]);
            assert_eq!(o.status.code(), Some(0), "{name}: {}", text(&o));
        }
        // The operator flips again: the rewritten files keep their group and mode.
        root(&["site", "deactivate", "--expect-token", "1"]);
        root(&["site", "activate", "rbx", "--expect-token", "2"]);
        for f in files.iter().filter(|f| dir.join(f).exists()) {
            assert_eq!(mode_and_group(&dir.join(f)), (0o660, gid), "{name}: {f}");
        }
        let o = job(&users.job, &["check"]);
        assert_eq!(o.status.code(), Some(0), "{name}: {}", text(&o));
        // Someone outside the group is refused, with the file, its owner, group and mode and
        // the fix.
        let o = job(&users.outsider, &["check"]);
        assert_eq!(o.status.code(), Some(9), "{name}: {}", text(&o));
        let t = text(&o);
        for want in [
            dir.display().to_string(),
            "owned by root".into(),
            format!("group {}", users.group),
            "usermod -aG".into(),
            users.outsider.clone(),
        ] {
            assert!(t.contains(&want), "{name}: {want:?} missing from: {t}");
        }
    }
}

#[test]
fn a_private_store_tells_a_job_user_how_to_share_it() {
    use std::os::unix::fs::PermissionsExt;
    let Some(users) = Users::create() else { return };
    let top = tempfile::tempdir().unwrap();
    std::fs::set_permissions(top.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = top.path().join("pra.toml");
    std::fs::write(&config, "").unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    for (name, store_file) in [("sqlite", "state.db"), ("file", "pra-status.lock")] {
        let dir = top.path().join(name);
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = dir.join(store_file);
        let url = format!("{name}://{}", path.display());
        let o = run(pra(
            top.path(),
            &url,
            &config,
            &["site", "activate", "rbx", "--expect-token", "0"],
        ));
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        assert_eq!(mode_and_group(&path).0, 0o600, "{name}: private by default");
        let o = run(Users::as_user(
            &users.job,
            &pra(top.path(), &url, &config, &["check"]),
        ));
        assert_eq!(o.status.code(), Some(9), "{name}: {}", text(&o));
        let t = text(&o);
        for want in [
            path.display().to_string(),
            "owned by root".into(),
            "mode 0600".into(),
            "store_group".into(),
            "chmod 660".into(),
        ] {
            assert!(t.contains(&want), "{name}: {want:?} missing from: {t}");
        }
    }
}

/// A FUSE mount (bindfs) of a scratch directory, unmounted when dropped; `None` (the test
/// then says it is skipped) where bindfs or FUSE is not available.
struct Fuse {
    mount: tempfile::TempDir,
    _source: tempfile::TempDir,
}

impl Fuse {
    fn mount() -> Option<Fuse> {
        let source = tempfile::tempdir().unwrap();
        let mount = tempfile::tempdir().unwrap();
        let ok = Command::new("bindfs")
            .arg(source.path())
            .arg(mount.path())
            .output()
            .is_ok_and(|o| o.status.success());
        if !ok {
            eprintln!("bindfs or FUSE is not available: the end-to-end FUSE test is skipped");
            return None;
        }
        Some(Fuse {
            mount,
            _source: source,
        })
    }
}

impl Drop for Fuse {
    fn drop(&mut self) {
        let _ = Command::new("fusermount")
            .arg("-u")
            .arg(self.mount.path())
            .output();
    }
}

#[test]
fn an_sqlite_store_on_a_network_file_system_is_refused_and_a_lock_file_warned_about() {
    let Some(fuse) = Fuse::mount() else { return };
    let d = fuse.mount.path();
    let config = d.join("pra.toml");
    std::fs::write(&config, "").unwrap();
    let sqlite = format!("sqlite://{}/state.db", d.display());
    let o = run(pra(d, &sqlite, &config, &["check"]));
    assert_eq!(o.status.code(), Some(11), "{}", text(&o));
    assert!(
        text(&o).contains("FUSE") && text(&o).contains("etcd://"),
        "{}",
        text(&o)
    );
    assert!(!d.join("state.db").exists(), "nothing is created");
    let lock = format!("file://{}/pra-status.lock", d.display());
    let o = run(pra(
        d,
        &lock,
        &config,
        &["site", "activate", "rbx", "--expect-token", "0"],
    ));
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        text(&o).contains("FUSE") && text(&o).contains("advisory lock is not guaranteed"),
        "{}",
        text(&o)
    );
}

#[test]
fn vms_sharing_one_lock_file_by_symlink_never_both_run_and_a_seed_rewrite_stops_them() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let config = d.join("pra.toml");
    std::fs::write(&config, "").unwrap();
    let shared = d.join("shared.lock");
    std::fs::write(&shared, "ACTIVE_SITE=NONE\n").unwrap();
    let vm = |site: &str| {
        std::fs::create_dir(d.join(site)).unwrap();
        let link = d.join(site).join("pra-status.lock");
        std::os::unix::fs::symlink(&shared, &link).unwrap();
        format!("file://{}", link.display())
    };
    let (rbx, sbg) = (vm("rbx"), vm("sbg"));
    let on = |url: &str, site: &str, args: &[&str]| {
        let mut c = pra(d, url, &config, args);
        c.env("PRA_SITE", site);
        let o = run(c);
        (o.status.code().unwrap_or(-1), text(&o))
    };
    // (VM, its site, command, exit code): each VM sees the other's changes, and sbg's operator
    // cannot activate sbg while rbx is active (break before make) from its own path.
    for (step, (url, site, cmd, code)) in [
        (&rbx, "rbx", "site activate rbx --expect-token 0", 0),
        (&sbg, "sbg", "check", 1),
        (&rbx, "rbx", "check", 0),
        (&sbg, "sbg", "site activate sbg --expect-token 0", 5),
        (&sbg, "sbg", "site deactivate --expect-token 1", 0),
        (&sbg, "sbg", "site activate sbg --expect-token 2", 0),
        (&rbx, "rbx", "check", 1),
        (&sbg, "sbg", "check", 0),
    ]
    .into_iter()
    .enumerate()
    {
        let args: Vec<&str> = cmd.split(' ').collect();
        let (got, t) = on(url, site, &args);
        assert_eq!(got, code, "step {step}, {site}: pra {cmd}: {t}");
    }
    // The seed's tooling writes its own format over the shared file: nobody runs, every
    // command says why, and the journal is kept.
    std::fs::write(&shared, "ACTIVE_SITE=RBX\n").unwrap();
    let journal = d.join("shared.lock.journal");
    let before = std::fs::read(&journal).unwrap();
    for (url, site, args) in [
        (&rbx, "rbx", &["check"][..]),
        (&sbg, "sbg", &["check"][..]),
        (&rbx, "rbx", &["journal", "--verify"][..]),
        (
            &rbx,
            "rbx",
            &["site", "deactivate", "--expect-token", "0"][..],
        ),
    ] {
        let (code, t) = on(url, site, args);
        assert_eq!(code, 10, "{args:?}: {t}");
        assert!(
            t.contains(&shared.display().to_string())
                && t.contains(&journal.display().to_string())
                && t.contains("sbg at token 3"),
            "{args:?}: {t}"
        );
    }
    assert_eq!(std::fs::read(&journal).unwrap(), before);
}
