//! The catalog of a backup directory: which files are backups, their manifests, their health
//! (cheap checks of header and size, checksums through [`super::verify`]), newest first.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::name::BackupName;
use super::{Method, verify};
use crate::error::{Error, Result};

/// What pra records about each backup, in `<backup>.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Manifest format version: 1 (SHA-256 checksum), 2 (BLAKE3: what pra writes).
    pub format: u32,
    /// The backup's file name.
    pub file: String,
    /// When the backup finished.
    pub created_at: DateTime<Utc>,
    /// SHA-256 of the backup file, hex (format 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// BLAKE3 of the backup file, hex (format 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blake3: Option<String>,
    /// Size of the backup file in bytes.
    pub size: u64,
    /// Rows per table at the time of the snapshot.
    pub tables: BTreeMap<String, u64>,
    /// The database that was backed up.
    pub source: PathBuf,
    /// Pages in the source database when the snapshot was taken.
    pub source_page_count: u64,
    /// How long the backup took, in milliseconds.
    pub duration_ms: u64,
    /// How the snapshot was taken.
    pub method: Method,
    /// The result of `PRAGMA quick_check` on the backup ("ok" when it passed).
    pub verification: String,
    /// The pra version that wrote it.
    pub pra_version: String,
}

impl Manifest {
    /// The manifest format pra writes.
    pub const FORMAT: u32 = 2;

    /// The file's checksum as recorded (BLAKE3 if the manifest has one, else SHA-256); `None`
    /// for a manifest with neither (it cannot vouch for the file).
    pub fn checksum(&self) -> Option<super::Checksum> {
        use super::checksum::Algorithm;
        match (&self.blake3, &self.sha256) {
            (Some(hex), _) => Some(super::Checksum {
                algorithm: Algorithm::Blake3,
                hex: hex.clone(),
            }),
            (None, Some(hex)) => Some(super::Checksum {
                algorithm: Algorithm::Sha256,
                hex: hex.clone(),
            }),
            (None, None) => None,
        }
    }
}

/// How usable a backup in the catalog looks, from cheap checks (header, size, manifest).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Health {
    /// Has a manifest whose size and verification match, and the file's checksum (BLAKE3, or
    /// SHA-256 in format 1 manifests) is the manifest's (hashed once per change of the file's size, mtime, ctime or inode: see
    /// [`verify`]).
    Verified,
    /// A valid-looking SQLite file without a manifest (the seed's `cp` backups, or a backup
    /// interrupted between its link and its manifest). Restore checks it in full first.
    Unverified,
    /// Not usable.
    Corrupt {
        /// Why.
        reason: String,
    },
}

/// One backup in a directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupEntry {
    /// File name.
    pub name: String,
    /// Full path.
    pub path: PathBuf,
    /// Time and sequence from the name.
    #[serde(flatten)]
    pub id: BackupName,
    /// Size in bytes.
    pub size: u64,
    /// Cheap health checks.
    pub health: Health,
    /// The manifest, if there is one.
    pub manifest: Option<Manifest>,
}

impl BackupEntry {
    /// Whether the entry can be restored from (or counted as the latest backup).
    pub fn usable(&self) -> bool {
        !matches!(self.health, Health::Corrupt { .. })
    }
}

/// The backup-named files of `dir`, in directory order, without opening them. A missing
/// directory has none.
fn scan_unsorted(dir: &Path) -> Result<Vec<(BackupName, String)>> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("list", dir, e)),
    };
    let mut out = Vec::new();
    for ent in rd {
        let ent = ent.map_err(|e| Error::io("list", dir, e))?;
        let Ok(name) = ent.file_name().into_string() else {
            continue;
        };
        if let Some(id) = BackupName::parse(&name) {
            // Never opened unless a regular file (a symlink to one included): opening a FIFO
            // for reading blocks until a writer comes.
            let ft = ent.file_type().map_err(|e| Error::io("list", dir, e))?;
            let regular = ft.is_file()
                || (ft.is_symlink() && fs::metadata(ent.path()).is_ok_and(|m| m.is_file()));
            if !regular {
                tracing::warn!(file = %ent.path().display(), "ignored: a backup name, but not a regular file");
                continue;
            }
            out.push((id, name));
        }
    }
    Ok(out)
}

