//! SQLite backups of the application's database: consistent online snapshots, their names and
//! manifests, the catalog of a backup directory, retention ([`retention`]) and restore
//! ([`restore`]).
//!
//! A backup is `backup-YYYY-MM-DD-HH-MM-SS.db` (UTC; `-N` appended when two are taken in the
//! same second) with a manifest `<name>.json` beside it. The seed's minute names
//! (`backup-2025-01-10-12-00.db`) are read too. A backup is written under a hidden temporary
//! name, verified, fsynced and only then linked under its final name, so a half-written file can
//! never be listed, let alone become "the latest".

pub mod restore;
pub mod retention;
pub mod verify;

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::Instant;

use chrono::{DateTime, NaiveDate, Utc};
use rusqlite::{Connection, OpenFlags};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::fsutil::{create_private_dir, create_private_file, set_private, sync_dir, write_atomic};

/// The prefix of every backup file name.
pub const PREFIX: &str = "backup-";
const TEMP_PREFIX: &str = ".backup-tmp-";

/// A parsed backup file name: when it was taken and its same-second sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct BackupName {
    /// When the backup was taken (UTC, to the second; to the minute for the seed's names).
    pub time: DateTime<Utc>,
    /// 0 for the first backup of that second, then 1, 2...
    pub seq: u32,
}

impl BackupName {
    /// Parses `backup-YYYY-MM-DD-HH-MM[-SS[-N]].db`. Anything else, including any path
    /// separator, is `None`.
    pub fn parse(name: &str) -> Option<BackupName> {
        let mid = name.strip_prefix(PREFIX)?.strip_suffix(".db")?;
        // Up to 7 dash-separated numbers, parsed without allocating (status scans thousands).
        let widths = [4, 2, 2, 2, 2, 2];
        let mut nums = [0u32; 7];
        let mut count = 0;
        for p in mid.split('-') {
            if count == 7 {
                return None;
            }
            let width_ok = if count < 6 {
                p.len() == widths[count]
            } else {
                (1..=9).contains(&p.len())
            };
            if !width_ok || !p.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            nums[count] = p.parse().ok()?;
            count += 1;
        }
        if count < 5 || (count == 7 && nums[6] == 0) {
            return None; // the first of a second has no suffix: one name per backup
        }
        let time = NaiveDate::from_ymd_opt(nums[0] as i32, nums[1], nums[2])?
            .and_hms_opt(nums[3], nums[4], nums[5])?
            .and_utc();
        Some(BackupName { time, seq: nums[6] })
    }

    /// The file name for this time and sequence number (always with seconds).
    pub fn file_name(&self) -> String {
        let base = format!("{PREFIX}{}", self.time.format("%Y-%m-%d-%H-%M-%S"));
        if self.seq == 0 {
            format!("{base}.db")
        } else {
            format!("{base}-{}.db", self.seq)
        }
    }
}

/// Checks that `name` is a bare backup file name (no directory, no `..`) and parses it.
pub fn validate_name(name: &str) -> Result<BackupName> {
    if name.contains(['/', '\\', '\0']) || name.contains("..") {
        return Err(Error::InvalidArgument(format!(
            "backup name {name:?} must be a bare file name, without path separators or '..'"
        )));
    }
    BackupName::parse(name).ok_or_else(|| {
        Error::InvalidArgument(format!(
            "{name:?} is not a backup name (expected backup-YYYY-MM-DD-HH-MM-SS.db)"
        ))
    })
}

/// How the snapshot is taken. Each gives a consistent copy of a live database; the manifest
/// records the one used ([`Method::FileCopy`] or [`Method::OnlineBackup`] for `Auto`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// [`Method::FileCopy`] when the snapshot lies entirely in the database file, else
    /// [`Method::OnlineBackup`]. For a process that does not itself use the database (the
    /// `pra backup` command): see [`Method::FileCopy`].
    #[default]
    Auto,
    /// SQLite's online backup API, all pages in one step inside one read transaction (a steady
    /// writer cannot make it restart, and in WAL mode writers are never blocked).
    OnlineBackup,
    /// `VACUUM INTO`: a compacted copy, also in one read transaction.
    VacuumInto,
    /// A kernel copy of the database file (`copy_file_range`, as `cp` does) inside one read
    /// transaction, taken only when that transaction's snapshot is the file alone: in
    /// rollback-journal mode (its SHARED lock keeps writers out of the file), or in WAL mode
    /// when, after the snapshot was taken, a passive checkpoint finds every WAL frame already in
    /// the file (checkpoints cannot then write past the snapshot). Otherwise the backup is
    /// refused as [`Error::Busy`] (`Auto` falls back to the online backup API).
    ///
    /// It reads the file through a descriptor of its own, and closing it drops, by POSIX rules,
    /// every `fcntl` lock this process holds on the file — harmless once the copy is done for a
    /// process whose only connections are the backup's own, but not inside the application:
    /// the C and Python bindings, which run in applications, use [`Method::OnlineBackup`].
    FileCopy,
}

