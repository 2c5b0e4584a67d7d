#!/usr/bin/env python3
"""A nemesis campaign: the harness then the checker on every store, one after the other.

    campaign.py --minutes M [--seed S] [--stores sqlite,file,etcd1,etcd3] [--pra PATH] --out DIR
    campaign.py --expect-anomaly ...    succeed only if the checker reports overlap (a broken build)

M minutes in all are split evenly across the stores. The campaign seed S (NEMESIS_SEED; random
when not given) derives one seed per store; each store's run can be replayed alone with
`nemesis.py --store X --seed <its seed>`, or the whole campaign with the same S. The report
(DIR/report.md, DIR/report.json) lists every seed, the faults injected by kind, the operations
checked and the anomalies.
"""
import argparse
import json
import os
import random
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
STORES = ["sqlite", "file", "etcd1", "etcd3"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--stores", default=",".join(STORES))
    ap.add_argument("--pra", default=os.path.join(HERE, "..", "..", "target", "debug", "pra"))
    ap.add_argument("--out", required=True)
    ap.add_argument("--fault-interval", type=float, default=None,
                    help="mean seconds between two faults (nemesis.py's default: 1.5)")
    ap.add_argument("--expect-anomaly", action="store_true",
                    help="the build is deliberately broken: succeed only if overlap is reported")
    a = ap.parse_args()
    seed = a.seed if a.seed is not None else random.SystemRandom().randrange(2**31)
    stores = [s for s in a.stores.split(",") if s]
    per = a.minutes * 60 / len(stores)
    os.makedirs(a.out, exist_ok=True)
    derive = random.Random(seed)
    results = []
    t0 = time.monotonic()
    for store in stores:
        s = derive.randrange(2**31)
        d = os.path.join(os.path.abspath(a.out), store)
        cmd = [sys.executable, os.path.join(HERE, "nemesis.py"), "--store", store, "--seconds",
               str(per), "--seed", str(s), "--pra", a.pra, "--out", d]
        if a.fault_interval:
            cmd += ["--fault-interval", str(a.fault_interval)]
        print(f"== {store}: {per:.0f} s, seed {s}", flush=True)
        h = subprocess.run(cmd)
        if h.returncode != 0:
            results.append(dict(store=store, seed=s, harness_failed=h.returncode, anomalies=1,
                                anomalies_by_check={"harness": 1}))
            print(f"   harness failed: exit {h.returncode}", flush=True)
            continue
        c = subprocess.run([sys.executable, os.path.join(HERE, "checker.py"), d, "--json"],
                           stdout=subprocess.PIPE)
        try:
            r = json.loads(c.stdout)
        except ValueError:
            r = dict(store=store, seed=s, checker_failed=c.returncode, anomalies=1,
                     anomalies_by_check={"checker": 1})
        r["out"] = d
        results.append(r)
        subprocess.run([sys.executable, os.path.join(HERE, "checker.py"), d])
    report = dict(campaign_seed=seed, minutes=a.minutes, stores=stores, pra=a.pra,
                  wall_seconds=round(time.monotonic() - t0, 1), results=results)
    with open(os.path.join(a.out, "report.json"), "w") as f:
        json.dump(report, f, indent=1)
    with open(os.path.join(a.out, "report.md"), "w") as f:
        f.write(markdown(report))
    print(open(os.path.join(a.out, "report.md")).read())
    total = sum(r["anomalies"] for r in results)
    if a.expect_anomaly:
        seen = sum(r.get("anomalies_by_check", {}).get("overlap", 0) for r in results)
        if seen:
            print(f"expected: the broken build shows {seen} overlapping unit pairs")
            return 0
        print("FAIL: the broken build showed no overlap: the checker did not catch it")
        return 1
    return 0 if total == 0 else 1


def markdown(rep):
    rs = rep["results"]
    kinds = sorted({k for r in rs for k in r.get("faults", {})})
    out = [f"Nemesis campaign: seed {rep['campaign_seed']} (`NEMESIS_SEED`), "
           f"{rep['minutes']} min requested, {rep['wall_seconds']} s wall in all; pra: "
           f"`{rep['pra']}`\n\n"]
    head = "| | " + " | ".join(r["store"] for r in rs) + " |\n"
    out.append(head + "| --- " * (len(rs) + 1) + "|\n")

    def row(name, f):
        out.append(f"| {name} | " + " | ".join(str(f(r)) for r in rs) + " |\n")
    row("seed", lambda r: r["seed"])
    row("seconds under faults", lambda r: r.get("seconds", "-"))
    for k in kinds:
        row(f"fault: {k}", lambda r, k=k: r.get("faults", {}).get(k, 0))
    row("faults in all", lambda r: sum(r.get("faults", {}).values()))
    ops = ["history_units", "wrapper_runs", "fenced_writes", "fence_refused", "acked_writes",
           "flips", "plan_commands", "journal_verifications", "backups_ok",
           "longest_without_active_site_s"]
    for o in ops:
        row(o.replace("_", " "), lambda r, o=o: r.get("operations", {}).get(o, "-"))
    row("**anomalies**", lambda r: f"**{r['anomalies']}** {r.get('anomalies_by_check') or ''}")
    row("known limit: overlaps (lock file)", lambda r: (
        f"{r.get('known_limit_overlaps', 0)} pairs, {r.get('known_limit_overlap_seconds', 0)} s;"
        f" leftovers: {r.get('known_limit_leftovers', 0)}"
        if not r.get("registry", True) else "n/a (registry)"))
    return "".join(out)


if __name__ == "__main__":
    sys.exit(main())
