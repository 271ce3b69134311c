"""ActionProviderClient: answers that are not an action provider's, no answer at all, and waiting."""

import threading
import time

import pytest
from werkzeug.serving import make_server
from werkzeug.wrappers import Response

from providers.hello import provider as hello
from toolkit.client import ActionProviderClient, ClientError, ProviderUnreachable, WaitTimeout
from toolkit.testing import provider_client

from ..e2e.support import free_port


@pytest.fixture
def not_a_provider():
    """A web server on loopback that answers like a web site: HTML pages, a 502 from a proxy."""

    def app(environ, start_response):
        path = environ["PATH_INFO"]
        if path.startswith("/gateway"):
            response = Response("Bad Gateway\n", status=502, content_type="text/plain")
        elif path.startswith("/page"):
            response = Response("<html><body>Welcome</body></html>", content_type="text/html")
        else:
            response = Response("<html><h1>Not Found</h1></html>", status=404, content_type="text/html")
        return response(environ, start_response)

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(10)


@pytest.mark.parametrize("prefix, status", [("/nothing", 404), ("/gateway", 502), ("/page", 200)])
def test_an_answer_that_is_not_a_providers_json_is_a_client_error(not_a_provider, prefix, status):
    client = ActionProviderClient(not_a_provider + prefix, "token")
    with pytest.raises(ClientError) as error:
        client.run({"x": 1})
    assert error.value.status == status
    assert error.value.code == "NotAnActionProvider"
    assert "not an action provider's JSON" in str(error.value)
    assert "<html" not in str(error.value) and "\n" not in str(error.value)


def test_connection_refused_is_provider_unreachable():
    url = f"http://127.0.0.1:{free_port()}/hello"
    with pytest.raises(ProviderUnreachable, match=f"could not connect to {url}: connection refused"):
        ActionProviderClient(url, "token").status("x")


def test_a_silent_server_is_provider_unreachable_after_the_timeout():
    import socket

    with socket.socket() as listener:  # accepts connections (backlog) and never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/hello"
        started = time.monotonic()
        with pytest.raises(ProviderUnreachable, match=f"no answer from {url} within 0.5 s"):
            ActionProviderClient(url, "token", timeout=0.5).status("x")
        assert time.monotonic() - started < 5


def test_wait_reports_progress_and_times_out_with_the_last_status(tmp_path):
    seen = []
    with provider_client(hello, tmp_path) as client:
        action = client.run({"echo_string": "hi", "sleep_time": 3600})
        with pytest.raises(WaitTimeout) as error:
            client.wait(action["action_id"], timeout=0.6, max_interval=0.1,
                        progress=lambda status, elapsed: seen.append((status["status"], elapsed)))
        assert isinstance(error.value, TimeoutError)
        assert error.value.status["action_id"] == action["action_id"]
        assert error.value.status["status"] == "ACTIVE"
        assert len(seen) >= 3 and all(s == "ACTIVE" for s, _ in seen)
        assert [e for _, e in seen] == sorted(e for _, e in seen)


def test_wait_can_stop_at_inactive(tmp_path):
    with provider_client(hello, tmp_path) as client:
        action = client.run({"echo_string": "hi", "require_resume": True})
        started = time.monotonic()
        status = client.wait(action["action_id"], until=["SUCCEEDED", "FAILED", "INACTIVE"], timeout=10)
        assert status["status"] == "INACTIVE"
        assert status["details"]["code"] == "ResumeRequired"
        assert time.monotonic() - started < 5
