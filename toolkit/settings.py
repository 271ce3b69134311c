"""Where settings come from: ``app.config`` first, then the environment (same ``APTK_*`` names).

:func:`setting` is the one reader (None or an empty string means not set); :func:`number`, :func:`flag` and
:func:`string_list` convert on top of it and name the setting in the :class:`ConfigurationError` a wrong value
raises. Providers read their own settings with them too (from ``ctx.config``).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping, overload

from .errors import ConfigurationError


def default_data_dir() -> Path:
    env = os.environ.get("APTK_DATA_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "aptk"


def setting(config: Mapping[str, Any], name: str, default: Any = None) -> Any:
    """The value of setting ``name``: from ``config`` (``app.config``, ``ctx.config``) first, then the environment.

    None and the empty string mean "not set" wherever they appear: an empty variable in the environment, or None
    in ``config``, gives ``default`` (an empty value in ``config`` lets the environment's through). Every reader
    below applies this rule first.
    """
    value = config.get(name)
    if value is None or value == "":
        value = os.environ.get(name)
    return default if value is None or value == "" else value


@overload
def number(config: Mapping[str, Any], name: str, default: int, *, kind: type[int], minimum: float = 0,
           positive: bool = False) -> int: ...
@overload
def number(config: Mapping[str, Any], name: str, default: float, *, kind: type[float] = float, minimum: float = 0,
           positive: bool = False) -> float: ...
def number(config: Mapping[str, Any], name: str, default: float, *, kind: type[int] | type[float] = float,
           minimum: float = 0, positive: bool = False) -> float:
    """Setting ``name`` as a number of ``kind`` (``int`` or ``float``), at least ``minimum`` (above 0 if
    ``positive``); ``default`` when not set. A wrong value is a :class:`ConfigurationError` naming the setting."""
    value = setting(config, name, default)
    try:
        parsed = float(value)
    except (TypeError, ValueError):
        raise ConfigurationError(f"{name} must be a number, not {value!r}") from None
    if not math.isfinite(parsed):
        raise ConfigurationError(f"{name} must be a number, not {value!r}")
    if kind is int and not parsed.is_integer():
        raise ConfigurationError(f"{name} must be a whole number, not {value!r}")
    if positive and parsed <= 0:
        raise ConfigurationError(f"{name} must be positive, not {value!r}")
    if parsed < minimum:
        raise ConfigurationError(f"{name} must be at least {minimum}, not {value!r}")
    return kind(parsed)


def flag(config: Mapping[str, Any], name: str, default: bool) -> bool:
    """Setting ``name`` as a boolean (``true``/``false``, ``1``/``0``, ``yes``/``no``, ``on``/``off``)."""
    value = setting(config, name)
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    word = str(value).strip().lower()
    if word in ("1", "true", "yes", "on"):
        return True
    if word in ("0", "false", "no", "off"):
        return False
    raise ConfigurationError(f"{name} must be true or false, not {value!r}")


def string_list(config: Mapping[str, Any], name: str) -> list[str]:
    """Setting ``name`` as a list of strings: a comma-separated string or a list (``app.config``); [] if not set."""
    value = setting(config, name)
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    raise ConfigurationError(f"{name} must be a comma-separated list, not {value!r}")


# --- every setting name, so that a misspelt one stops start-up instead of being ignored -----------------------

KNOWN_SETTINGS: set[str] = {
    # the toolkit (toolkit.extension, toolkit.blueprint)
    "APTK_DATA_DIR",
    "APTK_DATABASE_URL",
    "APTK_EXECUTOR_THREADS",
    "APTK_EXECUTOR",
    "APTK_REDIS_URL",
    "APTK_QUEUE_NAME",
    "APTK_MAX_RUNNING_PER_IDENTITY",
    "APTK_LEASE_SECONDS",
    "APTK_MAX_BODY_BYTES",
    "APTK_REQUEST_READ_TIMEOUT",
    "APTK_ADMIN_CONTACT",
    "APTK_REQUEST_KEY",
    # calling other providers (toolkit.calls)
    "APTK_PUBLIC_URL",
    "APTK_CALL_CLIENTS",
    "APTK_CALL_POLL_MAX_SECONDS",
    # operations (toolkit.metrics, toolkit.logs)
    "APTK_METRICS",
    "APTK_METRICS_TOKEN",
    "APTK_LOG_FORMAT",
    "APTK_HEALTH_TIMEOUT",
    # token verifiers (toolkit.auth.config)
    "APTK_AUTH",
    "APTK_AUTH_ISSUER",
    "APTK_AUTH_AUDIENCE",
    "APTK_AUTH_JWKS_URI",
    "APTK_AUTH_ALGORITHMS",
    "APTK_AUTH_GROUPS_CLAIM",
    "APTK_AUTH_LEEWAY",
    "APTK_AUTH_TIMEOUT",
    "APTK_AUTH_REQUIRE_TYP",
    "APTK_AUTH_CLIENT_ID",
    "APTK_AUTH_CLIENT_SECRET",
    "APTK_AUTH_INTROSPECTION_URL",
    "APTK_AUTH_CACHE_SECONDS",
    # the aptk command as a client (toolkit.cli)
    "APTK_TOKEN",
    "APTK_CLIENT_SECRET",
    "APTK_OTHER_TOKEN",
    # bundled providers (providers.transfer, providers.acl)
    "APTK_COLLECTIONS_FILE",
    "APTK_COLLECTION_OWNERS",
    "APTK_TRANSFER_THREADS",
    "APTK_TRANSFER_CHUNK_BYTES",
    "APTK_TRANSFER_PROCESSES",
    "APTK_TRANSFER_PROCESS_FILES",
    "APTK_TRANSFER_MAX_BYTES_PER_SECOND",
    # providers.notify
    "APTK_SMTP_URL",
    "APTK_SMTP_USERNAME",
    "APTK_SMTP_PASSWORD",
    "APTK_SMTP_CA_FILE",
    "APTK_SMTP_TIMEOUT",
    "APTK_NOTIFY_SENDER",
    "APTK_NOTIFY_SENDER_DOMAINS",
    "APTK_NOTIFY_MAX_BODY_BYTES",
    "APTK_NOTIFY_TEMPLATES_DIR",
    "APTK_NOTIFY_RATE_LIMIT",
    "APTK_NOTIFY_RATE_WINDOW",
    "APTK_NOTIFY_WEBHOOK_SECRET",
    "APTK_NOTIFY_WEBHOOK_TIMEOUT",
    "APTK_NOTIFY_WEBHOOK_CA_FILE",
    "APTK_NOTIFY_WEBHOOK_ALLOW_LOOPBACK",
    "APTK_NOTIFY_WEBHOOK_ALLOW_NETWORKS",
    "APTK_NOTIFY_SMTP_ALLOW_LOOPBACK",
    "APTK_NOTIFY_SMTP_ALLOW_NETWORKS",
    # providers.forms
    "APTK_FORMS_URL",
    "APTK_FORMS_SECRET_KEY",
    "APTK_FORMS_SIGN_IN",
    "APTK_FORMS_OIDC_ISSUER",
    "APTK_FORMS_OIDC_CLIENT_ID",
    "APTK_FORMS_OIDC_CLIENT_SECRET",
    "APTK_FORMS_OIDC_SCOPE",
    # providers.timers
    "APTK_TIMERS_MIN_INTERVAL",
    "APTK_TIMERS_MAX_FAILURES",
    "APTK_TIMERS_THREADS",
    "APTK_TIMERS_SCHEDULER",
    "APTK_TIMERS_URL",
    # providers.flows (read before the installed providers are loaded, so named here too)
    "APTK_FLOWS_DIR",
    "APTK_FLOWS_DIR_INTERVAL",
    "APTK_FLOWS_PURGE_INTERVAL",
}
"""Every ``APTK_*`` name the toolkit and the bundled providers read. A provider of its own adds its names with
:func:`register_settings` (or ``ActionProvider(settings=[...])``); any other ``APTK_*`` name in the environment or
in ``app.config`` stops start-up (:func:`check_settings`)."""

PREFIX = "APTK_"
TEST_PREFIX = "APTK_TEST_"
"""Names under this prefix are left to test suites (e.g. where a test finds a program) and never refused."""


def register_settings(*names: str) -> None:
    """Declare ``APTK_*`` names that a provider reads, so that setting them is not refused as a misspelling.

    Call it where the provider is defined (at import), before the app is set up.
    """
    for name in names:
        if not isinstance(name, str) or not name.startswith(PREFIX) or name != name.strip():
            raise ValueError(f"a setting name starts with {PREFIX}: {name!r}")
        KNOWN_SETTINGS.add(name)


def unknown_setting(name: str, where: str) -> str:
    """The message for an unknown name: the name, where it was found, and the closest real one."""
    import difflib

    close = difflib.get_close_matches(name, sorted(KNOWN_SETTINGS), n=1, cutoff=0.6)
    hint = f"did you mean {close[0]}?" if close else "no setting has a similar name."
    return (f"unknown setting {name} in {where}: {hint} (a provider declares its own settings with "
            f"toolkit.settings.register_settings)")


def check_settings(config: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None, *,
                   source: str = "app.config") -> None:
    """Refuse an ``APTK_*`` name in ``config`` (e.g. ``app.config``, or a settings file named by ``source``) or
    in the environment that nothing reads.

    Raises :class:`ConfigurationError` naming the first unknown name (sorted, config first) and the closest
    known one.
    """
    environ = os.environ if environ is None else environ
    for where, names in ((source, config or {}), ("the environment", environ)):
        for name in sorted(k for k in names if isinstance(k, str) and k.startswith(PREFIX)):
            if name not in KNOWN_SETTINGS and not name.startswith(TEST_PREFIX):
                raise ConfigurationError(unknown_setting(name, where))


# --- the database: refuse at start-up what would fail every request -------------------------------------------

_EXTRAS = {"postgresql": "postgres"}


def check_database(url: str) -> None:
    """Make sure ``url`` (an ``APTK_DATABASE_URL``) can be used: a URL SQLAlchemy understands, its driver installed,
    and for SQLite a file that can be opened for writing. Raises :class:`ConfigurationError` saying how to fix it.

    No network I/O: a server database that is down is reported by the first connection (``aptk serve`` makes one).
    """
    import sqlalchemy as sa

    try:
        parsed = sa.engine.make_url(url)
    except (sa.exc.ArgumentError, ValueError, TypeError):
        # Not echoed: a malformed URL may still hold a password.
        raise ConfigurationError(
            "APTK_DATABASE_URL is not a database URL; expected e.g. sqlite:////path/aptk.db or "
            "postgresql+psycopg://user:password@host/dbname"
        ) from None
    shown = parsed.render_as_string(hide_password=True)
    backend = parsed.get_backend_name()
    try:
        dialect = parsed.get_dialect()
        dialect.import_dbapi()
    except sa.exc.NoSuchModuleError:
        raise ConfigurationError(
            f"APTK_DATABASE_URL {shown}: SQLAlchemy has no database dialect {parsed.drivername!r}"
            + (f"; {_install_hint(backend)}" if backend in _EXTRAS else "")
        ) from None
    except ImportError as exc:
        raise ConfigurationError(
            f"the database driver for {shown} is not installed ({exc}); {_install_hint(backend, exc.name)}"
        ) from None
    if backend == "sqlite":
        _check_sqlite(parsed.database)


def _install_hint(backend: str, module: str | None = None) -> str:
    extra = _EXTRAS.get(backend)
    if extra:
        return (f"pip install 'action-provider-toolkit[{extra}]' and use a {backend}+psycopg:// URL"
                if backend == "postgresql" else f"pip install 'action-provider-toolkit[{extra}]'")
    return f"pip install {module}" if module else "install its driver"


def _check_sqlite(database: str | None) -> None:
    import sqlite3

    if not database or database == ":memory:" or database.startswith("file:"):
        return
    path = Path(database)
    problem = None
    if not path.parent.is_dir():
        problem = f"{path.parent} is not a directory"
    elif path.exists() and not path.is_file():
        problem = "it is not a file"
    elif not os.access(path.parent, os.W_OK | os.X_OK):
        problem = f"{path.parent} is not writable (SQLite writes its journal beside the database)"
    elif path.exists() and not os.access(path, os.R_OK | os.W_OK):
        problem = "the file is not readable and writable"
    else:
        try:
            connection = sqlite3.connect(path, timeout=60)
            try:
                connection.execute("PRAGMA schema_version").fetchone()
            finally:
                connection.close()
        except sqlite3.Error as exc:
            problem = str(exc)
    if problem:
        raise ConfigurationError(f"cannot open database at {path}: {problem}; check APTK_DATA_DIR or "
                                 "APTK_DATABASE_URL")


def make_data_dir(path: Path) -> None:
    """Create the data directory (and its parents) or say why not. A new data directory is private (0700)."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigurationError(
            f"cannot create the data directory {path}: {exc.strerror or exc}; choose another with --data-dir or "
            "APTK_DATA_DIR"
        ) from None
