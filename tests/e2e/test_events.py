"""event.from, event.inject and the legacy event.next through the official SDK."""

from __future__ import annotations

import threading
import time

import pytest
import XenAPI

from tests import support
from tests.e2e.rpc import Failure, JsonRpc, XmlRpc


def new_session(server) -> XenAPI.Session:
    s = XenAPI.Session(server.url)
    s.login_with_password("root", support.ROOT_PASSWORD, "1.0", "events-test")
    return s


def test_empty_token_gives_a_snapshot(xenapi):
    x = xenapi.xenapi
    batch = x.event_from(["vm", "host", "pool"], "", 0.0)
    assert set(batch) == {"events", "valid_ref_counts", "token"}
    adds = {(e["class"], e["ref"]) for e in batch["events"]}
    assert all(e["operation"] == "add" for e in batch["events"])
    assert {("vm", r) for r in x.VM.get_all()} <= adds
    assert {("host", r) for r in x.host.get_all()} <= adds
    counts = batch["valid_ref_counts"]
    assert counts["vm"] == len(x.VM.get_all()) and isinstance(counts["vm"], int)
    vm_event = next(e for e in batch["events"] if e["class"] == "vm")
    assert vm_event["snapshot"] == x.VM.get_record(vm_event["ref"])
    assert len(batch["token"]) == 41 and batch["token"][20] == ","


def test_incremental_changes_are_coalesced(xenapi):
    x = xenapi.xenapi
    token = x.event_from(["network"], "", 0.0)["token"]
    net = x.network.create({"name_label": "ev", "name_description": "", "MTU": "1500", "other_config": {}})
    x.network.set_name_label(net, "ev2")
    batch = x.event_from(["network"], token, 5.0)
    assert [(e["operation"], e["ref"]) for e in batch["events"]] == [("add", net)]
    assert batch["events"][0]["snapshot"]["name_label"] == "ev2"
    token = batch["token"]
    x.network.set_name_description(net, "d")
    batch = x.event_from(["network/" + net], token, 5.0)
    assert [(e["operation"], e["snapshot"]["name_description"]) for e in batch["events"]] == [("mod", "d")]
    token = batch["token"]
    x.network.destroy(net)
    batch = x.event_from(["network"], token, 5.0)
    assert [(e["operation"], e["ref"]) for e in batch["events"]] == [("del", net)]
    assert "snapshot" not in batch["events"][0]
    # Created and deleted inside one window: nothing to report.
    token = batch["token"]
    tmp = x.network.create({"name_label": "gone", "name_description": "", "MTU": "1500", "other_config": {}})
    x.network.destroy(tmp)
    assert x.event_from(["network"], token, 0.5)["events"] == []


def test_timeout_returns_on_time_without_busy_loop(server, xenapi):
    x = xenapi.xenapi
    token = x.event_from(["vm_appliance"], "", 0.0)["token"]
    started = time.monotonic()
    batch = x.event_from(["vm_appliance"], token, 1.0)
    elapsed = time.monotonic() - started
    assert batch["events"] == [] and 0.9 <= elapsed < 2.0
    assert batch["token"] >= token


def test_other_calls_are_served_while_waiting(server, xenapi):
    """Many long polls are parked on the loop; other connections still get answers."""
    waiters = []
    results = []
    ready = threading.Barrier(21)

    def wait():
        s = new_session(server)
        token = s.xenapi.event_from(["pool"], "", 0.0)["token"]
        ready.wait(30)
        results.append(s.xenapi.event_from(["pool"], token, 10.0))
        s.xenapi.session.logout()

    for _ in range(20):
        t = threading.Thread(target=wait)
        t.start()
        waiters.append(t)
    ready.wait(30)
    time.sleep(0.5)  # let the long polls reach the server
    started = time.monotonic()
    pool = xenapi.xenapi.pool.get_all()[0]
    assert time.monotonic() - started < 1.0
    xenapi.xenapi.pool.add_to_other_config(pool, "wake", "1")
    for t in waiters:
        t.join(15)
    assert len(results) == 20
    assert all(any(e["ref"] == pool for e in r["events"]) for r in results), [r["events"] and [(e["class"], e["operation"]) for e in r["events"]] for r in results]
    xenapi.xenapi.pool.remove_from_other_config(pool, "wake")


