"""The one write path: transactions that bump the pool generation.

Every change goes through ``Database.write()``.  At commit the transaction

1. bumps the single-row ``xapi_generation`` counter (on PostgreSQL the row
   lock this takes orders concurrent committers, so generations commit in
   order and an ``event.from`` token never skips a change),
2. stamps ``_created``/``_modified`` on every touched row and records one
   ``xapi_changes`` entry per object (add, mod or del),
3. re-reads the touched rows, commits, and hands them to the object cache.

Writing a relation field (``VBD.VM``) also touches the objects on the other
side (the VM), because their derived sets (``VM.VBDs``) changed too.

A transaction that raises is rolled back whole: no partial write survives.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Any, Iterator

from sqlalchemy import Table, create_engine, event, select, text, update, insert, delete
from sqlalchemy.engine import Connection, Engine

from xapi.errors import ApiError
from xapi.idl.model import Cls, Model, model as load_model
from xapi.idl.types import NULL_REF

from . import migrate
from .cache import Change, ObjectCache, _targets
from .schema import metadata, stored_classes, table_name
from .values import from_column, to_column


NOTIFY_CHANNEL = "xapi_changes"


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=OFF")
            cur.close()
            # Let SQLAlchemy's BEGIN reach SQLite (pysqlite defers it otherwise).
            dbapi_conn.isolation_level = None

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn):
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    return create_engine(url, pool_size=10, max_overflow=20, pool_pre_ping=True)


class Database:
    def __init__(self, url: str, model: Model | None = None):
        self.url = url
        self.model = model or load_model()
        self.engine = make_engine(url)
        self.classes: dict[str, Cls] = {c.name: c for c in stored_classes(self.model)}
        self.tables: dict[str, Table] = {
            name: metadata.tables[table_name(name)] for name in self.classes
        }
        self.cache = ObjectCache(self.model, self.classes.values())
        # One in-process writer at a time: keeps SQLite happy and makes the
        # cache see commits in generation order.
        self._write_lock = threading.Lock()

    # -- lifecycle ---------------------------------------------------------------

    def upgrade(self) -> None:
        migrate.upgrade(self.engine)

    def load(self) -> None:
        """Fill the object cache from the database."""
        with self.engine.connect() as conn:
            generation = conn.execute(
                text("SELECT generation FROM xapi_generation WHERE id = 1")
            ).scalar_one()
            changes = []
            for name, table in self.tables.items():
                for row in conn.execute(select(table)).mappings():
                    changes.append(self._change_from_row(name, "add", row))
        self.cache.apply(changes, generation, baseline=True)

    def close(self) -> None:
        self.engine.dispose()

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    # -- writing -----------------------------------------------------------------

    @contextmanager
    def write(self) -> Iterator["Transaction"]:
        with self._write_lock:
            with self.engine.connect() as conn:
                tx = Transaction(self, conn)
                conn.begin()
                try:
                    yield tx
                    changes, generation = tx._finish()
                except BaseException:
                    conn.rollback()
                    raise
                conn.commit()
                if changes:
                    with self.cache.lock:
                        if generation > self.cache.generation + 1:
                            # Other processes committed in between: take theirs first,
                            # so the cache (and event.from) sees generations in order.
                            self.catch_up(upto=generation - 1)
                        self.cache.apply(changes, generation)

    def catch_up(self, upto: int | None = None) -> int:
        """Apply changes committed by other processes since the cache's generation.

        Reads ``xapi_changes`` in generation order and re-reads the rows they
        name.  Returns the number of generations applied.
        """
        with self.cache.lock:
            since = self.cache.generation
            query = select(_changes_table()).where(_changes_table().c.generation > since)
            if upto is not None:
                query = query.where(_changes_table().c.generation <= upto)
            query = query.order_by(_changes_table().c.generation)
            with self.engine.connect() as conn:
                entries = conn.execute(query).all()
                by_generation: dict[int, list] = {}
                for gen, cls, ref, op in entries:
                    by_generation.setdefault(gen, []).append((cls, ref, op))
                batches = []
                for gen, items in by_generation.items():
                    changes = []
                    for cls, ref, op in items:
                        if cls not in self.tables:
                            continue
                        if op == "del":
                            row = self.cache.get(cls, ref)
                            changes.append(Change(cls, ref, "del", None, row.created if row else 0, gen))
                            continue
                        table = self.tables[cls]
                        row = conn.execute(select(table).where(table.c._ref == ref)).mappings().first()
                        if row is not None:  # else deleted later: its del entry follows
                            changes.append(self._change_from_row(cls, op, row))
                    batches.append((gen, changes))
            for gen, changes in batches:
                self.cache.apply(changes, gen)
            return len(batches)

    def _change_from_row(self, cls: str, op: str, row) -> Change:
        fields = self.classes[cls].stored_fields
        values = {f.name: from_column(f.type, row[f.name]) for f in fields}
        return Change(cls, row["_ref"], op, values, row["_created"], row["_modified"])

    # -- private tables ----------------------------------------------------------

    def get_password_hash(self, user: str) -> str | None:
        with self.engine.connect() as conn:
            return conn.execute(
                text('SELECT password_hash FROM xapi_auth WHERE "user" = :u'), {"u": user}
            ).scalar_one_or_none()

    def set_password_hash(self, user: str, password_hash: str) -> None:
        with self._write_lock, self.engine.begin() as conn:
            conn.execute(text('DELETE FROM xapi_auth WHERE "user" = :u'), {"u": user})
            conn.execute(
                text('INSERT INTO xapi_auth ("user", password_hash) VALUES (:u, :h)'),
                {"u": user, "h": password_hash},
            )


class Transaction:
    """A unit of work.  Reads see this transaction's own writes."""

    def __init__(self, db: Database, conn: Connection):
        self.db = db
        self.conn = conn
        self._ops: dict[tuple[str, str], str] = {}

    # -- reads -------------------------------------------------------------------

    def get(self, cls: str, ref: str, *, for_update: bool = False) -> dict[str, Any] | None:
        """The stored fields of one object, or None.

        ``for_update`` locks the row until commit on PostgreSQL, for
        read-check-write sequences other processes must not interleave with
        (SQLite serialises writers already).
        """
        table = self.db.tables[cls]
        query = select(table).where(table.c._ref == ref)
        if for_update and self.conn.dialect.name == "postgresql":
            query = query.with_for_update()
        row = self.conn.execute(query).mappings().first()
        if row is None:
            return None
        fields = self.db.classes[cls].stored_fields
        return {f.name: from_column(f.type, row[f.name]) for f in fields}

    def must_get(self, cls: str, ref: str, *, for_update: bool = False) -> dict[str, Any]:
        values = self.get(cls, ref, for_update=for_update)
        if values is None:
            raise ApiError("HANDLE_INVALID", cls, ref)
        return values

    def exists(self, cls: str, ref: str) -> bool:
        table = self.db.tables[cls]
        return self.conn.execute(select(table.c._ref).where(table.c._ref == ref)).first() is not None

    def ref_of(self, cls: str, uuid: str) -> str | None:
        refs = self.refs_where(cls, uuid=uuid)
        return refs[0] if refs else None

    def refs_where(self, cls: str, **equal: Any) -> list[str]:
        table = self.db.tables[cls]
        query = select(table.c._ref)
        for name, value in equal.items():
            query = query.where(table.c[name] == value)
        return [r[0] for r in self.conn.execute(query)]

    # -- writes ------------------------------------------------------------------

    def insert(self, cls: str, ref: str, values: dict[str, Any]) -> None:
        """Create an object; fields not given take their model initial value."""
        spec = self.db.classes[cls]
        row = {"_ref": ref, "_created": 0, "_modified": 0}
        for f in spec.stored_fields:
            value = values[f.name] if f.name in values else self._initial(f)
            row[f.name] = to_column(f.type, value)
        # Values bound at execution: the compiled statement is cached per table.
        self.conn.execute(insert(self.db.tables[cls]), row)
        self._mark(cls, ref, "add")
        self._touch_targets(cls, None, values)

    def update(self, cls: str, ref: str, changes: dict[str, Any]) -> None:
        if not changes:
            return
        spec = self.db.classes[cls]
        relational = self._relation_fields(cls) & changes.keys()
        old = self.must_get(cls, ref) if relational else None
        table = self.db.tables[cls]
        cols = {name: to_column(spec.fields[name].type, v) for name, v in changes.items()}
        result = self.conn.execute(update(table).where(table.c._ref == ref).values(cols))
        if result.rowcount == 0:
            raise ApiError("HANDLE_INVALID", cls, ref)
        self._mark(cls, ref, "mod")
        if old is not None:
            self._touch_targets(cls, old, {**old, **changes})

    def delete(self, cls: str, ref: str) -> None:
        old = self.must_get(cls, ref)
        table = self.db.tables[cls]
        self.conn.execute(delete(table).where(table.c._ref == ref))
        self._mark(cls, ref, "del")
        self._touch_targets(cls, old, None)

    # -- task ownership (private table) ------------------------------------------

    def set_task_owner(self, task: str, session: str, owner: str) -> None:
        self.conn.execute(insert(metadata.tables["xapi_task_owner"]).values(
            task=task, session=session, owner=owner))

    def update_task_owner(self, task: str, owner: str) -> None:
        table = metadata.tables["xapi_task_owner"]
        self.conn.execute(update(table).where(table.c.task == task).values(owner=owner))

    def task_owners(self) -> dict[str, tuple[str, str]]:
        """task ref → (session, owner process) for every recorded task."""
        table = metadata.tables["xapi_task_owner"]
        return {r.task: (r.session, r.owner) for r in self.conn.execute(select(table))}

    def forget_task_owners(self, tasks: list[str]) -> None:
        table = metadata.tables["xapi_task_owner"]
        if tasks:
            self.conn.execute(delete(table).where(table.c.task.in_(tasks)))

    def touch(self, cls: str, ref: str) -> None:
        """Record a modification without changing a field (event.inject, derived sets)."""
        if self.exists(cls, ref):
            self._mark(cls, ref, "mod")

    # -- internals ---------------------------------------------------------------

    def _initial(self, f) -> Any:
        if f.type.kind == "enum" and not f.has_default:
            return self.db.model.enums[f.type.name][0]
        return f.initial

    def _relation_fields(self, cls: str) -> set[str]:
        return {r.from_field for r in self.db.cache._outgoing.get(cls, ())}

    def _touch_targets(self, cls: str, before: dict | None, after: dict | None) -> None:
        for rel in self.db.cache._outgoing.get(cls, ()):
            old = set(_targets(before.get(rel.from_field))) if before else set()
            new = set(_targets(after.get(rel.from_field))) if after else set()
            for target in old ^ new:
                if target != NULL_REF and (rel.to_cls, target) not in self._ops:
                    self.touch(rel.to_cls, target)

    def _mark(self, cls: str, ref: str, op: str) -> None:
        key = (cls, ref)
        prev = self._ops.get(key)
        if prev is None:
            self._ops[key] = op
        elif prev == "add" and op == "del":
            self._ops[key] = None  # born and gone within one transaction
        elif prev == "add":
            pass
        elif op == "del":
            self._ops[key] = "del"

    def _finish(self) -> tuple[list[Change], int]:
        ops = {k: v for k, v in self._ops.items() if v is not None}
        if not ops:
            return [], self.db.cache.generation
        generation = self.conn.execute(
            text("UPDATE xapi_generation SET generation = generation + 1 WHERE id = 1 RETURNING generation")
        ).scalar_one()
        self.conn.execute(
            insert(_changes_table()),
            [{"generation": generation, "cls": c, "ref": r, "op": op} for (c, r), op in ops.items()],
        )
        if self.conn.dialect.name == "postgresql":
            # Delivered at commit to every process LISTENing (db/listen.py).
            self.conn.execute(text(f"NOTIFY {NOTIFY_CHANNEL}, '{generation}'"))
        changes = []
        for (cls, ref), op in ops.items():
            table = self.db.tables[cls]
            if op == "del":
                changes.append(Change(cls, ref, "del", None, 0, generation))
                continue
            stamp = {"_modified": generation}
            if op == "add":
                stamp["_created"] = generation
            self.conn.execute(update(table).where(table.c._ref == ref).values(stamp))
            row = self.conn.execute(select(table).where(table.c._ref == ref)).mappings().one()
            changes.append(self.db._change_from_row(cls, op, row))
        return changes, generation


def _changes_table() -> Table:
    return metadata.tables["xapi_changes"]
