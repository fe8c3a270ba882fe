"""db/pgpipeline.py on PostgreSQL: several statements, BEGIN and COMMIT in one round trip."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import pq

from db import pgpipeline
from db.store import Database
from tests import support

IDLE, INTRANS, INERROR = (pq.TransactionStatus.IDLE, pq.TransactionStatus.INTRANS,
                          pq.TransactionStatus.INERROR)


@pytest.fixture
def database(fresh_db_url):
    if support.wanted_backend() != "postgresql":
        pytest.skip("libpq's pipeline mode is PostgreSQL's; SQLite has no round trips")
    db = Database(fresh_db_url)
    yield db
    db.close()


@pytest.fixture
def conn(database):
    raw = database.engine.raw_connection()
    c: psycopg.Connection = raw.dbapi_connection
    c.autocommit = True
    c.execute("CREATE TABLE t (k int PRIMARY KEY, v text)")
    c.autocommit = False
    yield c
    raw.close()


def rows(database, sql: str) -> list[tuple]:
    raw = database.engine.raw_connection()
    try:
        return [tuple(r) for r in raw.dbapi_connection.execute(sql).fetchall()]
    finally:
        raw.close()


def test_begin_commands_and_commit_travel_together(database, conn):
    assert conn.pgconn.transaction_status == IDLE
    got = pgpipeline.exchange(conn, [
        ("INSERT INTO t VALUES ($1, $2) RETURNING k", (1, "one")),
        ("INSERT INTO t VALUES ($1, $2)", (2, None)),
        ("SELECT k, v FROM t WHERE k = ANY($1) ORDER BY k", ([1, 2, 3],)),
    ], begin=True, commit=True)
    assert got == [[("1",)], [], [("1", "one"), ("2", None)]]
    assert conn.pgconn.transaction_status == IDLE
    assert rows(database, "SELECT k, v FROM t ORDER BY k") == [(1, "one"), (2, None)]


def test_begin_alone_leaves_the_transaction_open_for_what_follows(database, conn):
    pgpipeline.exchange(conn, [("INSERT INTO t VALUES ($1, $2)", (1, "one"))], begin=True)
    assert conn.pgconn.transaction_status == INTRANS
    conn.execute("INSERT INTO t VALUES (%s, %s)", (2, "two"))  # psycopg sends no BEGIN of its own
    assert rows(database, "SELECT k FROM t") == []  # not committed yet
    conn.rollback()
    assert rows(database, "SELECT k FROM t") == []


def test_a_failing_command_raises_its_error_and_the_rest_is_skipped(database, conn):
    pgpipeline.exchange(conn, [("INSERT INTO t VALUES ($1, $2)", (1, "one"))],
                        begin=True, commit=True)
    with pytest.raises(psycopg.errors.UniqueViolation):
        pgpipeline.exchange(conn, [
            ("INSERT INTO t VALUES ($1, $2)", (2, "two")),
            ("INSERT INTO t VALUES ($1, $2)", (1, "again")),
            ("INSERT INTO t VALUES ($1, $2)", (3, "three")),
        ], begin=True, commit=True)
    assert conn.pgconn.transaction_status == INERROR  # the caller rolls back
    conn.rollback()
    assert rows(database, "SELECT k, v FROM t ORDER BY k") == [(1, "one")]
    # The connection serves on.
    assert pgpipeline.exchange(conn, [("SELECT count(*) FROM t", ())], begin=True,
                               commit=True) == [[("1",)]]


def test_an_error_at_commit_is_raised(database, conn):
    conn.autocommit = True
    conn.execute("CREATE TABLE d (k int PRIMARY KEY REFERENCES t DEFERRABLE INITIALLY DEFERRED)")
    conn.autocommit = False
    with pytest.raises(psycopg.errors.ForeignKeyViolation):
        pgpipeline.exchange(conn, [("INSERT INTO d VALUES ($1)", (7,))], begin=True, commit=True)
    conn.rollback()
    assert rows(database, "SELECT k FROM d") == []


def test_a_value_that_cannot_be_sent_fails_before_anything_is_sent(database, conn):
    with pytest.raises(psycopg.ProgrammingError):
        pgpipeline.exchange(conn, [("INSERT INTO t VALUES ($1, $2)", (1, "one")),
                                   ("INSERT INTO t VALUES ($1, $2)", (2, object()))],
                            begin=True, commit=True)
    assert conn.pgconn.transaction_status == IDLE  # not even BEGIN went
    assert rows(database, "SELECT k FROM t") == []
    assert pgpipeline.exchange(conn, [("SELECT 1", ())]) == [[("1",)]]


def test_a_connection_cut_off_mid_exchange_is_closed(database, conn):
    killer = database.engine.raw_connection()
    try:
        killer.dbapi_connection.execute("SELECT pg_terminate_backend(%s)", (conn.info.backend_pid,))
        killer.dbapi_connection.commit()
    finally:
        killer.close()
    with pytest.raises(psycopg.OperationalError):
        pgpipeline.exchange(conn, [("SELECT 1", ())], begin=True, commit=True)
    assert conn.closed


def test_a_connection_on_a_high_descriptor_works(database):
    """A server with many clients holds descriptors past 1024, which select() cannot watch."""
    import os
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.skip(f"LOUD SKIP: the descriptor limit ({hard}) leaves no room past 1024")
    if soft != resource.RLIM_INFINITY and soft < 1200:
        resource.setrlimit(resource.RLIMIT_NOFILE, (1200, hard))
    held = []
    try:
        while not held or held[-1] < 1030:
            held.append(os.open(os.devnull, os.O_RDONLY))
        raw = database.engine.raw_connection()
        try:
            c = raw.dbapi_connection
            assert c.pgconn.socket > 1024
            assert pgpipeline.exchange(c, [("SELECT $1::int + 1", (41,))], begin=True,
                                       commit=True) == [[("42",)]]
        finally:
            raw.close()
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.fixture
def writer_conn(database, conn):
    """``conn`` as the writers' connection is: psycopg prepares nothing on it."""
    conn.prepare_threshold = None
    return conn


