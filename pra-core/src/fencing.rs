//! Fencing: the strictly increasing token, the active-site record it versions, the activation
//! rules (break before make), and the storage-side fence that refuses writes from a stale token.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::site::SiteId;
pub use crate::token::FencingToken;

/// The active-site record: which site may run jobs, under which token, and who set it, when and
/// why. `site: None` is a real state in which no site may run jobs (the seed's
/// `ACTIVE_SITE=NONE`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActiveSite {
    /// The site allowed to run jobs, if any.
    pub site: Option<SiteId>,
    /// The token of this version of the record.
    pub token: FencingToken,
    /// When this version was written.
    pub changed_at: DateTime<Utc>,
    /// Who wrote it (operator, plan, host).
    pub changed_by: String,
    /// Why.
    pub reason: String,
}

impl ActiveSite {
    /// The record of a store nobody has written to yet: no site active, token 0.
    pub fn initial() -> Self {
        ActiveSite {
            site: None,
            token: FencingToken::ZERO,
            changed_at: DateTime::<Utc>::UNIX_EPOCH,
            changed_by: "pra".into(),
            reason: "initial record: no site active".into(),
        }
    }
}

/// A requested change of the active-site record, made against the token the caller last saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum SiteChange {
    /// Make `site` the active site. Only allowed while no site is active (break before make).
    Activate {
        /// The site to activate.
        site: SiteId,
        /// The token the caller expects the record to be at.
        expect: FencingToken,
    },
    /// Make no site active.
    Deactivate {
        /// The token the caller expects the record to be at.
        expect: FencingToken,
    },
}

impl SiteChange {
    /// The token this change expects to find.
    pub fn expect(&self) -> FencingToken {
        match self {
            SiteChange::Activate { expect, .. } | SiteChange::Deactivate { expect } => *expect,
        }
    }
}

/// Who makes a change and why; both go into the record and the journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    /// Operator or component name; non-empty.
    pub by: String,
    /// Free text; may be empty.
    pub reason: String,
}

impl Actor {
    /// Validates `by` (1-128 characters) and `reason` (at most 1024), neither with control
    /// characters, so they cannot forge extra lines in a lock file or a log.
    pub fn new(by: &str, reason: &str) -> Result<Self> {
        if by.chars().chain(reason.chars()).any(char::is_control) {
            return Err(Error::InvalidArgument(
                "`by` and `reason` may not contain control characters or newlines".into(),
            ));
        }
        let by = by.trim();
        if by.is_empty() || by.chars().count() > 128 {
            return Err(Error::InvalidArgument(
                "`by` must name who makes the change (1-128 characters)".into(),
            ));
        }
        if reason.chars().count() > 1024 {
            return Err(Error::InvalidArgument(
                "`reason` is limited to 1024 characters".into(),
            ));
        }
        Ok(Actor {
            by: by.to_string(),
            reason: reason.trim().to_string(),
        })
    }
}

/// Applies the activation rules: the record must be at `change.expect` (else
/// [`Error::Conflict`]); activation only from "no site active" and deactivation only of an active
/// site (else [`Error::Refused`]). The new record's token is the old one plus exactly one.
pub fn next_record(
    current: &ActiveSite,
    change: &SiteChange,
    at: DateTime<Utc>,
    actor: &Actor,
) -> Result<ActiveSite> {
    if change.expect() != current.token {
        return Err(Error::Conflict {
            expected: change.expect(),
            found: current.token,
        });
    }
    let site = match (change, &current.site) {
        (SiteChange::Activate { site, .. }, None) => Some(site.clone()),
        (SiteChange::Activate { site, .. }, Some(active)) => {
            return Err(Error::Refused(format!(
                "cannot activate {site}: {active} is active under token {}; deactivate it first (break before make)",
                current.token
            )));
        }
        (SiteChange::Deactivate { .. }, Some(_)) => None,
        (SiteChange::Deactivate { .. }, None) => {
            return Err(Error::Refused(format!(
                "no site is active (token {}); nothing to deactivate",
                current.token
            )));
        }
    };
    Ok(ActiveSite {
        site,
        token: current
            .token
            .checked_next()
            .ok_or_else(|| Error::Internal("fencing token exhausted (u64::MAX)".into()))?,
        changed_at: at,
        changed_by: actor.by.clone(),
        reason: actor.reason.clone(),
    })
}

/// The HTTP header that carries a job's fencing token to the services it calls; `pra run` gives
/// the job `PRA_FENCING_HEADER` = `Pra-Fencing-Token: <token>` (`curl -H "$PRA_FENCING_HEADER"`),
/// and `pra.wsgi.FencingMiddleware` refuses a request whose token is lower than one it saw.
pub const HTTP_HEADER: &str = "Pra-Fencing-Token";

