"""Many small files disk to disk go to forked worker processes (providers.transfer.processes): the same results,
counters, verification, sync levels and cleanup as the threads give, a threshold that is honoured, a cancel that
stops them promptly (mid-file, leaving no partial file), and a worker that dies leaving its files to the
transfer."""

from __future__ import annotations

import os
import resource
import signal
import threading
import time

import pytest

from providers.transfer import processes
from providers.transfer.storage import LocalStorage

from .conftest import body, local_storage, make_tree, tree, wait_for

PROCESSES = {"APTK_TRANSFER_PROCESSES": 2, "APTK_TRANSFER_PROCESS_FILES": 20}


@pytest.fixture
def forks(monkeypatch):
    """The pids of the worker processes started, in order."""
    pids: list[int] = []
    fork = processes._fork_worker

    def recording(job):
        worker = fork(job)
        pids.append(worker[0])
        return worker

    monkeypatch.setattr(processes, "_fork_worker", recording)
    return pids


def gone(pid: int) -> bool:
    """The worker has ended and been reaped (a zombie would still answer signal 0)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def transfer_threads():
    return [t for t in threading.enumerate() if t.name.startswith("aptk-transfer-")]


def test_many_small_files_are_copied_verified_and_counted_by_worker_processes(make_site, forks):
    site = make_site(**PROCESSES)
    sizes = {f"many/d{i % 7}/f{i:03}.dat": (i * 977) % 70_000 for i in range(300)}
    sizes["many/large.bin"] = 2 << 20  # large: copied by a thread of the parent meanwhile
    written = make_tree(site.roots["src"], sizes)
    old = time.time() - 86400 * 3
    for rel in sizes:
        os.utime(site.roots["src"] / rel, (old, old))
    status = site.transfer().run(body("src", "dst", ("/many", "/copy", True), verify_checksum=True,
                                      preserve_timestamp=True), wait=True)
    assert status["status"] == "SUCCEEDED", status
    assert tree(site.roots["dst"] / "copy") == {k[len("many/"):]: v for k, v in written.items()}
    total = sum(len(v) for v in written.values())
    details = status["details"]
    assert {k: details[k] for k in ("files", "files_transferred", "files_skipped", "bytes_transferred",
                                    "bytes_checksummed", "faults", "subtasks_succeeded", "subtasks_pending")} == {
        "files": 301, "files_transferred": 301, "files_skipped": 0, "bytes_transferred": total,
        "bytes_checksummed": total, "faults": 0, "subtasks_succeeded": 301, "subtasks_pending": 0}
    assert all(abs((site.roots["dst"] / "copy" / rel[len("many/"):]).stat().st_mtime - old) < 1e-3 for rel in sizes)
    assert len(forks) == 2
    assert all(gone(pid) for pid in forks)
    assert not list(site.roots["dst"].rglob("*.part"))


def test_worker_processes_are_used_only_from_the_threshold(make_site, forks):
    site = make_site(APTK_TRANSFER_PROCESSES=2, APTK_TRANSFER_PROCESS_FILES=130)
    make_tree(site.roots["src"], {f"few/{i:03}.dat": 100 for i in range(129)})
    make_tree(site.roots["src"], {f"few/large{i}.bin": 1 << 20 for i in range(2)})  # large ones do not count
    make_tree(site.roots["src"], {f"enough/{i:03}.dat": 100 for i in range(130)})  # 3 batches, 2 workers
    client = site.transfer()
    assert client.run(body("src", "dst", ("/few", "/few", True)), wait=True)["status"] == "SUCCEEDED"
    assert forks == []
    assert client.run(body("src", "dst", ("/enough", "/enough", True)), wait=True)["status"] == "SUCCEEDED"
    assert len(forks) == 2
    assert tree(site.roots["dst"] / "enough") == tree(site.roots["src"] / "enough")

    none = make_site(APTK_TRANSFER_PROCESSES=0, APTK_TRANSFER_PROCESS_FILES=1)
    make_tree(none.roots["src"], {f"many/{i:03}.dat": 100 for i in range(200)})
    status = none.transfer().run(body("src", "dst", ("/many", "/many", True)), wait=True)
    assert status["status"] == "SUCCEEDED" and status["details"]["files_transferred"] == 200
    assert len(forks) == 2


@pytest.mark.parametrize("setting,value", [("APTK_TRANSFER_PROCESSES", "-1"), ("APTK_TRANSFER_PROCESS_FILES", "0"),
                                           ("APTK_TRANSFER_PROCESSES", "two")])
def test_a_wrong_process_setting_fails_the_transfer_naming_it(make_site, setting, value):
    site = make_site(**{setting: value})
    make_tree(site.roots["src"], {"a.txt": b"a"})
    status = site.transfer().run(body("src", "dst", ("/a.txt", "/a.txt")), wait=True)
    assert status["status"] == "FAILED"
    assert status["details"]["code"] == "ConfigurationError" and setting in status["details"]["description"]


def test_sync_levels_in_worker_processes_hash_every_file_on_both_sides(make_site, forks):
    site = make_site(**PROCESSES)
    src, dst = site.roots["src"], site.roots["dst"]
    written = make_tree(src, {f"t/{i:03}.dat": 4096 for i in range(100)})
    client = site.transfer()
    assert client.run(body("src", "dst", ("/t", "/t", True)), wait=True)["status"] == "SUCCEEDED"
    total = sum(len(v) for v in written.values())

    status = client.run(body("src", "dst", ("/t", "/t", True), sync_level="checksum"), wait=True)
    details = status["details"]
    assert (details["files_skipped"], details["files_transferred"], details["bytes_checksummed"]) == (100, 0, 2 * total)

    (dst / "t" / "007.dat").write_bytes(bytes(4096))  # same size, other bytes: only a checksum tells
    (dst / "t" / "008.dat").write_bytes(b"short")
    (dst / "t" / "009.dat").unlink()
    status = client.run(body("src", "dst", ("/t", "/t", True), sync_level="size"), wait=True)
    assert (status["details"]["files_transferred"], status["details"]["files_skipped"]) == (2, 98)
    assert (dst / "t" / "007.dat").read_bytes() == bytes(4096)
    status = client.run(body("src", "dst", ("/t", "/t", True), sync_level="checksum"), wait=True)
    assert (status["details"]["files_transferred"], status["details"]["files_skipped"]) == (1, 99)
    assert tree(dst / "t") == {k[2:]: v for k, v in written.items()}
    status = client.run(body("src", "dst", ("/t", "/t", True), sync_level="exists"), wait=True)
    assert (status["details"]["files_transferred"], status["details"]["files_skipped"]) == (0, 100)
    assert len(forks) == 10 and all(gone(pid) for pid in forks)


class SlowReads(LocalStorage):
    """Reads a whole file in no less than 20 ms: worker processes stay busy long enough to be stopped."""

    def read_whole(self, rel, size, *, only_compared=False):
        time.sleep(0.02)
        return super().read_whole(rel, size, only_compared=only_compared)


def test_a_cancel_stops_the_worker_processes_promptly(make_site, forks):
    site = make_site(**PROCESSES, **local_storage(SlowReads, anonymous_files=False))
    make_tree(site.roots["src"], {f"slow/{i:03}.dat": 4096 for i in range(600)})
    client = site.transfer()
    action = client.run(body("src", "dst", ("/slow", "/slow", True), verify_checksum=True))["action_id"]
    wait_for(lambda: len(forks) == 2 and list((site.roots["dst"] / "slow").glob("*.dat")), timeout=10)
    cancelled_at = time.monotonic()
    status = client.cancel(action)
    assert status["status"] == "FAILED" and status["details"]["code"] == "ActionCancelled"
    wait_for(lambda: all(gone(pid) for pid in forks) and not transfer_threads(), timeout=1.5, interval=0.01)
    assert time.monotonic() - cancelled_at < 1.5
    copied = len(list((site.roots["dst"] / "slow").glob("*.dat")))
    assert copied < 600
    time.sleep(0.3)
    assert len(list((site.roots["dst"] / "slow").glob("*.dat"))) == copied  # nothing more is written
    assert not list(site.roots["dst"].rglob("*.part"))


class HangsWriting(LocalStorage):
    """The worker writing ``stuck.dat`` hangs once it has half written it (under its temporary name)."""

    def open_write(self, rel, token, chunk_size):
        writer = super().open_write(rel, token, chunk_size)
        if rel.endswith("stuck.dat"):
            write = writer.write

            def hang(data):
                write(data[: len(data) // 2])
                time.sleep(60)

            writer.write = hang
        return writer


def test_a_worker_stopped_mid_file_leaves_no_partial_file(make_site, forks):
    site = make_site(**PROCESSES, **local_storage(HangsWriting, anonymous_files=False))
    make_tree(site.roots["src"], {**{f"h/{i:02}.dat": 100 for i in range(40)}, "h/stuck.dat": 5000})
    client = site.transfer()
    action = client.run(body("src", "dst", ("/h", "/h", True)))["action_id"]
    wait_for(lambda: list(site.roots["dst"].rglob("*.part")), timeout=10)
    cancelled_at = time.monotonic()
    assert client.cancel(action)["details"]["code"] == "ActionCancelled"
    wait_for(lambda: all(gone(pid) for pid in forks) and not transfer_threads(), timeout=1.5, interval=0.01)
    assert time.monotonic() - cancelled_at < 1.5
    wait_for(lambda: not list(site.roots["dst"].rglob("*.part")), timeout=3)
    assert not (site.roots["dst"] / "h" / "stuck.dat").exists()


def test_a_worker_process_that_dies_leaves_its_files_to_the_transfer(make_site, forks):
    site = make_site(**PROCESSES, **local_storage(SlowReads))
    written = make_tree(site.roots["src"], {f"d/{i:03}.dat": 3000 + i for i in range(200)})
    client = site.transfer()
    action = client.run(body("src", "dst", ("/d", "/d", True), verify_checksum=True))["action_id"]
    wait_for(lambda: len(forks) == 2 and list((site.roots["dst"] / "d").glob("*.dat")), timeout=10)
    os.kill(forks[0], signal.SIGKILL)
    final = client.wait(action, timeout=60, max_interval=0.1)
    assert final["status"] == "SUCCEEDED", final
    total = sum(len(v) for v in written.values())
    details = final["details"]
    # What the dead worker did is copied again and counted once: what it never answered was never counted.
    assert (details["files_transferred"], details["bytes_transferred"], details["bytes_checksummed"],
            details["faults"]) == (200, total, total, 0)
    assert tree(site.roots["dst"] / "d") == {k[2:]: v for k, v in written.items()}
    assert all(gone(pid) for pid in forks)
    assert not list(site.roots["dst"].rglob("*.part"))


class CorruptsOneFile(LocalStorage):
    """Writes ``bad.dat`` with its first byte flipped the first ``times`` times (counted in the process that
    writes it)."""

    times = 1
    written = 0

    def open_write(self, rel, token, chunk_size):
        writer = super().open_write(rel, token, chunk_size)
        if rel.endswith("bad.dat") and CorruptsOneFile.written < self.times:
            CorruptsOneFile.written += 1
            write = writer.write
            writer.write = lambda data: write(bytes([data[0] ^ 0xFF]) + bytes(data[1:]))
        return writer


@pytest.mark.parametrize("times", [1, 5])
def test_a_checksum_mismatch_in_a_worker_is_recopied_then_fails_the_item(make_site, forks, times, monkeypatch):
    monkeypatch.setattr(CorruptsOneFile, "times", times)
    monkeypatch.setattr(CorruptsOneFile, "written", 0)
    site = make_site(**PROCESSES, **local_storage(CorruptsOneFile))
    written = make_tree(site.roots["src"], {**{f"v/{i:02}.dat": 500 for i in range(30)}, "v/bad.dat": 1000})
    status = site.transfer().run(body("src", "dst", ("/v", "/v", True), verify_checksum=True), wait=True)
    assert forks, "worker processes should have copied these files"
    total = sum(len(v) for v in written.values())
    details = status["details"]
    log = site.transfer().log(status["action_id"])["entries"]
    if times == 1:
        assert status["status"] == "SUCCEEDED", status
        assert (details["faults"], details["bytes_transferred"]) == (1, total + 1000)
        assert tree(site.roots["dst"] / "v") == {k[2:]: v for k, v in written.items()}
        assert any("Checksum mismatch after writing /v/bad.dat (attempt 1)" in e["description"] for e in log)
    else:
        assert status["status"] == "FAILED"
        assert details["code"] == "ChecksumMismatch" and details["faults"] == 3
        assert [e["destination_path"] for e in details["errors"]] == ["/v/bad.dat"]
        assert not (site.roots["dst"] / "v" / "bad.dat").exists()


def test_a_failure_while_booking_a_workers_answers_fails_the_transfer_naming_it(make_site, forks, monkeypatch):
    def broken(self, found, answers):
        raise RuntimeError("booking went wrong")

    monkeypatch.setattr(processes.ProcessLane, "_book", broken)
    site = make_site(**PROCESSES)
    make_tree(site.roots["src"], {f"b/{i:03}.dat": 100 for i in range(100)})
    status = site.transfer().run(body("src", "dst", ("/b", "/b", True)), wait=True, timeout=20)
    assert status["status"] == "FAILED"
    assert status["details"]["code"] == "TransferError"
    assert "booking went wrong" in status["details"]["errors"][0]["error"]
    assert all(gone(pid) for pid in forks) and not transfer_threads()


def test_the_readme_gives_the_defaults_the_settings_have(monkeypatch):
    from pathlib import Path

    from providers.transfer import settings_from
    from providers.transfer.copying import default_processes

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    settings = settings_from({})
    assert settings.process_files == 4000
    assert "| `APTK_TRANSFER_PROCESS_FILES` |" in readme and "| `4000` |" in readme
    assert settings.processes == default_processes() == min(8, len(os.sched_getaffinity(0)))
    assert "| `APTK_TRANSFER_PROCESSES` |" in readme and "at most `8` |" in readme
    assert settings_from({"APTK_TRANSFER_PROCESSES": "0"}).processes == 0


def test_transfers_hold_the_collector_back_and_keep_a_freeze_made_at_boot():
    import gc

    from providers.transfer.engine import GC_THRESHOLD, quiet_gc

    saved = gc.get_threshold()
    gc.unfreeze()
    try:
        with quiet_gc():
            assert gc.get_freeze_count() > 0 and gc.get_threshold()[0] >= GC_THRESHOLD
        assert gc.get_freeze_count() == 0 and gc.get_threshold() == saved
        gc.freeze()  # as an `aptk serve` worker does at boot
        with quiet_gc():
            assert gc.get_threshold()[0] >= GC_THRESHOLD
        assert gc.get_freeze_count() > 0 and gc.get_threshold() == saved  # still frozen
    finally:
        gc.unfreeze()
        gc.set_threshold(*saved)


def test_worker_pipes_past_descriptor_1024_work_as_in_a_busy_server(make_site, forks):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2048:
        pytest.skip("the descriptor limit is below 2048")
    resource.setrlimit(resource.RLIMIT_NOFILE, (2048, hard))
    held = []
    try:
        while not held or held[-1] < 1100:  # as a server's open connections would
            held.append(os.open(os.devnull, os.O_RDONLY))
        site = make_site(**PROCESSES)
        make_tree(site.roots["src"], {f"many/{i:03}.dat": 500 for i in range(100)})
        status = site.transfer().run(body("src", "dst", ("/many", "/copy", True), verify_checksum=True), wait=True)
        assert status["status"] == "SUCCEEDED", status
        assert status["details"]["files_transferred"] == 100 and len(forks) == 2
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_each_worker_takes_batches_from_a_region_of_its_own_then_from_the_fullest():
    ranges = [(i, i + 1) for i in range(10)]
    shares = processes.Shares(ranges, 3)
    assert [shares.take(0), shares.take(1), shares.take(2)] == [(0, 1), (3, 4), (7, 8)]
    # Regions [0, 3), [3, 7), [7, 10): worker 0 finishes its own, then takes from the end of the fullest.
    assert [shares.take(0), shares.take(0), shares.take(0)] == [(1, 2), (2, 3), (6, 7)]
    assert shares.take(0) == (5, 6)
    assert shares.drain() == [(4, 5), (8, 9), (9, 10)]
    assert [shares.take(n) for n in range(3)] == [None, None, None]
    taken = []
    shares = processes.Shares(ranges, 4)
    while (found := shares.take(len(taken) % 4)) is not None:
        taken.append(found)
    assert sorted(taken) == ranges  # every batch once, whoever takes it
    assert processes.Shares(ranges[:1], 1).take(0) == (0, 1)


def test_files_copied_by_workers_are_recorded_for_a_rerun_once_the_copy_has_run_a_second(make_site, monkeypatch,
                                                                                         forks):
    import hashlib

    from providers.transfer.state import DoneRecords

    recorded = []
    add = DoneRecords.add

    def recording(self, records):
        records = list(records)
        recorded.extend(records)
        add(self, records)

    monkeypatch.setattr(DoneRecords, "add", recording)
    site = make_site(**PROCESSES, APTK_TRANSFER_MAX_BYTES_PER_SECOND=100_000)
    written = make_tree(site.roots["src"], {f"paced/{i:03}.dat": 4096 for i in range(60)})
    client = site.transfer()
    action = client.run(body("src", "dst", ("/paced", "/paced", True)))["action_id"]
    wait_for(lambda: recorded, timeout=10)
    assert client.status(action)["status"] == "ACTIVE"
    assert client.wait(action, timeout=30, max_interval=0.2)["status"] == "SUCCEEDED"
    assert recorded and len({r.path for r in recorded}) == len(recorded)
    for record in recorded:
        data = (site.roots["dst"] / record.path).read_bytes()
        assert (record.size, record.checksum) == (len(data), hashlib.sha256(data).hexdigest())
        assert written[record.path] == data
        assert record.mtime == (site.roots["dst"] / record.path).stat().st_mtime
    assert len(forks) == 2
