#!/usr/bin/env python
"""Run -> SUCCEEDED throughput and enqueue-to-start latency with callbacks on RQ workers, against the in-process
executor, in one pass.

    .venv/bin/python bench/scale_queue.py                      # SQLite; 1, 2 and 4 workers; ~2 min
    .venv/bin/python bench/scale_queue.py --postgres --seconds 5 --rounds 1

Each configuration is a fresh deployment on loopback: ``aptk serve --workers 2`` (the ``slow`` provider of
``tests/toolkit/rq_app.py`` with no sleep: the callback only records when it started) on a fresh database, and
for ``rq`` a throwaway ``redis-server`` and N ``aptk worker`` processes. ``wrk`` posts runs with fresh
``request_id``s for ``--seconds``; the bench then waits until every action has ended. From the database and the
callbacks' trace:

* throughput: actions / (last completion - first start), i.e. from the first ``/run`` to the last SUCCEEDED;
* enqueue-to-start latency: callback start - the action's ``start_time`` (stored by ``/run`` just before the
  job is enqueued, or the task submitted to the thread pool), p50 and p99.

Every configuration runs ``--rounds`` times in turn (order reversed each round); medians are reported, with the
ratio of each to the in-process executor of the same pass.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from common import BENCH_DIR, REPO, use_repo_venv  # noqa: E402

use_repo_venv()

import requests  # noqa: E402
import sqlalchemy as sa  # noqa: E402

from common import tree_usage  # noqa: E402
from run_status import _aptk_command, _free_port, _spawn  # noqa: E402

RUN_LUA = """
local counter = 0
local prefix = ""
setup = function(thread) thread:set("tid", tostring(math.random(1, 2^30))) end
init = function(args) prefix = tid .. "-" .. tostring(os.time()) .. "-" end
request = function()
  counter = counter + 1
  local body = '{{"request_id": "' .. prefix .. counter .. '", "body": {{}}}}'
  return wrk.format("POST", "/slow/run", {{["Authorization"] = "Bearer {token}",
                                          ["Content-Type"] = "application/json"}}, body)
