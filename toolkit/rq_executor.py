"""Callbacks on RQ workers over Redis (``APTK_EXECUTOR=rq``), for deployments that outgrow one machine.

``/run`` stores the action as *queued* (its runner is :data:`QUEUED_RUNNER`: no process owns it yet) and enqueues
one RQ job that names the action and its attempt. An ``aptk worker`` (:func:`work`) dequeues the job, claims the
action with a compare-and-set (queued, same attempt -> its own runner id) and runs the callback with the same
:class:`~toolkit.lifecycle.RunContext` as the in-process executor. From then on the worker's maintenance thread
heartbeats the action and polls the store for its end, so a cancel through any API process reaches the callback
within ``tick`` (half a second); a worker killed with -9 stops heartbeating and the action is taken up again or
failed (``recovery=``) by whichever process sweeps first, exactly as with the in-process executor. A job whose
action was claimed, cancelled or taken up meanwhile finds the compare-and-set false and does nothing, so a job
delivered twice never runs a callback twice.

Jobs wait in one RQ queue per (provider, caller) (``<base>:<provider>:<digest of the caller>``); every worker
learns the queues from a sorted set in Redis and takes them in turn (RQ's round-robin dequeue strategy), so one
caller's thousand jobs do not keep anyone else's from starting.

The caller's token (for :meth:`RunContext.dependent_tokens`) travels in the job sealed with Fernet under a key
derived from the request key (``APTK_REQUEST_KEY``, which every host of a deployment shares; or the data
directory's key where the API processes and workers share one data directory). Redis never holds it in clear;
without a key no token is sent, and a callback that asks for dependent tokens sends its action INACTIVE asking
for a resume, as after a crash.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import logging
import signal
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, Callable

from .errors import ConfigurationError

if TYPE_CHECKING:
    from redis import Redis

    from .lifecycle import Runtime

logger = logging.getLogger("toolkit.rq")

QUEUED_RUNNER = "queue"
"""The runner of an action whose job waits in the queue (no process owns it yet)."""
DEFAULT_QUEUE = "aptk"
PERFORM = "toolkit.rq_executor.perform"
"""The function of every job the toolkit puts on its queues."""
QUEUE_INDEX = "aptk:queues:{}"
"""Sorted set of a base queue's sub-queues, scored by when a job was last put on each."""
QUEUE_MEMORY_SECONDS = 7 * 86400
"""A sub-queue nobody has put a job on for this long is forgotten once it is empty (see INDEX_SCRIPT)."""
REDIS_RETRY_AFTER = 5
RECONNECT_SECONDS = 1.0
RESULT_SECONDS = 10
"""A finished job's hash and result stay this long in Redis (then expire): cheaper for RQ than deleting them."""
HEARTBEAT_SECONDS = 5.0
"""A worker's own heartbeat outside jobs is sent at most this often (RQ keeps its key for worker_ttl + 60 s)."""
SEALED_TOKENS = 256
"""Tokens whose sealed form an API process (and whose clear form a worker) keeps at hand."""
QUEUE_REFRESH_SECONDS = 1.0
"""A busy worker looks up its sub-queues, and whether `rq suspend` was given, at most this often."""


REDIS_SCRIPT = """
local i = 2
while i <= #ARGV do
  local count = tonumber(ARGV[i])
  redis.call(unpack(ARGV, i + 1, i + count))
  i = i + count + 1
end
for _, key in ipairs(KEYS) do
  local id = redis.call('LPOP', key)
  if id then
    return {key, id, redis.call('HGETALL', ARGV[1] .. id)}
  end
end
return false
"""
"""One call for what would be a pipeline, and then possibly a dequeue. ARGV: the prefix of RQ's job keys, then
commands as [count, command, arguments...]..., run first; KEYS: queues, of which the first job waiting is popped
and returned with its hash (as RQ's dequeue: LPOP, then HGETALL). One command for the client to pack and one reply
to read instead of one per command (redis-py's share of a job's cost is per command); and Redis runs a script
whole, as a transaction."""


INDEX_SCRIPT = """
local stale = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1], 'LIMIT', 0, 1000)
for _, name in ipairs(stale) do
  if redis.call('LLEN', ARGV[3] .. name) == 0 then
    redis.call('ZREM', KEYS[1], name)
  else
    redis.call('ZADD', KEYS[1], ARGV[2], name)
  end
end
return redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[1], '+inf')
"""
"""A base queue's sub-queues to listen on (KEYS: its index; ARGV: the horizon, now, RQ's queue key prefix). On the
way, sub-queues nobody has put a job on since the horizon are forgotten if empty (the index does not grow with
every caller ever seen), and listened on again if they still hold jobs (none waits forever behind a backlog older
than the horizon). At most 1,000 such per call, so that Redis is never held for long."""


