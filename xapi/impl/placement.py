"""VM.get_possible_hosts and VM.assert_can_boot_here: xapi's placement checks, answered from the cache."""

from __future__ import annotations

from xapi.context import Context
from xapi.errors import ApiError
from xapi.pool import placement

from . import implements


def _check_vm(ctx: Context, vm: str) -> None:
    if ctx.rt.cache.get("VM", vm) is None:
        raise ApiError("HANDLE_INVALID", "VM", vm)


@implements("VM.get_possible_hosts", mode="read")
def get_possible_hosts(ctx: Context, vm: str):
    _check_vm(ctx, vm)
    return placement.possible_hosts(ctx.rt, vm)


@implements("VM.assert_can_boot_here", mode="read")
def assert_can_boot_here(ctx: Context, self: str, host: str):
    _check_vm(ctx, self)
    if ctx.rt.cache.get("host", host) is None:
        raise ApiError("HANDLE_INVALID", "host", host)
    placement.assert_can_boot_here(ctx.rt, self, host)
    return ""
