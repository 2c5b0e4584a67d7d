"""pra.status() against the seed's pure-Python status, on the same files, in one process.

    python benches/status_compare.py DB BACKUP_DIR [ROUNDS]
Prints one line per contestant: the median of ROUNDS calls, and the ratio."""

import os
import statistics
import sqlite3
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
import pra  # noqa: E402
from seed_status import seed_status  # noqa: E402


def median_ms(f, rounds):
    f()
    samples = []
    for _ in range(rounds):
        t = time.perf_counter()
        f()
        samples.append((time.perf_counter() - t) * 1000)
    return statistics.median(samples)


def main():
    db, bdir = sys.argv[1], sys.argv[2]
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 20

    def count_only():
        conn = sqlite3.connect(db)
        conn.execute("SELECT count(*) FROM events").fetchone()
        conn.close()

    a = median_ms(lambda: pra.status(db, bdir).to_dict(), rounds)  # the document, as the seed's
    b = median_ms(lambda: seed_status(db, bdir), rounds)
    c = median_ms(count_only, rounds)
    assert pra.status(db, bdir).count == seed_status(db, bdir)["count"]
    print(f"pra.status()            {a:9.2f} ms")
    print(f"seed's Python /status    {b:9.2f} ms   pra is {b / a:.2f}x faster")
    print(f"SELECT count(*) alone   {c:9.2f} ms   pra costs {a / c:.2f}x the count")


if __name__ == "__main__":
    main()
