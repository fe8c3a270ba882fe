"""One event watcher per xenopsd queue: xenopsd's state written back to the database.

The loop of xapi's ``events_from_xenopsd``: ``UPDATES.get`` (blocking, with
a timeout so the thread can stop), then for every barrier its objects and a
wake-up for whoever injected it, then the plain updates, each object once
per round.  A VM update writes ``power_state``, ``domid``, ``resident_on``
and the VM_metrics; on Halted the devices are detached, ``resident_on`` is
cleared, ``domid`` is -1 and xenopsd forgets the VM.  VBD and VIF updates
write ``currently_attached``; task updates mirror progress.

When xenopsd cannot be reached the watcher waits for it, and on its return
(or at start) resynchronises: xapi's ``resync_resident_on`` followed by a
refresh of every VM, so nothing that happened meanwhile is missed.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from xapi import operations
from xapi.backends.xenops.client import XenopsError, XenopsUnavailable
from xapi.context import now
from xapi.idl.types import NULL_REF
from xapi.refs import make_ref, make_uuid

from .metadata import linux_device

log = logging.getLogger("xapi.domains.watcher")

POWER_STATES = {"Running": "Running", "Halted": "Halted", "Suspended": "Suspended", "Paused": "Paused"}


def _ours(vm: dict, here: str) -> bool:
    """Resident here, or being started here; a VM arriving by migration is not ours yet."""
    resident = vm["resident_on"]
    return resident == here or (resident == NULL_REF and vm["scheduled_to_be_resident_on"] == here)


def _leaving(vm: dict, here: str) -> bool:
    """Resident here and scheduled elsewhere: migrating away."""
    return vm["resident_on"] == here and vm["scheduled_to_be_resident_on"] not in (here, NULL_REF)


class _QueueThread:
    """A thread reading one xenopsd queue's update stream until stopped."""

    role = ""

    def __init__(self, domains, queue: str):
        self.domains = domains
        self.rt = domains.rt
        self.queue = queue
        self.client = domains.clients[queue]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"xenops-{self.role}-{queue}",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        raise NotImplementedError


