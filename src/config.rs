//! Configuration of the `pra` command: `/etc/pra/pra.toml` (or `--config` / `PRA_CONFIG`),
//! overridden key by key by flags and `PRA_*` variables (clap merges those two).

use std::path::{Path, PathBuf};

use chrono::Duration;
use pra_core::{Error, Result, SiteId, Topology, defaults};
use serde::Deserialize;

/// The default configuration file.
pub const DEFAULT_CONFIG: &str = "/etc/pra/pra.toml";
/// The default store when neither the file nor the environment names one.
pub const DEFAULT_STORE: &str = defaults::STORE;

/// The file's keys, each also settable by `PRA_<KEY>` (upper case): a variable overrides the
/// file, a flag overrides both. A test keeps this list and [`FileConfig`]'s fields equal.
pub const KEYS: &[&str] = &[
    "store",
    "store_group",
    "sites",
    "site",
    "db",
    "backup_dir",
    "table",
    "backup_interval_seconds",
    "heartbeat_seconds",
    "lost_after_seconds",
    "revoke_grace_seconds",
    "drain_timeout_seconds",
    "store_timeout_seconds",
    "history_days",
    "missed_intervals",
    "plan_check_timeout_seconds",
    "lock_dir",
    "etcd_ca_file",
    "etcd_cert_file",
    "etcd_key_file",
    "etcd_user",
    "etcd_password_file",
    "backup_target",
    "backup_s3_endpoint",
    "backup_s3_region",
    "backup_age_recipients_file",
    "backup_age_identity_file",
    "backup_age_passphrase_file",
];

/// Whether `key` takes a whole number (its `PRA_<KEY>` variable is read as one).
fn is_number(key: &str) -> bool {
    ["_seconds", "_days", "_intervals"]
        .iter()
        .any(|suffix| key.ends_with(suffix))
}

/// The variable that overrides `key`.
pub fn env_var(key: &str) -> String {
    format!("PRA_{}", key.to_ascii_uppercase())
}

/// The file's keys. Unknown keys are an error: a typo must not silently fall back to a default.
#[derive(Debug, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub store: Option<String>,
    /// The group that shares the store's files (README, File permissions).
    pub store_group: Option<String>,
    /// "primary,secondary", e.g. "rbx,sbg".
    pub sites: Option<String>,
    pub site: Option<String>,
    pub db: Option<PathBuf>,
    pub backup_dir: Option<PathBuf>,
    pub table: Option<String>,
    pub backup_interval_seconds: Option<u32>,
    pub heartbeat_seconds: Option<u32>,
    pub lost_after_seconds: Option<u32>,
    pub revoke_grace_seconds: Option<u32>,
    pub drain_timeout_seconds: Option<u32>,
    pub store_timeout_seconds: Option<u32>,
    pub lock_dir: Option<PathBuf>,
    /// How many days finished runs are kept in detail (default 30; older ones are counted in
    /// per job and site counters and deleted as runs finish).
    pub history_days: Option<u32>,
    /// Missed scheduled runs tolerated before a job counts as late (default 2).
    pub missed_intervals: Option<u32>,
    /// Seconds each gate check may run before it is killed (default 60).
    pub plan_check_timeout_seconds: Option<u32>,
    /// Commands run before plan events, by event name (`[plan_checks]` table; file only, not
    /// a `PRA_*` variable): `failover_decided = ["curl -fsS http://sbg-app/healthz"]`.
    pub plan_checks: Option<std::collections::BTreeMap<String, Vec<String>>>,
    /// etcds:// stores: the CA that signed the members' certificates (PEM).
    pub etcd_ca_file: Option<PathBuf>,
    /// The client certificate and its key (PEM), for members with `--client-cert-auth`.
    pub etcd_cert_file: Option<PathBuf>,
    pub etcd_key_file: Option<PathBuf>,
    /// The etcd user; its password is read from `etcd_password_file` (or `PRA_ETCD_PASSWORD`),
    /// never from this file or a command line.
    pub etcd_user: Option<String>,
    pub etcd_password_file: Option<PathBuf>,
    /// Offsite backups: `s3://bucket/prefix`. The keys after it are read only by a build with
    /// the `offsite` feature (without it, a configured target makes remote commands refuse).
    pub backup_target: Option<String>,
    #[cfg_attr(not(feature = "offsite"), allow(dead_code))]
    pub backup_s3_endpoint: Option<String>,
    #[cfg_attr(not(feature = "offsite"), allow(dead_code))]
    pub backup_s3_region: Option<String>,
    #[cfg_attr(not(feature = "offsite"), allow(dead_code))]
    pub backup_age_recipients_file: Option<PathBuf>,
    #[cfg_attr(not(feature = "offsite"), allow(dead_code))]
    pub backup_age_identity_file: Option<PathBuf>,
    #[cfg_attr(not(feature = "offsite"), allow(dead_code))]
    pub backup_age_passphrase_file: Option<PathBuf>,
}

