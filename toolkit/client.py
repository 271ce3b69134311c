"""An HTTP client for any Action Provider (this toolkit's or anyone's)."""

from __future__ import annotations

import time
import uuid
from typing import Any, Iterable

import requests

from .errors import ToolkitError

COMPLETED = ("SUCCEEDED", "FAILED")


class ClientError(ToolkitError):
    """The provider answered with an error; ``status`` is the HTTP status, ``code`` the wire code."""

    def __init__(self, status: int, code: str, description: str) -> None:
        super().__init__(f"{status} {code}: {description}")
        self.status = status
        self.code = code
        self.description = description


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
        response = self.session.request(method, self.url + path, timeout=self.timeout, **kwargs)
        try:
            document = response.json()
        except ValueError:
            document = None
        if response.status_code >= 400:
            if isinstance(document, dict):
                raise ClientError(
                    response.status_code, str(document.get("code")), str(document.get("description"))
                )
            raise ClientError(response.status_code, "HTTPError", response.text[:200])
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

    def actions(self, *, status: Iterable[str] = (), roles: Iterable[str] = ()) -> list[dict[str, Any]]:
        params = {k: ",".join(v) for k, v in (("status", status), ("roles", roles)) if v}
        return self._call("GET", "/actions", params=params)

    def wait(
        self,
        action_id: str,
        *,
        timeout: float = 300,
        initial_interval: float = 0.1,
        max_interval: float = 10,
        until: Iterable[str] = COMPLETED,
    ) -> dict[str, Any]:
        """Poll ``/status`` with exponential backoff until the status is in ``until``; TimeoutError after ``timeout``."""
        wanted = set(until)
        give_up = time.monotonic() + timeout
        interval = initial_interval
        while True:
            status = self.status(action_id)
            if status["status"] in wanted:
                return status
            remaining = give_up - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"action {action_id} still {status['status']} after {timeout} s")
            time.sleep(min(interval, remaining))
            interval = min(interval * 2, max_interval)
