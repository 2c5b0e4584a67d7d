//! The embedded default store: one SQLite database (WAL mode) holding the active-site record,
//! the journal, the plan state and the run registry; every change is one IMMEDIATE transaction.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::commit::admit;
use super::{
    Admission, Backend, Heartbeat, JournalEntry, JournalHead, Pulse, RunId, RunRecord, RunRegistry,
    RunStart, RunStats, Snapshot, StoredPlan, UnfinishedRun, Writes, display, time_to_us,
    us_to_time,
};
use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::fencing::{ActiveSite, FencingToken};
use crate::fsutil::Sharing;
use crate::site::SiteId;

/// Schema migrations, applied in order; `PRAGMA user_version` is the number applied so far.
/// Never edit a released entry: append a new one.
const MIGRATIONS: &[&str] = &[
    // v1
    "CREATE TABLE active_site (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        site TEXT,
        token INTEGER NOT NULL CHECK (token >= 0),
        changed_at INTEGER NOT NULL,
        changed_by TEXT NOT NULL,
        reason TEXT NOT NULL,
        journal_head TEXT NOT NULL
    );
    INSERT INTO active_site VALUES (1, NULL, 0, 0, 'pra', 'initial record: no site active',
        '0000000000000000000000000000000000000000000000000000000000000000');
    CREATE TABLE journal (
        seq INTEGER PRIMARY KEY,
        at INTEGER NOT NULL,
        body TEXT NOT NULL,
        hash TEXT NOT NULL
    );
    CREATE TABLE plan (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        revision INTEGER NOT NULL,
        doc TEXT NOT NULL
    );
    CREATE TABLE runs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        job TEXT NOT NULL,
        site TEXT NOT NULL,
        token INTEGER NOT NULL,
        host TEXT NOT NULL,
        pid INTEGER NOT NULL,
        started_at INTEGER NOT NULL,
        heartbeat_at INTEGER NOT NULL,
        finished_at INTEGER,
        exit_code INTEGER,
        outcome TEXT
    );
    CREATE INDEX runs_unfinished ON runs (finished_at, token);
    CREATE INDEX runs_started ON runs (started_at);",
    // v2
    "CREATE TABLE skips (
        job TEXT NOT NULL,
        site TEXT NOT NULL,
        count INTEGER NOT NULL,
        last_at INTEGER NOT NULL,
        PRIMARY KEY (job, site)
    );",
    // v3: liveness by a counter the observer watches on its own clock, and how a run's
    // processes are contained.
    "ALTER TABLE runs ADD COLUMN beats INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE runs ADD COLUMN containment TEXT;",
    // v4: per job and site counters kept by the writes themselves (triggers, in the same
    // transaction), so that metrics cost the number of jobs, not of runs ever.
    "CREATE TABLE run_counts (
        job TEXT NOT NULL,
        site TEXT NOT NULL,
        started INTEGER NOT NULL DEFAULT 0,
        revoked INTEGER NOT NULL DEFAULT 0,
        unfinished INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (job, site)
    );
    INSERT INTO run_counts (job, site, started, revoked, unfinished)
        SELECT job, site, COUNT(*), SUM(outcome IS 'revoked'), SUM(finished_at IS NULL)
        FROM runs GROUP BY job, site;
    CREATE TRIGGER runs_counted AFTER INSERT ON runs BEGIN
        INSERT OR IGNORE INTO run_counts (job, site) VALUES (NEW.job, NEW.site);
        UPDATE run_counts SET started = started + 1,
            revoked = revoked + (NEW.outcome IS 'revoked'),
            unfinished = unfinished + (NEW.finished_at IS NULL)
        WHERE job = NEW.job AND site = NEW.site;
    END;
    CREATE TRIGGER runs_recounted AFTER UPDATE OF finished_at, outcome ON runs BEGIN
        UPDATE run_counts SET
            revoked = revoked - (OLD.outcome IS 'revoked') + (NEW.outcome IS 'revoked'),
            unfinished = unfinished - (OLD.finished_at IS NULL) + (NEW.finished_at IS NULL)
        WHERE job = NEW.job AND site = NEW.site;
    END;",
    // v5: bounded history keeps a month of finished runs (millions): the index drains read
    // holds only the unfinished ones (a fifth of a run's bytes saved), and pruning walks the
    // start times.
    "DROP INDEX runs_unfinished;
     CREATE INDEX runs_unfinished ON runs (finished_at, token) WHERE finished_at IS NULL;",
    // v6: the runs that were still going when the record moved past their token (the only
    // ones another site's runs can overlap), noted at each change, so that the report reads
    // those and the runs started while they went on, not a month of runs. `outlived_since`:
    // when the noting began (before it, the report reads every run).
    "CREATE TABLE outlived (
        id INTEGER PRIMARY KEY,
        token_end INTEGER NOT NULL
     );
     CREATE TABLE meta (
        key TEXT PRIMARY KEY,
        value INTEGER NOT NULL
     );
     INSERT INTO meta VALUES ('outlived_since',
        CAST((julianday('now') - 2440587.5) * 86400000000 AS INTEGER));
     CREATE TRIGGER runs_pruned AFTER DELETE ON runs BEGIN
        DELETE FROM outlived WHERE id = OLD.id;
     END;",
    // v7: missed-run detection. A run may declare its job's schedule; the counters keep, per
    // job and site, the latest start, finish (and whether it failed), success and schedule,
    // kept by the same triggers (a success is exit code 0, not revoked: as
    // RunRecord::succeeded). The history fills them in once, in one pass.
    "ALTER TABLE runs ADD COLUMN schedule TEXT;
     ALTER TABLE run_counts ADD COLUMN last_started_at INTEGER;
     ALTER TABLE run_counts ADD COLUMN last_finished_at INTEGER;
     ALTER TABLE run_counts ADD COLUMN last_failed INTEGER;
     ALTER TABLE run_counts ADD COLUMN last_success_at INTEGER;
     ALTER TABLE run_counts ADD COLUMN schedule TEXT;
     UPDATE run_counts SET last_started_at = agg.ls, last_success_at = agg.lok
     FROM (SELECT job, site, MAX(started_at) AS ls,
                  MAX(CASE WHEN exit_code IS 0 AND outcome IS NOT 'revoked' THEN finished_at END) AS lok
           FROM runs GROUP BY job, site) AS agg
     WHERE run_counts.job = agg.job AND run_counts.site = agg.site;
     UPDATE run_counts SET last_finished_at = agg.lf, last_failed = agg.failed
     FROM (SELECT job, site, MAX(finished_at) AS lf,
                  NOT (exit_code IS 0 AND outcome IS NOT 'revoked') AS failed
           FROM runs WHERE finished_at IS NOT NULL GROUP BY job, site) AS agg
     WHERE run_counts.job = agg.job AND run_counts.site = agg.site;
     DROP TRIGGER runs_counted;
     CREATE TRIGGER runs_counted AFTER INSERT ON runs BEGIN
        INSERT OR IGNORE INTO run_counts (job, site) VALUES (NEW.job, NEW.site);
        UPDATE run_counts SET started = started + 1,
            revoked = revoked + (NEW.outcome IS 'revoked'),
            unfinished = unfinished + (NEW.finished_at IS NULL),
            last_started_at = MAX(COALESCE(last_started_at, NEW.started_at), NEW.started_at),
            schedule = COALESCE(NEW.schedule, schedule)
        WHERE job = NEW.job AND site = NEW.site;
     END;
     DROP TRIGGER runs_recounted;
     CREATE TRIGGER runs_recounted AFTER UPDATE OF finished_at, outcome ON runs BEGIN
        UPDATE run_counts SET
            revoked = revoked - (OLD.outcome IS 'revoked') + (NEW.outcome IS 'revoked'),
            unfinished = unfinished - (OLD.finished_at IS NULL) + (NEW.finished_at IS NULL)
        WHERE job = NEW.job AND site = NEW.site;
        UPDATE run_counts SET last_finished_at = NEW.finished_at,
            last_failed = NOT (NEW.exit_code IS 0 AND NEW.outcome IS NOT 'revoked')
        WHERE job = NEW.job AND site = NEW.site AND NEW.finished_at IS NOT NULL
            AND NEW.finished_at >= COALESCE(last_finished_at, NEW.finished_at);
        UPDATE run_counts SET last_success_at = NEW.finished_at
        WHERE job = NEW.job AND site = NEW.site AND NEW.finished_at IS NOT NULL
            AND NEW.exit_code IS 0 AND NEW.outcome IS NOT 'revoked'
            AND NEW.finished_at >= COALESCE(last_success_at, NEW.finished_at);
     END;",
    // v8: a year of runs in under 1 GB. The host's and the containment's names, the same on
    // every run of a host, are kept once in `run_names` and referred to by id (rows written before
    // keep their text until they leave the history window); a finished run's heartbeat time
    // is its finish, stored as 0 (no bytes). About 40 bytes of a run's 120.
    "CREATE TABLE run_names (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE
     );
     ALTER TABLE runs ADD COLUMN host_id INTEGER;
     ALTER TABLE runs ADD COLUMN containment_id INTEGER;",
];

