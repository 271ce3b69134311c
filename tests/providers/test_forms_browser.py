"""The forms provider in a real browser: Playwright driving Debian's chromium against the app on loopback.

Playwright comes from PyPI; the browser is the machine's (``/usr/bin/chromium``, which ``.ci/run`` installs with
apt), never one that ``playwright install`` would download.

Screenshots of a form (desktop and narrow) are written to ``APTK_TEST_SCREENSHOTS`` when that is set (the README's
example links them: ``APTK_TEST_SCREENSHOTS=docs/screenshots pytest tests/providers/test_forms_browser.py -k
screenshots``), otherwise to the test's temporary directory.
"""

from __future__ import annotations

import os
import shutil
import threading
import uuid
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import expect
from werkzeug.serving import make_server

from providers.forms import provider
from providers.forms.pages import SESSION_COOKIE
from providers.forms.signing import Signer
from tests.oidc.fixture import start_oidc_server
from tests.providers.test_forms import ADA, BOB, EVE, EVERY_FIELD, EXPECTED_RESPONSE
from toolkit import get_toolkit
from toolkit.server import create_app
from toolkit.testing import TokenAuthority

CHROMIUM = "/usr/bin/chromium"
SCREENSHOTS = os.environ.get("APTK_TEST_SCREENSHOTS")  # read at import: the tests' own fixture clears APTK_*
CREATOR = "11111111-1111-4111-8111-111111111111"

pytestmark = pytest.mark.slow


class LiveSite:
    """The forms provider on a loopback HTTP server, and an API client for the flow that asks."""

    def __init__(self, data_dir: Path, **config: Any) -> None:
        self.authority = TokenAuthority()
        self.app = create_app({"APTK_DATA_DIR": str(data_dir), **config}, providers=[("/forms", provider)],
                              verifier=self.authority.verifier)
        self.server = make_server("127.0.0.1", 0, self.app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.api = self.app.test_client()
        token = self.authority.token(CREATOR, scopes=[provider.globus_auth_scope])
        self.headers = {"Authorization": f"Bearer {token}"}
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> "LiveSite":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        get_toolkit(self.app).runtime.stop()

    def run(self, body: dict[str, Any]) -> dict[str, Any]:
        response = self.api.post("/forms/run", json={"request_id": uuid.uuid4().hex, "body": body},
                                 headers=self.headers, base_url=self.url)
        assert response.status_code == 202, response.json
        return response.json

    def status(self, action_id: str) -> dict[str, Any]:
        return self.api.get(f"/forms/{action_id}/status", headers=self.headers).json


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"the browser tests need Debian's chromium at {CHROMIUM}: apt-get install chromium")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Iterator[LiveSite]:
    live = LiveSite(tmp_path_factory.mktemp("forms-live")).start()
    yield live
    live.stop()


@pytest.fixture
def page(browser):
    context = browser.new_context()
    opened = context.new_page()
    dialogs: list[str] = []
    opened.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    opened.dialogs = dialogs
    yield opened
    context.close()


def fill_every_field(page) -> None:
    page.get_by_label("Your name").fill("Ada Lovelace")
    page.get_by_label("Email").fill("ada@example.org")
    page.get_by_label("Start date").fill("2027-01-05")
    page.get_by_label("Web site").fill("https://lab.example.org")
    page.get_by_role("radio", name="NMR").check()
    page.get_by_label("Room").select_option(label="B6")
    page.get_by_label("Samples").fill("12")
    page.get_by_label("Volume (ml)").fill("2.25")
    page.get_by_label("I agree").check()
    page.get_by_label("Keywords").fill("protein\nlipid")
    page.get_by_role("checkbox", name="Mon").check()
    page.get_by_role("checkbox", name="Wed").check()
    page.get_by_label("Phone").fill("+44 20 0000")
    page.get_by_label("Extension").fill("42")


def test_fill_and_submit_every_field_type(site, page):
    action = site.run({"title": "Sample request", "schema": EVERY_FIELD, "respondents": [ADA]})
    page.goto(action["details"]["resolution_url"])
    assert urlsplit(page.url).query == ""  # the link's token left the address bar
    assert page.get_by_label("Volume (ml)").input_value() == "1.5"  # the default
    fill_every_field(page)
    page.get_by_role("button", name="Submit").click()
    expect(page.get_by_role("heading", name="Thank you")).to_be_visible()
    status = site.status(action["action_id"])
    assert status["status"] == "SUCCEEDED"
    assert status["details"]["response"] == EXPECTED_RESPONSE and status["details"]["respondent"] == ADA


