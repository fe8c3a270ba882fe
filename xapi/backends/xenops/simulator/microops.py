"""Micro-ops: xenopsd's atomic steps (``VM_create``, ``VBD_plug`` …) and what each does here.

Each micro-op first checks whether its task was cancelled, then writes its
log line, then waits its injected delay and fails with its injected error if
there is one, and only then acts (``pause``).  Device plugs and unplugs wait
between their two xenstore transitions instead, so a delayed plug can be
caught half done (``state`` 1, not yet connected).  The VM's file is saved
after every micro-op.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from xapi.backends.xenops import protocol as P
from xapi.backends.xenops.simulator import migration
from xapi.backends.xenops.simulator.faults import Faults
from xapi.backends.xenops.simulator.hypervisor import Hypervisor
from xapi.backends.xenops.simulator.objects import Objects
from xapi.backends.xenops.simulator.oplog import OpLog
from xapi.backends.xenops.simulator.tasks import TaskHandle, XenopsFailure, fail

# domain action requests, named after xenopsd's shutdown requests
REQUESTS = {"poweroff": "poweroff", "halt": "poweroff", "reboot": "reboot", "suspend": "suspend",
            "crash": "crashdump"}


@dataclass(frozen=True)
class MicroOp:
    name: str
    vm: str
    args: tuple = ()
    best_effort: bool = field(default=False, compare=False)

    @property
    def weight(self) -> float:
        """Share of the progress bar, as xenopsd weighs its atomics."""
        return 10.0 if self.name in ("VM_save", "VM_restore") else 1.0


class MicroOps:
    def __init__(self, objects: Objects, hv: Hypervisor, faults: Faults, oplog: OpLog,
                 check_state_later: Callable[[str], None]):
        self.objects = objects
        self.hv = hv
        self.faults = faults
        self.oplog = oplog
        self._check_state_later = check_state_later
        self._handlers: dict[str, Callable[[TaskHandle, MicroOp], Awaitable[Any]]] = {
            name[4:]: getattr(self, name) for name in dir(self) if name.startswith("_op_")
        }

    async def run(self, task: TaskHandle, op: MicroOp) -> Any:
        task.check_cancelling()
        self.oplog.write(op.vm, op.name, op.args)
        try:
            return await self._handlers[op.name](task, op)
        except XenopsFailure:
            if not op.best_effort:
                raise
        finally:
            if op.vm in self.objects.store.vms or op.name == "VM_remove":
                self.objects.store.save(op.vm)
        return None

    async def pause(self, op: MicroOp) -> None:
        """The injected delay, then the injected failure, of ``op``."""
        delay = self.faults.delay_for(op.name, op.vm)
        if delay > 0:
            await asyncio.sleep(delay)
        err = self.faults.failure_for(op.name, op.vm)
        if err is not None:
            raise XenopsFailure(err)

    def _require_live(self, vm: str) -> None:
        power = self.objects.power_state(vm)
        if power not in (P.RUNNING, P.PAUSED):
            raise fail("Bad_power_state", power, P.RUNNING)

    # ------------------------------------------------------------ VM

    async def _op_VM_hook_script(self, task, op):  # args: script, reason; no hooks here
        await self.pause(op)

    async def _op_VM_create(self, task, op):
        await self.pause(op)
        self.objects.entry(op.vm)
        self.hv.create(op.vm)

    async def _op_VM_build(self, task, op):
        await self.pause(op)
        self.hv.build(op.vm)

    async def _op_VM_create_device_model(self, task, op):
        await self.pause(op)
        self.hv.create_device_model(op.vm)

    async def _op_VM_destroy_device_model(self, task, op):
        await self.pause(op)
        self.hv.destroy_device_model(op.vm)

    async def _op_VM_destroy(self, task, op):
        await self.pause(op)
        self.hv.destroy(op.vm)

    async def _op_VM_pause(self, task, op):
        await self.pause(op)
        self.hv.set_paused(op.vm, True)
        self.objects.signal_vm(op.vm)

    async def _op_VM_unpause(self, task, op):
        await self.pause(op)
        if self.objects.power_state(op.vm) == P.PAUSED:
            self.hv.set_paused(op.vm, False)
            self.objects.signal_vm(op.vm)

    async def _op_VM_set_domain_action_request(self, task, op):
        await self.pause(op)
        if self.hv.has_domain(op.vm):
            self.hv.set_action_request(op.vm, op.args[0])

    async def _op_VM_shutdown_domain(self, task, op):  # args: request, timeout
        await self.pause(op)
        self.hv.set_action_request(op.vm, REQUESTS[op.args[0]])
        self._check_state_later(op.vm)  # as xenopsd's backend event; the guest "acknowledges" at once

    async def _op_VM_save(self, task, op):  # args: disk
        await self.pause(op)
        task.prohibit_cancellation()
        self.hv.save(op.vm, op.args[0])

    async def _op_VM_restore(self, task, op):  # args: disk
        await self.pause(op)
        self.hv.restore(op.vm)

    async def _op_VM_delay(self, task, op):  # args: seconds
        await self.pause(op)
        await asyncio.sleep(op.args[0])

    async def _op_VM_softreboot(self, task, op):
        await self.pause(op)

    async def _op_VM_remove(self, task, op):
        await self.pause(op)
        self.objects.remove_vm(op.vm)

    async def _op_VM_import_metadata(self, task, op):  # args: parsed Metadata.t
        await self.pause(op)
        return self.objects.import_metadata(op.args[0])

    async def _op_VM_set_xsdata(self, task, op):
        await self.pause(op)
        self.hv.set_xsdata(op.vm, op.args[0])

    async def _op_VM_set_vcpus(self, task, op):
        await self.pause(op)
        vcpu_max = self.objects.entry(op.vm).vm["vcpu_max"]
        if not 0 < op.args[0] <= vcpu_max:
            raise fail("Invalid_vcpus", vcpu_max)
        self.hv.set_vcpus(op.vm, op.args[0])

    async def _op_VM_set_shadow_multiplier(self, task, op):
        await self.pause(op)
        self.hv.set_shadow_multiplier(op.vm, op.args[0])
        self.objects.signal_vm(op.vm)

    async def _op_VM_set_memory_dynamic_range(self, task, op):
        await self.pause(op)
        self.hv.set_memory_dynamic_range(op.vm, *op.args)
        self.objects.signal_vm(op.vm)

    async def _op_VM_migrate(self, task, op):  # args: url; none: a move within this simulator
        await self.pause(op)
        self._require_live(op.vm)
        if op.args and op.args[0]:
            task.prohibit_cancellation()  # the domain is being handed over
            await migration.send(self.objects, op.vm, op.args[0], task.dbg)

    # ------------------------------------------------------------ VBD

    async def _op_VBD_set_active(self, task, op):  # args: device, active
        await self.pause(op)
        device, active = op.args
        self.objects.vbd(op.vm, device)
        self.hv.set_active(op.vm, "vbd", device, active)
        self.objects.signal_vbd(op.vm, device)

    async def _op_VBD_epoch_begin(self, task, op):  # args: device, disk, persistent
        await self.pause(op)

    async def _op_VBD_epoch_end(self, task, op):  # args: device, disk
        await self.pause(op)

    async def _op_VBD_plug(self, task, op):  # args: device, mode
        device = op.args[0]
        self.hv.begin_vbd_plug(op.vm, self.objects.vbd(op.vm, device))
        self.objects.store.save(op.vm)
        await self.pause(op)
        self.hv.finish_plug(op.vm, "vbd", device)
        self.objects.signal_vbd(op.vm, device)

    async def _op_VBD_unplug(self, task, op):  # args: device, force
        device = op.args[0]
        self.objects.vbd(op.vm, device)
        try:
            if self.hv.begin_unplug(op.vm, "vbd", device):
                self.objects.store.save(op.vm)
                await self.pause(op)
                self.hv.finish_unplug(op.vm, "vbd", device)
            else:
                await self.pause(op)
        finally:
            self.objects.signal_vbd(op.vm, device)

    async def _op_VBD_insert(self, task, op):  # args: device, disk
        await self.pause(op)
        device, disk = op.args
        self.objects.vbd(op.vm, device)
        self._require_live(op.vm)
        self.hv.set_media(op.vm, device, disk)
        self.objects.signal_vbd(op.vm, device)

    async def _op_VBD_eject(self, task, op):  # args: device
        await self.pause(op)
        device = op.args[0]
        if self.objects.vbd(op.vm, device)["ty"] == "Disk":
            raise fail("Media_not_ejectable")
        self._require_live(op.vm)
        self.hv.set_media(op.vm, device, None)
        self.objects.signal_vbd(op.vm, device)

    # ------------------------------------------------------------ VIF

    async def _op_VIF_set_active(self, task, op):  # args: device, active
        await self.pause(op)
        device, active = op.args
        self.objects.vif(op.vm, device)
        self.hv.set_active(op.vm, "vif", device, active)
        self.objects.signal_vif(op.vm, device)

    async def _op_VIF_plug(self, task, op):  # args: device
        device = op.args[0]
        self.hv.begin_vif_plug(op.vm, self.objects.vif(op.vm, device))
        self.objects.store.save(op.vm)
        await self.pause(op)
        self.hv.finish_plug(op.vm, "vif", device)
        self.objects.signal_vif(op.vm, device)

    async def _op_VIF_unplug(self, task, op):  # args: device, force
        device = op.args[0]
        self.objects.vif(op.vm, device)
        try:
            if self.hv.begin_unplug(op.vm, "vif", device):
                self.objects.store.save(op.vm)
                await self.pause(op)
                self.hv.finish_unplug(op.vm, "vif", device)
            else:
                await self.pause(op)
        finally:
            self.objects.signal_vif(op.vm, device)

    async def _op_VIF_move(self, task, op):  # args: device, network
        await self.pause(op)
        device, network = op.args
        self.objects.vif(op.vm, device)["backend"] = network
        self.hv.update_vif(op.vm, device, network=network)
        self.objects.signal_vif(op.vm, device)

    async def _op_VIF_set_carrier(self, task, op):  # args: device, carrier
        await self.pause(op)
        device, carrier = op.args
        self.objects.vif(op.vm, device)["carrier"] = carrier
        self.hv.update_vif(op.vm, device, carrier=carrier)
        self.objects.signal_vif(op.vm, device)

    async def _op_VIF_set_locking_mode(self, task, op):  # args: device, mode
        await self.pause(op)
        device, mode = op.args
        self.objects.vif(op.vm, device)["locking_mode"] = mode
        self.objects.signal_vif(op.vm, device)


NAMES = frozenset(name[4:] for name in dir(MicroOps) if name.startswith("_op_"))
