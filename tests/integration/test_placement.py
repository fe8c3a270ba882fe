"""Placement and forwarding decisions, on one real runtime and a second host record.

The second host is written into the database as its first boot would make
it; nothing runs there, which is enough to check where calls would go and
which errors xapi's checks give.
"""

from __future__ import annotations

import threading

import pytest

from api.server import close_runtime, open_runtime
from xapi.config import Config
from xapi.context import Context, now
from xapi.domains import copies
from xapi.errors import ApiError
from xapi.idl.types import NULL_REF
from xapi.pool import forwarding, placement
from xapi.refs import make_ref, make_uuid

GiB = 1024 ** 3


@pytest.fixture
def rt(fresh_db_url, tmp_path):
    runtime = open_runtime(Config(state_dir=str(tmp_path / "a"), db_url=fresh_db_url,
                                  xenopsd_queues=""))
    # This host: 8 GiB free once its control domain is counted.
    dom0 = sum(placement.memory_needed(r.values) for r in runtime.cache.rows("VM")
               if r.values["resident_on"] == runtime.host_ref)
    with runtime.db.write() as tx:
        host = tx.get("host", runtime.host_ref)
        tx.update("host_metrics", host["metrics"], {"memory_total": 8 * GiB + dom0})
    yield runtime
    close_runtime(runtime)


def other_host(rt, memory: int = 8 * GiB, live: bool = True, enabled: bool = True) -> str:
    host, metrics = make_ref(), make_ref()
    with rt.db.write() as tx:
        tx.insert("host_metrics", metrics, {"uuid": make_uuid(), "live": live,
                                            "memory_total": memory, "last_updated": now()})
        tx.insert("host", host, {"uuid": make_uuid(), "name_label": "b", "address": "127.0.0.9",
                                 "metrics": metrics, "enabled": enabled})
    return host


def new_vm(rt, memory: int = GiB, **extra) -> str:
    return copies.create(Context(rt=rt), {
        "name_label": "vm", "memory_static_min": memory, "memory_dynamic_min": memory,
        "memory_dynamic_max": memory, "memory_static_max": memory, "memory_overhead": 0,
        "VCPUs_max": 1, "VCPUs_at_startup": 1, "is_a_template": False, **extra})


def error(fn, *args) -> list:
    with pytest.raises(ApiError) as info:
        fn(*args)
    return info.value.description


def test_starts_go_to_the_host_with_most_free_memory_and_reserve_it(rt):
    b = other_host(rt, memory=16 * GiB)
    first, second, third = (new_vm(rt, 6 * GiB) for _ in range(3))
    assert forwarding.target(rt, "VM.start", {"vm": first}) == b
    assert rt.cache.get("VM", first).values["scheduled_to_be_resident_on"] == b
    # B has 10 GiB left, this host 8: B again; then B has 4, this host 8.
    assert forwarding.target(rt, "VM.start", {"vm": second}) == b
    assert forwarding.target(rt, "VM.start", {"vm": third}) == rt.host_ref
    assert placement.free_memory(rt, b) == 4 * GiB
    placement.release(rt, first, b)
    assert placement.free_memory(rt, b) == 10 * GiB


def test_concurrent_starts_do_not_overcommit(rt):
    b = other_host(rt)
    vms = [new_vm(rt, 5 * GiB) for _ in range(2)]
    chosen = {}

    def start(vm):
        chosen[vm] = forwarding.target(rt, "VM.start", {"vm": vm}) or rt.host_ref

    threads = [threading.Thread(target=start, args=(vm,)) for vm in vms]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(chosen.values()) == sorted([rt.host_ref, b])


def test_assert_can_boot_here_errors_in_xapis_order(rt):
    dead = other_host(rt, live=False)
    disabled = other_host(rt, enabled=False)
    small = other_host(rt, memory=GiB // 2)
    vm = new_vm(rt)
    assert error(placement.assert_can_boot_here, rt, vm, dead) == ["HOST_NOT_LIVE"]
    assert error(placement.assert_can_boot_here, rt, vm, disabled) == ["HOST_DISABLED", disabled]
    assert error(placement.assert_can_boot_here, rt, vm, small) == \
        ["HOST_NOT_ENOUGH_FREE_MEMORY", str(GiB), str(GiB // 2)]
    assert sorted(placement.possible_hosts(rt, vm)) == [rt.host_ref]

    # A disk on this host's local SR: nowhere else.
    b = other_host(rt)
    (sr,) = [r.ref for r in rt.cache.rows("SR") if r.values["type"] == "file"]
    vdi, vbd = make_ref(), make_ref()
    with rt.db.write() as tx:
        tx.insert("VDI", vdi, {"uuid": make_uuid(), "SR": sr, "location": "x"})
        tx.insert("VBD", vbd, {"uuid": make_uuid(), "VM": vm, "VDI": vdi, "empty": False,
                               "userdevice": "0"})
    assert error(placement.assert_can_boot_here, rt, vm, b) == ["VM_REQUIRES_SR", vm, sr]
    # A network whose only PIF is on this host.
    net, pif, vif = make_ref(), make_ref(), make_ref()
    with rt.db.write() as tx:
        tx.insert("network", net, {"uuid": make_uuid(), "bridge": "xenbr9"})
        tx.insert("PIF", pif, {"uuid": make_uuid(), "network": net, "host": rt.host_ref,
                               "device": "eth9"})
        tx.insert("VIF", vif, {"uuid": make_uuid(), "VM": vm, "network": net, "device": "0"})
        tx.insert("PBD", make_ref(), {"uuid": make_uuid(), "SR": sr, "host": b,
                                      "currently_attached": True})
    assert error(placement.assert_can_boot_here, rt, vm, b) == ["VM_REQUIRES_NETWORK", vm, net]
    placement.assert_can_boot_here(rt, vm, rt.host_ref)
    assert error(forwarding.target, rt, "VM.start_on", {"vm": vm, "host": dead}) == \
        ["HOST_OFFLINE", dead]


def test_calls_for_a_dead_host_answer_host_offline(rt):
    dead = other_host(rt, live=False)
    vm = new_vm(rt)
    with rt.db.write() as tx:
        tx.update("VM", vm, {"power_state": "Running", "resident_on": dead})
    assert error(forwarding.target, rt, "VM.clean_shutdown", {"vm": vm}) == ["HOST_OFFLINE", dead]
    # Halted VMs and database-only calls stay where they arrived.
    halted = new_vm(rt)
    assert forwarding.target(rt, "VM.clean_shutdown", {"vm": halted}) is None
    assert forwarding.target(rt, "VM.set_name_label", {"self": vm, "value": "x"}) is None
    assert rt.cache.get("VM", halted).values["scheduled_to_be_resident_on"] == NULL_REF
