"""WSGI middleware that fences an HTTP service: a request carrying a ``Pra-Fencing-Token``
header (``pra run`` gives its job ``PRA_FENCING_HEADER``, for ``curl -H "$PRA_FENCING_HEADER"``)
is refused with 409 when a higher token has been seen; the highest token is kept in the
service's own SQLite file, under the same rule as ``pra.fence_admit``.

    app.wsgi_app = pra.wsgi.FencingMiddleware(app.wsgi_app, "/var/lib/myservice/fence.db")

The admission is made when the request arrives, in a transaction of its own: a stale request
that arrived before the newer one is let through. Anyone who can reach the service can raise
its fence with a high token: put it behind the service's own authentication. Where the service's writes must be refused
atomically, it admits ``request.environ["pra.fencing_token"]`` with ``pra.fence_admit`` in the
transaction of those writes instead.
"""

import json
import sqlite3
from typing import Any, Callable, Iterable, List, Optional, Tuple

from ._pra import StaleTokenError, fence_admit

#: The header's name, as pra-core's ``fencing::HTTP_HEADER``.
HEADER = "Pra-Fencing-Token"
_ENVIRON_KEY = "HTTP_" + HEADER.upper().replace("-", "_")

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict, StartResponse], Iterable[bytes]]


class FencingMiddleware:
    """Refuses requests whose ``Pra-Fencing-Token`` is lower than the highest one seen (409,
    with ``presented`` and ``highest`` in a JSON body) and a malformed token (400); with
    ``require=True``, a request without the header too (428). Admitted tokens are in
    ``environ["pra.fencing_token"]``."""

    def __init__(self, app: WSGIApp, db_path: str, *, require: bool = False) -> None:
        self.app = app
        self.db_path = db_path
        self.require = require

    def __call__(self, environ: dict, start_response: StartResponse) -> Iterable[bytes]:
        raw: Optional[str] = environ.get(_ENVIRON_KEY)
        if raw is None:
            if self.require:
                return _answer(start_response, "428 Precondition Required", {"error": f"the {HEADER} header is required"})
            return self.app(environ, start_response)
        try:
            text = raw.strip()
            # ASCII digits only (int() takes '+7', '1_000' and other scripts' digits), and below
            # 2^63 as every fence's token.
            if not (text.isascii() and text.isdigit()) or len(text) > 19 or int(text) >= 2**63:
                raise ValueError(raw)
            token = int(text)
        except ValueError:
            return _answer(start_response, "400 Bad Request", {"error": f"malformed {HEADER}: {raw!r}"})
        refused = self._admit(token)
        if refused is not None:
            return _answer(start_response, "409 Conflict",
                           {"error": "stale fencing token", "presented": token, "highest": refused, "message": f"stale fencing token {token}: token {refused} has already been admitted"})
        environ["pra.fencing_token"] = token
        return self.app(environ, start_response)

    def _admit(self, token: int) -> Optional[int]:
        """Admits `token`; the highest token when it is refused."""
        conn = sqlite3.connect(self.db_path, timeout=30)
        try:
            with conn:
                fence_admit(conn, token)
            return None
        except StaleTokenError:
            row = conn.execute("SELECT token FROM pra_fence WHERE id = 1").fetchone()
            return int(row[0])
        finally:
            conn.close()


def _answer(start_response: StartResponse, status: str, body: dict) -> List[bytes]:
    data = json.dumps(body).encode()
    headers: List[Tuple[str, str]] = [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
    start_response(status, headers)
    return [data]
