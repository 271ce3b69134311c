#!/usr/bin/env python
"""Deep destination and source paths: how long the transfer provider takes, and how soon a cancel stops it.

    .venv/bin/python bench/transfer_deep.py                  # 2,000 levels
    .venv/bin/python bench/transfer_deep.py --depth 500 --cancel-items 20

Three cases (the first after ``mkdir -p`` of as many levels, the floor set by the filesystem), each through the real HTTP API in this process (``toolkit.testing``: token checks, validation, the
SQLite store), local collection to local collection:

1. **deep destination**: one small file copied to ``/a/a/.../a/f.txt`` (``--depth`` folders; by default 2,000, or
   as many as fit in PATH_MAX under the benchmark's directory, so that code resolving whole paths can run too);
   time from ``POST /run`` to SUCCEEDED;
2. **deep source**: a chain of ``--depth`` folders holding one file at the bottom, copied recursively (the
   listing walks every level); time from ``POST /run`` to SUCCEEDED;
3. **cancel while creating folders**: ``--cancel-items`` items, each to its own deep destination; once folders
   appear in the destination, ``POST /cancel``; then the destination is watched (the number of top folders and
   the depth reached in the newest one) until it has not changed for ``--quiet`` seconds: the figure is the time
   from the cancel's answer to the last change seen.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
try:
    import flask  # noqa: F401
except ImportError:
    venv_python = REPO / ".venv" / "bin" / "python"
    if venv_python.exists() and Path(sys.prefix).resolve() != (REPO / ".venv").resolve():
        os.execv(str(venv_python), [str(venv_python), *sys.argv])
    raise

from providers.transfer import provider as transfer  # noqa: E402
from toolkit.server import create_app  # noqa: E402
from toolkit.testing import TestClient, TokenAuthority  # noqa: E402

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


def depth_of(top: Path) -> int:
    """How many nested ``a`` folders there are under ``top`` (walked by descriptor: no PATH_MAX)."""
    try:
        fd = os.open(top, _DIR)
    except OSError:
        return -1
    depth = 0
    try:
        while True:
            try:
                child = os.open("a", _DIR, dir_fd=fd)
            except OSError:
                return depth
            os.close(fd)
            fd = child
            depth += 1
    finally:
        os.close(fd)


def make_chain(root: Path, depth: int) -> None:
    fd = os.open(root, _DIR)
    for _ in range(depth):
        os.mkdir("a", dir_fd=fd)
        child = os.open("a", _DIR, dir_fd=fd)
        os.close(fd)
        fd = child
    with open(os.open("f.txt", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd), "wb") as f:
        f.write(b"bottom\n")
    os.close(fd)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", default=None)
    parser.add_argument("--depth", type=int, default=None, help="folders (default: 2000, capped by PATH_MAX)")
    parser.add_argument("--cancel-items", type=int, default=50)
    parser.add_argument("--quiet", type=float, default=3.0, help="seconds without change that count as stopped")
    parser.add_argument("--timeout", type=float, default=600.0, help="give up on a case after this long")
    parser.add_argument("--skip", action="append", default=[], choices=["destination", "source", "cancel"])
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="aptk-deep-", dir=args.dir))
    src, dst = work / "src", work / "dst"
    src.mkdir()
    dst.mkdir()
    limit = os.pathconf(str(work), "PC_PATH_MAX")
    depth = args.depth or min(2000, (limit - len(str(dst)) - 32) // 2)
    print(f"data in {work}; depth {depth} ({2 * depth} characters; PATH_MAX {limit}); python "
          f"{sys.version.split()[0]}; commit {os.popen(f'git -C {REPO} rev-parse --short HEAD').read().strip()}",
          flush=True)
    (src / "f.txt").write_bytes(b"hello\n")
    collections = work / "collections.json"
    collections.write_text(json.dumps([{"name": "src", "url": str(src)}, {"name": "dst", "url": str(dst)}]))
    authority = TokenAuthority()
    app = create_app({"APTK_DATA_DIR": str(work / "aptk"), "APTK_COLLECTIONS_FILE": str(collections)},
                     providers=[("/transfer", transfer)], verifier=authority.verifier)
    client = TestClient(app, "/transfer", authority.token(scopes=[transfer.globus_auth_scope]), authority)
    deep = "a/" * depth

    def timed(body: dict) -> tuple[float, str]:
        started = time.perf_counter()
        status = client.run(body)
        if status["status"] not in ("SUCCEEDED", "FAILED"):
            try:
                status = client.wait(status["action_id"], timeout=args.timeout, max_interval=0.05)
            except Exception as exc:  # noqa: BLE001 - a timeout is a result here
                return time.perf_counter() - started, f"not finished ({type(exc).__name__})"
        result = status["status"]
        if result != "SUCCEEDED":
            result += f" {status['details'].get('code')}: {str(status['details'].get('description'))[:120]}"
        return time.perf_counter() - started, result

    try:
        if "destination" not in args.skip:
            os.makedirs(work / "baseline")
            started = time.perf_counter()
            subprocess.run(["mkdir", "-p", deep], cwd=work / "baseline", check=True)
            print(f"0. baseline, mkdir -p of the same {depth} levels: {time.perf_counter() - started:8.2f} s",
                  flush=True)
            elapsed, result = timed({"source_endpoint_id": "src", "destination_endpoint_id": "dst",
                                     "transfer_items": [{"source_path": "/f.txt",
                                                         "destination_path": f"/deep/{deep}f.txt"}]})
            print(f"1. file to a {depth}-level destination: {elapsed:8.2f} s  {result}", flush=True)
        if "source" not in args.skip:
            (src / "chain").mkdir()
            make_chain(src / "chain", depth - 1)
            elapsed, result = timed({"source_endpoint_id": "src", "destination_endpoint_id": "dst",
                                     "transfer_items": [{"source_path": "/chain", "destination_path": "/chain",
                                                         "recursive": True}]})
            print(f"2. recursive copy of a {depth}-level source: {elapsed:8.2f} s  {result}", flush=True)
        if "cancel" not in args.skip:
            target = dst / "cancel"
            target.mkdir()
            items = [{"source_path": "/f.txt", "destination_path": f"/cancel/d{i:04}/{deep[:-4]}f.txt"}
                     for i in range(args.cancel_items)]
            action = client.run({"source_endpoint_id": "src", "destination_endpoint_id": "dst",
                                 "transfer_items": items})["action_id"]
            give_up = time.monotonic() + args.timeout
            while not any(target.iterdir()):
                if time.monotonic() > give_up:
                    raise SystemExit("no folder was ever created")
                time.sleep(0.005)
            time.sleep(0.2)
            client.cancel(action)
            cancelled = time.perf_counter()

            def signature() -> tuple[int, int]:
                tops = sorted(os.listdir(target))
                return len(tops), depth_of(target / tops[-1])

            last, last_change = signature(), cancelled
            while time.perf_counter() - last_change < args.quiet and time.perf_counter() - cancelled < args.timeout:
                time.sleep(0.01)
                now = signature()
                if now != last:
                    last, last_change = now, time.perf_counter()
            print(f"3. cancel while creating {args.cancel_items} x {depth - 1} folders: folders still created "
                  f"{last_change - cancelled:6.2f} s after the cancel (stopped at {last[0]} top folders, the last "
                  f"{last[1]} deep)", flush=True)
    finally:
        app.extensions["aptk"].runtime.stop()
        subprocess.run(["rm", "-rf", "--", str(work)], check=False)  # shutil.rmtree recurses per level


if __name__ == "__main__":
    main()
