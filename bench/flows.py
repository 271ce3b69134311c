#!/usr/bin/env python
"""The flow engine's cost: a flow of hello actions against calling them with the client, and per-state overhead.

    .venv/bin/python bench/flows.py                       # 20 actions, 200 states, 3 rounds; about 1 min
    .venv/bin/python bench/flows.py --actions 20 --states 200 --rounds 5 --postgres

One app (``toolkit.server.create_app``) on a fresh SQLite data directory (or a throwaway PostgreSQL cluster with
``--postgres``) serves the hello provider and two flows, as the flows provider serves them (the run callback is
:func:`providers.flows.engine.execute`). Everything is in this process; the client is the toolkit's
``ActionProviderClient`` over the in-process WSGI transport (``toolkit.testing.TestClient``), so neither side
pays for sockets. Alternately, ``--rounds`` times:

* **client**: ``--actions`` hello actions one after another, each ``run`` then ``wait`` (polling from 10 ms);
* **flow**: one run of a flow of ``--actions`` Action states calling the same hello provider (in-process
  calls, woken at once when a child ends), waited for the same way;
* **states**: one run of a flow of ``--states`` states, Pass and ExpressionEval in turn.

Prints the seconds of each phase per round, the headline **ratio flow/client** (best round of each), and the
per-state overhead of the states flow (its best time divided by the number of states). The client sees the end of
the flow run only at its next poll (10, 20, 40, then every 50 ms): the run's own time, from its ``start_time`` to
its ``completion_time``, and that ratio are printed too, with the CPU time the process spent on each phase.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
try:
    import flask  # noqa: F401
except ImportError:  # run with another python: use the project's venv if there is one
    venv_python = REPO / ".venv" / "bin" / "python"
    if venv_python.exists() and Path(sys.prefix).resolve() != (REPO / ".venv").resolve():
        os.execv(str(venv_python), [str(venv_python), *sys.argv])
    raise SystemExit("needs the project installed: pip install -e '.[test]'") from None

from providers.flows.deployments import DeployedFlow  # noqa: E402
from providers.flows.engine import cancel_children, execute, resume_children  # noqa: E402
from providers.flows.language import validate  # noqa: E402
from providers.hello import provider as hello_provider  # noqa: E402
from toolkit import ActionProvider, get_toolkit  # noqa: E402
from toolkit.server import create_app  # noqa: E402
from toolkit.testing import TestClient, TokenAuthority, close_app  # noqa: E402

ORIGIN = "http://testserver"
OWNER = "11111111-1111-4111-8111-111111111111"


def hello_flow(actions: int) -> dict[str, Any]:
    states: dict[str, dict[str, Any]] = {f"Hello{i}": {"Type": "Action", "ActionUrl": f"{ORIGIN}/hello",
                            "Parameters": {"echo_string": f"hello {i}"}, "ResultPath": f"$.hello{i}",
                            "Next": f"Hello{i + 1}"} for i in range(actions)}
    states[f"Hello{actions - 1}"].pop("Next")
    states[f"Hello{actions - 1}"]["End"] = True
    return {"StartAt": "Hello0", "States": states}


def states_flow(count: int) -> dict[str, Any]:
    states: dict[str, Any] = {}
    for i in range(count):
        if i % 2:
            state = {"Type": "ExpressionEval", "Parameters": {"n.=": f"n + {i}"}, "ResultPath": "$"}
        else:
            state = {"Type": "Pass", "Parameters": {"n.$": "$.n"}, "ResultPath": "$"}
        states[f"S{i}"] = {**state, "Next": f"S{i + 1}"} if i < count - 1 else {**state, "End": True}
    return {"StartAt": "S0", "States": states}


def flow_provider(flow_id: str, definition: dict[str, Any]) -> ActionProvider:
    flow = DeployedFlow(id=flow_id, title=flow_id, definition=validate(definition), input_schema={"type": "object"},
                        owner=OWNER, source=definition)
    provider = ActionProvider(name=f"flow_{flow_id}", title=flow_id, input_schema=flow.input_schema,
                              recovery="rerun", max_attempts=10)
    provider.run(lambda body, ctx: execute(flow, body, ctx))
    provider.cancel(lambda action, ctx: cancel_children(action, ctx))
    provider.resume(lambda action, ctx: resume_children(action, ctx))
    return provider


def finish(client: TestClient, status: dict[str, Any]) -> dict[str, Any]:
    if status["status"] not in ("SUCCEEDED", "FAILED"):
        status = client.wait(status["action_id"], timeout=600, initial_interval=0.01, max_interval=0.05)
    if status["status"] != "SUCCEEDED":
        raise SystemExit(f"action {status['action_id']} ended {status['status']}: {status['details']}")
    return status


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--actions", type=int, default=20)
    parser.add_argument("--states", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--postgres", action="store_true", help="a throwaway PostgreSQL cluster instead of SQLite")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="aptk-bench-flows-"))
    config: dict[str, Any] = {"APTK_DATA_DIR": str(work / "data"), "APTK_PUBLIC_URL": ORIGIN}
    cluster = None
    if args.postgres:
        from tests.servers.postgres import start_postgres

        cluster = start_postgres()
        config["APTK_DATABASE_URL"] = cluster.url
    authority = TokenAuthority()
    providers = [("/hello", hello_provider), ("/flows/hellos", flow_provider("hellos", hello_flow(args.actions))),
                 ("/flows/states", flow_provider("states", states_flow(args.states)))]
    app = create_app(config, providers=providers, verifier=authority.verifier)
    scopes = [p.globus_auth_scope for p in get_toolkit(app).runtime.providers.values()]
    token = authority.token(OWNER, scopes=scopes)
    hello = TestClient(app, "/hello", token, authority)
    hellos = TestClient(app, "/flows/hellos", token, authority)
    many = TestClient(app, "/flows/states", token, authority)
    timings: dict[str, list[float]] = {"client": [], "flow": [], "states": []}
    own: list[float] = []  # the flow runs' own start-to-completion times
    cpu: dict[str, list[float]] = {"client": [], "flow": [], "states": []}  # process CPU time, every thread
    try:
        finish(hello, hello.run({"echo_string": "warm up"}))
        finish(many, many.run({"n": 0}))
        for round_ in range(args.rounds):
            order = ["client", "flow", "states"] if round_ % 2 == 0 else ["states", "flow", "client"]
            for phase in order:
                started, cpu_started = time.perf_counter(), time.process_time()
                if phase == "client":
                    for i in range(args.actions):
                        finish(hello, hello.run({"echo_string": f"hello {i}"}, request_id=uuid.uuid4().hex))
                elif phase == "flow":
                    done = finish(hellos, hellos.run({}))
                    assert len(done["details"]["states"]) == args.actions
                    own.append((datetime.datetime.fromisoformat(done["completion_time"])
                                - datetime.datetime.fromisoformat(done["start_time"])).total_seconds())
                else:
                    done = finish(many, many.run({"n": 0}))
                    assert len(done["details"]["states"]) == args.states
                timings[phase].append(time.perf_counter() - started)
                cpu[phase].append(time.process_time() - cpu_started)
            print(f"round {round_ + 1}: " + ", ".join(f"{p} {timings[p][-1]:.3f} s" for p in timings),
                  file=sys.stderr)
    finally:
        close_app(app)
        if cluster is not None:
            cluster.stop()
        shutil.rmtree(work, ignore_errors=True)

    best = {phase: min(values) for phase, values in timings.items()}
    database = "PostgreSQL" if args.postgres else "SQLite"
    print(f"{database}, best of {args.rounds} round(s)")
    print(f"client: {args.actions} hello actions one after another  {best['client']:.3f} s "
          f"({best['client'] / args.actions * 1000:.1f} ms each)")
    print(f"flow:   one run of {args.actions} Action states         {best['flow']:.3f} s "
          f"({best['flow'] / args.actions * 1000:.1f} ms each)")
    print(f"ratio flow/client: {best['flow'] / best['client']:.2f}x")
    print(f"flow run's own time (start to completion) {min(own):.3f} s ({min(own) / args.actions * 1000:.1f} ms "
          f"per Action state): {min(own) / best['client']:.2f}x the client")
    print(f"CPU time of the process (every thread; best round): client {min(cpu['client']):.3f} s, "
          f"flow {min(cpu['flow']):.3f} s")
    print(f"states: one run of {args.states} Pass/ExpressionEval states {best['states']:.3f} s: "
          f"{best['states'] / args.states * 1000:.2f} ms per state")


if __name__ == "__main__":
    main()
