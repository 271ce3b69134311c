"""The aptk command: dev tokens and the signing key."""

import os
import stat
import subprocess
import sys
import uuid

import jwt
import pytest
from click.testing import CliRunner

from toolkit.auth import DevTokenVerifier, load_or_create_dev_key
from toolkit.cli import main
from toolkit.errors import UnauthorizedRequest


@pytest.fixture
def data_dir(tmp_path):
    load_or_create_dev_key(tmp_path)
    return tmp_path


def token(data_dir, *args):
    result = CliRunner().invoke(main, ["token", "--data-dir", str(data_dir), *args])
    assert result.exit_code == 0, result.output
    return result.output.strip()


def test_signing_key_is_private_and_reused(tmp_path):
    first = load_or_create_dev_key(tmp_path)
    second = load_or_create_dev_key(tmp_path)
    assert stat.S_IMODE((tmp_path / "dev-signing-key.pem").stat().st_mode) == 0o600
    assert first.public_key().public_bytes_raw() == second.public_key().public_bytes_raw()


def test_token_is_accepted_by_the_servers_verifier(data_dir):
    identity, group = str(uuid.uuid4()), str(uuid.uuid4())
    verified = DevTokenVerifier.from_data_dir(data_dir).verify(
        token(data_dir, "--identity", identity, "--group", group, "--scope", "urn:s")
    )
    assert verified.id == f"urn:globus:auth:identity:{identity}"
    assert f"urn:globus:groups:id:{group}" in verified.principals
    assert "all_authenticated_users" in verified.principals
    assert verified.scopes == {"urn:s"}


def test_token_carries_every_bundled_scope_by_default(data_dir):
    verified = DevTokenVerifier.from_data_dir(data_dir).verify(token(data_dir, "--identity", str(uuid.uuid4())))
    assert "urn:aptk:scope:hello" in verified.scopes


@pytest.mark.parametrize("expires, seconds", [("90", 90), ("30m", 1800), ("12h", 43200), ("PT2H", 7200)])
def test_token_lifetime(data_dir, expires, seconds):
    claims = jwt.decode(token(data_dir, "--identity", str(uuid.uuid4()), "--expires", expires),
                        options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == seconds


def test_token_from_another_servers_key_is_refused(data_dir, tmp_path_factory):
    other = tmp_path_factory.mktemp("other")
    load_or_create_dev_key(other)
    with pytest.raises(UnauthorizedRequest):
        DevTokenVerifier.from_data_dir(data_dir).verify(token(other, "--identity", str(uuid.uuid4())))


def test_token_without_a_key_says_how_to_get_one(tmp_path):
    result = CliRunner().invoke(main, ["token", "--data-dir", str(tmp_path / "none"), "--identity", str(uuid.uuid4())])
    assert result.exit_code == 1
    assert "aptk serve --data-dir" in result.output


@pytest.mark.parametrize("args", [["--identity", "bob"], ["--identity", str(uuid.uuid4()), "--group", "x"],
                                  ["--identity", str(uuid.uuid4()), "--expires", "soon"]])
def test_token_rejects_bad_arguments(data_dir, args):
    result = CliRunner().invoke(main, ["token", "--data-dir", str(data_dir), *args])
    assert result.exit_code == 2


def test_token_does_not_import_the_web_stack(data_dir):
    """`aptk token` runs on a laptop or in a flow's shell step: it must stay quick and not load the web stack.

    With ``--scope`` given; the default (every bundled provider's scope) imports the providers, and with them
    the store's SQLAlchemy.
    """
    probe = (
        "import sys\n"
        "from toolkit.cli import main\n"
        f"main(['token', '--data-dir', {str(data_dir)!r}, '--identity', {str(uuid.uuid4())!r},"
        " '--scope', 'urn:s'],"
        " standalone_mode=False)\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('flask', 'werkzeug', 'sqlalchemy'))\n"
        "print('HEAVY', heavy, file=sys.stderr)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("APTK_")}
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(".") == 2  # the token itself was printed
    assert "HEAVY []" in result.stderr, result.stderr
