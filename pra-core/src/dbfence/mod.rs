//! Fences at the data beyond the application's SQLite: PostgreSQL and MySQL/MariaDB. The rule
//! is [`crate::fencing::Fence`]'s — a one-row table whose token only rises, a lower token
//! refused inside the writer's own transaction — installed in the server as SQL (a table, a
//! trigger that refuses any lowering, an admit function/procedure), so that every client
//! (these helpers, Python's drivers, `psql` scripts) goes through the same check, run by the
//! server under a row lock. Drivers behind the cargo features `fence-postgres` and
//! `fence-mysql`.

use crate::error::{Error, Result};
use crate::fencing::FencingToken;

#[cfg(feature = "fence-mysql")]
pub mod mysql;
#[cfg(feature = "fence-postgres")]
pub mod postgres;

/// The version of the installed SQL (the `schema_version` column of `pra_fence`): raised when
/// the objects change; installing again upgrades in place (2: PostgreSQL's objects named in
/// `public` with a fixed search_path, triggers against DELETE, TRUNCATE and REPLACE).
pub const SCHEMA_VERSION: u32 = 2;

/// A database server the fence can be installed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// PostgreSQL 11 or later (plpgsql).
    Postgres,
    /// MySQL 8 or MariaDB 10.3 or later (InnoDB, stored procedures, SIGNAL).
    MySql,
}

impl Dialect {
    /// Parses `postgres`/`postgresql`/`pg` or `mysql`/`mariadb`.
    pub fn parse(s: &str) -> Result<Dialect> {
        match s.to_ascii_lowercase().as_str() {
            "postgres" | "postgresql" | "pg" => Ok(Dialect::Postgres),
            "mysql" | "mariadb" => Ok(Dialect::MySql),
            other => Err(Error::InvalidArgument(format!(
                "unknown database {other:?}: expected postgres or mysql (mariadb)"
            ))),
        }
    }

    /// The statements that install (or upgrade) the fence, in order, each sent on its own
    /// (MySQL's routine bodies contain `;`). Idempotent: running them again changes nothing
    /// but the routines' text, and never lowers the token.
    pub fn install_statements(self) -> &'static [&'static str] {
        match self {
            Dialect::Postgres => POSTGRES_INSTALL,
            Dialect::MySql => MYSQL_INSTALL,
        }
    }

    /// The statement that admits a token inside the caller's transaction (one parameter, the
    /// token; placeholder `$1` for PostgreSQL, `?` for MySQL).
    pub fn admit_statement(self) -> &'static str {
        match self {
            Dialect::Postgres => "SELECT public.pra_fence_admit($1)",
            Dialect::MySql => "CALL pra_fence_admit(?)",
        }
    }

    /// The statement reading the highest admitted token (no row: not installed).
    pub fn highest_statement(self) -> &'static str {
        match self {
            Dialect::Postgres => "SELECT token FROM public.pra_fence WHERE id = 1",
            Dialect::MySql => "SELECT token FROM pra_fence WHERE id = 1",
        }
    }

    /// The install statements as one script for the server's own client (`psql -f`, or
    /// `mysql` with `DELIMITER`), what `pra fence --sql` prints.
    pub fn install_script(self) -> String {
        let mut out = format!(
            "-- pra fence, schema version {SCHEMA_VERSION} ({}): install with the privileges to create tables,\n-- triggers and routines; every job's user needs EXECUTE on pra_fence_admit.\n",
            match self {
                Dialect::Postgres => "PostgreSQL: psql -v ON_ERROR_STOP=1 -f FILE",
                Dialect::MySql => "MySQL/MariaDB: mysql < FILE",
            }
        );
        match self {
            Dialect::Postgres => {
                for s in self.install_statements() {
                    out.push_str(s);
                    out.push_str(";\n");
                }
            }
            Dialect::MySql => {
                out.push_str("DELIMITER //\n");
                for s in self.install_statements() {
                    out.push_str(s);
                    out.push_str("\n//\n");
                }
                out.push_str("DELIMITER ;\n");
            }
        }
        out
    }
}