/// The backup-named files of `dir`, newest first, without opening them. A missing directory has
/// none.
pub fn scan(dir: &Path) -> Result<Vec<(BackupName, String)>> {
    let mut out = scan_unsorted(dir)?;
    out.sort_unstable_by_key(|e| std::cmp::Reverse(e.0));
    Ok(out)
}

/// How many backups `dir` holds, the newest *verified* one (its checksum matched its manifest,
/// see [`verify`]), and the backups newer than it that are not (corrupt, or without a manifest),
/// inspected on the way: what status needs. From the directory's index when it is fresh
/// (nothing listed, see [`super::index`]); else one pass over the directory, no sort, which
/// writes the index back.
pub fn newest_verified(dir: &Path) -> Result<(usize, Option<BackupEntry>, Vec<BackupEntry>)> {
    if let Some(found) = newest_verified_indexed(dir) {
        return Ok(found);
    }
    let seen = super::index::dir_stamp(dir);
    let mut all = scan_unsorted(dir)?;
    super::index::write_if_unchanged(dir, seen, &all);
    let names: Vec<String> = all.iter().map(|(_, n)| n.clone()).collect();
    let count = all.len();
    let mut verifier = verify::Verifier::load(dir);
    let mut skipped = Vec::new();
    let mut found = None;
    while let Some(i) = (0..all.len()).max_by_key(|&i| all[i].0) {
        let (id, name) = all.swap_remove(i);
        let entry = verifier.check(inspect(dir, id, &name));
        if entry.health == Health::Verified {
            found = Some(entry);
            break;
        }
        skipped.push(entry);
    }
    verifier.save(Some(names.iter().map(String::as_str)));
    Ok((count, found, skipped))
}

/// [`newest_verified`] from a fresh index: `None` when there is none, it names a file that is
/// gone, or none of the backups it names is verified (the caller lists the directory).
fn newest_verified_indexed(dir: &Path) -> Option<(usize, Option<BackupEntry>, Vec<BackupEntry>)> {
    let index = super::index::read_fresh(dir)?;
    let mut verifier = verify::Verifier::load(dir);
    let mut skipped = Vec::new();
    for name in &index.newest {
        let id = BackupName::parse(name)?;
        if !fs::symlink_metadata(dir.join(name)).is_ok_and(|m| m.is_file() || m.is_symlink()) {
            tracing::debug!(backup = %name, "the backup index names a file that is gone: listing the directory");
            return None;
        }
        let entry = verifier.check(inspect(dir, id, name));
        if entry.health == Health::Verified {
            verifier.save(None::<std::iter::Empty<&str>>);
            return Some((index.count, Some(entry), skipped));
        }
        skipped.push(entry);
    }
    None
}

/// Inspects one backup file: SQLite header, page size, size against the header's page count
/// and against the manifest. Reads 100 bytes and the manifest; never the whole file.
pub fn inspect(dir: &Path, id: BackupName, name: &str) -> BackupEntry {
    let path = dir.join(name);
    let manifest_path = dir.join(format!("{name}.json"));
    let manifest = match open_regular(&manifest_path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => Some(Err(format!("cannot open: {e}"))),
        Ok(mut f) => {
            let mut b = Vec::new();
            Some(
                f.read_to_end(&mut b)
                    .map_err(|e| e.to_string())
                    .and_then(|_| {
                        serde_json::from_slice::<Manifest>(&b).map_err(|e| e.to_string())
                    }),
            )
        }
    };
    let (size, mut health) = match header_check(&path) {
        Ok(size) => (size, Health::Unverified),
        Err(reason) => (
            fs::metadata(&path).map_or(0, |m| m.len()),
            Health::Corrupt { reason },
        ),
    };
    let manifest = match manifest {
        None => None,
        Some(Err(e)) => {
            health = Health::Corrupt {
                reason: format!("unreadable manifest: {e}"),
            };
            None
        }
        Some(Ok(m)) => {
            if health == Health::Unverified {
                health = if m.size != size {
                    Health::Corrupt {
                        reason: format!("size {size} differs from the manifest's {}", m.size),
                    }
                } else if m.verification != "ok" {
                    Health::Corrupt {
                        reason: format!("failed verification when taken: {}", m.verification),
                    }
                } else if m.file != name {
                    Health::Corrupt {
                        reason: format!("the manifest describes {}", m.file),
                    }
                } else if m.checksum().is_none() {
                    Health::Corrupt {
                        reason: "the manifest records no checksum".into(),
                    }
                } else {
                    Health::Verified
                };
            }
            Some(m)
        }
    };
    BackupEntry {
        name: name.to_string(),
        path,
        id,
        size,
        health,
        manifest,
    }
}

