#!/usr/bin/env python
"""Timers under `aptk serve` against a bare loop of ``threading.Timer``s, both running /hello every second.

    .venv/bin/python bench/timers.py                       # 1,000 timers, 1 s interval, 10 ticks each way
    .venv/bin/python bench/timers.py --timers 200 --ticks 5 --workers 2

One `aptk serve` (``--workers`` gunicorn workers, SQLite in a fresh data directory, ``APTK_TIMERS_MIN_INTERVAL=1``)
serves /timers and /hello. Two phases, one after the other, each ``--ticks`` ticks of ``--timers`` timers, all
started on the same second (the worst case: every timer due at once, as timers set "on the hour" are):

* **timers**: ``--timers`` timers made with ``POST /timers/run`` (``interval`` 1, ``stop_after.n_runs`` ticks,
  ``start`` a few seconds ahead); the servers' schedulers claim each tick and start a hello action in-process;
* **baseline**: in this process, one ``threading.Timer`` per timer and tick, each ``POST /hello/run`` over HTTP
  (keep-alive sessions) at ``start + k`` seconds; nothing is claimed, recorded or skipped.

A tick's lateness is the hello action's ``start_time`` (stored by the server) minus the tick's time; both phases
are read from the database afterwards, by label. CPU per tick is the CPU time of every process of the server's
group (plus this process, for the baseline) during the phase, divided by the ticks that ran. A timer tick missed
(late past the next tick) is recorded skipped, never run late; the baseline never skips.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime as dt
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
try:
    import requests
except ImportError:  # run with another python: use the project's venv if there is one
    venv_python = REPO / ".venv" / "bin" / "python"
    if venv_python.exists() and Path(sys.prefix).resolve() != (REPO / ".venv").resolve():
        os.execv(str(venv_python), [str(venv_python), *sys.argv])
    raise SystemExit("needs requests: pip install -e '.[test]'") from None

from common import aptk_command as aptk, free_port  # noqa: E402

TICK = re.compile(r"^(timer|base)-(\d+) #(\d+)$")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")




def group_cpu(pgid: int) -> float:
    """CPU seconds (user + system) of every live process in process group ``pgid``."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # fields after the name: state ppid pgrp ...; utime and stime are 12 and 13
            total += int(fields[11]) + int(fields[12])
    return total / CLOCK_TICKS


def own_cpu() -> float:
    usage = os.times()
    return usage.user + usage.system


def iso(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.timezone.utc).isoformat()


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))] if ordered else float("nan")


def lateness(database: Path, kind: str, start: float) -> list[float]:
    """Seconds each hello action of ``kind`` started after its tick."""
    with sqlite3.connect(database) as conn:
        rows = conn.execute("SELECT label, start_time FROM aptk_actions WHERE provider = 'hello' AND label LIKE ?",
                            (f"{kind}-%",)).fetchall()
    late = []
    for label, started in rows:
        match = TICK.match(label or "")
        if match:
            late.append(started - (start + int(match.group(3))))
    return late


def timers_phase(url: str, token: str, count: int, ticks: int, lead: float) -> tuple[float, float]:
    """Create the timers; (their common start, when the last tick is due)."""
    created_by = time.time() + count / 25 + lead  # eight clients create well over 25 timers/s, even under load
    start = float(int(created_by) + 1)
    local = threading.local()

    def create(i: int) -> None:
        session = getattr(local, "session", None)
        if session is None:
            session = local.session = requests.Session()
            session.headers["Authorization"] = f"Bearer {token}"
        body = {"name": f"timer-{i}", "callback_url": f"{url}/hello/run", "callback_body": {"echo_string": "tick"},
                "interval": 1, "start": iso(start), "stop_after": {"n_runs": ticks}}
        response = session.post(f"{url}/timers/run", json={"request_id": uuid.uuid4().hex, "body": body}, timeout=60)
        if response.status_code != 202:
            raise SystemExit(f"POST /timers/run answered {response.status_code}: {response.text[:300]}")

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(create, range(count)))
    print(f"  {count} timers created {start - time.time():.1f} s before their first tick", flush=True)
    if time.time() > start:
        raise SystemExit("creating the timers took longer than the lead; give a longer --lead")
    return start, start + ticks - 1


