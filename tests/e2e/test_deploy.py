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
