"""Check, cancel and resume hooks: the context they get, the earlier (..., identity) form, and their types."""

import textwrap
import uuid
import warnings
from pathlib import Path

import pytest
import sqlalchemy as sa

from toolkit import ActionInactive, ActionProvider, ConfigurationError, HookContext, Identity, get_toolkit
from toolkit.settings import setting
from toolkit.testing import provider_client

ROOT = Path(__file__).resolve().parents[2]
CALLER = str(uuid.uuid4())


class Recorder:
    """A provider whose hooks write down what their context held when they ran."""

    def __init__(self) -> None:
        self.provider = ActionProvider(title="Hooked", input_schema={"type": "object"})
        self.seen: list[dict] = []

        @self.provider.run
        def run(body, ctx):
            if body.get("pause") and not ctx.resumed:
                raise ActionInactive("Wait", "Resume me.")
            ctx.sleep(body.get("sleep", 0))
            return {}

        @self.provider.check
        def check(body, ctx):
            self.record("check", body, ctx)

        @self.provider.cancel
        def cancel(action, ctx):
            self.record("cancel", action.action_id, ctx)

        @self.provider.resume
        def resume(action, ctx):
            self.record("resume", action.action_id, ctx)

    def record(self, kind, subject, ctx) -> None:
        with ctx.store.engine.connect() as conn:  # the toolkit's own database, where its actions are
            actions = conn.execute(sa.text("SELECT count(*) FROM aptk_actions")).scalar()
        self.seen.append({"kind": kind, "subject": subject, "context": type(ctx), "caller": ctx.identity.id,
                          "setting": setting(ctx.config, "APTK_TEST_HOOK_SETTING"), "now": ctx.clock(),
                          "actions": actions})


def test_check_cancel_and_resume_hooks_get_the_caller_the_settings_the_database_and_the_clock(tmp_path, clock):
    hooked = Recorder()
    caller = f"urn:globus:auth:identity:{CALLER}"
    with provider_client(hooked.provider, tmp_path, identity=CALLER, clock=clock,
                         config={"APTK_TEST_HOOK_SETTING": "from app.config"}) as client:
        paused = client.run({"pause": True})["action_id"]
        client.wait(paused, until=["INACTIVE"], timeout=5)
        clock.advance(10)
        client.resume(paused)
        clock.advance(10)
        running = client.run({"sleep": 60})["action_id"]
        clock.advance(10)
        client.cancel(running)
    common = {"context": HookContext, "caller": caller, "setting": "from app.config"}
    start = 1_800_000_000.0
    assert hooked.seen == [
        {**common, "kind": "check", "subject": {"pause": True}, "now": start, "actions": 0},
        {**common, "kind": "resume", "subject": paused, "now": start + 10, "actions": 1},
        {**common, "kind": "check", "subject": {"sleep": 60}, "now": start + 20, "actions": 1},
        {**common, "kind": "cancel", "subject": running, "now": start + 30, "actions": 2},
    ]


def test_the_hook_context_is_the_caller_of_each_request(tmp_path):
    hooked = Recorder()
    with provider_client(hooked.provider, tmp_path, identity=CALLER) as client:
        client.run({})
        other = str(uuid.uuid4())
        client.session.headers["Authorization"] = "Bearer " + client.authority.token(
            other, scopes=[hooked.provider.globus_auth_scope])
        client.run({})
    assert [seen["caller"] for seen in hooked.seen] == [f"urn:globus:auth:identity:{CALLER}",
                                                        f"urn:globus:auth:identity:{other}"]


def test_a_hook_of_the_earlier_form_still_gets_the_identity_with_a_deprecation_warning(tmp_path):
    provider = ActionProvider(title="Old", input_schema={"type": "object"}, synchronous=True)
    provider.run(lambda body, ctx: {})
    received = []

    def check(body, identity):
        received.append(identity)

    with pytest.warns(DeprecationWarning, match=r"check hook .*check of <ActionProvider 'old'> takes \(\.\.\., "
                                                r"identity\).*ctx\.identity"):
        assert provider.check(check) is check
    with provider_client(provider, tmp_path, identity=CALLER) as client:
        assert client.run({})["status"] == "SUCCEEDED"
    assert len(received) == 1
    assert isinstance(received[0], Identity)
    assert received[0].id == f"urn:globus:auth:identity:{CALLER}"


