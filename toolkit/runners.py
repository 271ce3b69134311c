"""Who runs an action: runner ids that say which process on which host, so that a dead one is known at once.

A runner id is ``<host key>:<pid>:<start>:<random>:<hostname>``. The host key is a digest of the machine's boot
id, its hostname and the PID namespace, so two runners share it only when their PIDs mean the same processes.
``<start>`` is the process's start time in clock ticks since boot (``/proc/<pid>/stat`` field 22), which a reused
PID does not share. Where ``/proc`` does not say these things, the host key is empty: such runners are only ever
taken over once their lease runs out.
"""

from __future__ import annotations

import functools
import hashlib
import os
import socket
import uuid


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat from field 3 (state) on; None if it cannot be read."""
    stat = _read(f"/proc/{pid}/stat")
    if stat is None:
        return None
    fields = stat[stat.rfind(")") + 2:].split()  # the command name (field 2) may hold spaces and parentheses
    return fields if len(fields) > 19 else None


def process_start(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot), or None if /proc does not say."""
    fields = _stat(pid)
    try:
        return int(fields[19]) if fields else None
    except ValueError:
        return None


@functools.lru_cache(maxsize=1)
def host_key() -> str:
    """A key shared by exactly the processes whose PIDs this process can check; "" where it cannot tell."""
    boot_id = _read("/proc/sys/kernel/random/boot_id")
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = None
    if not boot_id or not namespace or process_start(os.getpid()) is None:
        return ""
    seed = f"{boot_id.strip()}\n{socket.gethostname()}\n{namespace}"
    return hashlib.sha256(seed.encode()).hexdigest()[:16]


def new_runner_id() -> str:
    """A runner id for this process (a new one each call)."""
    pid = os.getpid()
    start = process_start(pid) if host_key() else None
    return f"{host_key()}:{pid}:{start or 0}:{uuid.uuid4().hex[:8]}:{socket.gethostname()[:64]}"


def local_prefix() -> str | None:
    """What the runner ids of processes on this host (and PID namespace) begin with; None if unknown."""
    key = host_key()
    return f"{key}:" if key else None


def gone(runner: str) -> bool:
    """True only if ``runner`` is a process of this host that no longer exists (its PID is free or reused)."""
    key = host_key()
    parts = runner.split(":")
    if not key or len(parts) < 4 or parts[0] != key:
        return False
    try:
        pid, start = int(parts[1]), int(parts[2])
    except ValueError:
        return False
    if pid <= 0 or start <= 0:
        return False
    if pid == os.getpid():
        return False  # this very process: its own runs end through the lifecycle, never by takeover
    fields = _stat(pid)
    if fields is None:  # no /proc entry we may read: ask the kernel whether the PID is taken at all
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except OSError:
            return False  # someone else's process, say: alive as far as we can tell
        return False  # it exists, but its start time cannot be checked: never take it over
    if fields[0] in ("Z", "X"):  # dead, not reaped yet: it runs nothing any more
        return True
    return fields[19] != str(start)


__all__ = ["gone", "host_key", "local_prefix", "new_runner_id", "process_start"]
