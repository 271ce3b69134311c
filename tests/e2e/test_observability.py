"""Operations over real HTTP against `aptk serve`: /metrics summed over gunicorn workers and who may read it,
/healthz, JSON logs with the action id, no token in any log."""

from __future__ import annotations

import json
import os
import re
import subprocess
import textwrap
import time
import uuid
from pathlib import Path

import requests

from .support import REQUEST_TIMEOUT, Api

USER = {"user": {"identity": str(uuid.uuid4())}}


def scrape(url: str, **kwargs) -> dict[str, float]:
    """The samples of a /metrics answer: 'name{labels}' -> value."""
    answer = requests.get(url + "/metrics", timeout=REQUEST_TIMEOUT, **kwargs)
    assert answer.status_code == 200, answer.text
    assert answer.headers["Content-Type"].startswith("text/plain")
    samples = {}
    for line in answer.text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def sample(samples: dict[str, float], name: str, **labels: str) -> float:
    """The value of series ``name`` whose labels include ``labels`` (0 if absent)."""
    total = 0.0
    for key, value in samples.items():
        series, _, rest = key.partition("{")
        found = dict(re.findall(r'(\w+)="([^"]*)"', rest))
        if series == name and all(found.get(k) == v for k, v in labels.items()):
            total += value
    return total


