"""Several statements sent to PostgreSQL in one write (libpq's pipeline mode).

A writer's transactions are short and mostly round trips, and under load
every round trip costs the thread a wait on the socket and then one for the
GIL.  psycopg's own pipeline flushes each command by a call of its own, and
it turns the ``BEGIN`` a transaction opens with into a round trip of its
own.  Here the commands given (with ``BEGIN`` before them, ``COMMIT`` after
them, as asked) and the pipeline's sync leave in one write, and the answers
are read back in one go:

- a transaction's first locks ride with its ``BEGIN`` (``Transaction.lock_rows``);
- the commit statement travels with its ``COMMIT``.  That statement takes
  the pool's generation row lock, which PostgreSQL holds until the
  ``COMMIT`` is done; flushed separately, the GIL wait between the two was
  the largest part of the time that lock was held, and every writer of the
  pool queues behind it.

Statements use PostgreSQL's own placeholders (``$1``…).  On a connection
where psycopg prepares nothing itself (``prepare_threshold = None``, as the
writers' connection is: psycopg deallocates every prepared statement of the
session at a rollback when it has prepared any), a statement seen a second
time is prepared under a name of this module's, in the same write: parsing
and planning the commit statements was a third of PostgreSQL's work per
transaction.  Such statements take their parameters as text, their types
inferred by PostgreSQL from where they stand.
"""

from __future__ import annotations

import select
import weakref
from typing import Any, Sequence

from psycopg import Connection, errors, pq
from psycopg.adapt import PyFormat, Transformer

_ES = pq.ExecStatus

Rows = list[tuple[str | None, ...]]


# Per connection, at most this many statements are kept prepared (the commit
# statements' shapes are few; a rare one runs unprepared) ...
_MAX_PREPARED = 200
# ... and this many statements seen once are remembered, waiting for a second use.
_MAX_SEEN = 1000


class _Prepared:
    """The statements this module has prepared on one connection."""

    def __init__(self) -> None:
        self.names: dict[bytes, bytes] = {}
        self.seen: set[bytes] = set()
        self.refused: set[bytes] = set()  # failed to prepare: sent as they are
        self.count = 0  # names handed out, prepared or not: never one twice

    def name_for(self, sql: bytes) -> tuple[bytes | None, bool]:
        """(the statement's name, whether it must be prepared first); no name: unprepared."""
        name = self.names.get(sql)
        if name is not None:
            return name, False
        if sql in self.refused or len(self.names) >= _MAX_PREPARED:
            return None, False
        if sql not in self.seen:
            if len(self.seen) >= _MAX_SEEN:
                self.seen.clear()
            self.seen.add(sql)
            return None, False
        self.count += 1
        return f"xapi_{self.count}".encode(), True


_prepared: "weakref.WeakKeyDictionary[Connection, _Prepared]" = weakref.WeakKeyDictionary()


def _prepared_on(conn: Connection) -> _Prepared | None:
    if conn.prepare_threshold is not None:
        return None  # psycopg's own DEALLOCATE ALL could drop ours
    found = _prepared.get(conn)
    if found is None:
        found = _prepared[conn] = _Prepared()
    return found


def exchange(conn: Connection, commands: Sequence[tuple[str, Sequence[Any]]], *,
             begin: bool = False, commit: bool = False) -> list[Rows]:
    """Run ``commands`` (``[BEGIN;] command…[; COMMIT]``) in one round trip;
    each command's rows, their values as PostgreSQL's text.

    The first failing command raises psycopg's error for it; the commands
    after it are skipped and the transaction is left aborted (the caller
    rolls back), as with ``execute``."""
    pgconn = conn.pgconn
    prepared = _prepared_on(conn)
    tx = Transformer(conn)
    # (sql, name, prepare first, values, types, formats), adapted before anything is
    # sent: a value that cannot be fails here.
    queries = []
    naming: dict[bytes, bytes] = {}  # prepared earlier in this exchange
    for sql, params in commands:
        sql_bytes = sql.encode()
        if sql_bytes in naming:
            name, prepare = naming[sql_bytes], False
        elif prepared is not None:
            name, prepare = prepared.name_for(sql_bytes)
            if prepare:
                naming[sql_bytes] = name
        else:
            name, prepare = None, False
        if name is None:
            values = tx.dump_sequence(params, [PyFormat.AUTO] * len(params))
            queries.append((sql_bytes, None, False, values, tx.types, tx.formats))
        else:  # as text: the prepared statement's types are PostgreSQL's choice
            values = tx.dump_sequence(params, [PyFormat.TEXT] * len(params))
            queries.append((sql_bytes, name, prepare, values, None, None))
    pgconn.enter_pipeline_mode()
    try:
        if begin:
            pgconn.send_query_params(b"BEGIN", None)
        preparing = []  # (sql, name, index of the Parse's result)
        position = 1 if begin else 0
        answers = []  # index of each command's result
        for sql, name, prepare, values, types, formats in queries:
            if prepare:
                pgconn.send_prepare(name, sql)
                preparing.append((sql, name, position))
                position += 1
            if name is None:
                pgconn.send_query_params(sql, values, param_types=types, param_formats=formats)
            else:
                pgconn.send_query_prepared(name, values)
            answers.append(position)
            position += 1
        if commit:
            pgconn.send_query_params(b"COMMIT", None)
        pgconn.pipeline_sync()
        while pgconn.flush():
            _wait(pgconn.socket, select.POLLOUT)
        results = _read_until_sync(pgconn)
    except BaseException:
        # Cut off mid-exchange (the connection failed, or the thread was
        # interrupted): answers may still be due, and a connection in that
        # state serves nobody.  The writer opens a new one.
        conn.close()
        raise
    pgconn.exit_pipeline_mode()
    for sql, name, at in preparing:
        if results[at].status == _ES.COMMAND_OK:
            prepared.names[sql] = name
        elif results[at].status == _ES.FATAL_ERROR:
            prepared.refused.add(sql)
    for res in results:
        if res.status == _ES.FATAL_ERROR:
            raise errors.error_from_result(res, encoding=conn.info.encoding)
    return [_rows(results[at]) for at in answers]


def _wait(fd: int, events: int) -> None:
    # poll, not select: a server with many clients has descriptors past select's 1024
    poller = select.poll()
    poller.register(fd, events)
    poller.poll()


def _read_until_sync(pgconn: pq.abc.PGconn) -> list:
    """Each command's last result, up to the pipeline's sync."""
    results = []
    last = None
    while True:
        while pgconn.is_busy():
            _wait(pgconn.socket, select.POLLIN)
            pgconn.consume_input()
        res = pgconn.get_result()
        if res is None:  # the end of one command's results
            if last is not None:
                results.append(last)
                last = None
            continue
        if res.status == _ES.PIPELINE_SYNC:
            return results
        last = res


def _rows(res) -> Rows:
    if res.status != _ES.TUPLES_OK:
        return []
    return [tuple(None if (v := res.get_value(r, c)) is None else v.decode()
                  for c in range(res.nfields)) for r in range(res.ntuples)]