/// What flags and the environment gave (all optional: the file and defaults fill the rest).
#[derive(Debug, Default, Clone, clap::Args)]
pub struct Overrides {
    /// Configuration file [default: /etc/pra/pra.toml, if it exists].
    #[arg(long, env = "PRA_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Store URL: sqlite:///var/lib/pra/state.db (default), file:///etc/app/pra-status.lock,
    /// etcd://host:2379,host2:2379/prefix, etcds://... (TLS: see the etcd_* keys).
    #[arg(long, env = "PRA_STORE", global = true)]
    pub store: Option<String>,
    /// The group sharing the store's files with their owner: files pra creates are 0660 and
    /// belong to it (directory: that group, 2770) [default: none, files are 0600].
    #[arg(long, env = "PRA_STORE_GROUP", global = true)]
    pub store_group: Option<String>,
    /// The two sites, primary first [default: rbx,sbg].
    #[arg(long, env = "PRA_SITES", global = true)]
    pub sites: Option<String>,
    /// This host's site [default: the one site name found in the hostname].
    #[arg(long, env = "PRA_SITE", global = true)]
    pub site: Option<String>,
    /// The application's SQLite database [default: /data/app.db].
    #[arg(long, env = "PRA_DB", global = true)]
    pub db: Option<PathBuf>,
    /// The backup directory [default: /backup].
    #[arg(long, env = "PRA_BACKUP_DIR", global = true)]
    pub backup_dir: Option<PathBuf>,
    /// The table `count` counts [default: events].
    #[arg(long, env = "PRA_TABLE", global = true)]
    pub table: Option<String>,
    /// Days finished runs are kept in detail; older ones are deleted as runs finish, their
    /// counts kept for metrics [default: 30].
    #[arg(long, env = "PRA_HISTORY_DAYS", global = true)]
    pub history_days: Option<u32>,
    /// The offsite backup target, `s3://bucket/prefix` (credentials from the AWS environment).
    #[arg(long, env = "PRA_BACKUP_TARGET", global = true)]
    pub backup_target: Option<String>,
    /// An S3-compatible endpoint for the backup target (e.g. http://127.0.0.1:9000).
    #[arg(long, env = "PRA_BACKUP_S3_ENDPOINT", global = true)]
    pub backup_s3_endpoint: Option<String>,
    /// The backup target's region.
    #[arg(long, env = "PRA_BACKUP_S3_REGION", global = true)]
    pub backup_s3_region: Option<String>,
    /// Encrypt offsite backups to the age X25519 recipients of this file.
    #[arg(long, env = "PRA_BACKUP_AGE_RECIPIENTS_FILE", global = true)]
    pub backup_age_recipients_file: Option<PathBuf>,
    /// Decrypt offsite backups with the age identities of this file.
    #[arg(long, env = "PRA_BACKUP_AGE_IDENTITY_FILE", global = true)]
    pub backup_age_identity_file: Option<PathBuf>,
    /// Encrypt and decrypt offsite backups with the passphrase of this file (scrypt).
    #[arg(long, env = "PRA_BACKUP_AGE_PASSPHRASE_FILE", global = true)]
    pub backup_age_passphrase_file: Option<PathBuf>,
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub store: String,
    pub store_group: Option<String>,
    pub topology: Topology,
    pub site: Option<String>,
    pub db: PathBuf,
    pub backup_dir: PathBuf,
    pub table: String,
    pub backup_interval: Duration,
    pub heartbeat: Duration,
    pub lost_after: Duration,
    pub revoke_grace: Duration,
    pub drain_timeout: Duration,
    /// The deadline of each call to a network store (etcd).
    pub store_timeout: Duration,
    pub lock_dir: PathBuf,
    /// How long finished runs are kept in detail (`history_days`), if set: else the store's
    /// default (see [`Config::history_window`]).
    pub history: Option<Duration>,
    /// Missed scheduled runs tolerated before a job counts as late (`missed_intervals`).
    pub missed_intervals: u32,
    /// Gate checks by plan event name (`[plan_checks]`, names checked at load).
    pub plan_checks: std::collections::BTreeMap<String, Vec<String>>,
    /// How long each gate check may run.
    pub plan_check_timeout: std::time::Duration,
    /// The etcd store's TLS material and credentials: the file's `etcd_*` keys, each
    /// overridden by its `PRA_ETCD_*` variable (the password never shows in `Debug`).
    pub etcd: pra_core::store::EtcdSecurity,
    /// The offsite backup target, if one is configured.
    pub offsite: Option<Offsite>,
}

