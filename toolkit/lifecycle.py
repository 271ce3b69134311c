"""The one place that moves actions between states.

Every transition is a compare-and-set on the store, so that any process sharing the database may serve any
request: a run served by one gunicorn worker can be cancelled through another, and a callback that finishes
after its action was cancelled changes nothing.

Each process runs one maintenance thread that

* heartbeats the actions its executor is running, and tells their callbacks when they were ended elsewhere;
* fails actions past their ``deadline``;
* takes up actions whose process died: runs them again or fails them, as the provider says. A process is taken
  for dead when its heartbeat is older than the lease, or at once when it ran on this host and is gone
  (:mod:`.runners`);
* deletes completed actions once ``release_after`` has passed.

A run callback may instead *hand its action over* (:meth:`RunContext.hand_over`): the action stays ACTIVE when the
callback returns, owned by no process (no runner, no heartbeat), so the lease never takes it up; the provider
keeps it up to date itself and ends it with :meth:`Runtime.end`. A provider's background tasks
(:meth:`ActionProvider.background`) run beside the maintenance thread in every process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import json
import logging
import os
import re
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping, Sequence

from flask import has_request_context, request
from marshmallow import ValidationError
from werkzeug.sansio.utils import get_current_url

from .authorization import require_manage, require_monitor, require_runnable
from .documents import (
    Action,
    Status,
    describe_validation_error,
    load_action_request,
)
from .errors import (
    ActionCancelled,
    ActionConflict,
    ActionFailed,
    ActionInactive,
    ActionNotFound,
    ApiError,
    BadActionRequest,
    ConfigurationError,
    ServiceUnavailable,
)
from . import logs, metrics, runners
from .auth import Identity
from .executor import Executor
from .rq_executor import QUEUED_RUNNER, REDIS_RETRY_AFTER, QueueUnavailable
from .request_key import request_digest, request_key, same_request
from .settings import flag
from .store import PURGE_BATCH, LogEntry, Store

if TYPE_CHECKING:
    from .auth import TokenVerifier
    from .provider import ActionProvider
    from .typing import Clock

logger = logging.getLogger("toolkit.lifecycle")

ACTIVE_STATES = frozenset({Status.ACTIVE, Status.INACTIVE})
COMPLETED_STATES = frozenset({Status.SUCCEEDED, Status.FAILED})
_ACTION_ID = re.compile(r"[0-9a-f]{32}")
PAUSE_DETAILS = frozenset({"code", "description", "required_scope", "resolution_url"})
"""What a pause (INACTIVE) adds to an action's details; a resume removes these and keeps the rest."""
PURGE_SECONDS = 1.0
"""A sweep deletes expired actions in batches (:data:`~toolkit.store.PURGE_BATCH`) for at most about this long."""
QUEUED = "Queued"
"""The ``display_status`` of an action whose callback waits for a free thread or for its caller's turn."""


@dataclasses.dataclass(frozen=True)
class HookContext:
    """What a ``check``, ``cancel``, ``resume`` or ``finish`` hook gets besides the body (or action): who is
    asking, the deployment's settings, the store, and the clock the toolkit runs on.

    ``store.engine`` is the SQLAlchemy engine of the toolkit's database, where a provider may keep tables of its
    own (:func:`toolkit.store.create_tables`); read settings with ``toolkit.settings.setting(ctx.config, name)``.
    """

    identity: Identity
    """The caller (of ``/run``, ``/cancel``, ``/resume``), with every principal it speaks for. A ``finish`` hook
    of an action that ends without a caller (its callback returned, a deadline, a lost process) gets the action's
    creator with the principals stored with the action, and no token."""
    config: Mapping[str, Any]
    """The app's configuration (``APTK_DATA_DIR`` is always set)."""
    store: Store
    clock: Clock
    """Now, as UTC epoch seconds: use it rather than ``time.time`` so that tests may move time."""
    runtime: "Runtime | None" = None
    """The runtime serving this request (for :meth:`toolkit.calls.Calls.from_context`)."""


@dataclasses.dataclass(frozen=True)
class BackgroundContext:
    """What a provider's background task gets: the runtime of its process and an event set when it stops."""

    runtime: "Runtime"
    stopping: threading.Event
    """Set when the process stops: return soon after (wait on it rather than sleeping)."""

    @property
    def app(self) -> Any:
        """The Flask app served (None for a runtime used without one)."""
        return self.runtime.app

    @property
    def store(self) -> Store:
        return self.runtime.store

    @property
    def config(self) -> Mapping[str, Any]:
        return self.runtime.config

    @property
    def clock(self) -> "Clock":
        return self.runtime.clock

    def every(self, seconds: float, work: Callable[[], Any], what: str) -> None:
        """Call ``work()`` every ``seconds`` until the process stops. A call that raises (the database away) is
        logged as ``what`` failing and the next turn tries again."""
        while not self.stopping.wait(seconds):
            try:
                work()
            except Exception:
                logger.exception("%s failed; trying again in %g s", what, seconds)


@dataclasses.dataclass(frozen=True)
class VariantContext:
    """What a provider's variant resolver (:meth:`~toolkit.ActionProvider.variants`) gets besides the key: the
    deployment's settings, the store (whose ``engine`` may hold the provider's own tables) and the clock."""

    config: Mapping[str, Any]
    store: Store
    clock: Clock


