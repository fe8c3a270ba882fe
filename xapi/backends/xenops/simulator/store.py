"""The simulator's state and its on-disk copy (xenopsd's DB plus the simulated domains).

Each VM's state is one JSON document::

    {"vm": Vm.t, "vbds": {"xvda": Vbd.t, …}, "vifs": {"0": Vif.t, …}, "domain": {…} | null}

kept in ``<state_dir>/vms.snapshot`` (every VM, ``{id: document}``, written
atomically: a temporary file renamed over the old one) followed by
``<state_dir>/vms.journal``, an append-only file of one line per change,
``{"id": …, "doc": document}`` or ``{"id": …, "gone": true}``.  A killed
simulator restarts with its VMs, their devices and their running domains
exactly as they were: a change is on disk before any reply leaves the daemon
(``Service.dispatch`` flushes) and at the latest one turn of the event loop
after it was made, so the several micro-ops of an operation that run without
pausing cost one line, and all the VMs changed in one turn one write.  A
document that did not change is not written again.  Loading replays the
journal over the snapshot (a line cut short by a crash was never answered
for, and is dropped); when the journal outgrows the snapshot, the state is
written as a new snapshot and the journal starts again (a crash in between
replays lines the snapshot holds already: the same end state).

``<state_dir>/counters.json`` holds a ceiling for each id (domid, task
id, update id).  Ids are handed out from reserved blocks: the file records the end of the
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


# The journal is folded into a new snapshot once it is this many times the
# snapshot's size (and at least _JOURNAL_MIN bytes).
_JOURNAL_RATIO = 4
_JOURNAL_MIN = 4 << 20


class Store:
    def __init__(self, state_dir: str):
        self.state_dir = state_dir
        os.makedirs(state_dir, exist_ok=True)
        self._snapshot_path = os.path.join(state_dir, "vms.snapshot")
        self._journal_path = os.path.join(state_dir, "vms.journal")
        self._counters_path = os.path.join(state_dir, "counters.json")
        self.vms: dict[str, VmEntry] = {}
        self.counters = dict(_COUNTERS)
        self._written: dict[str, str] = {}  # VM id → its document as last written
        self._dirty: set[str] = set()
        self._flush_due = False
        self._journal_fd = -1
        self._journal_size = 0
        self._snapshot_size = 0
        self._load()
        # Restart from the ceilings: ids below them may have been handed out.
        self._reserved = dict(self.counters)

    def _load(self) -> None:
        if os.path.exists(self._counters_path):
            with open(self._counters_path, encoding="utf-8") as f:
                self.counters.update(json.load(f))
        docs: dict[str, Any] = {}
        legacy = os.path.join(self.state_dir, "vms")  # an earlier version's file per VM
        legacy_files = sorted(os.listdir(legacy)) if os.path.isdir(legacy) else []
        for name in legacy_files:
            if name.endswith(".json"):
                with open(os.path.join(legacy, name), encoding="utf-8") as f:
                    doc = json.load(f)
                docs[doc["vm"]["id"]] = doc
        if os.path.exists(self._snapshot_path):
            with open(self._snapshot_path, encoding="utf-8") as f:
                docs.update(json.load(f))
        if os.path.exists(self._journal_path):
            with open(self._journal_path, "rb") as f:
                for line in f:
                    try:
                        change = json.loads(line)
                    except ValueError:
                        break  # cut short by a crash: it was never answered for
                    if change.get("gone"):
                        docs.pop(change["id"], None)
                    else:
                        docs[change["id"]] = change["doc"]
        for vm_id, doc in docs.items():
            self.vms[vm_id] = VmEntry(doc["vm"], doc.get("vbds", {}), doc.get("vifs", {}),
                                      doc.get("domain"))
        # Domain ids are never reused, even if the counters file is older than a VM's state.
        domids = [e.domain["domid"] for e in self.vms.values() if e.domain]
        self.counters["next_domid"] = max([self.counters["next_domid"], *(d + 1 for d in domids)])
        self._compact()
        for name in legacy_files:  # in the snapshot now
            os.unlink(os.path.join(legacy, name))

    def _check_id(self, vm_id: str) -> None:
        if not isinstance(vm_id, str) or vm_id == "":
            raise ValueError(f"unusable VM id {vm_id!r}")

    def save(self, vm_id: str) -> None:
        """Have one VM's state written (or its absence, when it is gone) by the next flush."""
        self._check_id(vm_id)  # a bad id fails here, in its caller
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
        """Write what changed since the last flush: one append to the journal."""
        self._flush_due = False
        dirty, self._dirty = self._dirty, set()
        lines = []
        for vm_id in dirty:
            entry = self.vms.get(vm_id)
            if entry is None:
                if self._written.pop(vm_id, None) is not None:
                    lines.append(json.dumps({"id": vm_id, "gone": True}))
                continue
            text = json.dumps(entry.to_json(), separators=(",", ":"))
            if self._written.get(vm_id) != text:  # most micro-ops change nothing durable
                self._written[vm_id] = text
                lines.append(f'{{"id":{json.dumps(vm_id)},"doc":{text}}}')
        if not lines:
            return
        data = ("\n".join(lines) + "\n").encode()
        view = memoryview(data)
        while view:
            view = view[os.write(self._journal_fd, view):]
        self._journal_size += len(data)
        if self._journal_size > max(_JOURNAL_MIN, _JOURNAL_RATIO * self._snapshot_size):
            self._compact()

    def _compact(self) -> None:
        """Every VM's state as a new snapshot, and an empty journal after it."""
        self._written = {vm_id: json.dumps(e.to_json(), separators=(",", ":"))
                         for vm_id, e in self.vms.items()}
        text = "{" + ",".join(f"{json.dumps(k)}:{v}" for k, v in self._written.items()) + "}"
        write_text_atomically(self._snapshot_path, text)
        self._snapshot_size = len(text)
        if self._journal_fd >= 0:
            os.close(self._journal_fd)
        self._journal_fd = os.open(self._journal_path,
                                   os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
        self._journal_size = 0

    def next_counter(self, name: str) -> int:
        value = self.counters[name]
        self.set_counter(name, value + 1)
        return value

    def set_counter(self, name: str, value: int) -> None:
        self.counters[name] = value
        if value > self._reserved[name]:
            self._reserved[name] = value + _BLOCKS[name]
            write_atomically(self._counters_path, self._reserved)
