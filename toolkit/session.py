"""Acting as a person: OAuth2 sign-in for a native app (RFC 8252), stored sessions, and their refresh.

``aptk login`` runs the authorization-code flow with PKCE as a public client: the authorization server's page opens
in the person's browser and comes back to a listener on a free loopback port (or, without a browser, the person
pastes the address the browser was sent to). The session is then stored, one file per issuer, in the user's
config directory:

- the file is created with mode 0600 and only ever replaced whole (written aside, then renamed), so no one else
  can read it and no reader ever sees half of it;
- an access token is refreshed with the refresh token before it expires; the refresh is done under a lock, so two
  ``aptk`` commands at once never both spend a (rotating) refresh token;
- a refresh token the server no longer honours ends the session: its file is deleted and the error says which
  ``aptk login`` to run.

A provider is called with the access token for the scope its description names (``globus_auth_scope``). An
authorization server that issues one token per API (RFC 8707 resource servers) is asked for that scope alone with
the refresh token (RFC 6749 section 6). Tokens are never printed, logged or put in error messages.

The tree::

    ToolkitError
    └── SessionError           a sign-in, refresh or revocation went wrong (the message says what to do)
        └── LoginRequired      no stored session may call this provider: the message names the ``aptk login``
"""

from __future__ import annotations

import contextlib
import hashlib
import html
import http.server
import json
import os
import secrets
import shlex
import sys
import tempfile
import threading
import time
import webbrowser
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import parse_qs, urlsplit

import requests

from .errors import ToolkitError

DEFAULT_SCOPES = ("openid", "profile", "offline_access")
"""Asked at every sign-in besides the providers' scopes: who the person is, and a refresh token."""
IDENTITY_SCOPES = frozenset({"openid", "profile", "email", "offline_access"})
PROTOCOL_CLAIMS = frozenset({"iss", "aud", "azp", "exp", "iat", "nbf", "auth_time", "nonce", "at_hash", "c_hash",
                             "s_hash", "sid", "jti"})
"""ID token claims about the token itself, not the person: left out of what ``aptk whoami`` shows."""
REFRESH_MARGIN = 60.0
"""Seconds before expiry at which a token is refreshed (at most a quarter of its lifetime)."""
LOGIN_TIMEOUT = 300.0
HTTP_TIMEOUT = 30.0


class SessionError(ToolkitError):
    """A sign-in, refresh, revocation or stored session went wrong; the message says what to do."""


class LoginRequired(SessionError):
    """No stored session has consent for the scope a provider needs; ``command`` is the ``aptk login`` to run."""

    def __init__(self, message: str, command: str) -> None:
        super().__init__(f"{message}; run: {command}")
        self.command = command


def default_directory() -> Path:
    """Where sessions are stored: ``sessions`` in the user's config directory for aptk (platformdirs)."""
    import platformdirs

    return Path(platformdirs.user_config_dir("aptk", appauthor=False)) / "sessions"


def _scopes(text: str | None) -> list[str]:
    return [s for s in (text or "").split() if s]


def login_command(issuer: str | None, client_id: str | None, *, scopes: tuple[str, ...] = (),
                  providers: tuple[str, ...] = ()) -> str:
    """The ``aptk login`` command line that asks for these scopes (or providers' scopes)."""
    words = ["aptk", "login"]
    words += ["--issuer", issuer] if issuer else ["--issuer", "<issuer URL>"]
    words += ["--client-id", client_id] if client_id else ["--client-id", "<client id>"]
    for provider in providers:
        words += ["--provider", provider]
    for scope in scopes:
        words += ["--scope", scope]
    return " ".join(w if w.startswith("<") else shlex.quote(w) for w in words)


# --- storage ---------------------------------------------------------------------------------------------------


