"""xapi's VM lifecycle rules: which operation each state allows, and the error otherwise."""

from __future__ import annotations

import pytest

from xapi.errors import ApiError
from xapi.idl.model import model
from xapi.ops import policy_for

REF = "OpaqueRef:vm"


def vm(**over):
    values = {"power_state": "Halted", "current_operations": {}, "blocked_operations": {},
              "is_a_template": False, "is_a_snapshot": False, "is_control_domain": False,
              "is_default_template": False, "other_config": {}, "domid": -1}
    values.update(over)
    return values


POLICY = policy_for(model(), "VM")


def error(values, op):
    with pytest.raises(ApiError) as info:
        POLICY.check(REF, values, op)
    return info.value.description


def test_power_states():
    assert error(vm(power_state="Running"), "start") == ["VM_BAD_POWER_STATE", REF, "halted", "running"]
    assert error(vm(), "clean_shutdown") == ["VM_BAD_POWER_STATE", REF, "running", "halted"]
    assert error(vm(), "hard_shutdown") == ["VM_BAD_POWER_STATE", REF, "paused, suspended, running", "halted"]
    assert error(vm(power_state="Suspended"), "unpause") == ["VM_BAD_POWER_STATE", REF, "paused", "suspended"]
    POLICY.check(REF, vm(power_state="Suspended"), "resume")
    POLICY.check(REF, vm(power_state="Paused"), "hard_reboot")


def test_allowed_operations_per_state():
    halted = set(POLICY.allowed(REF, vm()))
    assert {"start", "clone", "copy", "destroy", "snapshot", "export"} <= halted
    assert not {"clean_shutdown", "pause", "unpause", "suspend", "resume"} & halted
    running = set(POLICY.allowed(REF, vm(power_state="Running")))
    assert {"clean_shutdown", "hard_shutdown", "clean_reboot", "hard_reboot", "pause", "suspend",
            "pool_migrate", "snapshot", "checkpoint"} <= running
    assert not {"start", "destroy", "clone", "resume"} & running
    assert "power_state_reset" not in running  # one of xapi's ignored ops


def test_blocked_operations_come_first():
    assert error(vm(power_state="Running", blocked_operations={"start": "no"}), "start") == [
        "OPERATION_BLOCKED", REF, "no"]


def test_concurrency():
    busy = vm(power_state="Running", current_operations={"OpaqueRef:t": "clean_shutdown"})
    assert error(busy, "pause") == ["OTHER_OPERATION_IN_PROGRESS", "VM", REF, "clean_shutdown", "OpaqueRef:t"]
    POLICY.check(REF, busy, "hard_shutdown")  # a hard shutdown overrides
    copying = vm(current_operations={"OpaqueRef:a": "clone"})
    POLICY.check(REF, copying, "copy")
    two = vm(current_operations={"OpaqueRef:a": "clone", "OpaqueRef:b": "copy"})
    assert error(two, "start") == ["OTHER_OPERATION_IN_PROGRESS", "VM", REF, "{clone,copy}",
                                   "{OpaqueRef:a,OpaqueRef:b}"]


def test_templates_and_snapshots():
    template = vm(is_a_template=True)
    assert error(template, "start") == ["VM_IS_TEMPLATE", REF, "start"]
    POLICY.check(REF, template, "clone")
    POLICY.check(REF, template, "provision")
    POLICY.check(REF, template, "destroy")
    assert error(vm(is_a_template=True, is_default_template=True), "destroy") == [
        "VM_IS_TEMPLATE", REF, "destroy"]
    snapshot = vm(is_a_template=True, is_a_snapshot=True)
    POLICY.check(REF, snapshot, "revert")
    assert error(snapshot, "start") == ["VM_IS_SNAPSHOT", REF, "start"]
    assert error(vm(), "provision") == ["PROVISION_ONLY_ALLOWED_ON_TEMPLATE"]
    assert error(vm(), "revert") == ["REVERT_ONLY_ALLOWED_ON_SNAPSHOT"]


def test_control_domain():
    dom0 = vm(power_state="Running", is_control_domain=True, domid=0)
    assert error(dom0, "clean_shutdown") == ["OPERATION_NOT_ALLOWED",
                                             "This operation is not allowed on a control domain"]
    assert set(POLICY.allowed(REF, dom0)) == {"metadata_export", "changing_dynamic_range",
                                              "changing_static_range"}
