"""Prometheus metrics of the toolkit, served at ``/metrics`` when ``APTK_METRICS`` is on.

The series (every name starts with ``aptk_``):

=====================================  ===========  ==============================================================
series                                 labels       what
=====================================  ===========  ==============================================================
``http_requests_total``                route,       requests answered, by route template (``/hello/<action_id>/
                                       method, code status``; ``<unmatched>`` for paths no route serves)
``http_request_duration_seconds``      route,       time to answer them (histogram)
                                       method
``auth_failures_total``                reason       401/403 answers: ``missing_token``, ``expired_token``,
                                                    ``invalid_token``, ``insufficient_scope``, ``forbidden``
``actions_total``                      provider,    actions that entered a status (ACTIVE when started or
                                       status       resumed, then SUCCEEDED, FAILED or INACTIVE)
``action_duration_seconds``            provider,    start to completion of completed actions (histogram)
                                       status
``action_queue_seconds``               provider     from submission to the start of the callback (histogram)
``callback_seconds``                   provider     time spent inside run callbacks (histogram)
``actions_running``                    provider     callbacks running now (summed over live processes)
``actions_waiting``                    provider     callbacks waiting for a thread now (summed over live processes)
``queue_depth``                        queue        jobs waiting in an external queue (RQ: read from Redis at each
                                                    scrape of ``/metrics``, every 5 s by ``aptk worker``)
``recoveries_total``                   provider,    actions of a lost process taken up again (``rerun``) or
                                       outcome      failed (``failed``)
=====================================  ===========  ==============================================================

Counters, not gauges computed from the database, count actions: a counter is cheap to keep in every process and
the sum over processes is exact, where counting a store of a million actions by status on every scrape is not
cheap. ``rate(aptk_actions_total{status="FAILED"}[5m])`` is what to watch.

Metrics are per process, as the Prometheus client keeps them: this module holds them (created on first use, in
a registry of their own, not the client's global one). Under ``aptk serve`` each gunicorn worker writes its
values to files in a directory the server creates at start (``PROMETHEUS_MULTIPROC_DIR``) and removes at exit,
and ``/metrics`` sums them over the workers. Any other multi-process server does the same when that variable is
set before the workers start.
"""

from __future__ import annotations

import functools
import hmac
import ipaddress
import logging
import os
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flask import Response

logger = logging.getLogger("toolkit.metrics")

MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"
"""The environment variable that puts the Prometheus client in multi-process mode."""

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
                    14400.0, 86400.0)
"""Buckets of action, queue and callback durations: actions last from milliseconds to days."""
HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_METHODS = frozenset({"GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"})


class _Series:
    """The metric objects of this process (one set; the Prometheus client's values are process-wide anyway)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.http_requests = Counter("aptk_http_requests", "HTTP requests answered, by route template and status "
                                     "code.", ["route", "method", "code"], registry=r)
        self.http_seconds = Histogram("aptk_http_request_duration_seconds", "Time to answer HTTP requests.",
                                      ["route", "method"], buckets=HTTP_BUCKETS, registry=r)
        self.auth_failures = Counter("aptk_auth_failures", "Requests refused for their credentials (401/403).",
                                     ["reason"], registry=r)
        self.actions = Counter("aptk_actions", "Actions that entered a status.", ["provider", "status"],
                               registry=r)
        self.action_seconds = Histogram("aptk_action_duration_seconds", "Start to completion of actions.",
                                        ["provider", "status"], buckets=DURATION_BUCKETS, registry=r)
        self.queue_seconds = Histogram("aptk_action_queue_seconds", "Submission to start of run callbacks.",
                                       ["provider"], buckets=DURATION_BUCKETS, registry=r)
        self.callback_seconds = Histogram("aptk_callback_seconds", "Time inside run callbacks.", ["provider"],
                                          buckets=DURATION_BUCKETS, registry=r)
        self.running = Gauge("aptk_actions_running", "Run callbacks running now.", ["provider"],
                             multiprocess_mode="livesum", registry=r)
        self.waiting = Gauge("aptk_actions_waiting", "Run callbacks waiting for a thread now.", ["provider"],
                             multiprocess_mode="livesum", registry=r)
        self.queue_depth = Gauge("aptk_queue_depth", "Jobs waiting in an external queue.", ["queue"],
                                 multiprocess_mode="livemostrecent", registry=r)
        self.recoveries = Counter("aptk_recoveries", "Actions of a lost process run again or failed.",
                                  ["provider", "outcome"], registry=r)


_series: _Series | None = None
_series_lock = threading.Lock()


def _get() -> _Series:
    global _series
    if _series is None:
        with _series_lock:
            if _series is None:
                _series = _Series()
    return _series


# --- recording (the toolkit calls these; a queue backend calls set_queue_depth and the action ones too) ----------


def report_queue_depth(executor: Any) -> None:
    """Set ``queue_depth`` from an external queue's executor (one that has ``depth()``); nothing if it cannot say."""
    depth = getattr(executor, "depth", None)
    if depth is None:
        return
    try:
        set_queue_depth(executor.queue, depth())
    except Exception as exc:  # the queue is away: /healthz says so; the gauge keeps its last value
        logger.warning("could not read the queue's depth: %s", type(exc).__name__)


