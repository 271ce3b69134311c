"""The approval example: INACTIVE with a resolution_url until an approver decides on its page, over HTTP."""

from __future__ import annotations

import uuid

import pytest
import requests

from examples.approval.provider import provider as approval

GROUP = str(uuid.uuid4())


@pytest.fixture
def setup(aptk_client):
    """The requester's client, an approver's client (a member of the approving group) and a bystander's."""
    requester = aptk_client(approval)
    approver = requester.as_identity(groups=[GROUP])
    bystander = requester.as_identity()
    return requester, approver, bystander


def ask(client, **body):
    document = {"subject": "Publish dataset 42", "details": "3.2 TB <b>raw</b>",
                "approvers": [f"urn:globus:groups:id:{GROUP}"], **body}
    return client.run(document)


def page_path(status) -> str:
    url = status["details"]["resolution_url"]
    assert url.startswith("http://testserver/provider/") and url.endswith(f"/{status['action_id']}/decision")
    return url


def token_of(client) -> str:
    return client.session.headers["Authorization"].removeprefix("Bearer ")


def decide(client, url, decision, *, comment="", token=None, header=True):
    """POST a decision to the page as ``client``'s identity: its token in the header, or in the page's field."""
    token = token or token_of(client)
    form = {"decision": decision, "comment": comment}
    if not header:
        form["token"] = token
    return page_session(client).post(url, data=form, headers={"Authorization": f"Bearer {token}"} if header else {},
                                     timeout=10)


def page_session(client) -> requests.Session:
    """A session over the client's in-process transport that sends no token of its own, as a browser."""
    session = requests.Session()
    session.mount("http://testserver", client.session.get_adapter("http://testserver"))
    return session


def test_waits_for_a_person_then_succeeds_when_approved(setup):
    requester, approver, _ = setup
    status = ask(requester)
    assert status["status"] == "INACTIVE" and status["details"]["code"] == "ApprovalRequired"
    url = page_path(status)
    page = page_session(requester).get(url, timeout=10)  # anyone holding the link sees the request
    assert page.status_code == 200 and "Publish dataset 42" in page.text
    assert "&lt;b&gt;raw&lt;/b&gt;" in page.text and "<b>raw</b>" not in page.text  # escaped
    answer = decide(approver, url, "approve", comment="go ahead")
    assert answer.status_code == 200, answer.text
    done = requester.status(status["action_id"])
    assert done["status"] == "SUCCEEDED"
    assert done["details"]["decision"] == "approved" and done["details"]["comment"] == "go ahead"
    assert done["details"]["approver"].startswith("urn:globus:auth:identity:")
    assert "resolution_url" not in done["details"]
    # Decided once: the page now says so, and another decision is refused.
    assert requester.session.get(url, timeout=10).status_code == 409
    assert decide(approver, url, "reject").status_code == 409
    assert requester.status(status["action_id"])["status"] == "SUCCEEDED"


def test_rejection_fails_the_action(setup):
    requester, approver, _ = setup
    status = ask(requester)
    answer = decide(approver, page_path(status), "reject", comment="not yet", header=False)  # the page's token field
    assert answer.status_code == 200, answer.text
    done = requester.status(status["action_id"])
    assert done["status"] == "FAILED" and done["details"]["code"] == "Rejected"
    assert done["details"]["comment"] == "not yet" and "not yet" in done["details"]["description"]


def test_only_an_approver_decides(setup):
    requester, approver, bystander = setup
    status = ask(requester)
    url = page_path(status)
    assert decide(bystander, url, "approve").status_code == 403
    assert decide(requester, url, "approve").status_code == 403  # asking is not approving
    assert decide(bystander, url, "approve", token="not-a-token").status_code == 401
    assert page_session(requester).post(url, data={"decision": "approve"}, timeout=10).status_code == 401
    assert decide(approver, url, "maybe").status_code == 400
    assert requester.status(status["action_id"])["status"] == "INACTIVE"
    # A resume by the requester before anyone decided leaves it waiting.
    requester.resume(status["action_id"])
    assert requester.status(status["action_id"])["status"] == "INACTIVE"


def test_a_named_identity_may_approve(setup):
    requester, approver, bystander = setup
    status = ask(requester, approvers=[bystander_identity(bystander)])
    assert decide(bystander, page_path(status), "approve").status_code == 200
    assert requester.status(status["action_id"])["status"] == "SUCCEEDED"


def bystander_identity(client) -> str:
    action = client.run({"subject": "whoami", "approvers": [f"urn:globus:groups:id:{uuid.uuid4()}"]})
    return action["creator_id"]


def test_bad_approvers_are_a_400_and_no_action(setup):
    requester, _, _ = setup
    from toolkit.client import ClientError

    with pytest.raises(ClientError) as refused:
        ask(requester, approvers=["urn:globus:auth:identity:not-a-uuid"])
    assert refused.value.status == 400 and "approvers[0]" in refused.value.description
    assert list(requester.actions(status=["INACTIVE"])) == []


def test_a_cancelled_request_takes_no_decision(setup):
    requester, approver, _ = setup
    status = ask(requester)
    requester.cancel(status["action_id"])
    assert decide(approver, page_path(status), "approve").status_code == 409
    assert requester.status(status["action_id"])["status"] == "FAILED"
    assert requester.session.get(page_path(status).replace(status["action_id"], "0" * 32), timeout=10).status_code == 404
