"""The server's side of xenopsd: queues, task binding and barriers.

One ``Domains`` object per server process holds a client per xenopsd queue
(``xenopsd_queues``), the binding of xenopsd tasks to XenAPI tasks, and the
barriers through which a caller waits until the queue's event watcher has
written xenopsd's state back to the database.

A VM's queue is ``other_config:xenops`` when it names a configured queue,
else the default queue — xapi's ``queue_of_vm``.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from typing import Any

from xapi import tasks
from xapi.backends.xenops import protocol as P
from xapi.backends.xenops.client import XenopsClient, XenopsError
from xapi.context import Context, Runtime
from xapi.errors import ApiError

from .errors import to_api_error

log = logging.getLogger("xapi.domains")

# Announcements of tasks nobody waited for that Domains remembers (see run_task).
_ANNOUNCED_KEPT = 4096


class Domains:
    def __init__(self, rt: Runtime, queues: list[str], socket_dir: str, encoding: str = "json",
                 *, watching: bool = True):
        if not queues:
            raise ValueError("at least one xenopsd queue is needed")
        self.rt = rt
        self.queues = list(queues)
        self.default_queue = self.queues[0]
        self.clients = {q: XenopsClient(socket_dir, q, encoding=encoding) for q in self.queues}
        self._bound: dict[tuple[str, str], str] = {}  # (queue, xenops task) → XenAPI task
        self._finished: dict[tuple[str, str], threading.Event] = {}
        # Tasks xenopsd announced while nobody waited for them (yet): a waiter that
        # finds its task here reads it at once, any other waits for the announcement.
        self._announced: dict[tuple[str, str], None] = {}
        self._barriers: dict[tuple[str, int], threading.Event] = {}
        self._barrier_ids = itertools.count(1)
        self._vm_waiters: dict[str, list[threading.Event]] | None = None  # see _vm_waiter
        self._lock = threading.Lock()
        self.watchers: list = []
        self._task_watchers: dict[str, Any] = {}  # queue → TaskWatcher, in a worker
        # False in a worker: the server's watchers write xenopsd's state back, and
        # this process learns of it through the database's change notifications.
        self.watching = watching

    # -- queues ----------------------------------------------------------------------

    def queue_of(self, vm_values: dict[str, Any]) -> str:
        wanted = (vm_values.get("other_config") or {}).get("xenops")
        return wanted if wanted in self.clients else self.default_queue

    def client_of(self, vm_values: dict[str, Any]) -> XenopsClient:
        return self.clients[self.queue_of(vm_values)]

    # -- errors ----------------------------------------------------------------------

    def api_error(self, error: XenopsError, vm_ref: str, queue: str) -> ApiError:
        cache = self.rt.cache
        return to_api_error(
            error, vm_ref,
            vm_of_uuid=lambda uuid: cache.ref_by_uuid("VM", uuid) or "OpaqueRef:NULL",
            task_of=lambda tid: self._bound.get((queue, tid), "OpaqueRef:NULL"),
        )

    # -- tasks -----------------------------------------------------------------------

    def run_task(self, ctx: Context, queue: str, task_id: str, vm_ref: str,
                 cancellable: bool = True) -> Any:
        """Wait for a xenopsd task bound to the caller's XenAPI task; its result or the mapped error.

        The queue's watcher wakes this waiter whenever xenopsd announces the
        task; the waiter reads it (in its own thread, not the watcher's) and
        mirrors its progress.  Cancelling the XenAPI task cancels the xenopsd
        task.  The xenopsd task is destroyed at the end.
        """
        client = self.clients[queue]
        key = (queue, task_id)
        done = threading.Event()
        with self._lock:
            self._finished[key] = done
            announced = key in self._announced
            self._announced.pop(key, None)
            if ctx.task:
                self._bound[key] = ctx.task
        if ctx.task and cancellable:
            tasks.on_cancel(self.rt, ctx.task, lambda: self._cancel(client, task_id))
        try:
            # A task just queued is rarely done: unless xenopsd announced it already,
            # the first look waits for its announcement (a TASK.stat less per task).
            if not announced and self._hearing(queue):
                done.wait(1.0)
            while True:
                # Clear, then look, then wait: a task that ended before we looked is
                # seen at once, and a signal that comes after the look is kept.
                done.clear()
                task = client.task_stat(task_id)
                status = P.task_status(task)
                if status == P.COMPLETED:
                    return P.task_result(task)
                if status == P.FAILED:
                    raise self.api_error(XenopsError(*P.task_error(task)), vm_ref, queue)
                if ctx.task:
                    self._mirror_progress(ctx.task, P.task_progress(task))
                # The watcher (a worker's TaskWatcher) signals each change; while it
                # is not listening, poll briskly rather than once a second.
                done.wait(1.0 if self._hearing(queue) else 0.05)
        finally:
            with self._lock:
                self._finished.pop(key, None)
                self._bound.pop(key, None)
            try:
                client.task_destroy(task_id)
            except Exception:
                log.debug("could not destroy xenopsd task %s", task_id, exc_info=True)

    def _hearing(self, queue: str) -> bool:
        """Whether a watcher here reads the queue's updates (and so wakes task waiters)."""
        if self.watching:
            return True
        listener = self._task_watchers.get(queue)
        return listener is not None and listener.listening.is_set()

    def _mirror_progress(self, xapi_task: str, progress: float) -> None:
        row = self.rt.cache.get("task", xapi_task)
        if row is not None and row.values["status"] == tasks.PENDING \
                and row.values["progress"] != max(0.0, min(1.0, progress)):
            tasks.set_progress(self.rt, xapi_task, progress)

    def _cancel(self, client: XenopsClient, task_id: str) -> None:
        try:
            client.task_cancel(task_id)
        except XenopsError:
            pass

    def task_changed(self, queue: str, task_id: str) -> bool:
        """The watcher saw xenopsd announce a task: wake its waiter.  False if nobody waits."""
        key = (queue, task_id)
        with self._lock:
            done = self._finished.get(key)
            if done is None:
                # Perhaps its waiter has not registered yet; many are other processes'
                # tasks (a server hears its worker's), so only the latest are kept.
                self._announced[key] = None
                if len(self._announced) > _ANNOUNCED_KEPT:
                    for old in list(self._announced)[:_ANNOUNCED_KEPT // 2]:
                        del self._announced[old]
                return False
        done.set()
        return True

    def bound_task(self, queue: str, task_id: str) -> str | None:
        return self._bound.get((queue, task_id))

    # -- barriers --------------------------------------------------------------------

    def sync(self, queue: str, vm_uuid: str, timeout: float = 30.0) -> None:
        """Return once the watcher has processed everything xenopsd knew about the VM.

        xapi's ``Events_from_xenopsd.wait``: inject a barrier, wait for the
        watcher to reach it.  Falls back to returning after ``timeout``.
        """
        client = self.clients[queue]
        if not self.watching:
            self._await_write_back(client, vm_uuid, timeout)
            return
        barrier = next(self._barrier_ids)
        reached = threading.Event()
        with self._lock:
            self._barriers[(queue, barrier)] = reached
        try:
            client.updates_inject_barrier(vm_uuid, barrier)
            if not reached.wait(timeout):
                log.warning("barrier %d on %s not reached in %.0f s", barrier, queue, timeout)
        finally:
            with self._lock:
                self._barriers.pop((queue, barrier), None)
            try:
                client.updates_remove_barrier(barrier)  # here, not in the busy watcher
            except Exception:
                log.debug("could not remove barrier %d", barrier, exc_info=True)

    def _await_write_back(self, client: XenopsClient, vm_uuid: str, timeout: float) -> None:
        """Without a watcher here: wait until the database shows what xenopsd reports."""
        try:
            _, state = client.vm_stat(vm_uuid)
            power = state["power_state"]
            domid = state["domids"][0] if state["domids"] else -1
        except XenopsError:
            power, domid = "Halted", -1
        cache = self.rt.cache

        def written() -> bool:
            ref = cache.ref_by_uuid("VM", vm_uuid)
            row = cache.get("VM", ref) if ref else None
            return row is None or (row.values["power_state"] == power and row.values["domid"] == domid)

        # The change listener applies every commit it hears of and wakes us when it
        # touches this VM; a catch-up of our own now and then covers a lost one.
        ref = cache.ref_by_uuid("VM", vm_uuid)
        woken = self._vm_waiter(ref)
        try:
            deadline = time.monotonic() + timeout
            while not written():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    log.warning("VM %s: the database did not show xenopsd's %s in %.0f s",
                                vm_uuid, power, timeout)
                    return
                if not woken.wait(min(remaining, 0.5)):
                    self.rt.db.catch_up()
                woken.clear()
        finally:
            self._vm_waiter(ref, done=woken)

    def _vm_waiter(self, vm_ref: str | None, done: threading.Event | None = None) -> threading.Event:
        """An event set whenever the cache applies a change to ``vm_ref`` (``done``: forget it).

        Per VM, so a change wakes only the threads waiting for that VM."""
        with self._lock:
            waiters = self._vm_waiters
            if waiters is None:
                waiters = self._vm_waiters = {}

                def on_changes(generation, changes) -> None:
                    for ch in changes:
                        if ch.cls == "VM":
                            for event in waiters.get(ch.ref, ()):
                                event.set()

                self.rt.cache.listeners.append(on_changes)
            if done is not None:
                mine = waiters.get(vm_ref, [])
                if done in mine:
                    mine = [e for e in mine if e is not done]
                    if mine:
                        waiters[vm_ref] = mine
                    else:
                        waiters.pop(vm_ref, None)
                return done
            event = threading.Event()
            waiters[vm_ref] = [*waiters.get(vm_ref, ()), event]  # replaced, never mutated
            return event

    def refresh(self, queue: str, vm_uuid: str, *, followed: bool = False) -> None:
        """Have xenopsd re-announce the VM and its devices, then wait for the write-back.

        ``followed``: the VM was this host's all through the operation, so the
        watcher has had every update it made, and waiting is enough (a barrier
        carries the VM's updates the watcher has not read yet; a worker's wait
        compares the database with xenopsd's own answer): xapi's start and
        resume wait so."""
        if not followed:
            self.clients[queue].updates_refresh_vm(vm_uuid)
        self.sync(queue, vm_uuid)

    def barrier_reached(self, queue: str, barrier: int) -> bool:
        event = self._barriers.get((queue, barrier))
        if event is None:
            return False
        event.set()
        return True

    def record_host_memory(self) -> None:
        """host_metrics.memory_total from xenopsd, as xapi's dbsync does at start."""
        try:
            total = self.clients[self.default_queue].host_total_memory_mib() * 1024 * 1024
        except Exception:
            log.warning("xenopsd did not report the host's memory; keeping the recorded figure")
            return
        host = self.rt.cache.get("host", self.rt.host_ref)
        if host is None:
            return
        with self.rt.db.write() as tx:
            tx.update("host_metrics", host.values["metrics"], {"memory_total": total})

    # -- lifecycle of the service ------------------------------------------------------

    def start_watchers(self) -> None:
        """The server's: one QueueWatcher per queue, writing xenopsd's state back."""
        from .watcher import QueueWatcher

        self._start_per_queue(QueueWatcher)

    def start_task_watchers(self) -> None:
        """A worker's: hear of its xenopsd tasks' changes (``TaskWatcher``)."""
        from .watcher import TaskWatcher

        self._task_watchers.update(self._start_per_queue(TaskWatcher))

    def _start_per_queue(self, kind) -> dict[str, Any]:
        started = {queue: kind(self, queue) for queue in self.queues}
        for watcher in started.values():
            self.watchers.append(watcher)
            watcher.start()
        return started

    def stop(self) -> None:
        for watcher in self.watchers:
            watcher.stop()


def wait_until(predicate, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
