//! The fences at the data in PostgreSQL and MySQL/MariaDB from Python, through the app's own
//! DB-API connection (psycopg 3, psycopg2, PyMySQL, mysqlclient): `fence_admit` dispatches here
//! for those connections; `fence_install` and `fence_sql` install and print the SQL. The rule
//! runs in the server (pra_core::dbfence installs it); this module only calls it, checks that a
//! transaction will hold the admission, and turns the server's refusal into StaleTokenError.

use pra_core::dbfence::{Dialect, refusal};
use pyo3::prelude::*;

use crate::errors::{InvalidArgumentError, PraErr};

/// The dialect of a DB-API connection, from its class's module; `None` for others.
pub fn dialect_of(conn: &Bound<'_, PyAny>) -> PyResult<Option<Dialect>> {
    let module: String = conn.get_type().getattr("__module__")?.extract()?;
    let top = module.split('.').next().unwrap_or_default();
    Ok(match top {
        "psycopg" | "psycopg2" => Some(Dialect::Postgres),
        "pymysql" | "MySQLdb" => Some(Dialect::MySql),
        _ => None,
    })
}

/// Whether the statement run next on `conn` belongs to a transaction that also holds the
/// caller's writes: not when the connection autocommits outside an explicit transaction.
fn in_caller_transaction(conn: &Bound<'_, PyAny>, dialect: Dialect) -> PyResult<bool> {
    match dialect {
        Dialect::Postgres => {
            if !conn.getattr("autocommit")?.extract::<bool>()? {
                return Ok(true); // the driver opens one at the first statement
            }
            // psycopg 3: conn.info.transaction_status; psycopg2: get_transaction_status().
            // Both: 0 = idle (no transaction open).
            let status: i64 = match conn.getattr("info") {
                Ok(info) => info.getattr("transaction_status")?.extract()?,
                Err(_) => conn.call_method0("get_transaction_status")?.extract()?,
            };
            Ok(status != 0)
        }
        Dialect::MySql => {
            if !conn.call_method0("get_autocommit")?.extract::<bool>()? {
                return Ok(true);
            }
            // SERVER_STATUS_IN_TRANS: after conn.begin() on an autocommit connection.
            let status: i64 = conn
                .getattr("server_status")
                .and_then(|s| s.extract())
                .unwrap_or(0);
            Ok(status & 1 == 1)
        }
    }
}

/// The admit statement in the DB-API's `format` parameter style (`%s`), which both drivers use.
fn dbapi_admit(dialect: Dialect) -> String {
    dialect
        .admit_statement()
        .replace("$1", "%s")
        .replace('?', "%s")
}

/// `fence_admit` for a PostgreSQL or MySQL connection.
pub fn admit(conn: &Bound<'_, PyAny>, dialect: Dialect, token: u64) -> PyResult<u64> {
    if i64::try_from(token).is_err() {
        return Err(InvalidArgumentError::new_err(format!(
            "fencing token {token} is out of range (a token is below 2^63)"
        )));
    }
    if !in_caller_transaction(conn, dialect)? {
        return Err(InvalidArgumentError::new_err(
            "fence admission must run inside the transaction that writes the job's results: \
             this connection autocommits; open a transaction first (psycopg: `with conn.transaction():`, \
             PyMySQL: conn.begin())",
        ));
    }
    let cursor = conn.call_method0("cursor")?;
    let done = cursor.call_method1("execute", (dbapi_admit(dialect), (token,)));
    let _ = cursor.call_method0("close");
    match done {
        Ok(_) => Ok(token),
        Err(e) => match refusal(&e.value(conn.py()).to_string()) {
            Some(stale) => {
                // A refused admission ends the transaction, with the writes made in it before:
                // PostgreSQL has aborted it already, MySQL would commit them on the app's next
                // commit. (psycopg refuses an explicit rollback inside `with conn.transaction()`:
                // there the exception leaving the block rolls it back.)
                let _ = conn.call_method0("rollback");
                Err(PraErr(stale).into())
            }
            None => Err(e),
        },
    }
}

/// Installs (or upgrades) the fence through a PostgreSQL or MySQL connection, and commits.
#[pyfunction]
fn fence_install(conn: &Bound<'_, PyAny>) -> PyResult<()> {
    let Some(dialect) = dialect_of(conn)? else {
        return Err(InvalidArgumentError::new_err(
            "fence_install takes a psycopg, psycopg2, PyMySQL or mysqlclient connection (an sqlite3 database needs no install: fence_admit creates its table)",
        ));
    };
    let cursor = conn.call_method0("cursor")?;
    for statement in dialect.install_statements() {
        cursor.call_method1("execute", (*statement,))?;
    }
    cursor.call_method0("close")?;
    if !conn
        .getattr("autocommit")
        .and_then(|a| a.extract::<bool>())
        .unwrap_or(false)
    {
        conn.call_method0("commit")?;
    }
    Ok(())
}

/// The install SQL for `postgres` or `mysql`, as statements to run one by one.
#[pyfunction]
fn fence_sql(database: &str) -> PyResult<Vec<&'static str>> {
    Ok(Dialect::parse(database)
        .map_err(PraErr)?
        .install_statements()
        .to_vec())
}

/// Adds the functions of this module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(fence_install, m)?)?;
    m.add_function(wrap_pyfunction!(fence_sql, m)?)?;
    Ok(())
}