/// The SQLite store. One connection behind a mutex: safe to share between threads; several
/// processes coordinate through SQLite's own locking (busy timeout 5 s).
#[derive(Debug)]
pub struct SqliteStore {
    url: String,
    path: PathBuf,
    conn: Mutex<Connection>,
    clock: Arc<dyn Clock>,
    // How long finished runs are kept in detail (see `runs::PRUNE_EVERY`).
    history: std::time::Duration,
    // The device and inode the connection opened: a store file moved or replaced under a live
    // process (a restore, an operator's `mv`) must not keep taking its heartbeats and flips
    // while everyone else reads the new file.
    identity: (u64, u64),
}

impl SqliteStore {
    /// Opens (creating it, mode 0600, if missing) the store database at `path` and brings its
    /// schema up to date. The parent directory must exist.
    pub fn open(path: &Path, clock: Arc<dyn Clock>) -> Result<Self> {
        Self::open_shared(path, clock, Sharing::PRIVATE)
    }

    /// [`SqliteStore::open`], creating a missing database as `sharing` says (SQLite gives its
    /// `-wal` and `-shm` the database's mode).
    pub(crate) fn open_shared(
        path: &Path,
        clock: Arc<dyn Clock>,
        sharing: Sharing,
    ) -> Result<Self> {
        let _fork = crate::forkguard::enter();
        let url = format!("sqlite://{}", display(path));
        let unavailable = |reason: String| Error::StoreUnavailable {
            url: url.clone(),
            reason,
        };
        if let Ok(meta) = std::fs::metadata(path)
            && let Some(kind) = crate::fsutil::special_kind(meta.file_type())
        {
            return Err(unavailable(format!(
                "{} is {kind}, not a regular file",
                path.display()
            )));
        }
        let dir = crate::fsutil::parent_dir(path);
        if let Some(fs) = crate::fsutil::network_fs_of(dir) {
            return Err(Error::Unsupported(format!(
                "{url}: {} is on {fs}, a file system other hosts reach: SQLite's WAL mode, which pra uses, keeps its shared memory on one host, and locks between hosts are not guaranteed there, so two hosts could both change the record. Keep the SQLite store on a local disk of one machine, or share the record between sites with an etcd:// store (README, Choosing a store)",
                dir.display()
            )));
        }
        crate::fsutil::refuse_world_writable(&url, &[path, dir])?;
        sharing.check_dir(dir);
        if !path.exists() {
            // Another process may create it first: fine, SQLite opens it.
            sharing
                .open_or_create(std::fs::OpenOptions::new().write(true), path)
                .map_err(|e| match e {
                    Error::Io { source, .. }
                        if source.kind() == std::io::ErrorKind::PermissionDenied =>
                    {
                        unavailable(crate::fsutil::explain_denied(path))
                    }
                    e => unavailable(format!("cannot create the database: {e}")),
                })?;
        }
        // SQLite reads and writes the database, its -wal and -shm (creating them in the
        // directory): a file this process may not use is said plainly, not as "unable to open".
        for (p, mode) in [
            (path.to_path_buf(), libc::R_OK | libc::W_OK),
            (
                crate::fsutil::with_suffix(path, "-wal"),
                libc::R_OK | libc::W_OK,
            ),
            (
                crate::fsutil::with_suffix(path, "-shm"),
                libc::R_OK | libc::W_OK,
            ),
            (dir.to_path_buf(), libc::W_OK | libc::X_OK),
        ] {
            if p.exists() && !crate::fsutil::may(&p, mode) {
                return Err(unavailable(crate::fsutil::explain_denied(&p)));
            }
        }
        let conn = Connection::open(path).map_err(|e| Error::sqlite("open", &url, e))?;
        let sql = |what: &'static str| {
            let url = url.clone();
            move |e| Error::sqlite(what, &url, e)
        };
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(sql("busy_timeout"))?;
        // Before anything is changed (WAL mode, pra's tables): a database of someone else's,
        // the application's most likely, is refused.
        refuse_foreign(&conn, &url)?;
        // Reading the journal mode also tells us whether this is a database at all. Switching a
        // new database to WAL needs an exclusive lock and SQLite does not call the busy handler
        // for it, so two processes opening a new store at once retry here (bounded).
        let mode = retry_busy(|| {
            let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
            if mode.eq_ignore_ascii_case("wal") {
                return Ok(mode);
            }
            conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        })
        .map_err(sql("set WAL mode"))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(unavailable(format!("cannot use WAL mode (got {mode})")));
        }
        conn.execute_batch("PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;")
            .map_err(sql("pragmas"))?;
        let identity = {
            use std::os::unix::fs::MetadataExt;
            let m = std::fs::metadata(path)
                .map_err(|e| unavailable(format!("cannot stat the database: {e}")))?;
            (m.dev(), m.ino())
        };
        let store = SqliteStore {
            url,
            path: path.to_path_buf(),
            conn: Mutex::new(conn),
            clock,
            history: crate::defaults::HISTORY,
            identity,
        };
        store.migrate()?;
        Ok(store)
    }

    /// The store, keeping finished runs in detail for `history` (default
    /// [`crate::defaults::HISTORY`]; see [`super::PRUNE_EVERY`]).
    pub fn with_history(mut self, history: std::time::Duration) -> Self {
        self.history = history;
        self
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The schema version this build of pra writes.
    pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

    fn conn(&self) -> Result<Held<'_>> {
        let fork = crate::forkguard::enter();
        use std::os::unix::fs::MetadataExt;
        let now = std::fs::metadata(&self.path).map(|m| (m.dev(), m.ino()));
        if now.as_ref().ok() != Some(&self.identity) {
            return Err(Error::StoreUnavailable {
                url: self.url.clone(),
                reason: match now {
                    Ok(_) => "the store file was replaced since this process opened it (moved, restored or recreated): reopen it".into(),
                    Err(e) => format!("the store file is gone since this process opened it: {e}"),
                },
            });
        }
        // A panic while holding the lock cannot leave a half-applied change (SQLite rolls the
        // transaction back when it is dropped), so a poisoned lock is safe to reuse.
        Ok(Held {
            conn: self.conn.lock().unwrap_or_else(|p| p.into_inner()),
            _fork: fork,
        })
    }

    fn err(&self, what: &'static str) -> impl Fn(rusqlite::Error) -> Error + '_ {
        move |e| Error::sqlite(what, &self.url, e)
    }

    fn migrate(&self) -> Result<()> {
        let mut conn = self.conn()?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(self.err("migrate"))?;
        let version: u32 = tx
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(self.err("read schema version"))?;
        if version > Self::SCHEMA_VERSION {
            return Err(Error::Unsupported(format!(
                "{} has schema version {version}, newer than this pra knows ({}); upgrade pra",
                self.url,
                Self::SCHEMA_VERSION
            )));
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            tx.execute_batch(sql).map_err(self.err("migrate"))?;
            tx.pragma_update(None, "user_version", i as u32 + 1)
                .map_err(self.err("migrate"))?;
            tracing::info!(store = %self.url, version = i + 1, "store schema migrated");
        }
        tx.commit().map_err(self.err("migrate"))
    }

    fn read_record(&self, conn: &Connection) -> Result<(ActiveSite, String)> {
        let row = conn
            .prepare_cached(
                "SELECT site, token, changed_at, changed_by, reason, journal_head FROM active_site WHERE id = 1",
            )
            .and_then(|mut s| {
                s.query_row([], |r| {
                    Ok((
                        r.get::<_, Option<String>>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, String>(4)?,
                        r.get::<_, String>(5)?,
                    ))
                })
                .optional()
            })
            .map_err(self.err("load the active-site record"))?;
        let (site, token, at, by, reason, head) = row.ok_or_else(|| Error::Corrupt {
            what: self.url.clone(),
            detail: "the active-site record is missing".into(),
        })?;
        let site = site
            .map(|s| SiteId::new(&s))
            .transpose()
            .map_err(|e| Error::Corrupt {
                what: self.url.clone(),
                detail: format!("the active-site record names an invalid site: {e}"),
            })?;
        let record = ActiveSite {
            site,
            token: FencingToken(token as u64),
            changed_at: us_to_time(at),
            changed_by: by,
            reason,
        };
        Ok((record, head))
    }

    fn read_snapshot(&self, conn: &Connection) -> Result<Snapshot> {
        let (record, hash) = self.read_record(conn)?;
        let len: i64 = conn
            .query_row("SELECT COALESCE(MAX(seq), 0) FROM journal", [], |r| {
                r.get(0)
            })
            .map_err(self.err("read journal"))?;
        let plan: Option<(i64, String)> = conn
            .query_row("SELECT revision, doc FROM plan WHERE id = 1", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()
            .map_err(self.err("read plan"))?;
        let plan = plan
            .map(|(revision, doc)| {
                Ok::<_, Error>(StoredPlan {
                    revision: revision as u64,
                    doc: serde_json::from_str(&doc).map_err(|e| Error::Corrupt {
                        what: format!("plan in {}", self.url),
                        detail: e.to_string(),
                    })?,
                })
            })
            .transpose()?;
        Ok(Snapshot {
            record,
            head: JournalHead {
                len: len as u64,
                hash,
            },
            plan,
        })
    }

    fn read_entries(&self, conn: &Connection) -> Result<Vec<JournalEntry>> {
        let mut stmt = conn
            .prepare_cached("SELECT seq, body FROM journal ORDER BY seq")
            .map_err(self.err("read journal"))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))
            .map_err(self.err("read journal"))?;
        let mut out = Vec::new();
        for row in rows {
            let (seq, body) = row.map_err(self.err("read journal"))?;
            let entry: JournalEntry = serde_json::from_str(&body).map_err(|e| Error::Corrupt {
                what: format!("journal entry {seq} in {}", self.url),
                detail: format!("unreadable: {e}"),
            })?;
            out.push(entry);
        }
        Ok(out)
    }

    fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }
}

