"""The same lifecycle on PostgreSQL, the store for several hosts serving one provider."""

import threading
import uuid

import pytest

from providers.hello import provider as hello
from toolkit import SQLStore, Status, get_toolkit
from toolkit.client import ClientError
from toolkit.testing import TestClient, provider_app


@pytest.fixture
def database(postgres_server):
    return postgres_server.create_database(f"aptk_{uuid.uuid4().hex[:12]}")


HOSTS_KEY = "k" * 64


@pytest.fixture
def host(database, tmp_path):
    """host(**toolkit_options): one 'host' (its own app, engine and executor) on the shared database."""
    apps = []

    def make(**options):
        options.setdefault("config", {"APTK_REQUEST_KEY": HOSTS_KEY})  # the hosts' shared request key
        app, authority = provider_app(hello, tmp_path / uuid.uuid4().hex, prefix="/hello",
                                      store=SQLStore(database), **options)
        apps.append(app)
        return app, authority

    yield make
    for app in apps:
        get_toolkit(app).runtime.stop()
        get_toolkit(app).runtime.store.dispose()


def client_for(app, authority, identity=None):
    return TestClient(app, "/hello", authority.token(identity, scopes=[hello.globus_auth_scope]), authority)


def test_the_whole_lifecycle_on_postgresql(host):
    client = client_for(*host())
    done = client.run({"echo_string": "hi"}, wait=True, label="pg")
    assert (done["status"], done["details"], done["label"]) == ("SUCCEEDED", {"hello": "hi"}, "pg")
    assert client.run({"echo_string": "hi"}, request_id="same")["action_id"] == \
        client.run({"echo_string": "hi"}, request_id="same")["action_id"]
    with pytest.raises(ClientError) as caught:
        client.run({"echo_string": "other"}, request_id="same")
    assert caught.value.status == 409

    sleeping = client.run({"echo_string": "zz", "sleep_time": 30})["action_id"]
    client.wait(sleeping, until=["ACTIVE"])
    assert client.cancel(sleeping)["details"]["code"] == "ActionCancelled"

    paused = client.run({"echo_string": "p", "require_resume": True})["action_id"]
    client.wait(paused, until=["INACTIVE"])
    client.resume(paused)
    assert client.wait(paused)["status"] == "SUCCEEDED"
    codes = [e["code"] for e in client.log(paused, limit=100)["entries"]]
    assert codes == ["ActionStarted", "ActionInactive", "ActionResumed", "ActionSucceeded"]

    assert {a["status"] for a in client.actions(status=["failed"])} == {"FAILED"}
    client.release(done["action_id"])
    with pytest.raises(ClientError) as caught:
        client.status(done["action_id"])
    assert caught.value.status == 404