/// Where offsite backups go and how they are sealed (paths of key files only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offsite {
    /// `s3://bucket/prefix`.
    pub target: String,
    /// Endpoint and region.
    #[cfg(feature = "offsite")]
    pub s3: pra_core::backup::offsite::S3Options,
    /// Encryption keys.
    #[cfg(feature = "offsite")]
    pub encryption: pra_core::backup::offsite::Encryption,
}

impl Config {
    /// The resolved settings under their `pra.toml` keys (what `pra config` prints): every key
    /// of [`KEYS`], the etcd password never (only where it is read from).
    pub fn shown(&self) -> serde_json::Value {
        let secs = |d: Duration| d.num_seconds();
        let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
        #[cfg_attr(not(feature = "offsite"), allow(unused_mut))]
        let mut shown = serde_json::json!({
            "store": self.store,
            "store_group": self.store_group,
            "sites": format!("{},{}", self.topology.primary(), self.topology.secondary()),
            "site": self.site,
            "db": self.db.display().to_string(),
            "backup_dir": self.backup_dir.display().to_string(),
            "table": self.table,
            "backup_interval_seconds": secs(self.backup_interval),
            "heartbeat_seconds": secs(self.heartbeat),
            "lost_after_seconds": secs(self.lost_after),
            "revoke_grace_seconds": secs(self.revoke_grace),
            "drain_timeout_seconds": secs(self.drain_timeout),
            "store_timeout_seconds": secs(self.store_timeout),
            "history_days": self.history_window().as_secs() / 86_400,
            "missed_intervals": self.missed_intervals,
            "plan_check_timeout_seconds": self.plan_check_timeout.as_secs(),
            "plan_checks": self.plan_checks,
            "lock_dir": self.lock_dir.display().to_string(),
            "etcd_ca_file": path(&self.etcd.ca_file),
            "etcd_cert_file": path(&self.etcd.cert_file),
            "etcd_key_file": path(&self.etcd.key_file),
            "etcd_user": self.etcd.user,
            "etcd_password_file": path(&self.etcd.password_file),
            "backup_target": self.offsite.as_ref().map(|o| &o.target),
        });
        #[cfg(feature = "offsite")]
        if let (Some(o), Some(map)) = (&self.offsite, shown.as_object_mut()) {
            let e = &o.encryption;
            for (key, value) in [
                ("backup_s3_endpoint", o.s3.endpoint.clone()),
                ("backup_s3_region", o.s3.region.clone()),
                ("backup_age_recipients_file", path(&e.recipients_file)),
                ("backup_age_identity_file", path(&e.identity_file)),
                ("backup_age_passphrase_file", path(&e.passphrase_file)),
            ] {
                map.insert(key.into(), value.into());
            }
        }
        shown
    }

