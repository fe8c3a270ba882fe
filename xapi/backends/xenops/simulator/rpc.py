"""The simulator's methods: each wire call of ``protocol.METHODS`` and what answers it.

Calls that return a task queue an operation on the VM's queue and answer
at once with the task id.  ``VM.remove`` (and ``VM.import_metadata`` of a
known VM) wait in the VM's queue, so they never overtake its operations.
Anything else answers from the records directly.

``DEBUG.trigger`` commands:

- ``halt``/``reboot``/``crash`` ``[vm]``: the guest asks to power off,
  reboot or has crashed (xenopsd's simulator has the first two);
- ``check-vbd-plug-ordering`` ``[vm]``: fails with ``Internal_error`` unless
  the VM's read/write VBDs were plugged before its read-only ones (xenopsd's);
- ``set-cancel-trigger`` ``[dbg, n]``: the next task created with this
  ``debug_info`` cancels itself at its n-th cancellation point (xenopsd's);
- ``delay`` ``[op, seconds]`` or ``[op, seconds, vm]``: micro-op ``op``
  (``*``: any) takes that long;
- ``fail`` ``[op]``, ``[op, vm]``, ``[op, vm, error_json]`` or
  ``[op, vm, error_json, count]``: micro-op ``op`` fails (``vm`` ``*`` or
  empty: any VM; no error: ``Internal_error``; count 0 or none: every time);
- ``clear-faults`` ``[]``: no more delays or failures.
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any, Callable

from xapi.backends.xenops import protocol as P
from xapi.backends.xenops.schema import SchemaError
from xapi.backends.xenops.simulator.faults import ANY, Faults
from xapi.backends.xenops.simulator.hypervisor import Hypervisor
from xapi.backends.xenops.simulator.microops import REQUESTS, MicroOp
from xapi.backends.xenops.simulator.objects import Objects
from xapi.backends.xenops.simulator.operations import Operations
from xapi.backends.xenops.simulator.tasks import TaskTable, XenopsFailure, fail
from xapi.backends.xenops.simulator.updates import Updates

log = logging.getLogger(__name__)


def _vm_of(key: tuple) -> str | None:
    kind, payload = key
    if kind == "Task":
        return None
    return payload if kind == "Vm" else payload[0]


class Service:
    def __init__(self, objects: Objects, ops: Operations, tasks: TaskTable, updates: Updates,
                 hv: Hypervisor, faults: Faults, stop: Callable[[], None]):
        self.objects, self.ops, self.tasks = objects, ops, tasks
        self.updates, self.hv, self.faults, self._stop = updates, hv, faults, stop
        self.instance_id = str(uuid.uuid4())
        self._methods: dict[str, Callable[..., Any]] = {
            name: getattr(self, "m_" + name.replace(".", "_")) for name in P.METHODS
            if hasattr(self, "m_" + name.replace(".", "_"))
        }

    async def dispatch(self, method: str, params: list) -> tuple[bool, Any]:
        """``(True, result)`` or ``(False, marshalled Errors.error)``.

        What the call (or anything before it) changed is on disk before the reply."""
        try:
            return await self._dispatch(method, params)
        finally:
            self.objects.store.flush()

    async def _dispatch(self, method: str, params: list) -> tuple[bool, Any]:
        handler = self._methods.get(method)
        if handler is None:
            return False, P.error("Unimplemented", method)
        try:
            dbg, args = P.parse_params(method, params)
            value = handler(dbg, **args)
            if hasattr(value, "__await__"):
                value = await value
        except XenopsFailure as exc:
            return False, exc.error
        except (P.ProtocolError, SchemaError, ValueError) as exc:  # bad parameters
            return False, P.error("Internal_error", str(exc))
        except Exception as exc:
            log.exception("%s failed", method)
            return False, P.error("Internal_error", f"{type(exc).__name__}: {exc}")
        try:
            return True, P.METHODS[method].result.decode(value)
        except SchemaError as exc:  # the simulator must answer in the declared types
            log.exception("%s answered outside its type", method)
            return False, P.error("Internal_error", str(exc))

    def _queue(self, dbg: str, vm: str, op: tuple) -> str:
        return self.ops.queue(dbg, vm, op).id

    def _atomic(self, dbg: str, vm: str, name: str, *args: Any) -> str:
        return self._queue(dbg, vm, ("Atomic", MicroOp(name, vm, args)))

    # ------------------------------------------------------------ top level, Task, HOST

    def m_query(self, dbg, unit):
        return {"name": "xenops", "vendor": "XCP", "version": "0.1", "features": [],
                "instance_id": self.instance_id}

    def m_Task_stat(self, dbg, id):
        return self.tasks.find(id).to_wire()

    def m_Task_cancel(self, dbg, id):
        self.tasks.cancel(id)

    def m_Task_destroy(self, dbg, id):
        self.tasks.destroy(id)

    def m_Task_list(self, dbg):
        return [t.to_wire() for t in self.tasks.list()]

    def m_Task_destroy_on_finish(self, dbg, id):
        self.tasks.destroy_on_finish(id)

    def m_HOST_stat(self, dbg):
        return self.hv.host_stat()

    def m_HOST_get_console_data(self, dbg):
        return "Xen simulator"

    def m_HOST_get_total_memory_mib(self, dbg):
        return self.hv.total_memory_mib

    # ------------------------------------------------------------ VM

    def m_VM_add(self, dbg, vm):
        return self.objects.add_vm(vm)

    async def m_VM_remove(self, dbg, id):
        await self.ops.queue_and_wait(dbg, id, ("Atomic", MicroOp("VM_remove", id)))

    def m_VM_migrate(self, dbg, id, vdi_map, vif_map, pci_map, xenops_url, compress, verify_dest,
                     localhost_migration):
        # A move within this simulator needs no transfer; otherwise the domain goes to the URL.
        return self._queue(dbg, id, ("VM_migrate", id, "" if localhost_migration else xenops_url))

    def m_VM_create(self, dbg, id):
        return self._atomic(dbg, id, "VM_create")

    def m_VM_build(self, dbg, id, force):
        return self._atomic(dbg, id, "VM_build", force)

    def m_VM_create_device_model(self, dbg, id, save_state):
        return self._atomic(dbg, id, "VM_create_device_model", save_state)

    def m_VM_destroy(self, dbg, id):
        return self._atomic(dbg, id, "VM_destroy")

    def m_VM_pause(self, dbg, id):
        return self._atomic(dbg, id, "VM_pause")

    def m_VM_unpause(self, dbg, id):
        return self._atomic(dbg, id, "VM_unpause")

    def m_VM_set_xsdata(self, dbg, id, xsdata):
        return self._atomic(dbg, id, "VM_set_xsdata", xsdata)

    def m_VM_set_vcpus(self, dbg, id, vcpus):
        return self._atomic(dbg, id, "VM_set_vcpus", vcpus)

    def m_VM_set_shadow_multiplier(self, dbg, id, multiplier):
        return self._atomic(dbg, id, "VM_set_shadow_multiplier", multiplier)

    def m_VM_set_memory_dynamic_range(self, dbg, id, minimum, maximum):
        return self._atomic(dbg, id, "VM_set_memory_dynamic_range", minimum, maximum)

    def m_VM_delay(self, dbg, id, delay):
        return self._atomic(dbg, id, "VM_delay", delay)

    def m_VM_stat(self, dbg, id):
        return self.objects.stat_vm(id)

    def m_VM_exists(self, dbg, id):
        return id in self.objects.store.vms

    def m_VM_list(self, dbg, unit):
        return self.objects.list_vms()

    def m_VM_start(self, dbg, id, paused):
        return self._queue(dbg, id, ("VM_start", id, paused))

    def m_VM_shutdown(self, dbg, id, delay):
        return self._queue(dbg, id, ("VM_poweroff", id, delay))

    def m_VM_reboot(self, dbg, id, delay):
        return self._queue(dbg, id, ("VM_reboot", id, delay))

    def m_VM_suspend(self, dbg, id, suspend_vdi):
        return self._queue(dbg, id, ("VM_suspend", id, suspend_vdi))

    def m_VM_resume(self, dbg, id, suspend_vdi):
        return self._queue(dbg, id, ("VM_resume", id, suspend_vdi))

    def m_VM_export_metadata(self, dbg, id):
        return self.objects.export_metadata(id)

    async def m_VM_import_metadata(self, dbg, metadata):
        md = self.objects.parse_metadata(metadata)
        vm = md["vm"]["id"]
        op = ("Atomic", MicroOp("VM_import_metadata", vm, (md,)))
        # A known VM's new metadata waits behind its queued operations.
        if vm in self.objects.store.vms:
            await self.ops.queue_and_wait(dbg, vm, op)
        else:
            await self.ops.immediate(dbg, op)
        return vm

    def m_VM_import_metadata_async(self, dbg, metadata):
        md = self.objects.parse_metadata(metadata)
        vm = md["vm"]["id"]
        return self._queue(dbg, vm, ("Atomic", MicroOp("VM_import_metadata", vm, (md,))))

    # ------------------------------------------------------------ VBD

    def m_VBD_add(self, dbg, vbd):
        return self.objects.add_vbd(vbd)

    def m_VBD_plug(self, dbg, id):
        return self._queue(dbg, id[0], ("VBD_hotplug", id[0], id[1]))

    def m_VBD_unplug(self, dbg, id, force):
        return self._queue(dbg, id[0], ("VBD_hotunplug", id[0], id[1], force))

    def m_VBD_eject(self, dbg, id):
        return self._atomic(dbg, id[0], "VBD_eject", id[1])

    def m_VBD_insert(self, dbg, id, disk):
        return self._atomic(dbg, id[0], "VBD_insert", id[1], disk)

    def m_VBD_stat(self, dbg, id):
        return self.objects.stat_vbd(*id)

    def m_VBD_list(self, dbg, id):
        return self.objects.list_vbds(id)

    def m_VBD_remove(self, dbg, id):
        self.objects.remove_vbd(*id)

    # ------------------------------------------------------------ VIF

    def m_VIF_add(self, dbg, vif):
        return self.objects.add_vif(vif)

    def m_VIF_plug(self, dbg, id):
        return self._queue(dbg, id[0], ("VIF_hotplug", id[0], id[1]))

    def m_VIF_unplug(self, dbg, id, force):
        return self._queue(dbg, id[0], ("VIF_hotunplug", id[0], id[1], force))

    def m_VIF_move(self, dbg, id, network):
        return self._atomic(dbg, id[0], "VIF_move", id[1], network)

    def m_VIF_set_carrier(self, dbg, id, carrier):
        return self._atomic(dbg, id[0], "VIF_set_carrier", id[1], carrier)

    def m_VIF_set_locking_mode(self, dbg, id, locking_mode):
        return self._atomic(dbg, id[0], "VIF_set_locking_mode", id[1], locking_mode)

    def m_VIF_stat(self, dbg, id):
        return self.objects.stat_vif(*id)

    def m_VIF_list(self, dbg, id):
        return self.objects.list_vifs(id)

    def m_VIF_remove(self, dbg, id):
        self.objects.remove_vif(*id)

    # ------------------------------------------------------------ UPDATES

    async def m_UPDATES_get(self, dbg, last_id, timeout):
        barriers, updates, next_id = await self.updates.get(last_id, timeout)
        return [[[bid, [P.dynamic_value(k) for k in keys]] for bid, keys in barriers],
                [P.dynamic_value(k) for k in updates], next_id]

    def m_UPDATES_last_id(self, dbg):
        return self.updates.last_id()

    def m_UPDATES_inject_barrier(self, dbg, vm_id, id):
        self.updates.inject_barrier(id, lambda key: _vm_of(key) == vm_id)

    def m_UPDATES_remove_barrier(self, dbg, id):
        self.updates.remove_barrier(id)

    def m_UPDATES_refresh_vm(self, dbg, id):
        self.objects.refresh(id)

    # ------------------------------------------------------------ DEBUG

    def m_DEBUG_shutdown(self, dbg, unit):
        self._stop()

    def m_DEBUG_trigger(self, dbg, cmd, args):
        if cmd in ("halt", "reboot", "crash") and len(args) == 1:
            vm = args[0]
            self.hv.set_action_request(vm, REQUESTS[cmd])
            self.objects.store.save(vm)
            self.ops.check_state_later(vm)
        elif cmd == "check-vbd-plug-ordering" and len(args) == 1:
            modes = self.hv.vbd_plug_order(args[0])
            if modes != sorted(modes, key=lambda m: m != "ReadWrite"):
                raise fail("Internal_error", "check-vbd-plug-ordering")
        elif cmd == "set-cancel-trigger" and len(args) == 2:
            self.tasks.set_cancel_trigger(args[0], int(args[1]))
        elif cmd == "delay" and len(args) in (2, 3):
            self.faults.add_delay(args[0], float(args[1]), args[2] if len(args) == 3 else None)
        elif cmd == "fail" and 1 <= len(args) <= 4:
            vm = args[1] if len(args) > 1 and args[1] not in ("", ANY) else None
            error = json.loads(args[2]) if len(args) > 2 and args[2] else None
            count = int(args[3]) if len(args) > 3 and args[3] else None
            self.faults.add_failure(args[0], vm, error, count)
        elif cmd == "clear-faults" and not args:
            self.faults.clear()
        else:
            raise fail("Unimplemented", cmd)

