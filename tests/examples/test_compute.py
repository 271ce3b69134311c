"""The compute example: output in the log as it comes, exit codes as outcomes, cancel kills the process group."""

from __future__ import annotations

import os
import sys
import time

from examples.compute.provider import provider as compute


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_output_lines_go_to_the_log(aptk_client):
    client = aptk_client(compute)
    status = client.run({"argv": [sys.executable, "-c", "print('one'); print('two')"]}, wait=True)
    assert status["status"] == "SUCCEEDED" and status["details"] == {"exit_code": 0, "lines": 2}
    entries = client.log(status["action_id"], limit=20)["entries"]
    assert [e["description"] for e in entries if e.get("details", {}).get("stream") == "output"] == ["one", "two"]


def test_a_non_zero_exit_fails_the_action(aptk_client):
    status = aptk_client(compute).run({"argv": [sys.executable, "-c", "import sys; sys.exit(3)"]}, wait=True)
    assert status["status"] == "FAILED"
    assert status["details"]["code"] == "NonZeroExit" and status["details"]["description"] == "exited with 3"


def test_a_command_that_does_not_exist_fails_with_its_reason(aptk_client):
    status = aptk_client(compute).run({"argv": ["/nonexistent/tool"]}, wait=True)
    assert status["details"]["code"] == "CannotStart" and "No such file" in status["details"]["description"]


def test_cancel_kills_the_whole_process_group(aptk_client, tmp_path):
    child_pid_file = tmp_path / "child.pid"
    # The job starts a grandchild that would outlive it, then waits.
    script = (f"import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; "
              f"time.sleep(300)']); open({str(child_pid_file)!r}, 'w').write(str(p.pid)); time.sleep(300)")
    client = aptk_client(compute)
    action = client.run({"argv": [sys.executable, "-c", script]})
    deadline = time.monotonic() + 20
    while not (child_pid_file.exists() and child_pid_file.read_text()):
        assert time.monotonic() < deadline, "the job did not start"
        time.sleep(0.05)
    grandchild = int(child_pid_file.read_text())
    job = client.status(action["action_id"])["details"]["pid"]
    assert pid_alive(job) and pid_alive(grandchild)
    client.cancel(action["action_id"])
    deadline = time.monotonic() + 15
    while pid_alive(grandchild) or pid_alive(job):
        assert time.monotonic() < deadline, "the job's processes outlived the cancel"
        time.sleep(0.05)
