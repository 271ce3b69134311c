"""The bundled ACL provider: manage the access rules of shared collections.

Input as for the Globus set/manage permission action provider::

    {"operation": "CREATE", "endpoint_id": "<collection>", "path": "/results/",
     "principal_type": "group", "principal": "<group uuid>", "permissions": "r"}
    {"operation": "UPDATE", "endpoint_id": "<collection>", "rule_id": "<access_id>", "permissions": "rw"}
    {"operation": "DELETE", "endpoint_id": "<collection>", "rule_id": "<access_id>"}
    {"operation": "LIST",   "endpoint_id": "<collection>"}

``principal_type`` is ``identity``, ``group``, ``all_authenticated_users`` or ``anonymous`` (no ``principal`` for
these two; ``anonymous`` is public read: ``r`` only, for every caller, with an identity or without); a principal is
a UUID or its URN, or, for callers the server names without a UUID, ``urn:aptk:subject:<name>`` /
``urn:aptk:group:<name>``. ``permissions`` is ``r`` or ``rw``; a rule covers its path and everything beneath it. CREATE
answers ``details.access_id`` (the rule id, a UUID); LIST answers ``details.DATA``, the rules. Creating a rule that
exists already (same path and principal, same permissions) answers the existing ``access_id``.

Only the collection's owners may manage its rules: for anyone else the action ends FAILED with ``PermissionDenied``,
as a transfer the caller may not do does (one way for a flow to catch both: ``ActionFailedException``; a 403 at
``/run`` means only that the caller may not use the provider at all, ``runnable_by``). For an owner, an unknown
collection or rule id, a collection that is not shared, a path leaving the collection are 400s; for anyone, an
unknown collection and input that can never be valid are. The provider is synchronous:
``/run`` answers SUCCEEDED (or FAILED) at once. Rules live in the toolkit's database; the transfer provider
enforces them.
"""

from __future__ import annotations

from typing import Any, Mapping

from toolkit import ActionFailed, ActionProvider, ApiError, BadActionRequest, HookContext
from toolkit import RunContext

from providers.collections import Collection, find_collection, paths, served_collections
from providers.collections import rules as store
from providers.collections.paths import PathOutsideCollection
from providers.collections.rules import ANONYMOUS, PERMISSIONS, PRINCIPAL_TYPES

__all__ = ["provider"]

_IGNORED = "Accepted for compatibility with the Globus permission action provider; has no effect here."

INPUT_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "additionalProperties": False,
    "required": ["operation", "endpoint_id"],
    "description": (
        "CREATE needs path, principal_type, principal (not for all_authenticated_users and anonymous) and "
        "permissions (r only for anonymous); UPDATE "
        "needs rule_id and permissions; DELETE needs rule_id; LIST needs only endpoint_id."
    ),
    "properties": {
        "operation": {"type": "string", "enum": ["CREATE", "UPDATE", "DELETE", "LIST"]},
        "endpoint_id": {"type": "string", "minLength": 1, "maxLength": 128,
                        "description": "The collection's UUID (or its configured name)."},
        "path": {"type": "string", "minLength": 1, "maxLength": 4096,
                 "description": "A folder of the collection, from its root ('/shared/run1/')."},
        "principal_type": {"type": "string", "enum": list(PRINCIPAL_TYPES)},
        "principal": {"type": "string", "maxLength": 128,
                      "description": "An identity or group UUID, or a principal URN; empty for "
                                     "all_authenticated_users and anonymous."},
        "permissions": {"type": "string", "enum": list(PERMISSIONS)},
        "rule_id": {"type": "string", "minLength": 1, "maxLength": 64,
                    "description": "The access_id CREATE answered (for UPDATE and DELETE)."},
        "notify_email": {"type": "string", "description": _IGNORED},
        "notify_message": {"type": "string", "description": _IGNORED},
    },
}

provider = ActionProvider(
    name="acl",
    title="Access rules",
    subtitle="Manage who may read and write the paths of a shared collection",
    description=(
        "Creates, updates, deletes and lists access rules (r or rw, on a path, for an identity, a group or all "
        "authenticated users) of a shared collection; the transfer provider enforces them. Only the collection's "
        "owners may manage them. Input as for the Globus set permission action provider."
    ),
    keywords=["acl", "permission", "sharing", "globus"],
    input_schema=INPUT_SCHEMA,
    synchronous=True,
)


def _collection(config: Mapping[str, Any], endpoint_id: str) -> Collection:
    return find_collection(served_collections(config), endpoint_id, "endpoint_id")


def _require(body: Mapping[str, Any], *fields: str) -> None:
    for field in fields:
        if body.get(field) in (None, ""):
            raise BadActionRequest(f"{field}: is required for operation {body['operation']}.")


def _principal(principal_type: str, principal: str | None) -> str:
    """The principal as stored (see :func:`providers.collections.rules.stored_principal`), or a 400 saying why."""
    try:
        return store.stored_principal(principal_type, principal)
    except ValueError as exc:
        raise BadActionRequest(f"principal: {exc}.") from None


def _rule_path(path: str) -> str:
    try:
        return paths.rule_key(paths.normalize(path))
    except PathOutsideCollection as exc:
        raise BadActionRequest(f"path: {exc.path!r} {exc.reason}.") from None


