//! The distributed store: the active-site record, journal, plan and run registry under one etcd
//! key prefix, every change one etcd transaction guarded by the record's `mod_revision`; runs
//! live on etcd leases. Built with the `etcd` cargo feature.
//!
//! Keys under the prefix `P`:
//!
//! | key                   | value                                                             |
//! |-----------------------|-------------------------------------------------------------------|
//! | `P/record`            | the active-site record + journal head/length + last commit id    |
//! | `P/plan`              | `{"revision": n, "doc": {...}}`                                   |
//! | `P/journal/<seq>`     | one [`JournalEntry`] (seq zero-padded to 20 digits)               |
//! | `P/runs/<id>`         | one unfinished [`RunRecord`] (id = the run's lease id, 20 digits) |
//! | `P/alive/<id>`        | empty, attached to the run's lease: exists while the run is alive |
//! | `P/runs/done/<t>/<id>`| one finished [`RunRecord`], `t` its start (µs, padded), on the    |
//! |                       | history lease: etcd deletes it once the window has passed         |
//! | `P/runs/history/<w>/` | the history leases of a window of `w` seconds, and `epoch`, etcd's|
//! |                       | count of time in 64ths of it (see `history_lease`)                |
//! | `P/runs/stats/<site>/<job>` | `{"finished": n, "revoked": n, "last_…"}`: every finished run |
//! | `P/skips/<site>/<job>`| `{"count": n, "last_at": ...}`                                    |
//! | `P/outlived/<t>/<id>` | a run still going when the record moved past its token (`t` its   |
//! |                       | start): the report reads those and the runs around them; a flip   |
//! |                       | deletes those older than the oldest finished run kept             |
//! | `P/meta/outlived_since` | `{"since", "runs_before"}`: when those notes began (before it,  |
//! |                       | if runs came before, the report reads every run)                  |
//!
//! Finished runs and their counters live under `P/runs/` so that the job hosts' etcd role of
//! earlier versions (read `P/`, write `P/runs/`, `P/alive/`, `P/skips/`) still covers every
//! write a run makes; the unfinished runs are the keys of `P/runs/` that start with a digit.
//! Every read of the registry is bounded by what is alive or recent, never by history: a drain
//! reads the unfinished runs and `alive/`; metrics read the counters; a report reads
//! `runs/done/` from the start of its window. A run costs two revisions (start, finish), a skip one,
//! a heartbeat none (the lease keep-alive is the heartbeat). Finished runs written by earlier
//! versions under `runs/` are moved to `runs/done/` and counted by the first drain that meets them.
//! The history window is kept by etcd's clock, never by a job host's: a finished run is put on
//! a *history lease*, granted for the window plus an eighth and shared while it has at least
//! the window left (`LeaseTimeToLive`, the leader's count), so each lives at least the window
//! and about an eighth more — a host whose clock runs a month ahead deletes nothing early. A
//! restart or a leader change restarts every lease's countdown (without
//! `--experimental-enable-lease-checkpoint`), so a lease is also revoked once the window has
//! passed in *epochs*, a short lease's lifetimes, which a restart delays by one at most.
//! Finished runs of earlier versions (on no lease) are still deleted by the finishing host's
//! clock once older than the window, a few at a time.
//! etcd keeps old revisions until it is compacted: run it with
//! `--auto-compaction-mode=periodic --auto-compaction-retention=1h` (README, "Choosing a store").
//!
//! The public API is synchronous: the store owns a private single-threaded tokio runtime and
//! blocks on it, with a deadline on every call.
//!
//! `etcds://` URLs speak TLS (rustls; the CA is always named, see [`EtcdSecurity`]); a
//! configured etcd user authenticates at connect and its token is refreshed when it expires.
//! Failures that another try cannot mend — etcd's space alarm (NOSPACE), a permission denied,
//! refused credentials, a certificate the other side rejects — end the call at once with what
//! to do, instead of retrying until the deadline.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, KeyValue, PutOptions, Txn, TxnOp,
    TxnOpResponse,
};
use serde::{Deserialize, Serialize};

use super::commit::admit;
use super::runs::tally;
use super::{
    Admission, Backend, EtcdSecurity, GENESIS_HASH, Heartbeat, JournalEntry, JournalHead, Pulse,
    RunId, RunRecord, RunRegistry, RunStart, RunStats, Snapshot, StoredPlan, UnfinishedRun, Writes,
};
use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::fencing::{ActiveSite, FencingToken};
use crate::site::SiteId;

/// How an [`EtcdStore`] talks to etcd.
#[derive(Debug, Clone)]
pub struct EtcdOptions {
    /// The deadline of every store call (connect, reads, retries and the write together).
    pub timeout: Duration,
    /// The time-to-live of a run's lease: a run whose wrapper stops heartbeating is gone from
    /// the registry of alive runs this long after its last heartbeat (etcd rounds it up to a
    /// whole second, and to its minimum TTL).
    pub run_ttl: Duration,
    /// TLS to every member (`etcds://`).
    pub tls: bool,
    /// The CA, client certificate and credentials (the password never shows in `Debug`).
    pub security: EtcdSecurity,
    /// How long finished runs are kept under `P/runs/done/` (for reports): they live on a
    /// lease, so etcd deletes them by its own clock after at least this long (at most an
    /// eighth more); their counts stay in `P/runs/stats/`. Whole seconds; beyond etcd's
    /// longest lease (285 years) nothing is deleted.
    pub history: Duration,
}

impl Default for EtcdOptions {
    fn default() -> Self {
        EtcdOptions {
            timeout: crate::defaults::STORE_TIMEOUT,
            run_ttl: crate::defaults::LOST_AFTER,
            tls: false,
            security: EtcdSecurity::default(),
            history: std::time::Duration::from_secs(
                crate::defaults::HISTORY_DAYS_ETCD as u64 * 86_400,
            ),
        }
    }
}

/// The etcd store. Safe to share between threads; any number of processes on any number of
/// hosts may use the same prefix.
pub struct EtcdStore {
    url: String,
    prefix: String,
    client: Client,
    rt: tokio::runtime::Runtime,
    clock: Arc<dyn Clock>,
    opts: EtcdOptions,
    /// `etcd user NAME` when a user is configured: recorded in every change's `changed_by`.
    identity: Option<String>,
    /// Whether this store already probed etcd's compaction: once a process is enough (a
    /// waiting drain reads the registry on every poll).
    compaction_probed: AtomicBool,
    /// The history lease this process last found with at least the window left, and until
    /// when (this host's monotonic clock: only its rate matters) it still has.
    history_lease: std::sync::Mutex<Option<(i64, Instant)>>,
}

/// etcd's longest lease TTL (`MaxLeaseTTL`, seconds).
const MAX_LEASE_TTL: u64 = 9_000_000_000;

/// `P/runs/history/<window>/lease/<id>`: a history lease and the epoch it was granted in.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct HistoryLease {
    lease: i64,
    epoch: u64,
}

/// `P/runs/history/<window>/epoch` and `.../count`: an epoch's number.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Epoch {
    n: u64,
}

/// The length of an epoch, the unit in which a history lease's age is counted when etcd
/// restarts lease countdowns: a 64th of the window (2.6 hours for a week), and no shorter
/// than etcd's own shortest lease (2 s by default).
fn epoch_seconds(window: u64) -> u64 {
    (window / 64).max(2)
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("url", &self.url)
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

/// Revisions beyond which a cluster that still keeps its first revision is evidently not
/// compacted: with periodic compaction (`--auto-compaction-retention=1h`), revision 1 is gone an
/// hour after the cluster's start, and 200 jobs a minute make about 24 000 revisions an hour.
pub const UNCOMPACTED_WARN_AFTER: i64 = 100_000;

/// The record as stored at `P/record`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredRecord {
    #[serde(flatten)]
    record: ActiveSite,
    journal_head: String,
    journal_len: u64,
    /// The id of the commit that wrote this version, to settle an answer lost on the way back.
    commit_id: String,
}

/// How far the report widens the windows of runs it reads around a token's end: start times
/// come from the run hosts' clocks, token ends from the flipper's (NTP keeps them far closer).
const CLOCK_MARGIN: std::time::Duration = std::time::Duration::from_secs(300);

/// Finished runs of the old layout moved per drain (see `unfinished_runs_below`).
const MIGRATE_PER_READ: usize = 256;

/// The counters of one job on one site at `P/runs/stats/<site>/<job>`.
/// The times and schedule of the latest finished runs ride along (older values lack them).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Finished {
    finished: u64,
    revoked: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_started_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_finished_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_failed: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_success_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    schedule: Option<crate::schedule::Schedule>,
}

impl Finished {
    /// Counts the finished `run`.
    fn add(&mut self, run: &RunRecord) {
        let mut s = self.stats(&run.start.job, &run.start.site);
        s.add_run(run);
        *self = Finished {
            finished: s.started,
            revoked: s.revoked,
            last_started_at: s.last_started_at,
            last_finished_at: s.last_finished_at,
            last_failed: s.last_failed,
            last_success_at: s.last_success_at,
            schedule: s.schedule,
        };
    }

