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

/// The name of the file system whose `statfs` magic number is `f_type`, if it is one whose
/// files several hosts may reach (network and cluster file systems, and FUSE, behind which
/// any of them can hide): there, SQLite's WAL (shared memory on one host) does not work, and
/// advisory locks between hosts are not guaranteed.
pub(crate) fn network_fs(f_type: u32) -> Option<&'static str> {
    Some(match f_type {
        0x6969 => "NFS",
        0x517B => "SMB",
        0xFF53_4D42 => "CIFS",
        0xFE53_4D42 => "SMB2",
        0x6573_5546 => "FUSE",
        0x0102_1997 => "9p",
        0x00C3_6400 => "CephFS",
        0x5346_414F => "AFS",
        0x6B41_4653 => "kAFS",
        0x7375_7245 => "Coda",
        0x564C => "NCP",
        0x7461_636F => "OCFS2",
        0x0116_1970 => "GFS2",
        0x0BD0_0BD0 => "Lustre",
        0x4750_4653 => "GPFS",
        0x1983_0326 => "BeeGFS",
        _ => return None,
    })
}

/// The network file system (see [`network_fs`]) that `dir` is on, if it is on one.
pub(crate) fn network_fs_of(dir: &Path) -> Option<&'static str> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: a valid NUL-terminated path, and a statfs buffer statfs fills.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    network_fs(st.f_type as u32)
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

/// Writes `data` to `path` atomically: a temporary file in the same directory, fsync, rename
/// over `path`, fsync of the directory. Readers see the old or the new content, never a mix;
/// after a crash the temporary file may remain, never a partial `path`. The new file keeps the
/// mode, group (and, when pra runs as root, owner) of the file it replaces, set on the
/// temporary file before the rename; a new `path` gets `sharing`'s.
pub(crate) fn write_atomic(path: &Path, data: &[u8], sharing: Sharing) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let tmp = with_suffix(path, &format!(".tmp.{}", std::process::id()));
    let (mode, owner) = match fs::metadata(path) {
        Ok(m) => (m.mode() & 0o777, Some((m.uid(), m.gid()))),
        Err(_) => (sharing.mode(), sharing.group.map(|g| (u32::MAX, g))),
    };
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)
            .map_err(|e| Error::io("create", &tmp, e))?;
        set_owner_and_mode(&f, &tmp, mode, owner)?;
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

/// Gives the file `f` (at `path`) `mode` whatever the umask, and the group of `owner` (and its
/// user, when this process is root and may give files away; `u32::MAX` keeps the user).
fn set_owner_and_mode(f: &File, path: &Path, mode: u32, owner: Option<(u32, u32)>) -> Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    f.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(|e| Error::io("chmod", path, e))?;
    let Some((uid, gid)) = owner else {
        return Ok(());
    };
    let now = f.metadata().map_err(|e| Error::io("stat", path, e))?;
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let uid = Some(uid).filter(|&u| root && u != u32::MAX && u != now.uid());
    let gid = Some(gid).filter(|&g| g != now.gid());
    if uid.is_none() && gid.is_none() {
        return Ok(());
    }
    std::os::unix::fs::fchown(f, uid, gid).map_err(|e| {
        Error::io(
            "keep the group of",
            path,
            io::Error::other(format!(
                    "{e}: this process ({}) is not a member of group {}; add the user to it (`usermod -aG {} USER`)",
                    whoami(),
                    group_name(gid.unwrap_or(now.gid())),
                    group_name(gid.unwrap_or(now.gid()))
            )),
        )
    })?;
    // chown clears the set-id bits: give the mode again.
    f.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(|e| Error::io("chmod", path, e))
}

/// Who may use a store's files: their owner alone (mode 0600, the default), or also the
/// members of one group (`store_group`: 0660, that group; the directory is expected 2770, so
/// that files created beside the store, such as SQLite's `-wal` and `-shm`, get the group too).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sharing {
    /// The group, if the store is shared with one.
    pub group: Option<u32>,
}

impl Sharing {
    /// The owner alone.
    pub const PRIVATE: Sharing = Sharing { group: None };

    /// Shared with the group `name` (a name or a number).
    pub fn group(name: &str) -> Result<Sharing> {
        let gid = match name.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => group_id(name).ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "store_group {name:?}: no such group (create it with `groupadd {name}`)"
                ))
            })?,
        };
        Ok(Sharing { group: Some(gid) })
    }

    /// The mode of the files it creates.
    pub fn mode(self) -> u32 {
        if self.group.is_some() { 0o660 } else { 0o600 }
    }

    /// Opens `path` with `opts`, first creating it with this sharing's mode and group if it
    /// does not exist (an existing file keeps its own).
    pub(crate) fn open_or_create(self, opts: &OpenOptions, path: &Path) -> Result<File> {
        match opts.clone().create_new(true).mode(self.mode()).open(path) {
            Ok(f) => {
                set_owner_and_mode(&f, path, self.mode(), self.group.map(|g| (u32::MAX, g)))?;
                Ok(f)
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                opts.open(path).map_err(|e| Error::io("open", path, e))
            }
            Err(e) => Err(Error::io("create", path, e)),
        }
    }

    /// Warns when the directory `dir` of a shared store is not its group's, 2770: files created
    /// in it would not all get the group.
    pub(crate) fn check_dir(self, dir: &Path) {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let (Some(gid), Ok(m)) = (self.group, fs::metadata(dir)) else {
            return;
        };
        let mode = m.permissions().mode();
        if m.gid() != gid || mode & 0o2070 != 0o2070 {
            let g = group_name(gid);
            tracing::warn!(
                dir = %dir.display(),
                "the store is shared with group {g}, but its directory is group {} with mode {:04o}; run `chgrp {g} {} && chmod 2770 {}`",
                group_name(m.gid()),
                mode & 0o7777,
                dir.display(),
                dir.display()
            );
        }
    }
}

