//! The `pra` command line: a thin front end over pra-core. Logic lives in pra-core; this file
//! parses arguments, prints, and maps errors to the exit codes of [`exit`].

mod exit;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use pra_core::{Actor, Error, FencingToken, SiteChange, Store, Topology, Verdict};

#[derive(Parser, Debug)]
#[command(name = "pra", version, about = "Disaster recovery between two sites, safely and measurably", after_help = exit::HELP)]
struct Cli {
    /// Store URL: sqlite:///var/lib/pra/state.db, file:///etc/app/pra-status.lock
    #[arg(
        long,
        env = "PRA_STORE",
        global = true,
        default_value = "sqlite:///var/lib/pra/state.db"
    )]
    store: String,
    /// The two sites, primary first.
    #[arg(long, env = "PRA_SITES", global = true, default_value = "rbx,sbg")]
    sites: String,
    /// This host's site (default: found in the hostname).
    #[arg(long = "site", env = "PRA_SITE", global = true)]
    this_site: Option<String>,
    /// Print data as JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Exit 0 if this site may run jobs, 1 if it is standby, more on error (fail closed).
    Check,
    /// Show or change the active-site record.
    #[command(subcommand)]
    Site(SiteCmd),
    /// Print the audit journal.
    Journal {
        /// Check the hash chain instead of printing it.
        #[arg(long)]
        verify: bool,
    },
}

#[derive(Subcommand, Debug)]
enum SiteCmd {
    /// Show the active-site record.
    Show,
    /// Make SITE active; only while no site is active (break before make).
    Activate {
        site: String,
        /// The token you saw in `pra site show`: the change fails if the record moved since.
        #[arg(long)]
        expect_token: u64,
        #[command(flatten)]
        who: Who,
    },
    /// Make no site active.
    Deactivate {
        #[arg(long)]
        expect_token: u64,
        #[command(flatten)]
        who: Who,
    },
}

#[derive(clap::Args, Debug)]
struct Who {
    /// Who makes the change (default: $USER).
    #[arg(long, env = "USER", default_value = "unknown")]
    by: String,
    /// Why, for the journal.
    #[arg(long, default_value = "")]
    reason: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("pra: {e}");
            ExitCode::from(exit::for_error(&e))
        }
    }
}

fn run(cli: &Cli) -> Result<u8, Error> {
    let topology = Topology::parse(&cli.sites)?;
    match &cli.command {
        Command::Check => {
            let site = topology.detect(cli.this_site.as_deref(), &pra_core::site::hostname())?;
            let store = pra_core::open(&cli.store)?;
            let verdict = pra_core::check(&*store, &site)?;
            print_verdict(cli, &site, &verdict);
            Ok(if verdict.may_run() {
                exit::OK
            } else {
                exit::STANDBY
            })
        }
        Command::Site(cmd) => {
            let store = pra_core::open(&cli.store)?;
            let record = match cmd {
                SiteCmd::Show => store.load()?,
                SiteCmd::Activate {
                    site,
                    expect_token,
                    who,
                } => store.change(
                    SiteChange::Activate {
                        site: topology.site(site)?,
                        expect: FencingToken(*expect_token),
                    },
                    &Actor::new(&who.by, &who.reason)?,
                )?,
                SiteCmd::Deactivate { expect_token, who } => store.change(
                    SiteChange::Deactivate {
                        expect: FencingToken(*expect_token),
                    },
                    &Actor::new(&who.by, &who.reason)?,
                )?,
            };
            if cli.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&record).expect("records serialize")
                );
            } else {
                println!(
                    "active site: {}  token: {}  changed {} by {}{}",
                    record.site.as_ref().map_or("NONE", |s| s.as_str()),
                    record.token,
                    record.changed_at.format("%Y-%m-%d %H:%M:%S UTC"),
                    record.changed_by,
                    if record.reason.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", record.reason)
                    }
                );
            }
            Ok(exit::OK)
        }
        Command::Journal { verify } => {
            let store = pra_core::open(&cli.store)?;
            if *verify {
                let check = store.verify_journal()?;
                println!(
                    "journal intact: {} entries, head {}",
                    check.entries, check.head
                );
            } else {
                print_journal(cli, &*store)?;
            }
            Ok(exit::OK)
        }
    }
}

fn print_verdict(cli: &Cli, site: &pra_core::SiteId, verdict: &Verdict) {
    if cli.json {
        println!(
            "{}",
            serde_json::to_string(verdict).expect("verdicts serialize")
        );
        return;
    }
    match verdict {
        Verdict::Run { token } => println!("{site}: active (token {token}): jobs may run"),
        Verdict::Standby { active, token } => println!(
            "{site}: standby: active site is {} (token {token}): jobs must not run",
            active.as_ref().map_or("NONE", |s| s.as_str())
        ),
    }
}

fn print_journal(cli: &Cli, store: &dyn Store) -> Result<(), Error> {
    for e in store.journal()? {
        if cli.json {
            println!("{}", serde_json::to_string(&e).expect("entries serialize"));
        } else {
            println!(
                "{:>5}  {}  {:<12} {}",
                e.seq,
                e.at.format("%Y-%m-%d %H:%M:%S"),
                e.by,
                describe(&e.event)
            );
        }
    }
    Ok(())
}

fn describe(event: &pra_core::store::JournalEvent) -> String {
    use pra_core::store::JournalEvent as J;
    let site =
        |s: &Option<pra_core::SiteId>| s.as_ref().map_or("NONE".to_string(), ToString::to_string);
    match event {
        J::SiteChanged { old, new } => format!(
            "active site {} -> {} (token {} -> {}) {}",
            site(&old.site),
            site(&new.site),
            old.token,
            new.token,
            new.reason
        ),
        J::PlanStep {
            plan,
            from,
            event,
            to,
            operator,
        } => format!(
            "plan {plan}: {from} --{event}--> {to}{}",
            operator
                .as_ref()
                .map_or(String::new(), |o| format!(" (gate passed by {o})"))
        ),
        J::DrainForced { plan, alive_runs } => {
            format!("plan {plan}: drain FORCED past {alive_runs} live run(s)")
        }
    }
}
