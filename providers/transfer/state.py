"""What a transfer has finished, kept in the toolkit's database so that a rerun after a crash skips it.

Table ``aptk_transfer_done``: one row per destination file written *and verified* by an action (its size, the
modification time it had once written, its checksum when one was computed). A rerun of the action (a new attempt
after its process died) skips a file whose row still matches the destination. Rows go when the action ends;
rows of actions that never ended (cancelled while a process was stopping, say) are purged after 31 days.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Iterable

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from toolkit.store import create_tables

metadata = sa.MetaData()

done_table = sa.Table(
    "aptk_transfer_done",
    metadata,
    sa.Column("action_id", sa.String(64), primary_key=True),
    sa.Column("path", sa.Text, primary_key=True),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("mtime", sa.Float),
    sa.Column("checksum", sa.String(128)),  # hex, up to SHA-512
    sa.Column("recorded_at", sa.Float, nullable=False, index=True),
)

KEEP_SECONDS = 31 * 86400
_COLUMNS = ("action_id", "path", "size", "mtime", "checksum", "recorded_at")
_MARKERS = {"qmark": "?", "format": "%s", "pyformat": "%s"}  # parameter markers of the drivers' paramstyles


@dataclasses.dataclass(frozen=True, slots=True)  # slots: one object each (less for the GC)
class Done:
    path: str
    size: int
    mtime: float | None
    checksum: str | None


def ensure_schema(engine: sa.Engine) -> None:
    """Create this module's table on first use (several processes may race to: that is fine)."""
    create_tables(engine, metadata)


class DoneRecords:
    """The finished files of one action."""

    def __init__(self, engine: sa.Engine, action_id: str) -> None:
        self.engine = engine
        self.action_id = action_id
        self.written = False  # whether this object added any row (clear has nothing to do otherwise)
        ensure_schema(engine)
        marker = _MARKERS.get(engine.dialect.paramstyle)
        # The driver's own executemany, without a bind step per value: a third of the time for many rows.
        self._insert = None if marker is None else (
            f"INSERT INTO {done_table.name} (action_id, path, size, mtime, checksum, recorded_at) "
            f"VALUES ({', '.join([marker] * 6)})")

    def load(self) -> dict[str, Done]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(done_table).where(done_table.c.action_id == self.action_id))
            return {r.path: Done(r.path, r.size, r.mtime, r.checksum) for r in rows}

    def add(self, records: Iterable[Done]) -> None:
        now = time.time()
        action_id = self.action_id
        values = [(action_id, r.path, r.size, r.mtime, r.checksum, now) for r in records]
        if not values:
            return
        self.written = True
        with self.engine.begin() as conn:
            try:
                with conn.begin_nested():
                    if self._insert is not None:
                        conn.exec_driver_sql(self._insert, values)
                    else:
                        conn.execute(sa.insert(done_table), [dict(zip(_COLUMNS, v, strict=True)) for v in values])
            except IntegrityError:
                # A file recopied by a later attempt replaces its earlier row.
                for row in [dict(zip(_COLUMNS, v, strict=True)) for v in values]:
                    conn.execute(sa.delete(done_table).where(
                        done_table.c.action_id == self.action_id, done_table.c.path == row["path"]))
                    conn.execute(sa.insert(done_table), [row])

    def clear(self) -> None:
        with self.engine.begin() as conn:
            conn.execute(sa.delete(done_table).where(done_table.c.action_id == self.action_id))

    def purge_stale(self) -> None:
        with self.engine.begin() as conn:
            conn.execute(sa.delete(done_table).where(done_table.c.recorded_at < time.time() - KEEP_SECONDS))


uploads_table = sa.Table(
    "aptk_transfer_uploads",
    metadata,
    sa.Column("action_id", sa.String(64), primary_key=True),
    sa.Column("upload_id", sa.String(1024), primary_key=True),
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("started_at", sa.Float, nullable=False),
)


class Uploads:
    """The multipart uploads (S3) an action has begun and not yet completed or aborted: invisible in a listing,
    they are what a killed attempt leaves behind, aborted when the action ends (:func:`folders.remove_partials`).
    A row is written as an upload begins, before its first part, and goes once it is completed or aborted."""

    def __init__(self, engine: sa.Engine, action_id: str) -> None:
        self.engine = engine
        self.action_id = action_id
        ensure_schema(engine)

    def begun(self, path: str, upload_id: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(sa.insert(uploads_table), [{"action_id": self.action_id, "upload_id": upload_id,
                                                     "path": path, "started_at": time.time()}])

    def ended(self, upload_id: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(sa.delete(uploads_table).where(uploads_table.c.action_id == self.action_id,
                                                        uploads_table.c.upload_id == upload_id))

    def load(self) -> list[tuple[str, str]]:
        """(path, upload id) of every upload recorded for the action."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(uploads_table.c.path, uploads_table.c.upload_id)
                                .where(uploads_table.c.action_id == self.action_id))
            return [(r.path, r.upload_id) for r in rows]
