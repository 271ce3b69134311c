"""What a principal is: one rule for every verifier, and every principal a verifier produces can be granted rights."""

import uuid

import pytest

from toolkit import ActionProvider, ConfigurationError
from toolkit.auth import Identity
from toolkit.documents import PRINCIPAL_URN, normalize_principal, principal_for, principal_kind
from toolkit.errors import UnauthorizedRequest
from toolkit.testing import provider_client

ADA = "6a3b4d5e-0000-4000-8000-00000000000a"
LAB = "9e0f5a4c-0000-4000-8000-00000000000b"

# Names an authorization server may give as `sub`, `client_id` or a group: UUIDs in any case, client ids, Auth0
# and Keycloak styles, names with commas, spaces, percent signs, non-ASCII letters.
NAMES = [ADA, ADA.upper(), "flows-client", "Flows-Client", "auth0|5f7c8ec7", "service-account@realm", "/lab/members",
         "Lab Members", "a,b", "100%", "Zoë", "urn:example:thing", "x" * 200]


@pytest.mark.parametrize("kind", ["identity", "group"])
@pytest.mark.parametrize("name", NAMES)
def test_every_principal_a_verifier_produces_can_be_named_in_a_grant(kind, name):
    urn = principal_for(name, kind)
    assert normalize_principal(urn) == urn  # accepted as is in monitor_by, manage_by, runnable_by, ...
    assert PRINCIPAL_URN.fullmatch(urn) and principal_kind(urn) == kind
    assert Identity.build(name if kind == "identity" else ADA, groups=[name] if kind == "group" else []).principals \
        >= {urn}


@pytest.mark.parametrize(
    "name, kind, urn",
    [
        (ADA.upper(), "identity", f"urn:globus:auth:identity:{ADA}"),
        (LAB, "group", f"urn:globus:groups:id:{LAB}"),
        ("flows-client", "identity", "urn:aptk:subject:flows-client"),
        ("Flows-Client", "identity", "urn:aptk:subject:Flows-Client"),  # a sub is case-sensitive: kept
        ("auth0|5f7c", "identity", "urn:aptk:subject:auth0%7C5f7c"),
        ("/lab/members", "group", "urn:aptk:group:/lab/members"),
        ("Lab Members", "group", "urn:aptk:group:Lab%20Members"),
        ("a,b", "group", "urn:aptk:group:a%2Cb"),  # never a comma: lists of principals are comma-separated
        (f"URN:GLOBUS:AUTH:IDENTITY:{ADA.upper()}", "identity", f"urn:globus:auth:identity:{ADA}"),
    ],
)
def test_names_become_urns(name, kind, urn):
    assert principal_for(name, kind) == urn


@pytest.mark.parametrize(
    "written, canonical",
    [
        (f"urn:globus:auth:identity:{ADA.upper()}", f"urn:globus:auth:identity:{ADA}"),
        (f"URN:Globus:Groups:ID:{LAB}", f"urn:globus:groups:id:{LAB}"),
        ("urn:aptk:subject:auth0%7c5f7c", "urn:aptk:subject:auth0%7C5f7c"),
        ("urn:aptk:subject:%66lows-client", "urn:aptk:subject:flows-client"),  # needless escapes undone
        (f"urn:aptk:subject:{ADA.upper()}", f"urn:globus:auth:identity:{ADA}"),  # a UUID has one name only
        (f"urn:aptk:group:{LAB}", f"urn:globus:groups:id:{LAB}"),
    ],
)
def test_written_urns_are_normalised(written, canonical):
    assert normalize_principal(written) == canonical


@pytest.mark.parametrize(
    "written, fragment",
    [
        (f"urn:globus:auth:identity:{ADA}\n", "and nothing else"),
        (f"urn:globus:auth:identity:{ADA} ", "and nothing else"),
        (f"urn:globus:auth:identity:{ADA[:-1]}", "needs a UUID"),
        ("urn:globus:auth:identity:flows-client", "needs a UUID"),
        ("urn:aptk:subject:Lab Members", "percent-encode ' '"),
        ("urn:aptk:subject:flows-client\n", "percent-encode '\\n'"),
        ("urn:aptk:subject:a,b", "percent-encode ','"),
        ("urn:aptk:subject:100%", "'%' must start an escape"),
        ("urn:aptk:subject:%ff", "not UTF-8"),
        ("urn:aptk:subject:", "needs a name"),
        ("urn:aptk:client:flows-client", "is not a principal URN"),
        ("flows-client", "is not a principal URN"),
        ("urn:aptk:subject:" + "x" * 300, "longer than 256"),
    ],
)
def test_what_cannot_be_normalised_is_refused_precisely(written, fragment):
    with pytest.raises(ValueError) as caught:
        normalize_principal(written)
    assert fragment in str(caught.value)


