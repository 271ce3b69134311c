"""Where settings come from: ``app.config`` first, then the environment (same ``APTK_*`` names)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flask import Flask

from .errors import ConfigurationError


def default_data_dir() -> Path:
    env = os.environ.get("APTK_DATA_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "aptk"


def setting(app: Flask, key: str, default: Any) -> Any:
    if key in app.config:
        return app.config[key]
    return os.environ.get(key, default)


def number(app: Flask, key: str, default: float, kind=float) -> Any:
    value = setting(app, key, default)
    try:
        number = kind(value)
    except (TypeError, ValueError):
        raise ConfigurationError(f"{key} must be a number, not {value!r}") from None
    if number <= 0:
        raise ConfigurationError(f"{key} must be positive, not {value!r}")
    return number
