"""The transfer and ACL providers under the real `aptk serve` (gunicorn), as a user runs them.

* A transfer whose server is killed (SIGKILL of the whole process group) resumes once a server runs again, without
  rewriting the files an earlier attempt finished and verified.
* The README walkthrough over the two default collections: a transfer, a sync rerun that skips everything, a cancel
  mid-transfer, a shared-collection read refused, granted by an ACL rule, then allowed.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
import requests

from providers.collections import INBOX_ID, PROJECT_ID
from tests.e2e.support import Server

OWNER = "6a3b4d5e-0000-4000-8000-000000000001"
USER = "6a3b4d5e-0000-4000-8000-000000000002"


class Served(Server):
    """`aptk serve` (one worker) in its own process group, with helpers for these tests."""

    def __init__(self, data_dir: Path, env: dict[str, str]) -> None:
        super().__init__(data_dir, data_dir.parent, workers=1, env=env)

    def call(self, token: str, method: str, path: str, **kw):
        response = requests.request(method, self.url + path, headers={"Authorization": f"Bearer {token}"},
                                    timeout=10, **kw)
        return response

    def run(self, token: str, provider: str, body: dict, request_id: str) -> dict:
        response = self.call(token, "POST", f"/{provider}/run", json={"request_id": request_id, "body": body})
        assert response.status_code in (200, 202), response.text
        return response.json()

    def status(self, token: str, provider: str, action_id: str) -> dict:
        response = self.call(token, "GET", f"/{provider}/{action_id}/status")
        assert response.status_code == 200, response.text
        return response.json()

    def wait(self, token: str, action_id: str, timeout: float = 30, provider: str = "transfer") -> dict:
        give_up = time.monotonic() + timeout
        while True:
            status = self.status(token, provider, action_id)
            if status["status"] in ("SUCCEEDED", "FAILED"):
                return status
            assert time.monotonic() < give_up, f"still {status}"
            time.sleep(0.1)


@pytest.fixture
def servers():
    started: list[Served] = []

    def make(data_dir: Path, **env: str) -> Served:
        server = Served(data_dir, env)
        started.append(server)
        return server

    yield make
    for server in started:
        server.kill()


def _group(pgid: int) -> list[int]:
    """The processes of a process group."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                found.append(int(entry))
    return found


@pytest.mark.parametrize("processes", [{}, {"APTK_TRANSFER_PROCESSES": "2", "APTK_TRANSFER_PROCESS_FILES": "10"}],
                         ids=["threads", "worker-processes"])
def test_a_transfer_killed_with_its_server_resumes_without_recopying_finished_files(tmp_path, servers, processes):
    src, dst, data = tmp_path / "src", tmp_path / "dst", tmp_path / "data"
    src.mkdir()
    dst.mkdir()
    for i in range(40):
        (src / "batch").mkdir(exist_ok=True)
        (src / "batch" / f"{i:02}.bin").write_bytes(os.urandom(128 * 1024))
    collections = tmp_path / "collections.json"
    collections.write_text(json.dumps([{"name": "src", "url": str(src)}, {"name": "dst", "url": str(dst)}]))
    env = {"APTK_COLLECTIONS_FILE": str(collections), "APTK_LEASE_SECONDS": "2",
           "APTK_TRANSFER_MAX_BYTES_PER_SECOND": str(1_500_000), "APTK_TRANSFER_THREADS": "2", **processes}
    server = servers(data, **env).start()
    token = server.token(USER)
    action = server.run(token, "transfer", {
        "source_endpoint_id": "src", "destination_endpoint_id": "dst",
        "transfer_items": [{"source_path": "/batch", "destination_path": "/batch", "recursive": True}],
    }, "crash-1")["action_id"]
    give_up = time.monotonic() + 20
    while server.status(token, "transfer", action)["details"].get("files_transferred", 0) < 8:
        assert time.monotonic() < give_up
        time.sleep(0.05)
    # The master, its worker, and (copying the small files) the worker's worker processes.
    assert len(_group(server.process.pid)) == (4 if processes else 2)
    server.kill()  # kill -9, master and worker

    with sqlite3.connect(data / "aptk.db") as db:
        recorded = [row[0] for row in db.execute("SELECT path FROM aptk_transfer_done WHERE action_id = ?",
                                                 (action,))]
    assert 8 <= len(recorded) < 40, recorded
    before = {}
    for rel in recorded:
        st = (dst / rel).stat()
        before[rel] = (st.st_ino, st.st_mtime_ns)

    restarted = servers(data, **env).start()
    final = restarted.wait(token, action, timeout=40)
    assert final["status"] == "SUCCEEDED", final
    assert final["details"]["files_transferred"] == 40
    for rel, identity in before.items():
        st = (dst / rel).stat()
        assert (st.st_ino, st.st_mtime_ns) == identity, f"{rel} was written again"
    for path in (src / "batch").iterdir():
        assert (dst / "batch" / path.name).read_bytes() == path.read_bytes()
    assert not list(dst.rglob("*.part"))
    log = restarted.call(token, "GET", f"/transfer/{action}/log", params={"limit": 100}).json()["entries"]
    codes = [e["code"] for e in log]
    assert "ActionRecovered" in codes
    assert any(f"{len(recorded)} file(s) finished by an earlier attempt" in e["description"] for e in log)
    with sqlite3.connect(data / "aptk.db") as db:
        assert db.execute("SELECT COUNT(*) FROM aptk_transfer_done").fetchone()[0] == 0


