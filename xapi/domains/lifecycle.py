"""VM, VBD and VIF lifecycle operations turned into xenopsd calls, as xapi_xenops does.

Each function runs inside ``operations.run_operation`` (the caller's job):
it pushes the metadata xenopsd needs, queues the xenopsd operation, waits
for its task (bound to the XenAPI task: progress, cancel, errors), and then
waits on a barrier until the queue's watcher has written the new state back.
"""

from __future__ import annotations

from typing import Any

from xapi import operations
from xapi.backends.xenops.client import XenopsError, XenopsUnavailable
from xapi.context import Context
from xapi.errors import ApiError
from xapi.idl.types import NULL_REF

from xapi.pool import placement
from xapi.storage import datapath

from . import metadata

# How long a clean shutdown or reboot may take before xenopsd gives up (xapi's default).
CLEAN_SHUTDOWN_TIMEOUT = 1200.0


def _vm(ctx: Context, ref: str) -> dict[str, Any]:
    row = ctx.rt.cache.get("VM", ref)
    if row is None:
        raise ApiError("HANDLE_INVALID", "VM", ref)
    return row.values


def _domains(ctx: Context):
    domains = ctx.rt.domains
    if domains is None:
        raise ApiError("INTERNAL_ERROR", "no xenopsd is configured on this host")
    return domains


def _unreachable(queue: str) -> ApiError:
    return ApiError("INTERNAL_ERROR", f"xenopsd queue {queue} is unreachable")


def _call(ctx: Context, vm_ref: str, queue: str, fn, *args):
    """A xenopsd call whose errors read as xapi's."""
    try:
        return fn(*args)
    except XenopsError as exc:
        raise _domains(ctx).api_error(exc, vm_ref, queue) from None
    except XenopsUnavailable:
        raise _unreachable(queue) from None


def _run(ctx: Context, vm_ref: str, queue: str, task_id: str, cancellable: bool = True):
    try:
        return _domains(ctx).run_task(ctx, queue, task_id, vm_ref, cancellable=cancellable)
    except XenopsUnavailable:
        raise _unreachable(queue) from None


# -- disks ------------------------------------------------------------------------------------


def _disk_vbds(ctx: Context, vm_ref: str) -> list[tuple[str, dict[str, Any]]]:
    cache = ctx.rt.cache
    out = []
    for ref in cache.derived("VM", "VBDs", vm_ref):
        row = cache.get("VBD", ref)
        if row and not row.values["empty"] and row.values["VDI"] != NULL_REF:
            out.append((ref, row.values))
    return out


def activate_disk(ctx: Context, vm: dict[str, Any], vbd: dict[str, Any]) -> None:
    """Attach and activate a VBD's VDI for the VM; remember the path xenopsd will get."""
    rt = ctx.rt
    if rt.storage is None:
        return
    vdi = rt.cache.get("VDI", vbd["VDI"])
    read_write = vbd["mode"] == "RW" and not (vdi and vdi.values["read_only"])
    backend = datapath.activate(rt, vbd["VDI"], vm["uuid"], read_write)
    path = datapath.local_path(backend)
    if path:
        rt.extra.setdefault("disk_paths", {})[(vm["uuid"], vbd["VDI"])] = path


def release_disk(ctx: Context, vm_uuid: str, vdi_ref: str) -> None:
    rt = ctx.rt
    if rt.storage is None or rt.cache.get("VDI", vdi_ref) is None:
        return
    rt.extra.setdefault("disk_paths", {}).pop((vm_uuid, vdi_ref), None)
    datapath.release(rt, vdi_ref, vm_uuid, quiet=True)


def release_disks(ctx: Context, vm_ref: str) -> None:
    """Deactivate and detach every disk of a VM that stopped running (or is suspended)."""
    row = ctx.rt.cache.get("VM", vm_ref)
    if row is None:
        return
    for _, vbd in _disk_vbds(ctx, vm_ref):
        release_disk(ctx, row.values["uuid"], vbd["VDI"])


def _activate_disks(ctx: Context, vm_ref: str, vm: dict[str, Any]) -> None:
    done = []
    try:
        for _, vbd in _disk_vbds(ctx, vm_ref):
            activate_disk(ctx, vm, vbd)
            done.append(vbd["VDI"])
    except BaseException:
        for vdi in done:
            release_disk(ctx, vm["uuid"], vdi)
        raise


# -- checks before a start ---------------------------------------------------------------


def assert_can_boot(ctx: Context, vm_ref: str, vm: dict[str, Any], host_ref: str) -> None:
    """The VM's limits and the host's memory; the VM's own reservation is not counted."""
    placement.validate_basic(vm)
    needed = placement.memory_needed(vm)
    free = placement.free_memory(ctx.rt, host_ref, exclude_vm=vm_ref)
    if needed > free:
        raise ApiError("HOST_NOT_ENOUGH_FREE_MEMORY", needed, free)


