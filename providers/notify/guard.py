"""What keeps the provider safe to offer: caller passwords held in memory only, and a per-identity rate limit."""

from __future__ import annotations

import secrets
import threading
import time
from typing import Any

import sqlalchemy as sa

from toolkit import ActionFailed, RunContext
from toolkit.settings import number
from toolkit.store import create_tables

# --- caller passwords: never in the stored action -----------------------------------------------------------------

HOLD_SECONDS = 24 * 3600.0
MAX_HELD = 100_000
_held: dict[str, tuple[float, str]] = {}
_held_lock = threading.Lock()


def hold(password: str) -> str:
    """Keep ``password`` in this process's memory; the handle to :func:`take` it back with."""
    handle = secrets.token_urlsafe(18)
    now = time.monotonic()
    with _held_lock:
        if len(_held) >= MAX_HELD or (_held and next(iter(_held.values()))[0] < now):
            for key, (expires, _) in list(_held.items()):
                if expires < now or len(_held) >= MAX_HELD:
                    del _held[key]
        _held[handle] = (now + HOLD_SECONDS, password)
    return handle


def take(handle: str) -> str | None:
    """The password held under ``handle`` (once), or None when this process does not hold it."""
    with _held_lock:
        entry = _held.pop(handle, None)
    return None if entry is None or entry[0] < time.monotonic() else entry[1]


# --- the per-identity rate limit ------------------------------------------------------------------------------------

DEFAULT_LIMIT = 200
DEFAULT_WINDOW = 3600.0
_metadata = sa.MetaData()
sends = sa.Table(
    "aptk_notify_sends", _metadata,
    sa.Column("action_id", sa.String(64), primary_key=True),
    sa.Column("identity", sa.String(256), nullable=False),
    sa.Column("at", sa.Float, nullable=False),
    sa.Index("aptk_notify_sends_identity_at", "identity", "at"),
)


def limits(config: Any) -> tuple[int, float]:
    """(notifications per window, window in seconds); 0 notifications: no limit."""
    return (number(config, "APTK_NOTIFY_RATE_LIMIT", DEFAULT_LIMIT, kind=int),
            number(config, "APTK_NOTIFY_RATE_WINDOW", DEFAULT_WINDOW, positive=True))


def admit(ctx: RunContext) -> None:
    """Count this action against its creator's limit, or end it FAILED with ``RateLimited``.

    Counted in the toolkit's database, so every process serving the provider shares one count. The action is
    recorded first and then ranked among the identity's notifications in the window, so that two processes
    admitting at once can never both pass the last free place.
    """
    limit, window = limits(ctx.config)
    if not limit:
        return
    engine = ctx.store.engine
    create_tables(engine, _metadata)
    now = time.time()
    identity = ctx.creator_id
    with engine.begin() as conn:
        mine = conn.execute(sa.select(sends.c.at).where(sends.c.action_id == ctx.action_id)).scalar()
        if mine is None:  # a run taken up again after a crash was admitted already
            conn.execute(sends.delete().where(sends.c.at < now - window))
            conn.execute(sends.insert().values(action_id=ctx.action_id, identity=identity, at=now))
            mine = now
    with engine.connect() as conn:
        rank = conn.execute(
            sa.select(sa.func.count()).select_from(sends).where(
                sends.c.identity == identity, sends.c.at > now - window,
                sa.or_(sends.c.at < mine, sa.and_(sends.c.at == mine, sends.c.action_id <= ctx.action_id)))
        ).scalar_one()
    if rank > limit:
        with engine.begin() as conn:
            conn.execute(sends.delete().where(sends.c.action_id == ctx.action_id))
        raise ActionFailed("RateLimited", f"This identity sent {limit} notifications in the last {window:g} s, "
                                          "this server's limit; try again later.", limit=limit, window_seconds=window)
