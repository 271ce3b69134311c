"""The Globus Flows definition language: validation, and the pure pieces a run is made of.

A definition is JSON (the Amazon States Language as Globus Flows extends it). :func:`validate` checks all of it
at once and returns a :class:`Definition` of frozen state objects. A flow engine then uses:

- :func:`state_input` / :func:`resolve`: a state's ``Parameters`` over the run's state document (``"key.$"``
  JSONPaths, ``"key.="`` expressions, constants), with the read-only run context at ``$._context``;
- :func:`apply_result_path`: where a state's result goes in the document;
- :func:`choose`, :func:`wait_until`, :func:`catcher_for`, :func:`fail_output`: Choice, Wait, Catch and Fail;
- :func:`private_view` and :func:`public_document`: what may be shown in a status or log
  (``__Private_Parameters`` and ``_private`` keys are not); :func:`public_definition`: a definition as shown to
  someone who may not edit the flow.

Nothing here performs I/O; every run-time failure is a :class:`FlowError` whose ``error`` a Catch can name.
"""

from __future__ import annotations

from .catch import catcher_for, fail_output
from .choice import choose
from .errors import (
    ACTION_FAILED,
    ACTION_TIMEOUT,
    ACTION_UNABLE_TO_RUN,
    ERROR_NAMES,
    NO_CHOICE_MATCHED,
    PARAMETER_PATH_FAILURE,
    RESULT_PATH_MATCH_FAILURE,
    RUNTIME,
    STATES_ALL,
    DefinitionError,
    FlowError,
    NoChoiceMatched,
    ResolveError,
    ResultPathError,
)
from .expressions import EXPRESSION_FUNCTIONS, evaluate
from .parameters import (
    PRIVATE_PARAMETERS_KEY,
    private_view,
    public_definition,
    public_document,
    public_parameters,
    resolve,
    state_input,
)
from .paths import CONTEXT_KEY, apply_result_path, find
from .states import (
    DEFAULT_RESULT_PATH,
    DEFAULT_RUN_AS,
    DEFAULT_WAIT_TIME,
    STATE_TYPES,
    ActionState,
    BaseState,
    Catcher,
    ChoiceRule,
    ChoiceState,
    Definition,
    ExpressionEvalState,
    FailState,
    PassState,
    State,
    SucceedState,
    WaitState,
)
from .validate import successors, validate
from .wait import wait_until

__all__ = [
    "ACTION_FAILED",
    "ACTION_TIMEOUT",
    "ACTION_UNABLE_TO_RUN",
    "CONTEXT_KEY",
    "DEFAULT_RESULT_PATH",
    "DEFAULT_RUN_AS",
    "DEFAULT_WAIT_TIME",
    "ERROR_NAMES",
    "EXPRESSION_FUNCTIONS",
    "NO_CHOICE_MATCHED",
    "PARAMETER_PATH_FAILURE",
    "PRIVATE_PARAMETERS_KEY",
    "RESULT_PATH_MATCH_FAILURE",
    "RUNTIME",
    "STATES_ALL",
    "STATE_TYPES",
    "ActionState",
    "BaseState",
    "Catcher",
    "ChoiceRule",
    "ChoiceState",
    "Definition",
    "DefinitionError",
    "ExpressionEvalState",
    "FailState",
    "FlowError",
    "NoChoiceMatched",
    "PassState",
    "ResolveError",
    "ResultPathError",
    "State",
    "SucceedState",
    "WaitState",
    "apply_result_path",
    "catcher_for",
    "choose",
    "evaluate",
    "fail_output",
    "find",
    "private_view",
    "public_definition",
    "public_document",
    "public_parameters",
    "resolve",
    "state_input",
    "successors",
    "validate",
    "wait_until",
]
