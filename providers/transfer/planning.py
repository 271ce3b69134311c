"""Planning a transfer, before any byte moves: every file to copy and every folder to make.

Each item is looked at (``stat``), recursive ones walked (``filter_rules`` applied), paths that lead outside a
collection refused, missing or unreadable sources collected, and access rules checked on where each file really
is (links resolved). Any error that is not a skippable source error fails the action here.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from typing import Callable

from providers.collections import paths
from providers.collections.paths import PathOutsideCollection

from .errors import ItemError, destination_error, outside, source_error
from .request import Item, TransferRequest
from .storage import FileStat, Storage, local_disk

__all__ = ["FileTask", "Plan", "Planner", "excluded_by"]

Authorize = Callable[[str, str], "str | None"]


@dataclasses.dataclass(frozen=True, slots=True)  # slots: one object each (less for the GC)
class FileTask:
    item: Item
    src: str
    dst: str
    size: int
    mtime: float | None


@dataclasses.dataclass
class Plan:
    """What planning found: the files to copy, the destination folders, the source folders counted, and the
    errors (``fatal`` fail the action; ``skipped`` are reported when ``skip_source_errors`` allows)."""

    tasks: list[FileTask] = dataclasses.field(default_factory=list)
    dirs: set[str] = dataclasses.field(default_factory=set)
    source_dirs: int = 0
    fatal: list[ItemError] = dataclasses.field(default_factory=list)
    skipped: list[ItemError] = dataclasses.field(default_factory=list)


def excluded_by(request: TransferRequest) -> Callable[[str, FileStat], bool] | None:
    """The ``prune`` a walk gets from ``filter_rules`` (the first rule matching a name decides), or None."""
    if not request.filter_rules:
        return None

    def excluded(rel: str, stat: FileStat) -> bool:
        name = paths.name(rel)
        for rule in request.filter_rules:
            if rule.type is not None and rule.type != ("dir" if stat.kind == "dir" else "file"):
                continue
            if fnmatch.fnmatchcase(name, rule.name):
                return rule.method == "exclude"
        return False

    return excluded


class Planner:
    """Plans one transfer; ``check`` is called between items and entries (cancel, deadline)."""

    def __init__(self, request: TransferRequest, src: Storage, dst: Storage, check: Callable[[], None],
                 authorize: Authorize | None) -> None:
        self.request = request
        self.src = src
        self.dst = dst
        self.check = check
        self.authorize = authorize
        self.errors: list[ItemError] = []
        self.plan = Plan()
        self._by_destination: dict[str, FileTask] = {}

    def run(self) -> Plan:
        for item in self.request.items:
            self.check()
            self._item(item)
        self._confine_destinations()
        if self.authorize is not None and not self.errors:
            self.errors.extend(self._unauthorized(self.authorize))
        if self.request.skip_source_errors:
            self.plan.skipped = [e for e in self.errors if e.skippable]
            self.plan.fatal = [e for e in self.errors if not e.skippable]
        else:
            self.plan.fatal = list(self.errors)
        return self.plan

    def _add(self, task: FileTask) -> None:
        other = self._by_destination.get(task.dst)
        if other is not None:
            self.errors.append(ItemError("DuplicateDestination", f"{paths.display(other.src)} and "
                                         f"{paths.display(task.src)} would both be written there", task.src, task.dst))
            return
        self._by_destination[task.dst] = task
        self.plan.tasks.append(task)

    def _item(self, item: Item) -> None:
        try:
            stat = self.src.stat(item.src)
        except Exception as exc:
            self.errors.append(source_error(exc, item.src, item.dst))
            return
        if stat is None:
            self.errors.append(ItemError("SourceNotFound", "No such file or directory on the source", item.src,
                                         item.dst, skippable=True))
        elif stat.kind == "dir":
            if not item.recursive:
                self.errors.append(ItemError("SourceIsDirectory",
                                             f"{item.source_path} is a folder: set recursive: true to copy it",
                                             item.src, item.dst))
                return
            self._folder(item)
        elif stat.kind == "file":
            target = item.dst
            if item.destination_path.endswith("/") or not target:
                target = paths.join(target, paths.name(item.src))
            if paths.parent(target):
                self.plan.dirs.add(paths.parent(target))
            self._add(FileTask(item, item.src, target, stat.size, stat.mtime))
        else:
            self.errors.append(ItemError("SourceNotRegular", "Not a regular file or folder", item.src, item.dst,
                                         skippable=True))

    def _folder(self, item: Item) -> None:
        self.plan.dirs.add(item.dst)
        self.plan.source_dirs += 1
        cut = len(item.src) + 1 if item.src else 0
        prefix = f"{item.dst}/" if item.dst else ""
        by_destination, tasks = self._by_destination, self.plan.tasks
        prune = excluded_by(self.request)
        walk_runs = getattr(self.src, "walk_runs", None) if prune is None else None
        for entry in (walk_runs(item.src, check=self.check) if walk_runs is not None
                      else self.src.walk(item.src, prune=prune, check=self.check)):
            if type(entry) is list:  # a run of regular files (walk_runs): one object each, the task
                for rel, size, mtime in entry:
                    target = prefix + rel[cut:]
                    if target in by_destination:
                        self._add(FileTask(item, rel, target, size, mtime))  # says it is a duplicate
                        continue
                    task = by_destination[target] = FileTask(item, rel, target, size, mtime)
                    tasks.append(task)
                continue
            under = entry.rel[cut:]
            target = prefix + under if under else item.dst  # the folder itself: an error reading it
            stat = entry.stat
            if stat is not None and stat.kind == "file" and target not in by_destination:
                task = by_destination[target] = FileTask(item, entry.rel, target, stat.size, stat.mtime)
                tasks.append(task)  # _add, inlined for the common case
                continue
            if entry.stat is None:
                self.errors.append(source_error(entry.error or OSError("unreadable"), entry.rel, target))
            elif entry.stat.kind == "dir":
                self.plan.dirs.add(target)
                self.plan.source_dirs += 1
            elif entry.stat.kind == "file":
                self._add(FileTask(item, entry.rel, target, entry.stat.size, entry.stat.mtime))
            else:
                self.errors.append(ItemError("SourceNotRegular", "Not a regular file or folder; not copied",
                                             entry.rel, target, skippable=True))

    def _confine_destinations(self) -> None:
        """Where things will be written must stay inside the destination too: every folder, and on local disk
        (where it costs no round trip) every file."""
        for directory in sorted(self.plan.dirs):
            self.check()
            try:
                self.dst.confine(directory)
            except PathOutsideCollection as exc:
                self.errors.append(destination_error(exc, None, directory))
        if local_disk(self.dst):
            by_destination = self._by_destination
            for rel, refused in self.dst.confine_files([task.dst for task in self.plan.tasks], self.check):
                self.errors.append(destination_error(refused, by_destination[rel].src, rel))

    def _unauthorized(self, authorize: Authorize) -> list[ItemError]:
        """Access rules, on where each file really is: a link must not lead to what a rule does not cover."""
        errors: list[ItemError] = []
        checked: dict[tuple[str, str], str | None] = {}

        def check(side: str, storage: Storage, rel: str, task_src: str | None, task_dst: str) -> None:
            try:
                real = storage.resolve(rel)
            except PathOutsideCollection as exc:
                errors.append(outside(exc, task_src, task_dst))
                return
            key = (side, real)
            if key not in checked:
                checked[key] = authorize(side, real)
            why = checked[key]
            if why is not None:
                errors.append(ItemError("PermissionDenied", why, task_src, task_dst))

        for task in self.plan.tasks:
            self.check()
            check("source", self.src, task.src, task.src, task.dst)
            check("destination", self.dst, task.dst, task.src, task.dst)
        for directory in sorted(self.plan.dirs):
            self.check()
            check("destination", self.dst, directory, None, directory)
        return errors
