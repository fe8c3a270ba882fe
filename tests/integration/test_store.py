"""The write path on a real database: generations, change log, rollback, cache."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from db.store import Database
from xapi.errors import ApiError
from xapi.refs import make_ref, make_uuid


@pytest.fixture
def db(fresh_db_url):
    database = Database(fresh_db_url)
    database.upgrade()
    database.load()
    yield database
    database.close()


def changes(db) -> list[tuple]:
    with db.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(
            text("SELECT generation, cls, op FROM xapi_changes ORDER BY generation, cls"))]


def test_each_commit_bumps_generation_and_logs_changes(db):
    vm, vbd = make_ref(), make_ref()
    with db.write() as tx:
        tx.insert("VM", vm, {"uuid": make_uuid(), "name_label": "a"})
    with db.write() as tx:
        tx.insert("VBD", vbd, {"uuid": make_uuid(), "VM": vm})
    with db.write() as tx:
        tx.update("VM", vm, {"name_label": "b"})
    assert db.cache.generation == 3
    # Creating the VBD touches the VM, whose derived VBDs set changed.
    assert changes(db) == [(1, "VM", "add"), (2, "VBD", "add"), (2, "VM", "mod"), (3, "VM", "mod")]
    row = db.cache.get("VM", vm)
    assert (row.created, row.modified) == (1, 3)
    assert db.cache.record("VM", row)["VBDs"] == [vbd]


def test_a_failed_transaction_leaves_nothing(db):
    vm = make_ref()
    with pytest.raises(ApiError):
        with db.write() as tx:
            tx.insert("VM", vm, {"uuid": make_uuid()})
            tx.update("VM", "OpaqueRef:missing", {"name_label": "x"})
    assert db.cache.get("VM", vm) is None
    assert changes(db) == []
    with db.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM vm")).scalar_one() == 0
        assert conn.execute(text("SELECT generation FROM xapi_generation")).scalar_one() == 0


def test_born_and_gone_in_one_transaction_is_invisible(db):
    with db.write() as tx:
        ref = make_ref()
        tx.insert("network", ref, {"uuid": make_uuid()})
        tx.delete("network", ref)
    assert changes(db) == [] and db.cache.generation == 0


def test_cache_reloads_identically(db, fresh_db_url):
    vm, vbd = make_ref(), make_ref()
    with db.write() as tx:
        tx.insert("VM", vm, {"uuid": make_uuid(), "other_config": {"k": "v"}, "VCPUs_params": {}})
        tx.insert("VBD", vbd, {"uuid": make_uuid(), "VM": vm, "mode": "RO"})
    other = Database(fresh_db_url)
    other.load()
    for cls, ref in (("VM", vm), ("VBD", vbd)):
        a, b = db.cache.get(cls, ref), other.cache.get(cls, ref)
        assert db.cache.record(cls, a) == other.cache.record(cls, b)
        assert (a.created, a.modified) == (b.created, b.modified)
    other.close()


def test_typed_values_round_trip(db, fresh_db_url):
    from datetime import datetime, timezone

    ref = make_ref()
    stamp = datetime(2024, 4, 20, 12, 0, 0, tzinfo=timezone.utc)
    with db.write() as tx:
        tx.insert("VM_metrics", ref, {
            "uuid": make_uuid(), "memory_actual": 2**40, "VCPUs_utilisation": {0: 0.5, 3: 1.0},
            "VCPUs_CPU": {1: 2}, "VCPUs_params": {"weight": "256"}, "state": ["running"],
            "start_time": stamp, "install_time": stamp, "last_updated": stamp, "other_config": {},
        })
    other = Database(fresh_db_url)
    other.load()
    values = other.cache.get("VM_metrics", ref).values
    assert values["memory_actual"] == 2**40
    assert values["VCPUs_utilisation"] == {0: 0.5, 3: 1.0}
    assert values["VCPUs_CPU"] == {1: 2}
    assert values["start_time"] == stamp
    other.close()


def stored(db, cls: str, ref: str, *columns: str) -> tuple:
    with db.engine.connect() as conn:
        return tuple(conn.execute(text(f"SELECT {', '.join(columns)} FROM {cls.lower()} "
                                       "WHERE _ref = :r"), {"r": ref}).one())


def test_deferred_writes_are_what_the_transaction_did(db):
    """PostgreSQL sends most writes with the commit (see Transaction); the stored
    rows, stamps and log must be those of the writes in order, on both backends."""
    a, b, gone = make_ref(), make_ref(), make_ref()
    with db.write() as tx:
        tx.insert("network", b, {"uuid": make_uuid(), "name_label": "b0"})
    with db.write() as tx:
        tx.insert("network", a, {"uuid": make_uuid(), "name_label": "a0"})
        tx.update("network", a, {"name_label": "a1"})  # rides on the unsent INSERT
        assert a in tx.refs_where("network", name_label="a1")  # sends it
        tx.update("network", a, {"MTU": 9000})  # after the INSERT went: at once
        assert tx.get("network", b, for_update=True)["name_label"] == "b0"
        tx.update("network", b, {"name_label": "b1"})
        tx.update("network", b, {"MTU": 1400})  # one UPDATE of b at commit
        assert tx.get("network", b, for_update=True)["name_label"] == "b1"
        tx.insert("network", gone, {"uuid": make_uuid()})
        tx.delete("network", gone)  # never sent
        with pytest.raises(ApiError):
            tx.update("network", "OpaqueRef:missing", {"MTU": 1})  # not held: at once
    assert stored(db, "network", a, "name_label", "\"MTU\"", "_created", "_modified") == \
        ("a1", 9000, 2, 2)
    assert stored(db, "network", b, "name_label", "\"MTU\"", "_created", "_modified") == \
        ("b1", 1400, 1, 2)
    assert sorted(changes(db)) == [(1, "network", "add"), (2, "network", "add"),
                                   (2, "network", "mod")]
    with db.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM network WHERE _ref = :r"),
                            {"r": gone}).scalar_one() == 0
    assert db.cache.get("network", a).values["MTU"] == 9000
    assert db.cache.get("network", b).values["name_label"] == "b1"


def test_lock_takes_several_rows_at_once_and_reads_what_is_stored(db, fresh_db_url):
    """``tx.lock`` is ``get(..., for_update=True)`` of several rows in one statement:
    on PostgreSQL they stay locked until the commit, and a row another process
    changed since the cache saw it is read from the database."""
    from sqlalchemy.exc import OperationalError

    a, b = make_ref(), make_ref()
    with db.write() as tx:
        tx.insert("network", a, {"uuid": make_uuid(), "name_label": "a0"})
        tx.insert("network", b, {"uuid": make_uuid(), "name_label": "b0"})
    other = Database(fresh_db_url)
    other.load()
    with other.write() as tx:
        tx.update("network", b, {"name_label": "b-other"})
    other.close()
    assert db.cache.get("network", b).values["name_label"] == "b0"  # not heard of yet
    with db.write() as tx:
        tx.lock("network", [b, a, "OpaqueRef:missing"])
        if db.dialect == "postgresql":
            with db.engine.connect() as conn:
                for ref in (a, b):
                    with pytest.raises(OperationalError):  # held by tx
                        conn.execute(text("SELECT 1 FROM network WHERE _ref = :r FOR UPDATE NOWAIT"),
                                     {"r": ref})
                    conn.rollback()
        assert tx.get("network", b, for_update=True)["name_label"] == "b-other"
        assert tx.get("network", a, for_update=True)["name_label"] == "a0"
        assert tx.get("network", "OpaqueRef:missing", for_update=True) is None
        tx.update("network", a, {"MTU": 1400})
        tx.update("network", b, {"MTU": 9000})
    assert stored(db, "network", a, "name_label", "\"MTU\"") == ("a0", 1400)
    assert stored(db, "network", b, "name_label", "\"MTU\"") == ("b-other", 9000)
    assert db.cache.get("network", b).values["name_label"] == "b-other"


class round_trips:
    """Counts what reaches PostgreSQL: psycopg's waits for an answer and
    db/pgpipeline.py's exchanges (one round trip each)."""

    def __enter__(self):
        import psycopg

        from db import pgpipeline

        self.counts: dict[str, int] = {}
        self._undo = []
        for owner, name, kind in ((psycopg.Connection, "wait", "wait"),
                                  (pgpipeline, "exchange", "exchange")):
            original = getattr(owner, name)

            def counted(*args, _original=original, _kind=kind, **kwargs):
                self.counts[_kind] = self.counts.get(_kind, 0) + 1
                return _original(*args, **kwargs)

            setattr(owner, name, counted)
            self._undo.append((owner, name, original))
        return self.counts

    def __exit__(self, *exc):
        for owner, name, original in self._undo:
            setattr(owner, name, original)


