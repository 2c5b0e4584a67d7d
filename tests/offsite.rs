//! Offsite backups against a real S3-compatible server (moto, started per test on loopback):
//! plain and encrypted round trips, a wrong key, a standby site, an upload killed mid-multipart,
//! a corrupted object, verification and retention at the target, and a flip racing an upload.

#[path = "common/output.rs"]
mod output;

#[path = "common/s3.rs"]
mod s3_fixture;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use age::secrecy::ExposeSecret;
use chrono::{TimeZone, Utc};
use output::{code, json, ok, text};
use pra_core::backup::offsite::{self, Encryption, Offsite, RemoteTarget, S3Options};
use pra_core::backup::restore::RestorePoint;
use pra_core::backup::{self, Method};
use pra_core::{Actor, FencingToken, ManualClock, SiteChange, SiteId};
use s3_fixture::{BUCKET, S3};

/// A scratch deployment (store, database, backup dir) pointed at a moto server.
struct Env {
    dir: tempfile::TempDir,
    s3: S3,
}

impl Env {
    fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pra.toml"), "").unwrap();
        Env {
            dir,
            s3: S3::start(),
        }
    }
    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }
    fn store_url(&self) -> String {
        format!("sqlite://{}/state.db", self.dir.path().display())
    }
    fn cmd(&self, site: &str, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_pra"));
        c.args(args)
            .env("PRA_STORE", self.store_url())
            .env("PRA_SITES", "rbx,sbg")
            .env("PRA_SITE", site)
            .env("PRA_CONFIG", self.path("pra.toml"))
            .env("PRA_DB", self.path("app.db"))
            .env("PRA_BACKUP_DIR", self.path("backup"))
            .env_remove("RUST_LOG");
        for k in ["RECIPIENTS", "IDENTITY", "PASSPHRASE"] {
            c.env_remove(format!("PRA_BACKUP_AGE_{k}_FILE"));
        }
        self.s3.env(&mut c, "pra");
        c
    }
    fn on(&self, site: &str, args: &[&str]) -> Output {
        self.cmd(site, args).output().unwrap()
    }
    fn with(&self, site: &str, vars: &[(&str, &PathBuf)], args: &[&str]) -> Output {
        let mut c = self.cmd(site, args);
        for (k, v) in vars {
            c.env(k, v);
        }
        c.output().unwrap()
    }
    fn rows(&self, rows: u32) {
        let conn = rusqlite::Connection::open(self.path("app.db")).unwrap();
        conn.execute_batch("CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY, body TEXT)")
            .unwrap();
        for _ in 0..rows {
            conn.execute("INSERT INTO events (body) VALUES ('x')", [])
                .unwrap();
        }
    }
    fn count(&self) -> i64 {
        rusqlite::Connection::open(self.path("app.db"))
            .unwrap()
            .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
            .unwrap()
    }
    fn remote(&self) -> Vec<serde_json::Value> {
        json(&ok(self.on("rbx", &["backups", "--remote", "--json"])))
            .as_array()
            .unwrap()
            .clone()
    }
    fn activate(&self, site: &str, token: u64) {
        ok(self.on(
            site,
            &[
                "site",
                "activate",
                site,
                "--expect-token",
                &token.to_string(),
            ],
        ));
    }
    fn keys(&self) -> Vec<String> {
        self.s3.keys("pra/")
    }
}

/// An age X25519 identity file and its recipients file; returns (identity, recipients, public).
fn age_keys(env: &Env, tag: &str) -> (PathBuf, PathBuf, String) {
    let id = age::x25519::Identity::generate();
    let public = id.to_public().to_string();
    let idf = env.path(&format!("{tag}.key"));
    let rf = env.path(&format!("{tag}.pub"));
    std::fs::write(
        &idf,
        format!("# test key\n{}\n", id.to_string().expose_secret()),
    )
    .unwrap();
    std::fs::write(&rf, format!("{public}\n")).unwrap();
    (idf, rf, public)
}

