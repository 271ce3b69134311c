"""Per-app state: the store, executor, token verifier and lifecycle runtime, kept in ``app.extensions``.

Deployment values come from ``app.config`` (or the environment, same names):

==========================  ==============================================================  ==================
key                         meaning                                                         default
==========================  ==============================================================  ==================
``APTK_DATA_DIR``           where the SQLite database and the dev signing key live          ``~/.local/share/aptk``
``APTK_DATABASE_URL``       any SQLAlchemy URL                                              SQLite in the data dir
``APTK_AUTH``               token verifier: ``dev``, ``jwt``, ``introspection``, ``globus``  ``dev``
``APTK_AUTH_*``             the verifier's settings (see :mod:`toolkit.auth.config`)
``APTK_EXECUTOR_THREADS``   callbacks run at once per process                               ``8``
``APTK_MAX_RUNNING_PER_IDENTITY``  callbacks one caller runs at once per process            half the threads
``APTK_EXECUTOR``           where callbacks run: ``threads`` (here) or ``rq`` (workers)      ``threads``
``APTK_REDIS_URL``          the Redis of ``APTK_EXECUTOR=rq``, e.g. ``redis://host:6379/0``
``APTK_QUEUE_NAME``         the RQ queue's name (sub-queues per provider and caller)         ``aptk``
``APTK_LEASE_SECONDS``      how long a silent process keeps its actions before recovery      ``30``
``APTK_MAX_BODY_BYTES``     largest request body the toolkit's routes read (else 413)        ``10485760``
``APTK_METRICS``            serve Prometheus metrics at ``/metrics`` (:mod:`toolkit.metrics`) ``false``
``APTK_METRICS_TOKEN``      bearer token ``/metrics`` requires (else loopback clients only)
==========================  ==============================================================  ==================

Behaviour is injected through :class:`Toolkit`'s keyword arguments (``store=``, ``executor=``, ``verifier=``,
``clock=``), which is how tests swap any of them.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import stat
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flask import Flask, Response, g, jsonify, request

from .auth import TokenVerifier, verifier_from_config
from . import health
from .errors import ConfigurationError
from .executor import Executor, ThreadExecutor, default_max_running_per_identity
from .lifecycle import Runtime
from .settings import check_database, check_settings, default_data_dir, make_data_dir
from .settings import number, setting
from .store import SQLStore, Store

if TYPE_CHECKING:
    from .health import HealthCheck
    from .typing import Clock

EXTENSION = "aptk"
DEFAULT_MAX_BODY_BYTES = 10 * 1024 * 1024
logger = logging.getLogger("toolkit.extension")


@dataclasses.dataclass
class ToolkitState:
    """What one app holds in ``app.extensions["aptk"]``."""

    runtime: Runtime
    verifier: TokenVerifier
    data_dir: Path
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    """The largest request body the toolkit's routes read (``APTK_MAX_BODY_BYTES``); a larger one is a 413."""
    prefixes: list[str] = dataclasses.field(default_factory=list)
    """The URL prefixes providers are mounted at; the web framework's own errors under them are answered as JSON."""
    health_checks: dict[str, "HealthCheck"] = dataclasses.field(default_factory=dict)
    """What ``/healthz`` checks, by name (:func:`toolkit.health.add_health_check`)."""
    health_timeout: float = 2.0
    """Seconds each check has to answer (``APTK_HEALTH_TIMEOUT``)."""


