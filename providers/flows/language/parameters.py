"""Parameters: templates evaluated against the state document, and what of them may be shown."""

from __future__ import annotations

from typing import Any

from .states import State

#: The key that lists, in a Parameters object, which of its keys hold secrets.
PRIVATE_PARAMETERS_KEY = "__Private_Parameters"


def resolve(template: Any, document: dict[str, Any], *, context: dict[str, Any] | None = None) -> Any:
    """Evaluate a Parameters template: ``"key.$"`` takes the value at a JSONPath, ``"key.="`` the value of an
    expression, other values are constants; objects and lists are walked. ``__Private_Parameters`` lists are
    dropped from the result. Raises :class:`ResolveError` naming the key when a path matches nothing or an
    expression fails.
    """
    raise NotImplementedError


def state_input(state: State, document: dict[str, Any], *, context: dict[str, Any] | None = None) -> Any:
    """What a state works on: the document at ``InputPath`` (default ``$``), then ``Parameters`` resolved over
    it, or a Pass state's ``Result``. For an Action state this is the body of its run request.
    """
    raise NotImplementedError


def private_view(parameters: Any, state: State) -> Any:
    """``parameters`` (as resolved for ``state``) without the keys its ``__Private_Parameters`` lists name, at
    every nesting level: what a status or log may show."""
    raise NotImplementedError


def public_document(document: Any) -> Any:
    """A state document without the keys that start with ``_private`` (at any depth) or are ``_tokens``."""
    raise NotImplementedError
