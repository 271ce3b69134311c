"""`aptk serve` under gunicorn: several worker processes, restarts, crashes and Ctrl-C, over real HTTP."""

from __future__ import annotations

import multiprocessing
import subprocess
import time
import uuid

from toolkit.server import SHUTDOWN_GRACE_SECONDS

from .support import Api, post_when_all_ready, start_together

CLIENTS = 8
A_USER = {"user": {"identity": str(uuid.uuid4())}}


# --- one action, many worker processes -----------------------------------------------------------------------


def test_an_action_started_through_one_worker_is_visible_through_every_worker(alice: Api):
    started = alice.run({"echo_string": "spread", "sleep_time": 30})
    assert started.status_code == 202
    action_id = started.json()["action_id"]

    # Each call opens a new connection, so gunicorn hands them to all of its workers.
    answers = [alice.get(f"/{action_id}/status") for _ in range(30)]

    assert [a.status_code for a in answers] == [200] * 30
    assert {a.json()["action_id"] for a in answers} == {action_id}
    assert {a.json()["status"] for a in answers} == {"ACTIVE"}
    alice.post(f"/{action_id}/cancel")


def test_cancelling_through_any_worker_fails_the_running_action_within_two_seconds(alice: Api):
    action_id = alice.run({"echo_string": "cancel me", "sleep_time": 30}).json()["action_id"]
    alice.wait_until_sleeping(action_id)

    cancelled_at = time.monotonic()
    cancelled = alice.post(f"/{action_id}/cancel")
    observed = alice.wait_for(action_id, {"SUCCEEDED", "FAILED"}, timeout=2)
    elapsed = time.monotonic() - cancelled_at

    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "FAILED"
    assert observed["status"] == "FAILED"
    assert observed["details"]["code"] == "ActionCancelled"
    assert elapsed < 2
    later = [alice.get(f"/{action_id}/status").json() for _ in range(10)]
    assert {(s["status"], s["details"]["code"]) for s in later} == {("FAILED", "ActionCancelled")}


def test_releasing_through_any_worker_removes_the_action_for_every_worker(alice: Api):
    action_id = alice.run({"echo_string": "release me"}).json()["action_id"]
    alice.wait_for(action_id, {"SUCCEEDED"}, timeout=5)

    released = alice.post(f"/{action_id}/release")
    answers = [alice.get(f"/{action_id}/status") for _ in range(15)]

    assert released.status_code == 200
    assert released.json()["action_id"] == action_id
    assert [a.status_code for a in answers] == [404] * 15
    assert {a.json()["code"] for a in answers} == {"ActionNotFound"}


# --- idempotency across processes ----------------------------------------------------------------------------


def test_the_same_run_sent_by_many_processes_at_once_creates_exactly_one_action(alice: Api):
    document = {"request_id": f"concurrent-{uuid.uuid4()}", "body": {"echo_string": "once", "sleep_time": 1}}
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(CLIENTS)
    with context.Pool(CLIENTS, initializer=start_together, initargs=(barrier,)) as pool:
        results = pool.map(post_when_all_ready, [(alice.base + "/run", alice.token, document)] * CLIENTS,
                           chunksize=1)

    codes = sorted(code for code, _ in results)
    assert codes == [200] * (CLIENTS - 1) + [202]
    assert len({answer["action_id"] for _, answer in results}) == 1


def test_the_same_request_id_with_another_body_is_a_conflict(alice: Api):
    request_id = f"conflict-{uuid.uuid4()}"
    first = alice.run({"echo_string": "one"}, request_id=request_id)

    other = alice.run({"echo_string": "two"}, request_id=request_id)

    assert first.status_code == 202
    assert other.status_code == 409
    assert other.json()["code"] == "ActionConflict"
    assert first.json()["action_id"] in other.json()["description"]


# --- durability, crashes, Ctrl-C -----------------------------------------------------------------------------


def test_actions_survive_a_clean_restart_unchanged(start_server):
    server = start_server(workers=2, tokens=A_USER)
    api = Api(server.hello, server.minted["user"])
    done = api.run({"echo_string": "durable"}, label="survives restarts").json()["action_id"]
    paused = api.run({"echo_string": "paused", "require_resume": True}).json()["action_id"]
    before = {
        done: api.wait_for(done, {"SUCCEEDED"}, timeout=5),
        paused: api.wait_for(paused, {"INACTIVE"}, timeout=5),
    }

    exit_code = server.interrupt(group=False, timeout=8)
    server.start()
    api.base = server.hello

    assert exit_code == 0
    after = {action_id: api.get(f"/{action_id}/status").json() for action_id in before}
    assert after == before


def test_actions_of_a_killed_server_run_again_after_a_restart(start_server):
    server = start_server(workers=2, env={"APTK_LEASE_SECONDS": "2"}, tokens=A_USER)
    api = Api(server.hello, server.minted["user"])
    names = [f"crash-{i}" for i in range(4)]
    # Long enough that the first is still sleeping when the last has started, on a busy machine too.
    ids = [api.run({"echo_string": name, "sleep_time": 8}).json()["action_id"] for name in names]
    for action_id in ids:  # every callback is running when the server dies
        api.wait_until_sleeping(action_id)

    server.kill()
    server.start()
    api.base = server.hello

    finished = [api.wait_for(action_id, {"SUCCEEDED", "FAILED"}, timeout=30) for action_id in ids]
    assert [s["status"] for s in finished] == ["SUCCEEDED"] * len(ids)
    assert [s["details"] for s in finished] == [{"hello": name} for name in names]
    logs = [[e["code"] for e in api.get(f"/{action_id}/log", params={"limit": 100}).json()["entries"]]
            for action_id in ids]
    assert logs == [["ActionStarted", "ActionRecovered", "ActionSucceeded"]] * len(ids)
    assert api.get("/actions", params={"status": "ACTIVE,INACTIVE"}).json()["actions"] == []


