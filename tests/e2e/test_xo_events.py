"""End-to-end: Xen Orchestra's ``xen-api`` client WITH event watching.

The client runs with ``watchEvents`` at its default (true), so it does what XO
does on connect: login, ``pool.get_all_records``, ``system.listMethods``,
``event.inject``, ``<X>.get_all_records`` for every class, then an
``event.from`` loop that keeps its object cache (``xapi.objects``) current.
On top of that cache it implements ``callAsync`` (``Async.*`` + waiting for the
task record in the event stream + ``task.destroy``) and ``barrier()``.

Each test runs one scenario of ``js/xo_events_probe.mjs`` per transport
(JSON-RPC and XML-RPC). The probe wraps the client's ``_call`` so every RPC the
client makes is recorded (method, outcome, and what each ``event.from``
returned); the tests assert on that as well as on the cache.

``test_changes_by_another_client_reach_the_cache`` is interactive: the probe
reports every cache change on stdout while this test changes things with the
official Python SDK, and measures how long each change takes to appear.
"""

from __future__ import annotations

import json
import queue
import subprocess
import threading
import time
import uuid

import pytest
import XenAPI

from tests import support
from tests.e2e.conftest import JS_DIR
from tests.e2e.test_xo_client import (
    REF_RE,
    TRANSPORTS,
    UUID_RE,
    _assert_logged_out,
    probe,
)

EVENTS_PROBE = JS_DIR / "xo_events_probe.mjs"
# a change made by another client must be in XO's cache within this long
MAX_LATENCY = 1.0
# how long we wait for a change at all (longer, so a slow one is measured and reported)
WAIT = 5.0

@pytest.fixture(scope="module")
def server(quiet_server):
    """These tests watch for the absence of events: no other test may write meanwhile."""
    return quiet_server


CORE_TYPES = {"pool", "host", "VM", "VM_metrics", "host_metrics", "host_cpu", "network", "console", "task", "role"}


def events_probe(node, server, transport, scenario):
    return probe(node, server, transport, scenario, script=EVENTS_PROBE)


def _only_removed_message_errors(calls):
    """The only failed calls of a healthy run: classes xapi answers with MESSAGE_REMOVED."""
    return [e for e in calls["errors"]
            if not (e["error"] == "MESSAGE_REMOVED" and e["method"].endswith(".get_all_records"))]


def _check_connect_calls(result, expected_errors=()):
    """One login, one inject, and the initial fetch of every class: XO's connect flow;
    no call failed but those expected."""
    by_method = result["calls"]["byMethod"]
    assert by_method["session.login_with_password"] == 1, by_method
    assert by_method["event.inject"] == 1, by_method
    assert by_method["system.listMethods"] == 1, by_method
    # pool twice (the session open, then the initial fetch), every other class once
    assert by_method["pool.get_all_records"] == 2, by_method
    for cls in result.get("types", []):
        if cls != "pool":
            assert by_method[f"{cls}.get_all_records"] == 1, (cls, by_method)
    assert _only_removed_message_errors(result["calls"]) == list(expected_errors), result["calls"]
    # every record of a class had the same keys, whether it came from
    # get_all_records or from an event.from snapshot (XO builds the record
    # class from the first record it sees and ignores any other key)
    assert result["calls"]["keySetConflicts"] == {}, result["calls"]["keySetConflicts"]
    assert result["calls"]["keySetClasses"] >= 5


def _assert_logged_out_and_loop_ended(server, result):
    """The probe logged out; the event.from its loop had pending ended with SESSION_INVALID."""
    _assert_logged_out(server, result)
    pending = result["eventFromAtLogout"]
    assert len(pending) == 1, pending  # the loop always has one event.from in flight
    assert pending[0]["error"] == "SESSION_INVALID", pending
    assert pending[0]["msAfterLogout"] < 1000 * MAX_LATENCY, pending
    assert result["watchEventsError"] is None, result["watchEventsError"]


