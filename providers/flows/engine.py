"""The flow engine: runs a deployed flow's definition as one action of its provider.

:func:`execute` is the run callback's work. It moves through the definition one state at a time and stores
where it is after every transition (:mod:`.engine_store`), so that a run taken up again after a crash, or
resumed after a pause, carries on where it was:

* an Action state's child is started with a ``request_id`` derived from (run, state, visit of that state), and
  its action id is stored before the engine waits on it; a run taken up again waits on that same child, or
  (if it died before storing the id) asks again with the same ``request_id`` and gets the same action back;
* a Wait state stores when it ends, so a long wait survives a restart;
* the definition the run started with is stored with its first record, and the run walks that copy to its
  end, whatever updates of the flow happen meanwhile (or before it is taken up again).

The log entries of a transition (a state entered, left) are committed in the transaction that stores the
record, so that a transition costs one write.

Errors are those of Globus Flows (``ActionUnableToRun``, ``ActionFailedException``, ``ActionTimeout``, and a
Fail state's own ``Error``); a ``Catch`` of the state may take the run on to another state, otherwise the run
ends FAILED with the error's name as ``code`` and its cause as ``description``.

:func:`cancel_children` and :func:`resume_children` are the provider's cancel and resume hooks' work.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import logging
from typing import TYPE_CHECKING, Any, Callable

from toolkit import ActionFailed, ActionInactive
from toolkit.auth import Identity
from toolkit.errors import ActionCancelled

from . import engine_store
from .engine_store import RunRecord, Superseded
from .language import (
    ACTION_FAILED,
    ACTION_TIMEOUT,
    ACTION_UNABLE_TO_RUN,
    RUNTIME,
    ActionState,
    ChoiceState,
    ExpressionEvalState,
    FailState,
    FlowError,
    PassState,
    SucceedState,
    WaitState,
    apply_result_path,
    catcher_for,
    choose,
    fail_output,
    private_view,
    public_document,
    state_input,
    wait_until,
)


if TYPE_CHECKING:
    from toolkit import HookContext, RunContext
    from toolkit.documents import Action

    from .deployments import DeployedFlow

logger = logging.getLogger("providers.flows.engine")

__all__ = ["execute", "cancel_children", "resume_children", "child_request_id", "FLOW_SUCCEEDED"]

FLOW_SUCCEEDED = "FlowSucceeded"
_COMPLETED = ("SUCCEEDED", "FAILED")
_RETRY_FIRST = 1.0
_RETRY_CAP = 30.0
_LOCAL_SLICE = 5.0
"""Longest single wait on a local child: a cancel or a deadline of the run is noticed within this."""
_REMOTE_SLICE = 300.0
_QUICK = 0.5
"""An action that ends within this many seconds is not shown as running in the run's status."""


def child_request_id(run_id: str, state: str, visit: int) -> str:
    """The ``request_id`` of the child an Action state starts on its ``visit``-th entry in run ``run_id``."""
    digest = hashlib.sha256(state.encode()).hexdigest()[:16]
    return f"flow-{run_id}-{digest}-{visit}"


def execute(flow: "DeployedFlow", body: dict[str, Any], ctx: "RunContext", *, origin: str | None = None) -> dict[str, Any]:
    """Run ``flow`` with input ``body`` as action ``ctx.action_id`` from where the run is; the SUCCEEDED details.

    ``origin`` is the origin (``scheme://host:port``) of the request that started the run: ActionUrls there are
    served in-process. Raises :class:`~toolkit.ActionFailed` (FAILED) or :class:`~toolkit.ActionInactive`.
    """
    return _Run(flow, body, ctx, origin).run()


def _identity(creator_id: str, principals: frozenset[str], caller: Identity | None) -> Identity:
    """The run's creator, who every child is started as; with the caller's token when the caller is the creator."""
    token = caller.token if caller is not None and caller.id == creator_id else None
    return Identity(id=creator_id, principals=principals, scopes=frozenset(caller.scopes) if token and caller else
                    frozenset(), token=token)


