"""The store's write path: group commit, the writers' lock file, what a crash leaves, and the status document."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from toolkit import SQLStore, Status
from toolkit.documents import Action, ActionStatusSchema, dump_status
from toolkit.store import action_log, action_roles, actions

REPO = Path(__file__).resolve().parents[2]


def new_action(request_id=None, **changes):
    now = time.time()
    values = dict(action_id=uuid.uuid4().hex, provider="p", request_id=request_id or uuid.uuid4().hex,
                  request_hash="h", creator_id="urn:globus:auth:identity:" + str(uuid.uuid4()),
                  status=Status.ACTIVE, body={"n": 1}, start_time=now, attempts=1, runner="r", heartbeat=now,
                  principals=["a", "b"], monitor_by=["urn:globus:groups:id:" + str(uuid.uuid4())])
    values.update(changes)
    return Action(**values)


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    if request.param == "sqlite":
        store = SQLStore(f"sqlite:///{tmp_path / 'aptk.db'}")
    else:
        server = request.getfixturevalue("postgres_server")
        store = SQLStore(server.create_database(f"aptk_{uuid.uuid4().hex[:12]}"))
    store.create_schema()
    yield store
    store.dispose()


def log_codes(store, action_id):
    return [e.code for e in store.log_page(action_id, 0, 100)]


def test_what_the_fast_statements_write_reads_back_the_same_through_sqlalchemy(store):
    action = new_action(label="l", deadline=time.time() + 60, details={"x": [1, "ü", None]})
    stored, created = store.create(action, log=(1.0, "ActionStarted", "Action started"), now=time.time())
    assert created and stored == action
    assert store.get(action.action_id) == action
    with store.engine.connect() as conn:
        row = conn.execute(sa.select(actions).where(actions.c.action_id == action.action_id)).one()
        roles = conn.execute(sa.select(action_roles.c.role, action_roles.c.principal)
                             .where(action_roles.c.action_id == action.action_id)).all()
    assert (row.body, row.details, row.monitor_by, row.principals, row.status) == (
        {"n": 1}, {"x": [1, "ü", None]}, action.monitor_by, ["a", "b"], "ACTIVE")
    assert sorted(roles) == sorted([("creator_id", action.creator_id), ("monitor_by", action.monitor_by[0])])

    done = store.update(action.action_id, where={"status": {Status.ACTIVE, Status.INACTIVE}, "runner": "r"},
                        log=(2.0, "ActionSucceeded", "Action SUCCEEDED"), status=Status.SUCCEEDED,
                        details={"ok": True}, runner=None, completion_time=100.0, release_after=5.0)
    assert (done.status, done.details, done.runner, done.expires_at) == (Status.SUCCEEDED, {"ok": True}, None, 105.0)
    assert store.get(action.action_id) == done
    with store.engine.connect() as conn:
        assert conn.execute(sa.select(actions.c.expires_at)
                            .where(actions.c.action_id == action.action_id)).scalar() == 105.0
    # A compare-and-set that no longer matches changes nothing and writes no log line.
    assert store.update(action.action_id, where={"status": Status.ACTIVE}, log=(3.0, "X", "x"),
                        status=Status.FAILED) is None
    assert store.append_log(action.action_id, 4.0, "Log", "late", {"a": 1}, where={"status": Status.ACTIVE}) is False
    assert store.append_log(action.action_id, 4.0, "Log", "any time", {"a": 1}) is True
    entries = store.log_page(action.action_id, 0, 100)
    assert [(e.code, e.details) for e in entries] == [
        ("ActionStarted", None), ("ActionSucceeded", None), ("Log", {"a": 1})]
    assert store.update(action.action_id, where={}, completion_time=None).expires_at is None


def test_append_logs_writes_entries_and_the_providers_rows_in_one_transaction_while_owned(store):
    action = new_action()
    store.create(action, log=(1.0, "ActionStarted", "Action started"), now=time.time())
    mine = sa.Table("test_append_logs_rows", sa.MetaData(), sa.Column("k", sa.String(8), primary_key=True))
    mine.create(store.engine)
    insert = f"INSERT INTO test_append_logs_rows (k) VALUES ({store.placeholder})"
    owner = {"status": Status.ACTIVE, "runner": "r"}
    assert store.append_logs(action.action_id, [(2.0, "Log", "one", {"n": 1}), (3.0, "Log", "two", None)],
                             where=owner, then=lambda cursor: cursor.execute(insert, ("a",))) is True

    def failing(cursor):
        cursor.execute(insert, ("b",))
        raise RuntimeError("no")

    with pytest.raises(RuntimeError):  # what then raises undoes the log entries too
        store.append_logs(action.action_id, [(4.0, "Log", "undone", None)], where=owner, then=failing)
    # no longer owned: neither the entries nor then's rows are written
    assert store.append_logs(action.action_id, [(5.0, "Log", "late", None)], where={"runner": "other"},
                             then=lambda cursor: cursor.execute(insert, ("c",))) is False
    assert store.append_logs(action.action_id, [], then=lambda cursor: cursor.execute(insert, ("d",))) is True
    assert [(e.time, e.description, e.details) for e in store.log_page(action.action_id, 0, 100)] == [
        (1.0, "Action started", None), (2.0, "one", {"n": 1}), (3.0, "two", None)]
    with store.engine.connect() as conn:
        assert sorted(conn.execute(sa.select(mine.c.k)).scalars()) == ["a", "d"]


def test_concurrent_writes_each_get_their_own_result_and_keep_every_log_entry(store):
    """Threads writing at once (grouped into shared commits on SQLite): every create, every compare-and-set and
    every log line is there afterwards, and each thread saw its own outcome, a lost race included."""
    created = [new_action() for _ in range(40)]
    duplicate = new_action(request_id="same")
    errors, outcomes = [], {}
    start = threading.Barrier(8)

    def writer(n):
        try:
            start.wait()
            for action in created[n::8]:
                store.create(action, log=(1.0, "ActionStarted", "Action started"), now=time.time())
                won = store.update(action.action_id, where={"status": Status.ACTIVE, "attempts": 1},
                                   log=(2.0, "ActionSucceeded", "Action SUCCEEDED"), status=Status.SUCCEEDED)
                store.append_log(action.action_id, 3.0, "Log", f"by {n}", where={"status": Status.SUCCEEDED})
                assert won is not None and won.status is Status.SUCCEEDED
            copy = new_action(request_id="same", action_id=uuid.uuid4().hex, creator_id=duplicate.creator_id)
            stored, new = store.create(copy, log=(1.0, "ActionStarted", "Action started"), now=time.time())
            outcomes[n] = (stored.action_id, new)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    for action in created:
        assert store.get(action.action_id).status is Status.SUCCEEDED
        assert log_codes(store, action.action_id) == ["ActionStarted", "ActionSucceeded", "Log"]
    winners = {action_id for action_id, new in outcomes.values() if new}
    assert len(winners) == 1 and {action_id for action_id, _ in outcomes.values()} == winners
    assert log_codes(store, winners.pop()) == ["ActionStarted"]


def test_writes_waiting_together_are_committed_together_and_a_failing_one_alone_is_undone(tmp_path):
    store = SQLStore(f"sqlite:///{tmp_path / 'aptk.db'}")
    store.create_schema()
    holding, release = threading.Event(), threading.Event()
    ran_on, results = {}, {}

    def blocker(cursor):
        holding.set()
        release.wait(10)
        cursor.execute("INSERT INTO aptk_action_log (action_id, time, code, description) VALUES ('a', 0, 'A', '')")
        return "first"

    def write(n):
        def work(cursor):
            ran_on[n] = threading.get_ident()
            if n == 2:  # a duplicate primary key: this write fails, the others of its group must not
                cursor.execute("INSERT INTO aptk_action_roles VALUES ('x', 'r', 'p')")
                cursor.execute("INSERT INTO aptk_action_roles VALUES ('x', 'r', 'p')")
            cursor.execute("INSERT INTO aptk_action_log (action_id, time, code, description) VALUES (?, 0, 'W', '')",
                           (f"w{n}",))
            return n
        try:
            results[n] = store._transact(work)
        except Exception as exc:
            results[n] = exc

    first = threading.Thread(target=lambda: results.__setitem__("first", store._transact(blocker)))
    first.start()
    assert holding.wait(10)
    others = [threading.Thread(target=write, args=(n,)) for n in range(5)]
    for thread in others:
        thread.start()
    deadline = time.time() + 10
    while len(store._group_pending) < 5 and time.time() < deadline:
        time.sleep(0.01)
    release.set()
    for thread in [first, *others]:
        thread.join(10)

    assert results["first"] == "first"
    assert [results[n] for n in (0, 1, 3, 4)] == [0, 1, 3, 4]
    assert isinstance(results[2], sa.exc.IntegrityError)
    assert len(set(ran_on.values())) == 1  # one thread ran the whole waiting group, in one transaction
    with store.engine.connect() as conn:
        written = set(conn.execute(sa.select(action_log.c.action_id)).scalars())
        assert written == {"a", "w0", "w1", "w3", "w4"}
        assert conn.execute(sa.select(sa.func.count()).select_from(action_roles)).scalar() == 0
    store.dispose()


def _group_of(store, works):
    """Run ``works`` (cursor -> result) as one group commit: they queue behind a write that holds the lock."""
    holding, release = threading.Event(), threading.Event()
    results = {}

    def blocker(cursor):
        holding.set()
        release.wait(10)
        return "first"

    def run(n, work, rerunnable):
        try:
            results[n] = store._transact(work, rerunnable=rerunnable)
        except Exception as exc:
            results[n] = exc

    first = threading.Thread(target=run, args=("first", blocker, True))
    first.start()
    assert holding.wait(10)
    others = [threading.Thread(target=run, args=(n, work, rerunnable)) for n, (work, rerunnable) in enumerate(works)]
    for queued, thread in enumerate(others, 1):  # one after the other: the group runs them in this order
        thread.start()
        deadline = time.time() + 10
        while len(store._group_pending) < queued and time.time() < deadline:
            time.sleep(0.005)
    release.set()
    for thread in [first, *others]:
        thread.join(10)
    return results


def _traced(store):
    statements = []

    @sa.event.listens_for(store.engine, "connect")
    def _trace(dbapi_connection, record):
        dbapi_connection.set_trace_callback(statements.append)

    store.engine.dispose()
    return statements


def _logging(code, fail=False):
    def work(cursor):
        cursor.execute("INSERT INTO aptk_action_log (action_id, time, code, description) VALUES ('g', 0, ?, '')",
                       (code,))
        if fail:
            cursor.execute("INSERT INTO aptk_action_roles VALUES ('x', 'r', 'p')")
            cursor.execute("INSERT INTO aptk_action_roles VALUES ('x', 'r', 'p')")
        return code
    return work


def test_a_group_of_writes_that_all_succeed_runs_without_savepoints(tmp_path):
    store = SQLStore(f"sqlite:///{tmp_path / 'aptk.db'}")
    store.create_schema()
    statements = _traced(store)
    results = _group_of(store, [(_logging(f"C{n}"), True) for n in range(4)])
    assert [results[n] for n in range(4)] == ["C0", "C1", "C2", "C3"]
    assert not [s for s in statements if "SAVEPOINT" in s], statements
    assert sorted(log_codes(store, "g")) == ["C0", "C1", "C2", "C3"]
    store.dispose()


def test_a_write_that_may_not_run_twice_runs_once_in_a_group_where_another_fails(tmp_path):
    store = SQLStore(f"sqlite:///{tmp_path / 'aptk.db'}")
    store.create_schema()
    ran = []

    def once(cursor):
        ran.append(1)
        return _logging("ONCE")(cursor)

    for rerunnable in (True, False):
        ran.clear()
        results = _group_of(store, [(_logging("A"), True), (once, rerunnable), (_logging("BAD", fail=True), True)])
        assert results[0] == "A" and results[1] == "ONCE"
        assert isinstance(results[2], sa.exc.IntegrityError)
        # A write that may run again ran twice (the group was redone in savepoints); one that may not, once.
        assert len(ran) == (2 if rerunnable else 1)
    assert sorted(log_codes(store, "g")) == ["A", "A", "ONCE", "ONCE"]
    store.dispose()


def test_a_full_disk_in_a_group_fails_exactly_the_writes_that_are_not_in_the_database(tmp_path):
    store = SQLStore(f"sqlite:///{tmp_path / 'aptk.db'}")
    store.create_schema()
    room = {"pages": 0}

    @sa.event.listens_for(store.engine, "checkout")
    def _limit(dbapi_connection, record, proxy):
        dbapi_connection.execute(f"PRAGMA max_page_count = {room['pages'] or 1_000_000_000}")

    with store.engine.connect() as conn:
        room["pages"] = conn.exec_driver_sql("PRAGMA page_count").scalar() + 3
    store.engine.dispose()
    outcomes = {}
    start = threading.Barrier(6)

    def writer(n):
        action = new_action(body={"blob": "y" * (50_000 if n % 2 else 100)})
        start.wait()
        try:
            store.create(action, log=(1.0, "ActionStarted", "Action started"), now=time.time())
            outcomes[action.action_id] = True
        except sa.exc.OperationalError as exc:
            assert "full" in str(exc)
            outcomes[action.action_id] = False

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(outcomes) == 6 and not all(outcomes.values())
    room["pages"] = 0
    store.engine.dispose()
    for action_id, acknowledged in outcomes.items():
        found = store.get(action_id)
        assert (found is not None) is acknowledged, action_id
        assert log_codes(store, action_id) == (["ActionStarted"] if acknowledged else [])
    store.dispose()


CRASHING_WRITER = textwrap.dedent("""
    import sys, threading, time, uuid
    from toolkit import SQLStore, Status
    from toolkit.documents import Action

    store = SQLStore(sys.argv[1])
    lock = threading.Lock()

    def write():
        while True:
            now = time.time()
            action = Action(action_id=uuid.uuid4().hex, provider="p", request_id=uuid.uuid4().hex, request_hash="h",
                            creator_id="c", status=Status.ACTIVE, body={"b": "x" * 2000}, start_time=now,
                            attempts=1, runner="r", heartbeat=now)
            store.create(action, log=(now, "ActionStarted", "Action started"), now=now)
            done = store.update(action.action_id, where={"status": Status.ACTIVE}, status=Status.SUCCEEDED,
                                log=(now, "ActionSucceeded", "Action SUCCEEDED"), completion_time=now)
            assert done is not None
            with lock:
                print(action.action_id, flush=True)

    for _ in range(6):
        threading.Thread(target=write, daemon=True).start()
    time.sleep(60)