def test_identical_runs_racing_from_several_hosts_create_one_action(host):
    identity = str(uuid.uuid4())
    hosts = [host() for _ in range(4)]
    # The same caller on every host: tokens from each host's authority name the same identity.
    results, barrier = [], threading.Barrier(12)

    def fire(app, authority):
        client = client_for(app, authority, identity)
        barrier.wait()
        response = client.session.post(f"{client.url}/run", json={"request_id": "race", "body": {"echo_string": "x"}})
        results.append((response.status_code, response.json()["action_id"]))

    threads = [threading.Thread(target=fire, args=hosts[i % 4]) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(code for code, _ in results) == [200] * 11 + [202]
    assert len({action for _, action in results}) == 1


def test_a_run_on_one_host_is_cancelled_through_another(host):
    identity = str(uuid.uuid4())
    first, second = host(), host()
    action = client_for(*first, identity).run({"echo_string": "x", "sleep_time": 30})["action_id"]
    other = client_for(*second, identity)
    assert other.cancel(action)["status"] == "FAILED"
    # The first host's running callback notices within a maintenance tick and stops.
    runtime = get_toolkit(first[0]).runtime
    for _ in range(100):
        if action not in runtime._running:
            break
        threading.Event().wait(0.05)
    assert action not in runtime._running


def test_expired_actions_are_purged(host, clock):
    app, authority = host(clock=clock)
    client = client_for(app, authority)
    action = client.run({"echo_string": "x"}, release_after="PT1M", wait=True)["action_id"]
    clock.advance(61)
    get_toolkit(app).runtime.sweep()
    assert get_toolkit(app).runtime.store.get(action) is None
    assert get_toolkit(app).runtime.store.find(statuses=list(Status), providers=["hello"]) == []


def test_pages_retries_and_ended_logs_on_postgresql(host):
    import datetime as dt
    import time

    app, authority = host()
    client = client_for(app, authority)
    started = [client.run({"echo_string": str(i)})["action_id"] for i in range(12)]
    assert [a["action_id"] for a in client.actions(page_size=5)] == started
    page = client.actions_page(limit=5)
    rest = client.actions_page(limit=50, marker=page["marker"])
    assert [a["action_id"] for a in page["actions"] + rest["actions"]] == started

    soon = dt.datetime.fromtimestamp(time.time() + 1, dt.timezone.utc).isoformat()
    first = client.run({"echo_string": "late"}, request_id="late", deadline=soon)["action_id"]
    client.wait(first)
    time.sleep(1.2)
    assert client.run({"echo_string": "late"}, request_id="late", deadline=soon)["action_id"] == first

    store = get_toolkit(app).runtime.store
    assert not store.append_log(first, time.time(), "Log", "too late", where={"status": Status.ACTIVE})
    assert store.append_log(first, time.time(), "Log", "noted")
    assert [e.description for e in store.log_page(first, 0, 10)][-1] == "noted"


def test_runs_of_a_process_of_this_host_that_is_gone_are_found_by_their_runner_and_taken_up(host):
    import subprocess
    import sys

    from toolkit import runners

    if not runners.host_key():
        pytest.skip("needs /proc to tell processes apart")
    app, authority = host()
    client = client_for(app, authority)
    action = client.run({"echo_string": "again", "sleep_time": 30})["action_id"]
    client.wait(action, until=["ACTIVE"])
    runtime = get_toolkit(app).runtime
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    dead = f"{runners.host_key()}:{child.pid}:{runners.process_start(child.pid) or 1}:0000dead:h_st%"
    child.wait()
    runtime.store.update(action, where={}, runner=dead)  # as if a process now gone held it
    found = runtime.store.find(statuses=[Status.ACTIVE], providers=["hello"], runner_prefix=runners.local_prefix())
    assert [a.action_id for a in found] == [action]
    assert runtime.store.find(statuses=[Status.ACTIVE], providers=["hello"], runner_prefix="0123456789abcdef:") == []
    assert runtime.store.find(statuses=[Status.ACTIVE], providers=["hello"], runner_prefix="%") == []  # not a pattern
    runtime.sweep()  # its heartbeat is fresh: only the dead process tells
    assert [e["code"] for e in client.log(action, limit=10)["entries"]] == ["ActionStarted", "ActionRecovered"]
    client.cancel(action)


def test_after_a_postgresql_restart_the_next_requests_are_answered_without_a_503(tmp_path, monkeypatch):
    """README, "PostgreSQL away": once the server is back, the next requests reconnect; a status read that meets
    a connection the restart cut is tried again on a fresh one. Over HTTP (the app's routes), with every pooled
    connection counting as busy, so that no idle ping hides the dead connections."""
    import toolkit.store
    from tests.servers.postgres import start_postgres

    monkeypatch.setattr(toolkit.store, "PING_IDLE_SECONDS", 3600.0)
    server = start_postgres()  # its own: restarted below
    store = SQLStore(server.create_database("aptk_http_restart"))
    app, authority = provider_app(hello, tmp_path / "host", prefix="/hello", store=store,
                                  config={"APTK_REQUEST_KEY": HOSTS_KEY})
    try:
        client = client_for(app, authority)
        done = client.run({"echo_string": "before"}, wait=True)
        assert done["status"] == "SUCCEEDED"
        server.restart()
        assert client.status(done["action_id"])["status"] == "SUCCEEDED"  # no 503: read again on a new connection
        after = client.run({"echo_string": "after"}, wait=True)  # the loss was seen: pooled ones pinged first
        assert after["status"] == "SUCCEEDED" and after["details"] == {"hello": "after"}
    finally:
        get_toolkit(app).runtime.stop()
        store.dispose()
        server.stop()