# -- VM ------------------------------------------------------------------------------------


def claim_start(ctx: Context, tx, vm_ref: str, host_ref: str) -> None:
    """Check and claim in one transaction (the one marking the start): concurrent
    starts see each other's claims."""
    vm = _vm(ctx, vm_ref)
    assert_can_boot(ctx, vm_ref, vm, host_ref)
    tx.update("VM", vm_ref, {"scheduled_to_be_resident_on": host_ref})
    vbds, vifs = tx.related("VM", vm_ref, "VBDs"), tx.related("VM", vm_ref, "VIFs")
    tx.lock_rows({"VBD": vbds, "VIF": vifs})  # their updates then wait for the commit
    for vbd in vbds:
        values = tx.get("VBD", vbd)
        if not values["empty"] and values["VDI"] != NULL_REF:
            tx.update("VBD", vbd, {"currently_attached": True})
    for vif in vifs:
        tx.update("VIF", vif, {"currently_attached": True})


def settle_start(tx, vm_ref: str, host_ref: str) -> None:
    """The started VM lives here now (written with the unmarking)."""
    if tx.exists("VM", vm_ref):
        tx.update("VM", vm_ref, {"resident_on": host_ref, "scheduled_to_be_resident_on": NULL_REF})


def start(ctx: Context, vm_ref: str, paused: bool, force: bool, host_ref: str | None = None) -> None:
    """Run as ``run_operation(..., claim=claim_start, settle=settle_start)`` (impl/vm.py)."""
    rt = ctx.rt
    domains = _domains(ctx)
    vm = _vm(ctx, vm_ref)
    queue = domains.queue_of(vm)
    client = domains.clients[queue]
    uuid = vm["uuid"]
    try:
        _activate_disks(ctx, vm_ref, vm)
        _call(ctx, vm_ref, queue, client.vm_import_metadata, metadata.metadata(rt.cache, vm_ref, _paths(ctx)))
        started = _call(ctx, vm_ref, queue, client.vm_start, uuid, force)
        unpause = None if paused else _call(ctx, vm_ref, queue, client.vm_unpause, uuid)
        try:
            _run(ctx, vm_ref, queue, started)
        except ApiError:
            if unpause is not None:
                try:
                    _run(ctx, vm_ref, queue, unpause)
                except ApiError:
                    pass
            raise
        if unpause is not None:
            _run(ctx, vm_ref, queue, unpause)
    except BaseException:
        _abandon_start(ctx, vm_ref, queue, uuid)
        raise
    domains.refresh(queue, uuid, followed=True)


def _paths(ctx: Context) -> dict:
    return ctx.rt.extra.setdefault("disk_paths", {})


def _abandon_start(ctx: Context, vm_ref: str, queue: str, uuid: str) -> None:
    """Leave a VM whose start failed (or was cancelled) cleanly halted, in xenopsd and here.

    The start and unpause xapi queued may still run in xenopsd's per-VM queue;
    a shutdown queued behind them ends whatever they made.  The watcher is
    then waited for, so the database shows the outcome before the call ends.
    """
    release_disks(ctx, vm_ref)
    domains = _domains(ctx)
    client = domains.clients[queue]
    try:
        task = client.vm_shutdown(uuid, None)
        client.wait_task(task, 60)
        client.task_destroy(task)
    except Exception:
        pass  # nothing to shut down, or xenopsd is unreachable: the resync settles it
    try:
        client.vm_remove(uuid)
        domains.sync(queue, uuid, timeout=10)
    except Exception:
        pass
    with ctx.rt.db.write() as tx:
        if not tx.exists("VM", vm_ref):
            return
        tx.update("VM", vm_ref, {"power_state": "Halted", "resident_on": NULL_REF, "domid": -1,
                                 "scheduled_to_be_resident_on": NULL_REF})
        for cls in ("VBD", "VIF"):
            for dev in tx.refs_where(cls, VM=vm_ref, currently_attached=True):
                tx.update(cls, dev, {"currently_attached": False})
    operations.refresh_vm_and_devices(ctx.rt, vm_ref)


def _simple(ctx: Context, vm_ref: str, call: str, *args, expect: tuple[str, ...] = (),
            cancellable: bool = True) -> None:
    domains = _domains(ctx)
    vm = _vm(ctx, vm_ref)
    queue = domains.queue_of(vm)
    client = domains.clients[queue]
    task = _call(ctx, vm_ref, queue, getattr(client, call), vm["uuid"], *args)
    _run(ctx, vm_ref, queue, task, cancellable=cancellable)
    domains.sync(queue, vm["uuid"])
    power = _vm(ctx, vm_ref)["power_state"]
    if expect and power not in expect:
        raise ApiError("INTERNAL_ERROR", f"VM is {power} after {call}, expected {'/'.join(expect)}")