/// The store's connection, held: no fork happens meanwhile (see [`crate::forkguard`]).
struct Held<'a> {
    conn: MutexGuard<'a, Connection>,
    _fork: crate::forkguard::Guard,
}

impl std::ops::Deref for Held<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        &self.conn
    }
}

impl std::ops::DerefMut for Held<'_> {
    fn deref_mut(&mut self) -> &mut Connection {
        &mut self.conn
    }
}

/// Runs `f` again while it fails with SQLITE_BUSY, for up to 5 seconds.
/// The tables of pra's schema (every migration's).
const PRA_TABLES: &[&str] = &[
    "active_site",
    "journal",
    "plan",
    "runs",
    "skips",
    "run_counts",
    "outlived",
    "meta",
    "run_names",
];

/// Refuses a database that has tables but is not a pra store: a table pra does not create, or
/// tables without the schema version pra sets. Only reads.
fn refuse_foreign(conn: &Connection, url: &str) -> Result<()> {
    let err = |e| Error::sqlite("read the schema", url, e);
    let tables: Vec<String> = retry_busy(|| {
        conn.prepare(
            "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name",
        )?
        .query_map([], |r| r.get(0))?
        .collect()
    })
    .map_err(err)?;
    if tables.is_empty() {
        return Ok(());
    }
    let version: u32 =
        retry_busy(|| conn.query_row("PRAGMA user_version", [], |r| r.get(0))).map_err(err)?;
    let foreign: Vec<&str> = tables
        .iter()
        .map(String::as_str)
        .filter(|t| !PRA_TABLES.contains(t))
        .collect();
    if foreign.is_empty() && version > 0 {
        return Ok(());
    }
    let shown = if foreign.is_empty() {
        tables.join(", ")
    } else {
        foreign.join(", ")
    };
    Err(Error::InvalidArgument(format!(
        "{url} is a SQLite database that is not a pra store (tables: {shown}); refusing to add pra's tables to it: give the store a file of its own (e.g. sqlite:///var/lib/pra/state.db)"
    )))
}

