"""VM, VBD and VIF records (xenopsd's VM_DB, VBD_DB, VIF_DB) and their updates.

Errors carry xenopsd's keys: an unknown VM is ``Does_not_exist ("VM",
"<uuid>/config")``, an unknown VBD ``("VM", "<uuid>/vbd.xvda")``, an
unknown VIF ``("VM", "<uuid>/vif.0")``; adding a device to an unknown VM is
``("VM", "<uuid>")``.  Records are written as they are given (``VM.add`` of
a known VM replaces it); only their changes published with ``signal_*``
reach ``UPDATES``.
"""

from __future__ import annotations

import hashlib
import json
import random
from typing import Any

from xapi.backends.xenops import protocol as P
from xapi.backends.xenops.schema import SchemaError, tag
from xapi.backends.xenops.simulator.hypervisor import Hypervisor
from xapi.backends.xenops.simulator.store import Store, VmEntry
from xapi.backends.xenops.simulator.tasks import fail
from xapi.backends.xenops.simulator.updates import Updates


def local_mac(seed: str | None) -> str:
    """A locally administered unicast MAC: derived from ``seed``, or random."""
    raw = bytearray(hashlib.sha1(seed.encode()).digest()[:6] if seed else random.randbytes(6))
    raw[0] = (raw[0] & 0xFE) | 0x02
    return ":".join(f"{b:02x}" for b in raw)


def upgrade_device_name(name: str) -> str:
    """``hda`` → ``xvda``: HVM disks named by old hosts, renamed as xenopsd does on import."""
    return "xvd" + name[2:] if name.startswith("hd") else name


