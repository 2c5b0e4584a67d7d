//! Sites: validated site names, the two-site topology, and which site this host belongs to.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A site name: 1 to 32 characters of lowercase `a-z`, `0-9` and `-`.
///
/// Parsing lowercases its input first, so the seed's `ACTIVE_SITE=SBG` reads as `sbg`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SiteId(String);

impl SiteId {
    /// Validates `name` (after lowercasing) as a site name.
    pub fn new(name: &str) -> Result<Self> {
        let lower = name.trim().to_ascii_lowercase();
        let ok = (1..=32).contains(&lower.len())
            && lower
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if ok {
            Ok(SiteId(lower))
        } else {
            Err(Error::InvalidArgument(format!(
                "invalid site name {name:?}: expected 1-32 characters of a-z, 0-9 and '-'"
            )))
        }
    }

    /// The site name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SiteId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for SiteId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        SiteId::new(s)
    }
}

impl TryFrom<String> for SiteId {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        SiteId::new(&s)
    }
}

impl From<SiteId> for String {
    fn from(s: SiteId) -> String {
        s.0
    }
}

/// The two sites of a deployment: the primary (RBX in the seed) and the secondary (SBG).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Topology {
    primary: SiteId,
    secondary: SiteId,
}

impl Topology {
    /// A topology of two distinct sites.
    pub fn new(primary: SiteId, secondary: SiteId) -> Result<Self> {
        if primary == secondary {
            return Err(Error::InvalidArgument(format!(
                "primary and secondary must be two different sites, both are {primary}"
            )));
        }
        Ok(Topology { primary, secondary })
    }

    /// Parses `"rbx,sbg"` (primary first) into a topology.
    pub fn parse(sites: &str) -> Result<Self> {
        let parts: Vec<&str> = sites.split(',').map(str::trim).collect();
        match parts.as_slice() {
            [p, s] => Topology::new(SiteId::new(p)?, SiteId::new(s)?),
            _ => Err(Error::InvalidArgument(format!(
                "expected two sites as \"primary,secondary\", got {sites:?}"
            ))),
        }
    }

    /// The primary site.
    pub fn primary(&self) -> &SiteId {
        &self.primary
    }

    /// The secondary (recovery) site.
    pub fn secondary(&self) -> &SiteId {
        &self.secondary
    }

    /// Both sites, primary first.
    pub fn sites(&self) -> [&SiteId; 2] {
        [&self.primary, &self.secondary]
    }

    /// The site that is not `site`, or an error if `site` is not part of this topology.
    pub fn other(&self, site: &SiteId) -> Result<&SiteId> {
        if *site == self.primary {
            Ok(&self.secondary)
        } else if *site == self.secondary {
            Ok(&self.primary)
        } else {
            Err(self.unknown(site.as_str()))
        }
    }

    /// `name` as one of the configured sites, or an [`Error::InvalidArgument`] naming the
    /// configured ones.
    /// The sites of the front ends that have no configuration file (the C library, the Python
    /// module): `PRA_SITES` when set ("primary,secondary"), else [`crate::defaults::SITES`] —
    /// the same default as the command line's.
    pub fn from_env() -> Result<Topology> {
        match std::env::var("PRA_SITES") {
            Ok(sites) if !sites.trim().is_empty() => Topology::parse(&sites),
            _ => Topology::parse(crate::defaults::SITES),
        }
    }

    /// `name` if it is one of the two sites, else [`Error::InvalidArgument`] naming them: a
    /// misspelt site is an error, never a site that is merely standby.
    pub fn site(&self, name: &str) -> Result<SiteId> {
        let id = SiteId::new(name)?;
        if self.sites().contains(&&id) {
            Ok(id)
        } else {
            Err(self.unknown(name))
        }
    }

    fn unknown(&self, name: &str) -> Error {
        Error::InvalidArgument(format!(
            "unknown site {name:?}: the configured sites are {} (primary) and {}",
            self.primary, self.secondary
        ))
    }

    /// Which site this host belongs to: `pra_site` (the `PRA_SITE` variable) when set, otherwise
    /// the one configured site name found in `hostname` (as the seed's `hostname | grep -oE
    /// 'rbx|sbg'`). No match, or both sites matching, is an error: never a guess.
    pub fn detect(&self, pra_site: Option<&str>, hostname: &str) -> Result<SiteId> {
        if let Some(name) = pra_site.filter(|s| !s.trim().is_empty()) {
            return self.site(name);
        }
        let host = hostname.to_ascii_lowercase();
        let found: Vec<&SiteId> = self
            .sites()
            .into_iter()
            .filter(|s| host.contains(s.as_str()))
            .collect();
        match found.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(Error::InvalidArgument(format!(
                "cannot tell this host's site: hostname {hostname:?} contains neither {} nor {}; set PRA_SITE",
                self.primary, self.secondary
            ))),
            _ => Err(Error::InvalidArgument(format!(
                "cannot tell this host's site: hostname {hostname:?} contains both {} and {}; set PRA_SITE",
                self.primary, self.secondary
            ))),
        }
    }
}

/// This machine's hostname (empty if it cannot be read).
pub fn hostname() -> String {
    gethostname::gethostname().to_string_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topo() -> Topology {
        Topology::parse("rbx,sbg").unwrap()
    }

    #[test]
    fn site_names_are_validated_and_lowercased() {
        assert_eq!(SiteId::new("SBG").unwrap().as_str(), "sbg");
        assert_eq!(SiteId::new("eu-west-1").unwrap().as_str(), "eu-west-1");
        for bad in ["", "a b", "rbx/..", "é", "x".repeat(33).as_str(), "rbx_1"] {
            assert!(SiteId::new(bad).is_err(), "{bad:?} accepted");
        }
        assert!(SiteId::new(&"x".repeat(32)).is_ok());
    }

    #[test]
    fn serde_refuses_invalid_names() {
        assert!(serde_json::from_str::<SiteId>("\"rbx\"").is_ok());
        assert!(serde_json::from_str::<SiteId>("\"../etc\"").is_err());
    }

    #[test]
    fn topology_needs_two_distinct_sites() {
        assert!(Topology::parse("rbx,rbx").is_err());
        assert!(Topology::parse("rbx").is_err());
        assert!(Topology::parse("rbx,sbg,gra").is_err());
        let t = topo();
        assert_eq!(t.primary().as_str(), "rbx");
        assert_eq!(t.other(t.primary()).unwrap().as_str(), "sbg");
        let err = t.site("gra").unwrap_err().to_string();
        assert!(
            err.contains("gra") && err.contains("rbx") && err.contains("sbg"),
            "{err}"
        );
    }

    #[test]
    fn detection_prefers_pra_site_then_hostname() {
        let t = topo();
        assert_eq!(t.detect(Some("SBG"), "app-rbx-01").unwrap().as_str(), "sbg");
        assert_eq!(
            t.detect(None, "app-RBX-01.example").unwrap().as_str(),
            "rbx"
        );
        assert_eq!(t.detect(Some(""), "vm-sbg-2").unwrap().as_str(), "sbg");
        assert!(t.detect(Some("gra"), "vm-sbg-2").is_err());
    }

    #[test]
    fn detection_never_guesses() {
        let t = topo();
        assert!(
            t.detect(None, "build-host")
                .unwrap_err()
                .to_string()
                .contains("neither")
        );
        assert!(
            t.detect(None, "rbx-to-sbg-proxy")
                .unwrap_err()
                .to_string()
                .contains("both")
        );
    }
}
