"""Choosing the verifier by configuration, and what callbacks get from it."""

import uuid

import pytest
from click.testing import CliRunner

from toolkit import ActionProvider, ConfigurationError
from toolkit.auth import DevTokenVerifier, GlobusAuthVerifier, IntrospectionVerifier, JWTVerifier, verifier_from_config
from toolkit.cli import main
from toolkit.testing import TokenAuthority, provider_client


def build(tmp_path, **settings):
    return verifier_from_config(settings, tmp_path)


@pytest.mark.parametrize(
    "settings, kind",
    [
        ({}, DevTokenVerifier),
        ({"APTK_AUTH": "jwt", "APTK_AUTH_ISSUER": "https://as", "APTK_AUTH_AUDIENCE": "https://rs"}, JWTVerifier),
        ({"APTK_AUTH": "introspection", "APTK_AUTH_ISSUER": "https://as", "APTK_AUTH_CLIENT_ID": "c",
          "APTK_AUTH_CLIENT_SECRET": "s"}, IntrospectionVerifier),
        ({"APTK_AUTH": "globus", "APTK_AUTH_CLIENT_ID": "c", "APTK_AUTH_CLIENT_SECRET": "s"}, GlobusAuthVerifier),
    ],
)
def test_each_kind_is_built_from_its_settings(tmp_path, settings, kind):
    assert type(build(tmp_path, **settings)) is kind


@pytest.mark.parametrize(
    "settings, named",
    [
        ({"APTK_AUTH": "jwt", "APTK_AUTH_ISSUER": "https://as"}, "APTK_AUTH_AUDIENCE"),
        ({"APTK_AUTH": "introspection", "APTK_AUTH_CLIENT_ID": "c", "APTK_AUTH_ISSUER": "https://as"},
         "APTK_AUTH_CLIENT_SECRET"),
        ({"APTK_AUTH": "introspection", "APTK_AUTH_CLIENT_ID": "c", "APTK_AUTH_CLIENT_SECRET": "s"},
         "APTK_AUTH_INTROSPECTION_URL"),
        ({"APTK_AUTH": "dev", "APTK_AUTH_ISSUER": "https://as"}, "APTK_AUTH_ISSUER"),
        ({"APTK_AUTH": "jwt", "APTK_AUTH_ISSUER": "https://as", "APTK_AUTH_AUDIENCE": "a",
          "APTK_AUTH_CLIENT_SECRET": "s"}, "APTK_AUTH_CLIENT_SECRET"),
        ({"APTK_AUTH": "kerberos"}, "APTK_AUTH"),
        ({"APTK_AUTH": "jwt", "APTK_AUTH_ISSUER": "https://as", "APTK_AUTH_AUDIENCE": "a",
          "APTK_AUTH_ALGORITHMS": "HS256"}, "HS256"),
        ({"APTK_AUTH": "jwt", "APTK_AUTH_ISSUER": "https://as", "APTK_AUTH_AUDIENCE": "a",
          "APTK_AUTH_TIMEOUT": "soon"}, "APTK_AUTH_TIMEOUT"),
        ({"APTK_AUTH": "introspection", "APTK_AUTH_ISSUER": "https://as", "APTK_AUTH_CLIENT_ID": "c",
          "APTK_AUTH_CLIENT_SECRET": "s", "APTK_AUTH_CACHE_SECONDS": "-1"}, "APTK_AUTH_CACHE_SECONDS"),
        ({"APTK_AUTH": "globus", "APTK_AUTH_CLIENT_ID": "c", "APTK_AUTH_CLIENT_SECRET": "s",
          "APTK_AUTH_CACHE_SECONDS": "a minute"}, "APTK_AUTH_CACHE_SECONDS"),
        ({"APTK_AUTH": "jwt", "APTK_AUTH_ISSUER": "https://as", "APTK_AUTH_AUDIENCE": "a",  # JWTs are not revocable
          "APTK_AUTH_CACHE_SECONDS": "5"}, "APTK_AUTH_CACHE_SECONDS"),
    ],
)
def test_missing_or_inconsistent_settings_are_named(tmp_path, settings, named):
    with pytest.raises(ConfigurationError, match=named):
        build(tmp_path, **settings)


@pytest.mark.parametrize("kind", ["introspection", "globus"])
def test_the_introspection_cache_lifetime_is_a_setting(tmp_path, kind):
    settings = {"APTK_AUTH": kind, "APTK_AUTH_CLIENT_ID": "c", "APTK_AUTH_CLIENT_SECRET": "s",
                "APTK_AUTH_INTROSPECTION_URL": "https://as/introspect" if kind == "introspection" else None}
    assert build(tmp_path, **settings).cache_seconds == 10
    assert build(tmp_path, **settings, APTK_AUTH_CACHE_SECONDS="2.5").cache_seconds == 2.5


def test_serve_stops_at_start_up_naming_the_setting(tmp_path, monkeypatch):
    monkeypatch.setenv("APTK_AUTH_CLIENT_SECRET", "never-printed-secret")
    result = CliRunner().invoke(main, ["serve", "--data-dir", str(tmp_path), "--auth", "introspection",
                                       "--client-id", "provider"])
    assert result.exit_code == 1
    assert "APTK_AUTH_INTROSPECTION_URL" in result.output
    assert "never-printed-secret" not in result.output


def test_serve_reads_a_config_file(tmp_path):
    config = tmp_path / "aptk.json"
    config.write_text('{"APTK_AUTH": "jwt", "APTK_AUTH_ISSUER": "https://as"}')
    result = CliRunner().invoke(main, ["serve", "--data-dir", str(tmp_path), "--config", str(config)])
    assert result.exit_code == 1
    assert "APTK_AUTH_AUDIENCE" in result.output


class DownstreamVerifier:
    """A verifier that can also issue dependent tokens, as Globus Auth does."""

    def __init__(self):
        self.authority = TokenAuthority()
        self.asked = []

    def verify(self, token):
        return self.authority.verifier.verify(token)

    def dependent_tokens(self, token):
        self.asked.append(token)
        return {"transfer.api.globus.org": {"access_token": "dependent", "scope": "s", "expires_at": 0}}


def test_callbacks_get_dependent_tokens_for_the_caller(tmp_path):
    provider = ActionProvider(title="Down", input_schema={"type": "object"}, synchronous=True)
    provider.run(lambda body, ctx: {"token": ctx.dependent_tokens()["transfer.api.globus.org"]["access_token"]})
    verifier = DownstreamVerifier()
    client = provider_client(provider, tmp_path, verifier=verifier)
    client.authority = verifier.authority
    caller = verifier.authority.token(str(uuid.uuid4()), scopes=[provider.globus_auth_scope])
    client.session.headers["Authorization"] = f"Bearer {caller}"
    assert client.run({})["details"] == {"token": "dependent"}
    assert verifier.asked == [caller]
