"""Path confinement of each storage backend, tested on the backend itself (local disk, SFTP and S3 servers).

Every backend must refuse, in every operation, a path that is not a normalized path inside its collection (``..``,
an absolute path, a NUL byte, ``.`` or empty parts) before touching its filesystem; and, where the filesystem has
symbolic links, a path that leads outside the root through one.
"""

from __future__ import annotations

import dataclasses
import shutil
import uuid
from pathlib import Path
from typing import Any, Callable

import pytest

from providers.collections import Collection
from providers.collections.paths import PathOutsideCollection
from providers.transfer.storage import (
    BACKENDS,
    FsspecStorage,
    LocalDisk,
    LocalStorage,
    SettableTimes,
    SFTPStorage,
    Storage,
    capable,
    open_storage,
    settable_times,
)

BAD_PATHS = ["..", "../x", "a/../../x", "a/..", "/aptk-no-such-folder/x.txt", "/", "a//b", "./a", "a/.", "a\x00b", "\x00"]


@dataclasses.dataclass
class Backend:
    """A storage over a fresh collection, and the test's own way to look at the same place."""

    kind: str
    storage: Storage
    put: Callable[[str, bytes], None]
    exists: Callable[[str], bool]
    outside: Callable[[], set[str]]  # what lies next to the collection, outside it
    link: Callable[[str, str], None] | None = None  # link(rel, target): a symbolic link at rel

    def close(self) -> None:
        self.storage.close()


def _collection(name: str, url: str, options: dict[str, Any] | None = None) -> Collection:
    return Collection(str(uuid.uuid4()), name, name, url, options or {})


def _local(tmp_path: Path) -> Backend:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "secret.txt").write_bytes(b"secret")

    def put(rel: str, data: bytes) -> None:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)

    def link(rel: str, target: str) -> None:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).symlink_to(outside if target == "OUTSIDE" else target)

    storage = open_storage(_collection("local", f"file://{root}"))
    return Backend("local", storage, put, lambda rel: (root / rel).exists() or (root / rel).is_symlink(),
                   lambda: {p.name for p in tmp_path.iterdir()} | {p.name for p in outside.iterdir()}, link)


def _sftp(request: pytest.FixtureRequest, chroot: bool) -> Backend:
    server = request.getfixturevalue("sftp_server" if chroot else "sftp_server_no_chroot")
    location = request.getfixturevalue("sftp_location" if chroot else "sftp_location_no_chroot")
    root: Path = location.local
    outside = server.root / f"outside-{uuid.uuid4().hex[:8]}"  # served, but not in the collection
    outside.mkdir()
    (outside / "secret.txt").write_bytes(b"secret")
    request.addfinalizer(lambda: shutil.rmtree(outside, ignore_errors=True))

    def put(rel: str, data: bytes) -> None:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)

    def link(rel: str, target: str) -> None:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        up = Path(*[".."] * (rel.count("/") + 1))  # from the link's folder to the server's root
        (root / rel).symlink_to(up / outside.name if target == "OUTSIDE" else target)

    storage = open_storage(_collection("sftp", location.url, location.storage_options))
    return Backend("sftp", storage, put, lambda rel: (root / rel).exists() or (root / rel).is_symlink(),
                   lambda: {p.name for p in server.root.iterdir()} | {p.name for p in outside.iterdir()}, link)


def _s3(request: pytest.FixtureRequest) -> Backend:
    location = request.getfixturevalue("s3_location")
    fs = location.filesystem()
    bucket = location.path.split("/", 1)[0]

    def put(rel: str, data: bytes) -> None:
        fs.pipe_file(location.join(rel), data)

    def exists(rel: str) -> bool:
        fs.invalidate_cache()
        return bool(fs.exists(location.join(rel)))

    def outside() -> set[str]:
        fs.invalidate_cache()
        return {p for p in fs.find(bucket) if not p.startswith(location.path + "/")}

    storage = open_storage(_collection("s3", location.url, location.storage_options))
    return Backend("s3", storage, put, exists, outside)


@pytest.fixture(params=["local", "sftp", "sftp-no-chroot", "s3"])
def backend(request, tmp_path):
    kind = request.param
    made = (_local(tmp_path) if kind == "local" else _s3(request) if kind == "s3"
            else _sftp(request, chroot=kind == "sftp"))
    yield made
    made.close()


