"""XenAPI VM, VBD and VIF records as xenopsd's ``Vm.t``, ``Vbd.t`` and ``Vif.t``.

The mapping of xapi's ``Xenopsd_metadata`` (``MD.of_vm``, ``MD.of_vbd``,
``MD.of_vif``), producing values in ocaml-rpc's JSON encoding: variants as
``"Name"`` or ``["Name", arg]``, record fields of option type left out when
empty, tuples as arrays.
"""

from __future__ import annotations

from typing import Any

from db.cache import ObjectCache
from xapi.idl.types import NULL_REF

_ACTIONS = {
    "preserve": ["Pause"],
    "coredump_and_restart": ["Coredump", "Start"],
    "coredump_and_destroy": ["Coredump", "Shutdown"],
    "restart": ["Start"],
    "rename_restart": ["Start"],
    "destroy": ["Shutdown"],
    "soft_reboot": ["Softreboot"],
}
_VBD_MODE = {"RO": "ReadOnly", "RW": "ReadWrite"}
_VBD_TYPE = {"CD": "CDROM", "Disk": "Disk", "Floppy": "Floppy"}


def linux_device(userdevice: str) -> str:
    """``"0"`` → ``"xvda"``, ``"27"`` → ``"xvdab"``; names pass through."""
    if not userdevice.isdigit():
        return userdevice
    n = int(userdevice)
    letters = ""
    n += 1
    while n:
        n, rem = divmod(n - 1, 26)
        letters = chr(ord("a") + rem) + letters
    return "xvd" + letters


def domain_type(vm: dict[str, Any]) -> str:
    kind = vm.get("domain_type") or "unspecified"
    if kind == "unspecified":
        return "hvm" if vm.get("HVM_boot_policy") else "pv"
    return kind


def _builder(vm: dict[str, Any]) -> Any:
    kind = domain_type(vm)
    if kind == "hvm":
        params = vm.get("HVM_boot_params") or {}
        firmware = params.get("firmware", "bios")
        return ["HVM", {
            "hap": True,
            "shadow_multiplier": vm.get("HVM_shadow_multiplier", 1.0),
            "timeoffset": (vm.get("platform") or {}).get("timeoffset", "0"),
            "video_mib": 4,
            "video": "Cirrus",
            "acpi": True,
            "serial": "pty",
            "pci_emulations": [],
            "pci_passthrough": False,
            "boot_order": params.get("order", "cd"),
            "qemu_disk_cmdline": False,
            "qemu_stubdom": False,
            "firmware": ["Uefi", {}] if firmware == "uefi" else "Bios",
        }]
    if vm.get("PV_kernel"):
        boot = ["Direct", {"kernel": vm["PV_kernel"], "cmdline": vm.get("PV_args", ""),
                           "ramdisk": vm.get("PV_ramdisk") or None}]
        if boot[1]["ramdisk"] is None:
            del boot[1]["ramdisk"]
    else:
        boot = ["Indirect", {
            "bootloader": vm.get("PV_bootloader") or "pygrub",
            "extra_args": vm.get("PV_args", ""),
            "legacy_args": vm.get("PV_legacy_args", ""),
            "bootloader_args": vm.get("PV_bootloader_args", ""),
            "devices": [],
        }]
    pv = {"boot": boot, "framebuffer": False, "vncterm": True, "pci_passthrough": False}
    return [{"pv": "PV", "pvh": "PVH", "pv_in_pvh": "PVinPVH"}.get(kind, "PV"), pv]


def vm_t(vm: dict[str, Any]) -> dict[str, Any]:
    params = vm.get("VCPUs_params") or {}
    out = {
        "id": vm["uuid"],
        "name": vm.get("name_label", ""),
        "ssidref": 0,
        "xsdata": dict(vm.get("xenstore_data") or {}),
        "platformdata": dict(vm.get("platform") or {}),
        "bios_strings": dict(vm.get("bios_strings") or {}),
        "ty": _builder(vm),
        "suppress_spurious_page_faults": False,
        "memory_static_max": vm["memory_static_max"],
        "memory_dynamic_max": vm["memory_dynamic_max"],
        "memory_dynamic_min": vm["memory_dynamic_min"],
        "vcpu_max": vm["VCPUs_max"],
        "vcpus": vm["VCPUs_at_startup"],
        "scheduler_params": {
            "priority": [int(params.get("weight", 256)), int(params.get("cap", 0))],
            "affinity": [],
        },
        "on_crash": _ACTIONS.get(vm.get("actions_after_crash", "restart"), ["Start"]),
        "on_shutdown": _ACTIONS.get(vm.get("actions_after_shutdown", "destroy"), ["Shutdown"]),
        "on_reboot": _ACTIONS.get(vm.get("actions_after_reboot", "restart"), ["Start"]),
        "on_softreboot": _ACTIONS.get(vm.get("actions_after_softreboot", "soft_reboot"), ["Softreboot"]),
        "pci_msitranslate": True,
        "pci_power_mgmt": False,
        "has_vendor_device": bool(vm.get("has_vendor_device")),
    }
    if vm.get("generation_id"):
        out["generation_id"] = vm["generation_id"]
    return out


