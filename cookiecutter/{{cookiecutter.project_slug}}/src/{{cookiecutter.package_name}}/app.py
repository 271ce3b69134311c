"""A Flask app serving only this provider, for gunicorn (``gunicorn -c gunicorn.conf.py``).

``aptk serve`` finds the provider on its own (the ``aptk.providers`` entry point in pyproject.toml).
"""

from flask import Flask

from toolkit import Toolkit

from .provider import provider


def create_app() -> Flask:
    app = Flask(__name__)
    Toolkit(app)  # reads APTK_* settings from app.config or the environment
    app.register_blueprint(provider.blueprint(url_prefix="/{{ cookiecutter.provider_name }}"))
    return app
