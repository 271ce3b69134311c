#!/usr/bin/env python
"""The transfer provider against the tools it replaces, measured in the same pass on the same disk.

    .venv/bin/python bench/transfer.py                    # the three ratios, 3 alternating runs each
    .venv/bin/python bench/transfer.py --large-mib 256 --small-files 2000 --repeat 5 --dir /var/tmp

Three ratios (provider time / baseline time), each from alternating runs (baseline, provider, baseline, ...):

1. ``--small-files`` (default 10,000) files of ``--small-kib`` (default 4) KiB in 100 folders, a transfer with
   ``verify_checksum`` against ``cp -r``;
2. that tree again, the destination already identical: a transfer with ``sync_level: checksum`` (every file hashed
   on both sides, nothing copied) against ``rsync -r -c`` (install rsync to run it);
3. one file of ``--large-mib`` (default 1024) MiB, a transfer with ``verify_checksum`` against ``cp`` then
   ``sha256sum`` of the copy.

Printed: the best and the median time of each, and their ratios, with the load average before and after (other
work on the machine skews both sides, not the same way); then the same for the CPU time each side used (user +
system, from ``getrusage`` of this process and its reaped children: for the provider, the server's threads, its
worker processes and the bench's own polls), which a busy machine changes much less than wall time. The provider
runs in this process behind the real HTTP API (``toolkit.testing``: token checks, validation, the SQLite store,
progress writes), local collection to local collection, with its default settings. A transfer's time runs from
``POST /run`` until ``/status`` says SUCCEEDED (polled every 20 ms). The source is read once before timing; ``sync``
runs (untimed) before each measurement; every copy goes to a new folder.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # this checkout's toolkit and providers, whatever is installed
try:
    import flask  # noqa: F401
    import sqlalchemy  # noqa: F401
except ImportError:  # run with another python: use the project's venv if there is one
    venv_python = REPO / ".venv" / "bin" / "python"
    if venv_python.exists() and Path(sys.prefix).resolve() != (REPO / ".venv").resolve():
        os.execv(str(venv_python), [str(venv_python), *sys.argv])
    raise

from providers.acl import provider as acl  # noqa: E402
from providers.transfer import provider as transfer  # noqa: E402
from toolkit.server import create_app  # noqa: E402
from toolkit.testing import TestClient, TokenAuthority  # noqa: E402


def make_data(root: Path, large_files: int, large_mib: int, small_files: int, small_kib: int) -> None:
    block = os.urandom(8 << 20)
    per_file = (large_mib << 20) // large_files
    (root / "large").mkdir(parents=True)
    for i in range(large_files):
        with open(root / "large" / f"part{i:02}.bin", "wb") as f:
            left, n = per_file, 0
            while left:
                chunk = min(left, len(block))
                f.write(n.to_bytes(8, "little") + block[8:chunk] if chunk > 8 else block[:chunk])
                left -= chunk
                n += 1
    small = root / "small"
    for i in range(small_files):
        folder = small / f"d{i % 100:02}"
        if i < 100:
            folder.mkdir(parents=True)
        (folder / f"f{i:05}.dat").write_bytes(os.urandom(small_kib * 1024))


def read_all(root: Path) -> None:
    for path in root.rglob("*"):
        if path.is_file():
            with open(path, "rb") as f:
                while f.read(8 << 20):
                    pass


def settle() -> None:
    subprocess.run(["sync"], check=False)


def cpu_seconds() -> float:
    """CPU time (user + system) of this process and of its children reaped so far: a baseline command's, or a
    transfer's (the server's threads, its worker processes, and the bench's own polls)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


CPU: list[float] = []  # the CPU time of the last measurement (appended by timed() and Provider.run)


def timed(command: list[str]) -> float:
    settle()
    cpu = cpu_seconds()
    started = time.perf_counter()
    subprocess.run(command, check=True)
    elapsed = time.perf_counter() - started
    CPU.append(cpu_seconds() - cpu)
    return elapsed


class Provider:
    def __init__(self, work: Path) -> None:
        collections = work / "collections.json"
        collections.write_text(json.dumps([{"name": "src", "url": str(work / "src")},
                                           {"name": "dst", "url": str(work / "dst")}]))
        authority = TokenAuthority()
        self.app = create_app({"APTK_DATA_DIR": str(work / "aptk"), "APTK_COLLECTIONS_FILE": str(collections)},
                              providers=[("/transfer", transfer), ("/acl", acl)], verifier=authority.verifier)
        self.client = TestClient(self.app, "/transfer", authority.token(scopes=[transfer.globus_auth_scope]),
                                 authority)

    def run(self, source: str, destination: str, **options) -> tuple[float, dict]:
        settle()
        cpu = cpu_seconds()
        started = time.perf_counter()
        status = self.client.run({"source_endpoint_id": "src", "destination_endpoint_id": "dst",
                                  "transfer_items": [{"source_path": source, "destination_path": destination,
                                                      "recursive": True}], **options})
        if status["status"] not in ("SUCCEEDED", "FAILED"):
            status = self.client.wait(status["action_id"], timeout=3600, initial_interval=0.02, max_interval=0.02)
        elapsed = time.perf_counter() - started
        CPU.append(cpu_seconds() - cpu)
        if status["status"] != "SUCCEEDED":
            raise SystemExit(f"transfer failed: {json.dumps(status['details'], indent=1)}")
        return elapsed, status["details"]

    def stop(self) -> None:
        self.app.extensions["aptk"].runtime.stop()


