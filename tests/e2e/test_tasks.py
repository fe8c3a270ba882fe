"""Async calls and tasks as xapi runs them, and the task/session GC with short limits."""

from __future__ import annotations

import time

import pytest
import XenAPI

from tests import support
from tests.e2e.rpc import JsonRpc, XmlRpc


def wait_task(x, task, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = x.task.get_record(task)
        if record["status"] != "pending":
            return record
        time.sleep(0.05)
    raise AssertionError(f"task {task} still pending")


NET = {"name_label": "async", "name_description": "", "MTU": "1500", "other_config": {}}


def test_async_success_fills_the_task_as_xapi(xenapi):
    x = xenapi.xenapi
    task = x.Async.network.create(NET)
    assert task.startswith("OpaqueRef:")
    record = wait_task(x, task)
    assert record["name_label"] == "Async.network.create"
    assert record["status"] == "success" and record["progress"] == 1.0
    assert record["result"].startswith("<value>OpaqueRef:") and record["result"].endswith("</value>")
    net = record["result"][len("<value>"):-len("</value>")]
    assert x.network.get_name_label(net) == "async"
    assert record["error_info"] == [] and record["type"] == "<none/>" and record["backtrace"] == "()"
    assert record["resident_on"] == x.host.get_all()[0]
    assert str(record["finished"]) >= str(record["created"])
    x.task.destroy(task)
    with pytest.raises(XenAPI.Failure):
        x.task.get_record(task)
    x.network.destroy(net)


def test_async_failure_and_void_results(xenapi):
    x = xenapi.xenapi
    task = x.Async.network.destroy("OpaqueRef:missing")
    record = wait_task(x, task)
    assert record["status"] == "failure"
    assert record["error_info"] == ["HANDLE_INVALID", "network", "OpaqueRef:missing"]
    net = x.network.create(NET)
    record = wait_task(x, x.Async.network.destroy(net))
    assert record["status"] == "success" and record["result"] == "<value></value>"


def test_async_errors_before_the_task_exists_are_synchronous(server, xenapi):
    x = xenapi.xenapi
    with pytest.raises(XenAPI.Failure) as info:
        x.Async.network.create()
    assert info.value.details[0] == "MESSAGE_PARAMETER_COUNT_MISMATCH"
    reply = XmlRpc(server.url).raw("Async.network.create", ["OpaqueRef:bad", NET])
    assert reply["ErrorDescription"] == ["SESSION_INVALID", "OpaqueRef:bad"]


def test_jsonrpc_task_result_is_xml_text(server):
    rpc = JsonRpc(server.url)
    rpc.login("root", support.ROOT_PASSWORD)
    task = rpc("Async.network.create", NET)
    deadline = time.monotonic() + 10
    while rpc("task.get_status", task) == "pending" and time.monotonic() < deadline:
        time.sleep(0.05)
    result = rpc("task.get_result", task)
    assert result.startswith("<value>OpaqueRef:")
    rpc("network.destroy", result[7:-8])


def test_client_tasks_and_deferred_destroy(xenapi):
    x = xenapi.xenapi
    task = x.task.create("my work", "by the client")
    record = x.task.get_record(task)
    assert record["status"] == "pending" and record["name_label"] == "my work"
    assert record["name_description"] == "by the client"
    x.task.destroy(task)  # pending: deferred until it completes
    assert "destroy" in x.task.get_current_operations(task).values()
    x.task.set_progress(task, 0.5)
    assert x.task.get_progress(task) == 0.5
    x.task.cancel(task)
    assert "cancel" in x.task.get_current_operations(task).values()
    x.task.set_status(task, "success")
    x.task.set_result(task, "<value>done</value>")


def test_subtasks_follow_the_header(server, xenapi):
    x = xenapi.xenapi
    parent = x.task.create("parent", "")
    import http.client
    import xmlrpc.client
    from urllib.parse import urlparse

    u = urlparse(server.url)
    body = xmlrpc.client.dumps((xenapi.handle, NET), "Async.network.create").encode()
    conn = http.client.HTTPConnection(u.hostname, u.port)
    conn.request("POST", "/", body, {"Content-Type": "text/xml", "subtask-of": parent})
    (reply,), _ = xmlrpc.client.loads(conn.getresponse().read())
    child = reply["Value"]
    record = wait_task(x, child)
    assert record["subtask_of"] == parent
    assert x.task.get_subtasks(parent) == [child]
    x.network.destroy(record["result"][7:-8])


def test_gc_with_short_limits(db_url):
    if "postgresql" in db_url:
        url = support.create_pg_database()
    else:
        url = db_url.replace("xapi.db", "gc.db")
    srv = support.start_server(db_url=url, gc_interval=0.5, completed_task_timeout=1,
                               pending_task_timeout=1, max_tasks=2, inactive_session_timeout=3,
                               session_last_active_threshold=0.5)
    try:
        s = XenAPI.Session(srv.url)
        s.login_with_password("root", support.ROOT_PASSWORD)
        x = s.xenapi
        stuck = x.task.create("stuck", "")  # pending, progress never moves
        done = [wait_task(x, x.Async.network.create(NET)) for _ in range(4)]
        assert stuck in x.task.get_all()
        # Completed ones pass completed_task_timeout; the stuck one stops moving.
        deadline = time.monotonic() + 15
        while x.task.get_all() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert x.task.get_all() == []
        idle = XenAPI.Session(srv.url)
        idle.login_with_password("root", support.ROOT_PASSWORD)
        handle = idle.handle
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            # Asked through our own (active) session, so the idle one stays idle.
            try:
                x.session.get_uuid(handle)
            except XenAPI.Failure as f:
                assert f.details == ["HANDLE_INVALID", "session", handle]
                break
            time.sleep(0.5)
        else:
            raise AssertionError("idle session was never collected")
        for record in done:
            x.network.destroy(record["result"][7:-8])
        assert stuck
    finally:
        srv.stop()
        if "postgresql" in url:
            support.drop_pg_database(url)
