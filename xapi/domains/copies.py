"""VM records made, copied and removed: create, clone, copy, snapshot, revert, provision, destroy.

Configuration and devices are copied in the database; disks go through the
storage layer: clone makes copy-on-write clones (VDI.clone), copy copies the
bytes (VDI.copy), snapshot snapshots each disk (VDI.snapshot), revert gives
the VM clones of the snapshot's disks, and provision creates the disks a
template's ``other_config:disks`` describes.  A disk made before a failure is
removed again, so an operation leaves all of its disks or none.
"""

from __future__ import annotations

import random
import xml.etree.ElementTree as ET
from typing import Any, Callable

from xapi import operations
from xapi.context import Context, now
from xapi.errors import ApiError
from xapi.idl.types import NULL_REF
from xapi.refs import make_ref, make_uuid

from . import lifecycle

# Fields that describe the running instance or the object's identity, not its
# configuration: never carried over by clone, copy, snapshot or revert.
_INSTANCE_FIELDS = frozenset((
    "uuid", "allowed_operations", "current_operations", "power_state", "resident_on",
    "scheduled_to_be_resident_on", "domid", "metrics", "guest_metrics", "is_a_snapshot",
    "snapshot_of", "snapshot_time", "snapshot_info", "snapshot_metadata", "transportable_snapshot_id",
    "is_default_template", "parent", "requires_reboot", "attached_PCIs", "suspend_VDI",
    "last_booted_record", "blobs", "is_vmss_snapshot", "is_snapshot_from_vmpp",
))


def random_mac() -> str:
    """A locally administered unicast MAC, as xapi generates for VIFs."""
    octets = [random.randrange(256) for _ in range(6)]
    octets[0] = (octets[0] & 0xFC) | 0x02
    return ":".join(f"{o:02x}" for o in octets)


def _new_metrics(tx) -> str:
    ref = make_ref()
    tx.insert("VM_metrics", ref, {"uuid": make_uuid(), "last_updated": now()})
    return ref


def create(ctx: Context, values: dict[str, Any]) -> str:
    """VM.create: the given configuration, halted, with its own metrics record."""
    ref = make_ref()
    with ctx.rt.db.write() as tx:
        tx.insert("VM", ref, {
            **values,
            "uuid": make_uuid(),
            "power_state": "Halted" if values.get("power_state") != "Suspended" else "Suspended",
            "domid": -1,
            "metrics": _new_metrics(tx),
        })
    operations.refresh_allowed(ctx.rt, "VM", ref)
    return ref


def destroy(ctx: Context, vm_ref: str) -> None:
    """VM.destroy: the VM and what only it uses (devices, consoles, metrics); not its disks."""
    with ctx.rt.db.write() as tx:
        vm = tx.must_get("VM", vm_ref)
        for cls in ("VBD", "VIF", "console", "VTPM", "VUSB", "VGPU"):
            if cls in ctx.rt.cache.classes:
                for dev in tx.refs_where(cls, VM=vm_ref):
                    tx.delete(cls, dev)
        for cls, field in (("VM_metrics", "metrics"), ("VM_guest_metrics", "guest_metrics")):
            if vm[field] != NULL_REF and tx.exists(cls, vm[field]):
                tx.delete(cls, vm[field])
        tx.delete("VM", vm_ref)


def _disk_vdis(ctx: Context, vm_ref: str) -> list[str]:
    """The VDIs of a VM's disk VBDs (not CDs)."""
    cache = ctx.rt.cache
    out = []
    for vbd in cache.derived("VM", "VBDs", vm_ref):
        v = cache.get("VBD", vbd).values
        if v["VDI"] != NULL_REF and v["type"] != "CD" and cache.get("VDI", v["VDI"]) is not None:
            out.append(v["VDI"])
    return out


def _storage_ops():
    from xapi.impl import storage

    return storage


def _new_disks(ctx: Context, vdis: list[str], action: Callable[[str], str | None]) -> dict[str, str | None]:
    """Old VDI → new VDI (or None to leave the disk out); made disks are removed on failure."""
    made: dict[str, str | None] = {}
    try:
        for vdi in vdis:
            made[vdi] = action(vdi)
    except BaseException:
        for new in made.values():
            if new is not None:
                try:
                    _storage_ops().destroy_vdi(ctx, new)
                except ApiError:
                    pass
        raise
    return made


def _copy_devices(tx, src_ref: str, dst_ref: str, disks: dict[str, str | None]) -> None:
    for vbd in tx.refs_where("VBD", VM=src_ref):
        v = tx.get("VBD", vbd)
        vdi = v["VDI"]
        if vdi in disks:
            if disks[vdi] is None:
                continue
            vdi = disks[vdi]
        tx.insert("VBD", make_ref(), {
            **{k: v[k] for k in v if k not in ("uuid", "current_operations", "allowed_operations",
                                              "currently_attached", "metrics", "device")},
            "uuid": make_uuid(), "VM": dst_ref, "VDI": vdi, "currently_attached": False,
        })
    for vif in tx.refs_where("VIF", VM=src_ref):
        v = tx.get("VIF", vif)
        tx.insert("VIF", make_ref(), {
            **{k: v[k] for k in v if k not in ("uuid", "current_operations", "allowed_operations",
                                              "currently_attached", "metrics", "MAC")},
            "uuid": make_uuid(), "VM": dst_ref, "currently_attached": False,
            "MAC": random_mac(), "MAC_autogenerated": True,
        })


