#!/usr/bin/env python3
"""The nemesis app: inserts a row into its SQLite database every few milliseconds and records the
id of each insert whose COMMIT returned (acknowledged) in an ack file, one line per id.

Usage: app.py APP_DB ACKS
"""
import os
import sqlite3
import sys
import time


def main():
    db, acks = sys.argv[1], sys.argv[2]
    conn = sqlite3.connect(db, timeout=5, isolation_level=None)
    conn.execute("CREATE TABLE IF NOT EXISTS app_events (id INTEGER PRIMARY KEY, pid INTEGER, at REAL)")
    fd = os.open(acks, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    while True:
        try:
            conn.execute("BEGIN IMMEDIATE")
            cur = conn.execute("INSERT INTO app_events (pid, at) VALUES (?, ?)", (os.getpid(), time.time()))
            rid = cur.lastrowid
            conn.execute("COMMIT")
        except sqlite3.Error:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            time.sleep(0.05)
            continue
        os.write(fd, f"{rid}\n".encode())
        time.sleep(0.02)


if __name__ == "__main__":
    main()