@pytest.fixture(params=["local", "sftp", "sftp-no-chroot"])
def linked(request, tmp_path):
    """A backend whose filesystem has symbolic links."""
    kind = request.param
    made = _local(tmp_path) if kind == "local" else _sftp(request, chroot=kind == "sftp")
    yield made
    made.close()


def test_each_protocol_opens_its_backend(backend):
    assert type(backend.storage) is {"local": LocalStorage, "sftp": SFTPStorage, "s3": FsspecStorage}[backend.kind]
    assert BACKENDS["file"] == "local" and BACKENDS["sftp"] == "sftp" and "s3" not in BACKENDS
    assert isinstance(backend.storage, LocalDisk) == capable(backend.storage, LocalDisk) == (backend.kind == "local")
    assert isinstance(backend.storage, SettableTimes) == settable_times(backend.storage) == (backend.kind != "s3")


def test_a_normalized_path_inside_works(backend):
    """The other tests' refusals mean something: the same operations on a good path succeed."""
    storage = backend.storage
    storage.makedirs("a/b")
    writer = storage.open_write("a/b/f.txt", "tok", 1 << 20)
    writer.write(b"hello")
    writer.commit()
    assert backend.exists("a/b/f.txt")
    stat = storage.stat("a/b/f.txt")
    assert stat is not None and (stat.kind, stat.size) == ("file", 5)
    reader = storage.open_read("a/b/f.txt", 1 << 20)
    assert reader.read(100) == b"hello"
    reader.close()
    storage.confine("a/b/f.txt")
    assert storage.resolve("a/b/f.txt") == "a/b/f.txt"
    assert "a/b/f.txt" in [e.rel for e in storage.walk("a")]
    storage.remove("a/b/f.txt", "file")
    assert not backend.exists("a/b/f.txt")


@pytest.mark.parametrize("rel", BAD_PATHS, ids=repr)
def test_every_operation_refuses_a_path_that_is_not_inside(backend, rel):
    storage = backend.storage
    backend.put("a/x", b"inside")
    before = backend.outside()
    operations: list[tuple[str, Callable[[], Any]]] = [
        ("confine", lambda: storage.confine(rel)),
        ("resolve", lambda: storage.resolve(rel)),
        ("stat", lambda: storage.stat(rel)),
        ("walk", lambda: list(storage.walk(rel))),
        ("open_read", lambda: storage.open_read(rel, 1 << 20)),
        ("open_write", lambda: storage.open_write(rel, "tok", 1 << 20)),
        ("makedirs", lambda: storage.makedirs(rel)),
        ("remove", lambda: storage.remove(rel, "file")),
        ("remove a folder", lambda: storage.remove(rel, "dir")),
    ]
    if isinstance(storage, SettableTimes):
        operations.append(("set_mtime", lambda: storage.set_mtime(rel, 0.0)))
    for name, operation in operations:
        with pytest.raises(PathOutsideCollection):
            operation()
            pytest.fail(f"{name} accepted {rel!r}")
    assert backend.outside() == before
    assert backend.exists("a/x")


def test_object_keys_that_are_no_path_inside_are_reported_not_listed(request):
    """An object store may hold a key such as ``a/../b``: a walk reports it as an error, never as a path."""
    backend = _s3(request)
    try:
        backend.put("a/ok.txt", b"ok")
        backend.put("a/../../escape.txt", b"key with dots")
        backend.put("a/./dot.txt", b"key with a dot")
        entries = list(backend.storage.walk("a"))
        listed = {e.rel for e in entries if e.stat is not None}
        refused = {e.rel for e in entries if isinstance(e.error, PathOutsideCollection)}
        assert listed == {"a/ok.txt"}
        assert {"a/../../escape.txt", "a/./dot.txt"} <= refused  # and the pseudo-folders "a/..", "a/." of their keys
        assert all({".", ".."} & set(rel.split("/")) for rel in refused)
    finally:
        backend.close()


