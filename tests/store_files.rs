//! The files of a store and of the configuration, through the `pra` binary: special and huge
//! files are refused at once (issue 18).

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn pra(dir: &Path, store: &str, config: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pra"));
    c.args(args)
        .current_dir(dir)
        .env("PRA_STORE", store)
        .env("PRA_SITES", "rbx,sbg")
        .env("PRA_SITE", "rbx")
        .env("PRA_CONFIG", config)
        .env_remove("RUST_LOG");
    c
}

/// Runs `cmd`; fails the test if it has not finished within 10 s (it is killed then).
fn within(mut cmd: Command) -> Output {
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} hangs");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().unwrap()
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
    let lock = format!("file://{}/pra-status.lock", d.display());
    let empty = d.join("empty.toml");
    std::fs::write(&empty, "").unwrap();
    let fifo = d.join("fifo.toml");
    mkfifo(&fifo);
    let huge = d.join("huge.toml");
    std::fs::File::create(&huge)
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    for (config, want) in [(&fifo, "FIFO"), (&huge, "KiB")] {
        let o = within(pra(d, &lock, config, &["check"]));
        assert_eq!(o.status.code(), Some(3), "{}", text(&o));
        assert!(
            text(&o).contains(want) && text(&o).contains(&config.display().to_string()),
            "{}",
            text(&o)
        );
    }
    // The lock file itself.
    let fifo_lock = d.join("fifo.lock");
    mkfifo(&fifo_lock);
    let o = within(pra(
        d,
        &format!("file://{}", fifo_lock.display()),
        &empty,
        &["check"],
    ));
    assert_eq!(o.status.code(), Some(9), "{}", text(&o));
    assert!(text(&o).contains("FIFO"), "{}", text(&o));
    let huge_lock = d.join("huge.lock");
    std::fs::File::create(&huge_lock)
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    let o = within(pra(
        d,
        &format!("file://{}", huge_lock.display()),
        &empty,
        &["check"],
    ));
    assert_eq!(o.status.code(), Some(10), "{}", text(&o));
    assert!(text(&o).contains("KiB"), "{}", text(&o));
}
