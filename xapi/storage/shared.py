"""Shared SRs in a pool: a PBD on every host, plugged where that host runs.

``SR.create`` with ``shared=true`` makes the PBDs of the other hosts (same
device_config: a directory every host sees stands in for NFS) and plugs
each on its own host through ``rt.extra["call_on_host"]``; if one cannot be
plugged the SR is not created.  A host that starts in the pool gets a PBD
for every shared SR it lacks and plugs it, as xapi's dbsync does.
"""

from __future__ import annotations

import logging

from xapi.context import Context, Runtime
from xapi.errors import ApiError
from xapi.refs import make_ref, make_uuid

log = logging.getLogger("xapi.storage.shared")


def _pbd_hosts(rt: Runtime, sr: str) -> dict[str, str]:
    out = {}
    for ref in rt.cache.derived("SR", "PBDs", sr):
        row = rt.cache.get("PBD", ref)
        if row is not None:
            out[row.values["host"]] = ref
    return out


def _new_pbd(rt: Runtime, sr: str, host: str, device_config: dict) -> str:
    ref = make_ref()
    with rt.db.write() as tx:
        tx.insert("PBD", ref, {"uuid": make_uuid(), "host": host, "SR": sr,
                               "device_config": dict(device_config),
                               "currently_attached": False, "other_config": {}})
    return ref


def plug_on_other_hosts(ctx: Context, sr: str, device_config: dict) -> None:
    """After a shared SR is made and plugged here: a plugged PBD on every other host."""
    rt = ctx.rt
    have = _pbd_hosts(rt, sr)
    made = [_new_pbd(rt, sr, host.ref, device_config)
            for host in rt.cache.rows("host") if host.ref not in have]
    call = rt.extra.get("call_on_host")
    plugged: list[str] = []
    try:
        for pbd in made:
            host = rt.cache.get("PBD", pbd).values["host"]
            if call is None:
                raise ApiError("INTERNAL_ERROR", "plugging a PBD on another host needs redis_url")
            call(ctx, host, "PBD.plug", [pbd])
            plugged.append(pbd)
    except BaseException:
        for pbd in plugged:
            try:
                call(ctx, rt.cache.get("PBD", pbd).values["host"], "PBD.unplug", [pbd])
            except ApiError:
                log.warning("could not unplug PBD %s while undoing a shared SR", pbd)
        with rt.db.write() as tx:
            for pbd in made:
                if tx.exists("PBD", pbd):
                    tx.delete("PBD", pbd)
        raise


def join_shared_srs(rt: Runtime) -> None:
    """At start: this host gets a plugged PBD of every shared SR (xapi's dbsync)."""
    from xapi.impl.storage import pbd_plug

    ctx = Context(rt=rt, method="dbsync")
    for sr in rt.cache.rows("SR"):
        if not sr.values["shared"]:
            continue
        hosts = _pbd_hosts(rt, sr.ref)
        pbd = hosts.get(rt.host_ref)
        if pbd is None:
            others = [rt.cache.get("PBD", ref) for ref in hosts.values()]
            configs = [row.values["device_config"] for row in others if row is not None]
            if not configs:
                continue  # an SR introduced without PBDs: nothing says how to reach it
            pbd = _new_pbd(rt, sr.ref, rt.host_ref, configs[0])
        if rt.cache.get("PBD", pbd).values["currently_attached"]:
            continue
        try:
            pbd_plug(ctx, pbd)
        except ApiError as exc:
            log.warning("could not plug shared SR %s on this host: %s", sr.values["name_label"], exc)
