"""Errors of the flow language: one for definitions, one for runs.

Exception tree::

    ValueError
     └── DefinitionError        a definition (or its input schema) is not valid; ``.errors`` lists every problem
    Exception
     └── FlowError              a run-time error with a Globus/ASL error name (``.error``) and a ``.cause``
          ├── ResolveError      Parameters could not be evaluated (``States.ParameterPathFailure``)
          ├── ResultPathError   a result could not be stored (``States.ResultPathMatchFailure``)
          └── NoChoiceMatched   no Choice rule matched and there is no Default (``States.NoChoiceMatched``)

The error names are the strings a ``Catch`` lists in ``ErrorEquals``.
"""

from __future__ import annotations

#: An action state's run request was refused: no action was started.
ACTION_UNABLE_TO_RUN = "ActionUnableToRun"
#: The action ended FAILED and the state has ``ExceptionOnActionFailure`` (the default).
ACTION_FAILED = "ActionFailedException"
#: The action did not complete within the state's ``WaitTime``.
ACTION_TIMEOUT = "ActionTimeout"
#: Matches every error name in ``ErrorEquals`` except ``States.Runtime``.
STATES_ALL = "States.ALL"
#: A ``"key.$"`` path matched nothing or a ``"key.="`` expression failed while evaluating Parameters.
PARAMETER_PATH_FAILURE = "States.ParameterPathFailure"
#: A ``ResultPath`` could not be applied (it runs through a value that is not an object).
RESULT_PATH_MATCH_FAILURE = "States.ResultPathMatchFailure"
#: A Choice state found no matching rule and has no ``Default``.
NO_CHOICE_MATCHED = "States.NoChoiceMatched"
#: Any other run-time failure (an ``InputPath`` that matches nothing, a Wait path that is not a number or a
#: timestamp). As in the States Language, ``States.ALL`` does not catch it.
RUNTIME = "States.Runtime"

#: Every error name the language itself raises or a Catch may name.
ERROR_NAMES = frozenset(
    {ACTION_UNABLE_TO_RUN, ACTION_FAILED, ACTION_TIMEOUT, STATES_ALL, PARAMETER_PATH_FAILURE,
     RESULT_PATH_MATCH_FAILURE, NO_CHOICE_MATCHED, RUNTIME}
)


class DefinitionError(ValueError):
    """A flow definition is invalid. ``errors`` holds one precise message per problem, in definition order.

    Each message names where the problem is, then what it is: ``States.Copy.Next: "Shar" is not a state``.
    """

    def __init__(self, errors: list[str]) -> None:
        self.errors = list(errors)
        super().__init__("; ".join(self.errors) if self.errors else "invalid flow definition")


class FlowError(Exception):
    """A run-time error of a flow run. ``error`` is the name a Catch matches; ``cause`` says what happened."""

    error: str = RUNTIME

    def __init__(self, cause: str, *, error: str | None = None) -> None:
        if error is not None:
            self.error = error
        self.cause = cause
        super().__init__(cause)

    def __str__(self) -> str:
        return f"{self.error}: {self.cause}"

    def to_dict(self) -> dict[str, str]:
        """The error output a Catch stores at its ``ResultPath`` (``{"Error": ..., "Cause": ...}``)."""
        return {"Error": self.error, "Cause": self.cause}


class ResolveError(FlowError):
    """Parameters could not be evaluated: a ``"key.$"`` path matched nothing, or a ``"key.="`` expression failed."""

    error = PARAMETER_PATH_FAILURE


class ResultPathError(FlowError):
    """A ``ResultPath`` could not be applied to the state document."""

    error = RESULT_PATH_MATCH_FAILURE


class NoChoiceMatched(FlowError):
    """No rule of a Choice state matched and it has no ``Default``."""

    error = NO_CHOICE_MATCHED
