"""Cooperative cancellation through the real dispatcher and task machinery.

No API message runs long enough to cancel yet (VM.start arrives with
xenopsd), so a slow operation is registered for this test only.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from api.dispatch import Dispatcher, Route
from api.server import close_runtime, open_runtime
from xapi import tasks
from xapi.config import Config
from xapi.context import Context
from xapi.impl import Handler


@pytest.fixture
def rt(fresh_db_url, tmp_path):
    runtime = open_runtime(Config(state_dir=str(tmp_path), db_url=fresh_db_url))
    runtime.process_id = "test/server/1/x"
    yield runtime
    close_runtime(runtime)


def test_cancel_reaches_the_running_operation(rt):
    started = threading.Event()

    def slow(ctx: Context, ref: str):
        started.set()
        for _ in range(200):
            ctx.check_cancelled()
            time.sleep(0.02)
        return "finished"

    async def scenario():
        dispatcher = Dispatcher(rt)
        message = rt.model.methods["network.destroy"]
        route = Route(message, Handler(slow, "write"))
        ctx = Context(rt=rt, session="OpaqueRef:NULL", method="network.destroy")
        task = await dispatcher._start_async(ctx, route, ["OpaqueRef:x"], "Async.network.destroy")
        assert rt.cache.get("task", task).values["status"] == "pending"
        while not started.is_set():
            await asyncio.sleep(0.01)
        assert tasks.request_cancel(rt, task)
        for _ in range(200):
            if rt.cache.get("task", task).values["status"] != "pending":
                break
            await asyncio.sleep(0.02)
        return task

    task = asyncio.run(scenario())
    record = rt.cache.get("task", task).values
    assert record["status"] == "cancelled"
    assert record["error_info"] == ["TASK_CANCELLED", task]
    assert record["progress"] == 1.0
