"""pool.* and host.* calls that change the shape of a pool (xapi/pool/ does the work)."""

from __future__ import annotations

from xapi.context import Context
from xapi.errors import ApiError
from xapi.pool import joining, roles, secret, transitions

from . import implements


def _assert_master(ctx: Context) -> None:
    if not roles.is_master(ctx.rt):
        raise roles.host_is_slave(ctx.rt)


@implements("pool.join")
def join(ctx: Context, master_address: str, master_username: str, master_password: str):
    joining.join(ctx, master_address, master_username, master_password, force=False)
    return ""


@implements("pool.join_force")
def join_force(ctx: Context, master_address: str, master_username: str, master_password: str):
    joining.join(ctx, master_address, master_username, master_password, force=True)
    return ""


@implements("pool.eject")
def eject(ctx: Context, host: str):
    transitions.eject(ctx, host)
    return ""


@implements("pool.designate_new_master")
def designate_new_master(ctx: Context, host: str):
    transitions.designate_new_master(ctx, host)
    return ""


@implements("pool.emergency_transition_to_master")
def emergency_transition_to_master(ctx: Context):
    transitions.emergency_transition_to_master(ctx)
    return ""


@implements("pool.emergency_reset_master")
def emergency_reset_master(ctx: Context, master_address: str):
    transitions.emergency_reset_master(ctx, master_address)
    return ""


@implements("pool.recover_slaves")
def recover_slaves(ctx: Context):
    _assert_master(ctx)
    return transitions.recover_slaves(ctx)


@implements("pool.initial_auth", mode="read")
def initial_auth(ctx: Context):
    _assert_master(ctx)
    return secret.load(ctx.rt.config.state_dir)


@implements("pool.is_slave", mode="read")
def is_slave(ctx: Context, host: str):
    return not roles.is_master(ctx.rt)


@implements("pool.hello")
def hello(ctx: Context, host_uuid: str, host_address: str):
    _assert_master(ctx)
    return transitions.hello(ctx, host_uuid, host_address)


@implements("host.propose_new_master", mode="read")
def propose_new_master(ctx: Context, address: str, manual: bool):
    transitions.propose_new_master(ctx.rt, address, manual)
    return ""


@implements("host.commit_new_master", mode="read")
def commit_new_master(ctx: Context, address: str):
    transitions.commit_new_master(ctx.rt, address)
    return ""


@implements("host.abort_new_master", mode="read")
def abort_new_master(ctx: Context, address: str):
    transitions.abort_new_master(ctx.rt, address)
    return ""


@implements("host.is_in_emergency_mode", mode="read")
def is_in_emergency_mode(ctx: Context):
    # Members reach the pool database directly, so none is ever cut off from it.
    return False


@implements("host.local_assert_healthy", mode="read")
def local_assert_healthy(ctx: Context):
    if ctx.rt.cache.get("host", ctx.rt.host_ref) is None:
        raise ApiError("HOST_STILL_BOOTING")
    return ""
