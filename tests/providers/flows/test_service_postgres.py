"""Flows on PostgreSQL, the store of several hosts: a flow deployed through one host is served, run and recovered
by another; APTK_FLOWS_DIR files deployed once however many hosts read them."""

from __future__ import annotations

import json
import threading
import uuid

import pytest

from toolkit import Action, SQLStore, Status, get_toolkit
from toolkit.testing import TokenAuthority, close_app

from .conftest import OTHER, PASS_SUCCEED, SCOPE, deployment, make_site, urn


@pytest.fixture
def database(postgres_server):
    return postgres_server.create_database(f"aptk_{uuid.uuid4().hex[:12]}")


@pytest.fixture
def hosts(database, tmp_path):
    authority = TokenAuthority()
    made = []

    def make(**config):
        site = make_site(tmp_path, authority=authority, data=uuid.uuid4().hex, APTK_REQUEST_KEY="k" * 64,
                         toolkit_options={"store": SQLStore(database)}, **config)
        made.append(site)
        return site

    yield make
    for site in made:
        close_app(site.app)


def test_a_flow_deployed_on_one_host_runs_on_another(hosts):
    one, two = hosts(), hosts()
    one.session().deploy(deployment(id="greeter"))
    assert two.session(OTHER).call("GET", "/greeter").json()["title"] == "Greeter"
    final = two.flow("greeter", OTHER).run({"name": "Ada"}, wait=True)
    assert final["details"]["output"]["said"] == {"greeting": "Ada"}
    assert one.flow("greeter", OTHER).status(final["action_id"])["status"] == "SUCCEEDED"
    changed = one.session().call("PUT", "/greeter", json={"title": "Renamed"})
    assert changed.status_code == 200
    assert two.flow("greeter", OTHER).introspect()["title"] == "Renamed"


def test_two_hosts_deploying_one_id_at_once_one_wins(hosts):
    one, two = hosts(), hosts()
    answers = []
    barrier = threading.Barrier(2)

    def deploy(site):
        barrier.wait()
        answers.append(site.session().call("POST", json=deployment(id="race")).status_code)

    threads = [threading.Thread(target=deploy, args=(s,)) for s in (one, two)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(answers) == [201, 409]


def test_directory_files_are_deployed_once_by_every_host(hosts, tmp_path):
    flows_dir = tmp_path / "flows"
    flows_dir.mkdir()
    (flows_dir / "shared.json").write_text(json.dumps({"title": "Shared", "definition": PASS_SUCCEED,
                                                       "visible_to": ["public"]}))
    sites = [hosts(APTK_FLOWS_DIR=str(flows_dir)) for _ in range(3)]
    for site in sites:
        assert site.session(OTHER).call("GET", "/shared").json()["version"] == 1


def test_a_run_whose_host_died_is_taken_up_by_another_host(hosts):
    one = hosts()
    one.session().deploy(deployment(id="greeter"))
    runtime = get_toolkit(one.app).runtime
    runtime.start()
    now = runtime.clock()
    action = Action(
        action_id=uuid.uuid4().hex, provider="flows/greeter", request_id="r", request_hash="h",
        creator_id=urn(OTHER), status=Status.ACTIVE, body={"name": "Bo"}, start_time=now - 100, attempts=1,
        runner="gone:1:dead", heartbeat=now - 100, principals=[urn(OTHER), "all_authenticated_users"],
    )
    runtime.store.create(action, log=(now - 100, "ActionStarted", "Action started"), now=now - 100)
    two = hosts()
    get_toolkit(two.app).runtime.start()
    get_toolkit(two.app).runtime.sweep()
    final = two.flow("greeter", OTHER, scopes=[SCOPE]).wait(action.action_id, timeout=20)
    assert final["status"] == "SUCCEEDED" and final["details"]["output"]["said"] == {"greeting": "Bo"}
