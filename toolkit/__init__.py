"""Action Provider Toolkit: write, host and test Action Providers.

>>> hello = ActionProvider(title="Hello", input_schema={"type": "object"})
>>> @hello.run
... def run(body, ctx):
...     return {"greeting": "hi"}
>>> app.register_blueprint(hello.blueprint(url_prefix="/hello"))  # doctest: +SKIP
"""

import importlib
from typing import TYPE_CHECKING, Any

# Names are imported on first use, so that `aptk token` and friends start fast.
_LOCATIONS = {
    "DevTokenVerifier": "auth", "Identity": "auth", "TokenVerifier": "auth", "mint_dev_token": "auth",
    "Action": "documents", "Status": "documents",
    "ActionCancelled": "errors", "ActionConflict": "errors", "ActionFailed": "errors", "ActionInactive": "errors",
    "ActionNotFound": "errors", "ApiError": "errors", "BadActionRequest": "errors", "ConfigurationError": "errors",
    "ForbiddenRequest": "errors", "InsufficientScope": "errors", "RequestTooLarge": "errors",
    "ServiceUnavailable": "errors", "ToolkitError": "errors",
    "UnauthorizedRequest": "errors",
    "Executor": "executor", "ThreadExecutor": "executor",
    "Toolkit": "extension", "ToolkitState": "extension", "get_toolkit": "extension",
    "BackgroundContext": "lifecycle", "HookContext": "lifecycle", "RunContext": "lifecycle",
    "VariantContext": "lifecycle",
    "ActionProvider": "provider",
    "SQLStore": "store", "Store": "store",
    "register_settings": "settings",
}

if TYPE_CHECKING:
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
        InsufficientScope,
        RequestTooLarge,
        ServiceUnavailable,
        ToolkitError,
        UnauthorizedRequest,
    )
    from .executor import Executor, ThreadExecutor
    from .extension import Toolkit, ToolkitState, get_toolkit
    from .lifecycle import BackgroundContext, HookContext, RunContext, VariantContext
    from .provider import ActionProvider
    from .settings import register_settings
    from .store import SQLStore, Store


def __dir__() -> list[str]:
    # The lazy names are part of the module, for dir(), help() and completion alike.
    return sorted(set(globals()) | set(_LOCATIONS))


def __getattr__(name: str) -> Any:
    module = _LOCATIONS.get(name)
    if module is None:
        raise AttributeError(f"module 'toolkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "Action",
    "ActionCancelled",
    "ActionConflict",
    "ActionFailed",
    "ActionInactive",
    "ActionNotFound",
    "ActionProvider",
    "ApiError",
    "BackgroundContext",
    "BadActionRequest",
    "ConfigurationError",
    "DevTokenVerifier",
    "Executor",
    "ForbiddenRequest",
    "HookContext",
    "Identity",
    "InsufficientScope",
    "RequestTooLarge",
    "RunContext",
    "SQLStore",
    "ServiceUnavailable",
    "Status",
    "Store",
    "ThreadExecutor",
    "TokenVerifier",
    "Toolkit",
    "ToolkitState",
    "ToolkitError",
    "UnauthorizedRequest",
    "VariantContext",
    "get_toolkit",
    "mint_dev_token",
    "register_settings",
]
