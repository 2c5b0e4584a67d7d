"""Type stubs of the pra._pra extension module (checked by mypy.stubtest in `make test`)."""

import datetime
import os
import sqlite3
from types import TracebackType
from typing import Any, Dict, List, Literal, Optional, Type, TypedDict, Union, overload

from typing_extensions import final

_Path = Union[str, "os.PathLike[str]"]

__version__: str
__all__ = [
    "ActiveSite",
    "Backup",
    "BusyError",
    "ConflictError",
    "RefusedError",
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
    "StaleTokenError",
    "StandbyError",
    "RoleLostError",
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

class PraError(Exception): ...
class InvalidArgumentError(PraError): ...
class NotFoundError(PraError): ...
class ConflictError(PraError): ...
class RefusedError(PraError): ...
class StaleTokenError(PraError): ...
class InvalidTransitionError(PraError): ...
class BusyError(PraError): ...
class StoreUnavailableError(PraError): ...
class CorruptError(PraError): ...
class UnsupportedError(PraError): ...
class PraIOError(PraError): ...
class InternalError(PraError): ...
class StandbyError(PraError): ...
class RoleLostError(StandbyError): ...

@final
class ActiveSite:
    @property
    def site(self) -> Optional[str]: ...
    @property
    def token(self) -> int: ...
    @property
    def changed_at(self) -> datetime.datetime: ...
    @property
    def changed_by(self) -> str: ...
    @property
    def reason(self) -> str: ...

@final
class Verdict:
    @property
    def may_run(self) -> bool: ...
    @property
    def token(self) -> int: ...
    @property
    def active(self) -> Optional[str]: ...
    def __bool__(self) -> bool: ...

@final
class Backup:
    @property
    def name(self) -> str: ...
    @property
    def path(self) -> str: ...
    @property
    def time(self) -> datetime.datetime: ...
    @property
    def size(self) -> int: ...
    @property
    def state(self) -> str: ...
    @property
    def problem(self) -> Optional[str]: ...
    @property
    def checksum(self) -> Optional[str]: ...
    @property
    def sha256(self) -> Optional[str]: ...
    @property
    def tables(self) -> Optional[Dict[str, int]]: ...

# A journal entry's event, by its "type" (stub only: at runtime, plain dicts).
class _RecordDict(TypedDict):
    site: Optional[str]
    token: int
    changed_at: datetime.datetime
    changed_by: str
    reason: str

class _SiteChanged(TypedDict):
    type: Literal["site_changed"]
    old: _RecordDict
    new: _RecordDict

_PlanStep = TypedDict(
    "_PlanStep",
    {"type": Literal["plan_step"], "plan": str, "from": str, "event": str, "to": str, "operator": Optional[str]},
)

class _DrainForced(TypedDict):
    type: Literal["drain_forced"]
    plan: str
    alive_runs: int

class _Checkpoint(TypedDict):
    type: Literal["checkpoint"]
    continues: str
    record: _RecordDict

_JournalEvent = Union[_SiteChanged, _PlanStep, _DrainForced, _Checkpoint]

@final
class JournalEntry:
    @property
    def seq(self) -> int: ...
    @property
    def at(self) -> datetime.datetime: ...
    @property
    def by(self) -> str: ...
    @property
    def reason(self) -> str: ...
    @property
    def event(self) -> _JournalEvent: ...
    @property
    def hash(self) -> str: ...

@final
class Store:
    def __new__(cls, url: str, *, timeout: float = ..., lost_after: float = ...) -> "Store": ...
    @property
    def url(self) -> str: ...
    def active(self) -> ActiveSite: ...
    def activate(
        self,
        site: str,
        *,
        expect_token: int,
        by: str,
        reason: str = ...,
        drain_timeout: Optional[float] = ...,
        force: bool = ...,
    ) -> ActiveSite: ...
    def deactivate(self, *, expect_token: int, by: str, reason: str = ...) -> ActiveSite: ...
    def journal(self) -> List[JournalEntry]: ...
    def verify_journal(self) -> int: ...

@final
class Guard:
    def __new__(
        cls, store: Store, site: str, *, job: Optional[str] = None, heartbeat: Optional[float] = None
    ) -> "Guard": ...
    def check(self) -> Verdict: ...
    @property
    def lost(self) -> Optional[str]: ...
    @property
    def token(self) -> Optional[int]: ...
    def ensure(self) -> None: ...
    def heartbeat(self) -> None: ...
    def __enter__(self) -> Verdict: ...
    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        _exc: Optional[BaseException],
        _tb: Optional[TracebackType],
    ) -> bool: ...