def test_a_hook_of_the_current_form_registers_without_a_warning():
    provider = ActionProvider(title="New", input_schema={"type": "object"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        provider.check(lambda body, ctx: None)
        provider.cancel(lambda action, ctx: None)
        provider.resume(lambda action, ctx: None)


def test_the_runtime_has_the_verifier_it_was_built_with(tmp_path):
    from toolkit.executor import ThreadExecutor
    from toolkit.lifecycle import Runtime
    from toolkit.store import SQLStore
    from toolkit.testing import TokenAuthority

    verifier = TokenAuthority().verifier
    store, executor = SQLStore(f"sqlite:///{tmp_path / 'a.db'}"), ThreadExecutor(1)
    assert Runtime(store, executor, verifier=verifier).verifier is verifier
    with pytest.raises(TypeError, match="verifier"):
        Runtime(store, executor)
    executor.shutdown(wait=False)
    with provider_client(Recorder().provider, tmp_path, verifier=verifier) as client:
        state = get_toolkit(client.app)
        assert state.runtime.verifier is verifier is state.verifier


def test_a_verifier_without_dependent_tokens_says_which_to_use():
    from toolkit.testing import TokenAuthority

    with pytest.raises(ConfigurationError, match=r"DevTokenVerifier\) cannot issue dependent tokens; use "
                                                 r"APTK_AUTH=globus"):
        TokenAuthority().verifier.dependent_tokens("a-token")


def test_the_decorators_keep_the_type_of_the_function_they_register(tmp_path):
    from mypy import api

    snippet = tmp_path / "typed_hooks.py"
    snippet.write_text(textwrap.dedent("""
        from typing import Any
        from toolkit import Action, ActionProvider, HookContext, RunContext

        p = ActionProvider(title="t", input_schema={})

        @p.run
        def run(body: dict[str, Any], ctx: RunContext) -> dict[str, int]:
            return {"n": 1}

        @p.check
        def check(body: dict[str, Any], ctx: HookContext) -> None: ...

        @p.cancel
        def cancel(action: Action, ctx: HookContext) -> None: ...

        @p.resume
        def resume(action: Action, ctx: HookContext) -> bool:
            return True

        @p.finish
        def finish(action: Action, ctx: HookContext) -> dict[str, Any] | None:
            return None

        reveal_type(run)
        reveal_type(check)
        reveal_type(cancel)
        reveal_type(resume)
        reveal_type(finish)

        @p.cancel
        def wrong(action: Action, ctx: RunContext) -> None: ...

        @p.finish
        def not_details(action: Action, ctx: HookContext) -> str:
            return ""
    """))
    out, err, status = api.run(["--config-file", str(ROOT / "pyproject.toml"), "--cache-dir",
                                str(ROOT / ".mypy_cache"), "--no-error-summary", str(snippet)])
    lines = [line.split(": ", 1)[1] for line in out.splitlines()]
    assert lines == [
        'note: Revealed type is "def (body: dict[str, Any], ctx: toolkit.lifecycle.RunContext) -> dict[str, int]"',
        'note: Revealed type is "def (body: dict[str, Any], ctx: toolkit.lifecycle.HookContext)"',
        'note: Revealed type is "def (action: toolkit.documents.Action, ctx: toolkit.lifecycle.HookContext)"',
        'note: Revealed type is "def (action: toolkit.documents.Action, ctx: toolkit.lifecycle.HookContext) -> bool"',
        'note: Revealed type is "def (action: toolkit.documents.Action, ctx: toolkit.lifecycle.HookContext) -> '
        'dict[str, Any] | None"',
        'error: Value of type variable "CancelCallbackT" of "cancel" of "ActionProvider" cannot be "Callable[[Action, '
        'RunContext], None]"  [type-var]',
        'error: Value of type variable "FinishCallbackT" of "finish" of "ActionProvider" cannot be "Callable[[Action, '
        'HookContext], str]"  [type-var]',
    ], err
    assert status == 1


def test_the_readme_hook_example_refuses_the_callers_the_setting_names(tmp_path):
    """The hook example of the README's section 1, on the greeter above it, as written."""
    import re

    from toolkit.client import ClientError

    readme = (ROOT / "README.md").read_text()
    greeter = re.search(r"```python\n(# greeter\.py\n.*?)```", readme, re.S).group(1)
    hooks = readme[readme.index("Optional hooks:"):]
    example = re.search(r"```python\n(.*?)```", hooks, re.S).group(1)
    namespace: dict = {}
    exec(greeter.split("\napp = Flask")[0] + "\n" + example, namespace)  # the provider, not its app
    banned = f"urn:globus:auth:identity:{CALLER}"
    with provider_client(namespace["greeter"], tmp_path, identity=CALLER,
                         config={"APTK_GREETER_BANNED": f"x,{banned}"}) as client:
        with pytest.raises(ClientError) as refused:
            client.run({"name": "Ada"})
        assert (refused.value.status, refused.value.description) == (403, f"{banned} may not use the greeter.")
        assert list(client.actions()) == []
        client.session.headers["Authorization"] = "Bearer " + client.authority.token(
            str(uuid.uuid4()), scopes=[namespace["greeter"].globus_auth_scope])
        assert client.run({"name": "Ada"}, wait=True)["details"] == {"greeting": "Hello, Ada"}
