"""The one write path: transactions that bump the pool generation.

Every change goes through ``Database.write()``.  At commit the transaction

1. bumps the single-row ``xapi_generation`` counter (on PostgreSQL the row
   lock this takes orders concurrent committers, so generations commit in
   order and an ``event.from`` token never skips a change),
2. stamps ``_created``/``_modified`` on every touched row and records one
   ``xapi_changes`` entry per object (add, mod or del),
3. commits, and hands the touched rows to the object cache.

On PostgreSQL steps 1-3, the ``NOTIFY`` that announces the commit to
other processes (``db/announce.py``) and the ``COMMIT`` leave in one write
(``db/pgpipeline.py``), and a transaction's first row locks carry its
``BEGIN`` (``Transaction.lock_rows``).

The rows handed to the cache are not read back: the transaction knows what
it wrote, and once the cache holds every generation before its own the
cached row plus this transaction's changes is the stored row
(``Transaction._changes``).  Other processes' commits before it reach the
cache through the change listener (``db/listen.py``), which the writer waits
for after leaving the write lock; without a listener, it reads them from the
change log.
Reads inside a transaction take the cached row too when its ``_modified``
matches the database's (on PostgreSQL that read also locks the row).  The
hot statements run on the DBAPI connection with SQL built once
(``db/rawsql.py``); ``XAPI_DB_VERIFY=1`` compares every row the cache gets
with the database (the test suite sets it).

Writing a relation field (``VBD.VM``) also touches the objects on the other
side (the VM), because their derived sets (``VM.VBDs``) changed too.

A transaction that raises is rolled back whole: no partial write survives.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator

from psycopg import RawCursor, pq
from sqlalchemy import Table, create_engine, event, select, text, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import NullPool

from xapi.errors import ApiError
from xapi.idl.model import Cls, Model, model as load_model
from xapi.idl.types import NULL_REF

from . import announce
from . import changelog as changelog_mod
from . import migrate, pgpipeline
from .cache import Change, ObjectCache, _targets
from .changelog import ChangeLogReader
from .rawsql import RawSql
from .schema import metadata, stored_classes, table_name
from .values import from_column, normalize


log = logging.getLogger("xapi.db")

# A kept writer connection idle this long is pinged before use (PostgreSQL may
# have restarted meanwhile); a busy one never is.
_IDLE_PING = 1.0


NOTIFY_CHANNEL = "xapi_changes"

# PostgreSQL: how many transactions one process runs at once.  A writer's
# transaction is mostly round trips and waits for the GIL; one at a time, the
# other threads of a busy worker spent half their time queueing for it.
WRITERS = 4

# How long a writer waits for the listener to bring the cache up to its own
# commit before reading the missing generations from the change log itself.
_HEAR_WAIT = 0.2

# Up to this many parameters a PostgreSQL commit is one statement (_log_pipelined).
_ONE_STATEMENT_PARAMS = 400


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


def make_writer_engine(url: str) -> Engine:
    """PostgreSQL: the engine of the writers' kept connection.  Not pooled, and
    psycopg prepares nothing on it: the statements ``db/pgpipeline.py`` prepares
    there must not meet psycopg's ``DEALLOCATE ALL`` at a rollback.  Their plans
    are generic from the first use: each finds rows by primary key, which a
    plan for the values at hand cannot improve on, and planning was most of
    PostgreSQL's work on them."""
    engine = create_engine(url, poolclass=NullPool,
                           connect_args={"options": "-c plan_cache_mode=force_generic_plan"})

    @event.listens_for(engine, "connect")
    def _no_psycopg_prepare(dbapi_conn, _record):
        dbapi_conn.prepare_threshold = None

    return engine


def _copy(value: Any) -> Any:
    """A copy of a JSON-shaped value, so a caller cannot change a cached row."""
    if type(value) is dict:
        return {k: _copy(v) if type(v) in _CONTAINERS else v for k, v in value.items()}
    if type(value) is list:
        return [_copy(v) if type(v) in _CONTAINERS else v for v in value]
    return value


_CONTAINERS = (dict, list)