def _batch(pipe: Any) -> list[Any]:
    """The commands queued on ``pipe`` (which is not executed but reset), as REDIS_SCRIPT's ARGV takes them."""
    args: list[Any] = []
    for command, _options in pipe.command_stack:
        args.append(len(command))
        args.extend(command)
    pipe.reset()
    return args


def _script(connection: "Redis", source: str) -> Any:
    """``source`` registered with ``connection`` (once per connection, which keeps it)."""
    scripts: dict[str, Any] | None = getattr(connection, "_aptk_scripts", None)
    if scripts is None:
        scripts = connection._aptk_scripts = {}  # type: ignore[attr-defined]
    script = scripts.get(source)
    if script is None:
        script = scripts[source] = connection.register_script(source)
    return script


def _run_script(connection: "Redis", commands: list[Any], queues: list[str] | None = None) -> Any:
    from rq.job import Job

    return _script(connection, REDIS_SCRIPT)(keys=queues or [], args=[Job.redis_job_namespace_prefix, *commands])


class QueueUnavailable(Exception):
    """Redis could not take the job."""


def _redis_errors() -> tuple[type[BaseException], ...]:
    import redis

    return (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, redis.exceptions.BusyLoadingError,
            redis.exceptions.ReadOnlyError)


def queue_name(base: str, provider: str, identity: str) -> str:
    """The sub-queue of ``base`` for ``identity``'s jobs of ``provider``."""
    digest = hashlib.sha256(identity.encode()).hexdigest()[:16]
    return f"{base}:{provider}:{digest}"


def job_id(action_id: str, attempt: int) -> str:
    return f"aptk-{action_id}-{attempt}"


def _fernet(key: bytes | None) -> Any:
    if key is None:
        return None
    from cryptography.fernet import Fernet

    derived = hashlib.sha256(b"aptk queued-token key\x00" + key).digest()
    return Fernet(base64.urlsafe_b64encode(derived))


