//! `pra drill`: a full disaster-recovery drill in a scratch directory, with real processes — an
//! app writing to its SQLite database, one cron loop per site calling `pra run` every 250 ms, a
//! backup loop calling `pra backup` — through an incident on the primary, failover, a failback in
//! which the primary boots while the secondary still runs its crons, and finally the loss of the
//! app's database and its restore. It ends with the measured KPIs against their targets.
//!
//! [`harness`] owns the processes (the app, the cron loops, the job and its tables in the app
//! database), [`scenario`] the script of the incident, and [`report`] what the drill measured
//! against its targets.

mod harness;
mod jobdb;
mod report;
mod scenario;

pub use harness::{app, job};
pub use scenario::run;
