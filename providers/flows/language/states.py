"""The parsed form of a flow definition: small frozen value objects, one per state type.

They are built only by :func:`validate`, which has checked every field; code that runs a flow reads them and
never the raw JSON. Optional fields take the Globus Flows defaults.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Union

#: ``ResultPath`` when a state does not give one: the result replaces the whole state document.
DEFAULT_RESULT_PATH = "$"
#: ``WaitTime`` of an Action state when the definition does not give one (seconds).
DEFAULT_WAIT_TIME = 300
#: ``RunAs`` of an Action state when the definition does not give one.
DEFAULT_RUN_AS = "User"


@dataclass(frozen=True, kw_only=True)
class Catcher:
    """One entry of an Action state's ``Catch``: the error names it handles and where the run goes next.

    ``result_path`` is where the error output (``{"Error", "Cause"}``) is stored; ``None`` discards it.
    """

    error_equals: tuple[str, ...]
    next: str
    result_path: str | None = DEFAULT_RESULT_PATH


@dataclass(frozen=True, kw_only=True)
class BaseState:
    """What every state has. ``next`` and ``end`` are exclusive; Choice, Fail and Succeed have neither."""

    name: str
    comment: str | None = None
    next: str | None = None
    end: bool = False

    type = ""  # the definition's "Type"; set per subclass

    @property
    def terminal(self) -> bool:
        """True when the run ends after this state (``End``, Succeed, Fail)."""
        return self.end


@dataclass(frozen=True, kw_only=True)
class ActionState(BaseState):
    """Calls an action provider at ``action_url`` with ``Parameters`` (or the document at ``InputPath``) as body.

    ``private_parameters`` are the top-level parameter names listed in ``__Private_Parameters`` (without any
    ``.$``/``.=`` suffix); nested objects may list their own, which :func:`private_view` also honours.
    """

    type = "Action"
    action_url: str
    action_scope: str | None = None
    parameters: dict[str, Any] | None = None
    input_path: str | None = None
    result_path: str | None = DEFAULT_RESULT_PATH
    wait_time: float = DEFAULT_WAIT_TIME
    exception_on_action_failure: bool = True
    run_as: str = DEFAULT_RUN_AS
    catch: tuple[Catcher, ...] = ()
    private_parameters: frozenset[str] = field(default_factory=frozenset)


@dataclass(frozen=True, kw_only=True)
class ExpressionEvalState(BaseState):
    """Evaluates ``Parameters`` (constants, ``.$`` paths, ``.=`` expressions) and stores them at ``ResultPath``."""

    type = "ExpressionEval"
    parameters: dict[str, Any]
    result_path: str | None = DEFAULT_RESULT_PATH
    private_parameters: frozenset[str] = field(default_factory=frozenset)


@dataclass(frozen=True, kw_only=True)
class PassState(BaseState):
    """Stores ``Result``, or the evaluated ``Parameters``, or the document at ``InputPath``, at ``ResultPath``."""

    type = "Pass"
    parameters: dict[str, Any] | None = None
    result: Any = None
    has_result: bool = False
    input_path: str | None = None
    result_path: str | None = DEFAULT_RESULT_PATH
    private_parameters: frozenset[str] = field(default_factory=frozenset)


@dataclass(frozen=True, kw_only=True)
class ChoiceRule:
    """One comparison, or a Boolean combination of rules.

    ``operator`` is the comparison key (``"StringEquals"``, ``"NumericLessThanPath"``, ``"IsPresent"``...) with
    ``variable`` the JSONPath it tests and ``operand`` the value it compares to (a JSONPath for ``...Path``
    operators); or ``"And"``/``"Or"``/``"Not"`` with ``rules`` (one rule for ``Not``) and no variable.
    ``next`` is set on top-level rules only.
    """

    operator: str
    variable: str | None = None
    operand: Any = None
    rules: tuple[ChoiceRule, ...] = ()
    next: str | None = None


@dataclass(frozen=True, kw_only=True)
class ChoiceState(BaseState):
    """Goes to the ``Next`` of the first matching rule, else to ``default``."""

    type = "Choice"
    choices: tuple[ChoiceRule, ...]
    default: str | None = None


@dataclass(frozen=True, kw_only=True)
class WaitState(BaseState):
    """Waits a number of seconds or until a timestamp; exactly one of the four fields is set."""

    type = "Wait"
    seconds: float | None = None
    seconds_path: str | None = None
    timestamp: str | None = None
    timestamp_path: str | None = None


@dataclass(frozen=True, kw_only=True)
class FailState(BaseState):
    """Ends the run FAILED with ``error`` and ``cause`` (or the strings found at ``error_path``/``cause_path``)."""

    type = "Fail"
    error: str | None = None
    cause: str | None = None
    error_path: str | None = None
    cause_path: str | None = None

    @property
    def terminal(self) -> bool:
        return True


@dataclass(frozen=True, kw_only=True)
class SucceedState(BaseState):
    """Ends the run SUCCEEDED."""

    type = "Succeed"

    @property
    def terminal(self) -> bool:
        return True


State = Union[ActionState, ExpressionEvalState, PassState, ChoiceState, WaitState, FailState, SucceedState]

#: The state types a definition may use, by their ``Type``.
STATE_TYPES: dict[str, type[BaseState]] = {
    cls.type: cls
    for cls in (ActionState, ExpressionEvalState, PassState, ChoiceState, WaitState, FailState, SucceedState)
}


@dataclass(frozen=True, kw_only=True)
class Definition:
    """A validated flow definition. ``source`` is the definition document as given."""

    start_at: str
    states: dict[str, State]
    comment: str | None = None
    source: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def state(self, name: str) -> State:
        """The state called ``name`` (``KeyError`` if there is none)."""
        return self.states[name]

    @property
    def action_states(self) -> list[ActionState]:
        """The Action states, in definition order."""
        return [state for state in self.states.values() if isinstance(state, ActionState)]

    @property
    def run_as_roles(self) -> frozenset[str]:
        """The ``RunAs`` role names other than ``User`` and ``Flow``: each needs a token in the input's ``_tokens``."""
        return frozenset(state.run_as for state in self.action_states) - {"User", "Flow"}
