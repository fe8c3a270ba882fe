"""Running a call on the host it belongs to: that host's Celery queue, one task, a wait.

``xapi/pool/forwarding.py`` decides the host; this module moves the call.
An ``Async.`` call answers its task at once, as it does locally.  A
synchronous call gets a task too (the work needs one to run under), waits
for it without polling (``xapi/pool/waiting.py``), answers its result or
raises its error, and destroys the task.  The task shows ``resident_on``
the working host, and the worker runs the call under that same task.

``call_on_host`` does the same from a thread, for work that must reach
another host in the middle of a call (a shared SR's PBDs, the destination
half of a migration); it is installed as ``rt.extra["call_on_host"]`` so
that code under ``xapi/`` can use it without importing the API layer.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from xapi import tasks
from xapi.context import Context, Runtime
from xapi.errors import ApiError
from xapi.idl.types import NULL_REF
from xapi.pool import forwarding, roles, waiting

from . import xmlrpc

if TYPE_CHECKING:
    from .dispatch import Dispatcher, Route

log = logging.getLogger("xapi.forward")

# How often a waiter looks again at whether the working host is still alive.
LIVENESS_CHECK = 5.0


def _named(route: "Route", args: list[Any]) -> dict[str, Any]:
    params = [p for p in route.message.params if p.name != "session_id"]
    return {p.name: value for p, value in zip(params, args)}


async def forward(dispatcher: "Dispatcher", ctx: Context, route: "Route", args: list[Any],
                  method: str, is_async: bool) -> tuple[bool, Any]:
    """``(True, answer)`` when another host ran (or runs) the call, else ``(False, None)``."""
    rt = dispatcher.rt
    if not forwarding.may_forward(route.message.wire_name) or ctx.headers.get("task-id"):
        return False, None  # a call that runs anywhere, or one already sent here
    if is_async and not route.message.async_:
        raise ApiError("Fault", f"No async mode for this operation (rpc: {method})")
    named = _named(route, args)
    loop = asyncio.get_running_loop()
    made: list[str] = []

    def reserved(tx, host: str) -> None:
        # A start's task is made in the transaction reserving its host: one commit
        # less.  A synchronous call that stays here runs under a task of its own.
        if host != rt.host_ref or is_async:
            made.append(dispatcher.create_task_in(tx, ctx, method, host))

    try:
        host = await loop.run_in_executor(rt.executor, forwarding.target, rt,
                                          route.message.wire_name, named, reserved)
    except ApiError as exc:
        for task in made:  # reserved, then refused (the host went offline meanwhile)
            await loop.run_in_executor(rt.executor, tasks.fail, rt, task, exc)
        raise
    task = made[0] if made else None
    if host is None or host == rt.host_ref:
        if task is None:
            return False, None
        host = None  # this host's queue, as dispatch would have chosen
    try:
        task = await dispatcher._start_async(ctx, route, args, method, host=host, task=task)
    except Exception:
        await loop.run_in_executor(rt.executor, forwarding.release, rt,
                                   route.message.wire_name, named, host or rt.host_ref)
        raise
    if is_async:
        return True, task
    return True, await _outcome(rt, task, host)


async def _outcome(rt: Runtime, task: str, host: str) -> Any:
    watch = waiting.watch(rt)
    loop = asyncio.get_running_loop()
    while not await watch.wait(task, LIVENESS_CHECK):
        if not roles.is_live(rt, host):
            await loop.run_in_executor(rt.executor, tasks.fail, rt, task,
                                       ApiError("HOST_OFFLINE", host))
    return await loop.run_in_executor(rt.executor, _collect, rt, task)


def _collect(rt: Runtime, task: str) -> Any:
    """The finished task's result (or error), and the task destroyed."""
    row = rt.cache.get("task", task)
    if row is None:
        raise ApiError("HANDLE_INVALID", "task", task)
    values = row.values
    with rt.db.write() as tx:
        if tx.exists("task", task):
            tx.delete("task", task)
        tx.forget_task_owners([task])
    if values["status"] == tasks.SUCCESS:
        return decode_value(values["result"])
    error = values["error_info"] or ["INTERNAL_ERROR", "the task failed without an error"]
    raise ApiError(error[0], *error[1:])


def decode_value(text: str) -> Any:
    """A task's ``result`` (XML-RPC text of one value) as a value."""
    if not text:
        return ""
    _, params = xmlrpc.decode_request(
        f"<methodCall><methodName>r</methodName><params><param>{text}</param></params>"
        "</methodCall>".encode())
    return params[0] if params else ""


def call_on_host(dispatcher: "Dispatcher", ctx: Context, host: str, wire: str,
                 args: list[Any], timeout: float = 3600.0) -> Any:
    """From a worker thread: run ``wire(*args)`` on ``host`` as a subtask of the caller's task."""
    rt = dispatcher.rt
    if host != rt.host_ref and not roles.is_live(rt, host):
        raise ApiError("HOST_OFFLINE", host)
    route = dispatcher.routes[wire]
    queue = dispatcher._celery_queue(host)
    if queue is None:
        raise ApiError("INTERNAL_ERROR", f"{wire} on another host needs redis_url")
    task = tasks.create(rt, wire, session=ctx.session or NULL_REF,
                        owner=f"{dispatcher._host_uuid(host)}/queue",
                        subtask_of=ctx.task or NULL_REF, resident_on=host)
    from .dispatch import TASK_NAME

    dispatcher._celery().send_task(TASK_NAME, args=[task, route.message.wire_name,
                                                    xmlrpc.encode(list(args)), ctx.session],
                                   queue=queue, task_id=task)
    watch = waiting.watch(rt)
    waited = 0.0
    while not watch.wait_blocking(task, LIVENESS_CHECK):
        waited += LIVENESS_CHECK
        if not roles.is_live(rt, host) or waited >= timeout:
            tasks.fail(rt, task, ApiError("HOST_OFFLINE", host))
    return _collect(rt, task)


def install(dispatcher: "Dispatcher") -> None:
    """Let code under xapi/ reach other hosts (``rt.extra["call_on_host"]``)."""
    dispatcher.rt.extra["call_on_host"] = (
        lambda ctx, host, wire, args: call_on_host(dispatcher, ctx, host, wire, args))
