//! The lock-file store cannot be fooled (issue 18): by a symlink, by the seed's tooling
//! rewriting the file, by a reason that is shell code, by a FIFO or a huge file.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use pra_core::store::{FileStore, SqliteStore, Store};
use pra_core::{Actor, ErrorKind, FencingToken, SiteChange, SiteId, SystemClock};

fn site(s: &str) -> SiteId {
    SiteId::new(s).unwrap()
}

fn open(p: &Path) -> FileStore {
    FileStore::open(p, Arc::new(SystemClock)).unwrap()
}

/// A new lock-file store in a scratch directory: the directory, the file, its journal, the store.
fn fresh() -> (tempfile::TempDir, PathBuf, PathBuf, FileStore) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("pra-status.lock");
    let s = open(&p);
    let jp = dir.path().join("pra-status.lock.journal");
    (dir, p, jp, s)
}

fn activate(s: &dyn Store, name: &str, expect: u64) -> pra_core::Result<FencingToken> {
    let r = s.change(
        SiteChange::Activate {
            site: site(name),
            expect: FencingToken(expect),
        },
        &Actor::new("ops", "test").unwrap(),
    )?;
    Ok(r.token)
}

fn deactivate(s: &dyn Store, expect: u64) -> pra_core::Result<FencingToken> {
    let r = s.change(
        SiteChange::Deactivate {
            expect: FencingToken(expect),
        },
        &Actor::new("ops", "test").unwrap(),
    )?;
    Ok(r.token)
}

#[test]
fn a_symlinked_lock_file_is_one_record_for_every_path_to_it() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("shared")).unwrap();
    fs::create_dir(dir.path().join("vm1")).unwrap();
    fs::create_dir(dir.path().join("vm2")).unwrap();
    let target = dir.path().join("shared/pra-status.lock");
    fs::write(&target, "ACTIVE_SITE=NONE\n").unwrap();
    let vm1 = dir.path().join("vm1/pra-status.lock");
    let vm2 = dir.path().join("vm2/pra-status.lock");
    // One relative and one absolute link.
    std::os::unix::fs::symlink("../shared/pra-status.lock", &vm1).unwrap();
    std::os::unix::fs::symlink(&target, &vm2).unwrap();
    let (a, b) = (open(&vm1), open(&vm2));
    assert_eq!(activate(&a, "rbx", 0).unwrap(), FencingToken(1));
    // The other path sees the change, and changes the same record.
    assert_eq!(b.load().unwrap().site, Some(site("rbx")));
    assert_eq!(deactivate(&b, 1).unwrap(), FencingToken(2));
    assert_eq!(activate(&a, "sbg", 2).unwrap(), FencingToken(3));
    for link in [&vm1, &vm2] {
        assert!(
            fs::symlink_metadata(link).unwrap().file_type().is_symlink(),
            "{} was replaced by a host-local file",
            link.display()
        );
        let s = open(link);
        assert_eq!(s.load().unwrap().token, FencingToken(3));
        assert_eq!(s.verify_journal().unwrap().entries, 3);
    }
    // The journal and the advisory lock live beside the target, not beside the links.
    assert!(dir.path().join("shared/pra-status.lock.journal").exists());
    assert!(dir.path().join("shared/pra-status.lock.pra-lock").exists());
    for vm in ["vm1", "vm2"] {
        let names: Vec<_> = fs::read_dir(dir.path().join(vm))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec!["pra-status.lock"], "{vm}");
    }
}

#[test]
fn the_seed_rewriting_the_file_is_refused_and_the_journal_kept() {
    let (_dir, p, jp, s) = fresh();
    activate(&s, "rbx", 0).unwrap();
    deactivate(&s, 1).unwrap();
    activate(&s, "sbg", 2).unwrap();
    let journal = fs::read(&jp).unwrap();
    // The seed's tooling (Ansible, a hand-run script) writes its own format.
    fs::write(&p, "ACTIVE_SITE=RBX\n").unwrap();
    let errors = [
        s.load().map(|_| ()).unwrap_err(),
        pra_core::check(&s, &site("rbx")).map(|_| ()).unwrap_err(),
        s.verify_journal().map(|_| ()).unwrap_err(),
        s.journal().map(|_| ()).unwrap_err(),
        activate(&s, "rbx", 0).map(|_| ()).unwrap_err(),
        deactivate(&s, 0).map(|_| ()).unwrap_err(),
    ];
    for e in errors {
        assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
        let msg = e.to_string();
        assert!(
            msg.contains(&p.display().to_string()) && msg.contains(&jp.display().to_string()),
            "the error must name the file and its journal: {msg}"
        );
        assert!(msg.contains("token 3"), "and what the journal says: {msg}");
    }
    assert_eq!(fs::read(&jp).unwrap(), journal, "the journal was changed");
}