def test_the_form_is_usable_with_the_keyboard_alone(site, page):
    action = site.run({"title": "Quick", "schema": {"type": "object", "required": ["name"], "properties": {
        "name": {"type": "string", "title": "Name"}, "ok": {"type": "boolean", "title": "Agreed"}}}})
    page.goto(action["details"]["resolution_url"])
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "f-name"  # the first field comes first
    page.keyboard.type("Grace")
    page.keyboard.press("Tab")
    page.keyboard.press("Space")
    page.keyboard.press("Tab")
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Thank you")).to_be_visible()
    assert site.status(action["action_id"])["details"]["response"] == {"name": "Grace", "ok": True}


def test_see_and_fix_a_validation_error(site, page):
    action = site.run({"title": "Sample request", "schema": EVERY_FIELD})
    page.goto(action["details"]["resolution_url"])
    fill_every_field(page)
    page.get_by_label("Samples").fill("200")
    page.get_by_label("Email").fill("ada at example")
    page.get_by_role("button", name="Submit").click()
    summary = page.get_by_role("alert")
    assert "2 problems" in summary.inner_text()
    assert page.locator("#f-samples-error").inner_text().endswith("Enter a value of at most 96.")
    assert page.get_by_label("Samples").get_attribute("aria-invalid") == "true"
    assert page.get_by_label("Email").input_value() == "ada at example"  # what was typed is kept
    assert page.get_by_label("Your name").input_value() == "Ada Lovelace"
    assert page.get_by_role("checkbox", name="Wed").is_checked()
    summary.get_by_role("link", name="Enter a value of at most 96.").click()
    page.get_by_label("Samples").fill("96")
    page.get_by_label("Email").fill("ada@example.org")
    page.get_by_role("button", name="Submit").click()
    expect(page.get_by_role("heading", name="Thank you")).to_be_visible()
    assert site.status(action["action_id"])["details"]["response"]["samples"] == 96


def test_xss_in_the_title_and_an_enum_label_renders_as_text(site, page):
    payload = '<img src=x onerror=alert(1)><script>alert(2)</script>'
    action = site.run({"title": f"Approve {payload}", "description": payload, "schema": {
        "type": "object", "properties": {"pick": {"type": "string", "title": "Pick", "enum": ["fine", payload]}}}})
    page.goto(action["details"]["resolution_url"])
    assert page.get_by_role("heading", level=1).inner_text() == f"Approve {payload}"
    assert page.get_by_role("radio", name=payload).count() == 1
    assert page.locator("img").count() == 0 and page.locator("main script").count() == 0
    page.get_by_role("radio", name=payload).check()
    page.get_by_role("button", name="Submit").click()
    expect(page.get_by_role("heading", name="Thank you")).to_be_visible()
    assert page.dialogs == []
    assert site.status(action["action_id"])["details"]["response"] == {"pick": payload}


def test_a_post_without_the_csrf_token_is_refused(site, page):
    action = site.run({"title": "Approve", "schema": {"type": "object", "properties": {"ok": {"type": "boolean"}}}})
    page.goto(action["details"]["resolution_url"])
    page.evaluate("document.querySelector('input[name=csrf_token]').remove()")
    page.get_by_role("button", name="Submit").click()
    expect(page.get_by_role("heading", name="This answer was not accepted")).to_be_visible()
    assert site.status(action["action_id"])["status"] == "INACTIVE"


def test_a_signed_in_person_who_is_not_a_respondent_is_refused(site, browser):
    action = site.run({"title": "For Ada", "schema": EVERY_FIELD, "respondents": [ADA]})
    context = browser.new_context()
    session = Signer.for_config(site.app.config).session([EVE], "Eve", 4e9)
    context.add_cookies([{"name": SESSION_COOKIE, "value": session, "url": f"{site.url}/forms/"}])
    page = context.new_page()
    response = page.goto(action["details"]["form_url"])
    assert response.status == 403
    expect(page.get_by_role("heading", name="You are not asked to answer this form")).to_be_visible()
    context.close()


def test_cancel_closes_the_open_page(site, page):
    action = site.run({"title": "Approve", "schema": {"type": "object", "properties": {"ok": {"type": "boolean"}}}})
    page.goto(action["details"]["resolution_url"])
    assert site.api.post(f"/forms/{action['action_id']}/cancel", headers=site.headers).status_code == 200
    page.get_by_role("button", name="Submit").click()
    expect(page.get_by_role("heading", name="This form is closed")).to_be_visible()
    assert "cancelled" in page.inner_text("main")
    page.reload()
    expect(page.get_by_role("heading", name="This form is closed")).to_be_visible()


