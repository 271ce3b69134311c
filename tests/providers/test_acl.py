"""The ACL provider, and the transfer provider enforcing its rules on shared collections."""

from __future__ import annotations

import pytest

from toolkit.client import ClientError

from .conftest import GROUP, OWNER, USER, body, make_tree

OTHER = "44444444-4444-4444-8444-444444444444"


def refused(client, request):
    with pytest.raises(ClientError) as caught:
        client.run(request)
    return caught.value


def create(site, path, principal_type, principal, permissions, **kw):
    status = site.acl().run({"operation": "CREATE", "endpoint_id": "shared", "path": path,
                             "principal_type": principal_type, "principal": principal,
                             "permissions": permissions, **kw})
    assert status["status"] == "SUCCEEDED", status
    return status["details"]


def test_owner_creates_lists_updates_and_deletes_rules(site):
    acl = site.acl()
    created = create(site, "/results", "identity", USER, "r")
    assert created["code"] == "Created" and created["DATA_TYPE"] == "access_create_result"
    rule_id = created["access_id"]
    listed = acl.run({"operation": "LIST", "endpoint_id": "shared"})["details"]
    assert listed["DATA_TYPE"] == "access_list" and listed["length"] == 1
    rule = listed["DATA"][0]
    assert {k: rule[k] for k in ("id", "path", "permissions", "principal_type", "principal")} == {
        "id": rule_id, "path": "/results/", "permissions": "r", "principal_type": "identity", "principal": USER}
    # The same rule again answers the existing one (a flow may run twice); another permission must UPDATE.
    again = create(site, "results/", "identity", f"urn:globus:auth:identity:{USER}", "r")
    assert (again["code"], again["access_id"]) == ("Exists", rule_id)
    error = refused(acl, {"operation": "CREATE", "endpoint_id": "shared", "path": "/results/",
                          "principal_type": "identity", "principal": USER, "permissions": "rw"})
    assert error.status == 400 and "UPDATE" in error.description
    updated = acl.run({"operation": "UPDATE", "endpoint_id": "shared", "rule_id": rule_id, "permissions": "rw"})
    assert updated["details"]["code"] == "Updated" and updated["details"]["rule"]["permissions"] == "rw"
    deleted = acl.run({"operation": "DELETE", "endpoint_id": "shared", "rule_id": rule_id})
    assert deleted["details"]["code"] == "Deleted"
    assert acl.run({"operation": "LIST", "endpoint_id": "shared"})["details"]["DATA"] == []
    error = refused(acl, {"operation": "DELETE", "endpoint_id": "shared", "rule_id": rule_id})
    assert error.status == 400 and "rule_id" in error.description


def test_only_owners_manage_rules(site):
    rule_id = create(site, "/", "all_authenticated_users", "", "r")["access_id"]
    stranger = site.acl(USER)
    for request in ({"operation": "LIST", "endpoint_id": "shared"},
                    {"operation": "CREATE", "endpoint_id": "shared", "path": "/", "principal_type": "identity",
                     "principal": USER, "permissions": "rw"},
                    {"operation": "UPDATE", "endpoint_id": "shared", "rule_id": rule_id, "permissions": "rw"},
                    {"operation": "DELETE", "endpoint_id": "shared", "rule_id": "no-such-rule"}):
        status = stranger.run(request)
        assert (status["status"], status["details"]["code"]) == ("FAILED", "PermissionDenied"), request
        assert status["details"]["description"] == "Only the owners of the collection 'shared' may manage its " \
                                                   "access rules."
    listed = site.acl().run({"operation": "LIST", "endpoint_id": "shared"})["details"]
    assert [r["permissions"] for r in listed["DATA"]] == ["r"]  # nothing a stranger asked for happened
    # Membership of a group that does not own the collection changes nothing.
    member = site.client(OTHER, "/acl", groups=(GROUP,))
    assert member.run({"operation": "LIST", "endpoint_id": "shared"})["details"]["code"] == "PermissionDenied"


