"""The simulated hypervisor: domains and their devices (xenopsd's simulator backend).

Domains follow xenopsd's simulator: ``create`` makes a paused, unbuilt
domain with the next domid; ``build`` and ``create_device_model`` mark it;
``pause``/``unpause`` need it built (and, for HVM, its device model); a
suspended domain outlives ``destroy`` until it is resumed or removed.

Unlike xenopsd's simulator (which always says ``Running``), a paused domain
reports ``Paused``, as the real Xen backend does, a suspended VM reports
no domid, and unplugging a device that is not there does nothing (the Xen
backend's behaviour; xenopsd's simulator fails).  Devices are plugged through xenstore-like frontend/backend keys:
``state`` goes to ``"1"`` (initialising) when a plug begins and to ``"4"``
(connected, ``hotplug-status=connected``) when it completes; an unplug goes
through ``"5"`` (closing) and removes the keys.  A device is *plugged* when
its keys say connected and *active* when ``set_active`` said so; both show
in ``VBD.stat``/``VIF.stat``.
"""

from __future__ import annotations

import time
from typing import Any

from xapi.backends.xenops import protocol as P
from xapi.backends.xenops.schema import tag
from xapi.backends.xenops.simulator.store import Store, VmEntry
from xapi.backends.xenops.simulator.tasks import fail

INITIALISING, CONNECTED, CLOSING = "1", "4", "5"
ONE_TIB_MIB = 1024 * 1024


def debug_string(position: list) -> str:
    """``Xen(0, 0)``: xenopsd's ``Device_number.to_debug_string``."""
    bus, disk, partition = position
    return f"{bus}({disk}, {partition})"


def _connected(device: dict) -> bool:
    backend = device.get("backend_keys", {})
    return backend.get("state") == CONNECTED and backend.get("hotplug-status") == "connected"