def test_lock_rows_locks_several_classes_in_the_transactions_first_round_trip(db):
    """``tx.lock_rows`` is ``tx.lock`` of several classes at once; on PostgreSQL
    the transaction's BEGIN travels with it, and the rows stay locked until
    the commit, their updates waiting for it."""
    from sqlalchemy.exc import OperationalError

    net, vm = make_ref(), make_ref()
    with db.write() as tx:
        tx.insert("network", net, {"uuid": make_uuid(), "name_label": "n0"})
        tx.insert("VM", vm, {"uuid": make_uuid(), "name_label": "v0"})
    with db.write() as tx:
        pg = db.dialect == "postgresql"
        if pg:
            assert tx.conn.connection.dbapi_connection.pgconn.transaction_status == 0  # IDLE
        with round_trips() as trips:
            tx.lock_rows({"network": [net, "OpaqueRef:missing"], "VM": [vm]})
        if pg:
            assert trips == {"exchange": 1}  # BEGIN and both statements in one go
            assert {("network", net), ("VM", vm)} <= tx._locked
            with db.engine.connect() as conn:
                for table, ref in (("network", net), ("vm", vm)):
                    with pytest.raises(OperationalError):  # held by tx
                        conn.execute(text(f"SELECT 1 FROM {table} WHERE _ref = :r FOR UPDATE NOWAIT"),
                                     {"r": ref})
                    conn.rollback()
        assert tx.get("network", "OpaqueRef:missing", for_update=True) is None
        tx.update("network", net, {"name_label": "n1"})
        tx.update("VM", vm, {"name_label": "v1"})
        if pg:
            assert ("network", net) in tx._pending  # sent with the commit
        db.verify = False  # (XAPI_DB_VERIFY would read the rows back)
        trips = round_trips()
        trips.__enter__()
    trips.__exit__(None, None, None)
    if pg:
        # The commit statement and COMMIT in one go; the wait is SQLAlchemy's
        # commit, which then finds no transaction open and sends nothing.
        assert trips.counts == {"exchange": 1, "wait": 1}
    assert stored(db, "network", net, "name_label") == ("n1",)
    assert stored(db, "VM", vm, "name_label") == ("v1",)
    assert db.cache.get("VM", vm).values["name_label"] == "v1"


