//! How pra proves itself to an etcd cluster and checks the cluster's identity: a CA, a client
//! certificate and key, an etcd user and its password. Plain data, built with or without the
//! `etcd` feature, so that every front end reads it the same way: the configuration file's
//! `etcd_*` keys (the CLI), then the `PRA_ETCD_*` environment variables ([`EtcdSecurity::with_env`]).
//!
//! The password is a [`Secret`]: read from a file or an environment variable only — never from
//! a command line —, never printed by `Debug`, never logged.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The environment variables [`EtcdSecurity::with_env`] reads, each over the configuration.
pub const ENV_CA_FILE: &str = "PRA_ETCD_CA_FILE";
/// The client certificate (PEM).
pub const ENV_CERT_FILE: &str = "PRA_ETCD_CERT_FILE";
/// The client certificate's private key (PEM).
pub const ENV_KEY_FILE: &str = "PRA_ETCD_KEY_FILE";
/// The etcd user.
pub const ENV_USER: &str = "PRA_ETCD_USER";
/// A file holding the etcd user's password (its first line).
pub const ENV_PASSWORD_FILE: &str = "PRA_ETCD_PASSWORD_FILE";
/// The etcd user's password itself.
pub const ENV_PASSWORD: &str = "PRA_ETCD_PASSWORD";

/// The largest password file read (a password is a line, not a file's worth of bytes).
const MAX_SECRET_FILE: u64 = 4096;

/// A password: its `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// A secret from a value the caller already holds (an environment variable, a keyword
    /// argument of a program — never a command line).
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The first line of `path` (without its line ending). An empty, unreadable or oversized
    /// file is an error naming the file, never the secret.
    pub fn from_file(path: &Path) -> Result<Secret> {
        use std::io::Read;
        let file = std::fs::File::open(path).map_err(|e| Error::io("open", path, e))?;
        let meta = file.metadata().map_err(|e| Error::io("stat", path, e))?;
        if !meta.is_file() || meta.len() > MAX_SECRET_FILE {
            return Err(Error::InvalidArgument(format!(
                "password file {}: not a regular file of at most {MAX_SECRET_FILE} bytes",
                path.display()
            )));
        }
        let mut text = String::new();
        file.take(MAX_SECRET_FILE)
            .read_to_string(&mut text)
            .map_err(|e| Error::io("read", path, e))?;
        let line = text.lines().next().unwrap_or("");
        if line.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "password file {} is empty",
                path.display()
            )));
        }
        Ok(Secret(line.to_string()))
    }

    /// The secret itself, for the one call that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// TLS material and credentials for an etcd store. Empty (the default): plaintext, no user.
///
/// - `etcds://` URLs need `ca_file` (the CA that signed the members' certificates; the
///   system's roots are not used); the members' certificates must name the host or IP address
///   of each endpoint.
/// - `cert_file` and `key_file` go together: the client certificate for members started with
///   `--client-cert-auth`.
/// - `user` and `password` go together: etcd's own authentication (`etcdctl auth enable`). A
///   configured user is recorded in every change's `changed_by`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EtcdSecurity {
    /// PEM file of the CA that signed the members' certificates.
    pub ca_file: Option<PathBuf>,
    /// PEM file of the client certificate.
    pub cert_file: Option<PathBuf>,
    /// PEM file of the client certificate's private key.
    pub key_file: Option<PathBuf>,
    /// The etcd user.
    pub user: Option<String>,
    /// The etcd user's password, given as such (it wins over `password_file`).
    pub password: Option<Secret>,
    /// A file holding the etcd user's password (its first line), read when an etcd store is
    /// opened — so that a missing file fails that store only.
    pub password_file: Option<PathBuf>,
}

impl EtcdSecurity {
    /// Nothing configured: plaintext, no user.
    pub fn is_empty(&self) -> bool {
        self == &EtcdSecurity::default()
    }

    /// Whether TLS material (a CA or a client certificate) is configured.
    pub fn has_tls(&self) -> bool {
        self.ca_file.is_some() || self.cert_file.is_some() || self.key_file.is_some()
    }

    /// `self` with each `PRA_ETCD_*` variable that is set (and not empty) taking the place of
    /// the corresponding setting: `PRA_ETCD_CA_FILE`, `PRA_ETCD_CERT_FILE`,
    /// `PRA_ETCD_KEY_FILE`, `PRA_ETCD_USER`, and the password from `PRA_ETCD_PASSWORD` or else
    /// the file named by `PRA_ETCD_PASSWORD_FILE`.
    pub fn with_env(self) -> Result<EtcdSecurity> {
        self.with_vars(|name| {
            std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .map(|v| v.to_string_lossy().into_owned())
        })
    }

    fn with_vars(mut self, var: impl Fn(&str) -> Option<String>) -> Result<EtcdSecurity> {
        let path = |name: &str| var(name).map(PathBuf::from);
        if let Some(p) = path(ENV_CA_FILE) {
            self.ca_file = Some(p);
        }
        if let Some(p) = path(ENV_CERT_FILE) {
            self.cert_file = Some(p);
        }
        if let Some(p) = path(ENV_KEY_FILE) {
            self.key_file = Some(p);
        }
        if let Some(u) = var(ENV_USER) {
            self.user = Some(u);
        }
        if let Some(f) = path(ENV_PASSWORD_FILE) {
            self.password_file = Some(f);
            self.password = None;
        }
        if let Some(p) = var(ENV_PASSWORD) {
            self.password = Some(Secret(p));
        }
        Ok(self)
    }