def _log_codes(api: Api, action_id: str) -> list[str]:
    return [e["code"] for e in api.get(f"/{action_id}/log", params={"limit": 100}).json()["entries"]]


def test_actions_of_a_killed_server_are_taken_up_at_once_on_the_same_host_not_after_the_lease(start_server):
    server = start_server(workers=2, tokens=A_USER)  # the default lease: 30 s
    api = Api(server.hello, server.minted["user"])
    ids = [api.run({"echo_string": f"again-{i}", "sleep_time": 60}).json()["action_id"] for i in range(3)]
    for action_id in ids:
        api.wait_until_sleeping(action_id)

    server.kill()
    server.start()
    restarted = time.monotonic()
    api.base = server.hello

    taken: dict[str, float] = {}
    while len(taken) < len(ids) and time.monotonic() - restarted < 20:
        for action_id in set(ids) - set(taken):
            if "ActionRecovered" in _log_codes(api, action_id):
                taken[action_id] = time.monotonic() - restarted
        time.sleep(0.1)
    assert sorted(taken) == sorted(ids)
    assert max(taken.values()) < 5, taken  # not the 30 s lease
    for action_id in ids:
        status = api.get(f"/{action_id}/status").json()
        assert (status["status"], status["display_status"]) == ("ACTIVE", "sleeping")
        assert _log_codes(api, action_id) == ["ActionStarted", "ActionRecovered"]
        assert api.post(f"/{action_id}/cancel").status_code == 200


def test_a_second_server_on_the_same_host_never_takes_over_actions_its_live_neighbour_runs(start_server, tmp_path):
    from .support import Server

    first = start_server(workers=2, tokens=A_USER)
    api = Api(first.hello, first.minted["user"])
    ids = [api.run({"echo_string": f"mine-{i}", "sleep_time": 4}).json()["action_id"] for i in range(3)]
    for action_id in ids:
        api.wait_until_sleeping(action_id)
    second = Server(first.data_dir, tmp_path, workers=2)  # same database, other processes, same host
    try:
        second.start()
        neighbour = Api(second.hello, first.minted["user"])
        finished = [neighbour.wait_for(action_id, {"SUCCEEDED", "FAILED"}, timeout=15) for action_id in ids]
    finally:
        second.stop()
    assert [(s["status"], s["details"]) for s in finished] == [("SUCCEEDED", {"hello": f"mine-{i}"}) for i in range(3)]
    assert [_log_codes(api, action_id) for action_id in ids] == [["ActionStarted", "ActionSucceeded"]] * 3


def test_sigint_stops_the_server_with_exit_code_0_and_no_traceback(start_server):
    server = start_server(workers=3)
    assert Api(server.hello, None).get("/").status_code == 200  # a worker has served a request

    exit_code = server.interrupt(group=False, timeout=5)

    assert exit_code == 0
    stderr = server.stderr()
    assert "Traceback" not in stderr
    assert "[ERROR]" not in stderr


def test_ctrl_c_in_a_terminal_stops_every_process_within_five_seconds(start_server):
    server = start_server(workers=3)
    assert Api(server.hello, None).get("/").status_code == 200

    try:
        exit_code = server.interrupt(group=True, timeout=5)  # what Ctrl-C does: SIGINT to the whole group
    except subprocess.TimeoutExpired:
        server.kill()
        exit_code = None

    assert exit_code == 0
    stderr = server.stderr()
    assert "Traceback" not in stderr
    assert "[ERROR]" not in stderr


def test_sigint_while_an_action_runs_stops_promptly_and_the_next_start_takes_the_action_up(start_server):
    server = start_server(workers=1, tokens=A_USER)
    api = Api(server.hello, server.minted["user"])
    action_id = api.run({"echo_string": "interrupted", "sleep_time": 30}).json()["action_id"]
    api.wait_until_sleeping(action_id)

    try:
        # The worker waits SHUTDOWN_GRACE_SECONDS for the callback, then hands the action over; gunicorn would
        # SIGKILL a worker still stuck at its graceful_timeout (10 s), so stopping must take clearly less.
        exit_code = server.interrupt(group=False, timeout=SHUTDOWN_GRACE_SECONDS + 5)
    except subprocess.TimeoutExpired:
        server.kill()
        exit_code = None
    stderr = server.stderr()
    server.start()
    api.base = server.hello

    assert exit_code == 0
    assert "SIGKILL" not in stderr
    deadline = time.monotonic() + 5
    while "ActionRecovered" not in [e["code"] for e in api.get(f"/{action_id}/log").json()["entries"]]:
        assert time.monotonic() < deadline, "the next start did not take the interrupted action up within 5 s"
        time.sleep(0.1)
    assert api.get(f"/{action_id}/status").json()["status"] == "ACTIVE"
    api.post(f"/{action_id}/cancel")
