"""The store at scale: every statement it runs finds its rows through an index (the database's own plan says so,
on SQLite and on PostgreSQL), and expired actions go in bounded batches."""

from __future__ import annotations

import re
import time
import uuid

import pytest
import sqlalchemy as sa

from providers.hello import provider as hello
from toolkit import SQLStore, Status, get_toolkit
from toolkit.lifecycle import PURGE_SECONDS
from toolkit.store import PURGE_BATCH, action_log, action_roles, actions
from toolkit.testing import TestClient, close_app, provider_app

NOW = time.time()


def exercise(store: SQLStore, tmp_path) -> None:
    """Every operation of the store: the whole lifecycle over the API, then what maintenance runs."""
    app, authority = provider_app(hello, tmp_path / "data", prefix="/hello", store=store)
    try:
        client = TestClient(app, "/hello", authority.token(scopes=[hello.globus_auth_scope]), authority)
        watcher = ["urn:globus:auth:identity:" + str(uuid.uuid4())]
        done = client.run({"echo_string": "a"}, wait=True, request_id="r1", monitor_by=watcher)
        client.run({"echo_string": "a"}, request_id="r1", monitor_by=watcher)  # the same request again
        client.status(done["action_id"])
        client.log(done["action_id"])
        client.actions_page(status=["SUCCEEDED"], roles=["creator_id", "monitor_by"])
        sleeping = client.run({"echo_string": "z", "sleep_time": 30})["action_id"]
        client.wait(sleeping, until=["ACTIVE"])
        client.cancel(sleeping)
        client.release(done["action_id"])
        runtime = get_toolkit(app).runtime
        runtime.sweep(NOW + 10 * 86400)
        runtime._recover_local(NOW)
        store.find(statuses={Status.ACTIVE}, providers=["hello"], runner_prefix="host-1/")
        store.heartbeat(runtime.runner_id, NOW, ["0" * 32])
        store.still_running(runtime.runner_id, {"0" * 32: 1})
        store.ping()
    finally:
        close_app(app)


FULL_SCAN = re.compile(r"^SCAN (aptk_\w+)")


def bounded(sql: str) -> bool:
    """A statement with no WHERE that reads a fixed number of rows (the health check's)."""
    return " WHERE " not in sql.upper() and re.search(r"LIMIT 1\b", sql) is not None


def test_no_statement_of_the_store_scans_a_whole_table_on_sqlite(tmp_path):
    store = SQLStore(f"sqlite:///{tmp_path / 'plans.db'}")
    statements: list[str] = []
    sa.event.listen(store.engine, "connect", lambda dbapi, _: dbapi.set_trace_callback(statements.append))

    exercise(store, tmp_path)

    checked, scans = 0, []
    with store.engine.connect() as conn:
        for sql in dict.fromkeys(statements):
            if not re.match(r"\s*(SELECT|UPDATE|DELETE)\b", sql, re.I) or "aptk_" not in sql or bounded(sql):
                continue
            checked += 1
            for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql):
                if FULL_SCAN.match(row[-1]):
                    scans.append((row[-1], sql))
    store.dispose()
    assert checked >= 15
    assert scans == []


def test_removing_an_index_makes_the_plan_check_fail(tmp_path):
    """The check above can fail: without the expires_at index, the expiry sweep scans the table."""
    store = SQLStore(f"sqlite:///{tmp_path / 'plans.db'}")
    store.create_schema()
    with store.engine.begin() as conn:
        conn.exec_driver_sql("DROP INDEX aptk_actions_expiry")
        plan = [row[-1] for row in conn.exec_driver_sql(
            "EXPLAIN QUERY PLAN SELECT action_id FROM aptk_actions WHERE expires_at <= 5 ORDER BY expires_at LIMIT 500")]
    store.dispose()
    assert any(FULL_SCAN.match(step) for step in plan)


def test_no_statement_of_the_store_scans_a_whole_table_on_postgresql(postgres_server, tmp_path):
    url = postgres_server.create_database(f"aptk_{uuid.uuid4().hex[:12]}")
    store = SQLStore(url)
    plans: list[str] = []

    def explain_everything(dbapi, _record):
        # auto_explain sends each statement's plan as a notice; with sequential scans priced out, a table
        # scan only remains where no index serves the statement.
        dbapi.autocommit = True
        for setting in ("LOAD 'auto_explain'", "SET auto_explain.log_min_duration = 0",
                        "SET auto_explain.log_level = 'notice'", "SET enable_seqscan = off"):
            dbapi.execute(setting)
        dbapi.autocommit = False
        dbapi.add_notice_handler(lambda notice: plans.append(notice.message_primary or ""))

    sa.event.listen(store.engine, "connect", explain_everything)

    exercise(store, tmp_path)
    store.dispose()

    ours = [p for p in plans if "aptk_" in p and re.search(r"Query Text:\s*(SELECT|UPDATE|DELETE)", p, re.I)]
    scans = [p for p in ours if re.search(r"Seq Scan on aptk_", p)
             and not bounded(p.split("Query Text:", 1)[1].split("\n", 1)[0])]
    assert len(ours) >= 15
    assert scans == []


