"""The flows pages in a real browser (Playwright driving Debian's chromium against the app on loopback): sign in
with a token, start a flow from its generated form, watch the run page reload until the run has ended."""

from __future__ import annotations

import threading
from pathlib import Path
from urllib.parse import urlsplit
from typing import Any, Iterator

import pytest
from playwright.sync_api import expect
from werkzeug.serving import make_server

from toolkit import get_toolkit

from .conftest import OTHER, SCOPE, deployment, make_site
from .test_service_pages import DEFINITION, SCHEMA

CHROMIUM = "/usr/bin/chromium"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"the browser tests need Debian's chromium at {CHROMIUM}: apt-get install chromium")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM)
        yield launched
        launched.close()


@pytest.fixture
def live(tmp_path):
    site = make_site(tmp_path)
    site.session().deploy(deployment(id="greeter", definition=DEFINITION, input_schema=SCHEMA))
    site.session().deploy(deployment(id="pause", input_schema={"type": "object"}, definition={
        "StartAt": "Pause", "States": {"Pause": {"Type": "Wait", "Seconds": 3, "Next": "Done"},
                                       "Done": {"Type": "Succeed"}}}))
    server = make_server("127.0.0.1", 0, site.app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    site.url = f"http://127.0.0.1:{server.server_port}"  # type: ignore[attr-defined]
    yield site
    server.shutdown()
    get_toolkit(site.app).runtime.stop()


@pytest.fixture
def page(browser):
    context = browser.new_context()
    opened = context.new_page()
    problems: list[str] = []
    opened.on("response", lambda r: problems.append((r.status, urlsplit(r.url).path)) if r.status >= 400 else None)
    opened.problems = problems
    yield opened
    context.close()


def sign_in(live, page, flow_id):
    page.goto(f"{live.url}/flows/{flow_id}/start")
    expect(page.get_by_role("heading", name="Sign in to start this flow")).to_be_visible()
    page.get_by_label("Access token").fill(live.authority.token(OTHER, scopes=[SCOPE]))
    page.get_by_role("button", name="Sign in").click()


def test_start_a_flow_from_its_form_and_follow_the_run(live, page):
    sign_in(live, page, "greeter")
    expect(page.get_by_role("heading", name="Greeter")).to_be_visible()
    page.get_by_label("Your name").fill("A")
    page.get_by_label("How many").fill("3")
    page.get_by_role("button", name="Start the flow").click()
    expect(page.get_by_role("alert")).to_contain_text("Please correct this 1 problem")
    page.get_by_label("Your name").fill("Ada")
    page.get_by_role("button", name="Start the flow").click()
    expect(page.get_by_role("heading", name="SUCCEEDED")).to_be_visible(timeout=10_000)
    rows = page.locator("table.states tbody tr")
    expect(rows).to_have_count(2)
    expect(rows.nth(0)).to_contain_text("Greet")
    expect(rows.nth(1)).to_contain_text("Succeed")
    expect(page.locator("pre.output")).to_contain_text('"greeting": "Ada"')
    # the sign-in page (401) and the refused form (400) are the only failed loads: nothing the pages need is refused
    assert [p for p in page.problems if p[1] != "/favicon.ico"] == [(401, "/flows/greeter/start"),
                                                                    (400, "/flows/greeter/start")]
    assert page.evaluate("getComputedStyle(document.querySelector('main')).maxWidth") != "none"  # styled


def test_the_run_page_follows_a_run_until_it_ends(live, page):
    sign_in(live, page, "pause")
    page.get_by_role("button", name="Start the flow").click()
    expect(page.locator("table.states")).to_contain_text("ACTIVE", timeout=10_000)
    expect(page.get_by_role("heading", name="SUCCEEDED")).to_be_visible(timeout=15_000)  # reloaded by itself
    expect(page.locator("table.states tbody tr").nth(0)).to_contain_text("SUCCEEDED")