class Database:
    def __init__(self, url: str, model: Model | None = None):
        self.url = url
        self.model = model or load_model()
        self.engine = make_engine(url)
        self._writer_engine = (make_writer_engine(url) if self.engine.dialect.name == "postgresql"
                               else self.engine)
        self.classes: dict[str, Cls] = {c.name: c for c in stored_classes(self.model)}
        self.tables: dict[str, Table] = {
            name: metadata.tables[table_name(name)] for name in self.classes
        }
        self.cache = ObjectCache(self.model, self.classes.values())
        # (class, derived field) -> the relation it derives from (Transaction.related);
        # only those whose other side names one object (VBD.VM, not a set of refs).
        self.relations = {(r.to_cls, r.to_field): r for r in self.model.relations
                          if r.to_cls in self.classes and r.from_cls in self.classes
                          and self.classes[r.from_cls].fields[r.from_field].type.kind == "ref"}
        # Writers of this process at once: one on SQLite, which takes one at a
        # time; on PostgreSQL a few, each on a kept connection of its own, their
        # transactions ordered by row locks and their commits by the generation's.
        self._writer_slots = threading.BoundedSemaphore(
            WRITERS if self.engine.dialect.name == "postgresql" else 1)
        self.raw_sql = RawSql(self.engine.dialect)
        # The writers' idle connections, kept, with when each was last used.
        self._idle_writers: list[tuple[Connection, float]] = []
        self._writers_guard = threading.Lock()  # the list above and _own_generation
        self.verify = os.environ.get("XAPI_DB_VERIFY", "") not in ("", "0")
        # True while a ChangeListener applies every commit as it is announced
        # (db/listen.py): writers then leave other processes' commits to it.
        self.hearing = False
        self._own_generation = 0  # the latest commit of this process's writers
        self.changelog = ChangeLogReader(self)

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
        with self._writers_guard:
            idle, self._idle_writers = self._idle_writers, []
        for conn, _ in idle:
            _discard(conn)
        with self.changelog.lock:
            self.changelog.close()
        self.engine.dispose()
        self._writer_engine.dispose()

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    # -- writing -----------------------------------------------------------------

    @contextmanager
    def write(self) -> Iterator["Transaction"]:
        with self._writer_slots:
            conn = self._take_writer()
            tx = None
            try:
                conn.begin()
                tx = Transaction(self, conn)
                try:
                    yield tx
                    generation = tx._finish()
                except BaseException:
                    conn.rollback()
                    raise
                conn.commit()
            except BaseException:
                if tx is not None:
                    tx.close()
                if conn.invalidated or conn.closed or _dbapi_closed(conn):
                    _discard(conn)
                else:
                    self._give_back(conn)
                raise
            tx.close()
            self._give_back(conn)
            with self._writers_guard:
                self._own_generation = max(self._own_generation, generation)
            if not self.hearing:
                self._apply_own(tx, generation)
                return
        # Other processes' commits before this one reach the cache through the
        # listener; waiting for them does not hold this process's other writers up.
        self._apply_own(tx, generation)

    def _apply_own(self, tx: "Transaction", generation: int) -> None:
        """Hand this process's commit to the cache, after every earlier generation.

        The transaction knows what it wrote, and with the cache at the generation
        before its own the cached rows plus its changes are the stored rows
        (``Transaction._changes``).  Earlier generations of other processes are
        the listener's to apply (``hear``); when it is not listening, or is slow,
        this reads them from the change log."""
        if not tx.wrote:
            return
        cache = self.cache
        deadline = time.monotonic() + _HEAR_WAIT
        while True:
            with cache.advanced:
                self._await_heard(generation - 1, deadline)
                if generation <= cache.generation:
                    return  # the listener, or a catch-up, applied it from the database
                changes = None
                if generation == cache.generation + 1:
                    changes = tx._changes(generation)
                    if changes is None:  # cannot be known without reading back
                        break
                    cache.apply(changes, generation)
            if changes is not None:
                if self.verify:
                    self._verify_own(changes)
                return
            self.catch_up(upto=generation - 1)
        self.catch_up(upto=generation)

    def await_own(self) -> None:
        """Return once every commit of this process's writers is in the cache.

        Writers hand theirs over after leaving the write lock (``_apply_own``),
        so the next transaction may start before the cache has the last one.
        Its rows it reads and locks in the database; a decision taken from the
        cache's sums instead (a host's free memory, ``xapi/claims.py``) waits
        here to count the commits made before it in this process."""
        target = self._own_generation
        cache = self.cache
        if target <= cache.generation:
            return
        with cache.advanced:
            self._await_heard(target, time.monotonic() + _HEAR_WAIT)
            if target <= cache.generation:
                return
        self.catch_up(upto=target)

    def _await_heard(self, generation: int, deadline: float) -> None:
        """Under ``cache.advanced``: wait until the cache holds ``generation``, while
        the listener hears and ``deadline`` has not passed."""
        cache = self.cache
        while cache.generation < generation and self.hearing:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            cache.advanced.wait(remaining)

    def _take_writer(self) -> Connection:
        """An idle kept connection (pinged first when it has been idle a while:
        PostgreSQL may have restarted meanwhile), or a new one."""
        with self._writers_guard:
            conn, used = self._idle_writers.pop() if self._idle_writers else (None, 0.0)
        if conn is not None and self.dialect != "sqlite" and time.monotonic() - used > _IDLE_PING:
            try:
                conn.exec_driver_sql("SELECT 1")
                conn.rollback()
            except Exception:
                _discard(conn)
                conn = None
        return conn if conn is not None else self._writer_engine.connect()

    def _give_back(self, conn: Connection) -> None:
        with self._writers_guard:
            self._idle_writers.append((conn, time.monotonic()))

    def catch_up(self, upto: int | None = None) -> int:
        """Apply changes committed by other processes since the cache's generation.

        Reads the change log in generation order and the rows it names
        (``db/changelog.py``); reloads everything when the log no longer goes
        back that far.  Returns the number of generations applied.
        """
        if upto is not None and upto <= self.cache.generation:
            return 0
        with self.changelog.lock:
            return self._catch_up(upto)

    def _catch_up(self, upto: int | None) -> int:
        batches = self.changelog.read(self.cache.generation, upto)
        if batches is None:
            return self._reload()
        applied = 0
        with self.cache.lock:
            for gen, changes in batches:
                # A writer of this process may have applied some meanwhile.
                if gen > self.cache.generation:
                    self.cache.apply(changes, gen)
                    applied += 1
        if self.verify:
            self._verify([ch for _, changes in batches for ch in changes])
        return applied

    def hear(self, payloads: list[str]) -> None:
        """Apply commits announced by ``NOTIFY`` (``db/announce.py``), in order.

        A commit right after the cache's generation that carries its changes
        is applied as announced; anything else (a missed generation, a
        payload too large to carry them) is read back from the change log.
        """
        with self.changelog.lock:
            for payload in payloads:
                try:
                    generation, body = announce.split(payload)
                except ValueError:
                    generation, body = 1 << 62, None  # not ours to read: catch up
                with self.cache.lock:
                    if generation <= self.cache.generation:
                        continue  # applied already (this process's own commits, mostly)
                    changes = None
                    if generation == self.cache.generation + 1 and body is not None:
                        try:
                            changes = announce.decode(self.classes, self.cache, generation, body)
                        except (ValueError, KeyError, TypeError):
                            log.warning("unreadable announcement of generation %d; reading it back",
                                        generation)
                    if changes is not None:
                        self.cache.apply(changes, generation)
                if changes is None:
                    self._catch_up(None)
                elif self.verify:
                    self._verify(changes)

    def _reload(self) -> int:
        """Every row read again, after falling behind what the change log keeps.

        The differences are applied as one generation (the current one), so
        ``event.from`` waiters hear of them as of any other commit.
        """
        generation, everything = self.changelog.read_all()
        changes = []
        with self.cache.lock:
            for cls, rows in everything.items():
                for ref in {r.ref for r in self.cache.rows(cls)} - rows.keys():
                    changes.append(Change(cls, ref, "del", None, self.cache.get(cls, ref).created,
                                          generation))
                for ref, (_, values, created, modified) in rows.items():
                    op = "mod" if self.cache.get(cls, ref) is not None else "add"
                    changes.append(Change(cls, ref, op, values, created, modified))
            if generation <= self.cache.generation:
                return 0
            self.cache.apply(changes, generation)
        log.warning("fell behind the change log: reloaded the cache at generation %d", generation)
        return 1

    def set_task_owner(self, task: str, owner: str) -> None:
        """Record the process that runs a task now (a worker taking a queued call over).

        A private table, no generation: on PostgreSQL one autocommitted
        statement rather than a transaction behind the write lock."""
        if self.dialect == "sqlite":
            with self.write() as tx:
                tx.update_task_owner(task, owner)
            return
        self.changelog.execute("UPDATE xapi_task_owner SET owner = %s WHERE task = %s", (owner, task))

    def trim_changes(self, keep: int = changelog_mod.KEEP_GENERATIONS) -> int:
        """Forget change-log entries older than ``keep`` generations (the GC calls this)."""
        if self.dialect == "sqlite":  # one writer at a time there
            with self._writer_slots:
                return self.changelog.trim(keep)
        return self.changelog.trim(keep)

    def _stored_rows(self, changes: list[Change]) -> Iterator[tuple[Change, Any]]:
        """Each change but a deletion with the row stored now, when it still exists
        (for the XAPI_DB_VERIFY checks)."""
        with self.engine.connect() as conn:
            for ch in changes:
                if ch.op == "del":
                    continue
                table = self.tables[ch.cls]
                row = conn.execute(select(table).where(table.c._ref == ch.ref)).mappings().first()
                if row is not None:
                    yield ch, row

    def _verify(self, changes: list[Change]) -> None:
        """Rows read back by a catch-up are what SQLAlchemy reads (XAPI_DB_VERIFY)."""
        for ch, row in self._stored_rows(changes):
            stored = self._values_from_row(ch.cls, row)
            if stored != ch.values and row["_modified"] == ch.modified:
                raise AssertionError(f"{ch.cls} {ch.ref}: catch-up decoded {ch.values}, "
                                     f"SQLAlchemy reads {stored}")

    def _verify_own(self, changes: list[Change]) -> None:
        """The rows a writer handed to the cache are the stored rows (XAPI_DB_VERIFY)."""
        for ch, row in self._stored_rows(changes):
            if row["_modified"] != ch.modified:
                continue  # changed since by a later commit
            stored = self._change_from_row(ch.cls, ch.op, row)
            if (stored.values, stored.created, stored.modified) != (ch.values, ch.created, ch.modified):
                diff = {k: (ch.values.get(k), v) for k, v in stored.values.items()
                        if ch.values.get(k) != v}
                raise AssertionError(f"{ch.cls} {ch.ref}: cached row differs from the stored one: "
                                     f"{diff} created/modified {(ch.created, ch.modified)} vs "
                                     f"{(stored.created, stored.modified)}")

    def _change_from_row(self, cls: str, op: str, row) -> Change:
        return Change(cls, row["_ref"], op, self._values_from_row(cls, row), row["_created"],
                      row["_modified"])

    def _values_from_row(self, cls: str, row) -> dict[str, Any]:
        return {f.name: from_column(f.type, row[f.name]) for f in self.classes[cls].stored_fields}

    # -- private tables ----------------------------------------------------------

    def get_password_hash(self, user: str) -> str | None:
        with self.engine.connect() as conn:
            return conn.execute(
                text('SELECT password_hash FROM xapi_auth WHERE "user" = :u'), {"u": user}
            ).scalar_one_or_none()

    def set_password_hash(self, user: str, password_hash: str) -> None:
        with self._writer_slots, self.engine.begin() as conn:
            conn.execute(text('DELETE FROM xapi_auth WHERE "user" = :u'), {"u": user})
            conn.execute(
                text('INSERT INTO xapi_auth ("user", password_hash) VALUES (:u, :h)'),
                {"u": user, "h": password_hash},
            )


