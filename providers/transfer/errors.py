"""What can go wrong with one item of a transfer, in the words of a Globus transfer task's ``errors``."""

from __future__ import annotations

import errno
from typing import Any, Callable

from toolkit import ActionCancelled, ActionFailed

from providers.collections import paths
from providers.collections.paths import PathOutsideCollection

__all__ = ["ItemError", "Mismatch", "Stopped", "destination_error", "failure", "on_destination", "on_source",
           "source_error"]

MAX_ERRORS_SHOWN = 100


class Stopped(Exception):
    """A worker noticed that the transfer must stop (cancel, deadline, another failure)."""


class Mismatch(Exception):
    """What was written does not have the source's checksum."""


class ItemError(Exception):
    """One file or folder could not be transferred."""

    def __init__(self, code: str, description: str, source: str | None, destination: str | None,
                 *, skippable: bool = False) -> None:
        super().__init__(description)
        self.code = code
        self.description = description
        self.source = source
        self.destination = destination
        self.skippable = skippable

    def document(self) -> dict[str, Any]:
        doc = {}
        if self.source is not None:
            doc["source_path"] = paths.display(self.source)
        if self.destination is not None:
            doc["destination_path"] = paths.display(self.destination)
        doc["code"] = self.code
        doc["error"] = self.description
        return doc


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def outside(exc: PathOutsideCollection, task_src: str | None, task_dst: str | None) -> ItemError:
    return ItemError(exc.code, f"{exc.path} {exc.reason}", task_src, task_dst)


def source_error(exc: BaseException, task_src: str | None, task_dst: str | None) -> ItemError:
    if isinstance(exc, ItemError):
        return exc
    if isinstance(exc, PathOutsideCollection):
        return outside(exc, task_src, task_dst)
    if isinstance(exc, FileNotFoundError) or getattr(exc, "errno", None) == errno.ENOENT:
        return ItemError("SourceNotFound", "No such file or directory on the source", task_src, task_dst,
                         skippable=True)
    if isinstance(exc, PermissionError) or getattr(exc, "errno", None) in (errno.EACCES, errno.EPERM):
        return ItemError("SourcePermissionDenied", f"The source cannot be read: {_describe(exc)}", task_src,
                         task_dst, skippable=True)
    return ItemError("SourceError", f"Reading the source failed: {_describe(exc)}", task_src, task_dst,
                     skippable=isinstance(exc, OSError))


def destination_error(exc: BaseException, task_src: str | None, task_dst: str | None) -> ItemError:
    if isinstance(exc, ItemError):
        return exc
    if isinstance(exc, PathOutsideCollection):
        return outside(exc, task_src, task_dst)
    number = getattr(exc, "errno", None)
    text = _describe(exc)
    if number in (errno.ENOSPC, errno.EDQUOT) or "no space" in text.lower() or "quota" in text.lower():
        return ItemError("DestinationFull", f"The destination is full: {text}", task_src, task_dst)
    if number == errno.EROFS or "read-only" in text.lower():
        return ItemError("DestinationReadOnly", f"The destination is read-only: {text}", task_src, task_dst)
    if isinstance(exc, PermissionError) or number in (errno.EACCES, errno.EPERM):
        return ItemError("DestinationPermissionDenied", f"The destination cannot be written: {text}", task_src,
                         task_dst)
    if isinstance(exc, (IsADirectoryError, NotADirectoryError)) or number in (errno.EISDIR, errno.ENOTDIR):
        return ItemError("DestinationTypeConflict", f"The destination is in the way: {text}", task_src, task_dst)
    return ItemError("DestinationError", f"Writing the destination failed: {text}", task_src, task_dst)


class Side:
    """Runs a storage call, turning its errors into an :class:`ItemError` of one side."""

    def __init__(self, make: Callable[[BaseException, str | None, str | None], ItemError]) -> None:
        self.make = make

    def __call__(self, fn: Callable[..., Any], task_src: str | None, task_dst: str | None, *args: Any) -> Any:
        try:
            return fn(*args)
        except (Stopped, ActionCancelled):
            raise
        except Exception as exc:
            raise self.make(exc, task_src, task_dst) from exc


on_source = Side(source_error)
on_destination = Side(destination_error)


def failure(errors: list[ItemError], details: dict[str, Any], code: str | None = None,
            description: str | None = None) -> ActionFailed:
    """The action's failure for ``errors`` (the first hundred listed in ``details``)."""
    if code is None:
        codes = {e.code for e in errors}
        code = errors[0].code if len(codes) == 1 else "TransferFailed"
    if description is None:
        first = errors[0]
        where = first.source if first.source is not None else first.destination
        description = f"{len(errors)} item(s) failed; the first: {paths.display(where or '')}: {first.description}"
    if errors:
        details["errors"] = [e.document() for e in errors[:MAX_ERRORS_SHOWN]]
    if len(errors) > MAX_ERRORS_SHOWN:
        details["errors_count"] = len(errors)
    return ActionFailed(code, description, **details)
