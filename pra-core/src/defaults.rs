//! The defaults, once: every front end (the CLI's configuration, the Python module, the C
//! library) and every `Default` impl reads them from here.

use std::time::Duration;

/// The deadline of one call to a network store (etcd).
pub const STORE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a run may stay silent before a drain counts it lost (on etcd, the TTL of each
/// run's lease).
pub const LOST_AFTER: Duration = Duration::from_secs(60);
/// How often `pra run` heartbeats and re-checks the active site.
pub const HEARTBEAT: Duration = Duration::from_secs(10);
/// Between SIGTERM and SIGKILL when a run must stop.
pub const REVOKE_GRACE: Duration = Duration::from_secs(30);
/// How long a flip waits for the old site's runs to end.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(600);
/// How many days finished runs are kept in detail (`history_days`): older ones are deleted as
/// runs finish, their counts kept in per job and site counters.
pub const HISTORY_DAYS: u32 = 30;
/// [`HISTORY_DAYS`] as a duration.
pub const HISTORY: Duration = Duration::from_secs(HISTORY_DAYS as u64 * 86_400);
/// [`HISTORY_DAYS`] on an etcd store: etcd's database has a space quota (2 GiB by default),
/// and 200 jobs a minute for 30 days would keep ≈ 4.4 GB of finished runs; 7 days ≈ 1 GB.
pub const HISTORY_DAYS_ETCD: u32 = 7;

/// The default history window of the store at `url`, in days: [`HISTORY_DAYS_ETCD`] for etcd,
/// [`HISTORY_DAYS`] for the others.
pub fn history_days_for(url: &str) -> u32 {
    if url.starts_with("etcd://") || url.starts_with("etcds://") {
        HISTORY_DAYS_ETCD
    } else {
        HISTORY_DAYS
    }
}
/// The seed's backup cadence.
pub const BACKUP_INTERVAL: Duration = Duration::from_secs(60);
/// The application's table that `status` counts.
pub const TABLE: &str = "events";
/// The two sites, primary first.
pub const SITES: &str = "rbx,sbg";
/// The application's database.
pub const DB: &str = "/data/app.db";
/// Where backups go.
pub const BACKUP_DIR: &str = "/backup";
/// The store when nothing names one.
pub const STORE: &str = "sqlite:///var/lib/pra/state.db";
/// `pra follow`: the first restart delay of a command that died while its site was active.
pub const FOLLOW_BACKOFF_INITIAL: Duration = Duration::from_secs(1);
/// `pra follow`: the longest restart delay (the delay doubles at each quick death up to this).
pub const FOLLOW_BACKOFF_MAX: Duration = Duration::from_secs(60);
/// `pra follow`: a command that ran this long was healthy: its next restart delay is the first.
pub const FOLLOW_HEALTHY_AFTER: Duration = Duration::from_secs(60);
