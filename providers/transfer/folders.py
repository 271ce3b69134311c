"""The destination's folders: what ``delete_destination_extra`` removes, and the folders made before copying."""

from __future__ import annotations

import logging
from typing import Callable

from toolkit import ActionCancelled, ActionFailed, RunContext

from providers.collections import paths

from .errors import ItemError, destination_error
from .planning import Plan, excluded_by
from .progress import Counters
from .request import TransferRequest
from .state import Uploads
from .storage import Storage, aborts_uploads
from .storage.base import temp_name

__all__ = ["abort_uploads", "delete_extra", "make_folders", "remove_partials"]

logger = logging.getLogger("providers.transfer")

Fail = Callable[[list[ItemError]], ActionFailed]


def make_folders(dst: Storage, plan: Plan, check: Callable[[], None], fail: Fail) -> None:
    """Every destination folder, shallowest first, one level at a time relative to the one before (the cost is
    linear in the depth); ``check`` stops it between levels (cancel, deadline)."""
    made: set[str] = set()
    for directory in sorted(plan.dirs, key=lambda d: (d.count("/"), d)):
        if not directory or directory in made:
            continue
        try:
            dst.makedirs(directory, check=check)
        except (ActionCancelled, ActionFailed):
            raise
        except Exception as exc:
            raise fail([destination_error(exc, None, directory)]) from None
        made.add(directory)


def delete_extra(ctx: RunContext, request: TransferRequest, dst: Storage, plan: Plan, counters: Counters,
                 check: Callable[[], None], fail: Fail) -> None:
    """Delete what the destination has under each recursive item and the source does not (files the source
    could not read are kept: they are not gone); deepest first, so that a folder is empty when its turn comes."""
    keep_files = {t.dst for t in plan.tasks}
    keep_files.update(e.destination for e in plan.skipped if e.destination is not None)
    keep_dirs = set(plan.dirs)
    prune = excluded_by(request)
    for item in request.items:
        if not item.recursive:
            continue
        try:
            stat = dst.stat(item.dst)
        except Exception as exc:
            raise fail([destination_error(exc, item.src, item.dst)]) from None
        if stat is None or stat.kind != "dir":
            continue
        extra: list[tuple[str, str]] = []
        for entry in dst.walk(item.dst, follow_links=False, prune=prune, check=check):
            if entry.stat is None:
                raise fail([destination_error(entry.error or OSError("unreadable"), None, entry.rel)])
            kind = entry.stat.kind
            wanted = keep_dirs if kind == "dir" else keep_files
            if entry.rel not in wanted:
                extra.append((entry.rel, kind))
        for rel, kind in sorted(extra, key=lambda e: e[0].count("/"), reverse=True):
            ctx.check()
            try:
                dst.remove(rel, kind)
            except FileNotFoundError:
                continue
            except Exception as exc:
                raise fail([destination_error(exc, None, rel)]) from None
            if kind != "dir":
                counters.add(files_deleted=1)
        if extra:
            ctx.log(f"Deleted {len(extra)} item(s) under {item.destination_path} not in the source.")


def abort_uploads(dst: Storage, uploads: Uploads) -> int:
    """Abort the multipart uploads recorded for the action (begun by an attempt that died); how many."""
    aborted = 0
    for rel, upload_id in uploads.load():
        try:
            if aborts_uploads(dst):
                dst.abort_upload(rel, upload_id)
                aborted += 1
            uploads.ended(upload_id)
        except Exception:
            logger.exception("aborting the upload of %s failed", rel)
    return aborted


def partial_token(action_id: str) -> str:
    """The part of a transfer's partial-file names that says which action wrote them: 12 random hex digits of its
    id. Ids of version 7 begin with the time (actions started in the same millisecond share it), so theirs are
    the last 12; earlier (version 4) ids keep their first 12, under which their partial files were written."""
    return action_id[-12:] if action_id[12:13] == "7" else action_id[:12]


def remove_partials(dst: Storage, request: TransferRequest, token: str, uploads: Uploads | None = None) -> int:
    """Remove the partial files (``.<name>.aptk-<token>.part``) this transfer's attempts left in its destination,
    a killed one's too, and abort the multipart uploads recorded in ``uploads``; how many. Best effort: what
    cannot be listed or removed is logged and left."""
    aborted = 0 if uploads is None else abort_uploads(dst, uploads)
    suffix = temp_name("", token)[1:]  # ".aptk-<token>.part"
    found: list[str] = []
    for item in request.items:
        try:
            if item.recursive:
                stat = dst.stat(item.dst)
                if stat is None or stat.kind != "dir":
                    continue
                for entry in dst.walk(item.dst, follow_links=False):
                    name = paths.name(entry.rel)
                    if entry.stat is not None and entry.stat.kind == "file" and name.startswith(".") \
                            and name.endswith(suffix):
                        found.append(entry.rel)
            else:
                candidates = [paths.join(paths.parent(item.dst), temp_name(paths.name(item.dst), token)),
                              paths.join(item.dst, temp_name(paths.name(item.src), token))]
                for rel in candidates:
                    stat = dst.stat(rel)
                    if stat is not None and stat.kind == "file":
                        found.append(rel)
        except Exception as exc:  # a folder in the way, a path that is not one: nothing of ours there
            logger.debug("looking for partial files under %s: %s", item.dst, exc)
    removed = 0
    for rel in found:
        try:
            dst.remove(rel, "file")
            removed += 1
        except FileNotFoundError:
            pass
        except Exception:
            logger.exception("removing the partial file %s failed", rel)
    return removed + aborted