    /// How long finished runs are kept in detail: `history_days`, else the store's default
    /// (7 days on etcd, whose space quota a month of busy cron would pass; 30 elsewhere).
    pub fn history_window(&self) -> std::time::Duration {
        self.history
            .and_then(|h| h.to_std().ok())
            .unwrap_or_else(|| {
                std::time::Duration::from_secs(
                    u64::from(defaults::history_days_for(&self.store)) * 86_400,
                )
            })
    }

    /// The drain policy of the configuration, as `pra plan` uses it (it polls every 500 ms; the
    /// drill, which keeps its own clock tight, polls faster).
    pub fn drain_policy(&self) -> pra_core::plan::DrainPolicy {
        pra_core::plan::DrainPolicy {
            poll: Duration::milliseconds(500),
            ..pra_core::plan::DrainPolicy::for_timings(
                &self.timings(),
                self.drain_timeout.to_std().unwrap_or_default(),
            )
        }
    }

    /// Reads the file (an explicitly named file must exist; the default one may be absent) and
    /// applies the overrides.
    pub fn load(o: &Overrides) -> Result<Config> {
        let text = match &o.config {
            Some(path) => Some((read(path)?, path.display().to_string())),
            None if Path::new(DEFAULT_CONFIG).exists() => {
                Some((read(Path::new(DEFAULT_CONFIG))?, DEFAULT_CONFIG.to_string()))
            }
            None => None,
        };
        let file = with_env(text)?;
        let secs = |v: Option<u32>, default: std::time::Duration, what: &str| -> Result<Duration> {
            match v {
                Some(0) => Err(Error::InvalidArgument(format!(
                    "{what} must be at least 1 second"
                ))),
                Some(n) => Ok(Duration::seconds(i64::from(n))),
                None => Ok(Duration::from_std(default).unwrap_or(Duration::MAX)),
            }
        };
        let sites = o
            .sites
            .clone()
            .or(file.sites)
            .unwrap_or_else(|| defaults::SITES.into());
        let table = o
            .table
            .clone()
            .or(file.table)
            .unwrap_or_else(|| defaults::TABLE.into());
        pra_core::status::validate_table(&table)?;
        let heartbeat = secs(
            file.heartbeat_seconds,
            defaults::HEARTBEAT,
            "heartbeat_seconds",
        )?;
        let lost_after = secs(
            file.lost_after_seconds,
            defaults::LOST_AFTER,
            "lost_after_seconds",
        )?;
        // The password file is read when an etcd store is opened (a missing one is an error
        // naming it). `PRA_ETCD_PASSWORD` / `PRA_ETCD_PASSWORD_FILE` take its place.
        let etcd = pra_core::store::EtcdSecurity {
            ca_file: file.etcd_ca_file,
            cert_file: file.etcd_cert_file,
            key_file: file.etcd_key_file,
            user: file.etcd_user,
            password: None,
            password_file: file.etcd_password_file,
        }
        .with_env()?;
        let offsite = o
            .backup_target
            .clone()
            .or(file.backup_target)
            .map(|target| Offsite {
                target,
                #[cfg(feature = "offsite")]
                s3: pra_core::backup::offsite::S3Options {
                    endpoint: o.backup_s3_endpoint.clone().or(file.backup_s3_endpoint),
                    region: o.backup_s3_region.clone().or(file.backup_s3_region),
                    static_credentials: None,
                },
                #[cfg(feature = "offsite")]
                encryption: pra_core::backup::offsite::Encryption {
                    recipients_file: o
                        .backup_age_recipients_file
                        .clone()
                        .or(file.backup_age_recipients_file),
                    passphrase_file: o
                        .backup_age_passphrase_file
                        .clone()
                        .or(file.backup_age_passphrase_file),
                    identity_file: o
                        .backup_age_identity_file
                        .clone()
                        .or(file.backup_age_identity_file),
                },
            });
        let cfg = Config {
            offsite,
            store: o
                .store
                .clone()
                .or(file.store)
                .unwrap_or_else(|| DEFAULT_STORE.into()),
            store_group: o.store_group.clone().or(file.store_group),
            topology: Topology::parse(&sites)?,
            site: o.site.clone().or(file.site),
            db: o
                .db
                .clone()
                .or(file.db)
                .unwrap_or_else(|| defaults::DB.into()),
            backup_dir: o
                .backup_dir
                .clone()
                .or(file.backup_dir)
                .unwrap_or_else(|| defaults::BACKUP_DIR.into()),
            table,
            backup_interval: secs(
                file.backup_interval_seconds,
                defaults::BACKUP_INTERVAL,
                "backup_interval_seconds",
            )?,
            heartbeat,
            lost_after,
            revoke_grace: secs(
                file.revoke_grace_seconds,
                defaults::REVOKE_GRACE,
                "revoke_grace_seconds",
            )?,
            drain_timeout: secs(
                file.drain_timeout_seconds,
                defaults::DRAIN_TIMEOUT,
                "drain_timeout_seconds",
            )?,
            store_timeout: secs(
                file.store_timeout_seconds,
                defaults::STORE_TIMEOUT,
                "store_timeout_seconds",
            )?,
            lock_dir: file.lock_dir.unwrap_or_else(std::env::temp_dir),
            history: match o.history_days.or(file.history_days) {
                Some(0) => {
                    return Err(Error::InvalidArgument(
                        "history_days must be at least 1".into(),
                    ));
                }
                Some(days) => Some(Duration::days(i64::from(days))),
                None => None,
            },
            missed_intervals: match file.missed_intervals {
                Some(0) => {
                    return Err(Error::InvalidArgument(
                        "missed_intervals must be at least 1".into(),
                    ));
                }
                Some(n) => n,
                None => pra_core::jobs::MISSED_INTERVALS,
            },
            plan_check_timeout: std::time::Duration::from_secs(u64::from(
                file.plan_check_timeout_seconds.unwrap_or(60),
            )),
            // A typo in an event name must not silently skip a check.
            plan_checks: file
                .plan_checks
                .unwrap_or_default()
                .into_iter()
                .map(|(event, commands)| {
                    let kind = pra_core::plan::EventKind::parse(&event).map_err(|e| {
                        Error::InvalidArgument(format!("[plan_checks] {event}: {e}"))
                    })?;
                    Ok((kind.name().to_string(), commands))
                })
                .collect::<Result<_>>()?,
            etcd,
        };
        // Refused here, before anything runs: timings under which a run cut off from the store
        // could outlive the drain's patience.
        cfg.timings().validate()?;
        Ok(cfg)
    }

