//! File-system primitives shared by the store and backup modules: atomic replace, directory
//! fsync, private (0600/0700) creation. Nothing else in pra-core touches the file system.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The largest lock file or configuration file pra reads: anything bigger is not one.
pub const SMALL_FILE_LIMIT: u64 = 64 * 1024;

/// What a file that is not a regular file is, in words.
pub(crate) fn special_kind(t: fs::FileType) -> Option<&'static str> {
    use std::os::unix::fs::FileTypeExt;
    if t.is_file() {
        None
    } else if t.is_fifo() {
        Some("a FIFO")
    } else if t.is_socket() {
        Some("a socket")
    } else if t.is_char_device() || t.is_block_device() {
        Some("a device")
    } else if t.is_dir() {
        Some("a directory")
    } else {
        Some("not a regular file")
    }
}

/// Reads `path`, a regular file of at most `limit` bytes, without ever blocking on a FIFO or
/// reading a huge file whole: it is opened with `O_NONBLOCK` and checked with `fstat` first.
/// A special file is an [`io::ErrorKind::InvalidInput`] error naming its type (`a FIFO`...), a
/// bigger file an [`io::ErrorKind::FileTooLarge`] one naming the limit.
pub fn read_regular(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let meta = f.metadata()?;
    if let Some(kind) = special_kind(meta.file_type()) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{kind}, not a regular file"),
        ));
    }
    let too_big = || {
        io::Error::new(
            io::ErrorKind::FileTooLarge,
            format!("larger than the {} KiB limit", limit / 1024),
        )
    };
    if meta.len() > limit {
        return Err(too_big());
    }
    let mut data = Vec::with_capacity(meta.len() as usize);
    f.take(limit.saturating_add(1)).read_to_end(&mut data)?;
    if data.len() as u64 > limit {
        return Err(too_big()); // it grew while we read
    }
    Ok(data)
}

/// The directory holding `path` (`.` for a bare file name).
pub(crate) fn parent_dir(path: &Path) -> &Path {
    path.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// `path` with `suffix` appended to its file name.
pub(crate) fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

/// fsyncs a directory, so that a rename or link inside it survives a power cut.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("fsync directory", dir, e))
}

/// Creates `dir` (and its parents) with mode 0700 if it does not exist.
pub(crate) fn create_private_dir(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| Error::io("create directory", dir, e))
}

/// Creates a new, empty file with mode 0600; fails if it exists.
pub(crate) fn create_private_file(path: &Path) -> Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io("create", path, e))
}

/// Sets `path` to mode 0600.
pub(crate) fn set_private(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
        .map_err(|e| Error::io("chmod", path, e))
}

/// Removes the temporary files `<prefix><pid>...` in `dir` (and their `-journal`) whose process
/// is gone: what a process killed mid-write left behind. Best effort: errors are ignored.
pub(crate) fn remove_dead_temps(dir: &Path, prefix: &str) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for ent in rd.flatten() {
        let name = ent.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(prefix)) else {
            continue;
        };
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let Ok(pid) = rest[..digits].parse::<u32>() else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            tracing::info!(file = %ent.path().display(), "removing the temporary file of an interrupted process");
            let _ = fs::remove_file(ent.path());
            let _ = fs::remove_file(with_suffix(&ent.path(), "-journal"));
        }
    }
}

/// Writes `data` to `path` atomically: a temporary file in the same directory (mode 0600),
/// fsync, rename over `path`, fsync of the directory. Readers see the old or the new content,
/// never a mix; after a crash the temporary file may remain, never a partial `path`.
pub(crate) fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let tmp = with_suffix(path, &format!(".tmp.{}", std::process::id()));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| Error::io("create", &tmp, e))?;
        f.write_all(data).map_err(|e| Error::io("write", &tmp, e))?;
        f.sync_all().map_err(|e| Error::io("fsync", &tmp, e))?;
        fs::rename(&tmp, path).map_err(|e| Error::io("rename into place", path, e))?;
        sync_dir(parent_dir(path))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Refuses a store file (or its directory) that any user may write: anyone could then change
/// the active site. Missing paths pass (the store creates them 0600/0700).
pub(crate) fn refuse_world_writable(url: &str, paths: &[&Path]) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for path in paths {
        let Ok(meta) = fs::metadata(path) else {
            continue;
        };
        let mode = meta.permissions().mode();
        // A sticky world-writable directory (/tmp) still stops users replacing others' files.
        let sticky_dir = meta.is_dir() && mode & 0o1000 != 0;
        if mode & 0o002 != 0 && !sticky_dir {
            return Err(Error::StoreUnavailable {
                url: url.to_string(),
                reason: format!(
                    "{} is world-writable (mode {:o}): any user could change the active site; run `chmod o-w {}`",
                    path.display(),
                    mode & 0o7777,
                    path.display()
                ),
            });
        }
    }
    Ok(())
}