def serve_worker_metrics(port: int, host: str, executor: Any, stop: threading.Event,
                         interval: float = 5.0) -> Any:
    """Serve this process's metrics on ``host:port`` (a worker's; it has no web app), refreshing the queue depth
    every ``interval`` seconds until ``stop``; the server, to shut down."""
    from prometheus_client import start_http_server

    server, _thread = start_http_server(port, addr=host, registry=_get().registry)

    def refresh() -> None:
        while True:
            report_queue_depth(executor)
            if stop.wait(interval):
                return

    threading.Thread(target=refresh, name="aptk-queue-depth", daemon=True).start()
    return server


def set_queue_depth(queue: str, depth: float) -> None:
    """Report how many jobs wait in the external queue ``queue`` (``aptk_queue_depth{queue=...}``).

    For executors that hand callbacks to a queue shared by hosts: call it whenever the depth is known (after an
    enqueue, on a timer); the most recent report of any live process is what ``/metrics`` shows.
    """
    _get().queue_depth.labels(queue).set(depth)


def action_entered(provider: str, status: str) -> None:
    """Count an action entering ``status`` (``aptk_actions_total``)."""
    _get().actions.labels(provider, status).inc()


def action_completed(provider: str, status: str, seconds: float) -> None:
    """Count an action completing in ``status``, ``seconds`` after it started."""
    series = _get()
    series.actions.labels(provider, status).inc()
    series.action_seconds.labels(provider, status).observe(max(0.0, seconds))


def callback_queued(provider: str) -> None:
    _get().waiting.labels(provider).inc()


def callback_dequeued(provider: str, waited: float) -> None:
    series = _get()
    series.waiting.labels(provider).dec()
    series.queue_seconds.labels(provider).observe(max(0.0, waited))


def callback_started(provider: str) -> None:
    _get().running.labels(provider).inc()


def callback_ended(provider: str, seconds: float) -> None:
    series = _get()
    series.running.labels(provider).dec()
    series.callback_seconds.labels(provider).observe(max(0.0, seconds))


def recovered(provider: str, outcome: str) -> None:
    """Count an action of a lost process taken up again (``rerun``) or failed (``failed``)."""
    _get().recoveries.labels(provider, outcome).inc()


def auth_failed(reason: str) -> None:
    _get().auth_failures.labels(reason).inc()


def http_request(route: str, method: str, code: int, seconds: float) -> None:
    series = _get()
    method = method if method in _METHODS else "other"  # a client chooses the method: keep the labels bounded
    series.http_requests.labels(route, method, str(code)).inc()
    series.http_seconds.labels(route, method).observe(seconds)


# --- exposition ------------------------------------------------------------------------------------------------


def exposition() -> tuple[bytes, str]:
    """The metrics in Prometheus's text format, summed over processes in multi-process mode; and its media type."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

    series = _get()
    if os.environ.get(MULTIPROCESS_DIR):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(series.registry), CONTENT_TYPE_LATEST


def use_multiprocess_dir(path: str) -> None:
    """Put this process (and the workers it forks) in multi-process mode, writing to ``path``."""
    os.environ[MULTIPROCESS_DIR] = path
    import sys

    values = sys.modules.get("prometheus_client.values")
    if values is not None:  # imported already (by an app's own code): the client chose its value class at import
        values.ValueClass = values.get_value_class()  # type: ignore[attr-defined]


def process_exited(pid: int) -> None:
    """Drop the live gauges of a process that exited (its counters and histograms stay in the sums)."""
    path = os.environ.get(MULTIPROCESS_DIR)
    if path:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, path)


# --- who may read /metrics -------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def _loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def allowed(token: str | None, authorization: str | None, remote_addr: str | None,
            headers: Any) -> tuple[bool, int]:
    """Whether a request may read ``/metrics``; with the status to answer if not (401 or 403).

    With ``APTK_METRICS_TOKEN`` (``token``) set, only ``Authorization: Bearer <that token>`` may. Without one,
    only a client on loopback talking to the server directly: a request that came through a reverse proxy (it
    carries ``Forwarded`` or ``X-Forwarded-For``) is refused, since the proxy's own address is loopback.
    """
    if token:
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode()):
            return True, 200
        return False, 401
    if headers.get("Forwarded") is not None or headers.get("X-Forwarded-For") is not None:
        return False, 403
    return _loopback(remote_addr or ""), 403


def metrics_response() -> "Response":
    from flask import Response

    body, content_type = exposition()
    return Response(body, content_type=content_type, headers={"Cache-Control": "no-store"})