OLD_FULL_INDEXES = {
    "aptk_actions_status_heartbeat": "status, heartbeat", "aptk_actions_status_deadline": "status, deadline",
    "aptk_actions_status_runner": "status, runner", "aptk_actions_expires_at": "expires_at",
}
PARTIAL = {"aptk_actions_live_heartbeat", "aptk_actions_live_deadline", "aptk_actions_live_runner",
           "aptk_actions_expiry"}


def as_older_version(store: SQLStore) -> None:
    """Make the store's database look as an earlier version left it: full indexes, none of the partial ones."""
    store.create_schema()
    with store.engine.begin() as conn:
        for name in PARTIAL:
            conn.exec_driver_sql(f"DROP INDEX {name}")
        for name, columns in OLD_FULL_INDEXES.items():
            conn.exec_driver_sql(f"CREATE INDEX {name} ON aptk_actions ({columns})")


def test_partial_indexes_replace_an_older_databases_full_ones_on_sqlite(tmp_path):
    store = SQLStore(f"sqlite:///{tmp_path / 'old.db'}")
    as_older_version(store)
    store.create_schema()
    with store.engine.connect() as conn:
        indexes = {row[1]: row[4] for row in conn.exec_driver_sql("PRAGMA index_list(aptk_actions)")}
    store.dispose()
    assert not set(OLD_FULL_INDEXES) & set(indexes)
    assert {name: indexes.get(name) for name in PARTIAL} == {name: 1 for name in PARTIAL}  # 1: partial


