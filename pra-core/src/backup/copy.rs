//! Copying a database file the way backup and restore need it: the bytes pass once — read,
//! hashed and written in bounded buffers — and are flushed to disk in slices as they
//! go, so that no whole-file fsync at the end stalls the application's own commits, and memory
//! stays a few MiB whatever the file's size.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::Path;

use super::checksum::{Algorithm, Checksum, Hasher};
use crate::error::{Error, Result};

/// Bytes read and written at a time.
const CHUNK: usize = 1 << 20;
/// Bytes written between two `sync_file_range` calls: the most dirty pages the copy leaves
/// waiting for writeback (the previous slice is waited for while the next one is written).
const SLICE: u64 = 32 << 20;

/// What a copy did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Copied {
    /// Bytes copied.
    pub bytes: u64,
    /// The checksum of the bytes written.
    pub checksum: Checksum,
}

/// Copies `len` bytes (all of it with `None`) of `from` (at `from_path`) into `to` (at
/// `to_path`, empty and new), hashing what it writes by `algorithm` and flushing in slices;
/// ends with an fsync of `to`. `patch` sees each chunk before it is hashed and written (given
/// its offset in the file), and may change it: the backup marks the copy as a rollback-journal
/// database there; both report their progress there. A source
/// shorter than `len` is [`Error::Corrupt`].
pub(crate) fn copy_hashed(
    from: &mut File,
    from_path: &Path,
    to: &mut File,
    to_path: &Path,
    len: Option<u64>,
    algorithm: Algorithm,
    mut patch: impl FnMut(u64, &mut [u8]),
) -> Result<Copied> {
    let mut buf = vec![0u8; CHUNK];
    let mut h = Hasher::new(algorithm);
    let mut done: u64 = 0;
    let mut flushed: u64 = 0;
    loop {
        let want = match len {
            Some(l) => usize::try_from((l - done).min(CHUNK as u64)).unwrap_or(CHUNK),
            None => CHUNK,
        };
        if want == 0 {
            break;
        }
        let n = match from.read(&mut buf[..want]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::io("read", from_path, e)),
        };
        patch(done, &mut buf[..n]);
        h.update(&buf[..n]);
        to.write_all(&buf[..n])
            .map_err(|e| Error::io("write", to_path, e))?;
        done += n as u64;
        if done - flushed >= SLICE {
            write_back(to, to_path, flushed, done - flushed)?;
            flushed = done;
        }
    }
    if let Some(l) = len
        && done < l
    {
        return Err(Error::Corrupt {
            what: from_path.display().to_string(),
            detail: format!("the file holds {done} bytes, {l} were expected"),
        });
    }
    to.sync_all().map_err(|e| Error::io("fsync", to_path, e))?;
    Ok(Copied {
        bytes: done,
        checksum: h.finish(),
    })
}

/// Starts writeback of `[offset, offset + len)` of `f` and waits for the slice before it: at
/// most two slices are ever dirty, and the final fsync has little left to do. Best effort: where
/// `sync_file_range` is refused (some file systems), the final fsync does it all.
fn write_back(f: &File, path: &Path, offset: u64, len: u64) -> Result<()> {
    let fd = f.as_raw_fd();
    let (Ok(off), Ok(n)) = (i64::try_from(offset), i64::try_from(len)) else {
        return Ok(());
    };
    // SAFETY: sync_file_range only reads the descriptor and the numbers.
    let started = unsafe { libc::sync_file_range(fd, off, n, libc::SYNC_FILE_RANGE_WRITE) };
    if started != 0 {
        tracing::debug!(path = %path.display(), error = %std::io::Error::last_os_error(), "sync_file_range refused: one fsync at the end");
        return Ok(());
    }
    if offset >= SLICE {
        let prev = off - SLICE as i64;
        // SAFETY: as above.
        let waited = unsafe {
            libc::sync_file_range(
                fd,
                prev,
                SLICE as i64,
                libc::SYNC_FILE_RANGE_WAIT_BEFORE
                    | libc::SYNC_FILE_RANGE_WRITE
                    | libc::SYNC_FILE_RANGE_WAIT_AFTER,
            )
        };
        if waited != 0 {
            return Err(Error::io(
                "write back",
                path,
                std::io::Error::last_os_error(),
            ));
        }
    }
    Ok(())
}