def clean_shutdown(ctx: Context, vm_ref: str) -> None:
    _simple(ctx, vm_ref, "vm_shutdown", CLEAN_SHUTDOWN_TIMEOUT, expect=("Halted",))


def hard_shutdown(ctx: Context, vm_ref: str) -> None:
    _simple(ctx, vm_ref, "vm_shutdown", None, expect=("Halted",))


def clean_reboot(ctx: Context, vm_ref: str) -> None:
    _simple(ctx, vm_ref, "vm_reboot", CLEAN_SHUTDOWN_TIMEOUT, expect=("Running",))


def hard_reboot(ctx: Context, vm_ref: str) -> None:
    _simple(ctx, vm_ref, "vm_reboot", None, expect=("Running", "Paused"))


def pause(ctx: Context, vm_ref: str) -> None:
    _simple(ctx, vm_ref, "vm_pause", expect=("Paused",))


def unpause(ctx: Context, vm_ref: str) -> None:
    _simple(ctx, vm_ref, "vm_unpause", expect=("Running",))


def suspend_disk(ctx: Context, vm: dict[str, Any]) -> Any:
    """Where the suspend image goes: the suspend VDI once storage exists, else a local file."""
    vdi = vm.get("suspend_VDI", NULL_REF)
    disk = metadata.disk_of_vdi(ctx.rt.cache, vdi) if vdi != NULL_REF else None
    if disk is not None:
        return disk
    import os

    return ["Local", os.path.join(os.path.abspath(ctx.rt.config.state_dir), "suspend", vm["uuid"])]


def suspend(ctx: Context, vm_ref: str) -> None:
    vm = _vm(ctx, vm_ref)
    _simple(ctx, vm_ref, "vm_suspend", suspend_disk(ctx, vm), expect=("Suspended",),
            cancellable=False)


def resume(ctx: Context, vm_ref: str, paused: bool, force: bool) -> None:
    rt = ctx.rt
    domains = _domains(ctx)
    vm = _vm(ctx, vm_ref)
    queue = domains.queue_of(vm)
    client = domains.clients[queue]
    uuid = vm["uuid"]
    with rt.db.write() as tx:
        tx.update("VM", vm_ref, {"resident_on": rt.host_ref})
    _activate_disks(ctx, vm_ref, vm)
    _call(ctx, vm_ref, queue, client.vm_import_metadata, metadata.metadata(rt.cache, vm_ref, _paths(ctx)))
    task = _call(ctx, vm_ref, queue, client.vm_resume, uuid, suspend_disk(ctx, vm))
    _run(ctx, vm_ref, queue, task)
    if not paused:
        _run(ctx, vm_ref, queue, _call(ctx, vm_ref, queue, client.vm_unpause, uuid))
    domains.refresh(queue, uuid, followed=True)


def pool_migrate(ctx: Context, vm_ref: str, host_ref: str, options: dict[str, str]) -> None:
    rt = ctx.rt
    if host_ref != rt.host_ref:
        from .migration import migrate_to

        return migrate_to(ctx, vm_ref, host_ref)
    domains = _domains(ctx)
    vm = _vm(ctx, vm_ref)
    queue = domains.queue_of(vm)
    client = domains.clients[queue]
    task = _call(ctx, vm_ref, queue, lambda: client.vm_migrate(vm["uuid"], "", localhost_migration=True))
    _run(ctx, vm_ref, queue, task)
    domains.refresh(queue, vm["uuid"])


# -- devices --------------------------------------------------------------------------------


def _device_vm(ctx: Context, cls: str, ref: str) -> tuple[dict, str, dict]:
    row = ctx.rt.cache.get(cls, ref)
    if row is None:
        raise ApiError("HANDLE_INVALID", cls, ref)
    vm_ref = row.values["VM"]
    return row.values, vm_ref, _vm(ctx, vm_ref)


def vbd_plug(ctx: Context, vbd_ref: str) -> None:
    rt = ctx.rt
    domains = _domains(ctx)
    vbd, vm_ref, vm = _device_vm(ctx, "VBD", vbd_ref)
    queue = domains.queue_of(vm)
    client = domains.clients[queue]
    with rt.db.write() as tx:
        tx.update("VBD", vbd_ref, {"currently_attached": True})
    vbd = rt.cache.get("VBD", vbd_ref).values
    try:
        if not vbd["empty"] and vbd["VDI"] != NULL_REF:
            activate_disk(ctx, vm, vbd)
        ident = _call(ctx, vm_ref, queue, client.vbd_add,
                      metadata.vbd_t(rt.cache, vm["uuid"], vbd, _paths(ctx)))
        _run(ctx, vm_ref, queue, _call(ctx, vm_ref, queue, client.vbd_plug, ident))
    except BaseException:
        with rt.db.write() as tx:
            tx.update("VBD", vbd_ref, {"currently_attached": False})
        if vbd["VDI"] != NULL_REF:
            release_disk(ctx, vm["uuid"], vbd["VDI"])
        raise
    domains.sync(queue, vm["uuid"])


