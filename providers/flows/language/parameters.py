"""Parameters: templates evaluated against the state document, and what of them may be shown.

A template is any JSON value. In an object, a key ending in ``.$`` takes the value its JSONPath selects (the
key loses the suffix), a key ending in ``.=`` the value of its expression; every other value is a constant,
walked into when it is an object or a list. ``__Private_Parameters`` lists which keys of its object hold
secrets (by their name without suffix): they are sent to the action but never shown in a status, a log or a
definition shown to someone who may not edit the flow.
"""

from __future__ import annotations

from typing import Any

from . import expressions
from .errors import FlowError, ResolveError
from .paths import PathNotFound, lookup, not_found
from .states import ActionState, ExpressionEvalState, PassState, State

#: The key that lists, in a Parameters object, which of its keys hold secrets.
PRIVATE_PARAMETERS_KEY = "__Private_Parameters"
#: State document keys never shown: any key starting with ``_private``, and the role tokens in ``_tokens``.
PRIVATE_PREFIX = "_private"
TOKENS_KEY = "_tokens"


def natural_name(key: str) -> str:
    """A Parameters key without its ``.$`` or ``.=`` suffix."""
    return key[:-2] if key.endswith((".$", ".=")) else key


def resolve(template: Any, document: Any, *, context: dict[str, Any] | None = None, where: str = "Parameters") -> Any:
    """Evaluate a Parameters template: ``"key.$"`` takes the value at a JSONPath, ``"key.="`` the value of an
    expression, other values are constants; objects and lists are walked. ``__Private_Parameters`` lists are
    dropped from the result. Raises :class:`ResolveError` naming the key when a path matches nothing or an
    expression fails (``where`` prefixes the key in the message).
    """
    if isinstance(template, dict):
        out: dict[str, Any] = {}
        for key, value in template.items():
            if key == PRIVATE_PARAMETERS_KEY:
                continue
            here = f"{where}.{key}"
            if key.endswith(".$"):
                try:
                    out[key[:-2]] = lookup(value, document, context=context)
                except PathNotFound:
                    raise ResolveError(f'{here}: "{value}" selects nothing in the state document') from None
            elif key.endswith(".="):
                try:
                    out[key[:-2]] = expressions.evaluate(value, document, context=context)
                except FlowError as exc:
                    raise ResolveError(f"{here}: {exc.cause}") from None
            else:
                out[key] = resolve(value, document, context=context, where=here)
        return out
    if isinstance(template, list):
        return [resolve(item, document, context=context, where=f"{where}[{i}]") for i, item in enumerate(template)]
    return template


def state_input(state: State, document: dict[str, Any], *, context: dict[str, Any] | None = None) -> Any:
    """What a state works on: the document at ``InputPath`` (default ``$``), then ``Parameters`` resolved over
    it, or a Pass state's ``Result``. For an Action state this is the body of its run request.

    Raises :class:`ResolveError` for Parameters that cannot be evaluated and :class:`FlowError`
    (``States.Runtime``) for an ``InputPath`` that selects nothing.
    """
    if isinstance(state, PassState) and state.has_result:
        return state.result
    data: Any = document
    input_path = getattr(state, "input_path", None) if isinstance(state, (ActionState, PassState)) else None
    if input_path is not None:
        try:
            data = lookup(input_path, document, context=context)
        except PathNotFound:
            raise not_found(input_path, "InputPath") from None
    if isinstance(state, (ActionState, ExpressionEvalState, PassState)) and state.parameters is not None:
        return resolve(state.parameters, data, context=context)
    return data


def _private_names(template: dict[str, Any]) -> set[str]:
    names = template.get(PRIVATE_PARAMETERS_KEY)
    return {name for name in names if isinstance(name, str)} if isinstance(names, list) else set()


def _redact(template: Any, value: Any) -> Any:
    if isinstance(value, dict):
        if not isinstance(template, dict):
            return value
        private = _private_names(template)
        constants = {key: sub for key, sub in template.items() if not key.endswith((".$", ".="))}
        return {
            key: _redact(constants.get(key), sub)
            for key, sub in value.items()
            if key not in private and key != PRIVATE_PARAMETERS_KEY
        }
    if isinstance(value, list) and isinstance(template, list) and len(template) == len(value):
        return [_redact(sub_template, sub) for sub_template, sub in zip(template, value, strict=True)]
    return value


def private_view(parameters: Any, state: State) -> Any:
    """``parameters`` (as resolved for ``state``) without the keys its ``__Private_Parameters`` lists name, at
    every nesting level: what a status or log may show."""
    template = getattr(state, "parameters", None)
    if template is None:
        return parameters
    return _redact(template, parameters)


def public_parameters(template: Any) -> Any:
    """A Parameters template without its private keys (in any suffix form) and ``__Private_Parameters`` lists:
    how a definition is shown to someone who may not edit the flow."""
    if isinstance(template, dict):
        private = _private_names(template)
        return {
            key: public_parameters(value)
            for key, value in template.items()
            if key != PRIVATE_PARAMETERS_KEY and natural_name(key) not in private
        }
    if isinstance(template, list):
        return [public_parameters(item) for item in template]
    return template


def public_definition(definition: dict[str, Any]) -> dict[str, Any]:
    """A definition document with every state's Parameters passed through :func:`public_parameters`."""
    states = definition.get("States")
    if not isinstance(states, dict):
        return dict(definition)
    shown: dict[str, Any] = {}
    for name, state in states.items():
        if isinstance(state, dict) and "Parameters" in state:
            state = {**state, "Parameters": public_parameters(state["Parameters"])}
        shown[name] = state
    return {**definition, "States": shown}


def public_document(document: Any) -> Any:
    """A state document without the keys that start with ``_private`` (at any depth) or are ``_tokens``."""
    if isinstance(document, dict):
        return {
            key: public_document(value)
            for key, value in document.items()
            if not (isinstance(key, str) and (key.startswith(PRIVATE_PREFIX) or key == TOKENS_KEY))
        }
    if isinstance(document, list):
        return [public_document(item) for item in document]
    return document
