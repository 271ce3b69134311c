"""Scale-out under faults: 2 API processes (`aptk serve`, APTK_EXECUTOR=rq), 3 `aptk worker`s, PostgreSQL and
Redis, all real processes on loopback. Thousands of actions of mixed providers go in while a worker is killed
with -9, Redis restarts empty and PostgreSQL restarts; afterwards every acknowledged action has ended (SUCCEEDED,
or FAILED with a reason), none is ACTIVE, none was created twice, and no action ever ran twice at once.

``APTK_TEST_E2E_ACTIONS`` sets the number of actions (default 2000).
"""

from __future__ import annotations

import collections
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import requests

from tests.e2e.support import Server
from tests.toolkit.rq_app import fragile, slow

pytest.importorskip("rq")
pytest.importorskip("psycopg")
ROOT = Path(__file__).resolve().parents[2]
ACTIONS = int(os.environ.get("APTK_TEST_E2E_ACTIONS", "2000"))
LEASE = 5


def start_worker(env: dict[str, str], data_dir: Path, log_dir: Path, n: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "toolkit.cli", "worker", "--app", "tests.toolkit.rq_app:create_app",
         "--data-dir", str(data_dir)],
        env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=open(log_dir / f"worker-{n}.err", "ab"),
        start_new_session=True,
    )


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_actions_survive_a_killed_worker_a_redis_restart_and_a_postgres_restart(tmp_path):
    from tests.servers.postgres import start_postgres
    from tests.servers.redis import start_redis
    from toolkit.auth import load_dev_key, mint_dev_token

    try:
        redis_server = start_redis()
    except RuntimeError as exc:
        pytest.skip(str(exc))
    postgres = start_postgres()
    api: list[Server] = []
    workers: list[subprocess.Popen[bytes]] = []
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o700)
    try:
        database = postgres.create_database("scale")
        env = {k: v for k, v in os.environ.items() if not k.startswith("APTK_")}
        env.update({"APTK_EXECUTOR": "rq", "APTK_REDIS_URL": redis_server.url, "APTK_DATABASE_URL": database,
                    "APTK_REQUEST_KEY": "k" * 40, "APTK_LEASE_SECONDS": str(LEASE), "APTK_TEST_TRACE": "1",
                    "PYTHONPATH": str(ROOT)})
        for _ in range(2):
            server = Server(data_dir, tmp_path, workers=1, env=env,
                            args=["--app", "tests.toolkit.rq_app:create_app", "--threads", "8"])
            api.append(server.start())
        workers += [start_worker(env, data_dir, tmp_path, n) for n in range(3)]
        from redis import Redis
        from rq import Worker

        redis_client = Redis.from_url(redis_server.url)
        give_up = time.monotonic() + 60
        while Worker.count(connection=redis_client) < 3:  # every worker listening before the run begins
            assert time.monotonic() < give_up, "the workers did not start"
            time.sleep(0.1)
        key = load_dev_key(data_dir)
        scopes = ["urn:aptk:scope:hello", slow.globus_auth_scope, fragile.globus_auth_scope]
        tokens = [mint_dev_token(key, str(uuid.uuid4()), scopes=scopes) for _ in range(4)]

        # Clients: each request is retried with its request_id until acknowledged (a 503 or a lost connection
        # means "try again"); every acknowledgement is recorded.
        acked: dict[tuple[int, str], set[str]] = collections.defaultdict(set)
        codes: collections.Counter[int] = collections.Counter()
        lock = threading.Lock()
        submitted = [0]
        work = [(i, random.Random(i).random()) for i in range(ACTIONS)]

        def client(number: int) -> None:
            session = requests.Session()
            for i, roll in work[number::8]:
                who = i % len(tokens)
                if roll < 0.7:
                    prefix, body = "/hello", {"echo_string": f"n{i}"}
                elif roll < 0.9:
                    prefix, body = "/slow", {"sleep": round(roll - 0.6, 2), "n": i}
                else:
                    prefix, body = "/fragile", {"sleep": round(roll - 0.6, 2), "n": i}
                request_id = f"req-{i}"
                give_up = time.monotonic() + 120
                while True:
                    server = api[(i + number) % 2]
                    try:
                        response = session.post(f"{server.url}{prefix}/run", timeout=10,
                                                json={"request_id": request_id, "body": body},
                                                headers={"Authorization": f"Bearer {tokens[who]}"})
                        with lock:
                            codes[response.status_code] += 1
                        if response.status_code in (200, 202):
                            with lock:
                                acked[(who, request_id)].add(response.json()["action_id"])
                                submitted[0] += 1
                            break
                        assert response.status_code == 503, response.text
                        assert response.headers.get("Retry-After")
                    except requests.ConnectionError:
                        pass
                    assert time.monotonic() < give_up, f"{request_id} was never acknowledged"
                    time.sleep(0.2)

        began = time.monotonic()
        phases: dict[str, float] = {}
        threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()

        def when(fraction: float) -> None:
            while submitted[0] < ACTIONS * fraction and any(t.is_alive() for t in threads):
                time.sleep(0.05)

        when(0.2)
        # A worker in the middle of a callback (one whose run started and has not ended), if one is.
        trace_path = data_dir / "trace"
        open_runs: dict[str, str] = {}
        for line in trace_path.read_text().splitlines() if trace_path.exists() else []:
            event, action_id, _, pid, _ = line.split()
            if event == "start":
                open_runs[action_id] = pid
            else:
                open_runs.pop(action_id, None)
        busy = {int(pid) for pid in open_runs.values()}
        victim = next((w for w in workers if w.pid in busy), workers[0])
        os.kill(victim.pid, signal.SIGKILL)
        killed_at = time.time()
        victim.wait()
        phases["worker killed"] = time.monotonic() - began
        workers.append(start_worker(env, data_dir, tmp_path, 3))
        when(0.45)
        redis_server.restart(down_for=1.0)
        phases["redis restarted"] = time.monotonic() - began
        when(0.7)
        postgres.restart(down_for=1.0)
        phases["postgres restarted"] = time.monotonic() - began
        for thread in threads:
            thread.join()
        phases["all acknowledged"] = time.monotonic() - began

        # Every acknowledged action ends.
        import sqlalchemy as sa

        engine = sa.create_engine(database)
        give_up = time.monotonic() + 240
        while True:
            with engine.connect() as conn:
                active = conn.execute(sa.text("SELECT count(*) FROM aptk_actions WHERE status IN "
                                              "('ACTIVE', 'INACTIVE')")).scalar()
            if not active or time.monotonic() > give_up:
                break
            time.sleep(1)
        phases["all ended"] = time.monotonic() - began
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT action_id, request_id, status, details FROM aptk_actions")).all()
        engine.dispose()
        assert active == 0, f"{active} actions still ACTIVE"
        assert len(acked) == ACTIONS
        assert all(len(ids) == 1 for ids in acked.values()), "a retried request got another action"
        by_id = {r.action_id: r for r in rows}
        assert len(rows) == ACTIONS  # nothing created twice, nothing half-stored by a refused request
        assert {i for ids in acked.values() for i in ids} == set(by_id)
        statuses = collections.Counter(r.status for r in rows)
        assert set(statuses) <= {"SUCCEEDED", "FAILED"}, statuses
        import json

        for row in rows:
            details = row.details if isinstance(row.details, dict) else json.loads(row.details)
            if row.status == "FAILED":
                assert details.get("code") and details.get("description"), row
        # No action ever ran twice at once: the runs of each action follow one another.
        runs: dict[str, dict[tuple[str, str], list[float]]] = collections.defaultdict(dict)
        for line in (data_dir / "trace").read_text().splitlines():
            event, action_id, attempt, pid, at = line.split()
            runs[action_id].setdefault((attempt, pid), []).append(float(at))
        for action_id, attempts in runs.items():
            spans = sorted((times[0], times[1] if len(times) > 1 else killed_at) for times in attempts.values())
            for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
                assert start >= end, f"action {action_id} ran twice at once: {attempts}"
        print(f"\n{ACTIONS} actions: {dict(statuses)}; answers {dict(codes)}; "
              f"{sum(len(a) > 1 for a in runs.values())} ran more than once (one after the other); "
              f"seconds: { {k: round(v, 1) for k, v in phases.items()} }")
    finally:
        for process in workers:
            if process.poll() is None:
                process.terminate()
        for process in workers:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for server in api:
            server.stop()
        redis_server.stop()
        postgres.stop()
