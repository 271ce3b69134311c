"""The digest kept for request_id idempotency is keyed with the data directory's secret: a copy of the database
alone says nothing about what a request held, and retries still meet their action across processes and restarts."""

import hashlib
import hmac
import json
import os
import sqlite3
import stat
import uuid

import pytest

from toolkit import ActionProvider, ConfigurationError
from toolkit.client import ClientError
from toolkit.request_key import REQUEST_KEY_FILE, load_or_create_request_key
from toolkit.testing import provider_client

IDENTITY = str(uuid.uuid4())


def make_provider() -> ActionProvider:
    provider = ActionProvider(
        name="keyed", title="Keyed", synchronous=True,
        input_schema={"type": "object", "properties": {"password": {"type": "string"}}},
    )

    @provider.run
    def run(body, ctx):
        return {}

    return provider


def stored_digests(data_dir) -> dict[str, str]:
    with sqlite3.connect(data_dir / "aptk.db") as db:
        return dict(db.execute("SELECT action_id, request_hash FROM aptk_actions"))


def request_document(body: dict, request_id: str) -> dict:
    return {"request_id": request_id, "body": body}


def status_of(call, *args, **kwargs) -> int:
    with pytest.raises(ClientError) as caught:
        call(*args, **kwargs)
    return caught.value.status


def test_the_stored_digest_is_keyed_with_a_private_key_in_the_data_directory(tmp_path):
    provider = make_provider()
    body = {"password": "hunter2"}
    with provider_client(provider, tmp_path, identity=IDENTITY) as client:
        action = client.run(body, request_id="r1")
    key_file = tmp_path / REQUEST_KEY_FILE
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = key_file.read_bytes()
    assert len(key) == 32
    digest = stored_digests(tmp_path)[action["action_id"]]
    document = json.dumps(request_document(body, "r1"), sort_keys=True, separators=(",", ":")).encode()
    # Not the plain SHA-256 a guess could be checked against, but the HMAC under the data directory's key.
    assert digest != hashlib.sha256(document).hexdigest()
    assert digest == hmac.new(key, document, hashlib.sha256).hexdigest()


def test_retries_meet_their_action_after_a_restart_and_another_body_is_refused(tmp_path):
    provider = make_provider()
    with provider_client(provider, tmp_path, identity=IDENTITY) as client:
        first = client.run({"password": "a"}, request_id="r1")
    key = (tmp_path / REQUEST_KEY_FILE).read_bytes()
    # Two processes at once and one after the restart: each reads the same key from the data directory.
    with provider_client(provider, tmp_path, identity=IDENTITY) as one, \
            provider_client(provider, tmp_path, identity=IDENTITY) as other:
        assert one.run({"password": "a"}, request_id="r1")["action_id"] == first["action_id"]
        assert other.run({"password": "a"}, request_id="r1")["action_id"] == first["action_id"]
        assert status_of(other.run, {"password": "b"}, request_id="r1") == 409
        second = one.run({"password": "b"}, request_id="r2")
        assert other.run({"password": "b"}, request_id="r2")["action_id"] == second["action_id"]
    assert (tmp_path / REQUEST_KEY_FILE).read_bytes() == key


def test_a_digest_stored_before_digests_were_keyed_still_matches(tmp_path):
    provider = make_provider()
    body = {"password": "a"}
    with provider_client(provider, tmp_path, identity=IDENTITY) as client:
        first = client.run(body, request_id="old")
    document = json.dumps(request_document(body, "old"), sort_keys=True, separators=(",", ":")).encode()
    with sqlite3.connect(tmp_path / "aptk.db") as db:  # as an older version stored it
        db.execute("UPDATE aptk_actions SET request_hash = ?", (hashlib.sha256(document).hexdigest(),))
    with provider_client(provider, tmp_path, identity=IDENTITY) as client:
        assert client.run(body, request_id="old")["action_id"] == first["action_id"]
        assert status_of(client.run, {"password": "b"}, request_id="old") == 409


def test_another_key_takes_a_retry_for_another_request(tmp_path):
    """The key is what makes the digest: without it (a data directory of its own) the stored digest matches
    nothing, so the key really is used."""
    provider = make_provider()
    with provider_client(provider, tmp_path, identity=IDENTITY) as client:
        client.run({"password": "a"}, request_id="r1")
    os.unlink(tmp_path / REQUEST_KEY_FILE)
    with provider_client(provider, tmp_path, identity=IDENTITY) as client:
        assert status_of(client.run, {"password": "a"}, request_id="r1") == 409


def test_a_damaged_or_unwritable_key_stops_start_up(tmp_path):
    (tmp_path / REQUEST_KEY_FILE).write_bytes(b"short")
    with pytest.raises(ConfigurationError, match="request key .* is damaged"):
        provider_client(make_provider(), tmp_path)
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    (blocked / REQUEST_KEY_FILE).mkdir()  # a directory where the key should be
    with pytest.raises(ConfigurationError, match="cannot read or create the request key"):
        load_or_create_request_key(blocked)


def test_hosts_sharing_a_database_share_the_key_in_their_settings(tmp_path):
    provider = make_provider()
    database = f"sqlite:///{tmp_path / 'shared.db'}"
    shared = {"APTK_DATABASE_URL": database, "APTK_REQUEST_KEY": "0123456789abcdef" * 4}
    with provider_client(provider, tmp_path / "host1", identity=IDENTITY, config=shared) as one, \
            provider_client(provider, tmp_path / "host2", identity=IDENTITY, config=shared) as two:
        first = one.run({"password": "a"}, request_id="r1")
        assert two.run({"password": "a"}, request_id="r1")["action_id"] == first["action_id"]
        assert status_of(two.run, {"password": "b"}, request_id="r1") == 409
    assert not (tmp_path / "host1" / REQUEST_KEY_FILE).exists()
    # Without a shared key, hosts of one database keep plain digests (no per-host key), so a retry on another host
    # still meets its action.
    alone = {"APTK_DATABASE_URL": database}
    with provider_client(provider, tmp_path / "host3", identity=IDENTITY, config=alone) as three, \
            provider_client(provider, tmp_path / "host4", identity=IDENTITY, config=alone) as four:
        second = three.run({"password": "a"}, request_id="r2")
        assert four.run({"password": "a"}, request_id="r2")["action_id"] == second["action_id"]
        assert status_of(four.run, {"password": "b"}, request_id="r2") == 409
    assert not (tmp_path / "host3" / REQUEST_KEY_FILE).exists()


def test_a_short_request_key_setting_stops_start_up(tmp_path):
    with pytest.raises(ConfigurationError, match="APTK_REQUEST_KEY must be a secret of at least 32"):
        provider_client(make_provider(), tmp_path, config={"APTK_REQUEST_KEY": "guessable"})


def test_a_database_url_without_a_shared_key_is_warned_about(tmp_path, caplog):
    database = {"APTK_DATABASE_URL": f"sqlite:///{tmp_path / 'shared.db'}"}
    with caplog.at_level("WARNING", logger="toolkit.extension"):
        provider_client(make_provider(), tmp_path / "a", config=database).close()
    assert "APTK_REQUEST_KEY is not set" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="toolkit.extension"):
        provider_client(make_provider(), tmp_path / "b",
                        config={**database, "APTK_REQUEST_KEY": "x" * 32}).close()
        provider_client(make_provider(), tmp_path / "c").close()
    assert "APTK_REQUEST_KEY" not in caplog.text
