"""xenopsd's wire format (``xenops_interface.ml``), shared by the client and the simulator.

Transport: one HTTP/1.1 ``POST /`` per call on a unix socket, one socket per
queue at ``<socket_dir>/<queue name>`` (``org.xen.xapi.xenops.simulator``
for the simulator; a real xenopsd started with ``--use-switch=false``
listens on ``<sockets-path>/xenopsd``).  Bodies are JSON-RPC v1
(``application/json``), as xenopsd speaks it on the message switch, or
XML-RPC (``text/xml``), as it speaks it on its own socket.

Calls are sent the way ocaml-rpc's ``Idl`` client sends them: every named
parameter goes into one dict, the only positional parameter::

    {"method": "VM.start", "params": [{"debug_info": "…", "id": "<uuid>", "paused": false}], "id": 7}

``debug_info`` comes first here (ocaml-rpc happens to build the dict last
parameter first; order is irrelevant to every reader).  An ``option``
parameter that is ``None`` is left out and a set one is sent as its plain
value; a ``unit`` parameter is sent as ``"unit": null``.  Replies::

    {"result": <value>, "error": null, "id": 7}
    {"result": null, "error": ["Bad_power_state", ["Running", "Halted"]], "id": 7}

where the error is a marshalled ``Errors.error`` variant.  Values follow
ocaml-rpc's encoding (see ``schema``): variants ``"Name"`` or
``["Name", arg]``, records as dicts with unset options omitted, options
elsewhere ``[]``/``[x]``, tuples as arrays, ``(string * 'a) list`` as dicts,
int64 as numbers.

``METHODS`` lists the calls with their parameter names and types exactly as
``xenops_interface.ml`` declares them; the rest of the module describes the
types and builds or reads their values as plain dicts and lists.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from xapi.backends.xenops import xmlrpc
from xapi.backends.xenops.schema import (
    ANY, BOOL, FLOAT, INT, INT64, OPT, STRING, UNIT, Dict, ListOf, Option, Record, SchemaError, Tuple,
    Type, Variant, arg, tag,
)

SIMULATOR_QUEUE = "org.xen.xapi.xenops.simulator"
CLASSIC_QUEUE = "org.xen.xapi.xenops.classic"
NO_SWITCH_SOCKET = "xenopsd"  # xenopsd --use-switch=false serves XML-RPC on <sockets-path>/xenopsd

JSON = "json"
XMLRPC = "xmlrpc"
CONTENT_TYPES = {JSON: "application/json", XMLRPC: "text/xml"}


class ProtocolError(ValueError):
    """A body that is not a well-formed call or reply."""


def socket_path(socket_dir: str, queue: str) -> str:
    return os.path.join(socket_dir, queue)


# ---------------------------------------------------------------- basic types

POWER_STATE = Variant("power_state", {"Running": None, "Halted": None, "Suspended": None, "Paused": None})
RUNNING, HALTED, SUSPENDED, PAUSED = "Running", "Halted", "Suspended", "Paused"

DISK = Variant("disk", {"Local": STRING, "VDI": STRING})
DEVICE_ID = Tuple(STRING, STRING)  # Vbd.id / Vif.id: (vm uuid, device)

PCI_ADDRESS = Record("Pci.address", {"domain": INT, "bus": INT, "dev": INT, "fn": INT})
NETWORK = Variant("Network.t", {"Local": STRING, "Remote": Tuple(STRING, STRING), "Sriov": PCI_ADDRESS})


def disk_vdi(sr_uuid: str, location: str) -> list:
    """``["VDI", "<sr-uuid>/<vdi location>"]``, as xapi names a VDI to xenopsd."""
    return ["VDI", f"{sr_uuid}/{location}"]


def disk_local(path: str) -> list:
    """``["Local", "<path of a block device>"]``."""
    return ["Local", path]


def network_local(bridge: str) -> list:
    """``["Local", "<bridge>"]``."""
    return ["Local", bridge]


# ---------------------------------------------------------------- errors

ERROR = Variant("Errors.error", {
    "Already_exists": Tuple(STRING, STRING),
    "Does_not_exist": Tuple(STRING, STRING),
    "Unimplemented": STRING,
    "Domain_not_built": None,
    "Invalid_vcpus": INT,
    "Bad_power_state": Tuple(POWER_STATE, POWER_STATE),
    "Failed_to_acknowledge_shutdown_request": None,
    "Failed_to_acknowledge_suspend_request": None,
    "Failed_to_shutdown": Tuple(STRING, FLOAT),
    "Failed_to_suspend": Tuple(STRING, FLOAT),
    "Device_is_connected": None,
    "Device_not_connected": None,
    "Device_detach_rejected": Tuple(STRING, STRING, STRING),
    "Media_not_ejectable": None,
    "Media_present": None,
    "Media_not_present": None,
    "No_bootable_device": None,
    "Bootloader_error": Tuple(STRING, STRING),
    "Cannot_free_this_much_memory": Tuple(INT64, INT64),
    "Vms_failed_to_cooperate": ListOf(STRING),
    "IO_error": None,
    "Failed_to_contact_remote_service": STRING,
    "Hook_failed": Tuple(STRING, STRING, STRING, STRING),
    "Not_enough_memory": INT64,
    "Cancelled": STRING,
    "Storage_backend_error": Tuple(STRING, ListOf(STRING)),
    "PCIBack_not_loaded": None,
    "Failed_to_run_script": STRING,
    "Failed_to_start_emulator": Tuple(STRING, STRING, STRING),
    "Ballooning_timeout_before_migration": None,
    "Internal_error": STRING,
    "Unknown_error": None,
}, default="Unknown_error")


def error(name: str, *args: Any) -> Any:
    """A marshalled ``Errors.error``: ``"Name"``, ``["Name", arg]`` or
    ``["Name", [arg1, arg2, …]]`` for a tuple argument."""
    value = name if not args else [name, args[0] if len(args) == 1 else list(args)]
    return ERROR.decode(value)


def decode_error(value: Any) -> tuple[str, Any]:
    """``(name, args)`` of a marshalled error; an unknown shape reads as ``Internal_error``."""
    try:
        canonical = ERROR.decode(value)
    except SchemaError:
        return "Internal_error", json.dumps(value)
    return tag(canonical), arg(canonical)


# ---------------------------------------------------------------- Vm

ACTION = Variant("Vm.action", {"Coredump": None, "Shutdown": None, "Start": None, "Pause": None,
                               "Softreboot": None})
_NVRAM = Record("Nvram_uefi_variables.t", {
    "on_boot": (Variant("onboot", {"Persist": None, "Reset": None}), "Persist"),
    "backend": (STRING, "xapidb"),
})
HVM_INFO = Record("Vm.hvm_info", {
    "hap": (BOOL, True),
    "shadow_multiplier": (FLOAT, 1.0),
    "timeoffset": (STRING, ""),
    "video_mib": (INT, 4),
    "video": (Variant("video_card", {"Cirrus": None, "Standard_VGA": None, "Vgpu": None,
                                     "IGD_passthrough": Variant("igd_passthrough", {"GVT_d": None})},
                      default="Cirrus"), "Cirrus"),
    "acpi": (BOOL, True),
    "serial": OPT(STRING),
    "keymap": OPT(STRING),
    "vnc_ip": OPT(STRING),
    "pci_emulations": (ListOf(STRING), []),
    "pci_passthrough": (BOOL, False),
    "boot_order": (STRING, ""),
    "qemu_disk_cmdline": (BOOL, False),
    "qemu_stubdom": (BOOL, False),
    "firmware": (Variant("firmware_type", {"Bios": None, "Uefi": _NVRAM}), "Bios"),
    "tpm": OPT(Variant("tpm", {"Vtpm": STRING})),
})
_PV_BOOT = Variant("Vm.pv_boot", {
    "Direct": Record("Vm.pv_direct_boot", {
        "kernel": (STRING, ""), "cmdline": (STRING, ""), "ramdisk": OPT(STRING),
    }),
    "Indirect": Record("Vm.pv_indirect_boot", {
        "bootloader": (STRING, ""), "extra_args": (STRING, ""), "legacy_args": (STRING, ""),
        "bootloader_args": (STRING, ""), "devices": (ListOf(DISK), []),
    }),
})
PV_INFO = Record("Vm.pv_info", {
    "boot": _PV_BOOT,
    "framebuffer": (BOOL, True),
    "framebuffer_ip": OPT(STRING),
    "vncterm": (BOOL, True),
    "vncterm_ip": OPT(STRING),
    "pci_passthrough": (BOOL, False),
})
BUILDER_INFO = Variant("Vm.builder_info", {"HVM": HVM_INFO, "PV": PV_INFO, "PVinPVH": PV_INFO, "PVH": PV_INFO})

VM_T = Record("Vm.t", {
    "id": STRING,
    "name": (STRING, "unnamed"),
    "ssidref": INT,
    "xsdata": Dict(STRING),
    "platformdata": Dict(STRING),
    "bios_strings": Dict(STRING),
    "ty": BUILDER_INFO,
    "suppress_spurious_page_faults": BOOL,
    "machine_address_size": OPT(INT),
    "memory_static_max": INT64,
    "memory_dynamic_max": INT64,
    "memory_dynamic_min": INT64,
    "vcpu_max": INT,
    "vcpus": INT,
    "scheduler_params": Record("Vm.scheduler_params", {
        "priority": OPT(Tuple(INT, INT)),
        "affinity": ListOf(ListOf(INT)),
    }),
    "on_crash": ListOf(ACTION),
    "on_shutdown": ListOf(ACTION),
    "on_reboot": ListOf(ACTION),
    "on_softreboot": (ListOf(ACTION), ["Softreboot"]),
    "pci_msitranslate": BOOL,
    "pci_power_mgmt": BOOL,
    "has_vendor_device": (BOOL, False),
    "generation_id": OPT(STRING),
})

DOMAIN_TYPE = Variant("Vm.domain_type", {"Domain_HVM": None, "Domain_PV": None, "Domain_PVinPVH": None,
                                         "Domain_PVH": None, "Domain_undefined": None})
CONSOLE = Record("Vm.console", {
    "protocol": Variant("Vm.console_protocol", {"Rfb": None, "Vt100": None}),
    "port": INT,
    "path": STRING,
})
# xenopsd declares no defaults for Vm.state; these are its halted_vm, so
# that VM_STATE.default() is the state of a VM without a domain.
VM_STATE = Record("Vm.state", {
    "power_state": (POWER_STATE, HALTED),
    "domids": (ListOf(INT), []),
    "consoles": (ListOf(CONSOLE), []),
    "memory_target": (INT64, 0),
    "memory_actual": (INT64, 0),
    "memory_limit": (INT64, 0),
    "vcpu_target": (INT, 0),
    "shadow_multiplier_target": (FLOAT, 1.0),
    "rtc_timeoffset": (STRING, ""),
    "uncooperative_balloon_driver": (BOOL, False),
    "guest_agent": (Dict(STRING), {}),
    "xsdata_state": (Dict(STRING), {}),
    "pv_drivers_detected": (BOOL, False),
    "last_start_time": (FLOAT, 0.0),
    "hvm": (BOOL, False),
    "nomigrate": (BOOL, False),
    "nested_virt": (BOOL, False),
    "domain_type": (DOMAIN_TYPE, "Domain_undefined"),
    "featureset": (STRING, ""),
    "numa_optimised": (BOOL, False),
    "numa_nodes": (INT, 0),
    "numa_node_memory": (ListOf(Tuple(INT, INT64)), []),
})

_MIB = 1024 * 1024


def pv_builder(kernel: str = "", cmdline: str = "", ramdisk: str | None = None, *, kind: str = "PV",
               **fields: Any) -> list:
    """``["PV", {"boot": ["Direct", {"kernel", "cmdline"[, "ramdisk"]}], …}]`` (or
    ``PVinPVH``/``PVH`` with ``kind``); other ``pv_info`` fields from ``fields``."""
    boot = {"kernel": kernel, "cmdline": cmdline}
    if ramdisk is not None:
        boot["ramdisk"] = ramdisk
    return BUILDER_INFO.decode([kind, {"boot": ["Direct", boot], **fields}])


def hvm_builder(**fields: Any) -> list:
    """``["HVM", {hvm_info}]``: every ``hvm_info`` field has a default."""
    return BUILDER_INFO.decode(["HVM", fields])


def vm_t(id: str, **fields: Any) -> dict:
    """A complete ``Vm.t``.  xenopsd has defaults for ``name``,
    ``on_softreboot`` and ``has_vendor_device`` only; the others here are a
    small PV guest (256 MiB, one vCPU, restart on reboot, destroy on halt
    or crash)."""
    base = {
        "id": id, "ssidref": 0, "xsdata": {}, "platformdata": {}, "bios_strings": {},
        "ty": pv_builder(), "suppress_spurious_page_faults": False,
        "memory_static_max": 256 * _MIB, "memory_dynamic_max": 256 * _MIB, "memory_dynamic_min": 256 * _MIB,
        "vcpu_max": 1, "vcpus": 1, "scheduler_params": {"affinity": []},
        "on_crash": ["Shutdown"], "on_shutdown": ["Shutdown"], "on_reboot": ["Start"],
        "pci_msitranslate": True, "pci_power_mgmt": False,
    }
    base.update(fields)
    return VM_T.decode(base)


def halted_vm_state() -> dict:
    """``Vm.state`` of a VM without a domain (xenopsd's ``halted_vm``)."""
    return VM_STATE.default()


def decode_vm_t(value: Any) -> dict:
    """A ``Vm.t`` dict: ``{"id", "name", "ty": ["HVM"|"PV"|…, {…}], "memory_*": int,
    "vcpus", "on_shutdown": ["Shutdown"], …}``, unset options left out."""
    return VM_T.decode(value)


def decode_vm_state(value: Any) -> dict:
    """A ``Vm.state`` dict: ``{"power_state": "Running"|"Halted"|"Suspended"|"Paused",
    "domids": [int], "memory_target": int, "last_start_time": float,
    "domain_type": "Domain_HVM"|…, …}``."""
    return VM_STATE.decode(value)


# ---------------------------------------------------------------- Vbd / Vif

_QOS_CLASS = Variant("Vbd.qos_class", {"Highest": None, "High": None, "Normal": None, "Low": None,
                                       "Lowest": None, "Other": INT})
QOS = Variant("Vbd.qos", {"Ionice": Variant("Vbd.qos_scheduler", {
    "RealTime": _QOS_CLASS, "Idle": None, "BestEffort": _QOS_CLASS})})
DEVICE_NUMBER = Tuple(Variant("Device_number.bus_type", {"Xen": None, "Scsi": None, "Floppy": None,
                                                         "Ide": None}), INT, INT)

VBD_T = Record("Vbd.t", {
    "id": (DEVICE_ID, ["", ""]),
    "position": OPT(DEVICE_NUMBER),
    "mode": (Variant("Vbd.mode", {"ReadOnly": None, "ReadWrite": None}), "ReadWrite"),
    "backend": OPT(DISK),
    "ty": (Variant("Vbd.ty", {"CDROM": None, "Disk": None, "Floppy": None}), "Disk"),
    "unpluggable": (BOOL, True),
    "extra_backend_keys": (Dict(STRING), {}),
    "extra_private_keys": (Dict(STRING), {}),
    "qos": OPT(QOS),
    "persistent": (BOOL, True),
    "can_attach_early": (BOOL, False),
})
# Defaults: xenopsd's unplugged_vbd.
VBD_STATE = Record("Vbd.state", {
    "active": (BOOL, False),
    "plugged": (BOOL, False),
    "qos_target": OPT(QOS),
    "backend_present": OPT(DISK),
})

_CONFIG4 = Variant("Vif.ipv4_configuration", {"Unspecified4": None, "Static4": Tuple(ListOf(STRING), Option(STRING)),
                                              "DHCP4": None})
_CONFIG6 = Variant("Vif.ipv6_configuration", {"Unspecified6": None, "Static6": Tuple(ListOf(STRING), Option(STRING)),
                                              "Autoconf6": None})
LOCKING_MODE = Variant("Vif.locking_mode", {
    "Unlocked": None, "Disabled": None,
    "Locked": Record("Vif.locked_addresses", {"ipv4": ListOf(STRING), "ipv6": ListOf(STRING)}),
})
_PVS_PROXY = Tuple(STRING, ListOf(Record("Vif.PVS_proxy.server", {
    "addresses": ListOf(STRING), "first_port": INT, "last_port": INT})), STRING)

VIF_T = Record("Vif.t", {
    "id": (DEVICE_ID, ["", ""]),
    "position": (INT, 0),
    "mac": (STRING, "fe:ff:ff:ff:ff:ff"),
    "carrier": (BOOL, True),
    "mtu": (INT, 1500),
    "rate": OPT(Tuple(INT64, INT64)),
    "backend": (NETWORK, ["Local", "xenbr0"]),
    "other_config": (Dict(STRING), {}),
    "locking_mode": (LOCKING_MODE, "Unlocked"),
    "extra_private_keys": (Dict(STRING), {}),
    "ipv4_configuration": (_CONFIG4, "Unspecified4"),
    "ipv6_configuration": (_CONFIG6, "Unspecified6"),
    "pvs_proxy": OPT(_PVS_PROXY),
    "vlan": OPT(INT64),
    "trunks": (ListOf(INT64), []),
})
# Defaults: xenopsd's unplugged_vif.
VIF_STATE = Record("Vif.state", {
    "active": (BOOL, False),
    "plugged": (BOOL, False),
    "kthread_pid": (INT, 0),
    "media_present": (BOOL, False),
    "device": OPT(STRING),
    "pvs_rules_active": (BOOL, False),
})


def vbd_t(vm: str, device: str, **fields: Any) -> dict:
    """A ``Vbd.t`` with id ``[vm, device]`` (``device`` a linux name, ``"xvda"``);
    every other field has a default (``mode`` ``"ReadWrite"``, ``ty``
    ``"Disk"``, no ``backend`` = empty drive).  ``backend`` is a ``disk``
    (``disk_vdi``)."""
    return VBD_T.decode({"id": [vm, device], **fields})


def vif_t(vm: str, device: str, **fields: Any) -> dict:
    """A ``Vif.t`` with id ``[vm, device]`` (``device`` ``"0"``, ``"1"`` …) and
    ``position`` the device number unless given; ``backend`` is a
    ``Network.t`` (``network_local``)."""
    if "position" not in fields and device.isdigit():
        fields["position"] = int(device)
    return VIF_T.decode({"id": [vm, device], **fields})


def device_id(value: Any) -> tuple[str, str]:
    """A ``Vbd.id``/``Vif.id`` as a Python tuple (on the wire: ``[vm, device]``)."""
    vm, device = DEVICE_ID.decode(value)
    return vm, device


def decode_vbd_t(value: Any) -> dict:
    """A ``Vbd.t`` dict: ``{"id": [vm, "xvda"], "mode": "ReadWrite"|"ReadOnly",
    "ty": "Disk"|"CDROM"|"Floppy", ["backend": ["VDI", "sr/loc"]], ["position":
    ["Xen", 0, 0]], "persistent": bool, …}``."""
    return VBD_T.decode(value)


def decode_vbd_state(value: Any) -> dict:
    """A ``Vbd.state`` dict: ``{"active": bool, "plugged": bool[, "backend_present":
    disk][, "qos_target": qos]}``."""
    return VBD_STATE.decode(value)


def decode_vif_t(value: Any) -> dict:
    """A ``Vif.t`` dict: ``{"id": [vm, "0"], "position": int, "mac", "mtu",
    "backend": ["Local", "xenbr0"], "other_config": {…}, "locking_mode", …}``."""
    return VIF_T.decode(value)


def decode_vif_state(value: Any) -> dict:
    """A ``Vif.state`` dict: ``{"active", "plugged", "kthread_pid", "media_present",
    ["device": "vif3.0"], "pvs_rules_active"}``."""
    return VIF_STATE.decode(value)


def unplugged_vbd_state() -> dict:
    return VBD_STATE.default()


def unplugged_vif_state() -> dict:
    return VIF_STATE.default()


# ---------------------------------------------------------------- Metadata

METADATA = Record("Metadata.t", {
    "vm": VM_T,
    "vbds": (ListOf(VBD_T), []),
    "vifs": (ListOf(VIF_T), []),
    "pcis": (ListOf(ANY), []),
    "vgpus": (ListOf(ANY), []),
    "vusbs": (ListOf(ANY), []),
    "domains": OPT(STRING),
})


def metadata(vm: dict, vbds=(), vifs=(), domains: str | None = None) -> dict:
    """``Metadata.t`` (``VM.import_metadata`` sends it as JSON text):
    ``{"vm": Vm.t, "vbds": [Vbd.t], "vifs": [Vif.t], "pcis": [], "vgpus": [],
    "vusbs": [][, "domains": "<backend state>"]}``."""
    value = {"vm": vm, "vbds": list(vbds), "vifs": list(vifs)}
    if domains is not None:
        value["domains"] = domains
    return METADATA.decode(value)


# ---------------------------------------------------------------- Task

TASK_STATE = Variant("Task.state", {
    "Pending": FLOAT,
    "Completed": Record("Task.completion_t", {"duration": FLOAT, "result": OPT(ANY)}),
    "Failed": ANY,
})
TASK_T = Record("Task.t", {
    "id": STRING,
    "dbg": STRING,
    "ctime": FLOAT,
    "state": TASK_STATE,
    "subtasks": Dict(TASK_STATE),
    "debug_info": Dict(STRING),
    "backtrace": STRING,
    "cancellable": BOOL,
})
PENDING, COMPLETED, FAILED = "Pending", "Completed", "Failed"


def task_pending(progress: float) -> list:
    """``["Pending", 0.25]``."""
    return ["Pending", float(progress)]


def task_completed(duration: float, result: Any = None) -> list:
    """``["Completed", {"duration": 1.5}]``, with ``"result"`` only when there is one."""
    completion: dict[str, Any] = {"duration": float(duration)}
    if result is not None:
        completion["result"] = result
    return ["Completed", completion]


def task_failed(err: Any) -> list:
    """``["Failed", <marshalled Errors.error>]``."""
    return ["Failed", err]


def decode_task(value: Any) -> dict:
    """A ``Task.t`` dict: ``{"id": "12", "dbg", "ctime": float, "state": ["Pending", 0.5]
    | ["Completed", {"duration": float[, "result": v]}] | ["Failed", <Errors.error>],
    "subtasks": {name: state}, "debug_info": {…}, "backtrace": str, "cancellable": bool}``."""
    return TASK_T.decode(value)


def task_status(task: dict) -> str:
    """``"Pending"``, ``"Completed"`` or ``"Failed"``."""
    return tag(task["state"])


def task_progress(task: dict) -> float:
    state = task["state"]
    return arg(state) if tag(state) == PENDING else 1.0


def task_error(task: dict) -> tuple[str, Any] | None:
    """``(name, args)`` of a failed task's error, else ``None``."""
    state = task["state"]
    return decode_error(arg(state)) if tag(state) == FAILED else None


def task_result(task: dict) -> Any:
    """The ``result`` of a completed task (``None`` for most operations)."""
    state = task["state"]
    return arg(state).get("result") if tag(state) == COMPLETED else None


# ---------------------------------------------------------------- Dynamic ids and UPDATES

DYNAMIC_ID = Variant("Dynamic.id", {
    "Vm": STRING, "Vbd": DEVICE_ID, "Vif": DEVICE_ID, "Pci": DEVICE_ID, "Vgpu": DEVICE_ID,
    "Vusb": DEVICE_ID, "Task": STRING,
})
BARRIER = Tuple(INT, ListOf(DYNAMIC_ID))
UPDATES_RESULT = Tuple(ListOf(BARRIER), ListOf(DYNAMIC_ID), INT)


def dyn_vm(vm: str) -> list:
    """``["Vm", "<uuid>"]``."""
    return ["Vm", vm]


def dyn_vbd(vbd_id) -> list:
    """``["Vbd", ["<vm uuid>", "xvda"]]``."""
    return ["Vbd", list(vbd_id)]


def dyn_vif(vif_id) -> list:
    """``["Vif", ["<vm uuid>", "0"]]``."""
    return ["Vif", list(vif_id)]


def dyn_task(task_id: str) -> list:
    """``["Task", "12"]``."""
    return ["Task", task_id]


def dynamic_key(value: Any) -> tuple:
    """A hashable form of a ``Dynamic.id``: ``("Vm", uuid)``, ``("Vbd", (vm, dev))``, ``("Task", id)``."""
    canonical = DYNAMIC_ID.decode(value)
    payload = arg(canonical)
    return tag(canonical), tuple(payload) if isinstance(payload, list) else payload


def dynamic_value(key: tuple) -> list:
    """The wire form of a ``dynamic_key``."""
    kind, payload = key
    return [kind, list(payload) if isinstance(payload, tuple) else payload]


def decode_updates(value: Any) -> tuple[list[tuple[int, list[tuple]]], list[tuple], int]:
    """``UPDATES.get``'s ``[[[barrier id, [Dynamic.id…]]…], [Dynamic.id…], next_id]`` as
    ``(barriers, updates, next_id)`` with ids as ``dynamic_key`` tuples."""
    barriers, updates, next_id = UPDATES_RESULT.decode(value)
    return ([(bid, [dynamic_key(d) for d in ids]) for bid, ids in barriers],
            [dynamic_key(d) for d in updates], next_id)


# ---------------------------------------------------------------- query and HOST

QUERY_T = Record("Query.t", {"name": STRING, "vendor": STRING, "version": STRING,
                             "features": ListOf(STRING), "instance_id": STRING})
HOST_T = Record("Host.t", {
    "cpu_info": Record("Host.cpu_info", {
        "cpu_count": INT, "socket_count": INT, "threads_per_core": INT, "nr_nodes": INT,
        "vendor": STRING, "speed": STRING, "modelname": STRING, "family": STRING, "model": STRING,
        "stepping": STRING, "flags": STRING, "features": STRING, "features_pv": STRING,
        "features_hvm": STRING, "features_pv_host": STRING, "features_hvm_host": STRING,
    }),
    "hypervisor": Record("Host.hypervisor", {"version": STRING, "capabilities": STRING}),
    "chipset_info": Record("Host.chipset_info", {"iommu": BOOL, "hvm": BOOL}),
})


# ---------------------------------------------------------------- the calls


@dataclass(frozen=True, slots=True)
class Method:
    """A call's parameters after ``debug_info`` (``OPT(t)`` for an ``option``
    parameter) and its result type."""

    params: tuple[tuple[str, Any], ...]
    result: Type


_ID, _TASK = (("id", STRING),), STRING
_UNIT = (("unit", UNIT),)


def _vm(*extra) -> tuple:
    return _ID + tuple(extra)


METHODS: dict[str, Method] = {
    "query": Method(_UNIT, QUERY_T),
    "Task.stat": Method(_ID, TASK_T),
    "Task.cancel": Method(_ID, UNIT),
    "Task.destroy": Method(_ID, UNIT),
    "Task.list": Method((), ListOf(TASK_T)),
    "Task.destroy_on_finish": Method(_ID, UNIT),
    "HOST.stat": Method((), HOST_T),
    "HOST.get_console_data": Method((), STRING),
    "HOST.get_total_memory_mib": Method((), INT64),
    "VM.add": Method((("vm", VM_T),), STRING),
    "VM.remove": Method(_ID, UNIT),
    "VM.migrate": Method(_vm(("vdi_map", Dict(STRING)), ("vif_map", Dict(NETWORK)),
                             ("pci_map", Dict(PCI_ADDRESS)), ("xenops_url", STRING), ("compress", BOOL),
                             ("verify_dest", BOOL), ("localhost_migration", BOOL)), _TASK),
    "VM.create": Method(_ID, _TASK),
    "VM.build": Method(_vm(("force", BOOL)), _TASK),
    "VM.create_device_model": Method(_vm(("save_state", BOOL)), _TASK),
    "VM.destroy": Method(_ID, _TASK),
    "VM.pause": Method(_ID, _TASK),
    "VM.unpause": Method(_ID, _TASK),
    "VM.set_xsdata": Method(_vm(("xsdata", Dict(STRING))), _TASK),
    "VM.set_vcpus": Method(_vm(("vcpus", INT)), _TASK),
    "VM.set_shadow_multiplier": Method(_vm(("multiplier", FLOAT)), _TASK),
    "VM.set_memory_dynamic_range": Method(_vm(("minimum", INT64), ("maximum", INT64)), _TASK),
    "VM.stat": Method(_ID, Tuple(VM_T, VM_STATE)),
    "VM.exists": Method(_ID, BOOL),
    "VM.list": Method(_UNIT, ListOf(Tuple(VM_T, VM_STATE))),
    "VM.delay": Method(_vm(("delay", FLOAT)), _TASK),
    "VM.start": Method(_vm(("paused", BOOL)), _TASK),
    "VM.shutdown": Method(_vm(("delay", OPT(FLOAT))), _TASK),
    "VM.reboot": Method(_vm(("delay", OPT(FLOAT))), _TASK),
    "VM.suspend": Method(_vm(("suspend_vdi", DISK)), _TASK),
    "VM.resume": Method(_vm(("suspend_vdi", DISK)), _TASK),
    "VM.export_metadata": Method(_ID, STRING),
    "VM.import_metadata": Method((("metadata", STRING),), STRING),
    "VM.import_metadata_async": Method((("metadata", STRING),), _TASK),
    "VBD.add": Method((("vbd", VBD_T),), DEVICE_ID),
    "VBD.plug": Method((("id", DEVICE_ID),), _TASK),
    "VBD.unplug": Method((("id", DEVICE_ID), ("force", BOOL)), _TASK),
    "VBD.eject": Method((("id", DEVICE_ID),), _TASK),
    "VBD.insert": Method((("id", DEVICE_ID), ("disk", DISK)), _TASK),
    "VBD.stat": Method((("id", DEVICE_ID),), Tuple(VBD_T, VBD_STATE)),
    "VBD.list": Method(_ID, ListOf(Tuple(VBD_T, VBD_STATE))),
    "VBD.remove": Method((("id", DEVICE_ID),), UNIT),
    "VIF.add": Method((("vif", VIF_T),), DEVICE_ID),
    "VIF.plug": Method((("id", DEVICE_ID),), _TASK),
    "VIF.unplug": Method((("id", DEVICE_ID), ("force", BOOL)), _TASK),
    "VIF.move": Method((("id", DEVICE_ID), ("network", NETWORK)), _TASK),
    "VIF.set_carrier": Method((("id", DEVICE_ID), ("carrier", BOOL)), _TASK),
    "VIF.set_locking_mode": Method((("id", DEVICE_ID), ("locking_mode", LOCKING_MODE)), _TASK),
    "VIF.stat": Method((("id", DEVICE_ID),), Tuple(VIF_T, VIF_STATE)),
    "VIF.list": Method(_ID, ListOf(Tuple(VIF_T, VIF_STATE))),
    "VIF.remove": Method((("id", DEVICE_ID),), UNIT),
    "UPDATES.get": Method((("last_id", OPT(INT)), ("timeout", OPT(INT))), UPDATES_RESULT),
    "UPDATES.last_id": Method((), INT),
    "UPDATES.inject_barrier": Method((("vm_id", STRING), ("id", INT)), UNIT),
    "UPDATES.remove_barrier": Method((("id", INT),), UNIT),
    "UPDATES.refresh_vm": Method(_ID, UNIT),
    "DEBUG.trigger": Method((("cmd", STRING), ("args", ListOf(STRING))), UNIT),
    "DEBUG.shutdown": Method(_UNIT, UNIT),
}


def call_params(method: str, debug_info: str, named: dict[str, Any]) -> list:
    """The positional params of a call: ``[{"debug_info": …, <named>…}]``.

    Unset (``None``) parameters are left out, as ocaml-rpc leaves out unset
    options; a declared ``unit`` parameter is always sent as ``null``.
    """
    params: dict[str, Any] = {"debug_info": debug_info}
    spec = METHODS.get(method)
    if spec is not None and any(name == "unit" for name, _ in spec.params):
        params["unit"] = None
    for name, value in named.items():
        if value is not None:
            params[name] = value
    return [params]


def parse_params(method: str, params: list) -> tuple[str, dict[str, Any]]:
    """Server side: ``(debug_info, {name: decoded value})`` of a call to a
    method of ``METHODS``; an unset option reads as ``None``.  Accepts the old
    positional ``[dbg, arg]`` form of ``query`` and ``VM.import_metadata``,
    as xenopsd does."""
    spec = METHODS[method]
    if params and not isinstance(params[0], dict) and method in ("query", "VM.import_metadata"):
        params = [{"debug_info": params[0], spec.params[0][0]: params[1] if len(params) > 1 else None}]
    if not params or not isinstance(params[0], dict):
        raise ProtocolError("Marshalling error: Expecting dict as first argument when named parameters exist")
    given = params[0]
    dbg = given.get("debug_info")
    if not isinstance(dbg, str):
        raise ProtocolError("Expecting named argument 'debug_info'")
    out: dict[str, Any] = {}
    for name, ptype in spec.params:
        if isinstance(ptype, OPT):
            value = given.get(name)
            out[name] = None if value is None else ptype.item.decode(value, name)
        elif ptype is UNIT:
            out[name] = None
        elif name in given:
            out[name] = ptype.decode(given[name], name)
        else:
            raise ProtocolError(f"Expecting named argument '{name}'")
    return dbg, out


# ---------------------------------------------------------------- envelopes


def encode_request(encoding: str, method: str, params: list, call_id: int) -> bytes:
    if encoding == XMLRPC:
        return xmlrpc.encode_call(method, params)
    return json.dumps({"method": method, "params": params, "id": call_id}, ensure_ascii=False,
                      allow_nan=False).encode()


def decode_request(body: bytes) -> tuple[str, str, list, Any]:
    """``(encoding, method, params, id)``: XML-RPC when the body starts with ``<``."""
    if body.lstrip()[:1] == b"<":
        try:
            method, params = xmlrpc.decode_call(body)
        except xmlrpc.XmlRpcError as exc:
            raise ProtocolError(str(exc)) from None
        return XMLRPC, method, params, None
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"malformed JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("method"), str):
        raise ProtocolError("not a JSON-RPC call")
    params = doc.get("params", [])
    if isinstance(params, dict):  # JSON-RPC v2 named form
        params = [params]
    if not isinstance(params, list):
        raise ProtocolError("Invalid field 'params' in request body")
    return JSON, doc["method"], params, doc.get("id")


def encode_reply(encoding: str, ok: bool, value: Any, call_id: Any) -> bytes:
    if encoding == XMLRPC:
        return xmlrpc.encode_response(ok, value)
    doc = {"result": value, "error": None, "id": call_id} if ok else {"result": None, "error": value, "id": call_id}
    return json.dumps(doc, ensure_ascii=False, allow_nan=False).encode()


def decode_reply(encoding: str, body: bytes) -> tuple[bool, Any]:
    """``(True, result)`` or ``(False, marshalled error)``."""
    if encoding == XMLRPC:
        try:
            return xmlrpc.decode_response(body)
        except xmlrpc.XmlRpcError as exc:
            raise ProtocolError(str(exc)) from None
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"malformed JSON reply: {exc}") from None
    if not isinstance(doc, dict) or "result" not in doc:
        raise ProtocolError("not a JSON-RPC reply")
    err = doc.get("error")
    if err is not None:
        return False, err
    return True, doc["result"]