class SessionStore:
    """One JSON file per issuer in ``directory`` (default: :func:`default_directory`), readable by the user alone.
    ``clock`` (seconds since the epoch) decides when a token is due for refresh."""

    def __init__(self, directory: Path | str | None = None, *, clock: Callable[[], float] = time.time) -> None:
        self.directory = Path(directory) if directory is not None else default_directory()
        self.clock = clock

    def path(self, issuer: str) -> Path:
        digest = hashlib.sha256(issuer.rstrip("/").encode()).hexdigest()[:20]
        return self.directory / f"{digest}.json"

    def load(self, issuer: str) -> Session | None:
        data = self._read(self.path(issuer))
        return Session(self, data) if data is not None else None

    def sessions(self) -> list[Session]:
        """Every stored session, by issuer."""
        if not self.directory.is_dir():
            return []
        found = [self._read(p) for p in sorted(self.directory.glob("*.json"))]
        return sorted((Session(self, d) for d in found if d is not None), key=lambda s: s.issuer)

    def find(self, issuer: str | None = None) -> Session:
        """The session of ``issuer``, or the only stored one when ``issuer`` is None."""
        if issuer is not None:
            session = self.load(issuer)
            if session is None:
                raise LoginRequired(f"not logged in at {issuer}", login_command(issuer, None))
            return session
        stored = self.sessions()
        if not stored:
            raise LoginRequired("not logged in", login_command(None, None))
        if len(stored) > 1:
            raise SessionError("logged in at several issuers (" + ", ".join(s.issuer for s in stored)
                               + "); name one with --issuer")
        return stored[0]

    def save(self, data: dict[str, Any]) -> None:
        """Replace the issuer's file whole: written to a 0600 file beside it, flushed, then renamed over it."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        target = self.path(data["issuer"])
        fd, temporary = tempfile.mkstemp(dir=self.directory, prefix=".session-", suffix=".tmp")  # mode 0600
        try:
            with os.fdopen(fd, "w") as handle:
                json.dump(data, handle, indent=1, sort_keys=True)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise

    def delete(self, issuer: str) -> bool:
        try:
            self.path(issuer).unlink()
        except FileNotFoundError:
            return False
        return True

    @contextlib.contextmanager
    def lock(self, issuer: str) -> Iterator[None]:
        """Exclusive between processes for one issuer, so a refresh token is spent once."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = self.path(issuer).with_suffix(".lock")
        try:
            import fcntl
        except ImportError:  # Windows: no cross-process lock
            yield
            return
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(descriptor, fcntl.LOCK_UN)
            os.close(descriptor)

    @staticmethod
    def _read(path: Path) -> dict[str, Any] | None:
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise SessionError(f"the stored session {path} cannot be read ({exc}); delete it and log in again") \
                from None
        if not isinstance(data, dict) or not isinstance(data.get("issuer"), str):
            raise SessionError(f"the stored session {path} is not a session; delete it and log in again")
        return data


# --- a stored session ------------------------------------------------------------------------------------------