#[test]
fn plain_and_encrypted_backups_round_trip_and_say_how_they_are_sealed() {
    let e = Env::new();
    e.activate("rbx", 0);
    e.rows(3);
    let v = json(&ok(e.on("rbx", &["backup", "--json"])));
    assert_eq!(v["manifest"]["encrypted"], false, "{v}");
    assert_eq!(v["manifest"]["token"], 1);
    let plain_key = v["manifest"]["key"].as_str().unwrap().to_string();
    assert!(
        plain_key.starts_with("t00000000000000000001/rbx/backup-"),
        "{plain_key}"
    );
    // The object at the target is the database itself.
    let (_, body) = e.s3.http("GET", &format!("/{BUCKET}/pra/{plain_key}"), b"");
    assert!(body.starts_with(b"SQLite format 3\0"));

    let (idf, rf, public) = age_keys(&e, "ops");
    e.rows(4);
    let v = json(&ok(e.with(
        "rbx",
        &[("PRA_BACKUP_AGE_RECIPIENTS_FILE", &rf)],
        &["backup", "--remote-only", "--json"],
    )));
    let key = v["manifest"]["key"].as_str().unwrap().to_string();
    assert!(key.ends_with(".db.age"), "{key}");
    assert_eq!(v["manifest"]["recipients"][0], public.as_str());
    // --remote-only: nothing of it left in the backup directory.
    let name = v["name"].as_str().unwrap();
    assert!(!e.path("backup").join(name).exists());
    // Ciphertext at the target, and the identity never in any object.
    let (_, body) = e.s3.http("GET", &format!("/{BUCKET}/pra/{key}"), b"");
    assert!(
        body.starts_with(b"age-encryption.org/v1"),
        "{:?}",
        &body[..32]
    );
    let secret = std::fs::read_to_string(&idf).unwrap();
    let secret = secret.lines().nth(1).unwrap();
    for k in e.keys() {
        let (_, b) = e.s3.http("GET", &format!("/{BUCKET}/{k}"), b"");
        assert!(!String::from_utf8_lossy(&b).contains(secret), "{k}");
    }
    let list = e.remote();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["manifest"]["encrypted"], true);
    let shown = text(&ok(e.on("rbx", &["backups", "--remote"])));
    assert!(
        shown.contains(&format!("encrypted ({public})")) && shown.contains("plaintext"),
        "{shown}"
    );

    // Restore the latest (encrypted) one with the identity: 7 rows.
    e.rows(10);
    ok(e.with(
        "rbx",
        &[("PRA_BACKUP_AGE_IDENTITY_FILE", &idf)],
        &["restore", "--remote", "--latest"],
    ));
    assert_eq!(e.count(), 7);
    // And the plain one by name: 3 rows.
    let plain_name = plain_key.rsplit('/').next().unwrap();
    ok(e.on("rbx", &["restore", "--remote", "--name", plain_name]));
    assert_eq!(e.count(), 3);

    // A passphrase (scrypt) works both ways too.
    let pp = e.path("pass");
    std::fs::write(&pp, "correct horse battery staple\n").unwrap();
    e.rows(2);
    let v = json(&ok(e.with(
        "rbx",
        &[("PRA_BACKUP_AGE_PASSPHRASE_FILE", &pp)],
        &["backup", "--json"],
    )));
    assert_eq!(v["manifest"]["recipients"][0], "scrypt (passphrase)");
    e.rows(1);
    ok(e.with(
        "rbx",
        &[("PRA_BACKUP_AGE_PASSPHRASE_FILE", &pp)],
        &["restore", "--remote", "--latest"],
    ));
    assert_eq!(e.count(), 5);
}

#[test]
fn unusable_or_wrong_keys_are_refused_and_nothing_is_written() {
    let e = Env::new();
    e.activate("rbx", 0);
    e.rows(3);
    // A configured key that cannot be used: an error before any backup or upload.
    let missing = e.path("nope.pub");
    let bad = e.path("bad.pub");
    std::fs::write(&bad, "not-a-key\n").unwrap();
    for f in [&missing, &bad] {
        let o = e.with("rbx", &[("PRA_BACKUP_AGE_RECIPIENTS_FILE", f)], &["backup"]);
        assert_eq!(code(&o), 3, "{}", text(&o));
        assert!(text(&o).contains("recipients file"), "{}", text(&o));
    }
    assert!(!e.path("backup").exists() || backup::list(&e.path("backup")).unwrap().is_empty());
    assert!(e.keys().is_empty(), "{:?}", e.keys());

    // An upload that fails (no such bucket) keeps the local backup, even with --remote-only.
    let mut c = e.cmd("rbx", &["backup", "--remote-only"]);
    c.env("PRA_BACKUP_TARGET", "s3://no-such-bucket/pra");
    let o = c.output().unwrap();
    assert_ne!(code(&o), 0, "{}", text(&o));
    assert_eq!(backup::list(&e.path("backup")).unwrap().len(), 1);

    let (_, rf, _) = age_keys(&e, "ops");
    let (other, _, _) = age_keys(&e, "intruder");
    ok(e.with(
        "rbx",
        &[("PRA_BACKUP_AGE_RECIPIENTS_FILE", &rf)],
        &["backup"],
    ));
    e.rows(5);
    // The wrong identity, and no identity at all: refused, the database untouched.
    let o = e.with(
        "rbx",
        &[("PRA_BACKUP_AGE_IDENTITY_FILE", &other)],
        &["restore", "--remote"],
    );
    assert_eq!(code(&o), 13, "{}", text(&o));
    let o = e.on("rbx", &["restore", "--remote"]);
    assert_eq!(code(&o), 3, "{}", text(&o));
    assert_eq!(e.count(), 8);
    // Nor does a verifier without the key mark the backup as failed.
    let o = e.with(
        "rbx",
        &[("PRA_BACKUP_AGE_IDENTITY_FILE", &other)],
        &["verify", "--remote"],
    );
    assert_eq!(code(&o), 13, "{}", text(&o));
    assert!(e.remote()[0]["verification"].is_null());
}