fn retry_busy<T>(mut f: impl FnMut() -> rusqlite::Result<T>) -> rusqlite::Result<T> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut pause = std::time::Duration::from_millis(1);
    loop {
        match f() {
            Err(e)
                if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy)
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(pause);
                pause = (pause * 2).min(std::time::Duration::from_millis(50));
            }
            other => return other,
        }
    }
}

impl Backend for SqliteStore {
    fn url(&self) -> &str {
        &self.url
    }

    fn clock(&self) -> &dyn Clock {
        &*self.clock
    }

    fn load_record(&self) -> Result<ActiveSite> {
        let conn = self.conn()?;
        Ok(self.read_record(&conn)?.0)
    }

    fn snapshot(&self) -> Result<Snapshot> {
        let mut conn = self.conn()?;
        // One read transaction: the record, the head and the plan are one view.
        let tx = conn.transaction().map_err(self.err("begin"))?;
        self.read_snapshot(&tx)
    }

    fn transact(&self, decide: &mut dyn FnMut(&Snapshot) -> Result<Writes>) -> Result<Writes> {
        let mut conn = self.conn()?;
        // IMMEDIATE: the write lock is taken before the read, so no other writer can commit
        // between the snapshot and the writes and `decide` runs once.
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(self.err("begin"))?;
        let snap = self.read_snapshot(&tx)?;
        let writes = decide(&snap)?;
        if writes.is_empty() {
            return Ok(writes);
        }
        if writes.record_changed {
            let r = &writes.record;
            tx.execute(
                "UPDATE active_site SET site = ?1, token = ?2, changed_at = ?3, changed_by = ?4, reason = ?5 WHERE id = 1",
                params![
                    r.site.as_ref().map(SiteId::as_str),
                    r.token.0 as i64,
                    time_to_us(r.changed_at),
                    r.changed_by,
                    r.reason
                ],
            )
            .map_err(self.err("write the active-site record"))?;
            // The runs still going under older tokens outlive them from now (drains read the
            // same partial index).
            tx.prepare_cached(
                "INSERT OR IGNORE INTO outlived (id, token_end)
                 SELECT id, ?2 FROM runs WHERE finished_at IS NULL AND token < ?1",
            )
            .and_then(|mut st| st.execute(params![r.token.0 as i64, time_to_us(r.changed_at)]))
            .map_err(self.err("note the runs that outlive their token"))?;
        }
        if let Some(plan) = &writes.plan {
            tx.execute(
                "INSERT INTO plan (id, revision, doc) VALUES (1, ?1, ?2)
                 ON CONFLICT(id) DO UPDATE SET revision = excluded.revision, doc = excluded.doc",
                params![plan.revision as i64, plan.doc.to_string()],
            )
            .map_err(self.err("write plan"))?;
        }
        for entry in &writes.entries {
            let body = serde_json::to_string(entry).map_err(|e| Error::Internal(e.to_string()))?;
            tx.execute(
                "INSERT INTO journal (seq, at, body, hash) VALUES (?1, ?2, ?3, ?4)",
                params![entry.seq as i64, time_to_us(entry.at), body, entry.hash],
            )
            .map_err(self.err("append journal"))?;
        }
        if !writes.entries.is_empty() {
            tx.execute(
                "UPDATE active_site SET journal_head = ?1 WHERE id = 1",
                [&writes.head.hash],
            )
            .map_err(self.err("anchor journal"))?;
        }
        tx.commit().map_err(self.err("commit"))?;
        Ok(writes)
    }

