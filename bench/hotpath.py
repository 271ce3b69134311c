#!/usr/bin/env python
"""Requests per second on the hot path (status and run), in one pass, against two baselines.

    .venv/bin/python bench/hotpath.py                      # SQLite, and PostgreSQL if initdb is installed
    .venv/bin/python bench/hotpath.py --no-postgres --seconds 5 --rounds 2

Servers, each under gunicorn on loopback, started once and measured in turn (round after round, so that drift on a
noisy machine hits all of them):

* ``bare``: ``bench/baseline_app.py``, bare Flask 3, one SQLite (WAL, synchronous=NORMAL) insert per run and one
  indexed read per status, ``--workers`` gthread workers;
* ``reference``: ``bench/reference_app.py`` on globus-action-provider-tools 0.21 from PyPI (installed by this
  script into its own venv under ``~/.cache/aptk-bench``), one worker, actions in a dict, introspection stubbed
  in memory and cached by the package (see that file for exactly what is stubbed);
* ``toolkit``: ``aptk serve --workers N`` (the BufferingWorker, the dev verifier, the /hello provider), on SQLite in
  a temporary data directory, and on a throwaway PostgreSQL cluster when ``initdb`` is there.

Load: ``wrk`` (8 keep-alive connections by default); a status is ``GET /hello/{id}/status`` of one action, a run
``POST /hello/run`` with a fresh ``request_id`` each time. Any non-2xx answer fails the bench.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from common import BENCH_DIR, REPO, tree_usage, use_repo_venv  # noqa: E402

use_repo_venv()

import requests  # noqa: E402

from run_status import Server, _aptk_command, _free_port, _spawn  # noqa: E402

REFERENCE_SPEC = "globus-action-provider-tools[flask]==0.21.*"
REFERENCE_VENV = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "aptk-bench" / "reference-0.21"

STATUS_LUA = """
wrk.method = "GET"
wrk.headers["Authorization"] = "Bearer {token}"
"""

LOAD_CPU: list[float] = []
"""wrk's own CPU seconds per request, for every measurement: what the load generator costs the machine."""

RUN_LUA = """
local counter = 0
local prefix = ""
setup = function(thread) thread:set("tid", tostring(math.random(1, 2^30))) end
init = function(args) prefix = tid .. "-" .. tostring(os.time()) .. "-" end
request = function()
  counter = counter + 1
  local body = '{{"request_id": "' .. prefix .. counter .. '", "body": {{"echo_string": "x"}}}}'
  return wrk.format("POST", "{path}", {{["Authorization"] = "Bearer {token}",
                                       ["Content-Type"] = "application/json"}}, body)
end
"""


@dataclass
class Target:
    label: str
    server: Server
    token: str
    action_id: str = ""
    rates: dict[str, list[float]] = field(default_factory=lambda: {"status": [], "run": []})
    # Per measured run: the server's CPU ms, voluntary and involuntary context switches per request.
    costs: dict[str, list[tuple[float, float, float]]] = field(default_factory=lambda: {"status": [], "run": []})

    def median(self, kind: str) -> float:
        return statistics.median(self.rates[kind]) if self.rates[kind] else float("nan")


