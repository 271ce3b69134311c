#!/usr/bin/env python
"""Profile the toolkit's run->status round trip in-process (no gunicorn, no sockets), with cProfile.

    .venv/bin/python bench/profile_roundtrip.py                 # 1000 round trips, top functions by own time
    .venv/bin/python bench/profile_roundtrip.py -n 500 --sort cumulative --top 60
    .venv/bin/python bench/profile_roundtrip.py --thread-executor   # callbacks on the real thread pool (not profiled)

Requests go through Flask's test client straight into the app that ``toolkit.testing.provider_client`` builds for
``providers.hello``. By default the run callback executes inline (a synchronous executor), so that cProfile, which
sees only the calling thread, also sees the callback and the store update that completes the action: the same
work per round trip as under gunicorn, in one thread. The maintenance thread is not profiled.

It also prints a breakdown of where a round trip's time goes, by toolkit layer.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import providers.hello  # noqa: E402
from toolkit.testing import provider_client  # noqa: E402


class InlineExecutor:
    """Runs each callback at once on the submitting thread."""

    def submit(self, fn) -> None:
        fn()

    def shutdown(self, wait: bool = False) -> None:
        pass


def runs(client, token: str, n: int) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    for _ in range(n):
        r = client.post(
            "/provider/run", json={"request_id": uuid.uuid4().hex, "body": {"echo_string": "x"}}, headers=headers
        )
        assert r.status_code == 202, r.get_data(as_text=True)


def statuses(client, token: str, n: int, action_id: str) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    for _ in range(n):
        s = client.get(f"/provider/{action_id}/status", headers=headers)
        assert s.status_code == 200, s.get_data(as_text=True)


def round_trips(client, token: str, n: int) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    for _ in range(n):
        r = client.post(
            "/provider/run", json={"request_id": uuid.uuid4().hex, "body": {"echo_string": "x"}}, headers=headers
        )
        assert r.status_code == 202, r.get_data(as_text=True)
        s = client.get(f"/provider/{r.get_json()['action_id']}/status", headers=headers)
        assert s.status_code == 200, s.get_data(as_text=True)


# Functions whose cumulative time says what a layer costs (inclusive; layers nest, so do not add them up).
LAYERS = [
    ("whole request(s) (Flask test client)", "werkzeug/test.py", "open"),
    ("Flask dispatch to the view (full_dispatch_request)", "flask/app.py", "full_dispatch_request"),
    ("token verification (dev JWT, cached)", "toolkit/auth", "verify"),
    ("request JSON parse + checks", "toolkit/blueprint.py", "_json_body"),
    ("ActionRequest load (marshmallow)", "marshmallow/schema.py", "load"),
    ("body validation (jsonschema)", "toolkit/provider.py", "validate_body"),
    ("authorization (monitor_by)", "toolkit/authorization.py", "require_monitor"),
    ("store.create (3 INSERTs, 1 txn)", "toolkit/store.py", "create"),
    ("store.update (outcome + log, 1 txn)", "toolkit/store.py", "update"),
    ("store.get (status read)", "toolkit/store.py", "get"),
    ("  write transaction (group commit)", "toolkit/store.py", "_commit_group"),
    ("  sqlite3 COMMIT (C)", "~", "<method 'commit' of 'sqlite3.Connection' objects>"),
    ("  sqlite3 execute (C)", "~", "<method 'execute' of 'sqlite3.Cursor' objects>"),
    ("  pool checkout + return", "sqlalchemy/engine/base.py", "raw_connection"),
    ("Runtime._execute (callback + outcome)", "toolkit/lifecycle.py", "_execute"),
    ("status document (dump_status)", "toolkit/documents.py", "dump_status"),
    ("Flask jsonify (responses)", "flask/json/__init__.py", "jsonify"),
    ("Runtime.start (per request)", "toolkit/lifecycle.py", "start"),
]


def layer_table(stats: pstats.Stats, n: int) -> str:
    out = []
    total = None
    for label, file_part, func in LAYERS:
        cum = calls = 0
        for (file, _line, name), (_cc, nc, _tt, ct, _callers) in stats.stats.items():
            if name == func and file_part in file:
                cum += ct
                calls += nc
        if total is None:
            total = cum
        share = 100 * cum / total if total else 0
        out.append(f"  {label:<42} {1000 * cum / n:7.3f} ms/rt  {share:5.1f}%  ({calls / n:.1f} calls/rt)")
    return "\n".join(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-n", type=int, default=1000, help="profiled round trips (default 1000)")
    p.add_argument("--warmup", type=int, default=200, help="unprofiled round trips first (default 200)")
    p.add_argument("--sort", default="tottime", help="pstats sort key (tottime, cumulative, ...)")
    p.add_argument("--top", type=int, default=35)
    p.add_argument("--thread-executor", action="store_true", help="keep the real thread pool executor")
    p.add_argument("--dump", metavar="FILE", help="write the raw profile to FILE (for snakeviz etc.)")
    args = p.parse_args()

    with tempfile.TemporaryDirectory(prefix="aptk-profile-") as tmp:
        options = {} if args.thread_executor else {"executor": InlineExecutor()}
        tc = provider_client(providers.hello.provider, tmp, **options)
        token = tc.session.headers["Authorization"].split()[1]
        client = tc.app.test_client()
        round_trips(client, token, args.warmup)

        t0 = time.perf_counter()
        round_trips(client, token, args.n)
        plain = (time.perf_counter() - t0) / args.n

        profiler = cProfile.Profile()
        profiler.enable()
        round_trips(client, token, args.n)
        profiler.disable()

        # The two requests apart: a run (with its callback and outcome, inline) and a status.
        action_id = client.post("/provider/run", json={"request_id": "one", "body": {"echo_string": "x"}},
                                headers={"Authorization": f"Bearer {token}"}).get_json()["action_id"]
        apart = {}
        for name, work in (("run", lambda: runs(client, token, args.n)),
                           ("status", lambda: statuses(client, token, args.n, action_id))):
            t0 = time.perf_counter()
            work()
            elapsed = (time.perf_counter() - t0) / args.n
            one = cProfile.Profile()
            one.enable()
            work()
            one.disable()
            apart[name] = (elapsed, one)
        tc.app.extensions["aptk"].runtime.stop()

    print(f"{args.n} round trips in-process, unprofiled: {1000 * plain:.3f} ms per round trip "
          f"({1 / plain:.0f} rt/s on one thread)")
    stats = pstats.Stats(profiler)
    print("\nwhere a round trip goes (cumulative, profiled; layers nest):")
    print(layer_table(stats, args.n))
    for name, (elapsed, one) in apart.items():
        print(f"\none {name}, unprofiled: {1000 * elapsed:.3f} ms; where it goes (profiled, ms per {name}):")
        print(layer_table(pstats.Stats(one), args.n))
    buf = io.StringIO()
    pstats.Stats(profiler, stream=buf).sort_stats(args.sort).print_stats(args.top)
    print(buf.getvalue())
    if args.dump:
        profiler.dump_stats(args.dump)
    return 0


if __name__ == "__main__":
    sys.exit(main())