    fn read_journal(&self) -> Result<(Vec<JournalEntry>, JournalHead)> {
        let mut conn = self.conn()?;
        // One read transaction, so the record's anchor and the entries are one snapshot.
        let tx = conn.transaction().map_err(self.err("begin"))?;
        let (_, hash) = self.read_record(&tx)?;
        let entries = self.read_entries(&tx)?;
        let head = JournalHead {
            len: entries.last().map_or(0, |e| e.seq),
            hash,
        };
        Ok((entries, head))
    }

    fn keeps_plans(&self) -> bool {
        true
    }

    fn drop_journal_before(&self, seq: u64) -> Result<()> {
        // A thousand entries a transaction: a writer (a flip) never waits behind a long delete.
        loop {
            let conn = self.conn()?;
            let n = conn
                .prepare_cached(
                    "DELETE FROM journal WHERE seq IN (
                        SELECT seq FROM journal WHERE seq < ?1 ORDER BY seq LIMIT 1000)",
                )
                .and_then(|mut s| s.execute([seq as i64]))
                .map_err(self.err("remove checkpointed journal entries"))?;
            if n == 0 {
                return Ok(());
            }
        }
    }

    fn run_registry(&self) -> Option<&dyn RunRegistry> {
        Some(self)
    }
}

impl RunRegistry for SqliteStore {
    fn run_start(&self, run: &RunStart) -> Result<Admission> {
        let mut conn = self.conn()?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(self.err("begin"))?;
        // Admission, atomic with the registration: a run whose guard check is no longer the
        // truth (the record moved since) is not registered, so a drain can never miss it.
        let (record, _) = self.read_record(&tx)?;
        if admit(&record, run).is_err() {
            return Ok(Admission::Standby {
                active: record.site,
                token: record.token,
            });
        }
        let now = time_to_us(self.now());
        let containment = run.containment.map(|c| c.name());
        for name in std::iter::once(run.host.as_str()).chain(containment) {
            tx.prepare_cached("INSERT OR IGNORE INTO run_names (name) VALUES (?1)")
                .and_then(|mut s| s.execute([name]))
                .map_err(self.err("register run"))?;
        }
        tx.prepare_cached(
            "INSERT INTO runs (job, site, token, host, host_id, pid, started_at, heartbeat_at, containment_id, schedule)
             VALUES (?1, ?2, ?3, '', (SELECT id FROM run_names WHERE name = ?4), ?5, ?6, ?6,
                     (SELECT id FROM run_names WHERE name = ?7), ?8)",
        )
        .and_then(|mut s| {
            s.execute(params![
                run.job,
                run.site.as_str(),
                run.token.0 as i64,
                run.host,
                run.pid,
                now,
                containment,
                run.schedule.as_ref().map(|s| s.to_string())
            ])
        })
        .map_err(self.err("register run"))?;
        let id = RunId(tx.last_insert_rowid());
        tx.commit().map_err(self.err("register run"))?;
        Ok(Admission::Admitted {
            id,
            token: run.token,
        })
    }

    fn run_heartbeat(&self, id: RunId) -> Result<Heartbeat> {
        let conn = self.conn()?;
        let n = conn
            .prepare_cached(
                "UPDATE runs SET heartbeat_at = ?2, beats = beats + 1 WHERE id = ?1 AND finished_at IS NULL",
            )
            .and_then(|mut s| s.execute(params![id.0, time_to_us(self.now())]))
            .map_err(self.err("heartbeat"))?;
        Ok(if n == 0 {
            Heartbeat::Expired
        } else {
            Heartbeat::Alive
        })
    }

