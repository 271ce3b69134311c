"""The action lifecycle over real HTTP to `aptk serve`: fair scheduling between callers, paged listing (API and
`aptk list`), retried runs that find their action."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import time
import uuid

import pytest

from .support import APTK, Api


def iso(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.timezone.utc).isoformat()


# --- one caller cannot starve the others ------------------------------------------------------------------------


@pytest.mark.slow
def test_a_second_callers_action_starts_within_seconds_while_one_caller_runs_24_day_long_actions(start_server):
    hog, other = str(uuid.uuid4()), str(uuid.uuid4())
    # 2 workers x 8 threads: before fair scheduling, 24 long actions of one caller held all 16 threads.
    server = start_server(workers=2, tokens={"hog": {"identity": hog}, "other": {"identity": other}})
    a, b = Api(server.hello, server.minted["hog"]), Api(server.hello, server.minted["other"])
    held = []
    for _ in range(24):
        response = a.run({"echo_string": "hog", "sleep_time": 86400})
        assert response.status_code == 202, response.text
        held.append(response.json()["action_id"])

    began = time.monotonic()
    response = b.run({"echo_string": "me too"})
    assert response.status_code == 202
    done = b.wait_for(response.json()["action_id"], {"SUCCEEDED", "FAILED"}, timeout=10)
    waited = time.monotonic() - began
    print(f"second caller's action SUCCEEDED {waited:.2f} s after it was started, under 24 long actions")
    assert done["details"] == {"hello": "me too"}
    assert waited < 5

    # What waits says so; cancelling it ends it for good.
    def states():
        return [a.get(f"/{x}/status").json() for x in held]

    deadline = time.monotonic() + 10
    while True:
        now = states()
        shown = sorted(s.get("display_status", "") for s in now)
        # At most 4 running per worker and caller (half of 8 threads), the rest queued. How many run depends on
        # how gunicorn spread the 24 requests over its 2 workers: 4 if one worker took them all, 8 at most.
        if shown.count("Queued") + shown.count("sleeping") == len(held):
            assert 4 <= shown.count("sleeping") <= 8, shown
            break
        assert time.monotonic() < deadline, shown
        time.sleep(0.2)
    queued = [s["action_id"] for s in now if s.get("display_status") == "Queued"]
    for action_id in held:
        cancelled = a.post(f"/{action_id}/cancel")
        assert (cancelled.status_code, cancelled.json()["details"]["code"]) == (200, "ActionCancelled")
    time.sleep(1.5)  # the slots free up: nothing cancelled may start now
    for action_id in queued:
        status = a.get(f"/{action_id}/status").json()
        assert (status["status"], status.get("display_status"), status["details"]["code"]) == (
            "FAILED", None, "ActionCancelled"), status
        codes = [e["code"] for e in a.get(f"/{action_id}/log", params={"limit": 20}).json()["entries"]]
        assert codes == ["ActionStarted", "ActionFailed"]


@pytest.mark.slow
def test_the_per_caller_limit_setting_is_applied_by_aptk_serve(start_server):
    caller = str(uuid.uuid4())
    server = start_server(workers=1, env={"APTK_MAX_RUNNING_PER_IDENTITY": "1"},
                          tokens={"caller": {"identity": caller}})
    api = Api(server.hello, server.minted["caller"])
    first, second = (api.run({"echo_string": "x", "sleep_time": 86400}).json()["action_id"] for _ in range(2))
    api.wait_until_sleeping(first)
    deadline = time.monotonic() + 5
    while api.get(f"/{second}/status").json().get("display_status") != "Queued":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    api.post(f"/{first}/cancel")
    api.wait_until_sleeping(second)  # its turn came
    api.post(f"/{second}/cancel")


@pytest.mark.slow
def test_a_queued_action_of_a_killed_server_is_taken_up_after_the_lease(start_server):
    caller = str(uuid.uuid4())
    env = {"APTK_MAX_RUNNING_PER_IDENTITY": "1", "APTK_LEASE_SECONDS": "2"}
    server = start_server(workers=1, env=env, tokens={"caller": {"identity": caller}})
    api = Api(server.hello, server.minted["caller"])
    running, queued = (api.run({"echo_string": "x", "sleep_time": 86400}).json()["action_id"] for _ in range(2))
    api.wait_until_sleeping(running)
    server.kill()
    server.start()
    api.base = server.hello
    for action_id in (running, queued):  # hello says rerun: both run again, one at a time
        deadline = time.monotonic() + 15
        while True:
            status = api.get(f"/{action_id}/status").json()
            codes = [e["code"] for e in api.get(f"/{action_id}/log", params={"limit": 20}).json()["entries"]]
            if "ActionRecovered" in codes and status["status"] == "ACTIVE":
                break
            assert time.monotonic() < deadline, (status, codes)
            time.sleep(0.2)
        api.post(f"/{action_id}/cancel")


# --- GET /actions in pages ------------------------------------------------------------------------------------


def test_more_actions_than_the_largest_page_are_listed_over_http_and_by_aptk_list(shared_server):
    caller = str(uuid.uuid4())
    token = shared_server.token(caller)
    api = Api(shared_server.hello, token)
    started = []
    for i in range(205):
        response = api.run({"echo_string": str(i)})
        assert response.status_code == 202
        started.append(response.json()["action_id"])

    first = api.get("/actions")
    assert first.status_code == 200
    page = first.json()
    assert (len(page["actions"]), page["limit"], page["has_next_page"]) == (50, 50, True)
    too_big = api.get("/actions", params={"limit": 201})
    assert (too_big.status_code, too_big.json()["code"]) == (400, "BadActionRequest")
    assert "between 1 and 200" in too_big.json()["description"]

    seen, marker = [], None
    while True:
        page = api.get("/actions", params={"limit": 200, **({"marker": marker} if marker else {})}).json()
        seen += [s["action_id"] for s in page["actions"]]
        if not page["has_next_page"]:
            break
        marker = page["marker"]
    assert seen == started

    result = subprocess.run([APTK, "list", shared_server.hello, "--token", token, "--page-size", "100"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert [json.loads(line)["action_id"] for line in result.stdout.splitlines()] == started
    result = subprocess.run([APTK, "list", shared_server.hello, "--token", token, "--max", "3",
                             "--status", "succeeded"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    listed = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(listed) == 3 and {s["status"] for s in listed} == {"SUCCEEDED"}


# --- a retried run finds its action ------------------------------------------------------------------------------


def test_a_run_retried_after_its_deadline_passed_gets_200_with_its_action(alice: Api):
    document = {"request_id": str(uuid.uuid4()), "body": {"echo_string": "late"}, "deadline": iso(time.time() + 2)}
    first = alice.post("/run", json=document)
    assert first.status_code == 202
    alice.wait_for(first.json()["action_id"], {"SUCCEEDED"}, timeout=5)
    time.sleep(2.5)

    again = alice.post("/run", json=document)

    assert again.status_code == 200, again.text
    assert again.json()["action_id"] == first.json()["action_id"]
    different = alice.post("/run", json={**document, "body": {"echo_string": "other"}})
    assert (different.status_code, different.json()["code"]) == (409, "ActionConflict")
    fresh = alice.post("/run", json={**document, "request_id": str(uuid.uuid4())})
    assert (fresh.status_code, fresh.json()["description"]) == (400, "deadline: is in the past.")


def test_another_caller_with_the_same_request_id_gets_an_action_of_their_own(alice: Api, bob: Api):
    document = {"request_id": str(uuid.uuid4()), "body": {"echo_string": "mine"}}
    first = alice.post("/run", json=document)
    theirs = bob.post("/run", json=document)
    assert (first.status_code, theirs.status_code) == (202, 202)
    assert theirs.json()["action_id"] != first.json()["action_id"]
