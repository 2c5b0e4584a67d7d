"""Real database servers for the tests, started on loopback ports from Debian's packages:
PostgreSQL (postgresql) and MariaDB (mariadb-server), each in a scratch directory, killed at
the end. Never skipped: a missing server fails the test (`make apt-tools` installs them)."""

import glob
import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
from contextlib import contextmanager


def free_ports(n):
    """n loopback ports free a moment ago, below the kernel's ephemeral range (32768-60999) so
    that no outgoing connection is handed one before the server binds it."""
    ports = []
    while len(ports) < n:
        port = random.randrange(20000, 32000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        if port not in ports:
            ports.append(port)
    return ports


def _wait(proc, ready, what, log):
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        if ready():
            return True
        time.sleep(0.1)
    if proc.poll() is None:
        proc.kill()
        proc.wait()
        raise RuntimeError(f"{what} did not start in 60 s: {open(log).read()[-2000:]}")
    return False  # exited at start (a port taken meanwhile): the caller retries


def _scratch(owner):
    # Under /tmp itself: pytest's own tmp directories are 0700 root, which the postgres user
    # cannot traverse.
    d = tempfile.mkdtemp(prefix="pra-db-", dir="/tmp")
    os.chmod(d, 0o755)
    if owner:
        shutil.chown(d, owner, owner)
    return d


@contextmanager
def postgres():
    """Yields a libpq URL of a fresh PostgreSQL database (user `pra`, trust authentication)."""
    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not bins:
        raise RuntimeError("PostgreSQL is not installed: run `make apt-tools` (Debian's postgresql)")
    bindir = os.path.dirname(bins[-1])
    # PostgreSQL refuses to run as root: as the package's postgres user then.
    owner = "postgres" if os.geteuid() == 0 else None
    as_owner = ["runuser", "-u", owner, "--"] if owner else []
    d = _scratch(owner)
    log = os.path.join(d, "log")
    try:
        subprocess.run(as_owner + [f"{bindir}/initdb", "-D", f"{d}/data", "-U", "pra", "-A", "trust"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for _ in range(5):
            (port,) = free_ports(1)
            with open(log, "ab") as out:
                proc = subprocess.Popen(
                    as_owner + [f"{bindir}/postgres", "-D", f"{d}/data", "-p", str(port),
                                "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={d}",
                                "-c", "fsync=off"],
                    stdout=out, stderr=out)
            url = f"postgresql://pra@127.0.0.1:{port}/postgres"

            def ready():
                return subprocess.run([f"{bindir}/pg_isready", "-q", "-h", "127.0.0.1", "-p", str(port)]).returncode == 0

            if _wait(proc, ready, "PostgreSQL", log):
                break
        else:
            raise RuntimeError(f"PostgreSQL did not start: {open(log).read()[-2000:]}")
        try:
            yield url
        finally:
            proc.terminate()
            proc.wait()
    finally:
        shutil.rmtree(d, ignore_errors=True)


@contextmanager
def mariadb():
    """Yields a mysql:// URL of a fresh MariaDB database `pra` (user `pra`, password `pra`)."""
    server = shutil.which("mariadbd") or shutil.which("mariadbd", path="/usr/sbin")
    install = shutil.which("mariadb-install-db")
    if not server or not install:
        raise RuntimeError("MariaDB is not installed: run `make apt-tools` (Debian's mariadb-server)")
    d = _scratch(None)
    log = os.path.join(d, "log")
    user = ["--user=root"] if os.geteuid() == 0 else []
    sock = os.path.join(d, "sock")
    init = os.path.join(d, "init.sql")
    with open(init, "w") as f:
        f.write("CREATE DATABASE IF NOT EXISTS pra;\n"
                "CREATE USER IF NOT EXISTS 'pra'@'127.0.0.1' IDENTIFIED BY 'pra';\n"
                "GRANT ALL ON pra.* TO 'pra'@'127.0.0.1';\n")
    try:
        subprocess.run([install, "--no-defaults", *user, "--basedir=/usr", f"--datadir={d}/data",
                        "--auth-root-authentication-method=normal", "--skip-test-db"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for _ in range(5):
            (port,) = free_ports(1)
            with open(log, "ab") as out:
                proc = subprocess.Popen(
                    [server, "--no-defaults", *user, f"--datadir={d}/data", f"--port={port}",
                     "--bind-address=127.0.0.1", f"--socket={sock}", f"--pid-file={d}/pid",
                     f"--init-file={init}", "--skip-name-resolve", "--innodb-flush-log-at-trx-commit=0",
                     "--innodb-lock-wait-timeout=20"],
                    stdout=out, stderr=out)

            def ready():
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                        return "ready for connections" in open(log).read()
                except OSError:
                    return False

            if _wait(proc, ready, "MariaDB", log):
                break
        else:
            raise RuntimeError(f"MariaDB did not start: {open(log).read()[-2000:]}")
        try:
            yield f"mysql://pra:pra@127.0.0.1:{port}/pra"
        finally:
            proc.terminate()
            proc.wait()
    finally:
        shutil.rmtree(d, ignore_errors=True)
