"""What the forms provider signs: respondents' links, its session cookies and its CSRF tokens.

One secret signs all three, each with a salt of its own so that no signed value can stand for another kind. The
secret is ``APTK_FORMS_SECRET_KEY`` or, by default, a random key kept (0600) in the data directory, which every
worker and every restart of one host shares; several hosts need the setting.
"""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path
from typing import Any, Mapping

from itsdangerous import BadSignature, URLSafeSerializer, URLSafeTimedSerializer

from toolkit.settings import setting

KEY_FILE = "forms-secret-key"
CSRF_MAX_AGE = 24 * 3600


class Signer:
    def __init__(self, secret: str | bytes) -> None:
        self._links = URLSafeSerializer(secret, salt="aptk-forms-link")
        self._sessions = URLSafeSerializer(secret, salt="aptk-forms-session")
        self._csrf = URLSafeTimedSerializer(secret, salt="aptk-forms-csrf")
        self._state = URLSafeTimedSerializer(secret, salt="aptk-forms-oidc-state")

    @classmethod
    def for_config(cls, config: Mapping[str, Any]) -> "Signer":
        secret = setting(config, "APTK_FORMS_SECRET_KEY")
        if not secret:
            data_dir = config.get("APTK_DATA_DIR")
            if not data_dir:
                raise RuntimeError("the toolkit sets APTK_DATA_DIR before any request")
            secret = _key_in(Path(data_dir))
        return _cached(secret)

    # --- respondents' links: one form, one principal, until the form closes -------------------------------

    def link(self, action_id: str, principal: str, expires_at: float) -> str:
        return self._links.dumps({"a": action_id, "r": principal, "e": int(expires_at) + 1})

    def read_link(self, token: str, action_id: str, now: float | None = None) -> str | None:
        """The principal a link names, if it is genuine, for this form, and not expired."""
        try:
            data = self._links.loads(token)
        except BadSignature:
            return None
        if not isinstance(data, dict) or data.get("a") != action_id or not isinstance(data.get("r"), str):
            return None
        if not isinstance(data.get("e"), int) or data["e"] <= (time.time() if now is None else now):
            return None
        return data["r"]

    # --- sessions --------------------------------------------------------------------------------------------

    def session(self, principals: list[str], name: str, expires_at: float, action_id: str | None = None) -> str:
        """A session for ``principals``; with ``action_id``, one that holds for that form only (a link's)."""
        data = {"p": principals, "n": name, "e": int(expires_at), "c": secrets.token_urlsafe(16)}
        if action_id is not None:
            data["a"] = action_id
        return self._sessions.dumps(data)

    def read_session(self, value: str | None) -> dict[str, Any] | None:
        if not value:
            return None
        try:
            data = self._sessions.loads(value)
        except BadSignature:
            return None
        if not isinstance(data, dict) or not isinstance(data.get("e"), int) or data["e"] <= time.time():
            return None
        return data

    # --- CSRF: a token bound to the session's nonce and the form --------------------------------------------

    def csrf(self, session: Mapping[str, Any], action_id: str) -> str:
        return self._csrf.dumps([session["c"], action_id])

    def check_csrf(self, token: str | None, session: Mapping[str, Any] | None, action_id: str) -> bool:
        if not token or session is None:
            return False
        try:
            value = self._csrf.loads(token, max_age=CSRF_MAX_AGE)
        except BadSignature:
            return False
        return value == [session["c"], action_id]

    # --- the OIDC sign-in's state, nonce and PKCE verifier, kept in a cookie during the round trip ----------

    def state(self, data: dict[str, Any]) -> str:
        return self._state.dumps(data)

    def read_state(self, value: str | None, max_age: int = 600) -> dict[str, Any] | None:
        if not value:
            return None
        try:
            data = self._state.loads(value, max_age=max_age)
        except BadSignature:
            return None
        return data if isinstance(data, dict) else None


_signers: dict[str, Signer] = {}


def _cached(secret: str) -> Signer:
    signer = _signers.get(secret)
    if signer is None:
        signer = _signers[secret] = Signer(secret)
    return signer


def _key_in(data_dir: Path) -> str:
    path = data_dir / KEY_FILE
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    data_dir.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(48)
    temporary = data_dir / f".{KEY_FILE}.{os.getpid()}"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(key)
    try:
        os.link(temporary, path)  # the first process to link wins; every other one reads its key
    except FileExistsError:
        pass
    finally:
        temporary.unlink()
    return path.read_text().strip()
