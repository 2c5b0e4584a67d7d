//! The PostgreSQL fence through the `postgres` driver (cargo feature `fence-postgres`):
//! install, admit inside the caller's transaction, read, and the one-shot check `pra fence
//! --pg` runs. Plain TCP or a Unix socket (the driver's URL and key=value forms); for TLS to
//! the server, use the installed SQL from a client that speaks it (psql, psycopg).

use ::postgres::{Client, NoTls, Transaction};

/// The driver itself, for callers that write beside the fence through the same connection.
pub use ::postgres as driver;

use super::{Dialect, as_i64, redact, refusal};
use crate::error::{Error, Result};
use crate::fencing::FencingToken;

fn map(url: &str, e: ::postgres::Error) -> Error {
    let message = match e.as_db_error() {
        Some(db) => db.message().to_string(),
        None => e.to_string(),
    };
    refusal(&message).unwrap_or_else(|| Error::StoreUnavailable {
        url: redact(url),
        reason: message,
    })
}

/// Connects to the server at `url` (`postgresql://user@host:port/db`, or `host=... dbname=...`).
pub fn connect(url: &str) -> Result<Client> {
    Client::connect(url, NoTls).map_err(|e| map(url, e))
}

/// Installs or upgrades the fence, in one transaction.
pub fn install(client: &mut Client) -> Result<()> {
    let mut tx = client.transaction().map_err(|e| map("postgres", e))?;
    for statement in Dialect::Postgres.install_statements() {
        tx.batch_execute(statement)
            .map_err(|e| map("postgres", e))?;
    }
    tx.commit().map_err(|e| map("postgres", e))
}

/// Admits `token` inside `tx`: [`Error::StaleToken`] if a higher token was admitted, else
/// records it. The server holds the fence's row lock until `tx` ends, so the admission
/// commits or rolls back with the caller's writes.
pub fn admit(tx: &mut Transaction<'_>, token: FencingToken) -> Result<FencingToken> {
    tx.execute(Dialect::Postgres.admit_statement(), &[&as_i64(token)?])
        .map_err(|e| map("postgres", e))?;
    Ok(token)
}

/// The highest token admitted so far; `None` when the fence is not installed.
pub fn highest(client: &mut Client) -> Result<Option<FencingToken>> {
    let installed: bool = client
        .query_one("SELECT to_regclass('public.pra_fence') IS NOT NULL", &[])
        .map_err(|e| map("postgres", e))?
        .get(0);
    if !installed {
        return Ok(None);
    }
    let row = client
        .query_opt(Dialect::Postgres.highest_statement(), &[])
        .map_err(|e| map("postgres", e))?;
    Ok(row.map(|r| FencingToken(r.get::<_, i64>(0).max(0) as u64)))
}

/// `pra fence --pg URL`: admits `token` in a transaction of its own and commits — the fence
/// rises to it, or [`Error::StaleToken`]. A gate before a script's writes; the writes
/// themselves are fenced only when they run `SELECT pra_fence_admit(token)` in their own
/// transaction.
pub fn check(url: &str, token: FencingToken) -> Result<FencingToken> {
    let mut client = connect(url)?;
    let mut tx = client.transaction().map_err(|e| map(url, e))?;
    admit(&mut tx, token)?;
    tx.commit().map_err(|e| map(url, e))?;
    Ok(token)
}
