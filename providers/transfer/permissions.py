"""Who may read and write what in a transfer: the access rules (``/acl``) of shared collections, applied."""

from __future__ import annotations

from typing import Any

from providers.collections import Collection, paths
from providers.collections.rules import Rule, allowed, list_rules

from .request import TransferRequest

__all__ = ["Permissions", "permission_errors"]


class Permissions:
    """The caller's access to the two collections of a transfer: ``r`` on every source path and ``rw`` on every
    destination path of a shared collection it does not own, from the access rules (``/acl``)."""

    def __init__(self, engine: Any, source: Collection, destination: Collection, principals: frozenset[str]):
        self.principals = principals
        self.sides: dict[str, tuple[Collection, str, list[Rule]]] = {}
        for side, collection, need in (("source", source, "r"), ("destination", destination, "rw")):
            if collection.shared and not collection.is_owner(principals):
                self.sides[side] = (collection, need, list_rules(engine, collection.id))

    @property
    def restricted(self) -> bool:
        return bool(self.sides)

    def denied(self, side: str, rel: str) -> str | None:
        """Why the caller may not use ``rel`` on ``side``, or None."""
        if side not in self.sides:
            return None
        collection, need, rules = self.sides[side]
        if allowed(rules, paths.rule_key(rel), self.principals, need):
            return None
        word = "read" if need == "r" else "write"
        return (f"You may not {word} {paths.display(rel)} on the shared collection {collection.display_name!r}: "
                f"it needs '{need}' permission from an access rule.")

    def item_errors(self, request: TransferRequest) -> list[dict[str, str]]:
        errors = []
        for side in ("source", "destination"):
            for item in request.items:
                why = self.denied(side, item.src if side == "source" else item.dst)
                if why is not None:
                    errors.append({"source_path": item.source_path, "destination_path": item.destination_path,
                                   "code": "PermissionDenied", "error": why})
        return errors


def permission_errors(engine: Any, request: TransferRequest, source: Collection, destination: Collection,
                      principals: frozenset[str]) -> list[dict[str, str]]:
    """The items the caller may not transfer (by their paths as given), as ``errors`` entries."""
    return Permissions(engine, source, destination, principals).item_errors(request)
