"""An internal HTTP service fenced by pra: a job on the old site that calls it after the flip
(a VM resumed from a pause, a retry queue drained late) is refused with 409.

Jobs call it through `pra run`, which gives them the header line:

    pra run --job invoices -- sh -c 'curl -fsS -X POST -H "$PRA_FENCING_HEADER" http://svc/invoices'

Run: FENCE_DB=/var/lib/svc/fence.db gunicorn 'service:create_app()'
"""

import os
from typing import List, Optional

import flask

import pra.wsgi


def create_app(fence_db: Optional[str] = None) -> flask.Flask:
    app = flask.Flask(__name__)
    invoices: List[int] = []

    @app.post("/invoices")
    def create_invoice():  # type: ignore[no-untyped-def]
        # The token the middleware admitted (None for a call without the header).
        invoices.append(flask.request.environ.get("pra.fencing_token"))
        return {"created": len(invoices)}

    @app.get("/invoices")
    def list_invoices():  # type: ignore[no-untyped-def]
        return {"tokens": invoices}

    app.wsgi_app = pra.wsgi.FencingMiddleware(  # type: ignore[method-assign]
        app.wsgi_app, fence_db or os.environ.get("FENCE_DB", "fence.db")
    )
    return app
