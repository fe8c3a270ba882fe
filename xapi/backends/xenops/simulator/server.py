"""The daemon: builds the simulator's parts and serves them on the queue's unix socket.

``POST`` to any path with a JSON-RPC v1 or XML-RPC body; the reply comes in
the body's own encoding.  A body that is neither is answered ``400``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from dataclasses import dataclass, field

from aiohttp import web

from xapi.backends.xenops import protocol as P
from xapi.backends.xenops.simulator import migration
from xapi.backends.xenops.simulator.faults import Faults
from xapi.backends.xenops.simulator.hypervisor import ONE_TIB_MIB, Hypervisor
from xapi.backends.xenops.simulator.microops import NAMES, MicroOps
from xapi.backends.xenops.simulator.objects import Objects
from xapi.backends.xenops.simulator.operations import Operations
from xapi.backends.xenops.simulator.oplog import OpLog
from xapi.backends.xenops.simulator.queues import VmQueues
from xapi.backends.xenops.simulator.rpc import Service
from xapi.backends.xenops.simulator.store import Store
from xapi.backends.xenops.simulator.tasks import TaskTable, XenopsFailure
from xapi.backends.xenops.simulator.updates import Updates

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024 * 1024


@dataclass
class Settings:
    socket_dir: str
    state_dir: str
    queue: str = P.SIMULATOR_QUEUE
    log_path: str | None = None
    total_memory_mib: int = ONE_TIB_MIB
    faults: Faults = field(default_factory=lambda: Faults(NAMES))


def build(settings: Settings, stop: asyncio.Event) -> tuple[Service, VmQueues, OpLog]:
    store = Store(settings.state_dir)
    hv = Hypervisor(store, settings.total_memory_mib)
    updates = Updates(store.counters["next_update_id"], lambda n: store.set_counter("next_update_id", n))
    tasks = TaskTable(lambda: store.next_counter("next_task_id"), updates.add, updates.remove)
    objects = Objects(store, hv, updates)
    queues = VmQueues()
    oplog = OpLog(settings.log_path or os.path.join(settings.state_dir, "microops.log"))
    ops: Operations

    def check_state_later(vm: str) -> None:
        ops.check_state_later(vm)

    micro = MicroOps(objects, hv, settings.faults, oplog, check_state_later)
    ops = Operations(objects, hv, micro, tasks, queues)
    objects.register_all()
    service = Service(objects, ops, tasks, updates, hv, settings.faults,
                      stop=lambda: asyncio.get_running_loop().call_later(0.05, stop.set))
    return service, queues, oplog


def make_app(service: Service) -> web.Application:
    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        try:
            encoding, method, params, call_id = P.decode_request(body)
        except P.ProtocolError as exc:
            return web.Response(status=400, text=str(exc))
        ok, value = await service.dispatch(method, params)
        return web.Response(body=P.encode_reply(encoding, ok, value, call_id),
                            content_type=P.CONTENT_TYPES[encoding])

    async def receive_memory(request: web.Request) -> web.Response:
        """The receiving half of a migration (see migration.py): a JSON-RPC reply."""
        try:
            domain = json.loads(await request.read())
            migration.receive(service.objects, request.match_info["vm"], domain)
            body = P.encode_reply(P.JSON, True, None, None)
        except ValueError as exc:
            body = P.encode_reply(P.JSON, False, P.error("Internal_error", str(exc)), None)
        except XenopsFailure as exc:
            body = P.encode_reply(P.JSON, False, exc.error, None)
        return web.Response(body=body, content_type=P.CONTENT_TYPES[P.JSON])

    app = web.Application(client_max_size=MAX_BODY)
    app.router.add_post("/memory/{vm}", receive_memory)
    app.router.add_post("/{tail:.*}", handle)
    return app


async def serve(settings: Settings, stop: asyncio.Event | None = None) -> None:
    stop = stop or asyncio.Event()
    service, queues, oplog = build(settings, stop)
    os.makedirs(settings.socket_dir, exist_ok=True)
    path = P.socket_path(settings.socket_dir, settings.queue)
    if os.path.exists(path):
        os.unlink(path)  # a predecessor's socket
    # Long polls (UPDATES.get) must not hold a stopping daemon: cut them short.
    runner = web.AppRunner(make_app(service), access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    await web.UnixSite(runner, path).start()
    log.info("xenopsd simulator serving %s (state in %s)", path, settings.state_dir)
    try:
        await stop.wait()
    finally:
        await queues.stop()
        await runner.cleanup()
        oplog.close()
        if os.path.exists(path):
            os.unlink(path)