class RQExecutor:
    """Puts callbacks on RQ queues instead of running them; ``aptk worker`` runs them.

    ``connection`` is a ``redis.Redis``; ``key`` (bytes, or a callable giving them when first needed) seals
    tokens in jobs (None: no token is sent).
    """

    remote = True

    def __init__(self, connection: "Redis", *, queue: str = DEFAULT_QUEUE,
                 key: "bytes | Callable[[], bytes | None] | None" = None) -> None:
        self.connection = connection
        self.queue = queue
        self._key = key
        self._queues: dict[str, Any] = {}

    @functools.cached_property
    def _fernet(self) -> Any:
        return _fernet(self._key() if callable(self._key) else self._key)

    @classmethod
    def from_url(cls, url: str, *, queue: str = DEFAULT_QUEUE,
                 key: "bytes | Callable[[], bytes | None] | None" = None) -> "RQExecutor":
        try:
            import redis
        except ImportError:
            raise ConfigurationError("APTK_EXECUTOR=rq needs the rq extra: pip install "
                                     "'action-provider-toolkit[rq]'") from None
        connection = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=2, health_check_interval=10)
        return cls(connection, queue=queue, key=key)

    def _queue(self, name: str) -> Any:
        found = self._queues.get(name)
        if found is None:
            from rq import Queue

            found = self._queues[name] = Queue(name, connection=self.connection)
            # RQ's default serializer, which each job made here then takes at once (see the worker's).
            found.serializer = None  # type: ignore[assignment]
        return found

    # --- the Executor protocol (a remote executor takes actions, not callables) -------------------------------

    def submit(self, fn: Callable[[], None], *, identity: str = "", provider: str = "") -> None:
        fn()  # not used for queued actions (the runtime calls enqueue); a local task just runs here

    def shutdown(self, wait: bool = False) -> None:
        pass

    # --- jobs ---------------------------------------------------------------------------------------------

    def seal(self, token: str | None) -> str | None:
        if token is None or self._fernet is None:
            return None
        return self._sealed(token)

    def unseal(self, sealed: str | None) -> str | None:
        if sealed is None or self._fernet is None:
            return None
        return self._unsealed(sealed)

    # A caller's runs carry the same token until it is refreshed: it is sealed once (by each API process), and
    # opened once (by each worker), not once per job.

    @functools.cached_property
    def _sealed(self) -> Callable[[str], str]:
        @functools.lru_cache(maxsize=SEALED_TOKENS)
        def sealed(token: str) -> str:
            return str(self._fernet.encrypt(token.encode()).decode())

        return sealed

    @functools.cached_property
    def _unsealed(self) -> Callable[[str], str | None]:
        from cryptography.fernet import InvalidToken

        @functools.lru_cache(maxsize=SEALED_TOKENS)
        def unsealed(sealed: str) -> str | None:
            try:
                return str(self._fernet.decrypt(sealed.encode()).decode())
            except InvalidToken:
                logger.warning("a queued token cannot be unsealed (hosts with different APTK_REQUEST_KEY?)")
                return None

        return unsealed

    def enqueue(self, action_id: str, attempt: int, *, provider: str, identity: str, resumed: bool,
                token: str | None) -> None:
        """Put the job of ``action_id``'s attempt on its caller's queue; QueueUnavailable if Redis cannot."""
        name = queue_name(self.queue, provider, identity)
        try:
            # RQ's writes of the job (its hash, the queue's list and set) go to Redis as one script: all or none,
            # as a transaction would, in one command.
            pipe = self.connection.pipeline()
            self._queue(name).enqueue_call(
                PERFORM, args=(action_id, attempt, resumed, self.seal(token)),
                job_id=job_id(action_id, attempt), timeout=-1, result_ttl=RESULT_SECONDS, failure_ttl=86400,
                description=f"action {action_id} attempt {attempt}", pipeline=pipe,
            )
            pipe.zadd(QUEUE_INDEX.format(self.queue), {name: time.time()})
            _run_script(self.connection, _batch(pipe))
        except _redis_errors() as exc:
            raise QueueUnavailable(str(exc)) from exc

    def waiting(self, jobs: list[tuple[str, int]]) -> set[tuple[str, int]]:
        """Which of these (action, attempt) jobs still wait in Redis."""
        if not jobs:
            return set()
        pipe = self.connection.pipeline()
        for action_id, attempt in jobs:
            pipe.hmget(f"rq:job:{job_id(action_id, attempt)}", "status", "origin")
        found = pipe.execute()
        # Only asked about actions still queued after a lease: a job a worker has started claims its action
        # within moments, so a "started" one here belongs to a worker that died before it could. So does a
        # "queued" one that is in no queue: a worker took it off and died before it wrote that it started.
        live = {job for job, (status, _origin) in zip(jobs, found, strict=True) if status in (b"deferred", b"scheduled")}
        queued = [(job, origin) for job, (status, origin) in zip(jobs, found, strict=True)
                  if status == b"queued" and origin]
        for (action_id, attempt), origin in queued:
            pipe.lpos(f"rq:queue:{origin.decode()}", job_id(action_id, attempt))
        positions = pipe.execute() if queued else []
        live.update(job for (job, _origin), at in zip(queued, positions, strict=True) if at is not None)
        return live

    def depth(self, queues: list[str] | None = None) -> int:
        """Jobs waiting in every sub-queue of ``queues`` (base names; default this executor's)."""
        names: list[bytes] = []
        for base in queues or [self.queue]:
            names += self.connection.zrange(QUEUE_INDEX.format(base), 0, -1)  # type: ignore[arg-type]
        pipe = self.connection.pipeline()
        for name in names:
            pipe.llen(f"rq:queue:{name.decode()}")
        return sum(pipe.execute())


# --- the worker side ----------------------------------------------------------------------------------------

_runtime: "Runtime | None" = None


def perform(action_id: str, attempt: int, resumed: bool, sealed: str | None) -> str:
    """The job: run ``action_id``'s callback here if its ``attempt`` is still queued (see the module's doc)."""
    runtime = _runtime
    if runtime is None:
        raise RuntimeError("jobs of the action provider toolkit run under `aptk worker`")
    executor = runtime.executor
    token = executor.unseal(sealed) if isinstance(executor, RQExecutor) else None
    return runtime.perform_queued(action_id, attempt, resumed=resumed, token=token)


class _NoTimeout:
    """Jobs never time out in RQ: an action's deadline is the lifecycle's to enforce (and RQ's alarm signal
    cannot reach a worker running in a thread)."""

    def __init__(self, timeout: Any, exception: Any = None, **kwargs: Any) -> None:
        pass

    def __enter__(self) -> None:
        pass

    def __exit__(self, *exc: Any) -> None:
        pass