class Session:
    """A person's stored sign-in at one issuer: access tokens by scope, the refresh token, the identity."""

    def __init__(self, store: SessionStore, data: dict[str, Any]) -> None:
        self.store = store
        self.data = data

    @property
    def issuer(self) -> str:
        return str(self.data["issuer"])

    @property
    def client_id(self) -> str:
        return str(self.data["client_id"])

    @property
    def scopes(self) -> list[str]:
        """The scopes the person consented to at sign-in."""
        return list(self.data.get("scopes") or [])

    def relogin(self, *scopes: str) -> str:
        wanted = [s for s in dict.fromkeys([*self.scopes, *scopes]) if s not in IDENTITY_SCOPES]
        return login_command(self.issuer, self.client_id, scopes=tuple(wanted))

    def access_token(self, scope: str) -> str:
        """A valid access token for ``scope``, refreshed (and the file rewritten) when it is about to expire."""
        if scope not in self.scopes:
            raise LoginRequired(f"the session at {self.issuer} has no consent for scope {scope}",
                                self.relogin(scope))
        fresh = self._usable(self.data, scope, now=self.store.clock())
        if fresh is not None:
            return fresh
        with self.store.lock(self.issuer):
            current = self.store.load(self.issuer)
            if current is None:
                raise LoginRequired(f"the session at {self.issuer} was ended", self.relogin(scope))
            self.data = current.data
            fresh = self._usable(self.data, scope, now=self.store.clock())
            if fresh is not None:
                return fresh
            self._refresh(scope)
        token = self._usable(self.data, scope, now=self.store.clock(), margin=False)
        if token is None:
            raise SessionError(f"{self.issuer} answered the refresh for {scope} with a token that has expired")
        return token

    @staticmethod
    def _usable(data: dict[str, Any], scope: str, *, now: float, margin: bool = True) -> str | None:
        for entry in data.get("tokens") or []:
            if scope not in _scopes(entry.get("scope")):
                continue
            if entry.get("sign_in") and data.get("refresh_token"):
                continue  # the sign-in's own token may be for the identity API only: ask for one per scope
            expires, issued = entry.get("expires_at"), entry.get("issued_at", now)
            if expires is None:
                return str(entry["access_token"])
            lead = min(REFRESH_MARGIN, max(0.0, (expires - issued) / 4)) if margin else 0.0
            if expires - now > lead:
                return str(entry["access_token"])
        return None

    def _refresh(self, scope: str) -> None:
        """Refresh the token for ``scope`` and store the result; a refused refresh token ends the session."""
        if not self.data.get("refresh_token"):
            raise LoginRequired(f"the token for {scope} at {self.issuer} expired and there is no refresh token",
                                self.relogin())
        try:
            self._refresh_unsaved(scope)
        except _Refused as exc:
            if exc.error in ("invalid_grant", "invalid_client", "unauthorized_client"):
                self.store.delete(self.issuer)
                raise LoginRequired(f"the session at {self.issuer} has ended (the refresh was refused: "
                                    f"{exc.reason}); it was removed", self.relogin()) from None
            raise SessionError(f"{self.issuer} refused to refresh the token for {scope}: {exc.reason}") from None
        except SessionError:
            self.store.save(self.data)  # a rotated refresh token must not be lost
            raise
        self.store.save(self.data)

    def _refresh_unsaved(self, scope: str) -> None:
        """A token for ``scope`` through the refresh token (RFC 6749 section 6), folded into ``data``."""
        from authlib.integrations.base_client.errors import OAuthError

        client = _oauth_client(self.client_id, scope=scope)
        try:
            answer = client.refresh_token(self.data["token_endpoint"], refresh_token=self.data["refresh_token"])
        except OAuthError as exc:
            raise _Refused(exc) from None
        except requests.RequestException as exc:
            raise SessionError(f"could not reach {self.issuer} for a token: {type(exc).__name__}") from None
        self.data = _merge(self.data, dict(answer), now=self.store.clock(), wanted=scope)
        if answer.get("scope") is not None and scope not in _scopes(answer.get("scope")):
            raise LoginRequired(f"{self.issuer} did not grant scope {scope}", self.relogin(scope))

    def logout_unsaved(self) -> None:
        """A sign-in that failed half way: revoke what it got (nothing was stored)."""
        with contextlib.suppress(SessionError):
            self._revoke()

    def _revoke(self) -> list[str]:
        problems: list[str] = []
        endpoint = self.data.get("revocation_endpoint")
        if not endpoint:
            return [f"{self.issuer} publishes no revocation endpoint; the tokens stay valid until they expire"]
        client = _oauth_client(self.client_id)
        tokens = [(self.data.get("refresh_token"), "refresh_token")]
        tokens += [(t.get("access_token"), "access_token") for t in self.data.get("tokens") or []]
        for value, hint in tokens:
            if not value:
                continue
            try:
                response = client.revoke_token(endpoint, token=value, token_type_hint=hint)
            except requests.RequestException as exc:
                problems.append(f"could not reach {endpoint}: {type(exc).__name__}")
                break
            if response.status_code != 200:
                problems.append(f"{endpoint} answered {response.status_code} to the revocation of a {hint}")
        return problems

    def identity(self) -> dict[str, Any]:
        """The person's claims: from the ID token, verified against the issuer's keys (its signature, issuer and
        audience; it is the identity as of sign-in), or else from the userinfo endpoint."""
        id_token = self.data.get("id_token")
        if id_token:
            return verify_id_token(id_token, issuer=self.issuer, client_id=self.client_id,
                                   jwks_uri=self.data["jwks_uri"], check_expiry=False)
        endpoint = self.data.get("userinfo_endpoint")
        entry = next((t for t in self.data.get("tokens") or [] if "openid" in _scopes(t.get("scope"))), None)
        if not endpoint or entry is None:
            return {}
        with _http() as http:
            response = http.get(endpoint, headers={"Authorization": f"Bearer {entry['access_token']}"},
                                timeout=HTTP_TIMEOUT)
        return response.json() if response.status_code == 200 else {}

    def describe(self) -> dict[str, Any]:
        """What ``aptk whoami`` shows: identity, issuer, client, scopes and each token's expiry; never a token."""
        identity = {k: v for k, v in self.identity().items() if k not in PROTOCOL_CLAIMS}
        tokens = []
        for entry in self.data.get("tokens") or []:
            shown: dict[str, Any] = {"scope": entry.get("scope", "")}
            if entry.get("sign_in"):
                shown["sign_in"] = True  # the token the sign-in itself returned
            if entry.get("expires_at") is not None:
                shown["expires_at"] = _iso(entry["expires_at"])
                shown["expired"] = entry["expires_at"] <= self.store.clock()
            tokens.append(shown)
        document = {
            "issuer": self.issuer,
            "client_id": self.client_id,
            "sub": identity.get("sub"),
            "name": identity.get("name"),
            "email": identity.get("email"),
            "preferred_username": identity.get("preferred_username"),
            "identity": identity,
            "scopes": self.scopes,
            "tokens": tokens,
            "refreshable": bool(self.data.get("refresh_token")),
            "logged_in_at": _iso(self.data["logged_in_at"]) if self.data.get("logged_in_at") else None,
        }
        return {k: v for k, v in document.items() if v is not None}

    def logout(self) -> list[str]:
        """Revoke the refresh and access tokens at the server (RFC 7009), then delete the session whatever the
        server said. Returns the problems met (empty when every token was revoked)."""
        problems = self._revoke()
        self.store.delete(self.issuer)
        return problems


