#!/usr/bin/env python3
"""`pra metrics` (and, for scale, `check`, `site show`, `journal`) over N past runs, old and new
builds interleaved (BENCHMARKS.md, issue 19). The runs are written straight into the store's
table, then the WAL is checkpointed so that no build pays for it. Usage: metrics_history.py N"""
import sqlite3
import sys

from pra_bench import BUILDS, report, store_env, time_ms

N = int(sys.argv[1])


def with_history(binary):
    env, db = store_env(binary)
    c = sqlite3.connect(db)
    c.executemany(
        "INSERT INTO runs (job, site, token, host, pid, started_at, heartbeat_at, finished_at, outcome)"
        " VALUES (?, 'rbx', 1, 'h', 1, ?, ?, ?, 'exited 0')",
        ((f"job{i % 200}", i, i, i + 1) for i in range(N)))
    c.commit()
    c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    c.close()
    return env


envs = {name: with_history(b) for name, b in BUILDS.items()}
samples = {}
for _ in range(7):
    for args in (["metrics"], ["check"], ["site", "show"], ["journal"]):
        for name, b in BUILDS.items():
            samples.setdefault(f"{name} {' '.join(args)} ({N} runs)", []).append(time_ms(b, args, envs[name]))
report(samples)