#[test]
fn a_standby_site_is_refused_before_anything_is_written() {
    let e = Env::new();
    e.activate("rbx", 0);
    e.rows(3);
    for args in [&["backup"][..], &["backup", "--remote-only"][..]] {
        let o = e.on("sbg", args);
        assert_eq!(code(&o), 13, "{}", text(&o));
        assert!(text(&o).contains("not the active site"), "{}", text(&o));
    }
    assert!(e.keys().is_empty(), "{:?}", e.keys());
    assert!(!e.path("backup").exists() || backup::list(&e.path("backup")).unwrap().is_empty());
    // No site active at all: refused too.
    ok(e.on("rbx", &["site", "deactivate", "--expect-token", "1"]));
    assert_eq!(code(&e.on("rbx", &["backup"])), 13);
    // --local-only still takes a local backup anywhere.
    ok(e.on("sbg", &["backup", "--local-only"]));
    assert!(e.keys().is_empty());
}

#[test]
fn an_upload_killed_mid_multipart_is_never_listed_and_restore_still_works() {
    let e = Env::new();
    e.activate("rbx", 0);
    e.rows(3);
    ok(e.on("rbx", &["backup"]));
    let before = e.remote();
    assert_eq!(before.len(), 1);
    // Big enough for several parts of PART_SIZE (incompressible rows).
    let parts = 5;
    {
        let conn = rusqlite::Connection::open(e.path("app.db")).unwrap();
        conn.execute_batch(&format!(
            "CREATE TABLE blobs (b BLOB);
             WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < {})
             INSERT INTO blobs SELECT randomblob(4000) FROM c;",
            parts * offsite::PART_SIZE / 4000
        ))
        .unwrap();
    }
    let mut child = e
        .cmd("rbx", &["backup", "--remote-only"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Killed as soon as the server holds its multipart upload: mid-upload, not before.
    let deadline = Instant::now() + Duration::from_secs(60);
    while e.s3.pending_uploads() == 0 {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the upload ended before it was seen"
        );
        assert!(Instant::now() < deadline, "no multipart upload started");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(
        e.s3.pending_uploads(),
        1,
        "the kill left an incomplete upload"
    );
    // Not listed; the latest is unchanged; restore from it works.
    assert_eq!(e.remote(), before);
    ok(e.on("rbx", &["restore", "--remote", "--latest"]));
    assert_eq!(e.count(), 3);
    // The next upload aborts the dead process's leftover (noted in the backup directory).
    ok(e.on("rbx", &["backup"]));
    assert_eq!(
        e.s3.pending_uploads(),
        0,
        "the leftover upload was not cleaned up"
    );
    assert_eq!(e.remote().len(), 2);
}

#[test]
fn a_corrupted_object_is_caught_before_restore_and_recorded_by_verify() {
    let e = Env::new();
    e.activate("rbx", 0);
    e.rows(3);
    ok(e.on("rbx", &["backup"]));
    e.rows(3);
    let v = json(&ok(e.on("rbx", &["backup", "--json"])));
    let key = v["manifest"]["key"].as_str().unwrap().to_string();
    // Never verified: no verification time yet. verify marks both good; the metric follows.
    let metrics = |e: &Env| text(&ok(e.on("rbx", &["metrics"])));
    let m = metrics(&e);
    assert!(
        m.contains("pra_offsite_up 1") && m.contains("pra_offsite_backups 2"),
        "{m}"
    );
    assert!(
        !m.contains("pra_offsite_last_verified_timestamp_seconds"),
        "{m}"
    );
    let before = chrono::Utc::now().timestamp();
    ok(e.on("rbx", &["verify", "--remote"]));
    assert!(e.remote().iter().all(|b| b["verification"]["ok"] == true));
    let m = metrics(&e);
    let at: i64 = m
        .lines()
        .find_map(|l| l.strip_prefix("pra_offsite_last_verified_timestamp_seconds "))
        .unwrap_or_else(|| panic!("{m}"))
        .parse()
        .unwrap();
    assert!(
        (before - 1..=chrono::Utc::now().timestamp()).contains(&at),
        "{m}"
    );
    // Flip one byte of the newest object, same length.
    let path = format!("/{BUCKET}/pra/{key}");
    let (_, mut body) = e.s3.http("GET", &path, b"");
    let n = body.len();
    body[n - 100] ^= 0xff;
    assert_eq!(e.s3.http("PUT", &path, &body).0, 200);
    e.rows(1);
    let o = e.on("rbx", &["restore", "--remote", "--latest"]);
    assert_eq!(code(&o), 10, "{}", text(&o));
    assert!(text(&o).contains("checksum"), "{}", text(&o));
    assert_eq!(e.count(), 7, "the database was touched");
    let o = e.on("rbx", &["verify", "--remote", "--sample", "1"]);
    assert_eq!(code(&o), 10, "{}", text(&o));
    let list = e.remote();
    assert_eq!(list[0]["verification"]["ok"], false);
    assert_eq!(list[1]["verification"]["ok"], true);
    // Retention never removes the newest verified backup, whatever the rule says.
    let v = json(&ok(
        e.on("rbx", &["prune", "--remote", "--keep-last", "1", "--json"])
    ));
    assert!(
        v.as_array().unwrap().iter().all(|d| d["keep"] == true),
        "{v}"
    );
    e.rows(1);
    ok(e.on("rbx", &["backup"]));
    ok(e.on("rbx", &["verify", "--remote", "--sample", "1"]));
    let v = json(&ok(
        e.on("rbx", &["prune", "--remote", "--keep-last", "1", "--json"])
    ));
    let gone: Vec<_> = v
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["keep"] == false)
        .collect();
    assert_eq!(gone.len(), 2, "{v}");
    assert_eq!(e.remote().len(), 1);
    assert_eq!(e.keys().len(), 3, "{:?}", e.keys()); // data, manifest, verification
}

