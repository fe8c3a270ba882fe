"""Which host must run a call: xapi's message_forwarding.ml, decided per message.

``target(rt, wire, args)`` answers the host that runs the call, or None
for "wherever it arrived" (database-only calls, VMs that are not running).

- VM operations on a running or paused VM go to its ``resident_on``
  (``forward_vm_op``); so do device plug/unplug/insert/eject of such a VM.
- VM.start/resume choose a host by free memory among the live, enabled hosts
  that can reach the VM's SRs and networks, and reserve the memory there
  (``scheduled_to_be_resident_on``) before forwarding; start_on/resume_on
  check and reserve the host given.
- Storage calls go to a host with a plugged PBD of the SR; for a shared SR
  this host first if it qualifies (``choose_pbds_for_sr``).
- PBD.plug/unplug go to the PBD's host; SR.create to its ``host`` argument.

A chosen host that is not live answers HOST_OFFLINE [host].
"""

from __future__ import annotations

from typing import Any, Callable

from xapi.context import Runtime
from xapi.errors import ApiError
from xapi.idl.types import NULL_REF

from . import placement, roles

RUNNING = ("Running", "Paused")

# VM messages that run where the VM runs (when it runs).
_VM_RESIDENT = frozenset((
    "clean_shutdown", "hard_shutdown", "clean_reboot", "hard_reboot", "suspend", "pause",
    "unpause", "pool_migrate", "checkpoint", "snapshot", "snapshot_with_quiesce",
))
# VM messages that work on the VM's disks when it does not run.
_VM_STORAGE = frozenset(("clone", "copy", "snapshot", "provision", "revert", "checkpoint"))
_DEVICE = frozenset(("plug", "unplug", "unplug_force", "insert", "eject"))
_SR_STORAGE = frozenset(("scan", "update", "set_name_label", "set_name_description",
                         "destroy", "probe"))
_VDI_STORAGE = frozenset(("destroy", "snapshot", "clone", "resize", "resize_online", "copy",
                          "update", "set_name_label", "set_name_description"))


_VM_PLACED = frozenset(("start", "start_on", "resume", "resume_on"))
_CANDIDATES = frozenset(
    [f"VM.{n}" for n in _VM_RESIDENT | _VM_STORAGE | _VM_PLACED]
    + [f"{c}.{n}" for c in ("VBD", "VIF") for n in _DEVICE]
    + [f"SR.{n}" for n in _SR_STORAGE | {"create"}]
    + [f"VDI.{n}" for n in _VDI_STORAGE | {"create"}]
    + ["PBD.plug", "PBD.unplug"])


def may_forward(wire: str) -> bool:
    """Cheap test on the event loop: can this message ever run elsewhere?"""
    return wire in _CANDIDATES


def target(rt: Runtime, wire: str, args: dict[str, Any],
           reserved: Callable[[Any, str], None] | None = None) -> str | None:
    """``reserved(tx, host)`` joins the transaction reserving a start's or a
    resume's host, when there is one (the caller's task goes with it)."""
    cls, _, name = wire.partition(".")
    if cls == "VM":
        host = _vm(rt, name, args, reserved)
    else:
        rule = _RULES.get(cls)
        host = rule(rt, name, args) if rule else None
    if host is None or host == rt.host_ref:
        return None if host is None else host
    if not roles.is_live(rt, host):
        raise ApiError("HOST_OFFLINE", host)
    return host


def release(rt: Runtime, wire: str, args: dict[str, Any], host: str) -> None:
    """Undo the reservation a start or resume made, when the call never reached its host."""
    if wire.startswith("VM.") and wire[3:] in _VM_PLACED:
        placement.release(rt, args["vm"], host)
    elif wire == "VM.pool_migrate":
        placement.release(rt, args["vm"], args.get("host"))


# -- VM ----------------------------------------------------------------------------------


def _vm(rt: Runtime, name: str, args: dict[str, Any],
        reserved: Callable[[Any, str], None] | None = None) -> str | None:
    vm_ref = args.get("vm", args.get("self", args.get("snapshot")))
    row = rt.cache.get("VM", vm_ref) if isinstance(vm_ref, str) else None
    if row is None:
        return None  # the handler answers HANDLE_INVALID
    vm = row.values
    if name in _VM_PLACED:
        return _placed(rt, vm_ref, vm, name, args.get("host"), reserved)
    if vm["power_state"] in RUNNING and name in _VM_RESIDENT:
        if vm["resident_on"] == NULL_REF:
            return None
        destination = args.get("host")
        if name == "pool_migrate" and rt.cache.get("host", destination) is not None \
                and destination != vm["resident_on"] and not vm["current_operations"]:
            # As xapi's reserve_memory_for_vm: the destination is checked and its memory
            # reserved before the call goes to the source host.
            placement.choose_and_reserve(rt, vm_ref, destination)
        return vm["resident_on"]
    if name in _VM_STORAGE:
        return storage_host(rt, _vm_srs(rt, vm_ref, vm, name, args))
    return None