def test_links_leading_outside_are_refused(linked):
    storage = linked.storage
    linked.put("inside/real.txt", b"inside")
    linked.link("out", "OUTSIDE")  # a folder outside the root
    linked.link("deep/er/out", "OUTSIDE")  # the same, deeper
    linked.link("ok", "inside")  # a link that stays inside
    before = linked.outside()
    for rel in ("out", "out/secret.txt", "out/new.txt", "deep/er/out/secret.txt", "out/sub/new.txt"):
        with pytest.raises(PathOutsideCollection) as refused:
            storage.confine(rel)
        assert "symbolic link" in refused.value.reason
        with pytest.raises(PathOutsideCollection):
            storage.resolve(rel)
    for operation in (lambda: storage.open_read("out/secret.txt", 1 << 20),
                      lambda: storage.stat("out/secret.txt"),
                      lambda: storage.open_write("out/new.txt", "tok", 1 << 20),
                      lambda: storage.makedirs("out/sub"),
                      lambda: storage.remove("out/secret.txt", "file")):
        with pytest.raises(PathOutsideCollection):
            operation()
    assert linked.outside() == before  # nothing read, written, made or removed there
    # A walk reports the link as an error and does not descend into it.
    entries = {e.rel: e for e in storage.walk("")}
    assert isinstance(entries["out"].error, PathOutsideCollection)
    assert not any(rel.startswith("out/") for rel in entries)
    # A link that stays inside is followed, and resolved to where it leads.
    assert storage.resolve("ok/real.txt") == "inside/real.txt"
    reader = storage.open_read("ok/real.txt", 1 << 20)
    assert reader.read(100) == b"inside"
    reader.close()


def test_a_local_file_link_to_outside_is_refused_on_open_and_replaced_on_write(tmp_path):
    backend = _local(tmp_path)
    storage = backend.storage
    root = tmp_path / "root"
    (root / "passwd").symlink_to(tmp_path / "outside" / "secret.txt")
    try:
        with pytest.raises(PathOutsideCollection):
            storage.open_read("passwd", 1 << 20)
        with pytest.raises(PathOutsideCollection):
            storage.stat("passwd")
        writer = storage.open_write("passwd", "tok", 1 << 20)
        writer.write(b"new")
        writer.commit()
        assert (root / "passwd").read_bytes() == b"new" and not (root / "passwd").is_symlink()
        assert (tmp_path / "outside" / "secret.txt").read_bytes() == b"secret"
    finally:
        backend.close()


def test_a_local_root_that_is_a_link_is_the_collection(tmp_path):
    """The root itself may be reached through a link: what matters is where the real root is."""
    real = tmp_path / "real"
    real.mkdir()
    (real / "f.txt").write_bytes(b"f")
    (tmp_path / "alias").symlink_to(real)
    storage = LocalStorage(_collection("alias", f"file://{tmp_path / 'alias'}"), str(tmp_path / "alias"))
    try:
        storage.confine("f.txt")
        assert storage.local_path("f.txt") == str(real / "f.txt")
        with pytest.raises(PathOutsideCollection):
            storage.confine("../alias/f.txt")
    finally:
        storage.close()


def test_the_backend_in_the_readme_is_all_a_backend_needs(make_site, tmp_path):
    """README, "Adding a storage backend": its example, run as written, serves transfers from a web server on
    loopback, plugged in through TRANSFER_OPEN_STORAGE."""
    import functools
    import threading
    import types
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    from .conftest import body, local_collection, make_tree

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    section = readme[readme.index("### Adding a storage backend"):]
    start = section.index("```python\n") + len("```python\n")
    example = types.ModuleType("readme_backend")
    exec(compile(section[start:section.index("```\n", start)], "README.md", "exec"), example.__dict__)

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    served = tmp_path / "served"
    written = make_tree(served, {"data/report 1.csv": b"a,b\n1,2\n", "big.bin": 3 * 1024 * 1024 + 7})
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(served)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        opened = []

        def open_with_web(collection):
            opened.append(collection.name)
            return example.connect(collection) if collection.protocol == "http" else open_storage(collection)

        web = {"id": str(uuid.uuid4()), "name": "web", "url": f"http://127.0.0.1:{server.server_port}/"}
        site = make_site([local_collection("dst", tmp_path / "dst"), web], TRANSFER_OPEN_STORAGE=open_with_web)
        client = site.transfer()
        copied = client.run(body("web", "dst", ("/data/report 1.csv", "/report.csv"), ("/big.bin", "/big.bin")),
                            wait=True)
        assert copied["status"] == "SUCCEEDED", copied
        assert (tmp_path / "dst" / "report.csv").read_bytes() == written["data/report 1.csv"]
        assert (tmp_path / "dst" / "big.bin").read_bytes() == written["big.bin"]
        assert opened == ["web", "dst"]  # the app's function opened both sides
        missing = client.run(body("web", "dst", ("/nothing.csv", "/nothing.csv")), wait=True)
        assert (missing["status"], missing["details"]["code"]) == ("FAILED", "SourceNotFound"), missing
        upload = client.run(body("dst", "web", ("/report.csv", "/uploaded.csv")), wait=True)
        assert (upload["status"], upload["details"]["code"]) == ("FAILED", "DestinationReadOnly"), upload
        assert not (served / "uploaded.csv").exists()
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("rel", [*BAD_PATHS, "a/", "a/b/", ".", "a/./b", "a/../b", "a/b/..", "/a", "a\x00", 7])
def test_checked_refuses_every_path_that_is_not_normalized(rel):
    with pytest.raises(PathOutsideCollection):
        Storage.checked(rel)


