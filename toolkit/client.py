"""An HTTP client for any Action Provider (this toolkit's or anyone's)."""

from __future__ import annotations

import time
import uuid
from typing import Any, Callable, Iterable, Iterator

import requests

from .errors import ToolkitError

COMPLETED = ("SUCCEEDED", "FAILED")


class ClientError(ToolkitError):
    """The provider answered with an error; ``status`` is the HTTP status, ``code`` the wire code.

    An answer that is not an action provider's JSON (an HTML error page from a wrong URL, say) has the code
    ``NotAnActionProvider``.
    """

    def __init__(self, status: int, code: str, description: str, *, retry_after: float | None = None) -> None:
        super().__init__(f"{status} {code}: {description}")
        self.status = status
        self.code = code
        self.description = description
        self.retry_after = retry_after
        """Seconds the provider asked to wait before trying again (its ``Retry-After``), if it said."""


class ProviderUnreachable(ToolkitError):
    """No answer at all: the connection was refused or timed out, or the URL cannot be requested."""


class WaitTimeout(ToolkitError, TimeoutError):
    """:meth:`ActionProviderClient.wait` gave up; ``status`` is the last status document seen."""

    def __init__(self, message: str, status: dict[str, Any]) -> None:
        super().__init__(message)
        self.status = status


def _not_json(response: requests.Response) -> str:
    kind = response.headers.get("Content-Type", "no content type").split(";")[0].strip() or "no content type"
    what = f"{response.status_code} {response.reason}".strip() if response.status_code >= 400 else "an answer"
    return (f"{response.request.method} {response.url} got {what} in {kind}, not an action provider's JSON; "
            "is the URL the provider's (e.g. http://127.0.0.1:5000/hello)?")


