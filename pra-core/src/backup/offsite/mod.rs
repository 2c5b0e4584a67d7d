//! Offsite backups: a narrow remote-target trait ([`RemoteTarget`]: put / get / list / delete /
//! head, as Litestream's ReplicaClient) and the rules written once above it — only the active
//! site uploads, under its fencing token; the catalog orders by token, then time; a backup is
//! listed only once its manifest (written last) exists; every download is checksummed and
//! `quick_check`ed before anything is restored; retention never removes the newest verified
//! backup.
//!
//! Layout under the target: `t<token, 20 digits>/<site>/<backup name>` (the data object, `.age`
//! appended when encrypted), `<that>.manifest.json` (the commit marker, written after the data
//! object is complete) and `<that>.verified.json` (the last remote verification's result).

mod crypt;
mod s3;

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use crypt::Encryption;
pub use s3::{PART_SIZE, S3Options, S3Target};

use super::name::TEMP_PREFIX;
use super::restore::{self, RestorePoint};
use super::retention::{self, Decision, Policy};
use super::{BackupEntry, BackupName, Health, Manifest, check_and_count, open_regular};
use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::fencing::FencingToken;
use crate::site::SiteId;
use crate::store::Store;

/// One object at the target, its key relative to the target's prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Key under the target's prefix.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
}

/// What an object store must offer. Keys are relative to the target's prefix; every call
/// blocks. Implementations own their I/O (and runtime); the rules live in this module.
pub trait RemoteTarget: Send + Sync {
    /// The target's URL (no credentials).
    fn url(&self) -> &str;
    /// Writes an object whose content `fill` streams into the writer it is given; the object
    /// exists only if `fill` and the upload both succeed (a failed upload leaves nothing
    /// listable). Returns the bytes written.
    fn put(&self, key: &str, fill: &mut dyn FnMut(&mut dyn Write) -> Result<()>) -> Result<u64>;
    /// Writes a small object in one request.
    fn put_small(&self, key: &str, data: &[u8]) -> Result<()>;
    /// Streams an object.
    fn get<'a>(&'a self, key: &str) -> Result<Box<dyn Read + Send + 'a>>;
    /// Every complete object under the prefix.
    fn list(&self) -> Result<Vec<ObjectInfo>>;
    /// Deletes an object (absent is fine).
    fn delete(&self, key: &str) -> Result<()>;
    /// An object's size, `None` if absent.
    fn head(&self, key: &str) -> Result<Option<u64>>;
    /// Aborts what uploads of dead processes left behind (incomplete, never listed); returns
    /// how many. Targets that leave nothing behind have nothing to do.
    fn cleanup(&self) -> Result<usize> {
        Ok(0)
    }
}

/// Opens the target a `backup_target` URL names; `pending` is where it notes its multipart
/// uploads in progress (see [`S3Target::with_pending_dir`]).
pub fn open(url: &str, opts: &S3Options, pending: Option<&Path>) -> Result<Box<dyn RemoteTarget>> {
    let t = S3Target::open(url, opts)?;
    Ok(Box::new(match pending {
        Some(dir) => t.with_pending_dir(dir),
        None => t,
    }))
}

const MANIFEST_SUFFIX: &str = ".manifest.json";
const VERIFIED_SUFFIX: &str = ".verified.json";

/// The manifest of an offsite backup: the local manifest plus who wrote it and how it is sealed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteManifest {
    /// The data object's key.
    pub key: String,
    /// The fencing token under which the active site uploaded it.
    pub token: FencingToken,
    /// The site that uploaded it.
    pub site: String,
    /// When the upload finished.
    pub uploaded_at: DateTime<Utc>,
    /// Whether the object is age-encrypted.
    pub encrypted: bool,
    /// To whom: the recipients' public keys, or "scrypt (passphrase)"; never a secret.
    pub recipients: Vec<String>,
    /// The data object's size (ciphertext when encrypted).
    pub object_size: u64,
    /// The backup's own manifest (its checksum is the plaintext database's).
    pub backup: Manifest,
}

/// The result of the last verification of a remote backup (`pra verify --remote`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verification {
    /// When it ran.
    pub at: DateTime<Utc>,
    /// Whether download, decryption, checksum and `quick_check` all passed.
    pub ok: bool,
    /// What failed, or "ok".
    pub detail: String,
}

/// One backup at the target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteEntry {
    /// Backup name.
    pub name: String,
    /// Its manifest.
    pub manifest: RemoteManifest,
    /// The last remote verification, if any.
    pub verification: Option<Verification>,
}

impl RemoteEntry {
    /// Whether a remote verification passed and is the last one recorded.
    pub fn verified(&self) -> bool {
        self.verification.as_ref().is_some_and(|v| v.ok)
    }
}

