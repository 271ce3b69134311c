"""What the benchmark scripts share: running under the repository's virtualenv, a free loopback port, and the
``aptk`` command of the running interpreter."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
VENV_PYTHON = REPO / ".venv" / "bin" / "python"


def use_repo_venv() -> None:
    """Run the calling script again under ``.venv/bin/python`` when it was started with another interpreter
    (once: ``APTK_BENCH_REEXEC`` marks the second start), with the repository and ``bench/`` importable."""
    # sys.prefix tells the venv apart: its python is often a symlink to the very interpreter running now.
    if (Path(sys.prefix).resolve() != VENV_PYTHON.parent.parent.resolve() and VENV_PYTHON.exists()
            and not os.environ.get("APTK_BENCH_REEXEC")):
        os.environ["APTK_BENCH_REEXEC"] = "1"
        os.execv(str(VENV_PYTHON), [str(VENV_PYTHON), *sys.argv])
    for path in (str(REPO), str(BENCH_DIR)):
        if path not in sys.path:
            sys.path.insert(0, path)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 at the time of asking."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def aptk_command() -> list[str]:
    """The ``aptk`` command installed next to this interpreter, or the module run by it."""
    script = Path(sys.executable).parent / "aptk"
    return [str(script)] if script.exists() else [sys.executable, "-m", "toolkit.cli"]
