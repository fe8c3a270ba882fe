"""The xenopsd contract, through ``XenopsClient``.

Every test takes an ``impl``: the simulator daemon (a subprocess) spoken to
over JSON-RPC and over XML-RPC, or, with ``XENOPS_CONFORMANCE_SOCKET=<path>``
(and ``XENOPS_CONFORMANCE_ENCODING=json|xmlrpc``), any other xenopsd, e.g. a
real one started with ``--use-switch=false``.  What only the simulator
offers (its micro-op log, injected delays and failures, restarting it) is
asked of the implementation and the test is skipped where it is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

import pytest

from tests.support import REPO
from xapi.backends.xenops import protocol as P
from xapi.backends.xenops import xmlrpc
from xapi.backends.xenops.client import XenopsClient, XenopsError, XenopsUnavailable
from xapi.backends.xenops.simulator import oplog

TIMEOUT = 10.0

# ---------------------------------------------------------------- implementations


@dataclass
class Simulator:
    """A ``python -m xapi.backends.xenops.simulator`` process and its directories."""

    root: str
    extra_args: list[str] = field(default_factory=list)
    proc: subprocess.Popen | None = None

    @property
    def socket_dir(self) -> str:
        return os.path.join(self.root, "sockets")

    @property
    def state_dir(self) -> str:
        return os.path.join(self.root, "state")

    @property
    def log_path(self) -> str:
        return os.path.join(self.root, "microops.log")

    def start(self) -> None:
        with open(os.path.join(self.root, "stderr"), "ab") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "xapi.backends.xenops.simulator", "--socket-dir", self.socket_dir,
                 "--state-dir", self.state_dir, "--log", self.log_path, *self.extra_args],
                cwd=REPO, stdout=subprocess.DEVNULL, stderr=stderr)
        probe = XenopsClient(self.socket_dir, P.SIMULATOR_QUEUE, timeout=2)
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                probe.query()
                return
            except XenopsUnavailable:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"simulator did not start: {open(os.path.join(self.root, 'stderr')).read()}")
                time.sleep(0.05)
            finally:
                probe.close()

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(TIMEOUT)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                self.kill()


@dataclass
class Implementation:
    """What the suite needs of an implementation of the contract."""

    name: str
    socket_dir: str
    queue: str
    encoding: str
    simulator: Simulator | None = None
    clients: list[XenopsClient] = field(default_factory=list)

    def client(self, **kw) -> XenopsClient:
        client = XenopsClient(self.socket_dir, self.queue, timeout=TIMEOUT, encoding=self.encoding, **kw)
        self.clients.append(client)
        return client

    def close(self) -> None:
        for client in self.clients:
            client.close()

    def micro_ops(self, vm: str) -> list[oplog.Entry]:
        if self.simulator is None:
            pytest.skip(f"{self.name} has no micro-op log")
        return [e for e in oplog.read(self.simulator.log_path) if e.vm == vm]

    def restart(self, hard: bool = True) -> None:
        if self.simulator is None:
            pytest.skip(f"{self.name} cannot be restarted by the suite")
        self.simulator.kill() if hard else self.simulator.stop()
        self.simulator.start()

    def faults(self, client: XenopsClient) -> Callable[..., None]:
        """``inject("delay", op, seconds[, vm])`` / ``inject("fail", op, vm, error, count)``."""
        if self.simulator is None:
            pytest.skip(f"{self.name} takes no injected faults")
        return lambda cmd, *args: client.debug_trigger(cmd, [str(a) for a in args])


def _external() -> Implementation | None:
    path = os.environ.get("XENOPS_CONFORMANCE_SOCKET")
    if not path:
        return None
    return Implementation("external", os.path.dirname(path), os.path.basename(path),
                          os.environ.get("XENOPS_CONFORMANCE_ENCODING", P.XMLRPC))


_SHARED = ["external"] if _external() else [P.JSON, P.XMLRPC]


@pytest.fixture(scope="module")
def shared_simulator():
    if _external():
        yield None
        return
    sim = Simulator(tempfile.mkdtemp(prefix="xenopsd-sim-"))
    sim.start()
    yield sim
    sim.stop()
    shutil.rmtree(sim.root, ignore_errors=True)


@pytest.fixture(params=_SHARED)
def impl(request, shared_simulator):
    if request.param == "external":
        implementation = _external()
    else:
        implementation = Implementation(f"simulator/{request.param}", shared_simulator.socket_dir,
                                        P.SIMULATOR_QUEUE, request.param, shared_simulator)
    yield implementation
    implementation.close()


@pytest.fixture
def own_simulator(request):
    """A simulator of the test's own (restarted, started with flags): JSON-RPC."""
    if _external():
        pytest.skip("needs a simulator of its own")
    made: list[Implementation] = []

    def make(*extra_args: str) -> Implementation:
        sim = Simulator(tempfile.mkdtemp(prefix="xenopsd-sim-"), list(extra_args))
        sim.start()
        made.append(Implementation("simulator/own", sim.socket_dir, P.SIMULATOR_QUEUE, P.JSON, sim))
        return made[-1]

    yield make
    for implementation in made:
        implementation.close()
        implementation.simulator.stop()
        shutil.rmtree(implementation.simulator.root, ignore_errors=True)


