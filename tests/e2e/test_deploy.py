"""deploy/aptk.service: systemd accepts it as written, and the command it starts serves."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import requests

from .support import APTK, free_port

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "deploy" / "aptk.service"
SHIPPED_APTK = "/opt/aptk/.venv/bin/aptk"

needs_systemd_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                           reason="systemd-analyze is not installed (Debian: apt-get install systemd)")


def unit_with_our_aptk(tmp_path: Path, text: str | None = None) -> Path:
    """The unit with its ExecStart pointing at this environment's aptk (verify checks that the binary exists)."""
    path = tmp_path / "aptk.service"
    path.write_text((text or UNIT.read_text()).replace(SHIPPED_APTK, str(Path(APTK).resolve())))
    return path


def verify(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True, text=True, timeout=60)


@needs_systemd_analyze
def test_systemd_analyze_verifies_the_unit_without_a_word(tmp_path):
    result = verify(unit_with_our_aptk(tmp_path))
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr


@needs_systemd_analyze
def test_systemd_analyze_would_catch_a_mistake(tmp_path):
    """The check above can fail: a misspelt key is reported."""
    broken = UNIT.read_text().replace("NoNewPrivileges=", "NoNewPrivilegs=")
    assert "NoNewPrivilegs" in verify(unit_with_our_aptk(tmp_path, broken)).stderr


def exec_start() -> list[str]:
    (line,) = [line for line in UNIT.read_text().splitlines() if line.startswith("ExecStart=")]
    return shlex.split(line.removeprefix("ExecStart="))


def test_the_units_command_serves(tmp_path):
    """ExecStart as written (its data directory and port swapped for the test's) serves the providers."""
    command = exec_start()
    assert command[0] == SHIPPED_APTK and command[1] == "serve"
    args = command[2:]
    port = free_port()
    args[args.index("--port") + 1] = str(port)
    args[args.index("--data-dir") + 1] = str(tmp_path / "data")
    args[args.index("--workers") + 1] = "1"
    process = subprocess.Popen([APTK, "serve", *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
            try:
                index = requests.get(f"http://127.0.0.1:{port}/", timeout=1).json()
                break
            except requests.RequestException:
                assert time.monotonic() < deadline, "the unit's command did not serve"
                time.sleep(0.1)
        assert "hello" in [p["name"] for p in index["providers"]]
        assert (tmp_path / "data" / "aptk.db").exists()
    finally:
        os.killpg(process.pid, signal.SIGINT)  # the unit's KillSignal
        assert process.wait(30) == 0


GUNICORN_CONF = ROOT / "deploy" / "gunicorn.conf.py"


def test_gunicorn_with_the_shipped_configuration_runs_actions(tmp_path):
    """`gunicorn -c deploy/gunicorn.conf.py` serves the installed providers: an action runs to its end in a worker,
    the data directory is private, and SIGTERM stops every process cleanly."""
    import uuid

    from .support import VENV_BIN

    data = tmp_path / "data"
    port = free_port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("APTK_")}, "APTK_DATA_DIR": str(data)}
    process = subprocess.Popen(
        [str(VENV_BIN / "gunicorn"), "-c", str(GUNICORN_CONF), "-b", f"127.0.0.1:{port}", "-w", "2"],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
            try:
                index = requests.get(base + "/", timeout=1).json()
                break
            except requests.RequestException:
                assert time.monotonic() < deadline, "gunicorn did not serve"
                time.sleep(0.1)
        assert "hello" in [p["name"] for p in index["providers"]]
        token = subprocess.run([APTK, "token", "--data-dir", str(data), "--identity", str(uuid.uuid4())],
                               capture_output=True, text=True, check=True, env=env).stdout.strip()
        headers = {"Authorization": f"Bearer {token}"}
        started = requests.post(f"{base}/hello/run", headers=headers, timeout=10,
                                json={"request_id": "deploy", "body": {"echo_string": "hi", "sleep_time": 0.3}})
        assert started.status_code == 202, started.text
        action_id = started.json()["action_id"]
        while True:
            status = requests.get(f"{base}/hello/{action_id}/status", headers=headers, timeout=10).json()
            if status["status"] != "ACTIVE":
                break
            assert time.monotonic() < deadline + 30, status
            time.sleep(0.1)
        assert status["status"] == "SUCCEEDED" and status["details"] == {"hello": "hi"}
        # umask 077: the data directory and the database are the server user's alone; the control socket is there.
        assert (data.stat().st_mode & 0o777) == 0o700 and ((data / "aptk.db").stat().st_mode & 0o777) == 0o600
        assert (data / "gunicorn.ctl").exists() and not (tmp_path / "gunicorn.ctl").exists()
    finally:
        os.kill(process.pid, signal.SIGTERM)
        code = process.wait(30)
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert code == 0