    /// As the counters of `job` on `site`.
    fn stats(&self, job: &str, site: &SiteId) -> RunStats {
        RunStats {
            started: self.finished,
            revoked: self.revoked,
            last_started_at: self.last_started_at,
            last_finished_at: self.last_finished_at,
            last_failed: self.last_failed,
            last_success_at: self.last_success_at,
            schedule: self.schedule.clone(),
            ..RunStats::new(job, site)
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SkipCount {
    count: u64,
    last_at: DateTime<Utc>,
}

/// A run still going when the record moved past its token, at `P/outlived/<start>/<id>`: the
/// runs another site's runs can overlap (what the double-execution report reads).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Outlived {
    id: i64,
    started_at: DateTime<Utc>,
    /// When the record moved past its token.
    token_end: DateTime<Utc>,
}

/// `P/meta/outlived_since`: when pra began noting the runs that outlive their token, and
/// whether runs came before (a report over that time reads every run of it).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct NotingBegan {
    since: DateTime<Utc>,
    runs_before: bool,
}

/// One consistent read of the record and the plan, with their revisions.
struct Read {
    record: StoredRecord,
    record_rev: i64,
    plan: Option<StoredPlan>,
    plan_rev: i64,
}

/// Unique within the process and across hosts (host, pid, time, counter).
fn commit_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "{}:{}:{nanos}:{n}",
        crate::site::hostname(),
        std::process::id()
    )
}

/// The first key after every key that starts with `prefix`.
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn first_kv(resp: &TxnOpResponse) -> Option<&KeyValue> {
    match resp {
        TxnOpResponse::Get(g) => g.kvs().first(),
        TxnOpResponse::Put(_) | TxnOpResponse::Delete(_) | TxnOpResponse::Txn(_) => None,
    }
}

/// The TLS settings of an `etcds://` store: the CA, and the client identity if configured.
fn tls_options(url: &str, security: &EtcdSecurity) -> Result<etcd_client::TlsOptions> {
    let read = |path: &std::path::Path, what: &str| {
        std::fs::read(path).map_err(|e| {
            Error::InvalidArgument(format!(
                "{url}: cannot read the etcd {what} {}: {e}",
                path.display()
            ))
        })
    };
    let mut tls = etcd_client::TlsOptions::new();
    if let Some(ca) = &security.ca_file {
        tls = tls.ca_certificate(etcd_client::Certificate::from_pem(read(ca, "CA file")?));
    }
    if let (Some(cert), Some(key)) = (&security.cert_file, &security.key_file) {
        tls = tls.identity(etcd_client::Identity::from_pem(
            read(cert, "client certificate")?,
            read(key, "client key")?,
        ));
    }
    Ok(tls)
}

/// One DER element at the start of `der`: its tag, its contents, and what follows it.
fn der_next(der: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = der.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// A DER UTCTime or GeneralizedTime at the start of `der`, and what follows it.
fn der_time(der: &[u8]) -> Option<(DateTime<Utc>, &[u8])> {
    let (tag, value, rest) = der_next(der)?;
    let text = std::str::from_utf8(value).ok()?;
    let full = match tag {
        // UTCTime: two-digit years, 50-99 are 19xx.
        0x17 => format!("{}{text}", if text.get(..2)? >= "50" { "19" } else { "20" }),
        0x18 => text.to_string(),
        _ => return None,
    };
    let t = chrono::NaiveDateTime::parse_from_str(&full, "%Y%m%d%H%M%SZ").ok()?;
    Some((t.and_utc(), rest))
}

/// The validity period (not before, not after) of a DER certificate.
fn validity(der: &[u8]) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
    let (_, cert, _) = der_next(der)?;
    let (_, tbs, _) = der_next(cert)?;
    let mut rest = tbs;
    let (tag, _, after) = der_next(rest)?;
    if tag == 0xa0 {
        rest = after; // [0] version
    }
    for _ in 0..3 {
        rest = der_next(rest)?.2; // serial, signature algorithm, issuer
    }
    let (_, validity, _) = der_next(rest)?;
    let (not_before, rest) = der_time(validity)?;
    let (not_after, _) = der_time(rest)?;
    Some((not_before, not_after))
}

/// Refuses a client certificate that is not valid now, naming the file and its dates: the
/// members would refuse it, and they say so only by closing the connection. `now` is the
/// system's time (the members judge by theirs), not the store's clock.
fn check_client_certificate(url: &str, path: &std::path::Path, now: DateTime<Utc>) -> Result<()> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let der = CertificateDer::from_pem_file(path).map_err(|e| {
        Error::InvalidArgument(format!(
            "{url}: the etcd client certificate {} is not a PEM certificate: {e}",
            path.display()
        ))
    })?;
    let Some((not_before, not_after)) = validity(&der) else {
        return Err(Error::InvalidArgument(format!(
            "{url}: cannot read the validity dates of the etcd client certificate {}",
            path.display()
        )));
    };
    if now < not_before || now > not_after {
        return Err(Error::StoreUnavailable {
            url: url.to_string(),
            reason: format!(
                "TLS: the client certificate {} is valid from {not_before} to {not_after}, not now ({now}): the members would refuse it; renew it",
                path.display()
            ),
        });
    }
    Ok(())
}

/// An error and each of its sources, joined (tonic's own message is only "transport error";
/// the cause — a certificate, a refused connection — is in the chain).
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        if !out.contains(&text) {
            out = format!("{out}: {text}");
        }
        next = cause.source();
    }
    out
}

/// What etcd's space alarm means and what to do about it.
pub(crate) const NOSPACE_ADVICE: &str = "etcd is out of space (its NOSPACE alarm is raised: the database reached --quota-backend-bytes) and refuses every write — no flip, no run registration — until an operator frees space: `etcdctl compact` to the current revision, `etcdctl defrag` on every member, then `etcdctl alarm disarm` (and raise --quota-backend-bytes if it fills again)";

/// Why a request failed, in words that say what to do, and whether trying again may help (a
/// dead member, no leader, a timeout, too many requests) or not (out of space, permission
/// denied, refused credentials or certificates, a request etcd refuses as such).
fn explain(e: &etcd_client::Error, tls: bool, user: Option<&str>) -> (String, bool) {
    use std::error::Error as _;
    use tonic::Code;
    let who = user.map_or_else(
        || "pra (no etcd user configured)".to_string(),
        |u| format!("etcd user {u:?}"),
    );
    let text = match e {
        // The status's message, then its sources (the transport's cause).
        etcd_client::Error::GRpcStatus(status) => {
            let rest = status.source().map(chain).unwrap_or_default();
            match (status.message(), rest.as_str()) {
                (m, "") => m.to_string(),
                ("", r) => r.to_string(),
                (m, r) if m.contains(r) => m.to_string(),
                (m, r) if r.contains(m) => r.to_string(),
                (m, r) => format!("{m}: {r}"),
            }
        }
        etcd_client::Error::TransportError(t) => chain(t),
        other => chain(other),
    };
    tracing::debug!(error = ?e, "etcd request failed");
    let tls_failed = ["certificate", "UnknownIssuer", "alert", "handshake", "tls:"]
        .iter()
        .any(|k| text.contains(k));
    if tls_failed {
        return (
            format!(
                "TLS with etcd failed ({text}): check that etcd_ca_file is the CA that signed the members' certificates, that they name the endpoint's host or address, and that the client certificate (etcd_cert_file) is signed by the CA the members trust and has not expired"
            ),
            false,
        );
    }
    let closed = text.contains("connection closed") || text.contains("connection reset");
    let text = if tls && closed {
        format!(
            "{text} (if this persists: a member that refuses the client certificate — signed by a CA it does not trust, or revoked — only closes the connection)"
        )
    } else {
        text
    };
    let etcd_client::Error::GRpcStatus(status) = e else {
        return (text, true);
    };
    let message = status.message();
    match status.code() {
        Code::ResourceExhausted if message.contains("space") => {
            (format!("{NOSPACE_ADVICE} ({message})"), false)
        }
        Code::PermissionDenied => (
            format!(
                "{who} has no permission for this ({message}); a job host's user may read the record and register runs but not flip: use an operator's credentials, or see README, Security, for the roles"
            ),
            false,
        ),
        // A token issued before a change of users or roles: authenticate again and retry (as
        // etcd's own client does), not a refusal of the credentials.
        Code::InvalidArgument | Code::FailedPrecondition if stale_auth(status) => (
            format!("{message}: the token predates a change of etcd's users or roles"),
            true,
        ),
        Code::InvalidArgument | Code::FailedPrecondition | Code::Unauthenticated
            if message.contains("auth")
                || message.contains("user")
                || message.contains("password")
                || message.contains("token") =>
        {
            (
                format!(
                    "etcd refused to authenticate {who} ({message}): check etcd_user and its password (etcd_password_file, PRA_ETCD_PASSWORD)"
                ),
                false,
            )
        }
        Code::Unavailable
        | Code::DeadlineExceeded
        | Code::Unknown
        | Code::Internal
        | Code::Cancelled
        | Code::Aborted
        | Code::ResourceExhausted => (text, true),
        Code::Ok
        | Code::NotFound
        | Code::InvalidArgument
        | Code::AlreadyExists
        | Code::FailedPrecondition
        | Code::OutOfRange
        | Code::Unimplemented
        | Code::DataLoss
        | Code::Unauthenticated => (format!("etcd refused the request: {status}"), false),
    }
}

/// Whether etcd refused a request because its auth token was issued before the latest change
/// of users or roles (`ErrAuthOldRevision`): the cure is a new token, not other credentials.
fn stale_auth(status: &tonic::Status) -> bool {
    status.message().contains("revision of auth store is old")
}

