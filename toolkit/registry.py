"""Installed providers: found through the ``aptk.providers`` entry-point group, each mounted at ``/<name>``.

A distribution registers a provider in its metadata, e.g. in ``pyproject.toml``::

    [project.entry-points."aptk.providers"]
    echo = "my_provider:provider"

The value is an :class:`~toolkit.ActionProvider`, or a callable returning one. The providers bundled with the
toolkit register the same way. A provider that cannot be loaded (import error, invalid schema, no run callback,
a name another distribution uses too) is a :class:`ProviderLoadError` naming the distribution and the problem.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING, Iterable

from .errors import ConfigurationError

if TYPE_CHECKING:
    from .provider import ActionProvider

__all__ = ["GROUP", "InstalledProvider", "ProviderLoadError", "installed", "load"]

GROUP = "aptk.providers"
"""The entry-point group providers register in."""

_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")


class ProviderLoadError(ConfigurationError):
    """An installed provider cannot be served; the message names its distribution and what is wrong."""


@dataclass(frozen=True)
class InstalledProvider:
    """One entry of the ``aptk.providers`` group, not yet imported."""

    name: str
    value: str
    distribution: str

    @property
    def prefix(self) -> str:
        return f"/{self.name}"

    def describe(self) -> str:
        return f"provider {self.name!r} ({self.value}) of distribution {self.distribution!r}"

    def load(self) -> "ActionProvider":
        """Import the provider; any failure is a :class:`ProviderLoadError` that says which and why."""
        from .provider import ActionProvider

        try:
            loaded = EntryPoint(self.name, self.value, GROUP).load()
            if callable(loaded) and not isinstance(loaded, ActionProvider):
                loaded = loaded()
        except ConfigurationError as exc:
            raise ProviderLoadError(f"{self.describe()}: {exc}") from None
        except Exception as exc:
            raise ProviderLoadError(f"{self.describe()} cannot be loaded: {type(exc).__name__}: {exc}") from None
        if not isinstance(loaded, ActionProvider):
            raise ProviderLoadError(f"{self.describe()} is a {type(loaded).__name__}, not an ActionProvider")
        if loaded.run_callback is None:
            raise ProviderLoadError(f"{self.describe()} has no run callback (decorate one with @provider.run)")
        return loaded


def installed() -> list[InstalledProvider]:
    """Every registered provider, in the order registered, without importing any; a malformed name or one registered by
    two distributions is a :class:`ProviderLoadError`."""
    found: dict[str, InstalledProvider] = {}
    for entry in entry_points(group=GROUP):
        dist = entry.dist.metadata["Name"] if entry.dist is not None else "(unknown)"
        item = InstalledProvider(entry.name, entry.value, dist)
        if not _NAME.fullmatch(item.name):
            raise ProviderLoadError(
                f"{item.describe()}: the name must be lower-case letters, digits, '_', '.' or '-' (it is the URL "
                "prefix)"
            )
        other = found.get(item.name)
        if other is not None and other != item:
            raise ProviderLoadError(
                f"prefix {item.prefix} is claimed twice: by {other.describe()} and by {item.describe()}; "
                "uninstall one of them"
            )
        found[item.name] = item
    return list(found.values())


def load(names: Iterable[str] = ()) -> list[tuple[str, "ActionProvider"]]:
    """``(prefix, provider)`` for the installed providers called ``names`` (every one if none is given)."""
    available = {item.name: item for item in installed()}
    wanted = list(dict.fromkeys(names)) or list(available)
    unknown = [n for n in wanted if n not in available]
    if unknown:
        known = ", ".join(available) or "none"
        raise ProviderLoadError(f"no installed provider called {', '.join(map(repr, unknown))} (installed: {known})")
    loaded = []
    seen: dict[int, str] = {}
    for name in wanted:
        provider = available[name].load()
        if id(provider) in seen:
            raise ProviderLoadError(f"{available[name].describe()} is the same provider as {seen[id(provider)]!r}")
        seen[id(provider)] = name
        loaded.append((available[name].prefix, provider))
    return loaded
