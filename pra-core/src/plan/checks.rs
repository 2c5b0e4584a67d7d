//! Gate checks: commands run before a plan event — the seed's checklist (ping or curl the site,
//! `select 1` on the database, mounts present, one canary job, replication RPO under 5 min) — each
//! result journaled; a failing check blocks the event unless a person overrides it on the record.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::fencing::Actor;
use crate::store::{Commit, JournalEvent, Store};

/// The end of a check's output that is kept (and journaled).
pub const OUTPUT_KEPT: usize = 4096;

/// How one check went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckResult {
    /// The command, as `sh -c` ran it.
    pub command: String,
    /// Its exit code (`None`: killed by a signal, or not started).
    pub exit_code: Option<i32>,
    /// Whether it was killed for running past the timeout.
    pub timed_out: bool,
    /// How long it ran.
    pub duration_ms: u64,
    /// The last [`OUTPUT_KEPT`] bytes of its standard output and error, together.
    pub output: String,
}

impl CheckResult {
    /// Exit code 0, in time.
    pub fn passed(&self) -> bool {
        !self.timed_out && self.exit_code == Some(0)
    }
}

/// Runs `commands` in order with `sh -c`, each killed (its whole process group) after
/// `timeout`. All of them run, so that the journal shows every failing one at once.
pub fn run(commands: &[String], timeout: Duration) -> Vec<CheckResult> {
    commands.iter().map(|c| run_one(c, timeout)).collect()
}

fn run_one(command: &str, timeout: Duration) -> CheckResult {
    use std::os::unix::process::CommandExt;
    let started = Instant::now();
    let failed = |why: String| CheckResult {
        command: command.to_string(),
        exit_code: None,
        timed_out: false,
        duration_ms: started.elapsed().as_millis() as u64,
        output: why,
    };
    // One pipe for both streams, so the output reads in the order it was written.
    let (reader, writer) = match std::io::pipe() {
        Ok(p) => p,
        Err(e) => return failed(format!("cannot make a pipe: {e}")),
    };
    let writer2 = match writer.try_clone() {
        Ok(w) => w,
        Err(e) => return failed(format!("cannot make a pipe: {e}")),
    };
    let mut child = match Command::new("sh")
        .args(["-c", command])
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(writer2)
        .process_group(0)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return failed(format!("cannot start sh: {e}")),
    };
    let mut reader = reader;
    let collect = std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = reader.read_to_end(&mut out);
        out
    });
    let mut timed_out = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if started.elapsed() >= timeout => {
                timed_out = true;
                // SAFETY: kill only sends a signal to the process group the check leads.
                unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
                break child.wait().ok();
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(_) => break None,
        }
    };
    if !timed_out {
        // A background process of the check may hold the pipe open: it goes with the group.
        // SAFETY: as above.
        unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
    }
    let out = collect.join().unwrap_or_default();
    let tail = &out[out.len().saturating_sub(OUTPUT_KEPT)..];
    CheckResult {
        command: command.to_string(),
        exit_code: status.and_then(|s| s.code()),
        timed_out,
        duration_ms: started.elapsed().as_millis() as u64,
        output: String::from_utf8_lossy(tail).into_owned(),
    }
}

/// Journals the checks of `event` (a plan event's name) and decides: `Ok(())` when they all
/// passed or `actor` overrides them (`overridden`, with the actor's reason, which must not be
/// empty); [`Error::Refused`] naming each failed check and its output otherwise. The entry is
/// written either way: a refused gate is on the record too.
pub fn gate(
    store: &dyn Store,
    actor: &Actor,
    event: &str,
    results: Vec<CheckResult>,
    overridden: bool,
) -> Result<()> {
    let failed: Vec<&CheckResult> = results.iter().filter(|r| !r.passed()).collect();
    if overridden && actor.reason.trim().is_empty() {
        return Err(Error::InvalidArgument(
            "--override needs a --reason: it is written to the journal".into(),
        ));
    }
    let message = failed
        .iter()
        .map(|r| {
            let how = if r.timed_out {
                "timed out".to_string()
            } else {
                r.exit_code
                    .map_or("killed".to_string(), |c| format!("exit {c}"))
            };
            format!("`{}` failed ({how}): {}", r.command, r.output.trim_end())
        })
        .collect::<Vec<_>>()
        .join("\n");
    let passed = failed.is_empty();
    let mut commit = Commit::by(actor);
    commit.events.push(JournalEvent::GateChecked {
        event: event.to_string(),
        passed,
        overridden: overridden && !passed,
        checks: results.clone(),
    });
    store.commit(&commit)?;
    if passed || overridden {
        Ok(())
    } else {
        Err(Error::Refused(format!(
            "the checks of {event} failed (journaled; --override --reason WHY passes them on the record):\n{message}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_report_exit_codes_output_and_timeouts() {
        let r = run(
            &[
                "echo up; true".into(),
                "echo down >&2; exit 3".into(),
                "sleep 5 & sleep 5".into(),
            ],
            Duration::from_millis(300),
        );
        assert!(r[0].passed() && r[0].output == "up\n", "{:?}", r[0]);
        assert_eq!((r[1].exit_code, r[1].output.as_str()), (Some(3), "down\n"));
        assert!(!r[1].passed());
        assert!(r[2].timed_out && !r[2].passed(), "{:?}", r[2]);
        assert!(
            r[2].duration_ms < 3000,
            "the whole group was killed: {:?}",
            r[2]
        );
        let long = run(
            &["head -c 10000 /dev/zero | tr '\\\\0' x".into()],
            Duration::from_secs(5),
        );
        assert_eq!(long[0].output.len(), OUTPUT_KEPT);
    }
}