/// What pra records about each backup, in `<backup>.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Manifest format version (1).
    pub format: u32,
    /// The backup's file name.
    pub file: String,
    /// When the backup finished.
    pub created_at: DateTime<Utc>,
    /// SHA-256 of the backup file, hex.
    pub sha256: String,
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

/// How usable a backup in the catalog looks, from cheap checks (header, size, manifest).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Health {
    /// Has a manifest whose size and verification match, and the file's SHA-256 is the
    /// manifest's (hashed once per change of the file's size, mtime, ctime or inode: see
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
/// inspected on the way. One pass over the directory, no sort: what status needs.
pub fn newest_verified(dir: &Path) -> Result<(usize, Option<BackupEntry>, Vec<BackupEntry>)> {
    let mut all = scan_unsorted(dir)?;
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
    verifier.save(names.iter().map(String::as_str));
    Ok((count, found, skipped))
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
    verifier.save(names.iter().map(|(_, n)| n.as_str()));
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

fn sql_err<'a>(what: &'static str, path: &'a Path) -> impl Fn(rusqlite::Error) -> Error + 'a {
    // A database file that cannot be opened or written is an I/O problem here, not a store.
    move |e| match Error::sqlite(what, &path.display().to_string(), e) {
        Error::StoreUnavailable { reason, .. } => {
            Error::io(what, path, std::io::Error::other(reason))
        }
        other => other,
    }
}

/// Opens an existing database for reading, without creating it.
pub(crate) fn open_existing(path: &Path, read_only: bool) -> Result<Guarded> {
    if !path.is_file() {
        return Err(Error::NotFound(format!(
            "database {} does not exist",
            path.display()
        )));
    }
    let flags = if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    let fork = crate::forkguard::enter();
    let conn = Connection::open_with_flags(path, flags).map_err(sql_err("open", path))?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(sql_err("open", path))?;
    Ok(Guarded { conn, _fork: fork })
}

/// A connection of pra's own SQLite, with the fork guard held for its lifetime (see
/// [`crate::forkguard`]); derefs to the connection.
#[derive(Debug)]
pub(crate) struct Guarded {
    // Declared first: closed before the guard is released.
    conn: Connection,
    _fork: crate::forkguard::Guard,
}

impl std::ops::Deref for Guarded {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        &self.conn
    }
}

impl std::ops::DerefMut for Guarded {
    fn deref_mut(&mut self) -> &mut Connection {
        &mut self.conn
    }
}

/// Row counts of every user table (not `sqlite_*`), in name order.
pub fn table_counts(conn: &Connection) -> Result<BTreeMap<String, u64>> {
    let err = |e| Error::sqlite("count rows", "database", e);
    let names: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")
        .map_err(err)?
        .query_map([], |r| r.get(0))
        .map_err(err)?
        .collect::<rusqlite::Result<_>>()
        .map_err(err)?;
    let mut out = BTreeMap::new();
    for name in names {
        let n: i64 = conn
            .query_row(
                &format!("SELECT count(*) FROM {}", quote_ident(&name)),
                [],
                |r| r.get(0),
            )
            .map_err(err)?;
        out.insert(name, n as u64);
    }
    Ok(out)
}

/// `SELECT count(*)` of `table` in the database `db`, opened read-only.
pub fn count_rows(db: &Path, table: &str) -> Result<u64> {
    let conn = open_existing(db, true)?;
    let n: i64 = conn
        .query_row(
            &format!("SELECT count(*) FROM {}", quote_ident(table)),
            [],
            |r| r.get(0),
        )
        .map_err(sql_err("count rows", db))?;
    Ok(n as u64)
}

/// Quotes an SQL identifier.
pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `PRAGMA quick_check` on `conn`: "ok" or the first problems found.
pub(crate) fn quick_check(conn: &Connection) -> Result<String> {
    let err = |e| Error::sqlite("quick_check", "database", e);
    let rows: Vec<String> = conn
        .prepare("PRAGMA quick_check(5)")
        .map_err(err)?
        .query_map([], |r| r.get(0))
        .map_err(err)?
        .collect::<rusqlite::Result<_>>()
        .map_err(err)?;
    Ok(rows.join("; "))
}