""")


def test_kill_9_in_the_middle_of_writes_loses_nothing_acknowledged_and_leaves_nothing_half_written(tmp_path):
    url = f"sqlite:///{tmp_path / 'aptk.db'}"
    SQLStore(url).create_schema()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    acknowledged = []
    for _ in range(3):  # two processes writing at once, each killed mid-stream
        procs = [subprocess.Popen([sys.executable, "-c", CRASHING_WRITER, url], stdout=subprocess.PIPE, text=True,
                                  env=env) for _ in range(2)]
        for proc in procs:  # both are writing (however loaded the machine): kill them mid-stream
            acknowledged += [proc.stdout.readline().strip() for _ in range(20)]
        for proc in procs:
            os.kill(proc.pid, signal.SIGKILL)
        for proc in procs:
            acknowledged += proc.stdout.read().split()  # the same buffered reader as above: no line cut
            proc.stdout.close()
            proc.wait(30)
    assert len(acknowledged) >= 120 and all(len(a) == 32 for a in acknowledged)

    store = SQLStore(url)
    for action_id in acknowledged:
        assert store.get(action_id).status is Status.SUCCEEDED
        assert log_codes(store, action_id) == ["ActionStarted", "ActionSucceeded"]
    with store.engine.connect() as conn:
        # Whatever the kills interrupted was rolled back whole: an action is there with its log line, or not at all.
        for action_id, status in conn.execute(sa.select(actions.c.action_id, actions.c.status)):
            codes = log_codes(store, action_id)
            assert codes == (["ActionStarted", "ActionSucceeded"] if status == "SUCCEEDED" else ["ActionStarted"])
        orphans = conn.execute(sa.select(action_log.c.action_id).where(
            action_log.c.action_id.not_in(sa.select(actions.c.action_id)))).all()
        assert orphans == []
    # The killed writers' lock on the writers' lock file went with them: a write goes through at once.
    began = time.monotonic()
    store.create(new_action(), log=(1.0, "ActionStarted", "Action started"), now=time.time())
    assert time.monotonic() - began < 5
    assert (tmp_path / "aptk.db-writer.lock").stat().st_mode & 0o077 == 0
    store.dispose()


@pytest.mark.parametrize("changes", [
    {},
    {"label": "a label", "display_status": "working", "completion_time": 1_700_000_123.25, "release_after": 90.5},
    {"monitor_by": [], "manage_by": ["urn:globus:groups:id:" + str(uuid.uuid4())], "details": {"n": {"deep": [1]}},
     "status": Status.FAILED, "start_time": None, "release_after": 0.0},
    {"status": Status.INACTIVE, "release_after": 30 * 86400.0, "details": {"code": "X", "description": "y"}},
])
def test_the_status_document_is_exactly_what_the_schema_dumps(changes):
    action = new_action(**changes)
    expected = ActionStatusSchema().dump(action)
    assert dump_status(action) == expected
    assert json.dumps(dump_status(action), sort_keys=True) == json.dumps(expected, sort_keys=True)


@pytest.mark.parametrize("document", [
    {"request_id": "r", "body": {}},
    {"request_id": "r" * 256, "body": {"a": [1, {"b": None}], "ü": "x"}},
    {"request_id": "", "body": {}},
    {"request_id": "r" * 257, "body": {}},
    {"request_id": "a\x00b", "body": {}},
    {"request_id": 5, "body": {}},
    {"request_id": "r", "body": []},
    {"request_id": "r", "body": None},
    {"request_id": "r", "boddy": {}},
    {"request_id": "r", "body": {}, "label": "l", "monitor_by": ["urn:globus:auth:identity:" + str(uuid.uuid4())]},
])
def test_a_request_loads_exactly_as_the_schema_loads_it(document):
    from marshmallow import ValidationError

    from toolkit.documents import ActionRequestSchema, load_action_request

    try:
        expected = ActionRequestSchema().load(document)
    except ValidationError as exc:
        with pytest.raises(ValidationError) as caught:
            load_action_request(document)
        assert caught.value.messages == exc.messages
    else:
        assert load_action_request(document) == expected
        assert load_action_request(document)["body"] is not document["body"]


def test_the_wal_is_checkpointed_by_a_thread_of_the_store_not_by_a_writer_holding_the_lock(tmp_path, monkeypatch):
    import shutil
    import sqlite3

    import toolkit.store as store_module

    monkeypatch.setattr(store_module, "CHECKPOINT_COMMITS", 4)
    store = SQLStore(f"sqlite:///{tmp_path / 'aptk.db'}")
    store.create_schema()
    checkpoints = []
    checkpoint = store._checkpoint
    monkeypatch.setattr(store, "_checkpoint", lambda: (checkpoints.append(threading.current_thread().name),
                                                       checkpoint()))
    with store.engine.connect() as conn:  # SQLite's own checkpoint is only a backstop far above its default
        assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == store_module.CHECKPOINT_BACKSTOP_PAGES
    ids = []
    for _ in range(4):
        action = new_action()
        store.create(action, log=(1.0, "ActionStarted", "Action started"), now=time.time())
        ids.append(action.action_id)
    deadline = time.monotonic() + 10
    while (not checkpoints or store._checkpointing) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert checkpoints == ["aptk-checkpoint"]
    # Checkpointed: the database file alone (without its WAL) holds the four actions, which SQLite's automatic
    # checkpoint would not have copied there yet.
    shutil.copy(tmp_path / "aptk.db", tmp_path / "alone.db")
    alone = sqlite3.connect(tmp_path / "alone.db")
    try:
        found = {r[0] for r in alone.execute("SELECT action_id FROM aptk_actions")}
    finally:
        alone.close()
    assert set(ids) <= found
    assert all(store.get(i) is not None for i in ids)
    store.dispose()


def test_an_update_statement_is_built_once_per_shape_and_unknown_columns_are_refused(store):
    action = new_action()
    store.create(action, log=(1.0, "ActionStarted", "Action started"), now=time.time())
    sql = store.sql
    sql._updates.clear()
    for n in range(3):
        assert store.update(action.action_id, where={"status": {Status.ACTIVE, Status.INACTIVE}, "runner": None},
                            display_status=f"step {n}") is None  # runner is set: the condition does not hold
        assert store.update(action.action_id, where={"status": {Status.ACTIVE, Status.INACTIVE}, "attempts": 1},
                            display_status=f"step {n}").display_status == f"step {n}"
    assert len(sql._updates) == 2
    with pytest.raises(KeyError):
        store.update(action.action_id, where={"no_such_column": 1}, display_status="x")
    with pytest.raises(KeyError):
        store.update(action.action_id, where={"status": Status.ACTIVE}, no_such_column="x")
    assert store.get(action.action_id).display_status == "step 2"


def test_a_create_that_loses_to_an_earlier_one_of_the_same_request_leaves_none_of_its_rows(store):
    first = new_action(request_id="same")
    assert store.create(first, log=(1.0, "ActionStarted", "Action started"), now=time.time()) == (first, True)
    second = new_action(request_id="same", creator_id=first.creator_id)
    found, created = store.create(second, log=(2.0, "ActionStarted", "Action started"), now=time.time())
    assert (found, created) == (first, False)
    with store.engine.connect() as conn:
        for table in (actions, action_roles, action_log):
            assert conn.execute(sa.select(sa.func.count()).select_from(table)
                                .where(table.c.action_id == second.action_id)).scalar() == 0
    assert log_codes(store, first.action_id) == ["ActionStarted"]
    # The connection that met the conflict serves the next write as usual.
    third = new_action()
    assert store.create(third, log=(3.0, "ActionStarted", "Action started"), now=time.time())[1]
    assert store.get(third.action_id) == third


def _dsn(server, database: str) -> str:
    return f"host=127.0.0.1 port={server.port} user={server.user} dbname={sa.engine.make_url(database).database}"


def _statements_logged(server, database: str, work) -> list[str]:
    """The statements PostgreSQL received for ``database`` while ``work()`` ran (its server log; the database
    logs every statement of sessions opened after ``ALTER DATABASE ... SET log_statement = 'all'``), in order;
    the pool's pings (empty statements) as ";"."""
    import psycopg

    marker = uuid.uuid4().hex
    with psycopg.connect(_dsn(server, database), autocommit=True) as marks:
        marks.execute(f"SELECT 'start {marker}'")
        work()
        marks.execute(f"SELECT 'end {marker}'")
    lines = (server.directory / "log").read_text(errors="replace").splitlines()
    begin = next(i for i, line in enumerate(lines) if f"start {marker}" in line)
    end = next(i for i, line in enumerate(lines) if f"end {marker}" in line)
    statements = []
    for line in lines[begin + 1:end]:
        for tag in ("LOG:  statement: ", "LOG:  execute "):
            if tag in line:
                text = line.split(tag, 1)[1]
                text = text.split(": ", 1)[1] if tag.endswith("execute ") else text
                statements.append(text if text.strip(" ;") else ";")  # ";": the pool's ping
    return statements


