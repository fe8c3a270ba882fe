"""The simulator's state and its on-disk copy (xenopsd's DB plus the simulated domains).

One JSON file per VM, ``<state_dir>/vms/<uuid>.json``::

    {"vm": Vm.t, "vbds": {"xvda": Vbd.t, …}, "vifs": {"0": Vif.t, …}, "domain": {…} | null}

and ``<state_dir>/counters.json`` with the next domid, task id and update
id.  Every change is written at once, atomically (a temporary file renamed
over the old one), so a killed simulator restarts with its VMs, their
devices and their running domains exactly as they were; ids never repeat.

A domain is the record xenopsd's simulator backend keeps, plus a
xenstore-like view of each plugged device::

    {"domid": 3, "hvm": false, "paused": true, "built": false, "qemu_created": false,
     "suspended": false, "action_request": null | "poweroff" | "reboot" | "crashdump",
     "vcpus": 1, "shadow_multiplier": 1.0, "memory_dynamic_min": …, "memory_dynamic_max": …,
     "xsdata": {}, "last_create_time": 1700000000.0, "suspend_disk": null,
     "active": {"vbd": ["xvda"], "vif": ["0"]},
     "vbds": {"xvda": {"position": ["Xen", 0, 0], "mode": "ReadWrite", "disk": ["VDI", "sr/loc"],
                       "frontend": {"state": "4"},
                       "backend_keys": {"state": "4", "hotplug-status": "connected"}}},
     "vifs": {"0": {"position": 0, "network": ["Local", "xenbr0"], "carrier": true,
                    "frontend": {…}, "backend_keys": {…}}}}

(``vbds``/``vifs`` in the domain are the plugged devices, in plug order.)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

_COUNTERS = {"next_domid": 1, "next_task_id": 0, "next_update_id": 1}


@dataclass
class VmEntry:
    vm: dict
    vbds: dict[str, dict] = field(default_factory=dict)
    vifs: dict[str, dict] = field(default_factory=dict)
    domain: dict | None = None

    def to_json(self) -> dict:
        return {"vm": self.vm, "vbds": self.vbds, "vifs": self.vifs, "domain": self.domain}


def write_atomically(path: str, value: Any) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(value, f, separators=(",", ":"))
    os.replace(tmp, path)


class Store:
    def __init__(self, state_dir: str):
        self.state_dir = state_dir
        self._vm_dir = os.path.join(state_dir, "vms")
        os.makedirs(self._vm_dir, exist_ok=True)
        self._counters_path = os.path.join(state_dir, "counters.json")
        self.vms: dict[str, VmEntry] = {}
        self.counters = dict(_COUNTERS)
        self._load()

    def _load(self) -> None:
        if os.path.exists(self._counters_path):
            with open(self._counters_path, encoding="utf-8") as f:
                self.counters.update(json.load(f))
        for name in sorted(os.listdir(self._vm_dir)):
            if not name.endswith(".json"):
                continue
            with open(os.path.join(self._vm_dir, name), encoding="utf-8") as f:
                doc = json.load(f)
            entry = VmEntry(doc["vm"], doc.get("vbds", {}), doc.get("vifs", {}), doc.get("domain"))
            self.vms[entry.vm["id"]] = entry
        # Domain ids are never reused, even if the counters file is older than a VM file.
        domids = [e.domain["domid"] for e in self.vms.values() if e.domain]
        self.counters["next_domid"] = max([self.counters["next_domid"], *(d + 1 for d in domids)])

    def _vm_path(self, vm_id: str) -> str:
        if "/" in vm_id or vm_id in ("", ".", ".."):
            raise ValueError(f"unusable VM id {vm_id!r}")
        return os.path.join(self._vm_dir, f"{vm_id}.json")

    def save(self, vm_id: str) -> None:
        """Write one VM's file (or delete it when the VM is gone)."""
        entry = self.vms.get(vm_id)
        path = self._vm_path(vm_id)
        if entry is None:
            if os.path.exists(path):
                os.unlink(path)
        else:
            write_atomically(path, entry.to_json())

    def next_counter(self, name: str) -> int:
        value = self.counters[name]
        self.counters[name] = value + 1
        write_atomically(self._counters_path, self.counters)
        return value

    def set_counter(self, name: str, value: int) -> None:
        self.counters[name] = value
        write_atomically(self._counters_path, self.counters)
