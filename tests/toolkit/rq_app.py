"""Providers for the queue executor's tests, the end-to-end scale-out test and ``bench/scale_queue.py``.

``aptk serve --app tests.toolkit.rq_app:create_app`` and ``aptk worker --app tests.toolkit.rq_app:create_app``
serve and run them; settings come from the environment. Each callback appends a line to
``$APTK_DATA_DIR/trace`` (``start``/``end`` with the action, attempt, pid and time) when ``APTK_TEST_TRACE`` is set,
so that tests can tell where and when callbacks ran.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Any

from flask import Flask

from toolkit import ActionProvider, RunContext


def _trace(ctx: RunContext, event: str) -> None:
    if not os.environ.get("APTK_TEST_TRACE"):
        return
    line = f"{event} {ctx.action_id} {ctx.attempt} {os.getpid()} {time.time():.6f}\n"
    with open(Path(ctx.config["APTK_DATA_DIR"]) / "trace", "a") as f:
        f.write(line)


def _provider(name: str, recovery: str) -> ActionProvider:
    provider = ActionProvider(
        name=name, title=name.title(), input_schema={"type": "object", "properties": {
            "sleep": {"type": "number", "minimum": 0}, "n": {"type": "integer"}}},
        runnable_by=["all_authenticated_users"], synchronous=False, recovery=recovery,  # type: ignore[arg-type]
        max_attempts=5,
    )

    @provider.run
    def run(body: dict[str, Any], ctx: RunContext) -> dict[str, Any]:
        _trace(ctx, "start")
        try:
            if body.get("sleep"):
                ctx.progress(display_status="sleeping")
                ctx.sleep(float(body["sleep"]))
            token = ctx.identity.token if ctx.identity is not None else None
            return {"pid": os.getpid(), "attempt": ctx.attempt, "n": body.get("n"),
                    "token_sha256": hashlib.sha256(token.encode()).hexdigest() if token else None}
        finally:
            _trace(ctx, "end")

    return provider


slow = _provider("slow", "rerun")
"""Sleeps ``sleep`` seconds (cancellable); taken up again after a crash."""
fragile = _provider("fragile", "fail")
"""The same, failed (``WorkerLost``) after a crash."""


def create_app() -> Flask:
    from providers.hello import provider as hello
    from toolkit.server import create_app as toolkit_app

    return toolkit_app(providers=[("/hello", hello), ("/slow", slow), ("/fragile", fragile)])
