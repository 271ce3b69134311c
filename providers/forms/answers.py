"""Answers, kept in a table of the provider's own beside the actions, one row per form.

A row is written when a respondent's answer passes validation; the action's run callback then reads it. The first
answer wins: a second one for the same form is refused by the primary key (no check-then-write race between two
gunicorn workers), unless the form allows changes, where a provisional answer is replaced until it is final.

A row outlives the action's completion (it is what refuses a late second answer) and goes with the action: once
the action is released or removed by expiry, :func:`purge_released` deletes it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from toolkit.store import PURGE_BATCH, create_tables, delete_orphans


metadata = sa.MetaData()
answers = sa.Table(
    "forms_answers",
    metadata,
    sa.Column("action_id", sa.String(64), primary_key=True),
    sa.Column("respondent", sa.String(512), nullable=False),
    sa.Column("response", sa.JSON, nullable=False),
    sa.Column("answered_at", sa.Float, nullable=False),
    sa.Column("final", sa.Boolean, nullable=False),
)


@dataclasses.dataclass(frozen=True)
class Answer:
    action_id: str
    respondent: str
    response: Any
    answered_at: float
    final: bool


def get(engine: sa.Engine, action_id: str) -> Answer | None:
    create_tables(engine, metadata)
    with engine.connect() as conn:
        row = conn.execute(sa.select(answers).where(answers.c.action_id == action_id)).first()
    return None if row is None else Answer(row.action_id, row.respondent, row.response, row.answered_at, row.final)


def record(engine: sa.Engine, answer: Answer) -> bool:
    """Store ``answer``; False if the form already has a final answer (or any answer, when it is final itself
    and changes are not allowed: see :func:`replace`)."""
    create_tables(engine, metadata)
    try:
        with engine.begin() as conn:
            conn.execute(sa.insert(answers).values(**dataclasses.asdict(answer)))
        return True
    except IntegrityError:
        return False


def replace(engine: sa.Engine, answer: Answer) -> bool:
    """Store ``answer`` over a provisional one; False if the form's answer is already final."""
    if record(engine, answer):
        return True
    values = dataclasses.asdict(answer)
    del values["action_id"]
    with engine.begin() as conn:
        result = conn.execute(
            sa.update(answers).where(answers.c.action_id == answer.action_id, answers.c.final.is_(False)).values(**values)
        )
    return result.rowcount == 1


def forget(engine: sa.Engine, action_id: str) -> None:
    create_tables(engine, metadata)
    with engine.begin() as conn:
        conn.execute(sa.delete(answers).where(answers.c.action_id == action_id))


def purge_released(engine: sa.Engine, *, batch: int = PURGE_BATCH, stopping: Any = None) -> int:
    """Delete the answers of forms whose action is gone (released, or removed by expiry), looking at ``batch`` rows
    per transaction in action id order; how many were deleted. Stops early once ``stopping`` (an Event) is set."""
    create_tables(engine, metadata)
    return delete_orphans(engine, answers.c.action_id, batch=batch, stopping=stopping)
