"""Action Provider Toolkit: write, host and test Action Providers.

>>> hello = ActionProvider(title="Hello", input_schema={"type": "object"})
>>> @hello.run
... def run(body, ctx):
...     return {"greeting": "hi"}
>>> app.register_blueprint(hello.blueprint(url_prefix="/hello"))  # doctest: +SKIP
"""

from .auth import DevTokenVerifier, Identity, TokenVerifier, mint_dev_token
from .documents import Action, Status
from .errors import (
    ActionCancelled,
    ActionConflict,
    ActionFailed,
    ActionInactive,
    ActionNotFound,
    ApiError,
    BadActionRequest,
    ConfigurationError,
    ForbiddenRequest,
    ServiceUnavailable,
    ToolkitError,
    UnauthorizedRequest,
)
from .executor import Executor, ThreadExecutor
from .extension import Toolkit
from .lifecycle import RunContext
from .provider import ActionProvider
from .store import SQLStore, Store

__all__ = [
    "Action",
    "ActionCancelled",
    "ActionConflict",
    "ActionFailed",
    "ActionInactive",
    "ActionNotFound",
    "ActionProvider",
    "ApiError",
    "BadActionRequest",
    "ConfigurationError",
    "DevTokenVerifier",
    "Executor",
    "ForbiddenRequest",
    "Identity",
    "RunContext",
    "SQLStore",
    "ServiceUnavailable",
    "Status",
    "Store",
    "ThreadExecutor",
    "TokenVerifier",
    "Toolkit",
    "ToolkitError",
    "UnauthorizedRequest",
    "mint_dev_token",
]