def ensure_reference_venv() -> Path:
    python = REFERENCE_VENV / "bin" / "python"
    marker = REFERENCE_VENV / ".installed"
    if not marker.exists():
        print(f"installing {REFERENCE_SPEC} into {REFERENCE_VENV} ...", file=sys.stderr)
        shutil.rmtree(REFERENCE_VENV, ignore_errors=True)
        REFERENCE_VENV.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "venv", str(REFERENCE_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", REFERENCE_SPEC, "gunicorn>=22"], check=True)
        marker.write_text(REFERENCE_SPEC + "\n")
    return python


def gunicorn_cmd(python: str, app: str, port: int, workers: int, threads: int, data: Path) -> list[str]:
    return [python, "-m", "gunicorn", "--chdir", str(BENCH_DIR), "--bind", f"127.0.0.1:{port}",
            "--workers", str(workers), "--worker-class", "gthread", "--threads", str(threads),
            "--graceful-timeout", "10", "--timeout", "60", "--control-socket", str(data / "gunicorn.ctl"), app]


def start_bare(tmp: Path, args: argparse.Namespace) -> Target:
    data = tmp / "bare"
    data.mkdir()
    port = _free_port()
    proc = _spawn(gunicorn_cmd(sys.executable, "baseline_app:app", port, args.workers, args.threads, data),
                  tmp / "bare.log", {"BASELINE_DB": str(data / "baseline.db")})
    base = f"http://127.0.0.1:{port}"
    return Target(f"bare Flask + SQLite, {args.workers} workers", Server("bare", proc, base, base + "/health",
                                                                          tmp / "bare.log"), "none")


def start_reference(tmp: Path, args: argparse.Namespace) -> Target:
    python = ensure_reference_venv()
    data = tmp / "reference"
    data.mkdir()
    port = _free_port()
    proc = _spawn(gunicorn_cmd(str(python), "reference_app:app", port, 1, args.threads, data), tmp / "reference.log")
    base = f"http://127.0.0.1:{port}/hello"
    return Target("reference toolkit, 1 worker, in memory",
                  Server("reference", proc, base, f"http://127.0.0.1:{port}/health", tmp / "reference.log"),
                  "reference-" + uuid.uuid4().hex)


def start_toolkit(tmp: Path, args: argparse.Namespace, name: str, database_url: str | None,
                  source: Path | None = None, worker_class: str | None = None) -> Target:
    data = tmp / name
    port = _free_port()
    cmd = _aptk_command() + ["serve", "--port", str(port), "--workers", str(args.workers),
                             "--threads", str(args.threads), "--data-dir", str(data)]
    env = {"APTK_DATABASE_URL": database_url} if database_url else {}
    if worker_class is not None:  # the same app under plain gunicorn and another worker class, access log kept
        data.mkdir(mode=0o700)
        cmd = gunicorn_cmd(sys.executable, "toolkit.server:create_app()", port, args.workers, args.threads, data)
        cmd[cmd.index("gthread")] = worker_class
        cmd[cmd.index("--chdir") + 1] = str(REPO)
        cmd[-1:-1] = ["--access-logfile", "-"]
        env["APTK_DATA_DIR"] = str(data)
    if source is not None:  # another checkout of the toolkit, e.g. an earlier commit, ahead of this one
        env["PYTHONPATH"] = str(source)
    proc = _spawn(cmd, tmp / f"{name}.log", env)
    base = f"http://127.0.0.1:{port}/hello"
    server = Server(name, proc, base, base + "/", tmp / f"{name}.log")
    server.wait_ready()
    token = subprocess.run(
        _aptk_command() + ["token", "--data-dir", str(data), "--identity", str(uuid.uuid4()), "--expires", "2h"],
        cwd=REPO, check=True, capture_output=True, text=True,
    ).stdout.strip()
    store = "PostgreSQL" if database_url else "SQLite"
    which = f"toolkit at {source.name}" if source is not None else "this toolkit"
    if worker_class is not None:
        which += f" ({worker_class.rsplit('.', 1)[-1]})"
    return Target(f"{which}, {store}, {args.workers} workers", server, token)


def first_action(target: Target) -> None:
    answer = requests.post(target.server.base + "/run", timeout=30,
                           headers={"Authorization": f"Bearer {target.token}"},
                           json={"request_id": uuid.uuid4().hex, "body": {"echo_string": "x"}})
    answer.raise_for_status()
    target.action_id = answer.json()["action_id"]
    requests.get(f"{target.server.base}/{target.action_id}/status", timeout=30,
                 headers={"Authorization": f"Bearer {target.token}"}).raise_for_status()


def wrk(url: str, script: str, args: argparse.Namespace, seconds: float) -> float:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(script)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        out = subprocess.run(
            ["wrk", "-t", str(args.wrk_threads), "-c", str(args.connections), "-d", f"{max(1, round(seconds))}s", "-s", f.name,
             url], capture_output=True, text=True, check=True, timeout=seconds + 60,
        ).stdout
    finally:
        os.unlink(f.name)
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: .*", out)
    if bad or (errors and "timeout 0" not in errors.group(0)):
        raise RuntimeError(f"wrk saw failed requests against {url}:\n{out}")
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    LOAD_CPU.append(cpu / max(1.0, rate * max(1, round(seconds))))
    return rate


def measure(target: Target, kind: str, args: argparse.Namespace, seconds: float) -> float:
    """Requests/s of one wrk run; the server's CPU and context switches per request go to ``target.costs``."""
    before = tree_usage(target.server.proc.pid)
    if kind == "status":
        rate = wrk(f"{target.server.base}/{target.action_id}/status", STATUS_LUA.format(token=target.token),
                   args, seconds)
    else:
        path = requests.utils.urlparse(target.server.base).path + "/run"
        rate = wrk(target.server.base.rsplit("/hello", 1)[0] + path,
                   RUN_LUA.format(token=target.token, path=path), args, seconds)
    after = tree_usage(target.server.proc.pid)
    requests_served = max(1.0, rate * max(1, round(seconds)))
    target.costs[kind].append((1e3 * (after[0] - before[0]) / requests_served,
                               (after[1] - before[1]) / requests_served, (after[2] - before[2]) / requests_served))
    return rate


def report(targets: list[Target], args: argparse.Namespace) -> dict:
    bare, reference = targets[0], (targets[1] if args.reference else None)
    lines = [f"hot path, wrk {args.connections} keep-alive connections, {args.seconds:g} s, "
             f"medians of {args.rounds} (measured alternately, one pass)", ""]
    lines.append(f"| {'':44} | {'status req/s':>30} | {'run req/s':>30} |")
    summary = {}
    for target in targets:
        cells = []
        for kind in ("status", "run"):
            rate = target.median(kind)
            cell = f"{rate:8.0f}"
            if target is not bare:
                cell += f" ({rate / bare.median(kind):.2f}x bare"
                if reference is not None and target is not reference:
                    cell += f", {rate / reference.median(kind):.2f}x ref"
                cell += ")"
            cells.append(cell)
        lines.append(f"| {target.label:44} | {cells[0]:>30} | {cells[1]:>30} |")
        summary[target.label] = {k: {"median": target.median(k), "all": target.rates[k]} for k in ("status", "run")}
    lines += ["", "server CPU per request (ms) and context switches per request (voluntary + involuntary), medians; "
              "a database server's own processes are not counted", ""]
    lines.append(f"| {'':44} | {'status':>22} | {'run':>22} |")
    for target in targets:
        cells = []
        for kind in ("status", "run"):
            costs = target.costs[kind][-args.rounds:]  # the measured rounds, not the warm-up
            cpu, vcs, ivcs = (statistics.median(c[i] for c in costs) for i in range(3))
            cells.append(f"{cpu:5.2f} ms, {vcs:4.1f} + {ivcs:4.1f}")
            summary[target.label][kind]["server_cpu_ms"] = cpu
            summary[target.label][kind]["context_switches"] = [vcs, ivcs]
        lines.append(f"| {target.label:44} | {cells[0]:>22} | {cells[1]:>22} |")
    if LOAD_CPU:
        lines.append("")
        lines.append(f"wrk's own CPU per request: {1e6 * statistics.median(LOAD_CPU):.0f} us median, "
                     f"{1e6 * max(LOAD_CPU):.0f} us at most (a core drives {1 / max(LOAD_CPU):.0f}+ requests/s)")
    print("\n".join(lines))
    return summary


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", type=int, default=2, help="gunicorn workers of the bare app and of aptk (default 2)")
    p.add_argument("--threads", type=int, default=8, help="gthread threads per worker, every server (default 8)")
    p.add_argument("--connections", type=int, default=8, help="wrk keep-alive connections (default 8)")
    p.add_argument("--wrk-threads", type=int, default=2, help="wrk threads (default 2)")
    p.add_argument("--seconds", type=float, default=5.0, help="measured seconds per server and kind (default 5)")
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each server's first round")
    p.add_argument("--rounds", type=int, default=2, help="rounds; the table shows medians (default 2)")
    pg = p.add_mutually_exclusive_group()
    pg.add_argument("--postgres", dest="postgres", action="store_true", default=None,
                    help="also bench the toolkit on PostgreSQL (default: when initdb is installed)")
    pg.add_argument("--no-postgres", dest="postgres", action="store_false")
    p.add_argument("--no-reference", dest="reference", action="store_false",
                   help="skip the reference toolkit (no venv is made)")
    p.add_argument("--compare", type=Path, action="append", default=[], metavar="SRC",
                   help="also bench the toolkit from this source tree (e.g. `git worktree` or `git archive` of an "
                        "earlier commit), in the same pass; repeatable")
    p.add_argument("--gthread", action="store_true",
                   help="also bench the toolkit (SQLite) under gunicorn's plain gthread worker instead of aptk's "
                        "BufferingWorker, to measure what the buffering costs")
    p.add_argument("--json", type=Path, help="write the medians and every sample here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is not installed (Debian: apt-get install wrk)", file=sys.stderr)
        return 2
    if args.postgres is None:
        try:
            from tests.servers.postgres import _binary
            _binary("initdb")
            args.postgres = True
        except (ImportError, RuntimeError):
            args.postgres = False
    tmp = Path(tempfile.mkdtemp(prefix="aptk-hotpath-"))
    targets: list[Target] = []
    postgres = None
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    try:
        targets.append(start_bare(tmp, args))
        if args.reference:
            targets.append(start_reference(tmp, args))
        if args.postgres:
            from tests.servers.postgres import start_postgres

            postgres = start_postgres()
        if args.gthread:
            targets.append(start_toolkit(tmp, args, "aptk-sqlite-gthread", None, worker_class="gthread"))
        for source in [None, *args.compare]:
            tag = "" if source is None else f"-{source.name}"
            targets.append(start_toolkit(tmp, args, f"aptk-sqlite{tag}", None, source))
            if postgres is not None:
                url = postgres.create_database(f"aptk_bench{len(targets)}")
                targets.append(start_toolkit(tmp, args, f"aptk-postgres{tag}", url, source))
        for target in targets:
            target.server.wait_ready()
            first_action(target)
        for target in targets:  # warm up: imports, caches, connection pools, the database file
            for kind in ("status", "run"):
                measure(target, kind, args, args.warmup)
        for round_no in range(args.rounds):
            for target in targets if round_no % 2 == 0 else list(reversed(targets)):
                for kind in ("status", "run"):
                    rate = measure(target, kind, args, args.seconds)
                    target.rates[kind].append(rate)
                    print(f"round {round_no + 1}: {target.server.name:14} {kind:6} {rate:8.0f} req/s",
                          file=sys.stderr)
        summary = report(targets, args)
        if args.json:
            args.json.write_text(json.dumps(summary, indent=2))
        return 0
    except Exception:
        for target in targets:
            print(f"--- {target.server.name} log tail ---\n{target.server.log_tail()}", file=sys.stderr)
        raise
    finally:
        for target in targets:
            target.server.stop()
        if postgres is not None:
            postgres.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
