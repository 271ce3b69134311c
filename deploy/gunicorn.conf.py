"""gunicorn settings for serving the installed providers with gunicorn itself, as `aptk serve` does::

    APTK_DATA_DIR=/var/lib/aptk gunicorn -c deploy/gunicorn.conf.py
    APTK_DATA_DIR=/var/lib/aptk gunicorn -c deploy/gunicorn.conf.py -b 0.0.0.0:8000 -w 4 'my_provider.app:app'

Options on the command line win over this file (``-b``, ``-w``, an app of your own given as ``module:app``); the
default app is ``toolkit.server:create_app()``, every installed provider at its prefix. APTK_* settings come from
the environment. Each worker starts the toolkit's background work when it boots, and a stopping worker (SIGTERM or
SIGINT to the master) lets running callbacks finish for a few seconds before handing their actions to the others.
With ``APTK_METRICS=true``, also set ``PROMETHEUS_MULTIPROC_DIR`` to an empty directory (emptied before each start),
so that ``/metrics`` sums the workers.
"""

from toolkit.server import child_exit, post_worker_init, private_umask, worker_exit  # noqa: F401  (gunicorn's hooks)
from toolkit.settings import default_data_dir, make_data_dir

wsgi_app = "toolkit.server:create_app()"
bind = "127.0.0.1:5000"
workers = 2
threads = 8
# Reads each request whole before a thread runs it, so that slow clients hold no thread.
worker_class = "toolkit.worker.BufferingWorker"
timeout = 60
graceful_timeout = 10
accesslog = "-"
# gunicorn's logger, building only the parts of each access line that access_log_format names.
logger_class = "toolkit.accesslog.AccessLogger"

# Every file of the server private to its user (the database, the dev signing key, the control socket).
private_umask()
umask = 0o077
# One control socket per data directory, so that several servers can run side by side.
_data_dir = default_data_dir()  # $APTK_DATA_DIR, else ~/.local/share/aptk
make_data_dir(_data_dir)
control_socket = str(_data_dir / "gunicorn.ctl")
