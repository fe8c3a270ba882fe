"""Several processes on one database: caches catch up, generations stay ordered."""

from __future__ import annotations

import time
from datetime import datetime, timezone

import pytest

from db.listen import ChangeListener
from db.store import Database
from xapi.refs import make_ref, make_uuid


def _wait(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


@pytest.fixture
def two(fresh_db_url):
    a, b = Database(fresh_db_url), Database(fresh_db_url)
    a.upgrade()
    a.load()
    b.load()
    yield a, b
    a.close()
    b.close()


def _network_from(db) -> str:
    """A network that ``db``'s process commits (the other one has not heard of it)."""
    net = make_ref()
    with db.write() as tx:
        tx.insert("network", net, {"uuid": make_uuid(), "name_label": "from b"})
    return net


def test_catch_up_applies_other_writers_in_order(two):
    a, b = two
    net = _network_from(b)
    with b.write() as tx:
        tx.update("network", net, {"name_label": "renamed by b"})
    assert a.cache.get("network", net) is None
    assert a.catch_up() == 2
    assert a.cache.get("network", net).values["name_label"] == "renamed by b"
    assert a.cache.generation == b.cache.generation == 2
    # A's own next commit lands after B's, and A's journal stays in generation order.
    with a.write() as tx:
        tx.update("network", net, {"name_description": "by a"})
    gens = [entry[0] for entry in a.cache.journal]
    assert gens == sorted(gens) and gens[-1] == 3


def test_own_commit_first_pulls_in_the_gap(two):
    a, b = two
    net = make_ref()
    with b.write() as tx:
        tx.insert("network", net, {"uuid": make_uuid()})
    with a.write() as tx:  # generation 2: a must first learn generation 1 from b
        tx.insert("network", make_ref(), {"uuid": make_uuid()})
    assert a.cache.get("network", net) is not None
    assert [e[0] for e in a.cache.journal] == [1, 2]


def _count_reads(db) -> list[tuple[int, int | None]]:
    """Record each change-log read of ``db``: (since, upto)."""
    reads: list[tuple[int, int | None]] = []
    real_read = db.changelog.read
    db.changelog.read = lambda since, upto=None: reads.append((since, upto)) or real_read(since, upto)
    return reads


def test_own_commit_is_never_read_back(two):
    """With no listener, a writer reads only the other process's generations
    before its own from the change log; its own rows it knows."""
    a, b = two
    net = _network_from(b)
    reads = _count_reads(a)
    with a.write() as tx:  # generation 2, on top of b's rename it has not seen
        tx.update("network", net, {"name_description": "by a"})
    assert reads == [(0, 1)]
    row = a.cache.get("network", net)
    assert (row.values["name_label"], row.values["name_description"]) == ("from b", "by a")
    assert a.cache.generation == 2


def test_a_writer_leaves_earlier_commits_to_the_listener(two, monkeypatch):
    """While the listener hears every commit, a writer whose commit follows
    other processes' waits for the listener to apply theirs, then applies its
    own: nothing is read from the change log."""
    a, b = two
    if a.dialect != "postgresql":
        pytest.skip("LISTEN/NOTIFY is PostgreSQL's; SQLite runs one process")
    monkeypatch.setattr("db.store._HEAR_WAIT", 10.0)  # however slow a loaded machine is
    real_hear = a.hear

    def slow_hear(payloads):
        time.sleep(0.05)  # so that a's writer commits before the listener applied b's
        real_hear(payloads)

    a.hear = slow_hear
    listener = ChangeListener(a, poll_interval=30).start()
    try:
        assert _wait(lambda: a.hearing)
        reads = _count_reads(a)
        net = _network_from(b)
        with b.write() as tx:
            tx.update("network", net, {"name_label": "renamed by b"})
        with a.write() as tx:
            tx.update("network", net, {"name_description": "by a"})
        assert reads == []
        assert a.cache.generation == 3
        row = a.cache.get("network", net)
        assert (row.values["name_label"], row.values["name_description"]) == ("renamed by b", "by a")
        assert [e[0] for e in a.cache.journal] == [1, 2, 3]
    finally:
        listener.stop()


def test_await_own_waits_for_a_commit_still_on_its_way_to_the_cache(two):
    """A writer hands its commit to the cache after leaving the write lock; a
    decision taken from the cache (a host's free memory) must count it."""
    import threading

    a, b = two
    if a.dialect != "postgresql":
        pytest.skip("LISTEN/NOTIFY is PostgreSQL's; SQLite applies a commit before the next")
    real_hear = a.hear

    def slow_hear(payloads):
        time.sleep(0.1)
        real_hear(payloads)

    a.hear = slow_hear
    listener = ChangeListener(a, poll_interval=30).start()
    try:
        assert _wait(lambda: a.hearing)
        net = _network_from(b)  # generation 1, which a's listener is slow to apply

        def rename():
            with a.write() as tx:  # generation 2: its apply waits for generation 1
                tx.update("network", net, {"name_label": "renamed by a"})

        writer = threading.Thread(target=rename)
        writer.start()
        assert _wait(lambda: a._own_generation == 2, 5)
        a.await_own()
        assert a.cache.generation >= 2
        assert a.cache.get("network", net).values["name_label"] == "renamed by a"
        writer.join(5)
    finally:
        listener.stop()


def test_postgresql_notify_wakes_the_listener(two):
    a, b = two
    if a.dialect != "postgresql":
        pytest.skip("LISTEN/NOTIFY is PostgreSQL's; SQLite runs one process")
    listener = ChangeListener(a, poll_interval=30).start()
    try:
        time.sleep(0.3)
        net = make_ref()
        started = time.monotonic()
        with b.write() as tx:
            tx.insert("network", net, {"uuid": make_uuid()})
        assert _wait(lambda: a.cache.get("network", net) is not None, 5)
        # Far sooner than the 30 s poll: the notification did it.
        assert time.monotonic() - started < 2
    finally:
        listener.stop()


def test_journal_stays_in_order_when_a_catch_up_reads_newer_rows(two):
    """B changes one object twice; A catches up late: the re-read row already
    carries the later generation, yet A's journal is in generation order and
    an event.from at every token sees the change."""
    from xapi.events import Subscription, collect

    a, b = two
    task, other = make_ref(), make_ref()
    with b.write() as tx:
        tx.insert("network", task, {"uuid": make_uuid()})
    with b.write() as tx:
        tx.insert("network", other, {"uuid": make_uuid()})
    with b.write() as tx:
        tx.update("network", task, {"name_label": "done"})
    a.catch_up()
    gens = [entry[0] for entry in a.cache.journal]
    assert gens == sorted(gens), gens
    sub = Subscription(frozenset({"network"}), frozenset())
    for since in range(0, 3):
        events, _ = collect(a.cache, sub, since)
        assert task in {e.ref for e in events}, (since, events)


def test_a_late_own_apply_does_not_reorder_the_journal():
    """The listener can apply a process's own commit (and later ones) before the
    committing thread does; the late apply must change nothing."""
    from db.cache import Change, ObjectCache
    from db.schema import stored_classes
    from xapi.idl.model import model

    m = model()
    cache = ObjectCache(m, stored_classes(m))

    def change(gen: int, ref: str) -> Change:
        values = {f.name: f.initial for f in m.classes["network"].stored_fields}
        values.update(uuid=f"u-{ref}", name_label=str(gen))
        return Change("network", ref, "add" if gen == 1 else "mod", values, 1, gen)

    cache.apply([change(1, "OpaqueRef:a")], 1)
    cache.apply([change(2, "OpaqueRef:a")], 2)  # the listener, reading generation 2
    cache.apply([change(3, "OpaqueRef:b")], 3)
    before = list(cache.journal)
    cache.apply([change(2, "OpaqueRef:a")], 2)  # the committing thread, late
    assert list(cache.journal) == before
    assert [e[0] for e in cache.journal] == [1, 2, 3]


def test_a_cache_behind_a_trimmed_change_log_reloads(two):
    a, b = two
    gone, kept = make_ref(), make_ref()
    with b.write() as tx:
        tx.insert("network", gone, {"uuid": make_uuid(), "name_label": "gone"})
        tx.insert("network", kept, {"uuid": make_uuid(), "name_label": "kept"})
    a.catch_up()
    woken = []
    a.cache.listeners.append(lambda generation, changes: woken.append(generation))
    added = make_ref()
    with b.write() as tx:
        tx.delete("network", gone)
    with b.write() as tx:
        tx.update("network", kept, {"name_label": "renamed"})
    with b.write() as tx:
        tx.insert("network", added, {"uuid": make_uuid(), "name_label": "added"})
    assert b.trim_changes(keep=1) == 4  # generations 1-3 (two entries for the first)
    assert a.catch_up() == 1  # one reload
    assert a.cache.get("network", gone) is None
    assert a.cache.get("network", kept).values["name_label"] == "renamed"
    assert a.cache.get("network", added).values["name_label"] == "added"
    assert a.cache.generation == b.cache.generation == 4
    assert woken == [4]
    # Back on the log from there.
    with b.write() as tx:
        tx.update("network", added, {"name_label": "again"})
    assert a.catch_up() == 1
    assert a.cache.get("network", added).values["name_label"] == "again"


def test_catch_up_reads_rows_as_sqlalchemy_does(two):
    """Every column type decodes as the write path stores it (XAPI_DB_VERIFY compares too)."""
    a, b = two
    vm = make_ref()
    values = {"uuid": make_uuid(), "name_label": "typed", "memory_static_max": 2 ** 40,
              "VCPUs_at_startup": 3, "is_a_template": True, "other_config": {"k": "v"},
              "blocked_operations": {"start": "no"}, "user_version": 7,
              "start_delay": 5, "tags": ["a", "b"], "power_state": "Halted"}
    with b.write() as tx:
        tx.insert("VM", vm, values)
        tx.insert("VM_metrics", make_ref(), {"uuid": make_uuid(), "memory_actual": 12,
                                             "VCPUs_utilisation": {1: 0.5}})
    a.catch_up()
    assert a.cache.get("VM", vm).values == b.cache.get("VM", vm).values
    (mine,) = [r for r in a.cache.rows("VM_metrics")]
    theirs = b.cache.get("VM_metrics", mine.ref)
    assert mine.values == theirs.values and mine.values["VCPUs_utilisation"] == {1: 0.5}


def test_announced_commits_are_applied_without_reading_back(two):
    """The NOTIFY payload carries the changes; only one too large for it is read back."""
    a, b = two
    if a.dialect != "postgresql":
        pytest.skip("LISTEN/NOTIFY is PostgreSQL's; SQLite runs one process")
    reads = []
    real_read = a.changelog.read
    a.changelog.read = lambda since, upto=None: reads.append(since) or real_read(since, upto)
    listener = ChangeListener(a, poll_interval=30).start()
    try:
        time.sleep(0.3)
        reads.clear()  # the listener's first catch-up
        vm, started = make_ref(), datetime.now(timezone.utc)
        with b.write() as tx:
            tx.insert("VM", vm, {"uuid": make_uuid(), "name_label": "announced"})
        with b.write() as tx:
            tx.update("VM", vm, {"name_description": "changed", "tags": ["t"],
                                 "other_config": {"k": "v"}})
        metrics = make_ref()
        with b.write() as tx:
            tx.insert("VM_metrics", metrics, {"uuid": make_uuid(), "start_time": started,
                                              "VCPUs_utilisation": {0: 0.25}})
        assert _wait(lambda: a.cache.get("VM_metrics", metrics) is not None)
        assert reads == []
        for cls, ref in (("VM", vm), ("VM_metrics", metrics)):
            mine, theirs = a.cache.get(cls, ref), b.cache.get(cls, ref)
            assert (mine.values, mine.created, mine.modified) == \
                   (theirs.values, theirs.created, theirs.modified)
        assert a.cache.get("VM_metrics", metrics).values["start_time"] == started  # microseconds
        # Too large for a payload: announced by its generation alone, read back.
        with b.write() as tx:
            tx.update("VM", vm, {"other_config": {f"key{i}": "x" * 100 for i in range(100)}})
        assert _wait(lambda: len(a.cache.get("VM", vm).values["other_config"]) == 100)
        assert reads == [3]
        assert a.cache.generation == b.cache.generation == 4
    finally:
        listener.stop()


def test_an_unreadable_announcement_is_read_back(two):
    a, b = two
    net = _network_from(b)
    a.hear([f"{b.cache.generation} [[\"network\", \"{net}\", \"add\", {{\"no_such_field\": 1}}]]",
            "not a generation"])
    assert a.cache.get("network", net).values["name_label"] == "from b"
    assert a.cache.generation == b.cache.generation


def test_map_and_set_changes_from_two_processes_lose_nothing(two):
    """``add_to_<map>`` and kin read the field and write it back whole: the row
    is locked for that, or two processes (the server and a worker, two hosts)
    changing one object's map at once lose one of the changes."""
    import threading
    from types import SimpleNamespace

    from api import implicit

    a, b = two
    if a.dialect != "postgresql":
        pytest.skip("one process writes an SQLite database; PostgreSQL's row locks are under test")
    net = make_ref()
    with a.write() as tx:
        tx.insert("network", net, {"uuid": make_uuid(), "tags": ["old"]})
    add, remove = implicit.map_add("network", "other_config"), implicit.map_remove("network", "other_config")
    tag, untag = implicit.set_add("network", "tags"), implicit.set_remove("network", "tags")

    def run(db, prefix):
        ctx = SimpleNamespace(rt=SimpleNamespace(db=db))
        for i in range(30):
            add(ctx, net, f"{prefix}{i}", "x")
            add(ctx, net, f"{prefix}gone{i}", "x")
            remove(ctx, net, f"{prefix}gone{i}")
            tag(ctx, net, f"{prefix}{i}")
        untag(ctx, net, "old")

    threads = [threading.Thread(target=run, args=(db, p)) for db, p in ((a, "a"), (b, "b"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    b.catch_up()
    row = b.cache.get("network", net).values
    assert sorted(row["other_config"]) == sorted(f"{p}{i}" for p in "ab" for i in range(30))
    assert sorted(row["tags"]) == sorted(f"{p}{i}" for p in "ab" for i in range(30))


def test_a_touched_row_is_locked_before_the_generation(two):
    """A commit that touches a row another transaction holds (creating a VBD
    touches its VM) waits for that row before it takes the generation's lock;
    taking them the other way round, the holder's own commit would deadlock
    with it."""
    import threading

    a, b = two
    if a.dialect != "postgresql":
        pytest.skip("SQLite takes one writer at a time: nothing to deadlock")
    vm, vbd = make_ref(), make_ref()
    with a.write() as tx:
        tx.insert("VM", vm, {"uuid": make_uuid()})
    holding, go = threading.Event(), threading.Event()
    errors = []

    def holder():
        try:
            with a.write() as tx:
                tx.update("VM", vm, {"name_label": "held"})  # the VM's row lock, until commit
                holding.set()
                go.wait(10)
        except Exception as exc:
            errors.append(exc)

    def toucher():
        try:
            with b.write() as tx:
                tx.insert("VBD", vbd, {"uuid": make_uuid(), "VM": vm})
        except Exception as exc:
            errors.append(exc)

    first = threading.Thread(target=holder)
    first.start()
    assert holding.wait(10)
    second = threading.Thread(target=toucher)
    second.start()
    time.sleep(0.3)  # the toucher is now waiting for the VM's row
    go.set()
    first.join(15)
    second.join(15)
    assert errors == []
    a.catch_up()
    assert a.cache.get("VM", vm).values["name_label"] == "held"
    assert a.cache.get("VBD", vbd).values["VM"] == vm