def test_what_a_caller_may_not_do_ends_failed_the_same_way_in_acl_and_transfer(site):
    # One way for a flow to catch it: the action is created and ends FAILED with PermissionDenied (in a flow:
    # ActionFailedException), never a 403 at /run.
    make_tree(site.roots["shared"], {"private/x.txt": b"x"})
    transfer = site.transfer(USER).run(body("shared", "dst", ("/private/x.txt", "/x.txt")), wait=True)
    acl = site.acl(USER).run({"operation": "CREATE", "endpoint_id": "shared", "path": "/private/",
                              "principal_type": "identity", "principal": USER, "permissions": "r"}, wait=True)
    for status in (transfer, acl):
        assert (status["status"], status["details"]["code"]) == ("FAILED", "PermissionDenied"), status


def test_an_owner_group_member_may_manage(make_site, tmp_path):
    from .conftest import local_collection

    site = make_site([local_collection("shared", tmp_path / "sh", shared=True,
                                       owners=[f"urn:globus:groups:id:{GROUP}"])])
    member = site.client(OTHER, "/acl", groups=(GROUP,))
    assert member.run({"operation": "LIST", "endpoint_id": "shared"})["status"] == "SUCCEEDED"


@pytest.mark.parametrize("request_body, expected", [
    ({"operation": "LIST", "endpoint_id": "nowhere"}, "endpoint_id: there is no collection 'nowhere'"),
    ({"operation": "CREATE", "endpoint_id": "src", "path": "/", "principal_type": "identity", "principal": USER,
      "permissions": "r"}, "is not shared"),
    ({"operation": "CREATE", "endpoint_id": "shared", "path": "/../x", "principal_type": "identity",
      "principal": USER, "permissions": "r"}, "escapes the collection root"),
    ({"operation": "CREATE", "endpoint_id": "shared", "path": "/x", "principal_type": "identity",
      "principal": "bob", "permissions": "r"}, "principal: 'bob' is not a principal URN"),
    ({"operation": "CREATE", "endpoint_id": "shared", "path": "/x", "principal_type": "group",
      "principal": f"urn:globus:auth:identity:{USER}", "permissions": "r"}, "is not a group"),
    ({"operation": "CREATE", "endpoint_id": "shared", "path": "/x", "principal_type": "identity",
      "principal": USER}, "permissions: is required"),
    ({"operation": "CREATE", "endpoint_id": "shared", "path": "/x", "principal_type": "identity",
      "principal": USER, "permissions": "w"}, "permissions"),
    ({"operation": "UPDATE", "endpoint_id": "shared", "permissions": "r"}, "rule_id: is required"),
    ({"operation": "DELETE", "endpoint_id": "shared", "rule_id": "00000000-0000-4000-8000-000000000000"},
     "no rule"),
    ({"operation": "PURGE", "endpoint_id": "shared"}, "operation"),
])
def test_bad_requests_are_400s(site, request_body, expected):
    error = refused(site.acl(), request_body)
    assert error.status == 400, error
    assert expected in error.description


def test_a_rule_of_one_collection_cannot_be_changed_through_another(make_site, tmp_path):
    from .conftest import local_collection

    site = make_site([local_collection("shared", tmp_path / "a", shared=True),
                      local_collection("other", tmp_path / "b", shared=True)])
    rule_id = create(site, "/", "identity", USER, "r")["access_id"]
    error = refused(site.acl(), {"operation": "DELETE", "endpoint_id": "other", "rule_id": rule_id})
    assert error.status == 400


# --- enforcement by the transfer provider ---------------------------------------------------------------------


def test_shared_collection_read_refused_then_granted_by_a_rule_then_allowed(site):
    make_tree(site.roots["shared"], {"results/run1/data.bin": 50_000, "private/secret.txt": b"s"})
    user = site.transfer(USER)
    request = body("shared", "dst", ("/results/run1", "/run1", True))
    denied = user.run(request, wait=True)
    assert denied["status"] == "FAILED"
    details = denied["details"]
    assert details["code"] == "PermissionDenied"
    assert details["errors"][0]["source_path"] == "/results/run1"
    assert "read" in details["errors"][0]["error"] and "'r'" in details["errors"][0]["error"]
    assert details["bytes_transferred"] == 0 and not (site.roots["dst"] / "run1").exists()
    # The owner needs no rule.
    assert site.transfer(OWNER).run(body("shared", "dst", ("/private", "/p", True)), wait=True)["status"] == \
        "SUCCEEDED"
    rule = create(site, "/results/", "identity", USER, "r")
    allowed = user.run(request, wait=True)
    assert allowed["status"] == "SUCCEEDED", allowed
    assert (site.roots["dst"] / "run1" / "data.bin").stat().st_size == 50_000
    # The rule covers /results/ only.
    other = user.run(body("shared", "dst", ("/private/secret.txt", "/s.txt")), wait=True)
    assert other["details"]["code"] == "PermissionDenied"
    # Once deleted, refused again.
    site.acl().run({"operation": "DELETE", "endpoint_id": "shared", "rule_id": rule["access_id"]})
    assert user.run(request, wait=True)["details"]["code"] == "PermissionDenied"


