"""ActionProvider.add_blueprint: a provider's own routes (its web pages) under its prefix, beside the API."""

from flask import Blueprint, Flask

from toolkit import ActionProvider, Toolkit, get_toolkit
from toolkit.testing import TokenAuthority


def make_provider() -> ActionProvider:
    provider = ActionProvider(title="Paged", input_schema={"type": "object"})
    provider.run(lambda body, ctx: {})
    pages = Blueprint("pages", __name__)

    @pages.get("/<action_id>/page")
    def page(action_id):
        return f"page of {action_id}"

    @pages.get("/broken")
    def broken():
        raise RuntimeError("boom")

    @pages.errorhandler(RuntimeError)
    def own_error(exc):
        return "an HTML apology", 500

    provider.add_blueprint(pages)
    return provider


def test_extra_routes_are_served_under_every_prefix_the_provider_is_mounted_at(tmp_path):
    provider = make_provider()
    authority = TokenAuthority()
    app = Flask("t")
    app.config["APTK_DATA_DIR"] = str(tmp_path)
    Toolkit(app, verifier=authority.verifier)
    app.register_blueprint(provider.blueprint(url_prefix="/one"))
    app.register_blueprint(provider.blueprint(url_prefix="/two", name="second"))
    client = app.test_client()
    assert client.get("/one/abc/page").text == "page of abc"
    assert client.get("/two/abc/page").text == "page of abc"
    assert client.get("/one/").json["title"] == "Paged"  # the API is still there
    broken = client.get("/one/broken")
    assert broken.status_code == 500 and broken.text == "an HTML apology"  # its own handler before the API's JSON
    get_toolkit(app).runtime.stop()
