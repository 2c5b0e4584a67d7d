#!/usr/bin/env python3
"""pra metrics over N past runs, old and new binaries interleaved (BENCHMARKS.md, issue 19)."""
import os, sqlite3, subprocess, tempfile, time, statistics, sys
N = int(sys.argv[1])
def setup(binary):
    d = tempfile.mkdtemp(); open(f"{d}/pra.toml", "w").close()
    env = dict(os.environ, PRA_STORE=f"sqlite://{d}/s.db", PRA_SITE="rbx", PRA_SITES="rbx,sbg", PRA_CONFIG=f"{d}/pra.toml", PRA_DB=f"{d}/app.db", PRA_BACKUP_DIR=d)
    subprocess.run([binary, "site", "activate", "rbx", "--expect-token", "0", "--by", "b"], env=env, check=True, capture_output=True)
    c = sqlite3.connect(f"{d}/s.db")
    c.executemany("INSERT INTO runs (job, site, token, host, pid, started_at, heartbeat_at, finished_at, outcome) VALUES (?, 'rbx', 1, 'h', 1, ?, ?, ?, 'exited 0')",
                  ((f"job{i % 200}", i, i, i + 1) for i in range(N)))
    c.commit(); c.execute("PRAGMA wal_checkpoint(TRUNCATE)"); c.close()
    return env
# Two builds to compare: OLD_PRA and NEW_PRA (both default to this tree's debug build).
bins = {"old": os.environ.get("OLD_PRA", "target/debug/pra"), "new": os.environ.get("NEW_PRA", "target/debug/pra")}
envs = {k: setup(b) for k, b in bins.items()}
res = {k: [] for k in bins}
for _ in range(7):
    for k, b in bins.items():
        t = time.perf_counter(); r = subprocess.run([b, "metrics"], env=envs[k], capture_output=True); res[k].append((time.perf_counter() - t) * 1000)
        assert r.returncode == 0, r.stderr
for k, v in res.items(): print(f"{k} metrics with {N} runs: median {statistics.median(v):.1f} ms")
for cmd in (["check"], ["site", "show"], ["runs"] if False else ["journal"], ["metrics"]):
    for k, b in bins.items():
        ts = []
        for _ in range(5):
            t = time.perf_counter(); r = subprocess.run([b] + cmd, env=envs[k], capture_output=True); ts.append((time.perf_counter() - t) * 1000)
        print(k, cmd, f"{statistics.median(ts):.1f} ms", r.returncode)


