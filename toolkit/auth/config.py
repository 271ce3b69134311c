"""Choosing and building the token verifier from settings (``app.config`` or the environment)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from ..errors import ConfigurationError
from ..settings import flag, number, setting, string_list
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


def verifier_from_config(config: Mapping[str, Any], data_dir: Path) -> TokenVerifier:
    """Build the verifier ``APTK_AUTH`` names from ``config`` (then the environment, as
    :func:`toolkit.settings.setting` reads); a missing or stray setting is a :class:`ConfigurationError`."""
    kind = str(setting(config, "APTK_AUTH", "dev")).strip().lower()
    if kind not in KINDS:
        raise ConfigurationError(f"APTK_AUTH={kind!r} is not a token verifier; use one of {', '.join(KINDS)}.")
    wanted = SETTINGS[kind]
    values = {name: setting(config, name) for name in ALL_SETTINGS}
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

    timeout = number(config, "APTK_AUTH_TIMEOUT", 5.0)
    from .introspection import DEFAULT_CACHE_SECONDS
    if kind == "dev":
        from .dev import DevTokenVerifier

        return DevTokenVerifier.from_data_dir(data_dir)
    if kind == "jwt":
        from .jwks import ASYMMETRIC_ALGORITHMS, JWTVerifier

        algorithms = string_list(config, "APTK_AUTH_ALGORITHMS") or list(ASYMMETRIC_ALGORITHMS)
        return JWTVerifier(
            issuer=values["APTK_AUTH_ISSUER"],
            audience=string_list(config, "APTK_AUTH_AUDIENCE"),
            jwks_uri=values["APTK_AUTH_JWKS_URI"] or None,
            algorithms=algorithms,
            leeway=number(config, "APTK_AUTH_LEEWAY", 30.0),
            groups_claim=values["APTK_AUTH_GROUPS_CLAIM"] or "groups",
            require_typ=flag(config, "APTK_AUTH_REQUIRE_TYP", True),
            timeout=timeout,
        )
    if kind == "introspection":
        from .introspection import IntrospectionVerifier

        return IntrospectionVerifier(
            client_id=values["APTK_AUTH_CLIENT_ID"],
            client_secret=values["APTK_AUTH_CLIENT_SECRET"],
            introspection_endpoint=values["APTK_AUTH_INTROSPECTION_URL"] or None,
            issuer=values["APTK_AUTH_ISSUER"] or None,
            audience=string_list(config, "APTK_AUTH_AUDIENCE") or None,
            groups_claim=values["APTK_AUTH_GROUPS_CLAIM"] or "groups",
            timeout=timeout,
            cache_seconds=number(config, "APTK_AUTH_CACHE_SECONDS", DEFAULT_CACHE_SECONDS),
        )
    from .globus import GlobusAuthVerifier

    return GlobusAuthVerifier(
        client_id=values["APTK_AUTH_CLIENT_ID"],
        client_secret=values["APTK_AUTH_CLIENT_SECRET"],
        audience=values["APTK_AUTH_AUDIENCE"] or None,
        timeout=timeout,
        cache_seconds=number(config, "APTK_AUTH_CACHE_SECONDS", DEFAULT_CACHE_SECONDS),
    )
