#!/usr/bin/env python
"""Run->status round trips per second through gunicorn: the toolkit's /hello provider against a bare Flask app.

    .venv/bin/python bench/run_status.py                       # defaults: ~45 s
    .venv/bin/python bench/run_status.py --workers 2 --seconds 10 --clients 8

One round trip is ``POST /run`` with ``{"request_id": <fresh>, "body": {"echo_string": "x"}}`` followed by
``GET /{action_id}/status``. Both servers run under gunicorn with the same worker count, worker class (gthread)
and threads; they are measured alternately (baseline, toolkit, baseline, toolkit, ...) to reduce drift. The
headline is the ratio toolkit/baseline. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent

try:
    import gunicorn  # noqa: F401
    import requests
    import toolkit  # noqa: F401
except ImportError:  # run with another python: use the project's venv if there is one
    venv_python = REPO / ".venv" / "bin" / "python"
    if venv_python.exists() and Path(sys.prefix).resolve() != (REPO / ".venv").resolve():
        os.execv(str(venv_python), [str(venv_python), __file__, *sys.argv[1:]])
    raise
from common import aptk_command as _aptk_command, free_port as _free_port  # noqa: E402

BODY = {"echo_string": "x"}


# --- servers ---------------------------------------------------------------------------------------------------



@dataclass
class Server:
    name: str
    proc: subprocess.Popen
    base: str  # URL the round trips go to (…/run, …/{id}/status)
    ready_url: str
    log_path: Path
    token: str | None = None
    stopping: bool = False

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} server exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if requests.get(self.ready_url, timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} server not ready after {timeout} s:\n{self.log_tail()}")

    def request_stop(self) -> None:
        if self.proc.poll() is None and not self.stopping:
            _signal_group(self.proc.pid, signal.SIGTERM)  # gunicorn: graceful shutdown
            self.stopping = True

    def stop(self) -> None:
        """Stop the server and every process it started (it leads its own process group)."""
        pgid = self.proc.pid
        self.request_stop()
        if self.proc.poll() is None:
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                _signal_group(pgid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        _signal_group(pgid, signal.SIGKILL)  # any worker left behind by the arbiter

    def cpu_seconds(self) -> float | None:
        """User+system CPU of every live process in the server's process group (Linux /proc); None elsewhere."""
        return _group_cpu_seconds(self.proc.pid)


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _group_cpu_seconds(pgid: int) -> float | None:
    proc = Path("/proc")
    if not proc.is_dir():
        return None
    total = 0
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
        # fields[0] is state (stat field 3): pgrp is field 5, utime 14, stime 15.
        if int(fields[2]) == pgid:
            total += int(fields[11]) + int(fields[12])
    return total / _TICKS