    /// The run and drain timings.
    pub fn timings(&self) -> pra_core::run::Timings {
        let std = |d: Duration| d.to_std().unwrap_or_default();
        pra_core::run::Timings {
            heartbeat: std(self.heartbeat),
            lost_after: std(self.lost_after),
            revoke_grace: std(self.revoke_grace),
            store_timeout: std(self.store_timeout),
        }
    }

    /// This host's site: the configured one, or the one found in the hostname.
    pub fn this_site(&self) -> Result<SiteId> {
        self.topology
            .detect(self.site.as_deref(), &pra_core::site::hostname())
    }

    /// Opens the configured store.
    pub fn open_store(&self) -> Result<Box<dyn pra_core::Store>> {
        self.open_store_for(pra_core::store::Needs::default())
    }

    /// Opens the configured store, refusing one that does not offer what `needs` names.
    pub fn open_store_for(
        &self,
        needs: pra_core::store::Needs,
    ) -> Result<Box<dyn pra_core::Store>> {
        let opts = pra_core::store::OpenOptions {
            needs,
            store_group: self.store_group.clone(),
            etcd: self.etcd.clone(),
            history: Some(self.history_window()),
            ..pra_core::store::OpenOptions::for_timings(&self.timings())
        };
        pra_core::store::open_with(&self.store, &opts)
    }
}

fn read(path: &Path) -> Result<String> {
    // Never a FIFO (it would hang) nor a huge file (read whole): a clear error instead.
    let bytes =
        pra_core::read_regular(path, pra_core::SMALL_FILE_LIMIT).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::NotFound(format!(
                "configuration file {} does not exist",
                path.display()
            )),
            std::io::ErrorKind::InvalidInput | std::io::ErrorKind::FileTooLarge => {
                Error::InvalidArgument(format!("configuration file {}: {e}", path.display()))
            }
            _ => Error::io("read", path, e),
        })?;
    String::from_utf8(bytes).map_err(|_| {
        Error::InvalidArgument(format!(
            "configuration file {}: not UTF-8 text",
            path.display()
        ))
    })
}

