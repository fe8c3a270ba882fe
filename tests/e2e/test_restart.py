"""Restart safety: what a killed server leaves behind is cleaned up when it starts again."""

from __future__ import annotations

import signal

import XenAPI

from db.store import Database
from tests import support
from xapi.refs import make_ref, make_uuid


def test_kill_9_then_restart_fails_orphans_and_clears_operations(db_url):
    url = support.create_pg_database() if "postgresql" in db_url else db_url.replace("xapi.db", "restart.db")
    srv = support.start_server(db_url=url)
    try:
        s = XenAPI.Session(srv.url)
        s.login_with_password("root", support.ROOT_PASSWORD)
        x = s.xenapi
        host_uuid = x.host.get_uuid(x.host.get_all()[0])
        client_task = x.task.create("client-owned", "")
        net = x.network.create({"name_label": "busy", "name_description": "", "MTU": "1500",
                                "other_config": {}})
        srv.process.send_signal(signal.SIGKILL)
        srv.process.wait()

        # What a crash in the middle of an operation leaves: a pending task run by
        # the dead process, and the network marked busy by that task.
        db = Database(url)
        db.load()
        orphan = make_ref()
        with db.write() as tx:
            tx.insert("task", orphan, {"uuid": make_uuid(), "name_label": "Async.network.attach",
                                       "status": "pending", "type": "<none/>", "backtrace": "()"})
            tx.set_task_owner(orphan, s.handle, f"{host_uuid}/server/999999/dead")
            tx.update("network", net, {"current_operations": {orphan: "attaching"},
                                       "allowed_operations": []})
        db.close()

        again = support.start_server(db_url=url, state_dir=srv.state_dir, port=srv.port)
        try:
            s2 = XenAPI.Session(again.url)
            s2.login_with_password("root", support.ROOT_PASSWORD)
            y = s2.xenapi
            record = y.task.get_record(orphan)
            assert record["status"] == "failure"
            assert record["error_info"] == ["INTERNAL_ERROR", "the process running this task stopped"]
            assert y.network.get_current_operations(net) == {}
            assert y.network.get_allowed_operations(net) == ["attaching"]
            # A client's own task is the client's business: still pending.
            assert y.task.get_status(client_task) == "pending"
        finally:
            again.stop()
    finally:
        srv.stop()
        if "postgresql" in url:
            support.drop_pg_database(url)
