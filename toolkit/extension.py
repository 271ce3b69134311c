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
``APTK_LEASE_SECONDS``      how long a silent process keeps its actions before recovery      ``30``
==========================  ==============================================================  ==================

Behaviour is injected through :class:`Toolkit`'s keyword arguments (``store=``, ``executor=``, ``verifier=``,
``clock=``), which is how tests swap any of them.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import TYPE_CHECKING

from flask import Flask

from .auth import TokenVerifier, verifier_from_config
from .errors import ConfigurationError
from .executor import Executor, ThreadExecutor, default_max_running_per_identity
from .lifecycle import Runtime
from .settings import check_database, check_settings, default_data_dir, make_data_dir
from .settings import number as _number, setting as _setting
from .store import SQLStore, Store

if TYPE_CHECKING:
    from .typing import Clock

EXTENSION = "aptk"


@dataclasses.dataclass
class ToolkitState:
    """What one app holds in ``app.extensions["aptk"]``."""

    runtime: Runtime
    verifier: TokenVerifier
    data_dir: Path


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
        data_dir = Path(_setting(app, "APTK_DATA_DIR", default_data_dir()))
        app.config["APTK_DATA_DIR"] = str(data_dir)
        store = self._store
        if store is None:
            url = _setting(app, "APTK_DATABASE_URL", None)
            if not url:
                make_data_dir(data_dir)
                url = f"sqlite:///{data_dir / 'aptk.db'}"
            check_database(url)  # a missing driver or an unwritable file fails here, not on every request
            store = SQLStore(url)
        executor = self._executor
        if executor is None:
            threads = _number(app, "APTK_EXECUTOR_THREADS", 8, int)
            executor = ThreadExecutor(threads, _number(
                app, "APTK_MAX_RUNNING_PER_IDENTITY", default_max_running_per_identity(threads), int))
        verifier = self._verifier or verifier_from_config(lambda name: _setting(app, name, None), data_dir)
        runtime = Runtime(
            store,
            executor,
            clock=self._clock or time.time,
            lease_seconds=_number(app, "APTK_LEASE_SECONDS", 30.0),
            config=app.config,
        )
        runtime.verifier = verifier
        state = ToolkitState(runtime, verifier, data_dir)
        app.extensions[EXTENSION] = state
        return state


def get_toolkit(app: Flask) -> ToolkitState:
    """The app's toolkit state, set up from ``app.config`` if the app has none yet."""
    state = app.extensions.get(EXTENSION)
    if state is None:
        state = Toolkit().init_app(app)
    return state
