"""The etcd growth table: how pra's registry reads cost as history grows, and how large etcd's
database gets per run of history.

Starts its own etcd (Debian's etcd-server, or $PRA_ETCD_BIN) on a scratch directory, with the
compaction flags README recommends, and for each size (runs of history: 0, 100 k, 1 M by
default; SIZES=0,1000 for a short run) gives a prefix of its own that holds:
- the record (rbx active), made by `pra site activate`;
- one real run made by `pra run`, whose finished record is the template of every loaded one;
- the bulk history, loaded through etcd's JSON gateway in transactions of 128 puts: as pra
  leaves it, each finished run under `runs/done/<start µs>/<id>` on the history lease (start times 0.3 s apart:
  200 jobs a minute, all inside the 30-day history window) and the per-job, per-site
  counters `runs/stats/<site>/<job>` (200 jobs) counting every loaded run, plus `skips/sbg/<job>`;
  `meta/outlived_since` before the first loaded run, no run before it (pra notes runs that
  outlive a token from the first change of the record on; the loaded runs outlived none).
Then times (wall clock and peak RSS of the whole `pra` process, from wait4; the median of 5
where a command can be repeated) check, run, metrics, the report before any plan (its window: all the history kept), and a whole failover (start-failover → failover-decided → execute-failover →
drained, the drain reading the registry) followed by the plan's report, and prints each as a ratio to the empty prefix.
Finally compacts and defragments etcd and prints its database size per loaded run.

    python3 benches/scale_etcd.py            # PRA=target/debug/pra by default
    SIZES=0,100000 python3 benches/scale_etcd.py
"""
import base64
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

PRA = os.environ.get("PRA", "target/debug/pra")
ETCD = os.environ.get("PRA_ETCD_BIN", shutil.which("etcd") or "etcd")
SIZES = [int(s) for s in os.environ.get("SIZES", "0,100000,1000000").split(",")]
PORT = int(os.environ.get("ETCD_PORT", "23790"))
JOBS = 200
REPS = 5
BATCH = 128  # etcd's default --max-txn-ops


def b64(s):
    return base64.b64encode(s if isinstance(s, bytes) else s.encode()).decode()


