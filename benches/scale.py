#!/usr/bin/env python3
"""The growth table of issue 19 on SQLite: time and peak RSS of each operation over stores with
more and more history, as ratios to an empty store (BENCHMARKS.md, "Growth with history").

Usage: scale.py [--runs 1000,100000,10000000] [--journal 1000,100000] [--rounds 5]
                [--year] [--check-only] [--backups N]
  PRA (default target/debug/pra) is the build measured.

The bulk loader writes history straight into the store, keeping it consistent the way pra's write
path would: runs go through the `runs` table's insert trigger (so the per job and site counters of
`run_counts` count them), spread over the history window so that none is pruned, and none
outlives its token (no flip while they run: the store's `outlived` notes stay empty, and say so
from the first run on); journal entries
are sealed and chained exactly as pra seals them (SHA-256 of the entry's compact JSON without its
hash, chained by prev_hash) and the record's journal_head anchored to the last one. After loading,
the store is checked against its own rows (counters = a GROUP BY of the runs) and with
`pra journal --verify`, before anything is measured. `--check-only` loads 1,000 runs and 1,000
entries and does only that check (`make test` runs it).

`--year` simulates a year at 200 jobs a minute with history_days = 30: the steady state keeps 30
days of runs (8.64 M) plus what is not pruned yet; it loads those runs plus two hours past the
window, lets `pra run` prune, and prints the store's size.
"""
import argparse
import hashlib
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pra_bench import store_env  # noqa: E402

PRA = os.environ.get("PRA", "target/debug/pra")
JOBS = 200
HOST = "app-rbx-01.example.net"
DAY_US = 86_400 * 1_000_000


def now_us():
    return int(time.time() * 1_000_000)


