"""HTTP fencing: `pra run` hands the job its token as the Pra-Fencing-Token header line, and
pra.wsgi.FencingMiddleware refuses a request that carries a lower token than one it admitted."""

import json
import os
import subprocess
import sys

import pra
import pra.wsgi

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "../../examples/http-fence"))
from service import create_app  # noqa: E402

PRA = os.environ.get("PRA_BIN", "target/debug/pra")


def test_a_stale_token_is_refused_with_409_and_the_fence_never_lowers(tmp_path):
    client = create_app(str(tmp_path / "fence.db")).test_client()

    def writes():
        return client.get("/invoices").get_json()["tokens"]
    assert client.post("/invoices", headers={pra.wsgi.HEADER: "3"}).status_code == 200
    assert client.post("/invoices", headers={pra.wsgi.HEADER: "3"}).status_code == 200
    stale = client.post("/invoices", headers={pra.wsgi.HEADER: "1"})
    assert stale.status_code == 409
    body = json.loads(stale.data)
    assert (body["presented"], body["highest"]) == (1, 3)
    assert body["message"] == "stale fencing token 1: token 3 has already been admitted"
    assert client.post("/invoices", headers={pra.wsgi.HEADER: "5"}).status_code == 200
    assert client.post("/invoices", headers={pra.wsgi.HEADER: "3"}).status_code == 409
    assert writes() == [3, 3, 5]  # ground truth: what the handler did
    # Without the header the request passes (require=False), and a malformed token is a 400.
    assert client.post("/invoices").status_code == 200
    assert client.post("/invoices", headers={pra.wsgi.HEADER: "-2"}).status_code == 400
    assert client.post("/invoices", headers={pra.wsgi.HEADER: "x"}).status_code == 400
    # ASCII digits below 2^63 only: no '+7', '1_000', other scripts' digits, or a lock-out token.
    for odd in ["+7", "1_000", "\u0665", str(2**63), "9" * 40]:
        assert client.post("/invoices", headers={pra.wsgi.HEADER: odd}).status_code == 400, odd
    assert writes() == [3, 3, 5, None]


def test_require_refuses_requests_without_a_token(tmp_path):
    app = create_app(str(tmp_path / "fence.db"))
    app.wsgi_app.require = True
    client = app.test_client()
    assert client.post("/invoices").status_code == 428
    assert client.get("/invoices", headers={pra.wsgi.HEADER: "1"}).get_json() == {"tokens": []}


def test_pra_run_gives_the_job_the_header_line(tmp_path):
    env = dict(os.environ, PRA_STORE=f"sqlite://{tmp_path}/state.db", PRA_CONFIG=str(tmp_path / "none.toml"))
    (tmp_path / "none.toml").write_text("")
    subprocess.run([PRA, "site", "activate", "rbx", "--expect-token", "0", "--by", "t"], env=env, check=True, capture_output=True)
    out = subprocess.run([PRA, "run", "--site", "rbx", "--job", "h", "--", "sh", "-c", 'printf "%s" "$PRA_FENCING_HEADER"'],
                         env=env, check=True, capture_output=True, text=True).stdout
    assert out == f"{pra.wsgi.HEADER}: 1"


def test_the_asgi_middleware_answers_as_the_wsgi_one(tmp_path):
    import asyncio

    import pra.asgi

    seen = []

    async def app(scope, receive, send):
        seen.append(scope.get("pra.fencing_token"))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    fenced = pra.asgi.FencingMiddleware(app, str(tmp_path / "fence.db"))

    def call(token):
        headers = [] if token is None else [(b"pra-fencing-token", str(token).encode())]
        sent = []

        async def receive():
            return {"type": "http.request", "body": b""}

        async def send(message):
            sent.append(message)

        asyncio.run(fenced({"type": "http", "headers": headers}, receive, send))
        return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])

    assert call(3)[0] == 200
    status, body = call(2)
    assert status == 409 and json.loads(body)["highest"] == 3
    assert call("x")[0] == 400
    assert call(None)[0] == 200
    assert seen == [3, None]