class Hypervisor:
    def __init__(self, store: Store, total_memory_mib: int = ONE_TIB_MIB):
        self.store = store
        self.total_memory_mib = total_memory_mib

    # ------------------------------------------------------------ lookups

    def entry(self, vm_id: str) -> VmEntry | None:
        return self.store.vms.get(vm_id)

    def domain(self, vm_id: str) -> dict:
        entry = self.entry(vm_id)
        if entry is None or entry.domain is None:
            raise fail("Does_not_exist", "domain", vm_id)
        return entry.domain

    def has_domain(self, vm_id: str) -> bool:
        entry = self.entry(vm_id)
        return entry is not None and entry.domain is not None

    # ------------------------------------------------------------ domain lifecycle

    def create(self, vm_id: str) -> None:
        entry = self.store.vms[vm_id]
        if entry.domain is not None:
            if not entry.domain["suspended"]:
                raise fail("Already_exists", "domain", vm_id)
            return
        vm = entry.vm
        ty = vm["ty"]
        entry.domain = {
            "domid": self.store.next_counter("next_domid"),
            "hvm": tag(ty) == "HVM",
            "paused": True,
            "built": False,
            "qemu_created": False,
            "suspended": False,
            "action_request": None,
            "vcpus": vm["vcpus"],
            "shadow_multiplier": ty[1]["shadow_multiplier"] if tag(ty) == "HVM" else 1.0,
            "memory_dynamic_min": vm["memory_dynamic_min"],
            "memory_dynamic_max": vm["memory_dynamic_max"],
            "xsdata": dict(vm["xsdata"]),
            "last_create_time": time.time(),
            "suspend_disk": None,
            "active": {"vbd": [], "vif": []},
            "vbds": {},
            "vifs": {},
        }

    def build(self, vm_id: str) -> None:
        self.domain(vm_id)["built"] = True

    def create_device_model(self, vm_id: str) -> None:
        self.domain(vm_id)["qemu_created"] = True

    def destroy_device_model(self, vm_id: str) -> None:
        if self.has_domain(vm_id):
            self.domain(vm_id)["qemu_created"] = False

    def destroy(self, vm_id: str) -> None:
        entry = self.entry(vm_id)
        if entry is not None and entry.domain is not None and not entry.domain["suspended"]:
            entry.domain = None

    def _check_built(self, domain: dict) -> None:
        if not domain["built"] or (domain["hvm"] and not domain["qemu_created"]):
            raise fail("Domain_not_built")

    def set_paused(self, vm_id: str, paused: bool) -> None:
        domain = self.domain(vm_id)
        self._check_built(domain)
        domain["paused"] = paused

    def set_action_request(self, vm_id: str, request: str | None) -> None:
        self.domain(vm_id)["action_request"] = request

    def action_request(self, vm_id: str) -> str | None:
        return self.domain(vm_id)["action_request"] if self.has_domain(vm_id) else None

    def save(self, vm_id: str, disk: list) -> None:
        domain = self.domain(vm_id)
        domain["suspended"] = True
        domain["suspend_disk"] = disk

    def restore(self, vm_id: str) -> None:
        domain = self.domain(vm_id)
        domain["built"] = True
        domain["suspended"] = False

    def set_xsdata(self, vm_id: str, xsdata: dict) -> None:
        self.domain(vm_id)["xsdata"] = dict(xsdata)

    def set_vcpus(self, vm_id: str, n: int) -> None:
        domain = self.domain(vm_id)
        self._check_built(domain)
        domain["vcpus"] = n

    def set_shadow_multiplier(self, vm_id: str, multiplier: float) -> None:
        domain = self.domain(vm_id)
        self._check_built(domain)
        domain["shadow_multiplier"] = multiplier

    def set_memory_dynamic_range(self, vm_id: str, minimum: int, maximum: int) -> None:
        domain = self.domain(vm_id)
        domain["memory_dynamic_min"], domain["memory_dynamic_max"] = minimum, maximum

    # ------------------------------------------------------------ devices

    def set_active(self, vm_id: str, kind: str, device: str, active: bool) -> None:
        if not self.has_domain(vm_id):
            return
        flags = self.domain(vm_id)["active"][kind]
        if active and device not in flags:
            flags.append(device)
        elif not active and device in flags:
            flags.remove(device)

    def begin_vbd_plug(self, vm_id: str, vbd: dict) -> None:
        domain = self.domain(vm_id)
        device = vbd["id"][1]
        domain["vbds"].pop(device, None)  # a half-plugged leftover is plugged afresh
        used = [d["position"] for d in domain["vbds"].values()]
        position = vbd.get("position")
        if position is None:
            disk = max([-1, *(p[1] for p in used)]) + 1
            position = ["Ide" if domain["hvm"] and disk < 4 else "Xen", disk, 0]
        if position in used:
            raise fail("Already_exists", "vbd", debug_string(position))
        domain["vbds"][device] = {
            "position": position,
            "mode": vbd["mode"],
            "disk": vbd.get("backend"),
            "frontend": {"state": INITIALISING},
            "backend_keys": {"state": INITIALISING},
        }

    def begin_vif_plug(self, vm_id: str, vif: dict) -> None:
        domain = self.domain(vm_id)
        device = vif["id"][1]
        domain["vifs"].pop(device, None)
        if vif["position"] in (d["position"] for d in domain["vifs"].values()):
            raise fail("Already_exists", "vif", str(vif["position"]))
        domain["vifs"][device] = {
            "position": vif["position"],
            "network": vif["backend"],
            "carrier": vif["carrier"],
            "frontend": {"state": INITIALISING},
            "backend_keys": {"state": INITIALISING},
        }

    def finish_plug(self, vm_id: str, kind: str, device: str) -> None:
        plugged = self.domain(vm_id)[f"{kind}s"].get(device)
        if plugged is not None:
            plugged["frontend"]["state"] = CONNECTED
            plugged["backend_keys"].update({"state": CONNECTED, "hotplug-status": "connected"})

    def begin_unplug(self, vm_id: str, kind: str, device: str) -> bool:
        """Start closing a device; ``False`` when there is nothing to unplug
        (no domain or no such device), which the Xen backend does not mind."""
        if not self.has_domain(vm_id):
            return False
        plugged = self.domain(vm_id)[f"{kind}s"].get(device)
        if plugged is None:
            return False
        plugged["frontend"]["state"] = CLOSING
        plugged["backend_keys"] = {"state": CLOSING}
        return True

    def finish_unplug(self, vm_id: str, kind: str, device: str) -> None:
        if self.has_domain(vm_id):
            self.domain(vm_id)[f"{kind}s"].pop(device, None)

    def set_media(self, vm_id: str, device: str, disk: list | None) -> None:
        plugged = self.domain(vm_id)["vbds"].get(device)
        if plugged is not None:
            plugged["disk"] = disk

    def update_vif(self, vm_id: str, device: str, **changes: Any) -> None:
        if self.has_domain(vm_id):
            plugged = self.domain(vm_id)["vifs"].get(device)
            if plugged is not None:
                plugged.update(changes)

    def vbd_plug_order(self, vm_id: str) -> list[str]:
        """Modes of the plugged VBDs in the order they were plugged."""
        return [d["mode"] for d in self.domain(vm_id)["vbds"].values()]

    # ------------------------------------------------------------ state

    def vm_state(self, vm_id: str) -> dict:
        entry = self.store.vms[vm_id]
        state = P.halted_vm_state()
        domain = entry.domain
        if domain is None:
            return state
        if domain["suspended"]:
            state["power_state"] = P.SUSPENDED
            return state
        vm, ty = entry.vm, entry.vm["ty"]
        state.update({
            "power_state": P.PAUSED if domain["paused"] else P.RUNNING,
            "domids": [domain["domid"]],
            "memory_target": domain["memory_dynamic_max"],
            "memory_actual": domain["memory_dynamic_max"],
            "memory_limit": vm["memory_static_max"],
            "vcpu_target": domain["vcpus"],
            "shadow_multiplier_target": domain["shadow_multiplier"],
            "rtc_timeoffset": ty[1]["timeoffset"] if tag(ty) == "HVM" else "",
            "xsdata_state": dict(domain["xsdata"]),
            "last_start_time": domain["last_create_time"],
            "hvm": domain["hvm"],
            "domain_type": f"Domain_{tag(ty)}",
            "featureset": vm["platformdata"].get("featureset", ""),
        })
        if domain["hvm"] and domain["qemu_created"]:
            state["consoles"] = [{"protocol": "Rfb", "port": 5900 + domain["domid"], "path": ""}]
        return state

    def vbd_state(self, vm_id: str, device: str) -> dict:
        state = P.unplugged_vbd_state()
        if not self.has_domain(vm_id):
            return state
        domain = self.domain(vm_id)
        state["active"] = device in domain["active"]["vbd"]
        plugged = domain["vbds"].get(device)
        if plugged is not None and _connected(plugged):
            state["plugged"] = True
            if plugged["disk"] is not None:
                state["backend_present"] = plugged["disk"]
        return state

    def vif_state(self, vm_id: str, device: str) -> dict:
        state = P.unplugged_vif_state()
        if not self.has_domain(vm_id):
            return state
        domain = self.domain(vm_id)
        state["active"] = device in domain["active"]["vif"]
        plugged = domain["vifs"].get(device)
        if plugged is not None and _connected(plugged):
            state.update(plugged=True, media_present=plugged["carrier"],
                         device=f"vif{domain['domid']}.{device}")
        return state

    # ------------------------------------------------------------ host

    def host_stat(self) -> dict:
        return {
            "cpu_info": {
                "cpu_count": 16, "socket_count": 1, "threads_per_core": 2, "nr_nodes": 1,
                "vendor": "GenuineIntel", "speed": "2400.000", "modelname": "Simulated CPU",
                "family": "6", "model": "85", "stepping": "4", "flags": "fpu de tsc msr pae vmx",
                "features": "", "features_pv": "", "features_hvm": "", "features_pv_host": "",
                "features_hvm_host": "",
            },
            "hypervisor": {"version": "4.17.0", "capabilities": "xen-3.0-x86_64 hvm-3.0-x86_32 hvm-3.0-x86_64"},
            "chipset_info": {"iommu": True, "hvm": True},
        }
