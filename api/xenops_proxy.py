"""``/services/xenops``: another host's xenopsd reaching this host's, as during a migration.

xapi hands the source xenopsd ``http://<destination>/services/xenops?session_id=…``;
the destination answers that path by passing the request on, unchanged, to
its own xenopsd's socket (the part after ``/services/xenops`` is the path
there).  The session must be a valid one of the pool; anything else is 403.
"""

from __future__ import annotations

import aiohttp
from aiohttp import web

from xapi import sessions
from xapi.backends.xenops import protocol as P

PREFIX = "/services/xenops"
_FORBIDDEN = b"<html><body><h1>HTTP 403 forbidden</h1>Access to the requested resource is forbidden.</body></html>"


async def handle(request: web.Request) -> web.Response:
    from .app import RUNTIME

    rt = request.app[RUNTIME]
    if await sessions.find(rt, request.query.get("session_id", "")) is None:
        return web.Response(status=403, body=_FORBIDDEN, headers={"Content-Type": "text/html"})
    queues = rt.config.xenopsd_queue_list
    if not queues:
        raise web.HTTPNotFound()
    socket = P.socket_path(rt.config.xenopsd_sockets, queues[0])
    path = request.path[len(PREFIX):] or "/"
    body = await request.read()
    headers = {"Content-Type": request.headers.get("Content-Type", P.CONTENT_TYPES[P.JSON])}
    try:
        async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=socket)) as http:
            async with http.post(f"http://xenopsd{path}", data=body, headers=headers) as reply:
                data = await reply.read()
                return web.Response(status=reply.status, body=data, headers={
                    "Content-Type": reply.headers.get("Content-Type", "application/json")})
    except aiohttp.ClientError as exc:
        return web.Response(status=502, text=f"xenopsd is unreachable: {exc}")
