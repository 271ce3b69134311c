"""``GET /healthz``: whether this process can serve, for load balancers.

200 ``{"status": "ok", "checks": {"store": "ok", ...}}`` when every check passes, else 503 with
``"status": "unavailable"`` and the failing checks marked ``"failing"``. Unauthenticated, so the body names the
checks and nothing else: why a check failed goes to the log (its exception's type), never to the answer.

The store is always checked (one indexed read), and with ``APTK_EXECUTOR=rq`` the queue (a Redis ``PING``). A
component an app depends on adds its own check with :func:`add_health_check`. Checks run at once, each given
``APTK_HEALTH_TIMEOUT`` seconds (default 2): a component that hangs makes ``/healthz`` answer 503 in time, rather
than making the load balancer's probe time out.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from typing import Callable

from flask import Flask, Response, jsonify

logger = logging.getLogger("toolkit.health")

DEFAULT_TIMEOUT = 2.0
"""Seconds a check has to answer before it counts as failing (``APTK_HEALTH_TIMEOUT``)."""

HealthCheck = Callable[[], None]
"""Returns if the component works; raises (anything) if not. Keep it quick: load balancers call it often."""


def add_health_check(app: Flask, name: str, check: HealthCheck) -> None:
    """Have ``/healthz`` of ``app`` also run ``check``, reported under ``name``."""
    from .extension import get_toolkit

    checks = get_toolkit(app).health_checks
    if name in checks:
        raise ValueError(f"a health check named {name!r} is registered already")
    checks[name] = check


def health_response(checks: dict[str, HealthCheck], timeout: float = DEFAULT_TIMEOUT) -> Response:
    """Run every check at once, each given ``timeout`` seconds; a check still running then counts as failing."""
    futures = {name: _pool().submit(check) for name, check in checks.items()}
    give_up = time.monotonic() + timeout
    results = {}
    for name, future in futures.items():
        try:
            future.result(timeout=max(0.0, give_up - time.monotonic()))
            results[name] = "ok"
        except concurrent.futures.TimeoutError:
            logger.warning("health check %s did not answer within %g s", name, timeout)
            results[name] = "failing"
        except Exception as exc:
            logger.warning("health check %s failed: %s", name, type(exc).__name__)
            results[name] = "failing"
    healthy = all(r == "ok" for r in results.values())
    response = jsonify({"status": "ok" if healthy else "unavailable", "checks": results})
    response.status_code = 200 if healthy else 503
    response.headers["Cache-Control"] = "no-store"
    return response


_checks_pool: concurrent.futures.ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _pool() -> concurrent.futures.ThreadPoolExecutor:
    """The threads checks run on (per process). Bounded: checks stuck on a hung component hold their threads, and
    the checks after them wait and time out, so /healthz keeps answering 503 rather than piling up threads."""
    global _checks_pool
    with _pool_lock:
        if _checks_pool is None:
            _checks_pool = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="aptk-health")
        return _checks_pool
