#!/usr/bin/env python
"""Form page renders and answer round trips per second: the /forms provider under `aptk serve` against a bare Flask
app rendering the same template (bench/forms_baseline_app.py), in the same run.

    .venv/bin/python bench/forms.py                          # defaults: about 40 s
    .venv/bin/python bench/forms.py --seconds 5 --clients 4 --rounds 2

* **render**: ``GET`` of one open form's page (a form with a dozen fields of every kind), by a browser-like
  session that followed the respondent's link once.
* **submit round trip**: ``POST /run`` of a new form, opening its link (the toolkit: a 303 to the page, which
  carries the CSRF token), and ``POST`` of a valid answer; with the toolkit the action then SUCCEEDED.

Both servers run under gunicorn with the same workers and threads; the phases alternate (baseline, toolkit, ...).
The headline is the ratio toolkit/baseline of each rate. See bench/README.md.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import re
import sys
import tempfile
import time
import uuid
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))

from run_status import Server, _aptk_command, _client_init, _free_port, _spawn, mint_token  # noqa: E402

import requests  # noqa: E402

sys.path.insert(0, str(REPO))
from tests.providers.test_forms import EVERY_FIELD, GOOD_ANSWER  # noqa: E402

FORM = {"title": "Sample request", "description": "Please fill in the **sample** details.",
        "description_format": "text/markdown", "schema": EVERY_FIELD}
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def start(tmp: Path, kind: str, args: argparse.Namespace) -> Server:
    port = _free_port()
    if kind == "toolkit":
        cmd = _aptk_command() + ["serve", "--port", str(port), "--workers", str(args.workers),
                                 "--threads", str(args.threads), "--data-dir", str(tmp / "aptk")]
        env = None
    else:
        cmd = [sys.executable, "-m", "gunicorn", "-k", "gthread", "--threads", str(args.threads), "-w",
               str(args.workers), "-b", f"127.0.0.1:{port}", "--chdir", str(BENCH_DIR), "forms_baseline_app:app"]
        env = {**os.environ, "BASELINE_DB": str(tmp / "baseline.db"), "PYTHONPATH": str(REPO)}
    base = f"http://127.0.0.1:{port}/forms"
    server = Server(kind, _spawn(cmd, tmp / f"{kind}.log", env), base, f"http://127.0.0.1:{port}/forms/assets/forms.css",
                    tmp / f"{kind}.log")
    server.wait_ready()
    return server


def open_form(session: requests.Session, base: str, token: str | None) -> tuple[str, str]:
    """Run a new form and open it as its respondent: its page URL and the CSRF token on the page."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    created = session.post(f"{base}/run", json={"request_id": uuid.uuid4().hex, "body": FORM}, headers=headers)
    created.raise_for_status()
    details = created.json()["details"]
    page = session.get(details.get("resolution_url", details["form_url"]))
    page.raise_for_status()
    found = CSRF.search(page.text)
    return details["form_url"], found.group(1) if found else "-"


def client(spec: tuple[str, str, str | None, float, float]) -> int:
    mode, base, token, t_measure, t_end = spec
    session = requests.Session()
    count = 0
    if mode == "render":
        url, _ = open_form(session, base, token)
        while time.time() < t_end:
            response = session.get(url)
            assert response.status_code == 200, response.status_code
            count += time.time() >= t_measure
        return count
    while time.time() < t_end:
        url, csrf = open_form(session, base, token)
        answered = session.post(url, data={**GOOD_ANSWER, "csrf_token": csrf})
        assert answered.status_code == 200 and "Thank you" in answered.text, answered.status_code
        count += time.time() >= t_measure
    return count


def measure(pool, server: Server, mode: str, args: argparse.Namespace) -> float:
    t_measure = time.time() + args.warmup
    t_end = t_measure + args.seconds
    counts = pool.map(client, [(mode, server.base, server.token, t_measure, t_end)] * args.clients)
    return sum(counts) / args.seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="aptk-bench-forms-") as tmp_name:
        tmp = Path(tmp_name)
        servers = []
        try:
            servers = [start(tmp, "baseline", args), start(tmp, "toolkit", args)]
            servers[1].token = mint_token(tmp)
            results: dict[tuple[str, str], list[float]] = {}
            with multiprocessing.Pool(args.clients, initializer=_client_init) as pool:
                for round_no in range(args.rounds):
                    for mode in ("render", "submit"):
                        for server in servers:
                            rate = measure(pool, server, mode, args)
                            results.setdefault((mode, server.name), []).append(rate)
                            print(f"round {round_no + 1} {mode:6} {server.name:8} {rate:8.1f}/s", flush=True)
        finally:
            for server in servers:
                server.stop()
    print(f"\n{'':8}{'baseline':>12}{'toolkit':>12}{'toolkit/baseline':>20}")
    for mode, unit in (("render", "renders/s"), ("submit", "round trips/s")):
        base = sum(results[(mode, "baseline")]) / args.rounds
        kit = sum(results[(mode, "toolkit")]) / args.rounds
        print(f"{mode:8}{base:12.1f}{kit:12.1f}{kit / base:20.2f}   ({unit}; {args.workers} workers x "
              f"{args.threads} threads, {args.clients} clients)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