@pytest.fixture
def xc(impl):
    client = impl.client()
    yield client
    if impl.simulator is not None:
        try:
            client.debug_trigger("clear-faults")
        except (XenopsError, XenopsUnavailable):
            pass


# ---------------------------------------------------------------- helpers


def new_vm(xc: XenopsClient, *, vbds=(("xvda", "ReadWrite"),), vifs=("0",), **vm_fields) -> str:
    """Import a VM whose VBDs are (device, mode) pairs and VIFs device numbers."""
    vm = str(uuid.uuid4())
    md = P.metadata(
        P.vm_t(vm, name=f"conformance-{vm[:8]}", **vm_fields),
        vbds=[P.vbd_t(vm, dev, mode=mode, backend=P.disk_vdi("sr-1", f"vdi-{dev}"),
                      ty="Disk" if mode == "ReadWrite" else "CDROM") for dev, mode in vbds],
        vifs=[P.vif_t(vm, dev, mac=f"02:00:00:00:00:0{dev}") for dev in vifs],
    )
    assert xc.vm_import_metadata(md) == vm
    return vm


def finished(xc: XenopsClient, task_id: str) -> dict:
    task = xc.wait_task(task_id, TIMEOUT)
    assert P.task_status(task) in (P.COMPLETED, P.FAILED)
    return task


def completed(xc: XenopsClient, task_id: str) -> dict:
    task = finished(xc, task_id)
    assert P.task_status(task) == P.COMPLETED, P.task_error(task)
    xc.task_destroy(task_id)
    return task


def failed_with(xc: XenopsClient, task_id: str) -> tuple[str, object]:
    task = finished(xc, task_id)
    assert P.task_status(task) == P.FAILED, f"task {task_id} succeeded"
    xc.task_destroy(task_id)
    return P.task_error(task)


def start(xc: XenopsClient, vm: str) -> None:
    """As xapi starts a VM: ``VM.start`` and ``VM.unpause`` queued together."""
    started, unpaused = xc.vm_start(vm, False), xc.vm_unpause(vm)
    completed(xc, started)
    completed(xc, unpaused)


def power(xc: XenopsClient, vm: str) -> str:
    return xc.vm_stat(vm)[1]["power_state"]


