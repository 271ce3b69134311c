"""Callbacks on RQ workers over a real Redis (APTK_EXECUTOR=rq): the API side in-process, workers as ``aptk
worker`` processes or in-process in burst mode."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from toolkit.extension import get_toolkit
from toolkit.rq_executor import INDEX_SCRIPT, QUEUED_RUNNER, RQExecutor, work
from toolkit.server import create_app
from toolkit.testing import TestClient, TokenAuthority, close_app

from .rq_app import fragile, slow

pytest.importorskip("rq")
ROOT = Path(__file__).resolve().parents[2]


class Deployment:
    """One API app (in-process, test client) on a data directory and a Redis; workers beside it."""

    def __init__(self, data_dir: Path, redis_url: str, **config: Any) -> None:
        self.data_dir = data_dir
        self.redis_url = redis_url
        self.config = {"APTK_DATA_DIR": str(data_dir), "APTK_EXECUTOR": "rq", "APTK_REDIS_URL": redis_url,
                       "APTK_LEASE_SECONDS": 2, **config}
        self.authority = TokenAuthority()
        self.app = create_app(self.config, providers=[("/slow", slow), ("/fragile", fragile)],
                              verifier=self.authority.verifier)
        self.runtime = get_toolkit(self.app).runtime
        self.workers: list[subprocess.Popen[bytes]] = []

    def client(self, prefix: str = "/slow", identity: str | None = None) -> TestClient:
        token = self.authority.token(identity, scopes=[slow.globus_auth_scope, fragile.globus_auth_scope])
        client = TestClient(self.app, prefix, token, self.authority)
        client.test_token = token  # type: ignore[attr-defined]
        return client

    def start_worker(self, *extra: str) -> subprocess.Popen[bytes]:
        env = {**os.environ, "APTK_REDIS_URL": self.redis_url, "APTK_TEST_TRACE": "1", "APTK_LEASE_SECONDS": "2",
               "PYTHONPATH": str(ROOT)}
        process = subprocess.Popen(
            [sys.executable, "-m", "toolkit.cli", "worker", "--app", "tests.toolkit.rq_app:create_app",
             "--data-dir", str(self.data_dir), *extra],
            env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=open(self.data_dir / f"worker-{len(self.workers)}.log", "ab"),
        )
        self.workers.append(process)
        return process

    def worker_app_run(self, **kwargs: Any) -> None:
        """An in-process worker (a second app on the same data directory) that works until the queue is empty."""
        app = create_app(self.config, providers=[("/slow", slow), ("/fragile", fragile)],
                         verifier=self.authority.verifier)
        try:
            work(get_toolkit(app).runtime, queues=["aptk"], burst=True, **kwargs)
        finally:
            close_app(app)

    def trace(self) -> list[list[str]]:
        path = self.data_dir / "trace"
        return [line.split() for line in path.read_text().splitlines()] if path.exists() else []

    def close(self) -> None:
        for process in self.workers:
            if process.poll() is None:
                process.terminate()
        for process in self.workers:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        close_app(self.app)


@pytest.fixture
def deployment(tmp_path, redis_server) -> Iterator[Deployment]:
    d = Deployment(tmp_path, redis_server.url)
    try:
        yield d
    finally:
        d.close()


def wait_for(predicate, timeout: float = 20.0, interval: float = 0.05) -> Any:
    give_up = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > give_up:
            raise AssertionError("timed out waiting")
        time.sleep(interval)


def test_run_is_queued_then_a_worker_runs_it_with_the_callers_token(deployment, monkeypatch):
    monkeypatch.setenv("APTK_TEST_TRACE", "1")
    client = deployment.client()
    status = client.run({"n": 7}, request_id="r1")
    assert status["status"] == "ACTIVE"
    stored = deployment.runtime.store.get(status["action_id"])
    assert stored is not None and stored.runner == QUEUED_RUNNER  # nobody runs it until a worker takes it
    # The job holds the token sealed, never in clear.
    executor = deployment.runtime.executor
    assert isinstance(executor, RQExecutor)
    dump = b"".join(executor.connection.dump(k) or b"" for k in executor.connection.keys("rq:job:*"))
    assert dump and client.test_token.encode() not in dump
    assert client.test_token.split(".")[-1].encode() not in dump
    deployment.worker_app_run()
    done = client.status(status["action_id"])
    assert done["status"] == "SUCCEEDED", done
    assert done["details"]["n"] == 7
    assert done["details"]["token_sha256"] == hashlib.sha256(client.test_token.encode()).hexdigest()
    assert [event for event, *_ in deployment.trace()] == ["start", "end"]


def test_a_job_delivered_twice_runs_its_callback_once(deployment, monkeypatch):
    monkeypatch.setenv("APTK_TEST_TRACE", "1")
    client = deployment.client()
    status = client.run({}, request_id="r1")
    action = deployment.runtime.store.get(status["action_id"])
    executor = deployment.runtime.executor
    executor.enqueue(action.action_id, action.attempts, provider="slow", identity=action.creator_id + "x",
                     resumed=False, token=None)  # the same job again, on another queue
    deployment.worker_app_run()
    assert client.status(status["action_id"])["status"] == "SUCCEEDED"
    assert [event for event, *_ in deployment.trace()] == ["start", "end"]


def test_redis_down_answers_503_and_stores_nothing(deployment, redis_server):
    client = deployment.client()
    redis_server.kill()
    response = client.session.post(client.url + "/run", json={"request_id": "r1", "body": {}},
                                   headers={"Authorization": f"Bearer {client.test_token}"})
    assert response.status_code == 503, response.text
    assert response.headers["Retry-After"] == "5"
    assert response.json()["code"] == "ServiceUnavailable"
    store = deployment.runtime.store
    creator = deployment.authority.verifier.verify(client.test_token).id
    assert store.find_request("slow", creator, "r1") is None
    # Redis back: the same request is accepted and runs.
    redis_server.start()
    status = client.run({}, request_id="r1")
    deployment.worker_app_run()
    assert client.status(status["action_id"])["status"] == "SUCCEEDED"


def test_actions_whose_jobs_redis_lost_are_enqueued_again(deployment, redis_server):
    client = deployment.client()
    ids = [client.run({}, request_id=f"r{i}")["action_id"] for i in range(3)]
    redis_server.restart()  # nothing on disk: every job is gone
    deployment.worker_app_run()
    assert all(client.status(i)["status"] == "ACTIVE" for i in ids)
    # Once the lease has passed, a sweep (any process's) finds them queued with no job, and enqueues them again.
    deployment.runtime.sweep(time.time() + 3)
    deployment.worker_app_run()
    assert [client.status(i)["status"] for i in ids] == ["SUCCEEDED"] * 3


def test_queued_actions_whose_jobs_wait_are_kept_not_requeued(deployment):
    client = deployment.client()
    action_id = client.run({}, request_id="r1")["action_id"]
    executor = deployment.runtime.executor
    deployment.runtime.sweep(time.time() + 3)
    assert executor.depth() == 1  # vouched for by its waiting job, not enqueued again
    assert deployment.runtime.store.get(action_id).heartbeat > time.time() - 1


def test_a_job_a_dead_worker_took_off_its_queue_is_enqueued_again(deployment):
    """A worker killed between taking a job off its queue and writing that it started leaves the job's hash
    saying "queued" in no queue: after the lease, the sweep enqueues it again and it runs once."""
    client = deployment.client()
    action_id = client.run({}, request_id="r1")["action_id"]
    redis = deployment.runtime.executor.connection
    origin = redis.hget(f"rq:job:aptk-{action_id}-1", "origin").decode()
    assert redis.lpop(f"rq:queue:{origin}") == f"aptk-{action_id}-1".encode()  # as the dead worker did
    assert redis.hget(f"rq:job:aptk-{action_id}-1", "status") == b"queued"
    deployment.worker_app_run()
    assert client.status(action_id)["status"] == "ACTIVE"  # nothing to run: the job is in no queue
    deployment.runtime.sweep(time.time() + 3)
    deployment.worker_app_run()
    assert client.status(action_id)["status"] == "SUCCEEDED"


def test_a_callers_queue_quiet_for_longer_than_the_horizon_is_still_served_and_forgotten_once_empty(deployment):
    """The index of sub-queues forgets callers nobody has enqueued for in QUEUE_MEMORY_SECONDS: once their queue is
    empty, so that it does not grow with every caller ever seen, and never while a job still waits in it."""
    from toolkit.rq_executor import QUEUE_INDEX, QUEUE_MEMORY_SECONDS

    client = deployment.client()
    action_id = client.run({}, request_id="old")["action_id"]
    redis = deployment.runtime.executor.connection
    index = QUEUE_INDEX.format("aptk")
    [waiting] = redis.zrange(index, 0, -1)
    long_ago = time.time() - QUEUE_MEMORY_SECONDS - 3600
    redis.zadd(index, {waiting: long_ago, b"aptk:gone-caller": long_ago, b"aptk:recent-caller": time.time() - 60})
    deployment.worker_app_run()
    assert client.status(action_id)["status"] == "SUCCEEDED"  # its job had waited past the horizon: still run
    assert redis.zscore(index, waiting) > long_ago  # and its queue listened on again meanwhile
    assert redis.zscore(index, b"aptk:gone-caller") is None  # empty and quiet past the horizon: forgotten
    assert redis.zscore(index, b"aptk:recent-caller") is not None  # empty, but within it: kept
    deployment.worker_app_run()  # a later look forgets the first one too, now empty, once it is old again
    redis.zadd(index, {waiting: long_ago})
    deployment.worker_app_run()
    assert redis.zscore(index, waiting) is None


def test_cancel_reaches_a_callback_on_a_worker_within_a_second(deployment):
    deployment.start_worker()
    client = deployment.client()
    action_id = client.run({"sleep": 60}, request_id="r1")["action_id"]
    wait_for(lambda: client.status(action_id).get("display_status") == "sleeping")
    cancelled_at = time.time()
    assert client.cancel(action_id)["status"] == "FAILED"
    end = wait_for(lambda: [float(t) for event, aid, _, _, t in deployment.trace() if event == "end"], timeout=5)
    assert end[0] - cancelled_at < 1.2
    assert client.status(action_id)["details"]["code"] == "ActionCancelled"


@pytest.mark.parametrize("prefix, expect", [("/slow", "SUCCEEDED"), ("/fragile", "FAILED")])
def test_a_worker_killed_mid_callback_is_taken_up_again_or_failed(deployment, prefix, expect):
    first = deployment.start_worker()
    client = deployment.client(prefix)
    action_id = client.run({"sleep": 5}, request_id="r1")["action_id"]  # still sleeping when killed
    wait_for(lambda: client.status(action_id).get("display_status") == "sleeping")
    first.send_signal(signal.SIGKILL)
    first.wait()
    deployment.start_worker()
    final = client.wait(action_id, timeout=30, max_interval=0.2)
    assert final["status"] == expect, final
    if expect == "SUCCEEDED":
        assert final["details"]["attempt"] == 2 and final["details"]["pid"] != first.pid
    else:
        assert final["details"]["code"] == "WorkerLost"
    # Never two runs at once: the second attempt started after the first one's process was gone.
    starts = [(int(a), float(t)) for event, _, a, _, t in deployment.trace() if event == "start"]
    assert [a for a, _ in starts] == ([1, 2] if expect == "SUCCEEDED" else [1])


def test_callers_take_turns_on_the_queue(deployment, monkeypatch):
    monkeypatch.setenv("APTK_TEST_TRACE", "1")
    busy, other = deployment.client(), deployment.client()
    busy_ids = [busy.run({}, request_id=f"b{i}")["action_id"] for i in range(20)]
    other_id = other.run({}, request_id="o1")["action_id"]
    deployment.worker_app_run()
    order = [aid for event, aid, *_ in deployment.trace() if event == "start"]
    assert sorted(order) == sorted([*busy_ids, other_id])
    assert order.index(other_id) <= 1  # not after the busy caller's twenty


def test_aptk_worker_needs_a_redis_url(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "APTK_REDIS_URL"}
    result = subprocess.run([sys.executable, "-m", "toolkit.cli", "worker", "--data-dir", str(tmp_path),
                             "--provider", "hello"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "APTK_REDIS_URL" in result.stderr


def test_one_worker_process_runs_concurrency_callbacks_at_once(deployment):
    worker = deployment.start_worker("--concurrency", "2")
    clients = [deployment.client(), deployment.client()]  # two callers: the second is not held back for the first
    ids = [client.run({"sleep": 1.5}, request_id="r")["action_id"] for client in clients]
    for client, action_id in zip(clients, ids, strict=True):
        assert client.wait(action_id, timeout=60, max_interval=0.2)["status"] == "SUCCEEDED"
    runs = {aid: (float(t), pid) for event, aid, _, pid, t in deployment.trace() if event == "start"}
    ends = {aid: float(t) for event, aid, _, _, t in deployment.trace() if event == "end"}
    (start_a, pid_a), (start_b, pid_b) = runs[ids[0]], runs[ids[1]]
    assert pid_a == pid_b == str(worker.pid)
    assert max(start_a, start_b) < min(ends[ids[0]], ends[ids[1]])  # they overlapped
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0


def test_an_action_of_a_provider_no_worker_serves_fails_with_a_reason(deployment):
    client = deployment.client("/fragile")
    action_id = client.run({}, request_id="r1")["action_id"]
    app = create_app(deployment.config, providers=[("/slow", slow)], verifier=deployment.authority.verifier)
    try:
        work(get_toolkit(app).runtime, queues=["aptk"], burst=True)
    finally:
        close_app(app)
    status = client.status(action_id)
    assert status["status"] == "FAILED"
    assert status["details"]["code"] == "ProviderUnavailable"


def test_workers_take_jobs_only_from_their_queue(tmp_path, redis_server):
    d = Deployment(tmp_path, redis_server.url, APTK_QUEUE_NAME="science")
    try:
        client = d.client()
        action_id = client.run({}, request_id="r1")["action_id"]
        d.worker_app_run()  # listens on "aptk"
        assert client.status(action_id)["status"] == "ACTIVE"
        app = create_app(d.config, providers=[("/slow", slow)], verifier=d.authority.verifier)
        try:
            work(get_toolkit(app).runtime, queues=["science"], burst=True)
        finally:
            close_app(app)
        assert client.status(action_id)["status"] == "SUCCEEDED"
    finally:
        d.close()


def test_a_database_that_cannot_be_reached_answers_503_with_retry_after(tmp_path):
    pytest.importorskip("psycopg")
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nobody listens here
    authority = TokenAuthority()
    app = create_app({"APTK_DATA_DIR": str(tmp_path), "APTK_DATABASE_URL":
                      f"postgresql+psycopg://aptk@127.0.0.1:{port}/aptk"}, providers=[("/slow", slow)],
                     verifier=authority.verifier)
    try:
        token = authority.token(scopes=[slow.globus_auth_scope])
        answer = app.test_client().post("/slow/run", json={"request_id": "r1", "body": {}},
                                        headers={"Authorization": f"Bearer {token}"})
        assert answer.status_code == 503, answer.get_data(as_text=True)
        assert answer.headers["Retry-After"] == "2"
        assert answer.get_json()["code"] == "ServiceUnavailable"
    finally:
        close_app(app)


def test_a_worker_waits_for_a_database_that_is_away_at_start(tmp_path, redis_server):
    pytest.importorskip("psycopg")
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nobody listens here
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("APTK_")}, "PYTHONPATH": str(ROOT),
           "APTK_REDIS_URL": redis_server.url, "APTK_DATABASE_URL": f"postgresql+psycopg://aptk@127.0.0.1:{port}/x"}
    log = tmp_path / "worker.err"
    with open(log, "wb") as err:
        process = subprocess.Popen([sys.executable, "-m", "toolkit.cli", "worker", "--app",
                                    "tests.toolkit.rq_app:create_app", "--data-dir", str(tmp_path / "data")],
                                   env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err)
    try:
        wait_for(lambda: log.read_text().count("cannot start") >= 2 or process.poll() is not None, timeout=60)
        assert process.poll() is None, log.read_text()  # still there, retrying
    finally:
        process.kill()
        process.wait()


def test_sigterm_stops_a_worker_after_a_redis_restart(deployment, redis_server):
    worker = deployment.start_worker()
    client = deployment.client()
    first = client.run({}, request_id="r1")["action_id"]
    assert client.wait(first, timeout=60, max_interval=0.2)["status"] == "SUCCEEDED"
    redis_server.restart(down_for=1.0)
    second = client.run({}, request_id="r2")["action_id"]  # it reconnected
    assert client.wait(second, timeout=60, max_interval=0.2)["status"] == "SUCCEEDED"
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=15) == 0


@pytest.mark.parametrize("config, message", [({"APTK_EXECUTOR": "celery"}, "APTK_EXECUTOR must be threads or rq"),
                                             ({"APTK_EXECUTOR": "rq"}, "APTK_EXECUTOR=rq needs APTK_REDIS_URL")])
def test_a_wrong_executor_setting_stops_start_up(tmp_path, monkeypatch, config, message):
    from toolkit import ConfigurationError

    monkeypatch.delenv("APTK_REDIS_URL", raising=False)
    with pytest.raises(ConfigurationError, match=message):
        create_app({"APTK_DATA_DIR": str(tmp_path), **config}, providers=[("/slow", slow)])


def test_a_busy_worker_listens_on_a_new_callers_queue_within_a_second(deployment):
    """The worker looks its sub-queues up at most once a second while busy: a caller who appears meanwhile still
    gets a turn soon, not after the first caller's backlog."""
    worker = deployment.start_worker()
    busy, newcomer = deployment.client(), deployment.client()
    busy_ids = [busy.run({"sleep": 0.2}, request_id=f"b{i}")["action_id"] for i in range(15)]
    wait_for(lambda: any(event == "start" for event, *_ in deployment.trace()))
    late = newcomer.run({}, request_id="n")["action_id"]
    assert newcomer.wait(late, timeout=60, max_interval=0.1)["status"] == "SUCCEEDED"
    order = [aid for event, aid, *_ in deployment.trace() if event == "start"]
    assert order.index(late) <= 8, order  # about a second's worth of the busy caller's 0.2 s jobs, not all 15
    for action_id in busy_ids:
        assert busy.wait(action_id, timeout=60, max_interval=0.2)["status"] == "SUCCEEDED"
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0


