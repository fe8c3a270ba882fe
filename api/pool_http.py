"""HTTP for hosts of a pool: where the pool database is, for holders of the pool secret.

A joining host has proved the user's credentials to the master and received
the pool secret (``pool.initial_auth``); with the secret, as a ``pool_secret``
cookie like xapi's /remote_db_access, it learns the database and Redis URLs
it will use as a member.
"""

from __future__ import annotations

import json
from http.cookies import CookieError, SimpleCookie

from aiohttp import web

from xapi.pool import joining, roles, secret


async def handle_database(request: web.Request) -> web.Response:
    from .app import RUNTIME

    rt = request.app[RUNTIME]
    try:
        cookie = SimpleCookie(request.headers.get("Cookie", ""))
    except CookieError:
        cookie = SimpleCookie()
    offered = cookie["pool_secret"].value if "pool_secret" in cookie else None
    if not secret.matches(rt.config.state_dir, offered):
        raise web.HTTPForbidden(text="pool secret required")
    if not roles.is_master(rt):
        raise web.HTTPServiceUnavailable(text=f"not the master: {roles.master_address(rt)}")
    settings = joining.pool_database_settings(rt)
    if settings is None:
        raise web.HTTPConflict(text=(
            "This pool runs on an embedded SQLite database and cannot take members: "
            "a pool needs PostgreSQL (db_url) and Redis (redis_url) on its master"))
    return web.Response(text=json.dumps(settings), content_type="application/json")
