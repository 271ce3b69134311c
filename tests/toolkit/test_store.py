"""The store's helpers for providers keeping tables of their own beside the actions."""

import gc

import sqlalchemy as sa

from toolkit.store import create_tables


def test_every_new_engine_gets_the_tables_even_when_an_old_engine_was_collected_at_the_same_address():
    tables = sa.MetaData()
    sa.Table("notes", tables, sa.Column("id", sa.Integer, primary_key=True))
    missing = 0
    addresses: set[int] = set()
    reused = 0
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
        gc.collect()  # a full collection costs more the bigger the test process's heap: stop once reuse was seen
        if reused >= 5:
            break
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
