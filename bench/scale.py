#!/usr/bin/env python
"""Scale-out in one command: callbacks on RQ workers against the in-process executor (``scale_queue.py``), then
status latency with a large store against a small one (``state.py``).

    .venv/bin/python bench/scale.py                    # both at their defaults (~15 min)
    .venv/bin/python bench/scale.py --quick            # 5 s runs, 1 and 2 workers, 1e5 actions, SQLite only

Each part prints its own table with its ratios, measured in the same pass as its baseline; see bench/README.md.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a look rather than a report")
    parser.add_argument("--postgres", action="store_true", help="the queue part on PostgreSQL instead of SQLite")
    args = parser.parse_args()
    queue = [sys.executable, str(HERE / "scale_queue.py")]
    state = [sys.executable, str(HERE / "state.py")]
    if args.quick:
        queue += ["--seconds", "5", "--rounds", "1", "--workers", "1,2"]
        state += ["--large", "100000", "--no-postgres", "--requests", "500", "--rounds", "2"]
    if args.postgres:
        queue.append("--postgres")
    for command in (queue, state):
        print(f"$ {' '.join(Path(c).name if c.startswith('/') else c for c in command)}", flush=True)
        code = subprocess.call(command)
        if code:
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