#[test]
fn a_record_edited_behind_the_journal_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("pra-status.lock");
    let s = open(&p);
    activate(&s, "rbx", 0).unwrap();
    let good = fs::read_to_string(&p).unwrap();
    // `sed -i s/RBX/SBG/`: the token and the head still match, the site does not.
    fs::write(&p, good.replace("ACTIVE_SITE=RBX", "ACTIVE_SITE=SBG")).unwrap();
    for e in [
        s.verify_journal().map(|_| ()).unwrap_err(),
        deactivate(&s, 1).map(|_| ()).unwrap_err(),
    ] {
        assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
    }
    // A token moved back by hand.
    fs::write(&p, good.replace("TOKEN=1", "TOKEN=0")).unwrap();
    assert_eq!(
        s.verify_journal().unwrap_err().kind(),
        ErrorKind::Corrupt,
        "token"
    );
    // A head that is nowhere in the journal.
    let head = good
        .lines()
        .find_map(|l| l.strip_prefix("JOURNAL_HEAD="))
        .unwrap();
    fs::write(&p, good.replace(head, &"ab".repeat(32))).unwrap();
    assert_eq!(
        s.verify_journal().unwrap_err().kind(),
        ErrorKind::Corrupt,
        "head"
    );
    fs::write(&p, &good).unwrap();
    assert_eq!(deactivate(&s, 1).unwrap(), FencingToken(2));
}

#[test]
fn only_the_single_entry_of_an_interrupted_change_is_ever_rolled_back() {
    let (_dir, p, jp, s) = fresh();
    let initial = fs::read_to_string(&p).unwrap();
    activate(&s, "rbx", 0).unwrap();
    deactivate(&s, 1).unwrap();
    // The file put back two changes: that is no interrupted change.
    fs::write(&p, &initial).unwrap();
    let journal = fs::read(&jp).unwrap();
    let e = activate(&s, "sbg", 0).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
    assert_eq!(fs::read(&jp).unwrap(), journal, "entries were deleted");
}

/// Runs `script` in `sh` in `dir`.
fn sh(dir: &Path, script: &str) -> String {
    let o = Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "{script}: {o:?}");
    String::from_utf8(o.stdout).unwrap()
}

#[test]
fn sourcing_the_lock_file_is_safe_and_the_seeds_grep_finds_one_site() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("pra-status.lock");
    let s = open(&p);
    let reasons = [
        "x; touch PWNED",
        "$(touch PWNED) `touch PWNED` ACTIVE_SITE=SBG",
        "it's done; active_site=sbg Active_Site 'quoted' \\ back\\slash",
        "",
    ];
    let by = "o'brien ACTIVE_SITE=x";
    let mut expect = 0;
    for reason in reasons {
        let actor = Actor::new(by, reason).unwrap();
        let change = if expect % 2 == 0 {
            SiteChange::Activate {
                site: site("rbx"),
                expect: FencingToken(expect),
            }
        } else {
            SiteChange::Deactivate {
                expect: FencingToken(expect),
            }
        };
        s.change(change, &actor).unwrap();
        expect += 1;
        let want_site = if expect % 2 == 1 { "RBX" } else { "NONE" };
        let out = sh(
            dir.path(),
            ". ./pra-status.lock; printf '%s\\n%s\\n%s\\n%s\\n' \"$ACTIVE_SITE\" \"$TOKEN\" \"$CHANGED_BY\" \"$REASON\"",
        );
        assert_eq!(
            out,
            format!("{want_site}\n{expect}\n{by}\n{reason}\n"),
            "sourced"
        );
        assert!(!dir.path().join("PWNED").exists(), "sourcing ran a command");
        // The seed's wrapper.
        let out = sh(
            dir.path(),
            "grep ACTIVE_SITE pra-status.lock | cut -d= -f2; grep -ci active_site pra-status.lock",
        );
        assert_eq!(out, format!("{want_site}\n1\n"), "grep | cut");
        // And pra reads back what it wrote.
        let r = s.load().unwrap();
        assert_eq!((r.changed_by.as_str(), r.reason.as_str()), (by, reason));
        assert_eq!(s.verify_journal().unwrap().entries, expect);
    }
}