def test_rq_suspend_stops_a_worker_taking_jobs_and_resume_lets_it_go_on(deployment):
    from redis import Redis
    from rq.suspension import resume, suspend

    connection = Redis.from_url(deployment.redis_url)
    worker = deployment.start_worker()
    client = deployment.client()
    first = client.run({}, request_id="first")["action_id"]
    assert client.wait(first, timeout=60, max_interval=0.1)["status"] == "SUCCEEDED"
    suspend(connection)
    time.sleep(2.5)  # the worker notices within a second and its current wait ends
    held = client.run({}, request_id="held")["action_id"]
    time.sleep(2)
    assert client.status(held)["status"] == "ACTIVE"
    resume(connection)
    assert client.wait(held, timeout=60, max_interval=0.1)["status"] == "SUCCEEDED"
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _sample(text: str, series: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return None


def test_a_worker_serves_its_callback_metrics_and_the_queue_depth(deployment):
    import requests

    port = _free_port()
    worker = deployment.start_worker("--metrics-port", str(port))
    client = deployment.client()
    ids = [client.run({}, request_id=f"m{i}")["action_id"] for i in range(2)]
    for action_id in ids:
        assert client.wait(action_id, timeout=60, max_interval=0.1)["status"] == "SUCCEEDED"
    text = wait_for(lambda: _metrics_text(port))
    assert _sample(text, 'aptk_callback_seconds_count{provider="slow"}') == 2.0
    assert _sample(text, 'aptk_actions_total{provider="slow",status="SUCCEEDED"}') == 2.0
    # The depth is read from Redis every 5 s: the two jobs are gone from the queue by the next reading.
    wait_for(lambda: _sample(_metrics_text(port) or "", 'aptk_queue_depth{queue="aptk"}') == 0.0, timeout=15)
    assert requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).status_code == 200
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0


