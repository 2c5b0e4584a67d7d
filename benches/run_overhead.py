#!/usr/bin/env python3
"""pra run -- true against pra check, old and new binaries interleaved (BENCHMARKS.md, issue 19)."""
import os, subprocess, sys, time, statistics, tempfile
d = tempfile.mkdtemp(); open(f"{d}/pra.toml", "w").close()
env = dict(os.environ, PRA_STORE=f"sqlite://{d}/s.db", PRA_SITE="rbx", PRA_SITES="rbx,sbg", PRA_CONFIG=f"{d}/pra.toml")
# Two builds to compare: OLD_PRA and NEW_PRA (both default to this tree's debug build).
bins = {"old": os.environ.get("OLD_PRA", "target/debug/pra"), "new": os.environ.get("NEW_PRA", "target/debug/pra")}
subprocess.run([bins["new"], "site", "activate", "rbx", "--expect-token", "0", "--by", "b"], env=env, check=True, capture_output=True)
res = {k: [] for k in ["old check", "old run", "new check", "new run"]}
for i in range(int(sys.argv[1])):
    for name, b in bins.items():
        for what, args in [("check", ["check"]), ("run", ["run", "--job", "bench", "--", "true"])]:
            t = time.perf_counter(); r = subprocess.run([b] + args, env=env, capture_output=True); dt = time.perf_counter() - t
            assert r.returncode == 0, r.stderr
            res[f"{name} {what}"].append(dt * 1000)
for k, v in res.items():
    print(f"{k:10s} median {statistics.median(v):6.1f} ms  min {min(v):6.1f}  max {max(v):6.1f}")
