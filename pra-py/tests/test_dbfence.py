"""The fences at the data in PostgreSQL and MariaDB (pra.fence_admit on psycopg / PyMySQL
connections, `pra fence`), against real servers started here (tests/servers.py). Ground truth
is what the tables hold, read back after the fact."""

import os
import random
import signal
import subprocess
import sys
import threading
import time

import psycopg
import pymysql
import pytest

import pra

sys.path.insert(0, os.path.dirname(__file__))
import servers  # noqa: E402

PRA = os.environ.get("PRA_BIN", "target/debug/pra")


def _mysql_kwargs(url):
    # mysql://pra:pra@127.0.0.1:PORT/pra
    hostport = url.split("@", 1)[1].split("/", 1)[0]
    host, port = hostport.rsplit(":", 1)
    return dict(host=host, port=int(port), user="pra", password="pra", database="pra")


@pytest.fixture(scope="module")
def pg():
    with servers.postgres() as url:
        yield url


@pytest.fixture(scope="module")
def my():
    with servers.mariadb() as url:
        yield url


class Db:
    """One server under test: how to connect, and its SQL for the work table."""

    def __init__(self, kind, url):
        self.kind, self.url = kind, url

    def connect(self):
        if self.kind == "pg":
            return psycopg.connect(self.url)  # not autocommit: a transaction opens at once
        return pymysql.connect(**_mysql_kwargs(self.url))  # autocommit off by default

    def reset(self, table):
        conn = self.connect()
        cur = conn.cursor()
        cur.execute(f"DROP TABLE IF EXISTS {table}")
        serial = "bigserial" if self.kind == "pg" else "BIGINT AUTO_INCREMENT"
        cur.execute(f"CREATE TABLE {table} (id {serial} PRIMARY KEY, round INT NOT NULL, token BIGINT NOT NULL)")
        conn.commit()
        pra.fence_install(conn)
        conn.close()

    def rows(self, table):
        conn = self.connect()
        cur = conn.cursor()
        cur.execute(f"SELECT round, token FROM {table} ORDER BY id")
        rows = [tuple(r) for r in cur.fetchall()]
        conn.rollback()
        conn.close()
        return rows

    def highest(self):
        conn = self.connect()
        cur = conn.cursor()
        cur.execute("SELECT token FROM pra_fence WHERE id = 1")
        (token,) = cur.fetchone()
        conn.rollback()
        conn.close()
        return int(token)

    def cli(self):
        return ["--pg", self.url] if self.kind == "pg" else ["--mysql", self.url]


@pytest.fixture(params=["pg", "my"])
def db(request):
    return Db(request.param, request.getfixturevalue(request.param))


def test_a_stale_token_is_refused_inside_the_writers_transaction(db):
    db.reset("work")
    conn = db.connect()
    cur = conn.cursor()
    high = 5 + db.highest()
    pra.fence_admit(conn, high)
    cur.execute("INSERT INTO work (round, token) VALUES (0, %s)", (high,))
    conn.commit()
    with pytest.raises(pra.StaleTokenError, match=f"stale fencing token {high - 2}: token {high} has already been admitted"):
        pra.fence_admit(conn, high - 2)
    conn.rollback()  # the driver's transaction is aborted: the app rolls back, as on any error
    cur.execute("INSERT INTO work (round, token) VALUES (1, %s)", (high,))
    pra.fence_admit(conn, high)  # the same token again: admitted
    conn.commit()
    assert db.rows("work") == [(0, high), (1, high)]
    # Installing again changes nothing, and nothing lowers the fence, not even a hand-made UPDATE.
    pra.fence_install(conn)
    assert db.highest() == high
    with pytest.raises(Exception, match="the fence only rises"):
        cur.execute("UPDATE pra_fence SET token = 1 WHERE id = 1")
    conn.rollback()
    conn.close()
    assert db.highest() == high