impl EtcdStore {
    /// Connects to the etcd cluster at `endpoints` (`host:port` each) and uses the keys under
    /// `prefix`. Connecting is lazy: an unreachable cluster shows at the first call, as
    /// [`Error::StoreUnavailable`].
    pub fn open(
        endpoints: &[String],
        prefix: &str,
        clock: Arc<dyn Clock>,
        opts: EtcdOptions,
    ) -> Result<Self> {
        let scheme = if opts.tls { "etcds" } else { "etcd" };
        let url = format!("{scheme}://{}{prefix}", endpoints.join(","));
        if opts.timeout.is_zero() || opts.run_ttl < Duration::from_secs(1) {
            return Err(Error::InvalidArgument(format!(
                "{url}: the timeout must be positive and the run TTL at least one second"
            )));
        }
        opts.security.validate(&url, opts.tls)?;
        let unavailable = |reason: String| Error::StoreUnavailable {
            url: url.clone(),
            reason,
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| unavailable(format!("cannot start the etcd client runtime: {e}")))?;
        let mut connect = ConnectOptions::new()
            .with_timeout(opts.timeout)
            .with_connect_timeout(opts.timeout.min(Duration::from_secs(2)))
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3))
            .with_require_leader(true);
        if opts.tls {
            if let Some(cert) = &opts.security.cert_file {
                check_client_certificate(&url, cert, Utc::now())?;
            }
            connect = connect.with_tls(tls_options(&url, &opts.security)?);
        }
        let password = opts.security.resolve_password()?;
        if let (Some(user), Some(password)) = (&opts.security.user, &password) {
            if !opts.tls {
                tracing::warn!(store = %url, "the etcd password is sent in clear over etcd://; use etcds://");
            }
            connect = connect
                .with_user(user.clone(), password.expose().to_string())
                .with_auto_token_refresh(true);
        }
        let endpoints: Vec<String> = endpoints
            .iter()
            .map(|e| format!("{}://{e}", if opts.tls { "https" } else { "http" }))
            .collect();
        // With a user, connecting authenticates (one request): refused credentials show here.
        let client = rt
            .block_on(async {
                tokio::time::timeout(opts.timeout, Client::connect(&endpoints, Some(connect))).await
            })
            .map_err(|_| unavailable(format!("no answer within {:?}", opts.timeout)))?
            .map_err(|e| unavailable(explain(&e, opts.tls, opts.security.user.as_deref()).0))?;
        Ok(EtcdStore {
            url,
            prefix: prefix.to_string(),
            client,
            rt,
            clock,
            identity: opts.security.identity(),
            opts,
            compaction_probed: AtomicBool::new(false),
            history_lease: std::sync::Mutex::new(None),
        })
    }

    fn key(&self, rest: &str) -> String {
        format!("{}/{rest}", self.prefix)
    }

    fn unavailable(&self, reason: String) -> Error {
        Error::StoreUnavailable {
            url: self.url.clone(),
            reason,
        }
    }

    fn corrupt(&self, what: &str, detail: impl std::fmt::Display) -> Error {
        Error::Corrupt {
            what: format!("{what} in {}", self.url),
            detail: detail.to_string(),
        }
    }

    /// Runs one request with what is left of `deadline`.
    fn once<T, F>(&self, what: &str, deadline: Instant, fut: F) -> Result<T>
    where
        F: Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        self.attempt(what, deadline, fut).map_err(|(e, _)| e)
    }

    /// One request; a failure says whether trying again may help (a dead member, no leader,
    /// a timeout) or not (a lease that does not exist, a request etcd refuses).
    fn attempt<T, F>(
        &self,
        what: &str,
        deadline: Instant,
        fut: F,
    ) -> std::result::Result<T, (Error, bool)>
    where
        F: Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        let left = deadline.saturating_duration_since(Instant::now());
        match self
            .rt
            .block_on(async move { tokio::time::timeout(left, fut).await })
        {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(etcd_client::Error::GRpcStatus(status)))
                if status.code() == tonic::Code::NotFound =>
            {
                Err((
                    Error::NotFound(format!("{what} in {}: {}", self.url, status.message())),
                    false,
                ))
            }
            Ok(Err(e)) => {
                if let etcd_client::Error::GRpcStatus(status) = &e
                    && stale_auth(status)
                {
                    // The client refreshes a token by itself only when it is invalid; one that
                    // predates a change of users or roles is refreshed here, before the retry.
                    let client = self.client.clone();
                    let _ = self
                        .rt
                        .block_on(async move { client.refresh_token().await });
                }
                let (why, transient) =
                    explain(&e, self.opts.tls, self.opts.security.user.as_deref());
                Err((self.unavailable(format!("{what}: {why}")), transient))
            }
            Err(_) => Err((
                self.unavailable(format!("{what}: no answer within {:?}", self.opts.timeout)),
                true,
            )),
        }
    }

    /// Runs an idempotent request again (after a short pause) while it fails in a way that may
    /// pass, until `deadline`: a member that died or lost its leader is replaced by another.
    fn retrying<T, F, Fut>(&self, what: &str, deadline: Instant, mut f: F) -> Result<T>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        let mut pause = Duration::from_millis(20);
        // Each try gets at most half the call's budget: a request stuck with a member that
        // lost its leader (a proposal forwarded to a dead leader waits for etcd's own request
        // timeout) is abandoned and sent again, to whichever member now answers.
        let slice = (self.opts.timeout / 2).max(Duration::from_millis(250));
        loop {
            let try_deadline = deadline.min(Instant::now() + slice);
            match self.attempt(what, try_deadline, f(self.client.clone())) {
                Ok(v) => return Ok(v),
                Err((e, false)) => return Err(e),
                Err((e, true)) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left <= pause {
                        return Err(e);
                    }
                    tracing::debug!(store = %self.url, error = %e, "etcd request failed; retrying");
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(250));
                }
            }
        }
    }

    fn deadline(&self) -> Instant {
        Instant::now() + self.opts.timeout
    }

    fn read(&self, deadline: Instant) -> Result<Read> {
        self.read_txn(deadline, false)
    }

    /// Reads the record and the plan in one transaction. With `probe`, the same transaction
    /// also proves that this client could register a run now: it carries a put of
    /// `P/alive/probe` in a branch that is never taken (its compare, a version below zero, is
    /// never true), so nothing is written and no revision is spent, but etcd refuses the
    /// whole transaction when it could not write — out of space (NOSPACE), or a user without
    /// write permission on `P/alive/`. It goes through Raft like a write (a few milliseconds
    /// more than a read).
    fn read_txn(&self, deadline: Instant, probe: bool) -> Result<Read> {
        let (rk, pk) = (self.key("record"), self.key("plan"));
        let probe_key = self.key("alive/probe");
        let resp = self.retrying("read the record", deadline, |mut c| {
            let reads = [TxnOp::get(rk.clone(), None), TxnOp::get(pk.clone(), None)];
            let txn = if probe {
                Txn::new()
                    .when([Compare::version(probe_key.clone(), CompareOp::Less, 0)])
                    .and_then([TxnOp::put(probe_key.clone(), Vec::new(), None)])
                    .or_else(reads)
            } else {
                Txn::new().and_then(reads)
            };
            async move { c.txn(txn).await }
        })?;
        let ops = resp.op_responses();
        let (record, record_rev) = match ops.first().and_then(first_kv) {
            Some(kv) => (
                serde_json::from_slice::<StoredRecord>(kv.value())
                    .map_err(|e| self.corrupt("the active-site record", e))?,
                kv.mod_revision(),
            ),
            None => (
                StoredRecord {
                    record: ActiveSite::initial(),
                    journal_head: GENESIS_HASH.into(),
                    journal_len: 0,
                    commit_id: String::new(),
                },
                0,
            ),
        };
        let (plan, plan_rev) = match ops.get(1).and_then(first_kv) {
            Some(kv) => (
                Some(
                    serde_json::from_slice::<StoredPlan>(kv.value())
                        .map_err(|e| self.corrupt("the plan", e))?,
                ),
                kv.mod_revision(),
            ),
            None => (None, 0),
        };
        Ok(Read {
            record,
            record_rev,
            plan,
            plan_rev,
        })
    }

    /// The cluster's current revision while etcd still keeps every revision since its first
    /// (revision 1 is readable: the cluster was never compacted), `None` once it was
    /// compacted. One request.
    pub fn uncompacted_revisions(&self) -> Result<Option<i64>> {
        let key = self.key("record");
        let mut c = self.client.clone();
        self.once(
            "read the cluster's first revision",
            self.deadline(),
            async move {
                let opts = GetOptions::new().with_revision(1).with_count_only();
                match c.get(key, Some(opts)).await {
                    Ok(resp) => Ok(Some(resp.header().map_or(0, |h| h.revision()))),
                    // "required revision has been compacted"
                    Err(etcd_client::Error::GRpcStatus(s))
                        if s.code() == tonic::Code::OutOfRange =>
                    {
                        Ok(None)
                    }
                    Err(e) => Err(e),
                }
            },
        )
    }

    /// Warns when etcd evidently is not compacted — more than [`UNCOMPACTED_WARN_AFTER`]
    /// revisions and the first still readable — since the database then grows with every
    /// run until its space quota stops all writes. Run on the drain and on metrics (not on
    /// every `pra run`), once per store; a failed probe is left to the call's own reads to
    /// report.
    fn warn_if_uncompacted(&self) {
        if self.compaction_probed.swap(true, Ordering::Relaxed) {
            return;
        }
        match self.uncompacted_revisions() {
            Ok(Some(revision)) if revision > UNCOMPACTED_WARN_AFTER => tracing::warn!(
                store = %self.url,
                revision,
                "etcd keeps every revision since its first: it is evidently never compacted, and grows with every run until its space quota (--quota-backend-bytes, 2 GiB by default) stops all writes; run its members with --auto-compaction-mode=periodic --auto-compaction-retention=1h (README, \"Choosing a store\")"
            ),
            Ok(_) => {}
            Err(e) => tracing::debug!(store = %self.url, error = %e, "compaction probe failed"),
        }
    }

    /// Every key under `P/<dir>/`, in key order, read page by page at one revision.
    fn range(&self, dir: &str, deadline: Instant) -> Result<Vec<KeyValue>> {
        let start = self.key(&format!("{dir}/"));
        let end = prefix_end(&start);
        self.range_between(dir, start.into_bytes(), end, deadline)
    }

    /// The first `limit` keys in `[start, end)` (keys only: their names, revisions and
    /// leases), in key order.
    fn first_keys(
        &self,
        what: &str,
        start: &str,
        end: &[u8],
        limit: i64,
        deadline: Instant,
    ) -> Result<Vec<KeyValue>> {
        let mut resp = self.retrying(&format!("read {what}"), deadline, |mut c| {
            let (start, end) = (start.to_string(), end.to_vec());
            async move {
                c.get(
                    start,
                    Some(
                        GetOptions::new()
                            .with_range(end)
                            .with_limit(limit)
                            .with_keys_only(),
                    ),
                )
                .await
            }
        })?;
        Ok(resp.take_kvs())
    }

    /// The JSON value at `key` (`what` names it in errors) with its mod_revision, if any.
    fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        what: &str,
        key: &str,
        deadline: Instant,
    ) -> Result<Option<(T, i64)>> {
        let resp = self.retrying(&format!("read {what}"), deadline, |mut c| {
            let key = key.to_string();
            async move { c.get(key, None).await }
        })?;
        resp.kvs()
            .first()
            .map(|kv| {
                serde_json::from_slice::<T>(kv.value())
                    .map(|v| (v, kv.mod_revision()))
                    .map_err(|e| self.corrupt(what, e))
            })
            .transpose()
    }

    /// Every key in `[start, end)`, in key order, read page by page at one revision.
    fn range_between(
        &self,
        dir: &str,
        start: Vec<u8>,
        end: Vec<u8>,
        deadline: Instant,
    ) -> Result<Vec<KeyValue>> {
        Ok(self.range_between_at(dir, start, end, deadline)?.0)
    }

    /// [`Self::range_between`], with the revision it was read at.
    fn range_between_at(
        &self,
        dir: &str,
        start: Vec<u8>,
        end: Vec<u8>,
        deadline: Instant,
    ) -> Result<(Vec<KeyValue>, i64)> {
        let mut out = Vec::new();
        let mut from = start;
        let mut revision = 0;
        loop {
            let opts = GetOptions::new()
                .with_range(end.clone())
                .with_limit(1000)
                .with_revision(revision);
            let key = from.clone();
            let mut resp = self.retrying(&format!("read {dir}"), deadline, |mut c| {
                let (key, opts) = (key.clone(), opts.clone());
                async move { c.get(key, Some(opts)).await }
            })?;
            if revision == 0 {
                revision = resp.header().map_or(0, |h| h.revision());
            }
            let more = resp.more();
            let kvs = resp.take_kvs();
            match kvs.last() {
                Some(last) if more => {
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => {
                    out.extend(kvs);
                    return Ok((out, revision));
                }
            }
            out.extend(kvs);
        }
    }

    /// The runs under `runs/`: the unfinished ones (and finished ones of the old layout not
    /// moved yet).
    fn runs_all(&self, deadline: Instant) -> Result<Vec<RunRecord>> {
        Ok(self
            .runs_all_with_revisions(deadline)?
            .into_iter()
            .map(|(r, _)| r)
            .collect())
    }

    fn runs_all_with_revisions(&self, deadline: Instant) -> Result<Vec<(RunRecord, i64)>> {
        // The keys `runs/<20 digits>` only: `runs/done/` and `runs/stats/` sort after them.
        let (start, end) = (self.key("runs/0"), self.key("runs/:"));
        self.range_between("runs", start.into_bytes(), end.into_bytes(), deadline)?
            .iter()
            .map(|kv| {
                serde_json::from_slice::<RunRecord>(kv.value())
                    .map(|r| (r, kv.mod_revision()))
                    .map_err(|e| self.corrupt("the run registry", e))
            })
            .collect()
    }

    fn run_key(&self, id: RunId) -> String {
        self.key(&format!("runs/{:020}", id.0))
    }

    fn alive_key(&self, id: RunId) -> String {
        self.key(&format!("alive/{:020}", id.0))
    }

    /// `P/runs/done/<t>/`, `t` a start time in µs since the epoch (before it: 0).
    fn done_from(&self, t: DateTime<Utc>) -> String {
        self.key(&format!("runs/done/{:020}/", t.timestamp_micros().max(0)))
    }

    /// The notes of the runs that outlive their token when the record becomes `next` (the runs
    /// still going under a lower token), and the compare that makes them complete: no run
    /// registered since they were read (a run admitted in between under the old token would
    /// outlive it unnoted; the commit fails and is decided again). The first notes also say
    /// since when pra notes (`P/meta/outlived_since`): before it, the report reads every run.
    fn outliving(&self, next: &ActiveSite, deadline: Instant) -> Result<(Vec<TxnOp>, Compare)> {
        let (start, end) = (self.key("runs/0"), self.key("runs/:"));
        let (kvs, rev) = self.range_between_at(
            "runs",
            start.clone().into_bytes(),
            end.clone().into_bytes(),
            deadline,
        )?;
        let mut ops = Vec::new();
        // The oldest start of a run still going: its note (if it has one) must stay.
        let mut oldest_going: Option<DateTime<Utc>> = None;
        for kv in &kvs {
            let run: RunRecord = serde_json::from_slice(kv.value())
                .map_err(|e| self.corrupt("the run registry", e))?;
            if run.finished_at.is_none() {
                oldest_going = Some(oldest_going.map_or(run.started_at, |t| t.min(run.started_at)));
            }
            if run.finished_at.is_none() && run.start.token < next.token {
                let note = Outlived {
                    id: run.id.0,
                    started_at: run.started_at,
                    token_end: next.changed_at,
                };
                let key = format!("{}{:020}", self.outlived_from(run.started_at), run.id.0);
                ops.push(TxnOp::put(key, Self::json(&note)?, None));
            }
        }
        // Notes of runs that left the history window go with the flip: those that started
        // before both the oldest finished run kept and every run still going (a few a flip;
        // no clock but the data's). The notes this flip writes are of runs still going: never
        // in that range (etcd refuses a transaction that puts and deletes one key).
        let done = self.key("runs/done/");
        let oldest = self.first_keys(
            "the oldest finished run",
            &done,
            &prefix_end(&done),
            1,
            deadline,
        )?;
        let oldest_done = oldest.first().and_then(|kv| {
            let key = String::from_utf8_lossy(kv.key());
            let t = key
                .strip_prefix(&self.key("runs/done/"))?
                .split('/')
                .next()?
                .to_string();
            t.parse::<i64>().ok()
        });
        let oldest_going = oldest_going.map(|t| t.timestamp_micros().max(0));
        let before = match (oldest_done, oldest_going) {
            (Some(d), Some(g)) => Some(d.min(g)),
            (d, g) => d.or(g),
        };
        // With neither, no note can name a run that is still kept: all go.
        let before = before.unwrap_or(i64::MAX);
        ops.push(TxnOp::delete(
            self.key("outlived/"),
            Some(
                etcd_client::DeleteOptions::new()
                    .with_range(self.key(&format!("outlived/{before:020}/"))),
            ),
        ));
        let since = self.key("meta/outlived_since");
        let noted = self.retrying("read when noting began", deadline, |mut c| {
            let since = since.clone();
            async move { c.get(since, None).await }
        })?;
        if noted.kvs().is_empty() {
            // Whether any run came before (going, or finished and kept): if none did (a new
            // prefix), the report has no unnoted past to read.
            let began = NotingBegan {
                since: next.changed_at,
                runs_before: !kvs.is_empty() || !oldest.is_empty(),
            };
            ops.push(TxnOp::put(since, Self::json(&began)?, None));
        }
        let no_run_since =
            Compare::create_revision(start, CompareOp::Less, rev + 1).with_range(end);
        Ok((ops, no_run_since))
    }

    /// `P/outlived/<t>/`, `t` a start time in µs since the epoch: the notes of runs still going
    /// when the record moved past their token, ordered by their start as `done/` is.
    fn outlived_from(&self, t: DateTime<Utc>) -> String {
        self.key(&format!("outlived/{:020}/", t.timestamp_micros().max(0)))
    }

    fn done_key(&self, run: &RunRecord) -> String {
        format!("{}{:020}", self.done_from(run.started_at), run.id.0)
    }

    fn stats_key(&self, site: &SiteId, job: &str) -> String {
        self.key(&format!("runs/stats/{site}/{job}"))
    }

    /// Run `id` as stored under `runs/` (finished or not) with its mod_revision.
    fn stored_run(&self, id: RunId, deadline: Instant) -> Result<Option<(RunRecord, i64)>> {
        let key = self.run_key(id);
        let resp = self.retrying("read the run", deadline, |mut c| {
            let key = key.clone();
            async move { c.get(key, None).await }
        })?;
        let Some(kv) = resp.kvs().first() else {
            return Ok(None);
        };
        let run: RunRecord =
            serde_json::from_slice(kv.value()).map_err(|e| self.corrupt("the run registry", e))?;
        Ok(Some((run, kv.mod_revision())))
    }

    /// Moves `run` (finished, read at `rev` under `runs/`) to `done/` and counts it, in one
    /// transaction that also holds `when` and deletes `also`. `Ok(false)` when the run was
    /// changed or moved meanwhile by someone else (a concurrent finish or drain).
    fn retire(
        &self,
        run: &RunRecord,
        rev: i64,
        when: Vec<Compare>,
        also: Vec<TxnOp>,
        deadline: Instant,
    ) -> Result<bool> {
        let stats_key = self.stats_key(&run.start.site, &run.start.job);
        let mut attempts = 0u64;
        let mut lease = self.history_lease(deadline)?;
        let mut lease_lost = false;
        loop {
            let (mut stats, stats_rev) = self
                .get_json::<Finished>("the run counters", &stats_key, deadline)?
                .unwrap_or_default();
            stats.add(run);
            let mut compares = vec![
                Compare::mod_revision(self.run_key(run.id), CompareOp::Equal, rev),
                Compare::mod_revision(stats_key.clone(), CompareOp::Equal, stats_rev),
            ];
            compares.extend(when.iter().cloned());
            let mut ops = vec![
                TxnOp::delete(self.run_key(run.id), None),
                TxnOp::put(
                    self.done_key(run),
                    Self::json(run)?,
                    lease.map(|id| PutOptions::new().with_lease(id)),
                ),
                TxnOp::put(stats_key.clone(), Self::json(&stats)?, None),
            ];
            ops.extend(also.iter().cloned());
            let txn = Txn::new().when(compares).and_then(ops);
            let id = run.id;
            let settle = move |s: &Self, d: Instant| -> Result<Option<bool>> {
                Ok(Some(s.stored_run(id, d)?.is_none()))
            };
            match self.guarded_txn("retire the run", deadline, txn, settle) {
                Ok(true) => return Ok(true),
                Ok(false) => {}
                // The history lease is gone (revoked by hand, or a window shorter than a
                // round trip): once, with a fresh one.
                Err(Error::NotFound(_)) if !lease_lost => {
                    lease_lost = true;
                    self.forget_history_lease();
                    lease = self.history_lease(deadline)?;
                    continue;
                }
                Err(e) => return Err(e),
            }
            // Lost to a concurrent finish of this run, to another run's counter update, or
            // (with `when`) to a condition of the caller's: a live lease is never overruled,
            // so that case ends here and a later drain tries again.
            if !when.is_empty() {
                return Ok(false);
            }
            match self.stored_run(run.id, deadline)? {
                Some((_, now)) if now == rev => {}
                _ => return Ok(false),
            }
            if Instant::now() >= deadline {
                return Err(Error::Busy(format!(
                    "{}: the run counters of {} on {} kept changing",
                    self.url, run.start.job, run.start.site
                )));
            }
            // Many runs of one job finishing at once contend for its counter: back off a
            // little, differently in each process, instead of retrying in lockstep.
            let jitter = u64::from(std::process::id() % 17) + (attempts % 8) * 5;
            attempts += 1;
            std::thread::sleep(Duration::from_millis(
                jitter.min(
                    deadline
                        .saturating_duration_since(Instant::now())
                        .as_millis() as u64,
                ),
            ));
        }
    }

    /// The history lease: `Some(id)` of a lease every key of which lives at least the window
    /// and at most about an eighth more, `None` when the window is longer than any lease
    /// (nothing expires). Kept under `P/runs/history/<window>/` and shared by every writer:
    ///
    /// - `epoch` (`{"n"}`), on a short lease of [`epoch_seconds`]: etcd's own count of time.
    ///   When it has expired, the next writer starts the next epoch (`count` says which).
    /// - `lease/<id>` (`{"epoch"}`): each history lease and the epoch it was granted in.
    ///
    /// A lease is granted for the window plus an eighth and shared while it is less than an
    /// eighth of the window old in epochs and has at least the window left on etcd's clock
    /// (`LeaseTimeToLive`); keys put on it go when it expires. etcd restarts the countdown of
    /// every lease when a member restarts or the leader changes (without lease checkpoints),
    /// which would keep a long lease alive for ever: so a lease is also revoked once the
    /// window and an eighth have passed in epochs — a restart delays an epoch by one short
    /// lease at most. Job hosts' clocks count nowhere.
    fn history_lease(&self, deadline: Instant) -> Result<Option<i64>> {
        let window = self.opts.history.as_secs().max(1);
        let ttl = window.saturating_add(window.div_ceil(8));
        if ttl > MAX_LEASE_TTL {
            return Ok(None);
        }
        if let Some((id, until)) = *self.history_lease.lock().unwrap_or_else(|e| e.into_inner())
            && Instant::now() < until
        {
            return Ok(Some(id));
        }
        let epoch_secs = epoch_seconds(window);
        // Epochs a lease is shared for, and after which its keys are at least a window old.
        let keep = window.div_ceil(epoch_secs);
        let share = (keep / 8).max(1);
        let dir = self.key(&format!("runs/history/{window}/"));
        loop {
            let mut current = None;
            let mut count = (0u64, 0i64);
            let mut leases: Vec<(i64, u64, Vec<u8>)> = Vec::new();
            for kv in self.range_between(
                "the history leases",
                dir.clone().into_bytes(),
                prefix_end(&dir),
                deadline,
            )? {
                let name = &kv.key()[dir.len()..];
                let corrupt = |e| self.corrupt("the history leases", e);
                match name {
                    b"epoch" => {
                        current = Some(
                            serde_json::from_slice::<Epoch>(kv.value())
                                .map_err(corrupt)?
                                .n,
                        )
                    }
                    b"count" => {
                        count = (
                            serde_json::from_slice::<Epoch>(kv.value())
                                .map_err(corrupt)?
                                .n,
                            kv.mod_revision(),
                        )
                    }
                    _ => {
                        let lease: HistoryLease =
                            serde_json::from_slice(kv.value()).map_err(corrupt)?;
                        leases.push((lease.lease, lease.epoch, kv.key().to_vec()));
                    }
                }
            }
            let Some(current) = current else {
                self.next_epoch(&dir, count, epoch_secs, deadline)?;
                continue;
            };
            // Leases whose keys have lived the window in epochs go, whatever their countdown.
            for (id, granted, key) in &leases {
                if current > granted + share + keep {
                    let mut c = self.client.clone();
                    let id = *id;
                    match self.once("revoke a history lease", deadline, async move {
                        c.lease_revoke(id).await
                    }) {
                        Ok(_) | Err(Error::NotFound(_)) => {}
                        // Not this call's business to fail for: the next writer tries again.
                        Err(e) => {
                            tracing::warn!(store = %self.url, lease = id, error = %e, "history lease not revoked");
                            continue;
                        }
                    }
                    let mut c = self.client.clone();
                    let key = key.clone();
                    self.once("forget a history lease", deadline, async move {
                        c.delete(key, None).await
                    })?;
                }
            }
            let newest = leases
                .iter()
                .filter(|(_, granted, _)| current < granted + share)
                .max_by_key(|(id, granted, _)| (*granted, *id));
            if let Some((id, _, key)) = newest {
                let (id, asked) = (*id, Instant::now());
                let left = match self.retrying(
                    "read the history lease's time to live",
                    deadline,
                    |mut c| async move { c.lease_time_to_live(id, None).await },
                ) {
                    Ok(r) => r.ttl(),
                    Err(Error::NotFound(_)) => -1,
                    Err(e) => return Err(e),
                };
                if let Ok(left) = u64::try_from(left)
                    && left >= window
                {
                    // For as long as both still hold, by this host's monotonic clock (its
                    // rate only): the countdown, and at most an epoch.
                    let until = asked + Duration::from_secs((left - window).min(epoch_secs));
                    *self.history_lease.lock().unwrap_or_else(|e| e.into_inner()) =
                        Some((id, until));
                    return Ok(Some(id));
                }
                if left < 0 {
                    // Expired by itself: its keys are gone, and so goes its note.
                    let mut c = self.client.clone();
                    let key = key.clone();
                    self.once("forget a history lease", deadline, async move {
                        c.delete(key, None).await
                    })?;
                }
            }
            let granted = self.once("grant a history lease", deadline, {
                let mut c = self.client.clone();
                async move { c.lease_grant(ttl as i64, None).await }
            })?;
            let (id, asked) = (granted.id(), Instant::now());
            // Two writers granting at once share out two leases: each is revoked in its time.
            let mut c = self.client.clone();
            let key = format!("{dir}lease/{id:020}");
            let value = Self::json(&HistoryLease {
                lease: id,
                epoch: current,
            })?;
            self.once("note a history lease", deadline, async move {
                c.put(key, value, None).await
            })?;
            let until = asked + Duration::from_secs((ttl - window).min(epoch_secs));
            *self.history_lease.lock().unwrap_or_else(|e| e.into_inner()) = Some((id, until));
            return Ok(Some(id));
        }
    }

    /// Starts epoch `count + 1` under `dir` (the previous one's short lease expired): the
    /// epoch key on a new short lease and the count, together, unless another writer did.
    fn next_epoch(
        &self,
        dir: &str,
        (count, count_rev): (u64, i64),
        epoch_secs: u64,
        deadline: Instant,
    ) -> Result<()> {
        let short = self.once("grant an epoch lease", deadline, {
            let mut c = self.client.clone();
            async move { c.lease_grant(epoch_secs as i64, None).await }
        })?;
        let (epoch_key, count_key) = (format!("{dir}epoch"), format!("{dir}count"));
        let next = Self::json(&Epoch { n: count + 1 })?;
        let txn = Txn::new()
            .when([
                Compare::mod_revision(count_key.clone(), CompareOp::Equal, count_rev),
                Compare::version(epoch_key.clone(), CompareOp::Equal, 0),
            ])
            .and_then([
                TxnOp::put(count_key, next.clone(), None),
                TxnOp::put(
                    epoch_key,
                    next,
                    Some(PutOptions::new().with_lease(short.id())),
                ),
            ]);
        // A lost answer: the epoch key on our short lease says it landed.
        let short_id = short.id();
        let epoch_key = format!("{dir}epoch");
        let settle = move |s: &Self, d: Instant| -> Result<Option<bool>> {
            let resp = s.retrying("read the epoch", d, |mut c| {
                let key = epoch_key.clone();
                async move { c.get(key, None).await }
            })?;
            Ok(Some(
                resp.kvs().first().is_some_and(|kv| kv.lease() == short_id),
            ))
        };
        let applied = self.guarded_txn("start an epoch", deadline, txn, settle)?;
        if !applied {
            let mut c = self.client.clone();
            let id = short.id();
            let _ = self.once("revoke an unused epoch lease", deadline, async move {
                c.lease_revoke(id).await
            });
        }
        if Instant::now() >= deadline {
            return Err(self.unavailable("the history epochs kept changing".into()));
        }
        Ok(())
    }

    /// Forgets the history lease this process knew (etcd said it is gone).
    fn forget_history_lease(&self) {
        *self.history_lease.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Deletes finished runs that earlier versions left on no lease once they are
    /// older than the window by this host's clock: up to 128 a call, and one key read when
    /// the oldest finished run is on a lease (etcd deletes those itself).
    fn prune_unleased(&self, deadline: Instant) -> Result<()> {
        let Some(cutoff) = chrono::Duration::from_std(self.opts.history)
            .ok()
            .and_then(|window| self.clock.now().checked_sub_signed(window))
        else {
            return Ok(()); // a window longer than time itself: nothing is old enough
        };
        let (start, end) = (self.key("runs/done/"), self.done_from(cutoff));
        let oldest = self.first_keys(
            "the oldest finished run",
            &start,
            end.as_bytes(),
            1,
            deadline,
        )?;
        if oldest.first().is_none_or(|kv| kv.lease() != 0) {
            return Ok(());
        }
        let doomed: Vec<TxnOp> = self
            .first_keys(
                "the oldest finished runs",
                &start,
                end.as_bytes(),
                128,
                deadline,
            )?
            .iter()
            .filter(|kv| kv.lease() == 0)
            .map(|kv| TxnOp::delete(kv.key().to_vec(), None))
            .collect();
        let mut c = self.client.clone();
        self.once(
            "delete finished runs past the history window",
            deadline,
            async move { c.txn(Txn::new().and_then(doomed)).await },
        )?;
        Ok(())
    }

    /// Reads run `id` with its mod_revision; `None` if unknown or finished.
    fn unfinished_run(&self, id: RunId, deadline: Instant) -> Result<Option<(RunRecord, i64)>> {
        Ok(self
            .stored_run(id, deadline)?
            .filter(|(run, _)| run.finished_at.is_none()))
    }

    fn json<T: Serialize>(value: &T) -> Result<Vec<u8>> {
        serde_json::to_vec(value).map_err(|e| Error::Internal(e.to_string()))
    }

    /// Sends a guarded transaction. `Ok(true)`: applied; `Ok(false)`: a compare failed (someone
    /// else wrote first). When the answer is lost (a member died mid-request), `settle` reads the
    /// store to tell whether the write landed: `Some(applied)`, or `None` if it cannot tell.
    fn guarded_txn(
        &self,
        what: &str,
        deadline: Instant,
        txn: Txn,
        settle: impl Fn(&Self, Instant) -> Result<Option<bool>>,
    ) -> Result<bool> {
        let mut c = self.client.clone();
        match self.attempt(what, deadline, async move { c.txn(txn).await }) {
            Ok(resp) => Ok(resp.succeeded()),
            // Refused as such (too large, not allowed...): it was not applied.
            Err((e, false)) => Err(e),
            Err((e, true)) => {
                tracing::warn!(store = %self.url, error = %e, "{what}: answer lost; reading back whether it landed");
                // Give the read its own budget: the write may have used all of the deadline.
                let read_deadline = Instant::now() + self.opts.timeout;
                match settle(self, read_deadline) {
                    Ok(Some(applied)) => Ok(applied),
                    Ok(None) | Err(_) => Err(self.unavailable(format!(
                        "{what}: the outcome is unknown ({e}); reload the record before retrying"
                    ))),
                }
            }
        }
    }
    /// Registers run `id` (its lease granted) atomically with its admission: the txn compares
    /// the record's revision, so a flip in between makes it check again.
    fn register(&self, run: &RunStart, id: RunId, deadline: Instant) -> Result<Admission> {
        loop {
            let snap = self.read(deadline)?;
            let record = &snap.record.record;
            if admit(record, run).is_err() {
                return Ok(Admission::Standby {
                    active: record.site.clone(),
                    token: record.token,
                });
            }
            let now = self.clock.now();
            let rec = RunRecord {
                id,
                start: run.clone(),
                started_at: now,
                heartbeat_at: now,
                beats: 0,
                finished_at: None,
                exit_code: None,
                outcome: None,
            };
            let txn = Txn::new()
                .when([Compare::mod_revision(
                    self.key("record"),
                    CompareOp::Equal,
                    snap.record_rev,
                )])
                .and_then([
                    TxnOp::put(self.run_key(id), Self::json(&rec)?, None),
                    TxnOp::put(
                        self.alive_key(id),
                        Vec::new(),
                        Some(PutOptions::new().with_lease(id.0)),
                    ),
                ]);
            let run_key = self.run_key(id);
            let settle = |s: &Self, d: Instant| -> Result<Option<bool>> {
                let resp = s.retrying("read the run", d, |mut c| {
                    let key = run_key.clone();
                    async move { c.get(key, None).await }
                })?;
                Ok(Some(!resp.kvs().is_empty()))
            };
            if self.guarded_txn("register the run", deadline, txn, settle)? {
                return Ok(Admission::Admitted {
                    id,
                    token: run.token,
                });
            }
            if Instant::now() >= deadline {
                return Err(Error::Busy(format!(
                    "{}: the record kept changing while the run registered",
                    self.url
                )));
            }
        }
    }
}

impl Backend for EtcdStore {
    fn url(&self) -> &str {
        &self.url
    }

    fn clock(&self) -> &dyn Clock {
        &*self.clock
    }

    /// The guard's read: fails closed when this client could not register a run (see
    /// [`EtcdStore::read_txn`]), so that `pra check` never says "run" where `pra run` would be
    /// refused, and an operator sees the space alarm at the first check.
    fn load_record(&self) -> Result<ActiveSite> {
        Ok(self.read_txn(self.deadline(), true)?.record.record)
    }

    fn snapshot(&self) -> Result<Snapshot> {
        Ok(self.read(self.deadline())?.snapshot())
    }

    fn transact(&self, decide: &mut dyn FnMut(&Snapshot) -> Result<Writes>) -> Result<Writes> {
        let deadline = self.deadline();
        let id = commit_id();
        let mut attempt = 0u32;
        let mut sent: Option<Writes> = None;
        loop {
            attempt += 1;
            let read = self.read(deadline)?;
            if let Some(writes) = sent.take()
                && read.record.commit_id == id
            {
                // An earlier attempt whose answer was lost (and read back as not applied)
                // landed after all: it is this commit.
                return Ok(writes);
            }
            let writes = decide(&read.snapshot())?;
            if writes.is_empty() {
                return Ok(writes);
            }
            let mut ops = Vec::new();
            if let Some(plan) = &writes.plan {
                ops.push(TxnOp::put(self.key("plan"), Self::json(plan)?, None));
            }
            for entry in &writes.entries {
                ops.push(TxnOp::put(
                    self.key(&format!("journal/{:020}", entry.seq)),
                    Self::json(entry)?,
                    None,
                ));
            }
            let stored = StoredRecord {
                record: writes.record.clone(),
                journal_head: writes.head.hash.clone(),
                journal_len: writes.head.len,
                commit_id: id.clone(),
            };
            ops.push(TxnOp::put(self.key("record"), Self::json(&stored)?, None));
            let mut when = vec![
                Compare::mod_revision(self.key("record"), CompareOp::Equal, read.record_rev),
                Compare::mod_revision(self.key("plan"), CompareOp::Equal, read.plan_rev),
            ];
            if writes.record_changed {
                let (notes, no_run_since) = self.outliving(&writes.record, deadline)?;
                ops.extend(notes);
                when.push(no_run_since);
            }
            let txn = Txn::new().when(when).and_then(ops);
            let record_rev = read.record_rev;
            let settle = |s: &Self, d: Instant| -> Result<Option<bool>> {
                let now = s.read(d)?;
                Ok(if now.record.commit_id == id {
                    Some(true)
                } else if now.record_rev == record_rev {
                    Some(false)
                } else {
                    None
                })
            };
            if self.guarded_txn("commit", deadline, txn, settle)? {
                return Ok(writes);
            }
            sent = Some(writes);
            // Someone else committed in between: decide again against what they wrote.
            if Instant::now() >= deadline {
                return Err(Error::Busy(format!(
                    "{}: {attempt} attempts to commit lost to other writers within {:?}",
                    self.url, self.opts.timeout
                )));
            }
        }
    }

    fn read_journal(&self) -> Result<(Vec<JournalEntry>, JournalHead)> {
        let deadline = self.deadline();
        // The journal, then the record as it was at the same revision: a checkpoint (which
        // leaves the record as it is) removing entries in between cannot split the two.
        let start = self.key("journal/");
        let end = prefix_end(&start);
        let (kvs, rev) = self.range_between_at("journal", start.into_bytes(), end, deadline)?;
        let key = self.key("record");
        let resp = self.retrying("read the record", deadline, |mut c| {
            let key = key.clone();
            async move { c.get(key, Some(GetOptions::new().with_revision(rev))).await }
        })?;
        let record = match resp.kvs().first() {
            Some(kv) => serde_json::from_slice::<StoredRecord>(kv.value())
                .map_err(|e| self.corrupt("the active-site record", e))?,
            None => return Ok((Vec::new(), JournalHead::genesis())),
        };
        let mut entries: Vec<JournalEntry> = kvs
            .iter()
            .map(|kv| {
                serde_json::from_slice::<JournalEntry>(kv.value()).map_err(|e| {
                    self.corrupt(
                        &format!("journal entry {}", String::from_utf8_lossy(kv.key())),
                        format!("unreadable: {e}"),
                    )
                })
            })
            .collect::<Result<_>>()?;
        // Those the record anchors: from the last checkpoint (or 1) to its head.
        entries.retain(|e| e.seq <= record.journal_len);
        let head = JournalHead {
            len: record.journal_len,
            hash: record.journal_head,
        };
        Ok((entries, head))
    }

    fn drop_journal_before(&self, seq: u64) -> Result<()> {
        // A thousand entries a request: each delete is one small raft entry, and a flip is
        // never queued behind one that removes a year of journal at once.
        let (start, end) = (
            self.key("journal/"),
            self.key(&format!("journal/{seq:020}")),
        );
        loop {
            let deadline = self.deadline();
            let entries = self.first_keys(
                "checkpointed journal entries",
                &start,
                end.as_bytes(),
                1000,
                deadline,
            )?;
            let Some(last) = entries.last() else {
                return Ok(());
            };
            let mut upto = last.key().to_vec();
            upto.push(0);
            self.retrying("remove checkpointed journal entries", deadline, |mut c| {
                let (start, upto) = (start.clone(), upto.clone());
                async move {
                    c.delete(
                        start,
                        Some(etcd_client::DeleteOptions::new().with_range(upto)),
                    )
                    .await
                }
            })?;
        }
    }

    fn keeps_plans(&self) -> bool {
        true
    }

    fn run_registry(&self) -> Option<&dyn RunRegistry> {
        Some(self)
    }

    fn identity(&self) -> Option<&str> {
        self.identity.as_deref()
    }
}

impl Read {
    fn snapshot(&self) -> Snapshot {
        Snapshot {
            record: self.record.record.clone(),
            head: JournalHead {
                len: self.record.journal_len,
                hash: self.record.journal_head.clone(),
            },
            plan: self.plan.clone(),
        }
    }
}

impl RunRegistry for EtcdStore {
    fn run_start(&self, run: &RunStart) -> Result<Admission> {
        let deadline = self.deadline();
        let ttl = self.opts.run_ttl.as_secs_f64().ceil() as i64;
        let lease = self.once("grant the run's lease", deadline, {
            let mut c = self.client.clone();
            async move { c.lease_grant(ttl, None).await }
        })?;
        let id = RunId(lease.id());
        let admission = self.register(run, id, deadline);
        if !matches!(admission, Ok(Admission::Admitted { .. })) {
            // Not admitted (or unknown): the lease goes, and its key with it if it was written.
            let mut c = self.client.clone();
            let _ = self.once("revoke the lease", self.deadline(), async move {
                c.lease_revoke(id.0).await
            });
        }
        admission
    }

    fn run_heartbeat(&self, id: RunId) -> Result<Heartbeat> {
        let deadline = self.deadline();
        if self.unfinished_run(id, deadline)?.is_none() {
            return Ok(Heartbeat::Expired);
        }
        let ttl = self.retrying("keep the run's lease alive", deadline, |mut c| async move {
            let (mut keeper, mut stream) = c.lease_keep_alive(id.0).await?;
            keeper.keep_alive().await?;
            Ok(stream.message().await?.map_or(0, |r| r.ttl()))
        })?;
        if ttl <= 0 {
            tracing::warn!(store = %self.url, run = id.0, ttl = ?self.opts.run_ttl, "the run's lease expired");
            return Ok(Heartbeat::Expired);
        }
        // Nothing is written: the lease's keep-alive is the heartbeat (the drain reads the
        // lease), so a heartbeat costs no revision.
        Ok(Heartbeat::Alive)
    }

    fn run_finish(&self, id: RunId, exit_code: Option<i32>, outcome: &str) -> Result<bool> {
        let deadline = self.deadline();
        let Some((mut run, rev)) = self.unfinished_run(id, deadline)? else {
            return Ok(false);
        };
        let now = self.clock.now();
        run.finished_at = Some(now);
        run.heartbeat_at = now;
        run.exit_code = exit_code;
        run.outcome = Some(outcome.to_string());
        let also = vec![TxnOp::delete(self.alive_key(id), None)];
        if !self.retire(&run, rev, Vec::new(), also, deadline)? {
            return Ok(false);
        }
        let mut c = self.client.clone();
        if let Err(e) = self.once("revoke the run's lease", deadline, async move {
            c.lease_revoke(id.0).await
        }) {
            tracing::debug!(store = %self.url, error = %e, "lease not revoked (it expires by itself)");
        }
        if let Err(e) = self.prune_unleased(self.deadline()) {
            tracing::warn!(store = %self.url, error = %e, "finished runs past the history window not deleted (next finish retries)");
        }
        Ok(true)
    }

    /// Reads `done/` from `since` on, and the unfinished runs: bounded by the window.
    fn runs(&self, since: DateTime<Utc>) -> Result<Vec<RunRecord>> {
        let deadline = self.deadline();
        let from = self.done_from(since).into_bytes();
        let end = prefix_end(&self.key("runs/done/"));
        let mut runs: Vec<RunRecord> = self
            .range_between("done", from, end, deadline)?
            .iter()
            .map(|kv| {
                serde_json::from_slice::<RunRecord>(kv.value())
                    .map_err(|e| self.corrupt("the run history", e))
            })
            .collect::<Result<_>>()?;
        // A live run's heartbeat is its lease, which writes nothing: one whose lease is alive
        // has beaten now (the report counts it running until now, not until it started).
        let alive: HashSet<Vec<u8>> = self
            .range("alive", deadline)?
            .into_iter()
            .map(|kv| kv.key().to_vec())
            .collect();
        let now = self.clock.now();
        runs.extend(
            self.runs_all(deadline)?
                .into_iter()
                .filter(|r| r.started_at >= since)
                .map(|mut r| {
                    if r.finished_at.is_none() && alive.contains(self.alive_key(r.id).as_bytes()) {
                        r.heartbeat_at = now;
                    }
                    r
                }),
        );
        runs.sort_by_key(|r| (r.started_at, r.id.0));
        Ok(runs)
    }

    /// The runs noted as outliving their token (`P/outlived/`, written with each change of the
    /// record) and the runs started while one of them went on — widened by [`CLOCK_MARGIN`] on
    /// both sides, since the start times come from the hosts' clocks and the token ends from
    /// the flipper's: a window of runs, not all of the history. Before noting began
    /// (`P/meta/outlived_since`), every run.
    fn each_run_that_may_overlap(
        &self,
        since: DateTime<Utc>,
        f: &mut dyn FnMut(RunRecord) -> Result<()>,
    ) -> Result<()> {
        let deadline = self.deadline();
        let key = self.key("meta/outlived_since");
        let resp = self.retrying("read when noting began", deadline, |mut c| {
            let key = key.clone();
            async move { c.get(key, None).await }
        })?;
        let Some(kv) = resp.kvs().first() else {
            return self.each_run(since, f);
        };
        let began = serde_json::from_slice::<NotingBegan>(kv.value())
            .or_else(|_| {
                // As the first version wrote it: a time alone, runs before it assumed.
                serde_json::from_slice(kv.value()).map(|since| NotingBegan {
                    since,
                    runs_before: true,
                })
            })
            .map_err(|e| self.corrupt("the report's bounds", e))?;
        let margin = chrono::Duration::from_std(CLOCK_MARGIN).unwrap_or_default();
        let mut ranges: Vec<(DateTime<Utc>, DateTime<Utc>)> = Vec::new();
        if began.runs_before && since < began.since {
            ranges.push((since, began.since + margin));
        }
        let live = self.runs_all(deadline)?;
        // The outliving runs themselves go in whatever their start (before their token's end,
        // outside the ranges); the live ones are added with the other live runs below.
        let mut runs: std::collections::BTreeMap<i64, RunRecord> = Default::default();
        let mut wanted: HashSet<i64> = HashSet::new();
        let from = self.outlived_from(since).into_bytes();
        let end = prefix_end(&self.key("outlived/"));
        for kv in self.range_between("outlived", from, end, deadline)? {
            let note: Outlived = serde_json::from_slice(kv.value())
                .map_err(|e| self.corrupt("a note of a run outliving its token", e))?;
            wanted.insert(note.id);
            let finished = match live.iter().find(|r| r.id.0 == note.id) {
                Some(r) => r.finished_at,
                None => {
                    let done = format!("{}{:020}", self.done_from(note.started_at), note.id);
                    let resp = self.retrying("read a finished run", deadline, |mut c| {
                        let done = done.clone();
                        async move { c.get(done, None).await }
                    })?;
                    match resp.kvs().first() {
                        Some(kv) => {
                            let run: RunRecord = serde_json::from_slice(kv.value())
                                .map_err(|e| self.corrupt("the run history", e))?;
                            let finished = run.finished_at;
                            runs.insert(run.id.0, run);
                            finished
                        }
                        // Gone from the history window: nothing left to overlap with.
                        None => continue,
                    }
                }
            };
            ranges.push((
                (note.token_end - margin).max(since),
                finished.map_or(DateTime::<Utc>::MAX_UTC, |t| t.max(note.token_end) + margin),
            ));
        }
        ranges.sort_unstable();
        let mut merged: Vec<(DateTime<Utc>, DateTime<Utc>)> = Vec::new();
        for (lo, hi) in ranges {
            match merged.last_mut() {
                Some((_, h)) if lo <= *h => *h = (*h).max(hi),
                _ => merged.push((lo, hi)),
            }
        }
        let within = |t: DateTime<Utc>| merged.iter().any(|(lo, hi)| *lo <= t && t <= *hi);
        for (lo, hi) in &merged {
            let start = self.done_from(*lo).into_bytes();
            let end = if *hi == DateTime::<Utc>::MAX_UTC {
                prefix_end(&self.key("runs/done/"))
            } else {
                prefix_end(&self.done_from(*hi))
            };
            for kv in self.range_between("done", start, end, deadline)? {
                let run: RunRecord = serde_json::from_slice(kv.value())
                    .map_err(|e| self.corrupt("the run history", e))?;
                runs.insert(run.id.0, run);
            }
        }
        let alive: HashSet<Vec<u8>> = self
            .range("alive", deadline)?
            .into_iter()
            .map(|kv| kv.key().to_vec())
            .collect();
        let now = self.clock.now();
        for mut r in live {
            if r.started_at >= since && (within(r.started_at) || wanted.contains(&r.id.0)) {
                if r.finished_at.is_none() && alive.contains(self.alive_key(r.id).as_bytes()) {
                    r.heartbeat_at = now;
                }
                runs.insert(r.id.0, r);
            }
        }
        let mut runs: Vec<RunRecord> = runs.into_values().collect();
        runs.sort_by_key(|r| (r.started_at, r.id.0));
        runs.into_iter().try_for_each(f)
    }

    /// Liveness is the run's lease, judged by the etcd server's own clock: a run whose host
    /// died drops out when its lease expires.
    fn unfinished_runs_below(&self, below: FencingToken) -> Result<Vec<UnfinishedRun>> {
        let deadline = self.deadline();
        // The alive keys first: a run registered after this read is under the newest token,
        // and one finished in between is read as finished below.
        let alive: HashSet<Vec<u8>> = self
            .range("alive", deadline)?
            .into_iter()
            .map(|kv| kv.key().to_vec())
            .collect();
        let (legacy, live): (Vec<_>, Vec<_>) = self
            .runs_all_with_revisions(deadline)?
            .into_iter()
            .partition(|(r, _)| r.finished_at.is_some());
        // Finished runs an earlier version left under runs/: moved to done/ and counted, so
        // that this read stays bounded by the live runs from now on — a few hundred per drain,
        // so that the first drain after an upgrade does not take the history's time (the
        // others are skipped as finished until a later drain moves them).
        for (run, rev) in legacy.into_iter().take(MIGRATE_PER_READ) {
            if let Err(e) = self.retire(&run, rev, Vec::new(), Vec::new(), self.deadline()) {
                tracing::warn!(store = %self.url, run = run.id.0, error = %e, "a finished run of the old layout not moved (the next drain retries)");
            }
        }
        let mut runs: Vec<UnfinishedRun> = live
            .into_iter()
            .map(|(r, _)| r)
            .filter(|r| r.start.token < below)
            .map(|run| UnfinishedRun {
                pulse: Pulse::Lease {
                    alive: alive.contains(self.alive_key(run.id).as_bytes()),
                },
                run,
            })
            .collect();
        runs.sort_by_key(|r| r.run.id.0);
        self.warn_if_uncompacted();
        Ok(runs)
    }

    /// Marks a run whose lease expired as finished, so later scans skip it.
    fn run_mark_lost(&self, id: RunId, pulse: Pulse, outcome: &str) -> Result<bool> {
        if pulse != (Pulse::Lease { alive: false }) {
            return Ok(false);
        }
        let deadline = self.deadline();
        let Some((mut run, rev)) = self.unfinished_run(id, deadline)? else {
            return Ok(false);
        };
        run.finished_at = Some(self.clock.now());
        run.outcome = Some(outcome.to_string());
        // Only while the lease key is absent (version 0): a live lease is never overruled.
        let when = vec![Compare::version(self.alive_key(id), CompareOp::Equal, 0)];
        self.retire(&run, rev, when, Vec::new(), deadline)
    }

    fn note_skip(&self, job: &str, site: &SiteId) -> Result<()> {
        let deadline = self.deadline();
        let key = self.key(&format!("skips/{site}/{job}"));
        loop {
            let (count, rev) = self
                .get_json::<SkipCount>("a skip counter", &key, deadline)?
                .map_or((0, 0), |(s, rev)| (s.count, rev));
            let next = SkipCount {
                count: count + 1,
                last_at: self.clock.now(),
            };
            let txn = Txn::new()
                .when([Compare::mod_revision(key.clone(), CompareOp::Equal, rev)])
                .and_then([TxnOp::put(key.clone(), Self::json(&next)?, None)]);
            // A lost answer may count a skip twice or not at all: a metric, not a record.
            if self.guarded_txn("count the skip", deadline, txn, |_, _| Ok(Some(true)))? {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::Busy(format!("{}: skip counter contended", self.url)));
            }
        }
    }

    /// From the counters, the runs under `runs/` and the skip counters: bounded by the
    /// number of jobs and live runs, never by history.
    fn run_stats(&self) -> Result<Vec<RunStats>> {
        let deadline = self.deadline();
        let runs = self.runs_all(deadline)?;
        let mut others = Vec::new();
        for (site, job, kv) in self.per_job("skips", deadline)? {
            let count: SkipCount = serde_json::from_slice(kv.value())
                .map_err(|e| self.corrupt("a skip counter", e))?;
            others.push(RunStats {
                skipped: count.count,
                last_skip_at: Some(count.last_at),
                ..RunStats::new(&job, &site)
            });
        }
        for (site, job, kv) in self.per_job("runs/stats", deadline)? {
            let f: Finished = serde_json::from_slice(kv.value())
                .map_err(|e| self.corrupt("the run counters", e))?;
            others.push(f.stats(&job, &site));
        }
        let mut stats = tally(&runs, &others);
        stats.sort_by(|a, b| (&a.job, a.site.as_str()).cmp(&(&b.job, b.site.as_str())));
        self.warn_if_uncompacted();
        Ok(stats)
    }
}

