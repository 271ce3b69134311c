"""The fixtures of the toolkit's pytest plugin, used as a provider's own tests would use them."""

from __future__ import annotations

import pytest

from providers.hello import provider as hello
from toolkit.client import ClientError
from toolkit.testing import ManualClock


def test_another_identity_cannot_see_my_action(aptk_client, aptk_other_identity):
    mine = aptk_client(hello)
    action = mine.run({"echo_string": "mine"}, wait=True)
    with pytest.raises(ClientError) as refused:
        mine.as_identity(aptk_other_identity).status(action["action_id"])
    assert refused.value.status in (403, 404)


def test_the_clock_moves_a_released_action_past_its_expiry(aptk_client, aptk_clock):
    client = aptk_client(hello, clock=aptk_clock)
    action = client.run({"echo_string": "soon gone"}, release_after="PT1H", wait=True)
    assert client.status(action["action_id"])["status"] == "SUCCEEDED"
    aptk_clock.advance(3601)
    with pytest.raises(ClientError) as gone:
        client.status(action["action_id"])
    assert gone.value.status == 404


def test_a_manual_clock_only_moves_forward():
    clock = ManualClock(1000.0)
    assert clock() == 1000.0 and clock.advance(5) == 1005.0 and clock() == 1005.0
    with pytest.raises(ValueError):
        clock.advance(-1)
