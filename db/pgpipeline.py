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

Statements use PostgreSQL's own placeholders (``$1``…) and are not
prepared: psycopg deallocates every prepared statement of the session at
each rollback, so a name kept here could vanish under it.
"""

from __future__ import annotations

import select
from typing import Any, Sequence

from psycopg import Connection, errors, pq
from psycopg.adapt import PyFormat, Transformer

_ES = pq.ExecStatus

Rows = list[tuple[str | None, ...]]


def exchange(conn: Connection, commands: Sequence[tuple[str, Sequence[Any]]], *,
             begin: bool = False, commit: bool = False) -> list[Rows]:
    """Run ``commands`` (``[BEGIN;] command…[; COMMIT]``) in one round trip;
    each command's rows, their values as PostgreSQL's text.

    The first failing command raises psycopg's error for it; the commands
    after it are skipped and the transaction is left aborted (the caller
    rolls back), as with ``execute``."""
    pgconn = conn.pgconn
    tx = Transformer(conn)
    queries = []  # adapted before anything is sent: a value that cannot be fails here
    for sql, params in commands:
        values = tx.dump_sequence(params, [PyFormat.AUTO] * len(params))
        queries.append((sql.encode(), values, tx.types, tx.formats))
    pgconn.enter_pipeline_mode()
    try:
        if begin:
            pgconn.send_query_params(b"BEGIN", None)
        for sql, values, types, formats in queries:
            pgconn.send_query_params(sql, values, param_types=types, param_formats=formats)
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
    for res in results:
        if res.status == _ES.FATAL_ERROR:
            raise errors.error_from_result(res, encoding=conn.info.encoding)
    if begin:
        results = results[1:]
    return [_rows(res) for res in results[:len(commands)]]


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
