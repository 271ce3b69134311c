"""Choosing and building the token verifier from settings (``app.config`` or the environment)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from ..errors import ConfigurationError
from .base import TokenVerifier

KINDS = ("dev", "jwt", "introspection", "globus")

# Which settings each verifier takes; True marks a required one.
SETTINGS: dict[str, dict[str, bool]] = {
    "dev": {},
    "jwt": {
        "APTK_AUTH_ISSUER": True,
        "APTK_AUTH_AUDIENCE": True,
        "APTK_AUTH_JWKS_URI": False,
        "APTK_AUTH_ALGORITHMS": False,
        "APTK_AUTH_GROUPS_CLAIM": False,
        "APTK_AUTH_LEEWAY": False,
        "APTK_AUTH_TIMEOUT": False,
        "APTK_AUTH_REQUIRE_TYP": False,
    },
    "introspection": {
        "APTK_AUTH_CLIENT_ID": True,
        "APTK_AUTH_CLIENT_SECRET": True,
        "APTK_AUTH_ISSUER": False,
        "APTK_AUTH_INTROSPECTION_URL": False,
        "APTK_AUTH_AUDIENCE": False,
        "APTK_AUTH_GROUPS_CLAIM": False,
        "APTK_AUTH_TIMEOUT": False,
        "APTK_AUTH_CACHE_SECONDS": False,
    },
    "globus": {
        "APTK_AUTH_CLIENT_ID": True,
        "APTK_AUTH_CLIENT_SECRET": True,
        "APTK_AUTH_AUDIENCE": False,
        "APTK_AUTH_TIMEOUT": False,
        "APTK_AUTH_CACHE_SECONDS": False,
    },
}
ALL_SETTINGS = sorted({name for names in SETTINGS.values() for name in names})


def verifier_from_config(get: Callable[[str], Any], data_dir: Path) -> TokenVerifier:
    """Build the verifier ``APTK_AUTH`` names; a missing or stray setting is a :class:`ConfigurationError`."""
    kind = (get("APTK_AUTH") or "dev").strip().lower()
    if kind not in KINDS:
        raise ConfigurationError(f"APTK_AUTH={kind!r} is not a token verifier; use one of {', '.join(KINDS)}.")
    wanted = SETTINGS[kind]
    values = {name: get(name) for name in ALL_SETTINGS}
    missing = [name for name, required in wanted.items() if required and not values[name]]
    if missing:
        raise ConfigurationError(f"APTK_AUTH={kind} needs {', '.join(missing)}.")
    stray = [name for name in ALL_SETTINGS if values[name] and name not in wanted]
    if stray:
        raise ConfigurationError(f"{', '.join(stray)} is set but APTK_AUTH={kind} does not use it.")
    if kind == "introspection" and not (values["APTK_AUTH_INTROSPECTION_URL"] or values["APTK_AUTH_ISSUER"]):
        raise ConfigurationError(
            "APTK_AUTH=introspection needs APTK_AUTH_INTROSPECTION_URL, or APTK_AUTH_ISSUER to discover it."
        )

    timeout = _number(values, "APTK_AUTH_TIMEOUT", 5.0)
    from .introspection import DEFAULT_CACHE_SECONDS
    if kind == "dev":
        from .dev import DevTokenVerifier

        return DevTokenVerifier.from_data_dir(data_dir)
    if kind == "jwt":
        from .jwks import ASYMMETRIC_ALGORITHMS, JWTVerifier

        algorithms = _list(values["APTK_AUTH_ALGORITHMS"]) or list(ASYMMETRIC_ALGORITHMS)
        return JWTVerifier(
            issuer=values["APTK_AUTH_ISSUER"],
            audience=_list(values["APTK_AUTH_AUDIENCE"]),
            jwks_uri=values["APTK_AUTH_JWKS_URI"] or None,
            algorithms=algorithms,
            leeway=_number(values, "APTK_AUTH_LEEWAY", 30.0),
            groups_claim=values["APTK_AUTH_GROUPS_CLAIM"] or "groups",
            require_typ=_flag(values, "APTK_AUTH_REQUIRE_TYP", True),
            timeout=timeout,
        )
    if kind == "introspection":
        from .introspection import IntrospectionVerifier

        return IntrospectionVerifier(
            client_id=values["APTK_AUTH_CLIENT_ID"],
            client_secret=values["APTK_AUTH_CLIENT_SECRET"],
            introspection_endpoint=values["APTK_AUTH_INTROSPECTION_URL"] or None,
            issuer=values["APTK_AUTH_ISSUER"] or None,
            audience=_list(values["APTK_AUTH_AUDIENCE"]) or None,
            groups_claim=values["APTK_AUTH_GROUPS_CLAIM"] or "groups",
            timeout=timeout,
            cache_seconds=_number(values, "APTK_AUTH_CACHE_SECONDS", DEFAULT_CACHE_SECONDS),
        )
    from .globus import GlobusAuthVerifier

    return GlobusAuthVerifier(
        client_id=values["APTK_AUTH_CLIENT_ID"],
        client_secret=values["APTK_AUTH_CLIENT_SECRET"],
        audience=values["APTK_AUTH_AUDIENCE"] or None,
        timeout=timeout,
        cache_seconds=_number(values, "APTK_AUTH_CACHE_SECONDS", DEFAULT_CACHE_SECONDS),
    )


def _flag(values: dict[str, Any], name: str, default: bool) -> bool:
    value = values.get(name)
    if value in (None, ""):
        return default
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("1", "true", "yes", "on"):
        return True
    if str(value).lower() in ("0", "false", "no", "off"):
        return False
    raise ConfigurationError(f"{name} must be true or false, not {value!r}")


def _list(value: Any) -> list[str]:
    if not value:
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v) for v in value]


def _number(values: dict[str, Any], name: str, default: float) -> float:
    value = values.get(name)
    if value in (None, ""):
        return default
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigurationError(f"{name} must be a number, not {value!r}") from None
    if number < 0:
        raise ConfigurationError(f"{name} must not be negative")
    return number
