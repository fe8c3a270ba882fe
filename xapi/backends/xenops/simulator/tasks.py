"""xenopsd's tasks (xapi-idl's ``task_server.ml``): ids, states, cancellation.

A task is ``Pending`` with a progress until its operation ends
``Completed`` (with a duration and, rarely, a result) or ``Failed`` (with a
marshalled ``Errors.error``).  Cancelling raises a flag that the operation
checks before each micro-op (``check_cancelling``), failing with
``Cancelled <id>``; a task past the point of no return (``VM_save``) is no
longer cancellable and ignores the request.  ``destroy_on_finish`` tasks
remove themselves when they end.  Task changes are published as
``("Task", id)`` updates.

Tasks live in memory, as in xenopsd: after a restart their ids answer
``Does_not_exist ("task", id)``.  The id counter is persisted so ids are
never reused.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable

from xapi.backends.xenops import protocol as P
from xapi.backends.xenops.schema import tag


class XenopsFailure(Exception):
    """An operation failed with a marshalled ``Errors.error``."""

    def __init__(self, err: Any):
        super().__init__(err)
        self.error = err


def fail(name: str, *args: Any) -> XenopsFailure:
    return XenopsFailure(P.error(name, *args))


class TaskHandle:
    def __init__(self, task_id: str, dbg: str, cancel_at: int | None):
        self.id = task_id
        self.dbg = dbg
        self.ctime = time.time()
        self.state: list = P.task_pending(0.0)
        self.cancellable = True
        self.cancelling = False
        self.cancel_points_seen = 0
        self.cancel_at = cancel_at  # DEBUG "set-cancel-trigger"
        self.destroy_on_finish = False
        self.done = asyncio.Event()

    @property
    def finished(self) -> bool:
        return tag(self.state) != P.PENDING

    def check_cancelling(self) -> None:
        self.cancel_points_seen += 1
        if self.cancelling or self.cancel_points_seen == self.cancel_at:
            raise fail("Cancelled", self.id)

    def prohibit_cancellation(self) -> None:
        self.check_cancelling()
        self.cancellable = False

    def to_wire(self) -> dict:
        return {
            "id": self.id,
            "dbg": self.dbg,
            "ctime": self.ctime,
            "state": self.state,
            "subtasks": {},
            "debug_info": {"cancel_points_seen": str(self.cancel_points_seen)},
            "backtrace": "()",
            "cancellable": self.cancellable,
        }


class TaskTable:
    def __init__(self, next_id: Callable[[], int], publish: Callable[[tuple], None],
                 unpublish: Callable[[tuple], None]):
        self._next_id = next_id
        self._publish = publish
        self._unpublish = unpublish
        self._tasks: dict[str, TaskHandle] = {}
        self._cancel_trigger: tuple[str, int] | None = None

    def add(self, dbg: str, *, listed: bool = True) -> TaskHandle:
        """A new pending task; an unlisted one (xenopsd's internal tasks) is
        destroyed at birth but still runs."""
        cancel_at = None
        if self._cancel_trigger is not None and self._cancel_trigger[0] == dbg:
            cancel_at = self._cancel_trigger[1]
            self._cancel_trigger = None
        handle = TaskHandle(str(self._next_id()), dbg, cancel_at)
        if listed:
            self._tasks[handle.id] = handle
        return handle

    def find(self, task_id: str) -> TaskHandle:
        handle = self._tasks.get(task_id)
        if handle is None:
            raise fail("Does_not_exist", "task", task_id)
        return handle

    def exists(self, task_id: str) -> bool:
        return task_id in self._tasks

    def list(self) -> list[TaskHandle]:
        return list(self._tasks.values())

    def destroy(self, task_id: str) -> None:
        self.find(task_id)
        del self._tasks[task_id]
        self._unpublish(("Task", task_id))

    def signal(self, handle: TaskHandle) -> None:
        if handle.id in self._tasks:
            self._publish(("Task", handle.id))

    def set_progress(self, handle: TaskHandle, progress: float) -> None:
        handle.state = P.task_pending(progress)
        self.signal(handle)

    def cancel(self, task_id: str) -> None:
        handle = self.find(task_id)
        if handle.cancellable:
            handle.cancelling = True

    def destroy_on_finish(self, task_id: str) -> None:
        handle = self.find(task_id)
        handle.destroy_on_finish = True
        if handle.finished:
            self.destroy(task_id)

    def finish(self, handle: TaskHandle, state: list) -> None:
        handle.state = state
        if handle.destroy_on_finish and handle.id in self._tasks:
            self.destroy(handle.id)
        self.signal(handle)
        handle.done.set()

    def set_cancel_trigger(self, dbg: str, n: int) -> None:
        self._cancel_trigger = (dbg, n)
