"""VM.pool_migrate_complete: the destination's half of a migration (internal, as in xapi)."""

from __future__ import annotations

from xapi.context import Context
from xapi.domains import migration
from xapi.errors import ApiError

from . import implements


@implements("VM.pool_migrate_complete")
def pool_migrate_complete(ctx: Context, vm: str, host: str):
    if ctx.rt.cache.get("VM", vm) is None:
        raise ApiError("HANDLE_INVALID", "VM", vm)
    if ctx.rt.cache.get("host", host) is None:
        raise ApiError("HANDLE_INVALID", "host", host)
    migration.complete(ctx, vm, host)
    return ""
