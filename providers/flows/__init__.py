"""The bundled flows provider: Globus Flows definitions deployed here, each served as an action provider.

A flow is deployed through ``POST /flows`` (or from a file of ``APTK_FLOWS_DIR``) with a title, a definition, an
input schema and who may see, run and administer it (:mod:`.deployments`, :mod:`.api`). Each deployed flow is
then a provider of its own at ``/flows/<flow_id>/``: a variant of this provider
(:meth:`toolkit.ActionProvider.variants`), with the flow's title, input schema and principals. A run's work is the
engine's (:mod:`.engine`); ``GET /flows/<flow_id>/start`` and ``/flows/<flow_id>/runs/<action_id>`` are pages for
people (:mod:`.pages`).
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from typing import Any

from flask import has_request_context, request

from toolkit import ActionProvider, BackgroundContext, HookContext, RunContext, VariantContext, get_toolkit
from toolkit.documents import PUBLIC
from toolkit.settings import number, register_settings, setting

from . import deployments
from .deployments import DeployedFlow

__all__ = ["provider", "DeployedFlow"]

SETTINGS = ("APTK_FLOWS_DIR", "APTK_FLOWS_DIR_INTERVAL", "APTK_FLOWS_PURGE_INTERVAL")
register_settings(*SETTINGS)
DEFAULT_DIR_INTERVAL = 2.0
"""Seconds between two looks at APTK_FLOWS_DIR for changed files."""
DEFAULT_PURGE_INTERVAL = 300.0
"""Seconds between two sweeps deleting the run records of released and expired runs."""

logger = logging.getLogger("providers.flows")

provider = ActionProvider(
    title="Flows",
    name="flows",
    subtitle="Globus Flows definitions, each served as an action provider",
    description="Deploy flows at /flows; run a deployed flow at /flows/<flow_id>/.",
    keywords=["flows", "automation"],
    input_schema={"type": "object"},
    visible_to=[PUBLIC],
    runnable_by=[],  # the provider itself runs nothing: its flows do
    recovery="rerun",
    max_attempts=100,  # a run continues where it was after a crash: the engine stores its position
)


@provider.run
def _no_flow(body: dict[str, Any], ctx: RunContext) -> dict[str, Any]:  # pragma: no cover - never runnable
    raise AssertionError("the flows provider runs only its flows")


def run_flow(flow: DeployedFlow, body: dict[str, Any], ctx: RunContext) -> dict[str, Any]:
    """A run's work: the engine's. ActionUrls at the address the run was started at (or at ``APTK_PUBLIC_URL``)
    are served in-process."""
    from .engine import execute

    return execute(flow, body, ctx, origin=ctx.origin)


@provider.background
def purge_run_records(ctx: BackgroundContext) -> None:
    """Every ``APTK_FLOWS_PURGE_INTERVAL`` seconds, delete the stored records of runs whose action is gone
    (released, or removed by expiry), in batches of :data:`toolkit.store.PURGE_BATCH` per transaction."""
    from . import engine_store

    def purge() -> None:
        gone = engine_store.purge_released(ctx.store.engine, stopping=ctx.stopping)
        if gone:
            logger.info("deleted the records of %d released or expired flow runs", gone)

    interval = number(ctx.config, "APTK_FLOWS_PURGE_INTERVAL", DEFAULT_PURGE_INTERVAL, positive=True)
    ctx.every(interval, purge, "purging the records of released flow runs")


def _origin() -> str | None:
    return request.root_url.rstrip("/") if has_request_context() else None


class _Variants:
    """Per store: each flow's variant, made again only when its version changes; and the directory's state."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.made: dict[str, tuple[tuple[int, float], ActionProvider]] = {}
        self.dir_signature: Any = None
        self.dir_checked = 0.0


_per_store: weakref.WeakKeyDictionary[Any, _Variants] = weakref.WeakKeyDictionary()


def _state(store: Any) -> _Variants:
    state = _per_store.get(store)
    if state is None:
        state = _per_store.setdefault(store, _Variants())
    return state


def make_variant(flow: DeployedFlow) -> ActionProvider:
    """The provider serving ``flow`` at ``/flows/<flow.id>/``."""
    administrators = sorted(flow.administrators())
    options: dict[str, Any] = {
        "title": flow.title, "subtitle": flow.subtitle, "description": flow.description,
        "keywords": list(flow.keywords), "input_schema": flow.input_schema,
        "visible_to": [PUBLIC] if PUBLIC in flow.visible_to else sorted(flow.viewers()),
        "runnable_by": list(dict.fromkeys([*flow.runnable_by, *administrators])),
        "administered_by": administrators,
    }
    variant = provider.variant(flow.id, **options)

    @variant.run
    def run(body: dict[str, Any], ctx: RunContext) -> dict[str, Any]:
        return run_flow(flow, body, ctx)

    @variant.cancel
    def cancel(action: Any, ctx: HookContext) -> None:
        from .engine import cancel_children

        cancel_children(action, ctx, origin=_origin())

    @variant.resume
    def resume(action: Any, ctx: HookContext) -> None:
        from .engine import resume_children

        resume_children(action, ctx, origin=_origin())

    return variant


def sync_directory(config: Any, store: Any, now: float, *, force: bool = False) -> None:
    """Bring the flows of ``APTK_FLOWS_DIR`` up to date if its files changed (at most every few seconds)."""
    from pathlib import Path

    directory = setting(config, "APTK_FLOWS_DIR")
    if not directory:
        return
    state = _state(store)
    interval = number(config, "APTK_FLOWS_DIR_INTERVAL", DEFAULT_DIR_INTERVAL)
    if not force and time.monotonic() - state.dir_checked < interval:
        return
    state.dir_checked = time.monotonic()
    try:
        signature = sorted((e.name, e.stat().st_mtime_ns, e.stat().st_size) for e in Path(directory).iterdir())
    except OSError:
        signature = None
    if not force and signature == state.dir_signature:
        return
    if force:
        deployments.sync_directory(store.engine, directory, now)
    else:
        try:
            deployments.sync_directory(store.engine, directory, now)
        except Exception as exc:  # a file broken while serving: keep what was deployed, say why
            deployments.logger.error("APTK_FLOWS_DIR not re-read: %s", exc)
            return
    state.dir_signature = signature


@provider.variants
def _flow_variant(key: str, ctx: VariantContext) -> ActionProvider | None:
    sync_directory(ctx.config, ctx.store, ctx.clock())
    engine = ctx.store.engine
    version = deployments.version_of(engine, key)
    state = _state(ctx.store)
    if version is None:
        state.made.pop(key, None)
        return None
    made = state.made.get(key)
    if made is not None and made[0] == version:
        return made[1]
    flow = deployments.get(engine, key)
    if flow is None:
        return None
    variant = make_variant(flow)
    state.made[key] = ((flow.version, flow.updated), variant)
    return variant


from .api import api  # noqa: E402  (the blueprint needs the provider above)



@api.record
def _load_directory(state: Any) -> None:
    """Deploy the flows of ``APTK_FLOWS_DIR`` as the app is set up: a broken file stops start-up, naming it."""
    runtime = get_toolkit(state.app).runtime
    number(state.app.config, "APTK_FLOWS_DIR_INTERVAL", DEFAULT_DIR_INTERVAL)
    number(state.app.config, "APTK_FLOWS_PURGE_INTERVAL", DEFAULT_PURGE_INTERVAL, positive=True)
    sync_directory(state.app.config, runtime.store, runtime.clock(), force=True)


provider.add_blueprint(api)

from .pages import pages  # noqa: E402

provider.add_blueprint(pages)