def prepared_here(conn) -> dict[str, str]:
    """This session's prepared statements: SQL → name (asked outside a transaction)."""
    return {sql: name for name, sql in
            conn.execute("SELECT name, statement FROM pg_prepared_statements").fetchall()}


INSERT = "INSERT INTO t VALUES ($1, $2)"
SELECT = "SELECT k, v FROM t WHERE k = ANY($1) AND (v IS NULL OR v <> $2) ORDER BY k"


def test_a_statement_seen_twice_is_prepared_and_answers_the_same(database, writer_conn):
    c = writer_conn
    for k in (1, 2, 3):
        pgpipeline.exchange(c, [(INSERT, (k, None if k == 2 else f"v{k}")),
                                (SELECT, ([1, 2, 3], "v3"))], begin=True, commit=True)
        if k == 1:
            c.commit()
            assert prepared_here(c) == {}  # once is not enough
    c.commit()
    assert set(prepared_here(c)) == {INSERT, SELECT}
    # The prepared ones take text: a list, a NULL, an integer as before.
    got = pgpipeline.exchange(c, [(SELECT, ([1, 2, 3], "v3"))], begin=True, commit=True)
    assert got == [[("1", "v1"), ("2", None)]]
    assert rows(database, "SELECT k, v FROM t ORDER BY k") == [(1, "v1"), (2, None), (3, "v3")]


def test_prepared_statements_outlive_a_failed_transaction(database, writer_conn):
    c = writer_conn
    for k in (1, 2):
        pgpipeline.exchange(c, [(INSERT, (k, "x"))], begin=True, commit=True)
    with pytest.raises(psycopg.errors.UniqueViolation):
        pgpipeline.exchange(c, [(INSERT, (3, "x")), (INSERT, (1, "again"))], begin=True, commit=True)
    c.rollback()
    pgpipeline.exchange(c, [(INSERT, (4, "x"))], begin=True, commit=True)
    assert INSERT in prepared_here(c)
    assert rows(database, "SELECT k FROM t ORDER BY k") == [(1,), (2,), (4,)]


def test_a_statement_that_cannot_be_prepared_runs_unprepared(database, writer_conn):
    c = writer_conn
    untyped = "SELECT $1 IS NULL"  # with no type given, PostgreSQL cannot infer $1's
    assert pgpipeline.exchange(c, [(untyped, (5,))], begin=True, commit=True) == [[("f",)]]
    with pytest.raises(psycopg.errors.IndeterminateDatatype):
        pgpipeline.exchange(c, [(untyped, (5,))], begin=True, commit=True)
    c.rollback()
    assert pgpipeline.exchange(c, [(untyped, (5,))], begin=True, commit=True) == [[("f",)]]
    assert untyped not in prepared_here(c)


def test_nothing_is_prepared_where_psycopg_prepares(database, conn):
    assert conn.prepare_threshold is not None
    for k in (1, 2, 3):
        pgpipeline.exchange(conn, [(INSERT, (k, "x"))], begin=True, commit=True)
    assert INSERT not in prepared_here(conn)


def test_the_writer_prepares_its_commit_statements(database):
    """The writers' connection keeps the commit statements prepared."""
    from xapi.refs import make_ref, make_uuid

    database.upgrade()
    database.load()
    for i in range(3):
        with database.write() as tx:
            tx.insert("network", make_ref(), {"uuid": make_uuid(), "name_label": f"n{i}"})
    with database.write() as tx:
        statements = prepared_here(tx.conn.connection.dbapi_connection)
    assert any(sql.startswith("WITH g AS (UPDATE xapi_generation") for sql in statements)


def test_a_statement_twice_in_one_exchange_is_prepared_once(database, writer_conn):
    c = writer_conn
    pgpipeline.exchange(c, [(INSERT, (1, "x"))], begin=True, commit=True)
    pgpipeline.exchange(c, [(INSERT, (2, "x")), (INSERT, (3, "x"))], begin=True, commit=True)
    c.commit()
    assert len(c.execute("SELECT name FROM pg_prepared_statements").fetchall()) == 1
    assert INSERT in prepared_here(c)
    assert rows(database, "SELECT k FROM t ORDER BY k") == [(1,), (2,), (3,)]
