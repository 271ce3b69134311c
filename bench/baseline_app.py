"""The baseline for bench/run_status.py: a bare Flask app doing one round trip's storage work without the toolkit.

POST /run        parse the JSON request, insert one row (id, status, JSON body) into SQLite, answer 202 JSON.
GET  /<id>/status read that row, answer 200 JSON (404 JSON if unknown).
GET  /health     readiness probe for the bench.

SQLite is set up as the toolkit sets up its store: WAL journal, synchronous=NORMAL, one connection per thread
(the toolkit pools connections), each write its own transaction. No authentication, validation, background
execution or logging: that is the overhead the benchmark measures.

Served by gunicorn, e.g. ``BASELINE_DB=/tmp/x.db gunicorn -k gthread --threads 8 -w 2 baseline_app:app``.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import uuid

from flask import Flask, jsonify, request

DB_PATH = os.environ.get("BASELINE_DB", "baseline.db")

_local = threading.local()


def _connect() -> sqlite3.Connection:
    conn = getattr(_local, "conn", None)
    if conn is None:
        conn = sqlite3.connect(DB_PATH, timeout=60, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        _local.conn = conn
    return conn


def _create_schema() -> None:
    _connect().execute(
        "CREATE TABLE IF NOT EXISTS actions (id TEXT PRIMARY KEY, status TEXT NOT NULL, body TEXT NOT NULL)"
    )


app = Flask("baseline")
_create_schema()


@app.get("/health")
def health():
    return jsonify({"ok": True})


@app.post("/run")
def run():
    document = request.get_json()
    action_id = uuid.uuid4().hex
    status = "ACTIVE"
    _connect().execute(
        "INSERT INTO actions (id, status, body) VALUES (?, ?, ?)", (action_id, status, json.dumps(document))
    )
    response = jsonify({"action_id": action_id, "status": status, "details": {}})
    response.status_code = 202
    return response


@app.get("/<action_id>/status")
def status(action_id: str):
    row = _connect().execute("SELECT id, status, body FROM actions WHERE id = ?", (action_id,)).fetchone()
    if row is None:
        response = jsonify({"code": "ActionNotFound", "description": f"No action {action_id}."})
        response.status_code = 404
        return response
    return jsonify({"action_id": row[0], "status": row[1], "details": {}, "body": json.loads(row[2])["body"]})
