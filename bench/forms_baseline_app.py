"""The baseline for bench/forms.py: a bare Flask app rendering the forms provider's template, without the toolkit.

POST /run                 store the form's body in SQLite (WAL, synchronous=NORMAL) and answer its id.
GET  /<id>/form           read it and render ``forms/form.html`` with the same fields, as the provider does.
POST /<id>/form           read the answer with the same field code, validate it with jsonschema, store it, and
                          render the thank-you page.

No tokens, no sessions, no signed links or CSRF tokens, no action lifecycle: that is what the benchmark measures.
Served by gunicorn, e.g. ``BASELINE_DB=/tmp/x.db gunicorn -k gthread --threads 8 -w 2 forms_baseline_app:app``.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import uuid

from flask import Blueprint, Flask, jsonify, render_template, request

from providers.forms import fields
from providers.forms.content import render_description
from providers.forms.pages import TEMPLATES

DB_PATH = os.environ.get("BASELINE_DB", "forms-baseline.db")
_local = threading.local()


def _db() -> sqlite3.Connection:
    conn = getattr(_local, "conn", None)
    if conn is None:
        conn = sqlite3.connect(DB_PATH, timeout=60, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        _local.conn = conn
    return conn


_db().execute("CREATE TABLE IF NOT EXISTS forms (id TEXT PRIMARY KEY, body TEXT NOT NULL, answer TEXT)")

pages = Blueprint("pages", __name__, template_folder=str(TEMPLATES))


@pages.get("/assets/forms.css")
def stylesheet():
    return (TEMPLATES / "forms" / "forms.css").read_text(), 200, {"Content-Type": "text/css"}


def _body(form_id: str) -> dict:
    row = _db().execute("SELECT body FROM forms WHERE id = ?", (form_id,)).fetchone()
    return json.loads(row[0])


def _page(form_id: str, body: dict, form=None, errors=None, status=200):
    built = fields.build(body["schema"])
    return render_template(
        "forms/form.html", title=body["title"], description=render_description(body.get("description", "")),
        fields=built, values=fields.shown_values(built, form), errors=errors or {}, options=None, chosen=None,
        allow_changes=False, saved=None, submit_label="Submit", csrf="-", who="someone", closes_at=None,
        action_url=f"/forms/{form_id}/form"), status


@pages.post("/run")
def run():
    form_id = uuid.uuid4().hex
    _db().execute("INSERT INTO forms (id, body) VALUES (?, ?)", (form_id, json.dumps(request.get_json()["body"])))
    return jsonify({"action_id": form_id, "details": {"form_url": f"{request.host_url}forms/{form_id}/form"}}), 202


@pages.get("/<form_id>/form")
def form(form_id: str):
    return _page(form_id, _body(form_id))


@pages.post("/<form_id>/form")
def submit(form_id: str):
    body = _body(form_id)
    built = fields.build(body["schema"])
    answer, errors = fields.read(built, request.form)
    errors.update(fields.validate(body["schema"], built, answer))
    if errors:
        return _page(form_id, body, request.form, errors, 400)
    _db().execute("UPDATE forms SET answer = ? WHERE id = ?", (json.dumps(answer), form_id))
    return render_template("forms/message.html", heading="Thank you", text="Recorded.", title=body["title"])


app = Flask("forms-baseline")
app.register_blueprint(pages, url_prefix="/forms")
