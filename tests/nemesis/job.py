#!/usr/bin/env python3
"""A nemesis job: a process tree doing units of work and recording each one in a history file.

Usage (through `pra run`, which sets PRA_SITE / PRA_TOKEN / PRA_JOB):
    job.py HISTORY JOB UNITS

The tree is the kind pra must contain: the script ignores SIGTERM, forks a worker that calls
setsid(), and double-forks a daemonized worker. Every process records each 50 ms unit it finished
as one JSON line (site, token, job, pid, role, start/end on the monotonic and the wall clock),
appended with O_APPEND in a single write(2), so lines from concurrent writers never interleave.
"""
import json
import os
import signal
import sys
import time

UNIT = 0.05


def work(history, job, units, role):
    site = os.environ.get("PRA_SITE", "?")
    token = int(os.environ.get("PRA_TOKEN", "0") or 0)
    fd = os.open(history, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    for i in range(units):
        m0, w0 = time.monotonic(), time.time()
        time.sleep(UNIT)
        m1, w1 = time.monotonic(), time.time()
        line = json.dumps({
            "site": site, "token": token, "job": job, "pid": os.getpid(),
            "ppid": os.getppid(), "role": role, "unit": i,
            "mono_start": m0, "mono_end": m1, "wall_start": w0, "wall_end": w1,
        }) + "\n"
        os.write(fd, line.encode())
    os.close(fd)


def main():
    history, job, units = sys.argv[1], sys.argv[2], int(sys.argv[3])
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # A worker in a session of its own.
    a = os.fork()
    if a == 0:
        os.setsid()
        work(history, job, units, "setsid")
        os._exit(0)
    # A daemonized worker: double fork, re-parented away from us.
    b = os.fork()
    if b == 0:
        if os.fork() == 0:
            os.setsid()
            work(history, job, max(1, units // 2), "daemon")
            os._exit(0)
        os._exit(0)
    os.waitpid(b, 0)
    work(history, job, units, "script")
    os.waitpid(a, 0)


if __name__ == "__main__":
    main()