class QueueWatcher(_QueueThread):
    role = "watch"

    def __init__(self, domains, queue: str):
        super().__init__(domains, queue)
        self.resynced = threading.Event()

    # -- the loop --------------------------------------------------------------------

    def _run(self) -> None:
        last: int | None = None
        fresh = True
        while not self._stop.is_set():
            try:
                if fresh:
                    last = self.client.updates_last_id()
                    self.resync()
                    fresh = False
                    self.resynced.set()
                barriers, updates, next_id = self.client.updates_get(last, 5)
                seen: set = set()
                for barrier, ids in barriers:
                    self._process_all(ids, seen)
                    if not self.domains.barrier_reached(self.queue, barrier):
                        self.client.updates_remove_barrier(barrier)  # nobody waits for it
                self._process_all(updates, seen)
                last = next_id
            except XenopsUnavailable:
                if not fresh:
                    log.warning("xenopsd queue %s is unreachable; waiting for it", self.queue)
                fresh = True
                self.resynced.clear()
                self._stop.wait(1.0)
            except Exception:
                log.exception("event watcher of %s failed; restarting from a resync", self.queue)
                fresh = True
                self._stop.wait(1.0)

    def _process_all(self, dyns: list, seen: set) -> None:
        """Each update once, in order, except that VMs' states are written together
        (``write_vm_states``) up to the next device update or the end."""
        vms: list[tuple[str, dict]] = []
        for dyn in dyns:
            if dyn[0] == "Vm":
                key = ("Vm", repr(dyn[1]))
                if key in seen:
                    continue
                seen.add(key)
                try:
                    found = self.vm_state(dyn[1])
                except XenopsUnavailable:
                    raise
                except Exception:
                    log.exception("could not apply xenopsd update %r", dyn)
                    continue
                if found is not None:
                    vms.append(found)
                continue
            if dyn[0] != "Task" and vms:  # a device's update follows its VM's
                self.write_vm_states(vms)
                vms = []
            self._process(dyn, seen)
        if vms:
            self.write_vm_states(vms)

    def _process(self, dyn: Any, seen: set) -> None:
        """A device's or a task's update (VMs': ``_process_all``)."""
        kind, ident = dyn[0], dyn[1]
        key = (kind, repr(ident))
        if key in seen:
            return
        seen.add(key)
        try:
            if kind == "Vbd":
                self.update_vbd(ident[0], ident[1])
            elif kind == "Vif":
                self.update_vif(ident[0], ident[1])
            elif kind == "Task":
                self.update_task(ident)
        except XenopsUnavailable:
            raise
        except Exception:
            log.exception("could not apply xenopsd update %r", dyn)

    # -- VMs -------------------------------------------------------------------------

    def _local_vm(self, uuid: str) -> tuple[str, dict] | None:
        ref = self.rt.cache.ref_by_uuid("VM", uuid)
        if ref is None:
            return None
        values = self.rt.cache.get("VM", ref).values
        if not _ours(values, self.rt.host_ref):
            return None  # not ours to write (xapi ignores VMs resident elsewhere)
        if self.domains.queue_of(values) != self.queue:
            return None
        return ref, values

    def vm_state(self, uuid: str) -> tuple[str, dict] | None:
        """(ref, xenopsd's state) of a VM of ours whose state is to be written."""
        found = self._local_vm(uuid)
        if found is None:
            return None
        ref, values = found
        try:
            _, state = self.client.vm_stat(uuid)
        except XenopsError:
            state = {"power_state": "Halted", "domids": []}
        if state.get("power_state") == "Halted" and _leaving(values, self.rt.host_ref):
            return None  # handed to another host's xenopsd: a migration, not a halt
        return ref, state

    def write_vm_state(self, ref: str, state: dict) -> None:
        self._write_batch([(ref, state)])

    # Write-backs of one round go together, a few per commit: fewer commits, and
    # each commit's announcement still carries its changes (db/announce.py).
    BATCH = 6

    def write_vm_states(self, states: list[tuple[str, dict]]) -> None:
        """Several VMs' states, ``BATCH`` per transaction; one by one if a batch fails."""
        for i in range(0, len(states), self.BATCH):
            self._write_or_split(states[i:i + self.BATCH])

    def _write_or_split(self, batch: list[tuple[str, dict]]) -> None:
        try:
            self._write_batch(batch)
        except XenopsUnavailable:
            raise
        except Exception:
            if len(batch) == 1:
                log.exception("could not write back the state of VM %s", batch[0][0])
                return
            log.debug("a batch of write-backs failed; writing them one by one", exc_info=True)
            for one in batch:
                self._write_or_split([one])

    def _write_batch(self, batch: list[tuple[str, dict]]) -> None:
        for ref, state in batch:
            self._before_write(ref, state)
        with self.rt.db.write() as tx:
            refs = [ref for ref, _ in batch]  # one round trip locks them all
            tx.lock_rows({"VM": refs,
                          "VM_metrics": [row.values["metrics"] for ref in refs
                                         if (row := self.rt.cache.get("VM", ref)) is not None]})
            halted = [self._write_in(tx, ref, state) for ref, state in batch]
        for vm_uuid in halted:
            self._forget(vm_uuid)

    def _before_write(self, ref: str, state: dict) -> None:
        power = POWER_STATES.get(state.get("power_state"), "Halted")
        cached = self.rt.cache.get("VM", ref)
        if power in ("Halted", "Suspended") and cached is not None \
                and cached.values["power_state"] != power:
            # xapi detaches storage on both; before the new state is written, so that
            # whoever waits for it (in this process or another) finds the disks free.
            from xapi.context import Context
            from .lifecycle import release_disks

            release_disks(Context(rt=self.rt), ref)

    def _forget(self, vm_uuid: str | None) -> None:
        if vm_uuid is not None:
            try:
                self.client.vm_remove(vm_uuid)  # xenopsd forgets a halted VM's metadata
            except XenopsError:
                pass

    def _write_in(self, tx, ref: str, state: dict) -> str | None:
        """One VM's write-back in ``tx``; the uuid of a VM that has just halted (for
        xenopsd to forget once the commit is done)."""
        rt = self.rt
        power = POWER_STATES.get(state.get("power_state"), "Halted")
        domids = state.get("domids") or []
        halted = power == "Halted"
        vm = tx.get("VM", ref, for_update=True)
        if vm is None:
            return None
        changes: dict[str, Any] = {"power_state": power, "domid": domids[0] if domids else -1}
        if halted:
            changes.update(resident_on=NULL_REF, scheduled_to_be_resident_on=NULL_REF,
                           requires_reboot=False)
            for cls in ("VBD", "VIF"):
                for dev in tx.refs_where(cls, VM=ref, currently_attached=True):
                    tx.update(cls, dev, {"currently_attached": False})
        elif vm["resident_on"] == NULL_REF:
            changes["resident_on"] = rt.host_ref
        changed = {k: v for k, v in changes.items() if vm.get(k) != v}
        tx.update("VM", ref, changed)
        self._write_metrics(tx, ref, vm, state, power)
        if power == "Running" and vm["guest_metrics"] == NULL_REF:
            guest = make_ref()
            tx.insert("VM_guest_metrics", guest, {"uuid": make_uuid(), "last_updated": now()})
            tx.update("VM", ref, {"guest_metrics": guest})
        if vm["power_state"] != power:  # the rules moved with the power state
            operations.refresh_vm_and_devices_in(tx, rt, ref)
        return vm["uuid"] if halted and vm["power_state"] != "Halted" else None

    def _write_metrics(self, tx, ref: str, vm: dict, state: dict, power: str) -> None:
        metrics = vm["metrics"]
        current = tx.get("VM_metrics", metrics, for_update=True) if metrics != NULL_REF else None
        if current is None:
            return
        changes: dict[str, Any] = {}
        if power != "Halted":
            changes["VCPUs_number"] = int(state.get("vcpu_target", vm["VCPUs_at_startup"]))
            changes["memory_actual"] = int(state.get("memory_actual", vm["memory_target"]) or vm["memory_target"])
            start = state.get("last_start_time")
            if start:
                from datetime import datetime, timezone

                changes["start_time"] = datetime.fromtimestamp(float(start), timezone.utc).replace(microsecond=0)
            domain_type = {"Domain_HVM": "hvm", "Domain_PV": "pv", "Domain_PVH": "pvh",
                           "Domain_PVinPVH": "pv_in_pvh"}.get(state.get("domain_type"))
            if domain_type:
                changes["current_domain_type"] = domain_type
            changes["hvm"] = bool(state.get("hvm", False))
        changes = {k: v for k, v in changes.items() if current.get(k) != v}
        if changes:  # an unchanged VM costs no write and no event
            tx.update("VM_metrics", metrics, {**changes, "last_updated": now()})

    # -- devices ---------------------------------------------------------------------

    def _device(self, cls: str, vm_uuid: str, device: str) -> str | None:
        found = self._local_vm(vm_uuid)
        if found is None:
            return None
        vm_ref, _ = found
        for ref in self.rt.cache.derived("VM", f"{cls}s", vm_ref):
            row = self.rt.cache.get(cls, ref)
            if row is None:
                continue
            values = row.values
            if cls == "VBD" and device in (linux_device(values["userdevice"]), values["device"]):
                return ref
            if cls == "VIF" and values["device"] == device:
                return ref
        return None

    def update_vbd(self, vm_uuid: str, device: str) -> None:
        ref = self._device("VBD", vm_uuid, device)
        if ref is None:
            return
        try:
            _, state = self.client.vbd_stat([vm_uuid, device])
            attached = bool(state.get("plugged") or state.get("active"))
        except XenopsError:
            state, attached = {}, False
        with self.rt.db.write() as tx:
            changes: dict[str, Any] = {"currently_attached": attached}
            if attached:
                changes["device"] = device
            tx.update("VBD", ref, changes)
        if not attached and state:
            try:
                self.client.vbd_remove([vm_uuid, device])
            except XenopsError:
                pass

    def update_vif(self, vm_uuid: str, device: str) -> None:
        ref = self._device("VIF", vm_uuid, device)
        if ref is None:
            return
        try:
            _, state = self.client.vif_stat([vm_uuid, device])
            attached = bool(state.get("plugged") or state.get("active"))
        except XenopsError:
            state, attached = {}, False
        with self.rt.db.write() as tx:
            tx.update("VIF", ref, {"currently_attached": attached})
        if not attached and state:
            try:
                self.client.vif_remove([vm_uuid, device])
            except XenopsError:
                pass

    def update_task(self, task_id: str) -> None:
        # The waiter reads the task and mirrors its progress, in its own thread.
        self.domains.task_changed(self.queue, task_id)

    # -- resync ----------------------------------------------------------------------

    def resync(self) -> None:
        """xapi's resync_resident_on, then a refresh of every VM that lives here."""
        rt = self.rt
        cache = rt.cache
        known = {vm_t["id"]: state for vm_t, state in self.client.vm_list()}
        here = rt.host_ref
        for uuid, state in known.items():
            ref = cache.ref_by_uuid("VM", uuid)
            values = cache.get("VM", ref).values if ref else None
            if values is not None and values["resident_on"] not in (here, NULL_REF) \
                    and values["scheduled_to_be_resident_on"] == here:
                continue  # arriving by migration: the source still owns it
            if values is None or values["resident_on"] not in (here, NULL_REF) \
                    or self.domains.queue_of(values) != self.queue:
                self._destroy_unknown(uuid, state)
                continue
            if state.get("power_state") == "Halted":
                # Metadata of a VM that never started (or was stopped): xenopsd forgets it.
                self._destroy_unknown(uuid, state)
                if values["power_state"] != "Halted" or values["scheduled_to_be_resident_on"] != NULL_REF:
                    self.write_vm_state(ref, {"power_state": "Halted"})
                continue
            if values["power_state"] == "Halted" and state.get("power_state") == "Paused":
                # A start interrupted before its unpause: finish it cleanly as halted.
                self._destroy_unknown(uuid, state)
                self.write_vm_state(ref, {"power_state": "Halted"})
                continue
            if values["resident_on"] == NULL_REF:
                with rt.db.write() as tx:
                    tx.update("VM", ref, {"resident_on": here})
            self.client.updates_refresh_vm(uuid)
        for row in cache.rows("VM"):
            values = row.values
            if values["resident_on"] != here and values["scheduled_to_be_resident_on"] != here:
                continue
            if values["is_control_domain"] or self.domains.queue_of(values) != self.queue \
                    or _leaving(values, here):
                continue
            if values["uuid"] not in known and values["power_state"] != "Halted":
                self.write_vm_state(row.ref, {"power_state": "Halted"})
            elif values["uuid"] not in known and values["scheduled_to_be_resident_on"] != NULL_REF:
                with rt.db.write() as tx:
                    tx.update("VM", row.ref, {"scheduled_to_be_resident_on": NULL_REF})

    def _destroy_unknown(self, uuid: str, state: dict) -> None:
        try:
            if state.get("power_state") != "Halted":
                task = self.client.vm_shutdown(uuid, None)
                self.client.wait_task(task, 60)
                self.client.task_destroy(task)
            self.client.vm_remove(uuid)
        except XenopsError:
            log.warning("could not clean up unknown domain %s", uuid, exc_info=True)


class TaskWatcher(_QueueThread):
    """A worker's ear on a queue: ``UPDATES.get`` for task updates only.

    A worker runs xenopsd operations but does not write xenopsd's state back
    (the queue's one ``QueueWatcher`` in the server does).  It still needs
    to know when a task it waits for changed, without polling TASK.stat:
    this loop reads the same update stream and wakes the task's waiter,
    leaving every other update and every barrier to the server's watcher.
    """

    role = "tasks"

    def __init__(self, domains, queue: str):
        super().__init__(domains, queue)
        self.listening = threading.Event()  # set while the stream is read

    def _run(self) -> None:
        last: int | None = None
        while not self._stop.is_set():
            try:
                if last is None:
                    last = self.client.updates_last_id()
                    self.listening.set()
                _, updates, last = self.client.updates_get(last, 5)
                for dyn in updates:
                    if dyn[0] == "Task":
                        self.domains.task_changed(self.queue, dyn[1])
            except Exception as exc:  # unreachable xenopsd, or a reply we cannot read
                if self.listening.is_set():
                    log.warning("task updates of %s lost (%s); waiters poll meanwhile", self.queue, exc)
                self.listening.clear()
                last = None
                self._stop.wait(1.0)
