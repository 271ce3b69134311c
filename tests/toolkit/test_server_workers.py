"""What each worker of `aptk serve` does when it boots (gunicorn's post_worker_init hook)."""

from __future__ import annotations

import gc
import signal

from toolkit.server import create_app, post_worker_init, stop_runtime
from toolkit.testing import close_app


class Worker:
    def __init__(self, app):
        self.wsgi = app


def test_a_booted_worker_has_started_its_runtime_and_frozen_what_it_built(tmp_path):
    app = create_app({"APTK_DATA_DIR": str(tmp_path)})
    previous_sigint = signal.getsignal(signal.SIGINT)
    gc.unfreeze()
    try:
        post_worker_init(Worker(app))
        assert app.extensions["aptk"].runtime._thread.is_alive()
        # Everything alive at boot (the app among it) is left out of later collections.
        assert gc.get_freeze_count() > 10_000
    finally:
        gc.unfreeze()
        signal.signal(signal.SIGINT, previous_sigint)
        stop_runtime(app)
        close_app(app)