def test_screenshots_of_a_form(site, browser, tmp_path):
    folder = Path(SCREENSHOTS or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    action = site.run({
        "title": "Approve sharing of run 42",
        "description": ("The transfer of **run 42** into the staging collection finished: 1,204 files, 38 GB.\n\n"
                        "Please check the [run report](https://lab.example.org/runs/42) and say whether the data "
                        "may be shared with the consortium."),
        "description_format": "text/markdown",
        "schema": {"type": "object", "required": ["decision"], "properties": {
            "decision": {"type": "string", "title": "Decision", "enum": ["Approve", "Approve with embargo", "Reject"]},
            "embargo_until": {"type": "string", "format": "date", "title": "Embargo until",
                              "description": "Only for an approval with embargo."},
            "share_with": {"type": "array", "title": "Share with",
                           "items": {"type": "string", "enum": ["Consortium", "Collaborators at ESRF", "Public"]}},
            "comment": {"type": "string", "title": "Comment for the team", "maxLength": 2000}}},
        "respondents": [BOB],
    })
    for name, size in (("desktop", {"width": 1280, "height": 1000}), ("narrow", {"width": 390, "height": 1100})):
        context = browser.new_context(viewport=size, device_scale_factor=1)
        page = context.new_page()
        page.goto(action["details"]["resolution_url"])
        page.get_by_role("radio", name="Approve with embargo").check()
        page.get_by_label("Embargo until").fill("2027-06-30")
        page.get_by_role("checkbox", name="Consortium").check()
        path = folder / f"forms-{name}.png"
        page.screenshot(path=str(path), full_page=True)
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
        context.close()


# --- signing in at the deployment's OpenID Connect provider --------------------------------------------------

OIDC_CLIENT_ID = "c9f1d7a2-5e3b-4c8d-9a6f-1b2c3d4e5f60"
OIDC_SECRET = "forms-web-secret-8c2e4a6b"


@pytest.fixture(scope="module")
def oidc_site(tmp_path_factory) -> Iterator[LiveSite]:
    if shutil.which("node") is None:
        pytest.fail("the OIDC sign-in test needs Node.js (the test authorization server)")
    live = LiveSite(tmp_path_factory.mktemp("forms-oidc"), APTK_FORMS_SIGN_IN="oidc")
    redirect_uri = f"{live.url}/forms/sign-in/done"
    server = start_oidc_server({
        "clients": [{"name": "forms", "client_id": OIDC_CLIENT_ID, "client_secret": OIDC_SECRET,
                     "grant_types": ["authorization_code"], "redirect_uris": [redirect_uri]}],
        "accounts": {"grace": ["/lab/pis"]},
    })
    live.app.config.update(APTK_FORMS_OIDC_ISSUER=server.issuer, APTK_FORMS_OIDC_CLIENT_ID=OIDC_CLIENT_ID,
                           APTK_FORMS_OIDC_CLIENT_SECRET=OIDC_SECRET, APTK_FORMS_OIDC_SCOPE="openid profile")
    live.start()
    yield live
    live.stop()
    server.stop()


def sign_in(page, login: str) -> None:
    page.get_by_role("link", name="Sign in").click()
    page.locator("input[name=login]").fill(login)
    page.locator("input[name=password]").fill("any password")
    page.locator("button[type=submit]").click()
    consent = page.locator("button[type=submit]", has_text="Continue")
    if consent.count():
        consent.click()


def test_oidc_sign_in_as_a_respondent_and_answer(oidc_site, page):
    action = oidc_site.run({"title": "Approve", "schema": {"type": "object", "properties": {
        "ok": {"type": "boolean", "title": "Approved"}}}, "respondents": ["urn:aptk:group:/lab/pis"]})
    assert "respondent_links" not in action["details"]
    assert action["details"]["resolution_url"] == action["details"]["form_url"]
    page.goto(action["details"]["form_url"])
    expect(page.get_by_role("heading", name="Sign in to answer")).to_be_visible()
    sign_in(page, "grace")
    assert urlsplit(page.url).path == f"/forms/{action['action_id']}/form"
    assert "Test user grace" in page.inner_text(".meta")
    page.get_by_label("Approved").check()
    page.get_by_role("button", name="Submit").click()
    expect(page.get_by_role("heading", name="Thank you")).to_be_visible()
    details = oidc_site.status(action["action_id"])["details"]
    assert details["response"] == {"ok": True} and details["respondent"] == "urn:aptk:subject:grace"


def test_oidc_sign_in_of_a_non_respondent_is_refused(oidc_site, page):
    action = oidc_site.run({"title": "Approve", "schema": {"type": "object", "properties": {
        "ok": {"type": "boolean"}}}, "respondents": ["urn:aptk:subject:grace"]})
    page.goto(action["details"]["form_url"])
    sign_in(page, "mallory")
    expect(page.get_by_role("heading", name="You are not asked to answer this form")).to_be_visible()
    assert "Test user mallory" in page.inner_text("main")
    assert oidc_site.status(action["action_id"])["status"] == "INACTIVE"
