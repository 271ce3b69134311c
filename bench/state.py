#!/usr/bin/env python
"""Status latency as the store grows: the median of ``GET /hello/{id}/status`` with 1,000,000 stored actions
against the median with 1,000, on SQLite and on PostgreSQL, in one pass.

    .venv/bin/python bench/state.py                           # 1e3 and 1e6, SQLite and PostgreSQL; ~10 min
    .venv/bin/python bench/state.py --large 100000 --no-postgres --requests 500

Per database kind, two stores are filled by bulk insert (not through the API: SQLite ``executemany``, PostgreSQL
``COPY``): ``--small`` and ``--large`` completed actions of the ``hello`` provider, each with its role row and two
log lines, as the toolkit stores them; then ``aptk serve --workers 1`` serves each store, and status requests of
actions picked at random among the stored ones (so that the large store is read all over, not one cached page)
go over real HTTP, one at a time on a kept-alive connection, alternating between the servers round after round.
Printed: the median latency of each server and the ratio large/small. The promise is a ratio within 1.3.
"""

from __future__ import annotations

import argparse
import json
import os
import random
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

from run_status import Server, _aptk_command, _free_port, _spawn  # noqa: E402
from toolkit.store import SQLStore, _ACTION_COLUMNS  # noqa: E402

BATCH = 20_000
SAMPLE = 5_000
"""Actions of each store whose status is asked for (picked at random among all)."""


def rows(count: int, creator: str, now: float):
    """Batches of (actions, roles, log) rows: completed actions that expire in a year, as the toolkit stores them."""
    principal = f"urn:globus:auth:identity:{creator}"
    for start in range(0, count, BATCH):
        actions, roles, log = [], [], []
        for i in range(start, min(count, start + BATCH)):
            action_id = uuid.uuid4().hex
            begun = now - 86400 + i * 1e-3
            status = "SUCCEEDED" if i % 10 else "FAILED"
            details = '{"hello": "x"}' if status == "SUCCEEDED" else '{"code": "ActionError", "description": "d"}'
            values = {
                "action_id": action_id, "provider": "hello", "request_id": action_id, "request_hash": "0" * 64,
                "creator_id": principal, "status": status, "body": '{"echo_string": "x"}', "details": details,
                "label": None, "monitor_by": "[]", "manage_by": "[]", "start_time": begun,
                "completion_time": begun + 1, "release_after": 365 * 86400.0, "expires_at": begun + 1 + 365 * 86400,
                "display_status": None, "deadline": None, "attempts": 1, "runner": None, "heartbeat": begun,
                "principals": json.dumps([principal]),
            }
            actions.append(tuple(values[c] for c in _ACTION_COLUMNS))
            roles.append((action_id, "creator_id", principal))
            log.append((action_id, begun, "ActionStarted", "Action started", "null"))
            log.append((action_id, begun + 1, "ActionSucceeded", "Action SUCCEEDED", "null"))
        yield actions, roles, log


def fill_sqlite(path: Path, count: int, creator: str) -> list[str]:
    """The toolkit's tables, filled without a journal (a bench's throwaway file), committed batch by batch."""
    import sqlite3

    import sqlalchemy as sa

    from toolkit.store import metadata

    engine = sa.create_engine(f"sqlite:///{path}")  # the toolkit's schema; the server turns WAL on when it opens it
    metadata.create_all(engine)
    engine.dispose()
    conn = sqlite3.connect(path, isolation_level=None)
    for pragma in ("journal_mode=OFF", "synchronous=OFF", "cache_size=-262144"):
        conn.execute(f"PRAGMA {pragma}")
    places = ", ".join("?" for _ in _ACTION_COLUMNS)
    ids: list[str] = []
    for actions, roles, log in rows(count, creator, time.time()):
        conn.execute("BEGIN")
        conn.executemany(f"INSERT INTO aptk_actions ({', '.join(_ACTION_COLUMNS)}) VALUES ({places})", actions)
        conn.executemany("INSERT INTO aptk_action_roles VALUES (?, ?, ?)", roles)
        conn.executemany("INSERT INTO aptk_action_log (action_id, time, code, description, details) "
                         "VALUES (?, ?, ?, ?, ?)", log)
        conn.execute("COMMIT")
        ids += _sample(actions, count)
    conn.execute("ANALYZE")
    conn.close()
    return ids


