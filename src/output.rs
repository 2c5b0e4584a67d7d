//! Writing to standard output as command-line tools do: a reader that went away (`pra journal |
//! head -1`) ends pra quietly, by SIGPIPE, as it ends `cat`; any other failure (a full disk, a
//! closed descriptor) is an error with a message and an exit code, never a panic.

use std::io::Write;

use pra_core::Error;

/// Writes `text` to standard output and flushes it.
pub fn stdout(text: &str) -> Result<(), Error> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            // As coreutils: die of the signal the write would have raised, had Rust's runtime
            // not ignored it (the shell reports 141; pipelines treat it as the reader's choice).
            // SAFETY: restoring a signal's default disposition and raising it have no memory
            // effects on this process beyond ending it.
            unsafe {
                libc::signal(libc::SIGPIPE, libc::SIG_DFL);
                libc::raise(libc::SIGPIPE);
            }
            Err(Error::io("write", "standard output", e))
        }
        Err(e) => Err(Error::io("write", "standard output", e)),
    }
}

/// [`stdout`] with a newline.
pub fn line(text: &str) -> Result<(), Error> {
    stdout(&format!("{text}\n"))
}

/// Writes `text` to `path` atomically, readable by all (0644: node_exporter runs as its own
/// user): a temporary file beside it, fsynced, renamed over it, the directory fsynced.
pub fn write_file_atomic(path: &std::path::Path, text: &str) -> Result<(), Error> {
    use std::os::unix::fs::PermissionsExt;
    let name = path
        .file_name()
        .ok_or_else(|| Error::InvalidArgument(format!("{} is not a file name", path.display())))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.set_permissions(std::fs::Permissions::from_mode(0o644))?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(&dir)?.sync_all()
    })();
    written.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io("write", path, e)
    })
}
