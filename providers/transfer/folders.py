"""The destination's folders: what ``delete_destination_extra`` removes, and the folders made before copying."""

from __future__ import annotations

from typing import Callable

from toolkit import ActionCancelled, ActionFailed, RunContext

from .errors import ItemError, destination_error
from .planning import Plan, excluded_by
from .progress import Counters
from .request import TransferRequest
from .storage import Storage

__all__ = ["delete_extra", "make_folders"]

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
