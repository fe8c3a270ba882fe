"""Async calls run by a Celery worker process, on PostgreSQL and Redis.

The worker commits the task's outcome (and the objects it made) to
PostgreSQL; the server learns of it through LISTEN/NOTIFY and wakes the
event.from calls waiting on it.
"""

from __future__ import annotations

import os
import threading
import time

import pytest
import XenAPI

from tests import support

NET = {"name_label": "by-worker", "name_description": "", "MTU": "1500", "other_config": {}}


@pytest.fixture(scope="module")
def pool_with_worker():
    support.require_pool_services()
    url = support.create_pg_database()
    srv = support.start_server(db_url=url, redis_url=support.REDIS_URL, gc_interval=1)
    worker = support.start_worker(srv, redis_url=support.REDIS_URL)
    yield srv, worker
    worker.terminate()
    worker.wait(20)
    srv.stop()
    support.drop_pg_database(url)


def _wait_task(x, task, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = x.task.get_record(task)
        if record["status"] != "pending":
            return record
        time.sleep(0.05)
    raise AssertionError("task still pending")


def _task_owner(srv, task: str) -> str:
    from sqlalchemy import create_engine, text

    engine = create_engine(srv.db_url)
    try:
        with engine.connect() as conn:
            return conn.execute(text("SELECT owner FROM xapi_task_owner WHERE task = :t"),
                                {"t": task}).scalar_one()
    finally:
        engine.dispose()


def test_worker_runs_async_calls_and_wakes_event_from(pool_with_worker):
    srv, worker = pool_with_worker
    s = XenAPI.Session(srv.url)
    s.login_with_password("root", support.ROOT_PASSWORD)
    x = s.xenapi
    token = x.event_from(["network"], "", 0.0)["token"]
    seen = {}

    def watch():
        w = XenAPI.Session(srv.url)
        w.login_with_password("root", support.ROOT_PASSWORD)
        seen["batch"] = w.xenapi.event_from(["network"], token, 30.0)
        seen["at"] = time.monotonic()

    watcher = threading.Thread(target=watch)
    watcher.start()
    time.sleep(0.5)
    task = x.Async.network.create(NET)
    record = _wait_task(x, task)
    watcher.join(30)
    assert record["status"] == "success", record["error_info"]
    net = record["result"][len("<value>"):-len("</value>")]
    assert [(e["operation"], e["ref"]) for e in seen["batch"]["events"]] == [("add", net)]
    # The worker, not the server, ran it: it took the task over.
    assert f"/worker/{worker.pid}/" in _task_owner(srv, task)
    failed = _wait_task(x, x.Async.network.destroy("OpaqueRef:missing"))
    assert failed["status"] == "failure"
    assert failed["error_info"] == ["HANDLE_INVALID", "network", "OpaqueRef:missing"]
    x.network.destroy(net)
    assert worker.poll() is None


def test_worker_drives_vm_lifecycle(pool_with_worker):
    from tests.e2e.test_vm_lifecycle import install

    srv, worker = pool_with_worker
    s = XenAPI.Session(srv.url)
    s.login_with_password("root", support.ROOT_PASSWORD)
    x = s.xenapi
    vm = install(x, "celery-vm")
    record = _wait_task(x, x.Async.VM.start(vm, False, False))
    assert record["status"] == "success", record["error_info"]
    assert x.VM.get_power_state(vm) == "Running" and int(x.VM.get_domid(vm)) > 0
    record = _wait_task(x, x.Async.VM.clean_shutdown(vm))
    assert record["status"] == "success", record["error_info"]
    assert x.VM.get_power_state(vm) == "Halted"
    x.VM.destroy(vm)


def test_killed_worker_leaves_no_pending_task(pool_with_worker):
    """A worker killed in the middle of a task: the server fails the task on its next GC pass."""
    import signal as sig

    from tests.e2e.test_vm_lifecycle import install

    srv, worker = pool_with_worker
    x = XenAPI.Session(srv.url)
    x.login_with_password("root", support.ROOT_PASSWORD)
    vm = install(x.xenapi, "doomed")
    from xapi.backends.xenops.client import XenopsClient

    client = XenopsClient(os.path.join(srv.state_dir, "xenopsd"), "org.xen.xapi.xenops.simulator")
    client.debug_trigger("delay", ["VM_build", "5"])  # a start that takes a while
    try:
        task = x.xenapi.Async.VM.start(vm, False, False)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not x.xenapi.VM.get_current_operations(vm):
            time.sleep(0.05)
        worker.send_signal(sig.SIGKILL)
        worker.wait()
        record = _wait_task(x.xenapi, task, timeout=40)
        assert record["status"] == "failure"
        assert record["error_info"] == ["INTERNAL_ERROR", "the process running this task stopped"]
    finally:
        client.debug_trigger("delay", ["VM_build", "0"])


def test_calls_a_killed_worker_took_ahead_are_failed_by_the_next(pool_with_worker):
    """Without kombu's ack emulation a worker's messages leave Redis when it takes
    them: one killed with a call taken but not started loses it.  The next worker
    fails that call's task before it takes anything, and runs what is still queued."""
    import signal as sig

    import redis

    from tests.e2e.test_vm_lifecycle import install
    from xapi.backends.xenops.client import XenopsClient

    srv, first = pool_with_worker
    first.terminate()  # SIGTERM: a warm shutdown, nothing taken is lost
    first.wait(20)
    worker = support.start_worker(srv, concurrency=1, redis_url=support.REDIS_URL)
    x = XenAPI.Session(srv.url)
    x.login_with_password("root", support.ROOT_PASSWORD)
    api = x.xenapi
    running, taken, queued = (install(api, f"ahead-{i}") for i in range(3))
    client = XenopsClient(os.path.join(srv.state_dir, "xenopsd"), "org.xen.xapi.xenops.simulator")
    host = api.host.get_uuid(api.session.get_this_host(x._session))
    queue = redis.Redis.from_url(support.REDIS_URL)
    try:
        client.debug_trigger("delay", ["VM_build", "30"])  # the one thread stays busy
        tasks = {}
        tasks[running] = api.Async.VM.start(running, False, False)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not api.VM.get_current_operations(running):
            time.sleep(0.05)
        assert api.VM.get_current_operations(running), "the worker did not start the first call"
        tasks[taken] = api.Async.VM.start(taken, False, False)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and queue.llen(f"host.{host}"):
            time.sleep(0.05)  # the worker takes it ahead of running it
        assert queue.llen(f"host.{host}") == 0
        tasks[queued] = api.Async.VM.start(queued, False, False)
        time.sleep(1.0)
        assert queue.llen(f"host.{host}") == 1  # one taken ahead at most (concurrency 1)
        worker.send_signal(sig.SIGKILL)
        worker.wait()
        client.debug_trigger("delay", ["VM_build", "0"])
        time.sleep(6.5)  # older than the grace given to calls on their way to the queue
        assert api.task.get_status(tasks[taken]) == "pending"
        worker = support.start_worker(srv, concurrency=1, redis_url=support.REDIS_URL)
        records = {vm: _wait_task(api, task, timeout=40) for vm, task in tasks.items()}
        assert records[running]["error_info"] == ["INTERNAL_ERROR",
                                                 "the process running this task stopped"]
        assert records[taken]["error_info"] == [
            "INTERNAL_ERROR", "the worker that took this task from the queue stopped before running it"]
        assert records[queued]["status"] == "success", records[queued]["error_info"]
        assert api.VM.get_power_state(queued) == "Running"
    finally:
        client.debug_trigger("delay", ["VM_build", "0"])
        if worker.poll() is None:
            worker.terminate()
            worker.wait(20)
