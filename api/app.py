"""The aiohttp application: routes, body limits, CORS and error framing.

Paths as xapi's HTTP server matches them (longest prefix): ``/jsonrpc``
takes JSON-RPC; every other POST (``/``, ``/RPC2``, ``/xmlrpc``, ``/json`` …)
falls back to the ``/`` handler, which takes XML-RPC.  API failures travel
inside a 200 response; only unreadable requests get an HTTP error.
"""

from __future__ import annotations

import logging

from aiohttp import web

from xapi.context import Context, Runtime
from xapi.errors import ApiError

from xapi.pool import joining

from . import jsonrpc, pool_http, records, xenops_proxy, xmlrpc
from .dispatch import Dispatcher
from .xmlrpc import ProtocolError

log = logging.getLogger("xapi.api")

RUNTIME = web.AppKey("runtime", Runtime)
DISPATCHER = web.AppKey("dispatcher", Dispatcher)
LOCAL = web.AppKey("local", bool)  # the unix-socket listener: logins are pre-authenticated

_CORS = {"Access-Control-Allow-Origin": "*", "Access-Control-Allow-Headers": "X-Requested-With"}
_XML_HEADERS = {"Content-Type": xmlrpc.CONTENT_TYPE, **_CORS}
_JSON_HEADERS = {"Content-Type": jsonrpc.CONTENT_TYPE, **_CORS}
_NO_CACHE = "no-cache, no-store"
_ERROR_HEADERS = {"Content-Type": "text/html", "Connection": "close", "Cache-Control": _NO_CACHE}
_FORBIDDEN = (
    b"<html><body><h1>HTTP 403 forbidden</h1>"
    b"Access to the requested resource is forbidden.</body></html>"
)


class BodyTooLarge(Exception):
    pass


async def _read_body(request: web.Request) -> bytes:
    limit = request.app[RUNTIME].config.max_rpc_size
    if request.content_length is not None and request.content_length > limit:
        raise BodyTooLarge()
    chunks, size = [], 0
    async for chunk in request.content.iter_chunked(65536):
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge()
        chunks.append(chunk)
    return b"".join(chunks)


def _error_page(detail: str) -> web.Response:
    """xapi's answer to a request it cannot read: HTTP 500 and an HTML page."""
    html = (
        "<html><body><h1>HTTP 500 internal server error</h1>An unexpected error occurred; "
        "please wait a while and try again. If the problem persists, please contact your "
        "support representative.<h1> Additional information </h1>"
        f"{xmlrpc.escape(detail)}</body></html>"
    )
    return web.Response(status=500, body=html.encode(), headers=_ERROR_HEADERS)


_OVERSIZE = "Http_svr.Client_requested_size_over_limit"


_RAW = {
    "xml": lambda value: xmlrpc.RawXML(xmlrpc.encode(value)),
    "json": lambda value: jsonrpc.RawJSON(jsonrpc.encode(value)),
}


def _context(request: web.Request, fmt: str) -> Context:
    rt = request.app[RUNTIME]
    return Context(
        rt=rt,
        fmt=fmt,
        local=request.app[LOCAL],
        headers=request.headers,  # case-insensitive already
        encode_record=lambda cls, row: records.encoded(rt.cache, cls, row, fmt),
        encode_value=_RAW[fmt],
    )


def _internal(exc: Exception) -> list[str]:
    log.exception("unexpected failure")
    return ["INTERNAL_ERROR", f"{type(exc).__name__}: {exc}"]


async def handle_xmlrpc(request: web.Request) -> web.Response:
    try:
        body = await _read_body(request)
    except BodyTooLarge:
        return _error_page(_OVERSIZE)
    try:
        method, params = xmlrpc.decode_request(body)
    except ProtocolError as exc:
        return _error_page(str(exc))
    ctx = _context(request, "xml")
    try:
        value = await request.app[DISPATCHER].call(ctx, method, params)
        out = xmlrpc.bare(value) if method == "system.listMethods" else xmlrpc.success(value)
    except ApiError as exc:
        out = xmlrpc.failure(exc.description)
    except Exception as exc:  # never a traceback to the client
        out = xmlrpc.failure(_internal(exc))
    return web.Response(body=out, headers=_XML_HEADERS)


async def handle_jsonrpc(request: web.Request) -> web.Response:
    try:
        body = await _read_body(request)
    except BodyTooLarge:
        return _error_page(_OVERSIZE)
    try:
        call = jsonrpc.decode_request(body)
    except ProtocolError as exc:
        return _error_page(str(exc))
    ctx = _context(request, "json")
    try:
        value = await request.app[DISPATCHER].call(ctx, call.method, call.params)
        out = jsonrpc.success(call, value)
    except ApiError as exc:
        out = jsonrpc.failure(call, exc.description)
    except Exception as exc:
        out = jsonrpc.failure(call, _internal(exc))
    return web.Response(body=out, headers=_JSON_HEADERS)


async def handle_preflight(request: web.Request) -> web.Response:
    asked = request.headers.get("Access-Control-Request-Headers")
    allow = f"{asked}, X-Requested-With" if asked else "X-Requested-With"
    return web.Response(status=200, headers={
        "Cache-Control": _NO_CACHE,
        "Access-Control-Allow-Origin": "*",
        "Access-Control-Allow-Headers": allow,
        "Access-Control-Allow-Methods": "PUT",
    })


async def handle_get(request: web.Request) -> web.Response:
    # xapi serves its web root only over HTTPS or the local socket; plain HTTP is refused.
    if request.app[LOCAL]:
        raise web.HTTPNotFound()
    return web.Response(status=403, body=_FORBIDDEN, headers={"Content-Type": "text/html"})


async def handle_post(request: web.Request) -> web.Response:
    if request.path == "/jsonrpc" or request.path.startswith("/jsonrpc/"):
        return await handle_jsonrpc(request)
    return await handle_xmlrpc(request)


def create_app(rt: Runtime, dispatcher: Dispatcher | None = None, local: bool = False) -> web.Application:
    """One application per listener; the unix socket's is ``local``."""
    app = web.Application(client_max_size=rt.config.max_rpc_size + 1)
    app[RUNTIME] = rt
    app[DISPATCHER] = dispatcher or Dispatcher(rt)
    app[LOCAL] = local
    app.router.add_route("GET", joining.DATABASE_PATH, pool_http.handle_database)
    app.router.add_route("POST", xenops_proxy.PREFIX + "{tail:.*}", xenops_proxy.handle)
    app.router.add_route("POST", "/{tail:.*}", handle_post)
    app.router.add_route("OPTIONS", "/{tail:.*}", handle_preflight)
    app.router.add_route("GET", "/{tail:.*}", handle_get)
    return app