end
"""


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Deployment:
    def __init__(self, label: str, workers: int, args: argparse.Namespace, postgres) -> None:
        self.label, self.workers, self.args = label, workers, args
        self.dir = Path(tempfile.mkdtemp(prefix="aptk-bench-queue-"))
        self.procs: list[subprocess.Popen] = []
        self.redis = None
        env = {k: v for k, v in os.environ.items() if not k.startswith("APTK_")}
        env.update({"APTK_TEST_TRACE": "1", "PYTHONPATH": str(REPO), "APTK_DATA_DIR": str(self.dir)})
        if postgres is not None:
            self.db_url = postgres.create_database(f"bench_{uuid.uuid4().hex[:10]}")
            env.update({"APTK_DATABASE_URL": self.db_url, "APTK_REQUEST_KEY": "b" * 40})
        else:
            self.db_url = f"sqlite:///{self.dir / 'aptk.db'}"
        if workers:
            from tests.servers.redis import start_redis

            self.redis = start_redis()
            env.update({"APTK_EXECUTOR": "rq", "APTK_REDIS_URL": self.redis.url})
        self.env = env
        try:
            self._start(label, workers, args)
        except BaseException:
            self.stop()
            raise

    def _start(self, label: str, workers: int, args: argparse.Namespace) -> None:
        env = self.env
        self.port = _free_port()
        self.procs.append(_spawn([*_aptk_command(), "serve", "--app", "tests.toolkit.rq_app:create_app",
                                  "--port", str(self.port), "--workers", "2", "--data-dir", str(self.dir)],
                                 self.dir / "serve.log", env))
        give_up = time.monotonic() + 60
        while True:
            try:
                if requests.get(f"http://127.0.0.1:{self.port}/", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > give_up:
                raise SystemExit(f"{label}: aptk serve did not start:\n{(self.dir / 'serve.log').read_text()[-3000:]}")
            time.sleep(0.1)
        for n in range(workers):
            self.procs.append(_spawn([*_aptk_command(), "worker", "--app", "tests.toolkit.rq_app:create_app",
                                      "--concurrency", str(args.concurrency), "--data-dir", str(self.dir)],
                                     self.dir / f"worker-{n}.log", env))
        if workers:
            from redis import Redis
            from rq import Worker

            connection = Redis.from_url(self.redis.url)
            while Worker.count(connection=connection) < workers * args.concurrency:
                if time.monotonic() > give_up:
                    raise SystemExit(f"{label}: the workers did not start")
                time.sleep(0.1)
        from toolkit.auth import load_dev_key, mint_dev_token
        from tests.toolkit.rq_app import slow

        self.token = mint_dev_token(load_dev_key(self.dir), str(uuid.uuid4()), scopes=[slow.globus_auth_scope])

    def usage(self) -> dict[str, float]:
        """CPU seconds so far of the API server, the workers and Redis (each with the processes under it)."""
        spent = {"api": tree_usage(self.procs[0].pid)[0],
                 "workers": sum(tree_usage(proc.pid)[0] for proc in self.procs[1:])}
        if self.redis is not None and self.redis.process is not None:
            spent["redis"] = tree_usage(self.redis.process.pid)[0]
        return spent

    def measure(self) -> tuple[float, list[float], int, dict[str, float]]:
        """Throughput, start latencies, actions, and CPU ms per action of each part (until all have ended)."""
        before = self.usage()
        rate, latencies, count = self.load()
        after = self.usage()
        return rate, latencies, count, {part: 1e3 * (after[part] - before[part]) / max(1, count) for part in before}

    def load(self) -> tuple[float, list[float], int]:
        with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
            f.write(RUN_LUA.format(token=self.token))
        try:
            out = subprocess.run(["wrk", "-t", "2", "-c", str(self.args.connections), "-d",
                                  f"{self.args.seconds}s", "-s", f.name, f"http://127.0.0.1:{self.port}/slow/run"],
                                 capture_output=True, text=True, check=True, timeout=self.args.seconds + 60).stdout
        finally:
            os.unlink(f.name)
        if "Non-2xx" in out or "Socket errors" in out:
            raise SystemExit(f"{self.label}: wrk saw errors:\n{out}")
        return self.measure_drained()

    def measure_drained(self) -> tuple[float, list[float], int]:
        """Wait until every action has ended; throughput, start latencies and count of what ran; then forget
        them."""
        engine = sa.create_engine(self.db_url)
        give_up = time.monotonic() + 300
        try:
            while True:
                with engine.connect() as conn:
                    active = conn.execute(sa.text("SELECT count(*) FROM aptk_actions WHERE status = 'ACTIVE'")).scalar()
                if not active:
                    break
                if time.monotonic() > give_up:
                    raise SystemExit(f"{self.label}: {active} actions never ended")
                time.sleep(0.2)
            with engine.connect() as conn:
                rows = conn.execute(sa.text("SELECT action_id, status, start_time, completion_time FROM aptk_actions "
                                            "WHERE completion_time IS NOT NULL")).all()
                conn.execute(sa.text("DELETE FROM aptk_action_log"))
                conn.execute(sa.text("DELETE FROM aptk_action_roles"))
                conn.execute(sa.text("DELETE FROM aptk_actions"))
                conn.commit()
        finally:
            engine.dispose()
        assert all(r.status == "SUCCEEDED" for r in rows), "an action did not succeed"
        started = {r.action_id: r.start_time for r in rows}
        trace = self.dir / "trace"
        latencies = []
        for line in trace.read_text().splitlines():
            event, action_id, _, _, at = line.split()
            if event == "start" and action_id in started:
                latencies.append(float(at) - started[action_id])
        trace.unlink()
        span = max(r.completion_time for r in rows) - min(r.start_time for r in rows)
        return len(rows) / span, latencies, len(rows)

    def paced_latency(self) -> list[float]:
        """Enqueue-to-start latency of runs posted one by one at ``--paced-rate`` per second (below every
        configuration's capacity, so that it measures the queue's delay, not a backlog)."""
        session = requests.Session()
        headers = {"Authorization": f"Bearer {self.token}"}
        began = time.monotonic()
        count = int(self.args.paced_rate * self.args.paced_seconds)
        for i in range(count):
            time.sleep(max(0.0, began + i / self.args.paced_rate - time.monotonic()))
            answer = session.post(f"http://127.0.0.1:{self.port}/slow/run", headers=headers, timeout=10,
                                  json={"request_id": uuid.uuid4().hex, "body": {}})
            answer.raise_for_status()
        _, latencies, _ = self.measure_drained()
        return latencies

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        if self.redis is not None:
            self.redis.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=10, help="wrk's run per measurement")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--workers", default="1,2,4", help="RQ worker counts to measure")
    parser.add_argument("--paced-rate", type=float, default=5, help="runs/s of the latency measurement")
    parser.add_argument("--paced-seconds", type=float, default=5)
    parser.add_argument("--concurrency", type=int, default=8, help="callbacks at once per aptk worker")
    parser.add_argument("--postgres", action="store_true", help="a throwaway PostgreSQL instead of SQLite")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("needs wrk (Debian: apt-get install wrk)")
    postgres = None
    if args.postgres:
        from tests.servers.postgres import start_postgres

        postgres = start_postgres()
    configs = [("in-process threads", 0)] + [(f"rq, {n} worker{'s' * (n > 1)} x {args.concurrency}", n)
                                             for n in (int(w) for w in args.workers.split(","))]
    results: dict[str, list[tuple[float, list[float], int, dict[str, float]]]] = {label: [] for label, _ in configs}
    paced: dict[str, list[float]] = {label: [] for label, _ in configs}
    deployments: list[Deployment] = []
    try:
        for label, n in configs:
            deployments.append(Deployment(label, n, args, postgres))
        for round_ in range(args.rounds):
            for d in deployments if round_ % 2 == 0 else reversed(deployments):
                rate, latencies, count, cpu = d.measure()
                results[d.label].append((rate, latencies, count, cpu))
                calm = d.paced_latency()
                paced[d.label] += calm
                print(f"round {round_ + 1}: {d.label}: {count} actions, {rate:.0f}/s, start latency saturated p50 "
                      f"{percentile(latencies, 0.5) * 1000:.1f} ms p99 {percentile(latencies, 0.99) * 1000:.1f} ms, "
                      f"paced p50 {percentile(calm, 0.5) * 1000:.1f} ms p99 {percentile(calm, 0.99) * 1000:.1f} ms, "
                      f"CPU ms/action {', '.join(f'{k} {v:.2f}' for k, v in cpu.items())}",
                      file=sys.stderr)
    finally:
        for d in deployments:
            d.stop()
        if postgres is not None:
            postgres.stop()
    database = "PostgreSQL" if args.postgres else "SQLite"
    print(f"run -> SUCCEEDED, {database}, aptk serve --workers 2, wrk {args.connections} connections "
          f"{args.seconds} s, medians of {args.rounds} rounds (one pass); enqueue-to-start latency of runs paced "
          f"at {args.paced_rate:g}/s\n")
    print(f"| {'':22} | {'actions/s':>20} | {'start p50 ms':>12} | {'start p99 ms':>12} | "
          f"{'CPU ms/action: API + workers + Redis = total':>46} |")
    print(f"|{'-' * 24}|{'-' * 22}|{'-' * 14}|{'-' * 14}|{'-' * 48}|")
    base = statistics.median(r[0] for r in results[configs[0][0]])
    for label, _ in configs:
        rate = statistics.median(r[0] for r in results[label])
        latencies = paced[label]
        ratio = "" if label == configs[0][0] else f" ({rate / base:.2f}x)"
        cpu = {part: statistics.median(r[3].get(part, 0.0) for r in results[label])
               for part in ("api", "workers", "redis")}
        split = f"{cpu['api']:.2f} + {cpu['workers']:.2f} + {cpu['redis']:.2f} = {sum(cpu.values()):.2f}"
        print(f"| {label:22} | {f'{rate:.0f}{ratio}':>20} | {percentile(latencies, 0.5) * 1000:12.1f} | "
              f"{percentile(latencies, 0.99) * 1000:12.1f} | {split:>46} |")


if __name__ == "__main__":
    main()
