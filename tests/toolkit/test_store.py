"""The store's helpers for providers keeping tables of their own beside the actions."""

import subprocess
import sys
from pathlib import Path

import sqlalchemy as sa

from toolkit.store import create_tables


REUSE_PROBE = """
import gc
import sqlalchemy as sa
from toolkit.store import create_tables

tables = sa.MetaData()
sa.Table("notes", tables, sa.Column("id", sa.Integer, primary_key=True))
missing = reused = 0
addresses = set()
for _ in range(200):
    engine = sa.create_engine("sqlite://")
    reused += id(engine) in addresses
    addresses.add(id(engine))
    create_tables(engine, tables)
    with engine.connect() as conn:
        if not sa.inspect(conn).has_table("notes"):
            missing += 1
    engine.dispose()
    del engine
    gc.collect()
    if reused >= 5:
        break
print(missing, reused)
"""


def test_every_new_engine_gets_the_tables_even_when_an_old_engine_was_collected_at_the_same_address():
    # In a fresh interpreter: a full collection there is quick, where in the test process's heap it costs seconds.
    done = subprocess.run([sys.executable, "-c", REUSE_PROBE], capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr
    missing, reused = map(int, done.stdout.split())
    assert reused >= 1  # an engine did land at a collected one's address: the case this test is about
    assert missing == 0


def test_the_same_engine_and_tables_are_created_once():
    tables = sa.MetaData()
    sa.Table("notes", tables, sa.Column("id", sa.Integer, primary_key=True))
    engine = sa.create_engine("sqlite://")
    create_tables(engine, tables)
    statements = []
    sa.event.listen(engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    create_tables(engine, tables)
    assert statements == []
    create_tables(engine, tables, once=False)
    assert statements  # without ``once`` the tables are checked again