def worker_pids(master: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(master)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def metrics_dir_of(pid: int) -> str | None:
    """The multi-process metrics directory a worker has its files open in (from /proc/PID/maps)."""
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        found = re.search(r"(/\S*aptk-metrics-[^/\s]+)/", line)
        if found:
            return found.group(1)
    return None


# --- /metrics ---------------------------------------------------------------------------------------------------


def test_metrics_count_the_requests_and_actions_of_both_workers_whichever_worker_answers(start_server):
    server = start_server(workers=2, env={"APTK_METRICS": "true"}, tokens=USER)
    api = Api(server.hello, server.minted["user"])
    runs = 24
    ids = [api.run({"echo_string": f"n{i}"}).json()["action_id"] for i in range(runs)]  # a connection each
    for action_id in ids:
        api.wait_for(action_id, {"SUCCEEDED"}, timeout=10)
    requests.get(server.hello + "/run-nowhere/x/y", timeout=REQUEST_TIMEOUT)
    requests.get(f"{server.hello}/{ids[0]}/status", headers={"Authorization": "Bearer not-a-token"},
                 timeout=REQUEST_TIMEOUT)
    requests.get(f"{server.hello}/{ids[0]}/status", timeout=REQUEST_TIMEOUT)

    workers = worker_pids(server.process.pid)
    directories = {metrics_dir_of(pid) for pid in workers}
    scrapes = [scrape(server.url) for _ in range(8)]  # new connections: both workers answer some

    assert len(workers) == 2 and len(directories) == 1 and None not in directories
    for samples in scrapes:
        assert sample(samples, "aptk_actions_total", provider="hello", status="ACTIVE") == runs
        assert sample(samples, "aptk_actions_total", provider="hello", status="SUCCEEDED") == runs
        assert sample(samples, "aptk_action_duration_seconds_count", provider="hello", status="SUCCEEDED") == runs
        assert sample(samples, "aptk_action_queue_seconds_count", provider="hello") == runs
        assert sample(samples, "aptk_callback_seconds_count", provider="hello") == runs
        assert sample(samples, "aptk_http_requests_total", route="/hello/run", method="POST", code="202") == runs
        assert sample(samples, "aptk_http_request_duration_seconds_count", route="/hello/run") == runs
        assert sample(samples, "aptk_http_requests_total", route="<unmatched>", code="404") == 1
        assert sample(samples, "aptk_auth_failures_total", reason="invalid_token") == 1
        assert sample(samples, "aptk_auth_failures_total", reason="missing_token") == 1
        assert sample(samples, "aptk_actions_running", provider="hello") == 0
    directory = directories.pop()
    assert Path(directory).is_dir()

    server.stop()
    assert not Path(directory).exists()


def test_a_worker_killed_keeps_its_counts_and_its_replacement_adds_to_them(start_server):
    server = start_server(workers=2, env={"APTK_METRICS": "true"}, tokens=USER)
    api = Api(server.hello, server.minted["user"])
    for i in range(10):
        api.wait_for(api.run({"echo_string": f"k{i}"}).json()["action_id"], {"SUCCEEDED"}, timeout=10)
    before = worker_pids(server.process.pid)
    os.kill(before[0], 9)
    deadline = time.monotonic() + 20
    while set(worker_pids(server.process.pid)) & set(before) != {before[1]} or len(
            worker_pids(server.process.pid)) < 2:
        assert time.monotonic() < deadline, "gunicorn did not replace the killed worker"
        time.sleep(0.1)
    for i in range(4):
        api.wait_for(api.run({"echo_string": f"after{i}"}).json()["action_id"], {"SUCCEEDED"}, timeout=10)

    samples = scrape(server.url)

    assert sample(samples, "aptk_actions_total", provider="hello", status="SUCCEEDED") == 14


def test_metrics_are_not_served_unless_turned_on(start_server):
    server = start_server(workers=1)

    answer = requests.get(server.url + "/metrics", timeout=REQUEST_TIMEOUT)

    assert answer.status_code == 404


def test_without_a_token_metrics_are_refused_to_requests_relayed_by_a_proxy(start_server):
    server = start_server(workers=1, env={"APTK_METRICS": "1"})

    direct = requests.get(server.url + "/metrics", timeout=REQUEST_TIMEOUT)
    relayed = requests.get(server.url + "/metrics", headers={"X-Forwarded-For": "203.0.113.9"},
                           timeout=REQUEST_TIMEOUT)
    forwarded = requests.get(server.url + "/metrics", headers={"Forwarded": "for=203.0.113.9"},
                             timeout=REQUEST_TIMEOUT)

    assert direct.status_code == 200
    assert "aptk_http_requests_total" in direct.text
    assert (relayed.status_code, relayed.json()["code"]) == (403, "Forbidden")
    assert forwarded.status_code == 403


def test_with_a_token_metrics_need_exactly_that_bearer_token(start_server):
    secret = "metrics-" + uuid.uuid4().hex
    server = start_server(workers=1, env={"APTK_METRICS": "on", "APTK_METRICS_TOKEN": secret})

    def get(headers):
        return requests.get(server.url + "/metrics", headers=headers, timeout=REQUEST_TIMEOUT)

    none, wrong, right = get({}), get({"Authorization": "Bearer " + secret[:-1]}), get(
        {"Authorization": "Bearer " + secret, "X-Forwarded-For": "203.0.113.9"})

    assert (none.status_code, none.headers["WWW-Authenticate"]) == (401, "Bearer")
    assert wrong.status_code == 401
    assert right.status_code == 200
    assert "aptk_http_requests_total" in right.text
    assert secret not in server.stderr() + server.stdout_path.read_text()


# --- /healthz -----------------------------------------------------------------------------------------------------


def test_healthz_answers_without_credentials_and_says_which_checks_passed(start_server):
    server = start_server(workers=1)

    answer = requests.get(server.url + "/healthz", timeout=REQUEST_TIMEOUT)

    assert answer.status_code == 200
    assert answer.json() == {"status": "ok", "checks": {"store": "ok"}}
    assert answer.headers["Cache-Control"] == "no-store"


def test_healthz_is_503_while_postgresql_is_down_and_names_nothing_of_it(start_server, tmp_path):
    from tests.servers.postgres import start_postgres

    postgres = start_postgres()
    try:
        url = postgres.create_database("health")
        server = start_server(workers=1, env={"APTK_DATABASE_URL": url, "APTK_REQUEST_KEY": "k" * 32})
        up = requests.get(server.url + "/healthz", timeout=REQUEST_TIMEOUT)
        subprocess.run([*postgres._run_as, _pg_ctl(), "-D", str(postgres.directory / "db"), "-m", "immediate",
                        "stop"], check=True, capture_output=True, timeout=30)
        down = requests.get(server.url + "/healthz", timeout=30)
    finally:
        postgres.stop()

    assert up.status_code == 200
    assert down.status_code == 503
    assert down.json() == {"status": "unavailable", "checks": {"store": "failing"}}
    assert str(postgres.port) not in down.text


def _pg_ctl() -> str:
    from tests.servers.postgres import _binary

    return _binary("pg_ctl")


# --- JSON logs --------------------------------------------------------------------------------------------------

PROVIDER_MODULE = textwrap.dedent('''
    import logging

    from toolkit import ActionProvider
    from toolkit.server import create_app

    log = logging.getLogger("chatty")
    chatty = ActionProvider(title="Chatty", input_schema={"type": "object"}, runnable_by=["all_authenticated_users"],
                            globus_auth_scope="urn:aptk:scope:chatty")

    @chatty.run
    def run(body, ctx):
        log.warning("working for %s with Bearer %s", ctx.identity.id, ctx.identity.token)
        if body.get("crash"):
            raise RuntimeError("crashed on purpose")
        ctx.sleep(body.get("sleep", 0))
        return {}

    @chatty.cancel
    def cancel(action, ctx):
        log.warning("cancel asked")

    app = create_app(providers=[("/chatty", chatty)])
''')


def test_json_logs_carry_the_action_id_on_every_line_about_an_action_and_never_a_token(start_server, tmp_path):
    (tmp_path / "chatty_app.py").write_text(PROVIDER_MODULE)
    server = start_server(
        workers=1, args=["--app", "chatty_app:app"], tokens=None,
        env={"APTK_LOG_FORMAT": "json", "PYTHONPATH": str(tmp_path)},
    )
    identity = str(uuid.uuid4())
    token = server.tokens({"t": server.token_command(identity, scopes=["urn:aptk:scope:chatty"])})["t"]
    api = Api(server.url + "/chatty", token)
    crashed = api.run({"crash": True}).json()["action_id"]
    api.wait_for(crashed, {"FAILED"}, timeout=10)
    sleeping = api.run({"sleep": 30}).json()["action_id"]
    api.wait_for(sleeping, {"ACTIVE"}, timeout=10)
    give_up = time.monotonic() + 10  # its callback has started (and logged) before it is cancelled
    while not any("working" in line and sleeping in line for line in server.stderr().splitlines()):
        assert time.monotonic() < give_up, "the callback never started"
        time.sleep(0.05)
    assert api.post(f"/{sleeping}/cancel").status_code == 200
    requests.get(f"{server.url}/chatty/{crashed}/status", headers={"Authorization": "Bearer " + token + "x"},
                 timeout=REQUEST_TIMEOUT)
    server.stop()

    err, out = server.stderr(), server.stdout_path.read_text()
    lines = [json.loads(line) for line in (err + out).splitlines()]  # every line, the server's first ones too
    about = {a: [entry for entry in lines if a in json.dumps(entry) or entry.get("action_id") == a]
             for a in (crashed, sleeping)}

    assert token not in err + out
    assert token.split(".")[2] not in err + out
    assert all({"time", "level", "logger", "message"} <= set(entry) for entry in lines)
    assert [e["message"] for e in lines if e["logger"] == "aptk"][0].startswith("data in ")
    working = [e for e in lines if e["logger"] == "chatty" and e["message"].startswith("working")]
    assert [e["action_id"] for e in working] == [crashed, sleeping]
    assert all("Bearer [redacted]" in e["message"] for e in working)
    failure = [e for e in lines if e["logger"] == "toolkit.lifecycle" and "crashed on purpose" in e.get("exception", "")]
    assert [e["action_id"] for e in failure] == [crashed]
    assert [e["action_id"] for e in lines if e["message"] == "cancel asked"] == [sleeping]
    access = [e for e in lines if e["logger"] == "gunicorn.access"]
    assert any(f"/chatty/{crashed}/status" in e["message"] for e in access)
    for action_id, entries in about.items():
        assert entries
        assert all(e.get("action_id") == action_id or e["logger"] == "gunicorn.access" for e in entries), entries
