"""Frozen schema snapshots for migrations.

The initial schema has about seventy tables and two thousand columns.
Rather than a few thousand lines of ``op.create_table`` calls, a revision can
carry its schema as data (a JSON file beside it) and create it from there.
The snapshot is frozen: later model changes need a new revision, and the
drift test (tests/integration/test_migrations.py) fails until one exists.
"""

from __future__ import annotations

import json
from pathlib import Path

import sqlalchemy as sa

from db.schema import UTCDateTime

_TYPES = {
    "text": sa.Text,
    "string": sa.String,
    "bigint": sa.BigInteger,
    "integer": sa.Integer,
    "float": sa.Float,
    "boolean": sa.Boolean,
    "datetime": UTCDateTime,
    "json": sa.JSON,
}


def _type_name(t) -> list:
    for name, cls in _TYPES.items():
        if type(t) is cls:
            return [name, t.length] if name == "string" else [name]
    raise TypeError(f"no snapshot name for column type {t!r}")


def dump(metadata: sa.MetaData) -> dict:
    tables = {}
    for table in metadata.sorted_tables:
        tables[table.name] = {
            "columns": [
                [c.name, _type_name(c.type), c.primary_key, c.nullable]
                for c in table.columns
            ],
            "indexes": sorted(
                [ix.name, [c.name for c in ix.columns]] for ix in table.indexes
            ),
        }
    return {"tables": tables}


def _column(name, type_spec, primary_key, nullable) -> sa.Column:
    kind, *args = type_spec
    return sa.Column(name, _TYPES[kind](*args), primary_key=primary_key, nullable=nullable)


def create(op, path: Path) -> None:
    snapshot = json.loads(path.read_text())
    for name, table in snapshot["tables"].items():
        op.create_table(name, *(_column(*c) for c in table["columns"]))
        for ix_name, cols in table["indexes"]:
            op.create_index(ix_name, name, cols)


def drop(op, path: Path) -> None:
    snapshot = json.loads(path.read_text())
    for name in reversed(list(snapshot["tables"])):
        op.drop_table(name)


def write(metadata: sa.MetaData, path: Path) -> None:
    data = dump(metadata)
    lines = ['{"tables": {']
    entries = [
        f"{json.dumps(name)}: {json.dumps(t, separators=(',', ':'))}"
        for name, t in data["tables"].items()
    ]
    lines.append(",\n".join(entries))
    lines.append("}}")
    path.write_text("\n".join(lines) + "\n")
