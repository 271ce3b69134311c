"""Timers, kept in a table of the provider's own beside the actions, one row per timer.

A row says which tick comes next (``next_index`` at ``next_at``) and which tick is being fired
(``pending_index``, claimed until ``pending_until``). Every process sharing the database looks for due rows and
claims a tick with one compare-and-set ``UPDATE ... WHERE pending_index IS NULL AND next_index = k``: exactly one
process wins it, whatever the number of gunicorn workers and hosts. The winner records the tick's outcome with
another compare-and-set on ``pending_index = k``. A process that dies holding a tick leaves it pending; once its
claim lapses another process fires the same tick again, with the same ``request_id``, which the target answers
with the action it may already have started.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from toolkit.store import create_tables

SCHEDULED = "scheduled"
PAUSED = "paused"
"""Its action is INACTIVE (a tick found no credentials for the target); a ``/resume`` schedules it again."""
ENDED = "ended"

metadata = sa.MetaData()
timers = sa.Table(
    "timers_timers",
    metadata,
    sa.Column("timer_id", sa.String(64), primary_key=True),
    sa.Column("creator_id", sa.String(512), nullable=False),
    sa.Column("principals", sa.JSON, nullable=False),
    sa.Column("origin", sa.String(512)),
    sa.Column("name", sa.String(256), nullable=False),
    sa.Column("callback_url", sa.String(2048), nullable=False),
    sa.Column("callback_body", sa.JSON, nullable=False),
    sa.Column("start", sa.Float, nullable=False),
    sa.Column("interval", sa.String(64), nullable=False),
    sa.Column("on_time_seconds", sa.Float, nullable=False),
    sa.Column("retry_seconds", sa.Float, nullable=False),
    sa.Column("stop_n_runs", sa.Integer),
    sa.Column("stop_date", sa.Float),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("next_index", sa.Integer, nullable=False),
    sa.Column("next_at", sa.Float, nullable=False),
    sa.Column("pending_index", sa.Integer),
    sa.Column("pending_until", sa.Float),
    sa.Column("runs", sa.Integer, nullable=False, default=0),
    sa.Column("skipped", sa.Integer, nullable=False, default=0),
    sa.Column("failed", sa.Integer, nullable=False, default=0),
    sa.Column("consecutive_failures", sa.Integer, nullable=False, default=0),
    sa.Column("last_action_id", sa.String(256)),
    sa.Column("last_runs", sa.JSON, nullable=False),
    sa.Column("last_error", sa.JSON),
    sa.Index("timers_due", "state", "next_at"),
)


@dataclasses.dataclass(frozen=True)
class Timer:
    timer_id: str
    creator_id: str
    principals: list[str]
    origin: str | None
    name: str
    callback_url: str
    callback_body: dict[str, Any]
    start: float
    interval: str
    on_time_seconds: float
    """How late a tick may start: min(MISFIRE_SECONDS, the interval)."""
    retry_seconds: float
    """How long a tick may retry: min(RETRY_WINDOW_SECONDS, the interval)."""
    stop_n_runs: int | None
    stop_date: float | None
    state: str
    next_index: int
    next_at: float
    pending_index: int | None = None
    pending_until: float | None = None
    runs: int = 0
    skipped: int = 0
    failed: int = 0
    consecutive_failures: int = 0
    last_action_id: str | None = None
    last_runs: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    last_error: dict[str, Any] | None = None


def _timer(row: Any) -> Timer:
    return Timer(**{f.name: getattr(row, f.name) for f in dataclasses.fields(Timer)})


def insert(engine: sa.Engine, timer: Timer) -> bool:
    """Store a new timer; False if it exists already (a run callback run again after a crash)."""
    create_tables(engine, metadata)
    try:
        with engine.begin() as conn:
            conn.execute(sa.insert(timers).values(**dataclasses.asdict(timer)))
        return True
    except IntegrityError:
        return False


def get(engine: sa.Engine, timer_id: str) -> Timer | None:
    create_tables(engine, metadata)
    with engine.connect() as conn:
        row = conn.execute(sa.select(timers).where(timers.c.timer_id == timer_id)).first()
    return None if row is None else _timer(row)


def due(engine: sa.Engine, now: float, limit: int) -> list[Timer]:
    """Timers with a tick to fire now: their next tick is due, or the process firing one let its claim lapse."""
    create_tables(engine, metadata)
    query = sa.select(timers).where(
        timers.c.state == SCHEDULED,
        sa.or_(
            sa.and_(timers.c.pending_index.is_(None), timers.c.next_at <= now),
            sa.and_(timers.c.pending_index.is_not(None), timers.c.pending_until < now),
        ),
    ).order_by(timers.c.next_at).limit(limit)
    with engine.connect() as conn:
        return [_timer(row) for row in conn.execute(query)]


def next_due(engine: sa.Engine) -> float | None:
    """The earliest time at which some scheduled timer has something to do."""
    create_tables(engine, metadata)
    with engine.connect() as conn:
        free = conn.execute(sa.select(sa.func.min(timers.c.next_at)).where(
            timers.c.state == SCHEDULED, timers.c.pending_index.is_(None))).scalar()
        held = conn.execute(sa.select(sa.func.min(timers.c.pending_until)).where(
            timers.c.state == SCHEDULED, timers.c.pending_index.is_not(None))).scalar()
    times = [t for t in (free, held) if t is not None]
    return min(times) if times else None


def claim_on_time(engine: sa.Engine, now: float, lease: float, limit: int) -> list[Timer] | None:
    """Claim, in one statement, every timer whose next tick is due and not late; the timers as claimed.

    None where the database cannot return the rows an UPDATE changed (then claim one by one with :func:`claim`).
    """
    if not engine.dialect.update_returning:
        return None
    create_tables(engine, metadata)
    on_time = [timers.c.state == SCHEDULED, timers.c.pending_index.is_(None), timers.c.next_at <= now,
               timers.c.next_at + timers.c.on_time_seconds >= now]
    chosen = sa.select(timers.c.timer_id).where(*on_time).order_by(timers.c.next_at).limit(limit)
    statement = sa.update(timers).where(timers.c.timer_id.in_(chosen.scalar_subquery()), *on_time).values(
        pending_index=timers.c.next_index, pending_until=now + lease + timers.c.retry_seconds,
    ).returning(*timers.c)
    with engine.begin() as conn:
        return [_timer(row) for row in conn.execute(statement)]


def claim(engine: sa.Engine, timer: Timer, index: int, until: float, **changes: Any) -> bool:
    """Take tick ``index`` of ``timer`` as it was read (compare-and-set); True for the one process that wins."""
    if timer.pending_index is None:
        where = [timers.c.pending_index.is_(None), timers.c.next_index == timer.next_index]
    else:
        where = [timers.c.pending_index == timer.pending_index, timers.c.pending_until == timer.pending_until]
    with engine.begin() as conn:
        result = conn.execute(sa.update(timers).where(
            timers.c.timer_id == timer.timer_id, timers.c.state == SCHEDULED, *where,
        ).values(pending_index=index, pending_until=until, **changes))
    return result.rowcount == 1


def advance(engine: sa.Engine, timer: Timer, **changes: Any) -> bool:
    """Move a timer on without firing (ticks skipped, or its end), from the state it was read in."""
    if timer.pending_index is None:
        where = [timers.c.pending_index.is_(None), timers.c.next_index == timer.next_index]
    else:
        where = [timers.c.pending_index == timer.pending_index, timers.c.pending_until == timer.pending_until]
    with engine.begin() as conn:
        result = conn.execute(sa.update(timers).where(
            timers.c.timer_id == timer.timer_id, timers.c.state == SCHEDULED, *where).values(**changes))
    return result.rowcount == 1


def record(engine: sa.Engine, timer_id: str, index: int, **changes: Any) -> bool:
    """Record the outcome of tick ``index`` (held by this process) and release it; False if it was lost."""
    with engine.begin() as conn:
        result = conn.execute(sa.update(timers).where(
            timers.c.timer_id == timer_id, timers.c.pending_index == index, timers.c.state == SCHEDULED,
        ).values(pending_index=None, pending_until=None, **changes))
    return result.rowcount == 1


def hold(engine: sa.Engine, timer_id: str, index: int, until: float) -> bool:
    """Keep tick ``index`` (held by this process) claimed only until ``until``, for another try then."""
    with engine.begin() as conn:
        result = conn.execute(sa.update(timers).where(
            timers.c.timer_id == timer_id, timers.c.pending_index == index, timers.c.state == SCHEDULED,
        ).values(pending_until=until))
    return result.rowcount == 1


def end(engine: sa.Engine, timer_id: str) -> bool:
    """Stop a timer's schedule (cancelled, or its action ended otherwise); True if it was still scheduled (or
    paused)."""
    create_tables(engine, metadata)
    with engine.begin() as conn:
        result = conn.execute(sa.update(timers).where(timers.c.timer_id == timer_id,
                                                      timers.c.state.in_([SCHEDULED, PAUSED]))
                              .values(state=ENDED, pending_index=None, pending_until=None))
    return result.rowcount == 1


def resume(engine: sa.Engine, timer_id: str, **changes: Any) -> bool:
    """Schedule a paused timer again (compare-and-set on its being paused); True for the one resume that wins."""
    with engine.begin() as conn:
        result = conn.execute(sa.update(timers).where(timers.c.timer_id == timer_id, timers.c.state == PAUSED)
                              .values(state=SCHEDULED, pending_index=None, pending_until=None, **changes))
    return result.rowcount == 1


def forget(engine: sa.Engine, timer_id: str) -> None:
    create_tables(engine, metadata)
    with engine.begin() as conn:
        conn.execute(sa.delete(timers).where(timers.c.timer_id == timer_id))
