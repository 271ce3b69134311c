"""A compute job as a subprocess: output lines in the action's log, cancel kills the process group."""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
from typing import Any

from toolkit import ActionFailed, ActionProvider, RunContext

provider = ActionProvider(
    name="compute",
    title="Compute job",
    description="Runs a command (argv list, no shell) and logs its output; cancel stops every process it started.",
    input_schema={
        "type": "object",
        "required": ["argv"],
        "additionalProperties": False,
        "properties": {
            "argv": {"type": "array", "items": {"type": "string"}, "minItems": 1},
            "timeout": {"type": "number", "minimum": 0, "description": "Seconds before the job is stopped."},
        },
    },
    runnable_by=["all_authenticated_users"],
)


@provider.run
def run_job(body: dict[str, Any], ctx: RunContext) -> dict[str, Any]:
    try:
        process = subprocess.Popen(body["argv"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)  # its own process group
    except OSError as exc:
        raise ActionFailed("CannotStart", f"{body['argv'][0]}: {exc.strerror or exc}") from None
    ctx.progress(details={"pid": process.pid}, display_status="running")
    started = ctx.clock()
    lines = 0
    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        try:
            while True:
                if ctx.cancelled:
                    raise ActionFailed("Cancelled", "the job was stopped")
                if "timeout" in body and ctx.clock() - started > body["timeout"]:
                    raise ActionFailed("TimedOut", f"the job ran longer than {body['timeout']:g} s")
                if selector.select(timeout=0.1):
                    line = process.stdout.readline()
                    if not line:
                        break
                    lines += 1
                    ctx.log(line.decode(errors="replace").rstrip("\n")[:1000], stream="output", line=lines)
        finally:
            if process.poll() is None:
                _kill_group(process)
    code = process.wait()
    if code != 0:
        raise ActionFailed("NonZeroExit", f"exited with {code}", lines=lines)
    return {"exit_code": 0, "lines": lines}


def _kill_group(process: subprocess.Popen) -> None:
    """SIGTERM to the job's process group, SIGKILL to what is left after two seconds."""
    for sig, grace in ((signal.SIGTERM, 2.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(grace)
            # The leader is gone; children in the group may not be: SIGKILL them too.
        except subprocess.TimeoutExpired:
            continue
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
