"""Sessions: login, the per-call check, logout and garbage collection.

As in xapi, a session record is created by ``login_with_password`` and
checked on every call that takes one.  ``last_active`` is refreshed at most
once per ``session_last_active_threshold`` so that reads stay write-free.
Sessions are grouped for eviction as xapi groups them (by originator, by
non-root user name, anonymous) and a group over its limit loses its least
recently active sessions, so one leaky script cannot push others out.

On a pool member only pool sessions (``slave_login``), local sessions
(``slave_local_login*``, kept in memory like xapi's, never in the database)
and calls over the unix socket are served; any other session gets
HOST_IS_SLAVE with the master's address, which clients follow.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from xapi.auth import verify_password
from xapi.context import Context, Runtime, now
from xapi.errors import ApiError
from xapi.idl.types import NULL_REF
from xapi.pool import roles
from xapi.refs import make_ref, make_uuid

log = logging.getLogger("xapi.sessions")

ROOT = "root"
LOCAL_SESSIONS = "local_sessions"  # rt.extra key: ref -> user name, this process only


class AuthenticationFailed(Exception):
    pass


async def check(ctx: Context, session: Any) -> str:
    """Validate the session parameter of a call; returns its ref."""
    ref = session if isinstance(session, str) else NULL_REF
    if ref in ctx.rt.extra.get(LOCAL_SESSIONS, ()):
        return ref
    row = await find(ctx.rt, ref)
    if row is None:
        raise ApiError("SESSION_INVALID", ref)
    if not (ctx.local or row.values["pool"] or roles.is_master(ctx.rt)):
        raise roles.host_is_slave(ctx.rt)
    last = row.values["last_active"]
    threshold = ctx.rt.config.session_last_active_threshold
    if (now() - last).total_seconds() >= threshold:
        loop = asyncio.get_running_loop()
        loop.run_in_executor(ctx.rt.executor, _touch, ctx.rt, ref)
    return ref


async def find(rt: Runtime, ref: str):
    """The session's cached row, or None.  In a pool the session may have been
    made on another host an instant ago, before its change notification came."""
    row = rt.cache.get("session", ref)
    if row is None and rt.config.redis_url:
        await asyncio.get_running_loop().run_in_executor(rt.executor, rt.db.catch_up)
        row = rt.cache.get("session", ref)
    return row


def alive(rt: Runtime, ref: str | None) -> bool:
    return ref in rt.extra.get(LOCAL_SESSIONS, ()) or rt.cache.get("session", ref or "") is not None


def create_local(rt: Runtime, uname: str) -> str:
    """A session that exists on this host only (xapi's slave_local_login)."""
    ref = make_ref()
    rt.extra.setdefault(LOCAL_SESSIONS, {})[ref] = uname
    return ref


def _touch(rt: Runtime, ref: str) -> None:
    try:
        with rt.db.write() as tx:
            if tx.exists("session", ref):
                tx.update("session", ref, {"last_active": now()})
    except Exception:  # a refresh that loses a race with logout is harmless
        log.debug("last_active refresh of %s failed", ref, exc_info=True)


def authenticate(rt: Runtime, uname: str, pwd: str, local: bool) -> None:
    if local:
        return  # the unix socket is pre-authenticated as root, like xapi's
    if uname != ROOT or not verify_password(pwd, rt.db.get_password_hash(ROOT)):
        raise AuthenticationFailed(uname)


def group_of(values: dict) -> tuple[str, str]:
    if values.get("pool"):
        return ("pool", "")
    if values.get("originator"):
        return ("originator", values["originator"])
    if values.get("auth_user_name", ROOT) not in (ROOT, ""):
        return ("user", values["auth_user_name"])
    return ("anonymous", "")


def group_limit(rt: Runtime, group: tuple[str, str]) -> int:
    if group[0] in ("originator", "user"):
        return rt.config.max_sessions_per_originator
    return rt.config.max_anonymous_sessions


def create(rt: Runtime, uname: str, originator: str, *, pool: bool = False, parent: str = NULL_REF,
           host: str | None = None) -> str:
    """Make a new session for an authenticated user, evicting over-limit ones."""
    ref = make_ref()
    stamp = now()
    values = {
        "uuid": make_uuid(),
        "this_host": host or rt.host_ref,
        "this_user": NULL_REF,
        "last_active": stamp,
        "pool": pool,
        "is_local_superuser": True,
        "subject": NULL_REF,
        "validation_time": stamp,
        "auth_user_sid": "",
        "auth_user_name": uname,
        "rbac_permissions": [],
        "parent": parent,
        "originator": originator,
        "other_config": {},
        "client_certificate": False,
    }
    group = group_of(values)
    limit = group_limit(rt, group)
    peers = [r for r in rt.cache.rows("session") if group_of(r.values) == group]
    excess = len(peers) + 1 - limit
    victims = sorted(peers, key=lambda r: r.values["last_active"])[: max(excess, 0)]
    with rt.db.write() as tx:
        for victim in victims:
            if tx.exists("session", victim.ref):
                log.info(
                    "Timed out session %s because max number of sessions was exceeded", victim.ref
                )
                tx.delete("session", victim.ref)
        tx.insert("session", ref, values)
    return ref


def destroy(rt: Runtime, ref: str) -> None:
    if rt.extra.get(LOCAL_SESSIONS, {}).pop(ref, None) is not None:
        return
    with rt.db.write() as tx:
        if tx.exists("session", ref):
            tx.delete("session", ref)
