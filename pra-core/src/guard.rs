//! The guard: may this site run jobs now? Deny by default — only the site named in the
//! active-site record gets `Run`, and an unreadable store is an error the caller must treat as
//! "do not run".

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::fencing::FencingToken;
use crate::site::SiteId;
use crate::store::Store;

/// The guard's answer for one site.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    /// This site is the active one: run, and carry `token` into every fenced write.
    Run {
        /// The token the run is allowed under.
        token: FencingToken,
    },
    /// Another site (or none) is active: do not run.
    Standby {
        /// The active site, if any.
        active: Option<SiteId>,
        /// The record's current token.
        token: FencingToken,
    },
}

impl Verdict {
    /// Whether the site may run jobs.
    pub fn may_run(&self) -> bool {
        matches!(self, Verdict::Run { .. })
    }

    /// The token the verdict was given under.
    pub fn token(&self) -> FencingToken {
        match self {
            Verdict::Run { token } | Verdict::Standby { token, .. } => *token,
        }
    }
}

/// Asks `store` whether `site` may run jobs now. Any error reading the store is returned: the
/// front ends turn it into "do not run" and say why (fail closed).
#[tracing::instrument(level = "debug", skip(store), fields(store = store.url()))]
pub fn check(store: &dyn Store, site: &SiteId) -> Result<Verdict> {
    let record = store.load()?;
    Ok(match record.site {
        Some(active) if active == *site => Verdict::Run {
            token: record.token,
        },
        active => Verdict::Standby {
            active,
            token: record.token,
        },
    })
}
