"""What a provider author declares: description fields, an input schema, a run callback and optional hooks."""

from __future__ import annotations

import functools
import inspect
import re
import warnings
from typing import TYPE_CHECKING, Any, Callable, Iterable, Literal, Mapping, TypeVar

import jsonschema
from marshmallow import Schema, ValidationError

from .documents import (
    ALL_AUTHENTICATED_USERS,
    PUBLIC,
    SHOWN_LIMIT,
    describe_validation_error,
    normalize_principal,
    parse_duration,
    shown,
)
from .errors import BadActionRequest, ConfigurationError

if TYPE_CHECKING:
    from flask import Blueprint

    from .lifecycle import HookContext, VariantContext
    from .typing import (
        BackgroundCallback,
        BackgroundCallbackT,
        CancelCallback,
        CancelCallbackT,
        CheckCallback,
        CheckCallbackT,
        FinishCallback,
        FinishCallbackT,
        ResumeCallback,
        ResumeCallbackT,
        RunCallback,
        RunCallbackT,
    )

Recovery = Literal["rerun", "fail"]
VariantResolver = Callable[[str, "VariantContext"], "ActionProvider | None"]
VariantResolverT = TypeVar("VariantResolverT", bound=VariantResolver)
VARIANT_KEY = re.compile(r"[A-Za-z0-9_.-]{1,127}")
"""What a variant key (the URL segment a variant is served at) may hold."""


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "provider"


def _principals(field: str, values: Iterable[str], words: tuple[str, ...]) -> list[str]:
    if isinstance(values, str):
        raise ConfigurationError(f"{field} must be a list of principals, not the string {values!r}")
    result = []
    for value in values:
        if value in words:
            result.append(value)
            continue
        try:
            result.append(normalize_principal(value))  # lower-case UUIDs: compared as the verifiers name callers
        except ValueError as exc:
            allowed = " or ".join(repr(w) for w in words)
            raise ConfigurationError(f"{field}: {exc}{'; or use ' + allowed if words else ''}") from None
    return result