class Objects:
    def __init__(self, store: Store, hv: Hypervisor, updates: Updates):
        self.store = store
        self.hv = hv
        self.updates = updates
        self.rebooting: set[str] = set()

    # ------------------------------------------------------------ lookups

    def entry(self, vm_id: str) -> VmEntry:
        entry = self.store.vms.get(vm_id)
        if entry is None:
            raise fail("Does_not_exist", "VM", f"{vm_id}/config")
        return entry

    def vbd(self, vm_id: str, device: str) -> dict:
        entry = self.store.vms.get(vm_id)
        if entry is None or device not in entry.vbds:
            raise fail("Does_not_exist", "VM", f"{vm_id}/vbd.{device}")
        return entry.vbds[device]

    def vif(self, vm_id: str, device: str) -> dict:
        entry = self.store.vms.get(vm_id)
        if entry is None or device not in entry.vifs:
            raise fail("Does_not_exist", "VM", f"{vm_id}/vif.{device}")
        return entry.vifs[device]

    def power_state(self, vm_id: str) -> str:
        self.entry(vm_id)
        return self.hv.vm_state(vm_id)["power_state"]

    # ------------------------------------------------------------ updates

    def signal_vm(self, vm_id: str) -> None:
        if vm_id in self.store.vms:
            self.updates.add(("Vm", vm_id))

    def signal_vbd(self, vm_id: str, device: str) -> None:
        entry = self.store.vms.get(vm_id)
        if entry is not None and device in entry.vbds:
            self.updates.add(("Vbd", (vm_id, device)))

    def signal_vif(self, vm_id: str, device: str) -> None:
        entry = self.store.vms.get(vm_id)
        if entry is not None and device in entry.vifs:
            self.updates.add(("Vif", (vm_id, device)))

    def refresh(self, vm_id: str) -> None:
        """``UPDATES.refresh_vm``: re-signal the VM and all its devices."""
        entry = self.store.vms.get(vm_id)
        if entry is None:
            return
        self.signal_vm(vm_id)
        for device in entry.vbds:
            self.signal_vbd(vm_id, device)
        for device in entry.vifs:
            self.signal_vif(vm_id, device)

    def register_all(self) -> None:
        """Signal every object, as xenopsd does at start, so a new watcher sees them."""
        for vm_id in list(self.store.vms):
            self.refresh(vm_id)

    # ------------------------------------------------------------ VM records

    def add_vm(self, vm: dict) -> str:
        vm_id = vm["id"]
        entry = self.store.vms.get(vm_id)
        if entry is None:
            self.store.vms[vm_id] = VmEntry(vm)
        else:
            entry.vm = vm
        self.store.save(vm_id)
        return vm_id

    def remove_vm(self, vm_id: str) -> None:
        """The ``VM_remove`` micro-op: only a halted or suspended VM goes."""
        entry = self.entry(vm_id)
        power = self.hv.vm_state(vm_id)["power_state"]
        if power in (P.RUNNING, P.PAUSED):
            raise fail("Bad_power_state", power, P.HALTED)
        for device in entry.vbds:
            self.updates.remove(("Vbd", (vm_id, device)))
        for device in entry.vifs:
            self.updates.remove(("Vif", (vm_id, device)))
        del self.store.vms[vm_id]
        self.updates.remove(("Vm", vm_id))
        self.store.save(vm_id)

    def stat_vm(self, vm_id: str) -> list:
        entry = self.entry(vm_id)
        state = self.hv.vm_state(vm_id)
        if vm_id in self.rebooting:  # no transient Halted while rebooting
            state["power_state"] = P.RUNNING
        return [entry.vm, state]

    def list_vms(self) -> list:
        return [[e.vm, self.hv.vm_state(vm_id)] for vm_id, e in self.store.vms.items()]

    # ------------------------------------------------------------ devices

    def add_vbd(self, vbd: dict) -> list:
        vm_id, device = vbd["id"]
        entry = self.store.vms.get(vm_id)
        if entry is None:
            raise fail("Does_not_exist", "VM", vm_id)
        entry.vbds[device] = vbd
        self.store.save(vm_id)
        return [vm_id, device]

    def add_vif(self, vif: dict) -> list:
        vm_id, device = vif["id"]
        entry = self.store.vms.get(vm_id)
        if entry is None:
            raise fail("Does_not_exist", "VM", vm_id)
        if vif["mac"] in ("", "random"):
            vif = {**vif, "mac": local_mac(None if vif["mac"] == "random" else f"{vm_id}/{vif['position']}")}
        entry.vifs[device] = vif
        self.store.save(vm_id)
        return [vm_id, device]

    def remove_vbd(self, vm_id: str, device: str) -> None:
        self.vbd(vm_id, device)
        if self.hv.vbd_state(vm_id, device)["plugged"]:
            raise fail("Device_is_connected")
        del self.store.vms[vm_id].vbds[device]
        self.updates.remove(("Vbd", (vm_id, device)))
        self.store.save(vm_id)

    def remove_vif(self, vm_id: str, device: str) -> None:
        self.vif(vm_id, device)
        if self.hv.vif_state(vm_id, device)["plugged"]:
            raise fail("Device_is_connected")
        del self.store.vms[vm_id].vifs[device]
        self.updates.remove(("Vif", (vm_id, device)))
        self.store.save(vm_id)

    def stat_vbd(self, vm_id: str, device: str) -> list:
        return [self.vbd(vm_id, device), self.hv.vbd_state(vm_id, device)]

    def stat_vif(self, vm_id: str, device: str) -> list:
        return [self.vif(vm_id, device), self.hv.vif_state(vm_id, device)]

    def list_vbds(self, vm_id: str) -> list:
        entry = self.store.vms.get(vm_id)
        return [] if entry is None else [self.stat_vbd(vm_id, d) for d in entry.vbds]

    def list_vifs(self, vm_id: str) -> list:
        entry = self.store.vms.get(vm_id)
        return [] if entry is None else [self.stat_vif(vm_id, d) for d in entry.vifs]

    # ------------------------------------------------------------ metadata

    def parse_metadata(self, text: str) -> dict:
        try:
            return P.METADATA.decode(json.loads(text))
        except (ValueError, SchemaError) as exc:
            raise fail("Internal_error", f"Unable to unmarshal metadata: {exc}") from None

    def import_metadata(self, md: dict) -> str:
        """Replace a VM's metadata: its record, its devices (dropping those no
        longer listed, which must be unplugged) and, when given, its domain."""
        vm = md["vm"]
        vm_id = vm["id"]
        if "featureset" not in vm["platformdata"]:  # as from a levelling-v1 host: all of ours
            cpu = self.hv.host_stat()["cpu_info"]
            features = cpu["features_hvm"] if tag(vm["ty"]) != "PV" else cpu["features_pv"]
            vm = {**vm, "platformdata": {"featureset": features, **vm["platformdata"]}}
        self.add_vm(vm)
        vbds = [{**v, "id": [vm_id, upgrade_device_name(v["id"][1])]} for v in md["vbds"]]
        vifs = [{**v, "id": [vm_id, v["id"][1]]} for v in md["vifs"]]
        entry = self.store.vms[vm_id]
        for device in [d for d in entry.vbds if d not in {v["id"][1] for v in vbds}]:
            self.remove_vbd(vm_id, device)
        for device in [d for d in entry.vifs if d not in {v["id"][1] for v in vifs}]:
            self.remove_vif(vm_id, device)
        for vbd in vbds:
            self.add_vbd(vbd)
        for vif in vifs:
            self.add_vif(vif)
        if md.get("domains"):
            try:
                domain = json.loads(md["domains"])
                if not isinstance(domain, dict) or "domid" not in domain:
                    raise ValueError("not a simulator domain")
            except ValueError as exc:
                raise fail("Internal_error", f"Failed to unmarshal Domain.t: {exc}") from None
            entry.domain = domain
            self.store.save(vm_id)
        return vm_id

    def export_metadata(self, vm_id: str) -> str:
        entry = self.entry(vm_id)
        md: dict[str, Any] = {"vm": entry.vm, "vbds": list(entry.vbds.values()), "vifs": list(entry.vifs.values()),
                              "pcis": [], "vgpus": [], "vusbs": []}
        if entry.domain is not None:
            md["domains"] = json.dumps(entry.domain)
        return json.dumps(md)
