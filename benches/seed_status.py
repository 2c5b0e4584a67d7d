"""The seed's hand-written /status (004_7009b73a05402393.txt, "Atelier 1"): sqlite3 count, the
newest file of /backup by glob, its age from mtime. The baseline pra.status() is compared with."""

import glob
import os
import sqlite3
import time


def seed_status(db: str, backup_dir: str, table: str = "events") -> dict:
    conn = sqlite3.connect(db)
    count = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    conn.close()
    files = glob.glob(os.path.join(backup_dir, "*.db"))
    if not files:
        return {"count": count, "last_backup_file": None, "backup_age_seconds": None}
    last = max(files, key=os.path.getmtime)
    return {
        "count": count,
        "last_backup_file": os.path.basename(last),
        "backup_age_seconds": int(time.time() - os.path.getmtime(last)),
    }