    fn run_finish(&self, id: RunId, exit_code: Option<i32>, outcome: &str) -> Result<bool> {
        let mut conn = self.conn()?;
        let now = self.now();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(self.err("begin"))?;
        let n = tx
            .prepare_cached(
                // The heartbeat time of a finished run is its finish: 0 stands for it.
                "UPDATE runs SET finished_at = ?2, heartbeat_at = 0, exit_code = ?3, outcome = ?4
                 WHERE id = ?1 AND finished_at IS NULL",
            )
            .and_then(|mut s| s.execute(params![id.0, time_to_us(now), exit_code, outcome]))
            .map_err(self.err("finish run"))?;
        if super::runs::prunes_at(id) {
            let cutoff = super::runs::history_start(now, self.history);
            // The oldest first, through the index on started_at; unfinished runs are passed
            // over. No trigger fires on delete: run_counts keeps counting them.
            tx.prepare_cached(
                "DELETE FROM runs WHERE id IN (
                    SELECT id FROM runs WHERE started_at < ?1 AND finished_at IS NOT NULL
                    ORDER BY started_at LIMIT ?2)",
            )
            .and_then(|mut s| s.execute(params![time_to_us(cutoff), super::PRUNE_BATCH]))
            .map_err(self.err("prune finished runs"))?;
        }
        tx.commit().map_err(self.err("finish run"))?;
        Ok(n == 1)
    }

    fn runs(&self, since: DateTime<Utc>) -> Result<Vec<RunRecord>> {
        let mut out = Vec::new();
        self.each_run(since, &mut |r| {
            out.push(r);
            Ok(())
        })?;
        Ok(out)
    }

    fn each_run(
        &self,
        since: DateTime<Utc>,
        f: &mut dyn FnMut(RunRecord) -> Result<()>,
    ) -> Result<()> {
        let mut conn = self.conn()?;
        // One read transaction (WAL: writers go on meanwhile), one row at a time.
        let tx = conn.transaction().map_err(self.err("begin"))?;
        let mut stmt = tx
            .prepare_cached(&format!(
                "{RUN_COLUMNS} WHERE started_at >= ?1 ORDER BY started_at, id"
            ))
            .map_err(self.err("list runs"))?;
        let rows = stmt
            .query_map([time_to_us(since)], run_from_row)
            .map_err(self.err("list runs"))?;
        for row in rows {
            f(row.map_err(self.err("list runs"))??)?;
        }
        Ok(())
    }

    fn each_run_that_may_overlap(
        &self,
        since: DateTime<Utc>,
        f: &mut dyn FnMut(RunRecord) -> Result<()>,
    ) -> Result<()> {
        let since = time_to_us(since);
        let mut conn = self.conn()?;
        let tx = conn.transaction().map_err(self.err("begin"))?;
        let noted_from: i64 = tx
            .query_row(
                "SELECT value FROM meta WHERE key = 'outlived_since'",
                [],
                |r| r.get(0),
            )
            .map_err(self.err("read the report's bounds"))?;
        // Started runs' time ranges to read: before the noting began, all of them; then, from
        // each outliving run's token end to its end (open while it goes on).
        let mut ranges: Vec<(i64, i64)> = Vec::new();
        if since < noted_from {
            ranges.push((since, noted_from));
        }
        let mut outliving: Vec<i64> = Vec::new();
        {
            let mut st = tx
                .prepare_cached(
                    // CROSS JOIN: from the few noted runs to theirs, never the other way round.
                    "SELECT o.id, o.token_end, r.finished_at FROM outlived o CROSS JOIN runs r
                     ON r.id = o.id WHERE r.started_at >= ?1",
                )
                .map_err(self.err("list runs"))?;
            let rows = st
                .query_map([since], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, Option<i64>>(2)?,
                    ))
                })
                .map_err(self.err("list runs"))?;
            for row in rows {
                let (id, token_end, finished) = row.map_err(self.err("list runs"))?;
                outliving.push(id);
                // A run marked finished still counts up to its last heartbeat or so: the end
                // is widened to the end of time rather than guessed.
                ranges.push((
                    token_end.max(since),
                    finished.map_or(i64::MAX, |f| f.max(token_end) + 1),
                ));
            }
        }
        ranges.sort_unstable();
        let mut merged: Vec<(i64, i64)> = Vec::new();
        for (lo, hi) in ranges {
            match merged.last_mut() {
                Some((_, h)) if lo <= *h => *h = (*h).max(hi),
                _ => merged.push((lo, hi)),
            }
        }
        let mut runs: BTreeMap<i64, RunRecord> = BTreeMap::new();
        let mut add = |run: Result<RunRecord>| -> Result<()> {
            let run = run?;
            runs.insert(run.id.0, run);
            Ok(())
        };
        {
            let mut st = tx
                .prepare_cached(&format!(
                    "{RUN_COLUMNS} WHERE started_at >= ?1 AND started_at < ?2"
                ))
                .map_err(self.err("list runs"))?;
            for (lo, hi) in merged {
                let rows = st
                    .query_map([lo, hi], run_from_row)
                    .map_err(self.err("list runs"))?;
                for row in rows {
                    add(row.map_err(self.err("list runs"))?)?;
                }
            }
            let mut st = tx
                .prepare_cached(&format!("{RUN_COLUMNS} WHERE id = ?1"))
                .map_err(self.err("list runs"))?;
            for id in outliving {
                let rows = st
                    .query_map([id], run_from_row)
                    .map_err(self.err("list runs"))?;
                for row in rows {
                    add(row.map_err(self.err("list runs"))?)?;
                }
            }
        }
        let mut runs: Vec<RunRecord> = runs.into_values().collect();
        runs.sort_by_key(|r| (r.started_at, r.id.0));
        runs.into_iter().try_for_each(f)
    }

    fn note_skip(&self, job: &str, site: &SiteId) -> Result<()> {
        let conn = self.conn()?;
        conn.prepare_cached(
            "INSERT INTO skips (job, site, count, last_at) VALUES (?1, ?2, 1, ?3)
             ON CONFLICT(job, site) DO UPDATE SET count = count + 1, last_at = excluded.last_at",
        )
        .and_then(|mut s| s.execute(params![job, site.as_str(), time_to_us(self.now())]))
        .map_err(self.err("count skip"))?;
        Ok(())
    }

    fn run_stats(&self) -> Result<Vec<RunStats>> {
        let conn = self.conn()?;
        let mut stmt = conn
            .prepare_cached(
                "SELECT job, site, SUM(started), SUM(skipped), SUM(revoked), SUM(unfinished),
                        MAX(ls), MAX(lf), MAX(lfail), MAX(lok), MAX(lskip), MAX(sched) FROM (
                    SELECT job, site, started, 0 AS skipped, revoked, unfinished,
                        last_started_at AS ls, last_finished_at AS lf, last_failed AS lfail,
                        last_success_at AS lok, NULL AS lskip, schedule AS sched FROM run_counts
                    UNION ALL
                    SELECT job, site, 0, count, 0, 0, NULL, NULL, NULL, NULL, last_at, NULL
                    FROM skips
                 ) GROUP BY job, site ORDER BY job, site",
            )
            .map_err(self.err("run stats"))?;
        let rows = stmt
            .query_map([], |r| {
                let time = |i: usize| -> rusqlite::Result<Option<DateTime<Utc>>> {
                    Ok(r.get::<_, Option<i64>>(i)?.map(us_to_time))
                };
                let site = match SiteId::new(&r.get::<_, String>(1)?) {
                    Ok(site) => site,
                    Err(e) => {
                        return Ok(Err(Error::Corrupt {
                            what: "run registry".into(),
                            detail: e.to_string(),
                        }));
                    }
                };
                Ok(Ok(RunStats {
                    job: r.get(0)?,
                    site,
                    started: r.get::<_, i64>(2)? as u64,
                    skipped: r.get::<_, i64>(3)? as u64,
                    revoked: r.get::<_, i64>(4)? as u64,
                    unfinished: r.get::<_, i64>(5)? as u64,
                    last_started_at: time(6)?,
                    last_finished_at: time(7)?,
                    last_failed: r.get::<_, Option<bool>>(8)?,
                    last_success_at: time(9)?,
                    last_skip_at: time(10)?,
                    // A schedule this version cannot read is no schedule.
                    schedule: r.get::<_, Option<String>>(11)?.and_then(|s| s.parse().ok()),
                }))
            })
            .map_err(self.err("run stats"))?;
        rows.map(|row| row.map_err(self.err("run stats")).and_then(|r| r))
            .collect()
    }

    fn unfinished_runs_below(&self, below: FencingToken) -> Result<Vec<UnfinishedRun>> {
        let conn = self.conn()?;
        let mut stmt = conn
            .prepare_cached(&format!(
                "{RUN_COLUMNS} WHERE finished_at IS NULL AND token < ?1 ORDER BY id"
            ))
            .map_err(self.err("list unfinished runs"))?;
        let rows = stmt
            .query_map(params![below.0 as i64], run_from_row)
            .map_err(self.err("list unfinished runs"))?;
        rows.map(|r| {
            let run = r
                .map_err(self.err("list unfinished runs"))
                .and_then(|r| r)?;
            Ok(UnfinishedRun {
                pulse: Pulse::Counter { beats: run.beats },
                run,
            })
        })
        .collect()
    }

    fn run_mark_lost(&self, id: RunId, pulse: Pulse, outcome: &str) -> Result<bool> {
        let Pulse::Counter { beats } = pulse else {
            return Ok(false);
        };
        let conn = self.conn()?;
        let now = time_to_us(self.now());
        let n = conn
            .execute(
                "UPDATE runs SET finished_at = ?2, outcome = ?4
                 WHERE id = ?1 AND finished_at IS NULL AND beats = ?3",
                params![id.0, now, beats as i64, outcome],
            )
            .map_err(self.err("mark run lost"))?;
        Ok(n == 1)
    }
}

