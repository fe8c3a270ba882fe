"""xapi's VM lifecycle rules (``xapi_vm_lifecycle.ml``).

Checks run in xapi's order and the first failure wins: blocked operations,
power state, concurrency, template, snapshot, provision/revert, control
domain.  Guest-feature checks (``VM_LACKS_FEATURE``) need guest agents,
which the simulator does not have, and are not made.
"""

from __future__ import annotations

from typing import Any

from xapi.errors import ApiError

from . import Policy, register

HALTED, PAUSED, RUNNING, SUSPENDED = "Halted", "Paused", "Running", "Suspended"
ALL_STATES = (HALTED, PAUSED, SUSPENDED, RUNNING)

_STATES: dict[str, tuple[str, ...]] = {}
for _ops, _states in (
    (("import",), ()),
    (("changing_shadow_memory", "changing_NVRAM", "make_into_template", "provision", "start",
      "start_on", "create_vtpm"), (HALTED,)),
    (("unpause",), (PAUSED,)),
    (("csvm", "resume", "resume_on"), (SUSPENDED,)),
    (("awaiting_memory_live", "call_plugin", "clean_reboot", "clean_shutdown",
      "changing_memory_live", "changing_shadow_memory_live", "changing_VCPUs_live",
      "data_source_op", "pause", "pool_migrate", "send_sysrq", "send_trigger",
      "snapshot_with_quiesce", "sysprep", "suspend"), (RUNNING,)),
    (("changing_dynamic_range",), (HALTED, RUNNING)),
    (("clone", "copy"), (HALTED,)),  # and Suspended for snapshots, below
    (("create_template", "destroy", "export"), (HALTED, SUSPENDED)),
    (("hard_reboot",), (PAUSED, RUNNING)),
    (("checkpoint", "get_boot_record", "shutdown", "hard_shutdown"), (PAUSED, SUSPENDED, RUNNING)),
    (("migrate_send",), (HALTED, SUSPENDED, RUNNING)),
    (("assert_operation_valid", "metadata_export", "power_state_reset", "revert", "reverting",
      "snapshot", "update_allowed_operations", "query_services"), ALL_STATES),
):
    for _op in _ops:
        _STATES[_op] = _states

# Not reported in allowed_operations (xapi's ignored_ops).
IGNORED = frozenset((
    "create_template", "power_state_reset", "csvm", "get_boot_record", "send_sysrq",
    "send_trigger", "query_services", "shutdown", "call_plugin", "changing_memory_live",
    "awaiting_memory_live", "changing_memory_limits", "changing_shadow_memory_live",
    "changing_VCPUs", "assert_operation_valid", "data_source_op", "update_allowed_operations",
    "import", "reverting",
))

_TEMPLATE_OK = frozenset((
    "changing_dynamic_range", "changing_static_range", "changing_memory_limits",
    "changing_shadow_memory", "changing_VCPUs", "changing_NVRAM", "clone", "copy", "export",
    "metadata_export", "provision",
))
_SNAPSHOT_OK = frozenset(("revert", "clone", "copy", "export", "destroy", "hard_shutdown",
                          "metadata_export"))
_CONTROL_DOMAIN_OK = frozenset((
    "data_source_op", "changing_memory_live", "awaiting_memory_live", "metadata_export",
    "changing_dynamic_range", "changing_memory_limits", "changing_static_range", "start",
    "start_on", "changing_VCPUs", "destroy",
))
_CONCURRENT_SETS = (
    frozenset(("clone", "copy", "export")),
    frozenset(("snapshot", "checkpoint")),
    frozenset(("get_boot_record",)),
)
_CONCURRENT_AFTER = {
    (("snapshot_with_quiesce",), "snapshot"),
    (("migrate_send",), "metadata_export"),
    (("migrate_send",), "clean_shutdown"),
    (("migrate_send",), "clean_reboot"),
}


def allowed_power_states(values: dict[str, Any], op: str) -> tuple[str, ...]:
    states = _STATES.get(op, ALL_STATES)
    if op in ("changing_VCPUs", "changing_static_range", "changing_memory_limits"):
        return (HALTED, RUNNING) if values.get("is_control_domain") else (HALTED,)
    if op in ("clone", "copy") and values.get("is_a_snapshot"):
        return (HALTED, SUSPENDED)
    return states


