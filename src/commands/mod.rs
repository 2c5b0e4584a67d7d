//! The handlers of `pra`'s subcommands (but `run` and `drill`, which have their own modules), one
//! file per command group; this module owns what they share: how to print ([`Out`]), who makes
//! a change ([`Who`]), how a site is named.

mod backup;
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
pub use metrics::metrics;
pub use plan::{PlanCmd, plan};
pub use site::{SiteCmd, check, journal, site};
pub use status::status;

use pra_core::SiteId;
use serde::Serialize;

/// How to print.
pub struct Out {
    pub json: bool,
}

impl Out {
    /// Prints `value` as pretty JSON, or `text()` otherwise.
    pub fn print<T: Serialize>(&self, value: &T, text: impl FnOnce() -> String) {
        if self.json {
            println!(
                "{}",
                serde_json::to_string_pretty(value).expect("pra values serialize")
            );
        } else {
            let t = text();
            if !t.is_empty() {
                println!("{}", t.trim_end());
            }
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct Who {
    /// Who makes the change [default: $USER].
    #[arg(long, env = "USER", default_value = "unknown")]
    pub by: String,
    /// Why, for the journal.
    #[arg(long, default_value = "")]
    pub reason: String,
}

/// A site as the CLI prints it: `NONE` when no site is active.
pub(crate) fn site_name(s: Option<&SiteId>) -> &str {
    s.map_or("NONE", SiteId::as_str)
}
