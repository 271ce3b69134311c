"""Run records do not outlive their runs: once a run's action is released or removed by expiry, a background
sweep (every APTK_FLOWS_PURGE_INTERVAL seconds) deletes its rows, in bounded batches."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
import sqlalchemy as sa

from providers.flows import engine_store
from tests.providers.conftest import wait_for
from toolkit import get_toolkit
from toolkit.errors import ConfigurationError
from toolkit.testing import close_app

from .conftest import OTHER, deployment, make_site

WAITING = {"StartAt": "Sleep", "States": {"Sleep": {"Type": "Wait", "Seconds": 600, "Next": "Done"},
                                          "Done": {"Type": "Succeed"}}}


def stored(site: Any) -> set[str]:
    """The run ids with a record, and those with a definition (the same)."""
    engine = get_toolkit(site.app).runtime.store.engine
    with engine.connect() as conn:
        runs = set(conn.execute(sa.select(engine_store.runs_table.c.run_id)).scalars())
        definitions = set(conn.execute(sa.select(engine_store.definitions_table.c.run_id)).scalars())
    assert runs == definitions
    return runs


def test_released_and_expired_runs_lose_their_records_and_runs_still_there_keep_them(tmp_path):
    site = make_site(tmp_path, APTK_FLOWS_PURGE_INTERVAL=0.1)
    try:
        site.session().deploy(deployment(id="greeter"))
        site.session().deploy(deployment(id="sleepy", definition=WAITING, input_schema={"type": "object"}))
        runner = site.flow("greeter", OTHER)
        released = runner.run({"name": "a"}, wait=True)
        expiring = runner.run({"name": "b"}, wait=True, release_after="PT30S")  # no sweep expires it before the check
        kept = runner.run({"name": "c"}, wait=True)  # ended, not released: its record stays
        active = site.flow("sleepy", OTHER).run({})
        wait_for(lambda: active["action_id"] in stored(site))
        assert {released["action_id"], expiring["action_id"], kept["action_id"]} <= stored(site)
        runner.release(released["action_id"])
        wait_for(lambda: released["action_id"] not in stored(site), timeout=10)
        runtime = get_toolkit(site.app).runtime
        runtime.purge(time.time() + 60)  # the toolkit removes the expired action (unless its own sweep just did)
        assert runtime.store.get(expiring["action_id"]) is None
        wait_for(lambda: expiring["action_id"] not in stored(site), timeout=10)
        time.sleep(0.5)  # several more sweeps
        assert stored(site) == {kept["action_id"], active["action_id"]}
        assert site.flow("sleepy", OTHER).status(active["action_id"])["status"] == "ACTIVE"
    finally:
        close_app(site.app)


def test_the_purge_interval_setting_is_honoured(tmp_path):
    site = make_site(tmp_path, APTK_FLOWS_PURGE_INTERVAL=3600)
    try:
        site.session().deploy(deployment(id="greeter"))
        runner = site.flow("greeter", OTHER)
        done = runner.run({"name": "a"}, wait=True)
        runner.release(done["action_id"])
        time.sleep(1.0)
        assert done["action_id"] in stored(site)  # no sweep for an hour
    finally:
        close_app(site.app)
    for wrong in ("0", "soon"):
        with pytest.raises(ConfigurationError, match="APTK_FLOWS_PURGE_INTERVAL"):
            make_site(tmp_path, data=f"data-{wrong}", APTK_FLOWS_PURGE_INTERVAL=wrong)


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request) -> dict[str, str]:
    if request.param == "sqlite":
        return {}
    server = request.getfixturevalue("postgres_server")
    return {"APTK_DATABASE_URL": server.create_database(f"aptk_{uuid.uuid4().hex[:12]}")}


def test_a_sweep_deletes_in_batches_and_only_rows_whose_action_is_gone(tmp_path, database):
    site = make_site(tmp_path, **database)
    try:
        site.session().deploy(deployment(id="greeter"))
        live = site.flow("greeter", OTHER).run({"name": "a"}, wait=True)["action_id"]
        store = get_toolkit(site.app).runtime.store
        for n in range(5):
            record = engine_store.RunRecord(f"gone{n}", None, {})
            engine_store.save(store, record, 1, definition=("greeter", 1, {"StartAt": "X", "States": {}}))
        deleted: list[int] = []

        def count(conn, cursor, statement, parameters, context, executemany):
            if statement.lstrip().startswith("DELETE FROM aptk_flow_runs"):
                deleted.append(cursor.rowcount)

        sa.event.listen(store.engine, "after_cursor_execute", count)
        try:
            assert engine_store.purge_released(store.engine, batch=2) == 5
        finally:
            sa.event.remove(store.engine, "after_cursor_execute", count)
        assert stored(site) == {live}
        assert sum(deleted) == 5 and max(deleted) <= 2
    finally:
        close_app(site.app)
