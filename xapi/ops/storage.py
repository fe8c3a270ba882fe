"""SR and VDI rules (xapi's ``xapi_sr_operations`` / ``xapi_vdi_helpers``)."""

from __future__ import annotations

from typing import Any

from xapi.errors import ApiError

from . import Policy, register


@register("SR")
class SrPolicy(Policy):
    """destroy/forget need every PBD unplugged; destroy needs a PBD and no managed VDI;
    only ``plug`` runs alongside other operations."""

    def with_context(self, tx, values: dict[str, Any]) -> dict[str, Any]:
        ref = tx.ref_of("SR", values["uuid"])
        return {**values,
                "_pbds": [tx.get("PBD", p) for p in tx.refs_where("PBD", SR=ref)],
                "_vdis": [tx.get("VDI", v) for v in tx.refs_where("VDI", SR=ref)]}

    def check(self, ref: str, values: dict[str, Any], op: str) -> None:
        current = values.get("current_operations") or {}
        for task, running in current.items():
            if op != "plug" or running != "plug":
                raise ApiError("OTHER_OPERATION_IN_PROGRESS", "SR", ref, running, task)
        pbds = values.get("_pbds")
        if pbds is None:
            return  # allowed_operations without the context: nothing more to say
        if op in ("destroy", "forget") and any(p["currently_attached"] for p in pbds):
            raise ApiError("SR_HAS_PBD", ref)
        if op == "destroy":
            if not pbds:
                raise ApiError("SR_HAS_NO_PBDS", ref)
            if any(v["managed"] and v["type"] != "rrd" for v in values.get("_vdis", [])):
                raise ApiError("SR_NOT_EMPTY")


@register("VDI")
class VdiPolicy(Policy):
    """One operation at a time; no destroy or resize while a running VM uses the disk."""

    def with_context(self, tx, values: dict[str, Any]) -> dict[str, Any]:
        ref = tx.ref_of("VDI", values["uuid"])
        attached = any(tx.get("VBD", v)["currently_attached"] for v in tx.refs_where("VBD", VDI=ref))
        return {**values, "_attached": attached}

    def check(self, ref: str, values: dict[str, Any], op: str) -> None:
        current = values.get("current_operations") or {}
        if current:
            task, running = next(iter(current.items()))
            raise ApiError("OTHER_OPERATION_IN_PROGRESS", "VDI", ref, running, task)
        if op in ("destroy", "resize", "forget") and values.get("_attached"):
            raise ApiError("VDI_IN_USE", ref, op)
        if op in ("resize", "resize_online") and values.get("read_only"):
            raise ApiError("VDI_READONLY", ref)
