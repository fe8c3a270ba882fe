"""Who is master: read from the database (``pool.master``), never from local files.

xapi keeps the role in /etc/xensource/pool.conf and restarts to change it;
here every host shares the pool database, so the role is whatever the pool
row says at the moment of the call and a hand-over takes effect at once.
"""

from __future__ import annotations

from xapi.context import Runtime
from xapi.errors import ApiError
from xapi.idl.types import NULL_REF


def master_ref(rt: Runtime) -> str:
    pool = rt.cache.get("pool", rt.pool_ref)
    return pool.values["master"] if pool is not None else NULL_REF


def is_master(rt: Runtime) -> bool:
    return master_ref(rt) == rt.host_ref


def address_of(rt: Runtime, host_ref: str) -> str:
    row = rt.cache.get("host", host_ref)
    return row.values["address"] if row is not None else ""


def master_address(rt: Runtime) -> str:
    return address_of(rt, master_ref(rt))


def host_is_slave(rt: Runtime) -> ApiError:
    """The error a member answers to calls that only the master serves."""
    return ApiError("HOST_IS_SLAVE", master_address(rt))


def is_live(rt: Runtime, host_ref: str) -> bool:
    """host_metrics.live of a host; this host is always live to itself."""
    if host_ref == rt.host_ref:
        return True
    host = rt.cache.get("host", host_ref)
    if host is None:
        return False
    metrics = rt.cache.get("host_metrics", host.values["metrics"])
    return bool(metrics and metrics.values["live"])


def hosts(rt: Runtime) -> list[str]:
    return [row.ref for row in rt.cache.rows("host")]
