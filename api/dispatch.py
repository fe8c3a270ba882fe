"""From a decoded call to its result, as xapi's generated dispatcher does.

Order of checks (xapi's ``gen_server.ml`` / ``server_helpers.ml``):
name resolution (``Async.`` prefix, ``Class_message`` aliases) →
``MESSAGE_METHOD_UNKNOWN`` / ``MESSAGE_REMOVED`` → parameter count →
parameter types → session check → implementation.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, replace
from typing import Any

from xapi import sessions, tasks
from xapi.context import Context, Runtime
from xapi.errors import ApiError
from xapi.idl.model import Message
from xapi.idl.types import NULL_REF
from xapi.impl import Handler, load_all

from . import forward, implicit, records, xmlrpc
from .params import ParamTypeError, coerce

TASK_NAME = "xapi.run_call"  # workers.celery_app.TASK_NAME, without importing Celery here

log = logging.getLogger("xapi.dispatch")


@dataclass(slots=True)
class Route:
    message: Message
    handler: Handler | None


class Dispatcher:
    def __init__(self, rt: Runtime):
        self.rt = rt
        self.model = rt.model
        custom = load_all()
        self.routes: dict[str, Route] = {}
        self.aliases: dict[str, str] = {}
        for wire, message in self.model.methods.items():
            handler = custom.get(wire) or implicit.handler_for(self.model, message)
            self.routes[wire] = Route(message, handler)
            self.aliases[f"{message.cls}_{message.name}"] = wire
        # Sync wire names only: no Async. forms, no aliases, no system.* methods.
        self.method_list = sorted(self.routes)
        self._jobs: set[asyncio.Task] = set()  # running Async calls
        self._celery_app = None
        self._resolved: dict[str, tuple[Route, bool]] = {}
        if rt.config.redis_url:
            forward.install(self)

    def resolve(self, method: str) -> tuple[Route | None, bool]:
        """The route for a wire name, and whether it was called as ``Async.``."""
        known = self._resolved.get(method)
        if known is not None:
            return known
        found = self._resolve(method)
        if found[0] is not None:
            self._resolved[method] = found  # only real names: unknown ones must not grow it
        return found

    def _resolve(self, method: str) -> tuple[Route | None, bool]:
        is_async = False
        for prefix in ("Async.", "InternalAsync."):
            if method.startswith(prefix):
                method, is_async = method[len(prefix):], True
                break
        route = self.routes.get(method)
        if route is None and not is_async:
            wire = self.aliases.get(method)
            route = self.routes.get(wire) if wire else None
        return route, is_async

    async def call(self, ctx: Context, method: str, params: list[Any]) -> Any:
        route, is_async = self.resolve(method)
        if route is None:
            return await self._unknown(ctx, method, params)
        message = route.message
        ctx.method = message.wire_name
        if message.lifecycle == "removed":
            raise ApiError("MESSAGE_REMOVED")
        args = params[1:] if message.session else list(params)
        if len(args) < message.required_count:
            received = len(params) - 1 if message.session else len(params)
            raise ApiError(
                "MESSAGE_PARAMETER_COUNT_MISMATCH",
                message.wire_name, message.required_count, max(received, 0),
            )
        typed = self._unmarshal(message, args)
        if message.session:
            ctx.session = await sessions.check(ctx, params[0])
        if self.rt.config.redis_url:  # a pool: the call may belong to another host
            done, value = await forward.forward(self, ctx, route, typed, method, is_async)
            if done:
                return value
        if is_async:
            if not message.async_:
                raise ApiError("Fault", f"No async mode for this operation (rpc: {method})")
            return await self._start_async(ctx, route, typed, method)
        forwarded = ctx.headers.get("task-id")
        if forwarded and self.rt.cache.get("task", forwarded) is not None:
            ctx.task = forwarded  # run under the caller's task; the caller completes it
        return await self.run(ctx, route, typed)

    async def _start_async(self, ctx: Context, route: Route, args: list[Any], method: str,
                           host: str | None = None, task: str | None = None) -> str:
        """Create the task (unless ``task``: made already by ``create_task_in``), answer
        with its ref at once, run the call in the background.

        Without ``redis_url`` the call runs in this process; with it, the call
        goes to the Celery queue of ``host`` (default: this host) and a worker runs it.
        """
        loop = asyncio.get_running_loop()
        rt = self.rt
        queue = self._celery_queue(host)
        if task is None:
            task = await loop.run_in_executor(
                rt.executor, lambda: tasks.create(rt, method, **self._task_fields(ctx, host)))
        if queue:
            args_xml = xmlrpc.encode(list(args))

            def send() -> None:
                try:
                    self._celery().send_task(
                        TASK_NAME, args=[task, route.message.wire_name, args_xml, ctx.session],
                        queue=queue, task_id=task)  # the id names the task in the queue
                except Exception as exc:  # the broker is unreachable: no worker will run it
                    tasks.fail(rt, task, ApiError("INTERNAL_ERROR", f"could not queue the call: {exc}"))
                    raise

            await loop.run_in_executor(rt.executor, send)
            return task
        tasks.register_running(rt, task)
        job = asyncio.create_task(self._run_task(self._task_context(ctx, task), route, args, task))
        self._jobs.add(job)
        job.add_done_callback(self._jobs.discard)
        return task

    def create_task_in(self, tx, ctx: Context, method: str, host: str | None = None) -> str:
        """The task ``_start_async`` makes, made in the caller's transaction."""
        return tasks.create_in(tx, self.rt, method, **self._task_fields(ctx, host))

    def _task_fields(self, ctx: Context, host: str | None) -> dict[str, Any]:
        queued = self._celery_queue(host) is not None
        return {"session": ctx.session or NULL_REF,
                "owner": f"{self._host_uuid(host)}/queue" if queued else self.rt.process_id,
                "subtask_of": ctx.headers.get("subtask-of", NULL_REF), "resident_on": host}

    def _task_context(self, ctx: Context, task: str) -> Context:
        # The result is stored as XML-RPC text whatever the caller speaks.
        return replace(ctx, fmt="xml", task=task,
                       encode_record=lambda cls, row: records.encoded(self.rt.cache, cls, row, "xml"),
                       encode_value=lambda value: xmlrpc.RawXML(xmlrpc.encode(value)))

    async def run_submitted(self, rt: Runtime, task: str, method: str, args_xml: str, session: str):
        """Run a call a server queued for this worker process (see workers/tasks.py)."""
        row = rt.cache.get("task", task)
        if row is None or row.values["status"] != tasks.PENDING:
            return  # cancelled, destroyed or failed while queued
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(rt.executor, self._take_over, task)
        route = self.routes[method]
        _, (params,) = xmlrpc.decode_request(
            f"<methodCall><methodName>{method}</methodName><params><param>{args_xml}"
            "</param></params></methodCall>".encode()
        )
        tasks.register_running(rt, task)
        ctx = self._task_context(Context(rt=rt, session=session, method=method), task)
        try:
            args = self._unmarshal(route.message, params)
        except ApiError as exc:
            await loop.run_in_executor(rt.executor, tasks.fail, rt, task, exc)
            return
        await self._run_task(ctx, route, args, task)

    def _take_over(self, task: str) -> None:
        self.rt.db.set_task_owner(task, self.rt.process_id)

    def _celery_queue(self, host: str | None = None) -> str | None:
        if not self.rt.config.redis_url:
            return None
        from workers.celery_app import queue_for

        return queue_for(self._host_uuid(host))

    def _host_uuid(self, host: str | None = None) -> str:
        return self.rt.cache.get("host", host or self.rt.host_ref).values["uuid"]

    def _celery(self):
        if self._celery_app is None:
            from workers.celery_app import make_app

            self._celery_app = make_app(self.rt.config.redis_url)
        return self._celery_app

    async def _run_task(self, ctx: Context, route: Route, args: list[Any], task: str) -> None:
        loop = asyncio.get_running_loop()
        rt = ctx.rt
        void = xmlrpc.encode("")

        def finish_task(tx) -> None:
            tasks.finish_in(tx, task, {"status": tasks.SUCCESS, "result": void})
            ctx.task_finished = True

        ctx.finish_task = finish_task
        try:
            ctx.check_cancelled()
            value = await self.run(ctx, route, args)
            if ctx.task_finished:  # by the call's last operation (run_operation's last=True)
                if value not in ("", None):
                    log.error("%s finished its task with a void result but returned %r",
                              route.message.wire_name, value)
                tasks.forget_cancel(rt, task)
                return
            outcome = (tasks.complete, xmlrpc.encode(value))
        except ApiError as exc:
            outcome = (tasks.fail, exc)
        except Exception as exc:
            log.exception("%s failed", route.message.wire_name)
            outcome = (tasks.fail, ApiError("INTERNAL_ERROR", f"{type(exc).__name__}: {exc}"))
        try:
            await loop.run_in_executor(rt.executor, outcome[0], rt, task, outcome[1])
        except Exception:
            log.exception("could not record the outcome of task %s", task)

    async def run(self, ctx: Context, route: Route, args: list[Any]) -> Any:
        handler = route.handler
        if handler is None:
            raise ApiError("NOT_IMPLEMENTED", route.message.wire_name)
        if handler.mode == "read":
            return handler.fn(ctx, *args)
        if handler.mode == "async":
            return await handler.fn(ctx, *args)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(ctx.rt.executor, handler.fn, ctx, *args)

    def _unmarshal(self, message: Message, args: list[Any]) -> list[Any]:
        """Typed parameters; failures read as xapi's unmarshaller reports them."""
        typed = []
        try:
            for i, param in enumerate(message.params):
                if i >= len(args):
                    typed.append(param.default)
                    continue
                value = coerce(self.model, param.type, args[i])
                if param.type.kind == "record" and message.constructor_fields:
                    value = implicit.constructor_values(self.model, message, value)
                typed.append(value)
        except ParamTypeError as exc:
            raise ApiError("INTERNAL_ERROR", exc.message) from None
        return typed

    async def _unknown(self, ctx: Context, method: str, params: list[Any]) -> Any:
        if method == "system.listMethods":
            return self.method_list
        if method.startswith("system.isAlive:"):
            if not params:
                raise ApiError("INTERNAL_ERROR", 'Failure("hd")')
            return params[0]
        if params:
            await sessions.check(ctx, params[0])
        raise ApiError("MESSAGE_METHOD_UNKNOWN", method)