class ActionProvider:
    """An action provider: what it says about itself, what input it takes, and what it does.

    ``input_schema`` is a JSON Schema (a dict) or a marshmallow schema (class or instance); the callback gets the
    validated body (for marshmallow, what ``load`` returned). Call :meth:`blueprint` to serve it.

    ``answer_within`` (seconds) lets ``/run`` of an asynchronous provider wait that long for the callback: a
    callback that finishes in time is answered SUCCEEDED or FAILED at once, a slower one ACTIVE as usual.

    ``recovery`` says what happens to an action whose process died while it ran: ``"rerun"`` runs the callback
    again (up to ``max_attempts`` runs), ``"fail"`` ends it FAILED with code ``WorkerLost``.
    """

    def __init__(
        self,
        *,
        title: str,
        input_schema: Mapping[str, Any] | Schema | type[Schema],
        name: str | None = None,
        subtitle: str | None = None,
        description: str | None = None,
        keywords: Iterable[str] = (),
        globus_auth_scope: str | None = None,
        admin_contact: str | None = None,
        synchronous: bool = False,
        log_supported: bool = True,
        visible_to: Iterable[str] = (PUBLIC,),
        runnable_by: Iterable[str] = (ALL_AUTHENTICATED_USERS,),
        administered_by: Iterable[str] = (),
        maximum_deadline: str = "P30D",
        default_release_after: str = "P30D",
        recovery: Recovery = "fail",
        max_attempts: int = 3,
        answer_within: float = 0.0,
    ) -> None:
        if not title:
            raise ConfigurationError("An ActionProvider needs a title.")
        self.title = title
        self.name = name or _slug(title)
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,128}", self.name):
            raise ConfigurationError(
                f"name {self.name!r} may only hold letters, digits, '_', '.' and '-' (at most 128)"
            )
        self.subtitle = subtitle
        self.description = description
        self.keywords = list(keywords)
        self.globus_auth_scope = globus_auth_scope or f"urn:aptk:scope:{self.name}"
        self.admin_contact = admin_contact
        self.synchronous = synchronous
        self.log_supported = log_supported
        self.visible_to = _principals("visible_to", visible_to, (PUBLIC, ALL_AUTHENTICATED_USERS))
        self.runnable_by = _principals("runnable_by", runnable_by, (ALL_AUTHENTICATED_USERS,))
        self.administered_by = _principals("administered_by", administered_by, ())
        try:
            self.maximum_deadline_seconds = parse_duration(maximum_deadline).total_seconds()
            self.default_release_after_seconds = parse_duration(default_release_after).total_seconds()
        except ValueError as exc:
            raise ConfigurationError(f"maximum_deadline / default_release_after: {exc}") from None
        self.maximum_deadline = maximum_deadline
        if recovery not in ("rerun", "fail"):
            raise ConfigurationError(f"recovery must be 'rerun' or 'fail', not {recovery!r}")
        if max_attempts < 1:
            raise ConfigurationError("max_attempts must be at least 1")
        self.recovery = recovery
        self.max_attempts = max_attempts
        if answer_within < 0:
            raise ConfigurationError("answer_within must be zero or more seconds")
        self.answer_within = float(answer_within)
        self._set_input_schema(input_schema)
        self.run_callback: RunCallback | None = None
        self.check_callback: CheckCallback | None = None
        self.cancel_callback: CancelCallback | None = None
        self.resume_callback: ResumeCallback | None = None
        self.finish_callback: FinishCallback | None = None
        self.background_callbacks: list[BackgroundCallback] = []
        self.extra_blueprints: list[Blueprint] = []
        self.variant_resolver: VariantResolver | None = None
        self.family: ActionProvider | None = None
        """For a variant (see :meth:`variants`): the provider it is a variant of."""
        self.variant_key: str | None = None
        """For a variant: its key, the URL segment it is served at."""

    def __repr__(self) -> str:
        return f"<ActionProvider {self.name!r}>"

    # --- input ----------------------------------------------------------------------------------------------

    def _set_input_schema(self, schema: Mapping[str, Any] | Schema | type[Schema]) -> None:
        if isinstance(schema, type) and issubclass(schema, Schema):
            schema = schema()
        if isinstance(schema, Schema):
            from .openapi import marshmallow_to_json_schema

            self._marshmallow: Schema | None = schema
            self.input_schema = marshmallow_to_json_schema(schema)
            self._validator: Any = None
            return
        if not isinstance(schema, Mapping):
            raise ConfigurationError("input_schema must be a JSON Schema dict or a marshmallow Schema")
        schema = dict(schema)
        cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
        try:
            cls.check_schema(schema)
        except jsonschema.SchemaError as exc:
            raise ConfigurationError(f"input_schema is not a valid JSON Schema: {exc.message}") from None
        self._marshmallow = None
        self.input_schema = schema
        self._validator = cls(schema, format_checker=cls.FORMAT_CHECKER)

    def validate_body(self, body: dict[str, Any], prefix: str = "body") -> Any:
        """The validated body, or a 400 whose description names each offending field (``prefix`` is the body's
        name in it: another document may hold the body, as a timer's ``body.callback_body`` does)."""
        if self._marshmallow is not None:
            try:
                return self._marshmallow.load(body)
            except ValidationError as exc:
                raise BadActionRequest(describe_validation_error(exc, prefix)) from None
        errors = sorted(self._validator.iter_errors(body), key=lambda e: list(e.absolute_path))
        if errors:
            lines = [f"{_json_path(e, prefix)}: {_message(e)}" for e in errors[:10]]
            raise BadActionRequest("; ".join(lines))
        return body

    def load_body(self, body: dict[str, Any]) -> Any:
        """What the run callback receives for a body already validated at ``/run``."""
        return body if self._marshmallow is None else self.validate_body(body)

    # --- callbacks ------------------------------------------------------------------------------------------

    def run(self, fn: RunCallbackT) -> RunCallbackT:
        """Register the run callback: ``fn(body, ctx)`` returns the SUCCEEDED details (a dict, or None).

        It may raise :class:`~toolkit.ActionFailed` or :class:`~toolkit.ActionInactive` instead.
        """
        self.run_callback = fn
        return fn

    def check(self, fn: CheckCallbackT) -> CheckCallbackT:
        """Register a hook ``fn(body, ctx)`` run at ``/run`` before the action exists.

        For checks the schema cannot make (does that collection exist? may ``ctx.identity`` use it?): raise an
        :class:`~toolkit.errors.ApiError` such as ``BadActionRequest`` (400) or ``ForbiddenRequest`` (403) to
        refuse the request; nothing is stored then. ``ctx`` is a :class:`~toolkit.HookContext`.
        """
        self.check_callback = _hook(self, "check", fn)
        return fn

    def cancel(self, fn: CancelCallbackT) -> CancelCallbackT:
        """Register a hook ``fn(action, ctx)`` called once an action has been cancelled."""
        self.cancel_callback = _hook(self, "cancel", fn)
        return fn

    def resume(self, fn: ResumeCallbackT) -> ResumeCallbackT:
        """Register a hook ``fn(action, ctx)`` called before an INACTIVE action runs again.

        Raise an :class:`~toolkit.errors.ApiError` (e.g. ``ActionConflict``) to refuse the resume.
        """
        self.resume_callback = _hook(self, "resume", fn)
        return fn

    def finish(self, fn: FinishCallbackT) -> FinishCallbackT:
        """Register a hook ``fn(action, ctx)`` that may give an action's final details as it ends.

        It is called however an action ends SUCCEEDED or FAILED: its run callback returned or raised, it was
        cancelled, it passed its deadline, or its process was lost (``WorkerLost``). ``action`` is the action as
        it is about to be stored: its final ``status``, ``completion_time`` and the ``details`` the toolkit would
        store (with ``code`` and ``description`` for a failure). Return a dict to store instead (the details
        ``/status`` shows from then on), or None to keep them.

        The hook runs just before the compare-and-set that ends the action, so what it returns is written in the
        same write as the new status. If another process ends the action first, what it returned is dropped: the
        hook must only compute details; release outside resources in a ``cancel`` hook or the run callback. An
        exception in it is logged and the details are stored as they were.
        """
        self.finish_callback = fn
        return fn

    def background(self, fn: BackgroundCallbackT) -> BackgroundCallbackT:
        """Register ``fn(ctx)`` to run in a thread of its own in every serving process, for the process's life.

        The toolkit starts it when the process's runtime starts (after a fork too) and sets ``ctx.stopping`` when
        the process stops; ``fn`` should then return within a few seconds. Work that several processes share
        (a schedule, say) must be claimed with a compare-and-set, as every process runs ``fn``. ``ctx`` is a
        :class:`~toolkit.lifecycle.BackgroundContext`.
        """
        self.background_callbacks.append(fn)
        return fn

    # --- variants -------------------------------------------------------------------------------------------

    def variants(self, fn: VariantResolverT) -> VariantResolverT:
        """Serve many providers at once, one per key: this provider's routes move to ``<prefix>/<key>/``.

        ``fn(key, ctx)`` (``ctx`` a :class:`~toolkit.lifecycle.VariantContext`: settings, store, clock) returns the
        variant served at that key, made with :meth:`variant`, or None for an unknown key (404). A variant has its
        own description, input schema, visibility, scope and callbacks; its actions are stored under the name
        ``<name>/<key>``, so that idempotency, authorization, listing and recovery after a crash each apply to
        one variant, and a variant is looked up again by that name when its action is taken up elsewhere. The
        resolver is called for every request to a variant and for every recovery: keep it quick (cache).
        """
        self.variant_resolver = fn
        return fn

    def variant(self, key: str, **options: Any) -> "ActionProvider":
        """A variant of this provider served at ``key`` (see :meth:`variants`).

        ``options`` are those of :class:`ActionProvider` (title, input_schema, visible_to, ...); those not given are
        this provider's. The variant runs this provider's callbacks unless it registers its own.
        """
        if not VARIANT_KEY.fullmatch(key) or len(self.name) + 1 + len(key) > 128:
            raise ConfigurationError(
                f"variant key {key!r} may only hold letters, digits, '_', '.' and '-', "
                f"at most {127 - len(self.name)} of them"
            )
        inherited: dict[str, Any] = {
            "title": self.title, "input_schema": self._marshmallow or self.input_schema, "subtitle": self.subtitle,
            "description": self.description, "keywords": self.keywords, "globus_auth_scope": self.globus_auth_scope,
            "admin_contact": self.admin_contact, "synchronous": self.synchronous, "log_supported": self.log_supported,
            "visible_to": self.visible_to, "runnable_by": self.runnable_by, "administered_by": self.administered_by,
            "maximum_deadline": self.maximum_deadline, "recovery": self.recovery, "max_attempts": self.max_attempts,
            "answer_within": self.answer_within,
        }
        unknown = set(options) - set(inherited)
        if unknown:
            raise ConfigurationError(f"a variant cannot set {', '.join(sorted(unknown))}")
        variant = ActionProvider(**{**inherited, **options}, name=self.name)
        variant.name = f"{self.name}/{key}"
        variant.default_release_after_seconds = self.default_release_after_seconds
        variant.family, variant.variant_key = self, key
        for hook in ("run_callback", "check_callback", "cancel_callback", "resume_callback", "finish_callback"):
            setattr(variant, hook, getattr(self, hook))
        return variant

    # --- serving --------------------------------------------------------------------------------------------

    def add_blueprint(self, blueprint: "Blueprint") -> None:
        """Serve ``blueprint``'s routes (a provider's web pages, say) under this provider's prefix too.

        It is nested in every blueprint :meth:`blueprint` makes, so its views share the provider's prefix and
        the toolkit's per-request setup; its own error handlers come before the API's JSON ones.
        """
        self.extra_blueprints.append(blueprint)

    def blueprint(self, url_prefix: str | None = None, *, name: str | None = None) -> "Blueprint":
        """A Flask blueprint serving every route of the Action Provider API for this provider."""
        from .blueprint import make_blueprint

        if self.run_callback is None:
            raise ConfigurationError(
                f"{self!r} has no run callback; decorate a function with @{self.name}.run before serving it."
            )
        return make_blueprint(self, url_prefix=url_prefix, name=name)


