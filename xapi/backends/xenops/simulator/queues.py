"""Per-VM operation queues, as xenopsd's Redirector.

Work for one VM (its own operations and its devices') runs one item at a
time in the order it was queued; different VMs run in parallel.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Awaitable, Callable

log = logging.getLogger(__name__)

Job = Callable[[], Awaitable[None]]


class VmQueues:
    def __init__(self) -> None:
        self._queues: dict[str, deque[Job]] = {}
        self._runners: dict[str, asyncio.Task] = {}

    def push(self, tag: str, job: Job) -> None:
        self._queues.setdefault(tag, deque()).append(job)
        if tag not in self._runners:
            self._runners[tag] = asyncio.get_running_loop().create_task(self._drain(tag))

    def busy(self, tag: str) -> bool:
        return tag in self._runners

    async def _drain(self, tag: str) -> None:
        queue = self._queues[tag]
        try:
            while queue:
                job = queue.popleft()
                try:
                    await job()
                except Exception:  # a job records its own failure; never stop the queue
                    log.exception("queued job for %s failed", tag)
        finally:
            del self._runners[tag]
            if not queue:
                self._queues.pop(tag, None)

    async def stop(self) -> None:
        runners = list(self._runners.values())
        for runner in runners:
            runner.cancel()
        await asyncio.gather(*runners, return_exceptions=True)
