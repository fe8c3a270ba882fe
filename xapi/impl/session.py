"""session.*: login, logout and password changes."""

from __future__ import annotations

import asyncio

from xapi import sessions
from xapi.auth import hash_password
from xapi.context import Context
from xapi.errors import ApiError

from . import implements

AUTH_FAILURE = "Authentication failure"


async def _login(ctx: Context, uname: str, pwd: str, originator: str) -> str:
    rt = ctx.rt
    loop = asyncio.get_running_loop()
    try:
        await loop.run_in_executor(rt.executor, sessions.authenticate, rt, uname, pwd, ctx.local)
    except sessions.AuthenticationFailed:
        # xapi sleeps before answering, to slow down password guessing.
        await asyncio.sleep(rt.config.auth_failure_delay)
        raise ApiError("SESSION_AUTHENTICATION_FAILED", uname, AUTH_FAILURE) from None
    user = sessions.ROOT if ctx.local else uname
    return await loop.run_in_executor(rt.executor, sessions.create, rt, user, originator)


@implements("session.login_with_password", mode="async")
async def login_with_password(ctx: Context, uname: str, pwd: str, version: str, originator: str):
    return await _login(ctx, uname, pwd, originator)


@implements("session.slave_local_login_with_password", mode="async")
async def slave_local_login_with_password(ctx: Context, uname: str, pwd: str):
    return await _login(ctx, uname, pwd, "")


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
