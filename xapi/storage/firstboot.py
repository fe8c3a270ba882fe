"""First boot's storage: a local file SR as the pool's default SR, and an ISO library."""

from __future__ import annotations

import os

from xapi.context import Context, Runtime
from xapi.idl.types import NULL_REF

LOCAL_NAME = "Local storage"
ISO_NAME = "ISO library"


def run(rt: Runtime) -> None:
    from xapi.impl.storage import sr_create

    if not rt.config.local_storage or rt.storage is None:
        return
    ctx = Context(rt=rt, method="firstboot")
    types = {row.values["type"] for row in rt.cache.rows("SR")}
    base = os.path.join(os.path.abspath(rt.config.state_dir), "sr")
    if "file" not in types:
        sr = sr_create(ctx, rt.host_ref, {"path": os.path.join(base, "local")}, 0, LOCAL_NAME, "",
                       "file", "user", False, {})
        pool = rt.cache.get("pool", rt.pool_ref).values
        with rt.db.write() as tx:
            tx.update("pool", rt.pool_ref, {
                field: sr for field in ("default_SR", "suspend_image_SR", "crash_dump_SR")
                if pool[field] == NULL_REF})
            host = tx.get("host", rt.host_ref)
            tx.update("host", rt.host_ref, {
                field: sr for field in ("suspend_image_sr", "crash_dump_sr") if host[field] == NULL_REF})
    if "iso" not in types:
        location = os.path.join(base, "iso")
        os.makedirs(location, exist_ok=True)
        sr_create(ctx, rt.host_ref, {"location": location}, 0, ISO_NAME, "", "iso", "iso", False, {})
