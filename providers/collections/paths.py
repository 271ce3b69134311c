"""Paths inside a collection.

Every path a request names is taken relative to its collection's root, the way Globus paths are: ``/data/a.txt``,
``data/a.txt``, ``/~/data/a.txt`` and ``~/data/a.txt`` all name ``<root>/data/a.txt``. A path is normalized
lexically (``.`` and empty parts dropped, ``..`` applied) into a *relative* POSIX path (``""`` is the root) and
refused if ``..`` would climb above the root or if it holds a NUL byte. Symbolic links are the storage's
business: see :meth:`providers.transfer.storage.Storage.confine`.
"""

from __future__ import annotations

import posixpath


class PathOutsideCollection(Exception):
    """A path that leaves its collection root (``..``, a symbolic link pointing outside) or is not a path."""

    code = "PathOutsideCollection"

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path!r} {reason}")
        self.path = path
        self.reason = reason


def normalize(path: str) -> str:
    """``path`` relative to the collection root, without ``.``/``..``/empty parts; ``""`` for the root."""
    if not isinstance(path, str):
        raise PathOutsideCollection(str(path), "is not a string")
    if "\x00" in path:
        raise PathOutsideCollection(path, "contains a NUL byte")
    text = path
    if text.startswith("/~"):
        text = text[2:]
    elif text.startswith("~"):
        text = text[1:]
    if text and not text.startswith("/") and path.startswith(("~", "/~")):
        # "~user/..." is another user's home: there is no such thing inside a collection.
        raise PathOutsideCollection(path, "names another user's home directory, which is outside the collection")
    parts: list[str] = []
    for part in text.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                raise PathOutsideCollection(path, "escapes the collection root ('..' above the root)")
            parts.pop()
            continue
        parts.append(part)
    return "/".join(parts)


def display(rel: str) -> str:
    """The path as users write it: ``/`` plus the relative path."""
    return "/" + rel


def join(rel: str, *more: str) -> str:
    """Join relative paths (``""`` is the root)."""
    if len(more) == 1:  # the common case, without a generator
        other = more[0]
        return f"{rel}/{other}" if rel and other else rel or other
    return "/".join(p for p in (rel, *more) if p)


def parent(rel: str) -> str:
    return posixpath.dirname(rel)


def name(rel: str) -> str:
    return posixpath.basename(rel)


def is_within(rel: str, ancestor: str) -> bool:
    """True if ``rel`` is ``ancestor`` or lies beneath it."""
    return ancestor == "" or rel == ancestor or rel.startswith(ancestor + "/")


def rule_key(rel: str) -> str:
    """The form access rules are stored and matched in: ``/a/b/`` (``/`` for the root)."""
    return "/" + rel + "/" if rel else "/"
