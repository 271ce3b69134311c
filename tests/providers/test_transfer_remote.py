"""The transfer provider against real servers: an SSH/SFTP server (asyncssh) and an S3 server (moto), each way."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from providers.transfer.folders import partial_token

from .conftest import body, local_collection, make_tree, tree

FILES = {
    "run/big.bin": 6 * 1024 * 1024 + 123,  # several chunks; several S3 parts
    "run/a.txt": b"alpha\n",
    "run/nested/b.dat": 70_000,
    "run/nested/deeper/c.dat": 1,
    "run/empty.txt": b"",
}


class Remote:
    """One side of a transfer on a server: how to put files there and read them back."""

    def __init__(self, kind: str, location, monkeypatch):
        self.kind = kind
        self.location = location
        self.fs = location.filesystem()
        options = dict(location.storage_options)
        if kind == "sftp":  # the secret comes from the environment, as a deployment would keep it
            monkeypatch.setenv("TRANSFER_TEST_SFTP_PASSWORD", options["password"])
            options["password"] = "${TRANSFER_TEST_SFTP_PASSWORD}"
        self.collection = {"id": str(uuid.uuid4()), "name": kind, "url": location.url, "storage_options": options}

    def put(self, files: dict[str, bytes | int]) -> dict[str, bytes]:
        written = {}
        for rel, content in files.items():
            data = os.urandom(content) if isinstance(content, int) else content
            if self.kind == "sftp":
                path = self.location.local / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
            else:
                self.fs.pipe_file(self.location.join(rel), data)
            written[rel] = data
        return written

    def tree(self, under: str) -> dict[str, bytes]:
        if self.kind == "sftp":
            return tree(self.location.local / under)
        base = self.location.join(under)
        return {p[len(base) + 1:]: self.fs.cat_file(p) for p in sorted(self.fs.find(base))}

    def mtime(self, rel: str) -> float:
        assert self.kind == "sftp"
        return (self.location.local / rel).stat().st_mtime


@pytest.fixture(params=["sftp", "s3"])
def remote(request, monkeypatch):
    location = request.getfixturevalue(f"{request.param}_location")
    return Remote(request.param, location, monkeypatch)


@pytest.mark.parametrize("direction", ["upload", "download"])
def test_copy_verify_and_sync_rerun_against_a_real_server(make_site, tmp_path, remote, direction):
    local = local_collection("local", tmp_path / "local")
    site = make_site([local, remote.collection], APTK_TRANSFER_CHUNK_BYTES=1 << 20, APTK_TRANSFER_THREADS=3)
    if direction == "upload":
        written = make_tree(tmp_path / "local", FILES)
        os.utime(tmp_path / "local" / "run" / "a.txt", (1_600_000_000, 1_600_000_000))
        source, destination = "local", remote.kind

        def copied():
            return remote.tree("out")
    else:
        written = remote.put(FILES)
        source, destination = remote.kind, "local"

        def copied():
            return tree(tmp_path / "local" / "out")
    client = site.transfer()
    request = body(source, destination, ("/run", "/out", True), preserve_timestamp=True, verify_checksum=True)
    status = client.run(request, wait=True, timeout=60)
    assert status["status"] == "SUCCEEDED", status
    expected = {rel[len("run/"):]: data for rel, data in written.items()}
    assert copied() == expected
    total = sum(len(v) for v in written.values())
    details = status["details"]
    assert (details["files"], details["files_transferred"], details["bytes_transferred"]) == (5, 5, total)
    assert details["bytes_checksummed"] == total
    if remote.kind == "sftp" and direction == "upload":
        assert remote.mtime("out/a.txt") == 1_600_000_000
    # Nothing changed: a checksum sync reads both sides and copies nothing.
    again = client.run({**request, "sync_level": "checksum"}, wait=True, timeout=60)
    assert again["status"] == "SUCCEEDED", again
    assert (again["details"]["files_skipped"], again["details"]["bytes_transferred"]) == (5, 0)
    assert again["details"]["bytes_checksummed"] == 2 * total


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["MD5", "ADLER32", "SHA1", "SHA256", "SHA512"])
@pytest.mark.parametrize("direction", ["upload", "download"])
def test_each_checksum_algorithm_against_a_real_server(make_site, tmp_path, remote, direction, algorithm):
    from .test_transfer import digest_of

    local = local_collection("local", tmp_path / "local")
    site = make_site([local, remote.collection], APTK_TRANSFER_CHUNK_BYTES=1 << 20)
    files = {"run/big.bin": (2 << 20) + 7, "run/b.txt": b"bee"}
    if direction == "upload":
        written = make_tree(tmp_path / "local", files)
        source, destination = "local", remote.kind
    else:
        written = remote.put(files)
        source, destination = remote.kind, "local"
    request = body(source, destination, ("/run/big.bin", "/out/big.bin"), ("/run/b.txt", "/out/b.txt"),
                   checksum_algorithm=algorithm, verify_checksum=True)
    request["transfer_items"][0]["external_checksum"] = digest_of(algorithm, written["run/big.bin"])
    client = site.transfer()
    status = client.run(request, wait=True, timeout=60)
    assert status["status"] == "SUCCEEDED", status
    assert status["details"]["checksum_algorithm"] == algorithm
    copied = remote.tree("out") if direction == "upload" else tree(tmp_path / "local" / "out")
    assert copied == {"big.bin": written["run/big.bin"], "b.txt": b"bee"}
    again = client.run({**request, "sync_level": "checksum"}, wait=True, timeout=60)
    assert (again["details"]["files_skipped"], again["details"]["bytes_transferred"]) == (2, 0), again
    right = request["transfer_items"][0]["external_checksum"]
    request["transfer_items"][0]["external_checksum"] = ("1" if right[0] == "0" else "0") + right[1:]
    wrong = client.run(request, wait=True, timeout=60)
    assert (wrong["status"], wrong["details"]["code"]) == ("FAILED", "ChecksumMismatch"), wrong


def test_between_the_two_servers(make_site, sftp_location, s3_location, monkeypatch):
    sftp = Remote("sftp", sftp_location, monkeypatch)
    s3 = Remote("s3", s3_location, monkeypatch)
    written = sftp.put({"x/one.bin": 300_000, "x/two.txt": b"two"})
    site = make_site([sftp.collection, s3.collection])
    status = site.transfer().run(body("sftp", "s3", ("/x", "/y", True)), wait=True, timeout=60)
    assert status["status"] == "SUCCEEDED", status
    assert s3.tree("y") == {"one.bin": written["x/one.bin"], "two.txt": b"two"}
    back = site.transfer().run(body("s3", "sftp", ("/y/one.bin", "/z/one.bin")), wait=True, timeout=60)
    assert back["status"] == "SUCCEEDED", back
    assert (sftp_location.local / "z" / "one.bin").read_bytes() == written["x/one.bin"]


def test_a_missing_remote_source_fails_naming_the_item(make_site, tmp_path, remote):
    site = make_site([local_collection("local", tmp_path / "local"), remote.collection])
    status = site.transfer().run(body(remote.kind, "local", ("/nothing/here.txt", "/here.txt")), wait=True)
    assert status["status"] == "FAILED"
    assert status["details"]["code"] == "SourceNotFound"
    assert status["details"]["errors"][0]["source_path"] == "/nothing/here.txt"


@pytest.mark.parametrize("chroot", [True, False], ids=["chroot", "no-chroot"])
def test_sftp_links_leading_outside_the_collection_are_refused(make_site, tmp_path, request, monkeypatch, chroot):
    server = request.getfixturevalue("sftp_server" if chroot else "sftp_server_no_chroot")
    location = request.getfixturevalue("sftp_location" if chroot else "sftp_location_no_chroot")
    outside = server.root / f"outside-{uuid.uuid4().hex[:8]}"  # served, but not in the collection
    outside.mkdir()
    (outside / "secret.txt").write_bytes(b"secret")
    beyond = tmp_path / "beyond"  # not even served (by a chrooted server)
    beyond.mkdir()
    (beyond / "secret.txt").write_bytes(b"secret")
    sftp = Remote("sftp", location, monkeypatch)
    sftp.put({"d/ok.txt": b"ok"})
    (location.local / "d" / "escape").symlink_to(Path("..") / ".." / outside.name)
    (location.local / "top").symlink_to(Path("..") / outside.name)
    (location.local / "far").symlink_to(beyond)
    site = make_site([local_collection("local", tmp_path / "local"), sftp.collection])
    client = site.transfer()
    nested = client.run(body("sftp", "local", ("/d", "/d", True)), wait=True)
    assert (nested["status"], nested["details"]["code"]) == ("FAILED", "PathOutsideCollection"), nested
    assert nested["details"]["errors"][0]["source_path"] == "/d/escape"
    for link in ("top", "far"):
        top = client.run(body("sftp", "local", (f"/{link}/secret.txt", "/s.txt")), wait=True)
        assert (top["status"], top["details"]["code"]) == ("FAILED", "PathOutsideCollection"), top
        upload = client.run(body("local", "sftp", ("/", f"/{link}/", True)), wait=True)
        assert (upload["status"], upload["details"]["code"]) == ("FAILED", "PathOutsideCollection"), upload
    assert not (tmp_path / "local" / "s.txt").exists() and not (tmp_path / "local" / "d").exists()
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]
    assert sorted(p.name for p in beyond.iterdir()) == ["secret.txt"]


def test_deep_paths_cost_round_trips_in_proportion_to_their_depth(make_site, tmp_path, remote):
    # Each level of a new folder once, not every level above it again: 300 levels on SFTP took more than two
    # minutes on loopback when every folder made resolved its whole path again, level by level.
    import time

    local = local_collection("local", tmp_path / "local")
    site = make_site([local, remote.collection])
    chain = "/".join(["d"] * 300)
    written = make_tree(tmp_path / "local", {f"tree/{chain}/bottom.txt": b"bottom", "tree/d/top.txt": b"top"})
    client = site.transfer()
    started = time.monotonic()
    up = client.run(body("local", remote.kind, ("/tree", "/deep", True)), wait=True, timeout=120)
    assert up["status"] == "SUCCEEDED", up
    assert time.monotonic() - started < 30
    assert remote.tree("deep") == {rel[len("tree/"):]: data for rel, data in written.items()}
    down = client.run(body(remote.kind, "local", ("/deep", "/back", True)), wait=True, timeout=120)
    assert down["status"] == "SUCCEEDED", down
    assert tree(tmp_path / "local" / "back") == {rel[len("tree/"):]: data for rel, data in written.items()}


@pytest.mark.parametrize("ending", ["cancel", "deadline"])
@pytest.mark.parametrize("where", ["local", "sftp"])
def test_partial_files_go_when_an_action_ends_unfinished(make_site, tmp_path, request, monkeypatch, where, ending):
    # A killed attempt leaves its hidden partial file behind (on SFTP, or on a local disk without O_TMPFILE); the
    # action ending unfinished (a cancel, a deadline) removes it, and the partial of the file being copied.
    import datetime as dt
    import time

    from .conftest import local_storage, wait_for

    collections = [local_collection("local", tmp_path / "local")]
    if where == "sftp":
        remote = Remote("sftp", request.getfixturevalue("sftp_location"), monkeypatch)
        collections.append(remote.collection)
        out = remote.location.local / "out"
        config = {}
    else:
        collections.append(local_collection("disk", tmp_path / "disk"))
        out = tmp_path / "disk" / "out"
        config = local_storage(anonymous_files=False)
    destination = collections[1]["name"]
    site = make_site(collections, APTK_TRANSFER_MAX_BYTES_PER_SECOND=100_000, APTK_TRANSFER_THREADS=1,
                     APTK_TRANSFER_CHUNK_BYTES=16384, **config)
    make_tree(tmp_path / "local", {f"slow/{i}.bin": 100_000 for i in range(20)})
    options = {}
    if ending == "deadline":
        options["deadline"] = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=3)).isoformat()
    client = site.transfer()
    action = client.run(body("local", destination, ("/slow", "/out", True), **options))["action_id"]
    suffix = f".aptk-{partial_token(action)}.part"

    def partials():
        return sorted(p.name for p in out.rglob("*") if p.name.endswith(suffix)) if out.exists() else []

    wait_for(lambda: partials(), timeout=10)  # the file being copied
    (out / f".19.bin{suffix}").write_bytes(b"left by a killed attempt")
    (out / ".someone-else.aptk-000000000000.part").write_bytes(b"not this action's")
    assert len(partials()) == 2
    if ending == "cancel":
        client.cancel(action)
    final = client.wait(action, timeout=20, max_interval=0.2)
    assert final["status"] == "FAILED"
    wait_for(lambda: not partials(), timeout=5)
    time.sleep(0.2)
    assert partials() == [] and (out / ".someone-else.aptk-000000000000.part").exists()


@pytest.mark.parametrize("ending", ["cancel", "rerun"])
def test_multipart_uploads_go_when_an_action_ends(make_site, tmp_path, s3_location, monkeypatch, ending):
    # An upload to S3 too big for one request goes up in parts: invisible, but kept (and billed) until completed
    # or aborted. One a killed attempt began is aborted when the action ends: cancelled, or finished by a rerun;
    # the one being written when a cancel comes is aborted as it stops. Other uploads are left alone.
    from providers.transfer.state import Uploads
    from toolkit.server import get_toolkit

    from .conftest import wait_for

    remote = Remote("s3", s3_location, monkeypatch)
    site = make_site([local_collection("local", tmp_path / "local"), remote.collection],
                     APTK_TRANSFER_MAX_BYTES_PER_SECOND=4 << 20 if ending == "cancel" else 0,
                     APTK_TRANSFER_THREADS=1)
    make_tree(tmp_path / "local", {"up/big.bin": 12 << 20, "up/small.txt": b"small"})
    bucket, prefix = s3_location.path.split("/", 1)

    def uploads():
        found = remote.fs.list_multipart_uploads(bucket)
        return sorted((u["Key"][len(prefix) + 1:], u["UploadId"]) for u in found if u["Key"].startswith(prefix + "/"))

    def begin(key):
        return remote.fs.call_s3("create_multipart_upload", Bucket=bucket, Key=f"{prefix}/{key}")["UploadId"]

    foreign = begin("out/foreign.bin")  # not this action's
    client = site.transfer()
    engine = get_toolkit(site.app).runtime.store.engine
    if ending == "cancel":
        action = client.run(body("local", "s3", ("/up", "/out", True)))["action_id"]
        wait_for(lambda: len(uploads()) == 2, timeout=20)  # the big file's, begun by the running transfer
        killed = begin("out/big.bin")  # as an earlier attempt, killed mid-upload, left it
        Uploads(engine, action).begun("out/big.bin", killed)
        assert len(uploads()) == 3
        client.cancel(action)
        final = client.wait(action, timeout=30, max_interval=0.2)
        assert final["status"] == "FAILED"
        wait_for(lambda: uploads() == [("out/foreign.bin", foreign)], timeout=10)
    else:
        # A rerun after a crash: the attempt that died had begun an upload; the rerun copies everything and, as
        # the action succeeds, aborts it.
        from providers.transfer import engine as transfer_engine

        action_ids = []
        real_run = transfer_engine.Transfer.run

        def run_after_a_crash(self):
            action_ids.append(self.ctx.action_id)
            self.uploads.begun("out/big.bin", begin("out/big.bin"))  # what the attempt that died recorded
            return real_run(self)

        monkeypatch.setattr(transfer_engine.Transfer, "run", run_after_a_crash)
        final = client.run(body("local", "s3", ("/up", "/out", True)), wait=True, timeout=60)
        assert final["status"] == "SUCCEEDED", final
        assert remote.tree("out")["big.bin"] == (tmp_path / "local" / "up" / "big.bin").read_bytes()
        assert uploads() == [("out/foreign.bin", foreign)]
        action = action_ids[0]
    assert Uploads(engine, action).load() == []


@pytest.mark.parametrize("code", ["WorkerLost", "DeadlineExceeded"])
@pytest.mark.parametrize("where", ["local", "sftp"])
def test_partial_files_go_when_the_toolkit_ends_an_action_whose_run_is_gone(make_site, tmp_path, request,
                                                                          monkeypatch, where, code):
    # A process killed on the action's last attempt (or an action whose deadline passes with no process running
    # it) is ended FAILED by the toolkit's sweep, with no run left to clean up: what its attempts half wrote goes
    # all the same, and other actions' partial files stay.
    import time

    from providers.transfer import engine as transfer_engine
    from toolkit.server import get_toolkit

    from .conftest import local_storage, wait_for

    monkeypatch.setattr(transfer_engine.Transfer, "_remove_partials", lambda self, dst: None)  # the run is gone
    collections = [local_collection("local", tmp_path / "local")]
    if where == "sftp":
        remote = Remote("sftp", request.getfixturevalue("sftp_location"), monkeypatch)
        collections.append(remote.collection)
        out = remote.location.local / "out"
        config = {}
    else:
        collections.append(local_collection("disk", tmp_path / "disk"))
        out = tmp_path / "disk" / "out"
        config = local_storage(anonymous_files=False)
    site = make_site(collections, APTK_TRANSFER_MAX_BYTES_PER_SECOND=100_000, APTK_TRANSFER_THREADS=1,
                     APTK_TRANSFER_CHUNK_BYTES=16384, **config)
    make_tree(tmp_path / "local", {f"slow/{i}.bin": 100_000 for i in range(20)})
    client = site.transfer()
    action = client.run(body("local", collections[1]["name"], ("/slow", "/out", True)))["action_id"]
    suffix = f".aptk-{partial_token(action)}.part"

    def partials():
        return sorted(p.name for p in out.rglob("*") if p.name.endswith(suffix)) if out.exists() else []

    wait_for(lambda: partials(), timeout=10)
    (out / f".19.bin{suffix}").write_bytes(b"left by a killed attempt")
    (out / ".someone-else.aptk-000000000000.part").write_bytes(b"not this action's")
    runtime = get_toolkit(site.app).runtime
    if code == "WorkerLost":
        runtime.store.update(action, where={}, runner="elsewhere:1:gone", heartbeat=time.time() - 3600, attempts=5)
    else:
        runtime.store.update(action, where={}, deadline=time.time() - 1)
    runtime.sweep()
    final = client.status(action)
    assert (final["status"], final["details"]["code"]) == ("FAILED", code)
    wait_for(lambda: not partials(), timeout=10)
    assert (out / ".someone-else.aptk-000000000000.part").exists()
