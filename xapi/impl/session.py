"""session.*: login, logout and password changes."""

from __future__ import annotations

import asyncio

from xapi import sessions
from xapi.auth import hash_password
from xapi.context import Context
from xapi.errors import ApiError
from xapi.pool import roles, secret

from . import implements

AUTH_FAILURE = "Authentication failure"


async def _authenticate(ctx: Context, uname: str, pwd: str) -> str:
    """The user name the session is for; SESSION_AUTHENTICATION_FAILED after a delay."""
    rt = ctx.rt
    loop = asyncio.get_running_loop()
    try:
        await loop.run_in_executor(rt.executor, sessions.authenticate, rt, uname, pwd, ctx.local)
    except sessions.AuthenticationFailed:
        # xapi sleeps before answering, to slow down password guessing.
        await asyncio.sleep(rt.config.auth_failure_delay)
        raise ApiError("SESSION_AUTHENTICATION_FAILED", uname, AUTH_FAILURE) from None
    return sessions.ROOT if ctx.local else uname


@implements("session.login_with_password", mode="async")
async def login_with_password(ctx: Context, uname: str, pwd: str, version: str, originator: str):
    if not ctx.local and not roles.is_master(ctx.rt):
        raise roles.host_is_slave(ctx.rt)  # before the password check, as xapi
    user = await _authenticate(ctx, uname, pwd)
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(ctx.rt.executor, sessions.create, ctx.rt, user, originator)


@implements("session.slave_local_login_with_password", mode="async")
async def slave_local_login_with_password(ctx: Context, uname: str, pwd: str):
    return sessions.create_local(ctx.rt, await _authenticate(ctx, uname, pwd))


def _check_secret(ctx: Context, who: str, psecret: str) -> None:
    if not secret.matches(ctx.rt.config.state_dir, psecret):
        raise ApiError("SESSION_AUTHENTICATION_FAILED", who, "Pool credentials invalid")


@implements("session.slave_local_login", mode="read")
def slave_local_login(ctx: Context, psecret: str):
    _check_secret(ctx, "localhost", psecret)
    return sessions.create_local(ctx.rt, sessions.ROOT)


@implements("session.slave_login")
def slave_login(ctx: Context, host: str, psecret: str):
    """A pool session: what hosts use to call each other; valid on members too."""
    _check_secret(ctx, host, psecret)
    return sessions.create(ctx.rt, host, "", pool=True, host=host)


@implements("session.logout")
def logout(ctx: Context):
    sessions.destroy(ctx.rt, ctx.session)
    return ""


@implements("session.local_logout")
def local_logout(ctx: Context):
    sessions.destroy(ctx.rt, ctx.session)
    return ""


@implements("session.change_password")
def change_password(ctx: Context, old_pwd: str, new_pwd: str):
    # As xapi: the old password is not checked; only a local superuser may do it.
    rt = ctx.rt
    row = rt.cache.get("session", ctx.session)
    if row is None or not row.values["is_local_superuser"]:
        raise ApiError("USER_IS_NOT_LOCAL_SUPERUSER", "Failed to change password for user root")
    rt.db.set_password_hash(sessions.ROOT, hash_password(new_pwd))
    return ""


@implements("session.get_all_subject_identifiers", mode="read")
def get_all_subject_identifiers(ctx: Context):
    return sorted({r.values["auth_user_sid"] for r in ctx.rt.cache.rows("session") if r.values["auth_user_sid"]})