def test_a_database_error_at_commit_leaves_nothing(db):
    """A write the database refuses (here a second object with a ref already
    taken) fails the whole transaction: nothing stored, nothing cached, no
    generation, and the next transaction runs."""
    net, other = make_ref(), make_ref()
    with db.write() as tx:
        tx.insert("network", net, {"uuid": make_uuid(), "name_label": "n0"})
    generation = db.cache.generation
    with pytest.raises(Exception):
        with db.write() as tx:
            tx.update("network", net, {"name_label": "changed"})
            tx.insert("network", other, {"uuid": make_uuid(), "name_label": "o"})
            tx.insert("network", net, {"uuid": make_uuid()})  # the ref is taken
    assert db.cache.generation == generation
    assert stored(db, "network", net, "name_label") == ("n0",)
    assert db.cache.get("network", net).values["name_label"] == "n0"
    assert db.cache.get("network", other) is None
    with db.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM network WHERE _ref = :r"),
                            {"r": other}).scalar_one() == 0
    with db.write() as tx:
        tx.update("network", net, {"name_label": "n1"})
    assert stored(db, "network", net, "name_label") == ("n1",)


def test_related_sets_as_the_transaction_sees_them(db, fresh_db_url):
    """``tx.related`` answers from the cache only when the object is locked at the
    cache's version (a change to the set would have touched it); a set another
    process changed, or this transaction wrote, is read from the database."""
    vm, mine, theirs, new = make_ref(), make_ref(), make_ref(), make_ref()
    with db.write() as tx:
        tx.insert("VM", vm, {"uuid": make_uuid()})
        tx.insert("VBD", mine, {"uuid": make_uuid(), "VM": vm})
    with db.write() as tx:
        tx.get("VM", vm, for_update=True)
        assert tx.related("VM", vm, "VBDs") == [mine]
        assert ("VM", vm) in tx._as_cached or db.dialect != "postgresql"
    other = Database(fresh_db_url)
    other.load()
    with other.write() as tx:
        tx.insert("VBD", theirs, {"uuid": make_uuid(), "VM": vm})
    other.close()
    assert db.cache.derived("VM", "VBDs", vm) == [mine]  # not heard of yet
    with db.write() as tx:
        tx.get("VM", vm, for_update=True)
        assert sorted(tx.related("VM", vm, "VBDs")) == sorted([mine, theirs])
        tx.insert("VBD", new, {"uuid": make_uuid(), "VM": vm})
        assert sorted(tx.related("VM", vm, "VBDs")) == sorted([mine, theirs, new])


