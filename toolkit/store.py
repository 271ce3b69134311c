"""Durable action state, on SQLAlchemy Core.

SQLite (a file) is the embedded default; any SQLAlchemy URL works, PostgreSQL being the choice when several hosts
serve one provider. Every change is a single conditional statement or transaction, so that several processes
(gunicorn workers, hosts) can share one database safely: idempotent creation rests on a unique index, state
changes on compare-and-set updates.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import threading
import time
import weakref
from typing import Any, Callable, Iterable, Iterator, Protocol, Sequence

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

from .documents import Action, Status

_logger = logging.getLogger("toolkit.store")

WRITER_WAIT_SECONDS = 0.005
"""How long at most :func:`wait_for_writer` waits."""


class _WriterGate:
    """Open unless a write transaction of this process holds a SQLite file's write lock (see
    :func:`wait_for_writer`). A count, for the odd process with several SQLite stores."""

    def __init__(self) -> None:
        self._reset()
        # A child forked while a thread of its parent held a lock holds none.
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._open = threading.Event()
        self._open.set()
        self._holders = 0

    def close(self) -> None:
        with self._lock:
            self._holders += 1
            self._open.clear()

    def open(self) -> None:
        with self._lock:
            self._holders = max(0, self._holders - 1)
            if not self._holders:
                self._open.set()

    def wait(self, timeout: float) -> bool:
        return self._open.wait(timeout)


_writer_gate = _WriterGate()


def wait_for_writer(timeout: float = WRITER_WAIT_SECONDS) -> bool:
    """Wait (``timeout`` seconds at most) while a write transaction of this process holds a SQLite write lock;
    False if it still does.

    Every process writing to a SQLite file takes the write lock in turn (see :meth:`SQLStore._writer_turn`), and
    a transaction holds it until it commits, while each of its statements lets go of the GIL and must take it
    back from whichever thread of the process took it meanwhile. Under load the holder spent most of its turn
    waiting for the other threads of its own process, while the other processes waited for the lock. ``aptk
    serve``'s worker therefore starts a request only once no transaction of its process holds the lock (or
    after this short wait): the transaction finishes sooner, and so does every writer's wait.
    """
    return _writer_gate.wait(timeout)

metadata = sa.MetaData()

LIVE_CONDITION = "status IN ('ACTIVE', 'INACTIVE')"
"""The condition of the partial indexes of unfinished actions. SQLite uses such an index only for a query that
has this very term (:func:`_live`), whatever else it says about the status."""
_LIVE = sa.text(LIVE_CONDITION)
_EXPIRING = sa.text("expires_at IS NOT NULL")
_REPLACED_INDEXES = ("aptk_actions_status_heartbeat", "aptk_actions_status_deadline", "aptk_actions_status_runner",
                     "aptk_actions_expires_at")
"""Full indexes of earlier versions that the partial ones above replace (dropped by ``create_schema``)."""

actions = sa.Table(
    "aptk_actions",
    metadata,
    sa.Column("action_id", sa.String(64), primary_key=True),
    sa.Column("provider", sa.String(128), nullable=False),
    sa.Column("request_id", sa.String(256), nullable=False),
    sa.Column("request_hash", sa.String(64), nullable=False),
    sa.Column("creator_id", sa.String(512), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("body", sa.JSON, nullable=False),
    sa.Column("details", sa.JSON, nullable=False),
    sa.Column("label", sa.String(64)),
    sa.Column("monitor_by", sa.JSON, nullable=False),
    sa.Column("manage_by", sa.JSON, nullable=False),
    sa.Column("start_time", sa.Float),
    sa.Column("completion_time", sa.Float),
    sa.Column("release_after", sa.Float, nullable=False),
    sa.Column("expires_at", sa.Float),
    sa.Column("display_status", sa.String(64)),
    sa.Column("deadline", sa.Float),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("runner", sa.String(128)),
    sa.Column("heartbeat", sa.Float),
    sa.Column("principals", sa.JSON, nullable=False),
    sa.UniqueConstraint("provider", "creator_id", "request_id", name="aptk_actions_request"),
    # The sweeps look for stale heartbeats and passed deadlines, and recovery of a host's dead processes for the
    # ACTIVE actions of their runner ids: among unfinished actions only. Ended ones (nearly every row, in time)
    # stay out of these indexes, so that ending an action takes it out of them instead of moving it within.
    sa.Index("aptk_actions_live_heartbeat", "status", "heartbeat", sqlite_where=_LIVE, postgresql_where=_LIVE),
    sa.Index("aptk_actions_live_deadline", "status", "deadline", sqlite_where=_LIVE, postgresql_where=_LIVE),
    sa.Index("aptk_actions_live_runner", "status", "runner", sqlite_where=_LIVE, postgresql_where=_LIVE),
    # An action has no expiry until it ends (the purge's comparison implies IS NOT NULL).
    sa.Index("aptk_actions_expiry", "expires_at", sqlite_where=_EXPIRING, postgresql_where=_EXPIRING),
    # /actions pages walk this order: (start_time, action_id) never changes once an action exists.
    sa.Index("aptk_actions_listing", "provider", "start_time", "action_id"),
)

# One row per (action, role, principal), so that /actions?roles= is an indexed lookup.
action_roles = sa.Table(
    "aptk_action_roles",
    metadata,
    sa.Column("action_id", sa.String(64), primary_key=True),
    sa.Column("role", sa.String(16), primary_key=True),
    sa.Column("principal", sa.String(512), primary_key=True),
    sa.Index("aptk_action_roles_principal", "principal", "role"),
)

action_log = sa.Table(
    "aptk_action_log",
    metadata,
    sa.Column("entry_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("action_id", sa.String(64), nullable=False, index=True),
    sa.Column("time", sa.Float, nullable=False),
    sa.Column("code", sa.String(64), nullable=False),
    sa.Column("description", sa.Text, nullable=False),
    sa.Column("details", sa.JSON),
)

ROLES = ("creator_id", "monitor_by", "manage_by")
_JSON_COLUMNS = frozenset(c.name for c in actions.columns if isinstance(c.type, sa.JSON))

LogRecord = tuple[float, str, str]
"""A log line written with a state change: (time, code, description)."""
_COLUMNS = [c.name for c in actions.columns if c.name != "expires_at"]


@dataclasses.dataclass(frozen=True)
class LogEntry:
    entry_id: int
    time: float
    code: str
    description: str
    details: dict[str, Any] | None = None


class Store(Protocol):
    """What the lifecycle and providers need from a store; :class:`SQLStore` is the implementation.

    ``engine`` is the SQLAlchemy engine of the database the actions live in: providers keep tables of their own
    there (``ctx.store.engine``, with :func:`create_tables`), so that their rows and the actions share one
    database, its backups and its transactions.
    """

    @property
    def engine(self) -> sa.Engine: ...
    def create_schema(self) -> None: ...
    def create(self, action: Action, log: LogRecord, now: float) -> tuple[Action, bool]: ...
    def get(self, action_id: str) -> Action | None: ...
    def update(self, action_id: str, *, where: dict[str, Any], log: LogRecord | None = None,
               **changes: Any) -> Action | None: ...
    def delete(self, action_id: str, *, where: dict[str, Any]) -> bool: ...
    def find_request(self, provider: str, creator_id: str, request_id: str) -> Action | None: ...
    def append_log(self, action_id: str, time: float, code: str, description: str,
                   details: dict[str, Any] | None = None, *, where: dict[str, Any] | None = None) -> bool: ...
    def append_logs(self, action_id: str, entries: Sequence[tuple[float, str, str, dict[str, Any] | None]], *,
                    where: dict[str, Any] | None = None, then: Callable[[Any], Any] | None = None) -> bool: ...
    @property
    def placeholder(self) -> str: ...
    def log_page(self, action_id: str, after: int, limit: int) -> list[LogEntry]: ...
    def enumerate(self, provider: str, principals: Iterable[str], roles: Iterable[str],
                  statuses: Iterable[Status], now: float, *, after: tuple[float, str] | None = None,
                  limit: int | None = None) -> list[Action]: ...
    def find(self, *, statuses: Iterable[Status], providers: Iterable[str], heartbeat_before: float | None = None,
             deadline_before: float | None = None, runner_prefix: str | None = None,
             limit: int = 100) -> list[Action]: ...
    def heartbeat(self, runner: str, now: float, action_ids: Iterable[str]) -> None: ...
    def still_running(self, runner: str, attempts_by_id: dict[str, int]) -> set[str]: ...
    def purge_expired(self, now: float, limit: int = ...) -> int: ...
    def ping(self) -> None: ...


CHECKPOINT_COMMITS = 64
"""SQLite files: a process checkpoints the WAL (on a thread of its own) after this many of its write transactions."""
CHECKPOINT_BACKSTOP_PAGES = 10000
"""SQLite files: the WAL size (pages) at which the committing writer checkpoints anyway (SQLite's default: 1000)."""

PING_IDLE_SECONDS = 1.0
"""Client-server databases: a pooled connection idle longer than this is pinged before it is handed out; one in use
moments ago is not, unless a lost connection has been seen since (see ``SQLStore._watch_connections``)."""

PURGE_BATCH = 500
"""Expired actions deleted per transaction: a sweep never holds the database for long, whatever it has to purge."""


class SQLStore:
    """A :class:`Store` on any SQLAlchemy database URL."""

    def __init__(self, url: str, **engine_options: Any) -> None:
        self.url = sa.engine.make_url(url)
        self._engine: sa.Engine | None = None
        self._engine_options = engine_options
        self._lock = threading.Lock()
        self._sqlite = self.url.get_backend_name() == "sqlite"
        # Only SQLite has a single writer; elsewhere the lock is a no-op.
        self._write_lock: Any = threading.Lock() if self._sqlite else contextlib.nullcontext()
        # SQLite files: writers of every process sharing the file also queue on an advisory lock beside it (see
        # _writer_turn); None for an in-memory database, or a database that is not SQLite.
        database = self.url.database if self._sqlite else None
        self._lock_path = f"{database}-writer.lock" if database not in (None, "", ":memory:") and not (
            database or "").startswith("file:") else None
        self._lock_fd: int | None = None
        self._lock_pid: int | None = None
        self._sql: _Statements | None = None
        # Group commit (SQLite): the writes waiting for a leader, and whether a thread leads one now.
        self._group_lock = threading.Lock()
        self._group_pending: list[_GroupWrite] = []
        self._group_leading = False
        self._group_pid = os.getpid()
        # WAL checkpoints (SQLite files): commits since the last one, and whether one runs now (see _checkpoint).
        self._commits = 0
        self._checkpointing = False
        # Each thread's reading connection to a SQLite file (see _thread_read), and all of them, to close them.
        self._readers = threading.local()
        self._reader_set: weakref.WeakSet[_Reader] = weakref.WeakSet()
        # Client-server databases: when this process last saw a connection lost (time.monotonic()).
        self._lost_at = 0.0

    def __repr__(self) -> str:
        return f"SQLStore({self.url.render_as_string(hide_password=True)!r})"

    # --- connection management -------------------------------------------------------------------------

    @property
    def engine(self) -> sa.Engine:
        """Created on first use, so that a store built before a fork is not shared across processes."""
        if self._engine is None:
            with self._lock:
                if self._engine is None:
                    self._engine = self._make_engine()
        return self._engine

    def _make_engine(self) -> sa.Engine:
        options = dict(self._engine_options)
        if self.url.get_backend_name() != "sqlite":
            engine = sa.create_engine(self.url, **options)
            if not options.get("pool_pre_ping"):
                self._watch_connections(engine)
            return engine
        options.setdefault("connect_args", {"timeout": 60, "check_same_thread": False})
        engine = sa.create_engine(self.url, **options)

        @sa.event.listens_for(engine, "connect")
        def _connect(dbapi_connection, _record):
            # Let SQLAlchemy's "begin" event open transactions, so writers take the lock at once
            # (BEGIN IMMEDIATE) instead of failing with SQLITE_BUSY when a read turns into a write.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            if self.url.database not in (None, "", ":memory:"):
                cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            if self._lock_path is not None:
                # The store checkpoints on a thread of its own (_checkpoint); SQLite's own checkpoint, run by the
                # committing writer while it holds the write lock, stays only as a backstop.
                cursor.execute(f"PRAGMA wal_autocheckpoint={CHECKPOINT_BACKSTOP_PAGES}")
            cursor.close()

        @sa.event.listens_for(engine, "begin")
        def _begin(connection):
            read_only = connection.get_execution_options().get("aptk_read_only", False)
            connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

        return engine

    def _watch_connections(self, engine: sa.Engine) -> None:
        """Hand out only live connections, without a ping before every use.

        A ping (SQLAlchemy's ``pool_pre_ping``) costs a round trip to the server at every checkout: as much as the
        one statement of a status. Instead, a connection is pinged when it comes out of the pool only if it has
        been idle longer than ``PING_IDLE_SECONDS``, or if a connection has been lost since it was last used (a
        restarted server breaks them all): a dead one is replaced before anyone uses it. One in use moments ago,
        with no loss seen since, is handed out as is; should the server have gone away in those moments, the
        statement fails as one in flight would (a read is tried again on another connection, see
        :meth:`_read_row`), and every other pooled connection is pinged before its next use.
        """
        dialect = engine.dialect

        @sa.event.listens_for(engine, "connect")
        def _connected(_dbapi_connection: Any, record: Any) -> None:
            record.info["aptk_used"] = time.monotonic()

        @sa.event.listens_for(engine, "checkin")
        def _returned(_dbapi_connection: Any, record: Any) -> None:
            record.info["aptk_used"] = time.monotonic()

        @sa.event.listens_for(engine, "checkout")
        def _handed_out(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
            used = record.info.get("aptk_used", 0.0)
            if used > self._lost_at and time.monotonic() - used < PING_IDLE_SECONDS:
                return
            try:
                dialect.do_ping(dbapi_connection)
            except dialect.loaded_dbapi.Error as exc:
                if dialect.is_disconnect(exc, dbapi_connection, None):
                    self._lost_at = time.monotonic()
                    raise sa.exc.DisconnectionError(str(exc)) from exc  # the pool opens another connection
                raise

        @sa.event.listens_for(engine, "handle_error")
        def _failed(context: Any) -> None:
            if context.is_disconnect:
                self._lost_at = time.monotonic()

    def _lost(self, exc: Any, fairy: Any, cursor: Any = None) -> bool:
        """Whether ``exc`` (a DBAPI error on ``fairy``) says the connection is gone; if so it is dropped from the
        pool, and the others are pinged before their next use."""
        try:
            gone = self.engine.dialect.is_disconnect(exc, fairy.dbapi_connection, cursor)
        except Exception:  # pragma: no cover - a dialect's check failing: assume the worst
            gone = True
        if gone:
            self._lost_at = time.monotonic()
            with contextlib.suppress(Exception):
                fairy.invalidate(exc)
        return gone

    def _read(self) -> sa.Connection:
        return self.engine.connect().execution_options(aptk_read_only=True)

    @contextlib.contextmanager
    def _write(self) -> Iterator[sa.Connection]:
        """A write transaction. On SQLite, threads of one process queue on a lock here rather than in SQLite's
        busy handler, which polls with sleeps of up to 100 ms instead of waking when the lock is free."""
        with self._write_lock, self._writer_turn():
            with self.engine.begin() as conn:
                yield conn

    @contextlib.contextmanager
    def _writer_turn(self) -> Iterator[None]:
        """On a SQLite file, wait for this process's turn among all processes writing to it.

        SQLite's own busy handler, which a writer meets when another process holds the write lock, sleeps and
        retries (1, 2, 5, ... up to 100 ms); under steady writes from several gunicorn workers most of a write's
        time went to those sleeps. An exclusive ``flock`` on a file beside the database queues the writers in the
        kernel instead, which wakes the next one as soon as the lock is released, and releases the lock of a
        process that dies (even by kill -9). ``BEGIN IMMEDIATE`` then finds the database free; the busy handler
        remains for writers outside the toolkit (a provider's own tables, the sqlite3 shell).
        """
        if self._lock_path is None:
            yield
            return
        fd = self._lock_file()
        fcntl.flock(fd, fcntl.LOCK_EX)
        _writer_gate.close()
        try:
            yield
        finally:
            _writer_gate.open()
            fcntl.flock(fd, fcntl.LOCK_UN)

    def _lock_file(self) -> int:
        # One open file per process: a descriptor inherited over a fork shares its lock with the parent.
        pid = os.getpid()
        if self._lock_pid != pid:
            with self._lock:
                if self._lock_pid != pid:
                    assert self._lock_path is not None
                    self._lock_fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
                    self._lock_pid = pid
        assert self._lock_fd is not None
        return self._lock_fd

    # --- the hot statements, on the pooled DBAPI connection ------------------------------------------------
    #
    # A status is one read and a run two writes (create; the outcome); through SQLAlchemy's Connection each
    # costs more in statement caching, execution contexts, events and row processing than the database spends
    # on it. These few statements are therefore written once per dialect as SQL text and run on the DBAPI
    # connection that the engine's pool hands out (so the pool, its checkout events and pre-ping still apply).
    # Errors are raised as SQLAlchemy's exceptions, as from the rest of the store.

    @property
    def sql(self) -> "_Statements":
        if self._sql is None:
            self._sql = _Statements(self.engine.dialect)
        return self._sql

    def _read_cursor(self) -> Any:
        """A context with a DBAPI cursor for reads: on a SQLite file, on this thread's own reading connection; on
        PostgreSQL, in autocommit (each read here is one statement, which sees one snapshot anyway)."""
        if self._lock_path is not None:
            return self._thread_read()
        if not self._sqlite:
            return self._statement_cursor()
        return self._dbapi_transaction(self.sql, write=False)

    @contextlib.contextmanager
    def _statement_cursor(self) -> Iterator[Any]:
        """PostgreSQL: a DBAPI cursor in autocommit, for work that is a single statement (a read, or a write
        whose statement does all of it, see :class:`_Statements`): the statement is its own transaction, so it
        costs one round trip to the server instead of three (BEGIN, the statement, COMMIT)."""
        fairy = self.engine.raw_connection()
        connection: Any = fairy.dbapi_connection
        try:
            connection.autocommit = True
            cursor = fairy.cursor()
            try:
                yield cursor
            finally:
                with contextlib.suppress(Exception):
                    cursor.close()
        except self.sql.dbapi_error as exc:
            raise self._translated(exc, fairy) from exc
        finally:
            if fairy.dbapi_connection is not None:  # (None once invalidated)
                try:
                    connection.autocommit = False  # as the pool hands connections out
                except Exception:  # a broken connection: not back into the pool
                    fairy.invalidate()
            fairy.close()  # back to the pool

    @contextlib.contextmanager
    def _thread_read(self) -> Iterator[Any]:
        """A cursor on this thread's reading connection to the SQLite file.

        The hot reads (a status) spend more in the pool's checkout and return than in SQLite. Each thread that
        reads therefore keeps one connection of its own, taken out of the pool once (with the pool's connect-time
        settings), in autocommit: every statement sees what was committed before it, by any process. It is
        closed when its thread ends, after an error, at :meth:`dispose` and in a forked child (which opens its
        own).
        """
        engine = self.engine
        reader = getattr(self._readers, "reader", None)
        if reader is None or reader.pid != os.getpid() or reader.engine is not engine:
            fairy = engine.raw_connection()
            fairy.detach()  # the pool lets go of it: ours until closed
            reader = self._readers.reader = _Reader(fairy.dbapi_connection, engine)
            with self._lock:
                self._reader_set.add(reader)
        try:
            cursor = reader.connection.cursor()
            try:
                yield cursor
            finally:
                cursor.close()
        except self.sql.dbapi_error as exc:
            self._drop_reader(reader)
            raise self._translated(exc) from exc
        except BaseException:
            self._drop_reader(reader)
            raise

    def _drop_reader(self, reader: "_Reader") -> None:
        if getattr(self._readers, "reader", None) is reader:
            del self._readers.reader
        with self._lock:
            self._reader_set.discard(reader)
        reader.close()

    def _transact(self, work: Callable[[Any], Any], *, rerunnable: bool = True, single: bool = False) -> Any:
        """Run ``work(cursor)`` in a write transaction; what it returns, once that is committed. ``single``: all
        ``work`` does is one statement, which PostgreSQL then runs as its own transaction (autocommit).

        On SQLite, which has one writer at a time, the writes that threads of this process have waiting are
        committed together (group commit): the first thread to arrive leads, waits for the write lock, takes
        every write queued by then, runs them in one transaction, commits, and only then hands each thread its
        result; the next waiting thread then leads the next group. A write that fails is undone alone and its
        error raised in its own thread: a group of ``rerunnable`` writes (``work`` has no effect but on the
        cursor, so it may run again after a rollback) runs them one after the other and, should one fail, rolls
        back and runs the group again with each write in a savepoint; other groups use savepoints from the start.
        No result is handed out before the commit that made it durable: if the commit fails, every write of the
        group fails with that error and none of them is in the database. Elsewhere (PostgreSQL) each write is its
        own transaction: that database lets writers proceed side by side.
        """
        if not self._sqlite:
            if single:
                with self._statement_cursor() as cursor:
                    return work(cursor)
            with self._dbapi_transaction(self.sql, write=True) as cursor:
                return work(cursor)
        write = _GroupWrite(work, rerunnable)
        if self._group_pid != os.getpid():  # a fork: whatever the parent's threads were doing is not ours
            self._group_lock, self._group_pending, self._group_leading = threading.Lock(), [], False
            self._group_pid = os.getpid()
            self._commits, self._checkpointing = 0, False
        with self._group_lock:
            self._group_pending.append(write)
            lead = not self._group_leading
            self._group_leading = True
        if not lead:
            write.turn.acquire()
            if not write.leads:
                return write.outcome()
        try:
            self._commit_group()
        finally:
            with self._group_lock:
                if self._group_pending:
                    following = self._group_pending[0]
                    following.leads = True
                    following.turn.release()
                else:
                    self._group_leading = False
                checkpoint = self._commits >= CHECKPOINT_COMMITS and not self._checkpointing and (
                    self._lock_path is not None)
                if checkpoint:
                    self._commits, self._checkpointing = 0, True
        if checkpoint:
            threading.Thread(target=self._checkpoint, name="aptk-checkpoint", daemon=True).start()
        return write.outcome()

    def _checkpoint(self) -> None:
        """Copy the WAL's committed pages into the database file (a PASSIVE checkpoint), off the write path.

        SQLite's automatic checkpoint runs in the writer whose commit crosses its threshold, while that writer
        still holds the write lock: every writer of every process then waits for its page copies and fsyncs. A
        passive checkpoint takes no write lock, so writers go on appending to the WAL meanwhile; durability is
        the same (a commit is durable once it is in the WAL). Several processes may try at once: one runs, the
        others find it busy and return.
        """
        engine = self._engine
        try:
            if engine is None:  # disposed meanwhile: nothing to open again for this
                return
            connection = engine.raw_connection()
            try:
                cursor = connection.cursor()
                cursor.execute("PRAGMA wal_checkpoint(PASSIVE)")
                cursor.fetchall()
                cursor.close()
            finally:
                connection.close()
        except Exception as exc:  # the next one tries again; SQLite's backstop bounds the WAL meanwhile
            _logger.warning("WAL checkpoint failed: %s", exc)
        finally:
            self._checkpointing = False

    def _taken_group(self) -> list["_GroupWrite"]:
        with self._group_lock:
            group, self._group_pending = self._group_pending, []
        return group

    def _commit_group(self) -> None:
        """Commit the writes waiting (the leader's among them) in one transaction; see :meth:`_transact`."""
        group: list[_GroupWrite] = []
        try:
            # The connection is checked out before the write lock is taken and returned after it is released:
            # the lock, which every writer of every process queues for, covers the transaction and nothing else.
            # The group is taken once the lock is held: the writes that came while other processes held it (often
            # as long again as a transaction) are committed with it instead of waiting for the next turn.
            with contextlib.closing(self.engine.raw_connection()) as connection, self._write_lock, \
                    self._writer_turn():
                group = self._taken_group()
                several = len(group) > 1
                if several and all(write.rerunnable for write in group):
                    try:
                        with self._dbapi_transaction(self.sql, write=True, connection=connection) as cursor:
                            self._commits += 1
                            for write in group:
                                write.result = write.work(cursor)
                        return
                    except Exception:  # rolled back: find the write that failed, in savepoints, below
                        for write in group:
                            write.result = None
                with self._dbapi_transaction(self.sql, write=True, connection=connection) as cursor:
                    self._commits += 1
                    for write in group:
                        if not several:
                            write.result = write.work(cursor)
                            continue
                        cursor.execute("SAVEPOINT aptk_write")
                        try:
                            write.result = write.work(cursor)
                        except Exception as exc:
                            # Only this write is undone. If SQLite rolled the whole transaction back (a full disk
                            # can), the savepoint is gone: then the whole group fails, with this write's error.
                            try:
                                cursor.execute("ROLLBACK TO aptk_write")
                            except Exception:
                                raise exc from None
                            write.error = self._translated(exc)
                        cursor.execute("RELEASE aptk_write")
        except BaseException as exc:
            if not group:  # no connection, or no turn: the writes waiting fail with that
                group = self._taken_group()
            for write in group:
                write.result, write.error = None, exc
            if not isinstance(exc, Exception):
                raise
        finally:
            for write in group:
                if not write.leads:
                    write.turn.release()

    @contextlib.contextmanager
    def _dbapi_transaction(self, statements: "_Statements", write: bool, connection: Any = None) -> Iterator[Any]:
        """A DBAPI cursor in a transaction (or, reading SQLite, in autocommit), on ``connection`` if given (the
        caller returns it to the pool), else on one checked out from the pool here and returned at the end."""
        owned = connection is None
        if owned:
            connection = self.engine.raw_connection()
        try:
            cursor = connection.cursor()
            try:
                if write and self._sqlite:
                    cursor.execute("BEGIN IMMEDIATE")
                yield cursor
                if write or not self._sqlite:  # SQLite reads run in autocommit: nothing to end
                    connection.commit()
            except BaseException:
                with contextlib.suppress(Exception):
                    connection.rollback()
                raise
            finally:
                with contextlib.suppress(Exception):
                    cursor.close()
        except statements.dbapi_error as exc:
            raise self._translated(exc, None if self._sqlite else connection) from exc
        finally:
            if owned:
                connection.close()  # back to the pool

    def _translated(self, exc: BaseException, fairy: Any = None) -> BaseException:
        """A DBAPI error as the SQLAlchemy exception the rest of the store raises (IntegrityError, ...); with the
        pooled connection ``fairy`` it failed on (client-server databases), marked ``connection_invalidated`` if
        it says the connection is gone (see :meth:`_lost`)."""
        base = self.sql.dbapi_error
        if isinstance(exc, base):
            gone = fairy is not None and self._lost(exc, fairy)
            return sa.exc.DBAPIError.instance(None, None, exc, base, connection_invalidated=gone,  # type: ignore[arg-type]
                                              dialect=self.engine.dialect)
        return exc

    def create_schema(self) -> None:
        """Create the tables if they are missing; safe to call from several processes at once."""
        create_tables(self.engine, metadata, once=False)
        # Indexes added after a database was created: tables that existed already do not have them. The full
        # indexes the partial ones replace go once their successors are there (an older process still serving
        # meanwhile finds its rows either way).
        for attempt in range(5):
            try:
                with self.engine.begin() as conn:
                    for index in _LATER_INDEXES:
                        index.create(conn, checkfirst=True)
                    for name in _REPLACED_INDEXES:
                        conn.exec_driver_sql(f"DROP INDEX IF EXISTS {name}")
                break
            except (OperationalError, ProgrammingError, IntegrityError):
                if attempt == 4:  # another process created it between our check and our CREATE
                    raise
                time.sleep(0.05 * (attempt + 1))

    def dispose(self) -> None:
        with self._lock:
            readers, self._reader_set = self._reader_set, weakref.WeakSet()
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None
        for reader in list(readers):
            if reader.pid == os.getpid():  # a parent's connections are the parent's to close
                reader.close()

    # --- rows <-> actions --------------------------------------------------------------------------------

    @staticmethod
    def _row(action: Action) -> dict[str, Any]:
        row = {name: getattr(action, name) for name in _COLUMNS}
        row["status"] = action.status.value
        row["expires_at"] = action.expires_at
        return row

    @staticmethod
    def _action(row: sa.Row) -> Action:
        values = {name: row._mapping[name] for name in _COLUMNS}
        values["status"] = Status(values["status"])
        return Action(**values)

    @staticmethod
    def _roles(action: Action) -> list[dict[str, str]]:
        rows = {("creator_id", action.creator_id)}
        rows.update(("monitor_by", p) for p in action.monitor_by)
        rows.update(("manage_by", p) for p in action.manage_by)
        return [{"action_id": action.action_id, "role": r, "principal": p} for r, p in sorted(rows)]

    # --- operations ----------------------------------------------------------------------------------------

    def create(self, action: Action, log: LogRecord, now: float) -> tuple[Action, bool]:
        """Insert ``action``; if its (provider, creator, request_id) exists, return that one instead.

        An earlier action of the same request that has expired (but is not purged yet) is deleted first: its
        ``request_id`` is free again, as if it had been released.
        """
        sql = self.sql
        row = sql.action_values(self._row(action))
        roles = [(r["action_id"], r["role"], r["principal"]) for r in self._roles(action)]
        log_row = (action.action_id, log[0], log[1], log[2], sql.json_value(None))
        if sql.one_statement:
            statement = sql.create(len(roles))
            values = (*row, *(value for role in roles for value in role), *log_row)

            def insert(cursor: Any) -> None:
                cursor.execute(statement, values)
        else:
            def insert(cursor: Any) -> None:
                cursor.execute(sql.insert_action, row)
                cursor.executemany(sql.insert_role, roles)
                cursor.execute(sql.insert_log, log_row)

        for _ in range(3):
            try:
                self._transact(insert, single=sql.one_statement)
                return action, True
            except IntegrityError:
                existing = self.find_request(action.provider, action.creator_id, action.request_id)
                if existing is None:
                    continue  # released between our insert and our read: try again
                if existing.expires_at is not None and existing.expires_at <= now:
                    self._delete_ids([existing.action_id], now)
                    continue
                return existing, False
        raise RuntimeError("could not create or find the action")  # pragma: no cover

    def find_request(self, provider: str, creator_id: str, request_id: str) -> Action | None:
        """The action ``creator_id`` started at ``provider`` with ``request_id`` (expired or not), if any."""
        with self._read() as conn:
            row = conn.execute(
                _SELECT_BY_REQUEST, {"provider": provider, "creator_id": creator_id, "request_id": request_id}
            ).first()
        return None if row is None else self._action(row)

    def get(self, action_id: str) -> Action | None:
        sql = self.sql
        row = self._read_row(sql.select_action, (action_id,))
        return None if row is None else sql.action(row)

    def _read_row(self, statement: str, values: tuple[Any, ...]) -> Any:
        """The first row of one read statement (None: no row). A read that meets a lost connection is tried once
        more, on another: it changes nothing, and the pool has by then dropped the dead one."""
        for attempt in (1, 2):
            try:
                with self._read_cursor() as cursor:
                    cursor.execute(statement, values)
                    return cursor.fetchone()
            except sa.exc.DBAPIError as exc:
                if attempt == 2 or not exc.connection_invalidated:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _conditions(self, where: dict[str, Any]) -> list[Any]:
        conditions = []
        for name, expected in where.items():
            column = actions.c[name]
            if isinstance(expected, (set, frozenset, list, tuple)):
                conditions.append(column.in_([_plain(v) for v in expected]))
            elif expected is None:
                conditions.append(column.is_(None))
            else:
                conditions.append(column == _plain(expected))
        return conditions

    def update(
        self, action_id: str, *, where: dict[str, Any], log: LogRecord | None = None, **changes: Any
    ) -> Action | None:
        """Apply ``changes`` if the action still matches ``where``; the new action, or None if it did not."""
        sql = self.sql
        statement, values = sql.update(action_id, where, changes)
        if sql.one_statement:
            if log is not None:  # the log entry is written by the same statement, for the row it changed
                statement = sql.logged(statement)
                values += [log[0], log[1], log[2], sql.json_value(None)]

            def changed(cursor: Any) -> Any:
                cursor.execute(statement, values)
                return cursor.fetchone()

            row = self._transact(changed, single=True)
            return None if row is None else sql.action(row)

        def change(cursor: Any) -> Any:
            cursor.execute(statement, values)
            row = cursor.fetchone() if sql.returning else None
            if (row is None) if sql.returning else (cursor.rowcount != 1):
                return None
            if log is not None:
                cursor.execute(sql.insert_log, (action_id, log[0], log[1], log[2], sql.json_value(None)))
            if not sql.returning:
                cursor.execute(sql.select_action, (action_id,))
                row = cursor.fetchone()
            return row

        row = self._transact(change)
        return None if row is None else sql.action(row)

    def delete(self, action_id: str, *, where: dict[str, Any]) -> bool:
        with self._write() as conn:
            result = conn.execute(
                actions.delete().where(actions.c.action_id == action_id, *self._conditions(where))
            )
            if result.rowcount != 1:
                return False
            conn.execute(action_roles.delete().where(action_roles.c.action_id == action_id))
            conn.execute(action_log.delete().where(action_log.c.action_id == action_id))
        return True

    def append_log(
        self, action_id: str, time: float, code: str, description: str, details: dict[str, Any] | None = None,
        *, where: dict[str, Any] | None = None,
    ) -> bool:
        """Add a log entry; with ``where``, only while the action still matches it (False if it did not)."""
        sql = self.sql
        entry = (action_id, time, code, description, sql.json_value(details))
        owned = sql.owned(action_id, where) if where is not None else None

        def write(cursor: Any) -> bool:
            if owned is not None:
                cursor.execute(*owned)
                if cursor.fetchone() is None:
                    return False
            cursor.execute(sql.insert_log, entry)
            return True

        return bool(self._transact(write))

    @property
    def placeholder(self) -> str:
        """The database driver's parameter marker (``?`` for SQLite, ``%s`` for PostgreSQL), for the statements
        a ``then`` of :meth:`append_logs` runs on its cursor."""
        return self.sql.mark

    def append_logs(
        self, action_id: str, entries: Sequence[tuple[float, str, str, dict[str, Any] | None]], *,
        where: dict[str, Any] | None = None, then: Callable[[Any], Any] | None = None,
    ) -> bool:
        """Add log entries ``(time, code, description, details)`` and run ``then(cursor)`` in one write
        transaction; with ``where``, only while the action still matches it (False, and nothing written, if not).

        ``then`` gets the DBAPI cursor of that transaction, for a provider's writes to its own tables (statements
        with :attr:`placeholder` as parameter marker) that must be committed with the log entries or not at all:
        what it raises undoes the whole write and is raised here.
        """
        sql = self.sql
        rows = [(action_id, time, code, description, sql.json_value(details))
                for time, code, description, details in entries]
        owned = sql.owned(action_id, where) if where is not None else None

        def write(cursor: Any) -> bool:
            if owned is not None:
                cursor.execute(*owned)
                if cursor.fetchone() is None:
                    return False
            if rows:
                cursor.executemany(sql.insert_log, rows)
            if then is not None:
                then(cursor)
            return True

        return bool(self._transact(write, rerunnable=then is None))

    def log_page(self, action_id: str, after: int, limit: int) -> list[LogEntry]:
        with self._read() as conn:
            rows = conn.execute(
                sa.select(action_log)
                .where(action_log.c.action_id == action_id, action_log.c.entry_id > after)
                .order_by(action_log.c.entry_id)
                .limit(limit)
            ).all()
        return [LogEntry(r.entry_id, r.time, r.code, r.description, r.details) for r in rows]

    def enumerate(
        self, provider: str, principals: Iterable[str], roles: Iterable[str], statuses: Iterable[Status],
        now: float, *, after: tuple[float, str] | None = None, limit: int | None = None,
    ) -> list[Action]:
        """The matching actions in (start_time, action_id) order; ``after`` such a pair, at most ``limit``.

        That order never changes for an action, so pages that follow one another by ``after`` neither skip nor
        repeat an action, whatever is started (it comes last) or released meanwhile.

        The caller's actions are found from their role rows (an index on principal and role), then read by primary
        key: a page costs what the caller's own actions cost, not what every action of the provider does.
        """
        matching = (
            sa.select(action_roles.c.action_id)
            .where(action_roles.c.principal.in_(list(principals)), action_roles.c.role.in_(list(roles)))
            .distinct()
            .subquery()
        )
        # Terms on the actions table are written so that no index serves them (``provider || ''``,
        # ``start_time + 0``): else a planner may walk every action of the provider in listing order instead.
        start = actions.c.start_time + 0
        query = (
            sa.select(actions)
            .select_from(matching.join(actions, actions.c.action_id == matching.c.action_id))
            .where(
                actions.c.provider.concat("") == provider,
                actions.c.status.in_([s.value for s in statuses]),
                sa.or_(actions.c.expires_at.is_(None), actions.c.expires_at > now),
            )
            .order_by(actions.c.start_time, actions.c.action_id)
        )
        if after is not None:
            start_time, action_id = after
            query = query.where(sa.or_(
                start > start_time,
                sa.and_(start == start_time, actions.c.action_id > action_id),
            ))
        if limit is not None:
            query = query.limit(limit)
        with self._read() as conn:
            return [self._action(r) for r in conn.execute(query)]

    def find(
        self,
        *,
        statuses: Iterable[Status],
        providers: Iterable[str],
        heartbeat_before: float | None = None,
        deadline_before: float | None = None,
        runner_prefix: str | None = None,
        limit: int = 100,
    ) -> list[Action]:
        """Actions in ``statuses`` of ``providers``; with a stale heartbeat (before ``heartbeat_before``), a
        deadline before ``deadline_before``, or a runner id beginning with ``runner_prefix``, if given.

        A name ending in ``/`` in ``providers`` stands for every name that begins with it (a provider's variants).
        """
        names = list(providers)
        exact = [n for n in names if not n.endswith("/")]
        which = [actions.c.provider.in_(exact)] + [
            actions.c.provider.like(_escape_like(n) + "%", escape="\\") for n in names if n.endswith("/")
        ]
        statuses = list(statuses)
        query = sa.select(actions).where(actions.c.status.in_([s.value for s in statuses]), *_live(statuses),
                                         sa.or_(*which))
        if heartbeat_before is not None:
            query = query.where(actions.c.runner.is_not(None), actions.c.heartbeat < heartbeat_before)
        if deadline_before is not None:
            query = query.where(actions.c.deadline.is_not(None), actions.c.deadline < deadline_before)
        if runner_prefix is not None:
            query = query.where(actions.c.runner.like(_escape_like(runner_prefix) + "%", escape="\\"))
        with self._read() as conn:
            return [self._action(r) for r in conn.execute(query.limit(limit))]

    def heartbeat(self, runner: str, now: float, action_ids: Iterable[str]) -> None:
        """Mark these actions, if this runner still runs them, as alive at ``now``."""
        ids = list(action_ids)
        if not ids:
            return
        with self._write() as conn:
            conn.execute(
                actions.update()
                .where(actions.c.runner == runner, actions.c.status == Status.ACTIVE.value,
                       actions.c.action_id.in_(ids))
                .values(heartbeat=now)
            )

    def still_running(self, runner: str, attempts_by_id: dict[str, int]) -> set[str]:
        """Which of these actions this runner still owns (ACTIVE, same runner, same attempt)."""
        if not attempts_by_id:
            return set()
        with self._read() as conn:
            rows = conn.execute(
                sa.select(actions.c.action_id, actions.c.attempts).where(
                    actions.c.action_id.in_(list(attempts_by_id)),
                    actions.c.runner == runner,
                    actions.c.status == Status.ACTIVE.value,
                )
            ).all()
        return {r.action_id for r in rows if attempts_by_id[r.action_id] == r.attempts}

    def purge_expired(self, now: float, limit: int = PURGE_BATCH) -> int:
        """Delete at most ``limit`` actions expired by ``now`` (with their roles and log), in one transaction;
        how many. Found through the ``expires_at`` index: the cost follows ``limit``, not the store's size."""
        with self._read() as conn:
            expired = conn.execute(
                sa.select(actions.c.action_id).where(actions.c.expires_at <= now)
                .order_by(actions.c.expires_at).limit(limit)
            ).scalars().all()
        return self._delete_ids(list(expired), now) if expired else 0

    def ping(self) -> None:
        """One indexed read of the actions table; raises if the database cannot be used."""
        self._read_row("SELECT action_id FROM aptk_actions ORDER BY action_id LIMIT 1", ())

    def _delete_ids(self, ids: list[str], now: float) -> int:
        """Delete these expired actions with their roles and log."""
        with self._write() as conn:
            gone = conn.execute(
                actions.delete().where(actions.c.action_id.in_(ids), actions.c.expires_at <= now)
            ).rowcount
            conn.execute(action_roles.delete().where(action_roles.c.action_id.in_(ids)))
            conn.execute(action_log.delete().where(action_log.c.action_id.in_(ids)))
        return gone


_SELECT_BY_REQUEST = sa.select(actions).where(
    actions.c.provider == sa.bindparam("provider"),
    actions.c.creator_id == sa.bindparam("creator_id"),
    actions.c.request_id == sa.bindparam("request_id"),
)
_LATER_INDEXES = sorted((i for i in actions.indexes if i.name != "aptk_actions_request"), key=lambda i: str(i.name))


def _live(statuses: Iterable[Status]) -> list[Any]:
    """The term that lets SQLite use the partial indexes of unfinished actions, if ``statuses`` are all such
    (it adds nothing to the query's meaning)."""
    return [sa.text(LIVE_CONDITION)] if {s.value for s in statuses} <= _LIVE_STATUSES else []


_LIVE_STATUSES = {Status.ACTIVE.value, Status.INACTIVE.value}


def _log_row(action_id: str, log: LogRecord) -> dict[str, Any]:
    return {"action_id": action_id, "time": log[0], "code": log[1], "description": log[2], "details": None}


def _plain(value: Any) -> Any:
    return value.value if isinstance(value, Status) else value



class _Reader:
    """A thread's reading connection to a SQLite file; closed when dropped (its thread ended) or told to."""

    __slots__ = ("connection", "engine", "pid", "__weakref__")

    def __init__(self, connection: Any, engine: sa.Engine) -> None:
        self.connection = connection
        self.engine = engine
        self.pid = os.getpid()

    def close(self) -> None:
        connection, self.connection = self.connection, None
        if connection is not None and self.pid == os.getpid():
            with contextlib.suppress(Exception):
                connection.close()

    def __del__(self) -> None:
        self.close()


class _GroupWrite:
    """One thread's write in a group commit: its work, then its result or error once the group is committed."""

    __slots__ = ("work", "rerunnable", "turn", "leads", "result", "error")

    def __init__(self, work: Callable[[Any], Any], rerunnable: bool) -> None:
        self.work = work
        self.rerunnable = rerunnable
        # Released when the write is done, or when its thread is to lead the next group: a bare lock, the
        # cheapest way to wake one waiting thread (an Event costs a Condition's bookkeeping on every wake-up).
        self.turn = threading.Lock()
        self.turn.acquire()
        self.leads = False
        self.result: Any = None
        self.error: BaseException | None = None

    def outcome(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.result


_ACTION_COLUMNS = [c.name for c in actions.columns]


class _Statements:
    """The hot statements as SQL text for one dialect, with its parameter style and JSON handling."""

    def __init__(self, dialect: sa.Dialect) -> None:
        self.dialect = dialect
        self.dbapi_error = dialect.loaded_dbapi.Error
        self.returning = bool(dialect.update_returning)
        mark = {"qmark": "?", "numeric": None, "named": None}.get(dialect.paramstyle, "%s")
        if mark is None:  # pragma: no cover - the toolkit's dialects use qmark (sqlite3) or format (psycopg)
            raise sa.exc.ArgumentError(f"unsupported DBAPI paramstyle {dialect.paramstyle}")
        self.mark = mark
        # sqlite3 hands JSON back as text and takes text; psycopg parses json itself and takes its Json wrapper.
        self.text_json = dialect.name == "sqlite"
        if not self.text_json:
            from psycopg.types.json import Json

            self._json = Json
        quote = dialect.identifier_preparer.quote
        self.columns = ", ".join(quote(c) for c in _ACTION_COLUMNS)
        self._q = quote
        places = ", ".join(mark for _ in _ACTION_COLUMNS)
        self.insert_action = f"INSERT INTO aptk_actions ({self.columns}) VALUES ({places})"
        self.insert_role = f"INSERT INTO aptk_action_roles (action_id, role, principal) VALUES ({mark}, {mark}, {mark})"
        self.insert_log = (f"INSERT INTO aptk_action_log (action_id, {quote('time')}, code, description, details) "
                           f"VALUES ({mark}, {mark}, {mark}, {mark}, {mark})")
        self.select_action = f"SELECT {self.columns} FROM aptk_actions WHERE action_id = {mark}"
        self._updates: dict[Any, str] = {}
        self._owned: dict[Any, str] = {}
        # PostgreSQL: the hot writes as one statement each (data-modifying WITH), run in autocommit.
        self.one_statement = dialect.name == "postgresql"
        self._creates: dict[int, str] = {}
        self._logged: dict[str, str] = {}
        typed = [f"CAST({mark} AS {column.type.compile(dialect=dialect)})"
                 for column in (action_log.c.time, action_log.c.code, action_log.c.description, action_log.c.details)]
        self._log_values = ", ".join(typed)
        self._json_positions = [i for i, c in enumerate(_ACTION_COLUMNS) if c in _JSON_COLUMNS]
        self._status_position = _ACTION_COLUMNS.index("status")

    def json_value(self, value: Any) -> Any:
        if value is None:
            return None if not self.text_json else "null"  # as SQLAlchemy's JSON type stores None
        return json.dumps(value) if self.text_json else self._json(value)

    def action_values(self, row: dict[str, Any]) -> tuple[Any, ...]:
        return tuple(self.json_value(row[c]) if c in _JSON_COLUMNS else row[c] for c in _ACTION_COLUMNS)

    def action(self, row: Any) -> Action:
        values = list(row)
        if self.text_json:
            for i in self._json_positions:
                text = values[i]
                if text == "[]":  # most monitor_by and manage_by; a fresh list each time, as json.loads gives
                    values[i] = []
                elif text == "{}":
                    values[i] = {}
                elif text is not None:
                    values[i] = _json_decode(text)
        values[self._status_position] = _STATUSES[values[self._status_position]]
        values.pop(_EXPIRES_POSITION)
        return Action(*values)

    @staticmethod
    def _where(where: dict[str, Any], values: list[Any]) -> tuple[Any, ...]:
        """Add the values of the conditions ``where`` to ``values``; the conditions' shape (a cache key)."""
        shape: list[tuple[str, int | None]] = []
        for name, expected in where.items():
            if isinstance(expected, (set, frozenset, list, tuple)):
                items = sorted(_plain(v) for v in expected)
                values.extend(items)
                shape.append((name, len(items)))
            elif expected is None:
                shape.append((name, None))
            else:
                values.append(_plain(expected))
                shape.append((name, 0))
        return tuple(shape)

    def _conditions(self, shape: tuple[Any, ...]) -> list[str]:
        conditions = []
        for name, kind in shape:
            column = self._q(actions.c[name].name)  # KeyError for a column that does not exist
            if kind is None:
                conditions.append(f"{column} IS NULL")
            elif kind == 0:
                conditions.append(f"{column} = {self.mark}")
            else:
                conditions.append(f"{column} IN ({', '.join(self.mark for _ in range(kind))})")
        return conditions

    def update(self, action_id: str, where: dict[str, Any], changes: dict[str, Any]) -> tuple[str, list[Any]]:
        """A compare-and-set UPDATE of one action (RETURNING its row where the database can).

        The statement's text depends only on which columns change and on the shape of the conditions: it is
        built once per shape; each call only gathers the values."""
        values: list[Any] = []
        for name, value in changes.items():
            values.append(self.json_value(value) if name in _JSON_COLUMNS else _plain(value))
        expires: str | None = None
        if "completion_time" in changes or "release_after" in changes:
            if "completion_time" in changes and changes["completion_time"] is None:
                expires = "null"
            else:
                expires = "sum"
                for name in ("completion_time", "release_after"):
                    if name in changes:
                        values.append(changes[name])
        values.append(action_id)
        key = (tuple(changes), expires, self._where(where, values))
        statement = self._updates.get(key)
        if statement is None:
            statement = self._updates[key] = self._update_text(*key)
        return statement, values

    def _update_text(self, changed: tuple[str, ...], expires: str | None, where: tuple[Any, ...]) -> str:
        sets = [f"{self._q(actions.c[name].name)} = {self.mark}" for name in changed]
        if expires == "null":
            sets.append("expires_at = NULL")
        elif expires == "sum":
            parts = [self.mark if name in changed else self._q(name) for name in ("completion_time", "release_after")]
            sets.append(f"expires_at = {parts[0]} + {parts[1]}")
        where_sql = " AND ".join([f"action_id = {self.mark}", *self._conditions(where)])
        statement = f"UPDATE aptk_actions SET {', '.join(sets)} WHERE {where_sql}"
        if self.returning:
            statement += f" RETURNING {self.columns}"
        return statement

    def create(self, roles: int) -> str:
        """One statement that inserts an action, its ``roles`` role rows and its first log entry (values in that
        order, as for insert_action, insert_role and insert_log)."""
        statement = self._creates.get(roles)
        if statement is None:
            role_rows = ", ".join(f"({self.mark}, {self.mark}, {self.mark})" for _ in range(roles))
            parts = [f"new_action AS ({self.insert_action} RETURNING action_id)"]
            if roles:
                parts.append(f"new_roles AS (INSERT INTO aptk_action_roles (action_id, role, principal) VALUES "
                             f"{role_rows})")
            parts.append(f"new_entry AS ({self.insert_log})")
            statement = self._creates[roles] = f"WITH {', '.join(parts)} SELECT action_id FROM new_action"
        return statement

    def logged(self, update: str) -> str:
        """``update`` (an UPDATE ... RETURNING of :meth:`update`) that also adds a log entry for the row it
        changed, and none if it changed none; the entry's time, code, description and details follow the
        update's values."""
        statement = self._logged.get(update)
        if statement is None:
            statement = self._logged[update] = (
                f"WITH changed AS ({update}), entry AS (INSERT INTO aptk_action_log (action_id, {self._q('time')}, "
                f"code, description, details) SELECT action_id, {self._log_values} FROM changed) "
                f"SELECT {self.columns} FROM changed")
        return statement

    def owned(self, action_id: str, where: dict[str, Any]) -> tuple[str, list[Any]]:
        """SELECT of the action while it still matches ``where``, locking its row where the database can."""
        values: list[Any] = [action_id]
        key = self._where(where, values)
        statement = self._owned.get(key)
        if statement is None:
            statement = (f"SELECT action_id FROM aptk_actions WHERE "
                         f"{' AND '.join([f'action_id = {self.mark}', *self._conditions(key)])}")
            if not self.text_json:
                statement += " FOR UPDATE"
            self._owned[key] = statement
        return statement, values


_EXPIRES_POSITION = _ACTION_COLUMNS.index("expires_at")
_STATUSES = {s.value: s for s in Status}
_json_decode = json.JSONDecoder().decode
# _Statements.action builds an Action from a row by position: the table's columns, less expires_at, in order.
assert [f.name for f in dataclasses.fields(Action)] == [c for c in _ACTION_COLUMNS if c != "expires_at"]


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


# Engine -> the table collections already created in it; both held weakly, since ids are reused once an
# object is collected and a new engine could otherwise be taken for one that already has its tables.
_created: weakref.WeakKeyDictionary[sa.Engine, weakref.WeakSet[sa.MetaData]] = weakref.WeakKeyDictionary()
_created_lock = threading.Lock()


def delete_orphans(engine: sa.Engine, column: sa.Column, *, batch: int = PURGE_BATCH, stopping: Any = None) -> int:
    """Delete the rows of a provider's own table whose action is gone (released, or removed by expiry); how many.

    ``column`` is the table's column holding the action id. The table is gone through once in that column's
    order, ``batch`` rows looked at per transaction, so that a sweep never holds the database for long; it stops
    early once ``stopping`` (an Event) is set. Rows of actions that still exist are kept.
    """
    table = column.table
    known = sa.table("aptk_actions", sa.column("action_id"))
    deleted = 0
    after = ""
    while stopping is None or not stopping.is_set():
        with engine.begin() as conn:
            ids = conn.execute(sa.select(column).where(column > after).order_by(column).limit(batch)).scalars().all()
            if not ids:
                break
            after = ids[-1]
            orphan = ~sa.exists().where(known.c.action_id == column)
            deleted += conn.execute(table.delete().where(column.in_(ids), orphan)).rowcount
        if len(ids) < batch:
            break
    return deleted


def create_tables(engine: sa.Engine, tables: sa.MetaData, *, once: bool = True) -> None:
    """Create the tables of ``tables`` that are missing, tolerating other processes doing the same at once.

    For providers keeping tables of their own beside the actions (``ctx.store.engine``); with ``once`` (the
    default) later calls for the same engine and tables return at once.
    """
    if once and tables in _created.get(engine, ()):
        return
    with _created_lock:
        if once and tables in _created.get(engine, ()):
            return
        for attempt in range(5):
            try:
                with engine.begin() as conn:
                    tables.create_all(conn)
                break
            except (OperationalError, ProgrammingError, IntegrityError):
                # Another process created a table between our check and our CREATE.
                if attempt == 4:
                    raise
                time.sleep(0.05 * (attempt + 1))
        _created.setdefault(engine, weakref.WeakSet()).add(tables)
