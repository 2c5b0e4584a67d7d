//! Checksum verification of backups, cached per file by size, mtime, ctime and inode in a small
//! file of the backup directory, so that each backup is hashed once per change, not per call.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{BackupEntry, Health, checksum, open_regular};
use crate::fsutil::write_atomic;

/// The cache's file name in pra's subdirectory of a backup directory ([`super::index::STATE_DIR`]:
/// writing it changes nothing in the backup directory, so that the index stays fresh).
pub const CACHE_FILE: &str = "verified.cache";

/// What identifies one state of a file without reading it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Stamp {
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    ino: u64,
}

impl Stamp {
    fn of(path: &Path) -> Option<Stamp> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path).ok()?;
        m.is_file().then(|| Stamp {
            size: m.len(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
            ino: m.ino(),
        })
    }
}

/// One verified file: its state when it was hashed, and the hash (the manifest's, hex; the
/// field keeps its first name, whatever the algorithm).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Seen {
    #[serde(flatten)]
    stamp: Stamp,
    sha256: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct CacheDoc {
    format: u32,
    files: BTreeMap<String, Seen>,
}

/// Verifies the checksums of a directory's backups, through its cache.
#[derive(Debug)]
pub(crate) struct Verifier {
    dir: PathBuf,
    doc: CacheDoc,
    dirty: bool,
}

impl Verifier {
    /// Loads the cache of `dir`; a missing or unreadable one is empty (everything is hashed).
    pub(crate) fn load(dir: &Path) -> Verifier {
        let path = dir.join(super::index::STATE_DIR).join(CACHE_FILE);
        let doc = open_regular(&path)
            .and_then(|mut f| {
                let mut b = Vec::new();
                f.read_to_end(&mut b).map(|_| b)
            })
            .ok()
            .and_then(|b| serde_json::from_slice::<CacheDoc>(&b).ok())
            .filter(|d| d.format == 1)
            .unwrap_or_default();
        Verifier {
            dir: dir.to_path_buf(),
            doc,
            dirty: false,
        }
    }

    /// A verifier that trusts nothing it cached: every backup is hashed again (for deletions:
    /// bytes changed through a shared memory map, or rotting on disk, change no stamp).
    pub(crate) fn fresh(dir: &Path) -> Verifier {
        let mut v = Verifier::load(dir);
        v.dirty |= !v.doc.files.is_empty();
        v.doc.files.clear();
        v
    }

    /// `entry` with its checksum verified: an entry whose cheap checks passed
    /// ([`Health::Verified`]) stays so only if the file hashes to its manifest's checksum (or did
    /// when last hashed, in the same size, mtime, ctime and inode); otherwise it is corrupt.
    pub(crate) fn check(&mut self, mut entry: BackupEntry) -> BackupEntry {
        let Some(want) = entry
            .manifest
            .as_ref()
            .filter(|_| entry.health == Health::Verified)
            .and_then(|m| m.checksum())
        else {
            return entry;
        };
        // Taken before the hash: a change during the hash gives a new stamp next time.
        let stamp = Stamp::of(&entry.path);
        if let (Some(stamp), Some(seen)) = (&stamp, self.doc.files.get(&entry.name))
            && seen.stamp == *stamp
            && seen.sha256 == want.hex
        {
            return entry;
        }
        let got = checksum::of_file(&entry.path, want.algorithm);
        match (got, stamp) {
            (Ok(sum), Some(stamp)) if sum == want => {
                self.doc.files.insert(
                    entry.name.clone(),
                    Seen {
                        stamp,
                        sha256: sum.hex,
                    },
                );
                self.dirty = true;
            }
            (got, _) => {
                let reason = match got {
                    Ok(sum) => format!(
                        "{} checksum {} does not match the manifest's {}: the file changed since it was taken",
                        sum.algorithm.name(),
                        sum.short(12),
                        want.short(12)
                    ),
                    Err(e) => format!("cannot verify its checksum: {e}"),
                };
                tracing::warn!(backup = %entry.name, %reason, "backup failed verification");
                self.dirty |= self.doc.files.remove(&entry.name).is_some();
                entry.health = Health::Corrupt { reason };
            }
        }
        entry
    }

    /// Writes the cache back if it changed (atomically), forgetting files no longer in
    /// `present` (when the caller listed the directory; `None`: it read only some files).
    /// Best effort: a directory this process may not write (an application reading the status)
    /// keeps its old cache.
    pub(crate) fn save<'a>(mut self, present: Option<impl IntoIterator<Item = &'a str>>) {
        let before = self.doc.files.len();
        if let Some(present) = present {
            let present: BTreeSet<&str> = present.into_iter().collect();
            self.doc.files.retain(|n, _| present.contains(n.as_str()));
        }
        if !self.dirty && self.doc.files.len() == before {
            return;
        }
        self.doc.format = 1;
        let written = super::index::state_dir(&self.dir).and_then(|state| {
            // What a process killed while writing it left behind.
            crate::fsutil::remove_dead_temps(&state, &format!("{CACHE_FILE}.tmp."));
            let json = serde_json::to_vec(&self.doc)
                .map_err(|e| crate::error::Error::Internal(e.to_string()))?;
            write_atomic(
                &state.join(CACHE_FILE),
                &json,
                crate::fsutil::Sharing::PRIVATE,
            )
        });
        if let Err(e) = written {
            tracing::debug!(error = %e, "verification cache not written");
        }
    }
}