/// Where a remote backup goes: the target, the key's encryption, this site and the store.
pub struct Offsite<'a> {
    /// The object store.
    pub target: &'a dyn RemoteTarget,
    /// Encryption of uploads, decryption of downloads.
    pub encryption: &'a Encryption,
}

fn data_key(token: FencingToken, site: &str, name: &str, encrypted: bool) -> String {
    format!(
        "t{:020}/{site}/{name}{}",
        token.0,
        if encrypted { ".age" } else { "" }
    )
}

impl Offsite<'_> {
    /// Uploads the local backup `entry` under the active site's fencing token. Refused before
    /// anything is written when `site` is not the active site of `store`, when the encryption
    /// key cannot be used, or when the backup has no verified manifest. After the data object is
    /// complete the record is read again: if the site lost its activation meanwhile, the object
    /// is deleted and the upload refused (and, had the manifest raced the flip, its older token
    /// would still rank it below every newer site's backups).
    pub fn upload(
        &self,
        store: &dyn Store,
        site: &SiteId,
        entry: &BackupEntry,
        clock: &dyn Clock,
    ) -> Result<RemoteEntry> {
        let sealer = self.encryption.sealer()?;
        let manifest = match (&entry.health, &entry.manifest) {
            (Health::Verified, Some(m)) => m.clone(),
            _ => {
                return Err(Error::Refused(format!(
                    "backup {} is not verified: only verified backups are uploaded",
                    entry.name
                )));
            }
        };
        let token = active_token(store, site)?;
        if let Err(e) = self.target.cleanup() {
            tracing::warn!(error = %e, "could not clean up dead uploads");
        }
        let key = data_key(token, site.as_str(), &entry.name, sealer.is_some());
        let mut src = open_regular(&entry.path).map_err(|e| Error::io("open", &entry.path, e))?;
        let object_size = self.target.put(&key, &mut |w: &mut dyn Write| {
            let copy = |src: &mut fs::File, w: &mut dyn Write| {
                io::copy(src, w)
                    .map(|_| ())
                    .map_err(|e| Error::io("upload", &entry.path, e))
            };
            match &sealer {
                None => copy(&mut src, w),
                Some(s) => {
                    let mut sealed = s.seal(w)?;
                    copy(&mut src, &mut sealed)?;
                    sealed
                        .finish()
                        .map(|_| ())
                        .map_err(|e| Error::io("encrypt", &entry.path, e))
                }
            }
        })?;
        if let Err(e) = active_token(store, site).and_then(|now| {
            if now == token {
                Ok(())
            } else {
                Err(Error::Refused(format!(
                    "the active-site record moved from token {token} to {now} during the upload"
                )))
            }
        }) {
            let _ = self.target.delete(&key);
            return Err(e);
        }
        let rm = RemoteManifest {
            key: key.clone(),
            token,
            site: site.as_str().to_string(),
            uploaded_at: clock.now(),
            encrypted: sealer.is_some(),
            recipients: sealer.as_ref().map(|s| s.describe()).unwrap_or_default(),
            object_size,
            backup: manifest,
        };
        let json = serde_json::to_vec_pretty(&rm).map_err(|e| Error::Internal(e.to_string()))?;
        self.target
            .put_small(&format!("{key}{MANIFEST_SUFFIX}"), &json)?;
        tracing::info!(
            key,
            object_size,
            encrypted = rm.encrypted,
            "backup uploaded"
        );
        Ok(RemoteEntry {
            name: entry.name.clone(),
            manifest: rm,
            verification: None,
        })
    }

    /// The target's backups, best first: highest fencing token, then newest. Objects without a
    /// manifest (an upload cut short, or refused after a flip) are not listed.
    pub fn list(&self) -> Result<Vec<RemoteEntry>> {
        let objects = self.target.list()?;
        let keys: std::collections::HashSet<&str> =
            objects.iter().map(|o| o.key.as_str()).collect();
        let mut out = Vec::new();
        for o in &objects {
            let Some(data) = o.key.strip_suffix(MANIFEST_SUFFIX) else {
                continue;
            };
            if !keys.contains(data) {
                tracing::warn!(key = data, "manifest without its data object: not listed");
                continue;
            }
            let m: RemoteManifest = match read_json(self.target, &o.key) {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(key = %o.key, error = %e, "unreadable manifest: not listed");
                    continue;
                }
            };
            if m.key != data {
                tracing::warn!(key = %o.key, "manifest names another object: not listed");
                continue;
            }
            let verified_key = format!("{data}{VERIFIED_SUFFIX}");
            let verification = if keys.contains(verified_key.as_str()) {
                read_json(self.target, &verified_key).ok()
            } else {
                None
            };
            out.push(RemoteEntry {
                name: m.backup.file.clone(),
                manifest: m,
                verification,
            });
        }
        out.sort_by(|a, b| {
            (
                b.manifest.token,
                b.manifest.backup.created_at,
                &b.manifest.key,
            )
                .cmp(&(
                    a.manifest.token,
                    a.manifest.backup.created_at,
                    &a.manifest.key,
                ))
        });
        Ok(out)
    }

    /// The backup `point` designates: the first (highest token, newest) for `Latest`; the best
    /// taken at or before the time for `Before`; by backup name or data key for `Name`.
    pub fn select(&self, point: &RestorePoint) -> Result<RemoteEntry> {
        let list = self.list()?;
        let found = match point {
            RestorePoint::Latest => list.into_iter().next(),
            RestorePoint::Before(t) => list
                .into_iter()
                .find(|e| e.manifest.backup.created_at <= *t),
            RestorePoint::Name(n) => list
                .into_iter()
                .find(|e| &e.name == n || &e.manifest.key == n),
        };
        found.ok_or_else(|| Error::NotFound(format!("no such backup at {}", self.target.url())))
    }

    /// Downloads `entry` into `staging` (created 0700), decrypting it, and checks its checksum
    /// against the manifest and its `quick_check`; returns the verified file's path, named as
    /// the backup, with its local manifest beside it. Nothing is left behind on failure.
    pub fn fetch(&self, entry: &RemoteEntry, staging: &Path) -> Result<PathBuf> {
        crate::fsutil::create_private_dir(staging)?;
        let name = &entry.manifest.backup.file;
        // A bare backup name (no separators, no `..`): it becomes a file name here.
        super::validate_name(name)?;
        let tmp = staging.join(format!("{TEMP_PREFIX}{}-{name}", std::process::id()));
        let result = (|| {
            let raw = self.target.get(&entry.manifest.key)?;
            let mut src: Box<dyn Read + '_> = if entry.manifest.encrypted {
                self.encryption.open(raw)?
            } else {
                raw
            };
            let want = entry
                .manifest
                .backup
                .checksum()
                .ok_or_else(|| Error::Corrupt {
                    what: format!("offsite backup {}", entry.manifest.key),
                    detail: "its manifest records no checksum".into(),
                })?;
            let mut f = crate::fsutil::create_private_file(&tmp)?;
            let mut h = HashingWriter {
                inner: &mut f,
                hash: super::checksum::Hasher::new(want.algorithm),
            };
            io::copy(&mut src, &mut h).map_err(|e| match e.kind() {
                io::ErrorKind::InvalidData => Error::Corrupt {
                    what: format!("offsite backup {}", entry.manifest.key),
                    detail: format!("decryption failed: {e}"),
                },
                _ => Error::io("download", &tmp, e),
            })?;
            let got = h.hash.finish();
            f.sync_all().map_err(|e| Error::io("fsync", &tmp, e))?;
            if got != want {
                return Err(Error::Corrupt {
                    what: format!("offsite backup {}", entry.manifest.key),
                    detail: format!(
                        "{} checksum {} differs from the manifest's {}",
                        got.algorithm.name(),
                        got.hex,
                        want.hex
                    ),
                });
            }
            let (check, _) = check_and_count(&tmp)?;
            if check != "ok" {
                return Err(Error::Corrupt {
                    what: format!("offsite backup {}", entry.manifest.key),
                    detail: format!("quick_check: {check}"),
                });
            }
            let dst = staging.join(name);
            fs::rename(&tmp, &dst).map_err(|e| Error::io("rename", &dst, e))?;
            let json = serde_json::to_vec_pretty(&entry.manifest.backup)
                .map_err(|e| Error::Internal(e.to_string()))?;
            crate::fsutil::write_atomic(
                &staging.join(format!("{name}.json")),
                &json,
                crate::fsutil::Sharing::PRIVATE,
            )?;
            Ok(dst)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    /// Restores the remote backup `point` designates over `db`: fetched and verified into
    /// `staging` first (nothing touches `db` if that fails), then through the local restore
    /// path (exclusive lock, safety copy, atomic rename).
    pub fn restore(
        &self,
        db: &Path,
        staging: &Path,
        point: &RestorePoint,
        opts: restore::Options,
        clock: &dyn Clock,
    ) -> Result<restore::Report> {
        let entry = self.select(point)?;
        let file = self.fetch(&entry, staging)?;
        let name = entry.manifest.backup.file.clone();
        let r = restore::restore(db, staging, &RestorePoint::Name(name.clone()), opts, clock);
        let _ = fs::remove_file(&file);
        let _ = fs::remove_file(staging.join(format!("{name}.json")));
        r
    }

    /// Verifies up to `sample` backups (all with `None`; the newest first): download, decrypt,
    /// checksum, `quick_check`; records each result at the target. Returns the results.
    pub fn verify(
        &self,
        staging: &Path,
        sample: Option<usize>,
        clock: &dyn Clock,
    ) -> Result<Vec<(RemoteEntry, Verification)>> {
        let list = self.list()?;
        let n = sample.unwrap_or(list.len());
        let mut out = Vec::new();
        for e in list.into_iter().take(n) {
            let v = match self.fetch(&e, staging) {
                Ok(p) => {
                    let _ = fs::remove_file(&p);
                    let _ = fs::remove_file(staging.join(format!("{}.json", e.name)));
                    Verification {
                        at: clock.now(),
                        ok: true,
                        detail: "ok".into(),
                    }
                }
                // Only what is wrong with the object is recorded against it; a verifier without
                // the right key, or a target it cannot reach, is an error of this run.
                Err(err @ Error::Corrupt { .. }) => Verification {
                    at: clock.now(),
                    ok: false,
                    detail: err.to_string(),
                },
                Err(err) => return Err(err),
            };
            let json = serde_json::to_vec_pretty(&v).map_err(|e| Error::Internal(e.to_string()))?;
            self.target
                .put_small(&format!("{}{VERIFIED_SUFFIX}", e.manifest.key), &json)?;
            out.push((e, v));
        }
        Ok(out)
    }

    /// Applies `policy` to the target with the local rules; the newest verified backup (by
    /// token, then time) is always kept. Deletes the manifest first, so that a prune cut short
    /// leaves an unlisted object rather than a listed one without data.
    pub fn prune(&self, policy: &Policy, dry_run: bool) -> Result<Vec<Decision>> {
        if !dry_run {
            self.target.cleanup()?;
        }
        let list = self.list()?;
        let entries: Vec<BackupEntry> = list.iter().map(as_entry).collect();
        let mut decisions = retention::decide(&entries, policy)?;
        let keep_key = list
            .iter()
            .find(|e| e.verified())
            .map(|e| e.manifest.key.clone());
        for d in &mut decisions {
            if !d.keep && keep_key.as_deref() == Some(d.entry.path.to_str().unwrap_or("")) {
                d.keep = true;
                d.reasons.push("newest verified".into());
            }
        }
        if !dry_run {
            for d in decisions.iter().filter(|d| !d.keep) {
                let key = d.entry.path.to_string_lossy().to_string();
                self.target.delete(&format!("{key}{MANIFEST_SUFFIX}"))?;
                self.target.delete(&format!("{key}{VERIFIED_SUFFIX}"))?;
                self.target.delete(&key)?;
            }
        }
        Ok(decisions)
    }
}

/// A remote backup in the shape the retention rules decide on (its path is its data key).
fn as_entry(e: &RemoteEntry) -> BackupEntry {
    BackupEntry {
        name: e.name.clone(),
        path: PathBuf::from(&e.manifest.key),
        id: BackupName::parse(&e.name).unwrap_or(BackupName {
            time: e.manifest.backup.created_at,
            seq: 0,
        }),
        size: e.manifest.object_size,
        health: if e.verified() {
            Health::Verified
        } else {
            Health::Unverified
        },
        manifest: Some(e.manifest.backup.clone()),
    }
}

/// The token of the active-site record if `site` is the active site; refused otherwise. What
/// an upload checks before it starts (callers check it before even taking the backup).
pub fn active_token(store: &dyn Store, site: &SiteId) -> Result<FencingToken> {
    let rec = store.load()?;
    match &rec.site {
        Some(s) if s == site => Ok(rec.token),
        other => Err(Error::Refused(format!(
            "site {site} is not the active site ({}): only the active site uploads backups",
            other.as_ref().map_or("none".to_string(), |s| s.to_string())
        ))),
    }
}

fn read_json<T: serde::de::DeserializeOwned>(t: &dyn RemoteTarget, key: &str) -> Result<T> {
    let mut b = Vec::new();
    t.get(key)?
        .take(crate::fsutil::SMALL_FILE_LIMIT)
        .read_to_end(&mut b)
        .map_err(|e| Error::StoreUnavailable {
            url: t.url().to_string(),
            reason: format!("read {key}: {e}"),
        })?;
    serde_json::from_slice(&b).map_err(|e| Error::Corrupt {
        what: format!("{key} at {}", t.url()),
        detail: e.to_string(),
    })
}

struct HashingWriter<'a, W: Write> {
    inner: &'a mut W,
    hash: super::checksum::Hasher,
}

impl<W: Write> Write for HashingWriter<'_, W> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(b)?;
        self.hash.update(&b[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// When the newest successful remote verification happened, `None` if none passed. A time,
/// not an age: an age frozen in a stale textfile would look fresh.
pub fn last_verified(list: &[RemoteEntry]) -> Option<DateTime<Utc>> {
    list.iter()
        .filter_map(|e| e.verification.as_ref().filter(|v| v.ok).map(|v| v.at))
        .max()
}