def _metrics_text(port: int) -> str | None:
    import requests

    try:
        return requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    except requests.ConnectionError:
        return None


def test_the_api_metrics_give_the_jobs_waiting_in_the_queue(tmp_path, redis_server):
    d = Deployment(tmp_path, redis_server.url, APTK_METRICS="true")
    try:
        client = d.client()
        for i in range(3):
            client.run({}, request_id=f"q{i}")
        scraped = d.app.test_client().get("/metrics", environ_base={"REMOTE_ADDR": "127.0.0.1"})
        assert _sample(scraped.get_data(as_text=True), 'aptk_queue_depth{queue="aptk"}') == 3.0
    finally:
        d.close()


def test_a_worker_metrics_port_in_use_stops_it_with_a_clear_message(deployment):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        worker = deployment.start_worker("--metrics-port", str(port))
        assert worker.wait(timeout=60) != 0
    log = (deployment.data_dir / "worker-0.log").read_text()
    assert f"--metrics-port {port}" in log and "in use" in log


def test_healthz_checks_the_queue(deployment, redis_server):
    probe = deployment.app.test_client()
    up = probe.get("/healthz")
    assert (up.status_code, up.get_json()) == (200, {"status": "ok", "checks": {"store": "ok", "queue": "ok"}})
    redis_server.kill()
    try:
        down = probe.get("/healthz")
        assert (down.status_code, down.get_json()["checks"]) == (503, {"store": "ok", "queue": "failing"})
    finally:
        redis_server.start()


