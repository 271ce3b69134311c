"""What a transfer writes down in the toolkit's database, on SQLite and on a real PostgreSQL: the files it finished
(for a rerun after a crash) and the multipart uploads it began."""

from __future__ import annotations

import uuid

import pytest
import sqlalchemy as sa

from providers.transfer.state import Done, DoneRecords, Uploads


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request, tmp_path):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'state.db'}"
    else:
        url = request.getfixturevalue("postgres_server").create_database(f"aptk_{uuid.uuid4().hex[:12]}")
    engine = sa.create_engine(url)
    yield engine
    engine.dispose()


def test_finished_files_are_recorded_replaced_and_cleared(engine):
    records = DoneRecords(engine, "action-1")
    other = DoneRecords(engine, "action-2")
    assert not records.written
    records.add([Done("a/one.txt", 3, 1_700_000_000.5, "ab" * 32), Done("a/two.txt", 0, None, None)])
    other.add([Done("a/one.txt", 9, None, None)])
    records.add([Done("a/one.txt", 4, 1_700_000_001.0, "cd" * 32)])  # copied again by a later attempt
    assert records.written
    assert records.load() == {"a/one.txt": Done("a/one.txt", 4, 1_700_000_001.0, "cd" * 32),
                              "a/two.txt": Done("a/two.txt", 0, None, None)}
    records.clear()
    assert records.load() == {} and other.load() == {"a/one.txt": Done("a/one.txt", 9, None, None)}


def test_uploads_are_recorded_until_they_end(engine):
    uploads = Uploads(engine, "action-1")
    uploads.begun("out/big.bin", "upload-1")
    uploads.begun("out/other.bin", "upload-2")
    Uploads(engine, "action-2").begun("out/big.bin", "upload-3")
    uploads.ended("upload-1")
    assert uploads.load() == [("out/other.bin", "upload-2")]
    assert Uploads(engine, "action-2").load() == [("out/big.bin", "upload-3")]