class Transaction:
    """A unit of work.  Reads see this transaction's own writes.

    On PostgreSQL, writes that need no answer wait for the commit pipeline
    (``_log_pipelined``), where each goes out once, stamped with the new
    generation in the same statement: the INSERT of an object created here,
    the UPDATE of a row this transaction holds locked (read ``for_update``
    or already updated: it exists and nobody else can change it; an update
    of any other row runs at once, for its HANDLE_INVALID), the private
    tables' statements.  Several updates of one row become one statement.
    A query that could see a class's deferred writes (``refs_where``) sends
    that class's first.
    """

    def __init__(self, db: Database, conn: Connection):
        self.db = db
        self.conn = conn
        self._cursor = conn.connection.dbapi_connection.cursor()
        self._ops: dict[tuple[str, str], str | None] = {}
        self.wrote: dict[tuple[str, str], str] = {}  # the committed ops (_finish)
        # What this transaction wrote, normalized as the database gives it back:
        # the whole row of objects it created, the changed fields of others.
        self._rows: dict[tuple[str, str], dict[str, Any]] = {}
        self._changed: dict[tuple[str, str], dict[str, Any]] = {}
        # Deferred writes (PostgreSQL).  _locked: rows this transaction holds
        # locked, with _base their fields as it read them (before its changes).
        self._defer = db.dialect == "postgresql"
        self._locked: set[tuple[str, str]] = set()
        self._base: dict[tuple[str, str], dict[str, Any]] = {}
        self._as_cached: set[tuple[str, str]] = set()  # locked at the cache's version
        # Ordered, as the commit's statement text follows them (db/rawsql.py caches it).
        self._unsent: dict[tuple[str, str], None] = {}  # created here, INSERT not sent
        self._pending: dict[tuple[str, str], dict[str, Any]] = {}  # columns to UPDATE
        self._after: list[tuple[str, tuple]] = []  # private tables' statements

    def close(self) -> None:
        try:
            self._cursor.close()
        except Exception:
            pass

    def _run(self, sql: str, params: tuple = ()):
        self._cursor.execute(sql, params)
        return self._cursor

    def _sql(self, cls: str):
        return self.db.raw_sql.table(self.db.tables[cls])

    # -- reads -------------------------------------------------------------------

    def get(self, cls: str, ref: str, *, for_update: bool = False) -> dict[str, Any] | None:
        """The stored fields of one object, or None.

        ``for_update`` locks the row until commit on PostgreSQL, for
        read-check-write sequences other processes must not interleave with
        (SQLite serialises writers already).
        """
        key = (cls, ref)
        op = self._ops.get(key, "")
        if op is None or op == "del":
            return None
        if op == "add":
            return _copy(self._rows[key])
        base = self._base.get(key) if key in self._locked else None
        if base is None and for_update and self._defer:
            self._lock_rows([(cls, [ref])])
            base = self._base.get(key)
            if base is None:
                return None
        elif base is None:
            found = self._run(self._sql(cls).modified, (ref,)).fetchone()
            if found is None:
                return None
            base = self._stored(cls, ref, found[0])[0]
        return _copy({**base, **self._changed.get(key, {})})

    def lock(self, cls: str, refs: list[str]) -> None:
        """``get(cls, ref, for_update=True)`` of each of ``refs`` in one statement
        (PostgreSQL; SQLite serialises writers already): later ``get`` calls of
        them answer without a query.  A ref that does not exist is left out."""
        self.lock_rows({cls: refs})

    def lock_rows(self, wanted: dict[str, list[str]]) -> None:
        """``lock`` of several classes' rows in one round trip (one statement
        per class, in ``wanted``'s order; the transaction's ``BEGIN`` rides
        along when these are its first statements)."""
        if not self._defer:
            return
        todo = [(cls, refs) for cls, refs in (
            (cls, [r for r in refs if (cls, r) not in self._locked and (cls, r) not in self._ops])
            for cls, refs in wanted.items()) if refs]
        if todo:
            self._lock_rows(todo)

    def _lock_rows(self, todo: list[tuple[str, list[str]]]) -> None:
        dbapi = self.conn.connection.dbapi_connection
        begin = dbapi.pgconn.transaction_status == pq.TransactionStatus.IDLE
        found = pgpipeline.exchange(
            dbapi, [(self._sql(cls).lock_many, (refs,)) for cls, refs in todo], begin=begin)
        for (cls, _), rows in zip(todo, found):
            for ref, modified in rows:
                self._hold(cls, ref, int(modified))

    def _stored(self, cls: str, ref: str, modified: int) -> tuple[dict[str, Any], bool]:
        """The stored fields of a row whose ``_modified`` the database just gave:
        the cached ones when the cache has that version (True), else read."""
        row = self.db.cache.get(cls, ref)
        if row is not None and row.modified == modified:
            return row.values, True
        return self._select(cls, ref), False  # another process wrote it since

    def _hold(self, cls: str, ref: str, modified: int) -> dict[str, Any]:
        """Record a row this transaction has just locked; its stored fields."""
        key = (cls, ref)
        base, cached = self._stored(cls, ref, modified)
        self._locked.add(key)
        self._base[key] = base
        if cached:
            self._as_cached.add(key)
        return base

    def _select(self, cls: str, ref: str) -> dict[str, Any]:
        """The stored row (without this transaction's deferred changes)."""
        table = self.db.tables[cls]
        row = self.conn.execute(select(table).where(table.c._ref == ref)).mappings().one()
        return self.db._values_from_row(cls, row)

    def must_get(self, cls: str, ref: str, *, for_update: bool = False) -> dict[str, Any]:
        values = self.get(cls, ref, for_update=for_update)
        if values is None:
            raise ApiError("HANDLE_INVALID", cls, ref)
        return values

    def exists(self, cls: str, ref: str) -> bool:
        op = self._ops.get((cls, ref), "")
        if op == "add":
            return True
        if op is None or op == "del":
            return False
        if (cls, ref) in self._locked:
            return True
        return self._run(self._sql(cls).modified, (ref,)).fetchone() is not None

    def ref_of(self, cls: str, uuid: str) -> str | None:
        refs = self.refs_where(cls, uuid=uuid)
        return refs[0] if refs else None

    def related(self, cls: str, ref: str, field: str) -> list[str]:
        """``ref``'s derived set ``field`` (``VM.VBDs``: the VBDs whose ``VM`` is
        ``ref``) as this transaction sees it.

        With ``ref`` locked here at the version the cache holds (PostgreSQL), the
        cache's set is the stored one: a change to the set touches ``ref`` (its
        ``_modified``), and the lock holds such a commit off until this one.
        Otherwise, or when this transaction wrote the other side, a query."""
        rel = self.db.relations[(cls, field)]
        if (cls, ref) in self._as_cached and not any(k[0] == rel.from_cls for k in self._ops):
            return self.db.cache.derived(cls, field, ref)
        return self.refs_where(rel.from_cls, **{rel.from_field: ref})

    def refs_where(self, cls: str, **equal: Any) -> list[str]:
        self._send(cls)
        sql = self._sql(cls)
        spec = self.db.classes[cls]
        params = tuple(sql.bind(name, normalize(spec.fields[name].type, value))
                       for name, value in equal.items())
        return [r[0] for r in self._run(sql.refs_where(equal), params).fetchall()]

    # -- writes ------------------------------------------------------------------

    def insert(self, cls: str, ref: str, values: dict[str, Any]) -> None:
        """Create an object; fields not given take their model initial value."""
        spec = self.db.classes[cls]
        row: dict[str, Any] = {}
        for f in spec.stored_fields:
            row[f.name] = normalize(f.type, values[f.name] if f.name in values else self._initial(f))
        key = (cls, ref)
        if self._defer:
            self._unsent[key] = None
            self._locked.add(key)
        else:
            sql = self._sql(cls)
            self._run(sql.insert, sql.row({"_ref": ref, "_created": 0, "_modified": 0, **row}))
        self._rows[key] = row
        self._changed.pop(key, None)
        self._mark(cls, ref, "add")
        self._touch_targets(cls, None, values)

    def update(self, cls: str, ref: str, changes: dict[str, Any]) -> None:
        if not changes:
            return
        spec = self.db.classes[cls]
        relational = self._relation_fields(cls) & changes.keys()
        old = self.must_get(cls, ref) if relational else None
        cols = {name: normalize(spec.fields[name].type, v) for name, v in changes.items()}
        key = (cls, ref)
        if key in self._unsent:
            pass  # the INSERT, not sent yet, carries them (self._rows below)
        elif key in self._locked:
            self._pending.setdefault(key, {}).update(cols)
        else:
            sql = self._sql(cls)
            names = tuple(cols)
            params = tuple(sql.bind(name, cols[name]) for name in names) + (ref,)
            if self._run(sql.update(names), params).rowcount == 0:
                raise ApiError("HANDLE_INVALID", cls, ref)
            if self._defer and key not in self._rows:
                self._locked.add(key)  # the UPDATE took the row's lock
        if key in self._rows:
            self._rows[key].update(cols)
        else:
            self._changed.setdefault(key, {}).update(cols)
        self._mark(cls, ref, "mod")
        if old is not None:
            self._touch_targets(cls, old, {**old, **changes})

    def delete(self, cls: str, ref: str) -> None:
        old = self.must_get(cls, ref)
        key = (cls, ref)
        self._pending.pop(key, None)
        if key in self._unsent:
            del self._unsent[key]  # never sent: nothing to delete
        else:
            self._run(self._sql(cls).delete, (ref,))
        self._rows.pop((cls, ref), None)
        self._changed.pop((cls, ref), None)
        self._mark(cls, ref, "del")
        self._touch_targets(cls, old, None)

    # -- task ownership (private table) ------------------------------------------

    def set_task_owner(self, task: str, session: str, owner: str) -> None:
        p = self.db.raw_sql.ph
        self._private(f"INSERT INTO xapi_task_owner (task, session, owner) VALUES ({p}, {p}, {p})",
                      (task, session, owner))

    def update_task_owner(self, task: str, owner: str) -> None:
        self._send_private()
        table = metadata.tables["xapi_task_owner"]
        self.conn.execute(update(table).where(table.c.task == task).values(owner=owner))

    def task_owners(self) -> dict[str, tuple[str, str]]:
        """task ref → (session, owner process) for every recorded task."""
        self._send_private()
        table = metadata.tables["xapi_task_owner"]
        return {r.task: (r.session, r.owner) for r in self.conn.execute(select(table))}

    def forget_task_owners(self, tasks: list[str]) -> None:
        if tasks:
            p = self.db.raw_sql.ph
            self._private(f"DELETE FROM xapi_task_owner WHERE task IN ({', '.join([p] * len(tasks))})",
                          tuple(tasks))

    def _private(self, sql: str, params: tuple) -> None:
        """A statement on a private table: at commit on PostgreSQL, else now."""
        if self._defer:
            self._after.append((sql, params))
        else:
            self._run(sql, params)

    def _send_private(self) -> None:
        after, self._after = self._after, []
        for sql, params in after:
            self._run(sql, params)

    def touch(self, cls: str, ref: str) -> None:
        """Record a modification without changing a field (event.inject, derived sets)."""
        if self.exists(cls, ref):
            self._mark(cls, ref, "mod")

    # -- internals ---------------------------------------------------------------

    def _send(self, cls: str | None = None) -> None:
        """Send the deferred writes of ``cls`` (every class: None) now, unstamped;
        the commit stamps them."""
        for key in [k for k in self._unsent if cls is None or k[0] == cls]:
            sql = self._sql(key[0])
            self._run(sql.insert, sql.row({"_ref": key[1], "_created": 0, "_modified": 0,
                                           **self._rows[key]}))
            del self._unsent[key]
            self._locked.discard(key)  # its later updates go at once: its stamp is _created's
        for key in [k for k in self._pending if cls is None or k[0] == cls]:
            cols = self._pending.pop(key)
            sql = self._sql(key[0])
            names = tuple(cols)
            self._run(sql.update(names), tuple(sql.bind(n, cols[n]) for n in names) + (key[1],))

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

    def _finish(self) -> int:
        """Log and stamp the changes (on PostgreSQL, commit too); the new generation
        (the cache's, when nothing was written)."""
        ops = self.wrote = {k: v for k, v in self._ops.items() if v is not None}
        if not ops:
            self._send_private()
            return self.db.cache.generation
        if self.conn.dialect.name == "postgresql":
            return self._log_pipelined(ops)
        return self._log(ops)

    def _changes(self, generation: int) -> list[Change] | None:
        """The committed changes as the cache takes them, computed with the cache
        at the generation before ours (the caller holds its lock).  A row this
        transaction wrote or touched was locked by it from that write to the
        commit, so any other commit that changed it is an earlier generation
        (in the cache now) or a later one: the cached row plus what this
        transaction wrote is the stored row.  None when an object it modified is
        not cached (read it back instead)."""
        changes = []
        for (cls, ref), op in self.wrote.items():
            if op == "mod" and self.db.cache.get(cls, ref) is None:
                return None
            changes.append(self._change(cls, ref, op, generation))
        return changes

    def _log(self, ops: dict) -> int:
        """Bump the generation, log the changes, stamp the rows; the new generation."""
        raw = self.db.raw_sql
        generation = self._run(raw.bump_generation()).fetchone()[0]
        self._cursor.executemany(raw.log_change(),
                                 [(generation, c, r, op) for (c, r), op in ops.items()])
        for (cls, op), refs in _stamps(ops).items():
            sql = self._sql(cls)
            if op == "add":
                self._cursor.executemany(sql.stamp_add, [(generation, generation, r) for r in refs])
            else:
                self._cursor.executemany(sql.stamp_mod, [(generation, r) for r in refs])
        return generation

    def _log_pipelined(self, ops: dict) -> int:
        """``_log`` and the commit on PostgreSQL in one round trip.

        The generation's row lock orders every writer of the pool: it is held
        from the bump to the commit, which leave in one write
        (``db/pgpipeline.py``), so no Python (nor a wait for the GIL) runs
        while it is held.  The later statements of a large commit read the new
        generation back in SQL."""
        raw = self.db.raw_sql
        dbapi = self.conn.connection.dbapi_connection
        # Everything is prepared first: the pipeline sends each statement at once, so
        # Python run between them would run under the generation lock.
        log = tuple(list(column) for column in zip(*((c, r, op) for (c, r), op in ops.items())))
        # Delivered at commit to every process LISTENing (db/listen.py), with the
        # changes themselves when they fit (db/announce.py).
        try:
            body = announce.encode(self.db.classes, ops, self._rows, self._changed)
        except (TypeError, ValueError):  # listeners read it back from the log instead
            body = None
        notify = (NOTIFY_CHANNEL, "" if body is None else " " + body)
        writes = self._stamped_writes(ops)
        # A usual transaction commits as one statement (its writes as CTEs of the
        # bump, db/rawsql.py commit_statement): each statement of a pipeline costs
        # Python and system calls on this side and a round of execution on the
        # server's.  A large one (a pool join, first boot) sends its writes after it.
        rest: list[tuple[str, list[tuple]]] = []
        if sum(len(rows) * len(rows[0]) for _, rows in writes) > _ONE_STATEMENT_PARAMS:
            writes, rest = [], writes
        commit = raw.commit_statement(tuple((sql, len(rows)) for sql, rows in writes))
        params = log + tuple(p for _, rows in writes for row in rows for p in row) + notify
        locks = self._touched_locks(ops)
        if not rest:
            return int(pgpipeline.exchange(dbapi, [*locks, (commit, params)],
                                           commit=True)[-1][0][0])
        bump = RawCursor(dbapi)  # the statement's placeholders are $n (commit_statement)
        lock = RawCursor(dbapi)
        try:
            with dbapi.pipeline():
                for sql, lock_params in locks:
                    lock.execute(sql, lock_params)
                bump.execute(commit, params)
                for sql, rows in rest:
                    self._cursor.executemany(sql, rows)
                dbapi.commit()  # queued in the pipeline (Database.write's commit is then a no-op)
            return bump.fetchone()[0]
        finally:
            lock.close()
            bump.close()

    def _touched_locks(self, ops: dict) -> list[tuple[str, tuple]]:
        """Statements locking the rows this transaction only touched (a derived set
        of theirs changed), to run before the bump: the commit stamps them, and
        the generation's lock must never wait for a row's, or a transaction
        holding that row and waiting for the generation would deadlock with it."""
        unheld: dict[str, list[str]] = {}
        for (cls, ref), op in ops.items():
            if op == "mod" and (cls, ref) not in self._locked and (cls, ref) not in self._rows:
                unheld.setdefault(cls, []).append(ref)
        return [(self._sql(cls).lock_many, (refs,)) for cls, refs in sorted(unheld.items())]

    def _stamped_writes(self, ops: dict) -> list[tuple[str, list[tuple]]]:
        """The commit's writes: (statement, parameter rows), each stamping its rows
        with the new generation.  The deferred ones touch only rows this
        transaction created or holds locked (see the class's docstring), so none
        of them waits for another transaction's lock while the generation's is
        held; then the stamps of the rows written earlier or only touched (those
        locked just before the bump, ``_touched_locks``)."""
        out: list[tuple[str, list[tuple]]] = []
        grouped: dict[tuple[str, Any], list[tuple]] = {}
        for key in self._unsent:
            grouped.setdefault((key[0], None), []).append(
                self._sql(key[0]).data_row({"_ref": key[1], **self._rows[key]}))
        for key, cols in self._pending.items():
            names = tuple(cols)
            sql = self._sql(key[0])
            grouped.setdefault((key[0], names), []).append(
                tuple(sql.bind(n, cols[n]) for n in names) + (key[1],))
        for (cls, names), params in grouped.items():
            sql = self._sql(cls)
            out.append((sql.insert_here if names is None else sql.update_here(names), params))
        written = self._unsent.keys() | self._pending.keys()
        for (cls, op), refs in _stamps(ops).items():
            refs = [r for r in refs if (cls, r) not in written]
            if refs:
                sql = self._sql(cls)
                out.append((sql.stamp_add_any if op == "add" else sql.stamp_mod_any, [(refs,)]))
        out.extend((sql, [params]) for sql, params in self._after)
        return out

    def _change(self, cls: str, ref: str, op: str, generation: int) -> Change:
        if op == "del":
            return Change(cls, ref, "del", None, 0, generation)
        key = (cls, ref)
        if op == "add":
            return Change(cls, ref, op, self._rows[key], generation, generation)
        row = self.db.cache.get(cls, ref)
        return Change(cls, ref, op, {**row.values, **self._changed.get(key, {})}, row.created, generation)

def _stamps(ops: dict) -> dict[tuple[str, str], list[str]]:
    """(class, "add"/"mod") → the refs whose _created/_modified to stamp."""
    out: dict[tuple[str, str], list[str]] = {}
    for (cls, ref), op in ops.items():
        if op in ("add", "mod"):
            out.setdefault((cls, op), []).append(ref)
    return out


def _discard(conn: Connection) -> None:
    try:
        conn.invalidate()
        conn.close()
    except Exception:
        pass


def _dbapi_closed(conn: Connection) -> bool:
    try:
        return bool(getattr(conn.connection.dbapi_connection, "closed", False))
    except Exception:
        return True