class ActionProviderClient:
    """Calls one provider at ``url`` (its prefix, e.g. ``http://127.0.0.1:5000/hello``) with a bearer token."""

    def __init__(
        self, url: str, token: str | None = None, *, session: requests.Session | None = None, timeout: float = 30
    ) -> None:
        self.url = url.rstrip("/")
        self.session = session or requests.Session()
        self.timeout = timeout
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        url = self.url + path
        try:
            response = self.session.request(method, url, timeout=self.timeout, **kwargs)
        except requests.Timeout:
            raise ProviderUnreachable(f"no answer from {self.url} within {self.timeout:g} s") from None
        except requests.ConnectionError as exc:
            raise ProviderUnreachable(f"could not connect to {self.url}: {_reason(exc)}") from None
        except (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema,
                requests.exceptions.InvalidSchema) as exc:
            raise ProviderUnreachable(f"cannot request {url!r}: {exc}") from None
        except requests.RequestException as exc:
            raise ProviderUnreachable(f"{method} {url} failed: {_reason(exc)}") from None
        try:
            document = response.json()
        except ValueError:
            document = None
        if response.status_code >= 400:
            retry_after = retry_after_seconds(response.headers.get("Retry-After"))
            if isinstance(document, dict) and "code" in document:
                raise ClientError(
                    response.status_code, str(document.get("code")), str(document.get("description", "")),
                    retry_after=retry_after,
                )
            raise ClientError(response.status_code, "NotAnActionProvider", _not_json(response),
                              retry_after=retry_after)
        if not isinstance(document, (dict, list)):
            raise ClientError(response.status_code, "NotAnActionProvider", _not_json(response))
        return document

    def introspect(self) -> dict[str, Any]:
        return self._call("GET", "/")

    def run(
        self,
        body: dict[str, Any],
        *,
        request_id: str | None = None,
        label: str | None = None,
        monitor_by: Iterable[str] | None = None,
        manage_by: Iterable[str] | None = None,
        deadline: str | None = None,
        release_after: str | None = None,
    ) -> dict[str, Any]:
        document: dict[str, Any] = {"request_id": request_id or uuid.uuid4().hex, "body": body}
        optional = {
            "label": label,
            "monitor_by": list(monitor_by) if monitor_by is not None else None,
            "manage_by": list(manage_by) if manage_by is not None else None,
            "deadline": deadline,
            "release_after": release_after,
        }
        document.update({k: v for k, v in optional.items() if v is not None})
        return self._call("POST", "/run", json=document)

    def status(self, action_id: str) -> dict[str, Any]:
        return self._call("GET", f"/{action_id}/status")

    def cancel(self, action_id: str) -> dict[str, Any]:
        return self._call("POST", f"/{action_id}/cancel")

    def release(self, action_id: str) -> dict[str, Any]:
        return self._call("POST", f"/{action_id}/release")

    def resume(self, action_id: str) -> dict[str, Any]:
        return self._call("POST", f"/{action_id}/resume")

    def log(self, action_id: str, *, limit: int = 10, marker: str | None = None) -> dict[str, Any]:
        params: dict[str, Any] = {"limit": limit}
        if marker:
            params["marker"] = marker
        return self._call("GET", f"/{action_id}/log", params=params)

    def actions_page(
        self, *, status: Iterable[str] = (), roles: Iterable[str] = (), limit: int | None = None,
        marker: str | None = None,
    ) -> dict[str, Any]:
        """One page of ``GET /actions``: ``{"actions": [...], "limit", "has_next_page", "marker"?}``.

        A provider that answers with a plain list (no pages) gets it wrapped as a single page.
        """
        params: dict[str, Any] = {k: ",".join(v) for k, v in (("status", status), ("roles", roles)) if v}
        if limit is not None:
            params["limit"] = limit
        if marker:
            params["marker"] = marker
        page = self._call("GET", "/actions", params=params)
        if isinstance(page, list):
            return {"actions": page, "limit": len(page), "has_next_page": False}
        return page

    def actions(
        self, *, status: Iterable[str] = (), roles: Iterable[str] = (), page_size: int | None = None
    ) -> Iterator[dict[str, Any]]:
        """Every action the caller may list (``status``, ``roles`` filter), oldest first, fetched page by page."""
        status, roles = list(status), list(roles)
        marker = None
        while True:
            page = self.actions_page(status=status, roles=roles, limit=page_size, marker=marker)
            yield from page["actions"]
            if not page.get("has_next_page") or not page.get("marker"):
                return
            marker = page["marker"]

    def wait(
        self,
        action_id: str,
        *,
        timeout: float | None = 300,
        initial_interval: float = 0.1,
        max_interval: float = 10,
        until: Iterable[str] = COMPLETED,
        progress: Callable[[dict[str, Any], float], None] | None = None,
    ) -> dict[str, Any]:
        """Poll ``/status`` with exponential backoff until the status is in ``until``.

        ``until=(*COMPLETED, "INACTIVE")`` also stops at a pause (which only someone's resume ends).
        ``progress(status, elapsed_seconds)`` is called after every poll that does not end the wait.
        After ``timeout`` seconds (``None``: no limit) raises :class:`WaitTimeout` (a ``TimeoutError``) carrying
        the last status.
        """
        wanted = set(until)
        started = time.monotonic()
        interval = initial_interval
        while True:
            status = self.status(action_id)
            if status.get("status") in wanted:
                return status
            elapsed = time.monotonic() - started
            if progress is not None:
                progress(status, elapsed)
            remaining = None if timeout is None else timeout - elapsed
            if remaining is not None and remaining <= 0:
                raise WaitTimeout(f"action {action_id} still {status.get('status')} after {timeout:g} s", status)
            time.sleep(interval if remaining is None else min(interval, remaining))
            interval = min(interval * 2, max_interval)


def retry_after_seconds(value: str | None) -> float | None:
    """A ``Retry-After`` header (seconds, or an HTTP date) as seconds from now; None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None or when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - time.time())


def _reason(exc: BaseException) -> str:
    """The innermost cause of a requests error, without urllib3's pool and retry wrapping."""
    seen = exc
    for _ in range(20):  # causes may form a cycle
        inner = seen.__cause__ or seen.__context__ or (seen.args[0] if seen.args and
                                                       isinstance(seen.args[0], BaseException) else None)
        if inner is None or inner is seen:
            break
        seen = inner
        reason = getattr(seen, "reason", None)
        if isinstance(reason, BaseException):
            seen = reason
    text = str(seen)
    if isinstance(seen, ConnectionRefusedError) or "Connection refused" in text:
        return "connection refused"
    if "Name or service not known" in text or "nodename nor servname" in text or "getaddrinfo" in text:
        return "unknown host"
    # urllib3 writes "<object at 0x...>: Failed to establish ...: [Errno 111] ..."; keep the readable end.
    return text.rsplit(">: ", 1)[-1]
