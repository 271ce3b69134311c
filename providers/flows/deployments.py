"""Deployed flows: what was deployed (a validated definition, an input schema, who may see, run and administer it),
kept in a table of the provider's own beside the actions, so that every process serving the provider sees the
same flows.

A flow is deployed through the API (``POST /flows``) or from a file of ``APTK_FLOWS_DIR``; both go through
:func:`parse`, which refuses anything wrong with a :class:`~toolkit.BadActionRequest` saying precisely what. Rows
of the directory's files carry the file's name and digest: :func:`sync_directory` writes only what changed, so that
every gunicorn worker may run it at start-up and again later without two of them fighting.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Mapping

import jsonschema
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from toolkit.documents import ALL_AUTHENTICATED_USERS, PUBLIC, normalize_principal
from toolkit.errors import ActionConflict, BadActionRequest, ConfigurationError
from toolkit.store import create_tables

logger = logging.getLogger("providers.flows")

FLOW_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
"""What a flow id may hold: it is the URL segment the flow is served at (``/flows/<id>/``)."""
DEFAULT_INPUT_SCHEMA: dict[str, Any] = {"type": "object"}
FIELDS = {
    "id", "title", "subtitle", "description", "keywords", "definition", "input_schema", "visible_to",
    "runnable_by", "administered_by",
}
"""What a deployment document (an API request body or a file of ``APTK_FLOWS_DIR``) may hold."""
GLOBUS_NAMES = {"flow_viewers": "visible_to", "flow_starters": "runnable_by", "flow_administrators": "administered_by"}
"""Globus Flows' names of the principal fields, taken as ours, so that a Globus deployment document deploys as is."""
DIRECTORY_OWNER = "APTK_FLOWS_DIR"
"""The owner of a flow deployed from a file: no person; only the file changes it."""


@dataclasses.dataclass(frozen=True)
class DeployedFlow:
    """One deployed flow. ``definition`` is the validated definition (what the language module's ``validate``
    returned); ``source`` is the definition document as deployed (JSON), which is what the API shows."""

    id: str
    title: str
    definition: Any
    input_schema: dict[str, Any]
    owner: str
    source: dict[str, Any] = dataclasses.field(default_factory=dict)
    subtitle: str | None = None
    description: str | None = None
    keywords: tuple[str, ...] = ()
    visible_to: tuple[str, ...] = ()
    runnable_by: tuple[str, ...] = ()
    administered_by: tuple[str, ...] = ()
    created: float = 0.0
    updated: float = 0.0
    version: int = 1
    origin: str | None = None
    """The file of ``APTK_FLOWS_DIR`` the flow was deployed from (its name), or None for one deployed by API."""

    def administrators(self) -> set[str]:
        """Who may change, delete and see this flow, and manage every run of it."""
        return {self.owner, *self.administered_by} - {DIRECTORY_OWNER}

    def viewers(self) -> set[str]:
        return {*self.visible_to, *self.runnable_by, *self.administrators()}


