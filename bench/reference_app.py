"""The reference provider for bench/hotpath.py, on globus-action-provider-tools 0.21 (run in its own venv).

A provider shaped like that package's documented example: an ``ActionProviderBlueprint`` with a JSON Schema input,
``/run`` answering an ACTIVE ActionStatus kept in a dict in the process's memory (no durability, nothing shared
between workers), ``/status`` reading it back after the package's own ``authorize_action_access_or_404``.

Globus Auth cannot be reached here, so the only parts replaced are the package's network clients, through its own
``ActionProviderConfig(client_factory=...)`` hook:

* token introspection answers, in memory, a fixed active token (``sub``, ``identity_set``, ``scope``), and the
  package's own ``AuthState.introspect_cache`` (30 s TTL) caches it as it would a real answer;
* the dependent-token grant answers, in memory, a token for the Groups scope, and the Groups client's
  ``get_my_groups`` answers no groups (cached for 5 minutes by ``AuthState.group_membership_cache``).

Everything else (token parsing, scope checks, authorization, pydantic models, JSON Schema validation, Flask
dispatch, serialization) is the package's own code.

    REF_TOKEN=... gunicorn -w 1 -k gthread --threads 8 reference_app:app
"""

from __future__ import annotations

import os
import uuid

import globus_sdk
from flask import Flask
from globus_action_provider_tools import (
    ActionProviderDescription,
    ActionRequest,
    ActionStatus,
    ActionStatusValue,
    AuthState,
)
from globus_action_provider_tools.authorization import authorize_action_access_or_404
from globus_action_provider_tools.client_factory import ClientFactory
from globus_action_provider_tools.flask import ActionProviderBlueprint
from globus_action_provider_tools.flask.config import ActionProviderConfig
from globus_action_provider_tools.flask.exceptions import ActionNotFound
from globus_action_provider_tools.flask.helpers import assign_json_provider

SCOPE = "https://auth.globus.org/scopes/00000000-0000-0000-0000-000000000001/action_all"
IDENTITY = os.environ.get("REF_IDENTITY", "11111111-1111-1111-1111-111111111111")
GROUPS_SCOPE = globus_sdk.GroupsClient.scopes.view_my_groups_and_memberships


class _Dependent:
    by_scopes = {GROUPS_SCOPE: {"access_token": "groups-token"}}


class _Groups:
    def get_my_groups(self):
        return []


class _AuthClient:
    """In place of ConfidentialAppAuthClient: the two calls the package makes, answered in memory."""

    def oauth2_token_introspect(self, token, include=None):
        return {"active": True, "sub": IDENTITY, "identity_set": [IDENTITY], "scope": SCOPE,
                "client_id": IDENTITY, "username": "bench@example.org", "exp": 2**31}

    def oauth2_get_dependent_tokens(self, token, additional_params=None):
        return _Dependent()


class StubFactory(ClientFactory):
    def make_confidential_app_auth_client(self, client_id, client_secret):
        return _AuthClient()

    def make_groups_client(self, authorizer):
        return _Groups()


description = ActionProviderDescription(
    globus_auth_scope=SCOPE,
    title="Hello (reference)",
    admin_contact="bench@example.org",
    synchronous=False,
    input_schema={
        "type": "object",
        "required": ["echo_string"],
        "additionalProperties": False,
        "properties": {"echo_string": {"type": "string"}, "sleep_time": {"type": "number"}},
    },
    api_version="1.0",
    subtitle="The reference toolkit's in-memory example shape",
    description="Echoes a string",
    keywords=["bench"],
    visible_to=["public"],
    runnable_by=["all_authenticated_users"],
    administered_by=[f"urn:globus:auth:identity:{IDENTITY}"],
)

actions: dict[str, ActionStatus] = {}

blueprint = ActionProviderBlueprint(
    name="hello",
    import_name=__name__,
    url_prefix="/hello",
    provider_description=description,
    config=ActionProviderConfig(client_factory=StubFactory()),
)


@blueprint.action_run
def run(request: ActionRequest, auth: AuthState) -> ActionStatus:
    action = ActionStatus(
        status=ActionStatusValue.ACTIVE,
        creator_id=auth.effective_identity,
        action_id=uuid.uuid4().hex,
        label=request.label,
        monitor_by=request.monitor_by,
        manage_by=request.manage_by,
        release_after=request.release_after or "P30D",
        display_status=ActionStatusValue.ACTIVE,
        details={},
    )
    actions[action.action_id] = action
    return action


@blueprint.action_status
def status(action_id: str, auth: AuthState) -> ActionStatus:
    action = actions.get(action_id)
    if action is None:
        raise ActionNotFound(f"No action {action_id}")
    authorize_action_access_or_404(action, auth)
    return action


app = Flask(__name__)
assign_json_provider(app)  # as the package's examples do: ActionStatus models as JSON
app.config["CLIENT_ID"] = str(uuid.uuid4())
app.config["CLIENT_SECRET"] = "not-a-secret"
app.register_blueprint(blueprint)


@app.get("/health")
def health():
    return {"ok": True}