def test_an_autocommit_connection_is_refused_before_anything_is_admitted(db):
    db.reset("work")
    before = db.highest()
    conn = db.connect()
    if db.kind == "pg":
        conn.autocommit = True
    else:
        conn.autocommit(True)
    with pytest.raises(pra.InvalidArgumentError, match="inside the transaction"):
        pra.fence_admit(conn, before + 10)
    conn.close()
    assert db.highest() == before


def test_two_tokens_writing_concurrently_never_commit_the_stale_one_after_the_new(db):
    """Tokens t and t+2 race in every round, with random pauses around the admission: whatever
    the interleaving, no write of the lower token commits after one of the higher (the rows'
    ids are given under the fence's lock, so their order is the commit order)."""
    db.reset("race")
    rounds, refused = 40, 0
    base = db.highest()
    for r in range(rounds):
        low, high = base + 10 * r + 1, base + 10 * r + 3
        start = threading.Barrier(2)
        outcome = {}

        def job(token):
            conn = db.connect()
            cur = conn.cursor()
            start.wait()
            time.sleep(random.random() * 0.01)
            try:
                pra.fence_admit(conn, token)
                time.sleep(random.random() * 0.01)
                cur.execute("INSERT INTO race (round, token) VALUES (%s, %s)", (r, token))
                conn.commit()
                outcome[token] = "committed"
            except pra.StaleTokenError:
                conn.rollback()
                outcome[token] = "refused"
            finally:
                conn.close()

        threads = [threading.Thread(target=job, args=(t,)) for t in (low, high)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert outcome[high] == "committed"
        refused += outcome[low] == "refused"
        tokens = [t for (rr, t) in db.rows("race") if rr == r]
        assert high in tokens
        assert low not in tokens[tokens.index(high):], f"round {r}: {tokens}"
        assert (low in tokens) == (outcome[low] == "committed")
        assert db.highest() == high
    # Both orders happened (otherwise the test did not race anything).
    assert 0 < refused < rounds, f"{refused} of {rounds} stale writes refused"


JOB = r"""
import os, signal, sys, pra, psycopg, pymysql
kind, url, out = sys.argv[1], sys.argv[2], sys.argv[3]
if kind == "pg":
    conn = psycopg.connect(url)
else:
    h = url.split("@", 1)[1].split("/", 1)[0]
    conn = pymysql.connect(host=h.rsplit(":", 1)[0], port=int(h.rsplit(":", 1)[1]), user="pra", password="pra", database="pra")
token = int(os.environ["PRA_TOKEN"])
if len(sys.argv) > 4:  # the paused VM: freeze right before the write
    open(out + ".ready", "w").close()
    os.kill(os.getpid(), signal.SIGSTOP)
try:
    pra.fence_admit(conn, token)
    conn.cursor().execute("INSERT INTO vm (round, token) VALUES (0, %s)", (token,))
    conn.commit()
    result = f"committed {token}"
except pra.StaleTokenError as e:
    result = f"refused {e}"
open(out, "w").write(result)
"""


def _tree(root):
    """`root` and its descendants, parents first (seen from here, whatever pid namespace
    `pra run` put them in)."""
    children = {}
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                ppid = int(open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            children.setdefault(ppid, []).append(int(p))
    order, todo = [], [root]
    while todo:
        p = todo.pop(0)
        order.append(p)
        todo.extend(children.get(p, []))
    return order


def _running(pid, script):
    try:
        return open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")[1:2] == [script.encode()]
    except OSError:
        return False


def test_a_paused_vm_resuming_after_the_flip_has_its_write_refused(db, tmp_path):
    """The seed's Solution 1 gone wrong: the old site's VM is suspended mid-job (wrapper and
    job), the sites flip, the new site's job writes, then the VM resumes: the old job's write
    reaches the database and the fence refuses it."""
    db.reset("vm")
    store = f"sqlite://{tmp_path}/state.db"
    # A paused run is judged lost after 4 s (the flip's drain waits that long for it).
    (tmp_path / "pra.toml").write_text(
        "heartbeat_seconds = 1\nlost_after_seconds = 4\nrevoke_grace_seconds = 1\nstore_timeout_seconds = 1\n")
    env = dict(os.environ, PRA_STORE=store, PRA_CONFIG=str(tmp_path / "pra.toml"))
    job = tmp_path / "job.py"
    job.write_text(JOB)
    run = lambda *a: subprocess.run([PRA, *a], env=env, check=True, capture_output=True)  # noqa: E731
    # Tokens above whatever the fence holds already (other tests wrote it).
    run("site", "activate", "rbx", "--expect-token", "0", "--by", "test")
    token = 1
    while token <= db.highest():
        run("site", "deactivate", "--expect-token", str(token), "--by", "test")
        run("site", "activate", "rbx", "--expect-token", str(token + 1), "--by", "test")
        token += 2
    old_out = str(tmp_path / "old")
    marker = f"pra-vm-{os.getpid()}-{db.kind}"
    wrapper = subprocess.Popen([PRA, "run", "--site", "rbx", "--job", marker, "--",
                                sys.executable, str(job), db.kind, db.url, old_out, "pause"], env=env)
    deadline = time.monotonic() + 30
    while not os.path.exists(old_out + ".ready"):
        assert time.monotonic() < deadline and wrapper.poll() is None, "the old job never got ready"
        time.sleep(0.05)
    # The whole VM is paused: the wrapper, its supervisor processes and the job.
    vm = _tree(wrapper.pid)
    for pid in vm:
        os.kill(pid, signal.SIGSTOP)
    (job_pid,) = [p for p in vm if _running(p, str(job))]
    try:
        run("site", "deactivate", "--expect-token", str(token), "--by", "test")
        run("site", "activate", "sbg", "--expect-token", str(token + 1), "--by", "test")
        new_out = str(tmp_path / "new")
        run("run", "--site", "sbg", "--job", marker, "--", sys.executable, str(job), db.kind, db.url, new_out)
        assert open(new_out).read() == f"committed {token + 2}"
        # The VM resumes: the job's next instruction runs before its wrapper's next check.
        os.kill(job_pid, signal.SIGCONT)
        deadline = time.monotonic() + 30
        while not os.path.exists(old_out):
            assert time.monotonic() < deadline, "the old job did not finish"
            time.sleep(0.05)
    finally:
        for pid in vm:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        wrapper.wait(timeout=60)
    assert open(old_out).read().startswith(f"refused stale fencing token {token}: token {token + 2}")
    assert db.rows("vm") == [(0, token + 2)]


def test_pra_fence_from_a_shell_job(db):
    db.reset("work")
    high = db.highest()
    pra_fence = lambda *a, **kw: subprocess.run([PRA, "fence", *db.cli(), *a], capture_output=True, text=True, **kw)  # noqa: E731
    assert pra_fence("--install").returncode == 0
    ok = pra_fence("--token", str(high + 4))
    assert (ok.returncode, ok.stdout) == (0, ""), ok.stderr
    stale = pra_fence(env=dict(os.environ, PRA_TOKEN=str(high + 1)))
    assert stale.returncode == 6, stale
    assert stale.stdout == ""
    assert f"stale fencing token {high + 1}: token {high + 4} has already been admitted" in stale.stderr
    shown = pra_fence("--highest")
    assert shown.stdout.strip() == str(high + 4)
    # A server that is not there fails closed (exit 9), and a password never shows.
    (port,) = servers.free_ports(1)
    down = subprocess.run([PRA, "fence", "--mysql", f"mysql://pra:s3cret@127.0.0.1:{port}/pra", "--token", "1"],
                          capture_output=True, text=True)
    assert down.returncode == 9, down
    assert "s3cret" not in down.stderr and "pra:***@" in down.stderr


def test_the_install_sql_is_what_pra_prints():
    for db in ("postgres", "mysql"):
        printed = subprocess.run([PRA, "fence", "--sql", db], capture_output=True, text=True, check=True).stdout
        for statement in pra.fence_sql(db):
            assert statement in printed


def test_the_drill_with_its_job_writing_to_postgresql(pg):
    """`pra drill --job-db`: the drill's job writes its work and business rows in PostgreSQL
    through the fence, and the drill's checks read them back from there (ground truth)."""
    admin = psycopg.connect(pg, autocommit=True)
    admin.execute("CREATE DATABASE drill")
    admin.close()
    url = pg.rsplit("/", 1)[0] + "/drill"
    out = subprocess.run([PRA, "drill", "--quiet", "--json", "--job-db", url], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    import json
    report = json.loads(out.stdout)
    assert report["passed"], [c for c in report["checks"] if not c["pass"]]
    stale = [c for c in report["checks"] if c["name"].startswith("stale writes admitted")]
    assert stale and stale[0]["pass"] and "127.0.0.1" in stale[0]["name"]
    conn = psycopg.connect(url)
    rows = conn.execute("SELECT token FROM job_runs ORDER BY id").fetchall()
    work = conn.execute("SELECT count(*) FROM work").fetchone()[0]
    fence = conn.execute("SELECT token FROM pra_fence").fetchone()[0]
    conn.close()
    tokens = [t for (t,) in rows]
    assert tokens == sorted(tokens) and len(tokens) >= 2, tokens  # no stale write committed
    assert report["ground_truth"]["units"] == work > 0
    assert fence == tokens[-1]
    assert sum(j["job_rows_written"] for j in report["jobs"]) == len(tokens)


def test_the_fence_cannot_be_shadowed_deleted_or_replaced(db):
    """Red-team findings: a schema named after the user (first on PostgreSQL's default
    search_path) must neither shadow the fence nor get a second one from a reinstall; a DELETE,
    a TRUNCATE or a REPLACE INTO must not put it back at 0."""
    db.reset("work")
    high = db.highest() + 10
    conn = db.connect()
    pra.fence_admit(conn, high)
    conn.commit()
    cur = conn.cursor()
    if db.kind == "pg":
        cur.execute("CREATE SCHEMA IF NOT EXISTS pra")  # the user is `pra`: "$user" is on the path
        cur.execute("CREATE TABLE IF NOT EXISTS pra.pra_fence (id smallint PRIMARY KEY, token bigint, schema_version integer)")
        cur.execute("INSERT INTO pra.pra_fence VALUES (1, 0, 1) ON CONFLICT DO NOTHING")
        conn.commit()
        pra.fence_install(conn)  # the documented, idempotent upgrade
        with pytest.raises(pra.StaleTokenError):
            pra.fence_admit(conn, high - 5)
        for statement in ("DELETE FROM public.pra_fence", "TRUNCATE public.pra_fence"):
            with pytest.raises(Exception, match="the fence only rises"):
                cur.execute(statement)
            conn.rollback()
        cur.execute("DROP SCHEMA pra CASCADE")
        conn.commit()
    else:
        for statement in ("DELETE FROM pra_fence", "REPLACE INTO pra_fence VALUES (1, 0, 1)"):
            with pytest.raises(Exception, match="the fence only rises"):
                cur.execute(statement)
            conn.rollback()
    assert db.highest() == high
    # A refused admission takes the writes made before it in its transaction with it, on MySQL
    # too (where the server leaves the transaction open).
    cur.execute("INSERT INTO work (round, token) VALUES (99, %s)", (high - 5,))
    with pytest.raises(pra.StaleTokenError):
        pra.fence_admit(conn, high - 5)
    conn.commit()
    assert all(r != 99 for (r, _) in db.rows("work"))
    with pytest.raises(pra.InvalidArgumentError, match="2\\^63"):
        pra.fence_admit(conn, 2**63)
    conn.close()
    assert db.highest() == high
