//! `pra fence`: the fences at the data in PostgreSQL and MySQL/MariaDB from a shell job — print
//! the SQL to install, install it, admit this run's token, or read the highest admitted one.

use pra_core::dbfence::Dialect;
use pra_core::{Error, FencingToken};

use super::Out;
use crate::exit;

#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("server").args(["pg", "mysql"])))]
pub struct FenceArgs {
    /// The PostgreSQL database (postgresql://user@host:port/db, or "host=... dbname=..."); the
    /// password from the URL or PGPASSWORD.
    #[arg(long, value_name = "URL", env = "PRA_FENCE_PG", hide_env_values = true)]
    pg: Option<String>,
    /// The MySQL/MariaDB database (mysql://user:password@host:port/db).
    #[arg(
        long,
        value_name = "URL",
        env = "PRA_FENCE_MYSQL",
        hide_env_values = true
    )]
    mysql: Option<String>,
    /// The token to admit [default: $PRA_TOKEN, which `pra run` gives the job].
    #[arg(long, env = "PRA_TOKEN")]
    token: Option<u64>,
    /// Install (or upgrade) the fence's table, trigger and routine instead of admitting.
    #[arg(long, conflicts_with_all = ["highest", "sql"])]
    install: bool,
    /// Print the highest admitted token instead of admitting.
    #[arg(long, conflicts_with = "sql")]
    highest: bool,
    /// Print the install SQL for `postgres` or `mysql` (for psql -f / mysql <), connect nowhere.
    #[arg(long, value_name = "DATABASE")]
    sql: Option<String>,
}

/// Admits `--token` at the fence (silent; exit 6 on a stale token, 9 when the server cannot
/// be used — fail closed), or installs, reads or prints it.
pub fn fence(out: &Out, args: &FenceArgs) -> Result<u8, Error> {
    if let Some(db) = &args.sql {
        print!("{}", Dialect::parse(db)?.install_script());
        return Ok(exit::OK);
    }
    let server = match (&args.pg, &args.mysql) {
        (Some(url), None) => Server::Postgres(url),
        (None, Some(url)) => Server::MySql(url),
        _ => {
            return Err(Error::InvalidArgument(
                "name the database: --pg URL or --mysql URL (or --sql postgres|mysql)".into(),
            ));
        }
    };
    if args.install {
        server.install()?;
        eprintln!(
            "pra: fence installed (schema version {})",
            pra_core::dbfence::SCHEMA_VERSION
        );
        return Ok(exit::OK);
    }
    if args.highest {
        let highest = server.highest()?;
        out.print(
            &serde_json::json!({ "highest": highest.map(|t| t.0) }),
            || highest.map_or("not installed".into(), |t| t.to_string()),
        );
        return Ok(exit::OK);
    }
    let token = args.token.ok_or_else(|| {
        Error::InvalidArgument("no token: --token N, or run under `pra run` (PRA_TOKEN)".into())
    })?;
    server.check(FencingToken(token))?;
    Ok(exit::OK)
}

enum Server<'a> {
    Postgres(&'a str),
    MySql(&'a str),
}

#[cfg(not(all(feature = "fence-postgres", feature = "fence-mysql")))]
fn not_built(what: &str) -> Error {
    Error::Unsupported(format!(
        "this pra was built without the {what} fence (cargo feature fence-{what}); `pra fence --sql` prints the SQL to use from the server's own client"
    ))
}

impl Server<'_> {
    fn install(&self) -> Result<(), Error> {
        match self {
            #[cfg(feature = "fence-postgres")]
            Server::Postgres(url) => pra_core::dbfence::postgres::install(
                &mut pra_core::dbfence::postgres::connect(url)?,
            ),
            #[cfg(feature = "fence-mysql")]
            Server::MySql(url) => {
                pra_core::dbfence::mysql::install(&mut pra_core::dbfence::mysql::connect(url)?)
            }
            #[cfg(not(feature = "fence-postgres"))]
            Server::Postgres(_) => Err(not_built("postgres")),
            #[cfg(not(feature = "fence-mysql"))]
            Server::MySql(_) => Err(not_built("mysql")),
        }
    }

    fn highest(&self) -> Result<Option<FencingToken>, Error> {
        match self {
            #[cfg(feature = "fence-postgres")]
            Server::Postgres(url) => pra_core::dbfence::postgres::highest(
                &mut pra_core::dbfence::postgres::connect(url)?,
            ),
            #[cfg(feature = "fence-mysql")]
            Server::MySql(url) => {
                pra_core::dbfence::mysql::highest(&mut pra_core::dbfence::mysql::connect(url)?)
            }
            #[cfg(not(feature = "fence-postgres"))]
            Server::Postgres(_) => Err(not_built("postgres")),
            #[cfg(not(feature = "fence-mysql"))]
            Server::MySql(_) => Err(not_built("mysql")),
        }
    }

    fn check(&self, token: FencingToken) -> Result<FencingToken, Error> {
        match self {
            #[cfg(feature = "fence-postgres")]
            Server::Postgres(url) => pra_core::dbfence::postgres::check(url, token),
            #[cfg(feature = "fence-mysql")]
            Server::MySql(url) => pra_core::dbfence::mysql::check(url, token),
            #[cfg(not(feature = "fence-postgres"))]
            Server::Postgres(_) => Err(not_built("postgres")),
            #[cfg(not(feature = "fence-mysql"))]
            Server::MySql(_) => Err(not_built("mysql")),
        }
    }
}
