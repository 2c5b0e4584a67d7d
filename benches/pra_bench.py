"""Helpers of the side-by-side scripts: a scratch SQLite store per build, and timings of whole
`pra` processes. Two builds are compared: OLD_PRA and NEW_PRA (both default to this tree's
debug build); each gets a store of its own, so that builds of different schema versions can be
compared."""
import os
import statistics
import subprocess
import tempfile
import time

BUILDS = {
    "old": os.environ.get("OLD_PRA", "target/debug/pra"),
    "new": os.environ.get("NEW_PRA", "target/debug/pra"),
}


def store_env(binary):
    """The environment of a new scratch store on which `binary` made rbx active (token 1), and
    the store's database path."""
    d = tempfile.mkdtemp()
    open(f"{d}/pra.toml", "w").close()
    env = dict(os.environ, PRA_STORE=f"sqlite://{d}/s.db", PRA_SITE="rbx", PRA_SITES="rbx,sbg",
               PRA_CONFIG=f"{d}/pra.toml", PRA_DB=f"{d}/app.db", PRA_BACKUP_DIR=d)
    subprocess.run([binary, "site", "activate", "rbx", "--expect-token", "0", "--by", "bench"],
                   env=env, check=True, capture_output=True)
    return env, f"{d}/s.db"


def time_ms(binary, args, env):
    """Milliseconds of one `binary args` process, which must succeed."""
    t = time.perf_counter()
    r = subprocess.run([binary] + args, env=env, capture_output=True)
    ms = (time.perf_counter() - t) * 1000
    assert r.returncode == 0, r.stderr
    return ms


def report(samples):
    """One line per timed thing: median, min and max."""
    for name, v in samples.items():
        print(f"{name:28s} median {statistics.median(v):7.1f} ms  min {min(v):7.1f}  max {max(v):7.1f}")