def _logging_database(server) -> str:
    import psycopg

    database = server.create_database(f"aptk_{uuid.uuid4().hex[:12]}")
    with psycopg.connect(_dsn(server, database), autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{sa.engine.make_url(database).database}" SET log_statement = \'all\'')
    return database


def test_on_postgresql_a_status_a_run_and_its_outcome_are_one_statement_each(postgres_server):
    database = _logging_database(postgres_server)
    store = SQLStore(database)
    store.create_schema()
    action = new_action()
    try:
        store.get(action.action_id)  # the pool's first connection, opened before the count
        results = {}

        def work():
            results["created"] = store.create(action, log=(1.0, "ActionStarted", "Action started"), now=time.time())
            results["ended"] = store.update(
                action.action_id, where={"status": Status.ACTIVE, "runner": "r"},
                log=(2.0, "ActionSucceeded", "Action SUCCEEDED"), status=Status.SUCCEEDED, runner=None,
                completion_time=10.0, release_after=5.0)
            results["read"] = store.get(action.action_id)

        statements = _statements_logged(postgres_server, database, work)
        assert results["created"] == (action, True)
        assert results["read"] == results["ended"] and results["ended"].status is Status.SUCCEEDED
        # No BEGIN or COMMIT: each is one statement, its own transaction, one round trip to the server; and no
        # ping before them, the connection having been used moments before.
        assert [s.split()[0] for s in statements] == ["WITH", "WITH", "SELECT"], statements
        assert "INSERT INTO aptk_action_roles" in statements[0] and "INSERT INTO aptk_action_log" in statements[1]
        assert log_codes(store, action.action_id) == ["ActionStarted", "ActionSucceeded"]
        # The connections go back to the pool as it hands them out: in transactions, not autocommit.
        fairy = store.engine.raw_connection()
        try:
            assert fairy.dbapi_connection.autocommit is False
        finally:
            fairy.close()
    finally:
        store.dispose()


def test_on_postgresql_an_idle_connection_is_pinged_before_use_and_a_busy_one_is_not(postgres_server, monkeypatch):
    import toolkit.store

    database = _logging_database(postgres_server)
    store = SQLStore(database)
    store.create_schema()
    action = new_action()
    store.create(action, log=(1.0, "ActionStarted", "Action started"), now=time.time())
    try:
        assert _statements_logged(postgres_server, database, lambda: store.get(action.action_id)) == [
            store.sql.select_action.replace("%s", "$1")]
        monkeypatch.setattr(toolkit.store, "PING_IDLE_SECONDS", 0.0)  # every connection counts as idle
        statements = _statements_logged(postgres_server, database, lambda: store.get(action.action_id))
        assert [s.split()[0] for s in statements] == [";", "SELECT"]
    finally:
        store.dispose()


def test_on_postgresql_a_restart_costs_reads_nothing_and_fails_only_a_write_already_on_its_way(monkeypatch):
    import toolkit.store
    from tests.servers.postgres import start_postgres
    from toolkit.errors import database_unavailable

    server = start_postgres()  # its own: restarted below
    store = SQLStore(server.create_database("aptk_restarts"))
    try:
        store.create_schema()
        action = new_action()
        store.create(action, log=(1.0, "ActionStarted", "Action started"), now=time.time())
        # No connection counts as idle: only a loss seen makes the pool ping (the worst case for this test).
        monkeypatch.setattr(toolkit.store, "PING_IDLE_SECONDS", 3600.0)
        held = [store.engine.raw_connection() for _ in range(4)]  # the pool keeps several connections
        for fairy in held:
            fairy.close()
        assert store.get(action.action_id) == action

        server.restart()
        assert store.get(action.action_id) == action  # on the dead connection, then again on a new one
        more = [new_action() for _ in range(4)]
        for other in more:  # the loss was seen: every pooled connection is pinged, and replaced, before use
            assert store.create(other, log=(2.0, "ActionStarted", "Action started"), now=time.time())[1]

        held = [store.engine.raw_connection() for _ in range(6)]  # all of them in use since the loss
        for fairy in held:
            fairy.close()
        server.restart()
        owner = {"status": Status.ACTIVE, "runner": "r"}
        with pytest.raises(sa.exc.DBAPIError) as caught:  # sent on a connection the restart cut: a 503
            store.update(action.action_id, where=owner, log=(3.0, "ActionSucceeded", "Action SUCCEEDED"),
                         status=Status.SUCCEEDED, runner=None, completion_time=3.0)
        assert database_unavailable(caught.value)
        assert store.get(action.action_id) == action  # nothing of it was written
        assert log_codes(store, action.action_id) == ["ActionStarted"]
        done = store.update(action.action_id, where=owner, log=(3.0, "ActionSucceeded", "Action SUCCEEDED"),
                            status=Status.SUCCEEDED, runner=None, completion_time=3.0)
        assert done is not None and done.status is Status.SUCCEEDED
        assert log_codes(store, action.action_id) == ["ActionStarted", "ActionSucceeded"]
    finally:
        store.dispose()
        server.stop()


# --- the writer gate: a process's other threads hold back while its transaction holds the SQLite write lock ----


def test_a_request_waits_while_a_transaction_of_its_process_holds_the_write_lock(tmp_path):
    from toolkit.store import wait_for_writer

    store = SQLStore(f"sqlite:///{tmp_path / 'aptk.db'}")
    store.create_schema()
    inside, finish = threading.Event(), threading.Event()

    def slow_write(cursor):
        inside.set()
        finish.wait(10)
        cursor.execute("INSERT INTO aptk_action_log (action_id, time, code, description) VALUES ('a', 1, 'c', 'd')")

    def failing_write(cursor):
        inside.set()
        finish.wait(10)
        raise RuntimeError("the write fails")

    try:
        assert wait_for_writer(0) is True  # open: nothing waits
        for work in (slow_write, failing_write):
            inside.clear()
            finish.clear()
            writer = threading.Thread(target=_write_quietly, args=(store, work))
            writer.start()
            assert inside.wait(10)
            started = time.monotonic()
            assert wait_for_writer(0.2) is False  # still held after the longest wait: a request goes ahead
            assert 0.15 < time.monotonic() - started < 2.0
            threading.Timer(0.1, finish.set).start()
            assert wait_for_writer(10) is True  # opens as soon as the transaction ends, failed or not
            writer.join(10)
            assert wait_for_writer(0) is True
    finally:
        finish.set()
        store.dispose()


def _write_quietly(store, work):
    with contextlib.suppress(RuntimeError):
        store._transact(work)


def test_a_child_forked_while_its_parent_held_the_write_lock_does_not_wait_for_it(tmp_path):
    from toolkit import store as store_module

    store_module._writer_gate.close()
    try:
        pid = os.fork()
        if pid == 0:  # the child: its gate is open
            os._exit(0 if store_module.wait_for_writer(0) else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert store_module.wait_for_writer(0) is False  # the parent still holds it
    finally:
        store_module._writer_gate.open()
    assert store_module.wait_for_writer(0) is True
