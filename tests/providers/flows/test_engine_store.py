"""The run record's writes: a compare-and-set on the toolkit's attempt, the definition written once."""

from __future__ import annotations

import uuid

import pytest

from providers.flows import engine_store
from providers.flows.engine_store import RunRecord, Superseded
from toolkit import SQLStore


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    if request.param == "sqlite":
        made = SQLStore(f"sqlite:///{tmp_path / 'aptk.db'}")
    else:
        server = request.getfixturevalue("postgres_server")
        made = SQLStore(server.create_database(f"aptk_{uuid.uuid4().hex[:12]}"))
    made.create_schema()
    yield made
    made.dispose()


def test_a_later_attempt_owns_the_record_and_the_first_definition_stays(store):
    first = {"StartAt": "A", "States": {"A": {"Type": "Succeed"}}}
    engine_store.save(store, RunRecord("r1", "A", {"n": 1}, flow_version=3), 1, definition=("f", 3, first))
    engine_store.save(store, RunRecord("r1", "A", {"n": 2}, flow_version=3), 2,
                      definition=("f", 4, {"StartAt": "B", "States": {"B": {"Type": "Succeed"}}}))
    with pytest.raises(Superseded):  # attempt 1 may no longer move the run
        engine_store.save(store, RunRecord("r1", "A", {"n": 3}), 1)
    record = engine_store.load(store.engine, "r1")
    assert record is not None and (record.document, record.flow_version) == ({"n": 2}, 3)
    assert engine_store.definition(store.engine, "r1") == (3, first)
    assert engine_store.definition(store.engine, "r2") is None and engine_store.load(store.engine, "r2") is None
