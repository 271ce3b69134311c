"""The README's walkthrough under `aptk serve`: stage a run with /transfer, ask the PI with /forms, share with /acl."""

from __future__ import annotations

import os
import re

import pytest
import requests

from tests.providers.test_transfer_serve import OWNER, USER, servers  # noqa: F401  (servers: the fixture)

pytestmark = pytest.mark.slow

PI = f"urn:globus:auth:identity:{OWNER}"


def test_stage_ask_the_pi_and_share(tmp_path, servers):  # noqa: F811
    data = tmp_path / "data"
    server = servers(data, APTK_COLLECTION_OWNERS=OWNER).start()
    ada, bob = server.token(OWNER), server.token(USER)
    (data / "collections" / "inbox" / "run1").mkdir(parents=True)
    (data / "collections" / "inbox" / "run1" / "frame1.dat").write_bytes(os.urandom(10_000))

    stage = {"source_endpoint_id": "inbox", "destination_endpoint_id": "project", "label": "stage run1",
             "transfer_items": [{"source_path": "/run1", "destination_path": "/run1", "recursive": True}]}
    assert server.wait(ada, server.run(ada, "transfer", stage, "stage")["action_id"])["status"] == "SUCCEEDED"

    ask = {"title": "Share run 1 with Bob?", "description": "Run 1 is staged in the project collection.",
           "schema": {"type": "object", "required": ["approve"], "properties": {
               "approve": {"type": "boolean", "title": "Share run 1 with Bob (read only)"},
               "comment": {"type": "string", "title": "Comment"}}},
           "respondents": [PI]}
    form = server.run(ada, "forms", ask, "ask")
    assert form["status"] == "INACTIVE"
    link = form["details"]["resolution_url"]
    assert link.startswith(f"{server.url}/forms/{form['action_id']}/form?t=")

    browser = requests.Session()
    page = browser.get(link, timeout=10)
    assert page.status_code == 200 and page.url == form["details"]["form_url"]
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    assert browser.post(page.url, data={"approve": "true"}, timeout=10).status_code == 400  # no CSRF token
    answered = browser.post(page.url, data={"approve": "true", "csrf_token": token}, timeout=10)
    assert answered.status_code == 200 and "Thank you" in answered.text
    details = server.status(ada, "forms", form["action_id"])["details"]
    assert details["response"] == {"approve": True} and details["respondent"] == PI

    share = {"operation": "CREATE", "endpoint_id": "project", "path": "/run1/", "principal_type": "identity",
             "principal": USER, "permissions": "r"}
    granted = server.wait(ada, server.run(ada, "acl", share, "share")["action_id"], provider="acl")
    assert granted["status"] == "SUCCEEDED"
    read = {"source_endpoint_id": "project", "destination_endpoint_id": "inbox",
            "transfer_items": [{"source_path": "/run1", "destination_path": "/from-project", "recursive": True}]}
    assert server.wait(bob, server.run(bob, "transfer", read, "read")["action_id"])["status"] == "SUCCEEDED"