def baseline_phase(url: str, token: str, count: int, ticks: int, lead: float) -> tuple[float, float]:
    """Schedule ``count`` x ``ticks`` threading.Timers; (their common start, when the last tick is due)."""
    local = threading.local()
    start = float(int(time.time() + lead) + 1)

    def fire(i: int, k: int) -> None:
        session = getattr(local, "session", None)
        if session is None:
            session = local.session = requests.Session()
            session.headers["Authorization"] = f"Bearer {token}"
        body = {"request_id": uuid.uuid4().hex, "label": f"base-{i} #{k}", "body": {"echo_string": "tick"}}
        try:
            session.post(f"{url}/hello/run", json=body, timeout=10)
        except requests.RequestException as exc:
            print(f"  baseline call failed: {exc}", file=sys.stderr)

    def schedule(i: int, k: int) -> None:
        if k + 1 < ticks:  # the next tick is set before this one's call, so a slow call delays nothing
            timer = threading.Timer(start + k + 1 - time.time(), schedule, (i, k + 1))
            timer.daemon = True
            timer.start()
        fire(i, k)

    for i in range(count):
        timer = threading.Timer(start - time.time(), schedule, (i, 0))
        timer.daemon = True
        timer.start()
    return start, start + ticks - 1


def settle(database: Path, kind: str, expected: int, last_due: float, grace: float) -> None:
    """Wait until every tick ran (or was skipped) or ``grace`` seconds after the last one."""
    give_up = last_due + grace
    while time.time() < give_up:
        time.sleep(1)
        if time.time() > last_due + 1 and len(lateness(database, kind, 0)) >= expected:
            return


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--timers", type=int, default=1000)
    parser.add_argument("--ticks", type=int, default=10, help="ticks per timer (1 s apart)")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers of `aptk serve` (default 2)")
    parser.add_argument("--lead", type=float, default=5.0, help="seconds between setting up and the first tick")
    parser.add_argument("--grace", type=float, default=30.0, help="seconds to wait for late ticks")
    parser.add_argument("--keep", action="store_true", help="keep the data directory and the server's log")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="aptk-bench-timers-"))
    data = work / "aptk"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("APTK_")}
    env.update(APTK_TIMERS_MIN_INTERVAL="1")
    log = open(work / "server.log", "wb")
    server = subprocess.Popen(aptk() + ["serve", "--port", str(port), "--workers", str(args.workers), "--data-dir",
                                        str(data), "--provider", "timers", "--provider", "hello"],
                              stdout=log, stderr=log, env=env, start_new_session=True)
    database = data / "aptk.db"
    rows = []
    try:
        give_up = time.monotonic() + 60
        while True:
            try:
                if requests.get(url + "/", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if server.poll() is not None or time.monotonic() > give_up:
                raise SystemExit(f"aptk serve did not start; see {work / 'server.log'}")
            time.sleep(0.1)
        token = subprocess.run(aptk() + ["token", "--data-dir", str(data), "--identity", str(uuid.uuid4()),
                                         "--scope", "urn:aptk:scope:timers", "--scope", "urn:aptk:scope:hello",
                                         "--expires", "2h"],
                               check=True, capture_output=True, text=True, env=env).stdout.strip()
        with open("/proc/loadavg") as f:
            load = f.read().split()[:3]
        print(f"{args.timers} timers x {args.ticks} ticks of 1 s, {args.workers} worker(s); cpu count "
              f"{os.cpu_count()}, load average {' '.join(load)}", flush=True)
        expected = args.timers * args.ticks
        for kind, phase in (("timer", timers_phase), ("base", baseline_phase)):
            start, last_due = phase(url, token, args.timers, args.ticks, args.lead)
            time.sleep(max(0.0, start - time.time() - 0.5))
            server_cpu, mine = group_cpu(server.pid), own_cpu()
            settle(database, kind, expected, last_due, args.grace)
            server_cpu, mine = group_cpu(server.pid) - server_cpu, own_cpu() - mine
            late = lateness(database, kind, start)
            ran = len(late)
            cpu = server_cpu + (mine if kind == "base" else 0.0)
            rows.append((kind, ran, expected, percentile(late, 50), percentile(late, 99), max(late or [0]),
                         1000 * cpu / max(ran, 1), server_cpu, mine))
            name, ran_, exp, p50, p99, worst, per_tick, s_cpu, m_cpu = rows[-1]
            print(f"  {'timers' if kind == 'timer' else 'baseline':<9} ran {ran_}/{exp} ticks  lateness p50 "
                  f"{p50 * 1000:7.1f} ms  p99 {p99 * 1000:7.1f} ms  max {worst * 1000:7.1f} ms  CPU/tick "
                  f"{per_tick:6.2f} ms (server {s_cpu:.1f} s, driver {m_cpu:.1f} s)", flush=True)
            time.sleep(2)
    finally:
        try:
            os.killpg(server.pid, signal.SIGINT)
            server.wait(timeout=15)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(server.pid, signal.SIGKILL)
        log.close()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    timers, base = rows
    print(f"\nratio timers/baseline: lateness p50 {timers[3] / base[3]:.2f}x, p99 {timers[4] / base[4]:.2f}x, "
          f"CPU per tick {timers[6] / base[6]:.2f}x; ticks run {timers[1]}/{timers[2]} vs {base[1]}/{base[2]}")


if __name__ == "__main__":
    main()