def test_writing_a_shared_collection_needs_rw(site):
    make_tree(site.roots["src"], {"in.txt": b"in"})
    user = site.transfer(USER, groups=(GROUP,))
    request = body("src", "shared", ("/in.txt", "/drop/in.txt"))
    rule = create(site, "/drop/", "group", GROUP, "r")
    denied = user.run(request, wait=True)
    assert denied["details"]["code"] == "PermissionDenied"
    assert denied["details"]["errors"][0]["destination_path"] == "/drop/in.txt"
    assert "write" in denied["details"]["errors"][0]["error"]
    assert not (site.roots["shared"] / "drop").exists()
    site.acl().run({"operation": "UPDATE", "endpoint_id": "shared", "rule_id": rule["access_id"],
                    "permissions": "rw"})
    assert user.run(request, wait=True)["status"] == "SUCCEEDED"
    assert (site.roots["shared"] / "drop" / "in.txt").read_bytes() == b"in"
    # Not in the group: no access.
    assert site.transfer(OTHER).run(request, wait=True)["details"]["code"] == "PermissionDenied"


def test_all_authenticated_users_rule(site):
    make_tree(site.roots["shared"], {"pub/readme.txt": b"hello"})
    create(site, "/pub", "all_authenticated_users", "", "r")
    status = site.transfer(OTHER).run(body("shared", "dst", ("/pub/readme.txt", "/readme.txt")), wait=True)
    assert status["status"] == "SUCCEEDED", status


ROBOT = "55555555-5555-4555-8555-555555555555"


def test_an_anonymous_rule_is_public_read_for_callers_with_an_identity_or_without(site):
    make_tree(site.roots["shared"], {"pub/readme.txt": b"hello", "private/x.txt": b"x"})
    make_tree(site.roots["src"], {"in.txt": b"in"})
    read = body("shared", "dst", ("/pub/readme.txt", "/readme.txt"))
    for caller in (ROBOT, OTHER):
        assert site.transfer(caller).run(read, wait=True)["details"]["code"] == "PermissionDenied"
    rule = create(site, "/pub/", "anonymous", "", "r")
    listed = site.acl().run({"operation": "LIST", "endpoint_id": "shared"})["details"]["DATA"]
    assert [(r["principal_type"], r["principal"], r["permissions"]) for r in listed] == [("anonymous", "", "r")]
    for caller in (ROBOT, OTHER):
        status = site.transfer(caller).run(read, wait=True)
        assert status["status"] == "SUCCEEDED", status
        outside = site.transfer(caller).run(body("shared", "dst", ("/private/x.txt", "/x.txt")), wait=True)
        assert outside["details"]["code"] == "PermissionDenied"
        write = site.transfer(caller).run(body("src", "shared", ("/in.txt", "/pub/in.txt")), wait=True)
        assert write["details"]["code"] == "PermissionDenied"  # public read is no public write
    assert not (site.roots["shared"] / "pub" / "in.txt").exists()
    error = refused(site.acl(), {"operation": "UPDATE", "endpoint_id": "shared", "rule_id": rule["access_id"],
                                 "permissions": "rw"})
    assert (error.status, error.code) == (400, "BadActionRequest")
    assert "anonymous rule grants public read ('r') only" in error.description
    error = refused(site.acl(), {"operation": "CREATE", "endpoint_id": "shared", "path": "/drop/",
                                 "principal_type": "anonymous", "permissions": "rw"})
    assert (error.status, "public read ('r') only" in error.description) == (400, True)
    error = refused(site.acl(), {"operation": "CREATE", "endpoint_id": "shared", "path": "/pub/",
                                 "principal_type": "anonymous", "principal": USER, "permissions": "r"})
    assert (error.status, error.description) == (400, "principal: must be empty for principal_type anonymous.")
    site.acl().run({"operation": "DELETE", "endpoint_id": "shared", "rule_id": rule["access_id"]})
    assert site.transfer(ROBOT).run(read, wait=True)["details"]["code"] == "PermissionDenied"


