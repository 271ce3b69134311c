"""The forms provider's settings, read as every setting is (``toolkit.settings.setting``)."""

from __future__ import annotations

from typing import Any, Mapping

from toolkit.errors import ConfigurationError
from toolkit.settings import setting

SETTINGS = (
    "APTK_FORMS_URL",
    "APTK_FORMS_SECRET_KEY",
    "APTK_FORMS_SIGN_IN",
    "APTK_FORMS_OIDC_ISSUER",
    "APTK_FORMS_OIDC_CLIENT_ID",
    "APTK_FORMS_OIDC_CLIENT_SECRET",
    "APTK_FORMS_OIDC_SCOPE",
)
"""Every setting this provider reads (registered with the toolkit, so that a misspelt one stops start-up)."""

SIGN_IN_MODES = ("link", "oidc")


def sign_in_mode(config: Mapping[str, Any]) -> str:
    """``link`` (signed links, the default under dev tokens) or ``oidc`` (sign-in at the deployment's issuer)."""
    mode = setting(config, "APTK_FORMS_SIGN_IN")
    if mode is None:
        return "link" if setting(config, "APTK_AUTH", "dev") == "dev" else "oidc"
    if mode not in SIGN_IN_MODES:
        raise ConfigurationError(f"APTK_FORMS_SIGN_IN must be 'link' or 'oidc', not {mode!r}")
    return str(mode)
