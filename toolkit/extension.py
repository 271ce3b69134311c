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
``APTK_LEASE_SECONDS``      how long a silent process keeps its actions before recovery      ``30``
==========================  ==============================================================  ==================

Behaviour is injected through :class:`Toolkit`'s keyword arguments (``store=``, ``executor=``, ``verifier=``,
``clock=``), which is how tests swap any of them.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flask import Flask

from .auth import TokenVerifier, verifier_from_config
from .errors import ConfigurationError
from .executor import Executor, ThreadExecutor
from .lifecycle import Runtime
from .settings import default_data_dir, number as _number, setting as _setting
from .store import SQLStore, Store

if TYPE_CHECKING:
    from .typing import Clock

EXTENSION = "aptk"


class Toolkit:
    """The toolkit's Flask extension. Blueprints from :meth:`ActionProvider.blueprint` create one on demand."""

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
        self.runtime: Runtime | None = None
        self.verifier: TokenVerifier | None = None
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        if EXTENSION in app.extensions:
            raise ConfigurationError("The toolkit is already set up on this app; create Toolkit(app) once.")
        data_dir = Path(_setting(app, "APTK_DATA_DIR", default_data_dir()))
        app.config["APTK_DATA_DIR"] = str(data_dir)
        store = self._store
        if store is None:
            url = _setting(app, "APTK_DATABASE_URL", None)
            if not url:
                data_dir.mkdir(parents=True, exist_ok=True)
                url = f"sqlite:///{data_dir / 'aptk.db'}"
            store = SQLStore(url)
        executor = self._executor or ThreadExecutor(_number(app, "APTK_EXECUTOR_THREADS", 8, int))
        self.verifier = self._verifier or self._make_verifier(app, data_dir)
        self.runtime = Runtime(
            store,
            executor,
            clock=self._clock or time.time,
            lease_seconds=_number(app, "APTK_LEASE_SECONDS", 30.0),
            config=app.config,
        )
        self.runtime.verifier = self.verifier
        self.data_dir = data_dir
        app.extensions[EXTENSION] = self

    @staticmethod
    def _make_verifier(app: Flask, data_dir: Path) -> TokenVerifier:
        return verifier_from_config(lambda name: _setting(app, name, None), data_dir)


def get_toolkit(app: Flask) -> Toolkit:
    """The app's :class:`Toolkit`, created from ``app.config`` if the app has none yet."""
    toolkit = app.extensions.get(EXTENSION)
    if toolkit is None:
        toolkit = Toolkit(app)
    return toolkit