def disk_of_vdi(cache: ObjectCache, vdi_ref: str) -> Any | None:
    """``["VDI", "<sr uuid>/<location>"]`` for a VDI, as xapi locates disks for xenopsd."""
    vdi = cache.get("VDI", vdi_ref)
    if vdi is None:
        return None
    sr = cache.get("SR", vdi.values["SR"])
    sr_uuid = sr.values["uuid"] if sr else ""
    return ["VDI", f"{sr_uuid}/{vdi.values['location']}"]


def vbd_t(cache: ObjectCache, vm_uuid: str, vbd: dict[str, Any],
          paths: dict | None = None) -> dict[str, Any]:
    """``paths`` holds what the datapath attached, ``(vm uuid, VDI ref) → path``."""
    out = {
        "id": [vm_uuid, linux_device(vbd["userdevice"])],
        "mode": _VBD_MODE.get(vbd["mode"], "ReadWrite"),
        "ty": _VBD_TYPE.get(vbd["type"], "Disk"),
        "unpluggable": bool(vbd.get("unpluggable", True)),
        "extra_backend_keys": {},
        "extra_private_keys": {},
        "persistent": True,
        "can_attach_early": False,
    }
    if not vbd.get("empty") and vbd.get("VDI", NULL_REF) != NULL_REF:
        attached = (paths or {}).get((vm_uuid, vbd["VDI"]))
        disk = ["Local", attached] if attached else disk_of_vdi(cache, vbd["VDI"])
        if disk is not None:
            out["backend"] = disk
            vdi = cache.get("VDI", vbd["VDI"])
            out["persistent"] = vdi.values.get("on_boot", "persist") == "persist"
    return out


def vif_t(cache: ObjectCache, vm_uuid: str, vif: dict[str, Any]) -> dict[str, Any]:
    network = cache.get("network", vif["network"])
    bridge = network.values.get("bridge", "") if network else ""
    mtu = (vif.get("other_config") or {}).get("mtu")
    mode = vif.get("locking_mode", "network_default")
    if mode == "disabled":
        locking: Any = "Disabled"
    elif mode == "locked":
        locking = ["Locked", {"ipv4": list(vif.get("ipv4_allowed") or []),
                              "ipv6": list(vif.get("ipv6_allowed") or [])}]
    else:
        locking = "Unlocked"
    return {
        "id": [vm_uuid, vif["device"]],
        "position": int(vif["device"]) if str(vif["device"]).isdigit() else 0,
        "mac": vif["MAC"],
        "carrier": True,
        "mtu": int(mtu) if mtu and str(mtu).isdigit() else (network.values.get("MTU", 1500) if network else 1500),
        "backend": ["Local", bridge or "xenbr0"],
        "other_config": dict(vif.get("other_config") or {}),
        "locking_mode": locking,
        "extra_private_keys": {},
        "ipv4_configuration": "Unspecified4",
        "ipv6_configuration": "Unspecified6",
        "trunks": list(vif.get("trunks") or []),
    }


def metadata(cache: ObjectCache, vm_ref: str, paths: dict | None = None) -> dict[str, Any]:
    """``Metadata.t`` for ``VM.import_metadata``: the VM and its attached devices."""
    vm = cache.get("VM", vm_ref).values
    uuid = vm["uuid"]
    vbds = [cache.get("VBD", r) for r in cache.derived("VM", "VBDs", vm_ref)]
    vifs = [cache.get("VIF", r) for r in cache.derived("VM", "VIFs", vm_ref)]
    return {
        "vm": vm_t(vm),
        "vbds": [vbd_t(cache, uuid, r.values, paths) for r in vbds if r and r.values["currently_attached"]],
        "vifs": [vif_t(cache, uuid, r.values) for r in vifs if r and r.values["currently_attached"]],
        "pcis": [],
        "vgpus": [],
        "vusbs": [],
    }
