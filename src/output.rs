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