def test_logout_wakes_a_waiting_call_with_session_invalid(server):
    s = new_session(server)
    token = s.xenapi.event_from(["vm_appliance"], "", 0.0)["token"]
    raw = XmlRpc(server.url)
    outcome = {}

    def wait():
        outcome["reply"] = raw.raw("event.from", [s.handle, ["vm_appliance"], token, 30.0])

    t = threading.Thread(target=wait)
    t.start()
    time.sleep(0.5)
    XmlRpc(server.url).raw("session.logout", [s.handle])
    t.join(10)
    assert outcome["reply"]["ErrorDescription"] == ["SESSION_INVALID", s.handle]


def test_bad_tokens_and_subscriptions(xenapi):
    x = xenapi.xenapi
    with pytest.raises(XenAPI.Failure) as info:
        x.event_from(["vm"], "not-a-token", 0.0)
    assert info.value.details == ["EVENT_FROM_TOKEN_PARSE_FAILURE", "not-a-token"]
    with pytest.raises(XenAPI.Failure) as info:
        x.event_from(["vm/"], "", 0.0)
    assert info.value.details == ["EVENT_SUBSCRIPTION_PARSE_FAILURE", "vm/"]


def test_inject_returns_a_token_that_sees_the_injection(xenapi):
    x = xenapi.xenapi
    pool = x.pool.get_all()[0]
    token = x.event.inject("pool", pool)
    batch = x.event_from(["pool"], token, 5.0)
    assert [(e["operation"], e["ref"]) for e in batch["events"]] == [("mod", pool)]
    with pytest.raises(XenAPI.Failure) as info:
        x.event.inject("pool", "OpaqueRef:nope")
    assert info.value.details == ["HANDLE_INVALID", "pool", "OpaqueRef:nope"]
    assert int(x.event.get_current_id()) >= int(batch["token"].split(",")[0])


def test_legacy_register_next(server, xenapi):
    x = xenapi.xenapi
    with pytest.raises(XenAPI.Failure) as info:
        x.event.next()
    assert info.value.details[0] == "SESSION_NOT_REGISTERED"
    x.event.register(["network"])
    net = x.network.create({"name_label": "next", "name_description": "", "MTU": "1500", "other_config": {}})
    events = x.event.next()
    assert [(e["class"], e["operation"], e["ref"]) for e in events] == [("network", "add", net)]
    x.network.destroy(net)
    assert [e["operation"] for e in x.event.next()] == ["del"]
    x.event.unregister(["network"])


def test_jsonrpc_event_from(server):
    rpc = JsonRpc(server.url)
    rpc.login("root", support.ROOT_PASSWORD)
    batch = rpc("event.from", ["pool"], "", 0.0)
    assert isinstance(batch["valid_ref_counts"]["pool"], int)
    assert batch["events"][0]["snapshot"]["uuid"]
    with pytest.raises(Failure) as info:
        rpc("event.from", ["pool"], "x,y", 0.0)
    assert info.value.details == ["EVENT_FROM_TOKEN_PARSE_FAILURE", "x,y"]


def test_event_next_reports_events_lost(db_url):
    url = support.create_pg_database() if "postgresql" in db_url else db_url.replace("xapi.db", "lost.db")
    srv = support.start_server(db_url=url, event_next_max_queue=5)
    try:
        s = new_session(srv)
        x = s.xenapi
        x.event.register(["network"])
        pool = x.pool.get_all()[0]
        for i in range(8):  # more changes than the queue holds
            x.pool.add_to_other_config(pool, f"k{i}", "v")
        with pytest.raises(XenAPI.Failure) as info:
            x.event.next()
        assert info.value.details == ["EVENTS_LOST"]
        # Having been told, the client starts over and gets events again.
        net = x.network.create({"name_label": "again", "name_description": "", "MTU": "1500",
                                "other_config": {}})
        assert [e["ref"] for e in x.event.next()] == [net]
    finally:
        srv.stop()
        if "postgresql" in url:
            support.drop_pg_database(url)
