"""The app that serves the installed providers, and the gunicorn application behind ``aptk serve``."""

from __future__ import annotations

import gc
import logging
import os
import shutil
import signal
import tempfile
from pathlib import Path
from typing import Any, Iterable, Mapping

from flask import Flask, jsonify, request
from flask.json.provider import DefaultJSONProvider

from .errors import ConfigurationError
from .extension import Toolkit, find_toolkit, get_toolkit
from .provider import ActionProvider
from .logs import check_format
from .settings import flag, number, setting

logger = logging.getLogger("toolkit.server")

DEFAULT_READ_TIMEOUT = 30.0
"""Seconds a request may take to arrive in full under `aptk serve` (``APTK_REQUEST_READ_TIMEOUT``)."""

SHUTDOWN_GRACE_SECONDS = 3.0
"""How long a stopping worker waits for running callbacks before handing their actions to other workers."""


class _DocumentOrderJSON(DefaultJSONProvider):
    """JSON answers keep their keys in the order the documents are built in (Flask sorts them by default)."""

    sort_keys = False


def create_app(
    config: Mapping[str, Any] | None = None,
    providers: Iterable[tuple[str, ActionProvider]] | None = None,
    **toolkit_options: Any,
) -> Flask:
    """A Flask app serving ``providers`` (default: every installed provider, see :mod:`toolkit.registry`) at
    their URL prefixes.

    ``config`` sets ``APTK_*`` keys (see :mod:`toolkit.extension`); ``toolkit_options`` go to :class:`Toolkit`.
    """
    app = Flask("aptk")
    app.json = _DocumentOrderJSON(app)
    if config:
        app.config.update(config)
    Toolkit(app, **toolkit_options)  # also sets MAX_CONTENT_LENGTH (APTK_MAX_BODY_BYTES)
    # Read by the workers of `aptk serve` (toolkit.worker); a wrong value stops start-up here, not a worker later.
    number(app.config, "APTK_REQUEST_READ_TIMEOUT", DEFAULT_READ_TIMEOUT, positive=True)
    check_format(setting(app.config, "APTK_LOG_FORMAT"))
    if providers is None:
        from .registry import load

        providers = load()
    mounted = []
    for prefix, provider in providers:
        app.register_blueprint(provider.blueprint(url_prefix=prefix))
        mounted.append((prefix, provider))

    @app.get("/")
    def index():
        """What this server hosts, for people and for `aptk` itself."""
        root = request.script_root
        return jsonify(
            {
                "providers": [
                    {"url": f"{root}{prefix}/", "name": p.name, "title": p.title, "scope": p.globus_auth_scope}
                    for prefix, p in mounted
                ]
            }
        )

    return app


def start_runtime(app: Flask) -> None:
    """Start the app's background maintenance now rather than at its first request."""
    get_toolkit(app).runtime.start()


def stop_runtime(app: Flask, grace: float = 0.0) -> None:
    """Stop the app's background work, giving running callbacks ``grace`` seconds to finish first."""
    get_toolkit(app).runtime.stop(grace)


def private_umask() -> None:
    """Create every file and directory of this process private to the user (umask 077).

    ``aptk serve`` calls it first: the database and its -wal/-shm files, the dev signing key, gunicorn's control
    socket and the transfer provider's default collections are then 0600 / 0700 whoever creates them.
    """
    os.umask(0o077)


