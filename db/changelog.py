"""Reading other processes' commits back: the change log and the rows it names.

A process catches its object cache up (``Database.catch_up``) on every
commit notification, so this is a hot path when several processes write
(the server and its Celery worker, every host of a pool).  One catch-up
costs a fixed number of round trips whatever it covers: the log entries
after the cache's generation in one query, then the rows they name in one
query per class (``_ref = ANY(...)``).  It runs on a connection of its own,
kept open in autocommit mode: no pool checkout, ping, BEGIN or ROLLBACK per
catch-up, and each statement sees every commit before it.

The log is trimmed (``trim``): a process whose cache is older than what the
log still holds sees a gap and reloads every row instead (``read`` answers
None).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Callable

from sqlalchemy import Table

from .cache import Change
from .values import from_column

if TYPE_CHECKING:
    from .store import Database

# Generations the log keeps behind the newest.  Live processes catch up within
# seconds (on each notification, and by polling); one that fell further behind
# than this reloads its whole cache.
KEEP_GENERATIONS = 100_000

# SQLite's limit on bound parameters is 999 in old builds.
_SQLITE_CHUNK = 500

Batches = list[tuple[int, list[Change]]]


class _TableReader:
    """``SELECT`` of whole rows of one table by ``_ref``, decoded as the cache holds them."""

    def __init__(self, db: "Database", cls: str, table: Table):
        self.dialect = dialect = db.engine.dialect
        quote = dialect.identifier_preparer.quote
        spec = db.classes[cls]
        self.table = table
        self.stored_fields = spec.stored_fields
        columns = ["_ref", "_created", "_modified"] + [f.name for f in spec.stored_fields]
        # (column index, field name, the column's result processor, the field's type),
        # built from the first result's description: processors depend on the
        # driver's type codes, as SQLAlchemy's own result handling does.
        self.fields: list[tuple] | None = None
        self.select = f"SELECT {', '.join(quote(c) for c in columns)} FROM {quote(table.name)}"
        self.by_refs_pg = f"{self.select} WHERE {quote('_ref')} = ANY(%s)"
        self.by_refs_sqlite = f"{self.select} WHERE {quote('_ref')} IN "

    def decoder(self, description) -> "_TableReader":
        if self.fields is None:
            dialect = self.dialect
            self.fields = [
                (i, f.name,
                 self.table.c[f.name].type.dialect_impl(dialect).result_processor(
                     dialect, description[i][1]),
                 f.type)
                for i, f in enumerate(self.stored_fields, start=3)]
        return self

    def decode(self, row: tuple) -> tuple[str, dict[str, Any], int, int]:
        values = {}
        for i, name, proc, ty in self.fields:
            value = row[i]
            if proc is not None:
                value = proc(value)
            values[name] = from_column(ty, value)
        return row[0], values, row[1], row[2]


class ChangeLogReader:
    def __init__(self, db: "Database"):
        self.db = db
        self.postgresql = db.dialect == "postgresql"
        self.tables = {cls: _TableReader(db, cls, table) for cls, table in db.tables.items()}
        # One catch-up at a time: two would read the same changes.  Held across the
        # cache update too, so the cache sees each generation once, in order.
        self.lock = threading.Lock()
        self._conn = None

    # -- the connection ------------------------------------------------------------

    def _connection(self):
        if self._conn is None:
            conn = self.db.engine.raw_connection()
            if self.postgresql:
                conn.driver_connection.autocommit = True
                # Every query here is a lookup by key (a generation range, refs), but
                # the change log grows faster than autovacuum's statistics: with them
                # stale the planner scans the whole log for a few new entries.
                cur = conn.cursor()
                cur.execute("SET enable_seqscan = off")
                cur.close()
            self._conn = conn
        return self._conn

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.invalidate()
            except Exception:
                pass

    def _query(self, run: Callable[[Any], Any]) -> Any:
        """``run(cursor)`` on the kept connection; a failed connection is dropped."""
        cursor = self._connection().cursor()
        try:
            return run(cursor)
        except Exception:
            self.close()  # a broken connection, or one left inside a failed statement
            raise
        finally:
            try:
                cursor.close()
            except Exception:
                pass

    # -- reading -------------------------------------------------------------------

    def read(self, since: int, upto: int | None = None) -> Batches | None:
        """The changes after ``since`` (up to ``upto``) as ``(generation, changes)``
        in order, each change carrying its row as read now; None if the log no
        longer holds the generation after ``since`` (it was trimmed)."""
        return self._query(lambda cur: self._read(cur, since, upto))

    def _read(self, cur, since: int, upto: int | None) -> Batches | None:
        p = "%s" if self.postgresql else "?"
        sql = f"SELECT generation, cls, ref, op FROM xapi_changes WHERE generation > {p}"
        params: tuple = (since,)
        if upto is not None:
            sql += f" AND generation <= {p}"
            params += (upto,)
        sql += " ORDER BY generation"
        cur.execute(sql, params)
        entries = cur.fetchall()
        if not entries:
            return []
        if entries[0][0] != since + 1:
            return None  # generations are consecutive: the ones in between were trimmed
        wanted: dict[str, set[str]] = {}
        for _, cls, ref, op in entries:
            if op != "del" and cls in self.tables:
                wanted.setdefault(cls, set()).add(ref)
        rows = {cls: self._rows(cur, cls, refs) for cls, refs in wanted.items()}
        cache = self.db.cache
        batches: Batches = []
        for gen, cls, ref, op in entries:
            if cls not in self.tables:
                continue
            if not batches or batches[-1][0] != gen:
                batches.append((gen, []))
            changes = batches[-1][1]
            if op == "del":
                old = cache.get(cls, ref)
                changes.append(Change(cls, ref, "del", None, old.created if old else 0, gen))
                continue
            found = rows[cls].get(ref)
            if found is not None:  # else deleted later: its del entry follows
                _, values, created, modified = found
                changes.append(Change(cls, ref, op, values, created, modified))
        return batches

    def _rows(self, cur, cls: str, refs: set[str]) -> dict[str, tuple]:
        reader = self.tables[cls]
        found: dict[str, tuple] = {}
        if self.postgresql:
            cur.execute(reader.by_refs_pg, (list(refs),))
            chunks = [cur.fetchall()]
        else:
            ordered = list(refs)
            chunks = []
            for i in range(0, len(ordered), _SQLITE_CHUNK):
                part = ordered[i:i + _SQLITE_CHUNK]
                cur.execute(reader.by_refs_sqlite + f"({', '.join('?' * len(part))})", part)
                chunks.append(cur.fetchall())
        reader.decoder(cur.description)
        for chunk in chunks:
            for row in chunk:
                decoded = reader.decode(row)
                found[decoded[0]] = decoded
        return found

    def read_all(self) -> tuple[int, dict[str, dict[str, tuple]]]:
        """The current generation and then every row of every table (a reload)."""
        def run(cur):
            cur.execute("SELECT generation FROM xapi_generation WHERE id = 1")
            generation = cur.fetchone()[0]
            everything = {}
            if self.postgresql:
                cur.execute("SET enable_seqscan = on")  # whole tables, this once
            for cls, reader in self.tables.items():
                cur.execute(reader.select)
                reader.decoder(cur.description)
                everything[cls] = {row[0]: reader.decode(row) for row in cur.fetchall()}
            if self.postgresql:
                cur.execute("SET enable_seqscan = off")
            return generation, everything
        return self._query(run)

    def execute(self, sql: str, params: tuple) -> None:
        """One statement of its own, committed at once (a private table's update)."""
        with self.lock:
            self._query(lambda cur: cur.execute(sql, params))

    # -- trimming ------------------------------------------------------------------

    def trim(self, keep: int = KEEP_GENERATIONS) -> int:
        """Forget log entries more than ``keep`` generations old; how many went.

        The newest generation always stays: a reader tells a trimmed log by the
        gap between its generation and the first entry it finds."""
        keep = max(keep, 1)

        def run(cur):
            cur.execute("DELETE FROM xapi_changes WHERE generation <= "
                        "(SELECT generation FROM xapi_generation WHERE id = 1) - "
                        + ("%s" if self.postgresql else "?"), (keep,))
            return cur.rowcount
        return self._query(run)