/// Why this process may not use `path` (or, if it does not exist, its directory): the file's
/// owner, group and mode, who this process is, and how to share a store.
pub(crate) fn explain_denied(path: &Path) -> String {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let (what, meta) = match fs::metadata(path) {
        Ok(m) => (path, m),
        Err(_) => match fs::metadata(parent_dir(path)) {
            Ok(m) => (parent_dir(path), m),
            Err(e) => return format!("{}: {e}", path.display()),
        },
    };
    let group = group_name(meta.gid());
    format!(
        "permission denied: {} is owned by {} and group {group} with mode {:04o}, and this process runs as {}. \
         To share the store between its operators and the jobs, give its files one group: \
         store_group = \"{group}\" in pra.toml (or PRA_STORE_GROUP), `chgrp {group} DIR && chmod 2770 DIR` \
         for its directory, `chgrp {group} FILE && chmod 660 FILE` for the files already there, \
         and add the job's user to the group (`usermod -aG {group} USER`); see README, File permissions",
        what.display(),
        user_name(meta.uid()),
        meta.permissions().mode() & 0o7777,
        whoami()
    )
}

/// Whether this process may access `path` as `mode` (`libc::R_OK | libc::W_OK`...).
pub(crate) fn may(path: &Path, mode: i32) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: a valid NUL-terminated path.
    unsafe { libc::access(c.as_ptr(), mode) == 0 }
}

/// This process's user and groups, for messages: `app (uid 1001; groups app, pra)`.
fn whoami() -> String {
    // SAFETY: geteuid and getgroups have no preconditions; the buffer holds `n` groups.
    let uid = unsafe { libc::geteuid() };
    let mut groups = vec![0 as libc::gid_t; 256];
    let n = unsafe { libc::getgroups(groups.len() as i32, groups.as_mut_ptr()) };
    let mut names: Vec<String> = vec![group_name(unsafe { libc::getegid() })];
    for g in groups.iter().take(n.max(0) as usize) {
        let name = group_name(*g);
        if !names.contains(&name) {
            names.push(name);
        }
    }
    format!(
        "{} (uid {uid}; groups {})",
        user_name(uid),
        names.join(", ")
    )
}

/// An entry of the user or group database, looked up by the reentrant `call` (`getpwuid_r`,
/// `getgrgid_r`, `getgrnam_r`: entry, buffer, its length, result), and what `get` takes of it.
fn lookup<T, R>(
    call: impl FnOnce(*mut T, *mut libc::c_char, usize, *mut *mut T) -> libc::c_int,
    get: impl FnOnce(&T) -> R,
) -> Option<R> {
    let mut buf = vec![0 as libc::c_char; 16384];
    // SAFETY: the entry is plain C data, filled by `call`, which writes at most `buf.len()`
    // bytes into `buf` and sets `out` to the entry when it found one.
    unsafe {
        let mut entry: T = std::mem::zeroed();
        let mut out = std::ptr::null_mut();
        (call(&mut entry, buf.as_mut_ptr(), buf.len(), &mut out) == 0 && !out.is_null())
            .then(|| get(&entry))
    }
}

/// The name field of a database entry.
fn name_of(name: *const libc::c_char) -> String {
    // SAFETY: `lookup` gives the name of an entry it found: a NUL-terminated string in its buffer.
    unsafe { std::ffi::CStr::from_ptr(name) }
        .to_string_lossy()
        .into_owned()
}

/// The name of user `uid`, or its number.
fn user_name(uid: u32) -> String {
    // SAFETY (of the call): per getpwuid_r's contract, with the arguments `lookup` gives.
    lookup(
        |e, b, n, o| unsafe { libc::getpwuid_r(uid, e, b, n, o) },
        |pw: &libc::passwd| name_of(pw.pw_name),
    )
    .unwrap_or_else(|| uid.to_string())
}

/// The name of group `gid`, or its number.
fn group_name(gid: u32) -> String {
    lookup(
        |e, b, n, o| unsafe { libc::getgrgid_r(gid, e, b, n, o) },
        |gr: &libc::group| name_of(gr.gr_name),
    )
    .unwrap_or_else(|| gid.to_string())
}

/// The number of group `name`.
fn group_id(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    lookup(
        |e, b, n, o| unsafe { libc::getgrnam_r(c.as_ptr(), e, b, n, o) },
        |gr: &libc::group| gr.gr_gid,
    )
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_file_systems_are_known_by_their_magic() {
        for (magic, name) in [
            (0x6969, "NFS"),
            (0xFF53_4D42, "CIFS"),
            (0xFE53_4D42, "SMB2"),
            (0x6573_5546, "FUSE"),
            (0x0102_1997, "9p"),
            (0x00C3_6400, "CephFS"),
        ] {
            assert_eq!(network_fs(magic), Some(name));
        }
        // ext4, xfs, btrfs, tmpfs, overlayfs, zfs: one host's.
        for local in [
            0xEF53,
            0x5846_5342,
            0x9123_683E,
            0x0102_1994,
            0x794C_7630,
            0x2FC1_2FC1,
        ] {
            assert_eq!(network_fs(local), None, "{local:#x}");
        }
        // The magic numbers that do not fit in 31 bits are matched whatever the sign of f_type.
        assert_eq!(
            network_fs(0xFF53_4D42_u32 as i32 as i64 as u32),
            Some("CIFS")
        );
        assert_eq!(network_fs_of(Path::new("/proc")), None);
    }
}
