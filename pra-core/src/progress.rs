//! How far a long operation is — bytes copied by a backup or a restore, backups removed by a
//! prune, runs a drain still waits for: the library reports, and a front end that registered a
//! [`Progress`] draws it (the CLI's progress bars on a terminal). Nothing here prints; without
//! a registered one, reporting costs a load of an empty cell.

use std::sync::OnceLock;

/// What a front end does with the reports. One operation at a time: a phase starts, advances,
/// and finishes before the next starts.
pub trait Progress: Send + Sync {
    /// A phase starts: what it does, and how many units (bytes, backups) it takes if known.
    fn start(&self, what: &str, total: Option<u64>);
    /// `done` units of the phase are done.
    fn set(&self, done: u64);
    /// A word on where the phase is ("3 runs still alive").
    fn message(&self, msg: &str);
    /// The phase is over (done or failed).
    fn finish(&self);
}

static SINK: OnceLock<Box<dyn Progress>> = OnceLock::new();

/// Registers the process's [`Progress`]; `false` if one already was (the first stays).
pub fn register(progress: Box<dyn Progress>) -> bool {
    SINK.set(progress).is_ok()
}

/// A phase of a long operation, reported while it lives (finished when dropped).
pub(crate) struct Phase {
    on: Option<&'static dyn Progress>,
}

/// Starts a phase (see [`Progress::start`]).
pub(crate) fn phase(what: &str, total: Option<u64>) -> Phase {
    let on = SINK.get().map(|b| &**b);
    if let Some(p) = on {
        p.start(what, total);
    }
    Phase { on }
}

impl Phase {
    /// See [`Progress::set`].
    pub(crate) fn set(&self, done: u64) {
        if let Some(p) = self.on {
            p.set(done);
        }
    }

    /// See [`Progress::message`].
    pub(crate) fn message(&self, msg: &str) {
        if let Some(p) = self.on {
            p.message(msg);
        }
    }
}

impl Drop for Phase {
    fn drop(&mut self) {
        if let Some(p) = self.on {
            p.finish();
        }
    }
}
