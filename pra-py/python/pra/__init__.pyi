"""Type stubs of the pra package (checked by mypy.stubtest in `make test`)."""

from ._pra import ActiveSite as ActiveSite
from ._pra import Backup as Backup
from ._pra import BusyError as BusyError
from ._pra import ConflictError as ConflictError
from ._pra import RefusedError as RefusedError
from ._pra import CorruptError as CorruptError
from ._pra import Follower as Follower
from ._pra import Guard as Guard
from ._pra import InternalError as InternalError
from ._pra import InvalidArgumentError as InvalidArgumentError
from ._pra import InvalidTransitionError as InvalidTransitionError
from ._pra import JournalEntry as JournalEntry
from ._pra import NotFoundError as NotFoundError
from ._pra import PraError as PraError
from ._pra import PraIOError as PraIOError
from ._pra import PruneDecision as PruneDecision
from ._pra import RestorePreview as RestorePreview
from ._pra import RestoreReport as RestoreReport
from ._pra import StaleTokenError as StaleTokenError
from ._pra import StandbyError as StandbyError
from ._pra import RoleLostError as RoleLostError
from ._pra import Status as Status
from ._pra import Store as Store
from ._pra import StoreUnavailableError as StoreUnavailableError
from ._pra import UnsupportedError as UnsupportedError
from ._pra import Verdict as Verdict
from ._pra import __version__ as __version__
from ._pra import backup as backup
from ._pra import fence_admit as fence_admit
from ._pra import fence_install as fence_install
from ._pra import fence_sql as fence_sql
from ._pra import list_backups as list_backups
from ._pra import prune as prune
from ._pra import restore as restore
from ._pra import status as status

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