impl EtcdStore {
    /// The keys under `P/<dir>/<site>/<job>`, with their site and job.
    fn per_job(&self, dir: &str, deadline: Instant) -> Result<Vec<(SiteId, String, KeyValue)>> {
        let head = self.key(&format!("{dir}/"));
        self.range(dir, deadline)?
            .into_iter()
            .map(|kv| {
                let key = String::from_utf8_lossy(kv.key()).into_owned();
                let rest = key.strip_prefix(&head).unwrap_or(&key);
                let (site, job) = rest.split_once('/').ok_or_else(|| {
                    self.corrupt(&format!("{dir} counter"), format!("bad key {key}"))
                })?;
                let site =
                    SiteId::new(site).map_err(|e| self.corrupt(&format!("{dir} counter"), e))?;
                Ok((site, job.to_string(), kv))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    #[test]
    fn prefix_end_is_the_first_key_after_the_prefix() {
        assert_eq!(prefix_end("/pra/journal/"), b"/pra/journal0".to_vec());
        assert_eq!(prefix_end("a\u{7f}"), b"a\x80".to_vec());
    }

    #[test]
    fn commit_ids_are_unique() {
        let a = commit_id();
        let b = commit_id();
        assert_ne!(a, b);
    }

    #[test]
    fn an_unreachable_cluster_is_store_unavailable_within_the_timeout() {
        // Port 1 on loopback: nothing listens, connections are refused at once.
        let store = EtcdStore::open(
            &["127.0.0.1:1".to_string()],
            "/pra",
            Arc::new(crate::clock::SystemClock),
            EtcdOptions {
                timeout: Duration::from_millis(300),
                run_ttl: Duration::from_secs(5),
                ..EtcdOptions::default()
            },
        )
        .unwrap();
        let t = Instant::now();
        let err = store.load().unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::StoreUnavailable, "{err}");
        assert!(err.to_string().contains("etcd://127.0.0.1:1/pra"), "{err}");
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        let check = crate::check(&store, &SiteId::new("rbx").unwrap());
        assert!(check.is_err(), "the guard must fail closed: {check:?}");
    }
}
