"""Access rules on collection paths, kept in the toolkit's database (table ``aptk_acl_rules``).

A rule grants ``r`` (read) or ``rw`` (read and write) on a path of a collection, and everything beneath it, to an
identity, a group or all authenticated users; or ``r`` to anyone at all (``anonymous``: public read, whether or not
the caller has an identity). Paths are stored as ``/a/b/`` (``/`` for the whole collection).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import time
import uuid
from typing import Any, Iterable

import sqlalchemy as sa

from sqlalchemy.exc import IntegrityError

from toolkit.documents import ALL_AUTHENTICATED_USERS, GROUP_PREFIX, IDENTITY_PREFIX, PUBLIC, normalize_principal
from toolkit.store import create_tables

metadata = sa.MetaData()

rules_table = sa.Table(
    "aptk_acl_rules",
    metadata,
    sa.Column("rule_id", sa.String(36), primary_key=True),
    sa.Column("collection_id", sa.String(36), nullable=False),
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("principal_type", sa.String(32), nullable=False),
    sa.Column("principal", sa.String(128), nullable=False),
    sa.Column("permissions", sa.String(2), nullable=False),
    sa.Column("created_by", sa.String(128)),
    sa.Column("create_time", sa.Float, nullable=False),
    sa.Column("update_time", sa.Float, nullable=False),
    sa.UniqueConstraint("collection_id", "path", "principal_type", "principal", name="aptk_acl_rules_unique"),
    sa.Index("aptk_acl_rules_collection", "collection_id"),
)

ANONYMOUS = "anonymous"
PRINCIPAL_TYPES = ("identity", "group", ALL_AUTHENTICATED_USERS, ANONYMOUS)
PERMISSIONS = ("r", "rw")
#: Principal types that name no one in particular: their rules have an empty ``principal``.
EVERYONE = {ALL_AUTHENTICATED_USERS: ALL_AUTHENTICATED_USERS, ANONYMOUS: PUBLIC}


def stored_principal(principal_type: str, principal: str | None) -> str:
    """The principal as a rule stores it: a lower-case UUID, a principal URN of another form
    (``urn:aptk:subject:<name>``, ``urn:aptk:group:<name>``, as the server's verifier names callers without a UUID),
    or '' for all_authenticated_users and anonymous. :class:`ValueError` says why a principal cannot be one of
    ``principal_type``."""
    if principal_type in EVERYONE:
        if principal not in (None, "", principal_type):
            raise ValueError(f"must be empty for principal_type {principal_type}")
        return ""
    if not principal:
        raise ValueError(f"is required for principal_type {principal_type}")
    urn = normalize_principal(principal, principal_type)
    prefix = IDENTITY_PREFIX if principal_type == "identity" else GROUP_PREFIX
    return urn[len(prefix):] if urn.startswith(prefix) else urn


@dataclasses.dataclass(frozen=True)
class Rule:
    rule_id: str
    collection_id: str
    path: str
    principal_type: str
    principal: str
    permissions: str
    created_by: str | None
    create_time: float
    update_time: float

    @functools.cached_property
    def principal_urn(self) -> str:
        """Whom the rule is for, in the form callers are named in (a UUID is stored bare, other URNs whole)."""
        if self.principal_type in EVERYONE:
            return EVERYONE[self.principal_type]
        return normalize_principal(self.principal, self.principal_type)

    def grants(self, need: str) -> bool:
        return need == "r" or self.permissions == "rw"

    def covers(self, rule_key: str) -> bool:
        """True if the rule applies to a path in rule form (``/a/b/``)."""
        return rule_key.startswith(self.path)

    def document(self) -> dict[str, Any]:
        """The rule as Globus Transfer shows an access rule."""
        return {
            "DATA_TYPE": "access",
            "id": self.rule_id,
            "path": self.path,
            "permissions": self.permissions,
            "principal_type": self.principal_type,
            "principal": self.principal,
            "create_time": _iso(self.create_time),
            "update_time": _iso(self.update_time),
        }


def _iso(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.timezone.utc).isoformat().replace("+00:00", "Z")


def ensure_schema(engine: sa.Engine) -> None:
    """Create this module's table on first use (several processes may race to: that is fine)."""
    create_tables(engine, metadata)


def _rule(row: Any) -> Rule:
    return Rule(**{c: getattr(row, c) for c in rules_table.columns.keys()})


def list_rules(engine: sa.Engine, collection_id: str) -> list[Rule]:
    ensure_schema(engine)
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(rules_table).where(rules_table.c.collection_id == collection_id)
            .order_by(rules_table.c.create_time, rules_table.c.rule_id)
        )
        return [_rule(r) for r in rows]


def get_rule(engine: sa.Engine, rule_id: str) -> Rule | None:
    ensure_schema(engine)
    with engine.connect() as conn:
        row = conn.execute(sa.select(rules_table).where(rules_table.c.rule_id == rule_id)).first()
        return _rule(row) if row is not None else None


def find_rule(engine: sa.Engine, collection_id: str, path: str, principal_type: str, principal: str) -> Rule | None:
    ensure_schema(engine)
    with engine.connect() as conn:
        row = conn.execute(
            sa.select(rules_table).where(
                rules_table.c.collection_id == collection_id,
                rules_table.c.path == path,
                rules_table.c.principal_type == principal_type,
                rules_table.c.principal == principal,
            )
        ).first()
        return _rule(row) if row is not None else None


def create_rule(
    engine: sa.Engine, collection_id: str, path: str, principal_type: str, principal: str, permissions: str,
    created_by: str | None,
) -> tuple[Rule, bool]:
    """The new rule, True; or the rule that already exists for this principal and path, False."""
    ensure_schema(engine)
    now = time.time()
    rule = Rule(str(uuid.uuid4()), collection_id, path, principal_type, principal, permissions, created_by, now, now)
    try:
        with engine.begin() as conn:
            conn.execute(sa.insert(rules_table).values(**dataclasses.asdict(rule)))
    except IntegrityError:
        existing = find_rule(engine, collection_id, path, principal_type, principal)
        if existing is None:  # pragma: no cover - deleted again in between
            raise
        return existing, False
    return rule, True


def update_rule(engine: sa.Engine, rule_id: str, permissions: str) -> Rule | None:
    ensure_schema(engine)
    with engine.begin() as conn:
        result = conn.execute(
            sa.update(rules_table).where(rules_table.c.rule_id == rule_id)
            .values(permissions=permissions, update_time=time.time())
        )
        if result.rowcount == 0:
            return None
    return get_rule(engine, rule_id)


def delete_rule(engine: sa.Engine, rule_id: str) -> bool:
    ensure_schema(engine)
    with engine.begin() as conn:
        return conn.execute(sa.delete(rules_table).where(rules_table.c.rule_id == rule_id)).rowcount > 0


def allowed(rules: Iterable[Rule], rule_key: str, principals: Iterable[str], need: str) -> bool:
    """True if some rule gives one of ``principals`` (or anyone: ``anonymous``) ``need`` (``r`` or ``rw``) on the
    path ``rule_key``."""
    mine = set(principals)
    mine.add(PUBLIC)
    return any(r.principal_urn in mine and r.grants(need) and r.covers(rule_key) for r in rules)
