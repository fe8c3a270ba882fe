"""The generic operation protocol on a real database."""

from __future__ import annotations

import threading

import pytest

from api.server import close_runtime, open_runtime
from xapi import operations
from xapi.config import Config
from xapi.context import Context
from xapi.errors import ApiError
from xapi.refs import make_ref, make_uuid


@pytest.fixture
def rt(fresh_db_url, tmp_path):
    runtime = open_runtime(Config(state_dir=str(tmp_path), db_url=fresh_db_url))
    yield runtime
    close_runtime(runtime)


def _network(rt) -> str:
    ref = make_ref()
    with rt.db.write() as tx:
        tx.insert("network", ref, {"uuid": make_uuid(), "name_label": "ops", "other_config": {}})
    operations.refresh_allowed(rt, "network", ref)
    return ref


def test_marks_current_operations_and_rejects_conflicts(rt):
    net = _network(rt)
    assert rt.cache.get("network", net).values["allowed_operations"] == ["attaching"]
    inside = threading.Event()
    release = threading.Event()
    seen = {}

    def long_op():
        row = rt.cache.get("network", net).values
        seen["current"] = dict(row["current_operations"])
        seen["allowed"] = list(row["allowed_operations"])
        inside.set()
        release.wait(10)
        return "done"

    ctx = Context(rt=rt, method="network.attach_for_test")
    worker = threading.Thread(target=lambda: seen.setdefault(
        "result", operations.run_operation(ctx, "network", net, "attaching", long_op)))
    worker.start()
    assert inside.wait(10)
    (task, op), = seen["current"].items()
    assert op == "attaching" and seen["allowed"] == []
    assert rt.cache.get("task", task).values["status"] == "pending"
    with pytest.raises(ApiError) as info:
        operations.run_operation(Context(rt=rt), "network", net, "attaching", lambda: None)
    assert info.value.description == ["OTHER_OPERATION_IN_PROGRESS", "network", net, "attaching", task]
    release.set()
    worker.join(10)
    assert seen["result"] == "done"
    row = rt.cache.get("network", net).values
    assert row["current_operations"] == {} and row["allowed_operations"] == ["attaching"]
    assert rt.cache.get("task", task) is None  # the sync call's own task is gone


def test_failure_inside_still_unmarks(rt):
    net = _network(rt)

    def boom():
        raise ApiError("INTERNAL_ERROR", "boom")

    with pytest.raises(ApiError):
        operations.run_operation(Context(rt=rt), "network", net, "attaching", boom)
    assert rt.cache.get("network", net).values["current_operations"] == {}


def test_stale_entries_are_cleared_at_start(rt):
    net = _network(rt)
    with rt.db.write() as tx:
        tx.update("network", net, {"current_operations": {"OpaqueRef:dead-task": "attaching"},
                                   "allowed_operations": []})
    assert operations.clear_stale(rt) == 1
    row = rt.cache.get("network", net).values
    assert row["current_operations"] == {} and row["allowed_operations"] == ["attaching"]
