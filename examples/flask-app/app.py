"""The seed's Flask app (mini-PRA on Kubernetes), with GET /status served by `import pra`.

Events live in SQLite on the data volume (PRA_DB, default /data/app.db); backups are on the
backup volume (PRA_BACKUP_DIR, default /backup), taken by the `pra backup` CronJob.

    POST /events {"body": "..."}   add an event
    GET  /events                   the last 100 events
    GET  /status                   {"count", "last_backup_file", "backup_age_seconds", ...}
    GET  /healthz                  200 when the database answers, 503 otherwise

/status and /healthz answer 503 with a JSON reason when the database is unavailable (the
seed's "perte du PVC pra-data" scenario) instead of crashing.
"""

import os
import sqlite3
from typing import Any, Dict, Optional, Tuple

from flask import Flask, jsonify, request

import pra


def create_app(db: Optional[str] = None, backup_dir: Optional[str] = None, table: Optional[str] = None) -> Flask:
    app = Flask(__name__)
    app.json.sort_keys = False  # type: ignore[attr-defined]
    db_path = db or os.environ.get("PRA_DB", "/data/app.db")
    backups = backup_dir or os.environ.get("PRA_BACKUP_DIR", "/backup")
    table_name = table or os.environ.get("PRA_TABLE", "events")
    store_url = os.environ.get("PRA_STORE")
    store = pra.Store(store_url) if store_url else None

    # Like the seed's app: create the database and its table at start-up when the volume is new.
    if os.path.isdir(os.path.dirname(os.path.abspath(db_path))):
        with sqlite3.connect(db_path) as conn:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute(f"CREATE TABLE IF NOT EXISTS {table_name} (id INTEGER PRIMARY KEY, body TEXT NOT NULL, created_at TEXT DEFAULT CURRENT_TIMESTAMP)")

    def connect() -> sqlite3.Connection:
        # mode=rw: never create an empty database in place of a lost one.
        conn = sqlite3.connect(f"file:{db_path}?mode=rw", uri=True, timeout=5)
        conn.row_factory = sqlite3.Row
        return conn

    def unavailable(e: Exception) -> Tuple[Any, int]:
        return jsonify({"error": "database unavailable", "reason": str(e)}), 503

    @app.post("/events")
    def add_event() -> Tuple[Any, int]:
        payload: Dict[str, Any] = request.get_json(silent=True) or {}
        body = payload.get("body")
        if not isinstance(body, str) or not body:
            return jsonify({"error": "expected JSON {\"body\": \"...\"}"}), 400
        try:
            with connect() as conn:
                cur = conn.execute(f"INSERT INTO {table_name} (body) VALUES (?)", (body,))
                return jsonify({"id": cur.lastrowid, "body": body}), 201
        except sqlite3.Error as e:
            return unavailable(e)

    @app.get("/events")
    def list_events() -> Tuple[Any, int]:
        try:
            with connect() as conn:
                rows = conn.execute(f"SELECT id, body, created_at FROM {table_name} ORDER BY id DESC LIMIT 100").fetchall()
                return jsonify([dict(r) for r in rows]), 200
        except sqlite3.Error as e:
            return unavailable(e)

    @app.get("/status")
    def status() -> Tuple[Any, int]:
        s = pra.status(db_path, backups, table_name, store=store)
        doc = s.to_dict()
        if not s.database_ok:
            return jsonify({"error": "database unavailable", **doc}), 503
        return jsonify(doc), 200

    @app.get("/healthz")
    def healthz() -> Tuple[Any, int]:
        try:
            with connect() as conn:
                conn.execute(f"SELECT 1 FROM {table_name} LIMIT 1").fetchall()
            return jsonify({"ok": True}), 200
        except sqlite3.Error as e:
            return jsonify({"ok": False, "error": "database unavailable", "reason": str(e)}), 503

    return app


if __name__ == "__main__":
    create_app().run(host=os.environ.get("HOST", "0.0.0.0"), port=int(os.environ.get("PORT", "8080")))
