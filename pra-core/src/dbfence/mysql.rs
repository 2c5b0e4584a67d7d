//! The MySQL/MariaDB fence through the `mysql` driver (cargo feature `fence-mysql`): install,
//! admit inside the caller's transaction, read, and the one-shot check `pra fence --mysql`
//! runs.

use ::mysql::prelude::Queryable;
use ::mysql::{Conn, Opts, Transaction, TxOpts};

use super::{Dialect, redact, refusal};
use crate::error::{Error, Result};
use crate::fencing::FencingToken;

fn map(url: &str, e: ::mysql::Error) -> Error {
    let message = match &e {
        ::mysql::Error::MySqlError(m) => m.message.clone(),
        other => other.to_string(),
    };
    refusal(&message).unwrap_or_else(|| Error::StoreUnavailable {
        url: redact(url),
        reason: message,
    })
}

/// Connects to the server at `url` (`mysql://user:password@host:port/db`).
pub fn connect(url: &str) -> Result<Conn> {
    let opts =
        Opts::from_url(url).map_err(|e| Error::InvalidArgument(format!("{}: {e}", redact(url))))?;
    Conn::new(opts).map_err(|e| map(url, e))
}

/// Installs or upgrades the fence (MySQL commits each DDL statement on its own; every
/// statement is idempotent, so an interrupted install is finished by running it again).
pub fn install(conn: &mut Conn) -> Result<()> {
    for statement in Dialect::MySql.install_statements() {
        conn.query_drop(*statement).map_err(|e| map("mysql", e))?;
    }
    Ok(())
}

/// Admits `token` inside `tx`: [`Error::StaleToken`] if a higher token was admitted, else
/// records it. The server holds the fence's row lock until `tx` ends.
pub fn admit(tx: &mut Transaction<'_>, token: FencingToken) -> Result<FencingToken> {
    super::as_i64(token)?; // as PostgreSQL: a token is below 2^63
    tx.exec_drop(Dialect::MySql.admit_statement(), (token.0,))
        .map_err(|e| map("mysql", e))?;
    Ok(token)
}

/// The highest token admitted so far; `None` when the fence is not installed.
pub fn highest(conn: &mut Conn) -> Result<Option<FencingToken>> {
    let installed: Option<u64> = conn
        .query_first("SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = DATABASE() AND table_name = 'pra_fence'")
        .map_err(|e| map("mysql", e))?;
    if installed.unwrap_or(0) == 0 {
        return Ok(None);
    }
    let token: Option<u64> = conn
        .query_first(Dialect::MySql.highest_statement())
        .map_err(|e| map("mysql", e))?;
    Ok(token.map(FencingToken))
}

/// `pra fence --mysql URL`: admits `token` in a transaction of its own and commits.
pub fn check(url: &str, token: FencingToken) -> Result<FencingToken> {
    let mut conn = connect(url)?;
    let mut tx = conn
        .start_transaction(TxOpts::default())
        .map_err(|e| map(url, e))?;
    admit(&mut tx, token)?;
    tx.commit().map_err(|e| map(url, e))?;
    Ok(token)
}