def _copy_vm(ctx: Context, src_ref: str, extra: dict[str, Any],
             disk_action: Callable[[str], str | None]) -> str:
    """A new VM with the source's configuration and devices; each disk through ``disk_action``."""
    disks = _new_disks(ctx, _disk_vdis(ctx, src_ref), disk_action)
    ref = make_ref()
    with ctx.rt.db.write() as tx:
        src = tx.must_get("VM", src_ref)
        values = {k: v for k, v in src.items() if k not in _INSTANCE_FIELDS}
        values.update(uuid=make_uuid(), power_state="Halted", domid=-1, metrics=_new_metrics(tx))
        values.update(extra)
        tx.insert("VM", ref, values)
        _copy_devices(tx, src_ref, ref, disks)
    operations.refresh_allowed(ctx.rt, "VM", ref)
    for vbd in ctx.rt.cache.derived("VM", "VBDs", ref):
        operations.refresh_allowed(ctx.rt, "VBD", vbd)
    return ref


def clone(ctx: Context, vm_ref: str, new_name: str) -> str:
    """Fast clone: copy-on-write clones of the disks (VDI.clone)."""
    return _copy_vm(ctx, vm_ref, {"name_label": new_name},
                    lambda vdi: _storage_ops().clone_vdi(ctx, vdi))


def copy(ctx: Context, vm_ref: str, new_name: str, sr_ref: str) -> str:
    """Full copy: every disk's bytes into a new VDI, on ``sr_ref`` or the disk's own SR."""
    if sr_ref != NULL_REF and ctx.rt.cache.get("SR", sr_ref) is None:
        raise ApiError("HANDLE_INVALID", "SR", sr_ref)
    from xapi.storage import copy as vdi_copy

    return _copy_vm(ctx, vm_ref, {"name_label": new_name},
                    lambda vdi: vdi_copy.copy(ctx, vdi, sr_ref, NULL_REF))


def snapshot(ctx: Context, vm_ref: str, new_name: str, ignore_vdis: list[str]) -> str:
    src = ctx.rt.cache.get("VM", vm_ref).values
    ignored = set(ignore_vdis)
    return _copy_vm(ctx, vm_ref, {
        "name_label": new_name,
        "is_a_template": True,
        "is_a_snapshot": True,
        "snapshot_of": vm_ref,
        "snapshot_time": now(),
        "transportable_snapshot_id": make_uuid(),
        "is_default_template": False,
        "other_config": {k: v for k, v in src["other_config"].items() if k != "default_template"},
    }, lambda vdi: None if vdi in ignored else _storage_ops().snapshot_vdi(ctx, vdi))


def revert(ctx: Context, snapshot_ref: str) -> None:
    """VM.revert: the snapshot's configuration and disks back onto its VM, halted.

    The VM gets clones of the snapshot's disks; the disks it had are destroyed.
    """
    rt = ctx.rt
    snap = rt.cache.get("VM", snapshot_ref).values
    vm_ref = snap["snapshot_of"]
    if rt.cache.get("VM", vm_ref) is None:
        raise ApiError("VM_REVERT_FAILED", snapshot_ref, vm_ref)
    if rt.cache.get("VM", vm_ref).values["power_state"] != "Halted":
        lifecycle.hard_shutdown(ctx, vm_ref)
    old_disks = _disk_vdis(ctx, vm_ref)
    disks = _new_disks(ctx, _disk_vdis(ctx, snapshot_ref),
                       lambda vdi: _storage_ops().clone_vdi(ctx, vdi))
    with rt.db.write() as tx:
        keep = {"name_label", "name_description", "is_a_template", "other_config", "tags"}
        values = {k: v for k, v in snap.items() if k not in _INSTANCE_FIELDS and k not in keep}
        values.update(is_a_template=False)
        tx.update("VM", vm_ref, values)
        for cls in ("VBD", "VIF"):
            for dev in tx.refs_where(cls, VM=vm_ref):
                tx.delete(cls, dev)
        _copy_devices(tx, snapshot_ref, vm_ref, disks)
    for vdi in old_disks:
        try:
            _storage_ops().destroy_vdi(ctx, vdi)
        except ApiError:
            pass  # still used elsewhere: left for the administrator
    operations.refresh_vm_and_devices(rt, vm_ref)


def provision_spec(other_config: dict[str, str]) -> list[dict[str, str]]:
    """The disks of a template's ``other_config:disks`` (``<provision><disk …/></provision>``)."""
    text = other_config.get("disks", "")
    if not text.strip():
        return []
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise ApiError("INVALID_VALUE", "other_config:disks", str(exc)) from None
    return [dict(disk.attrib) for disk in root.iter("disk")]


