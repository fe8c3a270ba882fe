"""Waiting for a task another process runs, woken by the object cache rather than polling.

Every commit, this process's or (through LISTEN/NOTIFY) another's, reaches
the cache's listeners; the watch installed here looks at task changes and
wakes whoever waits for a task that is no longer pending (or is gone).
Waiters re-check liveness of the working host now and then, so a host that
dies does not leave its callers waiting forever.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Callable

from xapi.context import Runtime

PENDING = "pending"


class TaskWatch:
    def __init__(self, rt: Runtime):
        self.rt = rt
        self._lock = threading.Lock()
        self._waiters: dict[str, list[Callable[[], None]]] = {}
        rt.cache.listeners.append(self._on_changes)

    def _on_changes(self, generation: int, changes) -> None:
        if not self._waiters:
            return
        for ch in changes:
            if ch.cls != "task" or ch.ref not in self._waiters:
                continue
            if ch.op == "del" or ch.values.get("status") != PENDING:
                with self._lock:
                    callbacks = self._waiters.pop(ch.ref, [])
                for callback in callbacks:
                    callback()

    def _add(self, task: str, callback: Callable[[], None]) -> None:
        with self._lock:
            self._waiters.setdefault(task, []).append(callback)

    def _remove(self, task: str, callback: Callable[[], None]) -> None:
        with self._lock:
            callbacks = self._waiters.get(task)
            if callbacks and callback in callbacks:
                callbacks.remove(callback)
                if not callbacks:
                    del self._waiters[task]

    def finished(self, task: str) -> bool:
        row = self.rt.cache.get("task", task)
        return row is None or row.values["status"] != PENDING

    async def wait(self, task: str, timeout: float) -> bool:
        """On the event loop: True once the task has ended, False after ``timeout``."""
        loop = asyncio.get_running_loop()
        done = asyncio.Event()

        def wake() -> None:
            try:
                loop.call_soon_threadsafe(done.set)
            except RuntimeError:  # the loop is closed: the server is stopping
                pass

        self._add(task, wake)
        try:
            if self.finished(task):
                return True
            try:
                await asyncio.wait_for(done.wait(), timeout)
            except asyncio.TimeoutError:
                pass
            return self.finished(task)
        finally:
            self._remove(task, wake)

    def wait_blocking(self, task: str, timeout: float) -> bool:
        """From a thread: the same."""
        done = threading.Event()
        self._add(task, done.set)
        try:
            if self.finished(task):
                return True
            done.wait(timeout)
            return self.finished(task)
        finally:
            self._remove(task, done.set)


_install_lock = threading.Lock()


def watch(rt: Runtime) -> TaskWatch:
    with _install_lock:
        found = rt.extra.get("task_watch")
        if found is None:
            found = rt.extra["task_watch"] = TaskWatch(rt)
        return found