def make_large(root: Path, mib: int) -> None:
    block = os.urandom(8 << 20)
    root.mkdir(parents=True)
    with open(root / "one.bin", "wb") as f:
        for n in range((mib << 20) // len(block)):
            f.write(n.to_bytes(8, "little") + block[8:])


def summary(times: list[float]) -> tuple[float, float]:
    return min(times), statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", default=None, help="where to put the data (default: the system temp dir)")
    parser.add_argument("--large-mib", type=int, default=1024)
    parser.add_argument("--small-files", type=int, default=10_000)
    parser.add_argument("--small-kib", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="keep the data directory")
    args = parser.parse_args()

    rsync = shutil.which("rsync")
    work = Path(tempfile.mkdtemp(prefix="aptk-bench-transfer-", dir=args.dir))
    src, dst, base = work / "src", work / "dst", work / "baseline"
    print(f"data in {work}; cpu count {os.cpu_count()}; python {sys.version.split()[0]}; "
          f"load average before {os.getloadavg()[0]:.1f}", flush=True)
    provider = None
    rows: list[tuple[str, list[float], str, list[float]]] = []
    cpu_rows: list[tuple[list[float], list[float]]] = []  # CPU seconds of each row's runs: baseline, provider
    try:
        make_data(src, 1, 1, args.small_files, args.small_kib)
        make_large(src / "big", args.large_mib)
        read_all(src)
        dst.mkdir()
        base.mkdir()
        provider = Provider(work)
        small = f"{args.small_files} x {args.small_kib} KiB"

        cp, ours = [], []
        mark = len(CPU)
        for run in range(args.repeat):
            cp.append(timed(["cp", "-r", str(src / "small"), str(base / f"small-{run}")]))
            elapsed, details = provider.run("/small", f"/small-{run}", verify_checksum=True)
            assert details["files_transferred"] == args.small_files, details
            ours.append(elapsed)
        rows.append((f"{small}: cp -r", cp, "transfer, verified", ours))
        cpu_rows.append((CPU[mark::2], CPU[mark + 1::2]))

        if rsync:
            base_rsync, ours = [], []
            mark = len(CPU)
            for _ in range(args.repeat):
                base_rsync.append(timed([rsync, "-r", "-c", f"{src / 'small'}/", f"{base / 'small-0'}/"]))
                elapsed, details = provider.run("/small", "/small-0", sync_level="checksum")
                assert details["files_transferred"] == 0 and details["files_skipped"] == args.small_files, details
                assert details["bytes_checksummed"] == 2 * args.small_files * args.small_kib * 1024, details
                ours.append(elapsed)
            rows.append((f"{small}, nothing changed: rsync -r -c", base_rsync, "transfer, sync_level checksum",
                         ours))
            cpu_rows.append((CPU[mark::2], CPU[mark + 1::2]))

        cp_sum, ours = [], []
        mark = len(CPU)
        for run in range(args.repeat):
            copy = base / f"big-{run}"
            copy.mkdir()
            settle()
            cpu = cpu_seconds()
            started = time.perf_counter()
            subprocess.run(["cp", str(src / "big" / "one.bin"), str(copy / "one.bin")], check=True)
            subprocess.run(["sha256sum", str(copy / "one.bin")], check=True, stdout=subprocess.DEVNULL)
            cp_sum.append(time.perf_counter() - started)
            CPU.append(cpu_seconds() - cpu)
            elapsed, details = provider.run("/big", f"/big-{run}", verify_checksum=True)
            assert details["bytes_checksummed"] == args.large_mib << 20, details  # the copy, re-read
            ours.append(elapsed)
        rows.append((f"{args.large_mib} MiB file: cp + sha256sum", cp_sum, "transfer, verified", ours))
        cpu_rows.append((CPU[mark::2], CPU[mark + 1::2]))
    finally:
        if provider is not None:
            provider.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    width = max(len(r[0]) for r in rows)
    print(f"\n{'baseline':<{width}}  {'best':>6} {'median':>6}   {'provider':<30} {'best':>6} {'median':>6}   "
          "ratio best, median")
    for baseline, b_times, ours_label, o_times in rows:
        b_best, b_median = summary(b_times)
        o_best, o_median = summary(o_times)
        print(f"{baseline:<{width}}  {b_best:6.2f} {b_median:6.2f}   {ours_label:<30} {o_best:6.2f} {o_median:6.2f}   "
              f"{o_best / b_best:5.2f}x {o_median / b_median:5.2f}x")
    print("\nCPU seconds (user + system; the provider's: the server process, its worker processes, the bench's polls):")
    for (baseline, _b, ours_label, _o), (b_cpu, o_cpu) in zip(rows, cpu_rows, strict=True):
        b_best, b_median = summary(b_cpu)
        o_best, o_median = summary(o_cpu)
        print(f"{baseline:<{width}}  {b_best:6.2f} {b_median:6.2f}   {ours_label:<30} {o_best:6.2f} {o_median:6.2f}   "
              f"{o_best / b_best:5.2f}x {o_median / b_median:5.2f}x")
    print(f"\n{args.repeat} alternating runs each; load average after {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} cpus")
    if not rsync:
        print("rsync is not installed: the checksum-rerun comparison was skipped "
              "(Debian/Ubuntu: apt-get install rsync).")


if __name__ == "__main__":
    main()
