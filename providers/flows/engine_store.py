"""Where a flow run is: its position, state document, visits per state, running child and wake time.

One row per run in ``aptk_flow_runs``, in the toolkit's own database (SQLite or PostgreSQL), written after
every transition. The row is the run's memory across crashes: a run taken up again (after kill -9, a lost
process, a pause) reads it and carries on from there. Writes are a compare-and-set on the toolkit's attempt
number, so that a run superseded by a later attempt (recovered elsewhere, resumed) can no longer move it.

The state document is kept here rather than in the action's details, which every monitor of the run sees.

The definition a run started with (and the flow's version then) is kept beside it, in
``aptk_flow_run_definitions``, written once with the run's first record: a flow updated while the run goes on
does not change the states it walks. Both rows go once the run's action is gone (released, or removed by
expiry): :func:`purge_released`, which the flows provider runs in the background.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Callable, Sequence

import sqlalchemy as sa

from toolkit.store import PURGE_BATCH, create_tables, delete_orphans

_metadata = sa.MetaData()
runs_table = sa.Table(
    "aptk_flow_runs",
    _metadata,
    sa.Column("run_id", sa.String(32), primary_key=True),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("record", sa.Text, nullable=False),
)
definitions_table = sa.Table(
    "aptk_flow_run_definitions",
    _metadata,
    sa.Column("run_id", sa.String(32), primary_key=True),
    sa.Column("flow_id", sa.String(64), nullable=False),
    sa.Column("flow_version", sa.Integer, nullable=False),
    sa.Column("definition", sa.Text, nullable=False),
)
"""The definition each run started with, written once with its first record: the run walks that copy."""


@dataclasses.dataclass
class RunRecord:
    """What a run has done so far, as stored after its last transition."""

    run_id: str
    position: str | None
    """The state being run (or to run next); None once the run ended."""
    document: dict[str, Any]
    """The state document (the flow's input, as states changed it)."""
    visits: dict[str, int] = dataclasses.field(default_factory=dict)
    """How many times each state was entered: the attempt number in a child's ``request_id``."""
    entered: bool = False
    """True once ``position`` was entered (its visit counted, its log entry written)."""
    child: dict[str, Any] | None = None
    """The running child action of an Action state: ``state``, ``visit``, ``url``, ``action_id``, ``started``."""
    wake_at: float | None = None
    """When a Wait state at ``position`` ends (epoch seconds)."""
    origin: str | None = None
    """The root URL the run was started at: ActionUrls there are called in-process."""
    context: dict[str, Any] = dataclasses.field(default_factory=dict)
    """What ``$._context`` shows, fixed when the run started."""
    states: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    """One entry per state entered: ``name``, ``type``, ``status``, ``started``, ``ended``, ``child_action_id``."""
    outcome: dict[str, Any] | None = None
    """Once the run ended: ``{"status": "SUCCEEDED"|"FAILED", "code": ..., "description": ...}``."""
    flow_version: int | None = None
    """The version of the flow whose definition the run walks (stored beside the record); None for a record
    written before definitions were kept with runs."""

    def to_json(self) -> str:
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}  # asdict would deep-copy
        return json.dumps(fields, separators=(",", ":"), allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> "RunRecord":
        data = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


class Superseded(Exception):
    """A later attempt of the run owns its record now; this one must stop."""


def load(engine: sa.Engine, run_id: str) -> RunRecord | None:
    create_tables(engine, _metadata)
    with engine.connect() as conn:
        row = conn.execute(sa.select(runs_table.c.record).where(runs_table.c.run_id == run_id)).first()
    return None if row is None else RunRecord.from_json(row[0])


def definition(engine: sa.Engine, run_id: str) -> tuple[int, dict[str, Any]] | None:
    """The (flow version, definition document) run ``run_id`` started with; None if none was stored."""
    create_tables(engine, _metadata)
    with engine.connect() as conn:
        row = conn.execute(sa.select(definitions_table.c.flow_version, definitions_table.c.definition)
                           .where(definitions_table.c.run_id == run_id)).first()
    return None if row is None else (row.flow_version, json.loads(row.definition))


class _Statements:
    """The record's writes as SQL text for a driver's parameter marker (they run on the store's cursor)."""

    def __init__(self, mark: str) -> None:
        self.update = f"UPDATE aptk_flow_runs SET attempt = {mark}, record = {mark} WHERE run_id = {mark} " \
                      f"AND attempt <= {mark}"
        self.insert = f"INSERT INTO aptk_flow_runs (run_id, attempt, record) VALUES ({mark}, {mark}, {mark}) " \
                      "ON CONFLICT (run_id) DO NOTHING"
        self.insert_definition = (
            "INSERT INTO aptk_flow_run_definitions (run_id, flow_id, flow_version, definition) "
            f"VALUES ({mark}, {mark}, {mark}, {mark}) ON CONFLICT (run_id) DO NOTHING")


_statements: dict[str, _Statements] = {}


def save(store: Any, record: RunRecord, attempt: int, *, write: Callable[..., None] | None = None,
         logs: Sequence[tuple[float, str, dict[str, Any] | None]] = (),
         definition: tuple[str, int, dict[str, Any]] | None = None) -> None:
    """Store ``record`` for toolkit attempt ``attempt``; :class:`Superseded` if a later attempt wrote it.

    ``write(logs, then=...)`` (a run's :meth:`~toolkit.RunContext.log_and_write`) commits the log entries
    ``logs`` with the record, in one transaction; without it the record is written alone. ``definition``
    ``(flow_id, flow_version, document)`` is stored with the record if none is yet.
    """
    create_tables(store.engine, _metadata)
    mark = store.placeholder
    sql = _statements.get(mark) or _statements.setdefault(mark, _Statements(mark))
    text = record.to_json()
    run_id = record.run_id

    def then(cursor: Any) -> None:
        if definition is not None:
            flow_id, version, document = definition
            cursor.execute(sql.insert_definition, (run_id, flow_id, version, json.dumps(document)))
        cursor.execute(sql.update, (attempt, text, run_id, attempt))
        if cursor.rowcount == 1:
            return
        cursor.execute(sql.insert, (run_id, attempt, text))
        if cursor.rowcount != 1:  # the row is there: a later attempt wrote it
            raise Superseded(run_id)

    if write is not None:
        write(logs, then=then)
    else:
        store.append_logs(run_id, [], then=then)


def forget(engine: sa.Engine, run_id: str) -> None:
    """Delete a run's record and definition."""
    create_tables(engine, _metadata)
    with engine.begin() as conn:
        conn.execute(runs_table.delete().where(runs_table.c.run_id == run_id))
        conn.execute(definitions_table.delete().where(definitions_table.c.run_id == run_id))


def purge_released(engine: sa.Engine, *, batch: int = PURGE_BATCH, stopping: Any = None) -> int:
    """Delete the records (and definitions) of runs whose action is gone (released, or removed by expiry), at
    most ``batch`` of each table per transaction; how many records. A run whose action still exists keeps its
    rows. Goes once through each table in run id order: each transaction looks at ``batch`` run ids."""
    create_tables(engine, _metadata)
    gone = delete_orphans(engine, runs_table.c.run_id, batch=batch, stopping=stopping)
    delete_orphans(engine, definitions_table.c.run_id, batch=batch, stopping=stopping)
    return gone