    /// The password: the one given, else the first line of `password_file`.
    pub fn resolve_password(&self) -> Result<Option<Secret>> {
        match (&self.password, &self.password_file) {
            (Some(p), _) => Ok(Some(p.clone())),
            (None, Some(f)) => Secret::from_file(f).map(Some),
            (None, None) => Ok(None),
        }
    }

    /// Refuses settings that cannot work together, before any connection: half a client
    /// identity, a user without a password (or the reverse), TLS material on a plaintext URL,
    /// an `etcds://` URL without a CA.
    pub fn validate(&self, url: &str, tls: bool) -> Result<()> {
        let bad = |why: String| Err(Error::InvalidArgument(format!("{url}: {why}")));
        if self.cert_file.is_some() != self.key_file.is_some() {
            return bad("the etcd client certificate and its key go together (etcd_cert_file and etcd_key_file)".into());
        }
        if self.user.is_some() != (self.password.is_some() || self.password_file.is_some()) {
            return bad("an etcd user needs its password and a password its user (etcd_user with etcd_password_file or PRA_ETCD_PASSWORD)".into());
        }
        if self.user.as_deref().is_some_and(str::is_empty) {
            return bad("the etcd user is empty".into());
        }
        if !tls && self.has_tls() {
            return bad("TLS settings (etcd_ca_file, etcd_cert_file) are set but the URL is etcd:// (plaintext); use etcds://".into());
        }
        if tls && self.ca_file.is_none() {
            return bad(format!(
                "an etcds:// store needs the CA that signed the members' certificates (etcd_ca_file or {ENV_CA_FILE})"
            ));
        }
        Ok(())
    }

    /// The identity recorded beside `--by` in a change's `changed_by`, when a user is set.
    pub fn identity(&self) -> Option<String> {
        self.user.as_ref().map(|u| format!("etcd user {u}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_never_shows_in_debug_output() {
        let s = EtcdSecurity {
            user: Some("jobs".into()),
            password: Some(Secret::new("hunter2")),
            ..Default::default()
        };
        let shown = format!("{s:?} {:?}", s.password);
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("redacted"), "{shown}");
    }

    #[test]
    fn environment_variables_override_the_configuration() {
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "from-file\nignored\n").unwrap();
        let file = EtcdSecurity {
            ca_file: Some("/etc/pra/ca.pem".into()),
            user: Some("ops".into()),
            ..Default::default()
        };
        let vars = |name: &str| match name {
            ENV_USER => Some("jobs".to_string()),
            ENV_PASSWORD_FILE => Some(pw.display().to_string()),
            _ => None,
        };
        let s = file.clone().with_vars(vars).unwrap();
        assert_eq!(s.ca_file, file.ca_file);
        assert_eq!(s.user.as_deref(), Some("jobs"));
        assert_eq!(s.resolve_password().unwrap().unwrap().expose(), "from-file");
        // The variable itself wins over the file.
        let s = EtcdSecurity::default()
            .with_vars(|n| match n {
                ENV_PASSWORD => Some("direct".into()),
                ENV_PASSWORD_FILE => Some("/nonexistent".into()),
                _ => None,
            })
            .unwrap();
        assert_eq!(s.resolve_password().unwrap().unwrap().expose(), "direct");
    }

    #[test]
    fn an_empty_or_missing_password_file_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").unwrap();
        let err = Secret::from_file(&empty).unwrap_err();
        assert!(err.to_string().contains("empty"), "{err}");
        let err = Secret::from_file(&dir.path().join("nope")).unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
    }

    #[test]
    fn a_missing_password_file_fails_etcd_stores_only() {
        let dir = tempfile::tempdir().unwrap();
        let opts = crate::store::OpenOptions {
            etcd: EtcdSecurity {
                user: Some("jobs".into()),
                password_file: Some(dir.path().join("no-such-password")),
                ..Default::default()
            },
            ..Default::default()
        };
        let sqlite = format!("sqlite://{}", dir.path().join("s.db").display());
        crate::store::open_with(&sqlite, &opts).unwrap();
        #[cfg(feature = "etcd")]
        {
            let err = crate::store::open_with("etcd://127.0.0.1:1/p", &opts).unwrap_err();
            assert!(err.to_string().contains("no-such-password"), "{err}");
        }
    }

    #[test]
    fn settings_that_cannot_work_together_are_refused() {
        let ca = || Some(PathBuf::from("/ca.pem"));
        let cases = [
            (
                EtcdSecurity {
                    ca_file: ca(),
                    cert_file: Some("/c.pem".into()),
                    ..Default::default()
                },
                true,
                "go together",
            ),
            (
                EtcdSecurity {
                    ca_file: ca(),
                    user: Some("u".into()),
                    ..Default::default()
                },
                true,
                "password",
            ),
            (
                EtcdSecurity {
                    ca_file: ca(),
                    ..Default::default()
                },
                false,
                "etcds://",
            ),
            (EtcdSecurity::default(), true, "CA"),
        ];
        for (s, tls, want) in cases {
            let err = s.validate("etcd://h:1/p", tls).unwrap_err();
            assert!(err.to_string().contains(want), "{err}");
        }
        EtcdSecurity::default().validate("u", false).unwrap();
    }
}