class _Refused(SessionError):
    """The authorization server answered a token request with an OAuth error."""

    def __init__(self, exc: Any) -> None:
        self.error = str(exc.error or "")
        self.reason = _oauth_reason(exc)
        super().__init__(self.reason)


def _printable(text: str) -> str:
    """Text from the network, shown on a terminal: no control characters."""
    return "".join(c for c in text if c.isprintable())[:300]


def _iso(seconds: float) -> str:
    import datetime

    return datetime.datetime.fromtimestamp(int(seconds), datetime.timezone.utc).isoformat().replace("+00:00", "Z")


def _merge(data: dict[str, Any], answer: dict[str, Any], *, now: float, wanted: str | None = None,
           sign_in: bool = False) -> dict[str, Any]:
    """The session with a token response folded in (the new token replaces those of the same scope)."""
    data = dict(data)
    scope = answer.get("scope")
    if scope is None:
        scope = wanted if wanted is not None else " ".join(data.get("scopes") or [])
    entry: dict[str, Any] = {"access_token": answer["access_token"], "scope": scope, "issued_at": int(now),
                             "token_type": answer.get("token_type", "Bearer")}
    if sign_in:
        entry["sign_in"] = True
    if answer.get("expires_in") is not None:
        entry["expires_at"] = int(now + float(answer["expires_in"]))
    elif answer.get("expires_at") is not None:
        entry["expires_at"] = int(answer["expires_at"])
    kept = [t for t in data.get("tokens") or []
            if set(_scopes(t.get("scope"))) != set(_scopes(scope)) or bool(t.get("sign_in")) != sign_in]
    data["tokens"] = [*kept, entry]
    if answer.get("refresh_token"):
        data["refresh_token"] = answer["refresh_token"]
    if answer.get("id_token") and "id_token" not in data:
        data["id_token"] = answer["id_token"]
    return data


# --- protocol helpers ------------------------------------------------------------------------------------------


def _http() -> requests.Session:
    return requests.Session()


def _oauth_client(client_id: str, **kwargs: Any) -> Any:
    from authlib.integrations.requests_client import OAuth2Session

    return OAuth2Session(client_id, token_endpoint_auth_method="none", revocation_endpoint_auth_method="none",
                         timeout=HTTP_TIMEOUT, **kwargs)


def _oauth_reason(exc: Any) -> str:
    return ": ".join(str(p) for p in (exc.error, exc.description) if p) or type(exc).__name__