/// A run's columns, names looked up (`host`/`containment` hold the text of rows written
/// before v8); the one table in FROM, so that the WHERE clauses appended may say `id`.
const RUN_COLUMNS: &str = "SELECT id, job, site, token,
    COALESCE((SELECT name FROM run_names AS n WHERE n.id = runs.host_id), host),
    pid, started_at, heartbeat_at, finished_at, exit_code, outcome, beats,
    COALESCE((SELECT name FROM run_names AS n WHERE n.id = runs.containment_id), containment),
    schedule FROM runs";

fn run_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<RunRecord>> {
    let site: String = r.get(2)?;
    let site = match SiteId::new(&site) {
        Ok(s) => s,
        Err(e) => {
            return Ok(Err(Error::Corrupt {
                what: "run registry".into(),
                detail: e.to_string(),
            }));
        }
    };
    Ok(Ok(RunRecord {
        id: RunId(r.get(0)?),
        start: RunStart {
            job: r.get(1)?,
            site,
            token: FencingToken(r.get::<_, i64>(3)? as u64),
            host: r.get(4)?,
            pid: r.get(5)?,
            containment: r
                .get::<_, Option<String>>(12)?
                .and_then(|c| crate::run::Containment::from_name(&c)),
            // A schedule this version cannot read is no schedule (never an unreadable run).
            schedule: r.get::<_, Option<String>>(13)?.and_then(|s| s.parse().ok()),
        },
        started_at: us_to_time(r.get(6)?),
        heartbeat_at: match (r.get::<_, i64>(7)?, r.get::<_, Option<i64>>(8)?) {
            (0, Some(finished)) => us_to_time(finished),
            (beat, _) => us_to_time(beat),
        },
        finished_at: r.get::<_, Option<i64>>(8)?.map(us_to_time),
        exit_code: r.get(9)?,
        outcome: r.get(10)?,
        beats: r.get::<_, i64>(11)? as u64,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::RunRegistry;

    /// Every table the migrations create is one `refuse_foreign` knows as pra's: a new store
    /// is never taken for an application's database.
    #[test]
    fn every_table_of_the_schema_is_known_as_pra_s() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        drop(SqliteStore::open(&path, Arc::new(crate::SystemClock)).unwrap());
        let conn = Connection::open(&path).unwrap();
        let mut stmt = conn
            .prepare(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
            )
            .unwrap();
        let tables: Vec<String> = stmt
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        let mut known: Vec<&str> = PRA_TABLES.to_vec();
        known.sort_unstable();
        let mut found: Vec<&str> = tables.iter().map(String::as_str).collect();
        found.sort_unstable();
        assert_eq!(found, known);
        drop(stmt);
        drop(conn);
        SqliteStore::open(&path, Arc::new(crate::SystemClock)).unwrap();
    }

    /// v8 keeps a run's host and containment names once in `run_names` and a finished run's
    /// heartbeat as 0: runs written before (text names, a heartbeat time) read back as they
    /// were, new ones read back whole, and the new rows are smaller.
    #[test]
    fn the_v8_runs_keep_their_names_once_and_read_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let host = "app-rbx-01.example.net";
        {
            let conn = Connection::open(&path).unwrap();
            for sql in &MIGRATIONS[..7] {
                conn.execute_batch(sql).unwrap();
            }
            conn.pragma_update(None, "user_version", 7).unwrap();
            conn.execute(
                "INSERT INTO runs (job, site, token, host, pid, started_at, heartbeat_at,
                 finished_at, exit_code, outcome, containment) VALUES
                 ('a', 'rbx', 1, ?1, 7, 10, 15, 20, 0, 'exited 0', 'pid-namespace')",
                [host],
            )
            .unwrap();
        }
        let clock = Arc::new(crate::clock::ManualClock::new(us_to_time(1_000_000)));
        let store = SqliteStore::open(&path, clock.clone()).unwrap();
        crate::store::Store::change(
            &store,
            crate::SiteChange::Activate {
                site: SiteId::new("rbx").unwrap(),
                expect: FencingToken(0),
            },
            &crate::Actor::new("ops", "test").unwrap(),
        )
        .unwrap();
        let start = RunStart {
            job: "a".into(),
            site: SiteId::new("rbx").unwrap(),
            token: FencingToken(1),
            host: host.into(),
            pid: 8,
            containment: Some(crate::run::Containment::PidNamespace),
            schedule: None,
        };
        let mut ids = Vec::new();
        for _ in 0..3 {
            let id = match store.run_start(&start).unwrap() {
                Admission::Admitted { id, .. } => id,
                other => panic!("{other:?}"),
            };
            clock.advance(chrono::Duration::seconds(1));
            store.run_heartbeat(id).unwrap();
            clock.advance(chrono::Duration::seconds(1));
            ids.push(id);
        }
        assert!(store.run_finish(ids[0], Some(0), "exited 0").unwrap());
        assert!(store.run_finish(ids[1], Some(1), "exited 1").unwrap());
        let runs = store.runs(us_to_time(0)).unwrap();
        assert_eq!(runs.len(), 4);
        let old = &runs[0];
        assert_eq!(
            (
                old.start.host.as_str(),
                old.start.containment,
                old.heartbeat_at
            ),
            (
                host,
                Some(crate::run::Containment::PidNamespace),
                us_to_time(15)
            )
        );
        for r in &runs[1..] {
            assert_eq!(r.start.host, host);
            assert_eq!(
                r.start.containment,
                Some(crate::run::Containment::PidNamespace)
            );
        }
        // A finished run's heartbeat is its finish; an unfinished one's, its last beat.
        assert_eq!(runs[1].heartbeat_at, runs[1].finished_at.unwrap());
        assert_eq!(runs[2].heartbeat_at, runs[2].finished_at.unwrap());
        assert_eq!(runs[3].finished_at, None);
        assert_eq!(
            runs[3].heartbeat_at,
            runs[3].started_at + chrono::Duration::seconds(1)
        );
        drop(store);
        let conn = Connection::open(&path).unwrap();
        let names: i64 = conn
            .query_row("SELECT COUNT(*) FROM run_names", [], |r| r.get(0))
            .unwrap();
        assert_eq!(names, 2, "the host and the containment, once each");
        let (old_len, new_len): (i64, i64) = conn
            .query_row(
                "SELECT (SELECT length(host) + length(containment) FROM runs WHERE id = 1),
                        (SELECT length(host) + COALESCE(length(containment), 0) FROM runs WHERE id = 2)",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!((old_len, new_len), (35, 0));
    }

    /// A store written by a version before schedules (v6) gets its counters' latest times from
    /// its history when it is opened.
    #[test]
    fn the_v7_migration_fills_the_latest_times_from_the_history() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            let conn = Connection::open(&path).unwrap();
            for sql in &MIGRATIONS[..6] {
                conn.execute_batch(sql).unwrap();
            }
            conn.pragma_update(None, "user_version", 6).unwrap();
            // (job, site, started, finished, exit code, outcome), times in microseconds.
            for (job, site, start, end, code, outcome) in [
                ("a", "rbx", 10, Some(20), Some(0), Some("exited 0")),
                ("a", "rbx", 30, Some(40), Some(1), Some("exited 1")),
                ("a", "rbx", 50, None, None, None),
                ("a", "sbg", 5, Some(60), Some(0), Some("revoked")),
                ("b", "rbx", 7, Some(8), Some(0), Some("exited 0")),
            ] {
                conn.execute(
                    "INSERT INTO runs (job, site, token, host, pid, started_at, heartbeat_at,
                     finished_at, exit_code, outcome) VALUES (?1, ?2, 1, 'h', 1, ?3, ?3, ?4, ?5, ?6)",
                    params![job, site, start, end, code, outcome],
                )
                .unwrap();
            }
        }
        let store = SqliteStore::open(&path, Arc::new(crate::SystemClock)).unwrap();
        let stats = store.run_stats().unwrap();
        let of = |job: &str, site: &str| {
            stats
                .iter()
                .find(|s| s.job == job && s.site.as_str() == site)
                .unwrap()
        };
        let us = |n: i64| Some(us_to_time(n));
        let a = of("a", "rbx");
        assert_eq!((a.started, a.unfinished), (3, 1));
        assert_eq!(a.last_started_at, us(50));
        assert_eq!((a.last_finished_at, a.last_failed), (us(40), Some(true)));
        assert_eq!(a.last_success_at, us(20));
        let revoked = of("a", "sbg");
        assert_eq!(
            (revoked.last_failed, revoked.last_success_at),
            (Some(true), None)
        );
        let b = of("b", "rbx");
        assert_eq!((b.last_failed, b.last_success_at), (Some(false), us(8)));
    }
}
