"""The transfer provider between local collections: copies, sync levels, verification, safety, failures, cancel."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import threading
import time
import tracemalloc
import uuid
from pathlib import Path

import pytest

from providers.collections import INBOX_ID, PROJECT_ID
from providers.transfer.storage import LocalStorage
from tests.conftest import no_nulls
from toolkit import get_toolkit
from toolkit.client import ClientError

from .conftest import OWNER, USER, body, items, local_collection, local_storage, make_tree, tree, wait_for

COUNTERS = ("files", "files_transferred", "files_skipped", "directories", "bytes_transferred", "bytes_checksummed",
            "faults", "effective_bytes_per_second")


def counts(details, *keys):
    return {k: details[k] for k in keys}


# --- copying ------------------------------------------------------------------------------------------------------


def test_recursive_copy_with_verification_reports_a_globus_task(site):
    src, dst = site.roots["src"], site.roots["dst"]
    written = make_tree(src, {"run1/a.dat": 100_000, "run1/sub/b.dat": 5000, "run1/sub/deeper/c.txt": b"hi",
                              "run1/empty.txt": b"", "single.bin": 3000})
    (src / "run1" / "emptydir").mkdir()
    status = site.transfer().run(
        body("src", "dst", ("/run1", "/copies/run1", True), ("/single.bin", "/copies/single.bin"), label="first"),
        wait=True)
    assert status["status"] == "SUCCEEDED", status
    details = status["details"]
    assert tree(dst / "copies") == written
    assert (dst / "copies" / "run1" / "emptydir").is_dir()
    total = sum(len(v) for v in written.values())
    assert counts(details, "files", "files_transferred", "files_skipped", "directories", "bytes_transferred",
                  "bytes_checksummed", "faults") == {
        "files": 5, "files_transferred": 5, "files_skipped": 0, "directories": 4, "bytes_transferred": total,
        "bytes_checksummed": total, "faults": 0}
    assert details["DATA_TYPE"] == "task" and details["status"] == "SUCCEEDED" and details["label"] == "first"
    assert details["task_id"] == status["action_id"]
    assert details["checksum_algorithm"] == "SHA256"
    assert details["effective_bytes_per_second"] > 0
    assert not [p for p in (dst / "copies").rglob("*.part")]


def test_the_newer_form_and_collection_names_or_ids(site):
    make_tree(site.roots["src"], {"x/one.txt": b"one"})
    src_id = json.loads(Path(site.app.config["APTK_COLLECTIONS_FILE"]).read_text())[0]["id"]
    status = site.transfer().run({
        "DATA_TYPE": "transfer", "source_endpoint": src_id.upper(), "destination_endpoint": "dst",
        "DATA": [{"DATA_TYPE": "transfer_item", "source_path": "/~/x/one.txt", "destination_path": "/y/"}],
        "encrypt_data": True, "notify_on_succeeded": False,
    }, wait=True)
    assert status["status"] == "SUCCEEDED", status
    assert (site.roots["dst"] / "y" / "one.txt").read_bytes() == b"one"


def test_many_small_files_with_progress_while_active(make_site):
    site = make_site(APTK_TRANSFER_MAX_BYTES_PER_SECOND=300_000, APTK_TRANSFER_THREADS=4)
    written = make_tree(site.roots["src"], {f"many/{i:03}.dat": 4096 for i in range(150)})
    client = site.transfer()
    action = client.run(body("src", "dst", ("/many", "/many", True)))["action_id"]
    seen = wait_for(lambda: (s := client.status(action))["details"].get("files_transferred", 0) > 0 and s)
    assert seen["status"] == "ACTIVE"
    assert seen["details"]["status"] == "ACTIVE" and seen["details"]["files"] == 150
    assert "files" in seen["display_status"]
    final = client.wait(action, timeout=30, max_interval=0.2)
    assert final["status"] == "SUCCEEDED", final
    assert tree(site.roots["dst"] / "many") == {k[5:]: v for k, v in written.items()}
    assert final["details"]["files_transferred"] == 150


def test_finished_files_are_recorded_once_the_copy_has_run_a_second(make_site, monkeypatch):
    """Records for a rerun after a crash cost about what recopying costs: a transfer that ends within a second
    writes none; a longer one writes them from its first second on, before its progress says they are done."""
    from providers.transfer import progress as progress_module
    from providers.transfer.state import DoneRecords

    calls: list[tuple[float, int]] = []
    started: list[float] = []
    add, begin = DoneRecords.add, progress_module.Progress.started

    def recording_add(self, records):
        records = list(records)
        calls.append((time.monotonic(), len(records)))
        add(self, records)

    def recording_started(self):
        started.append(time.monotonic())
        begin(self)

    monkeypatch.setattr(DoneRecords, "add", recording_add)
    monkeypatch.setattr(progress_module.Progress, "started", recording_started)
    site = make_site()
    make_tree(site.roots["src"], {f"quick/{i:03}.dat": 4096 for i in range(200)})
    final = site.transfer().run(body("src", "dst", ("/quick", "/quick", True)), wait=True)
    assert final["status"] == "SUCCEEDED" and final["details"]["files_transferred"] == 200
    assert calls == []

    slow = make_site(APTK_TRANSFER_MAX_BYTES_PER_SECOND=100_000, APTK_TRANSFER_THREADS=1)
    make_tree(slow.roots["src"], {f"slow/{i:03}.dat": 4096 for i in range(60)})
    client = slow.transfer()
    started.clear()
    action = client.run(body("src", "dst", ("/slow", "/slow", True)))["action_id"]
    seen = wait_for(lambda: (s := client.status(action))["details"].get("files_transferred", 0) > 0 and s, timeout=10)
    assert calls and sum(n for _, n in calls) >= seen["details"]["files_transferred"]
    assert calls[0][0] - started[-1] >= progress_module.FIRST_FLUSH_SECONDS - 0.05
    assert client.wait(action, timeout=30, max_interval=0.2)["status"] == "SUCCEEDED"


def test_memory_stays_bounded_whatever_the_file_size(make_site):
    site = make_site(APTK_TRANSFER_CHUNK_BYTES=1 << 20, APTK_TRANSFER_THREADS=1)
    big = site.roots["src"] / "big.bin"
    with open(big, "wb") as f:  # sparse: 96 MiB without using the disk
        f.truncate(96 << 20)
        f.seek(50 << 20)
        f.write(b"in the middle")
    tracemalloc.start()
    try:
        status = site.transfer().run(body("src", "dst", ("/big.bin", "/big.bin")), wait=True, timeout=60)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert status["status"] == "SUCCEEDED", status
    assert status["details"]["bytes_transferred"] == 96 << 20
    assert peak < 16 << 20, f"peak Python memory {peak / 2**20:.1f} MiB while copying a 96 MiB file"
    with open(site.roots["dst"] / "big.bin", "rb") as f:
        f.seek(50 << 20)
        assert f.read(13) == b"in the middle"


# --- sync levels ------------------------------------------------------------------------------------------------


def test_sync_rerun_skips_everything_then_copies_only_what_changed(site):
    src, dst = site.roots["src"], site.roots["dst"]
    make_tree(src, {"d/a.txt": b"aaaa", "d/b.txt": b"bbbb", "d/c.txt": b"cccc"})
    client = site.transfer()
    assert client.run(body("src", "dst", ("/d", "/d", True)), wait=True)["status"] == "SUCCEEDED"
    for level in (0, "exists", 1, "size", 2, "mtime", 3, "checksum"):
        details = client.run(body("src", "dst", ("/d", "/d", True), sync_level=level), wait=True)["details"]
        assert counts(details, "files_transferred", "files_skipped", "bytes_transferred") == {
            "files_transferred": 0, "files_skipped": 3, "bytes_transferred": 0}, level
    assert client.run(body("src", "dst", ("/d", "/d", True), sync_level=3), wait=True)["details"][
        "bytes_checksummed"] == 24
    # Same size, different content, destination newer: only a checksum sync notices.
    (src / "d" / "b.txt").write_bytes(b"BBBB")
    os.utime(src / "d" / "b.txt", (1_000_000, 1_000_000))
    for level, transferred in ((1, 0), (2, 0), (3, 1)):
        details = client.run(body("src", "dst", ("/d", "/d", True), sync_level=level), wait=True)["details"]
        assert details["files_transferred"] == transferred, level
    assert (dst / "d" / "b.txt").read_bytes() == b"BBBB"
    # A newer source is what mtime sync copies; a missing destination file is copied by every level.
    (src / "d" / "a.txt").write_bytes(b"AAAA")
    os.utime(src / "d" / "a.txt", (time.time() + 100, time.time() + 100))
    (dst / "d" / "c.txt").unlink()
    details = client.run(body("src", "dst", ("/d", "/d", True), sync_level="mtime"), wait=True)["details"]
    assert (details["files_transferred"], details["files_skipped"]) == (2, 1)
    assert tree(dst / "d") == tree(src / "d")


def test_verification_recopies_a_file_whose_checksum_differs(make_site):
    corrupted = []

    class CorruptsTheFirstWrite(LocalStorage):
        def open_write(self, rel, token, chunk_size):
            writer = super().open_write(rel, token, chunk_size)
            write = writer.write

            def flaky_write(data):
                if not corrupted:
                    corrupted.append(rel)
                    data = bytes(data)
                    data = bytes([data[0] ^ 0xFF]) + data[1:]
                return write(data)

            writer.write = flaky_write
            return writer

    site = make_site(**local_storage(CorruptsTheFirstWrite))
    make_tree(site.roots["src"], {"v.bin": 200_000})
    status = site.transfer().run(body("src", "dst", ("/v.bin", "/v.bin")), wait=True)
    assert status["status"] == "SUCCEEDED", status
    assert corrupted and status["details"]["faults"] == 1
    assert status["details"]["bytes_transferred"] == 400_000  # copied twice
    assert (site.roots["dst"] / "v.bin").read_bytes() == (site.roots["src"] / "v.bin").read_bytes()
    log = site.transfer().log(status["action_id"])["entries"]
    assert any("Checksum mismatch" in e["description"] for e in log)


def test_a_checksum_that_never_matches_fails_the_item(make_site):
    class WritesGarbage(LocalStorage):
        def open_write(self, rel, token, chunk_size):
            writer = super().open_write(rel, token, chunk_size)
            write = writer.write
            writer.write = lambda data: write(b"x" * len(data))
            return writer

    site = make_site(**local_storage(WritesGarbage))
    make_tree(site.roots["src"], {"v.bin": 1000})
    status = site.transfer().run(body("src", "dst", ("/v.bin", "/w.bin")), wait=True)
    assert status["status"] == "FAILED"
    assert status["details"]["code"] == "ChecksumMismatch"
    assert status["details"]["faults"] == 3
    assert status["details"]["errors"] == [{"source_path": "/v.bin", "destination_path": "/w.bin",
                                            "code": "ChecksumMismatch", "error": status["details"]["errors"][0]["error"]}]
    assert not (site.roots["dst"] / "w.bin").exists()


def test_external_checksum_is_checked(site):
    import hashlib

    make_tree(site.roots["src"], {"e.txt": b"expected"})
    good = hashlib.sha256(b"expected").hexdigest()
    item = {"source_path": "/e.txt", "destination_path": "/e.txt", "external_checksum": good,
            "checksum_algorithm": "SHA256"}
    ok = site.transfer().run({"source_endpoint_id": "src", "destination_endpoint_id": "dst",
                              "transfer_items": [item]}, wait=True)
    assert ok["status"] == "SUCCEEDED"
    item["external_checksum"] = "0" * 64
    bad = site.transfer().run({"source_endpoint_id": "src", "destination_endpoint_id": "dst",
                               "transfer_items": [item], "verify_checksum": False}, wait=True)
    assert (bad["status"], bad["details"]["code"]) == ("FAILED", "ChecksumMismatch")


def digest_of(algorithm: str, data: bytes) -> str:
    import hashlib
    import zlib

    if algorithm == "ADLER32":
        return f"{zlib.adler32(data):08x}"
    return hashlib.new(algorithm.lower(), data).hexdigest()


@pytest.mark.parametrize("algorithm", ["MD5", "ADLER32", "SHA1", "SHA256", "SHA512"])
def test_each_checksum_algorithm_verifies_checks_external_checksums_and_syncs(site, algorithm):
    written = make_tree(site.roots["src"], {"c/a.bin": 300_000, "c/b.txt": b"bee"})
    client = site.transfer()
    request = body("src", "dst", ("/c/a.bin", "/c/a.bin"), ("/c/b.txt", "/c/b.txt"),
                   checksum_algorithm=algorithm.lower() if algorithm == "MD5" else algorithm)
    request["transfer_items"][0]["external_checksum"] = digest_of(algorithm, written["c/a.bin"])
    status = client.run(request, wait=True)
    assert status["status"] == "SUCCEEDED", status
    assert status["details"]["checksum_algorithm"] == algorithm
    assert tree(site.roots["dst"]) == written
    assert status["details"]["bytes_checksummed"] == sum(len(v) for v in written.values())
    (site.roots["dst"] / "c" / "b.txt").write_bytes(b"bed")  # same size, other content
    again = client.run({**request, "sync_level": "checksum"}, wait=True)
    assert counts(again["details"], "files_transferred", "files_skipped") == {"files_transferred": 1,
                                                                           "files_skipped": 1}
    assert (site.roots["dst"] / "c" / "b.txt").read_bytes() == b"bee"
    right = digest_of(algorithm, written["c/a.bin"])
    request["transfer_items"][0]["external_checksum"] = ("1" if right[0] == "0" else "0") + right[1:]
    failed = client.run(request, wait=True)
    assert (failed["status"], failed["details"]["code"]) == ("FAILED", "ChecksumMismatch"), failed
    assert algorithm in failed["details"]["errors"][0]["error"]


def test_an_item_may_give_its_external_checksum_in_another_algorithm(site):
    written = make_tree(site.roots["src"], {"x.bin": 5000})
    request = body("src", "dst", ("/x.bin", "/x.bin"), checksum_algorithm="SHA1")
    request["transfer_items"][0].update(external_checksum=digest_of("ADLER32", written["x.bin"]),
                                        checksum_algorithm="adler32")
    assert site.transfer().run(request, wait=True)["status"] == "SUCCEEDED"
    request["transfer_items"][0]["external_checksum"] = digest_of("SHA1", written["x.bin"])
    with pytest.raises(ClientError) as refused:  # a SHA-1 is no ADLER32
        site.transfer().run(request)
    assert refused.value.status == 400
    assert "transfer_items[0].external_checksum: a ADLER32 checksum has 8 hex digits, not 40" in str(refused.value)


def test_an_unknown_checksum_algorithm_is_a_400_naming_the_accepted_ones(site):
    with pytest.raises(ClientError) as refused:
        site.transfer().run(body("src", "dst", ("/a", "/a"), checksum_algorithm="CRC32"))
    assert refused.value.status == 400
    assert "checksum_algorithm: 'CRC32' is not a checksum algorithm here; use one of MD5, ADLER32, SHA1, SHA256, " \
           "SHA512." in str(refused.value)


def test_preserve_timestamp_delete_extra_and_filter_rules(site):
    src, dst = site.roots["src"], site.roots["dst"]
    make_tree(src, {"t/keep.txt": b"k", "t/skip.tmp": b"s", "t/cache/x.txt": b"x", "t/sub/y.txt": b"y"})
    os.utime(src / "t" / "keep.txt", (1_500_000_000, 1_500_000_000))
    make_tree(dst, {"t/old.txt": b"o", "t/gone/z.txt": b"z", "t/local.tmp": b"l"})
    status = site.transfer().run(body(
        "src", "dst", ("/t", "/t", True), preserve_timestamp=True, delete_destination_extra=True,
        filter_rules=[{"DATA_TYPE": "filter_rule", "method": "exclude", "name": "*.tmp", "type": "file"},
                      {"method": "exclude", "name": "cache", "type": "dir"}]), wait=True)
    assert status["status"] == "SUCCEEDED", status
    assert sorted(tree(dst / "t")) == ["keep.txt", "local.tmp", "sub/y.txt"]  # excluded names are left alone
    assert not (dst / "t" / "gone").exists()
    assert (dst / "t" / "keep.txt").stat().st_mtime == 1_500_000_000
    assert status["details"]["files_deleted"] == 2
    assert status["details"]["files"] == 2


# --- refusing -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path, reason", [
    ("/../outside.txt", "escapes the collection root"),
    ("a/../../outside.txt", "escapes the collection root"),
    ("/a/\x00b", "NUL byte"),
    ("~bob/x", "another user's home"),
])
def test_paths_leaving_the_root_are_refused_at_run(site, path, reason):
    from providers.collections.paths import PathOutsideCollection, normalize

    with pytest.raises(PathOutsideCollection, match=reason):
        normalize(path)
    if "\x00" in path:  # the toolkit refuses NUL characters in any body before the provider sees it
        for request in (body("src", "dst", (path, "/x.txt")), body("src", "dst", ("/ok.txt", path))):
            with pytest.raises(ClientError) as refused:
                site.transfer().run(request)
            assert refused.value.status == 400 and "NUL" in refused.value.description
        return
    with pytest.raises(ClientError) as refused:
        site.transfer().run(body("src", "dst", ("/ok.txt", "/ok.txt"), (path, "/x.txt")))
    assert refused.value.status == 400
    assert "transfer_items[1].source_path" in refused.value.description and reason in refused.value.description
    with pytest.raises(ClientError) as refused:
        site.transfer().run(body("src", "dst", ("/ok.txt", path)))
    assert "transfer_items[0].destination_path" in refused.value.description


def test_symbolic_links_leading_outside_are_refused_before_any_byte_moves(site, tmp_path):
    src, dst = site.roots["src"], site.roots["dst"]
    secret = tmp_path / "secret"
    make_tree(secret, {"passwd": b"root:x:0:0"})
    make_tree(src, {"tree/a.txt": b"a" * 1000, "tree/z.txt": b"z"})
    (src / "out").symlink_to(secret)
    (src / "tree" / "m-link").symlink_to(secret / "passwd")
    (src / "inside").symlink_to(src / "tree")
    (dst / "escape").symlink_to(secret)
    client = site.transfer()
    # Top-level: refused at /run.
    for pair, field in ((("/out/passwd", "/p"), "source_path"), (("/tree/a.txt", "/escape/a.txt"), "destination_path")):
        with pytest.raises(ClientError) as refused:
            client.run(body("src", "dst", pair))
        assert refused.value.status == 400 and field in refused.value.description
        assert "symbolic link" in refused.value.description
    # Inside a folder: the action fails while planning, before anything is written.
    status = client.run(body("src", "dst", ("/tree", "/copy", True)), wait=True)
    assert status["status"] == "FAILED"
    assert status["details"]["code"] == "PathOutsideCollection"
    assert status["details"]["errors"][0]["source_path"] == "/tree/m-link"
    assert status["details"]["bytes_transferred"] == 0
    assert not (dst / "copy").exists()
    assert (secret / "passwd").read_bytes() == b"root:x:0:0"
    # A link that stays inside is followed.
    status = client.run(body("src", "dst", ("/inside/z.txt", "/z.txt")), wait=True)
    assert status["status"] == "SUCCEEDED" and (dst / "z.txt").read_bytes() == b"z"


@pytest.mark.parametrize("files", [3, 40])
def test_a_destination_file_that_is_a_link_outside_is_refused_in_a_folder_of_few_or_many(site, tmp_path, files):
    # A destination folder holding many of the files is listed once (links known from the listing) rather than
    # each file looked at; either way a file whose name there is a link leading outside is refused in planning.
    src, dst = site.roots["src"], site.roots["dst"]
    secret = tmp_path / "secret"
    make_tree(secret, {"victim": b"keep"})
    make_tree(src, {f"tree/f{i:02}.txt": b"new" for i in range(files)})
    make_tree(dst, {f"copy/f{i:02}.txt": b"old" for i in range(files) if i != 1})
    (dst / "copy" / "f01.txt").symlink_to(secret / "victim")
    status = site.transfer().run(body("src", "dst", ("/tree", "/copy", True)), wait=True)
    assert status["status"] == "FAILED", status
    assert status["details"]["code"] == "PathOutsideCollection"
    assert [e["destination_path"] for e in status["details"]["errors"]] == ["/copy/f01.txt"]
    assert status["details"]["bytes_transferred"] == 0
    assert (secret / "victim").read_bytes() == b"keep" and (dst / "copy" / "f00.txt").read_bytes() == b"old"


def test_a_small_file_that_grew_since_it_was_listed_is_copied_whole(make_site):
    # Small files go in one read; one that is no longer the size it was listed with is streamed instead.
    class GrowsWhenRead(LocalStorage):
        def read_whole(self, rel, size):
            if rel.endswith("grows.txt"):
                with open(self.local_path(rel), "ab") as f:
                    f.write(b" and more")
            return super().read_whole(rel, size)

    site = make_site(**local_storage(GrowsWhenRead))
    make_tree(site.roots["src"], {"d/grows.txt": b"some", "d/same.txt": b"same"})
    status = site.transfer().run(body("src", "dst", ("/d", "/d", True)), wait=True)
    assert status["status"] == "SUCCEEDED", status
    assert tree(site.roots["dst"] / "d") == {"grows.txt": b"some and more", "same.txt": b"same"}


def test_a_checksum_rerun_copies_over_what_is_not_the_same_file(site):
    # Each side read once: a destination of another size, a pipe in the file's place, or nothing there, is not in
    # sync (nothing hashed on that side); the same bytes are. A folder in the file's place is in the way.
    src, dst = site.roots["src"], site.roots["dst"]
    make_tree(src, {"d/same.txt": b"same", "d/other.txt": b"1234", "d/gone.txt": b"g", "d/pipe.txt": b"",
                    "e/folder.txt": b"f"})
    make_tree(dst, {"d/same.txt": b"same", "d/other.txt": b"12345", "e/folder.txt/inside": b"x"})
    os.mkfifo(dst / "d" / "pipe.txt")
    client = site.transfer()
    status = client.run(body("src", "dst", ("/d", "/d", True), sync_level="checksum"), wait=True)
    details = status["details"]
    assert status["status"] == "SUCCEEDED", status
    assert tree(dst / "d") == tree(src / "d") and (dst / "d" / "pipe.txt").is_file()
    assert (details["files_transferred"], details["files_skipped"]) == (3, 1)
    assert details["bytes_checksummed"] == 8 + 5  # same.txt on both sides; the three copied, read back
    status = client.run(body("src", "dst", ("/e", "/e", True), sync_level="checksum"), wait=True)
    assert status["status"] == "FAILED", status
    assert [(e["code"], e["destination_path"]) for e in status["details"]["errors"]] == [
        ("DestinationTypeConflict", "/e/folder.txt")]


class BeforeFolders(LocalStorage):
    """Local storage that runs ``hook`` once, when the first destination folder is made (after planning)."""

    hook = staticmethod(lambda: None)
    done: list[bool] = []

    def makedirs(self, rel, check=None):
        if not self.done:
            self.done.append(True)
            self.hook()
        super().makedirs(rel, check=check)


def before_folders(hook):
    return local_storage(type("Hooked", (BeforeFolders,), {"hook": staticmethod(hook), "done": []}))


def test_a_link_swapped_in_after_planning_is_refused_when_the_file_is_opened(make_site, tmp_path):
    made = []

    def swap():
        src = made[0].roots["src"]
        (src / "swap" / "a.txt").unlink()
        (src / "swap" / "a.txt").symlink_to(tmp_path / "secret" / "key")

    site = make_site(**before_folders(swap))
    made.append(site)
    make_tree(tmp_path / "secret", {"key": b"secret"})
    make_tree(site.roots["src"], {"swap/a.txt": b"a"})
    status = site.transfer().run(body("src", "dst", ("/swap", "/swap", True)), wait=True)
    assert status["status"] == "FAILED"
    assert status["details"]["code"] == "PathOutsideCollection"
    assert not (site.roots["dst"] / "swap" / "a.txt").exists()
    assert (site.roots["src"] / "swap" / "a.txt").is_symlink()  # the swap happened, after planning


def test_unknown_collections_and_bad_requests_are_400s(site):
    client = site.transfer()
    cases = [
        (body("nowhere", "dst", ("/a", "/b")), "source_endpoint_id: there is no collection 'nowhere'"),
        ({"source_endpoint": "src", "destination_endpoint_id": "dst", "transfer_items": items(("/a", "/b"))},
         None),
        ({"source_endpoint_id": "src", "transfer_items": items(("/a", "/b"))}, "destination_endpoint_id"),
        ({"source_endpoint_id": "src", "destination_endpoint_id": "dst"}, "transfer_items"),
        (body("src", "dst", ("/a", "/b"), sync_level=4), "sync_level"),
        (body("src", "dst", ("/a", "/b"), deadline="2001-01-01T00:00:00Z"), "deadline: is in the past"),
        (body("src", "dst", ("/a", "/b"), colour="blue"), "colour"),
        ({"source_endpoint_id": "src", "source_endpoint": "dst", "destination_endpoint_id": "dst",
          "transfer_items": items(("/a", "/b"))}, "name different collections"),
    ]
    for request, expected in cases:
        if expected is None:
            assert client.run(request)["status"] in ("ACTIVE", "FAILED")  # mixing both forms is fine
            continue
        with pytest.raises(ClientError) as refused:
            client.run(request)
        assert refused.value.status == 400, request
        assert expected in refused.value.description, (expected, refused.value.description)


# --- the task document a flow reads -------------------------------------------------------------------------------

SUBTASKS = ("subtasks_total", "subtasks_succeeded", "subtasks_failed", "subtasks_canceled", "subtasks_expired",
            "subtasks_pending")


def subtasks(details):
    found = counts(details, *SUBTASKS)
    assert found["subtasks_total"] == sum(v for k, v in found.items() if k != "subtasks_total"), found
    return found


def test_a_succeeded_task_document(site):
    make_tree(site.roots["src"], {"d/a": 10, "d/b": 20, "d/c": 30})
    deadline = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1)).replace(microsecond=0)
    status = site.transfer().run(body("src", "dst", ("/d", "/d", True), deadline=deadline.isoformat()), wait=True)
    details = status["details"]
    assert (status["status"], details["status"]) == ("SUCCEEDED", "SUCCEEDED")
    assert not {"nice_status", "is_ok", "fatal_error"} & set(details)  # Globus's nulls: left out here
    assert no_nulls(status) == []
    assert subtasks(details) == {"subtasks_total": 3, "subtasks_succeeded": 3, "subtasks_failed": 0,
                                 "subtasks_canceled": 0, "subtasks_expired": 0, "subtasks_pending": 0}
    assert details["deadline"] == deadline.isoformat().replace("+00:00", "Z")
    assert details["completion_time"] >= details["request_time"]
    assert abs(dt.datetime.fromisoformat(details["completion_time"].replace("Z", "+00:00")).timestamp()
               - dt.datetime.fromisoformat(status["completion_time"].replace("Z", "+00:00")).timestamp()) < 2


def test_an_active_then_cancelled_task_document_agrees_with_the_action(make_site):
    site = make_site(APTK_TRANSFER_MAX_BYTES_PER_SECOND=100_000, APTK_TRANSFER_THREADS=1)
    make_tree(site.roots["src"], {f"slow/{i}.bin": 50_000 for i in range(20)})
    client = site.transfer()
    action = client.run(body("src", "dst", ("/slow", "/slow", True)))["action_id"]
    active = wait_for(lambda: (s := client.status(action))["details"].get("files_transferred", 0) > 0 and s)
    details = active["details"]
    assert (details["status"], details["nice_status"], details["is_ok"]) == ("ACTIVE", "OK", True)
    assert not {"fatal_error", "completion_time", "deadline"} & set(details)
    found = subtasks(details)
    assert found["subtasks_total"] == 20 and found["subtasks_pending"] > 0
    answer = client.cancel(action)
    for status in (answer, client.status(action)):
        details = status["details"]
        assert (status["status"], details["status"]) == ("FAILED", "FAILED")
        assert details["fatal_error"] == {"code": "CANCELED",
                                          "description": "The action was cancelled at the caller's request."}
        assert details["code"] == "ActionCancelled" and not {"nice_status", "is_ok"} & set(details)
        assert details["completion_time"] and no_nulls(status) == []
        found = subtasks(details)
        assert found["subtasks_pending"] == 0 and found["subtasks_canceled"] > 0
    time.sleep(0.5)  # the copy stopping changes nothing the cancel said
    assert client.status(action)["details"] == answer["details"]


def _ended_by_the_toolkit(make_site, end):
    """A slow transfer, ACTIVE with files copied, ended by ``end(store, action_id)`` and a maintenance sweep."""
    site = make_site(APTK_TRANSFER_MAX_BYTES_PER_SECOND=100_000, APTK_TRANSFER_THREADS=1)
    make_tree(site.roots["src"], {f"slow/{i}.bin": 50_000 for i in range(20)})
    client = site.transfer()
    action = client.run(body("src", "dst", ("/slow", "/slow", True)))["action_id"]
    wait_for(lambda: client.status(action)["details"].get("files_transferred", 0) > 0)
    runtime = get_toolkit(site.app).runtime
    end(runtime.store, action)
    runtime.sweep()
    return client.status(action)


@pytest.mark.parametrize(("code", "fatal", "bucket"), [
    ("DeadlineExceeded", "DEADLINE_EXCEEDED", "subtasks_expired"),
    ("WorkerLost", "WorkerLost", "subtasks_canceled"),
])
def test_a_task_document_ended_by_the_toolkit_agrees_with_the_action(make_site, code, fatal, bucket):
    def end(store, action_id):
        if code == "DeadlineExceeded":  # the toolkit's sweep sees the deadline before the copy does
            store.update(action_id, where={}, deadline=time.time() - 1)
        else:  # its process died on its last attempt: it ends FAILED with WorkerLost
            store.update(action_id, where={}, runner="elsewhere:1:gone", heartbeat=time.time() - 3600,
                         attempts=5)

    status = _ended_by_the_toolkit(make_site, end)
    details = status["details"]
    assert (status["status"], details["status"], details["code"]) == ("FAILED", "FAILED", code)
    assert details["fatal_error"] == {"code": fatal, "description": details["description"]}
    assert not {"nice_status", "is_ok"} & set(details) and no_nulls(status) == []
    assert details["completion_time"] >= details["request_time"]
    found = subtasks(details)
    assert found["subtasks_pending"] == 0 and found[bucket] > 0
    assert found["subtasks_succeeded"] + found[bucket] + found["subtasks_failed"] == found["subtasks_total"] == 20


def test_a_failed_task_document(site):
    make_tree(site.roots["src"], {"here.txt": b"here"})
    status = site.transfer().run(body("src", "dst", ("/here.txt", "/here.txt"), ("/missing.txt", "/missing.txt")),
                                 wait=True)
    details = status["details"]
    assert (status["status"], details["status"]) == ("FAILED", "FAILED")
    assert details["fatal_error"] == {"code": "SourceNotFound", "description": details["description"]}
    assert not {"nice_status", "is_ok"} & set(details)
    assert details["completion_time"] and no_nulls(status) == []
    assert subtasks(details) == {"subtasks_total": 2, "subtasks_succeeded": 0, "subtasks_failed": 1,
                                 "subtasks_canceled": 1, "subtasks_expired": 0, "subtasks_pending": 0}


def test_a_deadline_counts_what_was_left_as_expired(make_site):
    site = make_site(APTK_TRANSFER_MAX_BYTES_PER_SECOND=200_000, APTK_TRANSFER_THREADS=1)
    make_tree(site.roots["src"], {f"slow/{i}.bin": 100_000 for i in range(10)})
    deadline = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=1.5)).isoformat()
    details = site.transfer().run(body("src", "dst", ("/slow", "/slow", True), deadline=deadline), wait=True)["details"]
    assert details["status"] == "FAILED" and details["fatal_error"]["code"] == "DEADLINE_EXCEEDED"
    found = subtasks(details)
    assert found["subtasks_expired"] > 0 and found["subtasks_succeeded"] == details["files_transferred"]


# --- failing ----------------------------------------------------------------------------------------------------


def test_a_missing_source_fails_naming_the_item_unless_source_errors_are_skipped(site):
    make_tree(site.roots["src"], {"here.txt": b"here"})
    client = site.transfer()
    status = client.run(body("src", "dst", ("/here.txt", "/here.txt"), ("/missing.txt", "/missing.txt")), wait=True)
    assert status["status"] == "FAILED"
    details = status["details"]
    assert details["code"] == "SourceNotFound"
    assert details["errors"] == [{"source_path": "/missing.txt", "destination_path": "/missing.txt",
                                  "code": "SourceNotFound", "error": "No such file or directory on the source"}]
    assert "/missing.txt" in details["description"]
    assert details["bytes_transferred"] == 0 and not (site.roots["dst"] / "here.txt").exists()
    status = client.run(body("src", "dst", ("/here.txt", "/here.txt"), ("/missing.txt", "/missing.txt"),
                             skip_source_errors=True), wait=True)
    assert status["status"] == "SUCCEEDED", status
    assert counts(status["details"], "files", "files_transferred", "files_skipped") == {
        "files": 2, "files_transferred": 1, "files_skipped": 1}
    assert status["details"]["skipped_source_errors"][0]["source_path"] == "/missing.txt"


def test_a_folder_without_recursive_is_refused(site):
    make_tree(site.roots["src"], {"dir/a": b"a"})
    status = site.transfer().run(body("src", "dst", ("/dir", "/dir")), wait=True)
    assert (status["status"], status["details"]["code"]) == ("FAILED", "SourceIsDirectory")
    assert "recursive" in status["details"]["errors"][0]["error"]


def _can_mount() -> bool:
    return os.geteuid() == 0 and shutil.which("mount") is not None


@pytest.fixture
def small_mount(tmp_path):
    """A 1 MiB tmpfs (root only): a destination that really fills up, or that is really read-only."""
    mounts = []

    def mount(path: Path, *options: str) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(("size=1m", *options)), "tmpfs", str(path)],
                              capture_output=True)
        if done.returncode:
            pytest.skip(f"cannot mount a tmpfs: {done.stderr.decode().strip()}")
        mounts.append(path)
        return path

    yield mount
    for path in reversed(mounts):
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def test_a_full_destination_fails_naming_the_item_and_leaves_no_partial_file(make_site, tmp_path, small_mount):
    if not _can_mount():
        pytest.skip("needs root to mount a small tmpfs")
    full = small_mount(tmp_path / "full")
    site = make_site([local_collection("src", tmp_path / "s"), local_collection("dst", full)])
    make_tree(site.roots["src"], {"fits.bin": 100_000, "huge.bin": 3_000_000})
    status = site.transfer().run(body("src", "dst", ("/huge.bin", "/huge.bin")), wait=True)
    assert status["status"] == "FAILED", status
    details = status["details"]
    assert details["code"] == "DestinationFull"
    assert details["errors"][0]["destination_path"] == "/huge.bin"
    assert "No space left on device" in details["errors"][0]["error"]
    assert list(full.iterdir()) == []


def test_a_read_only_destination_fails_naming_the_item(make_site, tmp_path, small_mount):
    if _can_mount():
        ro = small_mount(tmp_path / "ro", "ro")
        expected = "DestinationReadOnly"
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        expected = "DestinationPermissionDenied"
    site = make_site([local_collection("src", tmp_path / "s"), local_collection("dst", ro)])
    make_tree(site.roots["src"], {"a.txt": b"a"})
    status = site.transfer().run(body("src", "dst", ("/a.txt", "/a.txt")), wait=True)
    assert status["status"] == "FAILED", status
    assert status["details"]["code"] == expected
    assert status["details"]["errors"][0]["destination_path"] == "/a.txt"


def test_a_missing_secret_fails_with_the_variable_named(make_site, tmp_path):
    site = make_site([local_collection("src", tmp_path / "s"),
                      {"name": "remote", "url": "sftp://127.0.0.1:1/x",
                       "storage_options": {"password": "${APTK_TEST_NO_SUCH_SECRET}"}}])
    make_tree(site.roots["src"], {"a.txt": b"a"})
    status = site.transfer().run(body("src", "remote", ("/a.txt", "/a.txt")), wait=True)
    assert (status["status"], status["details"]["code"]) == ("FAILED", "EndpointError")
    assert "APTK_TEST_NO_SUCH_SECRET" in status["details"]["description"]


# --- stopping -----------------------------------------------------------------------------------------------------


def _transfer_threads():
    return [t for t in threading.enumerate() if t.name.startswith("aptk-transfer-")]


def test_cancel_stops_the_copy_within_a_second_even_inside_a_large_file(make_site):
    site = make_site(APTK_TRANSFER_CHUNK_BYTES=4 << 20)
    big = site.roots["src"] / "large.bin"
    with open(big, "wb") as f:
        f.truncate(1 << 30)  # sparse 1 GiB: reading it is fast, but not that fast
    client = site.transfer()
    action = client.run(body("src", "dst", ("/large.bin", "/large.bin")))["action_id"]
    wait_for(lambda: client.status(action)["details"].get("bytes_transferred", 0) > 0, timeout=20)
    assert _transfer_threads(), "the copy should be under way"
    cancelled_at = time.monotonic()
    status = client.cancel(action)
    assert status["status"] == "FAILED" and status["details"]["code"] == "ActionCancelled"
    wait_for(lambda: not _transfer_threads(), timeout=1.5, interval=0.01)
    assert time.monotonic() - cancelled_at < 1.5
    assert list(site.roots["dst"].iterdir()) == []  # no partial file, no destination file
    time.sleep(0.3)
    assert client.status(action)["details"]["code"] == "ActionCancelled"


def test_the_deadline_stops_the_transfer(make_site):
    site = make_site(APTK_TRANSFER_MAX_BYTES_PER_SECOND=200_000, APTK_TRANSFER_THREADS=1)
    make_tree(site.roots["src"], {f"slow/{i}.bin": 100_000 for i in range(20)})  # 10 s at this rate
    # Long enough for progress (published every second) to be stored before the deadline on a busy machine.
    deadline = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=3)).isoformat()
    started = time.monotonic()
    status = site.transfer().run(body("src", "dst", ("/slow", "/slow", True), deadline=deadline), wait=True)
    assert status["status"] == "FAILED"
    assert status["details"]["code"] == "DeadlineExceeded"
    assert 0 < status["details"]["files_transferred"] < 20
    assert time.monotonic() - started < 6
    assert not [p for p in site.roots["dst"].rglob("*.part")]


# --- the default collections --------------------------------------------------------------------------------------


def test_default_collections_inbox_and_project(tmp_path, monkeypatch):
    from providers.acl import provider as acl
    from providers.transfer import provider as transfer
    from toolkit.server import create_app
    from toolkit.testing import TestClient, TokenAuthority

    monkeypatch.delenv("APTK_COLLECTIONS_FILE", raising=False)
    authority = TokenAuthority()
    app = create_app({"APTK_DATA_DIR": str(tmp_path), "APTK_COLLECTION_OWNERS": OWNER},
                     providers=[("/transfer", transfer), ("/acl", acl)], verifier=authority.verifier)
    try:
        scopes = [transfer.globus_auth_scope, acl.globus_auth_scope]
        user = TestClient(app, "/transfer", authority.token(USER, scopes=scopes), authority)
        owner = TestClient(app, "/transfer", authority.token(OWNER, scopes=scopes), authority)
        make_tree(tmp_path / "collections" / "inbox", {"hello.txt": b"hello"})
        ok = user.run(body(INBOX_ID, "inbox", ("/hello.txt", "/again.txt")), wait=True)
        assert ok["status"] == "SUCCEEDED"
        denied = user.run(body("inbox", PROJECT_ID, ("/hello.txt", "/hello.txt")), wait=True)
        assert (denied["status"], denied["details"]["code"]) == ("FAILED", "PermissionDenied")
        assert owner.run(body("inbox", "project", ("/hello.txt", "/hello.txt")), wait=True)["status"] == "SUCCEEDED"
        assert (tmp_path / "collections" / "project" / "hello.txt").read_bytes() == b"hello"
    finally:
        get_toolkit(app).runtime.stop()


@pytest.mark.parametrize("anonymous", [True, False], ids=["O_TMPFILE", "named-temporary"])
def test_files_appear_whole_replace_older_ones_and_a_folder_in_the_way_fails(make_site, anonymous):
    # Without O_TMPFILE (anonymous_files=False, as on a filesystem that lacks it): a hidden temporary name, renamed
    # into place.
    site = make_site(**local_storage(anonymous_files=anonymous))
    src, dst = site.roots["src"], site.roots["dst"]
    make_tree(src, {"f/new.txt": b"new", "f/old.txt": b"fresh content", "f/dir.txt": b"x"})
    make_tree(dst, {"f/old.txt": b"stale", "f/dir.txt/inside": b"a folder where a file should go"})
    (dst / "f" / "link.txt").symlink_to(dst / "f" / "old.txt")
    make_tree(src, {"f/link.txt": b"replaces the link, not its target"})
    status = site.transfer().run(body("src", "dst", ("/f", "/f", True)), wait=True)
    assert status["status"] == "FAILED"
    assert status["details"]["code"] == "DestinationTypeConflict"
    assert status["details"]["errors"][0]["destination_path"] == "/f/dir.txt"
    (src / "f" / "dir.txt").unlink()
    status = site.transfer().run(body("src", "dst", ("/f", "/f", True)), wait=True)
    assert status["status"] == "SUCCEEDED", status
    assert (dst / "f" / "old.txt").read_bytes() == b"fresh content"
    assert not (dst / "f" / "link.txt").is_symlink()
    assert (dst / "f" / "link.txt").read_bytes() == b"replaces the link, not its target"
    assert sorted(p.name for p in (dst / "f").iterdir()) == ["dir.txt", "link.txt", "new.txt", "old.txt"]


# --- deep paths ---------------------------------------------------------------------------------------------------
# bench/transfer_deep.py measures them; the bounds here are only generous regression guards.

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


@pytest.fixture
def deep(tmp_path):
    """Removes the test's folders itself once done: pytest's clean-up (``shutil.rmtree``) recurses once per
    level and fails on trees a thousand levels deep."""
    yield
    subprocess.run(["rm", "-rf", "--", str(tmp_path)], check=False)


def descend(top: Path, names: list[str]) -> int:
    """An open descriptor of ``top/names[0]/names[1]/...``, walked one folder at a time (no PATH_MAX)."""
    fd = os.open(top, _DIR_FLAGS)
    for name in names:
        child = os.open(name, _DIR_FLAGS, dir_fd=fd)
        os.close(fd)
        fd = child
    return fd


def read_deep(top: Path, rel: str) -> bytes:
    *folders, name = rel.strip("/").split("/")
    fd = descend(top, folders)
    try:
        with open(os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=fd), "rb") as f:
            return f.read()
    finally:
        os.close(fd)


def write_deep(top: Path, rel: str, content: bytes) -> None:
    """Write ``top/rel``, making its folders one at a time."""
    *folders, name = rel.strip("/").split("/")
    fd = os.open(top, _DIR_FLAGS)
    for folder in folders:
        try:
            os.mkdir(folder, dir_fd=fd)
        except FileExistsError:
            pass
        child = os.open(folder, _DIR_FLAGS, dir_fd=fd)
        os.close(fd)
        fd = child
    try:
        with open(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644, dir_fd=fd), "wb") as f:
            f.write(content)
    finally:
        os.close(fd)


def test_a_file_reaches_a_2000_level_destination_beyond_path_max(deep, make_site, tmp_path):
    site = make_site([local_collection("src", tmp_path / "src"),
                      local_collection("dst", tmp_path / ("a-root-with-a-long-name-" + "r" * 100) / "dst")])
    make_tree(site.roots["src"], {"f.txt": b"deep"})
    destination = "/" + "a/" * 2000 + "f.txt"  # with the root in front, longer than PATH_MAX
    assert len(str(site.roots["dst"])) + len(destination) > os.pathconf("/", "PC_PATH_MAX")
    started = time.monotonic()
    status = site.transfer().run(body("src", "dst", ("/f.txt", destination)), wait=True, timeout=60)
    elapsed = time.monotonic() - started
    assert status["status"] == "SUCCEEDED", status
    assert read_deep(site.roots["dst"], destination) == b"deep"
    assert elapsed < 20, f"{elapsed:.1f} s for 2,000 folders"  # about 0.1 s; minutes when each level was resolved
    # Again: every folder exists now, and a sync rerun finds the file there.
    again = site.transfer().run(body("src", "dst", ("/f.txt", destination), sync_level="checksum"), wait=True)
    assert (again["status"], again["details"]["files_skipped"]) == ("SUCCEEDED", 1), again


def test_a_2000_level_source_tree_is_copied_synced_and_cleaned(deep, site):
    src, dst = site.roots["src"], site.roots["dst"]
    chain = "/".join(["d"] * 2000)
    files = {f"tree/{'/'.join(['d'] * level)}/f{level}.txt": f"level {level}".encode() for level in (1, 999, 2000)}
    for rel, content in files.items():
        write_deep(src, rel, content)
    client = site.transfer()
    status = client.run(body("src", "dst", ("/tree", "/copy", True)), wait=True, timeout=60)
    assert status["status"] == "SUCCEEDED", status
    assert counts(status["details"], "files", "files_transferred", "directories") == {
        "files": 3, "files_transferred": 3, "directories": 2001}
    for rel, content in files.items():
        assert read_deep(dst, "copy" + rel[len("tree"):]) == content
    # An extra file at the bottom of the destination is found and deleted by a rerun that deletes extras.
    write_deep(dst, f"copy/{chain}/extra.txt", b"not in the source")
    rerun = client.run(body("src", "dst", ("/tree", "/copy", True), sync_level="checksum",
                            delete_destination_extra=True), wait=True, timeout=60)
    assert rerun["status"] == "SUCCEEDED", rerun
    assert counts(rerun["details"], "files_skipped", "files_transferred") == {"files_skipped": 3,
                                                                              "files_transferred": 0}
    fd = descend(dst, ["copy", *chain.split("/")])
    try:
        assert os.listdir(fd) == ["f2000.txt"]
    finally:
        os.close(fd)


def test_a_tree_deeper_than_the_folders_a_walk_keeps_open_is_copied_whole(site):
    # A comb: every level has a file, a side folder with a file, and the next level. The walk holds a few dozen
    # folders open; going back up past them it finds each again (through '..', checked to be the same folder).
    src, dst = site.roots["src"], site.roots["dst"]
    files = {}
    for level in range(150):
        base = "comb/" + "n/" * level
        files[base + "file.txt"] = f"{level}".encode()
        files[base + "side/s.txt"] = f"side {level}".encode()
    make_tree(src, files)
    (src / "comb" / "n" / "empty").mkdir()
    status = site.transfer().run(body("src", "dst", ("/comb", "/comb", True)), wait=True, timeout=60)
    assert status["status"] == "SUCCEEDED", status
    assert tree(dst) == tree(src)
    assert (dst / "comb" / "n" / "empty").is_dir()
    assert status["details"]["directories"] == 1 + 149 + 150 + 1


def test_links_deep_in_a_destination_are_followed_only_inside(deep, site, tmp_path):
    src, dst = site.roots["src"], site.roots["dst"]
    outside = tmp_path / "outside"
    outside.mkdir()
    make_tree(src, {"f.txt": b"payload"})
    middle = "/".join(["m"] * 1000)
    write_deep(dst, f"{middle}/keep.txt", b"")
    fd = descend(dst, middle.split("/"))
    try:
        os.symlink(str(outside), "out", dir_fd=fd)
        os.symlink(str(dst / "inside-target"), "in", dir_fd=fd)
    finally:
        os.close(fd)
    (dst / "inside-target").mkdir()
    client = site.transfer()
    with pytest.raises(ClientError) as refused:
        client.run(body("src", "dst", ("/f.txt", f"/{middle}/out/x/f.txt")))
    assert refused.value.status == 400
    assert refused.value.description.startswith("transfer_items[0].destination_path: ")
    status = client.run(body("src", "dst", ("/f.txt", f"/{middle}/in/x/y/f.txt")), wait=True, timeout=60)
    assert status["status"] == "SUCCEEDED", status
    assert (dst / "inside-target" / "x" / "y" / "f.txt").read_bytes() == b"payload"
    assert list(outside.iterdir()) == []


def test_a_link_put_deep_in_the_way_before_folders_are_made_is_refused(deep, make_site, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    middle = "/".join(["m"] * 500)
    made = []

    def put_link():  # planned where nothing was: a link appears there before folders are made
        fd = descend(made[0].roots["dst"], middle.split("/"))
        try:
            os.symlink(str(outside), "new", dir_fd=fd)
        finally:
            os.close(fd)

    site = make_site(**before_folders(put_link))
    made.append(site)
    dst = site.roots["dst"]
    make_tree(site.roots["src"], {"f.txt": b"payload"})
    write_deep(dst, f"{middle}/keep.txt", b"")
    status = site.transfer().run(body("src", "dst", ("/f.txt", f"/{middle}/new/x/f.txt")), wait=True, timeout=60)
    assert (status["status"], status["details"]["code"]) == ("FAILED", "PathOutsideCollection"), status
    assert list(outside.iterdir()) == []


def test_checking_deep_paths_at_run_leaves_no_descriptor_open(deep, site):
    make_tree(site.roots["src"], {"f.txt": b"x"})
    (site.roots["dst"] / "a").mkdir()
    client = site.transfer()
    destination = "/" + "a/" * 300 + "f.txt"
    with pytest.raises(ClientError):  # refused at /run, after the paths were looked at
        client.run(body("src", "dst", ("/f.txt", destination), deadline="2001-01-01T00:00:00Z"))
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(30):
        with pytest.raises(ClientError):
            client.run(body("src", "dst", ("/f.txt", destination), ("/f.txt", "/../escape")))
    assert len(os.listdir("/proc/self/fd")) < before + 10


def test_making_and_listing_folders_stop_at_the_check_between_levels(deep, tmp_path):
    # What a cancel does inside one long makedirs or walk: the engine passes its check (ctx.check and the
    # deadline), called before each level or entry; a check that raises stops the work there, holding nothing open.
    from providers.collections import Collection

    class Stop(Exception):
        pass

    def stop_after(n):
        calls = []

        def check():
            calls.append(1)
            if len(calls) > n:
                raise Stop()
        return check

    root = tmp_path / "root"
    root.mkdir()
    storage = LocalStorage(Collection("c" * 36, "c", "c", f"file://{root}"), str(root))
    open_before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(Stop):
        storage.makedirs("/".join(["a"] * 1000), check=stop_after(10))
    assert len(list(root.rglob("*"))) == 10  # levels made before the check said stop
    storage.makedirs("/".join(["a"] * 1000))
    make_tree(root, {f"wide/{i:03}/f.txt": b"x" for i in range(300)})
    seen = []
    with pytest.raises(Stop):
        for entry in storage.walk("", check=stop_after(50)):
            seen.append(entry.rel)
    assert 40 <= len(seen) <= 50
    storage.close()
    assert len(os.listdir("/proc/self/fd")) == open_before


# --- a Globus flow, unchanged but for its URLs ----------------------------------------------------------------------


def _readme_json_blocks(heading: str) -> list:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    section = readme.split(heading, 1)[1].split("\n### ", 1)[0]
    return [json.loads(block.split("```", 1)[0]) for block in section.split("```json\n")[1:]]


def test_the_readme_flow_runs_with_globus_uuids_by_changing_only_urls(make_site, tmp_path):
    flow, collections = _readme_json_blocks("### Running an existing Globus flow by changing only URLs")
    for entry in collections:
        entry["url"] = entry["url"].replace("file:///srv/", f"file://{tmp_path}/")
        Path(entry["url"][len("file://"):]).mkdir()
    site = make_site(collections)
    owner = collections[1]["owners"][0]
    written = make_tree(site.roots["instrument"], {"run1/a.dat": 5000, "run1/sub/b.dat": 300})
    states = flow["States"]
    assert states["Copy"]["ActionUrl"].endswith("/transfer") and states["Share"]["ActionUrl"].endswith(
        "/manage_permission")
    copy = site.transfer(owner).run(states["Copy"]["Parameters"], wait=True)
    assert (copy["status"], copy["details"]["status"]) == ("SUCCEEDED", "SUCCEEDED"), copy
    assert copy["details"]["checksum_algorithm"] == "MD5" and copy["details"]["files_transferred"] == 2
    assert copy["details"]["destination_endpoint_id"] == states["Copy"]["Parameters"]["destination_endpoint_id"]
    assert tree(site.roots["project"] / "shared") == written
    share = site.acl(owner).run(states["Share"]["Parameters"], wait=True)
    assert share["status"] == "SUCCEEDED" and share["details"]["access_id"], share
    reader = site.transfer(USER).run(body(collections[1]["id"], "instrument", ("/shared/run1", "/back", True)),
                                     wait=True)
    assert reader["status"] == "SUCCEEDED", reader


def test_actions_started_in_the_same_millisecond_name_their_partial_files_apart():
    from providers.transfer.folders import partial_token
    from toolkit.lifecycle import new_action_id

    ids = [new_action_id() for _ in range(50)]
    assert len({i[:12] for i in ids}) < 50  # the time leads: some share it
    assert len({partial_token(i) for i in ids}) == 50
    older = uuid.uuid4().hex  # an id of an earlier version: its files were named by its first 12 digits
    assert partial_token(older) == older[:12]
