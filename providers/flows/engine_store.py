"""Where a flow run is: its position, state document, visits per state, running child and wake time.

One row per run in ``aptk_flow_runs``, in the toolkit's own database (SQLite or PostgreSQL), written after
every transition. The row is the run's memory across crashes: a run taken up again (after kill -9, a lost
process, a pause) reads it and carries on from there. Writes are a compare-and-set on the toolkit's attempt
number, so that a run superseded by a later attempt (recovered elsewhere, resumed) can no longer move it.

The state document is kept here rather than in the action's details, which every monitor of the run sees.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import sqlalchemy as sa

from toolkit.store import create_tables

_metadata = sa.MetaData()
runs_table = sa.Table(
    "aptk_flow_runs",
    _metadata,
    sa.Column("run_id", sa.String(32), primary_key=True),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("record", sa.Text, nullable=False),
)


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


def save(engine: sa.Engine, record: RunRecord, attempt: int) -> None:
    """Store ``record`` for toolkit attempt ``attempt``; :class:`Superseded` if a later attempt wrote it."""
    create_tables(engine, _metadata)
    text = record.to_json()
    with engine.begin() as conn:
        updated = conn.execute(
            runs_table.update()
            .where(runs_table.c.run_id == record.run_id, runs_table.c.attempt <= attempt)
            .values(attempt=attempt, record=text)
        ).rowcount
        if updated:
            return
        exists = conn.execute(sa.select(runs_table.c.attempt).where(runs_table.c.run_id == record.run_id)).first()
        if exists is not None:
            raise Superseded(record.run_id)
    try:
        with engine.begin() as conn:
            conn.execute(runs_table.insert().values(run_id=record.run_id, attempt=attempt, record=text))
    except sa.exc.IntegrityError:  # another attempt inserted it between our update and our insert
        raise Superseded(record.run_id) from None


def forget(engine: sa.Engine, run_id: str) -> None:
    """Delete a run's record (once the run is released)."""
    create_tables(engine, _metadata)
    with engine.begin() as conn:
        conn.execute(runs_table.delete().where(runs_table.c.run_id == run_id))
