"""VBD and VIF rules (xapi's ``xapi_vbd_helpers`` / ``xapi_vif_helpers``).

Checks in xapi's order, the first that applies to an operation wins:
operations in progress, unpluggable, removable media, empty or not, the
VM's power state and whether the device is attached, the VM's own
operations, HVM CD-ROMs.
"""

from __future__ import annotations

from typing import Any

from xapi.errors import ApiError

from . import Policy, register

_VM_BUSY = ("clean_shutdown", "hard_shutdown", "suspend", "pause")


class _DevicePolicy(Policy):
    """Needs the VM's state; ``with_context`` adds it under ``_vm``."""

    def with_context(self, tx, values: dict[str, Any]) -> dict[str, Any]:
        vm = tx.get("VM", values["VM"]) if values.get("VM") else None
        return {**values, "_vm": vm or {"power_state": "Halted", "current_operations": {}}}

    def check(self, ref: str, values: dict[str, Any], op: str) -> None:
        current = values.get("current_operations") or {}
        if current:
            task, running = next(iter(current.items()))
            raise ApiError("OTHER_OPERATION_IN_PROGRESS", self.cls, ref, running, task)
        self.check_device(ref, values, op)
        vm = values.get("_vm") or {}
        power = vm.get("power_state", "Halted")
        attached = values.get("currently_attached")
        if power == "Running":
            if attached and op == "plug":
                raise ApiError("DEVICE_ALREADY_ATTACHED", ref)
            if not attached and op in ("unplug", "unplug_force"):
                raise ApiError("DEVICE_ALREADY_DETACHED", ref)
        elif op in ("plug", "unplug", "unplug_force") or (
                op in ("pause", "unpause") and power != "Paused"):
            raise ApiError("VM_BAD_POWER_STATE", values["VM"], "running", power.lower())
        for running in (vm.get("current_operations") or {}).values():
            if running in _VM_BUSY and op in ("plug", "unplug"):
                raise ApiError("OPERATION_NOT_ALLOWED",
                               f"Current operation on VM:{values['VM']} is {running}")
        self.check_after(ref, values, op, vm)

    def check_device(self, ref: str, values: dict[str, Any], op: str) -> None:
        pass

    def check_after(self, ref: str, values: dict[str, Any], op: str, vm: dict[str, Any]) -> None:
        pass


@register("VBD")
class VbdPolicy(_DevicePolicy):
    def check_device(self, ref: str, values: dict[str, Any], op: str) -> None:
        if values.get("unpluggable") is False and op in ("unplug", "unplug_force"):
            raise ApiError("VBD_NOT_UNPLUGGABLE", ref)
        if values.get("type") != "CD" and op in ("insert", "eject"):
            raise ApiError("VBD_NOT_REMOVABLE_MEDIA", ref)
        if values.get("empty") and op == "eject":
            raise ApiError("VBD_IS_EMPTY", ref)
        if not values.get("empty") and op == "insert":
            raise ApiError("VBD_NOT_EMPTY", ref)

    def check_after(self, ref: str, values: dict[str, Any], op: str, vm: dict[str, Any]) -> None:
        hvm = vm.get("domain_type") == "hvm" or (
            vm.get("domain_type") in (None, "unspecified") and vm.get("HVM_boot_policy"))
        if (vm.get("power_state") == "Running" and hvm and values.get("type") == "CD"
                and op in ("plug", "unplug", "unplug_force")):
            raise ApiError("OPERATION_NOT_ALLOWED",
                           "HVM CDROMs cannot be hotplugged/unplugged, only inserted or ejected")
        if values.get("type") == "CD" and vm.get("power_state") == "Suspended" and op in ("insert", "eject"):
            raise ApiError("VM_BAD_POWER_STATE", values["VM"], "halted, running", "suspended")


@register("VIF")
class VifPolicy(_DevicePolicy):
    pass