@final
class Follower:
    def __new__(
        cls,
        store: Store,
        site: str,
        *,
        job: str,
        heartbeat: Optional[float] = None,
        poll: Optional[float] = None,
    ) -> "Follower": ...
    def may_work(self) -> bool: ...
    def wait(self, timeout: Optional[float] = None) -> bool: ...
    @property
    def token(self) -> Optional[int]: ...
    @property
    def lost(self) -> Optional[str]: ...
    def release(self) -> None: ...
    def __enter__(self) -> "Follower": ...
    def __exit__(
        self,
        _exc_type: Optional[Type[BaseException]],
        _exc: Optional[BaseException],
        _tb: Optional[TracebackType],
    ) -> bool: ...

# The dicts that stay dicts: what the classes' to_dict() return, and a preview's tables. Stub
# only (private names: not in the module at runtime).
class _StatusDict(TypedDict):
    count: Optional[int]
    last_backup_file: Optional[str]
    backup_age_seconds: Optional[int]
    backup_count: int
    backup_state: Literal["ok", "warn", "critical", "none"]
    database_ok: bool
    active_site: Optional[str]
    token: Optional[int]
    problems: List[str]

class _PruneDict(TypedDict):
    name: str
    keep: bool
    reasons: List[str]

class _RestoreDict(TypedDict):
    backup: str
    safety_copy: Optional[str]
    replaced: bool
    tables: Dict[str, int]

class _TableChange(TypedDict):
    table: str
    current: Optional[int]
    backup: Optional[int]

class _PreviewDict(TypedDict):
    backup: str
    current_exists: bool
    tables: List[_TableChange]

@final
class Status:
    @property
    def count(self) -> Optional[int]: ...
    @property
    def last_backup_file(self) -> Optional[str]: ...
    @property
    def backup_age_seconds(self) -> Optional[int]: ...
    @property
    def backup_count(self) -> int: ...
    @property
    def backup_state(self) -> Literal["ok", "warn", "critical", "none"]: ...
    @property
    def database_ok(self) -> bool: ...
    @property
    def active_site(self) -> Optional[str]: ...
    @property
    def token(self) -> Optional[int]: ...
    @property
    def problems(self) -> List[str]: ...
    def to_dict(self) -> _StatusDict: ...

@final
class PruneDecision:
    @property
    def name(self) -> str: ...
    @property
    def keep(self) -> bool: ...
    @property
    def reasons(self) -> List[str]: ...
    def to_dict(self) -> _PruneDict: ...

@final
class RestoreReport:
    @property
    def backup(self) -> str: ...
    @property
    def safety_copy(self) -> Optional[str]: ...
    @property
    def replaced(self) -> bool: ...
    @property
    def tables(self) -> Dict[str, int]: ...
    def to_dict(self) -> _RestoreDict: ...

@final
class RestorePreview:
    @property
    def backup(self) -> str: ...
    @property
    def current_exists(self) -> bool: ...
    @property
    def tables(self) -> List[_TableChange]: ...
    def to_dict(self) -> _PreviewDict: ...

def status(
    db: _Path, backup_dir: _Path, table: str = "events", *, backup_interval: int = 60, store: Optional[Store] = None
) -> Status: ...
def backup(db: _Path, backup_dir: _Path) -> Backup: ...
def list_backups(backup_dir: _Path) -> List[Backup]: ...
def prune(
    backup_dir: _Path,
    *,
    keep_last: Optional[int] = None,
    keep_within: Optional[datetime.timedelta] = None,
    keep_hourly: Optional[int] = None,
    keep_daily: Optional[int] = None,
    keep_weekly: Optional[int] = None,
    keep_monthly: Optional[int] = None,
    dry_run: bool = False,
) -> List[PruneDecision]: ...
@overload
def restore(
    db: _Path,
    backup_dir: _Path,
    *,
    name: Optional[str] = None,
    before: Optional[datetime.datetime] = None,
    safety_copy: bool = True,
    dry_run: Literal[False] = False,
) -> RestoreReport: ...
@overload
def restore(
    db: _Path,
    backup_dir: _Path,
    *,
    name: Optional[str] = None,
    before: Optional[datetime.datetime] = None,
    safety_copy: bool = True,
    dry_run: Literal[True],
) -> RestorePreview: ...
@overload
def restore(
    db: _Path,
    backup_dir: _Path,
    *,
    name: Optional[str] = None,
    before: Optional[datetime.datetime] = None,
    safety_copy: bool = True,
    dry_run: bool = False,
) -> Union[RestoreReport, RestorePreview]: ...
# conn: an sqlite3.Connection, or a psycopg / psycopg2 / PyMySQL / mysqlclient connection.
def fence_admit(conn: Union[sqlite3.Connection, Any], token: int) -> int: ...
def fence_install(conn: Any) -> None: ...
def fence_sql(database: str) -> List[str]: ...