metadata = sa.MetaData()
flows = sa.Table(
    "flows_deployments",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("document", sa.JSON, nullable=False),  # the deployment document as accepted (id excluded)
    sa.Column("owner", sa.String(512), nullable=False),
    sa.Column("created", sa.Float, nullable=False),
    sa.Column("updated", sa.Float, nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("origin", sa.String(512), nullable=True),
    sa.Column("digest", sa.String(64), nullable=True),
)


# --- checking a deployment document ---------------------------------------------------------------------------


def _text(document: Mapping[str, Any], name: str, *, required: bool = False, limit: int = 2000) -> str | None:
    value = document.get(name)
    if value is None:
        if required:
            raise BadActionRequest(f"{name}: is required.")
        return None
    if not isinstance(value, str) or not value.strip():
        raise BadActionRequest(f"{name}: must be a non-empty string.")
    if len(value) > limit:
        raise BadActionRequest(f"{name}: must be at most {limit} characters.")
    return value


def _principals(document: Mapping[str, Any], name: str, words: tuple[str, ...]) -> tuple[str, ...]:
    value = document.get(name, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadActionRequest(f"{name}: must be a list of principal URNs.")
    result = []
    for i, item in enumerate(value):
        if item in words:
            result.append(item)
            continue
        try:
            result.append(normalize_principal(item))
        except ValueError as exc:
            also = f" (or {' or '.join(repr(w) for w in words)})" if words else ""
            raise BadActionRequest(f"{name}[{i}]: {exc}{also}.") from None
    return tuple(dict.fromkeys(result))


def check_id(flow_id: Any, where: str = "id") -> str:
    if not isinstance(flow_id, str) or not FLOW_ID.fullmatch(flow_id):
        raise BadActionRequest(
            f"{where}: {str(flow_id)[:80]!r} is not a flow id (1 to 64 letters, digits, '_', '.' or '-', "
            "beginning with a letter or digit)."
        )
    return flow_id


def check_input_schema(schema: Any) -> dict[str, Any]:
    if not isinstance(schema, dict):
        raise BadActionRequest("input_schema: must be a JSON Schema object.")
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        cls.check_schema(schema)
    except jsonschema.SchemaError as exc:
        path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in exc.absolute_path)
        raise BadActionRequest(f"input_schema{path}: is not a valid JSON Schema: {exc.message}") from None
    return schema


class InvalidDefinition(BadActionRequest):
    """A definition the language refused; ``errors`` lists every problem, as the description does."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = list(errors)
        super().__init__("definition: " + "; ".join(self.errors))

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "errors": self.errors}


def validate_definition(definition: Any, input_schema: dict[str, Any] | None) -> Any:
    """The validated definition, or :class:`InvalidDefinition` listing the language's every error verbatim."""
    from .language import DefinitionError, validate

    if not isinstance(definition, dict):
        raise BadActionRequest("definition: must be a JSON object (a flow definition).")
    try:
        return validate(definition, input_schema=input_schema)
    except DefinitionError as exc:
        raise InvalidDefinition(list(exc.errors)) from None


def parse(document: Any, *, partial: DeployedFlow | None = None) -> dict[str, Any]:
    """The checked deployment document (``id`` excluded), or a 400 naming what is wrong.

    With ``partial`` (an update), fields left out keep that flow's values.
    """
    if not isinstance(document, dict):
        raise BadActionRequest("The request body must be a JSON object (a flow deployment).")
    document = dict(document)
    for globus_name, name in GLOBUS_NAMES.items():
        if globus_name in document:
            if name in document:
                raise BadActionRequest(f"{globus_name}: give either {globus_name} or {name}, not both.")
            document[name] = document.pop(globus_name)
    unknown = sorted(set(document) - FIELDS)
    if unknown:
        raise BadActionRequest(f"Unknown field {unknown[0]!r}; a flow deployment takes {', '.join(sorted(FIELDS))}.")
    if partial is not None:
        document = {**stored_document(partial), **document}
    checked: dict[str, Any] = {"title": _text(document, "title", required=True, limit=128)}
    for name in ("subtitle", "description"):
        value = _text(document, name, limit=128 if name == "subtitle" else 4096)
        if value is not None:
            checked[name] = value
    keywords = document.get("keywords", [])
    if not isinstance(keywords, list) or not all(isinstance(k, str) and 0 < len(k) <= 64 for k in keywords):
        raise BadActionRequest("keywords: must be a list of strings of 1 to 64 characters.")
    checked["keywords"] = keywords
    if "definition" not in document:
        raise BadActionRequest("definition: is required.")
    checked["input_schema"] = check_input_schema(document.get("input_schema", DEFAULT_INPUT_SCHEMA))
    validate_definition(document["definition"], checked["input_schema"])
    checked["definition"] = document["definition"]
    checked["visible_to"] = list(_principals(document, "visible_to", (PUBLIC, ALL_AUTHENTICATED_USERS)))
    checked["runnable_by"] = list(_principals(document, "runnable_by", (ALL_AUTHENTICATED_USERS,)))
    checked["administered_by"] = list(_principals(document, "administered_by", ()))
    return checked


def stored_document(flow: DeployedFlow) -> dict[str, Any]:
    document: dict[str, Any] = {
        "title": flow.title, "keywords": list(flow.keywords), "definition": flow.source,
        "input_schema": flow.input_schema, "visible_to": list(flow.visible_to),
        "runnable_by": list(flow.runnable_by), "administered_by": list(flow.administered_by),
    }
    if flow.subtitle is not None:
        document["subtitle"] = flow.subtitle
    if flow.description is not None:
        document["description"] = flow.description
    return document


# --- rows ------------------------------------------------------------------------------------------------------

_validated: dict[tuple[str, str, int, float], Any] = {}
"""(database, id, version, updated) -> validated definition: a process validates each version of a flow once."""


def _flow(row: Any, engine: sa.Engine) -> DeployedFlow:
    document = row.document
    key = (str(engine.url), row.id, row.version, row.updated)
    definition = _validated.get(key)
    if definition is None:
        definition = validate_definition(document["definition"], document["input_schema"])
        if len(_validated) > 1000:
            _validated.clear()
        _validated[key] = definition
    return DeployedFlow(
        id=row.id, title=document["title"], definition=definition, input_schema=document["input_schema"],
        owner=row.owner, source=document["definition"], subtitle=document.get("subtitle"),
        description=document.get("description"), keywords=tuple(document.get("keywords", ())),
        visible_to=tuple(document.get("visible_to", ())), runnable_by=tuple(document.get("runnable_by", ())),
        administered_by=tuple(document.get("administered_by", ())), created=row.created, updated=row.updated,
        version=row.version, origin=row.origin,
    )


def get(engine: sa.Engine, flow_id: str) -> DeployedFlow | None:
    create_tables(engine, metadata)
    with engine.connect() as conn:
        row = conn.execute(sa.select(flows).where(flows.c.id == flow_id)).first()
    return None if row is None else _flow(row, engine)


def version_of(engine: sa.Engine, flow_id: str) -> tuple[int, float] | None:
    """The (version, updated) of a flow, without reading its document; None if there is no such flow."""
    create_tables(engine, metadata)
    with engine.connect() as conn:
        row = conn.execute(sa.select(flows.c.version, flows.c.updated).where(flows.c.id == flow_id)).first()
    return None if row is None else (row.version, row.updated)


def page(engine: sa.Engine, after: str | None, limit: int) -> list[DeployedFlow]:
    """Up to ``limit`` flows in id order, after the id ``after``."""
    create_tables(engine, metadata)
    query = sa.select(flows).order_by(flows.c.id).limit(limit)
    if after is not None:
        query = query.where(flows.c.id > after)
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    return [_flow(r, engine) for r in rows]


def insert(engine: sa.Engine, flow_id: str, document: dict[str, Any], owner: str, now: float,
           origin: str | None = None, digest: str | None = None) -> DeployedFlow:
    """Deploy a new flow; 409 if the id is taken."""
    create_tables(engine, metadata)
    try:
        with engine.begin() as conn:
            conn.execute(sa.insert(flows).values(id=flow_id, document=document, owner=owner, created=now,
                                                 updated=now, version=1, origin=origin, digest=digest))
    except IntegrityError:
        raise ActionConflict(f"A flow with id {flow_id!r} is already deployed.") from None
    flow = get(engine, flow_id)
    assert flow is not None
    return flow


def update(engine: sa.Engine, flow: DeployedFlow, document: dict[str, Any], now: float) -> DeployedFlow:
    """Replace a flow's document, if nobody changed it since ``flow`` was read (409 otherwise)."""
    with engine.begin() as conn:
        result = conn.execute(
            sa.update(flows).where(flows.c.id == flow.id, flows.c.version == flow.version)
            .values(document=document, updated=max(now, flow.updated), version=flow.version + 1)
        )
    if result.rowcount != 1:
        raise ActionConflict(f"Flow {flow.id!r} was changed or deleted meanwhile; read it again.")
    updated = get(engine, flow.id)
    assert updated is not None
    return updated


def delete(engine: sa.Engine, flow_id: str) -> bool:
    create_tables(engine, metadata)
    with engine.begin() as conn:
        return bool(conn.execute(sa.delete(flows).where(flows.c.id == flow_id)).rowcount)


# --- APTK_FLOWS_DIR --------------------------------------------------------------------------------------------


def read_directory(directory: str | Path) -> dict[str, tuple[str, dict[str, Any], str]]:
    """flow id -> (file name, checked document, digest) for every ``*.json`` file of ``directory``.

    A file that cannot be read or deployed is a :class:`~toolkit.errors.ConfigurationError` naming the file and
    what is wrong. A file's ``id`` is its own or, without one, its name without ``.json``.
    """
    path = Path(directory)
    if not path.is_dir():
        raise ConfigurationError(f"APTK_FLOWS_DIR: {str(path)!r} is not a directory")
    found: dict[str, tuple[str, dict[str, Any], str]] = {}
    for entry in sorted(os.scandir(path), key=lambda e: e.name):
        if not entry.name.endswith(".json") or entry.name.startswith(".") or not entry.is_file():
            continue
        where = f"APTK_FLOWS_DIR file {entry.name!r}"
        try:
            raw = Path(entry.path).read_bytes()
            document = json.loads(raw)
        except (OSError, ValueError) as exc:
            raise ConfigurationError(f"{where} cannot be read as JSON: {exc}") from None
        if not isinstance(document, dict):
            raise ConfigurationError(f"{where} must hold a JSON object (a flow deployment)")
        try:
            flow_id = check_id(document.pop("id", entry.name[: -len(".json")]))
            checked = parse(document)
        except BadActionRequest as exc:
            raise ConfigurationError(f"{where}: {exc.description}") from None
        if flow_id in found:
            raise ConfigurationError(f"{where} deploys flow {flow_id!r}, as {found[flow_id][0]!r} does")
        digest = hashlib.sha256(json.dumps(checked, sort_keys=True).encode()).hexdigest()
        found[flow_id] = (entry.name, checked, digest)
    return found


def sync_directory(engine: sa.Engine, directory: str | Path, now: float) -> list[str]:
    """Make the flows deployed from ``directory`` what its files say now; the ids of flows that changed.

    Only rows whose digest differs are written, with a compare-and-set, so that processes doing this at once
    agree. A file that was removed takes its flow away; a flow deployed through the API under an id a file now
    wants is a configuration error.
    """
    wanted = read_directory(directory)
    create_tables(engine, metadata)
    changed = []
    with engine.connect() as conn:
        rows = {r.id: r for r in conn.execute(
            sa.select(flows.c.id, flows.c.origin, flows.c.digest, flows.c.version))}
    for flow_id, (name, document, digest) in wanted.items():
        row = rows.get(flow_id)
        if row is not None and row.origin is None:
            raise ConfigurationError(
                f"APTK_FLOWS_DIR file {name!r} deploys flow {flow_id!r}, which was deployed through the API; "
                "delete that one or give the file another id"
            )
        if row is not None and row.digest == digest and row.origin == name:
            continue
        if row is None:
            try:
                with engine.begin() as conn:
                    conn.execute(sa.insert(flows).values(
                        id=flow_id, document=document, owner=DIRECTORY_OWNER, created=now, updated=now, version=1,
                        origin=name, digest=digest))
            except IntegrityError:
                continue  # another process deployed it just now
        else:
            with engine.begin() as conn:
                conn.execute(sa.update(flows).where(flows.c.id == flow_id, flows.c.version == row.version).values(
                    document=document, updated=now, version=row.version + 1, origin=name, digest=digest))
        changed.append(flow_id)
    gone = [i for i, r in rows.items() if r.origin is not None and i not in wanted]
    if gone:
        with engine.begin() as conn:
            conn.execute(sa.delete(flows).where(flows.c.id.in_(gone), flows.c.origin.is_not(None)))
        changed.extend(gone)
    return changed
