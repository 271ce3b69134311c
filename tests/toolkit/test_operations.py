"""/healthz checks added by other components, the settings of metrics and logs, and the JSON log line."""

from __future__ import annotations

import json
import logging

import pytest

from providers.hello import provider as hello
from toolkit import ConfigurationError
from toolkit.health import add_health_check
from toolkit.logs import ActionFilter, JsonFormatter, action_context
from toolkit.testing import close_app, provider_app


@pytest.fixture
def app(tmp_path):
    app, _ = provider_app(hello, tmp_path / "data", prefix="/hello")
    yield app
    close_app(app)


def test_a_check_added_by_a_component_is_run_and_named_by_healthz(app):
    state = {"up": True}

    def queue_check() -> None:
        if not state["up"]:
            raise ConnectionError("redis://secret-host:6379 refused")

    add_health_check(app, "queue", queue_check)
    client = app.test_client()

    up = client.get("/healthz")
    state["up"] = False
    down = client.get("/healthz")

    assert (up.status_code, up.get_json()) == (200, {"status": "ok", "checks": {"store": "ok", "queue": "ok"}})
    assert (down.status_code, down.get_json()) == (
        503, {"status": "unavailable", "checks": {"store": "ok", "queue": "failing"}})
    assert b"secret-host" not in down.data


def test_a_check_that_hangs_fails_within_aptk_health_timeout(tmp_path):
    import threading
    import time

    app, _ = provider_app(hello, tmp_path / "data", prefix="/hello", config={"APTK_HEALTH_TIMEOUT": "0.3"})
    release = threading.Event()
    try:
        add_health_check(app, "hung", lambda: release.wait(30))
        started = time.monotonic()
        answer = app.test_client().get("/healthz")
        took = time.monotonic() - started
        assert (answer.status_code, answer.get_json()["checks"]) == (503, {"store": "ok", "hung": "failing"})
        assert took < 5  # not the 30 s the check would have taken
    finally:
        release.set()
        close_app(app)


@pytest.mark.parametrize("value", ["0", "-1", "soon"])
def test_a_bad_aptk_health_timeout_stops_start_up(tmp_path, value):
    with pytest.raises(ConfigurationError, match="APTK_HEALTH_TIMEOUT"):
        provider_app(hello, tmp_path / "data", prefix="/hello", config={"APTK_HEALTH_TIMEOUT": value})


def test_an_app_that_routes_healthz_itself_keeps_its_own(app):
    app.add_url_rule("/healthz", "own_health", lambda: {"mine": True}, methods=["GET"])
    answer = app.test_client().get("/healthz")
    assert (answer.status_code, answer.get_json()) == (200, {"mine": True})


def test_a_check_name_cannot_be_registered_twice(app):
    add_health_check(app, "queue", lambda: None)
    with pytest.raises(ValueError, match="queue"):
        add_health_check(app, "queue", lambda: None)


def test_metrics_are_not_routed_unless_turned_on(tmp_path):
    off, _ = provider_app(hello, tmp_path / "off", prefix="/hello")
    on, _ = provider_app(hello, tmp_path / "on", prefix="/hello", config={"APTK_METRICS": "true"})
    try:
        assert off.test_client().get("/metrics").status_code == 404
        assert on.test_client().get("/metrics", environ_base={"REMOTE_ADDR": "127.0.0.1"}).status_code == 200
        assert on.test_client().get("/metrics", environ_base={"REMOTE_ADDR": "192.0.2.7"}).status_code == 403
    finally:
        close_app(off)
        close_app(on)


def test_an_unknown_log_format_stops_start_up_naming_the_setting(tmp_path):
    with pytest.raises(ConfigurationError, match="APTK_LOG_FORMAT must be one of text, json, not 'xml'"):
        provider_app(hello, tmp_path / "data", prefix="/hello", config={"APTK_LOG_FORMAT": "xml"})


def test_a_json_line_carries_the_action_and_masks_tokens():
    record = logging.LogRecord("chatty", logging.WARNING, __file__, 1,
                               "calling with Authorization: Bearer abc.def-123 and %s", ("eyJhbGciOiJFUzI1NiJ9."
                               "eyJzdWIiOiJ4In0.c2lnbmF0dXJlLXZhbHVl",), None)
    with action_context("0123456789abcdef0123456789abcdef"):
        ActionFilter().filter(record)
    line = json.loads(JsonFormatter().format(record))

    assert line["action_id"] == "0123456789abcdef0123456789abcdef"
    assert line["message"] == "calling with Authorization: Bearer [redacted] and [redacted]"
    assert (line["level"], line["logger"]) == ("WARNING", "chatty")


def recoveries(app, outcome: str) -> float:
    page = app.test_client().get("/metrics", environ_base={"REMOTE_ADDR": "127.0.0.1"}).get_data(as_text=True)
    prefix = f'aptk_recoveries_total{{outcome="{outcome}",provider="quick"}} '
    found = [line[len(prefix):] for line in page.splitlines() if line.startswith(prefix)]
    return float(found[0]) if found else 0.0


@pytest.mark.parametrize("recovery, outcome", [("rerun", "rerun"), ("fail", "failed")])
def test_an_action_of_a_dead_process_is_counted_as_a_recovery(tmp_path, clock, recovery, outcome):
    from tests.toolkit.test_lifecycle import Quick, orphan
    from toolkit import get_toolkit
    from toolkit.testing import provider_client

    quick = Quick(recovery=recovery)
    client = provider_client(quick.provider, tmp_path, clock=clock, config={"APTK_METRICS": "true"})
    try:
        before = recoveries(client.app, outcome)
        orphan(client, clock, quick.provider)
        get_toolkit(client.app).runtime.sweep()
        assert recoveries(client.app, outcome) == before + 1
    finally:
        close_app(client.app)