def _hook(provider: ActionProvider, kind: str, fn: Callable[..., object]) -> Callable[[Any, HookContext], object]:
    """What the runtime calls for a hook: ``fn`` itself, or for a hook of the earlier form ``fn(subject, identity)``
    (told by its second parameter's name, once, here) an adapter handing it ``ctx.identity``, with a warning."""
    try:
        parameters = list(inspect.signature(fn).parameters)
    except (TypeError, ValueError):  # a callable without a signature: taken as the current form
        return fn
    if len(parameters) < 2 or parameters[1] != "identity":
        return fn
    name = getattr(fn, "__qualname__", repr(fn))
    warnings.warn(
        f"the {kind} hook {name} of {provider!r} takes (..., identity): hooks now get (..., ctx), with the caller "
        "in ctx.identity; the old form is deprecated and will stop working in a later release",
        DeprecationWarning,
        stacklevel=3,
    )

    @functools.wraps(fn)
    def legacy(subject: Any, ctx: HookContext) -> object:
        return fn(subject, ctx.identity)

    return legacy


def _message(error: jsonschema.ValidationError) -> str:
    """jsonschema's message, with the offending value (which it repeats whole) cut short."""
    full = repr(error.instance)
    if len(full) <= SHOWN_LIMIT:
        return error.message
    if full in error.message:
        return error.message.replace(full, shown(error.instance))
    message = error.message  # other wordings: the message itself, cut
    return message if len(message) <= 2 * SHOWN_LIMIT else f"{message[:2 * SHOWN_LIMIT]}... ({len(message)} characters)"


def _json_path(error: jsonschema.ValidationError, prefix: str = "body") -> str:
    path = prefix
    for part in error.absolute_path:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path