/// A target that runs `hook` once an object is written: a flip racing an upload.
struct Racing<'a> {
    inner: &'a dyn RemoteTarget,
    hook: Box<dyn Fn(&str) + Send + Sync + 'a>,
}

impl RemoteTarget for Racing<'_> {
    fn url(&self) -> &str {
        self.inner.url()
    }
    fn put(
        &self,
        key: &str,
        fill: &mut dyn FnMut(&mut dyn Write) -> pra_core::Result<()>,
    ) -> pra_core::Result<u64> {
        let n = self.inner.put(key, fill)?;
        (self.hook)(key);
        Ok(n)
    }
    fn put_small(&self, key: &str, data: &[u8]) -> pra_core::Result<()> {
        (self.hook)(key);
        self.inner.put_small(key, data)
    }
    fn get<'a>(&'a self, key: &str) -> pra_core::Result<Box<dyn std::io::Read + Send + 'a>> {
        self.inner.get(key)
    }
    fn list(&self) -> pra_core::Result<Vec<offsite::ObjectInfo>> {
        self.inner.list()
    }
    fn delete(&self, key: &str) -> pra_core::Result<()> {
        self.inner.delete(key)
    }
    fn head(&self, key: &str) -> pra_core::Result<Option<u64>> {
        self.inner.head(key)
    }
}