class Toolkit:
    """The toolkit's Flask extension. Blueprints from :meth:`ActionProvider.blueprint` create one on demand.

    One instance may set up several apps (``init_app``); each gets its own :class:`ToolkitState`. Injected
    ``store``, ``executor`` and ``verifier`` objects are shared by every app set up with this instance.
    """

    def __init__(
        self,
        app: Flask | None = None,
        *,
        store: Store | None = None,
        executor: Executor | None = None,
        verifier: TokenVerifier | None = None,
        clock: "Clock | None" = None,
    ) -> None:
        self._store = store
        self._executor = executor
        self._verifier = verifier
        self._clock = clock
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> ToolkitState:
        if EXTENSION in app.extensions:
            raise ConfigurationError("The toolkit is already set up on this app; create Toolkit(app) once.")
        check_settings(app.config)  # a misspelt APTK_* name stops here rather than being ignored
        config = app.config
        data_dir = Path(setting(config, "APTK_DATA_DIR", default_data_dir()))
        config["APTK_DATA_DIR"] = str(data_dir)
        max_body = number(config, "APTK_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES, kind=int, positive=True)
        if app.config.get("MAX_CONTENT_LENGTH") is None:
            # Flask reads no limit from None; the whole app gets the toolkit's, an author's own limit stays.
            app.config["MAX_CONTENT_LENGTH"] = max_body
        store = self._store
        if store is None:
            url = setting(config, "APTK_DATABASE_URL")
            if not url:
                make_data_dir(data_dir)
                url = f"sqlite:///{data_dir / 'aptk.db'}"
                keep_private(data_dir, create=(DATABASE_FILE,))
            check_database(url)  # a missing driver or an unwritable file fails here, not on every request
            store = SQLStore(url)
        executor = self._executor
        kind = setting(config, "APTK_EXECUTOR", "threads")
        if executor is None and kind == "rq":
            from .rq_executor import RQExecutor

            redis_url = setting(config, "APTK_REDIS_URL")
            if not redis_url:
                raise ConfigurationError("APTK_EXECUTOR=rq needs APTK_REDIS_URL (e.g. redis://127.0.0.1:6379/0)")
            executor = RQExecutor.from_url(str(redis_url), queue=str(setting(config, "APTK_QUEUE_NAME", "aptk")),
                                           key=lambda: runtime.request_key)
        elif kind != "threads":
            raise ConfigurationError(f"APTK_EXECUTOR must be threads or rq, not {kind!r}")
        if executor is None:
            threads = number(config, "APTK_EXECUTOR_THREADS", 8, kind=int, positive=True)
            executor = ThreadExecutor(threads, number(
                config, "APTK_MAX_RUNNING_PER_IDENTITY", default_max_running_per_identity(threads), kind=int,
                positive=True))
        verifier = self._verifier or verifier_from_config(config, data_dir)
        runtime = Runtime(
            store,
            executor,
            verifier=verifier,
            clock=self._clock or time.time,
            lease_seconds=number(config, "APTK_LEASE_SECONDS", 30.0, positive=True),
            config=config,
        )
        if self._store is None:
            _ = runtime.request_key  # made now: a data directory that cannot hold it stops start-up
            if setting(config, "APTK_DATABASE_URL") and not setting(config, "APTK_REQUEST_KEY"):
                logger.warning("APTK_REQUEST_KEY is not set: request digests in APTK_DATABASE_URL are plain "
                               "SHA-256, which a copy of the database lets anyone test guesses of a request "
                               "against; set the same APTK_REQUEST_KEY on every host sharing the database")
        if data_dir.is_dir():
            keep_private(data_dir)
        runtime.app = app
        from .calls import Calls

        # Made now: a bad APTK_CALL_CLIENTS file or APTK_PUBLIC_URL stops start-up, naming what is wrong.
        app.extensions["aptk.calls"] = Calls(app, runtime)
        state = ToolkitState(runtime, verifier, data_dir, max_body)
        state.health_checks["store"] = functools.partial(_check_store, runtime)
        ping = getattr(getattr(runtime.executor, "connection", None), "ping", None)
        if getattr(runtime.executor, "remote", False) and ping is not None:
            state.health_checks["queue"] = ping
        state.health_timeout = number(config, "APTK_HEALTH_TIMEOUT", health.DEFAULT_TIMEOUT, kind=float,
                                      positive=True)
        app.extensions[EXTENSION] = state
        _add_operations_routes(app, state)
        return state


def _check_store(runtime: Runtime) -> None:
    """The store's health: the runtime started (its tables exist), and one indexed read answers."""
    runtime.start()
    runtime.store.ping()


def _add_operations_routes(app: Flask, state: ToolkitState) -> None:
    """``/healthz`` always; ``/metrics`` and the request metrics when ``APTK_METRICS`` is on."""
    own_view: list[Any] = []

    def serve_health() -> Any:
        # An app that routes /healthz itself keeps its own: the toolkit's rule, added first, would shadow it.
        if not own_view:
            own_view.append(next((app.view_functions[rule.endpoint] for rule in app.url_map.iter_rules()
                                  if rule.rule == "/healthz" and rule.endpoint != "aptk_healthz"
                                  and "GET" in (rule.methods or ())), None))
        if own_view[0] is not None:
            return own_view[0]()
        return health.health_response(state.health_checks, state.health_timeout)

    app.add_url_rule("/healthz", "aptk_healthz", serve_health, methods=["GET"])
    if not state.runtime.metrics:
        return
    from . import metrics

    token = setting(app.config, "APTK_METRICS_TOKEN")

    def serve_metrics() -> Response:
        ok, status = metrics.allowed(token, request.headers.get("Authorization"), request.remote_addr,
                                     request.headers)
        if not ok:
            refusal = jsonify({"code": "UnauthorizedRequest" if status == 401 else "Forbidden",
                               "description": "A valid metrics token is required." if status == 401 else
                               "Metrics are served to loopback clients only; set APTK_METRICS_TOKEN."})
            refusal.status_code = status
            if status == 401:
                refusal.headers["WWW-Authenticate"] = "Bearer"
            return refusal
        metrics.report_queue_depth(state.runtime.executor)
        return metrics.metrics_response()

    app.add_url_rule("/metrics", "aptk_metrics", serve_metrics, methods=["GET"])

    @app.before_request
    def _timed() -> None:
        g.aptk_started = time.perf_counter()

    @app.after_request
    def _counted(response: Response) -> Response:
        started = g.pop("aptk_started", None)
        if started is not None:
            rule = request.url_rule
            metrics.http_request(rule.rule if rule is not None else "<unmatched>", request.method,
                                 response.status_code, time.perf_counter() - started)
        return response


DATABASE_FILE = "aptk.db"
OWN_FILES = (DATABASE_FILE, "aptk.db-wal", "aptk.db-shm", "aptk.db-journal", "aptk.db-writer.lock", "dev-signing-key.pem",
             "request-key", "gunicorn.ctl")
"""What the toolkit itself keeps in a data directory (next to the bundled transfer provider's ``collections``)."""


def keep_private(data_dir: Path, create: tuple[str, ...] = ()) -> None:
    """Keep the data directory (0700) and the toolkit's own files in it (0600) private to the user.

    Files named in ``create`` that do not exist yet are created empty with mode 0600 (SQLite gives its -wal and
    -shm files the database file's mode). The toolkit's own files are made 0600 if they are not. The directory
    is made 0700 if it is the default one or holds nothing but the toolkit's files; any other directory a
    person chose keeps its mode, with a warning if others can read it.
    """
    for name in create:
        try:
            os.close(os.open(data_dir / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            pass
    for name in OWN_FILES:
        path = data_dir / name
        try:
            mode = stat.S_IMODE(path.lstat().st_mode)
            if mode & 0o077 and path.is_file() and not path.is_symlink():
                os.chmod(path, 0o600)
                logger.warning("%s was readable by others (mode %o); it is now 0600", path, mode)
        except FileNotFoundError:
            continue
        except OSError as exc:  # not ours to change (another owner): say so, go on
            logger.warning("could not make %s private: %s", path, exc.strerror or exc)
    mode = stat.S_IMODE(data_dir.stat().st_mode)
    if not mode & 0o077:
        return
    ours = set(OWN_FILES) | {"collections"}
    entries = {entry.name for entry in os.scandir(data_dir) if not entry.name.startswith(".dev-key-")}
    xdg = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "aptk"
    if data_dir.resolve() == xdg.resolve() or (entries and entries <= ours):
        try:
            os.chmod(data_dir, 0o700)
            logger.warning("the data directory %s was open to others (mode %o); it is now 0700", data_dir, mode)
            return
        except OSError:
            pass
    logger.warning(
        "the data directory %s is open to others (mode %o): its file names show; `chmod 700 %s` makes it private",
        data_dir, mode, data_dir,
    )


def get_toolkit(app: Flask) -> ToolkitState:
    """The app's toolkit state, set up from ``app.config`` if the app has none yet."""
    state = find_toolkit(app)
    if state is None:
        state = Toolkit().init_app(app)
    return state


def find_toolkit(app: Flask) -> ToolkitState | None:
    """The app's toolkit state if it has one; unlike :func:`get_toolkit`, never sets one up."""
    return app.extensions.get(EXTENSION)
