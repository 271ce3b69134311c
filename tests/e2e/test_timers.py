"""Timers in real time under the real `aptk serve --workers 3`: one run per tick, none twice across a kill -9.

Timers are made and read with `aptk timer`, as a user would.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import uuid
from typing import Any

import pytest

from .support import APTK, HELLO_SCOPE, Api, Server

pytestmark = pytest.mark.slow

USER = str(uuid.uuid4())
TIMERS_SCOPE = "urn:aptk:scope:timers"
ENV = {"APTK_TIMERS_MIN_INTERVAL": "1", "APTK_LEASE_SECONDS": "3"}
TOKENS = {"user": {"identity": USER, "scopes": [TIMERS_SCOPE, HELLO_SCOPE]}}


def aptk_timer(server: Server, *args: str) -> Any:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("APTK_")}
    env = {**clean, "APTK_TOKEN": server.minted["user"], "APTK_TIMERS_URL": f"{server.url}/timers"}
    result = subprocess.run([APTK, "timer", *args], capture_output=True, text=True, timeout=60, env=env,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def wait_for_timer(server: Server, timer_id: str, done: Any, timeout: float) -> dict[str, Any]:
    give_up = time.monotonic() + timeout
    while True:
        status = aptk_timer(server, "show", timer_id)
        if done(status) or time.monotonic() > give_up:
            return status
        time.sleep(0.3)


def tick_labels(server: Server) -> list[int]:
    """The tick of every hello action (their labels end in #<tick>)."""
    actions = Api(server.hello, server.minted["user"]).get("/actions?limit=100").json()["actions"]
    return sorted(int(re.search(r"#(\d+)$", a["label"]).group(1)) for a in actions)


def test_a_two_second_timer_runs_hello_five_times_once_per_tick(start_server):
    server = start_server(workers=3, env=ENV, tokens=TOKENS)
    timer = aptk_timer(server, "create", server.hello, "--body", '{"echo_string": "tick"}', "--interval", "2s",
                       "--stop-after-runs", "5", "--name", "five")
    assert timer["status"] == "ACTIVE"
    done = wait_for_timer(server, timer["action_id"], lambda s: s["status"] != "ACTIVE", timeout=40)
    assert done["status"] == "SUCCEEDED", done
    assert done["details"]["runs"] == 5
    ticks = tick_labels(server)
    assert len(ticks) == 5 and len(set(ticks)) == 5  # five actions, each of its own tick
    assert done["details"]["skipped"] == ticks[-1] + 1 - 5  # any tick without a run is recorded skipped
    listed = aptk_timer(server, "list")
    assert [t["action_id"] for t in listed] == [timer["action_id"]]


def test_kill_9_between_ticks_and_a_restart_runs_no_tick_twice(start_server):
    server = start_server(workers=3, env=ENV, tokens=TOKENS)
    timer = aptk_timer(server, "create", server.hello, "--body", '{"echo_string": "tick"}', "--interval", "2",
                       "--stop-after-runs", "6")
    timer_id = timer["action_id"]
    wait_for_timer(server, timer_id, lambda s: s["details"]["runs"] >= 2, timeout=30)
    port, minted = server.port, server.minted
    server.kill()
    time.sleep(4)  # two ticks pass while nothing serves
    server.start(port=port)  # the same address: the timer's target is this server
    server.minted = minted  # tokens signed with the data directory's key stay good
    done = wait_for_timer(server, timer_id, lambda s: s["status"] != "ACTIVE", timeout=60)
    assert done["status"] == "SUCCEEDED", done
    ticks = tick_labels(server)
    assert len(ticks) == len(set(ticks)) == 6, ticks
    assert done["details"]["runs"] == 6
    assert done["details"]["skipped"] >= 1  # the ticks of the downtime, recorded rather than run late
    assert done["details"]["skipped"] == ticks[-1] + 1 - 6


def aptk_timer_fails(server: Server, *args: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("APTK_")}
    env = {**clean, "APTK_TOKEN": server.minted["user"], "APTK_TIMERS_URL": f"{server.url}/timers"}
    result = subprocess.run([APTK, "timer", *args], capture_output=True, text=True, timeout=60, env=env,
                            stdin=subprocess.DEVNULL)
    assert result.returncode != 0, result.stdout
    return result


def hello_status(server: Server, action_id: str) -> dict[str, Any]:
    return Api(server.hello, server.minted["user"]).get(f"/{action_id}/status").json()


def test_cancel_leaves_a_running_run_alone_unless_asked(start_server):
    server = start_server(workers=3, env=ENV, tokens=TOKENS)
    body = '{"echo_string": "long", "sleep_time": 600}'
    asked = aptk_timer(server, "create", server.hello, "--body", body, "--interval", "2s", "--cancel-running")
    plain = aptk_timer(server, "create", server.hello, "--body", body, "--interval", "2s")
    started = {}
    for made in (asked, plain):
        shown = wait_for_timer(server, made["action_id"], lambda s: s["details"]["runs"] >= 1, timeout=30)
        started[made["action_id"]] = shown["details"]["last_runs"][0]["action_id"]

    # Made with --cancel-running: cancelling the timer cancels its run (in whichever worker serves the cancel).
    aptk_timer(server, "cancel", asked["action_id"])
    assert hello_status(server, started[asked["action_id"]])["status"] == "FAILED"
    assert aptk_timer(server, "show", asked["action_id"])["details"]["last_runs"][0]["status"] == "FAILED"

    # Made without it: the run is left ACTIVE, unless the cancel asks.
    aptk_timer(server, "cancel", plain["action_id"])
    assert hello_status(server, started[plain["action_id"]])["status"] == "ACTIVE"
    plain_two = aptk_timer(server, "create", server.hello, "--body", body, "--interval", "2s")
    run = wait_for_timer(server, plain_two["action_id"], lambda s: s["details"]["runs"] >= 1,
                         timeout=30)["details"]["last_runs"][0]["action_id"]
    printed = aptk_timer(server, "cancel", plain_two["action_id"], "--cancel-running")
    assert printed["details"]["last_runs"][0]["status"] == "FAILED"
    assert hello_status(server, run)["status"] == "FAILED"
    Api(server.hello, server.minted["user"]).post(f"/{started[plain['action_id']]}/cancel")


def test_a_body_the_local_target_refuses_is_refused_when_the_timer_is_made(start_server):
    server = start_server(workers=1, env=ENV, tokens=TOKENS)
    refused = aptk_timer_fails(server, "create", server.hello, "--body", '{"echo_string": 5}', "--interval", "2s")
    assert "body.callback_body.echo_string: 5 is not of type 'string'" in refused.stderr + refused.stdout
    assert aptk_timer(server, "list") == []
