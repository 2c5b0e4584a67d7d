//! The database the drill's job writes — its slices of work (the ground truth of what ran
//! where), the slices the fence refused, its business rows — and the drill reads back: the
//! app's SQLite file, or a PostgreSQL database (`pra drill --job-db postgresql://...`) fenced
//! by pra's PostgreSQL fence (`pra_core::dbfence`).

use std::path::PathBuf;
use std::time::Duration;

use chrono::Utc;
use pra_core::plan;
use pra_core::{Error, FencingToken, SiteId};

#[cfg(feature = "fence-postgres")]
use pra_core::dbfence::postgres::driver as pg_driver;
#[cfg(feature = "fence-postgres")]
type PgParam<'a> = &'a (dyn pg_driver::types::ToSql + Sync);

/// Where the job writes.
#[derive(Debug, Clone)]
pub enum JobDb {
    /// The app's SQLite database.
    Sqlite(PathBuf),
    /// A PostgreSQL database (libpq URL or key=value string).
    Postgres(String),
}

/// One 50 ms slice of the job's work.
pub struct Slice<'a> {
    pub job: &'a str,
    pub site: &'a str,
    pub token: i64,
    pub pid: i64,
    pub start_us: i64,
    pub end_us: i64,
}

/// The tables the job writes, in SQLite's dialect.
const SQLITE_TABLES: &str = "
    CREATE TABLE IF NOT EXISTS work (id INTEGER PRIMARY KEY, job TEXT NOT NULL, site TEXT NOT NULL,
        token INTEGER NOT NULL, pid INTEGER NOT NULL, start_us INTEGER NOT NULL, end_us INTEGER NOT NULL);
    CREATE TABLE IF NOT EXISTS refused (id INTEGER PRIMARY KEY, job TEXT NOT NULL, site TEXT NOT NULL,
        token INTEGER NOT NULL, pid INTEGER NOT NULL, start_us INTEGER NOT NULL, end_us INTEGER NOT NULL);
    CREATE TABLE IF NOT EXISTS job_runs (id INTEGER PRIMARY KEY, job TEXT, site TEXT, token INTEGER, at TEXT);";

/// The same tables in PostgreSQL's (ids in commit order under the fence's lock).
#[cfg(feature = "fence-postgres")]
const POSTGRES_TABLES: &str = "
    CREATE TABLE IF NOT EXISTS work (id bigserial PRIMARY KEY, job text NOT NULL, site text NOT NULL,
        token bigint NOT NULL, pid bigint NOT NULL, start_us bigint NOT NULL, end_us bigint NOT NULL);
    CREATE TABLE IF NOT EXISTS refused (id bigserial PRIMARY KEY, job text NOT NULL, site text NOT NULL,
        token bigint NOT NULL, pid bigint NOT NULL, start_us bigint NOT NULL, end_us bigint NOT NULL);
    CREATE TABLE IF NOT EXISTS job_runs (id bigserial PRIMARY KEY, job text, site text, token bigint, at text);";

fn sql(what: &'static str) -> impl Fn(rusqlite::Error) -> Error {
    move |e| Error::sqlite(what, "app", e)
}

#[cfg(feature = "fence-postgres")]
fn pg(url: &str) -> impl Fn(pg_driver::Error) -> Error + '_ {
    move |e| match pra_core::dbfence::refusal(&e.to_string()) {
        Some(stale) => stale,
        None => Error::StoreUnavailable {
            url: pra_core::dbfence::redact(url),
            reason: e.to_string(),
        },
    }
}

#[cfg(not(feature = "fence-postgres"))]
fn no_postgres() -> Error {
    Error::Unsupported(
        "this pra was built without the PostgreSQL fence (cargo feature fence-postgres)".into(),
    )
}

impl JobDb {
    /// A PostgreSQL URL (`postgres://`, `postgresql://`, `host=...`) or a SQLite path.
    pub fn parse(arg: &str) -> JobDb {
        if arg.starts_with("postgres://")
            || arg.starts_with("postgresql://")
            || arg.contains("host=")
        {
            JobDb::Postgres(arg.to_string())
        } else {
            JobDb::Sqlite(PathBuf::from(arg))
        }
    }

    /// How the job is told where to write (`--db`).
    pub fn arg(&self) -> String {
        match self {
            JobDb::Sqlite(p) => p.display().to_string(),
            JobDb::Postgres(url) => url.clone(),
        }
    }

