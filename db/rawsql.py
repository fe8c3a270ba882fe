"""The write path's hot statements, built once and run on the DBAPI connection.

SQLAlchemy builds, caches and post-processes a statement on every call,
which costs several times what SQLite takes to run it.  The write path uses
a handful of statement shapes per table (by ``_ref``: read ``_modified``,
update, insert, delete, exists; equality lookups; the generation counter and
change log): their SQL is built here once and run on the raw connection
underneath the transaction's own SQLAlchemy connection.  Values go through
each column type's own bind processor (``dialect_impl(...).bind_processor``,
what SQLAlchemy applies itself), so the stored data is the same.

Only SQLite (``?``) and psycopg (``%s``) placeholders are needed.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

from sqlalchemy import Table
from sqlalchemy.engine import Dialect


class RawSql:
    def __init__(self, dialect: Dialect):
        self.dialect = dialect
        self.ph = "?" if dialect.name == "sqlite" else "%s"
        self.for_update = " FOR UPDATE" if dialect.name == "postgresql" else ""
        self.quote = dialect.identifier_preparer.quote
        self._tables: dict[str, TableSql] = {}

    def table(self, table: Table) -> "TableSql":
        found = self._tables.get(table.name)
        if found is None:
            found = self._tables[table.name] = TableSql(self, table)
        return found

    def bump_generation(self) -> str:
        return "UPDATE xapi_generation SET generation = generation + 1 WHERE id = 1 RETURNING generation"

    def log_change(self) -> str:
        p = self.ph
        return f"INSERT INTO xapi_changes (generation, cls, ref, op) VALUES ({p}, {p}, {p}, {p})"

    # The same, taking the generation this transaction just bumped (for a pipeline,
    # where the bump's result is not back yet).
    def log_change_here(self) -> str:
        p = self.ph
        return (f"INSERT INTO xapi_changes (generation, cls, ref, op) "
                f"SELECT generation, {p}, {p}, {p} FROM xapi_generation WHERE id = 1")

    def notify_here(self) -> str:
        """NOTIFY channel, payload = the new generation followed by the second parameter."""
        return (f"SELECT pg_notify({self.ph}, generation::text || {self.ph}) "
                f"FROM xapi_generation WHERE id = 1")


class TableSql:
    """The SQL of one table, and its columns' bind processors."""

    def __init__(self, raw: RawSql, table: Table):
        q, p = raw.quote, raw.ph
        dialect = raw.dialect
        self.columns = [c.name for c in table.columns]
        self._procs: dict[str, Callable[[Any], Any] | None] = {
            c.name: c.type.dialect_impl(dialect).bind_processor(dialect) for c in table.columns
        }
        self._q, self._p = q, p
        self.name = name = q(table.name)
        ref = q("_ref")
        self.insert = (f"INSERT INTO {name} ({', '.join(q(c) for c in self.columns)}) "
                       f"VALUES ({', '.join([p] * len(self.columns))})")
        self.modified = f"SELECT {q('_modified')} FROM {name} WHERE {ref} = {p}"
        self.modified_for_update = self.modified + raw.for_update
        self.delete = f"DELETE FROM {name} WHERE {ref} = {p}"
        self.stamp_mod = f"UPDATE {name} SET {q('_modified')} = {p} WHERE {ref} = {p}"
        self.stamp_add = (f"UPDATE {name} SET {q('_created')} = {p}, {q('_modified')} = {p} "
                          f"WHERE {ref} = {p}")
        here = "(SELECT generation FROM xapi_generation WHERE id = 1)"
        self.stamp_mod_here = f"UPDATE {name} SET {q('_modified')} = {here} WHERE {ref} = {p}"
        self.stamp_add_here = (f"UPDATE {name} SET {q('_created')} = {here}, {q('_modified')} = {here} "
                               f"WHERE {ref} = {p}")
        self._updates: dict[tuple[str, ...], str] = {}
        self._wheres: dict[tuple[str, ...], str] = {}

    def bind(self, column: str, value: Any) -> Any:
        proc = self._procs[column]
        return value if proc is None else proc(value)

    def row(self, values: dict[str, Any]) -> tuple:
        """The insert parameters of a full row (every column present)."""
        return tuple(self.bind(c, values[c]) for c in self.columns)

    def update(self, columns: tuple[str, ...]) -> str:
        sql = self._updates.get(columns)
        if sql is None:
            sets = ", ".join(f"{self._q(c)} = {self._p}" for c in columns)
            sql = self._updates[columns] = f"UPDATE {self.name} SET {sets} WHERE {self._q('_ref')} = {self._p}"
        return sql

    def refs_where(self, columns: Iterable[str]) -> str:
        key = tuple(columns)
        sql = self._wheres.get(key)
        if sql is None:
            cond = " AND ".join(f"{self._q(c)} = {self._p}" for c in key)
            sql = f"SELECT {self._q('_ref')} FROM {self.name}" + (f" WHERE {cond}" if cond else "")
            self._wheres[key] = sql
        return sql
