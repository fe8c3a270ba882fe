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


# The generation a PostgreSQL commit has just bumped, as its pipelined statements
# read it (the bump's result is not back yet) ...
HERE = "(SELECT generation FROM xapi_generation WHERE id = 1)"
# ... and as the sub-statements of the one-statement commit read it (they share
# the statement's snapshot, so they see the bump only through its RETURNING).
HERE_IN_COMMIT = "(SELECT generation FROM g)"


class RawSql:
    def __init__(self, dialect: Dialect):
        self.dialect = dialect
        self.ph = "?" if dialect.name == "sqlite" else "%s"
        self.quote = dialect.identifier_preparer.quote
        self._tables: dict[str, TableSql] = {}
        self._commits: dict[tuple, str] = {}

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

    def commit_statement(self, shape: tuple[tuple[str, int], ...]) -> str:
        """A whole commit as one statement: the bump, the change log (from three
        parallel arrays), each of ``shape``'s writes (statement, times) and the
        NOTIFY (channel, payload = the new generation + the second parameter),
        as data-modifying CTEs around the bump's RETURNING.  Parameters: the
        log's three arrays, the writes' in order, then the NOTIFY's two.  An
        empty shape opens a large commit whose writes follow it (they read the
        bumped generation through ``HERE``).

        The placeholders are PostgreSQL's own (``$1``…), for a ``RawCursor``:
        psycopg parses a ``%s`` statement for its placeholders on every call
        when the statement is long or has many parameters, as a batch of
        write-backs does."""
        sql = self._commits.get(shape)
        if sql is None:
            parts = ["g AS (UPDATE xapi_generation SET generation = generation + 1 WHERE id = 1 "
                     "RETURNING generation)",
                     "l AS (INSERT INTO xapi_changes (generation, cls, ref, op) "
                     "SELECT g.generation, c.cls, c.ref, c.op FROM g, "
                     "unnest(%s::text[], %s::text[], %s::text[]) AS c(cls, ref, op))"]
            for statement, times in shape:
                statement = statement.replace(HERE, HERE_IN_COMMIT)
                for _ in range(times):
                    parts.append(f"w{len(parts)} AS ({statement})")
            sql = _numbered("WITH " + ", ".join(parts)
                            + " SELECT generation, pg_notify(%s, generation::text || %s) FROM g")
            if len(self._commits) > 1000:  # shapes are few; never let them pile up
                self._commits.clear()
            self._commits[shape] = sql
        return sql


def _numbered(sql: str) -> str:
    """psycopg's ``%s`` placeholders (the statements here hold no other ``%``) as
    ``$1``, ``$2``…"""
    parts = sql.split("%s")
    return parts[0] + "".join(f"${i}{part}" for i, part in enumerate(parts[1:], 1))


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
        # PostgreSQL: several rows locked in one statement, in a fixed order; with
        # $n placeholders, for db/pgpipeline.py.
        self.lock_many = _numbered(f"SELECT {ref}, {q('_modified')} FROM {name} "
                                   f"WHERE {ref} = ANY({p}) ORDER BY {ref} FOR UPDATE")
        self.delete = f"DELETE FROM {name} WHERE {ref} = {p}"
        self.stamp_mod = f"UPDATE {name} SET {q('_modified')} = {p} WHERE {ref} = {p}"
        self.stamp_add = (f"UPDATE {name} SET {q('_created')} = {p}, {q('_modified')} = {p} "
                          f"WHERE {ref} = {p}")
        # PostgreSQL, in the commit pipeline: stamped with the generation the
        # transaction has just bumped, whose value is not back yet.
        here = self._here = HERE
        data = [c for c in self.columns if c not in ("_created", "_modified")]
        self.data_columns = data
        self.insert_here = (f"INSERT INTO {name} ({', '.join(q(c) for c in data)}, "
                            f"{q('_created')}, {q('_modified')}) "
                            f"VALUES ({', '.join([p] * len(data))}, {here}, {here})")
        self.stamp_mod_any = f"UPDATE {name} SET {q('_modified')} = {here} WHERE {ref} = ANY({p})"
        self.stamp_add_any = (f"UPDATE {name} SET {q('_created')} = {here}, {q('_modified')} = {here} "
                              f"WHERE {ref} = ANY({p})")
        self._updates: dict[tuple[str, ...], str] = {}
        self._updates_here: dict[tuple[str, ...], str] = {}
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

    def update_here(self, columns: tuple[str, ...]) -> str:
        """``update`` that also stamps ``_modified`` (PostgreSQL's commit pipeline)."""
        sql = self._updates_here.get(columns)
        if sql is None:
            sets = "".join(f"{self._q(c)} = {self._p}, " for c in columns)
            sql = self._updates_here[columns] = (
                f"UPDATE {self.name} SET {sets}{self._q('_modified')} = {self._here} "
                f"WHERE {self._q('_ref')} = {self._p}")
        return sql

    def data_row(self, values: dict[str, Any]) -> tuple:
        """The ``insert_here`` parameters of a full row."""
        return tuple(self.bind(c, values[c]) for c in self.data_columns)

    def refs_where(self, columns: Iterable[str]) -> str:
        key = tuple(columns)
        sql = self._wheres.get(key)
        if sql is None:
            cond = " AND ".join(f"{self._q(c)} = {self._p}" for c in key)
            sql = f"SELECT {self._q('_ref')} FROM {self.name}" + (f" WHERE {cond}" if cond else "")
            self._wheres[key] = sql
        return sql