fn mkfifo(path: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
}

/// Runs `f` in a thread; fails the test if it has not returned within 5 seconds.
fn within<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(5))
        .unwrap_or_else(|_| panic!("{what} hangs"))
}

#[test]
fn special_and_huge_lock_files_are_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    mkfifo(&d.join("fifo.lock"));
    fs::File::create(d.join("big.lock"))
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    mkfifo(&d.join("state.db"));
    let s = open(&d.join("pra-status.lock"));
    mkfifo(&d.join("pra-status.lock.journal"));
    type Open = Box<dyn FnOnce() -> pra_core::Result<()> + Send>;
    let lock = |name: &str| -> Open {
        let p = d.join(name);
        Box::new(move || {
            FileStore::open(&p, Arc::new(SystemClock))?
                .load()
                .map(|_| ())
        })
    };
    let db = d.join("state.db");
    let cases: Vec<(&str, Open, ErrorKind, &str)> = vec![
        (
            "a FIFO lock file",
            lock("fifo.lock"),
            ErrorKind::StoreUnavailable,
            "FIFO",
        ),
        (
            "a 1 GB lock file",
            lock("big.lock"),
            ErrorKind::Corrupt,
            "KiB",
        ),
        (
            "a FIFO journal",
            Box::new(move || s.journal().map(|_| ())),
            ErrorKind::Io,
            "FIFO",
        ),
        (
            "a FIFO SQLite store",
            Box::new(move || SqliteStore::open(&db, Arc::new(SystemClock)).map(|_| ())),
            ErrorKind::StoreUnavailable,
            "FIFO",
        ),
    ];
    for (what, f, kind, word) in cases {
        let e = within(what, f).unwrap_err();
        assert_eq!(e.kind(), kind, "{what}: {e}");
        assert!(e.to_string().contains(word), "{what}: {e}");
    }
}

#[test]
fn a_rewritten_lock_file_keeps_its_mode_and_group() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("pra-status.lock");
    fs::write(&p, "ACTIVE_SITE=NONE\n").unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o640)).unwrap();
    // As root, another group (nogroup); otherwise this process's own.
    // SAFETY: geteuid and getegid have no preconditions.
    let gid = if unsafe { libc::geteuid() } == 0 {
        65534
    } else {
        unsafe { libc::getegid() }
    };
    std::os::unix::fs::chown(&p, None, Some(gid)).unwrap();
    let s = open(&p);
    activate(&s, "rbx", 0).unwrap();
    deactivate(&s, 1).unwrap();
    let m = fs::metadata(&p).unwrap();
    assert_eq!((m.mode() & 0o7777, m.gid()), (0o640, gid));
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

    /// Any `by` and `reason` an actor may have: read back as written by pra and by sh, and the
    /// seed's grep finds the site line alone.
    #[test]
    fn any_actor_text_is_read_back_by_pra_and_sh(
        by in "[a-zA-Z0-9_' $`;&|<>(){}\"\\\\*?#=~é-]{1,30}",
        reason in "[a-zA-Z_' $`;&|<>(){}\"\\\\*?#=~é-]{0,40}|.*ACTIVE_SITE=.*",
    ) {
        let Ok(actor) = Actor::new(&by, &reason) else { return Ok(()) };
        let (dir, p, _, s) = fresh();
        s.change(
            SiteChange::Activate { site: site("sbg"), expect: FencingToken(0) },
            &actor,
        )
        .unwrap();
        let r = s.load().unwrap();
        proptest::prop_assert_eq!((&r.changed_by, &r.reason), (&actor.by, &actor.reason));
        let text = fs::read_to_string(&p).unwrap();
        let site_lines: Vec<_> = text
            .lines()
            .filter(|l| l.to_ascii_uppercase().contains("ACTIVE_SITE"))
            .collect();
        proptest::prop_assert_eq!(site_lines, vec!["ACTIVE_SITE=SBG"]);
        let out = sh(
            dir.path(),
            ". ./pra-status.lock; printf '%s\\n%s\\n' \"$CHANGED_BY\" \"$REASON\"",
        );
        proptest::prop_assert_eq!(out, format!("{}\n{}\n", actor.by, actor.reason));
    }
}