/// Storage-side fencing for the application's own SQLite database.
///
/// A job passes its token to [`Fence::admit`] inside the transaction that writes its results.
/// The fence keeps the highest token it has admitted in a one-row table (`pra_fence`) of that
/// database and refuses any lower token with [`Error::StaleToken`], so a job that started on the
/// old site cannot write after the flip even if it passed its guard check before it.
#[derive(Debug, Clone, Copy)]
pub struct Fence;

impl Fence {
    /// Admits `token` inside `tx`: fails with [`Error::StaleToken`] if a higher token was already
    /// admitted, otherwise records `token` as the highest. The check and the update belong to
    /// `tx`, so they commit or roll back with the caller's own writes.
    pub fn admit(tx: &rusqlite::Transaction<'_>, token: FencingToken) -> Result<FencingToken> {
        Self::admit_in(tx, token)
    }

    /// Creates the fence table if it does not exist.
    pub const SQL_CREATE: &'static str = "CREATE TABLE IF NOT EXISTS pra_fence (id INTEGER PRIMARY KEY CHECK (id = 1), token INTEGER NOT NULL)";
    /// Reads the highest admitted token (no row: none admitted yet).
    pub const SQL_HIGHEST: &'static str = "SELECT token FROM pra_fence WHERE id = 1";
    /// Records `?1` as the highest admitted token; the fence only ever rises, whatever the
    /// caller checked before.
    pub const SQL_RECORD: &'static str = "INSERT INTO pra_fence (id, token) VALUES (1, ?1) ON CONFLICT(id) DO UPDATE SET token = max(token, excluded.token)";

    /// The fence's rule, for front ends that run [`Fence::SQL_CREATE`], [`Fence::SQL_HIGHEST`]
    /// and [`Fence::SQL_RECORD`] through their own connection (Python's `sqlite3`): `presented`
    /// is admitted unless a higher token already was. Returns the value to bind to
    /// [`Fence::SQL_RECORD`].
    pub fn decide(presented: FencingToken, highest: FencingToken) -> Result<i64> {
        if presented < highest {
            return Err(Error::StaleToken { presented, highest });
        }
        i64::try_from(presented.0).map_err(|_| {
            Error::InvalidArgument(format!("fencing token {presented} is out of range"))
        })
    }

    /// [`Fence::admit`] on a connection the caller has already put inside a transaction
    /// (`BEGIN IMMEDIATE` is best: it takes the write lock before the check). Outside a
    /// transaction the check and the update are two statements and a concurrent writer could
    /// slip between them.
    pub fn admit_in(conn: &rusqlite::Connection, token: FencingToken) -> Result<FencingToken> {
        if conn.is_autocommit() {
            return Err(Error::InvalidArgument(
                "fence admission must run inside the transaction that writes the job's results: BEGIN IMMEDIATE first".into(),
            ));
        }
        let sql_err = |e| Error::sqlite("fence admit", "application database", e);
        conn.execute_batch(Self::SQL_CREATE).map_err(sql_err)?;
        let raw = Self::decide(token, Self::highest(conn)?)?;
        conn.execute(Self::SQL_RECORD, [raw]).map_err(sql_err)?;
        Ok(token)
    }

