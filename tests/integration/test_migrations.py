"""Models and migrations stay in step; serve upgrades an empty or older database."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

from db import migrate
from db.schema import metadata


def test_migrations_match_the_model(fresh_db_url):
    engine = create_engine(fresh_db_url)
    migrate.upgrade(engine)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), metadata)
    engine.dispose()
    assert diff == [], (
        "the schema derived from the model differs from the migrations; "
        "add a revision (xapi db revision) for: %r" % diff[:5]
    )


def test_upgrade_from_empty_and_is_idempotent(fresh_db_url):
    engine = create_engine(fresh_db_url)
    assert migrate.current(engine) is None
    migrate.upgrade(engine)
    assert migrate.current(engine) == "0003"
    migrate.upgrade(engine)  # nothing left to do
    tables = set(inspect(engine).get_table_names())
    assert {"vm", "vbd", "session", "pool", "xapi_generation", "xapi_changes"} <= tables
    with engine.connect() as conn:
        assert conn.execute(text("SELECT generation FROM xapi_generation")).scalar_one() == 0
    engine.dispose()


def test_every_stored_class_has_a_table_without_derived_sets():
    from xapi.idl.model import model

    m = model()
    for cls in m.classes.values():
        if not cls.in_database:
            continue
        table = metadata.tables[cls.name.lower()]
        for f in cls.fields.values():
            assert (f.name in table.c) == (f.derived is None), (cls.name, f.name)
    assert "VBDs" not in metadata.tables["vm"].c and "VM" in metadata.tables["vbd"].c
