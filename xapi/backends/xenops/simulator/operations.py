"""Operations: what each task does, as xenopsd's ``atomics_of_operation`` and ``perform``.

An operation is queued on its VM's queue with a task, checked against the
VM's power state (``VM_start`` wants Halted, ``VM_reboot`` Running or
Paused, ``VM_resume`` Suspended or Halted), expanded into micro-ops in
xenopsd's order, and run micro-op by micro-op, the task's progress moving
after each.  ``VM.start`` (xenopsd's ``VM_start``):

    VM_hook_script vm-pre-start, VM_create, VM_build,
    for each read/write VBD then each read-only one:
        VBD_set_active true, VBD_epoch_begin (if it has a disk), VBD_plug,
    for each VIF by position: VIF_set_active true, VIF_plug,
    VM_create_device_model, VM_set_domain_action_request none

and leaves the domain paused: xapi queues ``VM.unpause`` right after.
xenopsd runs the device groups in parallel; here they run one after the
other, in that order.  ``VM.shutdown``: pre-shutdown hook, the guest's
shutdown request when there is a delay, best-effort ``VM_pause``, the device
model, every VBD and VIF unplugged, ``VM_destroy``, the devices deactivated,
post-destroy hook.  ``VM.reboot`` is a shutdown then a start then
``VM_unpause``.  A failed operation leaves what it did (a failed start
leaves its paused domain), as xenopsd does; the caller shuts it down.

A guest's own shutdown (``DEBUG.trigger halt|reboot|crash``) sets its
domain's action request and queues ``VM_check_state``, which applies the
VM's ``on_shutdown``/``on_reboot``/``on_crash`` actions.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from xapi.backends.xenops import protocol as P
from xapi.backends.xenops.schema import arg, tag
from xapi.backends.xenops.simulator.hypervisor import Hypervisor
from xapi.backends.xenops.simulator.microops import MicroOp, MicroOps
from xapi.backends.xenops.simulator.objects import Objects
from xapi.backends.xenops.simulator.queues import VmQueues
from xapi.backends.xenops.simulator.tasks import TaskHandle, TaskTable, XenopsFailure, fail

log = logging.getLogger(__name__)

Operation = tuple  # ("VM_start", vm, force), ("Atomic", MicroOp), …

CRASH_TOO_SOON = 120.0  # seconds: a guest crashing sooner is not restarted


class Operations:
    def __init__(self, objects: Objects, hv: Hypervisor, micro: MicroOps, tasks: TaskTable, queues: VmQueues):
        self.objects = objects
        self.hv = hv
        self.micro = micro
        self.tasks = tasks
        self.queues = queues

    # ------------------------------------------------------------ queueing and running tasks

    def queue(self, dbg: str, vm: str, op: Operation, *, listed: bool = True) -> TaskHandle:
        handle = self.tasks.add(dbg, listed=listed)
        self.queues.push(vm, lambda: self._run(handle, op))
        return handle

    async def queue_and_wait(self, dbg: str, vm: str, op: Operation) -> Any:
        """Queue, wait, destroy the task, and return its result or raise its error."""
        handle = self.queue(dbg, vm, op)
        await handle.done.wait()
        return self._outcome(handle)

    async def immediate(self, dbg: str, op: Operation) -> Any:
        """Run now, outside the queues, with a task nobody sees."""
        handle = self.tasks.add(dbg, listed=False)
        await self._run(handle, op)
        return self._outcome(handle)

    def _outcome(self, handle: TaskHandle) -> Any:
        if self.tasks.exists(handle.id):
            self.tasks.destroy(handle.id)
        if tag(handle.state) == P.FAILED:
            raise XenopsFailure(arg(handle.state))
        return P.task_result({"state": handle.state})

    def check_state_later(self, vm: str) -> None:
        self.queue("events", vm, ("VM_check_state", vm), listed=False)

    async def _run(self, handle: TaskHandle, op: Operation) -> None:
        start = time.time()
        try:
            result = await self.perform(handle, op)
            state = P.task_completed(time.time() - start, result)
        except XenopsFailure as exc:
            state = P.task_failed(exc.error)
        except Exception as exc:  # a simulator bug: report it the way xenopsd reports any exception
            log.exception("task %s (%s) failed", handle.id, op[0])
            state = P.task_failed(P.error("Internal_error", f"{type(exc).__name__}: {exc}"))
        self.tasks.finish(handle, state)

    # ------------------------------------------------------------ perform

    def verify_power_state(self, op: Operation) -> None:
        expected = {"VM_start": (P.HALTED,), "VM_reboot": (P.RUNNING, P.PAUSED),
                    "VM_resume": (P.SUSPENDED, P.HALTED)}.get(op[0])
        if expected:
            power = self.objects.power_state(op[1])
            if power not in expected:
                raise fail("Bad_power_state", power, expected[0])

    async def perform(self, task: TaskHandle, op: Operation) -> Any:
        self.verify_power_state(op)
        try:
            return await self.perform_exn(task, op)
        except XenopsFailure:
            self._after_failure(op)
            raise

    def _after_failure(self, op: Operation) -> None:
        # xenopsd's cleanup re-checks the objects; with nothing to undo here, re-signal them.
        kind, vm = op[0], (op[1].vm if op[0] == "Atomic" else op[1])
        if kind in ("VBD_hotplug", "VBD_hotunplug"):
            self.objects.signal_vbd(vm, op[2])
        elif kind in ("VIF_hotplug", "VIF_hotunplug"):
            self.objects.signal_vif(vm, op[2])
        self.objects.signal_vm(vm)

    async def perform_exn(self, task: TaskHandle, op: Operation) -> Any:
        kind = op[0]
        if kind == "Atomic":
            result = await self.micro.run(task, op[1])
            self.tasks.set_progress(task, 1.0)
            return result
        vm = op[1]
        if kind == "VM_check_state":
            await self.check_state(task, vm)
        elif kind == "VM_start":
            if self.objects.power_state(vm) != P.RUNNING:
                await self.run_all(task, self.start_ops(vm, op[2]))
        elif kind == "VM_poweroff":
            await self.run_all(task, self.poweroff_ops(vm, op[2]))
        elif kind == "VM_shutdown":
            await self.run_all(task, self.shutdown_ops(vm, op[2]))
        elif kind == "VM_reboot":
            self.objects.rebooting.add(vm)
            try:
                await self.run_all(task, self.reboot_ops(vm, op[2]))
            finally:
                self.objects.rebooting.discard(vm)
        elif kind == "VM_suspend":
            await self.run_all(task, self.suspend_ops(vm, op[2]))
        elif kind == "VM_resume":
            await self.run_all(task, self.resume_ops(vm, op[2]))
        elif kind == "VM_migrate":
            await self.run_all(task, [MicroOp("VM_migrate", vm, (op[2],))])
        elif kind == "VBD_hotplug":
            await self.run_all(task, self._plug_vbd(self.objects.vbd(vm, op[2]), epoch=False))
            return None
        elif kind == "VBD_hotunplug":
            await self.run_all(task, [MicroOp("VBD_unplug", vm, (op[2], op[3])),
                                      MicroOp("VBD_set_active", vm, (op[2], False))])
            return None
        elif kind == "VIF_hotplug":
            await self.run_all(task, self._plug_vif(vm, op[2]))
            return None
        elif kind == "VIF_hotunplug":
            await self.run_all(task, [MicroOp("VIF_unplug", vm, (op[2], op[3])),
                                      MicroOp("VIF_set_active", vm, (op[2], False))])
            return None
        else:
            raise fail("Unimplemented", kind)
        self.objects.signal_vm(vm)
        return None

    async def run_all(self, task: TaskHandle, ops: list[MicroOp]) -> None:
        total = sum(op.weight for op in ops) or 1.0
        done = 0.0
        for op in ops:
            await self.micro.run(task, op)
            done += op.weight
            self.tasks.set_progress(task, min(done / total, 1.0))

    async def check_state(self, task: TaskHandle, vm: str) -> None:
        """Act on a domain's own request (xenopsd's ``VM_check_state``)."""
        request = self.hv.action_request(vm) if vm in self.objects.store.vms else None
        if request is None:
            self.objects.signal_vm(vm)
            return
        entry = self.objects.entry(vm)
        run_time = time.time() - entry.domain["last_create_time"]
        actions = {
            "poweroff": entry.vm["on_shutdown"],
            "reboot": entry.vm["on_reboot"],
            "suspend": ["Shutdown"],
            "crashdump": [("Shutdown" if a == "Start" and run_time < CRASH_TOO_SOON else a)
                          for a in entry.vm["on_crash"]],
        }.get(request, [])
        if not any(a in ("Shutdown", "Start") for a in actions):
            self.hv.set_action_request(vm, None)  # handled for good: do not act on it again
        for action in actions:
            if action == "Shutdown":
                await self.perform_exn(task, ("VM_shutdown", vm, None))
            elif action == "Start":
                await self.perform_exn(task, ("VM_reboot", vm, None))
            elif action == "Pause":
                await self.micro.run(task, MicroOp("VM_pause", vm))
            elif action == "Softreboot":
                await self.micro.run(task, MicroOp("VM_softreboot", vm))
        self.objects.signal_vm(vm)

    # ------------------------------------------------------------ expansions

    def _vbds(self, vm: str) -> list[dict]:
        return list(self.objects.entry(vm).vbds.values())

    def _vifs(self, vm: str) -> list[dict]:
        return sorted(self.objects.entry(vm).vifs.values(), key=lambda v: v["position"])

    def _rw_then_ro(self, vm: str) -> list[dict]:
        # The storage layer cannot turn a read-only attach into a read/write one.
        vbds = self._vbds(vm)
        return [v for v in vbds if v["mode"] == "ReadWrite"] + [v for v in vbds if v["mode"] != "ReadWrite"]

    @staticmethod
    def _plug_vbd(vbd: dict, *, epoch: bool = True) -> list[MicroOp]:
        vm, device = vbd["id"]
        ops = [MicroOp("VBD_set_active", vm, (device, True))]
        if epoch and vbd.get("backend") is not None:
            ops.append(MicroOp("VBD_epoch_begin", vm, (device, vbd["backend"], vbd["persistent"])))
        ops.append(MicroOp("VBD_plug", vm, (device, vbd["mode"])))
        return ops

    @staticmethod
    def _plug_vif(vm: str, device: str) -> list[MicroOp]:
        return [MicroOp("VIF_set_active", vm, (device, True)), MicroOp("VIF_plug", vm, (device,))]

    @staticmethod
    def _hook(vm: str, script: str, reason: str) -> MicroOp:
        return MicroOp("VM_hook_script", vm, (script, reason))

    def start_ops(self, vm: str, force: bool) -> list[MicroOp]:
        ops = [self._hook(vm, "vm-pre-start", "none"), MicroOp("VM_create", vm), MicroOp("VM_build", vm, (force,))]
        for vbd in self._rw_then_ro(vm):
            ops += self._plug_vbd(vbd)
        for vif in self._vifs(vm):
            ops += self._plug_vif(vm, vif["id"][1])
        ops += [MicroOp("VM_create_device_model", vm, (False,)),
                MicroOp("VM_set_domain_action_request", vm, (None,))]
        return ops

    def shutdown_ops(self, vm: str, delay: float | None, request: str = "poweroff") -> list[MicroOp]:
        ops = [] if delay is None else [MicroOp("VM_shutdown_domain", vm, (request, delay))]
        # Paused first so nothing runs while the device model goes (best effort: it may be gone).
        ops += [MicroOp("VM_pause", vm, best_effort=True), MicroOp("VM_destroy_device_model", vm)]
        ops += [MicroOp("VBD_unplug", vm, (v["id"][1], True)) for v in self._vbds(vm)]
        ops += [MicroOp("VIF_unplug", vm, (v["id"][1], True)) for v in self._vifs(vm)]
        ops.append(MicroOp("VM_destroy", vm))
        return ops

    def poweroff_ops(self, vm: str, delay: float | None) -> list[MicroOp]:
        reason = "hard-shutdown" if delay is None else "clean-shutdown"
        ops = [self._hook(vm, "vm-pre-shutdown", reason), *self.shutdown_ops(vm, delay)]
        for vbd in self._vbds(vm):
            if vbd.get("backend") is not None:
                ops.append(MicroOp("VBD_epoch_end", vm, (vbd["id"][1], vbd["backend"])))
            ops.append(MicroOp("VBD_set_active", vm, (vbd["id"][1], False)))
        ops += [MicroOp("VIF_set_active", vm, (v["id"][1], False)) for v in self._vifs(vm)]
        ops.append(self._hook(vm, "vm-post-destroy", reason))
        return ops

    def reboot_ops(self, vm: str, delay: float | None) -> list[MicroOp]:
        reason = "hard-reboot" if delay is None else "clean-reboot"
        ops = [] if delay is None else [MicroOp("VM_shutdown_domain", vm, ("reboot", delay))]
        ops += [self._hook(vm, "vm-pre-shutdown", reason), *self.shutdown_ops(vm, None)]
        ops += [MicroOp("VBD_epoch_end", vm, (v["id"][1], v["backend"]))
                for v in self._vbds(vm) if v.get("backend") is not None]
        ops += [self._hook(vm, "vm-post-destroy", reason), self._hook(vm, "vm-pre-reboot", "none")]
        ops += self.start_ops(vm, False)
        ops.append(MicroOp("VM_unpause", vm))
        return ops

    def suspend_ops(self, vm: str, disk: list) -> list[MicroOp]:
        return [self._hook(vm, "vm-pre-suspend", "suspend"), MicroOp("VM_save", vm, (disk,)),
                self._hook(vm, "vm-pre-shutdown", "suspend"), *self.shutdown_ops(vm, None),
                self._hook(vm, "vm-post-destroy", "suspend")]

    def resume_ops(self, vm: str, disk: list) -> list[MicroOp]:
        ops = [MicroOp("VM_create", vm), self._hook(vm, "vm-pre-resume", "none"), MicroOp("VM_restore", vm, (disk,))]
        for vbd in self._rw_then_ro(vm):
            ops += self._plug_vbd(vbd, epoch=False)
        for vif in self._vifs(vm):
            ops += self._plug_vif(vm, vif["id"][1])
        ops += [MicroOp("VM_create_device_model", vm, (True,)),
                MicroOp("VM_set_domain_action_request", vm, (None,)),
                self._hook(vm, "vm-post-resume", "none")]
        return ops