/// The server's refusal of a stale token, recognised in a driver's error message: the admit
/// routine raises exactly [`Error::StaleToken`]'s text, so the error is the same whichever
/// path it came through. `None` when `message` is not such a refusal.
pub fn refusal(message: &str) -> Option<Error> {
    const HEAD: &str = "stale fencing token ";
    let rest = &message[message.find(HEAD)? + HEAD.len()..];
    let (presented, rest) = rest.split_once(": token ")?;
    let highest = rest.split_whitespace().next()?;
    Some(Error::StaleToken {
        presented: FencingToken(presented.trim().parse().ok()?),
        highest: FencingToken(highest.parse().ok()?),
    })
}

/// `url` without its password (`user:secret@host` becomes `user:***@host`), for messages.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let Some((userinfo, host)) = rest.split_once('@') else {
        return url.to_string();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_string(),
    }
}

/// The token as the servers' signed 64-bit integer (PostgreSQL has no unsigned type).
#[cfg(any(feature = "fence-postgres", feature = "fence-mysql"))]
pub(crate) fn as_i64(token: FencingToken) -> Result<i64> {
    i64::try_from(token.0)
        .map_err(|_| Error::InvalidArgument(format!("fencing token {token} is out of range")))
}

// PostgreSQL: every object in schema `public`, named with it, and the functions run with a
// fixed search_path: a caller's search_path (a schema named after the user, one an attacker
// can create) can neither shadow the fence nor make an install create a second one at 0.
const POSTGRES_INSTALL: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS public.pra_fence (
  id smallint PRIMARY KEY CHECK (id = 1),
  token bigint NOT NULL CHECK (token >= 0),
  schema_version integer NOT NULL
)",
    "INSERT INTO public.pra_fence (id, token, schema_version) VALUES (1, 0, 2) ON CONFLICT (id) DO NOTHING",
    "UPDATE public.pra_fence SET schema_version = 2 WHERE id = 1 AND schema_version <> 2",
    // Whatever writes the table (a hand-made UPDATE, a DELETE and INSERT, a TRUNCATE and a
    // reinstall), the token never goes down and the row never goes away.
    "CREATE OR REPLACE FUNCTION public.pra_fence_never_lowered() RETURNS trigger LANGUAGE plpgsql
  SET search_path = pg_catalog, pg_temp AS $$
BEGIN
  IF TG_OP = 'UPDATE' AND NEW.token >= OLD.token THEN
    RETURN NEW;
  END IF;
  RAISE EXCEPTION 'pra: the fence only rises (% refused)', TG_OP USING ERRCODE = 'PRA02';
END
$$",
    "DROP TRIGGER IF EXISTS pra_fence_never_lowered ON public.pra_fence",
    "CREATE TRIGGER pra_fence_never_lowered BEFORE UPDATE OR DELETE ON public.pra_fence
  FOR EACH ROW EXECUTE FUNCTION public.pra_fence_never_lowered()",
    "DROP TRIGGER IF EXISTS pra_fence_never_truncated ON public.pra_fence",
    "CREATE TRIGGER pra_fence_never_truncated BEFORE TRUNCATE ON public.pra_fence
  FOR EACH STATEMENT EXECUTE FUNCTION public.pra_fence_never_lowered()",
    // The row lock taken here is held until the caller's transaction ends: an admission and
    // the writes it guards commit together, and no lower token commits after a higher one.
    "CREATE OR REPLACE FUNCTION public.pra_fence_admit(presented bigint) RETURNS bigint LANGUAGE plpgsql
  SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  highest bigint;
BEGIN
  SELECT token INTO highest FROM public.pra_fence WHERE id = 1 FOR UPDATE;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'pra: the fence is not installed (pra fence --install)' USING ERRCODE = 'PRA03';
  END IF;
  IF presented < highest THEN
    RAISE EXCEPTION 'stale fencing token %: token % has already been admitted', presented, highest
      USING ERRCODE = 'PRA01';
  END IF;
  UPDATE public.pra_fence SET token = presented WHERE id = 1 AND token < presented;
  RETURN presented;
END
$$",
];

// MySQL/MariaDB: routines resolve tables in their own database, whatever the caller's default.
const MYSQL_INSTALL: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS pra_fence (
  id TINYINT NOT NULL PRIMARY KEY CHECK (id = 1),
  token BIGINT UNSIGNED NOT NULL,
  schema_version INT NOT NULL
) ENGINE = InnoDB",
    "INSERT IGNORE INTO pra_fence (id, token, schema_version) VALUES (1, 0, 2)",
    "UPDATE pra_fence SET schema_version = 2 WHERE id = 1 AND schema_version <> 2",
    "DROP TRIGGER IF EXISTS pra_fence_never_lowered",
    "CREATE TRIGGER pra_fence_never_lowered BEFORE UPDATE ON pra_fence FOR EACH ROW
