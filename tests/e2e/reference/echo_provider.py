"""A small provider built with the reference toolkit (globus-action-provider-tools), the way its documentation
shows: an ActionProviderBlueprint with a pydantic input model, callbacks for run, status, cancel and release over an
in-memory store, and the toolkit's own authorization helpers. Run with that package's environment::

    python echo_provider.py PORT

Globus Auth is reached where ``GLOBUS_SDK_SERVICE_URL_AUTH`` says (the test stands in for it on loopback); the
client credentials come from ``ECHO_CLIENT_ID`` and ``ECHO_CLIENT_SECRET``. Not imported by the test suite.
"""

import datetime
import os
import sys

from flask import Flask
from pydantic import BaseModel, Field

from globus_action_provider_tools import (
    ActionProviderDescription,
    ActionRequest,
    ActionStatus,
    ActionStatusValue,
    AuthState,
)
from globus_action_provider_tools.authorization import (
    authorize_action_access_or_404,
    authorize_action_management_or_404,
)
from globus_action_provider_tools.flask import ActionProviderBlueprint
from globus_action_provider_tools.flask.exceptions import ActionConflict, ActionNotFound
from globus_action_provider_tools.flask.helpers import assign_json_provider

SCOPE = "https://auth.globus.org/scopes/00000000-0000-4000-8000-00000000ec40/action_all"


class EchoInput(BaseModel):
    echo_string: str = Field(..., title="Echo string", description="Returned in the details")


echo = ActionProviderBlueprint(
    name="echo",
    import_name=__name__,
    url_prefix="/echo",
    provider_description=ActionProviderDescription(
        globus_auth_scope=SCOPE,
        title="Echo (reference toolkit)",
        admin_contact="ops@example.org",
        synchronous=True,
        input_schema=EchoInput,
        visible_to=["public"],
        runnable_by=["all_authenticated_users"],
        log_supported=False,
    ),
)
actions: dict[str, ActionStatus] = {}


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat()


@echo.action_run
def run(request: ActionRequest, auth: AuthState) -> ActionStatus:
    status = ActionStatus(
        status=ActionStatusValue.SUCCEEDED,
        creator_id=auth.effective_identity,
        label=request.label or None,
        monitor_by=request.monitor_by or auth.identities,
        manage_by=request.manage_by or auth.identities,
        start_time=_now(),
        completion_time=_now(),
        release_after=request.release_after or "P30D",
        details={"echo": request.body["echo_string"]},
    )
    actions[status.action_id] = status
    return status


def _find(action_id: str) -> ActionStatus:
    status = actions.get(action_id)
    if status is None:
        raise ActionNotFound(f"No action {action_id}")
    return status


@echo.action_status
def status(action_id: str, auth: AuthState) -> ActionStatus:
    found = _find(action_id)
    authorize_action_access_or_404(found, auth)
    return found


@echo.action_cancel
def cancel(action_id: str, auth: AuthState) -> ActionStatus:
    found = _find(action_id)
    authorize_action_management_or_404(found, auth)
    if found.is_complete():
        raise ActionConflict("The action has already completed")
    found.status = ActionStatusValue.FAILED
    return found


@echo.action_release
def release(action_id: str, auth: AuthState) -> ActionStatus:
    found = _find(action_id)
    authorize_action_management_or_404(found, auth)
    if not found.is_complete():
        raise ActionConflict("Only a completed action can be released")
    return actions.pop(action_id)


def create_app() -> Flask:
    app = Flask(__name__)
    assign_json_provider(app)
    app.config["CLIENT_ID"] = os.environ["ECHO_CLIENT_ID"]
    app.config["CLIENT_SECRET"] = os.environ["ECHO_CLIENT_SECRET"]
    app.register_blueprint(echo)
    return app


if __name__ == "__main__":
    create_app().run(host="127.0.0.1", port=int(sys.argv[1]))