def vbd_unplug(ctx: Context, vbd_ref: str, force: bool = False) -> None:
    domains = _domains(ctx)
    vbd, vm_ref, vm = _device_vm(ctx, "VBD", vbd_ref)
    queue = domains.queue_of(vm)
    client = domains.clients[queue]
    ident = [vm["uuid"], metadata.linux_device(vbd["userdevice"])]
    try:
        task = client.vbd_unplug(ident, force)
    except XenopsError as exc:
        if exc.name != "Does_not_exist":
            raise domains.api_error(exc, vm_ref, queue) from None
        with ctx.rt.db.write() as tx:
            tx.update("VBD", vbd_ref, {"currently_attached": False})
        return
    _run(ctx, vm_ref, queue, task)
    domains.sync(queue, vm["uuid"])
    if vbd["VDI"] != NULL_REF:
        release_disk(ctx, vm["uuid"], vbd["VDI"])


def vbd_eject(ctx: Context, vbd_ref: str) -> None:
    rt = ctx.rt
    domains = _domains(ctx)
    vbd, vm_ref, vm = _device_vm(ctx, "VBD", vbd_ref)
    if vbd["currently_attached"] and vm["power_state"] == "Running":
        queue = domains.queue_of(vm)
        client = domains.clients[queue]
        ident = [vm["uuid"], metadata.linux_device(vbd["userdevice"])]
        _run(ctx, vm_ref, queue, _call(ctx, vm_ref, queue, client.vbd_eject, ident))
    with rt.db.write() as tx:
        tx.update("VBD", vbd_ref, {"empty": True, "VDI": NULL_REF})


def vbd_insert(ctx: Context, vbd_ref: str, vdi_ref: str) -> None:
    rt = ctx.rt
    domains = _domains(ctx)
    vbd, vm_ref, vm = _device_vm(ctx, "VBD", vbd_ref)
    if rt.cache.get("VDI", vdi_ref) is None:
        raise ApiError("HANDLE_INVALID", "VDI", vdi_ref)
    if vbd["currently_attached"] and vm["power_state"] == "Running":
        queue = domains.queue_of(vm)
        client = domains.clients[queue]
        ident = [vm["uuid"], metadata.linux_device(vbd["userdevice"])]
        disk = metadata.disk_of_vdi(rt.cache, vdi_ref)
        _run(ctx, vm_ref, queue, _call(ctx, vm_ref, queue, client.vbd_insert, ident, disk))
    with rt.db.write() as tx:
        tx.update("VBD", vbd_ref, {"empty": False, "VDI": vdi_ref})


def vif_plug(ctx: Context, vif_ref: str) -> None:
    rt = ctx.rt
    domains = _domains(ctx)
    vif, vm_ref, vm = _device_vm(ctx, "VIF", vif_ref)
    queue = domains.queue_of(vm)
    client = domains.clients[queue]
    with rt.db.write() as tx:
        tx.update("VIF", vif_ref, {"currently_attached": True})
    vif = rt.cache.get("VIF", vif_ref).values
    try:
        ident = _call(ctx, vm_ref, queue, client.vif_add, metadata.vif_t(rt.cache, vm["uuid"], vif))
        _run(ctx, vm_ref, queue, _call(ctx, vm_ref, queue, client.vif_plug, ident))
    except BaseException:
        with rt.db.write() as tx:
            tx.update("VIF", vif_ref, {"currently_attached": False})
        raise
    domains.sync(queue, vm["uuid"])


def vif_unplug(ctx: Context, vif_ref: str, force: bool = False) -> None:
    domains = _domains(ctx)
    vif, vm_ref, vm = _device_vm(ctx, "VIF", vif_ref)
    queue = domains.queue_of(vm)
    client = domains.clients[queue]
    try:
        task = client.vif_unplug([vm["uuid"], vif["device"]], force)
    except XenopsError as exc:
        if exc.name != "Does_not_exist":
            raise domains.api_error(exc, vm_ref, queue) from None
        with ctx.rt.db.write() as tx:
            tx.update("VIF", vif_ref, {"currently_attached": False})
        return
    _run(ctx, vm_ref, queue, task)
    domains.sync(queue, vm["uuid"])
