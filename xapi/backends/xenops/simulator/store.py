"""The simulator's state and its on-disk copy (xenopsd's DB plus the simulated domains).

One JSON file per VM, ``<state_dir>/vms/<uuid>.json``::

    {"vm": Vm.t, "vbds": {"xvda": Vbd.t, …}, "vifs": {"0": Vif.t, …}, "domain": {…} | null}

and ``<state_dir>/counters.json`` with a ceiling for each id (domid, task
id, update id).  Every change of a VM is written at once, atomically (a
temporary file renamed over the old one), so a killed simulator restarts
with its VMs, their devices and their running domains exactly as they were:
a change is on disk before any reply leaves the daemon (``Service.dispatch``
flushes) and at the latest one turn of the event loop after it was made, so
the several micro-ops of an operation that run without pausing cost one
write.  A file whose content did not change is not rewritten.

Ids are handed out from reserved blocks: the file records the end of the
current block, and is rewritten only when a block is used up.  A restarted
simulator goes on from the recorded end, so ids never repeat (a restart skips
the rest of the block, as a gap is harmless) while an update, which takes an
id, costs no file write.

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

import asyncio
import json
import os
from dataclasses import dataclass, field
from typing import Any

_COUNTERS = {"next_domid": 1, "next_task_id": 0, "next_update_id": 1}
# Ids reserved per write of counters.json.  Domids stay small (Xen's run out
# at 32752), task and update ids are taken several times per operation.
_BLOCKS = {"next_domid": 16, "next_task_id": 4096, "next_update_id": 4096}


@dataclass
class VmEntry:
    vm: dict
    vbds: dict[str, dict] = field(default_factory=dict)
    vifs: dict[str, dict] = field(default_factory=dict)
    domain: dict | None = None

    def to_json(self) -> dict:
        return {"vm": self.vm, "vbds": self.vbds, "vifs": self.vifs, "domain": self.domain}


def write_atomically(path: str, value: Any) -> None:
    write_text_atomically(path, json.dumps(value, separators=(",", ":")))


def write_text_atomically(path: str, text: str) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


class Store:
    def __init__(self, state_dir: str):
        self.state_dir = state_dir
        self._vm_dir = os.path.join(state_dir, "vms")
        os.makedirs(self._vm_dir, exist_ok=True)
        self._counters_path = os.path.join(state_dir, "counters.json")
        self.vms: dict[str, VmEntry] = {}
        self.counters = dict(_COUNTERS)
        self._written: dict[str, str] = {}  # VM id → the JSON its file holds
        self._dirty: set[str] = set()
        self._flush_due = False
        self._load()
        # Restart from the ceilings: ids below them may have been handed out.
        self._reserved = dict(self.counters)

    def _load(self) -> None:
        if os.path.exists(self._counters_path):
            with open(self._counters_path, encoding="utf-8") as f:
                self.counters.update(json.load(f))
        for name in sorted(os.listdir(self._vm_dir)):
            if not name.endswith(".json"):
                continue
            with open(os.path.join(self._vm_dir, name), encoding="utf-8") as f:
                text = f.read()
            doc = json.loads(text)
            entry = VmEntry(doc["vm"], doc.get("vbds", {}), doc.get("vifs", {}), doc.get("domain"))
            self.vms[entry.vm["id"]] = entry
            self._written[entry.vm["id"]] = text
        # Domain ids are never reused, even if the counters file is older than a VM file.
        domids = [e.domain["domid"] for e in self.vms.values() if e.domain]
        self.counters["next_domid"] = max([self.counters["next_domid"], *(d + 1 for d in domids)])

    def _vm_path(self, vm_id: str) -> str:
        if "/" in vm_id or vm_id in ("", ".", ".."):
            raise ValueError(f"unusable VM id {vm_id!r}")
        return os.path.join(self._vm_dir, f"{vm_id}.json")

    def save(self, vm_id: str) -> None:
        """Have one VM's file written (or deleted when the VM is gone) by the next flush."""
        self._vm_path(vm_id)  # a bad id fails here, in its caller
        self._dirty.add(vm_id)
        if self._flush_due:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        self._flush_due = True
        loop.call_soon(self.flush)

    def flush(self) -> None:
        """Write what changed since the last flush."""
        self._flush_due = False
        dirty, self._dirty = self._dirty, set()
        for vm_id in dirty:
            self._write(vm_id)

    def _write(self, vm_id: str) -> None:
        entry = self.vms.get(vm_id)
        path = self._vm_path(vm_id)
        if entry is None:
            self._written.pop(vm_id, None)
            if os.path.exists(path):
                os.unlink(path)
            return
        text = json.dumps(entry.to_json(), separators=(",", ":"))
        if self._written.get(vm_id) != text:  # most micro-ops change nothing durable
            write_text_atomically(path, text)
            self._written[vm_id] = text

    def next_counter(self, name: str) -> int:
        value = self.counters[name]
        self.set_counter(name, value + 1)
        return value

    def set_counter(self, name: str, value: int) -> None:
        self.counters[name] = value
        if value > self._reserved[name]:
            self._reserved[name] = value + _BLOCKS[name]
            write_atomically(self._counters_path, self._reserved)