def _public_read_only(principal_type: str, permissions: str) -> None:
    if principal_type == ANONYMOUS and permissions != "r":
        raise BadActionRequest("permissions: an anonymous rule grants public read ('r') only; grant 'rw' to "
                               "all_authenticated_users, a group or an identity.")


@provider.check
def check_request(body: dict[str, Any], ctx: HookContext) -> None:
    engine = ctx.store.engine
    collection = _collection(ctx.config, body["endpoint_id"])
    if not collection.is_owner(ctx.identity.principals):
        return  # the action ends FAILED, PermissionDenied; nothing about its rules is told to a non-owner here
    operation = body["operation"]
    if operation == "CREATE":
        _require(body, "path", "principal_type", "permissions")
        if not collection.shared:
            raise BadActionRequest(
                f"endpoint_id: the collection {collection.display_name!r} is not shared; access rules apply only "
                "to shared collections (its users need no rule)."
            )
        path = _rule_path(body["path"])
        principal = _principal(body["principal_type"], body.get("principal"))
        _public_read_only(body["principal_type"], body["permissions"])
        existing = store.find_rule(engine, collection.id, path, body["principal_type"], principal)
        if existing is not None and existing.permissions != body["permissions"]:
            raise BadActionRequest(
                f"A rule for this principal on {path} exists already ({existing.rule_id}, permissions "
                f"{existing.permissions!r}); UPDATE it instead."
            )
    elif operation in ("UPDATE", "DELETE"):
        _require(body, "rule_id", *(["permissions"] if operation == "UPDATE" else []))
        rule = store.get_rule(engine, body["rule_id"])
        if rule is None or rule.collection_id != collection.id:
            raise BadActionRequest(
                f"rule_id: there is no rule {body['rule_id']!r} on the collection {collection.display_name!r}."
            )
        if operation == "UPDATE":
            _public_read_only(rule.principal_type, body["permissions"])


@provider.run
def manage(body: dict[str, Any], ctx: RunContext) -> dict[str, Any]:
    try:
        collection = _collection(ctx.config, body["endpoint_id"])
    except ApiError as exc:
        raise ActionFailed(exc.code, exc.description) from None
    if not collection.is_owner(ctx.principals):
        raise ActionFailed("PermissionDenied", f"Only the owners of the collection {collection.display_name!r} may "
                                               "manage its access rules.")
    engine = ctx.store.engine
    operation = body["operation"]
    resource = f"/endpoint/{collection.id}/access"
    if operation == "LIST":
        found = [r.document() for r in store.list_rules(engine, collection.id)]
        return {"DATA_TYPE": "access_list", "endpoint": collection.id, "length": len(found), "DATA": found}
    if operation == "CREATE":
        try:
            path = _rule_path(body["path"])
            principal = _principal(body["principal_type"], body.get("principal"))
            _public_read_only(body["principal_type"], body["permissions"])
        except BadActionRequest as exc:
            raise ActionFailed("BadRequest", exc.description) from None
        rule, created = store.create_rule(engine, collection.id, path, body["principal_type"], principal,
                                          body["permissions"], ctx.creator_id)
        if not created and rule.permissions != body["permissions"]:
            raise ActionFailed("Exists", f"A rule for this principal on {path} exists already ({rule.rule_id}); "
                                         "UPDATE it instead.", access_id=rule.rule_id)
        ctx.log(f"Rule {rule.rule_id} {'created' if created else 'exists'}: {rule.permissions} on {rule.path} for "
                f"{rule.principal_type} {rule.principal}".rstrip())
        return {
            "DATA_TYPE": "access_create_result",
            "code": "Created" if created else "Exists",
            "message": "Access rule created successfully." if created else "The access rule exists already.",
            "resource": resource,
            "access_id": rule.rule_id,
            "rule": rule.document(),
        }
    rule_id = body["rule_id"]
    current = store.get_rule(engine, rule_id)
    if current is None or current.collection_id != collection.id:
        raise ActionFailed("RuleNotFound", f"There is no rule {rule_id!r} on this collection (any more).")
    if operation == "UPDATE":
        if current.principal_type == ANONYMOUS and body["permissions"] != "r":
            raise ActionFailed("BadRequest", "An anonymous rule grants public read ('r') only.")
        updated = store.update_rule(engine, rule_id, body["permissions"])
        if updated is None:
            raise ActionFailed("RuleNotFound", f"The rule {rule_id!r} was deleted meanwhile.")
        ctx.log(f"Rule {rule_id} updated: {updated.permissions}")
        return {"DATA_TYPE": "result", "code": "Updated", "message": f"Access rule '{rule_id}' updated successfully.",
                "resource": f"{resource}/{rule_id}", "access_id": rule_id, "rule": updated.document()}
    if not store.delete_rule(engine, rule_id):
        raise ActionFailed("RuleNotFound", f"The rule {rule_id!r} was deleted meanwhile.")
    ctx.log(f"Rule {rule_id} deleted")
    return {"DATA_TYPE": "result", "code": "Deleted", "message": f"Access rule '{rule_id}' deleted successfully.",
            "resource": f"{resource}/{rule_id}", "access_id": rule_id}