/// `quick_check` and the row counts of every table of the database at `path`, read-only,
/// through a memory map (no read(2) per page).
pub(crate) fn check_and_count(path: &Path) -> Result<(String, BTreeMap<String, u64>)> {
    let conn = open_existing(path, true)?;
    conn.execute_batch("PRAGMA mmap_size = 1099511627776")
        .map_err(sql_err("mmap_size", path))?;
    let verification = quick_check(&conn)?;
    let tables = table_counts(&conn)?;
    Ok((verification, tables))
}

/// The result of a scoped thread; its panic, if any, goes on in the caller.
pub(crate) fn join<T>(h: std::thread::ScopedJoinHandle<'_, T>) -> T {
    h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
}

/// SHA-256 of a file, hex.
pub(crate) fn sha256_file(path: &Path) -> Result<String> {
    let mut f = open_regular(path).map_err(|e| Error::io("open", path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io("read", path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// Takes a consistent backup of the live database `db` into `dir` (created 0700 if missing) and
/// returns its catalog entry. The backup is verified (`quick_check`) before it gets its final
/// name; the source is only read.
#[tracing::instrument(level = "info", skip(clock), fields(db = %db.display(), dir = %dir.display()))]
pub fn create(db: &Path, dir: &Path, method: Method, clock: &dyn Clock) -> Result<BackupEntry> {
    let src = open_existing(db, true)?;
    create_from(db, dir, clock, |tmp| {
        let taken = snapshot(&src, db, tmp, method);
        drop(src);
        taken
    })
}

/// Takes a backup of `db` whose snapshot `take` writes into the temporary file it is given
/// (returning the source's page count and the method it used); then verifies it, checksums
/// it and puts it in place with its manifest, as [`create`] does. For callers inside the
/// application's process: they snapshot through the SQLite library the application uses
/// (Python's `sqlite3` backup API), so that pra's own SQLite never opens the live database
/// there (see [`crate::status::status_counted`]).
pub fn create_from(
    db: &Path,
    dir: &Path,
    clock: &dyn Clock,
    take: impl FnOnce(&Path) -> Result<(u64, Method)>,
) -> Result<BackupEntry> {
    let started = Instant::now();
    create_private_dir(dir)?;
    crate::fsutil::remove_dead_temps(dir, TEMP_PREFIX);
    let now = clock.now();
    let tmp = dir.join(format!(
        "{TEMP_PREFIX}{}-{}.db",
        std::process::id(),
        now.timestamp_micros()
    ));
    let result = (|| {
        let (source_page_count, method) = take(&tmp)?;
        {
            let _fork = crate::forkguard::enter();
            let dst = Connection::open(&tmp).map_err(sql_err("open backup", &tmp))?;
            // A self-contained file: rollback-journal mode, so it needs no -wal/-shm beside it.
            dst.query_row("PRAGMA journal_mode = DELETE", [], |_| Ok(()))
                .map_err(sql_err("journal mode", &tmp))?;
            dst.close()
                .map_err(|(_, e)| sql_err("close backup", &tmp)(e))?;
        }
        // The file is final now. Its checksum and its fsync run beside the integrity check
        // (three reads of the same cached pages, on as many cores).
        let (checked, sha256, synced) = std::thread::scope(|s| {
            let hash = s.spawn(|| sha256_file(&tmp));
            let sync = s.spawn(|| {
                File::open(&tmp)
                    .and_then(|f| f.sync_all())
                    .map_err(|e| Error::io("fsync", &tmp, e))
            });
            let checked = check_and_count(&tmp);
            (checked, join(hash), join(sync))
        });
        let (verification, tables) = checked?;
        synced?;
        let sha256 = sha256?;
        if verification != "ok" {
            return Err(Error::Corrupt {
                what: format!("backup of {}", db.display()),
                detail: format!("the snapshot failed quick_check: {verification}"),
            });
        }
        let size = fs::metadata(&tmp)
            .map_err(|e| Error::io("stat", &tmp, e))?
            .len();
        // Claim a final name without ever replacing one: link(2) fails if the name exists.
        let mut id = BackupName {
            time: now.with_nanosecond_zero(),
            seq: 0,
        };
        let name = loop {
            let name = id.file_name();
            match fs::hard_link(&tmp, dir.join(&name)) {
                Ok(()) => break name,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => id.seq += 1,
                Err(e) => return Err(Error::io("link backup into place", dir.join(&name), e)),
            }
        };
        let manifest = Manifest {
            format: 1,
            file: name.clone(),
            created_at: clock.now(),
            sha256,
            size,
            tables,
            source: db.to_path_buf(),
            source_page_count,
            duration_ms: started.elapsed().as_millis() as u64,
            method,
            verification,
            pra_version: crate::VERSION.to_string(),
        };
        let json =
            serde_json::to_vec_pretty(&manifest).map_err(|e| Error::Internal(e.to_string()))?;
        write_atomic(&dir.join(format!("{name}.json")), &json)?;
        fs::remove_file(&tmp).map_err(|e| Error::io("remove", &tmp, e))?;
        sync_dir(dir)?;
        tracing::info!(backup = %name, size, ms = manifest.duration_ms, "backup taken");
        Ok(inspect(dir, id, &name))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
        let _ = fs::remove_file(crate::fsutil::with_suffix(&tmp, "-journal"));
    }
    result
}

trait ZeroNanos {
    fn with_nanosecond_zero(self) -> Self;
}
impl ZeroNanos for DateTime<Utc> {
    fn with_nanosecond_zero(self) -> Self {
        use chrono::Timelike;
        self.with_nanosecond(0).unwrap_or(self)
    }
}

/// Copies `src` (the database at `db`) into the new file `dst` in one read transaction;
/// returns the source's page count and the method used.
fn snapshot(src: &Connection, db: &Path, dst: &Path, method: Method) -> Result<(u64, Method)> {
    let f = create_private_file(dst)?;
    drop(f);
    match method {
        Method::Auto => match file_copy(src, db, dst)? {
            Some(pages) => Ok((pages, Method::FileCopy)),
            None => {
                // Nothing was copied; start over on a fresh file.
                fs::remove_file(dst).map_err(|e| Error::io("remove", dst, e))?;
                snapshot(src, db, dst, Method::OnlineBackup)
            }
        },
        Method::FileCopy => match file_copy(src, db, dst)? {
            Some(pages) => Ok((pages, Method::FileCopy)),
            None => Err(Error::Busy(format!(
                "{}: its WAL holds frames not yet in the database file (a writer or a long reader is active); use the online backup method",
                db.display()
            ))),
        },
        Method::OnlineBackup => {
            let _fork = crate::forkguard::enter();
            let mut out = Connection::open(dst).map_err(sql_err("open backup", dst))?;
            // A new file nobody else sees: no journal, no syncs while copying (the finished file
            // is fsynced once, before it gets its name).
            out.execute_batch("PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF;")
                .map_err(sql_err("open backup", dst))?;
            let backup = rusqlite::backup::Backup::new(src, &mut out)
                .map_err(sql_err("start backup", dst))?;
            // -1: every page in one step, under one read lock, so concurrent writes cannot make
            // the copy restart (the small-step API restarts on every foreign write).
            loop {
                match backup.step(-1).map_err(sql_err("backup", dst))? {
                    rusqlite::backup::StepResult::Done => break,
                    rusqlite::backup::StepResult::More => continue,
                    // Busy/Locked: another connection holds a lock we need; wait and retry.
                    _ => std::thread::sleep(std::time::Duration::from_millis(5)),
                }
            }
            Ok((backup.progress().pagecount as u64, Method::OnlineBackup))
        }
        Method::VacuumInto => {
            // VACUUM INTO refuses an existing file, even empty: hand it a fresh name.
            fs::remove_file(dst).map_err(|e| Error::io("remove", dst, e))?;
            // VACUUM INTO runs in its own read transaction; the page count read just before is
            // informational only.
            let pages: i64 = src
                .query_row("PRAGMA page_count", [], |r| r.get(0))
                .map_err(sql_err("page_count", dst))?;
            let target = dst.to_str().ok_or_else(|| {
                Error::InvalidArgument(format!("path {} is not UTF-8", dst.display()))
            })?;
            src.execute("VACUUM INTO ?1", [target])
                .map_err(sql_err("VACUUM INTO", dst))?;
            set_private(dst)?;
            Ok((pages as u64, Method::VacuumInto))
        }
    }
}

/// The [`Method::FileCopy`] snapshot: `Ok(None)` when the snapshot is not the file alone (or
/// the checkpoint probe cannot run), and nothing is copied then.
fn file_copy(src: &Connection, db: &Path, dst: &Path) -> Result<Option<u64>> {
    // Dropped (rolled back) on every way out: the read transaction spans the whole copy.
    let tx = src.unchecked_transaction().map_err(sql_err("begin", db))?;
    // The first read takes the snapshot.
    let (pages, page_size): (i64, i64) = tx
        .query_row(
            "SELECT page_count, page_size FROM pragma_page_count(), pragma_page_size()
             WHERE (SELECT count(*) FROM sqlite_schema) >= 0",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .map_err(sql_err("read the page count", db))?;
    // Read inside the transaction: switching modes needs an exclusive lock, which our read
    // lock holds off until the copy is done.
    let mode: String = tx
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .map_err(sql_err("journal mode", db))?;
    if mode.eq_ignore_ascii_case("wal") {
        // Asked after our snapshot was taken: if every frame is in the file, our snapshot is in
        // the file, and no checkpoint can write a newer page into it while we read.
        let _fork = crate::forkguard::enter();
        let probe = match Connection::open_with_flags(
            db,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        ) {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "no checkpoint probe (read-only access?): online backup");
                return Ok(None);
            }
        };
        let frames = probe.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
            ))
        });
        match frames {
            Ok((0, log, done)) if log >= 0 && log == done => {}
            Ok((busy, log, done)) => {
                tracing::debug!(busy, log, done, "WAL frames not in the file: online backup");
                return Ok(None);
            }
            Err(e) => {
                tracing::debug!(error = %e, "checkpoint probe failed: online backup");
                return Ok(None);
            }
        }
    } else if !["delete", "truncate", "persist"].contains(&mode.to_ascii_lowercase().as_str()) {
        // memory/off journals: no lock discipline to rely on.
        return Ok(None);
    }
    let want = (pages * page_size) as u64;
    // Closing this copy's descriptor on `db` releases this process's POSIX locks on it (ours
    // included): after the copy is complete, and nothing reads `db` afterwards.
    let copied = fs::copy(db, dst).map_err(|e| Error::io("copy", db, e))?;
    // fs::copy gave the copy the source's permissions: a backup stays private.
    set_private(dst)?;
    if copied < want {
        return Err(Error::Corrupt {
            what: db.display().to_string(),
            detail: format!("the file holds {copied} bytes, its snapshot {want}"),
        });
    }
    if copied > want {
        fs::OpenOptions::new()
            .write(true)
            .open(dst)
            .and_then(|f| f.set_len(want))
            .map_err(|e| Error::io("truncate", dst, e))?;
    }
    drop(tx);
    Ok(Some(pages as u64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn names_parse_in_both_formats() {
        let t = |y, mo, d, h, mi, s| Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap();
        assert_eq!(
            BackupName::parse("backup-2025-01-10-12-00.db"),
            Some(BackupName {
                time: t(2025, 1, 10, 12, 0, 0),
                seq: 0
            })
        );
        assert_eq!(
            BackupName::parse("backup-2025-01-10-12-00-59.db"),
            Some(BackupName {
                time: t(2025, 1, 10, 12, 0, 59),
                seq: 0
            })
        );
        assert_eq!(
            BackupName::parse("backup-2025-01-10-12-00-59-2.db"),
            Some(BackupName {
                time: t(2025, 1, 10, 12, 0, 59),
                seq: 2
            })
        );
        for bad in [
            "backup-2025-01-10-12.db",
            "backup-2025-13-10-12-00.db",
            "backup-2025-02-30-12-00.db",
            "backup-2025-01-10-12-00-59-0.db",
            "backup-2025-1-10-12-00.db",
            "x-2025-01-10-12-00.db",
            "backup-2025-01-10-12-00.db.json",
            ".backup-tmp-1-2.db",
            "backup-2025-01-10-12-00-61.db",
            "backup-2025-01-10-12-00-5a.db",
            "backup-+025-01-10-12-00.db",
        ] {
            assert_eq!(BackupName::parse(bad), None, "{bad}");
        }
        let id = BackupName {
            time: t(2026, 3, 1, 9, 5, 7),
            seq: 0,
        };
        assert_eq!(id.file_name(), "backup-2026-03-01-09-05-07.db");
        assert_eq!(
            BackupName::parse(&BackupName { seq: 3, ..id }.file_name()),
            Some(BackupName { seq: 3, ..id })
        );
    }

    #[test]
    fn names_with_paths_are_refused() {
        for bad in [
            "../backup-2025-01-10-12-00.db",
            "/backup/backup-2025-01-10-12-00.db",
            "backup-2025-01-10-12-00.db/..",
            "a\\b",
        ] {
            assert_eq!(
                validate_name(bad).unwrap_err().kind(),
                crate::ErrorKind::InvalidArgument,
                "{bad}"
            );
        }
        assert!(validate_name("backup-2025-01-10-12-00.db").is_ok());
    }
}
