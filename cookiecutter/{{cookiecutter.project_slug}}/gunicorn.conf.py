"""gunicorn settings: `gunicorn -c gunicorn.conf.py` serves this provider alone, as `aptk serve` would.

State lives in $APTK_DATA_DIR (default ~/.local/share/aptk); set APTK_* settings in the environment.
"""

import os

wsgi_app = "{{ cookiecutter.package_name }}.app:create_app()"
bind = os.environ.get("BIND", "127.0.0.1:8000")
workers = int(os.environ.get("WORKERS", "2"))
threads = 8
# Reads each request whole before a thread handles it, so that slow clients hold no thread.
worker_class = "toolkit.worker.BufferingWorker"
timeout = 60
graceful_timeout = 10
accesslog = "-"
umask = 0o077
