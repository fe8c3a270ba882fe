"""First boot's storage: a local file SR per host (the first is the pool's default SR),
an ISO library, and a PBD on this host for every shared SR."""

from __future__ import annotations

import os

from xapi.context import Context, Runtime
from xapi.idl.types import NULL_REF

LOCAL_NAME = "Local storage"
ISO_NAME = "ISO library"


def run(rt: Runtime) -> None:
    from xapi.impl.storage import sr_create

    if rt.storage is None:
        return
    from .shared import join_shared_srs

    join_shared_srs(rt)
    if not rt.config.local_storage:
        return
    ctx = Context(rt=rt, method="firstboot")
    types = {row.values["type"] for row in rt.cache.rows("SR")}
    base = os.path.join(os.path.abspath(rt.config.state_dir), "sr")
    if not _has_local_file_sr(rt):  # in a pool every host has local storage of its own
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


def _has_local_file_sr(rt: Runtime) -> bool:
    """A non-shared file SR with a PBD on this host."""
    for pbd in rt.cache.rows("PBD"):
        if pbd.values["host"] != rt.host_ref:
            continue
        sr = rt.cache.get("SR", pbd.values["SR"])
        if sr is not None and sr.values["type"] == "file" and not sr.values["shared"]:
            return True
    return False