    /// Creates the tables; for PostgreSQL, installs the fence too and starts from empty
    /// tables (the fence itself is never lowered: a drill starts at token 0 and admits
    /// above whatever a previous drill left).
    pub fn create(&self) -> Result<(), Error> {
        match self {
            JobDb::Sqlite(path) => rusqlite::Connection::open(path)
                .and_then(|c| c.execute_batch(SQLITE_TABLES))
                .map_err(sql("create")),
            #[cfg(feature = "fence-postgres")]
            JobDb::Postgres(url) => {
                let mut c = pra_core::dbfence::postgres::connect(url)?;
                c.batch_execute(POSTGRES_TABLES).map_err(pg(url))?;
                c.batch_execute("TRUNCATE work, refused, job_runs")
                    .map_err(pg(url))?;
                pra_core::dbfence::postgres::install(&mut c)?;
                // The drill's store starts at token 0: a fence left higher by an earlier drill
                // would refuse every write of this one.
                let highest =
                    pra_core::dbfence::postgres::highest(&mut c)?.unwrap_or(FencingToken(0));
                if highest.0 > 0 {
                    return Err(Error::InvalidArgument(format!(
                        "{}: its fence is at token {highest} from an earlier run; the drill needs a database whose fence is at 0 (a new database)",
                        pra_core::dbfence::redact(url)
                    )));
                }
                Ok(())
            }
            #[cfg(not(feature = "fence-postgres"))]
            JobDb::Postgres(_) => Err(no_postgres()),
        }
    }

    /// Opens it for the job.
    pub fn connect(&self) -> Result<Conn, Error> {
        match self {
            JobDb::Sqlite(path) => {
                let c = rusqlite::Connection::open_with_flags(
                    path,
                    rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE,
                )
                .map_err(|e| Error::sqlite("open", &path.display().to_string(), e))?;
                c.busy_timeout(Duration::from_secs(5))
                    .map_err(sql("open"))?;
                c.execute_batch(SQLITE_TABLES).map_err(sql("create"))?;
                Ok(Conn::Sqlite(c))
            }
            #[cfg(feature = "fence-postgres")]
            JobDb::Postgres(url) => Ok(Conn::Postgres(
                Box::new(pra_core::dbfence::postgres::connect(url)?),
                url.clone(),
            )),
            #[cfg(not(feature = "fence-postgres"))]
            JobDb::Postgres(_) => Err(no_postgres()),
        }
    }

    /// The slices of work recorded, oldest first.
    pub fn work_units(&self) -> Result<Vec<plan::WorkUnit>, Error> {
        let rows: Vec<(String, String, i64, i64)> = match self {
            JobDb::Sqlite(path) => {
                let c = rusqlite::Connection::open(path).map_err(sql("open"))?;
                let mut stmt = c
                    .prepare("SELECT job, site, start_us, end_us FROM work ORDER BY start_us")
                    .map_err(sql("read work"))?;
                stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
                    .map_err(sql("read work"))?
                    .collect::<Result<_, _>>()
                    .map_err(sql("read work"))?
            }
            #[cfg(feature = "fence-postgres")]
            JobDb::Postgres(url) => pra_core::dbfence::postgres::connect(url)?
                .query(
                    "SELECT job, site, start_us, end_us FROM work ORDER BY start_us",
                    &[],
                )
                .map_err(pg(url))?
                .iter()
                .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
                .collect(),
            #[cfg(not(feature = "fence-postgres"))]
            JobDb::Postgres(_) => return Err(no_postgres()),
        };
        let time = |us: i64| chrono::DateTime::<Utc>::from_timestamp_micros(us).unwrap_or_default();
        rows.into_iter()
            .map(|(job, site, start, end)| {
                Ok(plan::WorkUnit {
                    job,
                    site: SiteId::new(&site)?,
                    start: time(start),
                    end: time(end),
                })
            })
            .collect()
    }

    /// The business rows, as (site, token) in commit order.
    pub fn business_rows(&self) -> Result<Vec<(String, i64)>, Error> {
        match self {
            JobDb::Sqlite(path) => {
                let c = rusqlite::Connection::open(path).map_err(sql("open"))?;
                let mut stmt = c
                    .prepare("SELECT site, token FROM job_runs ORDER BY id")
                    .map_err(sql("read job_runs"))?;
                stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                    .map_err(sql("read job_runs"))?
                    .collect::<Result<_, _>>()
                    .map_err(sql("read job_runs"))
            }
            #[cfg(feature = "fence-postgres")]
            JobDb::Postgres(url) => Ok(pra_core::dbfence::postgres::connect(url)?
                .query("SELECT site, token FROM job_runs ORDER BY id", &[])
                .map_err(pg(url))?
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect()),
            #[cfg(not(feature = "fence-postgres"))]
            JobDb::Postgres(_) => Err(no_postgres()),
        }
    }
}

/// Business rows committed after a row of a higher token: writes of a stale token the fence
/// let through (must be 0).
pub fn stale_writes(rows: &[(String, i64)]) -> u64 {
    let mut highest = i64::MIN;
    let mut stale = 0;
    for (_, token) in rows {
        stale += u64::from(*token < highest);
        highest = highest.max(*token);
    }
    stale
}

/// A connection of the job's.
pub enum Conn {
    Sqlite(rusqlite::Connection),
    #[cfg(feature = "fence-postgres")]
    Postgres(Box<pg_driver::Client>, String),
}