def _spawn(cmd: list[str], log_path: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    log = open(log_path, "wb")
    try:
        return subprocess.Popen(
            cmd,
            cwd=REPO,
            env={**os.environ, **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,  # gunicorn's access log ("-") goes here
            stderr=log,
            start_new_session=True,  # Ctrl-C reaches only us; we stop the servers ourselves
        )
    finally:
        log.close()


def _gunicorn_has(setting: str) -> bool:
    from gunicorn.config import Config

    return setting in Config().settings


def start_baseline(tmp: Path, args: argparse.Namespace, servers: list[Server]) -> Server:
    port = _free_port()
    data = tmp / "baseline"
    data.mkdir()
    cmd = [
        sys.executable, "-m", "gunicorn",
        "--chdir", str(BENCH_DIR),
        "--bind", f"127.0.0.1:{port}",
        "--workers", str(args.workers),
        "--worker-class", "gthread",
        "--threads", str(args.threads),
        "--graceful-timeout", "10",
        "--timeout", "60",
    ]
    if _gunicorn_has("control_socket"):  # one per server, not the shared ~/.gunicorn default (as `aptk serve`)
        cmd += ["--control-socket", str(data / "gunicorn.ctl")]
    if args.baseline_accesslog:
        cmd += ["--access-logfile", "-"]
    cmd.append("baseline_app:app")
    log_path = tmp / "baseline.log"
    proc = _spawn(cmd, log_path, {"BASELINE_DB": str(data / "baseline.db")})
    server = Server("baseline", proc, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port}/health", log_path)
    servers.append(server)
    return server


def start_toolkit(tmp: Path, args: argparse.Namespace, servers: list[Server]) -> Server:
    port = _free_port()
    data = tmp / "aptk"
    cmd = _aptk_command() + [
        "serve", "--port", str(port), "--workers", str(args.workers), "--threads", str(args.threads),
        "--data-dir", str(data),
    ]
    log_path = tmp / "toolkit.log"
    proc = _spawn(cmd, log_path)
    base = f"http://127.0.0.1:{port}/hello"
    server = Server("toolkit", proc, base, base + "/", log_path)
    servers.append(server)
    return server


def mint_token(tmp: Path) -> str:
    identity = str(uuid.uuid4())
    out = subprocess.run(
        _aptk_command() + ["token", "--data-dir", str(tmp / "aptk"), "--identity", identity, "--expires", "2h"],
        cwd=REPO, check=True, capture_output=True, text=True,
    )
    return out.stdout.strip()


# --- load -------------------------------------------------------------------------------------------------------


def _client_init() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and terminates the pool
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # Pool.terminate() must kill us outright


def client_task(spec: tuple[str, str | None, float, float, float, int]) -> dict:
    """One client: round trips on one keep-alive session from ``t_start`` to ``t_end`` (wall clock).

    Round trips that complete inside [t_measure, t_end] are counted, with their latency; earlier ones are
    the warm-up.
    """
    base, token, t_start, t_measure, t_end, client_id = spec
    session = requests.Session()
    if token:
        session.headers["Authorization"] = f"Bearer {token}"
    run_url = base + "/run"
    latencies: list[float] = []
    errors = 0
    first_error = None
    cpu_start = None
    delay = t_start - time.time()
    if delay > 0:
        time.sleep(delay)
    while True:
        started = time.time()
        if started >= t_end:
            break
        if cpu_start is None and started >= t_measure:
            cpu_start = _own_cpu()
        p0 = time.perf_counter()
        try:
            r = session.post(run_url, json={"request_id": uuid.uuid4().hex, "body": BODY}, timeout=30)
            if r.status_code != 202:
                raise RuntimeError(f"POST /run -> {r.status_code}: {r.text[:200]}")
            action_id = r.json()["action_id"]
            s = session.get(f"{base}/{action_id}/status", timeout=30)
            if s.status_code != 200:
                raise RuntimeError(f"GET /{{id}}/status -> {s.status_code}: {s.text[:200]}")
            s.json()
        except Exception as exc:  # count it, keep going (briefly back off so a dead server does not spin)
            errors += 1
            if first_error is None:
                first_error = f"{type(exc).__name__}: {exc}"
            time.sleep(0.05)
            continue
        elapsed = time.perf_counter() - p0
        finished = time.time()
        if t_measure <= finished <= t_end:
            latencies.append(elapsed)
    cpu = None if cpu_start is None else _own_cpu() - cpu_start
    session.close()
    return {"latencies": latencies, "errors": errors, "first_error": first_error, "cpu": cpu}


def _own_cpu() -> float:
    t = os.times()
    return t.user + t.system


@dataclass
class Phase:
    server: str
    round: int
    seconds: float
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    first_error: str | None = None
    cpu: float | None = None  # server CPU seconds during the measured window
    client_cpu: float = 0.0  # client processes' CPU seconds during (about) the measured window

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds

    @property
    def client_cpu_ms_per_rt(self) -> float | None:
        return 1000 * self.client_cpu / len(self.latencies) if self.latencies else None

    @property
    def cpu_ms_per_rt(self) -> float | None:
        if self.cpu is None or not self.latencies:
            return None
        return 1000 * self.cpu / len(self.latencies)


def measure(pool, server: Server, args: argparse.Namespace, round_no: int) -> Phase:
    t_start = time.time() + 0.3  # let every client process pick up its task first
    t_measure = t_start + args.warmup
    t_end = t_measure + args.seconds
    specs = [(server.base, server.token, t_start, t_measure, t_end, i) for i in range(args.clients)]
    pending = pool.map_async(client_task, specs, chunksize=1)
    # Server CPU over the measured window only.
    cpu_before = cpu_after = None
    time.sleep(max(0.0, t_measure - time.time()))
    cpu_before = server.cpu_seconds()
    time.sleep(max(0.0, t_end - time.time()))
    cpu_after = server.cpu_seconds()
    results = pending.get(timeout=args.warmup + args.seconds + 120)
    phase = Phase(server.name, round_no, args.seconds)
    if cpu_before is not None and cpu_after is not None:
        phase.cpu = cpu_after - cpu_before
    for result in results:
        phase.latencies.extend(result["latencies"])
        phase.errors += result["errors"]
        phase.client_cpu += result["cpu"] or 0.0
        phase.first_error = phase.first_error or result["first_error"]
    if server.proc.poll() is not None:
        raise RuntimeError(f"{server.name} server died during the run:\n{server.log_tail()}")
    return phase


# --- report -----------------------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def report(phases: list[Phase], args: argparse.Namespace) -> dict:
    print()
    print(f"{'round':>5}  {'server':<9} {'rt/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'srv CPU ms/rt':>14} {'client CPU ms/rt':>17} {'errors':>7}")
    for p in phases:
        print(
            f"{p.round:>5}  {p.server:<9} {p.rate:>8.1f} {_fmt(1000 * percentile(p.latencies, 50), '8.2f'):>8} "
            f"{_fmt(1000 * percentile(p.latencies, 95), '8.2f'):>8} {_fmt(p.cpu_ms_per_rt, '14.2f'):>14} "
            f"{_fmt(p.client_cpu_ms_per_rt, '17.2f'):>17} "
            f"{p.errors:>7}"
        )
    summary: dict = {}
    for name in ("baseline", "toolkit"):
        mine = [p for p in phases if p.server == name]
        lat = [x for p in mine for x in p.latencies]
        seconds = sum(p.seconds for p in mine)
        cpu = [p.cpu for p in mine if p.cpu is not None]
        summary[name] = {
            "round_trips_per_s": len(lat) / seconds if seconds else 0.0,
            "p50_ms": 1000 * percentile(lat, 50),
            "p95_ms": 1000 * percentile(lat, 95),
            "server_cpu_ms_per_rt": (1000 * sum(cpu) / len(lat)) if cpu and len(cpu) == len(mine) and lat else None,
            "round_trips": len(lat),
            "errors": sum(p.errors for p in mine),
            "first_error": next((p.first_error for p in mine if p.first_error), None),
        }
    base, tk = summary["baseline"], summary["toolkit"]
    ratio = tk["round_trips_per_s"] / base["round_trips_per_s"] if base["round_trips_per_s"] else math.nan
    per_round = []
    for r in sorted({p.round for p in phases}):
        b = next((p for p in phases if p.round == r and p.server == "baseline"), None)
        t = next((p for p in phases if p.round == r and p.server == "toolkit"), None)
        if b and t and b.rate:
            per_round.append(t.rate / b.rate)
    cpu_ratio = (
        tk["server_cpu_ms_per_rt"] / base["server_cpu_ms_per_rt"]
        if tk["server_cpu_ms_per_rt"] and base["server_cpu_ms_per_rt"] else None
    )
    summary["ratio"] = ratio
    summary["ratio_per_round"] = per_round
    summary["server_cpu_ratio"] = cpu_ratio

    print()
    print(
        f"workers={args.workers} (gthread, {args.threads} threads), clients={args.clients}, "
        f"{len(per_round)} round(s) x {args.seconds:g} s (+{args.warmup:g} s warm-up), cores={os.cpu_count()}"
    )
    for name in ("baseline", "toolkit"):
        s = summary[name]
        print(
            f"{name:<9} {s['round_trips_per_s']:8.1f} round trips/s   p50 {s['p50_ms']:7.2f} ms   "
            f"p95 {s['p95_ms']:7.2f} ms   server CPU {_fmt(s['server_cpu_ms_per_rt'], '.2f')} ms/rt   "
            f"errors {s['errors']}"
        )
    print(
        f"ratio toolkit/baseline (round trips/s): {ratio:.3f}   "
        f"per round: {', '.join(f'{x:.3f}' for x in per_round)}"
    )
    if cpu_ratio is not None:
        print(f"server CPU per round trip, toolkit/baseline: {cpu_ratio:.2f}x")
    for name in ("baseline", "toolkit"):
        if summary[name]["errors"]:
            print(f"WARNING: {name} had {summary[name]['errors']} failed round trips; first: "
                  f"{summary[name]['first_error']}", file=sys.stderr)
    return summary


# --- main -------------------------------------------------------------------------------------------------------


def _aptk_default_threads() -> int:
    """The threads per worker `aptk serve` uses by default (toolkit.server.serve)."""
    import inspect

    from toolkit.server import serve

    default = inspect.signature(serve).parameters["threads"].default
    return default if isinstance(default, int) else 8


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=int, default=2, help="gunicorn workers for each server (default 2)")
    threads = _aptk_default_threads()
    p.add_argument("--threads", type=int, default=threads,
                   help=f"gthread threads per worker, for both servers (default {threads}, as `aptk serve`)")
    p.add_argument("--clients", type=int, default=8,
                   help="concurrent clients, each a process with one keep-alive requests.Session (default 8)")
    p.add_argument("--seconds", type=float, default=8, help="measured seconds per phase (default 8)")
    p.add_argument("--warmup", type=float, default=2, help="warm-up seconds before each phase (default 2)")
    p.add_argument("--rounds", type=int, default=2,
                   help="rounds of (baseline, toolkit); default 2, i.e. 4 phases (~45 s with defaults)")
    p.add_argument("--baseline-accesslog", action="store_true",
                   help="make the baseline write gunicorn's access log to stdout as `aptk serve` does")
    p.add_argument("--json", metavar="FILE", help="also write the summary as JSON to FILE")
    p.add_argument("--keep", action="store_true", help="keep the temporary data directory and server logs")
    args = p.parse_args(argv)
    for name in ("workers", "threads", "clients", "rounds"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1")
    if args.seconds <= 0 or args.warmup < 0:
        p.error("--seconds must be positive and --warmup not negative")
    return args


def _terminate(signum, _frame):
    raise SystemExit(128 + signum)  # unwinds through the finally blocks below


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Ctrl-C must stop the run and the servers even if we were started with SIGINT ignored (e.g. with `&`).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    tmp = Path(tempfile.mkdtemp(prefix="aptk-bench-"))
    servers: list[Server] = []
    pool = None
    failed = False
    try:
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        pool = multiprocessing.get_context(method).Pool(args.clients, initializer=_client_init)
        signal.signal(signal.SIGTERM, _terminate)
        if hasattr(signal, "SIGHUP"):
            signal.signal(signal.SIGHUP, _terminate)
        baseline = start_baseline(tmp, args, servers)
        toolkit = start_toolkit(tmp, args, servers)
        baseline.wait_ready()
        toolkit.wait_ready()
        toolkit.token = mint_token(tmp)
        print(
            f"baseline at {baseline.base}, toolkit at {toolkit.base}; "
            f"{args.rounds} x (baseline, toolkit), {args.warmup:g}+{args.seconds:g} s each...",
            flush=True,
        )
        phases = []
        for round_no in range(1, args.rounds + 1):
            for server in (baseline, toolkit):
                phase = measure(pool, server, args, round_no)
                phases.append(phase)
                print(f"  round {round_no} {server.name:<8} {phase.rate:8.1f} rt/s", flush=True)
        summary = report(phases, args)
        if args.json:
            Path(args.json).write_text(json.dumps({"args": vars(args), **summary}, indent=2, default=str))
        return 0
    except KeyboardInterrupt:
        print("\ninterrupted; stopping the servers", file=sys.stderr)
        return 130
    except BaseException:
        failed = not isinstance(sys.exc_info()[1], SystemExit)
        raise
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
        for server in servers:
            server.request_stop()  # both at once, then wait for each
        for server in servers:
            server.stop()
        if args.keep:
            print(f"data and server logs kept in {tmp}", file=sys.stderr)
        elif failed:
            print(f"server logs kept in {tmp} (baseline.log, toolkit.log)", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
