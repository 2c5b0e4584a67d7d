//! `pra check`, `pra site` and `pra journal`: the active-site record, read, changed and
//! audited.

use pra_core::store::JournalEvent;
use pra_core::{Error, FencingToken, SiteChange, SystemClock, Verdict};

use super::{Out, Who, site_name};
use crate::config::Config;
use crate::exit;

#[derive(clap::Subcommand, Debug)]
pub enum SiteCmd {
    /// Show the active-site record.
    Show,
    /// Make SITE active; only while no site is active (break before make), and only once no
    /// run of an older token is alive (the same drain as the plan's).
    Activate {
        site: String,
        /// The token you saw in `pra site show`: the change fails if the record moved since.
        #[arg(long)]
        expect_token: u64,
        /// Do not wait for live runs of the old token: refuse (exit 8) while there are.
        #[arg(long)]
        no_wait: bool,
        /// Activate past live runs of the old token (needs --reason; journaled).
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        who: Who,
    },
    /// Make no site active (the seed's ACTIVE_SITE=NONE).
    Deactivate {
        /// The token you saw in `pra site show`.
        #[arg(long)]
        expect_token: u64,
        #[command(flatten)]
        who: Who,
    },
}

/// Prints whether this site may run jobs; exits [`exit::OK`] if it may, [`exit::STANDBY`] if
/// it is standby, and fails closed (an error exit) when the store cannot say.
pub fn check(cfg: &Config, out: &Out) -> Result<u8, Error> {
    let site = cfg.this_site()?;
    let store = cfg.open_store()?;
    let verdict = pra_core::check(&*store, &site)?;
    out.print(&verdict, || match &verdict {
        Verdict::Run { token } => format!("{site}: active (token {token}): jobs may run"),
        Verdict::Standby { active, token } => {
            format!(
                "{site}: standby: active site is {} (token {token}): jobs must not run",
                site_name(active.as_ref())
            )
        }
    })?;
    Ok(if verdict.may_run() {
        exit::OK
    } else {
        exit::STANDBY
    })
}

/// Shows the active-site record, or changes it (activation waits for the old token's runs to
/// drain unless told otherwise), and prints the record after the change.
pub fn site(cfg: &Config, out: &Out, cmd: &SiteCmd) -> Result<u8, Error> {
    let store = cfg.open_store()?;
    let record = match cmd {
        SiteCmd::Show => store.load()?,
        SiteCmd::Activate {
            site,
            expect_token,
            no_wait,
            force,
            who,
        } => {
            let std = |d: chrono::Duration| d.to_std().unwrap_or_default();
            let (record, drained) = pra_core::run::activate(
                &*store,
                &SystemClock,
                &cfg.topology.site(site)?,
                FencingToken(*expect_token),
                &who.actor()?,
                &pra_core::run::ActivateOptions {
                    wait: !no_wait,
                    timeout: std(cfg.drain_timeout),
                    poll: std::time::Duration::from_millis(500),
                    lost_after: cfg.timings().lost_after,
                    force: *force,
                },
            )?;
            match drained {
                pra_core::run::Drained::Clean => {}
                pra_core::run::Drained::Forced { alive_runs } => eprintln!(
                    "pra: activated past {alive_runs} live run(s) of the old token (forced; journaled)"
                ),
                pra_core::run::Drained::NoRegistry => eprintln!(
                    "pra: warning: {} keeps no run registry: nothing was drained; jobs of the old site may still run",
                    store.url()
                ),
            }
            record
        }
        SiteCmd::Deactivate { expect_token, who } => store.change(
            SiteChange::Deactivate {
                expect: FencingToken(*expect_token),
            },
            &who.actor()?,
        )?,
    };
    // The store read goes with the answer: two hosts that disagree usually read two stores.
    let mut shown = serde_json::to_value(&record).map_err(|e| Error::Internal(e.to_string()))?;
    shown["store"] = serde_json::Value::from(store.url());
    out.print(&shown, || {
        format!(
            "store: {}\nactive site: {}  token: {}  changed {} by {}{}",
            store.url(),
            site_name(record.site.as_ref()),
            record.token,
            record.changed_at.format("%Y-%m-%d %H:%M:%S UTC"),
            record.changed_by,
            if record.reason.is_empty() {
                String::new()
            } else {
                format!(" ({})", record.reason)
            }
        )
    })?;
    Ok(exit::OK)
}

