//! The handlers of `pra`'s subcommands (but `run` and `drill`, which have their own modules), one
//! file per command group; this module owns what they share: how to print ([`Out`]), who makes
//! a change ([`Who`]), how a site is named.

mod backup;
mod fence;
mod jobs;
mod metrics;
#[cfg(feature = "offsite")]
mod offsite;
mod plan;
mod site;
mod status;

pub use backup::{
    BackupArgs, BackupsArgs, PruneArgs, RestoreArgs, VerifyArgs, backup, backups, prune, restore,
    verify,
};
pub use fence::{FenceArgs, fence};
pub use jobs::jobs;
pub use metrics::{MetricsArgs, exposition, metrics};
pub use plan::{PlanCmd, plan};
pub use site::{JournalArgs, SiteCmd, check, journal, site};
pub use status::{document, status};

use pra_core::{Error, SiteId};
use serde::Serialize;

/// How to print.
pub struct Out {
    pub json: bool,
}

impl Out {
    /// Prints `value` as pretty JSON, or `text()` otherwise (see [`crate::output`] for what a
    /// closed or full standard output does).
    pub fn print<T: Serialize>(
        &self,
        value: &T,
        text: impl FnOnce() -> String,
    ) -> Result<(), Error> {
        if self.json {
            let json = serde_json::to_string_pretty(value)
                .map_err(|e| Error::Internal(format!("serialize: {e}")))?;
            crate::output::line(&json)
        } else {
            let t = text();
            if t.is_empty() {
                return Ok(());
            }
            crate::output::line(t.trim_end())
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct Who {
    /// Who makes the change [default: $USER, else $SUDO_USER, $LOGNAME, the user of this uid].
    #[arg(long)]
    pub by: Option<String>,
    /// Why, for the journal.
    #[arg(long, default_value = "")]
    pub reason: String,
}

impl Who {
    /// The actor: `--by`, else the first of `USER`, `SUDO_USER`, `LOGNAME` that is set and not
    /// empty, else the name of the process's user (`uid N` when it has none) — cron and
    /// systemd run jobs without `USER`, and a journal line needs a name.
    pub fn actor(&self) -> Result<pra_core::Actor, Error> {
        let by = match &self.by {
            Some(by) => by.clone(),
            None => ["USER", "SUDO_USER", "LOGNAME"]
                .iter()
                .filter_map(|v| std::env::var(v).ok())
                .find(|v| !v.trim().is_empty())
                .unwrap_or_else(user_of_uid),
        };
        pra_core::Actor::new(&by, &self.reason)
    }
}

/// The name of this process's real user, from the password database; `uid N` without one.
fn user_of_uid() -> String {
    // SAFETY: getuid cannot fail; getpwuid_r writes only into `pw` and `buf`, whose sizes are
    // given, and the name it points to lives in `buf`, read before `buf` is dropped.
    unsafe {
        let uid = libc::getuid();
        let mut pw: libc::passwd = std::mem::zeroed();
        let mut buf = vec![0 as libc::c_char; 4096];
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        let rc = libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut found);
        if rc == 0
            && !found.is_null()
            && !pw.pw_name.is_null()
            && let Ok(name) = std::ffi::CStr::from_ptr(pw.pw_name).to_str()
            && !name.is_empty()
        {
            return name.to_string();
        }
        format!("uid {uid}")
    }
}

/// A site as the CLI prints it: `NONE` when no site is active.
pub(crate) fn site_name(s: Option<&SiteId>) -> &str {
    s.map_or("NONE", SiteId::as_str)
}
