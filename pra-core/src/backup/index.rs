//! The index of a backup directory pra manages: the newest backups' names and the count, so
//! that `pra backup` and `pra status` need not list (let alone inspect) a directory of 100 k
//! backups. It lives in `.pra/index.json` (pra's own subdirectory, so that writing it changes
//! nothing in the backup directory itself) and is trusted only while the directory has not
//! changed since it was written: the directory's mtime is copied onto the index file's own
//! mtime after each write, and a file added or removed by anyone (a `cp`, an `rm`, a prune)
//! moves the directory's mtime away from it. A missing, stale or unreadable index, or one naming
//! a file that is gone, sends the reader to the full scan, which writes a fresh index back.
//!
//! Limits: a change within the same timestamp tick as pra's own last change (the kernel's coarse
//! clock, a few milliseconds) is not seen until the directory changes again.

use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::name::BackupName;
use crate::error::{Error, Result};

/// pra's own subdirectory of a backup directory (index, verification cache, lock).
pub const STATE_DIR: &str = ".pra";
/// How many of the newest backups the index names.
pub const INDEX_KEEP: usize = 64;
const INDEX_FILE: &str = "index.json";
const LOCK_FILE: &str = "lock";

/// What the index says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Index {
    format: u32,
    /// How many backups the directory holds.
    pub count: usize,
    /// The newest backups' file names, newest first (at most [`INDEX_KEEP`]).
    pub newest: Vec<String>,
}

impl Index {
    /// The index of a full listing `names` (any order).
    pub fn of(names: &[(BackupName, String)]) -> Index {
        let mut sorted: Vec<&(BackupName, String)> = names.iter().collect();
        sorted.sort_unstable_by_key(|e| std::cmp::Reverse(e.0));
        Index {
            format: 1,
            count: names.len(),
            newest: sorted
                .into_iter()
                .take(INDEX_KEEP)
                .map(|(_, n)| n.clone())
                .collect(),
        }
    }

    /// The index with the new backup `name` added.
    pub fn with(mut self, id: BackupName, name: &str) -> Index {
        let at = self
            .newest
            .iter()
            .position(|n| BackupName::parse(n).is_none_or(|other| other < id))
            .unwrap_or(self.newest.len());
        self.newest.insert(at, name.to_string());
        self.newest.truncate(INDEX_KEEP);
        self.count += 1;
        self
    }
}

/// pra's subdirectory of `dir` (created, mode 0700, if missing).
pub(crate) fn state_dir(dir: &Path) -> Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let state = dir.join(STATE_DIR);
    match fs::DirBuilder::new().mode(0o700).create(&state) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
            Err(Error::io("create", &state, e))
        }
        _ => Ok(state),
    }
}

fn mtime(path: &Path) -> Option<SystemTime> {
    fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// The modification time of `dir`, to compare with the index later ([`write_if_unchanged`]).
pub(crate) fn dir_stamp(dir: &Path) -> Option<SystemTime> {
    mtime(dir)
}

/// The index of `dir`, if there is one, readable, and the directory has not changed since it
/// was written.
pub(crate) fn read_fresh(dir: &Path) -> Option<Index> {
    let path = dir.join(STATE_DIR).join(INDEX_FILE);
    let dir_mtime = mtime(dir)?;
    let mut f = super::open_regular(&path).ok()?;
    if f.metadata().and_then(|m| m.modified()).ok()? != dir_mtime {
        return None;
    }
    let mut b = Vec::new();
    f.read_to_end(&mut b).ok()?;
    serde_json::from_slice::<Index>(&b)
        .ok()
        .filter(|i| i.format == 1)
}

/// An exclusive lock on `dir`'s index, held by writers of the directory (`pra backup`) and of
/// the index, released when dropped.
pub(crate) struct Lock(#[allow(dead_code)] File);

/// Takes the index lock of `dir`, waiting for another holder.
pub(crate) fn lock(dir: &Path) -> Result<Lock> {
    take(dir, true)?.ok_or_else(|| Error::Internal("a waiting flock returned early".into()))
}

/// Takes the index lock of `dir` if nobody holds it.
pub(crate) fn try_lock(dir: &Path) -> Result<Option<Lock>> {
    take(dir, false)
}

fn take(dir: &Path, wait: bool) -> Result<Option<Lock>> {
    use std::os::fd::AsRawFd;
    let path = state_dir(dir)?.join(LOCK_FILE);
    let f = crate::fsutil::Sharing::PRIVATE
        .open_or_create(fs::OpenOptions::new().write(true), &path)?;
    let how = if wait {
        libc::LOCK_EX
    } else {
        libc::LOCK_EX | libc::LOCK_NB
    };
    // SAFETY: flock on a descriptor this function owns.
    if unsafe { libc::flock(f.as_raw_fd(), how) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() == std::io::ErrorKind::WouldBlock {
            return Ok(None);
        }
        return Err(Error::io("lock", &path, e));
    }
    Ok(Some(Lock(f)))
}

/// Writes `index` (atomically, in pra's subdirectory) and stamps it with the directory's mtime
/// now: the caller holds the [`lock`] and knows `index` describes the directory as it is.
pub(crate) fn write(dir: &Path, index: &Index, _held: &Lock) -> Result<()> {
    let path = state_dir(dir)?.join(INDEX_FILE);
    let json = serde_json::to_vec(index).map_err(|e| Error::Internal(e.to_string()))?;
    crate::fsutil::write_atomic(&path, &json, crate::fsutil::Sharing::PRIVATE)?;
    let stamp = mtime(dir).ok_or_else(|| Error::Internal("cannot stat the directory".into()))?;
    File::options()
        .write(true)
        .open(&path)
        .and_then(|f| f.set_modified(stamp))
        .map_err(|e| Error::io("stamp", &path, e))
}

/// Writes the index of a full listing `names` of `dir` taken when its mtime was `seen`, unless
/// the directory changed since (then the listing may be out of date: the next reader lists
/// again). Best effort: a reader that may not write the directory leaves it alone.
pub(crate) fn write_if_unchanged(
    dir: &Path,
    seen: Option<SystemTime>,
    names: &[(BackupName, String)],
) {
    let written = (|| {
        // A reader never waits: a backup under way writes the index itself.
        let Some(held) = try_lock(dir)? else {
            return Ok(());
        };
        if seen.is_none() || mtime(dir) != seen {
            return Ok(());
        }
        write(dir, &Index::of(names), &held)
    })();
    if let Err(e) = written {
        tracing::debug!(error = %e, dir = %dir.display(), "backup index not written");
    }
}