def _commands(connection: Any) -> dict[str, int]:
    return {name.removeprefix("cmdstat_"): stats["calls"] for name, stats in connection.info("commandstats").items()}


def test_a_worker_keeps_rqs_records_of_a_job_in_few_redis_commands(deployment):
    """The worker's bookkeeping of a toolkit job: two pipelines around the callback, nothing for dependents or
    results it never has, the worker's state written only when it changes; RQ's records of the job stay whole."""
    from redis import Redis
    from rq import Queue, Worker
    from rq.registry import FinishedJobRegistry, StartedJobRegistry

    client = deployment.client()
    ids = [client.run({}, request_id=f"r{i}")["action_id"] for i in range(30)]
    connection = Redis.from_url(deployment.redis_url)
    connection.config_resetstat()
    deployment.worker_app_run()
    calls = _commands(connection)
    assert all(client.status(action_id)["status"] == "SUCCEEDED" for action_id in ids)
    # Less what a worker does once a second or once at all rather than per job: the look-ups of its sub-queues
    # (a script, one EVALSHA, that reads the index twice) and loading its scripts into Redis (a first EVALSHA
    # that Redis refuses, then SCRIPT LOAD).
    once = 3 * (calls.get("zrangebyscore", 0) // 2) + 2 * calls.get("script|load", 0)
    per_job = (sum(calls.values()) - once) / len(ids)
    assert per_job <= 26, calls  # RQ's own way: 42
    # None per job (a few at the worker's start and end): transactions, dependents, results, expiries to lift.
    assert all(calls.get(command, 0) <= 5 for command in ("multi", "watch", "smembers", "xadd", "persist")), calls
    assert calls["hset"] <= 5 * len(ids) + 10, calls  # execution, busy, started, finished, idle
    # What `rq info` and RQ's registries show of them.
    name = Queue.all(connection=connection)[-1].name
    queue = Queue(name, connection=connection)
    finished = FinishedJobRegistry(queue=queue)
    assert sorted(finished.get_job_ids()) == sorted(f"aptk-{action_id}-1" for action_id in ids)
    assert StartedJobRegistry(queue=queue).get_job_ids() == []
    job = queue.fetch_job(f"aptk-{ids[0]}-1")
    assert job is not None and job.get_status() == "finished" and job.ended_at is not None
    assert 0 < connection.ttl(job.key) <= 10
    assert not connection.keys("rq:execution:*") and not connection.keys("rq:worker:*:executions")
    for worker in Worker.all(connection=connection):
        assert worker.successful_job_count == len(ids) and worker.get_state() == "idle"


def test_a_toolkit_job_that_raises_goes_to_rqs_failed_registry_and_the_worker_goes_on(deployment):
    from redis import Redis
    from rq import Queue
    from rq.registry import FailedJobRegistry

    from toolkit.rq_executor import PERFORM

    connection = Redis.from_url(deployment.redis_url)
    queue = Queue("aptk", connection=connection)
    broken = queue.enqueue_call(PERFORM, args=("no such action",), job_id="broken")  # perform's arguments wrong
    client = deployment.client()
    action_id = client.run({}, request_id="r")["action_id"]
    deployment.worker_app_run()
    assert FailedJobRegistry(queue=queue).get_job_ids() == ["broken"]
    broken.refresh()
    assert broken.get_status() == "failed" and "TypeError" in (broken.latest_result().exc_string or "")
    assert client.status(action_id)["status"] == "SUCCEEDED"


def test_other_jobs_on_the_queue_take_rqs_own_way(deployment):
    from redis import Redis
    from rq import Queue

    connection = Redis.from_url(deployment.redis_url)
    queue = Queue("aptk", connection=connection)
    job = queue.enqueue_call("os.path.join", args=("a", "b"), result_ttl=60)
    deployment.worker_app_run()
    job.refresh()
    assert job.get_status() == "finished" and job.return_value() == "a/b"  # its result is kept, as RQ does


def test_a_worker_claims_a_queued_action_without_reading_it_first(deployment, monkeypatch):
    """The claim's compare-and-set is the worker's first and only look at the action before the callback."""
    client = deployment.client()
    action_id = client.run({}, request_id="r")["action_id"]
    app = create_app(deployment.config, providers=[("/slow", slow), ("/fragile", fragile)],
                     verifier=deployment.authority.verifier)
    runtime = get_toolkit(app).runtime
    reads: list[str] = []
    original = runtime.store.get
    monkeypatch.setattr(runtime.store, "get", lambda aid, *a, **k: reads.append(aid) or original(aid, *a, **k))
    try:
        assert runtime.perform_queued(action_id, 1, resumed=False, token=None) == "ran"
        assert runtime.perform_queued(action_id, 1, resumed=False, token=None) == "stale"  # delivered twice
        assert runtime.perform_queued("no-such-action", 1, resumed=False, token=None) == "stale"
    finally:
        close_app(app)
    assert reads == []
    assert client.status(action_id)["status"] == "SUCCEEDED"


def test_a_callers_token_is_sealed_once_and_opened_once(deployment, monkeypatch):
    from cryptography.fernet import Fernet

    executor = deployment.runtime.executor
    assert isinstance(executor, RQExecutor)
    sealed = executor.seal("token-a")
    assert sealed is not None and "token-a" not in sealed
    assert executor.seal("token-a") == sealed and executor.seal("token-b") != sealed
    worker = RQExecutor(executor.connection, key=executor._key)
    opened: list[bytes] = []
    original = Fernet.decrypt
    monkeypatch.setattr(Fernet, "decrypt", lambda self, data, *a: opened.append(data) or original(self, data, *a))
    assert [worker.unseal(sealed) for _ in range(3)] == ["token-a"] * 3
    assert len(opened) == 1
    assert worker.unseal(sealed[:-4] + "AAAA") is None  # tampered with: no token


def test_the_rq_extra_parses_redis_replies_with_hiredis(deployment):
    from redis._parsers import _HiredisParser

    executor = deployment.runtime.executor
    assert isinstance(executor, RQExecutor)
    connection = executor.connection.connection_pool.get_connection()
    try:
        assert isinstance(connection._parser, _HiredisParser)
    finally:
        executor.connection.connection_pool.release(connection)


def _count_redis_calls(monkeypatch: Any) -> list[str]:
    """Every command and pipeline a client of this process sends to Redis from now on (a script is one)."""
    from redis import Redis
    from redis.client import Pipeline

    calls: list[str] = []
    command, execute = Redis.execute_command, Pipeline.execute

    index_script = hashlib.sha1(INDEX_SCRIPT.encode()).hexdigest()

    def counted_command(self: Any, *args: Any, **options: Any) -> Any:
        # The look-up of a worker's sub-queues (once a second, not per job) apart from the other scripts.
        calls.append("EVALSHA index" if args[:2] == ("EVALSHA", index_script) else str(args[0]))
        return command(self, *args, **options)

    def counted_execute(self: Any, *args: Any, **kwargs: Any) -> Any:
        if self.command_stack:
            calls.append("pipeline")
        return execute(self, *args, **kwargs)

    monkeypatch.setattr(Redis, "execute_command", counted_command)
    monkeypatch.setattr(Pipeline, "execute", counted_execute)
    return calls


def test_a_busy_worker_sends_two_redis_calls_per_job(deployment, monkeypatch):
    """Waiting jobs: one call takes the next job (the last one's records first, then pop and read), one writes
    RQ's records of its start."""
    client = deployment.client()
    ids = [client.run({}, request_id=f"r{i}")["action_id"] for i in range(40)]
    calls = _count_redis_calls(monkeypatch)
    deployment.worker_app_run()
    assert all(client.status(action_id)["status"] == "SUCCEEDED" for action_id in ids)
    assert calls.count("EVALSHA") == 2 * len(ids) + 1, calls  # + the last take, which finds nothing
    assert len(calls) <= 2 * len(ids) + 30, calls  # + the worker's start and end, RQ's look at empty queues
    assert not {"HGETALL", "LPOP", "BLPOP"} & set(calls[:2 * len(ids)]), calls


def test_the_api_enqueues_a_job_in_one_redis_call(deployment, monkeypatch):
    client = deployment.client()
    client.run({}, request_id="warm")
    calls = _count_redis_calls(monkeypatch)
    client.run({}, request_id="r")
    assert calls == ["EVALSHA"]


def test_a_worker_that_stops_after_a_job_writes_its_records(deployment):
    """A job's records go with the next dequeue; a worker that stops first (here after max_jobs) still writes
    them: the job is finished in RQ's records, the worker idle."""
    from redis import Redis
    from rq import Queue, Worker
    from rq.registry import FinishedJobRegistry, StartedJobRegistry

    client = deployment.client()
    first, second = (client.run({}, request_id=f"r{i}")["action_id"] for i in range(2))
    deployment.worker_app_run(max_jobs=1)
    assert client.status(first)["status"] == "SUCCEEDED" and client.status(second)["status"] == "ACTIVE"
    connection = Redis.from_url(deployment.redis_url)
    queue = Queue([q for q in Queue.all(connection=connection) if q.name != "aptk"][0].name, connection=connection)
    assert FinishedJobRegistry(queue=queue).get_job_ids() == [f"aptk-{first}-1"]
    assert StartedJobRegistry(queue=queue).get_job_ids() == []
    assert queue.fetch_job(f"aptk-{first}-1").get_status() == "finished"
    assert queue.job_ids == [f"aptk-{second}-1"]
    worker = Worker.all(connection=connection)
    assert not worker or (worker[0].successful_job_count == 1 and worker[0].get_state() == "idle")


def test_a_job_whose_hash_is_gone_is_passed_over(deployment):
    client = deployment.client()
    lost, kept = (client.run({}, request_id=f"r{i}")["action_id"] for i in range(2))
    deployment.runtime.executor.connection.delete(f"rq:job:aptk-{lost}-1")
    deployment.worker_app_run()
    assert client.status(kept)["status"] == "SUCCEEDED"
    assert client.status(lost)["status"] == "ACTIVE"  # left to the sweep, which enqueues it again after the lease