/// What `pra journal` does besides printing.
#[derive(clap::Args, Debug)]
pub struct JournalArgs {
    /// Check the hash chain (from the last checkpoint) instead of printing the journal.
    #[arg(long)]
    pub verify: bool,
    /// With --verify: check the whole history, the --archive files (oldest first) followed by
    /// the store's journal, as one chain.
    #[arg(long, requires = "verify")]
    pub full: bool,
    /// Archive the journal so far to --archive FILE (a new file, written atomically) and keep
    /// only a checkpoint entry carrying its head hash in the store (SQLite stores).
    #[arg(long, conflicts_with = "verify", requires = "archive")]
    pub checkpoint: bool,
    /// The archive to write (--checkpoint) or the archives to read (--verify --full).
    #[arg(long, num_args = 1..)]
    pub archive: Vec<std::path::PathBuf>,
    #[command(flatten)]
    pub who: super::Who,
}

/// Prints the audit journal, one line per entry, checks its hash chain, or checkpoints it.
pub fn journal(cfg: &Config, out: &Out, args: &JournalArgs) -> Result<u8, Error> {
    let store = cfg.open_store()?;
    if args.checkpoint {
        let [archive] = args.archive.as_slice() else {
            return Err(Error::InvalidArgument(
                "--checkpoint writes one --archive FILE".into(),
            ));
        };
        let check = store.checkpoint_journal(archive, &args.who.actor()?)?;
        out.print(&check, || {
            format!(
                "journal checkpointed: {} entries archived to {}, head {}",
                check.entries,
                archive.display(),
                check.head
            )
        })?;
        return Ok(exit::OK);
    }
    if args.verify {
        let check = if args.full {
            store.verify_journal_full(&args.archive)?
        } else if !args.archive.is_empty() {
            return Err(Error::InvalidArgument(
                "--verify --archive needs --full (the archives and the store's journal as one chain)"
                    .into(),
            ));
        } else {
            store.verify_journal()?
        };
        out.print(&check, || {
            format!(
                "journal intact: {} entries, head {}",
                check.entries, check.head
            )
        })?;
        return Ok(exit::OK);
    }
    let entries = store.journal()?;
    out.print(&entries, || {
        entries
            .iter()
            .map(|e| {
                format!(
                    "{:>5}  {}  {:<12} {}\n",
                    e.seq,
                    e.at.format("%Y-%m-%d %H:%M:%S%.3f"),
                    e.by,
                    describe(&e.event)
                )
            })
            .collect()
    })?;
    Ok(exit::OK)
}

/// One line for a journal event.
pub fn describe(event: &JournalEvent) -> String {
    match event {
        JournalEvent::SiteChanged { old, new } => format!(
            "active site {} -> {} (token {} -> {}){}",
            site_name(old.site.as_ref()),
            site_name(new.site.as_ref()),
            old.token,
            new.token,
            if new.reason.is_empty() {
                String::new()
            } else {
                format!(": {}", new.reason)
            }
        ),
        JournalEvent::PlanStep {
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
        JournalEvent::DrainForced { plan, alive_runs } => {
            format!("plan {plan}: drain FORCED past {alive_runs} live run(s)")
        }
        JournalEvent::GateChecked {
            event,
            passed,
            overridden,
            checks,
        } => {
            let failed = checks.iter().filter(|c| !c.passed()).count();
            let verdict = match (passed, overridden) {
                (true, _) => "passed".to_string(),
                (false, true) => format!("{failed} FAILED, OVERRIDDEN"),
                (false, false) => format!("{failed} FAILED: event refused"),
            };
            format!("checks of {event}: {} run, {verdict}", checks.len())
        }
        JournalEvent::Checkpoint { continues, record } => format!(
            "checkpoint: older entries archived, chain continues from {} (record: {} at token {})",
            &continues[..continues.len().min(12)],
            site_name(record.site.as_ref()),
            record.token
        ),
    }
}