    /// The highest token admitted so far (0 if none, or if the fence table does not exist yet).
    pub fn highest(conn: &rusqlite::Connection) -> Result<FencingToken> {
        let exists: bool = conn
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'pra_fence')",
                [],
                |r| r.get(0),
            )
            .map_err(|e| Error::sqlite("fence read", "application database", e))?;
        if !exists {
            return Ok(FencingToken::ZERO);
        }
        let raw: Option<i64> = conn
            .query_row(Self::SQL_HIGHEST, [], |r| r.get(0))
            .or_else(|e| match e {
                rusqlite::Error::QueryReturnedNoRows => Ok(None),
                e => Err(e),
            })
            .map_err(|e| Error::sqlite("fence read", "application database", e))?;
        Ok(FencingToken(raw.map_or(0, |t| t.max(0) as u64)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
    }
    fn op() -> Actor {
        Actor::new("alice", "drill").unwrap()
    }
    fn site(s: &str) -> SiteId {
        SiteId::new(s).unwrap()
    }

    #[test]
    fn activate_only_from_none_and_bumps_by_one() {
        let r0 = ActiveSite::initial();
        let r1 = next_record(
            &r0,
            &SiteChange::Activate {
                site: site("rbx"),
                expect: FencingToken(0),
            },
            t0(),
            &op(),
        )
        .unwrap();
        assert_eq!(r1.site, Some(site("rbx")));
        assert_eq!(r1.token, FencingToken(1));
        assert_eq!(r1.changed_by, "alice");
        let err = next_record(
            &r1,
            &SiteChange::Activate {
                site: site("sbg"),
                expect: FencingToken(1),
            },
            t0(),
            &op(),
        )
        .unwrap_err();
        assert!(matches!(err, Error::Refused(_)), "{err}");
        assert!(err.to_string().contains("break before make"));
        // Re-activating the same site is refused too: a change must be a change.
        assert!(matches!(
            next_record(
                &r1,
                &SiteChange::Activate {
                    site: site("rbx"),
                    expect: FencingToken(1)
                },
                t0(),
                &op()
            ),
            Err(Error::Refused(_))
        ));
    }

    #[test]
    fn deactivate_only_an_active_site() {
        let r0 = ActiveSite::initial();
        assert!(matches!(
            next_record(
                &r0,
                &SiteChange::Deactivate {
                    expect: FencingToken(0)
                },
                t0(),
                &op()
            ),
            Err(Error::Refused(_))
        ));
        let r1 = next_record(
            &r0,
            &SiteChange::Activate {
                site: site("sbg"),
                expect: FencingToken(0),
            },
            t0(),
            &op(),
        )
        .unwrap();
        let r2 = next_record(
            &r1,
            &SiteChange::Deactivate {
                expect: FencingToken(1),
            },
            t0(),
            &op(),
        )
        .unwrap();
        assert_eq!(r2.site, None);
        assert_eq!(r2.token, FencingToken(2));
    }

    #[test]
    fn stale_expectation_is_a_conflict_naming_both_tokens() {
        let r0 = ActiveSite::initial();
        let r1 = next_record(
            &r0,
            &SiteChange::Activate {
                site: site("rbx"),
                expect: FencingToken(0),
            },
            t0(),
            &op(),
        )
        .unwrap();
        match next_record(
            &r1,
            &SiteChange::Deactivate {
                expect: FencingToken(0),
            },
            t0(),
            &op(),
        ) {
            Err(Error::Conflict { expected, found }) => {
                assert_eq!((expected, found), (FencingToken(0), FencingToken(1)));
            }
            other => panic!("expected conflict, got {other:?}"),
        }
    }

    #[test]
    fn token_never_wraps() {
        assert!(FencingToken(u64::MAX).checked_next().is_none());
    }

    #[test]
    fn actor_refuses_control_characters() {
        assert!(Actor::new("", "x").is_err());
        assert!(Actor::new("bob", "line\nACTIVE_SITE=rbx").is_err());
        assert!(Actor::new("bob\r", "x").is_err());
        assert!(Actor::new(&"b".repeat(129), "x").is_err());
        assert_eq!(
            Actor::new(" bob ", " why ").unwrap(),
            Actor {
                by: "bob".into(),
                reason: "why".into()
            }
        );
    }

    #[test]
    fn fence_refuses_stale_token_inside_a_real_transaction() {
        let mut conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE results (v TEXT)").unwrap();
        assert_eq!(Fence::highest(&conn).unwrap(), FencingToken(0));

        // The new site's job writes under token 5.
        let tx = conn.transaction().unwrap();
        Fence::admit(&tx, FencingToken(5)).unwrap();
        tx.execute("INSERT INTO results VALUES ('new site')", [])
            .unwrap();
        tx.commit().unwrap();

        // A job that started on the old site under token 3 tries to write after the flip.
        let tx = conn.transaction().unwrap();
        let err = Fence::admit(&tx, FencingToken(3)).unwrap_err();
        assert!(
            matches!(
                err,
                Error::StaleToken {
                    presented: FencingToken(3),
                    highest: FencingToken(5)
                }
            ),
            "{err}"
        );
        drop(tx); // rolls back
        let rows: Vec<String> = conn
            .prepare("SELECT v FROM results")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(rows, vec!["new site".to_string()]);

        // The same token is admitted again (a job writes several times), a higher one raises it.
        let tx = conn.transaction().unwrap();
        Fence::admit(&tx, FencingToken(5)).unwrap();
        Fence::admit(&tx, FencingToken(6)).unwrap();
        tx.commit().unwrap();
        assert_eq!(Fence::highest(&conn).unwrap(), FencingToken(6));
    }

    #[test]
    fn fence_update_rolls_back_with_the_callers_transaction() {
        let mut conn = rusqlite::Connection::open_in_memory().unwrap();
        let tx = conn.transaction().unwrap();
        Fence::admit(&tx, FencingToken(9)).unwrap();
        tx.rollback().unwrap();
        assert_eq!(Fence::highest(&conn).unwrap(), FencingToken(0));
    }
}