def test_partial_indexes_replace_an_older_databases_full_ones_on_postgresql(postgres_server):
    store = SQLStore(postgres_server.create_database(f"aptk_{uuid.uuid4().hex[:12]}"))
    as_older_version(store)
    store.create_schema()
    with store.engine.connect() as conn:
        indexes = dict(conn.exec_driver_sql(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'aptk_actions'").all())
    store.dispose()
    assert not set(OLD_FULL_INDEXES) & set(indexes)
    assert all(" WHERE " in indexes[name] for name in PARTIAL), indexes


def test_ended_actions_leave_the_indexes_of_unfinished_ones(tmp_path):
    """A finished action is in none of the live indexes, an active one in each (ANALYZE counts their entries)."""
    app, authority = provider_app(hello, tmp_path / "data", prefix="/hello")
    try:
        client = TestClient(app, "/hello", authority.token(scopes=[hello.globus_auth_scope]), authority)
        for n in range(3):
            client.run({"echo_string": "a"}, wait=True, request_id=f"done{n}")
        client.wait(client.run({"echo_string": "z", "sleep_time": 30})["action_id"], until=["ACTIVE"])
        store = get_toolkit(app).runtime.store
        with store.engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE aptk_actions")
            entries = {idx: int(stat.split()[0]) for idx, stat in conn.exec_driver_sql(
                "SELECT idx, stat FROM sqlite_stat1 WHERE tbl = 'aptk_actions'")}
    finally:
        close_app(app)
    assert entries["aptk_actions_listing"] == 4  # every action
    assert {name: entries.get(name, 0) for name in PARTIAL} == {
        "aptk_actions_live_heartbeat": 1, "aptk_actions_live_deadline": 1, "aptk_actions_live_runner": 1,
        "aptk_actions_expiry": 3}


# --- expiry in bounded batches -----------------------------------------------------------------------------------


def fill_expired(store: SQLStore, count: int, expired_at: float) -> None:
    """``count`` completed actions that expired at ``expired_at``, each with a role row and two log lines."""
    store.create_schema()
    rows, roles, log = [], [], []
    for _ in range(count):
        action_id = uuid.uuid4().hex
        rows.append({
            "action_id": action_id, "provider": "hello", "request_id": action_id, "request_hash": "h",
            "creator_id": "urn:x", "status": "SUCCEEDED", "body": {}, "details": {}, "monitor_by": [],
            "manage_by": [], "start_time": expired_at - 20, "completion_time": expired_at - 10,
            "release_after": 10.0, "expires_at": expired_at, "attempts": 1, "principals": [],
        })
        roles.append({"action_id": action_id, "role": "creator_id", "principal": "urn:x"})
        log += [{"action_id": action_id, "time": expired_at - 20, "code": "ActionStarted", "description": "s"},
                {"action_id": action_id, "time": expired_at - 10, "code": "ActionSucceeded", "description": "d"}]
    with store.engine.begin() as conn:
        conn.execute(actions.insert(), rows)
        conn.execute(action_roles.insert(), roles)
        conn.execute(action_log.insert(), log)


def counts(store: SQLStore) -> tuple[int, int, int]:
    with store.engine.connect() as conn:
        return tuple(conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one()
                     for t in (actions, action_roles, action_log))  # type: ignore[return-value]


class CountingStore(SQLStore):
    """The SQL store, noting what each purge transaction deleted."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.purged: list[int] = []

    def purge_expired(self, now: float, limit: int = PURGE_BATCH) -> int:
        gone = super().purge_expired(now, limit)
        self.purged.append(gone)
        return gone


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'expiry.db'}"
    server = request.getfixturevalue("postgres_server")
    return server.create_database(f"aptk_{uuid.uuid4().hex[:12]}")


def test_expired_actions_are_deleted_with_their_roles_and_log_in_batches_of_at_most_the_limit(store_url):
    store = CountingStore(store_url)
    fill_expired(store, 1250, expired_at=NOW - 1)
    fill_expired(store, 3, expired_at=NOW + 3600)  # not yet

    sizes = [store.purge_expired(NOW, 500) for _ in range(4)]

    assert sizes == [500, 500, 250, 0]
    assert counts(store) == (3, 3, 6)
    store.dispose()


def test_a_sweep_purges_in_batches_of_purge_batch_until_nothing_is_left(store_url, tmp_path):
    store = CountingStore(store_url)
    fill_expired(store, 2 * PURGE_BATCH + 7, expired_at=NOW - 1)
    app, _ = provider_app(hello, tmp_path / "data", prefix="/hello", store=store)
    try:
        runtime = get_toolkit(app).runtime
        started = time.monotonic()
        runtime.purge(NOW)
        took = time.monotonic() - started
    finally:
        close_app(app)

    assert PURGE_BATCH == 500  # as the README says
    assert store.purged == [PURGE_BATCH, PURGE_BATCH, 7]
    assert counts(store) == (0, 0, 0)
    assert took < PURGE_SECONDS + 5
    store.dispose()


def test_a_sweep_stops_after_its_time_even_with_more_to_purge(tmp_path, monkeypatch):
    store = CountingStore(f"sqlite:///{tmp_path / 'expiry.db'}")
    fill_expired(store, 30, expired_at=NOW - 1)
    monkeypatch.setattr("toolkit.lifecycle.PURGE_BATCH", 5)
    monkeypatch.setattr("toolkit.lifecycle.PURGE_SECONDS", 0.0)
    app, _ = provider_app(hello, tmp_path / "data", prefix="/hello", store=store)
    try:
        get_toolkit(app).runtime.purge(NOW)
    finally:
        close_app(app)

    assert store.purged == [5]
    assert counts(store)[0] == 25
    store.dispose()


def test_a_page_of_actions_reads_the_callers_role_rows_then_each_action_by_primary_key(tmp_path):
    """Not every action of the provider in listing order: a caller with a few actions among millions."""
    store = SQLStore(f"sqlite:///{tmp_path / 'plans.db'}")
    statements: list[str] = []
    sa.event.listen(store.engine, "connect", lambda dbapi, _: dbapi.set_trace_callback(statements.append))
    store.create_schema()

    store.enumerate("hello", ["urn:globus:auth:identity:x"], ["creator_id", "monitor_by"], list(Status), NOW,
                    after=(NOW - 5, "0" * 32), limit=51)

    [sql] = [s for s in statements if "aptk_action_roles" in s and s.lstrip().upper().startswith("SELECT")]
    with store.engine.connect() as conn:
        plan = [row[-1] for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql)]
    store.dispose()
    on_actions = [step for step in plan if "aptk_actions " in step + " "]
    assert any(step.startswith("SEARCH aptk_action_roles USING INDEX aptk_action_roles_principal") for step in plan)
    assert len(on_actions) == 1 and on_actions[0].startswith("SEARCH aptk_actions USING INDEX "
                                                             "sqlite_autoindex_aptk_actions_1 (action_id=?)")