/// The file's keys (`text`, named `origin` in errors; none: no file), each overridden by its
/// `PRA_<KEY>` variable when that is set: numbers for the `*_seconds` keys, text otherwise.
fn with_env(text: Option<(String, String)>) -> Result<FileConfig> {
    let (mut table, origin) = match text {
        Some((text, origin)) => (
            text.parse::<toml::Table>()
                .map_err(|e| Error::InvalidArgument(format!("configuration file {origin}: {e}")))?,
            format!("configuration file {origin}"),
        ),
        None => (toml::Table::new(), "the configuration".to_string()),
    };
    for key in KEYS {
        let var = env_var(key);
        let Some(value) = std::env::var_os(&var) else {
            continue;
        };
        let value = value
            .into_string()
            .map_err(|_| Error::InvalidArgument(format!("{var} is not UTF-8")))?;
        // Empty is unset, as for the PRA_ETCD_* variables: `PRA_X= pra ...` leaves the file's.
        if value.is_empty() {
            continue;
        }
        let value = if is_number(key) {
            let n: u32 = value.trim().parse().map_err(|_| {
                Error::InvalidArgument(format!("{var}={value:?}: expected a whole number"))
            })?;
            toml::Value::Integer(i64::from(n))
        } else {
            toml::Value::String(value)
        };
        table.insert((*key).to_string(), value);
    }
    table
        .try_into()
        .map_err(|e| Error::InvalidArgument(format!("{origin}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_has_its_variable_and_keys_is_every_field() {
        // Every key of KEYS is a field (deny_unknown_fields would refuse one that is not)...
        let all: String = KEYS
            .iter()
            .map(|k| {
                if is_number(k) {
                    format!("{k} = 7\n")
                } else {
                    format!("{k} = \"x\"\n")
                }
            })
            .collect();
        let parsed: FileConfig = toml::from_str(&all).unwrap();
        // ...and every field is in KEYS (all of them set, serialized back: the same keys).
        let back: toml::Table = toml::Table::try_from(&parsed).unwrap();
        let mut fields: Vec<&str> = back.keys().map(String::as_str).collect();
        let mut keys = KEYS.to_vec();
        fields.sort_unstable();
        keys.sort_unstable();
        assert_eq!(fields, keys);
    }

    /// The example's commented etcd TLS keys, uncommented, are keys of this file.
    #[test]
    fn the_example_etcd_keys_are_configuration_keys() {
        let example = include_str!("../examples/deploy/pra.toml");
        let keys: String = example
            .lines()
            .filter_map(|l| l.strip_prefix("# etcd_"))
            .map(|l| format!("etcd_{l}\n"))
            .collect();
        assert_eq!(keys.lines().count(), 5, "{keys}");
        let file: FileConfig = toml::from_str(&format!("{example}\n{keys}")).unwrap();
        assert_eq!(file.etcd_user.as_deref(), Some("pra-jobs"));
        assert!(file.etcd_password_file.is_some() && file.etcd_ca_file.is_some());
    }

    /// The example's commented offsite keys, uncommented, are keys of this file.
    #[test]
    fn the_example_offsite_keys_are_configuration_keys() {
        let example = include_str!("../examples/deploy/pra.toml");
        let keys: String = example
            .lines()
            .filter_map(|l| l.strip_prefix("# backup_"))
            .map(|l| format!("backup_{l}\n"))
            .collect();
        assert_eq!(keys.lines().count(), 5, "{keys}");
        let file: FileConfig = toml::from_str(&format!("{example}\n{keys}")).unwrap();
        assert_eq!(file.backup_target.as_deref(), Some("s3://pra-backups/prod"));
        assert!(
            file.backup_age_recipients_file.is_some() && file.backup_age_identity_file.is_some()
        );
    }
}
