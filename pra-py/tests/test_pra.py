"""The pra Python module: every function, every exception class, threads and the GIL."""

import datetime
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

import pra


@pytest.fixture
def store(tmp_path):
    return pra.Store(f"sqlite://{tmp_path}/state.db")


def make_db(path, rows=10, blob=16):
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY, body BLOB)")
    conn.executemany("INSERT INTO events (body) VALUES (randomblob(?))", [(blob,)] * rows)
    conn.commit()
    conn.close()


def test_version_and_exports():
    assert pra.__version__ == "0.1.0"
    for name in pra.__all__:
        assert hasattr(pra, name), name


def test_every_exception_is_a_pra_error():
    classes = [
        pra.InvalidArgumentError, pra.NotFoundError, pra.ConflictError, pra.RefusedError, pra.StaleTokenError,
        pra.InvalidTransitionError, pra.BusyError, pra.StoreUnavailableError, pra.CorruptError,
        pra.UnsupportedError, pra.PraIOError, pra.InternalError, pra.StandbyError,
    ]
    assert len(set(classes)) == len(classes)
    for cls in classes:
        assert issubclass(cls, pra.PraError) and issubclass(cls, Exception)
    assert pra.CorruptBackupError is pra.CorruptError


def test_store_activation_rules_and_record(store):
    r = store.active()
    assert (r.site, r.token) == (None, 0)
    r = store.activate("RBX", expect_token=0, by="alice", reason="go live")
    assert (r.site, r.token, r.changed_by, r.reason) == ("rbx", 1, "alice", "go live")
    assert r.changed_at.tzinfo is not None and r.changed_at.utcoffset() == datetime.timedelta(0)
    assert abs((datetime.datetime.now(datetime.timezone.utc) - r.changed_at).total_seconds()) < 60
    with pytest.raises(pra.RefusedError, match="break before make"):
        store.activate("sbg", expect_token=1, by="bob")
    with pytest.raises(pra.ConflictError, match="expected token 0"):
        store.deactivate(expect_token=0, by="bob")
    assert store.deactivate(expect_token=1, by="bob").site is None
    assert "ActiveSite(site='rbx'" in repr(r)


def test_store_journal_and_verification(store, tmp_path):
    store.activate("rbx", expect_token=0, by="alice")
    store.deactivate(expect_token=1, by="bob", reason="failover")
    j = store.journal()
    assert [e.seq for e in j] == [1, 2]
    assert j[1].by == "bob" and j[1].reason == "failover"
    assert j[1].event["type"] == "site_changed" and j[1].event["new"]["token"] == 2
    assert j[1].event["new"]["changed_at"] == j[1].at, "datetimes, not strings, in event dicts"
    assert j[1].event["old"]["changed_at"].tzinfo is not None
    assert isinstance(j[0].at, datetime.datetime) and len(j[0].hash) == 64
    assert store.verify_journal() == 2
    conn = sqlite3.connect(tmp_path / "state.db")
    conn.execute("UPDATE journal SET body = replace(body, 'alice', 'eve')")
    conn.commit()
    with pytest.raises(pra.CorruptError, match="entry 1"):
        store.verify_journal()


def test_store_errors(tmp_path):
    with pytest.raises(pra.InvalidArgumentError):
        pra.Store("mysql://x")
    with pytest.raises(pra.InvalidArgumentError):
        pra.Store("")
    (tmp_path / "dir.lock").mkdir()
    with pytest.raises(pra.StoreUnavailableError, match="directory"):
        pra.Store(f"file://{tmp_path}/dir.lock")
    (tmp_path / "open.lock").write_text("ACTIVE_SITE=SBG\n")
    os.chmod(tmp_path / "open.lock", 0o666)
    with pytest.raises(pra.StoreUnavailableError, match="world-writable"):
        pra.Store(f"file://{tmp_path}/open.lock")
    with pytest.raises(pra.StoreUnavailableError):
        pra.Store("sqlite:///nonexistent-dir/state.db")
    lock = tmp_path / "pra-status.lock"
    lock.write_text("ACTIVE_SITE SBG\n")
    s = pra.Store(f"file://{lock}")
    with pytest.raises(pra.CorruptError, match="line 1"):
        s.active()
    lock.write_text("ACTIVE_SITE=SBG\n")
    assert s.active().site == "sbg"
    # The lock-file store keeps no run registry: a job guard cannot register its run there.
    with pytest.raises(pra.UnsupportedError, match="run registry"):
        with pra.Guard(s, "sbg", job="invoices"):
            pytest.fail("the block must not run unregistered")
    with pytest.raises(pra.InvalidArgumentError):
        pra.Store(f"sqlite://{tmp_path}/s.db").activate("r b x", expect_token=0, by="x")
    with pytest.raises(pra.InvalidArgumentError, match="control"):
        pra.Store(f"sqlite://{tmp_path}/s.db").activate("rbx", expect_token=0, by="x\ny")


