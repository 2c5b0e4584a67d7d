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
        crate::output::stdout(&Dialect::parse(db)?.install_script())?;
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
        )?;
        return Ok(exit::OK);
    }
    let token = args.token.ok_or_else(|| {
        Error::InvalidArgument("no token: --token N, or run under `pra run` (PRA_TOKEN)".into())
    })?;
    server.check(FencingToken(token))?;
    Ok(exit::OK)
}

// Without a driver built in, its variant's data is never read.
#[cfg_attr(
    not(all(feature = "fence-postgres", feature = "fence-mysql")),
    allow(dead_code)
)]
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

/// What `pra fence` does at a server.
// Without a driver built in, its variant's data is never read.
#[cfg_attr(
    not(all(feature = "fence-postgres", feature = "fence-mysql")),
    allow(dead_code)
)]
enum Action {
    Install,
    Highest,
    Admit(FencingToken),
}

/// What an action answers.
// Without a driver built in, its variant's data is never read.
#[cfg_attr(
    not(all(feature = "fence-postgres", feature = "fence-mysql")),
    allow(dead_code)
)]
enum Done {
    Installed,
    Highest(Option<FencingToken>),
    Admitted,
}

impl Server<'_> {
    fn install(&self) -> Result<(), Error> {
        self.run(Action::Install).map(|_| ())
    }

    fn highest(&self) -> Result<Option<FencingToken>, Error> {
        match self.run(Action::Highest)? {
            Done::Highest(h) => Ok(h),
            Done::Installed | Done::Admitted => Err(Error::Internal("fence: wrong answer".into())),
        }
    }

    fn check(&self, token: FencingToken) -> Result<(), Error> {
        self.run(Action::Admit(token)).map(|_| ())
    }

    #[cfg_attr(
        not(all(feature = "fence-postgres", feature = "fence-mysql")),
        allow(unused_variables)
    )]
    fn run(&self, action: Action) -> Result<Done, Error> {
        match *self {
            #[cfg(feature = "fence-postgres")]
            Server::Postgres(url) => {
                use pra_core::dbfence::postgres as pg;
                Ok(match action {
                    Action::Install => {
                        pg::install(&mut pg::connect(url)?).map(|()| Done::Installed)?
                    }
                    Action::Highest => Done::Highest(pg::highest(&mut pg::connect(url)?)?),
                    Action::Admit(token) => pg::check(url, token).map(|_| Done::Admitted)?,
                })
            }
            #[cfg(feature = "fence-mysql")]
            Server::MySql(url) => {
                use pra_core::dbfence::mysql as my;
                Ok(match action {
                    Action::Install => {
                        my::install(&mut my::connect(url)?).map(|()| Done::Installed)?
                    }
                    Action::Highest => Done::Highest(my::highest(&mut my::connect(url)?)?),
                    Action::Admit(token) => my::check(url, token).map(|_| Done::Admitted)?,
                })
            }
            #[cfg(not(feature = "fence-postgres"))]
            Server::Postgres(_) => Err(not_built("postgres")),
            #[cfg(not(feature = "fence-mysql"))]
            Server::MySql(_) => Err(not_built("mysql")),
        }
    }
}
