//! The lock-file store: the seed's `/etc/app/pra-status.lock` (`ACTIVE_SITE=SBG`), extended with
//! `TOKEN=`, `CHANGED_AT=`... lines, replaced atomically under an advisory lock, with a
//! hash-chained journal beside it (`<file>.journal`, one JSON entry a line).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, SubsecRound, Utc};

use super::{
    Backend, GENESIS_HASH, JournalEntry, JournalHead, Snapshot, Writes, display, verify_chain,
};
use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::fencing::{ActiveSite, FencingToken};
use crate::fsutil::{parent_dir, with_suffix, write_atomic};
use crate::site::SiteId;

/// The lock-file store. Keeps the active-site record and its journal only: plans and the run
/// registry need the SQLite store.
#[derive(Debug)]
pub struct FileStore {
    url: String,
    path: PathBuf,
    journal_path: PathBuf,
    mutex_path: PathBuf,
    clock: Arc<dyn Clock>,
}

/// What a lock file says, with the journal head it was written after.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockFile {
    /// The record.
    pub record: ActiveSite,
    /// The hash of the journal entry that produced this record ([`GENESIS_HASH`] for a seed file).
    pub journal_head: String,
}

const PRA_KEYS: [&str; 5] = [
    "TOKEN",
    "CHANGED_AT",
    "CHANGED_BY",
    "REASON",
    "JOURNAL_HEAD",
];

impl LockFile {
    /// Parses the text of a lock file; `origin` names it in errors. Reads the seed's plain
    /// `ACTIVE_SITE=SBG` / `ACTIVE_SITE=NONE` (token 0) as well as pra's full format, in which
    /// every key must be present and the file must end with a newline (anything else is a
    /// truncated or hand-damaged file: an error naming the file and line, never a guess).
    pub fn parse(text: &str, origin: &str) -> Result<LockFile> {
        let corrupt = |line: usize, detail: String| Error::Corrupt {
            what: if line == 0 {
                format!("lock file {origin}")
            } else {
                format!("lock file {origin}, line {line}")
            },
            detail,
        };
        let mut values: Vec<(&str, &str, usize)> = Vec::new();
        for (i, raw) in text.split('\n').enumerate() {
            let n = i + 1;
            let line = raw.strip_suffix('\r').unwrap_or(raw).trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (key, value) = line
                .split_once('=')
                .ok_or_else(|| corrupt(n, format!("expected KEY=VALUE, found {line:?}")))?;
            let key = key.trim();
            if values.iter().any(|(k, _, _)| *k == key) {
                return Err(corrupt(n, format!("{key} is set twice")));
            }
            values.push((key, value.trim(), n));
        }
        let get = |key: &str| {
            values
                .iter()
                .find(|(k, _, _)| *k == key)
                .map(|(_, v, n)| (*v, *n))
        };
        let (site_text, site_line) = get("ACTIVE_SITE")
            .ok_or_else(|| corrupt(0, "no ACTIVE_SITE line (empty or truncated file?)".into()))?;
        let site = if site_text.eq_ignore_ascii_case("NONE") {
            None
        } else if site_text.is_empty() {
            return Err(corrupt(
                site_line,
                "ACTIVE_SITE is empty; write NONE for no active site".into(),
            ));
        } else {
            Some(SiteId::new(site_text).map_err(|e| corrupt(site_line, e.to_string()))?)
        };
        for (key, _, n) in &values {
            if *key != "ACTIVE_SITE" && !PRA_KEYS.contains(key) {
                tracing::warn!(
                    file = origin,
                    line = n,
                    key,
                    "unknown key in lock file ignored"
                );
            }
        }
        if !PRA_KEYS.iter().any(|k| get(k).is_some()) {
            // The seed's own format: just the site.
            return Ok(LockFile {
                record: ActiveSite {
                    site,
                    token: FencingToken::ZERO,
                    changed_at: DateTime::<Utc>::UNIX_EPOCH,
                    changed_by: "seed lock file".into(),
                    reason: String::new(),
                },
                journal_head: GENESIS_HASH.into(),
            });
        }
        if !text.ends_with('\n') {
            return Err(corrupt(
                0,
                "the last line is not terminated: the file is truncated".into(),
            ));
        }
        let need = |key: &str| {
            get(key).ok_or_else(|| corrupt(0, format!("{key} is missing (truncated file?)")))
        };
        let (token, token_line) = need("TOKEN")?;
        let token = token
            .parse::<u64>()
            .map_err(|_| corrupt(token_line, format!("TOKEN {token:?} is not a whole number")))?;
        let (at, at_line) = need("CHANGED_AT")?;
        let changed_at = DateTime::parse_from_rfc3339(at)
            .map_err(|e| {
                corrupt(
                    at_line,
                    format!("CHANGED_AT {at:?} is not an RFC 3339 time: {e}"),
                )
            })?
            .with_timezone(&Utc)
            .trunc_subsecs(6); // pra keeps microseconds everywhere
        let (by, _) = need("CHANGED_BY")?;
        let (reason, _) = need("REASON")?;
        let (head, head_line) = need("JOURNAL_HEAD")?;
        if head.len() != 64 || !head.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(corrupt(
                head_line,
                "JOURNAL_HEAD is not a SHA-256 hex digest".into(),
            ));
        }
        Ok(LockFile {
            record: ActiveSite {
                site,
                token: FencingToken(token),
                changed_at,
                changed_by: by.to_string(),
                reason: reason.to_string(),
            },
            journal_head: head.to_string(),
        })
    }

    /// The file's text: the seed's `ACTIVE_SITE=` line first (upper case, as the seed writes it),
    /// then pra's keys.
    pub fn render(&self) -> String {
        let r = &self.record;
        let site = r
            .site
            .as_ref()
            .map_or_else(|| "NONE".to_string(), |s| s.as_str().to_ascii_uppercase());
        format!(
            "# pra active-site record: change it with `pra site`, not by hand.\n\
             ACTIVE_SITE={site}\nTOKEN={}\nCHANGED_AT={}\nCHANGED_BY={}\nREASON={}\nJOURNAL_HEAD={}\n",
            r.token,
            r.changed_at
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            r.changed_by,
            r.reason,
            self.journal_head
        )
    }
}