@pytest.mark.parametrize("rel", ["", "a", "a/b.txt", ".hidden", "a/.hidden", "a/..b", "a/b..", "...x/y", "a.b/c.d"])
def test_checked_accepts_normalized_paths_with_dots_in_names(rel):
    assert Storage.checked(rel) == rel


def test_small_files_disk_to_disk_are_copied_on_every_core_and_hashed_on_one_thread(tmp_path, monkeypatch):
    from providers.transfer.copying import SMALL_FILE_BATCH, SMALL_FILE_BYTES, lanes
    from providers.transfer.planning import FileTask

    monkeypatch.setattr("os.cpu_count", lambda: 4)
    local = _local(tmp_path)
    try:
        small = [FileTask(None, f"s{i}", f"s{i}", 4096, None) for i in range(SMALL_FILE_BATCH * 8)]  # type: ignore[arg-type]
        large = [FileTask(None, f"l{i}", f"l{i}", SMALL_FILE_BYTES, None) for i in range(3)]  # type: ignore[arg-type]
        copying = lanes(small + large, local.storage, local.storage, threads=8)
        assert [(threads, len(batches)) for threads, batches in copying] == [(3, 3), (4, 8)]
        assert all(len(batch) == SMALL_FILE_BATCH for batch in copying[1][1])
        hashing = lanes(small, local.storage, local.storage, threads=8, hashing_only=True)
        assert [(threads, len(batches)) for threads, batches in hashing] == [(1, 8)]
        assert lanes(small, local.storage, local.storage, threads=2)[0][0] == 2  # never more than the setting
    finally:
        local.close()


def _direct(tmp_path: Path) -> tuple[Path, Path, Any]:
    from providers.transfer.storage.local import DirectFiles

    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "d").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret.txt").write_bytes(b"secret")
    storage = LocalStorage(_collection("local", f"file://{root}"), str(root))
    return root, outside, DirectFiles(storage)


def test_direct_files_read_and_write_whole_files_as_the_storage_does(tmp_path):
    root, _outside, direct = _direct(tmp_path)
    try:
        (root / "d" / "a.dat").write_bytes(b"a" * 100)
        assert direct.read_whole("d/a.dat", 100) == b"a" * 100
        assert direct.read_whole("d/a.dat", 99) is None  # not the size listed: None, as read_whole answers
        assert direct.read_whole("d/a.dat", 101, only_compared=True) is None
        with pytest.raises(FileNotFoundError):
            direct.read_whole("d/none.dat", 1)
        (root / "d" / "sub").mkdir()
        with pytest.raises(IsADirectoryError):
            direct.read_whole("d/sub", 4, only_compared=True)

        written = direct.write_whole("d/new.dat", "tok", b"new" * 10, lambda back: back == b"new" * 10)
        assert (written.kind, written.size) == ("file", 30)
        assert (root / "d" / "new.dat").read_bytes() == b"new" * 10
        assert written.mtime == (root / "d" / "new.dat").stat().st_mtime

        (root / "d" / "old.dat").write_bytes(b"old contents")
        assert direct.write_whole("d/old.dat", "tok", b"replaced", None).size == 8
        assert (root / "d" / "old.dat").read_bytes() == b"replaced"

        # Read back differently: None, and nothing under the name, nothing half-written left.
        assert direct.write_whole("d/bad.dat", "tok", b"x" * 10, lambda back: False) is None
        assert direct.write_whole("d/old.dat", "tok", b"y" * 10, lambda back: False) is None
        assert not (root / "d" / "bad.dat").exists()
        assert (root / "d" / "old.dat").read_bytes() == b"replaced"
        assert sorted(p.name for p in (root / "d").iterdir()) == ["a.dat", "new.dat", "old.dat", "sub"]
    finally:
        direct.close()
        direct.storage.close()