def test_the_readme_walkthrough_over_the_default_collections(tmp_path, servers):
    data = tmp_path / "data"
    server = servers(data, APTK_COLLECTION_OWNERS=OWNER).start()
    user, owner = server.token(USER), server.token(OWNER)
    inbox = data / "collections" / "inbox"
    project = data / "collections" / "project"
    for i in range(20):
        (inbox / "run1").mkdir(parents=True, exist_ok=True)
        (inbox / "run1" / f"frame{i:02}.dat").write_bytes(os.urandom(20_000))

    # 1. A transfer between the two default collections (the owner may write the shared one).
    copy = {"source_endpoint_id": INBOX_ID, "destination_endpoint_id": PROJECT_ID, "label": "run1",
            "transfer_items": [{"source_path": "/run1", "destination_path": "/run1", "recursive": True}]}
    first = server.wait(owner, server.run(owner, "transfer", copy, "1")["action_id"])
    assert first["status"] == "SUCCEEDED", first
    assert first["details"]["files_transferred"] == 20
    # 2. A sync rerun skips everything.
    again = server.wait(owner, server.run(owner, "transfer", {**copy, "sync_level": "checksum"}, "2")["action_id"])
    assert (again["details"]["files_skipped"], again["details"]["bytes_transferred"]) == (20, 0)
    # 3. A cancel mid-transfer.
    with open(inbox / "big.bin", "wb") as f:
        f.truncate(2 << 30)
    big = {"source_endpoint_id": "inbox", "destination_endpoint_id": "inbox",
           "transfer_items": [{"source_path": "/big.bin", "destination_path": "/big-copy.bin"}]}
    action = server.run(user, "transfer", big, "3")["action_id"]
    give_up = time.monotonic() + 20
    while server.status(user, "transfer", action)["details"].get("bytes_transferred", 0) == 0:
        assert time.monotonic() < give_up
        time.sleep(0.05)
    cancelled = server.call(user, "POST", f"/transfer/{action}/cancel").json()
    assert cancelled["details"]["code"] == "ActionCancelled"
    time.sleep(1.5)
    assert not (inbox / "big-copy.bin").exists()
    assert not [p for p in inbox.iterdir() if p.name.endswith(".part")]
    (inbox / "big.bin").unlink()
    # 4. A shared-collection read refused, granted by an ACL rule, then allowed.
    read = {"source_endpoint_id": "project", "destination_endpoint_id": "inbox",
            "transfer_items": [{"source_path": "/run1", "destination_path": "/from-project", "recursive": True}]}
    refused = server.wait(user, server.run(user, "transfer", read, "4")["action_id"])
    assert (refused["status"], refused["details"]["code"]) == ("FAILED", "PermissionDenied")
    forbidden = server.run(user, "acl", {"operation": "CREATE", "endpoint_id": "project", "path": "/run1/",
                                         "principal_type": "identity", "principal": USER, "permissions": "r"}, "5")
    assert (forbidden["status"], forbidden["details"]["code"]) == ("FAILED", "PermissionDenied")
    granted = server.run(owner, "acl", {"operation": "CREATE", "endpoint_id": "project", "path": "/run1/",
                                        "principal_type": "identity", "principal": USER, "permissions": "r"}, "6")
    assert granted["status"] == "SUCCEEDED" and granted["details"]["access_id"]
    allowed = server.wait(user, server.run(user, "transfer", read, "7")["action_id"])
    assert allowed["status"] == "SUCCEEDED", allowed
    assert len(list((inbox / "from-project").iterdir())) == 20
    assert project.is_dir()


