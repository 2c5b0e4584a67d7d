//! The fencing token: a number that only grows. It depends on nothing else in pra, so that the
//! error type can name tokens without a module cycle.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A fencing token: bumped by exactly one at every change of the active-site record, never
/// reused, never decreasing. A job carries the token it was allowed to run under; anything that
/// has seen a higher token refuses it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct FencingToken(pub u64);

impl FencingToken {
    /// The token before any change was ever made.
    pub const ZERO: FencingToken = FencingToken(0);

    /// The next token, or `None` rather than wrapping (at one change per microsecond that
    /// takes half a million years, but a corrupted store could get there).
    pub fn checked_next(self) -> Option<FencingToken> {
        self.0.checked_add(1).map(FencingToken)
    }
}

impl fmt::Display for FencingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}