class RunContext:
    """What a run callback gets besides its body: who asked, progress reporting, cancellation, a log."""

    def __init__(
        self,
        runtime: "Runtime",
        provider: "ActionProvider",
        action: Action,
        resumed: bool,
        identity: "Identity | None" = None,
    ) -> None:
        self._runtime = runtime
        self.identity = identity
        """Who started (or resumed) this run, with their token; None when a run is taken up after a crash."""
        self._provider = provider
        self._event = threading.Event()
        self.action_id = action.action_id
        self.attempt = action.attempts
        self.resumed = resumed
        self.creator_id = action.creator_id
        self.principals = frozenset(action.principals)
        self.request_id = action.request_id
        self.label = action.label
        self.deadline = action.deadline
        self.details = dict(action.details)
        """The action's details as ``/status`` shows them: when this run started, what an earlier attempt
        reported (after a pause, without the pause's ``code``, ``description``, ``required_scope`` and
        ``resolution_url``); after :meth:`progress` with details, those details."""
        self._origin: tuple[str, str, str] | str | None = _request_origin()
        # Scheduling: set while the callback waits in the executor's queue (see Runtime._mark_queued).
        self._queue_lock = threading.Lock()
        self._submitted: float | None = None
        self._started = False
        self._marked = False
        self._done = threading.Event()  # set once the callback's outcome is recorded (or it will not run)
        self._handed_over = False

    @property
    def origin(self) -> str | None:
        """Where this run was started (or resumed) from: the root URL (``scheme://host[:port][/script root]``)
        of the request, when this process runs it for a request; None when it is taken up after a crash."""
        origin = self._origin
        if isinstance(origin, tuple):  # built when first asked for: few callbacks ever do
            origin = self._origin = get_current_url(*origin).rstrip("/")
        return origin

    def dependent_tokens(self) -> dict[str, dict[str, Any]]:
        """Tokens to call downstream services as the caller, by resource server (Globus Auth verifier).

        When the caller's token is not at hand (the run was taken up after a crash), the action goes INACTIVE
        asking for a resume, which brings a fresh token.
        """
        if self.identity is None or not self.identity.token:
            raise ActionInactive(
                "CredentialsRequired",
                "This action needs the caller's credentials again; resume it to continue.",
                required_scope=self._provider.globus_auth_scope,
            )
        return self._runtime.verifier.dependent_tokens(self.identity.token)

    @property
    def config(self) -> Mapping[str, Any]:
        """The app's configuration (``APTK_DATA_DIR`` is always set), for providers that need settings."""
        return self._runtime.config

    @property
    def store(self) -> Store:
        """The store actions live in; with :class:`~toolkit.store.SQLStore` a provider may keep tables of its
        own in ``store.engine`` (a SQLAlchemy engine)."""
        return self._runtime.store

    @property
    def clock(self) -> "Clock":
        """Now, as UTC epoch seconds (the clock the toolkit runs on, which tests may move)."""
        return self._runtime.clock

    @property
    def cancelled(self) -> bool:
        """True once the action was cancelled, released or passed its deadline; stop working then."""
        return self._event.is_set()

    def check(self) -> None:
        """Raise :class:`ActionCancelled` if the action has ended; call it between units of work."""
        if self._event.is_set():
            raise ActionCancelled(self.action_id)

    def sleep(self, seconds: float) -> None:
        """Wait ``seconds``, waking (and raising :class:`ActionCancelled`) at once if the action ends."""
        if self._event.wait(max(0.0, seconds)):
            raise ActionCancelled(self.action_id)

    def progress(self, details: dict[str, Any] | None = None, display_status: str | None = None) -> None:
        """Publish progress: ``details`` replaces the action's details; both show in ``/status`` at once."""
        if self._runtime.stopping:
            self._event.set()
            raise ActionCancelled(self.action_id)
        changes: dict[str, Any] = {"heartbeat": self._runtime.clock()}
        if details is not None:
            changes["details"] = _json_object(details)
        if display_status is not None:
            changes["display_status"] = display_status[:64] or None
        updated = self._runtime.store.update(self.action_id, where=self._ownership(), **changes)
        if updated is None:
            self._event.set()
            raise ActionCancelled(self.action_id)
        self.details = dict(updated.details)

    def log(self, description: str, **details: Any) -> None:
        """Add a line to the action's ``/log``.

        Like :meth:`progress`, it raises :class:`ActionCancelled` (and writes nothing) once this run no longer
        owns the action: it was cancelled, released, passed its deadline, was paused, or it ended.
        """
        written = self._runtime.store.append_log(
            self.action_id, self._runtime.clock(), "Log", description, _json_object(details) if details else None,
            where=self._ownership(),
        )
        if not written:
            self._event.set()
            raise ActionCancelled(self.action_id)

    def log_and_write(self, entries: Sequence[tuple[float, str, dict[str, Any] | None]],
                      then: Callable[[Any], Any] | None = None) -> None:
        """Add lines ``(time, description, details)`` to the action's ``/log`` and run ``then(cursor)`` (a
        provider's writes to its own tables, see :meth:`toolkit.store.SQLStore.append_logs`), in one transaction.

        Like :meth:`log`, it raises :class:`ActionCancelled` (and writes nothing, ``then`` included) once this
        run no longer owns the action.
        """
        rows = [(time, "Log", description, _json_object(details) if details else None)
                for time, description, details in entries]
        written = self._runtime.store.append_logs(self.action_id, rows, where=self._ownership(), then=then)
        if not written:
            self._event.set()
            raise ActionCancelled(self.action_id)

    def hand_over(self, details: dict[str, Any] | None = None, display_status: str | None = None) -> None:
        """Keep the action ACTIVE once the callback returns, in the provider's own hands.

        From then on no process owns it: nothing heartbeats it and the lease never runs it again or fails it.
        The provider updates it in the store (``where={"status": ACTIVE, "runner": None}``) and ends it with
        :meth:`Runtime.end`; ``/cancel``, ``deadline`` and ``release_after`` apply as to any action. What the
        callback returns afterwards is ignored. Raises :class:`ActionCancelled` if the action already ended.
        """
        changes: dict[str, Any] = {"runner": None, "heartbeat": None}
        if details is not None:
            changes["details"] = _json_object(details)
        if display_status is not None:
            changes["display_status"] = display_status[:64] or None
        if self._runtime.store.update(self.action_id, where=self._ownership(), **changes) is None:
            self._event.set()
            raise ActionCancelled(self.action_id)
        self._handed_over = True

    def _ownership(self) -> dict[str, Any]:
        return {"status": Status.ACTIVE, "runner": self._runtime.runner_id, "attempts": self.attempt}


def _request_origin() -> tuple[str, str, str] | None:
    """What the root URL of the HTTP request being served on this thread is made of (scheme, host as checked
    against the app's trusted hosts, root path), if there is one."""
    if not has_request_context():
        return None
    return request.scheme, request.host, request.root_path


def _json_object(value: Any) -> dict[str, Any]:
    """A copy of ``value`` that is a JSON object, or a TypeError/ValueError saying why not (NaN is not JSON)."""
    if not isinstance(value, dict):
        raise TypeError(f"details must be a dict, not {type(value).__name__}")
    return json.loads(json.dumps(value, allow_nan=False))


_RANDOM = threading.local()


