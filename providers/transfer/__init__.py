"""The bundled transfer provider: reliable, resumable, permission-checked copies between collections.

Its input is the Globus transfer action provider's (``source_endpoint_id``, ``destination_endpoint_id``,
``transfer_items`` with ``source_path``, ``destination_path``, ``recursive``; ``label``, ``sync_level``,
``verify_checksum``, ``preserve_timestamp``, ``skip_source_errors``, ``delete_destination_extra``, ``deadline``,
``filter_rules``; or the newer ``source_endpoint``, ``destination_endpoint``, ``DATA``), so that a flow definition
written for Globus works by changing the provider URL. Collections are described in
:mod:`providers.collections`; the engine in :mod:`providers.transfer.engine`, storage backends in
:mod:`providers.transfer.storage`.

At ``/run`` (before the action exists) a request is refused with a 400 naming the field when a collection is
unknown, a path leaves its collection (``..``; on local collections also a symbolic link pointing outside), or the
deadline has passed. Once running, the action first checks the caller's access to shared collections and fails
with ``PermissionDenied`` (before any byte moves) when an owner has not granted it through ``/acl``.

Settings (app config or environment):

======================================  ================================================================  ==========
``APTK_COLLECTIONS_FILE``               the collections (see :mod:`providers.collections.config`)         two local
``APTK_COLLECTION_OWNERS``              owners of the two default collections (identity UUIDs or URNs)    none
``APTK_TRANSFER_THREADS``               files copied at once per transfer                                 ``8``
``APTK_TRANSFER_CHUNK_BYTES``           bytes read and written at a time (memory: threads x chunk)        8 MiB
``APTK_TRANSFER_MAX_BYTES_PER_SECOND``  bandwidth limit per transfer (0: none)                            ``0``
``APTK_TRANSFER_PROCESSES``             worker processes for many small files disk to disk (0: none)      cores, <= 8
``APTK_TRANSFER_PROCESS_FILES``         small files from which a transfer uses them                       ``4000``
======================================  ================================================================  ==========

Checksums (``checksum_algorithm``, and an item's ``external_checksum``): MD5, ADLER32, SHA1, SHA256 (default),
SHA512 (:mod:`providers.transfer.checksums`).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Mapping

from toolkit import Action, ActionFailed, ActionProvider, BadActionRequest, ConfigurationError, HookContext, RunContext
from toolkit.settings import number, setting

from providers.collections import (
    Collection,
    CollectionError,
    Collections,
    find_collection,
    load_collections,
    served_collections,
)
from providers.collections.paths import PathOutsideCollection

from .copying import default_processes
from .engine import Settings, Transfer
from .folders import partial_token, remove_partials
from .permissions import Permissions, permission_errors
from .progress import conclude
from .request import INPUT_SCHEMA, normalize_request
from .state import Uploads
from .storage import LocalStorage, open_storage

__all__ = ["OPEN_STORAGE", "Permissions", "permission_errors", "provider", "settings_from"]

logger = logging.getLogger("providers.transfer")

#: App config key: a function ``collection -> Storage`` that replaces :func:`providers.transfer.storage.open_storage`
#: for an app's transfers (storage of its own, or a test's).
OPEN_STORAGE = "TRANSFER_OPEN_STORAGE"


class _TransferProvider(ActionProvider):
    def blueprint(self, url_prefix: str | None = None, *, name: str | None = None) -> Any:
        """The provider's routes; mounting them on an app reads its collections, so that a collections file that
        cannot be used (an owner that is no principal, say) stops start-up with the reason, not every /run."""
        bp = super().blueprint(url_prefix, name=name)
        bp.record_once(lambda state: _check_collections(state.app.config))
        return bp


def _check_collections(config: Mapping[str, Any]) -> None:
    # Without a collections file the defaults live in the data directory, which an author's own app may set
    # only later (Toolkit(app) after mounting): checked then at the first /run.
    if setting(config, "APTK_COLLECTIONS_FILE") or setting(config, "APTK_DATA_DIR"):
        load_collections(config)


provider = _TransferProvider(
    name="transfer",
    title="Transfer",
    subtitle="Copy files and folders between collections",
    description=(
        "Copies files and folders between collections (local disk, SFTP, S3): sync levels, checksum "
        "verification (MD5, ADLER32, SHA1, SHA256, SHA512), preserved timestamps, deadlines, cancellation that "
        "stops the copy, resumption after a crash, access rules on shared collections. Input as for the Globus "
        "transfer action provider."
    ),
    keywords=["transfer", "copy", "sync", "globus"],
    input_schema=INPUT_SCHEMA,
    synchronous=False,
    recovery="rerun",
    max_attempts=5,
)


def _collections(config: Mapping[str, Any]) -> Collections:
    return load_collections(config)


def _find(collections: Collections, key: str, field: str) -> Collection:
    return find_collection(collections, key, field)


def settings_from(config: Mapping[str, Any]) -> Settings:
    return Settings(
        threads=number(config, "APTK_TRANSFER_THREADS", 8, kind=int, minimum=1),
        chunk_size=number(config, "APTK_TRANSFER_CHUNK_BYTES", 8 * 1024 * 1024, kind=int, minimum=4096),
        max_bytes_per_second=number(config, "APTK_TRANSFER_MAX_BYTES_PER_SECOND", 0.0),
        processes=number(config, "APTK_TRANSFER_PROCESSES", default_processes(), kind=int),
        process_files=number(config, "APTK_TRANSFER_PROCESS_FILES", 4000, kind=int, minimum=1),
    )


def _endpoint_fields(body: Mapping[str, Any], side: str) -> str:
    return f"{side}_endpoint_id" if f"{side}_endpoint_id" in body else f"{side}_endpoint"


@provider.check
def check_request(body: dict[str, Any], ctx: HookContext) -> None:
    """Refuse at /run what can be refused before the action exists (400 naming the field)."""
    request = normalize_request(body)
    collections = served_collections(ctx.config)
    source = _find(collections, request.source_endpoint, _endpoint_fields(body, "source"))
    destination = _find(collections, request.destination_endpoint, _endpoint_fields(body, "destination"))
    if request.deadline is not None and request.deadline <= ctx.clock():
        raise BadActionRequest("deadline: is in the past.")
    for side, collection in (("source", source), ("destination", destination)):
        if collection.protocol != "file":
            continue  # remote links are checked when the transfer runs, before any byte moves
        try:
            storage = LocalStorage(collection, collection.url.split("://", 1)[1])
        except CollectionError as exc:
            raise BadActionRequest(f"{_endpoint_fields(body, side)}: {exc}.") from None
        try:
            for item in request.items:
                rel = item.src if side == "source" else item.dst
                try:
                    storage.confine(rel)
                except PathOutsideCollection as exc:
                    raise BadActionRequest(f"{item.where}.{side}_path: {getattr(item, side + '_path')!r} "
                                           f"{exc.reason}.") from None
        finally:
            storage.close()  # the folders it opened


@provider.run
def transfer(body: dict[str, Any], ctx: RunContext) -> dict[str, Any]:
    try:
        request = normalize_request(body)
        collections = _collections(ctx.config)
        settings = settings_from(ctx.config)
        source = _find(collections, request.source_endpoint, "source_endpoint_id")
        destination = _find(collections, request.destination_endpoint, "destination_endpoint_id")
    except BadActionRequest as exc:
        raise ActionFailed("BadRequest", exc.description) from None
    except ConfigurationError as exc:
        raise ActionFailed("ConfigurationError", f"The server is misconfigured: {exc}") from None
    permissions = Permissions(ctx.store.engine, source, destination, ctx.principals)
    job = Transfer(ctx, request, source, destination, settings,
                   authorize=permissions.denied if permissions.restricted else None,
                   open_storage=ctx.config.get(OPEN_STORAGE) or open_storage)
    denied = permissions.item_errors(request)
    try:
        if denied:
            first = denied[0]["error"]
            description = first if len(denied) == 1 else f"{len(denied)} items need access you do not have; {first}"
            raise ActionFailed("PermissionDenied", description, **{**job.details("FAILED"), "errors": denied})
        return job.run()
    except ActionFailed as exc:
        if exc.extra.get("DATA_TYPE") == "task":  # the task document says how it ended, as the action does
            conclude(exc.extra, "FAILED", exc.code, exc.description)
        raise


@provider.finish
def finished(action: Action, ctx: HookContext) -> dict[str, Any] | None:
    """A transfer's task document says how its action ended (status, fatal_error, completion_time), however it
    ended: its run, a cancel, its deadline or a lost process; in the same write that ends the action."""
    if action.details.get("DATA_TYPE") != "task":
        return None
    details = dict(action.details)
    if action.status.value == "FAILED" and details.get("code") in ENDED_WITHOUT_A_RUN:
        _start_removing_partials(action, ctx, once_ended=True)
    return conclude(details, action.status.value, details.get("code"), details.get("description"),
                    now=action.completion_time)


@provider.cancel
def cancelled(action: Action, ctx: HookContext) -> None:
    """Partial files of an attempt whose process died (kill -9) have no run left to remove them: go now."""
    if action.details.get("DATA_TYPE") != "task":
        return
    _start_removing_partials(action, ctx)


#: How the toolkit ends a transfer whose run may be gone (its process died on its last attempt, or its deadline
#: passed with no process running it): nothing else removes what its attempts left half-written.
ENDED_WITHOUT_A_RUN = frozenset({"WorkerLost", "DeadlineExceeded"})


def _start_removing_partials(action: Action, ctx: HookContext, once_ended: bool = False) -> None:
    threading.Thread(target=_remove_partials, args=(action, dict(ctx.config), ctx.store, once_ended), daemon=True,
                     name=f"aptk-transfer-partials-{partial_token(action.action_id)}").start()


def _remove_partials(action: Action, config: Mapping[str, Any], store: Any, once_ended: bool = False) -> None:
    """Remove the action's partial files and abort its uploads; with ``once_ended``, only once the store says
    the action ended (a finish hook runs just before that is written, and the end may not be written at all if
    another process took the action up meanwhile: its new attempt's files are then left alone)."""
    if once_ended:
        for _ in range(100):
            current = store.get(action.action_id)
            if current is None or current.status.value in ("SUCCEEDED", "FAILED"):
                break
            time.sleep(0.05)
        if current is None or current.status.value != "FAILED":
            return
    engine = store.engine
    try:
        request = normalize_request(action.body)
        destination = _find(_collections(config), request.destination_endpoint, "destination_endpoint_id")
        storage = (config.get(OPEN_STORAGE) or open_storage)(destination)
    except Exception:
        logger.exception("action %s: cannot look for its partial files", action.action_id)
        return
    try:
        removed = remove_partials(storage, request, partial_token(action.action_id), Uploads(engine, action.action_id))
        if removed:
            logger.info("action %s: removed %d partial file(s) after its cancel", action.action_id, removed)
    finally:
        storage.close()