def allowed_concurrently(op: str, current: dict[str, str]) -> bool:
    running = list(current.values())
    for group in _CONCURRENT_SETS:
        if op in group and all(o in group for o in running):
            return True
    if op == "hard_shutdown":
        return op not in running
    if op == "hard_reboot":
        return not any(o in ("hard_shutdown", "hard_reboot") for o in running)
    return (tuple(running), op) in _CONCURRENT_AFTER


def _is_default_template(values: dict[str, Any]) -> bool:
    flag = (values.get("other_config") or {}).get("default_template", "")
    return bool(values.get("is_default_template")) or flag.lower() in ("true", "1")


@register("VM")
class VmPolicy(Policy):
    def __init__(self, model, cls):
        super().__init__(model, cls)
        self.reportable = [op for op in self.operations if op not in IGNORED]
        self._allowed: dict[tuple, list[str]] = {}

    def allowed(self, ref: str, values: dict[str, Any]) -> list[str]:
        # Trying ~40 checks (most of them raising) for every operation mark and
        # power change is costly; the answer depends only on these few fields.
        key = (tuple(values.get("blocked_operations") or ()), values["power_state"],
               tuple((values.get("current_operations") or {}).values()),
               bool(values.get("is_a_template")), bool(values.get("is_a_snapshot")),
               _is_default_template(values), bool(values.get("is_control_domain")),
               values.get("domid") == 0)
        found = self._allowed.get(key)
        if found is None:
            found = []
            for op in self.reportable:
                try:
                    self.check(ref, values, op)
                except ApiError:
                    continue
                found.append(op)
            if len(self._allowed) >= 4096:
                self._allowed.clear()
            self._allowed[key] = found
        return list(found)

    def check(self, ref: str, values: dict[str, Any], op: str) -> None:
        blocked = values.get("blocked_operations") or {}
        if op in blocked:
            raise ApiError("OPERATION_BLOCKED", ref, blocked[op])
        power = values["power_state"]
        expected = allowed_power_states(values, op)
        if power not in expected:
            raise ApiError("VM_BAD_POWER_STATE", ref,
                           ", ".join(s.lower() for s in expected), power.lower())
        current = values.get("current_operations") or {}
        if current and not allowed_concurrently(op, current):
            if len(current) == 1:
                (task, running), = current.items()
                raise ApiError("OTHER_OPERATION_IN_PROGRESS", "VM", ref, running, task)
            raise ApiError("OTHER_OPERATION_IN_PROGRESS", "VM", ref,
                           "{%s}" % ",".join(current.values()), "{%s}" % ",".join(current))
        is_template, is_snapshot = values.get("is_a_template"), values.get("is_a_snapshot")
        if is_template and not is_snapshot:
            if not (op in _TEMPLATE_OK
                    or (op in ("destroy", "migrate_send") and not _is_default_template(values))):
                raise ApiError("VM_IS_TEMPLATE", ref, op)
        if is_snapshot and op not in _SNAPSHOT_OK:
            raise ApiError("VM_IS_SNAPSHOT", ref, op)
        if op == "provision" and not is_template:
            raise ApiError("PROVISION_ONLY_ALLOWED_ON_TEMPLATE")
        if op == "revert" and not is_snapshot:
            raise ApiError("REVERT_ONLY_ALLOWED_ON_SNAPSHOT")
        if values.get("is_control_domain"):
            if op in ("changing_VCPUs", "destroy") and values.get("domid") == 0:
                raise ApiError("OPERATION_NOT_ALLOWED", "This operation is not allowed on dom0")
            if op not in _CONTROL_DOMAIN_OK:
                raise ApiError("OPERATION_NOT_ALLOWED",
                               "This operation is not allowed on a control domain")
        if op == "snapshot_with_quiesce":
            raise ApiError("VM_SNAPSHOT_WITH_QUIESCE_NOT_SUPPORTED", ref)