def fill_postgres(url: str, count: int, creator: str) -> list[str]:
    import psycopg

    store = SQLStore(url)
    store.create_schema()
    store.dispose()
    dsn = url.replace("postgresql+psycopg://", "postgresql://")
    ids: list[str] = []
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        for actions, roles, log in rows(count, creator, time.time()):
            with cur.copy(f"COPY aptk_actions ({', '.join(_ACTION_COLUMNS)}) FROM STDIN") as copy:
                for row in actions:
                    copy.write_row(row)
            with cur.copy("COPY aptk_action_roles (action_id, role, principal) FROM STDIN") as copy:
                for row in roles:
                    copy.write_row(row)
            with cur.copy("COPY aptk_action_log (action_id, time, code, description, details) FROM STDIN") as copy:
                for row in log:
                    copy.write_row(row)
            ids += _sample(actions, count)
        conn.commit()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
    return ids


def _sample(actions: list[tuple], count: int) -> list[str]:
    share = max(1, round(SAMPLE * len(actions) / count))
    return [row[0] for row in random.sample(actions, min(share, len(actions)))]


def serve(tmp: Path, name: str, data: Path, creator: str, database_url: str | None) -> tuple[Server, str]:
    port = _free_port()
    env = {"APTK_DATABASE_URL": database_url, "APTK_REQUEST_KEY": "k" * 32} if database_url else {}
    proc = _spawn(_aptk_command() + ["serve", "--port", str(port), "--workers", "1", "--data-dir", str(data)],
                  tmp / f"{name}.log", env)
    base = f"http://127.0.0.1:{port}/hello"
    server = Server(name, proc, base, base + "/", tmp / f"{name}.log")
    server.wait_ready(timeout=300)
    token = subprocess.run(_aptk_command() + ["token", "--data-dir", str(data), "--identity", creator,
                                              "--expires", "2h"], cwd=REPO, check=True, capture_output=True,
                           text=True).stdout.strip()
    return server, token


def measure(server: Server, token: str, ids: list[str], count: int) -> list[float]:
    """Seconds of ``count`` status requests of random stored actions, one at a time on one connection."""
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token}"
    times = []
    for action_id in random.choices(ids, k=count):
        started = time.perf_counter()
        answer = session.get(f"{server.base}/{action_id}/status", timeout=30)
        times.append(time.perf_counter() - started)
        if answer.status_code != 200:
            raise RuntimeError(f"{server.name}: status answered {answer.status_code}: {answer.text[:200]}")
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", type=int, default=1_000)
    parser.add_argument("--large", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=1_000, help="status requests per server per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--no-sqlite", action="store_true")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="aptk-bench-state-"))
    kinds = [k for k, off in (("SQLite", args.no_sqlite), ("PostgreSQL", args.no_postgres)) if not off]
    servers: list[Server] = []
    postgres = None
    results = []
    try:
        for kind in kinds:
            creator = str(uuid.uuid4())
            targets = []
            for size in (args.small, args.large):
                name = f"{kind.lower()}-{size}"
                data = tmp / name
                data.mkdir(mode=0o700)
                started = time.monotonic()
                url = None
                if kind == "SQLite":
                    ids = fill_sqlite(data / "aptk.db", size, creator)
                else:
                    if postgres is None:
                        from tests.servers.postgres import start_postgres

                        postgres = start_postgres()
                    url = postgres.create_database(f"state_{size}")
                    ids = fill_postgres(url, size, creator)
                print(f"{name}: {size:,} actions stored in {time.monotonic() - started:.0f} s", file=sys.stderr)
                server, token = serve(tmp, name, data, creator, url)
                servers.append(server)
                measure(server, token, ids, 100)  # warm-up: connections, caches of the process
                targets.append((size, server, token, ids, []))
            for round_number in range(args.rounds):
                for size, server, token, ids, samples in (targets if round_number % 2 == 0 else targets[::-1]):
                    times = measure(server, token, ids, args.requests)
                    samples.append(statistics.median(times))
                    print(f"  round {round_number + 1}: {kind} {size:,}: median {samples[-1] * 1e3:.2f} ms",
                          file=sys.stderr)
            (small, *_, small_samples), (large, *_, large_samples) = targets
            small_median, large_median = statistics.median(small_samples), statistics.median(large_samples)
            results.append((kind, small, small_median, large, large_median))
            for server in servers:
                server.stop()
            servers.clear()
    finally:
        for server in servers:
            server.stop()
        if postgres is not None:
            postgres.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\n{'store':<12} {'actions':>10} {'median status':>14} {'actions':>10} {'median status':>14} {'ratio':>7}")
    for kind, small, small_median, large, large_median in results:
        print(f"{kind:<12} {small:>10,} {small_median * 1e3:>11.2f} ms {large:>10,} {large_median * 1e3:>11.2f} ms "
              f"{large_median / small_median:>6.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