def _random_bytes(n: int) -> bytes:
    """``n`` bytes from the operating system's random source, read 4 KiB at a time per thread: one system call
    (which lets go of the GIL, and so of the request's turn) per few hundred ids. Never shared across a fork."""
    random = _RANDOM
    pool: bytes = getattr(random, "pool", b"")
    position: int = getattr(random, "position", 0)
    if position + n > len(pool) or random.pid != os.getpid():
        pool, position = os.urandom(4096), 0
        random.pool, random.pid = pool, os.getpid()
    random.position = position + n
    return pool[position:position + n]


def new_action_id() -> str:
    """A new action's id: a UUID of version 7 (RFC 9562) in 32 hex digits, 48 bits of Unix time in milliseconds
    and then 74 random bits. Ids made one after the other sort together, so that the indexes keyed on them grow
    at one end instead of being written at a random place each time; the time they tell is the action's
    ``start_time``, which its status shows anyway."""
    random = int.from_bytes(_random_bytes(10), "big")
    value = ((time.time_ns() // 1_000_000) & 0xFFFF_FFFF_FFFF) << 80 | 0x7 << 76 | (random >> 68) << 64 \
        | 0b10 << 62 | (random & 0x3FFF_FFFF_FFFF_FFFF)
    return f"{value:032x}"


def request_hash(document: dict[str, Any], key: bytes | None = None) -> str:
    """The digest stored for ``request_id`` idempotency, keyed with the data directory's key (:mod:`.request_key`)."""
    return request_digest(document, key)


class Runtime:
    """Action state transitions for every provider served by one app, over one store and one executor."""

    def __init__(
        self,
        store: Store,
        executor: Executor,
        *,
        verifier: "TokenVerifier",
        clock: "Clock" = time.time,
        lease_seconds: float = 30.0,
        tick_seconds: float = 0.5,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        self.store = store
        self.verifier = verifier
        """Who checks tokens; also asked for the dependent tokens of :meth:`RunContext.dependent_tokens`."""
        self.config: Mapping[str, Any] = config if config is not None else {}
        self.executor = executor
        self._remote = bool(getattr(executor, "remote", False))
        """Callbacks run on queue workers (:mod:`.rq_executor`): actions wait there as queued, owned by no process."""
        # Executors written before fair scheduling take only the callable.
        try:
            self._fair = "identity" in inspect.signature(executor.submit).parameters
        except (TypeError, ValueError):  # pragma: no cover - a builtin without a signature
            self._fair = False
        self.clock = clock
        self.lease_seconds = lease_seconds
        self.heartbeat_seconds = max(tick_seconds, lease_seconds / 5)
        # Deadlines are also applied whenever an action is read, so the sweep need not be frequent.
        self.sweep_seconds = max(tick_seconds, min(2.0, lease_seconds / 2))
        self.tick_seconds = tick_seconds
        self.metrics = flag(self.config, "APTK_METRICS", False)
        """Whether actions are counted for ``/metrics`` (:mod:`toolkit.metrics`)."""
        self.providers: dict[str, ActionProvider] = {}
        self.runner_id = ""
        self._running: dict[str, RunContext] = {}
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.app: Any = None
        """The Flask app this runtime serves (set by :class:`toolkit.Toolkit`), for in-process calls."""
        # Who waits for which action in this process (:meth:`watch`); empty on the hot path.
        self._watchers: dict[str, list[threading.Event]] = {}
        self._watch_lock = threading.Lock()
        self._background: list[threading.Thread] = []

    @functools.cached_property
    def request_key(self) -> bytes | None:
        """The key of request digests (:mod:`.request_key`); None (plain SHA-256) for a runtime without one."""
        return request_key(self.config)

    def register(self, provider: "ActionProvider") -> None:
        known = self.providers.get(provider.name)
        if known is not None and known is not provider:
            raise ConfigurationError(f"two providers are named {provider.name!r}; give one another name=")
        self.providers[provider.name] = provider

    def variant(self, family: "ActionProvider", key: str) -> "ActionProvider | None":
        """The variant of ``family`` served at ``key`` (see :meth:`ActionProvider.variants`), or None."""
        from .provider import VARIANT_KEY

        if family.variant_resolver is None or not VARIANT_KEY.fullmatch(key):
            return None
        variant = family.variant_resolver(key, VariantContext(config=self.config, store=self.store, clock=self.clock))
        if variant is None:
            return None
        if variant.family is not family or variant.variant_key != key:
            raise ConfigurationError(
                f"the variant resolver of {family!r} must return family.variant({key!r}, ...), not {variant!r}"
            )
        return variant

    def provider_named(self, name: str) -> "ActionProvider | None":
        """The provider an action stored under ``name`` belongs to: a registered provider or one's variant."""
        provider = self.providers.get(name)
        if provider is not None:
            return provider
        family_name, slash, key = name.partition("/")
        family = self.providers.get(family_name)
        if not slash or family is None:
            return None
        return self.variant(family, key)

    def _stored_names(self) -> list[str]:
        """What the actions of this runtime's providers are stored under: their names, and ``<name>/`` for every
        provider with variants (a prefix: :meth:`~toolkit.store.SQLStore.find`)."""
        names = list(self.providers)
        return names + [f"{n}/" for n, p in self.providers.items() if p.variant_resolver is not None]

    # --- change notification -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def watch(self, action_id: str) -> Iterator[threading.Event]:
        """An event set whenever ``action_id`` changes state in this process (ends, pauses, resumes, is
        released); clear it before reading the action, then wait on it.

        Only changes made by this process are signalled: a waiter must also read the store now and then, since
        another process (after a crash, another gunicorn worker) may be the one that ends the action.
        """
        event = threading.Event()
        with self._watch_lock:
            self._watchers.setdefault(action_id, []).append(event)
        try:
            yield event
        finally:
            with self._watch_lock:
                events = self._watchers.get(action_id, [])
                if event in events:
                    events.remove(event)
                if not events:
                    self._watchers.pop(action_id, None)

    def _changed(self, action_id: str) -> None:
        """Wake whoever watches ``action_id`` (nothing to do, and no lock taken, when nobody does)."""
        if not self._watchers:
            return
        with self._watch_lock:
            for event in self._watchers.get(action_id, ()):
                event.set()

    # --- background maintenance -------------------------------------------------------------------------------

    def start(self) -> None:
        """Start this process's maintenance thread (idempotent; restarts after a fork).

        Once :meth:`stop` ran in this process, the runtime stays stopped: a request still being answered (or an
        in-process call from a callback on its way out) must not take up again the actions just handed over.
        """
        with self._lock:
            if self._pid == os.getpid() and self._thread is not None and (
                    self._thread.is_alive() or self._stop.is_set()):
                return
            if self._pid is None:
                self.store.create_schema()
            self._pid = os.getpid()
            self.runner_id = runners.new_runner_id()
            self._running = {}
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._maintain, name="aptk-maintenance", daemon=True)
            self._thread.start()
            context = BackgroundContext(self, self._stop)
            self._background = [
                threading.Thread(target=self._background_task, args=(fn, context), daemon=True,
                                 name=f"aptk-{provider.name}")
                for provider in list(self.providers.values()) for fn in provider.background_callbacks
            ]
            for thread in self._background:
                thread.start()

    @staticmethod
    def _background_task(fn: Any, context: BackgroundContext) -> None:
        try:
            fn(context)
        except Exception:
            logger.exception("background task %r stopped", fn)

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def stop(self, grace: float = 0.0) -> None:
        """Stop this process's share of the work.

        Running callbacks get ``grace`` seconds to finish; those still running are then told to stop and their
        actions handed to other processes at once (run again or failed, as their provider says).
        """
        give_up = time.monotonic() + grace
        while self._running and time.monotonic() < give_up:
            time.sleep(0.05)
        self._stop.set()
        left = list(self._running.values())
        for ctx in left:
            ctx._event.set()
        # A stop may come while start() is still starting them (a signal to a worker still booting): only
        # threads that started can be waited for; the others see the stop flag as soon as they run.
        for thread in [self._thread, *self._background]:
            if thread is not None and thread.ident is not None and thread is not threading.current_thread():
                thread.join(timeout=5)
        if self.runner_id and left:
            try:
                self.store.heartbeat(self.runner_id, 0.0, [ctx.action_id for ctx in left])
            except Exception:  # pragma: no cover - best effort at exit
                logger.exception("could not hand over running actions")
        self.executor.shutdown(wait=False)

    def _maintain(self) -> None:
        last_heartbeat = last_sweep = 0.0
        while not self._stop.wait(self.tick_seconds):
            try:
                now = self.clock()
                if now - last_heartbeat >= self.heartbeat_seconds:
                    # Only what runs here and now: an action whose callback is gone must look dead.
                    self.store.heartbeat(self.runner_id, now, list(self._running))
                    last_heartbeat = now
                self._notice_ended()
                self._mark_queued()
                if now - last_sweep >= self.sweep_seconds:
                    self.sweep(now)
                    last_sweep = now
            except Exception:
                logger.exception("action maintenance failed; retrying")

    def _notice_ended(self) -> None:
        running = dict(self._running)
        if not running:
            return
        alive = self.store.still_running(self.runner_id, {i: c.attempt for i, c in running.items()})
        for action_id, ctx in running.items():
            if action_id not in alive:
                self._ended(action_id, ctx)

    def _ended(self, action_id: str, ctx: RunContext) -> None:
        """Tell a run that its action ended; one still waiting in the queue is forgotten at once."""
        ctx._event.set()
        if not ctx._started and self._running.get(action_id) is ctx:
            del self._running[action_id]

    def _mark_queued(self) -> None:
        """Say ``Queued`` in the status of actions whose callback still waits for the executor."""
        waiting = [c for c in list(self._running.values()) if c._submitted is not None and not c._started
                   and not c._marked and time.monotonic() - c._submitted >= self.tick_seconds / 2]
        for ctx in waiting:
            with ctx._queue_lock:  # the callback does not start while its action is being marked
                if ctx._started or ctx.cancelled:
                    continue
                marked = self.store.update(ctx.action_id, where=ctx._ownership(), display_status=QUEUED)
                if marked is None:
                    ctx._event.set()  # ended meanwhile: it must not start
                else:
                    ctx._marked = True

    def sweep(self, now: float | None = None) -> None:
        """Enforce deadlines, take up actions of dead processes, delete expired ones."""
        now = self.clock() if now is None else now
        mine = self._stored_names()
        for action in self.store.find(statuses=ACTIVE_STATES, deadline_before=now, providers=mine):
            self._expire_deadline(action, now)
        queued = []
        for action in self.store.find(statuses={Status.ACTIVE}, heartbeat_before=now - self.lease_seconds,
                                      providers=mine):
            if action.runner == QUEUED_RUNNER:
                queued.append(action)
            else:
                self._recover(action, now)
        if queued:
            self._requeue(queued, now)
        self._recover_local(now)
        self.purge(now)

    def purge(self, now: float) -> int:
        """Delete expired actions in bounded batches, each its own transaction, for about PURGE_SECONDS at most;
        the number deleted. What is left waits for the next sweep."""
        give_up = time.monotonic() + PURGE_SECONDS
        total = 0
        while True:
            gone = self.store.purge_expired(now, PURGE_BATCH)
            total += gone
            if gone < PURGE_BATCH or time.monotonic() >= give_up or self._stop.is_set():
                return total

    def _recover_local(self, now: float) -> None:
        """Take up, without waiting for the lease, the actions of processes of this host that are gone."""
        prefix = runners.local_prefix()
        if prefix is None:
            return
        verdicts: dict[str, bool] = {self.runner_id: False}
        for action in self.store.find(statuses={Status.ACTIVE}, runner_prefix=prefix, providers=self._stored_names()):
            runner = action.runner or ""
            if runner not in verdicts:
                verdicts[runner] = runners.gone(runner)
            if verdicts[runner]:
                self._recover(action, now)

    def _expire_deadline(self, action: Action, now: float) -> Action | None:
        # Keep what the action reported (progress counters, say) beside the reason it ended.
        details = {**action.details, "code": "DeadlineExceeded",
                   "description": "The action did not complete before its deadline."}
        with logs.action_context(action.action_id):
            return self._finish(action, {"status": ACTIVE_STATES}, Status.FAILED, details, now)

    def _recover(self, action: Action, now: float) -> None:
        with logs.action_context(action.action_id):
            self._take_up(action, now)

    def _take_up(self, action: Action, now: float) -> None:
        try:
            provider = self.provider_named(action.provider)
        except Exception:  # a variant that cannot be looked up now (database down?): try again next sweep
            logger.exception("could not look up the provider of action %s", action.action_id)
            return
        where = {"status": Status.ACTIVE, "runner": action.runner, "attempts": action.attempts}
        if provider is None:  # a variant that no longer exists
            self._finish(action, where, Status.FAILED, {
                **action.details, "code": "ProviderGone",
                "description": f"The process running this action stopped and {action.provider!r} is no longer served.",
            }, now)
            return
        if provider.recovery == "rerun" and action.attempts < provider.max_attempts:
            claimed = self.store.update(
                action.action_id, where=where, runner=QUEUED_RUNNER if self._queued(provider) else self.runner_id,
                heartbeat=now, attempts=action.attempts + 1,
                log=(now, "ActionRecovered", f"The process running attempt {action.attempts} stopped; running again."),
            )
            if claimed is not None:  # never inline: this is the maintenance thread
                logger.warning("action %s: its process stopped during attempt %d; running it again",
                               action.action_id, action.attempts)
                if self.metrics:
                    metrics.recovered(provider.name, "rerun")
                self._dispatch(provider, claimed, resumed=False, inline=False)
            return
        details = {
            **action.details,  # what it reported before its process died, as at a deadline
            "code": "WorkerLost",
            "description": f"The process running this action stopped unexpectedly (attempt {action.attempts}).",
        }
        if self._finish(action, where, Status.FAILED, details, now) is not None:
            logger.warning("action %s: its process stopped during attempt %d; failed", action.action_id,
                           action.attempts)
            if self.metrics:
                metrics.recovered(provider.name, "failed")

    # --- running callbacks --------------------------------------------------------------------------------

    def _dispatch(
        self,
        provider: "ActionProvider",
        action: Action,
        *,
        resumed: bool,
        identity: "Identity | None" = None,
        inline: bool | None = None,
    ) -> RunContext:
        """Run the callback: inline for a synchronous provider's request, otherwise on the executor."""
        ctx = RunContext(self, provider, action, resumed, identity)
        if action.runner == QUEUED_RUNNER:  # a queue worker runs it (see _enqueue)
            self._enqueue(action, resumed=resumed, identity=identity, quiet=True)
            return ctx
        self._running[action.action_id] = ctx
        if provider.synchronous if inline is None else inline:
            ctx._started = True
            self._execute(provider, action, ctx)
            return ctx
        ctx._submitted = time.monotonic()
        if self.metrics:
            metrics.callback_queued(provider.name)
        task = functools.partial(self._start_queued, provider, action, ctx)
        if self._fair:
            self.executor.submit(task, identity=action.creator_id, provider=provider.name)
        else:
            self.executor.submit(task)
        return ctx

    # --- callbacks on queue workers (APTK_EXECUTOR=rq) ----------------------------------------------------------

    def _queued(self, provider: "ActionProvider") -> bool:
        """True if ``provider``'s callbacks go to the queue (a synchronous provider's run inline, in the request)."""
        return self._remote and not provider.synchronous

    def _run_queued(self, provider: "ActionProvider", stored: Action, identity: "Identity") -> Action:
        """Enqueue a new action's job; if Redis cannot take it, the action is deleted again and the caller gets a
        503 (a retry with the same ``request_id`` starts afresh, or finds the action if even the delete failed:
        then the sweep enqueues it once Redis is back)."""
        try:
            self._enqueue(stored, resumed=False, identity=identity)
        except QueueUnavailable:
            self.store.delete(stored.action_id,
                              where={"status": Status.ACTIVE, "runner": QUEUED_RUNNER, "attempts": stored.attempts})
            raise ServiceUnavailable("The job queue is unavailable; nothing was stored. Try again shortly.",
                                     retry_after=REDIS_RETRY_AFTER) from None
        if provider.answer_within > 0:
            give_up = time.monotonic() + provider.answer_within
            while time.monotonic() < give_up:
                time.sleep(0.02)
                fresh = self.store.get(stored.action_id)
                if fresh is None or fresh.status is not Status.ACTIVE:
                    break
            return self._current(provider, stored, expired_ok=True)
        return stored

    def _enqueue(self, action: Action, *, resumed: bool, identity: "Identity | None" = None,
                 quiet: bool = False) -> None:
        """Put ``action``'s job on the queue; with ``quiet``, a Redis outage is logged and left to the sweep."""
        try:
            self.executor.enqueue(  # type: ignore[attr-defined]
                action.action_id, action.attempts, provider=action.provider, identity=action.creator_id,
                resumed=resumed, token=identity.token if identity is not None else None)
        except QueueUnavailable as exc:
            if not quiet:
                raise
            logger.warning("could not enqueue action %s (%s); it is enqueued again once the queue is back",
                           action.action_id, exc)

    def _requeue(self, queued: list[Action], now: float) -> None:
        """Queued actions nobody has vouched for within the lease: keep those whose job Redis still holds, and
        enqueue again those whose job is gone (Redis lost it, or was down when it was put). A process without a
        queue runs them itself."""
        if not self._remote:
            for action in queued:
                provider = self.providers[action.provider]
                claimed = self.store.update(
                    action.action_id, where={"status": Status.ACTIVE, "runner": QUEUED_RUNNER,
                                             "attempts": action.attempts},
                    runner=self.runner_id, heartbeat=now)
                if claimed is not None:
                    self._dispatch(provider, claimed, resumed=False, inline=False)
            return
        try:
            live = self.executor.waiting([(a.action_id, a.attempts) for a in queued])  # type: ignore[attr-defined]
        except Exception as exc:
            logger.warning("the job queue is unavailable (%s); %d queued actions wait for it", exc, len(queued))
            return
        self.store.heartbeat(QUEUED_RUNNER, now, [a.action_id for a in queued if (a.action_id, a.attempts) in live])
        for action in queued:
            if (action.action_id, action.attempts) in live:
                continue
            where = {"status": Status.ACTIVE, "runner": QUEUED_RUNNER, "attempts": action.attempts}
            if self.store.update(action.action_id, where=where, heartbeat=now) is not None:
                logger.info("action %s: its job was lost; enqueued again", action.action_id)
                self._enqueue(action, resumed=False, quiet=True)

    def perform_queued(self, action_id: str, attempt: int, *, resumed: bool, token: str | None) -> str:
        """Run a queued action's callback here (a queue worker's job): claim it from the queue (a compare-and-set
        on its attempt), run it, record the outcome. A job whose action is no longer queued does nothing."""
        self.start()
        # The claim is the first look at the action: one write, no read before it (it answers the action).
        now = self.clock()
        claimed = self.store.update(action_id, where={"status": Status.ACTIVE, "runner": QUEUED_RUNNER,
                                                      "attempts": attempt}, runner=self.runner_id, heartbeat=now)
        if claimed is None:
            return "stale"
        provider = self.providers.get(claimed.provider)
        if provider is None:
            details = {**claimed.details, "code": "ProviderUnavailable",
                       "description": f"No worker serves provider {claimed.provider!r}."}
            self._finish(claimed, {"status": Status.ACTIVE, "runner": self.runner_id, "attempts": attempt},
                         Status.FAILED, details, now)
            return "unknown provider"
        identity = Identity(id=claimed.creator_id, principals=frozenset(claimed.principals), scopes=frozenset(),
                            token=token)
        ctx = RunContext(self, provider, claimed, resumed, identity)
        self._running[action_id] = ctx
        ctx._started = True
        self._execute(provider, claimed, ctx)
        return "ran"

    def _start_queued(self, provider: "ActionProvider", action: Action, ctx: RunContext) -> None:
        """The executor's turn for this action came: run its callback unless it ended while it waited."""
        with ctx._queue_lock:
            ctx._started = True
            marked = ctx._marked
        if self.metrics:
            metrics.callback_dequeued(provider.name, time.monotonic() - (ctx._submitted or time.monotonic()))
        with logs.action_context(action.action_id):
            self._start_dequeued(provider, action, ctx, marked)

    def _start_dequeued(self, provider: "ActionProvider", action: Action, ctx: RunContext, marked: bool) -> None:
        run = not ctx.cancelled
        if run and marked:  # its status says Queued: clear that, which also checks it is still ours to run
            try:
                run = self.store.update(action.action_id, where=ctx._ownership(), display_status=None) is not None
            except Exception:  # no heartbeat from here on: recovery takes it up after the lease
                logger.exception("could not start action %s", action.action_id)
                run = False
        if run and not ctx.cancelled:
            self._execute(provider, action, ctx)
        else:
            if self._running.get(action.action_id) is ctx:
                del self._running[action.action_id]
            ctx._done.set()

    def _execute(self, provider: "ActionProvider", action: Action, ctx: RunContext) -> None:
        with logs.action_context(action.action_id):
            self._execute_here(provider, action, ctx)

    def _execute_here(self, provider: "ActionProvider", action: Action, ctx: RunContext) -> None:
        ownership = ctx._ownership()
        try:
            if self.metrics:
                metrics.callback_started(provider.name)
                started = time.monotonic()
                try:
                    status, details = self._outcome(provider, action, ctx)
                finally:
                    metrics.callback_ended(provider.name, time.monotonic() - started)
            else:
                status, details = self._outcome(provider, action, ctx)
            if status is not None:
                self._finish(action, ownership, status, details, self.clock())
        except Exception:
            # The final write failed (database down?): never leave the action looking alive. Stop
            # heartbeating it, so that recovery takes it up after the lease.
            logger.exception("could not record the outcome of action %s", action.action_id)
        finally:
            if self._running.get(action.action_id) is ctx:
                del self._running[action.action_id]
            ctx._done.set()

    def _outcome(
        self, provider: "ActionProvider", action: Action, ctx: RunContext
    ) -> tuple[Status | None, dict[str, Any]]:
        """Run the callback; the state and details it ends in (None: the action already ended elsewhere)."""
        try:
            callback = provider.run_callback
            if callback is None:
                raise ConfigurationError(f"{provider!r} has no run callback")
            result = callback(provider.load_body(action.body), ctx)
            if ctx._handed_over or (ctx.cancelled and not self.stopping):
                # Handed over, or ended elsewhere (cancelled, released, past its deadline) while it ran: what the
                # callback returns changes nothing, and the finish hook is not shown an ending that never happens.
                return None, {}
            return Status.SUCCEEDED, _json_object({} if result is None else result)
        except ActionCancelled:
            if ctx.cancelled:
                return None, {}
            return Status.FAILED, {"code": "ActionCancelled", "description": "The provider stopped the action."}
        except (ActionInactive, ActionFailed) as exc:
            status = Status.INACTIVE if isinstance(exc, ActionInactive) else Status.FAILED
            try:
                return status, _json_object(exc.details())
            except (TypeError, ValueError):
                logger.exception("details of %s for action %s are not JSON", exc.code, action.action_id)
                return status, {"code": exc.code, "description": exc.description}
        except Exception:
            logger.exception("run callback of %s failed for action %s", provider.name, action.action_id)
            return Status.FAILED, {
                "code": "ActionError",
                "description": f"The provider failed unexpectedly; its log has the details (action {action.action_id}).",
            }

    def _finish(
        self, action: Action, where: dict[str, Any], status: Status, details: dict[str, Any], now: float,
        identity: "Identity | None" = None,
    ) -> Action | None:
        """End (or pause) ``action`` with a compare-and-set on ``where``; None if it no longer matched.

        An action that completes goes through its provider's finish hook first, which may give its final details.
        """
        action_id = action.action_id
        changes: dict[str, Any] = {"status": status, "runner": None, "display_status": None}
        if status in COMPLETED_STATES:
            changes["completion_time"] = now
            details = self._finished_details(action, status, details, now, identity)
        changes["details"] = details
        description = f"Action {status.value}"
        if "code" in details:
            description += f": {details['code']}"
        updated = self.store.update(action_id, where=where, log=(now, f"Action{status.value.title()}", description),
                                    **changes)
        if updated is not None and self.metrics:
            if status in COMPLETED_STATES:
                metrics.action_completed(action.provider, status.value, now - (updated.start_time or now))
            else:
                metrics.action_entered(action.provider, status.value)
        ctx = self._running.get(action_id)
        if updated is not None and ctx is not None and status is not Status.SUCCEEDED:
            self._ended(action_id, ctx)
        if updated is not None:
            self._changed(action_id)
        return updated

    def _finished_details(
        self, action: Action, status: Status, details: dict[str, Any], now: float, identity: "Identity | None"
    ) -> dict[str, Any]:
        """The details a completing action is stored with: its provider's finish hook's, if it gives any."""
        try:
            provider = self.provider_named(action.provider)
        except Exception:
            logger.exception("could not look up the provider of action %s", action.action_id)
            return details
        if provider is None or provider.finish_callback is None:
            return details
        ending = dataclasses.replace(action, status=status, details=dict(details), completion_time=now, runner=None,
                                     display_status=None)
        if identity is None:  # no caller: the action's creator, as stored, without a token
            identity = Identity(id=action.creator_id, principals=frozenset(action.principals), scopes=frozenset())
        try:
            final = provider.finish_callback(ending, self.hook_context(identity))
            return details if final is None else _json_object(final)
        except Exception:
            logger.exception("finish hook of %s failed for action %s", provider.name, action.action_id)
            return details

    def end(self, action_id: str, status: Status, details: dict[str, Any]) -> Action | None:
        """End (SUCCEEDED or FAILED) an action its callback handed over (:meth:`RunContext.hand_over`).

        As a callback's outcome would: completion time, the finish hook, the log. None if the action is no longer
        ACTIVE in the provider's hands (cancelled, past its deadline, released).
        """
        if status not in COMPLETED_STATES:
            raise ValueError(f"end() completes an action: SUCCEEDED or FAILED, not {status}")
        return self._settle_handed_over(action_id, status, details)

    def pause(self, action_id: str, details: dict[str, Any]) -> Action | None:
        """Pause (INACTIVE) an action its callback handed over, until someone calls ``/resume``.

        ``details`` should say why, with a ``code`` and a ``description`` (and ``required_scope`` or
        ``resolution_url`` where they help), as an :class:`~toolkit.ActionInactive` would; a resume drops those
        and runs the callback again (``ctx.resumed``). None if the action is no longer ACTIVE in the provider's
        hands (cancelled, past its deadline, released).
        """
        return self._settle_handed_over(action_id, Status.INACTIVE, details)

    def _settle_handed_over(self, action_id: str, status: Status, details: dict[str, Any]) -> Action | None:
        """Move a handed-over action (ACTIVE, no runner) to ``status``, compare-and-set on its attempt."""
        action = self.store.get(action_id)
        if action is None:
            return None
        where = {"status": Status.ACTIVE, "runner": None, "attempts": action.attempts}
        return self._finish(action, where, status, _json_object(details), self.clock())

    def hook_context(self, identity: "Identity") -> HookContext:
        """The context a check, cancel or resume hook gets for a request by ``identity``."""
        return HookContext(identity=identity, config=self.config, store=self.store, clock=self.clock, runtime=self)

    # --- the API operations ------------------------------------------------------------------------------------

    def run(self, provider: "ActionProvider", identity: "Identity", document: Any) -> tuple[Action, bool]:
        """Create (or find, for a repeated ``request_id``) an action; True if it is new.

        A request that repeats one of the caller's earlier requests (same ``request_id``, same document) gets
        that action back before anything else is checked: a retry must find its action even after the
        ``deadline`` passed or the provider's check hook would now refuse the request.
        """
        require_runnable(provider, identity)
        # Where something may refuse a retry that once passed (a check hook, a deadline), look for the earlier
        # action first, so that the hook never sees a retry. Otherwise only validation could refuse it (after a
        # schema change): then look when it does; a valid retry meets its action at the insert. So the common
        # run costs no extra read.
        look_first = provider.check_callback is not None or (isinstance(document, dict) and "deadline" in document)
        if look_first:
            earlier = self._earlier(provider, identity, document)
            if earlier is not None:
                return earlier, False
        try:
            request, deadline, now = self._validated(provider, identity, document)
        except ApiError:
            earlier = None if look_first else self._earlier(provider, identity, document)
            if earlier is not None:
                return earlier, False
            raise
        self.start()
        action = Action(
            action_id=new_action_id(),
            provider=provider.name,
            request_id=request["request_id"],
            request_hash=request_hash(document, self.request_key),
            creator_id=identity.id,
            status=Status.ACTIVE,
            body=request["body"],
            label=request.get("label"),
            monitor_by=request.get("monitor_by", []),
            manage_by=request.get("manage_by", []),
            start_time=now,
            release_after=request.get("release_after", provider.default_release_after_seconds),
            deadline=deadline,
            attempts=1,
            runner=QUEUED_RUNNER if self._queued(provider) else self.runner_id,
            heartbeat=now,
            principals=sorted(identity.principals),
        )
        stored, created = self.store.create(action, log=(now, "ActionStarted", "Action started"), now=now)
        if not created:
            if not same_request(stored.request_hash, document, self.request_key):
                raise ActionConflict(
                    f"request_id {action.request_id!r} was already used with a different request "
                    f"(action {stored.action_id})."
                )
            return self._current(provider, stored), False
        if self.metrics:
            metrics.action_entered(provider.name, Status.ACTIVE.value)
        if self._queued(provider):
            return self._run_queued(provider, stored, identity), True
        ctx = self._dispatch(provider, stored, resumed=False, identity=identity)
        # An asynchronous action is ACTIVE as stored, unless its callback finished within answer_within; a
        # synchronous one has finished: read those again.
        finished = provider.synchronous or (provider.answer_within > 0 and ctx._done.wait(provider.answer_within))
        return (self._current(provider, stored, expired_ok=True) if finished else stored), True

    def _validated(
        self, provider: "ActionProvider", identity: "Identity", document: Any
    ) -> tuple[dict[str, Any], float, float]:
        """The loaded request, its deadline (epoch seconds) and now; ApiError for what is refused."""
        if not isinstance(document, dict):
            raise BadActionRequest("The request body must be a JSON object (an ActionRequest).")
        try:
            request = load_action_request(document)
        except ValidationError as exc:
            raise BadActionRequest(describe_validation_error(exc)) from None
        body = provider.validate_body(request["body"])
        if provider.check_callback is not None:
            provider.check_callback(body, self.hook_context(identity))
        now = self.clock()
        deadline = request.get("deadline")
        if deadline is None:
            return request, now + provider.maximum_deadline_seconds, now  # nothing runs, or waits, forever
        deadline = deadline.timestamp()
        if deadline <= now:
            raise BadActionRequest("deadline: is in the past.")
        if deadline > now + provider.maximum_deadline_seconds:
            raise BadActionRequest(
                f"deadline: is beyond this provider's maximum_deadline ({provider.maximum_deadline})."
            )
        return request, deadline, now

    def _earlier(self, provider: "ActionProvider", identity: "Identity", document: Any) -> Action | None:
        """The caller's existing action for this request; ActionConflict if the request_id had another request."""
        request_id = document.get("request_id") if isinstance(document, dict) else None
        if not isinstance(request_id, str) or not 0 < len(request_id) <= 256 or "\x00" in request_id:
            return None  # validation says what is wrong with it
        stored = self.store.find_request(provider.name, identity.id, request_id)
        if stored is None or (stored.expires_at is not None and stored.expires_at <= self.clock()):
            return None  # an expired action's request_id is free again
        if not same_request(stored.request_hash, document, self.request_key):
            raise ActionConflict(
                f"request_id {request_id!r} was already used with a different request (action {stored.action_id})."
            )
        try:
            return self._current(provider, stored)
        except ActionNotFound:
            return None  # released or expired just now: the request_id is free again

    def _current(self, provider: "ActionProvider", action: Action, *, expired_ok: bool = False) -> Action:
        """The action as it is now, deadlines applied; 404 if released or expired."""
        fresh = self.store.get(action.action_id)
        if fresh is None or fresh.provider != provider.name:
            raise ActionNotFound(f"No action {action.action_id} (it may have been released).")
        now = self.clock()
        if fresh.expires_at is not None and fresh.expires_at <= now and not expired_ok:
            raise ActionNotFound(f"No action {action.action_id}: it expired and was released.")
        if fresh.status in ACTIVE_STATES and fresh.deadline is not None and fresh.deadline <= now:
            return self._expire_deadline(fresh, now) or self._current(provider, fresh)
        return fresh

    def _load(self, provider: "ActionProvider", action_id: str) -> Action:
        if not _ACTION_ID.fullmatch(action_id):
            raise ActionNotFound(f"No action {action_id[:64]!r}.")
        stub = Action(action_id, provider.name, "", "", "", Status.ACTIVE, {})
        return self._current(provider, stub)

    def status(self, provider: "ActionProvider", identity: "Identity", action_id: str) -> Action:
        action = self._load(provider, action_id)
        require_monitor(provider, action, identity)
        return action

    def cancel(self, provider: "ActionProvider", identity: "Identity", action_id: str) -> Action:
        action = self._load(provider, action_id)
        require_manage(provider, action, identity)
        if action.status in COMPLETED_STATES:
            raise ActionConflict(f"Action {action_id} already {action.status.value}; it cannot be cancelled.")
        details = {**action.details, "code": "ActionCancelled",
                   "description": "The action was cancelled at the caller's request."}
        updated = self._finish(action, {"status": ACTIVE_STATES}, Status.FAILED, details, self.clock(), identity)
        if updated is None:
            current = self._load(provider, action_id)
            raise ActionConflict(f"Action {action_id} already {current.status.value}; it cannot be cancelled.")
        if provider.cancel_callback is not None:
            try:
                provider.cancel_callback(updated, self.hook_context(identity))
            except Exception:
                logger.exception("cancel hook of %s failed for action %s", provider.name, action_id)
            else:  # the hook may have changed the details (what it cancelled in turn): answer with them
                updated = self.store.get(action_id) or updated
        return updated

    def release(self, provider: "ActionProvider", identity: "Identity", action_id: str) -> Action:
        action = self._load(provider, action_id)
        require_manage(provider, action, identity)
        if action.status not in COMPLETED_STATES:
            raise ActionConflict(
                f"Action {action_id} is {action.status.value}; only a SUCCEEDED or FAILED action can be released "
                "(cancel it first)."
            )
        if not self.store.delete(action_id, where={"status": COMPLETED_STATES}):
            raise ActionNotFound(f"No action {action_id} (it may have been released).")
        self._changed(action_id)
        return action

    def resume(self, provider: "ActionProvider", identity: "Identity", action_id: str) -> Action:
        action = self._load(provider, action_id)
        require_manage(provider, action, identity)
        if action.status is Status.ACTIVE:
            return action
        if action.status in COMPLETED_STATES:
            raise ActionConflict(f"Action {action_id} already {action.status.value}; it cannot be resumed.")
        if provider.resume_callback is not None:
            provider.resume_callback(action, self.hook_context(identity))
        self.start()
        now = self.clock()
        # The pause's reason no longer holds; whatever else the action reported stays until the callback
        # reports progress. The callback sees exactly these details in ctx.details.
        details = {k: v for k, v in action.details.items() if k not in PAUSE_DETAILS}
        resumed = self.store.update(
            action_id,
            where={"status": Status.INACTIVE, "attempts": action.attempts},
            status=Status.ACTIVE,
            runner=QUEUED_RUNNER if self._queued(provider) else self.runner_id,
            heartbeat=now,
            attempts=action.attempts + 1,
            details=details,
            display_status=None,
            log=(now, "ActionResumed", "Action resumed"),
        )
        if resumed is None:
            return self._load(provider, action_id)  # someone else resumed or ended it meanwhile
        self._changed(action_id)
        if self.metrics:
            metrics.action_entered(provider.name, Status.ACTIVE.value)
        self._dispatch(provider, resumed, resumed=True, identity=identity)
        return self._current(provider, resumed)

    def log(
        self, provider: "ActionProvider", identity: "Identity", action_id: str, after: int, limit: int
    ) -> tuple[list[LogEntry], bool]:
        action = self._load(provider, action_id)
        require_monitor(provider, action, identity)
        entries = self.store.log_page(action_id, after, limit + 1)
        return entries[:limit], len(entries) > limit

    def enumerate(
        self, provider: "ActionProvider", identity: "Identity", statuses: Iterable[Status], roles: Iterable[str],
        *, after: tuple[float, str] | None = None, limit: int = 100,
    ) -> tuple[list[Action], bool]:
        """One page of the caller's actions in (start_time, action_id) order, after ``after``; True if more."""
        actions = self.store.enumerate(provider.name, identity.principals, roles, statuses, self.clock(),
                                       after=after, limit=limit + 1)
        return actions[:limit], len(actions) > limit

