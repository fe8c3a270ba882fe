"""SQLAlchemy tables derived from the data model.

Every class the model keeps in the database gets a table named after the
class (lower case).  Its primary key ``_ref`` is the object reference; each
stored field is a column with the field's wire name.  Scalars are typed
columns, sets/maps/records are JSON, refs and enums are strings.  Relation
sets such as ``VM.VBDs`` are derived from the other side (``VBD.VM``) and are
never stored.  ``_created``/``_modified`` carry the pool generation of the
last change, which is what ``event.from`` reads.

Project-private tables start with ``xapi_``.
"""

from __future__ import annotations

from datetime import timezone

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
)

from xapi.idl.model import Cls, Model, model as load_model
from xapi.idl.types import Type

# Classes the model does not keep in the database but whose objects we still
# store: xapi keeps messages in a store of their own.
EXTRA_STORED = ("message",)


class UTCDateTime(TypeDecorator):
    """Naive UTC in the database, aware UTC in Python (SQLite keeps no zone)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(timezone.utc).replace(tzinfo=None)
        return value

    def process_result_value(self, value, dialect):
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value


def column_type(ty: Type):
    match ty.kind:
        case "string" | "secretstring" | "enum" | "ref":
            return Text()
        case "int":
            return BigInteger()
        case "float":
            return Float()
        case "bool":
            return Boolean()
        case "datetime":
            return UTCDateTime()
        case _:
            return JSON()


def table_name(cls_name: str) -> str:
    return cls_name.lower()


def stored_classes(m: Model) -> list[Cls]:
    return [c for c in m.classes.values() if c.in_database or c.name in EXTRA_STORED]


def build_metadata(m: Model) -> MetaData:
    md = MetaData()
    for cls in stored_classes(m):
        name = table_name(cls.name)
        columns = [
            Column("_ref", String(64), primary_key=True),
            Column("_created", BigInteger, nullable=False, default=0),
            Column("_modified", BigInteger, nullable=False, default=0),
        ]
        columns += [Column(f.name, column_type(f.type)) for f in cls.stored_fields]
        Table(name, md, *columns)
        if "uuid" in cls.fields:
            Index(f"ix_{name}_uuid", md.tables[name].c.uuid)
    # Pool-wide generation counter: one row, bumped by every committed write.
    Table(
        "xapi_generation",
        md,
        Column("id", Integer, primary_key=True),
        Column("generation", BigInteger, nullable=False),
    )
    # What each generation changed, for event.from and cache coherence.
    Table(
        "xapi_changes",
        md,
        Column("generation", BigInteger, primary_key=True),
        Column("cls", String(64), primary_key=True),
        Column("ref", String(64), primary_key=True),
        Column("op", String(3), nullable=False),
    )
    # Who runs each task: the session that made it and, for work this server
    # runs, the process (``owner``), so that a restart can fail what a dead
    # process left pending.  Client-made tasks (task.create) have no owner.
    Table(
        "xapi_task_owner",
        md,
        Column("task", String(64), primary_key=True),
        Column("session", String(64), nullable=False),
        Column("owner", String(255), nullable=False),
    )
    # Host heartbeats (xapi's Host.tickle_heartbeat), kept out of the object
    # tables so that a beat makes no event and bumps no generation.  ``beats``
    # counts them: the master times the gaps between changes on its own clock,
    # as xapi's master times arrivals, so host clocks need not agree.
    # ``time`` is the host's own clock at its last beat (for skew, not judgement).
    Table(
        "xapi_host_heartbeat",
        md,
        Column("host", String(64), primary_key=True),
        Column("beats", BigInteger, nullable=False),
        Column("time", UTCDateTime, nullable=False),
        Column("shutting_down", Boolean, nullable=False),
    )
    # Local accounts (only root today); hashes only, never clear text.
    Table(
        "xapi_auth",
        md,
        Column("user", String(255), primary_key=True),
        Column("password_hash", Text, nullable=False),
    )
    return md


metadata = build_metadata(load_model())