def test_direct_files_resolve_links_as_the_storage_does_and_replace_a_link_written_over(tmp_path):
    root, outside, direct = _direct(tmp_path)
    try:
        (root / "d" / "real.dat").write_bytes(b"inside")
        (root / "d" / "in.dat").symlink_to(root / "d" / "real.dat")
        (root / "d" / "out.dat").symlink_to(outside / "secret.txt")
        assert direct.read_whole("d/in.dat", 6) == b"inside"
        with pytest.raises(PathOutsideCollection):
            direct.read_whole("d/out.dat", 6)
        (root / "away").symlink_to(outside)
        with pytest.raises(PathOutsideCollection):
            direct.read_whole("away/secret.txt", 6)
        with pytest.raises(PathOutsideCollection):
            direct.write_whole("away/new.dat", "tok", b"x", None)
        with pytest.raises(PathOutsideCollection):
            direct.read_whole("d/../../outside/secret.txt", 6)

        assert direct.write_whole("d/out.dat", "tok", b"written", None).size == 7  # the link is replaced
        assert not (root / "d" / "out.dat").is_symlink()
        assert (root / "d" / "out.dat").read_bytes() == b"written"
        assert (outside / "secret.txt").read_bytes() == b"secret"
        assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]
    finally:
        direct.close()
        direct.storage.close()


def test_direct_files_open_each_folder_once_and_hold_a_bounded_number(tmp_path, monkeypatch):
    from providers.transfer.storage import local

    root, _outside, direct = _direct(tmp_path)
    opened: list[str] = []
    open_folder = LocalStorage.open_folder
    monkeypatch.setattr(LocalStorage, "open_folder", lambda self, rel: opened.append(rel) or open_folder(self, rel))
    monkeypatch.setattr(local, "_FOLDERS_HELD", 3)
    try:
        for i in range(5):
            (root / f"f{i}").mkdir()
            for j in range(20):
                assert direct.write_whole(f"f{i}/{j}.dat", "tok", b"%d" % j, None) is not None
                assert direct.read_whole(f"f{i}/{j}.dat", len(b"%d" % j)) == b"%d" % j
        assert opened == [f"f{i}" for i in range(5)]
        assert len(direct._folders) == 3
    finally:
        direct.close()
        direct.storage.close()
    assert not direct._folders


@pytest.mark.parametrize("way", ["linkat", "proc"])
def test_a_nameless_file_gets_its_name_by_descriptor_or_through_proc(tmp_path, monkeypatch, way):
    import errno
    import os

    from providers.transfer.storage import local

    if not local._anonymous_files[0]:
        pytest.skip("no O_TMPFILE here")
    if way == "proc":
        monkeypatch.setattr(local, "_linkat", [None])
    elif local._libc_linkat() is None:
        pytest.skip("no linkat here")
    folder = os.open(tmp_path, os.O_RDONLY)
    try:
        for name in ("a.dat", "b.dat"):
            fd = os.open(".", os.O_RDWR | local._TMPFILE, 0o666, dir_fd=folder)
            os.write(fd, name.encode())
            local.link_anonymous(fd, folder, name)
            with pytest.raises(FileExistsError):
                local.link_anonymous(fd, folder, "a.dat")
            os.close(fd)
        assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == {"a.dat": b"a.dat", "b.dat": b"b.dat"}
        with pytest.raises(OSError) as caught:
            local.link_anonymous(12345, folder, "c.dat")  # no such descriptor
        assert caught.value.errno in (errno.EBADF, errno.ENOENT)
    finally:
        os.close(folder)


