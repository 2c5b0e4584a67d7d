//! Store URLs: `sqlite:///path/state.db`, `file:///etc/app/pra-status.lock`,
//! `etcd://host:port[,host:port]/prefix`, `etcds://...` (the same over TLS).

use std::fmt;
use std::path::PathBuf;

use crate::error::{Error, Result};

/// A parsed store URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// `sqlite://PATH`: the embedded SQLite store. `sqlite:///var/lib/pra/state.db` is absolute,
    /// `sqlite://state.db` relative to the working directory.
    Sqlite(PathBuf),
    /// `file://PATH`: the seed's lock-file format.
    File(PathBuf),
    /// `etcd://host:port[,host:port...]/prefix`, or `etcds://` for TLS.
    Etcd {
        /// `etcds://`: TLS to every member (the CA and credentials are
        /// [`super::EtcdSecurity`]).
        tls: bool,
        /// `host:port` of each member.
        endpoints: Vec<String>,
        /// Key prefix, starting with `/` (default `/pra`).
        prefix: String,
    },
}

fn bad(url: &str, why: &str) -> Error {
    Error::InvalidArgument(format!("invalid store URL {url:?}: {why}"))
}

impl StoreUrl {
    /// Parses a store URL. Query strings, fragments, NUL bytes and empty paths are refused;
    /// paths are taken literally (no percent-decoding).
    pub fn parse(url: &str) -> Result<StoreUrl> {
        if url.contains('\0') {
            return Err(bad(url, "contains a NUL byte"));
        }
        if url.contains(['?', '#']) {
            return Err(bad(url, "query strings and fragments are not supported"));
        }
        let (scheme, rest) = url.split_once("://").ok_or_else(|| {
            bad(
                url,
                "expected sqlite://PATH, file://PATH or etcd[s]://HOST:PORT/PREFIX",
            )
        })?;
        match scheme.to_ascii_lowercase().as_str() {
            "sqlite" | "file" => {
                if rest.is_empty() || rest.ends_with('/') {
                    return Err(bad(url, "the path must name a file"));
                }
                let path = PathBuf::from(rest);
                Ok(if scheme.eq_ignore_ascii_case("sqlite") {
                    StoreUrl::Sqlite(path)
                } else {
                    StoreUrl::File(path)
                })
            }
            "etcd" | "etcds" => {
                let (hosts, prefix) = match rest.find('/') {
                    Some(i) => (&rest[..i], &rest[i..]),
                    None => (rest, "/pra"),
                };
                let prefix = match prefix.trim_end_matches('/') {
                    "" => "/pra",
                    p => p,
                };
                let endpoints = hosts
                    .split(',')
                    .map(|h| {
                        let (host, port) = h
                            .rsplit_once(':')
                            .ok_or_else(|| bad(url, &format!("endpoint {h:?} needs host:port")))?;
                        if host.is_empty()
                            || !host
                                .chars()
                                .all(|c| c.is_ascii_alphanumeric() || ".-[]:".contains(c))
                        {
                            return Err(bad(url, &format!("bad host in endpoint {h:?}")));
                        }
                        port.parse::<u16>()
                            .ok()
                            .filter(|p| *p != 0)
                            .ok_or_else(|| bad(url, &format!("bad port in endpoint {h:?}")))?;
                        Ok(h.to_string())
                    })
                    .collect::<Result<Vec<_>>>()?;
                Ok(StoreUrl::Etcd {
                    tls: scheme.eq_ignore_ascii_case("etcds"),
                    endpoints,
                    prefix: prefix.to_string(),
                })
            }
            other => Err(bad(
                url,
                &format!("unknown scheme {other:?}; expected sqlite, file, etcd or etcds"),
            )),
        }
    }
}

impl fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreUrl::Sqlite(p) => write!(f, "sqlite://{}", p.display()),
            StoreUrl::File(p) => write!(f, "file://{}", p.display()),
            StoreUrl::Etcd {
                tls,
                endpoints,
                prefix,
            } => {
                let scheme = if *tls { "etcds" } else { "etcd" };
                write!(f, "{scheme}://{}{}", endpoints.join(","), prefix)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_schemes() {
        assert_eq!(
            StoreUrl::parse("sqlite:///var/lib/pra/state.db").unwrap(),
            StoreUrl::Sqlite("/var/lib/pra/state.db".into())
        );
        assert_eq!(
            StoreUrl::parse("sqlite://state.db").unwrap(),
            StoreUrl::Sqlite("state.db".into())
        );
        assert_eq!(
            StoreUrl::parse("file:///etc/app/pra-status.lock").unwrap(),
            StoreUrl::File("/etc/app/pra-status.lock".into())
        );
        assert_eq!(
            StoreUrl::parse("etcd://10.0.0.1:2379,10.0.0.2:2379/prod/pra").unwrap(),
            StoreUrl::Etcd {
                tls: false,
                endpoints: vec!["10.0.0.1:2379".into(), "10.0.0.2:2379".into()],
                prefix: "/prod/pra".into()
            }
        );
        assert_eq!(
            StoreUrl::parse("etcd://localhost:2379").unwrap(),
            StoreUrl::Etcd {
                tls: false,
                endpoints: vec!["localhost:2379".into()],
                prefix: "/pra".into()
            }
        );
        assert_eq!(
            StoreUrl::parse("etcds://etcd1.example:2379/app").unwrap(),
            StoreUrl::Etcd {
                tls: true,
                endpoints: vec!["etcd1.example:2379".into()],
                prefix: "/app".into()
            }
        );
    }

    #[test]
    fn round_trips_through_display() {
        for u in [
            "sqlite:///a/b.db",
            "file:///etc/app/pra-status.lock",
            "etcd://h:1,g:2/p",
            "etcds://h:1,g:2/p",
        ] {
            assert_eq!(StoreUrl::parse(u).unwrap().to_string(), u);
        }
    }

    #[test]
    fn slash_only_prefixes_are_the_default_prefix() {
        // Found by the store_url fuzz target: a prefix of only slashes became "".
        for u in [
            "etcd://-:47428///",
            "etcd://h:1/",
            "etcd://h:1//",
            "etcd://0.0.1::23792//",
        ] {
            let parsed = StoreUrl::parse(u).unwrap();
            assert!(
                matches!(&parsed, StoreUrl::Etcd { prefix, .. } if prefix == "/pra"),
                "{parsed:?}"
            );
            assert_eq!(StoreUrl::parse(&parsed.to_string()).unwrap(), parsed);
        }
    }

    #[test]
    fn refuses_bad_urls_with_a_reason() {
        for u in [
            "",
            "state.db",
            "http://x/y",
            "sqlite://",
            "sqlite:///dir/",
            "file://a?b",
            "sqlite://a\0b",
            "etcd://",
            "etcd://host",
            "etcd://host:0/p",
            "etcd://host:99999",
            "etcd://:2379",
            "etcd://h o:1",
            "etcds://host",
            "etcd://h:1/p?tls=1",
        ] {
            let err = StoreUrl::parse(u).unwrap_err();
            assert_eq!(err.kind(), crate::ErrorKind::InvalidArgument, "{u:?}");
        }
    }
}
