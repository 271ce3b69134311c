"""A provider with the known defects of one built with the reference toolkit, for `aptk check` to find: 401 where
403 is meant, 422 for invalid input, null fields in its documents, "ACTION" in ``types``, no /actions routes.

Everything else it does right, so that each defect is the only reason of its failed check.
"""

from __future__ import annotations

import datetime
import uuid
from typing import Any

from flask import Flask, jsonify, request

TOKENS = {"alice-token": "urn:globus:auth:identity:aaaaaaaa-0000-4000-8000-000000000001",
          "bob-token": "urn:globus:auth:identity:bbbbbbbb-0000-4000-8000-000000000002"}
SCHEMA = {"type": "object", "required": ["echo_string"], "additionalProperties": False,
          "properties": {"echo_string": {"type": "string"}}}


def create_app() -> Flask:
    app = Flask(__name__)
    actions: dict[str, dict[str, Any]] = {}
    requests_seen: dict[tuple[str, str], tuple[Any, str]] = {}

    def error(status: int, code: str, description: str):
        response = jsonify({"code": code, "description": description})
        response.status_code = status
        if status == 401:
            response.headers["WWW-Authenticate"] = 'Bearer realm="reference"'
        return response

    def caller() -> str | None:
        header = request.headers.get("Authorization", "")
        return TOKENS.get(header.removeprefix("Bearer ").strip()) if header.startswith("Bearer ") else None

    @app.get("/ref/")
    def describe():
        return jsonify({"types": ["ACTION"], "api_version": "1.0", "title": "Reference-style echo",
                        "subtitle": None, "globus_auth_scope": "urn:ref:scope", "admin_contact": "ops@example.org",
                        "synchronous": True, "log_supported": True, "visible_to": ["public"],
                        "runnable_by": ["all_authenticated_users"], "administered_by": [],
                        "maximum_deadline": "P30D", "input_schema": SCHEMA})

    @app.post("/ref/run")
    def run():
        who = caller()
        if who is None:
            return error(401, "UnauthorizedRequest", "no valid token")
        document = request.get_json(silent=True)
        if not isinstance(document, dict) or "request_id" not in document or not isinstance(document.get("body"), dict):
            return error(400, "BadActionRequest", "not an action request")
        body = document["body"]
        if set(body) - {"echo_string"} or not isinstance(body.get("echo_string"), str):
            return error(422, "UnprocessableEntity", "the body does not match the input schema")
        seen = requests_seen.get((who, document["request_id"]))
        if seen is not None:
            if seen[0] != body:
                return error(409, "ActionConflict", "request_id reused with another body")
            return jsonify(actions[seen[1]]), 200
        now = datetime.datetime.now(datetime.timezone.utc).isoformat()
        action = {"action_id": uuid.uuid4().hex, "status": "SUCCEEDED", "creator_id": who,
                  "details": {"hello": body["echo_string"]}, "label": document.get("label"), "monitor_by": [],
                  "manage_by": [], "start_time": now, "completion_time": now, "release_after": "P30D",
                  "display_status": None}
        actions[action["action_id"]] = action
        requests_seen[(who, document["request_id"])] = (body, action["action_id"])
        return jsonify(action), 202

    def owned(action_id: str):
        who = caller()
        if who is None:
            return None, error(401, "UnauthorizedRequest", "no valid token")
        action = actions.get(action_id)
        if action is None:
            return None, error(404, "ActionNotFound", f"no action {action_id}")
        if action["creator_id"] != who:
            return None, error(401, "UnauthorizedRequest", "not allowed")  # the defect: 403 is meant
        return action, None

    @app.get("/ref/<action_id>/status")
    def status(action_id):
        action, refused = owned(action_id)
        return refused or jsonify(action)

    @app.post("/ref/<action_id>/cancel")
    def cancel(action_id):
        action, refused = owned(action_id)
        return refused or error(409, "ActionConflict", "the action has completed")

    @app.post("/ref/<action_id>/release")
    def release(action_id):
        action, refused = owned(action_id)
        if refused:
            return refused
        del actions[action_id]
        return jsonify(action)

    @app.get("/ref/<action_id>/log")
    def log(action_id):
        action, refused = owned(action_id)
        return refused or jsonify({"entries": [{"code": "ActionStarted", "description": "started",
                                                "time": action["start_time"]}], "limit": 10,
                                   "has_next_page": False})

    @app.errorhandler(404)
    def not_found(_exc):
        return error(404, "NotFound", "no such route")

    @app.errorhandler(405)
    def not_allowed(_exc):
        return error(405, "MethodNotAllowed", "no such method here")

    return app
