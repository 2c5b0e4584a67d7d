"""Writer latency while a backup of a large database runs: p50/p99 of small committed
transactions, with no backup, during `pra backup`, during `sqlite3 db ".backup f"`, and during
`cp db f && sync f` (what the disk alone costs the writer: every commit's fsync queues behind
the copy's writeback).

    python benches/writer_impact.py DB PRA_BIN
"""

import os
import shutil
import statistics
import subprocess
import sqlite3
import sys
import tempfile
import threading
import time

# A backup still running after this many seconds is killed and reported as not finished (the
# sqlite3 CLI's .backup copies 100 pages at a time and restarts whenever another connection
# writes, so a steady writer can starve it).
LIMIT = 60


def writer(db, stop, lat):
    conn = sqlite3.connect(db, timeout=60, isolation_level=None)
    while not stop.is_set():
        t = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO events (body) VALUES (randomblob(100))")
        conn.execute("COMMIT")
        lat.append((time.perf_counter() - t) * 1000)
        time.sleep(0.002)
    conn.close()


def measure(db, label, cmd):
    stop, lat = threading.Event(), []
    th = threading.Thread(target=writer, args=(db, stop, lat))
    th.start()
    time.sleep(0.5)
    t = time.perf_counter()
    finished = True
    if cmd:
        try:
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, timeout=LIMIT)
        except subprocess.TimeoutExpired:
            finished = False  # subprocess.run killed it
    else:
        time.sleep(3)
    took = time.perf_counter() - t
    stop.set()
    th.join()
    q = statistics.quantiles(lat, n=100)
    note = "" if finished else f"   (did not finish in {LIMIT} s: killed)"
    print(f"{label:<28} backup {took:6.2f} s   writer p50 {q[49]:7.2f} ms   p99 {q[98]:8.2f} ms   max {max(lat):8.2f} ms   commits {len(lat)}{note}")


def main():
    db, pra = sys.argv[1], sys.argv[2]
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.close()
    out = tempfile.mkdtemp(dir=os.path.dirname(os.path.abspath(db)))
    try:
        measure(db, "no backup", None)
        measure(db, "during pra backup", ["env", f"PRA_DB={db}", f"PRA_BACKUP_DIR={out}/pra", pra, "backup"])
        measure(db, "during sqlite3 .backup", ["sqlite3", db, f".backup {out}/sqlite3.db"])
        measure(db, "during cp + sync", ["sh", "-c", f'cp "{db}" "{out}/cp.db" && sync "{out}/cp.db"'])
    finally:
        shutil.rmtree(out)


if __name__ == "__main__":
    main()
