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


def tree_usage(pid: int) -> tuple[float, int, int]:
    """CPU seconds (user + system), voluntary and involuntary context switches of process ``pid`` and of every
    live process under it, from ``/proc`` (Linux): a server's own cost, whichever of its processes and threads
    spent it. Switches are counted per live thread (pools keep theirs); CPU includes ended threads."""
    cpu, voluntary, involuntary = 0.0, 0, 0
    tick = os.sysconf("SC_CLK_TCK")
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            with open(f"/proc/{current}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            cpu += (int(fields[11]) + int(fields[12])) / tick
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/status") as f:
                    for line in f:
                        if line.startswith("voluntary_ctxt_switches"):
                            voluntary += int(line.split()[1])
                        elif line.startswith("nonvoluntary_ctxt_switches"):
                            involuntary += int(line.split()[1])
                with open(f"/proc/{current}/task/{task}/children") as f:
                    pending += [int(child) for child in f.read().split()]
        except OSError:  # it ended meanwhile
            continue
    return cpu, voluntary, involuntary