def gateway(path, body):
    req = urllib.request.Request(f"http://127.0.0.1:{PORT}/v3/{path}", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.load(r)


def get_prefix(prefix):
    end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
    r = gateway("kv/range", {"key": b64(prefix), "range_end": b64(end)})
    return [(base64.b64decode(kv["key"]).decode(), base64.b64decode(kv["value"]))
            for kv in r.get("kvs", [])]


def timed(args, env, ok=(0,)):
    """(milliseconds, peak RSS in MiB) of one `pra args` process."""
    with tempfile.TemporaryFile() as err:
        t = time.perf_counter()
        p = subprocess.Popen([PRA] + args, env=env, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(p.pid, 0)
        ms = (time.perf_counter() - t) * 1000
        p.returncode = code = os.waitstatus_to_exitcode(status)
        if code:
            print(f"pra {' '.join(args)}: exit {code}", file=sys.stderr)
        if code not in ok:
            err.seek(0)
            sys.exit(f"pra {' '.join(args)}: exit {code}: {err.read().decode()}")
    return ms, usage.ru_maxrss / 1024


def best(args, env):
    """The median time and the peak RSS of REPS runs of `pra args`."""
    samples = [timed(args, env) for _ in range(REPS)]
    return statistics.median(ms for ms, _ in samples), max(rss for _, rss in samples)


def load(prefix, n, template):
    """n finished runs and their counters, in transactions of BATCH puts."""
    now_us = int(time.time() * 1e6)
    step_us = 300_000  # 200 runs a minute
    started = {j: 0 for j in range(JOBS)}
    ops = []
    # As pra leaves them: on a history lease of the default 7-day window (granted for the
    # window plus an eighth, noted under runs/history/<window>/lease/ with the epoch it was
    # granted in), which etcd deletes them with.
    window = 7 * 86_400
    lease = int(gateway("lease/grant", {"TTL": window + window // 8})["ID"])
    gateway("kv/put", {"key": b64(f"{prefix}/runs/history/{window}/lease/{lease:020d}"),
                       "value": b64(json.dumps({"lease": lease, "epoch": 1}))})

    def flush():
        if ops:
            gateway("kv/txn", {"success": ops})
            ops.clear()

    for i in range(n):
        job = i % JOBS
        t_us = now_us - (n - i) * step_us
        rid = 10**15 + i
        at = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t_us / 1e6)) + f".{t_us % 10**6:06d}Z"
        rec = dict(template, id=rid, job=f"job{job:03d}", started_at=at, heartbeat_at=at,
                   finished_at=at)
        ops.append({"request_put": {"key": b64(f"{prefix}/runs/done/{t_us:020d}/{rid:020d}"),
                                    "value": b64(json.dumps(rec, separators=(",", ":"))),
                                    "lease": lease}})
        started[job] += 1
        if len(ops) == BATCH:
            flush()
    flush()
    # pra notes the runs that outlive a token from the first change of the record on; the
    # loaded runs outlived none (as runs do when flips drain), and noting began before them,
    # on a prefix with no run yet.
    first = now_us - n * step_us - 1_000_000
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(first / 1e6)) + f".{first % 10**6:06d}Z"
    gateway("kv/put", {"key": b64(f"{prefix}/meta/outlived_since"),
                       "value": b64(json.dumps({"since": since, "runs_before": False}))})
    for job, count in started.items():
        if count:
            ops.append({"request_put": {"key": b64(f"{prefix}/runs/stats/rbx/job{job:03d}"),
                                        "value": b64(json.dumps({"finished": count, "revoked": 0}))}})
            ops.append({"request_put": {"key": b64(f"{prefix}/skips/sbg/job{job:03d}"),
                                        "value": b64(json.dumps({"count": count, "last_at": "2026-01-01T00:00:00Z"}))}})
            if len(ops) >= BATCH - 1:
                flush()
    flush()


def db_size():
    gateway("kv/compaction", {"revision": gateway("kv/range", {"key": b64("x")})["header"]["revision"],
                           "physical": True})
    gateway("maintenance/defragment", {})
    return int(gateway("maintenance/status", {})["dbSize"])


def main():
    d = tempfile.mkdtemp()
    etcd = subprocess.Popen([ETCD, "--data-dir", f"{d}/data", "--name", "bench",
                             "--listen-client-urls", f"http://127.0.0.1:{PORT}",
                             "--advertise-client-urls", f"http://127.0.0.1:{PORT}",
                             "--listen-peer-urls", f"http://127.0.0.1:{PORT + 1}",
                             "--initial-advertise-peer-urls", f"http://127.0.0.1:{PORT + 1}",
                             "--initial-cluster", f"bench=http://127.0.0.1:{PORT + 1}",
                             "--auto-compaction-mode=periodic", "--auto-compaction-retention=1h"],
                            stdout=subprocess.DEVNULL, stderr=open(f"{d}/etcd.log", "w"))
    try:
        for _ in range(100):
            try:
                gateway("maintenance/status", {})
                break
            except OSError:
                time.sleep(0.1)
        rows, sizes = {}, [(0, db_size())]
        for n in SIZES:
            prefix = f"/bench{n}"
            open(f"{d}/pra.toml", "w").close()
            env = dict(os.environ, PRA_STORE=f"etcd://127.0.0.1:{PORT}{prefix}", PRA_SITE="rbx",
                       PRA_SITES="rbx,sbg", PRA_CONFIG=f"{d}/pra.toml", PRA_DB=f"{d}/app.db",
                       PRA_BACKUP_DIR=d)
            timed(["site", "activate", "rbx", "--expect-token", "0", "--by", "bench"], env)
            timed(["run", "--job", "template", "--", "true"], env)
            (_, template), = get_prefix(f"{prefix}/runs/done/")
            template = json.loads(template)
            t = time.perf_counter()
            load(prefix, n, template)
            print(f"{n} runs loaded in {time.perf_counter() - t:.1f} s", file=sys.stderr)
            sizes.append((n, db_size()))
            # pra must count what was loaded as its own (the template run included).
            metrics = subprocess.run([PRA, "metrics"], env=env, check=True, capture_output=True,
                                     text=True).stdout
            started = sum(int(line.split()[-1]) for line in metrics.splitlines()
                          if line.startswith("pra_runs_started_total"))
            assert started == n + 1, f"pra counts {started} runs, {n + 1} were made"
            sbg = dict(env, PRA_SITE="sbg")
            row = {
                "check": best(["check"], env),
                "run": best(["run", "--job", "job000", "--", "true"], env),
                "metrics": best(["metrics"], env),
                "report, no plan yet": timed(["plan", "report"], env, ok=range(256)),
                "start-failover": timed(["plan", "start-failover", "--by", "b", "--reason", "x"], sbg),
                "failover-decided": timed(["plan", "apply", "failover-decided", "--operator", "b"], sbg),
                "execute-failover": timed(["plan", "apply", "execute-failover"], sbg),
                "drained (the drain)": timed(["plan", "apply", "drained", "--no-wait"], sbg),
                "check on sbg": timed(["check"], sbg),
                "report (after it)": best(["plan", "report"], sbg),
            }
            rows[n] = row
        base = rows[SIZES[0]]
        print(f"{'':22s}" + "".join(f"{n:>26d}" for n in SIZES))
        for what in base:
            cells = []
            for n in SIZES:
                ms, rss = rows[n][what]
                cells.append(f"{ms:7.0f} ms {rss:5.0f} MiB ({ms / base[what][0]:4.1f}×)")
            print(f"{what:22s}" + "".join(f"{c:>26s}" for c in cells))
        # Each size has a prefix of its own in the one etcd: what a size adds is its own.
        for (_, s0), (n1, s1) in zip(sizes, sizes[1:]):
            per = (s1 - s0) / n1 if n1 else 0
            print(f"etcd db after {n1} runs of history: {s1 / 2**20:.1f} MiB in all, "
                  f"{(s1 - s0) / 2**20:.1f} MiB for this prefix ({per:.0f} B per run)")
    finally:
        etcd.terminate()
        etcd.wait()
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
