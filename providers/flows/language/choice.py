"""Choice states: the rule that matches a state document."""

from __future__ import annotations

from typing import Any

from .states import ChoiceState


def choose(state: ChoiceState, document: dict[str, Any], *, context: dict[str, Any] | None = None) -> str:
    """The ``Next`` of the first rule that matches ``document``, else the state's ``Default``.

    Raises :class:`NoChoiceMatched` (``States.NoChoiceMatched``) when nothing matches and there is no Default.
    """
    raise NotImplementedError