def serve(
    *,
    host: str = "127.0.0.1",
    port: int = 5000,
    workers: int = 2,
    threads: int = 8,
    config: Mapping[str, Any] | None = None,
    providers: Iterable[str] | Iterable[tuple[str, ActionProvider]] = (),
    app: str | None = None,
) -> None:
    """Run the installed providers (or those named in ``providers``; or the Flask app ``app``, given as
    ``module:attribute``) under gunicorn until interrupted (Ctrl-C stops it cleanly). ``providers`` may also be
    ``(prefix, provider)`` pairs already loaded, which the workers then use as they are (no entry-point scan each).

    Requests are read whole by each worker's event loop before a thread runs them
    (:class:`toolkit.worker.BufferingWorker`), so slow clients hold no thread.

    With ``APTK_METRICS`` on, the workers' metrics live in a directory made for this run and removed when it
    ends; a worker's live gauges go when it exits. ``APTK_LOG_FORMAT=json`` writes every log line as JSON.
    """
    from gunicorn.app.base import BaseApplication

    private_umask()
    settings = dict(config or {})
    log_format = check_format(setting(settings, "APTK_LOG_FORMAT"))
    metrics_dir = None
    if flag(settings, "APTK_METRICS", False):
        from . import metrics

        metrics_dir = tempfile.mkdtemp(prefix="aptk-metrics-")
        metrics.use_multiprocess_dir(metrics_dir)
    selected = list(providers)
    names = [item for item in selected if isinstance(item, str)]
    loaded: list[tuple[str, ActionProvider]] | None = [item for item in selected if isinstance(item, tuple)] or None

    class Application(BaseApplication):
        def load_config(self) -> None:
            options = {
                "bind": f"{host}:{port}",
                "workers": workers,
                "worker_class": "toolkit.worker.BufferingWorker",
                "threads": threads,
                "graceful_timeout": 10,
                "timeout": 60,
                "accesslog": "-",
                "logger_class": "toolkit.accesslog.AccessLogger",
                "post_worker_init": _worker_started,
                "worker_exit": lambda server, worker: _stop_quietly(worker),
            }
            if metrics_dir is not None:
                options["child_exit"] = _worker_gone
            if log_format == "json":
                from .logs import logging_config

                options["logconfig_dict"] = logging_config()
            if "control_socket" in self.cfg.settings and config and config.get("APTK_DATA_DIR"):
                # One control socket per data directory, so that several servers can run side by side.
                options["control_socket"] = str(Path(config["APTK_DATA_DIR"]) / "gunicorn.ctl")
            for key, value in options.items():
                self.cfg.set(key, value)

        def load(self) -> Flask:
            if app is not None:
                return load_app(app)
            if loaded is not None:
                return create_app(config, providers=loaded)
            from .registry import load

            return create_app(config, providers=load(names))

    try:
        Application().run()
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def load_app(spec: str) -> Flask:
    """The Flask app named by ``module:attribute`` (an app, or a factory called without arguments)."""
    import importlib

    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ConfigurationError(f"--app {spec!r}: give it as module:attribute, e.g. my_provider.app:app")
    try:
        target: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            target = getattr(target, part)
        if not isinstance(target, Flask) and callable(target):
            target = target()
    except Exception as exc:
        raise ConfigurationError(f"--app {spec!r} cannot be loaded: {type(exc).__name__}: {exc}") from None
    if not isinstance(target, Flask):
        raise ConfigurationError(f"--app {spec!r} is a {type(target).__name__}, not a Flask app")
    return target


def post_worker_init(worker: Any) -> None:
    """gunicorn's ``post_worker_init`` hook: a worker starts its share of the background work (see
    ``deploy/gunicorn.conf.py``)."""
    _worker_started(worker)


def worker_exit(server: Any, worker: Any) -> None:
    """gunicorn's ``worker_exit`` hook: running callbacks get a short grace, the rest go to other workers."""
    _stop_quietly(worker)


def _worker_started(worker: Any) -> None:
    # Ctrl-C reaches the whole process group; the master then stops each worker gracefully. A worker that
    # also handled SIGINT itself could deadlock in its own shutdown (seen with gthread workers).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if find_toolkit(worker.wsgi) is None:  # an author's own app (--app) may hold no toolkit at all
        return
    # A quit signal while the runtime starts would raise SystemExit wherever the main thread is (inside a lock,
    # between two threads' starts), leaving the worker stuck in its own shutdown until the master's SIGKILL: the
    # signals wait until the start is complete, then stop the worker as usual.
    stopping = {signal.SIGQUIT, signal.SIGTERM, signal.SIGINT, signal.SIGABRT}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, stopping)
    try:
        start_runtime(worker.wsgi)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    # What the worker built to serve (modules, the app, schemas, compiled statements) lives as long as it does:
    # the garbage collector's full passes stop walking it again and again while requests are served.
    gc.freeze()


def child_exit(server: Any, worker: Any) -> None:
    """gunicorn's ``child_exit`` hook (run by the master): a worker that exited stops counting in the live gauges
    of ``/metrics`` (nothing to do unless ``PROMETHEUS_MULTIPROC_DIR`` is set)."""
    from . import metrics

    metrics.process_exited(worker.pid)


_worker_gone = child_exit


def _stop_quietly(worker: Any) -> None:
    app = getattr(worker, "wsgi", None)
    if isinstance(app, Flask) and find_toolkit(app) is not None:
        try:
            # Let short callbacks finish rather than hand them over; well within gunicorn's graceful_timeout.
            stop_runtime(app, grace=SHUTDOWN_GRACE_SECONDS)
        except Exception:  # pragma: no cover - the process is exiting anyway
            logger.exception("could not stop the action runtime cleanly")