@pytest.mark.parametrize(
    "written, kind, uuid_kind, expected",
    [
        (ADA.upper(), "identity", None, f"urn:globus:auth:identity:{ADA}"),  # a bare UUID is one of the kind asked
        (LAB, "group", None, f"urn:globus:groups:id:{LAB}"),
        (f"URN:GLOBUS:GROUPS:ID:{LAB}", "group", None, f"urn:globus:groups:id:{LAB}"),
        ("urn:aptk:subject:flows-client", "identity", None, "urn:aptk:subject:flows-client"),
        (ADA, None, "identity", f"urn:globus:auth:identity:{ADA}"),  # a collection's owners: a UUID is an identity
        (f"urn:globus:groups:id:{LAB}", None, "identity", f"urn:globus:groups:id:{LAB}"),  # ... and any URN is fine
        (f"urn:globus:auth:identity:{ADA}", "group", None, "is not a group (expected urn:globus:groups:id:<uuid>"),
        ("urn:aptk:group:lab", "identity", None, "is not a identity"),
        ("bob", "identity", None, "is not a principal URN"),
        (f" {ADA}", None, "identity", "nor a identity UUID"),
        (ADA, None, None, "is not a principal URN"),  # without a kind, a UUID alone names nobody
    ],
)
def test_a_kind_makes_a_bare_uuid_a_principal_and_refuses_urns_of_another_kind(written, kind, uuid_kind, expected):
    if expected.startswith("urn:"):
        assert normalize_principal(written, kind, uuid_kind=uuid_kind) == expected
    else:
        with pytest.raises(ValueError) as caught:
            normalize_principal(written, kind, uuid_kind=uuid_kind)
        assert expected in str(caught.value)


def test_identity_build_uses_the_rule_for_subjects_and_groups():
    identity = Identity.build("flows-client", groups=["/lab/members", LAB.upper()], linked_identities=[ADA.upper()])
    assert identity.id == "urn:aptk:subject:flows-client"
    assert identity.principals == {
        "urn:aptk:subject:flows-client", f"urn:globus:auth:identity:{ADA}", "urn:aptk:group:/lab/members",
        f"urn:globus:groups:id:{LAB}", "all_authenticated_users",
    }


@pytest.mark.parametrize(
    "claims",
    [
        {"identity_id": "urn:aptk:group:admins"},
        {"identity_id": "flows-client", "groups": ["urn:aptk:subject:flows-client"]},
        {"identity_id": "flows-client", "groups": [""]},
        {"identity_id": "x" * 300},
    ],
)
def test_a_claim_that_cannot_be_a_principal_of_its_kind_is_a_401(claims):
    with pytest.raises(UnauthorizedRequest, match="cannot be a principal"):
        Identity.build(claims.pop("identity_id"), **claims)


def test_provider_principals_are_normalised_and_bad_ones_refused():
    provider = ActionProvider(title="P", input_schema={"type": "object"},
                              runnable_by=[f"urn:globus:groups:id:{LAB.upper()}", "urn:aptk:subject:flows-client"],
                              administered_by=[f"URN:globus:auth:identity:{ADA}"])
    assert provider.runnable_by == [f"urn:globus:groups:id:{LAB}", "urn:aptk:subject:flows-client"]
    assert provider.administered_by == [f"urn:globus:auth:identity:{ADA}"]
    with pytest.raises(ConfigurationError, match="and nothing else"):
        ActionProvider(title="P", input_schema={"type": "object"}, visible_to=[f"urn:globus:groups:id:{LAB}\n"])


# --- over HTTP ---------------------------------------------------------------------------------------------------


@pytest.fixture
def client(tmp_path):
    provider = ActionProvider(title="Grants", input_schema={"type": "object"}, synchronous=True)
    provider.run(lambda body, ctx: {"ok": True})
    with provider_client(provider, tmp_path, identity=str(uuid.uuid4())) as client:
        yield client


def test_an_upper_case_uuid_in_monitor_by_is_stored_lower_case_and_grants(client):
    monitor = client.as_identity(ADA)
    action = client.run({}, monitor_by=[f"urn:globus:auth:identity:{ADA.upper()}"],
                        manage_by=[f"URN:GLOBUS:GROUPS:ID:{LAB.upper()}"])
    assert action["monitor_by"] == [f"urn:globus:auth:identity:{ADA}"]
    assert action["manage_by"] == [f"urn:globus:groups:id:{LAB}"]
    assert monitor.status(action["action_id"])["status"] == "SUCCEEDED"
    assert client.as_identity(str(uuid.uuid4()), groups=[LAB]).release(action["action_id"])["status"] == "SUCCEEDED"


@pytest.mark.parametrize(
    "principal, fragment",
    [
        (f"urn:globus:auth:identity:{ADA}\n", "monitor_by.0: "),
        ("urn:aptk:subject:Lab Members", "percent-encode ' '"),
        ("urn:globus:auth:identity:flows-client", "needs a UUID"),
    ],
)
def test_a_principal_that_can_never_match_is_a_precise_400(client, principal, fragment):
    http = client.app.test_client()
    response = http.post("/provider/run", json={"request_id": "r", "body": {}, "monitor_by": [principal]},
                         headers={"Authorization": client.session.headers["Authorization"]})
    assert response.status_code == 400, response.json
    assert response.json["code"] == "BadActionRequest"
    assert fragment in response.json["description"]
