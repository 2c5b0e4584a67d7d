#!/usr/bin/env python3
"""`pra run -- true` against `pra check`, old and new builds interleaved, ROUNDS rounds
(BENCHMARKS.md, issue 19). Usage: run_overhead.py ROUNDS"""
import sys

from pra_bench import BUILDS, report, store_env, time_ms

envs = {name: store_env(b)[0] for name, b in BUILDS.items()}
samples = {}
for _ in range(int(sys.argv[1])):
    for name, b in BUILDS.items():
        for what, args in [("check", ["check"]), ("run", ["run", "--job", "bench", "--", "true"])]:
            samples.setdefault(f"{name} {what}", []).append(time_ms(b, args, envs[name]))
report(samples)
