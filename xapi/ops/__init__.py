"""allowed_operations policies: which operations an object accepts, and why not.

A policy answers two questions about one object, given its stored fields and
its ``current_operations``: is ``op`` allowed now (else the XenAPI error xapi
gives), and which operations are allowed (the advisory
``allowed_operations`` field).  Classes without a policy of their own use
``Exclusive``: any operation of the class's enum, one at a time.  The VM
policy (power states, templates, snapshots…) arrives with the VM lifecycle.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from xapi.errors import ApiError
from xapi.idl.model import Model


class Policy(ABC):
    def __init__(self, model: Model, cls: str):
        self.cls = cls
        spec = model.classes[cls]
        self.operations: list[str] = model.enums[spec.fields["allowed_operations"].type.elem.name]

    def with_context(self, tx, values: dict[str, Any]) -> dict[str, Any]:
        """The object's fields plus whatever else the rules look at (read in ``tx``)."""
        return values

    @abstractmethod
    def check(self, ref: str, values: dict[str, Any], op: str) -> None:
        """Raise the XenAPI error that forbids ``op`` now, if any."""

    def allowed(self, ref: str, values: dict[str, Any]) -> list[str]:
        out = []
        for op in self.operations:
            try:
                self.check(ref, values, op)
            except ApiError:
                continue
            out.append(op)
        return out


class Exclusive(Policy):
    """Every operation allowed, but never two at once on the same object."""

    def check(self, ref: str, values: dict[str, Any], op: str) -> None:
        current = values.get("current_operations") or {}
        if current:
            task, running = next(iter(current.items()))
            raise ApiError("OTHER_OPERATION_IN_PROGRESS", self.cls, ref, running, task)


_POLICIES: dict[str, type[Policy]] = {}


def register(cls: str):
    def add(policy: type[Policy]) -> type[Policy]:
        _POLICIES[cls] = policy
        return policy

    return add


_INSTANCES: dict[tuple[int, str], tuple[Model, Policy]] = {}


def policy_for(model: Model, cls: str) -> Policy:
    """The class's policy, one per model: a policy may keep answers (VmPolicy's)."""
    found = _INSTANCES.get((id(model), cls))
    if found is None or found[0] is not model:
        found = _INSTANCES[(id(model), cls)] = (model, _POLICIES.get(cls, Exclusive)(model, cls))
    return found[1]


from . import devices, storage, vm  # noqa: E402,F401  (register their policies)