# ---------------------------------------------------------------------------
# 1. the object cache after connect
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_connect_builds_the_object_cache(node_client, server, xenapi, transport):
    result = events_probe(node_client, server, transport, "cache")
    x = xenapi.xenapi

    types = result["types"]
    assert CORE_TYPES <= set(types), types
    _check_connect_calls(result)

    # the first event.from was made and did not fail; as in xapi, the token
    # event.inject returned comes before the injected pool event, so the
    # first batch carries it
    first = result["firstEventFrom"]
    assert first is not None, result["calls"]
    assert first["error"] is None, first
    batch = result["firstBatch"]
    assert batch is not None and "pool:mod" in batch["events"], batch
    assert batch["hasValidRefCounts"] and batch["validTasksType"] == "number", batch
    assert batch["validTasks"] == batch["clientTasks"], batch

    by_type = result["byType"]
    assert set(result["indexTypes"]) == set(by_type)
    assert result["size"] == result["nObjects"] == sum(len(e["refs"]) for e in by_type.values())
    for cls, entry in by_type.items():
        # every record of a class has the same key set, and $id = uuid ?? ref
        assert entry["keySetCount"] == 1, cls
        assert entry["idMismatches"] == [], (cls, entry["idMismatches"])
        assert all(REF_RE.match(r) for r in entry["refs"]), cls

    # the cache holds exactly what the server has, class by class (the SDK is
    # an independent client; tasks are left out, other tests' tasks may be GCed)
    for cls in types:
        if cls == "task":
            continue
        try:
            server_refs = set(getattr(x, cls).get_all())
        except XenAPI.Failure as failure:
            assert failure.details[0] == "MESSAGE_REMOVED", (cls, failure.details)
            assert cls not in by_type
            continue
        assert set(by_type.get(cls, {"refs": []})["refs"]) == server_refs, cls

    # the record keys are the server's field names
    pool_ref = x.pool.get_all()[0]
    host_refs = x.host.get_all()
    for cls, ref in (("pool", pool_ref), ("host", host_refs[0]), ("VM", x.VM.get_all()[0])):
        fields = getattr(x, cls).get_record(ref)
        assert sorted(by_type[cls]["keys"]) == sorted(fields), cls

    # the pool, looked up by type, is the client's pool
    pools = result["pools"]
    assert len(pools) == 1
    pool = pools[0]
    assert pool["ref"] == pool_ref and pool["type"] == "pool"
    assert pool["uuid"] == x.pool.get_uuid(pool_ref) and UUID_RE.match(pool["uuid"])
    assert result["clientPool"] == pool
    assert result["clientPoolIsCached"] is True
    assert result["poolMaster"]["ref"] == x.pool.get_master(pool_ref)
    assert result["poolMaster"]["type"] == "host"

    # the hosts
    assert {h["ref"] for h in result["hosts"]} == set(host_refs)
    for host in result["hosts"]:
        assert host["type"] == "host" and host["uuid"] == x.host.get_uuid(host["ref"])

    # the control domains: one per host, resident on it
    dom0_refs = [ref for ref, rec in x.VM.get_all_records().items() if rec["is_control_domain"]]
    assert sorted(d["ref"] for d in result["dom0s"]) == sorted(dom0_refs)
    assert len(dom0_refs) == len(host_refs)
    for dom0 in result["dom0s"]:
        assert dom0["type"] == "VM" and dom0["uuid"] == x.VM.get_uuid(dom0["ref"])
        assert dom0["power_state"] == "Running"
        assert dom0["residentOn"]["type"] == "host"
        assert dom0["residentOn"]["ref"] == x.VM.get_resident_on(dom0["ref"])

    # getObjectByUuid / getObjectByRef / getObject all find the same object
    assert len(result["lookups"]) == len(pools) + len(result["hosts"]) + len(result["dom0s"])
    for lookup in result["lookups"]:
        me = {k: lookup[k] for k in ("ref", "id", "type", "uuid")}
        assert lookup["id"] == lookup["uuid"]
        assert lookup["byUuid"] == me and lookup["byRef"] == me and lookup["byId"] == me, lookup

    _assert_logged_out_and_loop_ended(server, result)


