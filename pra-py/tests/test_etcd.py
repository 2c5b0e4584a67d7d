"""The pra Python module on etcd:// stores, against a real etcd server started here."""

import os
import shutil
import subprocess
import sys
import threading
import time

import pytest

import pra

sys.path.insert(0, os.path.dirname(__file__))
from servers import free_ports  # noqa: E402


@pytest.fixture(scope="module")
def etcd(tmp_path_factory):
    """host:port of a one-member etcd (Debian's etcd-server), killed after the module."""
    binary = os.environ.get("PRA_ETCD_BIN") or shutil.which("etcd")
    if not binary:
        pytest.fail("etcd is not installed: run `make apt-tools` (Debian's etcd-server)")
    d = tmp_path_factory.mktemp("etcd")
    log = open(d / "log", "wb")
    # A port can still be taken between the check and etcd's bind: a member that exits at
    # start is retried on fresh ports.
    for attempt in range(5):
        client, peer = free_ports(2)
        c, p = f"http://127.0.0.1:{client}", f"http://127.0.0.1:{peer}"
        proc = subprocess.Popen(
            [binary, "--name", "py", "--data-dir", str(d / f"data{attempt}"),
             "--listen-client-urls", c, "--advertise-client-urls", c,
             "--listen-peer-urls", p, "--initial-advertise-peer-urls", p,
             "--initial-cluster", f"py={p}"],
            stdout=log, stderr=log)
        endpoint = f"127.0.0.1:{client}"
        deadline = time.monotonic() + 30
        while proc.poll() is None:
            try:
                pra.Store(f"etcd://{endpoint}/ready").active()
                break
            except pra.StoreUnavailableError:
                if time.monotonic() > deadline:
                    proc.kill()
                    raise
                time.sleep(0.1)
        if proc.poll() is None:
            break
        proc.wait()
    else:
        pytest.fail(f"etcd did not start: {(d / 'log').read_text()[-2000:]}")
    try:
        yield endpoint
    finally:
        proc.kill()
        proc.wait()
        log.close()


def test_activation_journal_and_guard_on_etcd(etcd):
    store = pra.Store(f"etcd://{etcd}/py-guard")
    assert store.url == f"etcd://{etcd}/py-guard"
    assert (store.active().site, store.active().token) == (None, 0)
    assert store.activate("rbx", expect_token=0, by="alice", reason="go live").token == 1
    with pytest.raises(pra.RefusedError, match="break before make"):
        store.activate("sbg", expect_token=1, by="bob")
    # A second handle (another process would do the same) sees the same record.
    other = pra.Store(f"etcd://{etcd}/py-guard")
    assert other.active().site == "rbx"
    g = pra.Guard(other, "rbx", job="invoices")
    with g as verdict:
        assert verdict.token == 1
        g.heartbeat()  # keeps the run's etcd lease alive
    assert not pra.Guard(store, "sbg", job="invoices").check()
    store.deactivate(expect_token=1, by="bob")
    assert store.verify_journal() == 2
    assert [e.event["type"] for e in store.journal()] == ["site_changed", "site_changed"]


def test_an_unreachable_etcd_fails_closed_without_holding_the_gil():
    store = pra.Store("etcd://127.0.0.1:1/pra")  # nothing listens on port 1
    errors = []

    def check():
        try:
            pra.Guard(store, "rbx").check()
        except pra.PraError as e:
            errors.append(e)

    t = threading.Thread(target=check)
    started = time.monotonic()
    t.start()
    ticks = 0
    while t.is_alive():
        ticks += 1
        time.sleep(0.01)
    assert len(errors) == 1 and isinstance(errors[0], pra.StoreUnavailableError), errors
    assert "etcd://127.0.0.1:1/pra" in str(errors[0])
    assert time.monotonic() - started < 30
    # The main thread ran while the check waited on the network.
    assert ticks > 20


def test_store_timeouts_are_options():
    t = time.monotonic()
    store = pra.Store("etcd://127.0.0.1:1/pra", timeout=0.3)
    with pytest.raises(pra.StoreUnavailableError):
        store.active()
    assert time.monotonic() - t < 3
    for bad in ({"timeout": 0}, {"timeout": -1.0}, {"timeout": float("nan")},
                {"lost_after": 0.5}, {"lost_after": float("inf")}):
        with pytest.raises(pra.InvalidArgumentError):
            pra.Store("etcd://127.0.0.1:1/pra", **bad)
    with pytest.raises(TypeError):
        pra.Store("etcd://127.0.0.1:1/pra", timeout="5")


def test_an_etcd_store_used_after_fork_reopens_itself(etcd):
    """The etcd client's threads are not in a forked child: it must reopen, not hang."""
    store = pra.Store(f"etcd://{etcd}/py-fork")
    store.activate("rbx", expect_token=0, by="ops")
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = 0 if store.active().token == 1 and pra.Guard(store, "rbx").check().may_run else 3
        finally:
            os._exit(code)
    deadline = time.monotonic() + 20
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.waitstatus_to_exitcode(status) == 0
            break
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            pytest.fail("the forked child hung on the parent's etcd client")
        time.sleep(0.02)
    assert store.active().token == 1