/// Runs `f` while a thread writes back the file at `path` as it fills (every few milliseconds,
/// everything dirty so far, waiting for it): for a file another writer fills — SQLite's online
/// backup API writing the snapshot — whose dirty pages would otherwise pile up to the whole
/// file and be flushed by one fsync that the application's commits wait behind. Best effort:
/// a file that cannot be opened, or a kernel that refuses, leaves it to the final fsync.
pub(crate) fn written_back_while<T>(path: &Path, f: impl FnOnce() -> T) -> T {
    use std::sync::atomic::{AtomicBool, Ordering};
    let Ok(file) = std::fs::OpenOptions::new().write(true).open(path) else {
        return f();
    };
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            let fd = file.as_raw_fd();
            while !stop.load(Ordering::Relaxed) {
                // SAFETY: sync_file_range only reads the descriptor and the numbers (0, 0:
                // the whole file).
                let r = unsafe {
                    libc::sync_file_range(
                        fd,
                        0,
                        0,
                        libc::SYNC_FILE_RANGE_WAIT_BEFORE
                            | libc::SYNC_FILE_RANGE_WRITE
                            | libc::SYNC_FILE_RANGE_WAIT_AFTER,
                    )
                };
                if r != 0 {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        });
        let out = f();
        stop.store(true, Ordering::Relaxed);
        out
    })
}

/// Marks the SQLite header in the first chunk of a copy as a rollback-journal database (file
/// format bytes 18 and 19: 2 in WAL mode, 1 otherwise), as `PRAGMA journal_mode = DELETE` would,
/// so that the copy needs no `-wal` or `-shm` beside it.
pub(crate) fn as_rollback_journal(offset: u64, chunk: &mut [u8]) {
    if offset == 0 && chunk.len() >= 20 && chunk[18] == 2 && chunk[19] == 2 {
        chunk[18] = 1;
        chunk[19] = 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_copy_is_the_bytes_hashed_patched_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        // Three slices and a bit, not a multiple of the chunk.
        let mut data: Vec<u8> = (0..(3 * SLICE as usize + 12_345))
            .map(|i| (i % 251) as u8)
            .collect();
        data[18] = 2;
        data[19] = 2;
        std::fs::write(&src, &data).unwrap();
        let copy = |len: Option<u64>, name: &str| {
            let to_path = dir.path().join(name);
            let mut to = File::create(&to_path).unwrap();
            let r = copy_hashed(
                &mut File::open(&src).unwrap(),
                &src,
                &mut to,
                &to_path,
                len,
                Algorithm::Blake3,
                as_rollback_journal,
            );
            (r, std::fs::read(&to_path).unwrap())
        };
        let (r, got) = copy(None, "all");
        let mut want = data.clone();
        want[18] = 1;
        want[19] = 1;
        assert_eq!(got, want);
        let r = r.unwrap();
        assert_eq!(r.bytes, data.len() as u64);
        assert_eq!(r.checksum.hex, blake3::hash(&want).to_hex().to_string());
        // A length: that many bytes only.
        let (r, got) = copy(Some(4096), "head");
        assert_eq!(got, want[..4096]);
        assert_eq!(
            r.unwrap().checksum.hex,
            blake3::hash(&want[..4096]).to_hex().to_string()
        );
        // A source shorter than promised is corrupt.
        let (r, _) = copy(Some(data.len() as u64 + 1), "short");
        assert_eq!(r.unwrap_err().kind(), crate::ErrorKind::Corrupt);
    }
}