def load_runs(db, n, start_us, end_us, jobs=JOBS):
    """`n` finished runs of `jobs` jobs on rbx, started evenly between start_us and end_us."""
    if n == 0:
        return
    c = sqlite3.connect(db)
    c.execute("PRAGMA synchronous = OFF")
    # As pra writes a run (schema v8): the host and the containment (what a run started as
    # root gets) by id in `run_names`, a finished run's heartbeat as 0.
    c.executemany("INSERT OR IGNORE INTO run_names (name) VALUES (?)", [(HOST,), ("pid-namespace",)])
    host_id, = c.execute("SELECT id FROM run_names WHERE name = ?", (HOST,)).fetchone()
    cont_id, = c.execute("SELECT id FROM run_names WHERE name = 'pid-namespace'").fetchone()
    step = max(1, (end_us - start_us) // n)
    batch = 100_000
    for b in range(0, n, batch):
        rows = []
        for i in range(b, min(n, b + batch)):
            t = start_us + i * step
            rows.append((f"job-{i % jobs:04d}", t, t + 500_000, "exited 0" if i % 97 else "revoked"))
        c.executemany(
            "INSERT INTO runs (job, site, token, host, host_id, pid, started_at, heartbeat_at,"
            " finished_at, exit_code, outcome, beats, containment_id)"
            f" VALUES (?, 'rbx', 1, '', {host_id}, 4242, ?, 0, ?3, 0, ?4, 0, {cont_id})", rows)
        c.commit()
    # None of these runs outlived its token (no change of the record while they ran): what a
    # store noting them (schema v6) since before the first of them would hold.
    c.execute("UPDATE meta SET value = 0 WHERE key = 'outlived_since'")
    c.commit()
    c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    c.close()


def seal(entry):
    body = json.dumps(entry, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(body.encode()).hexdigest()


def load_journal(db, n):
    """Appends `n` entries (forced-drain events, which leave the record alone) to the journal,
    sealed and chained as pra does, and anchors the record to the last."""
    if n == 0:
        return
    c = sqlite3.connect(db)
    c.execute("PRAGMA synchronous = OFF")
    seq, prev, at = c.execute(
        "SELECT seq, hash, json_extract(body, '$.at') FROM journal ORDER BY seq DESC LIMIT 1").fetchone()
    rows = []
    for i in range(n):
        seq += 1
        e = {"seq": seq, "at": at, "by": "bench", "reason": "bulk load",
             "event": {"type": "drain_forced", "plan": "bench", "alive_runs": i}, "prev_hash": prev}
        e["hash"] = seal(e)
        prev = e["hash"]
        rows.append((seq, 0, json.dumps(e, separators=(",", ":")), prev))
    c.executemany("INSERT INTO journal (seq, at, body, hash) VALUES (?, ?, ?, ?)", rows)
    c.execute("UPDATE active_site SET journal_head = ? WHERE id = 1", (prev,))
    c.commit()
    c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    c.close()


def counts(db):
    """(the counters, the same counts from the rows), per job and site."""
    c = sqlite3.connect(db)
    counted = c.execute(
        "SELECT job, site, started, revoked, unfinished FROM run_counts ORDER BY job, site").fetchall()
    truth = c.execute(
        "SELECT job, site, COUNT(*), SUM(outcome IS 'revoked'), SUM(finished_at IS NULL)"
        " FROM runs GROUP BY job, site ORDER BY job, site").fetchall()
    c.close()
    return counted, truth


def check_consistent(db, env):
    """The store against its own rows (before any pruning): the counters are a GROUP BY of the
    runs, and the journal verifies (pra's own check of the chain and the record)."""
    counted, truth = counts(db)
    assert counted == truth, f"counters disagree with the runs: {counted[:3]} vs {truth[:3]}"
    r = subprocess.run([PRA, "journal", "--verify"], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def measured(args, env):
    """(milliseconds, peak RSS in MiB, exit code, stderr) of one `pra args` process. The peak
    comes from GNU time, whose own small process starts pra: a child forked from this Python
    would count Python's memory as its own until its exec."""
    t = time.perf_counter()
    r = subprocess.run(["/usr/bin/time", "-f", "maxrss %M", PRA] + args, env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    ms = (time.perf_counter() - t) * 1000
    err, _, last = r.stderr.rstrip("\n").rpartition("\n")
    if not last.startswith("maxrss "):
        err, last = r.stderr, "maxrss 0"
    return ms, int(last.split()[1]) / 1024, r.returncode, err


def median_peak(samples):
    """(median milliseconds, highest peak RSS) of `measured` samples."""
    return statistics.median(x[0] for x in samples), max(x[1] for x in samples)


OPS = [
    ("check", ["check"]),
    ("run -- true", ["run", "--job", "bench", "--", "true"]),
    ("metrics", ["metrics"]),
    ("plan report", ["plan", "report"]),
    ("journal --verify", ["journal", "--verify"]),
    ("status", ["status"]),
]


def measure(env, rounds):
    """Median time and peak RSS of each operation, then of a drain (once: it flips the site)."""
    out = {}
    for _ in range(rounds):
        for name, args in OPS:
            ms, rss, code, err = measured(args, env)
            assert code == 0, f"{name}: exit {code}: {err}"
            out.setdefault(name, []).append((ms, rss))
    for args in (["plan", "start-failover"], ["plan", "apply", "failover-decided", "--operator", "bench"],
                 ["plan", "apply", "execute-failover"]):
        subprocess.run([PRA] + args, env=env, check=True, capture_output=True)
    ms, rss, code, err = measured(["plan", "apply", "drained", "--no-wait"], env)
    assert code == 0, f"drain: exit {code}: {err}"
    out["drain"] = [(ms, rss)]
    return {k: (statistics.median(m for m, _ in v), max(r for _, r in v)) for k, v in out.items()}


def scratch(runs, entries):
    env, db = store_env(PRA)
    d = os.path.dirname(db)
    env = dict(env, PRA_HISTORY_DAYS="30")
    app = sqlite3.connect(env["PRA_DB"])
    app.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, body TEXT)")
    app.commit()
    app.close()
    subprocess.run([PRA, "backup"], env=env, check=True, capture_output=True)
    t = time.perf_counter()
    now = now_us()
    load_runs(db, runs, now - 29 * DAY_US, now - 60_000_000)
    load_journal(db, entries)
    loaded = time.perf_counter() - t
    check_consistent(db, env)
    return env, db, d, loaded


def size_mb(db):
    return sum(os.path.getsize(db + s) for s in ("", "-wal") if os.path.exists(db + s)) / 1e6


def growth(sizes, rounds):
    rows = []
    base = None
    for runs, entries, checkpoint in sizes:
        env, db, d, loaded = scratch(runs, entries)
        if checkpoint:
            archive = os.path.join(d, "journal-archive.jsonl")
            subprocess.run([PRA, "journal", "--checkpoint", "--archive", archive], env=env,
                           check=True, capture_output=True)
        before = size_mb(db)
        m = measure(env, rounds)
        base = base or m
        rows.append((runs, f"{entries:,}" + (" (checkpointed)" if checkpoint else ""), before, loaded, m))
        print(f"# {runs} runs, {entries} journal entries: loaded in {loaded:.1f} s, {before:.1f} MB", file=sys.stderr)
        shutil.rmtree(d)
    names = [n for n, _ in OPS] + ["drain"]
    print("| runs | journal entries | store MB | " + " | ".join(names) + " |")
    print("| --- | --- | --- | " + " | ".join("---" for _ in names) + " |")
    for runs, entries, mb, _, m in rows:
        cells = []
        for n in names:
            ms, rss = m[n]
            b_ms, b_rss = base[n]
            cells.append(f"{ms:.1f} ms ({ms / b_ms:.2f}x), {rss:.0f} MiB ({rss / b_rss:.2f}x)")
        print(f"| {runs:,} | {entries} | {mb:.1f} | " + " | ".join(cells) + " |")


def checkpointed(entries):
    """`pra journal --verify` on `entries` entries, before and after a checkpoint."""
    env, db, d, _ = scratch(0, entries)
    before = [measured(["journal", "--verify"], env) for _ in range(3)]
    archive = os.path.join(d, "journal-archive.jsonl")
    ms, rss, code, err = measured(["journal", "--checkpoint", "--archive", archive], env)
    assert code == 0, err
    after = [measured(["journal", "--verify"], env) for _ in range(3)]
    full = measured(["journal", "--verify", "--full", "--archive", archive], env)
    assert full[2] == 0, full[3]
    b, a = median_peak(before), median_peak(after)
    print(f"| {entries:,} | {b[0]:.1f} ms, {b[1]:.0f} MiB | {ms:.1f} ms | {a[0]:.1f} ms, {a[1]:.0f} MiB"
          f" | {full[0]:.1f} ms, {full[1]:.0f} MiB |")
    shutil.rmtree(d)


def year():
    """200 jobs a minute for a year with history_days = 30. Pruning keeps up as runs finish (256
    every 16th finish, 16 old runs per new one), so the store of any day of the year holds the
    window (30 days, 8.64 M runs) plus a backlog of a few hundred runs at most: this loads the
    window plus two hours past it (a backlog, as after an upgrade), lets `pra run` prune it, and
    prints the store's size."""
    per_day = 200 * 60 * 24
    env, db, d, loaded = scratch(0, 0)
    now = now_us()
    backlog = per_day // 12
    load_runs(db, backlog, now - 30 * DAY_US - 3 * 3600 * 1_000_000, now - 30 * DAY_US - 3600 * 1_000_000)
    load_runs(db, 30 * per_day, now - 30 * DAY_US + 60_000_000, now - 60_000_000)
    check_consistent(db, env)
    _, before = counts(db)
    full = size_mb(db)
    cutoff = now - 30 * DAY_US
    c = sqlite3.connect(db)
    old = c.execute("SELECT COUNT(*) FROM runs WHERE started_at < ?", (cutoff,)).fetchone()[0]
    c.close()
    n = old // 16 + 32
    t = time.perf_counter()
    for _ in range(n):
        ms, rss, code, err = measured(["run", "--job", "bench", "--", "true"], env)
        assert code == 0, err
    spent = time.perf_counter() - t
    c = sqlite3.connect(db)
    left = c.execute("SELECT COUNT(*) FROM runs WHERE started_at < ?", (cutoff,)).fetchone()[0]
    total = c.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
    free = c.execute("PRAGMA freelist_count").fetchone()[0] * c.execute("PRAGMA page_size").fetchone()[0] / 1e6
    c.close()
    # The counters of the loaded jobs are those their rows gave before pruning, exactly; the
    # `bench` job's runs, all recent, are all still there to count.
    counted, truth = counts(db)
    assert [r for r in counted if r[0] != "bench"] == before, "pruning changed the counters"
    assert [r for r in counted if r[0] == "bench"] == [r for r in truth if r[0] == "bench"]
    r = subprocess.run([PRA, "journal", "--verify"], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    print(f"year at 200 jobs/min, history_days=30: {total:,} runs kept; {old:,} past the window pruned by "
          f"{n} `pra run` ({spent:.0f} s, {spent / n * 1000:.0f} ms each), {left} left; store {size_mb(db):.0f} MB "
          f"({free:.0f} MB of it free pages SQLite reuses; {full:.0f} MB before pruning; "
          f"{size_mb(db) * 1e6 / total:.0f} bytes a run)")
    shutil.rmtree(d)


def backups(n, rounds):
    """`pra status` with `n` backups in a directory of their own: from the index `pra backup`
    keeps, and listing the directory (the index removed before each call)."""
    env, db, d, _ = scratch(0, 0)
    bdir = os.path.join(d, "backups")
    os.mkdir(bdir)
    env = dict(env, PRA_BACKUP_DIR=bdir)
    base = time.time() - 2 * 86_400
    for i in range(n):
        t = time.gmtime(base + i)
        open(os.path.join(bdir, time.strftime("backup-%Y-%m-%d-%H-%M-%S.db", t)), "w").close()
    subprocess.run([PRA, "backup"], env=env, check=True, capture_output=True)
    index = os.path.join(bdir, ".pra", "index.json")
    assert os.path.exists(index)
    fresh, listed = [], []
    for _ in range(rounds):
        fresh.append(measured(["status"], env))
        os.remove(index)
        listed.append(measured(["status"], env))
        # The listing wrote the index back.
        assert os.path.exists(index)
    f, l_ = median_peak(fresh), median_peak(listed)
    print(f"`pra status`, {n:,} backups: from the index {f[0]:.1f} ms, {f[1]:.0f} MiB; "
          f"listing the directory {l_[0]:.1f} ms, {l_[1]:.0f} MiB")
    shutil.rmtree(d)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", default="1000,100000,10000000")
    ap.add_argument("--journal", default="1000,100000")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--year", action="store_true")
    ap.add_argument("--check-only", action="store_true")
    ap.add_argument("--backups", type=int, default=0, help="only `pra status` over this many backups")
    a = ap.parse_args()
    if a.check_only:
        env, db, d, _ = scratch(1000, 1000)
        shutil.rmtree(d)
        print("bulk loader: 1,000 runs and 1,000 journal entries, store consistent")
        return
    if a.backups:
        backups(a.backups, a.rounds)
        return
    runs = [int(x) for x in a.runs.split(",") if x]
    entries = [int(x) for x in a.journal.split(",") if x]
    sizes = ([(0, 0, False)] + [(r, 0, False) for r in runs] + [(0, e, False) for e in entries]
             + [(0, e, True) for e in entries])
    growth(sizes, a.rounds)
    print()
    print("| journal entries | verify | checkpoint | verify after | verify --full with the archive |")
    print("| --- | --- | --- | --- | --- |")
    for e in entries:
        checkpointed(e)
    if a.year:
        year()


if __name__ == "__main__":
    main()