def test_writers_of_one_process_run_at_once_on_postgresql(db):
    """A transaction waiting (here, holding a row lock) no longer holds up the
    process's other writers; SQLite takes one at a time."""
    import threading

    if db.dialect != "postgresql":
        pytest.skip("SQLite takes one writer at a time")
    first, second = make_ref(), make_ref()
    with db.write() as tx:
        tx.insert("network", first, {"uuid": make_uuid()})
        tx.insert("network", second, {"uuid": make_uuid()})
    holding, release = threading.Event(), threading.Event()

    def slow():
        with db.write() as tx:
            tx.lock("network", [first])
            holding.set()
            release.wait(5)
            tx.update("network", first, {"name_label": "slow"})

    thread = threading.Thread(target=slow)
    thread.start()
    try:
        assert holding.wait(10)
        with db.write() as tx:  # would wait for the slow one with a single writer
            tx.update("network", second, {"name_label": "quick"})
        assert thread.is_alive()  # committed while the slow one is still open
        assert db.cache.get("network", second).values["name_label"] == "quick"
    finally:
        release.set()
        thread.join(10)
    assert db.cache.get("network", first).values["name_label"] == "slow"
    assert db.cache.generation == 3


def test_concurrent_writers_keep_the_cache_in_generation_order(db):
    """Several threads of one process commit at once: each commit reaches the
    cache whole and after every earlier generation (XAPI_DB_VERIFY checks the
    rows), and the cache ends as a fresh load sees the database."""
    import threading

    nets = [make_ref() for _ in range(4)]
    with db.write() as tx:
        for net in nets:
            tx.insert("network", net, {"uuid": make_uuid(), "other_config": {}})
    errors = []

    def writer(i: int) -> None:
        try:
            for n in range(25):
                with db.write() as tx:
                    # Every writer changes its own network and the shared one's map.
                    tx.update("network", nets[i], {"name_label": f"{i}-{n}"})
                    shared = tx.get("network", nets[0], for_update=True)
                    tx.update("network", nets[0], {"other_config": {
                        **shared["other_config"], str(i): str(n)}})
        except Exception as exc:  # reported below: a thread's exception would vanish
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert db.cache.generation == 101
    gens = [entry[0] for entry in db.cache.journal]
    assert gens == sorted(gens)
    fresh = Database(db.url)
    try:
        fresh.load()
        for net in nets:
            assert fresh.cache.get("network", net).values == db.cache.get("network", net).values
        assert db.cache.get("network", nets[0]).values["other_config"] == {
            str(i): "24" for i in range(4)}
    finally:
        fresh.close()
