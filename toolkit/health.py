"""``GET /healthz``: whether this process can serve, for load balancers.

200 ``{"status": "ok", "checks": {"store": "ok", ...}}`` when every check passes, else 503 with
``"status": "unavailable"`` and the failing checks marked ``"failing"``. Unauthenticated, so the body names the
checks and nothing else: why a check failed goes to the log (its exception's type), never to the answer.

The store is always checked (one indexed read). A component the toolkit depends on, such as a queue, adds its own
check with :func:`add_health_check`.
"""

from __future__ import annotations

import logging
from typing import Callable

from flask import Flask, Response, jsonify

logger = logging.getLogger("toolkit.health")

HealthCheck = Callable[[], None]
"""Returns if the component works; raises (anything) if not. Keep it quick: load balancers call it often."""


def add_health_check(app: Flask, name: str, check: HealthCheck) -> None:
    """Have ``/healthz`` of ``app`` also run ``check``, reported under ``name``."""
    from .extension import get_toolkit

    checks = get_toolkit(app).health_checks
    if name in checks:
        raise ValueError(f"a health check named {name!r} is registered already")
    checks[name] = check


def health_response(checks: dict[str, HealthCheck]) -> Response:
    results = {}
    for name, check in checks.items():
        try:
            check()
            results[name] = "ok"
        except Exception as exc:
            logger.warning("health check %s failed: %s", name, type(exc).__name__)
            results[name] = "failing"
    healthy = all(r == "ok" for r in results.values())
    response = jsonify({"status": "ok" if healthy else "unavailable", "checks": results})
    response.status_code = 200 if healthy else 503
    response.headers["Cache-Control"] = "no-store"
    return response