const INSERT_WORK: &str = "INSERT INTO work (job, site, token, pid, start_us, end_us) VALUES ";
const INSERT_REFUSED: &str =
    "INSERT INTO refused (job, site, token, pid, start_us, end_us) VALUES ";

impl Conn {
    fn insert(&mut self, head: &str, s: &Slice<'_>) -> Result<(), Error> {
        match self {
            Conn::Sqlite(c) => c
                .execute(
                    &format!("{head}(?1, ?2, ?3, ?4, ?5, ?6)"),
                    rusqlite::params![s.job, s.site, s.token, s.pid, s.start_us, s.end_us],
                )
                .map(|_| ())
                .map_err(sql("insert")),
            #[cfg(feature = "fence-postgres")]
            Conn::Postgres(c, url) => c
                .execute(
                    &format!("{head}($1, $2, $3, $4, $5, $6)"),
                    &[
                        &s.job as PgParam<'_>,
                        &s.site,
                        &s.token,
                        &s.pid,
                        &s.start_us,
                        &s.end_us,
                    ],
                )
                .map(|_| ())
                .map_err(pg(url)),
        }
    }

    /// Records a slice of work without the fence (what ran, fenced or not).
    pub fn record(&mut self, s: &Slice<'_>) -> Result<(), Error> {
        self.insert(INSERT_WORK, s)
    }

    /// Admits the slice's token at the fence and records it in one transaction; a refused
    /// slice goes to `refused` instead. `Ok(false)`: refused.
    pub fn fenced(&mut self, s: &Slice<'_>) -> Result<bool, Error> {
        let token = FencingToken(s.token as u64);
        match self.in_fenced_tx(token, |c| c.insert(INSERT_WORK, s)) {
            Ok(()) => Ok(true),
            Err(Error::StaleToken { .. }) => {
                self.insert(INSERT_REFUSED, s)?;
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Admits `token` and commits the run's business row, in one transaction.
    pub fn finish(&mut self, job: &str, site: &str, token: i64) -> Result<(), Error> {
        let at = Utc::now().to_rfc3339();
        self.in_fenced_tx(FencingToken(token as u64), |c| match c {
            Conn::Sqlite(c) => c
                .execute(
                    "INSERT INTO job_runs (job, site, token, at) VALUES (?1, ?2, ?3, ?4)",
                    rusqlite::params![job, site, token, at],
                )
                .map(|_| ())
                .map_err(sql("insert")),
            #[cfg(feature = "fence-postgres")]
            Conn::Postgres(c, url) => c
                .execute(
                    "INSERT INTO job_runs (job, site, token, at) VALUES ($1, $2, $3, $4)",
                    &[&job as PgParam<'_>, &site, &token, &at],
                )
                .map(|_| ())
                .map_err(pg(url)),
        })
    }

    /// Runs `write` after admitting `token`, all in one transaction (rolled back on error).
    fn in_fenced_tx(
        &mut self,
        token: FencingToken,
        write: impl FnOnce(&mut Conn) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let (begin, rollback) = match self {
            Conn::Sqlite(_) => ("BEGIN IMMEDIATE", "ROLLBACK"),
            #[cfg(feature = "fence-postgres")]
            Conn::Postgres(..) => ("BEGIN", "ROLLBACK"),
        };
        self.batch(begin)?;
        let done = self.admit(token).and_then(|()| write(self));
        match done {
            Ok(()) => self.batch("COMMIT"),
            Err(e) => {
                let _ = self.batch(rollback);
                Err(e)
            }
        }
    }

    fn admit(&mut self, token: FencingToken) -> Result<(), Error> {
        match self {
            Conn::Sqlite(c) => pra_core::Fence::admit_in(c, token).map(|_| ()),
            #[cfg(feature = "fence-postgres")]
            Conn::Postgres(c, url) => c
                .execute(
                    pra_core::dbfence::Dialect::Postgres.admit_statement(),
                    &[&(token.0 as i64)],
                )
                .map(|_| ())
                .map_err(pg(url)),
        }
    }

    fn batch(&mut self, statement: &str) -> Result<(), Error> {
        match self {
            Conn::Sqlite(c) => c.execute_batch(statement).map_err(sql("transaction")),
            #[cfg(feature = "fence-postgres")]
            Conn::Postgres(c, url) => c.batch_execute(statement).map_err(pg(url)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_after_a_higher_tokens_is_stale() {
        let rows = |t: &[i64]| {
            t.iter()
                .map(|&t| ("rbx".to_string(), t))
                .collect::<Vec<_>>()
        };
        assert_eq!(stale_writes(&rows(&[1, 1, 3, 3, 5])), 0);
        assert_eq!(stale_writes(&rows(&[1, 3, 1, 3, 1])), 2);
        assert_eq!(stale_writes(&[]), 0);
    }
}