def wait_until(predicate: Callable[[], bool], timeout: float = TIMEOUT, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def ops_named(entries: list[oplog.Entry]) -> list[str]:
    return [e.op for e in entries]


# ---------------------------------------------------------------- query, records, errors


def test_query_names_xenops_and_its_instance(xc):
    q = xc.query()
    assert q["name"] == "xenops"
    assert isinstance(q["features"], list)
    assert q["instance_id"] and q["instance_id"] == xc.query()["instance_id"]
    assert xc.host_total_memory_mib() > 0


def test_imported_vm_is_halted_with_its_devices(xc):
    vm = new_vm(xc, vbds=[("xvda", "ReadWrite"), ("xvdd", "ReadOnly")], vifs=["0", "1"])
    assert xc.vm_exists(vm)
    vm_t, state = xc.vm_stat(vm)
    assert vm_t["id"] == vm and vm_t["name"] == f"conformance-{vm[:8]}"
    assert state["power_state"] == P.HALTED and state["domids"] == []
    assert vm in [v["id"] for v, _ in xc.vm_list()]
    vbds = {v["id"][1]: (v, s) for v, s in xc.vbd_list(vm)}
    assert set(vbds) == {"xvda", "xvdd"}
    assert vbds["xvdd"][0]["mode"] == "ReadOnly"
    assert all(not s["plugged"] and not s["active"] for _, s in vbds.values())
    vifs = {v["id"][1]: v for v, s in xc.vif_list(vm)}
    assert set(vifs) == {"0", "1"} and vifs["1"]["position"] == 1


def test_reimport_replaces_devices_not_listed(xc):
    vm = new_vm(xc, vbds=[("xvda", "ReadWrite"), ("xvdb", "ReadWrite")], vifs=["0", "1"])
    md = xc.vm_export_metadata(vm)
    md["vbds"] = [v for v in md["vbds"] if v["id"][1] == "xvda"]
    md["vifs"] = []
    md["vm"]["name"] = "renamed"
    xc.vm_import_metadata(md)
    assert [v["id"][1] for v, _ in xc.vbd_list(vm)] == ["xvda"]
    assert xc.vif_list(vm) == []
    assert xc.vm_stat(vm)[0]["name"] == "renamed"


def test_unknown_objects_do_not_exist(xc):
    missing = str(uuid.uuid4())
    assert not xc.vm_exists(missing)
    for call in (lambda: xc.vm_stat(missing), lambda: xc.vbd_stat((missing, "xvda")),
                 lambda: xc.vif_stat((missing, "0"))):
        with pytest.raises(XenopsError) as err:
            call()
        assert err.value.name == "Does_not_exist"
        assert err.value.params[0] == "VM" and missing in err.value.params[1]
    with pytest.raises(XenopsError) as err:
        xc.task_stat("999999999")
    assert err.value.name == "Does_not_exist" and err.value.params == ["task", "999999999"]
    with pytest.raises(XenopsError) as err:
        xc.vbd_add(P.vbd_t(missing, "xvda"))
    assert err.value.name == "Does_not_exist"


# ---------------------------------------------------------------- power states


def test_start_leaves_the_domain_paused_and_unpause_runs_it(xc):
    vm = new_vm(xc, vbds=[("xvda", "ReadWrite")], vifs=["0"])
    completed(xc, xc.vm_start(vm, False))
    _, state = xc.vm_stat(vm)
    assert state["power_state"] == P.PAUSED and len(state["domids"]) == 1
    completed(xc, xc.vm_unpause(vm))
    _, state = xc.vm_stat(vm)
    assert state["power_state"] == P.RUNNING and state["domids"][0] >= 0
    vbd, vbd_state = xc.vbd_stat((vm, "xvda"))
    assert vbd_state["plugged"] and vbd_state["active"]
    assert vbd_state["backend_present"] == vbd["backend"]
    assert xc.vif_stat((vm, "0"))[1]["plugged"]


def test_shutdown_halts_and_unplugs_everything(xc):
    vm = new_vm(xc, vbds=[("xvda", "ReadWrite"), ("xvdd", "ReadOnly")], vifs=["0"])
    start(xc, vm)
    completed(xc, xc.vm_shutdown(vm, None))
    _, state = xc.vm_stat(vm)
    assert state["power_state"] == P.HALTED and state["domids"] == []
    for _, s in xc.vbd_list(vm) + xc.vif_list(vm):
        assert not s["plugged"] and not s["active"]


def test_clean_shutdown_with_a_delay(xc):
    vm = new_vm(xc)
    start(xc, vm)
    completed(xc, xc.vm_shutdown(vm, 5.0))
    assert power(xc, vm) == P.HALTED


def test_operations_in_the_wrong_power_state_fail(xc):
    vm = new_vm(xc, vbds=[("xvda", "ReadWrite"), ("xvdd", "ReadOnly")])
    assert failed_with(xc, xc.vm_reboot(vm)) == ("Bad_power_state", [P.HALTED, P.RUNNING])
    assert failed_with(xc, xc.vbd_insert((vm, "xvdd"), P.disk_vdi("sr-1", "iso"))) == \
        ("Bad_power_state", [P.HALTED, P.RUNNING])
    start(xc, vm)
    assert failed_with(xc, xc.vm_start(vm)) == ("Bad_power_state", [P.RUNNING, P.HALTED])
    assert failed_with(xc, xc.vm_resume(vm, P.disk_vdi("sr-1", "suspend"))) == \
        ("Bad_power_state", [P.RUNNING, P.SUSPENDED])
    with pytest.raises(XenopsError) as err:
        xc.vm_remove(vm)
    assert (err.value.name, err.value.params) == ("Bad_power_state", [P.RUNNING, P.HALTED])
    assert power(xc, vm) == P.RUNNING


def test_pause_and_unpause(xc):
    vm = new_vm(xc)
    start(xc, vm)
    completed(xc, xc.vm_pause(vm))
    assert power(xc, vm) == P.PAUSED
    completed(xc, xc.vm_unpause(vm))
    assert power(xc, vm) == P.RUNNING
    completed(xc, xc.vm_unpause(vm))  # unpausing a running VM is not an error
    assert power(xc, vm) == P.RUNNING


def test_reboot_gives_a_new_domain(xc):
    vm = new_vm(xc, vifs=["0"])
    start(xc, vm)
    before = xc.vm_stat(vm)[1]["domids"]
    completed(xc, xc.vm_reboot(vm, None))
    _, state = xc.vm_stat(vm)
    assert state["power_state"] == P.RUNNING
    assert state["domids"] and state["domids"] != before
    assert xc.vbd_stat((vm, "xvda"))[1]["plugged"] and xc.vif_stat((vm, "0"))[1]["plugged"]


def test_suspend_and_resume(xc):
    vm = new_vm(xc, vifs=["0"])
    start(xc, vm)
    disk = P.disk_vdi("sr-1", "suspend-image")
    completed(xc, xc.vm_suspend(vm, disk))
    assert power(xc, vm) == P.SUSPENDED
    assert not xc.vbd_stat((vm, "xvda"))[1]["plugged"]
    completed(xc, xc.vm_resume(vm, disk))
    assert power(xc, vm) in (P.PAUSED, P.RUNNING)
    completed(xc, xc.vm_unpause(vm))
    assert power(xc, vm) == P.RUNNING
    assert xc.vbd_stat((vm, "xvda"))[1]["plugged"] and xc.vif_stat((vm, "0"))[1]["plugged"]


def test_remove_forgets_a_halted_vm(xc):
    vm = new_vm(xc)
    start(xc, vm)
    completed(xc, xc.vm_shutdown(vm))
    xc.vm_remove(vm)
    assert not xc.vm_exists(vm)
    assert xc.vbd_list(vm) == []


def test_migrate_within_one_host_keeps_the_vm_running(xc):
    vm = new_vm(xc)
    start(xc, vm)
    completed(xc, xc.vm_migrate(vm, "http://localhost/", localhost_migration=True))
    assert power(xc, vm) == P.RUNNING


# ---------------------------------------------------------------- devices


def test_vbd_hotplug_and_unplug(xc):
    vm = new_vm(xc)
    start(xc, vm)
    vbd_id = xc.vbd_add(P.vbd_t(vm, "xvdb", backend=P.disk_vdi("sr-1", "data")))
    assert vbd_id == (vm, "xvdb")
    assert not xc.vbd_stat(vbd_id)[1]["plugged"]
    completed(xc, xc.vbd_plug(vbd_id))
    state = xc.vbd_stat(vbd_id)[1]
    assert state["plugged"] and state["active"] and state["backend_present"] == P.disk_vdi("sr-1", "data")
    with pytest.raises(XenopsError) as err:
        xc.vbd_remove(vbd_id)
    assert err.value.name == "Device_is_connected"
    completed(xc, xc.vbd_unplug(vbd_id, False))
    state = xc.vbd_stat(vbd_id)[1]
    assert not state["plugged"] and not state["active"]
    xc.vbd_remove(vbd_id)
    assert [v["id"][1] for v, _ in xc.vbd_list(vm)] == ["xvda"]


def test_cdrom_eject_and_insert(xc):
    vm = new_vm(xc, vbds=[("xvda", "ReadWrite"), ("xvdd", "ReadOnly")])
    start(xc, vm)
    assert failed_with(xc, xc.vbd_eject((vm, "xvda")))[0] == "Media_not_ejectable"
    completed(xc, xc.vbd_eject((vm, "xvdd")))
    assert "backend_present" not in xc.vbd_stat((vm, "xvdd"))[1]
    iso = P.disk_vdi("sr-iso", "tools.iso")
    completed(xc, xc.vbd_insert((vm, "xvdd"), iso))
    assert xc.vbd_stat((vm, "xvdd"))[1]["backend_present"] == iso


def test_vif_hotplug_unplug_and_move(xc):
    vm = new_vm(xc, vifs=["0"])
    start(xc, vm)
    vif_id = xc.vif_add(P.vif_t(vm, "1", backend=P.network_local("xenbr1")))
    completed(xc, xc.vif_plug(vif_id))
    assert xc.vif_stat(vif_id)[1]["plugged"]
    completed(xc, xc.vif_move(vif_id, P.network_local("xenbr2")))
    assert xc.vif_stat(vif_id)[0]["backend"] == ["Local", "xenbr2"]
    completed(xc, xc.vif_unplug(vif_id, True))
    state = xc.vif_stat(vif_id)[1]
    assert not state["plugged"] and not state["active"]
    xc.vif_remove(vif_id)
    assert [v["id"][1] for v, _ in xc.vif_list(vm)] == ["0"]


# ---------------------------------------------------------------- tasks


def test_task_records(xc):
    vm = new_vm(xc)
    task_id = xc.vm_start(vm)
    task = finished(xc, task_id)
    assert task["id"] == task_id and task["dbg"] == xc.debug_info
    assert P.task_status(task) == P.COMPLETED and P.arg(task["state"])["duration"] >= 0
    assert P.task_progress(task) == 1.0
    assert task_id in [t["id"] for t in xc.task_list()]
    xc.task_destroy(task_id)
    assert task_id not in [t["id"] for t in xc.task_list()]
    with pytest.raises(XenopsError):
        xc.task_stat(task_id)
    # destroy_on_finish: gone once finished, whether it had finished or not
    done = xc.vm_unpause(vm)
    finished(xc, done)
    xc.task_destroy_on_finish(done)
    pending = xc.vm_pause(vm)
    xc.task_destroy_on_finish(pending)
    wait_until(lambda: not {done, pending} & {t["id"] for t in xc.task_list()}, what="tasks destroyed")
    assert power(xc, vm) == P.PAUSED


def test_task_progress_moves_while_pending(impl, xc):
    inject = impl.faults(xc)
    vm = new_vm(xc, vbds=[("xvda", "ReadWrite"), ("xvdb", "ReadWrite")])
    inject("delay", "VBD_plug", 0.3, vm)
    task_id = xc.vm_start(vm)
    seen = []
    while True:
        task = xc.task_stat(task_id)
        if P.task_status(task) != P.PENDING:
            break
        seen.append(P.task_progress(task))
        time.sleep(0.02)
    assert P.task_status(task) == P.COMPLETED
    assert any(0.0 < p < 1.0 for p in seen), seen
    assert seen == sorted(seen)
    xc.task_destroy(task_id)


def test_failed_task_carries_the_error(xc):
    vm = new_vm(xc)
    start(xc, vm)
    task_id = xc.vm_start(vm)
    task = finished(xc, task_id)
    assert task["state"] == ["Failed", ["Bad_power_state", ["Running", "Halted"]]]
    with pytest.raises(XenopsError) as err:
        xc.sync_task(task_id, TIMEOUT)
    assert err.value.name == "Bad_power_state"


def test_cancel_a_task_still_queued(xc):
    vm = new_vm(xc)
    busy = xc.call("VM.delay", id=vm, delay=0.5)  # keeps the VM's queue busy
    task_id = xc.vm_start(vm)
    assert P.task_status(xc.task_stat(task_id)) == P.PENDING
    xc.task_cancel(task_id)
    assert failed_with(xc, task_id) == ("Cancelled", task_id)
    completed(xc, busy)
    assert power(xc, vm) == P.HALTED


def test_cancel_between_micro_ops(impl, xc):
    inject = impl.faults(xc)
    vm = new_vm(xc, vbds=[("xvda", "ReadWrite")], vifs=["0"])
    inject("delay", "VBD_plug", 0.5, vm)
    task_id = xc.vm_start(vm)
    wait_until(lambda: "VBD_plug" in ops_named(impl.micro_ops(vm)), what="VBD_plug to begin")
    xc.task_cancel(task_id)
    assert failed_with(xc, task_id) == ("Cancelled", task_id)
    assert "VIF_plug" not in ops_named(impl.micro_ops(vm))  # nothing after the cancellation point
    assert power(xc, vm) == P.PAUSED  # what was built stays, as in xenopsd
    completed(xc, xc.vm_shutdown(vm))
    assert power(xc, vm) == P.HALTED


def test_set_cancel_trigger_cancels_at_a_given_step(xc):
    vm = new_vm(xc)
    dbg = f"cancel-me-{vm[:8]}"
    xc.debug_trigger("set-cancel-trigger", [dbg, 3])
    task_id = xc.call("VM.start", debug_info=dbg, id=vm, paused=False)
    assert failed_with(xc, task_id) == ("Cancelled", task_id)


# ---------------------------------------------------------------- UPDATES


def test_updates_report_vm_devices_and_tasks(xc):
    vm = new_vm(xc, vbds=[("xvda", "ReadWrite")], vifs=["0"])
    last = xc.updates_last_id()
    task_id = xc.vm_start(vm)
    finished(xc, task_id)
    barriers, updates, next_id = xc.updates_get(last, 5)
    assert barriers == []
    for key in [("Vm", vm), ("Vbd", (vm, "xvda")), ("Vif", (vm, "0")), ("Task", task_id)]:
        assert key in updates, key
    assert len(updates) == len(set(updates))  # coalesced
    assert next_id > last and next_id <= xc.updates_last_id()
    began = time.monotonic()
    _, later, _ = xc.updates_get(xc.updates_last_id(), 1)
    assert ("Vm", vm) not in later
    assert time.monotonic() - began < 5
    xc.task_destroy(task_id)
    _, after_destroy, _ = xc.updates_get(last, 1)
    assert ("Task", task_id) not in after_destroy


def test_refresh_vm_signals_the_vm_and_its_devices_only(xc):
    vm, other = new_vm(xc, vbds=[("xvda", "ReadWrite")], vifs=["0"]), new_vm(xc)
    last = xc.updates_last_id()
    xc.updates_refresh_vm(vm)
    _, updates, _ = xc.updates_get(last, 5)
    assert {("Vm", vm), ("Vbd", (vm, "xvda")), ("Vif", (vm, "0"))} <= set(updates)
    assert not [k for k in updates if k in (("Vm", other), ("Vbd", (other, "xvda")))]


def test_barriers(xc):
    vm, other = new_vm(xc, vbds=[("xvda", "ReadWrite")], vifs=["0"]), new_vm(xc)
    xc.updates_refresh_vm(vm)
    xc.updates_refresh_vm(other)
    last = xc.updates_last_id()
    bar_id = int(time.time() * 1000) % 1_000_000
    xc.updates_inject_barrier(vm, bar_id)
    barriers, updates, next_id = xc.updates_get(last, 5)
    assert [b for b, _ in barriers] == [bar_id]
    assert barriers[0][1] == []  # nothing of the VM changed after `last`
    assert next_id >= last + 1
    # A barrier's snapshot holds that VM's objects changed since the caller's point, no tasks.
    before_refresh = xc.updates_last_id()
    xc.updates_refresh_vm(vm)
    task_id = xc.vm_start(vm)
    finished(xc, task_id)
    xc.updates_inject_barrier(vm, bar_id + 1)
    barriers, _, next_id = xc.updates_get(before_refresh, 5)
    snapshot = dict(barriers)[bar_id + 1]
    assert {("Vm", vm), ("Vbd", (vm, "xvda")), ("Vif", (vm, "0"))} <= set(snapshot)
    assert all(k[0] != "Task" and k[1] != other for k in snapshot)
    # seen once: asking from the returned id does not repeat it
    again, _, _ = xc.updates_get(next_id, 1)
    assert bar_id + 1 not in [b for b, _ in again]
    xc.updates_remove_barrier(bar_id)
    xc.updates_remove_barrier(bar_id + 1)
    assert xc.updates_last_id() >= next_id + 1
    xc.task_destroy(task_id)


# ---------------------------------------------------------------- the guest's own shutdown


def _trigger_or_skip(xc, cmd, vm):
    try:
        xc.debug_trigger(cmd, [vm])
    except XenopsError as err:
        if err.name == "Unimplemented":
            pytest.skip(f"DEBUG.trigger {cmd} not implemented")
        raise


def test_guest_halt(xc):
    vm = new_vm(xc, vifs=["0"])
    start(xc, vm)
    last = xc.updates_last_id()
    _trigger_or_skip(xc, "halt", vm)
    wait_until(lambda: power(xc, vm) == P.HALTED, what="the VM to halt")
    assert not xc.vbd_stat((vm, "xvda"))[1]["plugged"]
    assert ("Vm", vm) in xc.updates_get(last, 5)[1]


def test_guest_reboot(xc):
    vm = new_vm(xc)
    start(xc, vm)
    before = xc.vm_stat(vm)[1]["domids"]
    _trigger_or_skip(xc, "reboot", vm)
    wait_until(lambda: xc.vm_stat(vm)[1]["domids"] not in ([], before), what="a new domain")
    wait_until(lambda: power(xc, vm) == P.RUNNING, what="the VM to run again")


# ---------------------------------------------------------------- queues


def test_one_vm_in_order_different_vms_in_parallel(xc):
    slow, fast = new_vm(xc), new_vm(xc)
    delay = xc.call("VM.delay", id=slow, delay=1.0)
    slow_start = xc.vm_start(slow)
    fast_start = xc.vm_start(fast)
    completed(xc, fast_start)  # not held up by the other VM's queue
    assert P.task_status(xc.task_stat(delay)) == P.PENDING
    slow_task = xc.task_stat(slow_start)
    assert slow_task["state"] == ["Pending", 0.0]  # queued behind the delay, not begun
    completed(xc, delay)
    completed(xc, slow_start)
    assert power(xc, slow) == P.PAUSED


# ---------------------------------------------------------------- micro-ops


def test_micro_op_order_of_start_and_unpause(impl, xc):
    # RO disk listed first and VIFs out of order: the plug order must not follow the listing.
    vm = new_vm(xc, vbds=[("xvdd", "ReadOnly"), ("xvda", "ReadWrite")], vifs=["1", "0"])
    start(xc, vm)
    xc.debug_trigger("check-vbd-plug-ordering", [vm])
    entries = [e for e in impl.micro_ops(vm) if e.op != "VM_import_metadata"]
    assert [(e.op, e.args) for e in entries] == [
        ("VM_hook_script", ("vm-pre-start", "none")),
        ("VM_create", ()),
        ("VM_build", ("false",)),
        ("VBD_set_active", ("xvda", "true")),
        ("VBD_epoch_begin", ("xvda", "VDI:sr-1/vdi-xvda", "true")),
        ("VBD_plug", ("xvda", "ReadWrite")),
        ("VBD_set_active", ("xvdd", "true")),
        ("VBD_epoch_begin", ("xvdd", "VDI:sr-1/vdi-xvdd", "true")),
        ("VBD_plug", ("xvdd", "ReadOnly")),
        ("VIF_set_active", ("0", "true")),
        ("VIF_plug", ("0",)),
        ("VIF_set_active", ("1", "true")),
        ("VIF_plug", ("1",)),
        ("VM_create_device_model", ("false",)),
        ("VM_set_domain_action_request", ("-",)),
        ("VM_unpause", ()),
    ]
    times = [e.time for e in entries]
    assert times == sorted(times)


def test_micro_op_order_of_shutdown(impl, xc):
    vm = new_vm(xc, vbds=[("xvda", "ReadWrite")], vifs=["0"])
    start(xc, vm)
    mark = len(impl.micro_ops(vm))
    completed(xc, xc.vm_shutdown(vm, None))
    assert ops_named(impl.micro_ops(vm)[mark:]) == [
        "VM_hook_script", "VM_pause", "VM_destroy_device_model", "VBD_unplug", "VIF_unplug", "VM_destroy",
        "VBD_epoch_end", "VBD_set_active", "VIF_set_active", "VM_hook_script",
    ]


# ---------------------------------------------------------------- failure injection


def test_injected_failure_surfaces_and_stops_the_operation(impl, xc):
    inject = impl.faults(xc)
    vm = new_vm(xc)
    inject("fail", "VM_build", vm, json.dumps(["Not_enough_memory", 1024]), 1)
    assert failed_with(xc, xc.vm_start(vm)) == ("Not_enough_memory", 1024)
    ops = ops_named(impl.micro_ops(vm))
    assert "VM_build" in ops and "VBD_plug" not in ops
    completed(xc, xc.vm_shutdown(vm))  # clears the half-built domain
    start(xc, vm)  # the failure was for one time only
    assert power(xc, vm) == P.RUNNING


def test_injected_failure_for_all_vms_until_cleared(impl, xc):
    inject = impl.faults(xc)
    first, second = new_vm(xc), new_vm(xc)
    inject("fail", "VM_hook_script", "*", json.dumps(["Hook_failed", ["vm-pre-start", "none", "", "1"]]))
    for vm in (first, second):
        assert failed_with(xc, xc.vm_start(vm)) == ("Hook_failed", ["vm-pre-start", "none", "", "1"])
        assert power(xc, vm) == P.HALTED
    xc.debug_trigger("clear-faults")
    with pytest.raises(XenopsError) as err:
        inject("fail", "VM_no_such_step")
    assert err.value.name == "Internal_error"
    start(xc, first)
    assert power(xc, first) == P.RUNNING


def test_faults_from_the_command_line(own_simulator):
    doomed = str(uuid.uuid4())
    impl = own_simulator("--fail", f'VM_create@{doomed}=["Internal_error", "no domain for you"]',
                         "--delay", "VIF_plug=0.2")
    xc = impl.client()
    new_vm_with_id = P.metadata(P.vm_t(doomed))
    xc.vm_import_metadata(new_vm_with_id)
    assert failed_with(xc, xc.vm_start(doomed)) == ("Internal_error", "no domain for you")
    other = new_vm(xc, vifs=["0"])
    began = time.monotonic()
    start(xc, other)
    assert time.monotonic() - began >= 0.2
    assert power(xc, other) == P.RUNNING


# ---------------------------------------------------------------- restarts


def test_restart_keeps_vms_domains_and_ids(own_simulator):
    impl = own_simulator()
    xc = impl.client()
    running, halted = new_vm(xc, vifs=["0"]), new_vm(xc)
    start(xc, running)
    domids = xc.vm_stat(running)[1]["domids"]
    old_task = xc.vm_pause(running)
    completed(xc, old_task)
    completed(xc, xc.vm_unpause(running))
    instance = xc.query()["instance_id"]
    last = xc.updates_last_id()

    impl.restart(hard=True)
    assert xc.query()["instance_id"] != instance
    _, state = xc.vm_stat(running)
    assert state["power_state"] == P.RUNNING and state["domids"] == domids
    assert xc.vbd_stat((running, "xvda"))[1]["plugged"] and xc.vif_stat((running, "0"))[1]["plugged"]
    assert power(xc, halted) == P.HALTED
    # ids go on from where they were: domids, task ids and update ids are not reused
    _, updates, _ = xc.updates_get(last, 5)
    assert ("Vm", running) in updates and ("Vm", halted) in updates
    start(xc, halted)
    assert xc.vm_stat(halted)[1]["domids"][0] > domids[0]
    new_task = xc.vm_pause(halted)
    assert int(new_task) > int(old_task)
    completed(xc, new_task)
    completed(xc, xc.vm_shutdown(running))
    assert power(xc, running) == P.HALTED


def test_restart_in_the_middle_of_a_start(own_simulator):
    impl = own_simulator("--delay", "VBD_plug=30")
    xc = impl.client()
    vm = new_vm(xc, vifs=["0"])
    task_id = xc.vm_start(vm)
    wait_until(lambda: "VBD_plug" in ops_named(impl.micro_ops(vm)), what="VBD_plug to begin")
    impl.simulator.extra_args = []
    impl.restart(hard=True)
    # The task died with the daemon; the domain it built so far is still there, paused,
    # its disk half plugged (not connected) and its VIF never plugged.
    with pytest.raises(XenopsError) as err:
        xc.task_stat(task_id)
    assert err.value.name == "Does_not_exist"
    _, state = xc.vm_stat(vm)
    assert state["power_state"] == P.PAUSED and state["domids"]
    assert not xc.vbd_stat((vm, "xvda"))[1]["plugged"]
    assert not xc.vif_stat((vm, "0"))[1]["plugged"]
    completed(xc, xc.vm_shutdown(vm))
    assert power(xc, vm) == P.HALTED
    start(xc, vm)
    assert xc.vbd_stat((vm, "xvda"))[1]["plugged"]


def test_graceful_restart_keeps_state(own_simulator):
    impl = own_simulator()
    xc = impl.client()
    vm = new_vm(xc)
    start(xc, vm)
    completed(xc, xc.vm_suspend(vm, P.disk_vdi("sr-1", "suspend-image")))
    impl.restart(hard=False)
    assert power(xc, vm) == P.SUSPENDED
    completed(xc, xc.vm_resume(vm, P.disk_vdi("sr-1", "suspend-image")))
    completed(xc, xc.vm_unpause(vm))
    assert power(xc, vm) == P.RUNNING


def test_client_survives_a_restart_and_reports_an_absent_daemon(own_simulator):
    impl = own_simulator()
    xc = impl.client()
    xc.query()  # opens this thread's keep-alive connection
    impl.simulator.kill()
    with pytest.raises(XenopsUnavailable):
        xc.query()
    impl.simulator.start()
    assert xc.query()["name"] == "xenops"


# ---------------------------------------------------------------- the client's transport


def test_one_client_shared_by_threads(impl):
    xc = impl.client()

    def lifecycle(_):
        vm = new_vm(xc)
        start(xc, vm)
        completed(xc, xc.vm_shutdown(vm))
        return power(xc, vm)

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(lifecycle, range(16))) == [P.HALTED] * 16


def test_client_copes_with_one_request_per_connection(tmp_path):
    """xenopsd's own socket server (``--use-switch=false``) answers one XML-RPC
    request per connection and closes it without saying so."""
    path = str(tmp_path / "xenopsd")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(4)
    calls = []

    def serve():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(65536)
                head, body = data.split(b"\r\n\r\n", 1)
                length = int([h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")][0]
                             .split(b":")[1])
                while len(body) < length:
                    body += conn.recv(65536)
                method, params = xmlrpc.decode_call(body)
                calls.append((method, params))
                reply = xmlrpc.encode_response(True, 42 if method == "UPDATES.last_id" else {
                    "name": "xenops", "vendor": "XCP", "version": "0.1", "features": [], "instance_id": "x"})
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(reply) + reply)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        xc = XenopsClient(str(tmp_path), "xenopsd", timeout=5, encoding=P.XMLRPC)
        for _ in range(3):
            assert xc.query()["name"] == "xenops"
            assert xc.updates_last_id() == 42  # an untyped XML-RPC integer, read as an int
        xc.close()
    finally:
        server.close()
    assert calls[0] == ("query", [{"debug_info": "xapi", "unit": None}])
    assert calls[1] == ("UPDATES.last_id", [{"debug_info": "xapi"}])
