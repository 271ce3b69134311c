#!/usr/bin/env python
"""The transfer provider against `cp -r` and `rsync -c`, measured in the same run on the same disk.

    .venv/bin/python bench/transfer.py                    # 1 GiB of large files, 10,000 files of 4 KiB
    .venv/bin/python bench/transfer.py --large-mib 256 --small-files 2000 --dir /var/tmp

Three cases, each timed for the provider and for the baseline, alternately:

1. **large files**: ``--large-files`` files (default 8) making ``--large-mib`` (default 1024 MiB) in all,
   ``cp -r`` against a transfer (``verify_checksum`` true: SHA-256 while reading, then the copy re-read and
   checked; and false: a plain kernel copy);
2. **small files**: ``--small-files`` (default 10,000) files of ``--small-kib`` (default 4) KiB in 100 folders,
   the same;
3. **checksum rerun**: the destination already holds identical copies; ``rsync -r -c`` against a transfer with
   ``sync_level: checksum`` (both read every byte on both sides and copy nothing), for both data sets.

The provider runs in this process behind the real HTTP API (``toolkit.testing``: token checks, validation, the
SQLite store, progress writes), local collection to local collection, with its default settings (8 threads,
8 MiB chunks). A transfer's time runs from ``POST /run`` until ``/status`` says SUCCEEDED (polled every 20 ms).
Page cache: the source is read once before timing; ``sync`` runs (untimed) before each measurement so that one
run's dirty pages are not written back during the next; every copy goes to a new folder (no deletion just before
a measurement). Times are the best of ``--repeat`` (default 2). Needs about 4 x ``--large-mib`` per repeat of
free space.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
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


def timed(command: list[str]) -> float:
    settle()
    started = time.perf_counter()
    subprocess.run(command, check=True)
    return time.perf_counter() - started


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
        started = time.perf_counter()
        status = self.client.run({"source_endpoint_id": "src", "destination_endpoint_id": "dst",
                                  "transfer_items": [{"source_path": source, "destination_path": destination,
                                                      "recursive": True}], **options})
        if status["status"] not in ("SUCCEEDED", "FAILED"):
            status = self.client.wait(status["action_id"], timeout=3600, max_interval=0.02)
        elapsed = time.perf_counter() - started
        if status["status"] != "SUCCEEDED":
            raise SystemExit(f"transfer failed: {json.dumps(status['details'], indent=1)}")
        return elapsed, status["details"]

    def stop(self) -> None:
        self.app.extensions["aptk"].runtime.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", default=None, help="where to put the data (default: the system temp dir)")
    parser.add_argument("--large-files", type=int, default=8)
    parser.add_argument("--large-mib", type=int, default=1024)
    parser.add_argument("--small-files", type=int, default=10_000)
    parser.add_argument("--small-kib", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--keep", action="store_true", help="keep the data directory")
    args = parser.parse_args()

    rsync = shutil.which("rsync")
    work = Path(tempfile.mkdtemp(prefix="aptk-bench-transfer-", dir=args.dir))
    src, dst, base = work / "src", work / "dst", work / "baseline"
    print(f"data in {work}; cpu count {os.cpu_count()}; python {sys.version.split()[0]}", flush=True)
    provider = None
    results: list[tuple[str, float, str, float]] = []
    try:
        make_data(src, args.large_files, args.large_mib, args.small_files, args.small_kib)
        read_all(src)
        dst.mkdir()
        base.mkdir()
        provider = Provider(work)

        # Every copy goes to a folder never used before: deleting a tree just before a copy makes the copy pay
        # for the deletion (the filesystem's journal, discards), whichever tool runs after it.
        for name, label in (("large", f"{args.large_files} files, {args.large_mib} MiB"),
                            ("small", f"{args.small_files} files of {args.small_kib} KiB")):
            best_cp = best_verify = best_plain = float("inf")
            for run in range(args.repeat):
                best_cp = min(best_cp, timed(["cp", "-r", str(src / name), str(base / f"{name}-{run}")]))
                elapsed, details = provider.run(f"/{name}", f"/{name}-{run}", verify_checksum=True)
                best_verify = min(best_verify, elapsed)
                best_plain = min(best_plain, provider.run(f"/{name}", f"/{name}-{run}-plain",
                                                          verify_checksum=False)[0])
            assert details["files_transferred"] == (args.large_files if name == "large" else args.small_files)
            results.append((f"{label}: cp -r", best_cp, "transfer, verify_checksum", best_verify))
            results.append((f"{label}: cp -r", best_cp, "transfer, no verification", best_plain))
            # Both sides hold identical copies: a checksum rerun finds nothing to do.
            if rsync:
                best_rsync = best_sync = float("inf")
                for _ in range(args.repeat):
                    best_rsync = min(best_rsync, timed([rsync, "-r", "-c", f"{src / name}/", f"{base / name}-0/"]))
                    elapsed, details = provider.run(f"/{name}", f"/{name}-0", sync_level="checksum")
                    assert details["files_transferred"] == 0 and details["bytes_transferred"] == 0, details
                    best_sync = min(best_sync, elapsed)
                results.append((f"{label}: rsync -r -c (nothing changed)", best_rsync,
                                "transfer, sync_level checksum", best_sync))
            print(".", end="", flush=True)
        print()
    finally:
        if provider is not None:
            provider.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    width = max(len(r[0]) for r in results)
    print(f"\n{'baseline':<{width}}  {'s':>7}   {'provider':<28} {'s':>7}   ratio (provider / baseline)")
    for baseline, b_seconds, ours, o_seconds in results:
        print(f"{baseline:<{width}}  {b_seconds:7.2f}   {ours:<28} {o_seconds:7.2f}   {o_seconds / b_seconds:5.2f}x")
    if not rsync:
        print("\nrsync is not installed: the checksum-rerun comparison was skipped "
              "(Debian/Ubuntu: apt-get install rsync).")


if __name__ == "__main__":
    main()