def _worker_class(threaded: bool = False) -> Any:
    from rq import Queue
    from rq.executions import Execution
    from rq.job import Job, JobStatus
    from rq.job_lifecycle import format_exc_info
    from rq.registry import StartedJobRegistry
    from rq.utils import now, utcformat
    from rq.worker import SimpleWorker, WorkerStatus

    class QueueJob(Job):
        @property
        def started_job_registry(self) -> StartedJobRegistry:
            # RQ makes this registry twice per job (its execution's start and end), checking the job's serializer
            # again each time (see the worker's); the default serializer is the job's here.
            return StartedJobRegistry(self.origin, connection=self.connection, job_class=self.__class__)

    class QueueWorker(SimpleWorker):
        """RQ's in-process worker, listening on every sub-queue of its base queues in turn."""

        job_class = QueueJob

        aptk_bases: list[str] = []
        aptk_stop: threading.Event = threading.Event()
        aptk_last_heartbeat = 0.0
        aptk_refreshed = 0.0
        aptk_suspension_checked = 0.0
        death_penalty_class = _NoTimeout  # type: ignore[assignment]

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.aptk_pending: list[Any] = []
            self.aptk_jobs = 0
            # RQ hands its worker's serializer to every queue, job and registry it makes (a few per job), and each
            # checks it again against a typing Protocol (~20 us on Python 3.11); None is RQ's default too, taken
            # at once.
            self.serializer = None  # type: ignore[assignment]

        def request_stop(self, signum: Any, frame: Any) -> None:
            # The signal handler stays bound to whichever worker installed it last, which may be one that a
            # Redis outage replaced: the stop is for the process, not for that one worker.
            self.aptk_stop.set()
            super().request_stop(signum, frame)

        def _install_signal_handlers(self) -> None:
            if not threaded:  # threads: the process's main thread stops them all
                super()._install_signal_handlers()

        def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
            # RQ sends a worker heartbeat (three commands, three round trips) before and after every dequeue and
            # after every job, to keep a key alive for minutes (worker_ttl). Within a job's own pipeline it costs
            # nothing and is kept; on its own it is sent at most every HEARTBEAT_SECONDS, in one round trip.
            if pipeline is not None or timeout is not None:
                super().heartbeat(timeout, pipeline=pipeline)
                return
            if time.monotonic() - self.aptk_last_heartbeat < HEARTBEAT_SECONDS:
                return
            with self.connection.pipeline(transaction=False) as pipe:
                super().heartbeat(None, pipeline=pipe)
                pipe.execute()
            self.aptk_last_heartbeat = time.monotonic()

        def set_state(self, state: str, pipeline: Any = None) -> None:
            # RQ writes the worker's state before every dequeue and after every job, nearly always unchanged; on
            # its own it is written only when it changes (only this worker writes it).
            if pipeline is None and state == self._state:
                return
            super().set_state(state, pipeline=pipeline)

        def execute_job(self, job: Any, queue: Any) -> None:
            self.aptk_jobs += 1  # (RQ counts finished jobs in Redis only)
            if job.func_name != PERFORM:  # a job someone else put on the queue: RQ's own way
                super().execute_job(job, queue)
                return
            # RQ's bookkeeping around a job, in two round trips instead of seven, and without what a toolkit job
            # never has: dependents (RQ WATCHes and reads them after every job), callbacks, retries, repeats, an
            # expiry to lift, a result anyone reads (the outcome is the action's, in the store). Kept: the execution
            # record, the started and finished registries, the job's status and the worker's state and counters,
            # so that `rq info`, RQ's clean-up of dead workers' jobs and the failed registry see toolkit jobs as
            # any other. RQ's own code writes them, on a pipeline that is not executed: its commands go to Redis
            # as one call of a script (REDIS_SCRIPT), so that the client packs one command and reads one reply
            # where it would nine or ten.
            with self.connection.pipeline(transaction=False) as pipe:
                execution = Execution.create(job, self.get_heartbeat_ttl(job), pipeline=pipe, worker_name=self.name)
                self.execution = execution
                self.set_state(WorkerStatus.BUSY, pipeline=pipe)
                job.prepare_for_execution(self.name, pipeline=pipe)
                if len(self.queues) == 1:  # RQ dequeues a single queue through its intermediate list
                    pipe.lrem(queue.intermediate_queue_key, 1, job.id)
                _run_script(self.connection, _batch(pipe))
            try:
                job.perform()
            except BaseException:  # as RQ's perform_job: the job is failed, the worker goes on
                exc_info = sys.exc_info()
                job.ended_at = now()
                self.handle_exception(job, *exc_info)
                self.handle_job_failure(job=job, queue=queue, started_job_registry=queue.started_job_registry,
                                        exc_string=format_exc_info(exc_info), execution=execution)
                self.set_state(WorkerStatus.IDLE)
                return
            job.ended_at = now()
            job._status = JobStatus.FINISHED
            with self.connection.pipeline(transaction=False) as pipe:
                self.increment_successful_job_count(pipeline=pipe)
                self.increment_total_working_time(job.ended_at - job.started_at, pipe)
                pipe.hset(job.key, mapping={"status": JobStatus.FINISHED.value, "ended_at": utcformat(job.ended_at)})
                queue.finished_job_registry.add(job, RESULT_SECONDS, pipeline=pipe)
                pipe.expire(job.key, RESULT_SECONDS)  # (RQ's cleanup also expires dependents' keys: none here)
                self.cleanup_execution(job, pipeline=pipe, execution=execution)
                self.set_state(WorkerStatus.IDLE, pipeline=pipe)
                # Sent with the next dequeue, which follows at once (see aptk_take), or when the worker stops.
                self.aptk_pending = _batch(pipe)

        def aptk_flush(self) -> None:
            """Send the last job's records if they wait for a dequeue that is not coming."""
            pending, self.aptk_pending = self.aptk_pending, []
            if pending:
                _run_script(self.connection, pending)

        def aptk_take(self) -> Any:
            """The last job's records and a dequeue in one call: the first job waiting on this worker's queues in
            their order, as (job, queue) (None: every queue is empty). Several queues only: RQ dequeues a single
            one through its intermediate list."""
            queues = {q.key: q for q in self._ordered_queues}
            if len(queues) < 2:
                self.aptk_flush()
                return None
            while True:
                pending, self.aptk_pending = self.aptk_pending, []
                reply = _run_script(self.connection, pending, list(queues))
                if not reply:
                    return None
                key, found, fields = (v.decode() if isinstance(v, bytes) else v for v in reply)
                if not fields:  # its hash is gone: RQ passes over such a job
                    continue
                queue = queues[key]
                job = self.job_class(found, connection=self.connection, serializer=self.serializer)
                try:
                    job.restore(dict(zip(fields[::2], fields[1::2], strict=True)))
                except Exception as exc:  # as RQ's dequeue: the job and queue go with the error
                    exc.job_id, exc.queue = found, queue  # type: ignore[attr-defined]
                    raise
                self.reorder_queues(reference_queue=queue)
                job.redis_server_version = self.get_redis_server_version()
                return job, queue

        def teardown(self) -> None:
            try:
                self.aptk_flush()
            except _redis_errors() as exc:
                logger.warning("worker %s: the last job's records were not written (%s)", self.name, exc)
            super().teardown()

        def check_for_suspension(self, burst: bool) -> None:
            # `rq suspend` is looked for at most every QUEUE_REFRESH_SECONDS, not before every job.
            if time.monotonic() - self.aptk_suspension_checked < QUEUE_REFRESH_SECONDS:
                return
            self.aptk_flush()  # (a suspended worker waits here)
            super().check_for_suspension(burst)
            self.aptk_suspension_checked = time.monotonic()

        def refresh_queues(self) -> None:
            # Once a job was found, the same queues are dequeued again for up to QUEUE_REFRESH_SECONDS; an idle
            # worker looks again at every wait (a second at most).
            if time.monotonic() - self.aptk_refreshed < QUEUE_REFRESH_SECONDS:
                return
            now = time.time()
            known = {q.name: q for q in self._ordered_queues}
            names: list[str] = []
            script = _script(self.connection, INDEX_SCRIPT)
            for base in self.aptk_bases:
                names.append(base)
                found: list[bytes] = script(keys=[QUEUE_INDEX.format(base)], args=[
                    now - QUEUE_MEMORY_SECONDS, now, Queue.redis_queue_namespace_prefix])
                names += [n.decode() for n in found]
            ordered = [q for q in self._ordered_queues if q.name in names]
            ordered += [Queue(n, connection=self.connection, serializer=self.serializer) for n in names
                        if n not in known]
            self._ordered_queues = ordered
            self.queues = list(ordered)
            self.aptk_refreshed = time.monotonic()

        def dequeue_job_and_maintain_ttl(self, timeout: int | None, max_idle_time: int | None = None) -> Any:
            idle_since = time.monotonic()
            while True:
                try:
                    self.refresh_queues()
                    taken = self.aptk_take()
                except _redis_errors() as exc:
                    logger.error("worker %s: Redis is unavailable (%s); retrying", self.name, exc)
                    time.sleep(RECONNECT_SECONDS)
                    continue
                if taken is not None:
                    return taken
                if timeout is None:  # burst: one pass over the queues without waiting
                    return super().dequeue_job_and_maintain_ttl(None, max_idle_time)
                # Wait a second at most, so that a queue created meanwhile is listened on soon.
                result = super().dequeue_job_and_maintain_ttl(1, 1)
                if result is not None or self._stop_requested:
                    return result
                self.aptk_refreshed = 0.0
                self.check_for_suspension(False)  # an idle worker stays in this loop: `rq suspend` is seen here
                if max_idle_time is not None and time.monotonic() - idle_since >= max_idle_time:
                    return None

    return QueueWorker