def test_a_refused_linkat_falls_back_through_proc_from_then_on(tmp_path, monkeypatch):
    import ctypes
    import errno
    import os

    from providers.transfer.storage import local

    if not local._anonymous_files[0]:
        pytest.skip("no O_TMPFILE here")
    calls = []

    def refused(*args):
        calls.append(args)
        ctypes.set_errno(errno.EPERM)
        return -1

    monkeypatch.setattr(local, "_linkat", [refused])
    folder = os.open(tmp_path, os.O_RDONLY)
    try:
        for name in ("a.dat", "b.dat"):
            fd = os.open(".", os.O_RDWR | local._TMPFILE, 0o666, dir_fd=folder)
            local.link_anonymous(fd, folder, name)
            os.close(fd)
    finally:
        os.close(folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.dat", "b.dat"]
    assert len(calls) == 1 and local._linkat == [None]


def test_walk_runs_finds_what_walk_finds_with_runs_of_files_at_once(tmp_path):
    import os

    root, outside, direct = _direct(tmp_path)
    direct.close()
    storage = direct.storage
    for i in range(40):
        (root / "d" / f"f{i:02}.dat").write_bytes(b"x" * i)
    (root / "d" / "m").mkdir()
    (root / "d" / "m" / "inner.dat").write_bytes(b"inner")
    (root / "d" / "f20.link").symlink_to(root / "d" / "f20.dat")
    (root / "d" / "g.link").symlink_to(root / "d" / "m")
    (root / "d" / "out.link").symlink_to(outside / "secret.txt")
    (root / "d" / "dangling").symlink_to(root / "nowhere")
    os.mkfifo(root / "d" / "pipe")
    (root / "d" / "z").mkdir()

    def flat(found):
        out = []
        for entry in found:
            if isinstance(entry, list):
                out.extend((rel, "file", size, mtime) for rel, size, mtime in entry)
            elif entry.stat is None:
                out.append((entry.rel, type(entry.error).__name__))
            else:
                out.append((entry.rel, entry.stat.kind, entry.stat.size, entry.stat.mtime))
        return out

    try:
        runs = list(storage.walk_runs("d"))
        assert any(isinstance(r, list) and len(r) > 1 for r in runs)
        assert flat(runs) == flat(storage.walk("d"))
        checks = []
        assert flat(storage.walk_runs("d", check=lambda: checks.append(1))) == flat(runs)
        assert checks
    finally:
        storage.close()


def test_planning_with_and_without_runs_gives_the_same_plan(tmp_path):
    from providers.transfer.planning import Planner
    from providers.transfer.request import normalize_request

    root, _outside, direct = _direct(tmp_path)
    direct.close()
    src = direct.storage
    for i in range(30):
        (root / "d" / f"s{i % 3}").mkdir(exist_ok=True)
        (root / "d" / f"s{i % 3}" / f"{i:02}.dat").write_bytes(b"y" * i)
    (root / "d" / "s0" / "one.link").symlink_to(root / "d" / "s1" / "01.dat")
    dst_root = tmp_path / "dst"
    dst_root.mkdir()
    dst = LocalStorage(_collection("dst", f"file://{dst_root}"), str(dst_root))

    def plan(src_storage, **request):
        body = {"source_endpoint_id": "src", "destination_endpoint_id": "dst",
                "transfer_items": [{"source_path": "/d", "destination_path": "/copy", "recursive": True},
                                   {"source_path": "/d/s1", "destination_path": "/copy/s1", "recursive": True}],
                **request}
        found = Planner(normalize_request(body), src_storage, dst, lambda: None, None).run()
        return ([(t.src, t.dst, t.size, t.mtime) for t in found.tasks], sorted(found.dirs), found.source_dirs,
                sorted((e.code, e.source or "", e.destination or "") for e in found.fatal))

    class Plain(LocalStorage):
        walk_runs = None  # the planner walks entry by entry

    plain = Plain(_collection("plain", f"file://{root}"), str(root))
    try:
        with_runs, without = plan(src), plan(plain)
        assert with_runs == without
        assert len(with_runs[0]) == 31 and with_runs[3]  # the second item's files are duplicates: fatal
        assert with_runs[3][0][0] == "DuplicateDestination"
    finally:
        for storage in (src, dst, plain):
            storage.close()