def test_an_anonymous_rule_needs_no_principal_at_all_the_others_do(site):
    from providers.collections import load_collections
    from providers.collections.rules import list_rules
    from providers.transfer import Permissions
    from toolkit import get_toolkit

    engine = get_toolkit(site.app).runtime.store.engine
    shared = next(c for c in load_collections(site.app.config) if c.name == "shared")
    create(site, "/pub/", "anonymous", "", "r")
    create(site, "/all/", "all_authenticated_users", "", "r")
    assert len(list_rules(engine, shared.id)) == 2
    nobody = Permissions(engine, shared, shared, frozenset())  # a caller the server knows no principal of
    assert nobody.denied("source", "pub/readme.txt") is None
    assert nobody.denied("source", "all/readme.txt") is not None
    assert nobody.denied("destination", "pub/readme.txt") is not None


def test_an_all_authenticated_users_rule_lets_any_caller_write(site):
    make_tree(site.roots["src"], {"in.txt": b"in"})
    for caller in (ROBOT, OTHER):
        write = body("src", "shared", ("/in.txt", f"/drop/{caller[:5]}.txt"))
        assert site.transfer(caller).run(write, wait=True)["details"]["code"] == "PermissionDenied"
    create(site, "/drop/", "all_authenticated_users", "", "rw")
    for caller in (ROBOT, OTHER):
        write = body("src", "shared", ("/in.txt", f"/drop/{caller[:5]}.txt"))
        assert site.transfer(caller).run(write, wait=True)["status"] == "SUCCEEDED"
    assert sorted(p.name for p in (site.roots["shared"] / "drop").iterdir()) == ["44444.txt", "55555.txt"]


def test_a_non_shared_collection_needs_no_rule(site):
    make_tree(site.roots["src"], {"a.txt": b"a"})
    assert site.transfer(OTHER).run(body("src", "dst", ("/a.txt", "/a.txt")), wait=True)["status"] == "SUCCEEDED"


def test_a_link_does_not_lead_past_the_rules(site):
    shared = site.roots["shared"]
    make_tree(shared, {"results/ok.txt": b"ok", "private/secret.txt": b"secret"})
    (shared / "results" / "private-link").symlink_to(shared / "private")
    create(site, "/results/", "identity", USER, "r")
    user = site.transfer(USER)
    nested = user.run(body("shared", "dst", ("/results", "/r", True)), wait=True)
    assert (nested["status"], nested["details"]["code"]) == ("FAILED", "PermissionDenied"), nested
    assert nested["details"]["errors"][0]["source_path"] == "/results/private-link/secret.txt"
    direct = user.run(body("shared", "dst", ("/results/private-link/secret.txt", "/s.txt")), wait=True)
    assert (direct["status"], direct["details"]["code"]) == ("FAILED", "PermissionDenied")
    assert not (site.roots["dst"] / "r").exists() and not (site.roots["dst"] / "s.txt").exists()
    # The owner follows the link.
    assert site.transfer(OWNER).run(body("shared", "dst", ("/results", "/r", True)), wait=True)["status"] == \
        "SUCCEEDED"
    assert (site.roots["dst"] / "r" / "private-link" / "secret.txt").read_bytes() == b"secret"


def test_owners_written_in_any_case_own_the_collection(make_site, tmp_path):
    from .conftest import local_collection

    # Upper-case prefixes and UUIDs, as people paste them: the owner and the group's members manage rules and
    # write the shared collection; nobody else does.
    owners = [f"URN:GLOBUS:AUTH:IDENTITY:{OWNER.upper()}", f"urn:globus:groups:id:{GROUP.upper()}"]
    site = make_site([local_collection("src", tmp_path / "src"),
                      local_collection("shared", tmp_path / "shared", shared=True, owners=owners)])
    make_tree(site.roots["src"], {"a.txt": b"a"})
    listed = site.acl(OWNER).run({"operation": "LIST", "endpoint_id": "shared"})
    assert listed["status"] == "SUCCEEDED", listed
    member = site.acl(OTHER, groups=(GROUP,)).run({"operation": "LIST", "endpoint_id": "shared"})
    assert member["status"] == "SUCCEEDED", member
    stranger = site.acl(USER).run({"operation": "LIST", "endpoint_id": "shared"})
    assert (stranger["status"], stranger["details"]["code"]) == ("FAILED", "PermissionDenied")
    written = site.transfer(OWNER).run(body("src", "shared", ("/a.txt", "/a.txt")), wait=True)
    assert written["status"] == "SUCCEEDED", written


