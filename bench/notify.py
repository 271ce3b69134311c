#!/usr/bin/env python
"""The notify provider under `aptk serve` against a bare smtplib loop, both sending to one loopback SMTP server.

    .venv/bin/python bench/notify.py                     # 1,000 messages each way, one client
    .venv/bin/python bench/notify.py --messages 2000 --clients 4 --rounds 2

One aiosmtpd server runs in this process and counts, per phase, the SMTP connections opened to it (in its
protocol's ``connection_made``) and the messages it took. Two phases, measured alternately ``--rounds`` times:

* **baseline**: ``--clients`` threads, each a loop of ``smtplib.SMTP(...)`` -> ``send_message`` -> ``quit``,
  one connection per message, sending the same messages the provider sends (same headers, same body);
* **provider**: ``aptk serve`` (``--workers`` gunicorn workers, SQLite in a fresh data directory, the rate
  limit off) with ``APTK_SMTP_URL`` pointing at the server; ``--clients`` threads, each with one keep-alive
  ``requests.Session``, ``POST /notify/run`` one action after another. A quick mail server is answered
  SUCCEEDED by ``/run`` itself; an action still ACTIVE is polled until it ends. Every action must SUCCEED.

Prints, per phase, seconds, messages/s and connections opened, and the headline ratio provider/baseline of
the time to send all messages (best round of each).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import smtplib
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import formatdate, make_msgid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
try:
    import aiosmtpd  # noqa: F401
    import requests
except ImportError:  # run with another python: use the project's venv if there is one
    venv_python = REPO / ".venv" / "bin" / "python"
    if venv_python.exists() and Path(sys.prefix).resolve() != (REPO / ".venv").resolve():
        os.execv(str(venv_python), [str(venv_python), *sys.argv])
    raise SystemExit("needs aiosmtpd and requests: pip install -e '.[test]'") from None

from aiosmtpd.controller import Controller  # noqa: E402
from common import aptk_command as aptk, free_port  # noqa: E402
from aiosmtpd.smtp import SMTP  # noqa: E402

SENDER = "bench@example.org"
SUBJECT = "Run {i} finished"
TEMPLATE = "Hello $name, run $run finished; its results are in the project collection."


class Counter:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.connections = 0
        self.messages = 0

    def reset(self) -> tuple[int, int]:
        with self.lock:
            seen = (self.connections, self.messages)
            self.connections = self.messages = 0
        return seen


class Handler:
    def __init__(self, counter: Counter) -> None:
        self.counter = counter

    async def handle_DATA(self, _server, _session, _envelope) -> str:  # noqa: N802 - aiosmtpd's name
        with self.counter.lock:
            self.counter.messages += 1
        return "250 2.0.0 OK"


class CountingController(Controller):
    def __init__(self, counter: Counter, port: int) -> None:
        super().__init__(Handler(counter), hostname="127.0.0.1", port=port, server_hostname="bench.localhost")
        self.counter = counter

    def factory(self) -> SMTP:
        counter = self.counter

        class CountingSMTP(SMTP):
            def connection_made(self, transport) -> None:
                with counter.lock:
                    counter.connections += 1
                super().connection_made(transport)

        return CountingSMTP(self.handler, **self.SMTP_kwargs)




def message(i: int) -> EmailMessage:
    """What the provider builds for message ``i``: the same headers and the same text body."""
    msg = EmailMessage(policy=SMTP_POLICY)
    msg["From"] = SENDER
    msg["To"] = f"user{i}@example.org"
    msg["Subject"] = SUBJECT.format(i=i)
    msg["Date"] = formatdate(localtime=False, usegmt=True)
    msg["Message-ID"] = make_msgid(domain="example.org")
    msg.set_content(TEMPLATE.replace("$name", f"User {i}").replace("$run", str(i)))
    return msg


def spread(count: int, clients: int, work) -> float:
    """Run ``work(i)`` for i in range(count) over ``clients`` threads; the seconds it took."""
    errors: list[BaseException] = []
    next_index = iter(range(count))
    lock = threading.Lock()

    def loop() -> None:
        state: dict = {}
        try:
            while True:
                with lock:
                    i = next(next_index, None)
                if i is None:
                    return
                work(i, state)
        except BaseException as exc:  # reported after the phase
            errors.append(exc)

    threads = [threading.Thread(target=loop) for _ in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise SystemExit(f"a client failed: {errors[0]!r}")
    return elapsed


def baseline(port: int, count: int, clients: int) -> float:
    def send(i: int, _state: dict) -> None:
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            client.send_message(message(i), SENDER, [f"user{i}@example.org"])

    return spread(count, clients, send)


def provider(url: str, token: str, count: int, clients: int) -> float:
    def run(i: int, state: dict) -> None:
        session = state.get("session")
        if session is None:
            session = state["session"] = requests.Session()
            session.headers["Authorization"] = f"Bearer {token}"
        body = {"destination": f"user{i}@example.org", "subject": SUBJECT.format(i=i), "body_template": TEMPLATE,
                "body_variables": {"name": f"User {i}", "run": i}}
        response = session.post(f"{url}/run", json={"request_id": uuid.uuid4().hex, "body": body}, timeout=60)
        response.raise_for_status()
        status = response.json()
        while status["status"] in ("ACTIVE", "INACTIVE"):
            time.sleep(0.01)
            status = session.get(f"{url}/{status['action_id']}/status", timeout=60).json()
        if status["status"] != "SUCCEEDED":
            raise RuntimeError(f"action {status['action_id']} ended {status['status']}: {status['details']}")

    return spread(count, clients, run)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=1, help="concurrent senders, for both phases (default 1)")
    parser.add_argument("--workers", type=int, default=1, help="gunicorn workers of `aptk serve` (default 1)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the data directory and server log")
    args = parser.parse_args()

    counter = Counter()
    smtp_port = free_port()
    controller = CountingController(counter, smtp_port)
    controller.start()
    work = Path(tempfile.mkdtemp(prefix="aptk-bench-notify-"))
    data = work / "aptk"
    http_port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("APTK_")}
    env.update(APTK_SMTP_URL=f"smtp://127.0.0.1:{smtp_port}", APTK_NOTIFY_SENDER=SENDER, APTK_NOTIFY_RATE_LIMIT="0")
    log = open(work / "server.log", "wb")
    server = subprocess.Popen(aptk() + ["serve", "--port", str(http_port), "--workers", str(args.workers),
                                        "--data-dir", str(data)], stdout=log, stderr=log, env=env,
                              start_new_session=True)
    results: dict[str, list[tuple[float, int, int]]] = {"baseline": [], "provider": []}
    try:
        url = f"http://127.0.0.1:{http_port}/notify"
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
                                         "--scope", "urn:aptk:scope:notify", "--expires", "2h"],
                               check=True, capture_output=True, text=True, env=env).stdout.strip()
        provider(url, token, 20, 1)  # warm-up: workers, connections, caches
        baseline(smtp_port, 20, 1)
        counter.reset()
        print(f"{args.messages} messages per phase, {args.clients} client(s), {args.workers} worker(s); "
              f"cpu count {os.cpu_count()}", flush=True)
        for _ in range(args.rounds):
            for name in ("baseline", "provider"):
                if name == "baseline":
                    seconds = baseline(smtp_port, args.messages, args.clients)
                else:
                    seconds = provider(url, token, args.messages, args.clients)
                connections, messages = counter.reset()
                if messages != args.messages:
                    raise SystemExit(f"{name}: the server took {messages} messages, not {args.messages}")
                results[name].append((seconds, connections, messages))
                print(f"  {name:<9} {seconds:7.2f} s  {messages / seconds:8.1f} messages/s  "
                      f"{connections} SMTP connections", flush=True)
    finally:
        try:
            os.killpg(server.pid, signal.SIGINT)
            server.wait(timeout=15)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(server.pid, signal.SIGKILL)
        controller.stop()
        log.close()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    best = {name: min(rows) for name, rows in results.items()}
    ratio = best["provider"][0] / best["baseline"][0]
    print(f"\nbest of {args.rounds}: baseline {best['baseline'][0]:.2f} s ({best['baseline'][1]} connections), "
          f"provider {best['provider'][0]:.2f} s ({best['provider'][1]} connections)")
    print(f"ratio provider/baseline (time to send {args.messages} messages): {ratio:.2f}x")


if __name__ == "__main__":
    main()
