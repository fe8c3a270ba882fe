"""VM.*: lifecycle through xenopsd, each under xapi's operation rules."""

from __future__ import annotations

from xapi import operations
from xapi.context import Context
from xapi.domains import copies, lifecycle
from xapi.errors import ApiError

from . import implements


def _op(ctx: Context, vm: str, op: str, fn, *args):
    return operations.run_operation(ctx, "VM", vm, op, lambda: fn(ctx, vm, *args))


def _void_op(ctx: Context, vm: str, op: str, fn, *args) -> str:
    """``_op`` for a message that returns nothing: its task ends with the unmarking."""
    operations.run_operation(ctx, "VM", vm, op, lambda: fn(ctx, vm, *args), last=True)
    return ""


def _start(ctx: Context, vm: str, op: str, paused: bool, force: bool, host: str) -> None:
    # The memory check and claim go with the marking, the final placement with the unmarking.
    operations.run_operation(
        ctx, "VM", vm, op, lambda: lifecycle.start(ctx, vm, paused, force, host),
        claim=lambda tx: lifecycle.claim_start(ctx, tx, vm, host),
        settle=lambda tx: lifecycle.settle_start(tx, vm, host), last=True)


@implements("VM.start")
def start(ctx: Context, vm: str, start_paused: bool, force: bool):
    _start(ctx, vm, "start", start_paused, force, ctx.rt.host_ref)
    return ""


@implements("VM.start_on")
def start_on(ctx: Context, vm: str, host: str, start_paused: bool, force: bool):
    if ctx.rt.cache.get("host", host) is None:
        raise ApiError("HANDLE_INVALID", "host", host)
    _start(ctx, vm, "start_on", start_paused, force, host)
    return ""


@implements("VM.clean_shutdown")
def clean_shutdown(ctx: Context, vm: str):
    return _void_op(ctx, vm, "clean_shutdown", lifecycle.clean_shutdown)


@implements("VM.hard_shutdown")
def hard_shutdown(ctx: Context, vm: str):
    return _void_op(ctx, vm, "hard_shutdown", lifecycle.hard_shutdown)


@implements("VM.clean_reboot")
def clean_reboot(ctx: Context, vm: str):
    return _void_op(ctx, vm, "clean_reboot", lifecycle.clean_reboot)


@implements("VM.hard_reboot")
def hard_reboot(ctx: Context, vm: str):
    return _void_op(ctx, vm, "hard_reboot", lifecycle.hard_reboot)


@implements("VM.suspend")
def suspend(ctx: Context, vm: str):
    return _void_op(ctx, vm, "suspend", lifecycle.suspend)


@implements("VM.resume")
def resume(ctx: Context, vm: str, start_paused: bool, force: bool):
    return _void_op(ctx, vm, "resume", lifecycle.resume, start_paused, force)


@implements("VM.resume_on")
def resume_on(ctx: Context, vm: str, host: str, start_paused: bool, force: bool):
    if host != ctx.rt.host_ref:
        raise ApiError("NOT_IMPLEMENTED", "VM.resume_on another host")
    return _void_op(ctx, vm, "resume_on", lifecycle.resume, start_paused, force)


@implements("VM.pause")
def pause(ctx: Context, vm: str):
    return _void_op(ctx, vm, "pause", lifecycle.pause)


@implements("VM.unpause")
def unpause(ctx: Context, vm: str):
    return _void_op(ctx, vm, "unpause", lifecycle.unpause)


@implements("VM.pool_migrate")
def pool_migrate(ctx: Context, vm: str, host: str, options: dict):
    _op(ctx, vm, "pool_migrate", lifecycle.pool_migrate, host, options)
    return ""


@implements("VM.power_state_reset")
def power_state_reset(ctx: Context, vm: str):
    # Not under run_operation: xapi runs it on the master and marks no operation,
    # since its purpose is to clear what a dead host left (forwarding must not send it there).
    copies.power_state_reset(ctx, vm)
    return ""


@implements("VM.create")
def create(ctx: Context, values: dict):
    return copies.create(ctx, values)


@implements("VM.destroy")
def destroy(ctx: Context, vm: str):
    _op(ctx, vm, "destroy", copies.destroy)
    return ""


@implements("VM.clone")
def clone(ctx: Context, vm: str, new_name: str):
    return _op(ctx, vm, "clone", copies.clone, new_name)


@implements("VM.copy")
def copy(ctx: Context, vm: str, new_name: str, sr: str):
    return _op(ctx, vm, "copy", copies.copy, new_name, sr)


@implements("VM.snapshot")
def snapshot(ctx: Context, vm: str, new_name: str, ignore_vdis: list):
    return _op(ctx, vm, "snapshot", copies.snapshot, new_name, ignore_vdis)


@implements("VM.revert")
def revert(ctx: Context, snapshot: str):
    _op(ctx, snapshot, "revert", copies.revert)
    return ""


@implements("VM.provision")
def provision(ctx: Context, vm: str):
    _op(ctx, vm, "provision", copies.provision)
    return ""