# ---------------------------------------------------------------------------
# 2. changes made by another client reach the cache
# ---------------------------------------------------------------------------


class WatchProbe:
    """The probe's interactive "watch" scenario: cache changes as they happen."""

    def __init__(self, node, server, transport):
        self.server = server
        self.transport = transport
        args = {"url": server.url, "user": "root", "password": support.ROOT_PASSWORD,
                "transport": transport, "scenario": "watch"}
        self.proc = subprocess.Popen(
            [node, str(EVENTS_PROBE), json.dumps(args)], cwd=JS_DIR, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        self.lines: queue.Queue = queue.Queue()
        self.seen: list[dict] = []
        self.stderr: list[str] = []
        threading.Thread(target=self._pump, args=(self.proc.stdout, self.lines.put), daemon=True).start()
        threading.Thread(target=self._pump, args=(self.proc.stderr, self.stderr.append), daemon=True).start()

    @staticmethod
    def _pump(stream, sink):
        for line in stream:
            sink(line)
        sink(None)

    def _fail(self, message):
        pytest.fail(
            f"xo watch probe ({self.transport}): {message}\n"
            f"messages so far: {json.dumps(self.seen[-15:], indent=1)[-6000:]}\n"
            f"stderr: {''.join(s for s in self.stderr if s)[-3000:]}\n"
            f"server log tail:\n{self.server.log()[-3000:]}"
        )

    def wait_for(self, what, predicate, timeout=WAIT) -> dict:
        """The first message (from now on) matching ``predicate``."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._fail(f"no {what} within {timeout}s")
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                self._fail(f"the probe ended while waiting for {what} (exit {self.proc.wait()})")
            message = json.loads(line)
            self.seen.append(message)
            if "ok" in message and not message["ok"]:
                self._fail(f"the probe failed while waiting for {what}: {json.dumps(message['error'])}")
            if predicate(message):
                return message

    def change(self, what, predicate, since):
        """Wait for a cache change; returns it with ``latency`` = seconds after ``since``."""
        return self.changes({what: predicate}, since)[what]

    def changes(self, predicates, since):
        """Wait until each predicate has matched a change (the first match wins)."""
        found = {}

        def match(message):
            if message.get("event") != "change":
                return False
            for what, predicate in predicates.items():
                if what not in found and predicate(message):
                    found[what] = {**message, "latency": message["t"] - since}
            return len(found) == len(predicates)

        self.wait_for(" and ".join(sorted(set(predicates) - set(found))) or "changes", match)
        return found

    def finish(self) -> dict:
        self.proc.stdin.write("quit\n")
        self.proc.stdin.flush()
        final = self.wait_for("the final report", lambda m: "ok" in m, timeout=20)
        self.proc.wait(10)
        assert final["scenario"] == "watch" and final["transport"] == self.transport
        return final["result"]

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_changes_by_another_client_reach_the_cache(node_client, server, xenapi, transport):
    x = xenapi.xenapi  # the official SDK over XML-RPC: a different client and session
    watcher = WatchProbe(node_client, server, transport)
    latencies = {}
    try:
        ready = watcher.wait_for("ready", lambda m: m.get("event") == "ready", timeout=15)
        pool_ref = x.pool.get_all()[0]
        assert ready["poolRef"] == pool_ref
        assert set(ready["networks"]) == set(x.network.get_all())

        # network.create -> add
        name = "xo-watch-" + uuid.uuid4().hex[:8]
        record = {"name_label": name, "name_description": "by the SDK", "MTU": "1500",
                  "other_config": {"made-by": "pytest"}}
        since = time.time()
        net = x.network.create(record)
        added = watcher.change("network add", lambda m: m["ref"] == net and m["action"] in ("add", "update"), since)
        latencies["create"] = added["latency"]
        assert added["action"] == "add" and added["type"] == "network"
        sdk_record = x.network.get_record(net)
        seen = added["record"]
        assert sorted(seen) == sorted(sdk_record), "the cached record has the server's fields"
        assert added["id"] == seen["uuid"] == sdk_record["uuid"]
        for field in ("name_label", "name_description", "other_config", "bridge", "PIFs", "VIFs", "tags"):
            assert seen[field] == sdk_record[field], field
        assert str(seen["MTU"]) == sdk_record["MTU"] == "1500"
        assert seen["MTU"] == (1500 if transport == "json-rpc" else "1500")

        # network.set_name_label -> update; after a pause, so that the client is
        # blocked in event.from and this measures how fast the server wakes it
        time.sleep(0.5)
        since = time.time()
        x.network.set_name_label(net, name + "-renamed")
        renamed = watcher.change("network rename", lambda m: m["ref"] == net and m["name_label"] == name + "-renamed",
                                 since)
        latencies["rename"] = renamed["latency"]
        assert renamed["action"] == "update"
        assert renamed["record"]["name_description"] == "by the SDK"

        # pool.add_to_other_config -> pool update (what barrier() relies on)
        key = "xo-watch:" + uuid.uuid4().hex[:8]
        since = time.time()
        x.pool.add_to_other_config(pool_ref, key, "1")
        pool_mod = watcher.change("pool other_config", lambda m: m["ref"] == pool_ref and key in m["other_config"],
                                  since)
        latencies["pool"] = pool_mod["latency"]
        assert pool_mod["action"] == "update" and pool_mod["type"] == "pool"
        x.pool.remove_from_other_config(pool_ref, key)
        watcher.change("pool key removed", lambda m: m["ref"] == pool_ref and key not in m["other_config"], since)

        # a change to the control domain: a mixed-case class ("VM", sent as
        # "vm" by xapi) updates the cached object, it does not add another one
        dom0 = next(ref for ref, rec in x.VM.get_all_records().items() if rec["is_control_domain"])
        since = time.time()
        x.VM.add_to_other_config(dom0, key, "dom0")
        vm_mod = watcher.change("dom0 change", lambda m: m["ref"] == dom0 and key in m["other_config"], since)
        latencies["dom0"] = vm_mod["latency"]
        assert vm_mod["action"] == "update" and vm_mod["type"] == "VM", vm_mod
        assert vm_mod["id"] == x.VM.get_uuid(dom0)
        x.VM.remove_from_other_config(dom0, key)
        watcher.change("dom0 change undone", lambda m: m["ref"] == dom0 and key not in m["other_config"], since)

        # an Async call by the other client: its task shows up, completes, and
        # its destruction removes it from the cache
        since = time.time()
        task = x.Async.network.create({**record, "name_label": name + "-async"})
        async_seen = watcher.changes({
            "the SDK's task": lambda m: m["ref"] == task and m["action"] == "add",
            "the SDK's task succeeding": lambda m: m["ref"] == task and m.get("status") == "success",
            "the async network": lambda m: m["type"] == "network" and m["name_label"] == name + "-async",
        }, since)
        latencies["async task"] = async_seen["the SDK's task"]["latency"]
        succeeded = async_seen["the SDK's task succeeding"]
        assert succeeded["type"] == "task" and succeeded["name_label"] == "Async.network.create"
        async_net = async_seen["the async network"]["ref"]
        assert succeeded["result"] == f"<value>{async_net}</value>"
        assert succeeded["error_info"] == []
        assert x.task.get_result(task) == succeeded["result"]
        since = time.time()
        x.task.destroy(task)
        latencies["task destroy"] = watcher.change("task removal", lambda m: m["ref"] == task, since)["latency"]

        # network.destroy -> remove
        x.network.destroy(async_net)
        since = time.time()
        x.network.destroy(net)
        removed = watcher.change("network removal", lambda m: m["ref"] == net and m["action"] == "remove", since)
        latencies["destroy"] = removed["latency"]
        assert removed["type"] == "network" and removed["id"] == sdk_record["uuid"]

        result = watcher.finish()
    finally:
        watcher.kill()

    slow = {step: round(lat, 3) for step, lat in latencies.items() if lat >= MAX_LATENCY}
    assert not slow, f"changes took {MAX_LATENCY}s or more to reach XO's cache: {slow} (all: {latencies})"

    # the client stayed on one session and fetched tasks only at connect
    # (valid_ref_counts.task always matched its own count)
    assert result["loginCalls"] == 1
    assert result["taskFetches"] == 1, result["calls"]
    assert result["eventFroms"] >= 6
    _check_connect_calls(result)
    _assert_logged_out_and_loop_ended(server, result)


# ---------------------------------------------------------------------------
# 3. callAsync
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_call_async(node_client, server, xenapi, transport):
    result = events_probe(node_client, server, transport, "async")
    x = xenapi.xenapi

    # success: the task result (XML-RPC text) is parsed into the new ref
    created = result["created"]
    assert isinstance(created, str) and REF_RE.match(created), created
    assert result["createdRecord"] == {
        "name_label": result["name"],
        "name_description": "made by callAsync",
        "MTU": 1500 if transport == "json-rpc" else "1500",
        "other_config": {"probe": "yes"},
    }

    # failure: the task's error_info becomes an XapiError
    failure = result["failure"]
    assert failure["isXapiError"] is True, failure
    assert failure["code"] == "HANDLE_INVALID"
    assert failure["params"] == ["network", "OpaqueRef:bad"]
    assert failure["task"]["status"] == "failure"
    assert failure["task"]["error_info"] == ["HANDLE_INVALID", "network", "OpaqueRef:bad"]

    # a void result is ""
    assert result["destroyed"] == ""
    assert result["afterDestroy"]["code"] == "HANDLE_INVALID"
    assert result["afterDestroy"]["params"] == ["network", created]

    # the three tasks as the client saw them in the event stream
    task_refs = result["taskRefs"]
    assert len(task_refs) == 3 and len(set(task_refs)) == 3
    assert all(REF_RE.match(ref) for ref in task_refs)
    create_task, bad_task, destroy_task = task_refs
    assert failure["task"]["ref"] == bad_task
    snapshots = result["taskSnapshots"]
    assert set(task_refs) <= set(snapshots), snapshots

    def last(ref):
        return snapshots[ref][-1]

    assert last(create_task)["status"] == "success"
    assert last(create_task)["result"] == f"<value>{created}</value>"
    assert last(create_task)["name_label"] == "Async.network.create"
    assert last(create_task)["progress"] == 1
    assert last(bad_task)["status"] == "failure"
    assert last(bad_task)["error_info"] == ["HANDLE_INVALID", "network", "OpaqueRef:bad"]
    assert last(destroy_task)["status"] == "success"
    assert last(destroy_task)["result"] in ("", "<value></value>")

    # callAsync destroyed every task: gone from the server and from the cache
    assert result["destroyCalls"] == [{"error": None, "done": True}] * 3
    assert result["leftover"] == [], result["leftover"]
    assert isinstance(result["destroyedWithinMs"], int), result["destroyedWithinMs"]
    assert isinstance(result["removedFromCacheMs"], int), result["removedFromCacheMs"]
    assert set(task_refs) <= set(result["taskRemovals"])
    assert not set(task_refs) & set(result["tasksAfter"])
    assert set(result["tasksAfter"]) <= set(result["tasksBefore"])
    server_tasks = set(x.task.get_all())
    assert not set(task_refs) & server_tasks
    for ref in task_refs:
        with pytest.raises(XenAPI.Failure) as info:
            x.task.get_record(ref)
        assert info.value.details == ["HANDLE_INVALID", "task", ref]

    _check_connect_calls(result, [{"method": "network.get_record", "error": "HANDLE_INVALID"}])
    _assert_logged_out_and_loop_ended(server, result)


# ---------------------------------------------------------------------------
# 4. barrier()
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_barrier(node_client, server, xenapi, transport):
    result = events_probe(node_client, server, transport, "barrier")
    x = xenapi.xenapi

    # each barrier completes (the pool mod event with its key came back), quickly
    assert len(result["timings"]) == 3
    assert all(ms < 1000 * MAX_LATENCY for ms in result["timings"]), result["timings"]
    assert result["concurrentMs"] < 1000 * MAX_LATENCY
    # barrier(ref) returns the up-to-date cached object
    assert result["withRef"]["ref"] == result["poolRef"] == x.pool.get_all()[0]
    assert result["withRefIsCachedPool"] is True

    # what the client did before a barrier is in its cache right after it
    assert REF_RE.match(result["networkRef"])
    assert result["seenAfterBarrier"] == {
        "name_label": "xo-barrier-renamed",
        "MTU": 1500 if transport == "json-rpc" else "1500",
    }
    assert result["goneAfterBarrier"] is True

    # 9 barriers: 9 keys added and removed, none left behind (server and cache)
    assert result["addCalls"] == 9 and result["removeCalls"] == 9
    assert isinstance(result["keysGoneMs"], int), result["keysGoneMs"]
    assert result["serverKeys"] == [] and result["cacheKeys"] == []
    other_config = x.pool.get_other_config(result["poolRef"])
    assert not [k for k in other_config if k.startswith("xo:barrier:")], other_config

    _check_connect_calls(result)
    _assert_logged_out_and_loop_ended(server, result)


# ---------------------------------------------------------------------------
# 5. valid_ref_counts: no task refetch loop
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_tasks_come_and_go_without_refetch(node_client, server, xenapi, transport):
    result = events_probe(node_client, server, transport, "tasks")
    x = xenapi.xenapi

    # task.get_all_records only in the initial fetch: after every event.from,
    # valid_ref_counts.task (a number) matched the client's own task count
    assert result["initialTaskFetches"] == 1
    assert result["churnTaskFetches"] == 0, result["churnEventFroms"]
    assert result["totalTaskFetches"] == 1
    batches = result["churnEventFroms"]
    assert len(batches) >= 4, batches
    for batch in batches:
        assert batch["hasValidRefCounts"] is True, batch
        assert batch["validTasksType"] == "number", batch
        assert batch["validTasks"] == batch["clientTasks"], batch
    # tasks did come and go in those batches
    events = [e for batch in batches for e in batch["events"]]
    assert events.count("task:add") >= 6 and events.count("task:del") >= 6, events

    # when nothing happens, event.from blocks: no spinning, no refetching
    assert result["quietEventFromReturns"] == 0, result["calls"]["eventFroms"]
    assert set(result["quietCalls"]) <= {"event.from"} and len(result["quietCalls"]) <= 1, result["quietCalls"]

    # the client task (createTask) settled with its result and was destroyed
    assert result["clientTaskResult"] == "done"
    assert len(result["asyncTaskRefs"]) == 6
    gone = set(result["asyncTaskRefs"]) | {result["clientTask"]}
    assert not gone & set(result["serverTasks"])
    assert not gone & set(x.task.get_all())

    # the cache's tasks are the server's tasks
    assert sorted(result["cachedTasks"]) == sorted(result["serverTasks"])
    assert result["nTasks"] == len(result["serverTasks"])

    _check_connect_calls(result)
    _assert_logged_out_and_loop_ended(server, result)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_vm_lifecycle_through_call_async(node_client, server, xenapi, transport):
    from tests.e2e.test_vm_lifecycle import install

    vm = install(xenapi.xenapi, f"xo-{transport}")
    try:
        result = probe(node_client, server, transport, "lifecycle", script=EVENTS_PROBE, extra={"vm": vm})
        assert [state for _, state in result["states"]] == [
            "Running", "Paused", "Running", "Suspended", "Running", "Running", "Halted"]
        assert result["wrongState"] == {"code": "VM_BAD_POWER_STATE",
                                        "params": [vm, "halted", "running"]}
        assert result["residentOn"] == "OpaqueRef:NULL" and int(result["domid"]) == -1
    finally:
        xenapi.xenapi.VM.destroy(vm)