def _depth(top: Path) -> int:
    """How many nested ``a`` folders ``top`` holds (walked by descriptor: deeper than PATH_MAX is fine)."""
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    depth = 0
    try:
        while True:
            try:
                child = os.open("a", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            except OSError:
                return depth
            os.close(fd)
            fd, depth = child, depth + 1
    finally:
        os.close(fd)


@pytest.mark.slow
def test_a_cancel_stops_the_making_of_deep_folders_within_about_a_second(tmp_path, servers):
    # 200 items, each to its own folder 1,995 levels deep: some 400,000 folders to make, seconds of work. The
    # cancel must stop it between two folders, as it stops a copy between two chunks (README: about a second).
    src, dst, data = tmp_path / "src", tmp_path / "dst", tmp_path / "data"
    src.mkdir()
    dst.mkdir()
    (src / "f.txt").write_bytes(b"deep")
    collections = tmp_path / "collections.json"
    collections.write_text(json.dumps([{"name": "src", "url": str(src)}, {"name": "dst", "url": str(dst)}]))
    server = servers(data, APTK_COLLECTIONS_FILE=str(collections)).start()
    token = server.token(USER)
    deep = "a/" * 1995
    items = [{"source_path": "/f.txt", "destination_path": f"/d{i:03}/{deep}f.txt"} for i in range(200)]
    try:
        action = server.run(token, "transfer", {"source_endpoint_id": "src", "destination_endpoint_id": "dst",
                                                "transfer_items": items}, "deep-cancel")["action_id"]

        def made() -> tuple[int, int]:
            tops = sorted(os.listdir(dst))
            return len(tops), _depth(dst / tops[-1]) if tops else 0

        give_up = time.monotonic() + 30
        while made()[1] < 100:  # folders are being made
            assert time.monotonic() < give_up, server.status(token, "transfer", action)
            time.sleep(0.01)
        cancelled = server.call(token, "POST", f"/transfer/{action}/cancel")
        assert cancelled.status_code == 200 and cancelled.json()["details"]["code"] == "ActionCancelled"
        time.sleep(1.5)
        settled = made()
        time.sleep(1.5)
        assert made() == settled, "folders were still being made 1.5 s after the cancel"
        assert settled < (200, 1995), "the cancel came too late to test anything"
        assert server.status(token, "transfer", action)["details"]["code"] == "ActionCancelled"
    finally:
        server.kill()
        subprocess.run(["rm", "-rf", "--", str(dst)], check=False)  # pytest's clean-up recurses per level


def test_an_owner_that_is_no_principal_stops_aptk_serve_with_the_reason(tmp_path, servers):
    collections = tmp_path / "collections.json"
    collections.write_text(json.dumps([{"name": "shared", "url": str(tmp_path), "shared": True,
                                        "owners": [f"urn:globus:auth:identity:{OWNER}-0"]}]))
    server = servers(tmp_path / "data", APTK_COLLECTIONS_FILE=str(collections))
    with pytest.raises(AssertionError) as failed:
        server.start()
    assert "aptk serve exited" in str(failed.value)
    assert f"collection 'shared': owners: 'urn:globus:auth:identity:{OWNER}-0'" in str(failed.value)
    assert "Traceback" not in str(failed.value)