def test_wrong_argument_types_raise_type_error(store, tmp_path):
    with pytest.raises(TypeError):
        pra.Store(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        pra.Store(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        store.activate("rbx", expect_token="0", by="x")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        store.activate("rbx", 0, "x")  # type: ignore[misc]
    with pytest.raises(TypeError):
        pra.status(None, tmp_path)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        pra.prune(tmp_path, keep_last="3")  # type: ignore[arg-type]
    with pytest.raises(OverflowError):
        pra.prune(tmp_path, keep_last=-1)
    with pytest.raises(TypeError):
        pra.fence_admit(sqlite3.connect(":memory:"), "7")  # type: ignore[arg-type]


def test_guard_check_and_context_manager(store, tmp_path):
    g = pra.Guard(store, "rbx", job="invoices")
    v = g.check()
    assert not v and not v.may_run and v.active is None
    with pytest.raises(pra.StandbyError):
        with g:
            pytest.fail("the block must not run on a standby site")
    store.activate("rbx", expect_token=0, by="ops")
    assert g.check().may_run
    with g as verdict:
        assert verdict.token == 1
        g.heartbeat()
    with pytest.raises(RuntimeError):
        with g:
            raise RuntimeError("job failed")
    rows = sqlite3.connect(tmp_path / "state.db").execute(
        "SELECT job, site, token, exit_code, finished_at IS NOT NULL FROM runs ORDER BY id").fetchall()
    assert rows == [("invoices", "rbx", 1, 0, 1), ("invoices", "rbx", 1, 1, 1)]
    assert not pra.Guard(store, "sbg", job="invoices").check()
    with pytest.raises(pra.InvalidArgumentError):
        with pra.Guard(store, "rbx"):
            pass
    with pytest.raises(pra.InvalidArgumentError):
        pra.Guard(store, "../x")
    with pytest.raises(pra.InvalidArgumentError):
        pra.Guard(store, "")


def test_status_with_and_without_backups(tmp_path):
    db, bdir = tmp_path / "app.db", tmp_path / "backup"
    s = pra.status(db, bdir)
    assert list(s.to_dict())[:3] == ["count", "last_backup_file", "backup_age_seconds"]
    assert (s.count, s.last_backup_file, s.backup_age_seconds) == (None, None, None)
    assert s.database_ok is False and s.problems and s.backup_state == "none"
    make_db(db, 12)
    b = pra.backup(db, bdir)
    s = pra.status(str(db), str(bdir), "events")
    assert s.count == 12 and s.last_backup_file == b.name
    assert s.backup_age_seconds is not None and 0 <= s.backup_age_seconds < 60
    assert s.backup_state == "ok" and s.backup_count == 1 and s.database_ok and s.problems == []
    # The attributes are the document's keys, with the same values, in the document's order.
    d = s.to_dict()
    assert list(d) == [
        "count",
        "last_backup_file",
        "backup_age_seconds",
        "backup_count",
        "backup_state",
        "database_ok",
        "active_site",
        "token",
        "problems",
    ]
    assert d == {k: getattr(s, k) for k in d}
    assert repr(s).startswith("Status(count=12, ")
    with pytest.raises(pra.InvalidArgumentError):
        pra.status(db, bdir, "events; DROP TABLE events")
    store = pra.Store(f"sqlite://{tmp_path}/state.db")
    s = pra.status(db, bdir, store=store)
    assert (s.active_site, s.token) == ("none", 0)


def test_backup_list_prune_restore(tmp_path):
    db, bdir = tmp_path / "app.db", tmp_path / "backup"
    with pytest.raises(pra.NotFoundError):
        pra.backup(db, bdir)
    make_db(db, 5)
    first = pra.backup(db, bdir)
    assert first.state == "verified" and first.tables == {"events": 5}
    assert (first.checksum or "").startswith("blake3:") and len(first.checksum or "") == 7 + 64
    assert first.sha256 is None  # format 1 manifests only
    assert first.time.tzinfo is not None and os.path.isfile(first.path)
    # In the application's process: SQLite's online backup API, never a raw copy of the file
    # (closing a descriptor of our own would drop the app's POSIX locks on it).
    with open(first.path + ".json") as f:
        assert json.load(f)["method"] == "online_backup"
    make_db(db, 3)
    second = pra.backup(db, bdir)
    names = [b.name for b in pra.list_backups(bdir)]
    assert names == [second.name, first.name]
    # Prune: dry run, then for real; an empty policy is refused.
    with pytest.raises(pra.InvalidArgumentError):
        pra.prune(bdir)
    d = pra.prune(bdir, keep_last=1, dry_run=True)
    assert [x.keep for x in d] == [True, False] and d[0].reasons and d[1].reasons == []
    assert [x.name for x in d] == [second.name, first.name]
    assert d[0].to_dict() == {"name": second.name, "keep": True, "reasons": d[0].reasons}
    assert len(pra.list_backups(bdir)) == 2
    assert len(pra.prune(bdir, keep_within=datetime.timedelta(hours=1))) == 2
    # Restore: preview, refused names, a tampered backup, then for real.
    p = pra.restore(db, bdir, dry_run=True)
    assert isinstance(p, pra.RestorePreview) and p.backup == second.name and p.current_exists
    assert p.tables == [{"table": "events", "current": 8, "backup": 8}]
    assert p.to_dict() == {"backup": second.name, "current_exists": True, "tables": p.tables}
    with pytest.raises(pra.InvalidArgumentError):
        pra.restore(db, bdir, name="../../etc/passwd")
    with pytest.raises(pra.NotFoundError):
        pra.restore(db, bdir, before=datetime.datetime(2000, 1, 1, tzinfo=datetime.timezone.utc))
    r = pra.restore(db, bdir, name=first.name)
    assert isinstance(r, pra.RestoreReport) and r.replaced
    assert r.backup == first.name and r.tables == {"events": 5} and r.safety_copy and os.path.isfile(r.safety_copy)
    assert r.to_dict() == {"backup": first.name, "safety_copy": r.safety_copy, "replaced": True, "tables": {"events": 5}}
    data = bytearray(open(second.path, "rb").read())
    data[-10] ^= 0xFF
    open(second.path, "wb").write(bytes(data))
    with pytest.raises(pra.CorruptBackupError, match="checksum"):
        pra.restore(db, bdir, name=second.name)
    assert sqlite3.connect(db).execute("SELECT count(*) FROM events").fetchone() == (5,)


def test_restore_refused_while_the_app_holds_the_database(tmp_path):
    db, bdir = tmp_path / "app.db", tmp_path / "backup"
    make_db(db, 3)
    pra.backup(db, bdir)
    app = sqlite3.connect(db)
    app.execute("SELECT count(*) FROM events").fetchone()
    with pytest.raises(pra.BusyError, match="Stop the application"):
        pra.restore(db, bdir)
    app.close()
    pra.restore(db, bdir)


def test_fence_admit_inside_the_apps_transaction(tmp_path):
    conn = sqlite3.connect(tmp_path / "app.db", isolation_level=None)
    conn.execute("CREATE TABLE results (v TEXT)")
    conn.execute("BEGIN IMMEDIATE")
    assert pra.fence_admit(conn, 5) == 5
    conn.execute("INSERT INTO results VALUES ('new site')")
    conn.execute("COMMIT")
    # A job of the old site, token 3, tries to write after the flip.
    conn.execute("BEGIN IMMEDIATE")
    with pytest.raises(pra.StaleTokenError, match="token 5"):
        pra.fence_admit(conn, 3)
    conn.execute("ROLLBACK")
    assert conn.execute("SELECT v FROM results").fetchall() == [("new site",)]
    conn.execute("BEGIN IMMEDIATE")
    pra.fence_admit(conn, 6)
    conn.execute("ROLLBACK")
    assert conn.execute("SELECT token FROM pra_fence").fetchone() == (5,), "rolled back with the transaction"


def test_status_runs_in_other_threads_while_a_backup_runs(tmp_path):
    """The GIL is released during backup: other threads keep answering /status meanwhile."""
    db, bdir = tmp_path / "app.db", tmp_path / "backup"
    make_db(db, 60_000, 1000)  # ~60 MB
    done = threading.Event()
    results = []

    def run_backup():
        t = time.monotonic()
        results.append(pra.backup(db, bdir))
        results.append(time.monotonic() - t)
        done.set()

    calls = 0

    def poll():
        nonlocal calls
        while not done.is_set():
            pra.status(db, tmp_path / "none", "events")
            calls += 1

    threads = [threading.Thread(target=run_backup)] + [threading.Thread(target=poll) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert results and results[0].state == "verified"
    assert calls >= 3, f"only {calls} status calls completed during a {results[1]:.2f}s backup"


def test_guard_tells_the_block_when_the_role_is_lost(tmp_path):
    """The run issue: a Python job learns that its site lost the role while it runs."""
    url = f"sqlite://{tmp_path}/state.db"
    store = pra.Store(url, timeout=1.0, lost_after=3.0)
    ops = pra.Store(url)
    ops.activate("rbx", expect_token=0, by="ops")
    g = pra.Guard(store, "rbx", job="invoices", heartbeat=0.2)
    with g as verdict:
        assert g.token == verdict.token == 1
        assert g.lost is None
        g.ensure()
        ops.deactivate(expect_token=1, by="ops", reason="failover")
        deadline = time.monotonic() + 5
        while g.lost is None:
            assert time.monotonic() < deadline, "the guard never said the role was lost"
            time.sleep(0.05)
        assert "lost the active role" in g.lost
        with pytest.raises(pra.RoleLostError):
            g.ensure()
        assert issubclass(pra.RoleLostError, pra.StandbyError)
    outcome = sqlite3.connect(tmp_path / "state.db").execute(
        "SELECT outcome FROM runs").fetchone()[0]
    assert outcome.startswith("revoked")


def test_guard_losing_the_admission_race_is_standby_not_stale_token(tmp_path):
    """A flip between the guard's check and its registration makes the block standby."""
    url = f"sqlite://{tmp_path}/state.db"
    store = pra.Store(url, timeout=1.0, lost_after=3.0)
    flipper = pra.Store(url)
    stop = threading.Event()

    def flip():
        token = 0
        while not stop.is_set():
            token = flipper.activate("rbx", expect_token=token, by="ops").token
            token = flipper.deactivate(expect_token=token, by="ops").token

    t = threading.Thread(target=flip)
    t.start()
    ran = standby = 0
    try:
        for _ in range(300):
            try:
                with pra.Guard(store, "rbx", job="race", heartbeat=0.5):
                    ran += 1
            except pra.StandbyError:
                standby += 1
    finally:
        stop.set()
        t.join()
    assert ran + standby == 300 and standby > 0


def test_status_and_backup_keep_the_apps_locks(tmp_path):
    """The app-database issue: pra.status() and pra.backup() inside the app's process must not
    drop the app's POSIX locks (two SQLite libraries closing the same file do)."""
    db = tmp_path / "app.db"
    make_db(db, rows=50)
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode = DELETE")  # Python's and SQLite's default
    conn.execute("BEGIN")
    assert conn.execute("SELECT count(*) FROM events").fetchone() == (50,)  # SHARED lock held

    probe = (
        "import sqlite3, sys\n"
        "c = sqlite3.connect(sys.argv[1], timeout=0, isolation_level=None)\n"
        "try:\n"
        "    c.execute('BEGIN EXCLUSIVE')\n"
        "    print('got it')\n"
        "except sqlite3.OperationalError as e:\n"
        "    print('locked' if 'locked' in str(e) else e)\n"
    )

    def other_process_can_lock():
        out = subprocess.run([sys.executable, "-c", probe, str(db)], capture_output=True, text=True, timeout=30)
        return out.stdout.strip()

    assert other_process_can_lock() == "locked"
    s = pra.status(db, tmp_path / "backup")
    assert s.count == 50
    assert other_process_can_lock() == "locked", "pra.status() dropped the app's lock"
    pra.backup(db, tmp_path / "backup")
    assert other_process_can_lock() == "locked", "pra.backup() dropped the app's lock"
    conn.execute("COMMIT")
    assert (pra.status(db, tmp_path / "backup").last_backup_file or "").startswith("backup-")
    assert pra.list_backups(tmp_path / "backup")[0].state == "verified"


def test_fence_admit_under_pythons_default_isolation_level(tmp_path):
    """`with conn:` opens no transaction before the fence's read: fence_admit opens one, and the
    fence never goes down."""
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db)  # default isolation level
    conn.execute("CREATE TABLE results (v TEXT)")
    conn.commit()
    with conn:
        assert not conn.in_transaction
        pra.fence_admit(conn, 5)
        assert conn.in_transaction, "fence_admit must hold a transaction across its read and write"
        conn.execute("INSERT INTO results VALUES ('token 5')")
    # A stale token is refused, and the UPSERT can never lower the fence.
    with pytest.raises(pra.StaleTokenError):
        with conn:
            pra.fence_admit(conn, 3)
            conn.execute("INSERT INTO results VALUES ('token 3')")
    other = sqlite3.connect(db, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    other.execute("INSERT INTO pra_fence (id, token) VALUES (1, 2) ON CONFLICT(id) DO UPDATE SET token = max(token, excluded.token)")
    other.execute("COMMIT")
    assert conn.execute("SELECT token FROM pra_fence").fetchone() == (5,)
    assert conn.execute("SELECT v FROM results").fetchall() == [("token 5",)]
    # Refused in the transaction it opened itself, fence_admit does not leave it holding the
    # write lock.
    lone = sqlite3.connect(db)
    with pytest.raises(pra.StaleTokenError):
        pra.fence_admit(lone, 1)
    assert not lone.in_transaction
    # Racing processes: only non-decreasing tokens are ever admitted.
    script = (
        "import sqlite3, sys, pra\n"
        "c = sqlite3.connect(sys.argv[1], timeout=30)\n"
        "ok = 0\n"
        "for t in range(int(sys.argv[2]), 200, 2):\n"
        "    try:\n"
        "        with c:\n"
        "            pra.fence_admit(c, t)\n"
        "            c.execute('INSERT INTO results VALUES (?)', (str(t),))\n"
        "        ok += 1\n"
        "    except pra.StaleTokenError:\n"
        "        pass\n"
        "print(ok)\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", script, str(db), str(start)], stdout=subprocess.PIPE, text=True)
             for start in (6, 7)]
    for p in procs:
        assert p.wait(timeout=120) == 0
    admitted = [int(v) for (v,) in conn.execute("SELECT v FROM results ORDER BY rowid").fetchall()[1:]]
    assert admitted == sorted(admitted), "a lower token was admitted after a higher one"


def _in_child(fn, timeout=20):
    """Runs fn in a forked child; its exit status (0: ok), or fails if it hangs."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            fn()
            code = 0
        finally:
            os._exit(code)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.02)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    pytest.fail("the forked child hung using the parent's store")


def test_a_store_used_after_fork_reopens_itself(tmp_path):
    """gunicorn --preload, multiprocessing: the child reopens the store, never hangs."""
    store = pra.Store(f"sqlite://{tmp_path}/state.db")
    store.activate("rbx", expect_token=0, by="ops")
    g = pra.Guard(store, "rbx", job="forked")
    assert g.check().may_run

    def child():
        assert store.active().token == 1
        assert g.check().may_run
        with g:
            pass

    # Another thread is inside the store while the fork happens.
    stop = threading.Event()

    def busy():
        while not stop.is_set():
            store.active()

    t = threading.Thread(target=busy)
    t.start()
    try:
        for _ in range(3):
            assert _in_child(child) == 0
    finally:
        stop.set()
        t.join()
    runs = sqlite3.connect(tmp_path / "state.db").execute(
        "SELECT count(*) FROM runs WHERE finished_at IS NOT NULL").fetchone()
    assert runs == (3,), "each child registered and finished its run"
    store.deactivate(expect_token=1, by="ops")


def test_activation_drains_the_old_sites_runs(tmp_path):
    """Every flip drains: Store.activate waits for live runs of an older token."""
    url = f"sqlite://{tmp_path}/state.db"
    store = pra.Store(url, timeout=1.0, lost_after=3.0)
    store.activate("rbx", expect_token=0, by="ops")
    inside, release = threading.Event(), threading.Event()

    def job():
        with pra.Guard(store, "rbx", job="invoices", heartbeat=0.2):
            inside.set()
            release.wait(10)

    t = threading.Thread(target=job)
    t.start()
    assert inside.wait(5)
    store.deactivate(expect_token=1, by="ops")
    with pytest.raises(pra.BusyError, match="invoices"):
        store.activate("sbg", expect_token=2, by="ops", drain_timeout=0.5)
    with pytest.raises(pra.InvalidArgumentError, match="reason"):
        store.activate("sbg", expect_token=2, by="ops", force=True)
    release.set()
    t.join()
    assert store.activate("sbg", expect_token=2, by="ops").site == "sbg"


def test_the_python_defaults_are_pra_cores():
    """The signatures state their defaults as literals (Python shows them, stubtest checks the
    stubs against them); they must stay pra-core's."""
    import inspect

    from pra import _pra

    core = _pra._DEFAULTS
    store = inspect.signature(pra.Store).parameters
    status = inspect.signature(pra.status).parameters
    assert store["timeout"].default == core["timeout"]
    assert store["lost_after"].default == core["lost_after"]
    assert status["table"].default == core["table"]
    assert status["backup_interval"].default == core["backup_interval"]


def test_follower_works_only_while_the_site_holds_the_role(tmp_path):
    """`pra follow` in a worker: may_work() is True only while the site is active, each active
    period is one run under its token, and leaving the block records the end."""
    url = f"sqlite://{tmp_path}/state.db"
    store = pra.Store(url, timeout=1.0, lost_after=3.0)
    ops = pra.Store(url)
    db = sqlite3.connect(tmp_path / "state.db")
    with pra.Follower(store, "rbx", job="worker", heartbeat=0.2, poll=0.3) as f:
        assert not f.may_work() and f.token is None
        assert not f.wait(timeout=0.5)
        ops.activate("rbx", expect_token=0, by="ops")
        assert f.wait(timeout=5) and f.token == 1 and f.lost is None
        assert f.may_work()
        ops.deactivate(expect_token=1, by="ops", reason="failover")
        deadline = time.monotonic() + 5
        while f.may_work():
            assert time.monotonic() < deadline, "the follower never saw the role lost"
            time.sleep(0.05)
        assert f.token is None
        # Standby: asked in a loop, it stays False (it reads the record once per poll).
        start = time.monotonic()
        while time.monotonic() - start < 0.5:
            assert not f.may_work()
        ops.activate("rbx", expect_token=2, by="ops")
        assert f.wait(timeout=5) and f.token == 3
        assert "Follower(" in repr(f)
    runs = db.execute("SELECT token, outcome FROM runs ORDER BY id").fetchall()
    assert [t for t, _ in runs] == [1, 3], runs
    assert runs[0][1].startswith("revoked: ") and "lost the active role" in runs[0][1]
    assert runs[1][1] == "stopped"
    with pytest.raises(pra.UnsupportedError, match="run registry"):
        lock = tmp_path / "pra-status.lock"
        lock.write_text("ACTIVE_SITE=RBX\n")
        pra.Follower(pra.Store(f"file://{lock}"), "rbx", job="worker")


def test_a_misspelt_site_is_an_error_not_standby(tmp_path, monkeypatch):
    store = pra.Store(f"sqlite://{tmp_path}/state.db")
    with pytest.raises(pra.InvalidArgumentError, match='unknown site "rxb"'):
        pra.Guard(store, "rxb", job="j").check()
    with pytest.raises(pra.InvalidArgumentError, match="unknown site"):
        store.activate("rxb", expect_token=0, by="t")
    # The two sites are PRA_SITES when set, as for the command line.
    monkeypatch.setenv("PRA_SITES", "par,lyo")
    assert not pra.Guard(store, "par", job="j").check().may_run
    with pytest.raises(pra.InvalidArgumentError, match="par"):
        pra.Guard(store, "rbx", job="j").check()
