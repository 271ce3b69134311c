"""Reads of a SQLite file run on a connection of the reading thread's own (SQLStore._thread_read)."""

from __future__ import annotations

import gc
import os
import sqlite3
import threading
import time
import uuid

import pytest

from toolkit import SQLStore, Status
from toolkit.documents import Action


def action() -> Action:
    now = time.time()
    return Action(action_id=uuid.uuid4().hex, provider="p", request_id=uuid.uuid4().hex, request_hash="h",
                  creator_id="c", status=Status.ACTIVE, body={}, start_time=now, attempts=1, runner="r",
                  heartbeat=now)


@pytest.fixture
def store(tmp_path):
    store = SQLStore(f"sqlite:///{tmp_path / 'aptk.db'}")
    store.create_schema()
    yield store
    store.dispose()


def reader_of(store):
    return store._readers.reader.connection


def test_a_thread_reads_on_one_connection_of_its_own_outside_the_pool(store):
    created = action()
    store.create(created, log=(1.0, "ActionStarted", "Action started"), now=time.time())
    checked_out = store.engine.pool.checkedout()
    assert store.get(created.action_id).action_id == created.action_id
    mine = reader_of(store)
    assert store.get(created.action_id) is not None and reader_of(store) is mine
    assert store.engine.pool.checkedout() == checked_out  # nothing held from the pool
    theirs = []
    thread = threading.Thread(target=lambda: (store.get(created.action_id), theirs.append(reader_of(store))))
    thread.start()
    thread.join()
    assert theirs and theirs[0] is not mine


def test_what_another_connection_commits_is_read_at_once(store, tmp_path):
    created = action()
    store.create(created, log=(1.0, "ActionStarted", "Action started"), now=time.time())
    assert store.get(created.action_id).status is Status.ACTIVE
    other = SQLStore(f"sqlite:///{tmp_path / 'aptk.db'}")  # as another worker process would
    other.update(created.action_id, where={"status": Status.ACTIVE}, status=Status.SUCCEEDED)
    other.dispose()
    assert store.get(created.action_id).status is Status.SUCCEEDED
    raw = sqlite3.connect(tmp_path / "aptk.db")
    raw.execute("DELETE FROM aptk_actions WHERE action_id = ?", (created.action_id,))
    raw.commit()
    raw.close()
    assert store.get(created.action_id) is None


def test_the_connection_of_a_thread_that_ended_is_closed(store):
    seen = []
    thread = threading.Thread(target=lambda: (store.get("nothing"), seen.append(reader_of(store))))
    thread.start()
    thread.join()
    del thread
    gc.collect()
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        seen[0].execute("SELECT 1")


def test_dispose_closes_every_reading_connection_and_reads_go_on_after(store):
    store.get("nothing")
    mine = reader_of(store)
    store.dispose()
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        mine.execute("SELECT 1")
    assert store.get("nothing") is None
    assert reader_of(store) is not mine


def test_an_error_drops_the_connection_and_the_next_read_opens_another(store):
    store.get("nothing")
    mine = reader_of(store)
    with pytest.raises(Exception, match="no such table"):
        with store._read_cursor() as cursor:
            cursor.execute("SELECT * FROM not_a_table")
    assert getattr(store._readers, "reader", None) is None
    assert store.get("nothing") is None and reader_of(store) is not mine


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
def test_a_forked_child_reads_on_its_own_connection(store):
    created = action()
    store.create(created, log=(1.0, "ActionStarted", "Action started"), now=time.time())
    store.get(created.action_id)
    parent = reader_of(store)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: a new connection, and the parent's left alone
        ok = store.get(created.action_id) is not None and reader_of(store) is not parent
        os.write(write, b"1" if ok else b"0")
        os._exit(0)
    os.close(write)
    assert os.read(read, 1) == b"1"
    os.waitpid(pid, 0)
    assert store.get(created.action_id) is not None and reader_of(store) is parent
