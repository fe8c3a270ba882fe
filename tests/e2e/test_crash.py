"""Crashes in the middle of VM operations leave every VM consistent and no task pending.

After the server or the xenopsd simulator is killed with SIGKILL mid-way
through many VM.start calls and comes back, each VM is either running with
its domain (xenopsd agrees) or cleanly halted (xenopsd has no domain for it),
no task is pending and no VM has stale current_operations.
"""

from __future__ import annotations

import os
import signal
import time

import XenAPI

from tests import support
from tests.e2e.test_vm_lifecycle import install
from xapi.backends.xenops.client import XenopsClient, XenopsError, XenopsUnavailable

QUEUE = "org.xen.xapi.xenops.simulator"
SLOW = "--delay VM_build=0.15 --delay VM_unpause=0.05"


def _session(srv) -> XenAPI.Session:
    s = XenAPI.Session(srv.url)
    s.login_with_password("root", support.ROOT_PASSWORD, "1.0", "crash-test")
    return s


def _consistent(x, client: XenopsClient, vms: list[str]) -> list[str]:
    """What is still wrong (empty when every VM is settled and agrees with xenopsd)."""
    problems = []
    for task, record in x.task.get_all_records().items():
        if record["status"] == "pending":
            problems.append(f"task {record['name_label']} pending")
    for vm in vms:
        record = x.VM.get_record(vm)
        if record["current_operations"]:
            problems.append(f"{vm} busy {record['current_operations']}")
        try:
            _, state = client.vm_stat(record["uuid"])
        except XenopsError:
            state = {"power_state": "Halted", "domids": []}
        if record["power_state"] == "Running":
            if state["power_state"] != "Running" or [int(record["domid"])] != state["domids"]:
                problems.append(f"{vm} Running in the database, {state['power_state']} in xenopsd")
        elif record["power_state"] == "Halted":
            if state["power_state"] != "Halted" or record["resident_on"] != "OpaqueRef:NULL":
                problems.append(f"{vm} Halted in the database, {state['power_state']} in xenopsd")
        else:
            problems.append(f"{vm} is {record['power_state']}")
    return problems


def _settle(x, client, vms, timeout=90.0) -> list[str]:
    deadline = time.monotonic() + timeout
    problems = ["not checked"]
    while time.monotonic() < deadline:
        try:
            problems = _consistent(x, client, vms)
        except XenopsUnavailable:
            problems = ["xenopsd unreachable"]  # being restarted
        if not problems:
            return []
        time.sleep(0.5)
    return problems


def _fresh_db(db_url: str, name: str) -> str:
    return support.create_pg_database() if "postgresql" in db_url else db_url.replace("xapi.db", name)


def test_server_killed_during_50_concurrent_starts(db_url):
    url = _fresh_db(db_url, "crash-server.db")
    srv = support.start_server(db_url=url, xenopsd_simulator_args=SLOW)
    again = None
    try:
        x = _session(srv).xenapi
        vms = [install(x, f"crash-{i}") for i in range(50)]
        for vm in vms:
            x.Async.VM.start(vm, False, False)
        time.sleep(1.5)  # some are running, some half-way, some still queued
        srv.process.send_signal(signal.SIGKILL)
        srv.process.wait()

        again = support.start_server(db_url=url, state_dir=srv.state_dir, port=srv.port,
                                     xenopsd_simulator_args=SLOW)
        y = _session(again).xenapi
        client = XenopsClient(os.path.join(srv.state_dir, "xenopsd"), QUEUE)
        assert _settle(y, client, vms) == []
        states = [y.VM.get_power_state(vm) for vm in vms]
        assert "Running" in states  # the crash did not simply lose every start
        # And the survivors work: every halted VM can start, every running one stop.
        for vm, state in zip(vms[:6], states[:6]):
            if state == "Running":
                y.VM.hard_shutdown(vm)
            else:
                y.VM.start(vm, False, False)
        assert _settle(y, client, vms) == []
    finally:
        if again is not None:
            again.stop()
        srv.stop()
        if "postgresql" in url:
            support.drop_pg_database(url)


def test_simulator_killed_during_operations(db_url):
    url = _fresh_db(db_url, "crash-sim.db")
    srv = support.start_server(db_url=url, xenopsd_simulator_args=SLOW)
    try:
        x = _session(srv).xenapi
        vms = [install(x, f"simcrash-{i}") for i in range(12)]
        for vm in vms[:4]:
            x.VM.start(vm, False, False)
        for vm in vms[4:]:
            x.Async.VM.start(vm, False, False)
        for vm in vms[:2]:
            x.Async.VM.clean_shutdown(vm)
        time.sleep(0.8)
        pid = int(open(os.path.join(srv.state_dir, "xenopsd-sim.pid")).read())
        os.kill(pid, signal.SIGKILL)
        # The server notices, starts the simulator again, and resynchronises with it.
        client = XenopsClient(os.path.join(srv.state_dir, "xenopsd"), QUEUE)
        assert _settle(x, client, vms) == []
        assert x.VM.get_power_state(vms[2]) == "Running"  # started before the crash, untouched
    finally:
        srv.stop()
        if "postgresql" in url:
            support.drop_pg_database(url)