#[test]
fn a_flip_racing_an_upload_never_makes_the_old_sites_backup_the_latest() {
    let e = Env::new();
    // Credentials given, not read from this process's environment (other tests' threads spawn
    // processes meanwhile: setting variables here would race them).
    let target = offsite::S3Target::open(
        &format!("s3://{BUCKET}/pra"),
        &S3Options {
            endpoint: Some(e.s3.endpoint()),
            region: Some("us-east-1".into()),
            static_credentials: Some(("testing".into(), "testing".into())),
        },
    )
    .unwrap();
    let store = pra_core::open(&e.store_url()).unwrap();
    let actor = Actor::new("test", "race").unwrap();
    let (rbx, sbg) = (SiteId::new("rbx").unwrap(), SiteId::new("sbg").unwrap());
    let flip = |to: &SiteId, at: u64| {
        store
            .change(
                SiteChange::Deactivate {
                    expect: FencingToken(at),
                },
                &actor,
            )
            .unwrap();
        store
            .change(
                SiteChange::Activate {
                    site: to.clone(),
                    expect: FencingToken(at + 1),
                },
                &actor,
            )
            .unwrap();
    };
    store
        .change(
            SiteChange::Activate {
                site: rbx.clone(),
                expect: FencingToken(0),
            },
            &actor,
        )
        .unwrap();
    e.rows(3);
    let enc = Encryption::default();
    let t0 = Utc.with_ymd_and_hms(2026, 1, 1, 12, 0, 0).unwrap();
    let local = |at: chrono::DateTime<Utc>, dir: &str| {
        backup::create(
            &e.path("app.db"),
            &e.path(dir),
            Method::Auto,
            &ManualClock::new(at),
        )
        .unwrap()
    };

    // A flip while the data object is being written: caught by the second look, the object
    // deleted, the upload refused.
    let b = local(t0, "b1");
    let racing = Racing {
        inner: &target,
        hook: Box::new(|key| {
            if !key.ends_with(".json") && store.load().unwrap().site.as_ref() == Some(&rbx) {
                flip(&sbg, 1);
            }
        }),
    };
    let off = Offsite {
        target: &racing,
        encryption: &enc,
    };
    let err = off
        .upload(store.as_ref(), &rbx, &b, &ManualClock::new(t0))
        .unwrap_err();
    assert_eq!(err.kind(), pra_core::ErrorKind::Refused, "{err}");
    assert!(e.keys().is_empty(), "{:?}", e.keys());

    // A flip after the second look, before the manifest: the old token's backup lands, newer
    // in time than the new site's, yet ranks below it.
    let plain = Offsite {
        target: &target,
        encryption: &enc,
    };
    let sbg_backup = local(t0, "b2");
    plain
        .upload(store.as_ref(), &sbg, &sbg_backup, &ManualClock::new(t0))
        .unwrap(); // token 3
    flip(&rbx, 3); // rbx at token 5
    e.rows(4);
    let late = local(t0 + chrono::Duration::hours(1), "b3");
    let racing = Racing {
        inner: &target,
        hook: Box::new(|key| {
            if key.ends_with(".manifest.json") && store.load().unwrap().site.as_ref() == Some(&rbx)
            {
                flip(&sbg, 5); // sbg at token 7, rbx's token 5 now stale
            }
        }),
    };
    Offsite {
        target: &racing,
        encryption: &enc,
    }
    .upload(store.as_ref(), &rbx, &late, &ManualClock::new(t0))
    .unwrap();
    let sbg_new = local(t0 - chrono::Duration::hours(1), "b4");
    plain
        .upload(store.as_ref(), &sbg, &sbg_new, &ManualClock::new(t0))
        .unwrap(); // token 7
    let list = plain.list().unwrap();
    let order: Vec<(u64, &str)> = list
        .iter()
        .map(|r| (r.manifest.token.0, r.manifest.site.as_str()))
        .collect();
    assert_eq!(order, vec![(7, "sbg"), (5, "rbx"), (3, "sbg")]);
    assert!(list[1].manifest.backup.created_at > list[0].manifest.backup.created_at);
    assert_eq!(
        plain.select(&RestorePoint::Latest).unwrap().manifest.token,
        FencingToken(7)
    );
}

#[test]
fn the_drill_restores_its_lost_database_from_the_offsite_target() {
    let e = Env::new();
    let pp = e.path("pass");
    std::fs::write(&pp, "drill passphrase\n").unwrap();
    let mut c = Command::new(env!("CARGO_BIN_EXE_pra"));
    c.args(["drill", "--remote", "--quiet", "--json", "--dir"])
        .arg(e.path("drill"))
        .env_remove("PRA_CONFIG")
        .env_remove("RUST_LOG")
        .env("PRA_BACKUP_AGE_PASSPHRASE_FILE", &pp);
    e.s3.env(&mut c, "drill");
    let o = ok(c.output().unwrap());
    let report = json(&o);
    assert_eq!(report["passed"], true, "{report}");
    let restored = report["restore"]["backup"].as_str().unwrap();
    // The one upload of the scenario (rbx, active again after the failback), encrypted, and
    // the backup the drill restored.
    let keys = e.s3.keys("drill/");
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert!(
        keys[0].starts_with("drill/t00000000000000000005/rbx/")
            && keys[0].ends_with(&format!("{restored}.age")),
        "{keys:?} {restored}"
    );
    // The staging copy is gone once restored, and no upload is noted as in progress.
    let staging = e.path("drill/backup/.offsite");
    let left: Vec<_> = std::fs::read_dir(&staging)
        .unwrap()
        .map(|f| f.unwrap().path())
        .filter(|p| !p.is_dir() || std::fs::read_dir(p).unwrap().next().is_some())
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