@pytest.mark.parametrize("owner, reason", [
    (f"urn:globus:auth:identity:{OWNER}\n", "nothing else"),
    ("urn:globus:auth:identity:" + "-" * 36, "needs a UUID"),
    (f"urn:globus:identity:{OWNER}", "is not a principal URN"),
    (f" {OWNER}", "is not a principal URN"),
])
def test_an_owner_that_is_no_principal_stops_the_app_from_starting(make_site, tmp_path, owner, reason):
    from toolkit import ConfigurationError

    from .conftest import local_collection

    with pytest.raises(ConfigurationError) as stopped:
        make_site([local_collection("shared", tmp_path / "shared", shared=True, owners=[owner])])
    assert "collection 'shared': owners: " in str(stopped.value) and reason in str(stopped.value)


def test_a_create_retried_after_its_rule_was_updated_finds_its_action(site):
    acl = site.acl()
    request = {"operation": "CREATE", "endpoint_id": "shared", "path": "/retried", "principal_type": "identity",
               "principal": USER, "permissions": "r"}
    first = acl.run(request, request_id="create-1")
    rule_id = first["details"]["access_id"]
    acl.run({"operation": "UPDATE", "endpoint_id": "shared", "rule_id": rule_id, "permissions": "rw"})
    # The flow engine lost the answer and sends the same run again: its action, not "exists already".
    again = acl.run(request, request_id="create-1")
    assert (again["action_id"], again["details"]["access_id"]) == (first["action_id"], rule_id)
    assert "UPDATE" in refused(acl, request).description  # a new request is still checked


def test_rules_can_name_callers_without_a_uuid(site):
    """A client-credentials caller (urn:aptk:subject:<name>) or a named group can be granted a rule like anyone."""
    from providers.collections import rules

    client_rule = create(site, "/drop/", "identity", "urn:aptk:subject:flows-client", "rw")
    group_rule = create(site, "/pub/", "group", "urn:aptk:group:lab%20members", "r")
    listed = {r["id"]: r for r in site.acl().run({"operation": "LIST", "endpoint_id": "shared"})["details"]["DATA"]}
    assert listed[client_rule["access_id"]]["principal"] == "urn:aptk:subject:flows-client"
    assert listed[group_rule["access_id"]]["principal"] == "urn:aptk:group:lab%20members"
    found = [rules.Rule(r["id"], "", r["path"], r["principal_type"], r["principal"], r["permissions"], None, 0, 0)
             for r in listed.values()]
    assert rules.allowed(found, "/drop/x/", {"urn:aptk:subject:flows-client"}, "rw")
    assert not rules.allowed(found, "/drop/x/", {"urn:aptk:subject:other-client"}, "r")
    assert rules.allowed(found, "/pub/", {"urn:aptk:group:lab%20members"}, "r")
    # A UUID written as an upper-case URN is stored as the UUID, so it matches the verifier's form.
    upper = create(site, "/up/", "identity", f"URN:GLOBUS:AUTH:IDENTITY:{OTHER.upper()}", "r")
    listed = {r["id"]: r for r in site.acl().run({"operation": "LIST", "endpoint_id": "shared"})["details"]["DATA"]}
    assert listed[upper["access_id"]]["principal"] == OTHER


@pytest.mark.parametrize(
    ("principal_type", "principal", "expected"),
    [
        ("group", "urn:aptk:subject:flows-client", "is not a group"),
        ("identity", "urn:aptk:group:lab", "is not a identity"),
        ("identity", "urn:aptk:subject:two words", "percent-encode"),
        ("identity", f"urn:globus:auth:identity:{OTHER}\n", "UUID"),
    ],
)
def test_principals_that_can_never_match_are_refused(site, principal_type, principal, expected):
    error = refused(site.acl(), {"operation": "CREATE", "endpoint_id": "shared", "path": "/x/",
                                 "principal_type": principal_type, "principal": principal, "permissions": "r"})
    assert error.status == 400 and expected in error.description, error.description
