"""pra: disaster recovery between two sites, safely and measurably.

The Rust extension ``pra._pra`` does the work; this package re-exports it.

- ``pra.status(db, backup_dir, table="events")``: the seed's ``/status`` document, a
  ``pra.Status`` (``to_dict()`` is the JSON document).
- ``pra.Store(url)``: the active-site record (``active``, ``activate``, ``deactivate``,
  ``journal``, ``verify_journal``).
- ``pra.Guard(store, site, job=...)``: ``check()``, or ``with guard as verdict:`` to run a block
  only on the active site, registered as a run.
- ``pra.Follower(store, site, job=...)``: ``pra follow`` inside a long-running worker:
  ``may_work()`` before each unit of work, ``wait()`` while standby.
- ``pra.backup``, ``pra.list_backups`` (``pra.Backup``), ``pra.prune`` (``pra.PruneDecision``),
  ``pra.restore`` (``pra.RestoreReport``; ``pra.RestorePreview`` with ``dry_run=True``).
- ``pra.fence_admit(conn, token)``: storage-side fencing inside the app's own transaction, on an
  ``sqlite3`` connection or a PostgreSQL / MySQL one (psycopg, psycopg2, PyMySQL, mysqlclient:
  install the fence there once with ``pra.fence_install(conn)``; ``pra.fence_sql(db)`` is the SQL).
- ``pra.wsgi.FencingMiddleware``: refuses HTTP requests carrying a stale ``Pra-Fencing-Token``.

Every error is a ``pra.PraError``; each kind has its own subclass.
"""

from ._pra import (
    ActiveSite,
    Backup,
    BusyError,
    ConflictError,
    RefusedError,
    CorruptError,
    Follower,
    Guard,
    InternalError,
    InvalidArgumentError,
    InvalidTransitionError,
    JournalEntry,
    NotFoundError,
    PraError,
    PraIOError,
    PruneDecision,
    RestorePreview,
    RestoreReport,
    RoleLostError,
    StaleTokenError,
    StandbyError,
    Status,
    Store,
    StoreUnavailableError,
    UnsupportedError,
    Verdict,
    __version__,
    backup,
    fence_admit,
    fence_install,
    fence_sql,
    list_backups,
    prune,
    restore,
    status,
)

#: The error a corrupt backup raises (an alias of CorruptError, which also covers lock files
#: and journals).
CorruptBackupError = CorruptError

__all__ = [
    "ActiveSite",
    "Backup",
    "BusyError",
    "ConflictError",
    "RefusedError",
    "CorruptBackupError",
    "CorruptError",
    "Follower",
    "Guard",
    "InternalError",
    "InvalidArgumentError",
    "InvalidTransitionError",
    "JournalEntry",
    "NotFoundError",
    "PraError",
    "PraIOError",
    "PruneDecision",
    "RestorePreview",
    "RestoreReport",
    "RoleLostError",
    "StaleTokenError",
    "StandbyError",
    "Status",
    "Store",
    "StoreUnavailableError",
    "UnsupportedError",
    "Verdict",
    "__version__",
    "backup",
    "fence_admit",
    "fence_install",
    "fence_sql",
    "list_backups",
    "prune",
    "restore",
    "status",
]