/// Checks the SQLite header and that the file size matches the page count it declares.
fn header_check(path: &Path) -> std::result::Result<u64, String> {
    let mut f = open_regular(path).map_err(|e| format!("cannot open: {e}"))?;
    let meta = f.metadata().map_err(|e| e.to_string())?;
    let size = meta.len();
    let mut h = [0u8; 100];
    f.read_exact(&mut h)
        .map_err(|_| format!("only {size} bytes: not a SQLite database"))?;
    if &h[..16] != b"SQLite format 3\0" {
        return Err("not a SQLite database (bad header)".into());
    }
    let page_size = match u16::from_be_bytes([h[16], h[17]]) {
        1 => 65536u64,
        n if n >= 512 && n.is_power_of_two() => u64::from(n),
        n => return Err(format!("invalid page size {n}")),
    };
    if size % page_size != 0 {
        return Err(format!(
            "size {size} is not a multiple of the page size {page_size}: truncated"
        ));
    }
    let change_counter = u32::from_be_bytes([h[24], h[25], h[26], h[27]]);
    let declared_pages = u32::from_be_bytes([h[28], h[29], h[30], h[31]]);
    let valid_for = u32::from_be_bytes([h[92], h[93], h[94], h[95]]);
    if declared_pages != 0
        && valid_for == change_counter
        && u64::from(declared_pages) * page_size != size
    {
        return Err(format!(
            "size {size} differs from the {declared_pages} pages of {page_size} bytes its header declares: truncated"
        ));
    }
    Ok(size)
}

/// The catalog of a backup directory: every backup-named regular file, newest first, with its
/// health, checksums verified (see [`verify`]). Temporary files, manifests, foreign and special
/// files are not listed.
pub fn list(dir: &Path) -> Result<Vec<BackupEntry>> {
    list_verified(dir, verify::Verifier::load(dir))
}

/// [`list`], every checksum computed again whatever the cache says: what a deletion decides on.
pub fn list_rehashed(dir: &Path) -> Result<Vec<BackupEntry>> {
    list_verified(dir, verify::Verifier::fresh(dir))
}

fn list_verified(dir: &Path, mut verifier: verify::Verifier) -> Result<Vec<BackupEntry>> {
    let names = scan(dir)?;
    let out = names
        .iter()
        .map(|(id, name)| verifier.check(inspect(dir, *id, name)))
        .collect();
    verifier.save(Some(names.iter().map(|(_, n)| n.as_str())));
    Ok(out)
}

/// The newest usable backup of `dir` (verified, or without a manifest), checksums verified.
pub fn latest_usable(dir: &Path) -> Result<Option<BackupEntry>> {
    Ok(list(dir)?.into_iter().find(BackupEntry::usable))
}

/// The newest verified backup of `dir`, inspecting from the newest down only as far as needed.
pub fn latest_verified(dir: &Path) -> Result<Option<BackupEntry>> {
    Ok(newest_verified(dir)?.1)
}

/// Opens `path` for reading only if it is a regular file: with `O_NONBLOCK`, so that a FIFO
/// cannot block the open, and its type checked on the open descriptor (no race with a rename).
pub(crate) fn open_regular(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    // O_NOFOLLOW: a backup name pointing elsewhere (at the live database, say) is never opened;
    // in the application's process, closing a descriptor of its database drops its locks.
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
        .open(path)?;
    if !f.metadata()?.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    Ok(f)
}
