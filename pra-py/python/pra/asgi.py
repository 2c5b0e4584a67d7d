"""ASGI middleware that fences an HTTP service: the ASGI twin of ``pra.wsgi.FencingMiddleware``
(same header, same answers, same fence file), for Starlette, FastAPI, Quart...

    app = pra.asgi.FencingMiddleware(app, "/var/lib/myservice/fence.db")

The admission runs in a worker thread (it may wait on the fence file's lock).
"""

import asyncio
from typing import Any, Awaitable, Callable, Dict, List, MutableMapping, Optional, Tuple

from .wsgi import HEADER, FencingMiddleware as _Wsgi

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_NAME = HEADER.lower().encode()


class FencingMiddleware:
    """Refuses HTTP requests whose ``Pra-Fencing-Token`` is lower than the highest one seen
    (409), malformed (400), or missing with ``require=True`` (428); admitted tokens are in
    ``scope["pra.fencing_token"]``. Other scopes (websocket, lifespan) pass through."""

    def __init__(self, app: ASGIApp, db_path: str, *, require: bool = False) -> None:
        self.app = app
        self._fence = _Wsgi(lambda environ, start_response: [], db_path, require=require)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        raw: Optional[str] = None
        for name, value in scope.get("headers", []):
            if name.lower() == _NAME:
                raw = value.decode("latin-1")
        environ: Dict[str, Any] = {}
        if raw is not None:
            environ["HTTP_PRA_FENCING_TOKEN"] = raw
        answer: List[Tuple[str, List[Tuple[str, str]]]] = []

        def start_response(status: str, headers: List[Tuple[str, str]]) -> None:
            answer.append((status, headers))

        body = await asyncio.get_running_loop().run_in_executor(None, self._fence, environ, start_response)
        if answer:  # refused: the WSGI fence answered
            status, headers = answer[0]
            await send({"type": "http.response.start", "status": int(status.split()[0]),
                        "headers": [(k.lower().encode(), v.encode()) for k, v in headers]})
            await send({"type": "http.response.body", "body": b"".join(body)})
            return
        if "pra.fencing_token" in environ:
            scope["pra.fencing_token"] = environ["pra.fencing_token"]
        await self.app(scope, receive, send)


__all__ = ["FencingMiddleware", "HEADER"]
