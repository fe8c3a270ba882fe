"""message.*: the pool's alerts, kept in a table of their own."""

from __future__ import annotations

from datetime import datetime

from xapi.context import Context, now
from xapi.errors import ApiError
from xapi.refs import make_ref, make_uuid

from . import implements

# message.cls values and the classes whose objects they name.
_CLASS_OF = {
    "VM": "VM", "Host": "host", "SR": "SR", "Pool": "pool", "VMPP": "VMPP", "VMSS": "VMSS",
    "PVS_proxy": "PVS_proxy", "VDI": "VDI", "Certificate": "Certificate",
}


def _records(ctx: Context, rows) -> dict:
    from_cache = ctx.rt.cache
    return {r.ref: from_cache.record("message", r) for r in rows}


@implements("message.create")
def create(ctx: Context, name: str, priority: int, cls: str, obj_uuid: str, body: str):
    target = _CLASS_OF[cls]
    if ctx.rt.cache.ref_by_uuid(target, obj_uuid) is None:
        raise ApiError("UUID_INVALID", target, obj_uuid)
    ref = make_ref()
    with ctx.rt.db.write() as tx:
        tx.insert("message", ref, {
            "uuid": make_uuid(), "name": name, "priority": priority, "cls": cls,
            "obj_uuid": obj_uuid, "timestamp": now(), "body": body,
        })
    return ref


@implements("message.destroy")
def destroy(ctx: Context, ref: str):
    with ctx.rt.db.write() as tx:
        tx.delete("message", ref)
    return ""


@implements("message.destroy_many")
def destroy_many(ctx: Context, refs: list[str]):
    with ctx.rt.db.write() as tx:
        for ref in refs:
            tx.delete("message", ref)
    return ""


@implements("message.destroy_all")
def destroy_all(ctx: Context, filters: dict[str, str]):
    rows = ctx.rt.cache.rows("message")
    wanted = {k: v for k, v in filters.items() if k in ("cls", "obj_uuid", "name", "priority")}
    doomed = [r.ref for r in rows
              if all(str(r.values.get(k)) == v for k, v in wanted.items())]
    with ctx.rt.db.write() as tx:
        for ref in doomed:
            if tx.exists("message", ref):
                tx.delete("message", ref)
    return ""


@implements("message.get_since", mode="read")
def get_since(ctx: Context, since: datetime):
    rows = [r for r in ctx.rt.cache.rows("message") if r.values["timestamp"] > since]
    return _records(ctx, rows)


@implements("message.get", mode="read")
def get(ctx: Context, cls: str, obj_uuid: str, since: datetime):
    rows = [r for r in ctx.rt.cache.rows("message")
            if r.values["cls"] == cls and r.values["obj_uuid"] == obj_uuid
            and r.values["timestamp"] > since]
    return _records(ctx, rows)