def discover(issuer: str) -> dict[str, Any]:
    """The issuer's metadata; it must offer the endpoints a native sign-in needs."""
    from .auth.base import Unreachable, discover as fetch

    with _http() as http:
        try:
            metadata = fetch(http, issuer, timeout=HTTP_TIMEOUT)
        except Unreachable as exc:
            raise SessionError(f"cannot use {issuer} as an authorization server: {exc}") from None
    missing = [k for k in ("authorization_endpoint", "token_endpoint") if not metadata.get(k)]
    if missing:
        raise SessionError(f"{issuer} publishes no {' or '.join(missing)}; it cannot sign people in")
    methods = metadata.get("code_challenge_methods_supported")
    if methods is not None and "S256" not in methods:
        raise SessionError(f"{issuer} does not support PKCE with S256, which a native sign-in needs")
    return metadata


def verify_id_token(id_token: str, *, issuer: str, client_id: str, jwks_uri: str, nonce: str | None = None,
                    check_expiry: bool = True) -> dict[str, Any]:
    """The claims of an ID token signed by one of the issuer's keys, for this client (and nonce)."""
    import jwt

    try:
        with _http() as http:
            keys = jwt.PyJWKSet.from_dict(http.get(jwks_uri, timeout=HTTP_TIMEOUT).json())
        kid = jwt.get_unverified_header(id_token).get("kid")
        key = next((k for k in keys.keys if kid is None or k.key_id == kid), None)
        if key is None:
            raise SessionError(f"the ID token is signed by a key {issuer} does not publish")
        claims = jwt.decode(id_token, key=key, algorithms=["RS256", "RS384", "RS512", "PS256", "ES256", "ES384",
                                                           "EdDSA"],
                            audience=client_id, issuer=issuer, options={"verify_exp": check_expiry})
    except (requests.RequestException, ValueError, jwt.PyJWTError) as exc:
        raise SessionError(f"the ID token from {issuer} does not verify: {exc}") from None
    if nonce is not None and claims.get("nonce") != nonce:
        raise SessionError(f"the ID token from {issuer} is not for this sign-in (nonce mismatch)")
    return claims


# --- sign-in ---------------------------------------------------------------------------------------------------


def can_open_browser() -> bool:
    """Whether a graphical browser is likely: a display on Linux and BSDs, always on macOS and Windows."""
    if os.environ.get("BROWSER"):
        return True
    if sys.platform.startswith(("darwin", "win")):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


class _Callback(http.server.BaseHTTPRequestHandler):
    """Answers the browser's return to the loopback redirect URI; any other path is a 404."""

    server: _CallbackServer

    def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
        if urlsplit(self.path).path != "/":
            self.send_error(404)
            return
        port = self.server.server_address[1]
        outcome = self.server.expect(f"http://127.0.0.1:{port}{self.path}")
        body = (f"<!doctype html><title>aptk login</title><p>{html.escape(outcome)}</p>"
                "<p>You may close this window and return to the terminal.</p>").encode()
        self.send_response(200 if outcome.startswith("Signed in") else 400)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # the request line holds the code: never log it
        pass


class _CallbackServer(http.server.HTTPServer):
    def __init__(self, check: Callable[[str], str]) -> None:
        super().__init__(("127.0.0.1", 0), _Callback)
        self.check = check
        self.answer: str | None = None
        self.problem: SessionError | None = None
        self.done = threading.Event()

    def expect(self, url: str) -> str:
        if self.done.is_set():
            return "This sign-in is already over."
        try:
            message = self.check(url)
        except SessionError as exc:
            self.problem = exc
            self.done.set()
            return f"Sign-in failed: {exc}"
        self.answer = url
        self.done.set()
        return message


