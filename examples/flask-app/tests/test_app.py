"""The seed's Flask app with /status through pra: test client, a real server, and the CLI."""

import json
import os
import random
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

import pra

HERE = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(HERE))
from app import create_app  # noqa: E402

PRA_BIN = os.environ.get("PRA_BIN", str(HERE.parent.parent / "target" / "debug" / "pra"))


@pytest.fixture
def volumes(tmp_path):
    data, backup = tmp_path / "data", tmp_path / "backup"
    data.mkdir()
    backup.mkdir()
    return data / "app.db", backup


@pytest.fixture
def client(volumes):
    db, backup = volumes
    return create_app(str(db), str(backup)).test_client()


def test_events_and_status_with_the_seed_keys(client, volumes):
    db, backup = volumes
    assert client.post("/events", json={"body": "a"}).status_code == 201
    assert client.post("/events", json={"body": "b"}).status_code == 201
    assert client.post("/events", json={}).status_code == 400
    assert [e["body"] for e in client.get("/events").get_json()] == ["b", "a"]
    r = client.get("/status")
    assert r.status_code == 200
    s = r.get_json()
    assert list(s)[:3] == ["count", "last_backup_file", "backup_age_seconds"]
    assert (s["count"], s["last_backup_file"], s["backup_age_seconds"]) == (2, None, None)
    b = pra.backup(db, backup)
    s = client.get("/status").get_json()
    assert s["last_backup_file"] == b.name and 0 <= s["backup_age_seconds"] <= 5
    assert client.get("/healthz").get_json() == {"ok": True}


def test_status_matches_the_cli(client, volumes):
    db, backup = volumes
    for body in "xyz":
        client.post("/events", json={"body": body})
    pra.backup(db, backup)
    web = client.get("/status").get_json()
    env = {**os.environ, "PRA_DB": str(db), "PRA_BACKUP_DIR": str(backup), "PRA_STORE": f"sqlite://{db.parent}/state.db"}
    env.pop("PRA_CONFIG", None)
    cli = json.loads(subprocess.run([PRA_BIN, "status", "--json"], env=env, capture_output=True, text=True, check=True).stdout)
    for key in ["count", "last_backup_file", "backup_count", "backup_state", "database_ok"]:
        assert web[key] == cli[key], key
    assert abs(web["backup_age_seconds"] - cli["backup_age_seconds"]) <= 2


def test_503_with_a_reason_when_the_database_is_lost(client, volumes):
    db, _ = volumes
    client.post("/events", json={"body": "a"})
    for suffix in ["", "-wal", "-shm"]:
        p = Path(f"{db}{suffix}")
        if p.exists():
            p.unlink()
    r = client.get("/status")
    assert r.status_code == 503
    s = r.get_json()
    assert s["error"] == "database unavailable" and s["count"] is None and "does not exist" in s["problems"][0]
    assert "last_backup_file" in s and "backup_age_seconds" in s
    assert client.get("/healthz").status_code == 503
    assert client.post("/events", json={"body": "b"}).status_code == 503
    assert not db.exists(), "the app must not create an empty database in place of the lost one"


def free_port():
    """A loopback port free a moment ago, below the kernel's ephemeral range (32768-60999) so
    that no outgoing connection is handed it before the server binds it."""
    while True:
        port = random.randrange(20000, 32000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


def test_a_real_server_on_loopback(volumes):
    db, backup = volumes
    port = free_port()
    env = {**os.environ, "PRA_DB": str(db), "PRA_BACKUP_DIR": str(backup), "HOST": "127.0.0.1", "PORT": str(port)}
    env.pop("PRA_STORE", None)
    proc = subprocess.Popen([sys.executable, str(HERE / "app.py")], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                urllib.request.urlopen(f"{base}/healthz", timeout=1)
                break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.1)
        req = urllib.request.Request(f"{base}/events", data=b'{"body": "hello"}', headers={"Content-Type": "application/json"}, method="POST")
        assert urllib.request.urlopen(req, timeout=5).status == 201
        pra.backup(db, backup)
        with urllib.request.urlopen(f"{base}/status", timeout=5) as r:
            s = json.loads(r.read())
        assert s["count"] == 1 and s["last_backup_file"].startswith("backup-") and s["backup_age_seconds"] >= 0
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_every_acknowledged_write_survives_gunicorn_status_load_and_backups(volumes, tmp_path):
    """The app-database issue, as a user runs the seed's app: gunicorn with 4 workers, POSTs
    while /status is hammered and `pra backup` runs; every write answered 201 must be in the
    database afterwards, and no worker may crash. (Before the fix, pra's own SQLite in the
    workers dropped the app's locks: SIGBUS and lost acknowledged writes.)"""
    db, backup = volumes
    create_app(str(db), str(backup))  # creates the database and its table, as at start-up
    port = free_port()
    log = tmp_path / "gunicorn.log"
    env = {**os.environ, "PRA_DB": str(db), "PRA_BACKUP_DIR": str(backup)}
    env.pop("PRA_STORE", None)
    gunicorn = [sys.executable, "-m", "gunicorn", "--chdir", str(HERE), "-w", "4", "-b", f"127.0.0.1:{port}",
                "--log-file", str(log), "--log-level", "info", "app:create_app()"]
    server = subprocess.Popen(gunicorn, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    stop = threading.Event()
    acked, errors = [], []

    def post(worker):
        i = 0
        while not stop.is_set():
            body = json.dumps({"body": f"w{worker}-{i}"}).encode()
            req = urllib.request.Request(f"{base}/events", data=body, headers={"Content-Type": "application/json"}, method="POST")
            try:
                with urllib.request.urlopen(req, timeout=10) as r:
                    if r.status == 201:
                        acked.append(f"w{worker}-{i}")
            except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
                errors.append(repr(e))
            i += 1

    def hammer_status():
        while not stop.is_set():
            try:
                urllib.request.urlopen(f"{base}/status", timeout=10).read()
            except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
                errors.append(repr(e))

    def backups():
        benv = {**os.environ, "PRA_DB": str(db), "PRA_BACKUP_DIR": str(backup)}
        benv.pop("PRA_CONFIG", None)
        benv.pop("PRA_STORE", None)
        while not stop.is_set():
            subprocess.run([PRA_BIN, "backup"], env=benv, capture_output=True, timeout=60)
            time.sleep(0.2)

    try:
        for _ in range(200):
            try:
                urllib.request.urlopen(f"{base}/healthz", timeout=1)
                break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.05)
        threads = [threading.Thread(target=post, args=(w,)) for w in range(4)]
        threads += [threading.Thread(target=hammer_status) for _ in range(4)]
        threads.append(threading.Thread(target=backups))
        for t in threads:
            t.start()
        time.sleep(8)
        stop.set()
        for t in threads:
            t.join(timeout=60)
    finally:
        server.terminate()
        server.wait(timeout=30)
    text = log.read_text()
    for crash in ("was sent", "exited with code", "WORKER TIMEOUT"):
        assert crash not in text, text[-3000:]
    assert text.count("Booting worker") == 4, "a worker died and was replaced:\n" + text[-3000:]
    assert len(acked) > 50, f"too few writes went through: {len(acked)}; errors: {errors[:5]}"
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    stored = {b for (b,) in conn.execute("SELECT body FROM events")}
    lost = [b for b in acked if b not in stored]
    assert not lost, f"{len(lost)} of {len(acked)} acknowledged writes are not in the database"
    assert pra.list_backups(backup), "backups ran"
