"""Two hosts, one pool: calls run on the host they belong to.

Host A (127.0.0.1) and host B (127.0.0.2) run the same daemon on the same
port, one PostgreSQL database and Redis, and a Celery worker each.  A is
master (first boot); B joins the pool database at its first boot.  Runs in
the PostgreSQL pass only: the pool needs PostgreSQL, and once is enough.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time

import pytest
import XenAPI

from tests import support

GiB = 1024 ** 3
NULL = "OpaqueRef:NULL"

pytestmark = pytest.mark.skipif(support.wanted_backend() != "postgresql",
                                reason="multi-host pool: run in the PostgreSQL pass")


@pytest.fixture(scope="module")
def pool():
    support.require_pool_services()
    url = support.create_pg_database()
    port = support.free_port()
    a = support.start_server(db_url=url, redis_url=support.REDIS_URL, port=port)
    b = support.start_server(db_url=url, redis_url=support.REDIS_URL, port=port,
                             listen_host="127.0.0.2", unix_socket="")
    # A worker reads its host's configuration (the same listen address as its server).
    workers = [support.start_worker(srv, redis_url=support.REDIS_URL) for srv in (a, b)]
    shared_dir = tempfile.mkdtemp(prefix="xapi-shared-sr-")
    yield a, b, shared_dir
    for worker in workers:
        worker.terminate()
    for worker in workers:
        worker.wait(20)
    b.stop(keep_state=bool(os.environ.get("XAPI_TEST_KEEP_STATE")))
    a.stop(keep_state=bool(os.environ.get("XAPI_TEST_KEEP_STATE")))
    shutil.rmtree(shared_dir, ignore_errors=True)
    support.drop_pg_database(url)


@pytest.fixture(scope="module")
def x(pool):
    a, _, _ = pool
    s = XenAPI.Session(a.url)
    s.login_with_password("root", support.ROOT_PASSWORD)
    yield s.xenapi
    s.logout()


@pytest.fixture(scope="module")
def hosts(x):
    by_address = {x.host.get_address(h): h for h in x.host.get_all()}
    deadline = time.monotonic() + 30
    while "127.0.0.2" not in by_address and time.monotonic() < deadline:
        time.sleep(0.2)
        by_address = {x.host.get_address(h): h for h in x.host.get_all()}
    return by_address["127.0.0.1"], by_address["127.0.0.2"]


def failure_of(fn, *args) -> list[str]:
    with pytest.raises(XenAPI.Failure) as info:
        fn(*args)
    return info.value.details


def diskless_vm(x, name: str, memory: int = 256 * 1024 ** 2) -> str:
    """A halted VM without disks (so any host can run it), made from the default template."""
    (tpl,) = [v for v in x.VM.get_all_records_where('field "is_default_template"="true"').values()
              if v["name_label"] == "Other install media"]
    record = {k: v for k, v in tpl.items() if k not in ("uuid", "VBDs", "VIFs")}
    record.update(name_label=name, is_a_template=False, other_config={},
                  memory_static_min=str(memory), memory_dynamic_min=str(memory),
                  memory_dynamic_max=str(memory), memory_static_max=str(memory))
    return x.VM.create(record)


def local_sr(x, host: str) -> str:
    for pbd in x.host.get_PBDs(host):
        sr = x.PBD.get_SR(pbd)
        if x.SR.get_type(sr) == "file" and not x.SR.get_shared(sr):
            return sr
    raise AssertionError("no local SR")


def disk_on(x, vm: str, sr: str, size: int = GiB) -> str:
    vdi = x.VDI.create({"SR": sr, "name_label": "disk", "name_description": "",
                        "virtual_size": str(size), "type": "user", "sharable": False,
                        "read_only": False, "other_config": {}})
    x.VBD.create({"VM": vm, "VDI": vdi, "userdevice": "0", "bootable": True, "mode": "RW",
                  "type": "Disk", "empty": False, "other_config": {},
                  "qos_algorithm_type": "", "qos_algorithm_params": {}})
    return vdi


def test_every_host_has_its_own_local_storage(x, hosts):
    a, b = hosts
    sr_a, sr_b = local_sr(x, a), local_sr(x, b)
    assert sr_a != sr_b
    for host, sr in ((a, sr_a), (b, sr_b)):
        (pbd,) = x.SR.get_PBDs(sr)
        assert x.PBD.get_host(pbd) == host and x.PBD.get_currently_attached(pbd)
    # A VDI made on B's local SR is made by B (its PBD is the only one).
    vdi = x.VDI.create({"SR": sr_b, "name_label": "on-b", "name_description": "",
                        "virtual_size": str(GiB), "type": "user", "sharable": False,
                        "read_only": False, "other_config": {}})
    assert x.VDI.get_SR(vdi) == sr_b
    x.SR.scan(sr_b)
    assert vdi in x.SR.get_VDIs(sr_b)
    x.VDI.destroy(vdi)


def test_starts_spread_by_free_memory_and_follow_resident_on(x, hosts):
    a, b = hosts
    vms = [diskless_vm(x, f"spread-{i}") for i in range(4)]
    for vm in vms:
        assert sorted(x.VM.get_possible_hosts(vm)) == sorted([a, b])
        x.VM.start(vm, False, False)
    placed = [x.VM.get_resident_on(vm) for vm in vms]
    assert sorted(placed) == sorted([a, a, b, b]), placed
    for vm in vms:
        assert x.VM.get_power_state(vm) == "Running" and int(x.VM.get_domid(vm)) > 0
        assert x.VM.get_scheduled_to_be_resident_on(vm) == NULL
    on_b = [vm for vm, host in zip(vms, placed) if host == b]
    # Operations of a VM on B run on B (a synchronous call leaves no task behind) …
    before = set(x.task.get_all())
    x.VM.pause(on_b[0])
    assert x.VM.get_power_state(on_b[0]) == "Paused"
    x.VM.unpause(on_b[0])
    x.VM.clean_shutdown(on_b[0])
    assert x.VM.get_power_state(on_b[0]) == "Halted"
    assert x.VM.get_resident_on(on_b[0]) == NULL
    assert set(x.task.get_all()) <= before
    # … and an Async one shows B as the task's host.
    task = x.Async.VM.hard_shutdown(on_b[1])
    assert x.task.get_resident_on(task) == b
    deadline = time.monotonic() + 30
    while x.task.get_status(task) == "pending" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert x.task.get_status(task) == "success", x.task.get_error_info(task)
    x.task.destroy(task)
    for vm in vms:
        if x.VM.get_power_state(vm) != "Halted":
            x.VM.hard_shutdown(vm)
        x.VM.destroy(vm)


def test_start_on_and_placement_errors(x, hosts):
    a, b = hosts
    vm = diskless_vm(x, "start-on")
    task = x.Async.VM.start_on(vm, b, False, False)
    assert x.task.get_resident_on(task) == b
    deadline = time.monotonic() + 30
    while x.task.get_status(task) == "pending" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert x.task.get_status(task) == "success", x.task.get_error_info(task)
    assert x.VM.get_resident_on(vm) == b
    x.VM.hard_shutdown(vm)

    # Disks on A's local SR: only A can run it.
    sr_a = local_sr(x, a)
    disk_on(x, vm, sr_a)
    assert x.VM.get_possible_hosts(vm) == [a]
    assert failure_of(x.VM.assert_can_boot_here, vm, b) == ["VM_REQUIRES_SR", vm, sr_a]
    assert failure_of(x.VM.start_on, vm, b, False, False) == ["VM_REQUIRES_SR", vm, sr_a]
    x.VM.assert_can_boot_here(vm, a)
    x.VM.start(vm, False, False)
    assert x.VM.get_resident_on(vm) == a
    x.VM.hard_shutdown(vm)

    # More memory than any host has.
    big = diskless_vm(x, "too-big", memory=4 * 1024 ** 4)
    error = failure_of(x.VM.assert_can_boot_here, big, b)
    assert error[0] == "HOST_NOT_ENOUGH_FREE_MEMORY" and int(error[1]) > int(error[2])
    assert x.VM.get_possible_hosts(big) == []
    assert failure_of(x.VM.start, big, False, False)[0] == "HOST_NOT_ENOUGH_FREE_MEMORY"
    assert x.VM.get_scheduled_to_be_resident_on(big) == NULL
    assert failure_of(x.VM.assert_can_boot_here, big, "OpaqueRef:nope") == \
        ["HANDLE_INVALID", "host", "OpaqueRef:nope"]
    x.VM.destroy(big)
    for vbd in x.VM.get_VBDs(vm):
        vdi = x.VBD.get_VDI(vbd)
        x.VBD.destroy(vbd)
        x.VDI.destroy(vdi)
    x.VM.destroy(vm)


def test_shared_sr_and_pool_migrate(x, hosts, pool):
    a, b = hosts
    _, _, shared_dir = pool
    sr = x.SR.create(a, {"path": shared_dir}, "0", "shared", "", "file", "user", True, {})
    pbds = {x.PBD.get_host(p): p for p in x.SR.get_PBDs(sr)}
    assert set(pbds) == {a, b}
    assert all(x.PBD.get_currently_attached(p) for p in pbds.values())

    vm = diskless_vm(x, "migrant")
    vdi = disk_on(x, vm, sr)
    assert sorted(x.VM.get_possible_hosts(vm)) == sorted([a, b])
    x.VM.start_on(vm, a, False, False)
    assert x.VM.get_resident_on(vm) == a

    x.VM.pool_migrate(vm, b, {})
    assert x.VM.get_resident_on(vm) == b
    assert x.VM.get_power_state(vm) == "Running"
    assert x.VM.get_scheduled_to_be_resident_on(vm) == NULL
    assert int(x.VM.get_domid(vm)) > 0
    # B now runs the VM: its operations go there, and its disk is active there.
    x.VM.pause(vm)
    assert x.VM.get_power_state(vm) == "Paused"
    x.VM.unpause(vm)

    x.VM.pool_migrate(vm, a, {})
    assert x.VM.get_resident_on(vm) == a and x.VM.get_power_state(vm) == "Running"
    assert int(x.VM.get_domid(vm)) > 0  # a domain of A's simulator again
    x.VM.clean_shutdown(vm)
    assert x.VM.get_power_state(vm) == "Halted"
    x.VM.destroy(vm)
    x.VDI.destroy(vdi)
    assert os.path.isdir(shared_dir)