def provision(ctx: Context, vm_ref: str) -> None:
    """The template's ``other_config:disks`` made real: a VDI and a VBD per disk.

    The VM stops being a template first, as in xapi.  A disk's ``sr`` is an SR
    uuid; empty means the pool's default SR.  The ``disks`` key is removed
    once done, so a VM is provisioned once.
    """
    rt = ctx.rt
    with rt.db.write() as tx:  # as xapi: provisioning makes the template a VM first
        tx.update("VM", vm_ref, {"is_a_template": False})
    vm = rt.cache.get("VM", vm_ref).values
    spec = provision_spec(vm["other_config"])
    default_sr = rt.cache.get("pool", rt.pool_ref).values["default_SR"] if rt.pool_ref != NULL_REF else NULL_REF
    made = []
    try:
        for disk in spec:
            sr = rt.cache.ref_by_uuid("SR", disk.get("sr", "")) if disk.get("sr") else default_sr
            if disk.get("sr") and sr is None:
                raise ApiError("UUID_INVALID", "SR", disk["sr"])
            if not sr or rt.cache.get("SR", sr) is None:
                raise ApiError("DEFAULT_SR_NOT_FOUND", default_sr)
            vdi = _storage_ops().create_vdi(ctx, {
                "SR": sr, "name_label": f"{vm['name_label']} {disk.get('device', '0')}",
                "name_description": "Created by template provisioner",
                "virtual_size": int(disk.get("size", 0)), "type": disk.get("type", "system"),
                "sharable": False, "read_only": False, "other_config": {},
            })
            made.append(vdi)
            with rt.db.write() as tx:
                tx.insert("VBD", make_ref(), {
                    "uuid": make_uuid(), "VM": vm_ref, "VDI": vdi,
                    "userdevice": disk.get("device", "0"),
                    "bootable": disk.get("bootable", "false").lower() == "true",
                    "mode": "RW", "type": "Disk", "empty": False, "unpluggable": True,
                    "other_config": {"owner": "true"},
                })
    except BaseException:
        for vdi in made:
            try:
                _storage_ops().destroy_vdi(ctx, vdi)
            except ApiError:
                pass
        raise
    if spec:
        with rt.db.write() as tx:
            other = dict(tx.must_get("VM", vm_ref, for_update=True)["other_config"])
            other.pop("disks", None)
            tx.update("VM", vm_ref, {"other_config": other})


def power_state_reset(ctx: Context, vm_ref: str) -> None:
    """xapi's VM.power_state_reset: declare the VM halted without xenopsd's say-so.

    Meant for VMs of a host that died.  Refused for control domains; for a
    running or paused VM, refused while xenopsd here still runs it
    (DOMAIN_EXISTS) or while the host it is resident on is alive (HOST_IS_LIVE:
    that host manages the VM).  Not an operation on the VM (no
    current_operations entry): it clears whatever a dead host left there.
    """
    from xapi.pool import liveness

    rt = ctx.rt
    row = rt.cache.get("VM", vm_ref)
    if row is None:
        raise ApiError("HANDLE_INVALID", "VM", vm_ref)
    vm = row.values
    if vm["is_control_domain"]:
        raise ApiError("CANNOT_RESET_CONTROL_DOMAIN", vm_ref)
    resident = vm["resident_on"]
    if vm["power_state"] in ("Running", "Paused"):
        if resident == rt.host_ref:
            if _xenopsd_runs(rt, vm):
                raise ApiError("DOMAIN_EXISTS", vm_ref)
        elif resident != NULL_REF and liveness.is_host_alive(rt, resident):
            raise ApiError("HOST_IS_LIVE", resident)
    with rt.db.write() as tx:
        tx.update("VM", vm_ref, {"power_state": "Halted", "resident_on": NULL_REF, "domid": -1,
                                 "scheduled_to_be_resident_on": NULL_REF,
                                 "requires_reboot": False, "current_operations": {}})
        for cls in ("VBD", "VIF"):
            for dev in tx.refs_where(cls, VM=vm_ref):
                changes = {"current_operations": {}}
                if tx.get(cls, dev)["currently_attached"]:
                    changes["currently_attached"] = False
                tx.update(cls, dev, changes)
    operations.refresh_vm_and_devices(rt, vm_ref)


def _xenopsd_runs(rt, vm: dict) -> bool:
    """Whether this host's xenopsd runs the VM; forgets its metadata when it does not."""
    if rt.domains is None:
        return False
    client = rt.domains.client_of(vm)
    try:
        _, state = client.vm_stat(vm["uuid"])
    except Exception:  # unknown to xenopsd, or xenopsd away: not running here
        return False
    if state.get("power_state") == "Running":
        return True
    try:
        client.vm_remove(vm["uuid"])
    except Exception:
        pass
    return False