def _placed(rt: Runtime, vm_ref: str, vm: dict, name: str, host: str | None,
            reserved: Callable[[Any, str], None] | None = None) -> str | None:
    wanted = "Suspended" if name.startswith("resume") else "Halted"
    if vm["power_state"] != wanted or vm["is_a_template"] or vm["is_control_domain"]:
        return None  # the handler reports the bad power state
    if host is not None and rt.cache.get("host", host) is None:
        return None  # HANDLE_INVALID from the handler
    if host is not None and host != rt.host_ref and not roles.is_live(rt, host):
        raise ApiError("HOST_OFFLINE", host)
    return placement.choose_and_reserve(rt, vm_ref, host, also=reserved)


def _vm_srs(rt: Runtime, vm_ref: str, vm: dict, name: str, args: dict[str, Any]) -> list[str]:
    if name == "provision":
        return _provision_srs(rt, vm)
    srs = placement.required_srs(rt, vm_ref, vm)
    if name == "copy" and args.get("sr") not in (None, NULL_REF) and args["sr"] not in srs:
        srs.append(args["sr"])
    return srs


def _provision_srs(rt: Runtime, vm: dict) -> list[str]:
    from xapi.domains.copies import provision_spec

    pool = rt.cache.get("pool", rt.pool_ref)
    default = pool.values["default_SR"] if pool else NULL_REF
    srs = []
    try:
        spec = provision_spec(vm["other_config"])
    except ApiError:
        return []
    for disk in spec:
        sr = rt.cache.ref_by_uuid("SR", disk.get("sr", "")) if disk.get("sr") else default
        if sr and sr != NULL_REF and sr not in srs:
            srs.append(sr)
    return srs


def _device(rt: Runtime, name: str, args: dict[str, Any], cls: str) -> str | None:
    if name not in _DEVICE:
        return None
    row = rt.cache.get(cls, args.get("self"))
    vm = rt.cache.get("VM", row.values["VM"]) if row else None
    if vm is None or vm.values["power_state"] not in RUNNING:
        return None
    return vm.values["resident_on"] if vm.values["resident_on"] != NULL_REF else None


# -- storage -----------------------------------------------------------------------------


def storage_host(rt: Runtime, srs: list[str]) -> str | None:
    """A host with a plugged PBD of every SR given: this host if it has them, else the first."""
    if not srs:
        return None
    candidates: set[str] | None = None
    for sr in srs:
        hosts = {p.values["host"] for ref in rt.cache.derived("SR", "PBDs", sr)
                 if (p := rt.cache.get("PBD", ref)) is not None and p.values["currently_attached"]}
        candidates = hosts if candidates is None else candidates & hosts
    if not candidates:
        return None  # nothing plugged anywhere: the handler reports it (SR_HAS_NO_PBDS …)
    if rt.host_ref in candidates:
        return rt.host_ref
    live = sorted(h for h in candidates if roles.is_live(rt, h))
    return live[0] if live else sorted(candidates)[0]


def _any_pbd_host(rt: Runtime, sr: str) -> str | None:
    """For SR.destroy (its PBDs are unplugged): a host that has a PBD of it."""
    hosts = sorted(p.values["host"] for ref in rt.cache.derived("SR", "PBDs", sr)
                   if (p := rt.cache.get("PBD", ref)) is not None)
    if not hosts or rt.host_ref in hosts:
        return None
    return hosts[0]


def _sr(rt: Runtime, name: str, args: dict[str, Any]) -> str | None:
    if name == "create":
        host = args.get("host")
        return host if rt.cache.get("host", host) is not None else None
    if name not in _SR_STORAGE:
        return None
    sr = args.get("sr", args.get("self"))
    if rt.cache.get("SR", sr) is None:
        return None
    if name == "destroy":
        return _any_pbd_host(rt, sr)
    return storage_host(rt, [sr])


def _vdi(rt: Runtime, name: str, args: dict[str, Any]) -> str | None:
    if name == "create":
        record = args.get("args") or {}
        sr = record.get("SR") if isinstance(record, dict) else None
        return storage_host(rt, [sr]) if rt.cache.get("SR", sr) is not None else None
    if name not in _VDI_STORAGE:
        return None
    vdi = rt.cache.get("VDI", args.get("vdi", args.get("self")))
    if vdi is None:
        return None
    srs = [vdi.values["SR"]]
    if name == "copy" and rt.cache.get("SR", args.get("sr")) is not None and args["sr"] not in srs:
        srs.append(args["sr"])
    return storage_host(rt, srs)


def _pbd(rt: Runtime, name: str, args: dict[str, Any]) -> str | None:
    if name not in ("plug", "unplug"):
        return None
    row = rt.cache.get("PBD", args.get("self"))
    return row.values["host"] if row is not None else None


_RULES: dict[str, Callable[[Runtime, str, dict[str, Any]], str | None]] = {
    "VBD": lambda rt, name, args: _device(rt, name, args, "VBD"),
    "VIF": lambda rt, name, args: _device(rt, name, args, "VIF"),
    "SR": _sr,
    "VDI": _vdi,
    "PBD": _pbd,
}