BEGIN
  IF NEW.token < OLD.token THEN
    SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'pra: the fence only rises';
  END IF;
END",
    // A DELETE (and REPLACE INTO, which deletes first) would put the fence back at 0.
    "DROP TRIGGER IF EXISTS pra_fence_never_deleted",
    "CREATE TRIGGER pra_fence_never_deleted BEFORE DELETE ON pra_fence FOR EACH ROW
BEGIN
  SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'pra: the fence only rises (DELETE refused)';
END",
    "DROP PROCEDURE IF EXISTS pra_fence_admit",
    "CREATE PROCEDURE pra_fence_admit(IN presented BIGINT UNSIGNED)
BEGIN
  DECLARE highest BIGINT UNSIGNED DEFAULT NULL;
  DECLARE msg VARCHAR(255);
  IF presented > 9223372036854775807 THEN
    SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'pra: a fencing token is below 2^63';
  END IF;
  SELECT token INTO highest FROM pra_fence WHERE id = 1 FOR UPDATE;
  IF highest IS NULL THEN
    SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'pra: the fence is not installed (pra fence --install)';
  END IF;
  IF presented < highest THEN
    SET msg = CONCAT('stale fencing token ', presented, ': token ', highest, ' has already been admitted');
    SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = msg;
  END IF;
  UPDATE pra_fence SET token = presented WHERE id = 1 AND token < presented;
END",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_is_the_core_stale_token_error_whatever_wraps_it() {
        let core = Error::StaleToken {
            presented: FencingToken(1),
            highest: FencingToken(3),
        };
        for message in [
            core.to_string(),
            format!("db error: ERROR: {core}"),
            format!("ERROR 1644 (45000): {core}\nCONTEXT: PL/pgSQL function pra_fence_admit"),
        ] {
            let e = refusal(&message).unwrap_or_else(|| panic!("not recognised: {message}"));
            assert_eq!(e.to_string(), core.to_string());
        }
        assert!(refusal("stale fencing token x: token 3 has already been admitted").is_none());
        assert!(refusal("connection refused").is_none());
    }

    #[test]
    fn the_routines_raise_the_core_errors_text() {
        // The servers format the message; its fixed parts must be the core error's.
        let core = Error::StaleToken {
            presented: FencingToken(1),
            highest: FencingToken(3),
        }
        .to_string();
        assert_eq!(
            core,
            "stale fencing token 1: token 3 has already been admitted"
        );
        let pg = Dialect::Postgres.install_statements().join("\n");
        assert!(pg.contains("'stale fencing token %: token % has already been admitted'"));
        let my = Dialect::MySql.install_statements().join("\n");
        assert!(my.contains("CONCAT('stale fencing token ', presented, ': token ', highest, ' has already been admitted')"));
    }

    #[test]
    fn passwords_never_show() {
        assert_eq!(
            redact("mysql://pra:s3cret@db:3306/app"),
            "mysql://pra:***@db:3306/app"
        );
        assert_eq!(redact("postgresql://pra@db/app"), "postgresql://pra@db/app");
        assert_eq!(redact("host=db dbname=app"), "host=db dbname=app");
    }

    #[test]
    fn dialects_parse_and_scripts_carry_the_version() {
        assert_eq!(Dialect::parse("PostgreSQL").unwrap(), Dialect::Postgres);
        assert_eq!(Dialect::parse("mariadb").unwrap(), Dialect::MySql);
        assert!(Dialect::parse("oracle").is_err());
        for d in [Dialect::Postgres, Dialect::MySql] {
            let script = d.install_script();
            assert!(script.contains(&format!("schema version {SCHEMA_VERSION}")));
            assert_eq!(
                d.install_statements()
                    .iter()
                    .filter(
                        |s| s.contains(&format!("schema_version) VALUES (1, 0, {SCHEMA_VERSION})"))
                    )
                    .count(),
                1,
                "the inserted schema version is SCHEMA_VERSION"
            );
        }
    }
}