class _Run:
    """One run of a definition (a run callback's call)."""

    def __init__(self, flow: "DeployedFlow", body: dict[str, Any], ctx: "RunContext", origin: str | None) -> None:
        self.flow = flow
        self.ctx = ctx
        self.engine = ctx.store.engine
        self.identity = _identity(ctx.creator_id, ctx.principals, ctx.identity)
        self._calls: Any = None
        self._targets: dict[tuple[str, str | None], Any] = {}
        self._logs: list[tuple[float, str, dict[str, Any] | None]] = []
        """Log entries not written yet: they are committed with the next record."""
        record = engine_store.load(self.engine, ctx.action_id)
        self.fresh = record is None
        self.new_definition: tuple[str, int, dict[str, Any]] | None = None
        """(flow id, version, definition) to store with the run's next record (its first)."""
        if record is None:
            self.definition = flow.definition
            self.new_definition = (flow.id, flow.version, flow.source)
            record = RunRecord(ctx.action_id, self.definition.start_at, copy.deepcopy(body), origin=origin,
                               flow_version=flow.version)
        else:
            self.definition = _stored_definition(self.engine, ctx.action_id, flow)
        self.record = record
        # The address the run was started at decides which ActionUrls are in-process, for the whole run (a run
        # taken up after a crash has no request to ask).
        self.origin = self.record.origin or origin
        self.shown = False
        """True once the run's status shows the current state as running."""
        self.secrets: set[str] = set()
        """Values of the current state's ``__Private_Parameters``, never written to a cause."""
        if self.fresh:  # what $._context shows, fixed at the start: a run taken up again computes the same values
            self.record.context = {"run_id": ctx.action_id, "action_id": ctx.action_id, "flow_id": flow.id,
                                   "user_id": ctx.creator_id}
            username = getattr(ctx.identity, "username", None)
            if username and ctx.identity is not None and ctx.identity.id == ctx.creator_id:
                self.record.context["username"] = username
        self.context = self.record.context

    # --- the loop -------------------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        record = self.record
        try:
            if record.outcome is not None:  # ended before the toolkit could record it
                return self._ended()
            if self.fresh:
                self._log("Flow started", code="FlowStarted")
                self._store()
            while record.position is not None:
                self.ctx.check()
                state = self.definition.states.get(record.position)
                if state is None:  # the flow was updated under a run taken up again
                    if record.child is not None:
                        self._cancel_child(self.calls.target(record.child["url"], origin=self.origin),
                                           record.child["action_id"])
                    self._stop_at(record.position, FlowError(
                        f"The flow's definition changed while the run was at state {record.position!r}, which it "
                        "no longer has.", error=RUNTIME))
                    break
                self._step(state)
            return self._ended()
        except Superseded:
            raise ActionCancelled(self.ctx.action_id) from None
        except ActionInactive:
            if self._logs:  # paused before anything stored them (no credentials to start a child)
                self._store(publish=False)
            raise

    def _ended(self) -> dict[str, Any]:
        outcome = self.record.outcome or {}
        if outcome.get("status") == "FAILED":
            raise ActionFailed(outcome["code"], outcome["description"], **self._summary())
        return {"code": FLOW_SUCCEEDED, "description": "The Flow run reached a successful completion state",
                **self._summary()}

    def _summary(self) -> dict[str, Any]:
        return {"output": public_document(self.record.document), **self._states()}

    def _states(self) -> dict[str, Any]:
        """The states entered so far, and the version of the flow the run walks."""
        shown: dict[str, Any] = {"states": self.record.states}
        if self.record.flow_version is not None:
            shown["flow_version"] = self.record.flow_version
        return shown

    def _step(self, state: Any) -> None:
        name = self.record.position
        assert name is not None
        self.shown = False
        if not self.record.entered:
            self._enter(name, state)
        try:
            if isinstance(state, ActionState):
                self._action(name, state)
            elif isinstance(state, (PassState, ExpressionEvalState)):
                self._pass(name, state)
            elif isinstance(state, ChoiceState):
                self._leave(name, choose(state, self.record.document, context=self.context))
            elif isinstance(state, WaitState):
                self._wait(name, state)
            elif isinstance(state, FailState):
                self._fail(name, state)
            elif isinstance(state, SucceedState):
                self._leave(name, None)
            else:  # pragma: no cover - validate() admits no other type
                raise FlowError(f"State {name!r} has a type this engine does not run.", error=RUNTIME)
        except FlowError as error:
            self._caught(name, state, error)

    def _enter(self, name: str, state: Any) -> None:
        record = self.record
        record.visits[name] = record.visits.get(name, 0) + 1
        record.entered = True
        record.states.append({"name": name, "type": _type(state), "status": "ACTIVE", "started": self.ctx.clock()})
        # Not stored yet: entering again after a crash counts the same visit (the child's request_id stays).
        self._log(f"{name} entered", code=f"{_type(state)}Started", state_name=name, state_type=_type(state))

    def _leave(self, name: str, next_state: str | None, *, status: str = "SUCCEEDED",
               document: dict[str, Any] | None = None) -> None:
        """Move on from ``name`` to ``next_state`` (None: the run succeeded) and store the run."""
        record = self.record
        entry = record.states[-1]
        entry.update(status=status, ended=self.ctx.clock())
        child = entry.get("child_action_id")
        if document is not None:
            record.document = document
        record.position = next_state
        record.entered = False
        record.child = None
        record.wake_at = None
        if next_state is None:
            record.outcome = {"status": "SUCCEEDED"}
        extra = {"child_action_id": child} if child else {}
        self._log(f"{name} left", code=f"{entry['type']}Completed", state_name=name, state_type=entry["type"],
                  next_state=next_state, **extra)
        if next_state is None:
            self._log("Flow succeeded", code=FLOW_SUCCEEDED)
        # The status shows a state that took time as it ran: say it ended. A quick one shows with the next that
        # takes time, or in the run's final details.
        self._store(publish=self.shown)

    def _caught(self, name: str, state: Any, error: FlowError) -> None:
        for secret in sorted(self.secrets, key=len, reverse=True):  # a cause may quote what the child was sent
            error.cause = error.cause.replace(secret, "***")
        catcher = catcher_for(state, error.error) if isinstance(state, ActionState) else None
        if catcher is None:
            self._stop_at(name, error)
            return
        try:
            document = apply_result_path(self.record.document, catcher.result_path, error.to_dict())
        except FlowError as failed:  # the catcher's ResultPath does not fit: the run fails with that
            self._stop_at(name, failed)
            return
        self._log(f"{name} caught {error.error}", code="ErrorCaught", state_name=name, error=error.error)
        self._leave(name, catcher.next, status="FAILED", document=document)

    # --- the kinds of state -------------------------------------------------------------------------------

    def _pass(self, name: str, state: Any) -> None:
        document = self.record.document
        result = state_input(state, document, context=self.context)
        self._leave(name, _next(state), document=apply_result_path(document, state.result_path, result))

    def _fail(self, name: str, state: Any) -> None:
        output = fail_output(state, self.record.document)
        error = output.get("Error") or "FlowFailed"
        self._stop_at(name, FlowError(output.get("Cause") or f"The run reached the Fail state {name!r}.", error=error))

    def _stop_at(self, name: str, error: FlowError) -> None:
        """End the run FAILED at state ``name`` with ``error``'s name and cause."""
        record = self.record
        if record.states and record.states[-1]["name"] == name and "ended" not in record.states[-1]:
            record.states[-1].update(status="FAILED", ended=self.ctx.clock())
            child = record.states[-1].get("child_action_id")
        else:
            child = None
        record.position = None
        record.entered = False
        record.child = None
        record.wake_at = None
        record.outcome = {"status": "FAILED", "code": error.error, "description": error.cause}
        self._log(f"{name} left: the run fails with {error.error}", code="FlowFailed", state_name=name,
                  error=error.error, child_action_id=child)
        self._store(publish=False)  # the failure's details show the states

    def _wait(self, name: str, state: Any) -> None:
        record = self.record
        if record.wake_at is None:
            record.wake_at = float(wait_until(state, record.document, self.ctx.clock(), context=self.context))
            self._store(publish=False)
        self._publish()
        while (left := record.wake_at - self.ctx.clock()) > 0:
            self.ctx.sleep(min(left, 60.0))
        self._leave(name, _next(state))

    @property
    def calls(self) -> Any:
        if self._calls is None:
            from toolkit.calls import Calls

            self._calls = Calls.from_context(self.ctx)
        return self._calls

    def _target(self, url: str, scope: str | None) -> Any:
        """The provider at ``url``, found once per run (whether it is served in-process does not change)."""
        target = self._targets.get((url, scope))
        if target is None:
            target = self._targets[(url, scope)] = self.calls.target(url, origin=self.origin, scope=scope)
        return target

    def _action(self, name: str, state: Any) -> None:
        from toolkit.calls import CallError

        record = self.record
        visit = record.visits[name]
        target = self._target(state.action_url, state.action_scope)
        wait_time = state.wait_time
        child = record.child
        parameters = state_input(state, record.document, context=self.context)
        self.secrets = _private_values(parameters, state)
        if child is None or child.get("state") != name or child.get("visit") != visit:
            status = self._retrying(lambda: target.run(
                self.identity, parameters, request_id=child_request_id(self.ctx.action_id, name, visit),
                label=_label(self.flow.title, name)))
            child = {"state": name, "visit": visit, "url": target.url, "action_id": status["action_id"],
                     "started": self.ctx.clock()}
            record.child = child
            record.states[-1]["child_action_id"] = status["action_id"]
            self._store(publish=False)  # the child's id is stored before anything waits on it
        else:  # taken up again (after a crash or a pause): wait on the child already started
            status = {"status": "ACTIVE", "action_id": child["action_id"]}
            record.states[-1]["status"] = "ACTIVE"
        action_id = child["action_id"]
        give_up = None if wait_time is None else child["started"] + float(wait_time)
        slice_ = _LOCAL_SLICE if target.local else _REMOTE_SLICE
        while status["status"] not in _COMPLETED:
            if status["status"] == "INACTIVE":
                self._paused(name, status)
            if self.ctx.cancelled:
                if self._run_ended():  # past its deadline (a cancel's hook cancels the child itself)
                    self._cancel_child(target, action_id)
                self.ctx.check()  # otherwise this process stops: the next one waits on the same child
            now = self.ctx.clock()
            if give_up is not None and now >= give_up:
                self._cancel_child(target, action_id)
                raise FlowError(f"The action {action_id} of state {name!r} did not complete within its WaitTime "
                                f"of {wait_time:g} seconds; it was cancelled.", error=ACTION_TIMEOUT)
            timeout = slice_ if self.shown else _QUICK
            timeout = timeout if give_up is None else max(0.0, min(timeout, give_up - now))
            status = self._retrying(functools.partial(target.wait, self.identity, action_id, timeout))
            if not self.shown and status["status"] == "ACTIVE":  # not a quick one: show it in the run's status
                self._publish()
        if status["status"] == "FAILED" and state.exception_on_action_failure:
            raise FlowError(json.dumps(_public_status(status), sort_keys=True), error=ACTION_FAILED)
        if status["status"] == "SUCCEEDED" and not target.local:
            try:
                target.release(self.identity, action_id)
            except CallError as exc:  # released later by its provider's release_after
                logger.warning("run %s: could not release action %s: %s", self.ctx.action_id, action_id, exc)
        result = _public_status(status)
        document = apply_result_path(record.document, state.result_path, result)
        self._leave(name, _next(state), status=status["status"], document=document)

    def _run_ended(self) -> bool:
        """True if the run itself ended (cancelled, past its deadline, released), not just this process."""
        action = self.ctx.store.get(self.ctx.action_id)
        return action is None or action.status.value not in ("ACTIVE", "INACTIVE")

    def _paused(self, name: str, status: dict[str, Any]) -> None:
        """The child is INACTIVE: so is the run, with the child's reason, until it is resumed."""
        details = status.get("details") or {}
        entry = self.record.states[-1]
        entry["status"] = "INACTIVE"
        self._log(f"{name}: action {status['action_id']} is INACTIVE", code="ActionInactive", state_name=name,
                  child_action_id=status["action_id"])
        self._store(publish=False)  # the pause's details show the states
        raise ActionInactive(
            str(details.get("code") or "ActionInactive"),
            str(details.get("description") or f"The action of state {name!r} waits to be resumed."),
            required_scope=details.get("required_scope"),
            resolution_url=details.get("resolution_url"),
            **self._states(),
        )

    def _cancel_child(self, target: Any, action_id: str) -> None:
        from toolkit.calls import CallError

        try:
            target.cancel(self.identity, action_id)
        except CallError as exc:  # already ended, or its provider is away: nothing more to do
            logger.info("run %s: cancel of action %s: %s", self.ctx.action_id, action_id, exc)

    def _retrying(self, call: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """``call()``, again after a transient error (backoff doubling to a cap, cancellable); errors of Flows."""
        from toolkit.calls import CredentialsMissing, RunRefused, Transient

        delay = _RETRY_FIRST
        while True:
            try:
                return call()
            except Transient as exc:
                wait = max(delay, float(getattr(exc, "retry_after", None) or 0))
                logger.info("run %s: %s; retrying in %.0f s", self.ctx.action_id, exc, wait)
                self.ctx.sleep(min(wait, _RETRY_CAP))
                delay = min(delay * 2, _RETRY_CAP)
            except CredentialsMissing as exc:
                raise ActionInactive(
                    "CredentialsRequired", f"{exc.description.rstrip('.')}. Resume the run to continue.",
                    required_scope=exc.scope, **self._states(),
                ) from None
            except RunRefused as exc:
                raise FlowError(f"{exc.code}: {exc.description}", error=ACTION_UNABLE_TO_RUN) from None

    # --- helpers --------------------------------------------------------------------------------------------

    def _store(self, *, publish: bool = True) -> None:
        """Store the run's record with the log entries not written yet, in one transaction, while the run still
        owns its action (:class:`ActionCancelled` otherwise); then (``publish``) its summary in its details."""
        logs, self._logs = self._logs, []
        engine_store.save(self.ctx.store, self.record, self.ctx.attempt, write=self.ctx.log_and_write, logs=logs,
                          definition=self.new_definition)
        self.new_definition = None
        if publish:
            self._publish()
        else:
            self.ctx.check()

    def _publish(self) -> None:
        """Show the states so far and the current one in the run's status."""
        self.ctx.progress(details=self._states(), display_status=self._display())
        self.shown = True

    def _display(self) -> str:
        position = self.record.position
        return position[:64] if position else "Ended"

    def _log(self, description: str, **details: Any) -> None:
        """A log entry, written with the next record."""
        self._logs.append((self.ctx.clock(), description, {k: v for k, v in details.items() if v is not None}))


_definitions: dict[str, Any] = {}
"""Definition documents (as JSON) -> the validated definition: a process validates each stored copy once."""


def _stored_definition(engine: Any, run_id: str, flow: "DeployedFlow") -> Any:
    """The validated definition run ``run_id`` started with; ``flow``'s for a run stored without one."""
    from .language import validate

    stored = engine_store.definition(engine, run_id)
    if stored is None or stored[1] == flow.source:  # none kept (an older run), or the flow is as it was
        return flow.definition
    key = json.dumps(stored[1], sort_keys=True)
    definition = _definitions.get(key)
    if definition is None:
        definition = validate(stored[1])
        if len(_definitions) > 200:
            _definitions.clear()
        _definitions[key] = definition
    return definition


def _type(state: Any) -> str:
    return {ActionState: "Action", PassState: "Pass", ExpressionEvalState: "ExpressionEval", ChoiceState: "Choice",
            WaitState: "Wait", FailState: "Fail", SucceedState: "Succeed"}.get(type(state), type(state).__name__)


def _next(state: Any) -> str | None:
    return None if getattr(state, "end", False) else state.next


def _label(title: str, state: str) -> str:
    label = f"{title}: {state}"
    return label if len(label) <= 64 else label[:61] + "..."


def _private_values(parameters: Any, state: Any) -> set[str]:
    """The texts of the values ``state``'s ``__Private_Parameters`` hide in ``parameters`` (leaves as JSON)."""
    if not getattr(state, "private_parameters", None) and "__Private_Parameters" not in json.dumps(
            state.parameters or {}):
        return set()
    shown = set(_leaves(private_view(parameters, state)))
    return {text for text in _leaves(parameters) if text not in shown and len(text) >= 3}


def _leaves(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [leaf for item in value.values() for leaf in _leaves(item)]
    if isinstance(value, list):
        return [leaf for item in value for leaf in _leaves(item)]
    return [value if isinstance(value, str) else json.dumps(value)]


def _public_status(status: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in status.items() if v is not None}


# --- hooks ------------------------------------------------------------------------------------------------------


def cancel_children(action: "Action", ctx: "HookContext", *, origin: str | None = None) -> None:
    """The cancel hook's work: cancel the run's running child, if any."""
    from toolkit.calls import CallError, Calls

    record = engine_store.load(ctx.store.engine, action.action_id)
    if record is None or record.child is None:
        return
    identity = _identity(action.creator_id, frozenset(action.principals), ctx.identity)
    child = record.child
    try:
        Calls.from_context(ctx).target(child["url"], origin=record.origin or origin).cancel(identity,
                                                                                             child["action_id"])
    except CallError as exc:
        logger.info("run %s: cancel of action %s: %s", action.action_id, child["action_id"], exc)


def resume_children(action: "Action", ctx: "HookContext", *, origin: str | None = None) -> None:
    """The resume hook's work: resume the run's INACTIVE child before the run carries on."""
    from toolkit.calls import CallError, Calls

    record = engine_store.load(ctx.store.engine, action.action_id)
    if record is None or record.child is None:
        return
    identity = _identity(action.creator_id, frozenset(action.principals), ctx.identity)
    child = record.child
    target = Calls.from_context(ctx).target(child["url"], origin=record.origin or origin)
    try:
        target.resume(identity, child["action_id"])
    except CallError as exc:  # the run waits on it again, and pauses again if it must
        logger.info("run %s: resume of action %s: %s", action.action_id, child["action_id"], exc)