def work(runtime: "Runtime", *, queues: list[str], burst: bool = False, name: str | None = None,
         max_jobs: int | None = None, concurrency: int = 1) -> None:
    """Run RQ's worker on ``queues`` (base names) for ``runtime`` until stopped (or, ``burst``, until empty).

    ``concurrency`` RQ workers run as threads of this process (one callback each at a time), sharing its
    runtime: one maintenance thread and one database pool. Redis going away stops nothing: the workers wait and
    reconnect. SIGTERM or SIGINT stops them once their callbacks return.
    """
    global _runtime
    executor = runtime.executor
    if not isinstance(executor, RQExecutor):
        raise ConfigurationError("aptk worker needs APTK_EXECUTOR=rq and APTK_REDIS_URL")
    if concurrency < 1:
        raise ConfigurationError("the worker's concurrency must be at least 1")
    _runtime = runtime
    while True:  # the database may be away for a moment (restarting): wait for it rather than exit
        try:
            runtime.start()
            break
        except Exception as exc:
            logger.error("worker: cannot start (%s); retrying", str(exc).splitlines()[0] if str(exc) else exc)
            time.sleep(RECONNECT_SECONDS)
    stop = threading.Event()
    current: list[Any] = [None] * concurrency
    try:
        if concurrency == 1:
            _work_loop(executor, queues, burst, name, max_jobs, stop, current, 0, threaded=False)
            return

        def stop_all(_signum: int, _frame: Any) -> None:
            stop.set()
            for worker in current:
                if worker is not None:
                    worker._stop_requested = True

        previous = [signal.signal(signal.SIGTERM, stop_all), signal.signal(signal.SIGINT, stop_all)]
        threads = [threading.Thread(target=_work_loop, name=f"aptk-worker-{n}", daemon=True,
                                    args=(executor, queues, burst, name and f"{name}-{n}", max_jobs, stop, current,
                                          n), kwargs={"threaded": True})
                   for n in range(concurrency)]
        for thread in threads:
            thread.start()
        try:
            while any(t.is_alive() for t in threads):
                for thread in threads:
                    thread.join(0.2)
        finally:
            signal.signal(signal.SIGTERM, previous[0])
            signal.signal(signal.SIGINT, previous[1])
    finally:
        runtime.stop(grace=0.0)
        _runtime = None


def _work_loop(executor: RQExecutor, queues: list[str], burst: bool, name: str | None, max_jobs: int | None,
               stop: threading.Event, current: list[Any], slot: int, *, threaded: bool) -> None:
    from rq.worker import DequeueStrategy

    worker_class = _worker_class(threaded)
    worker_class.aptk_bases = list(queues)
    worker_class.aptk_stop = stop
    done = 0
    while not stop.is_set():
        worker = current[slot] = worker_class(queues, connection=executor.connection, name=name)
        try:
            worker.work(burst=burst, dequeue_strategy=DequeueStrategy.ROUND_ROBIN, logging_level="WARNING",
                        max_jobs=None if max_jobs is None else max_jobs - done)
        except _redis_errors() as exc:
            logger.error("worker: Redis is unavailable (%s); reconnecting", exc)
        done += worker.aptk_jobs
        if worker._stop_requested or stop.is_set() or (max_jobs is not None and done >= max_jobs):
            return
        if burst:
            try:
                executor.connection.ping()
                if not executor.depth(queues):
                    return
            except _redis_errors():
                pass
        time.sleep(RECONNECT_SECONDS)
