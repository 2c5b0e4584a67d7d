//! pra's own SQLite connections to a database file (opened only if it exists, with the fork
//! guard held), and what backup and restore ask of one: row counts, `quick_check`.

use std::collections::BTreeMap;
use std::path::Path;

use rusqlite::{Connection, OpenFlags};

use crate::error::{Error, Result};

pub(super) fn sql_err<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl Fn(rusqlite::Error) -> Error + 'a {
    // A database file that cannot be opened or written is an I/O problem here, not a store.
    move |e| match Error::sqlite(what, &path.display().to_string(), e) {
        Error::StoreUnavailable { reason, .. } => {
            Error::io(what, path, std::io::Error::other(reason))
        }
        other => other,
    }
}

/// Opens an existing database for reading, without creating it.
pub(crate) fn open_existing(path: &Path, read_only: bool) -> Result<Guarded> {
    if !path.is_file() {
        return Err(Error::NotFound(format!(
            "database {} does not exist",
            path.display()
        )));
    }
    let flags = if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    let fork = crate::forkguard::enter();
    let conn = Connection::open_with_flags(path, flags).map_err(sql_err("open", path))?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(sql_err("open", path))?;
    Ok(Guarded { conn, _fork: fork })
}

/// A connection of pra's own SQLite, with the fork guard held for its lifetime (see
/// [`crate::forkguard`]); derefs to the connection.
#[derive(Debug)]
pub(crate) struct Guarded {
    // Declared first: closed before the guard is released.
    conn: Connection,
    _fork: crate::forkguard::Guard,
}

impl std::ops::Deref for Guarded {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        &self.conn
    }
}

impl std::ops::DerefMut for Guarded {
    fn deref_mut(&mut self) -> &mut Connection {
        &mut self.conn
    }
}

/// Row counts of every user table (not `sqlite_*`), in name order.
pub fn table_counts(conn: &Connection) -> Result<BTreeMap<String, u64>> {
    let err = |e| Error::sqlite("count rows", "database", e);
    let names = first_column(
        conn,
        "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name",
    )
    .map_err(err)?;
    let mut out = BTreeMap::new();
    for name in names {
        let n = count(conn, &name).map_err(err)?;
        out.insert(name, n);
    }
    Ok(out)
}

/// `SELECT count(*)` of `table` in the database `db`, opened read-only.
pub fn count_rows(db: &Path, table: &str) -> Result<u64> {
    let conn = open_existing(db, true)?;
    count(&conn, table).map_err(sql_err("count rows", db))
}

/// `SELECT count(*)` of `table` on `conn`.
fn count(conn: &Connection, table: &str) -> rusqlite::Result<u64> {
    let n: i64 = conn.query_row(&count_sql(table), [], |r| r.get(0))?;
    Ok(n as u64)
}

/// The query that counts the rows of `table` (its name quoted), for any SQLite connection: pra's
/// own, or the application's (the Python module counts through Python's `sqlite3`).
pub fn count_sql(table: &str) -> String {
    format!("SELECT count(*) FROM {}", quote_ident(table))
}

/// The first column of every row of `sql`, as strings.
fn first_column(conn: &Connection, sql: &str) -> rusqlite::Result<Vec<String>> {
    conn.prepare(sql)?.query_map([], |r| r.get(0))?.collect()
}

/// Quotes an SQL identifier.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `PRAGMA quick_check` on `conn`: "ok" or the first problems found.
fn quick_check(conn: &Connection) -> Result<String> {
    let rows = first_column(conn, "PRAGMA quick_check(5)")
        .map_err(|e| Error::sqlite("quick_check", "database", e))?;
    Ok(rows.join("; "))
}

/// `quick_check` and the row counts of every table of the database at `path`, read-only. Read
/// through SQLite's small page cache, never a memory map of the whole file: memory stays a few
/// MiB whatever the database's size (a map would count the whole file in the process's RSS).
pub(crate) fn check_and_count(path: &Path) -> Result<(String, BTreeMap<String, u64>)> {
    let conn = open_existing(path, true)?;
    check_and_count_on(&conn)
}

/// [`check_and_count`] on an open connection (inside its current transaction, if any).
pub(crate) fn check_and_count_on(conn: &Connection) -> Result<(String, BTreeMap<String, u64>)> {
    let verification = quick_check(conn)?;
    let tables = table_counts(conn)?;
    Ok((verification, tables))
}