impl FileStore {
    /// Opens the lock-file store at `path`. The file need not exist yet (no site active, token
    /// 0), but its directory must.
    pub fn open(path: &Path, clock: Arc<dyn Clock>) -> Result<Self> {
        let url = format!("file://{}", display(path));
        let dir = parent_dir(path);
        if !dir.is_dir() {
            return Err(Error::StoreUnavailable {
                url,
                reason: format!("directory {} does not exist", dir.display()),
            });
        }
        if path.is_dir() {
            return Err(Error::StoreUnavailable {
                url,
                reason: "the lock-file path is a directory".into(),
            });
        }
        crate::fsutil::refuse_world_writable(&url, &[path, dir])?;
        let store = FileStore {
            url,
            journal_path: with_suffix(path, ".journal"),
            mutex_path: with_suffix(path, ".pra-lock"),
            path: path.to_path_buf(),
            clock,
        };
        store.create_if_missing()?;
        Ok(store)
    }

    /// Writes the initial record if there is no lock file and no journal yet, so that from then
    /// on a missing lock file always means a lost one (never the window of a first change that
    /// has appended its journal entry but not renamed the file yet). Without write access the
    /// store stays readable: a missing file with no journal reads as the initial record.
    fn create_if_missing(&self) -> Result<()> {
        if self.path.exists() {
            return Ok(());
        }
        let Ok(_guard) = self.lock(true) else {
            return Ok(());
        };
        if self.path.exists() || fs::metadata(&self.journal_path).is_ok_and(|m| m.len() > 0) {
            return Ok(());
        }
        let initial = LockFile {
            record: ActiveSite::initial(),
            journal_head: GENESIS_HASH.into(),
        };
        match write_atomic(&self.path, initial.render().as_bytes()) {
            Ok(()) => Ok(()),
            Err(Error::Io { source, .. }) if source.kind() == io::ErrorKind::PermissionDenied => {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// The lock file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn unavailable(&self, what: &str, e: io::Error) -> Error {
        Error::StoreUnavailable {
            url: self.url.clone(),
            reason: format!("{what} {}: {e}", self.path.display()),
        }
    }

    /// Reads the lock file. A missing file is the initial record, unless a journal exists beside
    /// it (then the file was lost, and starting over at token 0 would reuse tokens).
    fn read_lock(&self) -> Result<LockFile> {
        match fs::read_to_string(&self.path) {
            Ok(text) => LockFile::parse(&text, &display(&self.path)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let journal_len = fs::metadata(&self.journal_path)
                    .map(|m| m.len())
                    .unwrap_or(0);
                if journal_len > 0 {
                    return Err(Error::Corrupt {
                        what: format!("lock file {}", self.path.display()),
                        detail: format!(
                            "it is missing but its journal {} is not empty; restore the file rather than start over at token 0",
                            self.journal_path.display()
                        ),
                    });
                }
                Ok(LockFile {
                    record: ActiveSite::initial(),
                    journal_head: GENESIS_HASH.into(),
                })
            }
            Err(e) if e.kind() == io::ErrorKind::InvalidData => Err(Error::Corrupt {
                what: format!("lock file {}", self.path.display()),
                detail: "not UTF-8 text".into(),
            }),
            Err(e) => Err(self.unavailable("cannot read", e)),
        }
    }

    /// Reads the journal: committed entries, plus the byte offset and content of a trailing entry
    /// that was appended by a change interrupted before its lock-file rename (never committed).
    fn read_journal_file(&self, head: &str) -> Result<(Vec<JournalEntry>, Option<u64>)> {
        let mut text = String::new();
        match File::open(&self.journal_path) {
            Ok(mut f) => {
                f.read_to_string(&mut text)
                    .map_err(|e| Error::io("read", &self.journal_path, e))?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("open", &self.journal_path, e)),
        }
        let mut entries = Vec::new();
        let mut offsets = Vec::new();
        let mut offset = 0u64;
        for (i, line) in text.split_inclusive('\n').enumerate() {
            let start = offset;
            offset += line.len() as u64;
            if line.trim().is_empty() {
                continue;
            }
            if !line.ends_with('\n') {
                // A torn append: only possible for the uncommitted last entry.
                offsets.push(start);
                entries.push(None);
                continue;
            }
            let entry: JournalEntry = serde_json::from_str(line).map_err(|e| Error::Corrupt {
                what: format!("journal {}, line {}", self.journal_path.display(), i + 1),
                detail: format!("unreadable entry: {e}"),
            })?;
            offsets.push(start);
            entries.push(Some(entry));
        }
        // Entries after the one the lock file points to were never committed; there can be at
        // most the ones of a single interrupted change, and the first must chain to the head.
        let committed_len = if head == GENESIS_HASH {
            0
        } else {
            entries
                .iter()
                .position(|e| e.as_ref().is_some_and(|e| e.hash == head))
                .map(|i| i + 1)
                .unwrap_or(entries.len())
        };
        let pending_at = if committed_len < entries.len() {
            let first_pending = &entries[committed_len];
            let chains = first_pending.as_ref().is_none_or(|e| e.prev_hash == head);
            if !chains {
                return Err(Error::Corrupt {
                    what: format!("journal {}", self.journal_path.display()),
                    detail: "entries follow the lock file's head that do not chain to it".into(),
                });
            }
            Some(offsets[committed_len])
        } else {
            None
        };
        let committed = entries
            .into_iter()
            .take(committed_len)
            .map(|e| {
                e.ok_or_else(|| Error::Corrupt {
                    what: format!("journal {}", self.journal_path.display()),
                    detail: "a torn entry in the middle of the journal".into(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((committed, pending_at))
    }

    fn lock(&self, exclusive: bool) -> Result<File> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&self.mutex_path)
            .map_err(|e| self.unavailable("cannot open the advisory lock beside", e))?;
        if exclusive { f.lock() } else { f.lock_shared() }
            .map_err(|e| self.unavailable("cannot take the advisory lock beside", e))?;
        Ok(f)
    }
}

impl Backend for FileStore {
    fn url(&self) -> &str {
        &self.url
    }

    fn clock(&self) -> &dyn Clock {
        &*self.clock
    }

    fn load_record(&self) -> Result<ActiveSite> {
        // The file is only ever replaced by rename: a reader sees the old or the new version.
        Ok(self.read_lock()?.record)
    }

    fn snapshot(&self) -> Result<Snapshot> {
        let _guard = self.lock(false)?;
        let current = self.read_lock()?;
        let (committed, _) = self.read_journal_file(&current.journal_head)?;
        Ok(Snapshot {
            head: JournalHead {
                len: committed.len() as u64,
                hash: current.journal_head,
            },
            record: current.record,
            plan: None,
        })
    }

    fn transact(&self, decide: &mut dyn FnMut(&Snapshot) -> Result<Writes>) -> Result<Writes> {
        let _guard = self.lock(true)?;
        let current = self.read_lock()?;
        let (committed, pending_at) = self.read_journal_file(&current.journal_head)?;
        verify_chain(&committed, &current.journal_head)?;
        let writes = decide(&Snapshot {
            record: current.record,
            head: JournalHead {
                len: committed.len() as u64,
                hash: current.journal_head,
            },
            plan: None,
        })?;
        if writes.is_empty() {
            return Ok(writes);
        }
        // Write-ahead: journal first (fsync), then the lock file, whose rename is the commit point.
        let mut journal = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&self.journal_path)
            .map_err(|e| Error::io("open", &self.journal_path, e))?;
        if let Some(offset) = pending_at {
            tracing::warn!(journal = %self.journal_path.display(), "rolling back the journal entry of an interrupted change");
            journal
                .set_len(offset)
                .map_err(|e| Error::io("truncate", &self.journal_path, e))?;
        }
        let mut lines = String::new();
        for entry in &writes.entries {
            lines.push_str(
                &serde_json::to_string(entry).map_err(|e| Error::Internal(e.to_string()))?,
            );
            lines.push('\n');
        }
        journal
            .write_all(lines.as_bytes())
            .map_err(|e| Error::io("append", &self.journal_path, e))?;
        journal
            .sync_all()
            .map_err(|e| Error::io("fsync", &self.journal_path, e))?;
        let next = LockFile {
            record: writes.record.clone(),
            journal_head: writes.head.hash.clone(),
        };
        write_atomic(&self.path, next.render().as_bytes())?;
        Ok(writes)
    }

    fn read_journal(&self) -> Result<(Vec<JournalEntry>, JournalHead)> {
        let _guard = self.lock(false)?;
        let current = self.read_lock()?;
        let (committed, pending) = self.read_journal_file(&current.journal_head)?;
        if pending.is_some() {
            tracing::warn!(store = %self.url, "the journal ends with an interrupted change that was never committed; the next change rolls it back");
        }
        let head = JournalHead {
            len: committed.len() as u64,
            hash: current.journal_head,
        };
        Ok((committed, head))
    }

    fn keeps_plans(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_seed_format() {
        let l = LockFile::parse("ACTIVE_SITE=SBG\n", "x").unwrap();
        assert_eq!(l.record.site.unwrap().as_str(), "sbg");
        assert_eq!(l.record.token, FencingToken::ZERO);
        let l = LockFile::parse("ACTIVE_SITE=NONE", "x").unwrap();
        assert_eq!(l.record.site, None);
        let l = LockFile::parse("# managed by ansible\r\nACTIVE_SITE=rbx\r\n", "x").unwrap();
        assert_eq!(l.record.site.unwrap().as_str(), "rbx");
    }

    #[test]
    fn round_trips_the_full_format() {
        let l = LockFile {
            record: ActiveSite {
                site: Some(SiteId::new("rbx").unwrap()),
                token: FencingToken(42),
                changed_at: DateTime::parse_from_rfc3339("2026-11-21T10:00:00.123456Z")
                    .unwrap()
                    .with_timezone(&Utc),
                changed_by: "alice".into(),
                reason: "failback = done".into(),
            },
            journal_head: "ab".repeat(32),
        };
        let text = l.render();
        assert!(text.contains("\nACTIVE_SITE=RBX\n"), "{text}");
        assert_eq!(LockFile::parse(&text, "x").unwrap(), l);
    }

    #[test]
    fn sub_microsecond_times_round_trip() {
        // Found by the lock_file fuzz target: nanoseconds did not survive render -> parse.
        let text = format!(
            "ACTIVE_SITE=RBX\nTOKEN=3\nCHANGED_AT=2026-01-01T00:00:00.002555555Z\nCHANGED_BY=ops\nREASON=\nJOURNAL_HEAD={}\n",
            "0".repeat(64)
        );
        let parsed = LockFile::parse(&text, "x").unwrap();
        assert_eq!(parsed.record.changed_at.timestamp_subsec_nanos(), 2_555_000);
        assert_eq!(LockFile::parse(&parsed.render(), "x").unwrap(), parsed);
    }

    #[test]
    fn corrupt_files_name_the_file_and_line() {
        let cases: &[(&str, &str)] = &[
            ("", "no ACTIVE_SITE"),
            ("\n\n", "no ACTIVE_SITE"),
            ("ACTIVE_SITE SBG\n", "line 1"),
            ("ACTIVE_SITE=\n", "line 1"),
            ("# x\nACTIVE_SITE=s b g\n", "line 2"),
            ("ACTIVE_SITE=rbx\nACTIVE_SITE=sbg\n", "twice"),
            ("ACTIVE_SITE=rbx\nTOKEN=3\n", "missing"),
            (
                "ACTIVE_SITE=rbx\nTOKEN=x\nCHANGED_AT=2026-01-01T00:00:00Z\nCHANGED_BY=a\nREASON=\nJOURNAL_HEAD=0000000000000000000000000000000000000000000000000000000000000000\n",
                "line 2",
            ),
        ];
        for (text, want) in cases {
            let err = LockFile::parse(text, "/etc/app/pra-status.lock").unwrap_err();
            let msg = err.to_string();
            assert_eq!(err.kind(), crate::ErrorKind::Corrupt, "{text:?}");
            assert!(
                msg.contains("/etc/app/pra-status.lock") && msg.contains(want),
                "{text:?}: {msg}"
            );
        }
    }

    #[test]
    fn truncated_full_format_is_an_error_not_a_guess() {
        let l = LockFile {
            record: ActiveSite {
                site: Some(SiteId::new("sbg").unwrap()),
                ..ActiveSite::initial()
            },
            journal_head: GENESIS_HASH.into(),
        };
        let text = l.render();
        for cut in 1..text.len() {
            let part = &text[..cut];
            if let Ok(parsed) = LockFile::parse(part, "x") {
                // The only prefixes that parse are those that stop right after the seed-format
                // ACTIVE_SITE line (a plain seed file), never a pra file missing fields.
                assert!(
                    !part.contains("TOKEN"),
                    "truncated at {cut} parsed as {parsed:?}"
                );
            }
        }
    }
}