class Login:
    """One sign-in attempt: the authorization URL and the checks its answer must pass.

    ``Login(issuer, client_id, scopes).run(...)`` does everything; the steps are separate so that tests and other
    front ends can drive them.
    """

    def __init__(self, issuer: str, client_id: str, scopes: list[str], *, store: SessionStore | None = None,
                 metadata: dict[str, Any] | None = None) -> None:
        self.issuer = issuer.rstrip("/")
        self.client_id = client_id
        self.scopes = list(dict.fromkeys([*DEFAULT_SCOPES, *scopes]))
        self.store = store or SessionStore()
        self.metadata = metadata or discover(self.issuer)
        self.state = secrets.token_urlsafe(24)
        self.nonce = secrets.token_urlsafe(24)
        self.verifier = secrets.token_urlsafe(64)
        self.redirect_uri = ""

    def authorization_url(self, port: int) -> str:
        self.redirect_uri = f"http://127.0.0.1:{port}/"
        client = _oauth_client(self.client_id, scope=" ".join(self.scopes), redirect_uri=self.redirect_uri,
                               code_challenge_method="S256")
        url, _ = client.create_authorization_url(self.metadata["authorization_endpoint"], state=self.state,
                                                 code_verifier=self.verifier, nonce=self.nonce, prompt="consent")
        return str(url)

    def check(self, url: str) -> str:
        """Check the address the browser was sent back to; raise :class:`SessionError` if it is not this sign-in's
        answer. Never repeats the address (it holds the code)."""
        answer = urlsplit(url.strip())
        expected = urlsplit(self.redirect_uri)
        if (answer.scheme, answer.hostname, answer.port) != (expected.scheme, expected.hostname, expected.port):
            raise SessionError(f"the pasted address is not this sign-in's redirect ({self.redirect_uri}): it came "
                               "back to another address or port; nothing was stored")
        params = {k: _printable(v[0]) for k, v in parse_qs(answer.query).items()}
        if params.get("state") != self.state:
            raise SessionError("the answer does not belong to this sign-in (its state differs); nothing was "
                               "stored; run aptk login again")
        if params.get("iss") and params["iss"].rstrip("/") != self.issuer:
            raise SessionError(f"the answer comes from another issuer ({params['iss']}); nothing was stored")
        if params.get("error"):
            reason = ": ".join(p for p in (params["error"], params.get("error_description")) if p)
            raise SessionError(f"{self.issuer} refused the sign-in ({reason}); nothing was stored")
        if not params.get("code"):
            raise SessionError("the answer carries no authorization code; nothing was stored")
        return "Signed in."

    def finish(self, url: str) -> Session:
        """Exchange the answer's code for tokens, verify the ID token, get a token for every scope asked, store."""
        from authlib.integrations.base_client.errors import OAuthError

        self.check(url)
        code = parse_qs(urlsplit(url.strip()).query)["code"][0]
        client = _oauth_client(self.client_id, redirect_uri=self.redirect_uri)
        endpoint = self.metadata["token_endpoint"]
        try:
            answer = client.fetch_token(endpoint, grant_type="authorization_code", code=code,
                                        code_verifier=self.verifier)
        except OAuthError as exc:
            raise SessionError(f"{self.issuer} refused the code ({_oauth_reason(exc)}); nothing was stored") \
                from None
        except requests.RequestException as exc:
            raise SessionError(f"could not reach {endpoint}: {type(exc).__name__}; nothing was stored") from None
        data: dict[str, Any] = {
            "issuer": self.issuer, "client_id": self.client_id, "scopes": self.scopes,
            "logged_in_at": int(self.store.clock()), "tokens": [],
            **{k: self.metadata.get(k) for k in ("token_endpoint", "revocation_endpoint", "userinfo_endpoint",
                                                 "jwks_uri")},
        }
        data = _merge(data, dict(answer), now=self.store.clock(), sign_in=True)
        session = Session(self.store, data)
        try:
            if answer.get("id_token"):
                verify_id_token(answer["id_token"], issuer=self.issuer, client_id=self.client_id,
                                jwks_uri=self.metadata["jwks_uri"], nonce=self.nonce)
            # A server that issues one token per API answers the code with one of them: get the others now, so
            # that a scope refused shows at sign-in, not at the first call.
            for scope in self.scopes:
                if scope not in IDENTITY_SCOPES and session._usable(session.data, scope, now=self.store.clock()) is None:
                    if not session.data.get("refresh_token"):
                        raise SessionError(f"{self.issuer} did not grant {scope} and gave no refresh token")
                    session._refresh_unsaved(scope)
        except _Refused as exc:
            session.logout_unsaved()
            raise SessionError(f"{self.issuer} refused a token ({exc}); nothing was stored") from None
        except SessionError as exc:
            session.logout_unsaved()
            raise SessionError(f"{exc}; nothing was stored") from None
        with self.store.lock(self.issuer):
            self.store.save(session.data)
        return session

    def run(self, *, open_browser: bool = True, show: Callable[[str], None] = print,
            paste: Callable[[], str] | None = None, timeout: float = LOGIN_TIMEOUT) -> Session:
        """Sign in: with a browser, listen on a free loopback port for its return; without one (``paste`` given),
        show the URL and read back the address the browser ended on."""
        if paste is not None:
            with _free_port() as port:
                url = self.authorization_url(port)
            show(f"Open this URL in a browser and sign in:\n\n  {url}\n\n"
                 "The browser then goes to an address that starts with "
                 f"{self.redirect_uri} (the page may fail to load): paste that whole address here.")
            return self.finish(paste())
        callback = _CallbackServer(self.check)
        thread = threading.Thread(target=callback.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        thread.start()
        try:
            url = self.authorization_url(callback.server_address[1])
            opened = open_browser and webbrowser.open(url)
            show(("Your browser was opened to sign in. If it did not open, go to:" if opened
                  else "Open this URL in a browser on this machine and sign in:") + f"\n\n  {url}\n")
            if not callback.done.wait(timeout):
                raise SessionError(f"no sign-in came back within {timeout:g} s; nothing was stored")
        finally:
            callback.shutdown()
            callback.server_close()
        if callback.problem is not None:
            raise callback.problem
        assert callback.answer is not None
        return self.finish(callback.answer)


@contextlib.contextmanager
def _free_port() -> Iterator[int]:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


# --- calling providers as the person ---------------------------------------------------------------------------


def provider_scope(url: str, *, token: str | None = None) -> str:
    """The scope a provider's description names (``globus_auth_scope``), read without a token."""
    from .client import ActionProviderClient, ClientError, ProviderUnreachable

    try:
        description = ActionProviderClient(url, token).introspect()
    except ClientError as exc:
        if exc.status in (401, 403):
            raise SessionError(f"{url} shows its description only to callers with a token, so its scope is "
                               "unknown; give --token, or log in naming the scope (aptk login --scope ...)") \
                from None
        raise SessionError(f"cannot read the description of {url}: {exc}") from None
    except ProviderUnreachable as exc:
        raise SessionError(str(exc)) from None
    scope = description.get("globus_auth_scope") if isinstance(description, dict) else None
    if not isinstance(scope, str) or not scope:
        raise SessionError(f"the description of {url} names no globus_auth_scope")
    return scope


def session_for(scope: str, *, issuer: str | None = None, store: SessionStore | None = None,
                provider: str | None = None, described: bool = False) -> Session:
    """The stored session with consent for ``scope`` (at ``issuer``, if given). ``provider`` is the URL that
    needs it, ``described`` whether the scope came from its description (then the login to run names it)."""
    store = store or SessionStore()
    candidates = [store.find(issuer)] if issuer else store.sessions()
    for session in candidates:
        if scope in session.scopes:
            return session
    providers = (provider,) if provider and described else ()
    scopes = () if providers else (scope,)
    if len(candidates) == 1:
        only = candidates[0]
        command = login_command(only.issuer, only.client_id, providers=providers, scopes=scopes)
    else:
        command = login_command(issuer, None, providers=providers, scopes=scopes)
    where = f" at {issuer}" if issuer else ""
    raise LoginRequired(f"no stored session{where} has consent for scope {scope}"
                        + (f" (needed by {provider})" if provider else ""), command)


class SessionAuth(requests.auth.AuthBase):
    """requests authentication with the person's stored session: each request carries a valid access token for
    ``scope``, refreshed as it nears expiry."""

    def __init__(self, session: Session, scope: str) -> None:
        self.session = session
        self.scope = scope

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self.session.access_token(self.scope)}"
        return request


def provider_auth(url: str, *, issuer: str | None = None, scope: str | None = None,
                  store: SessionStore | None = None) -> SessionAuth:
    """Authentication for calls to the provider at ``url`` as the logged-in person."""
    described = scope is None
    scope = scope or provider_scope(url)
    return SessionAuth(session_for(scope, issuer=issuer, store=store, provider=url, described=described), scope)

