"""Task records as xapi fills them (TaskHelper.make / complete / failed).

A task is created ``pending`` with progress 0; it ends ``success`` with
``result`` holding the XML-RPC text of the return value (even for JSON-RPC
clients), or ``failure``/``cancelled`` with ``error_info`` = ``[code,
params…]``.  A ``destroy`` request on a pending task is remembered in
``current_operations`` and carried out when the task completes.

Cancellation is cooperative: ``request_cancel`` raises a flag that running
operations poll with ``check_cancelled``; backends register a callback to
be told at once (xenopsd and storage tasks, later).
"""

from __future__ import annotations

import os
import threading
from datetime import timedelta
from typing import Callable

from xapi.context import Runtime, now
from xapi.errors import ApiError
from xapi.idl.types import EPOCH, NULL_REF
from xapi.refs import make_ref, make_uuid

PENDING, SUCCESS, FAILURE, CANCELLED = "pending", "success", "failure", "cancelled"
FINISHED = (SUCCESS, FAILURE, CANCELLED)


def create(rt: Runtime, name_label: str, name_description: str = "", **kw) -> str:
    """A pending task.  ``owner`` names the process that will run it ("" for client tasks);
    ``resident_on`` the host that works on it (default: this one)."""
    with rt.db.write() as tx:
        return create_in(tx, rt, name_label, name_description, **kw)


def create_in(
    tx,
    rt: Runtime,
    name_label: str,
    name_description: str = "",
    *,
    session: str = NULL_REF,
    owner: str = "",
    subtask_of: str = NULL_REF,
    other_config: dict[str, str] | None = None,
    resident_on: str | None = None,
) -> str:
    """``create`` within the caller's transaction."""
    ref = make_ref()
    tx.set_task_owner(ref, session, owner)
    tx.insert("task", ref, {
        "uuid": make_uuid(),
        "name_label": name_label,
        "name_description": name_description,
        "allowed_operations": [],
        "current_operations": {},
        "created": now(),
        "finished": EPOCH,
        "status": PENDING,
        "resident_on": resident_on or rt.host_ref,
        "progress": 0.0,
        "type": "<none/>",
        "result": "",
        "error_info": [],
        "other_config": other_config or {},
        "subtask_of": subtask_of if subtask_of not in ("", NULL_REF)
        and tx.exists("task", subtask_of) else NULL_REF,
        "backtrace": "()",
    })
    return ref


def _fail_pending_owned(rt: Runtime, doomed: Callable[[str, str, dict], bool], why: str) -> int:
    """Fail the pending tasks (as the cache has them) for which ``doomed(ref,
    owner, values)`` holds, owners as the task-owner table records them; how many."""
    with rt.db.write() as tx:
        owners = tx.task_owners()
    failed = [
        ref for ref, (_, owner) in owners.items()
        if (row := rt.cache.get("task", ref)) is not None and row.values["status"] == PENDING
        and doomed(ref, owner, row.values)
    ]
    for ref in failed:
        fail(rt, ref, ApiError("INTERNAL_ERROR", why))
    return len(failed)


def _host_uuid(rt: Runtime) -> str:
    return rt.cache.get("host", rt.host_ref).values["uuid"]


_STOPPED = "the process running this task stopped"


def fail_orphans(rt: Runtime, alive: set[str], kind: str = "server") -> int:
    """Fail this host's pending tasks whose owning process is gone (restart safety).

    Owners are ``<host uuid>/<kind>/<pid>/<nonce>``; a process of one kind
    starting on a host takes over from every earlier process of that kind.
    """
    prefix = f"{_host_uuid(rt)}/{kind}/"
    return _fail_pending_owned(
        rt, lambda _, owner, __: owner.startswith(prefix) and owner not in alive, _STOPPED)


# A task handed to a host's queue is committed just before its message is sent:
# one younger than this may not be in the queue yet.
QUEUED_GRACE = 5.0


def fail_lost_queued(rt: Runtime, queued: set[str], grace: float = QUEUED_GRACE) -> int:
    """Fail this host's pending tasks handed to its queue that no worker took
    over and that the queue (``queued``: their refs) no longer holds.

    A worker takes a few messages ahead of running them; the broker forgets a
    message once taken (workers/celery_app.py), so a worker killed meanwhile
    loses them.  Its successor calls this before it takes any message.
    """
    queue = f"{_host_uuid(rt)}/queue"
    horizon = now() - timedelta(seconds=grace)
    return _fail_pending_owned(
        rt, lambda ref, owner, values: owner == queue and ref not in queued
        and values["created"] < horizon,
        "the worker that took this task from the queue stopped before running it")


def fail_dead_local_workers(rt: Runtime) -> int:
    """Fail pending tasks run by worker processes of this host that no longer exist.

    Workers consume their host's queue, so they run beside this server: a pid
    check tells whether one was killed, without waiting for the next worker to
    start or for ``pending_task_timeout``.
    """
    prefix = f"{_host_uuid(rt)}/worker/"

    def dead(_, owner: str, __) -> bool:
        if not owner.startswith(prefix):
            return False
        try:
            os.kill(int(owner[len(prefix):].split("/")[0]), 0)
        except ProcessLookupError:
            return True
        except (ValueError, PermissionError):
            pass
        return False

    return _fail_pending_owned(rt, dead, _STOPPED)


def set_progress(rt: Runtime, ref: str, progress: float) -> None:
    with rt.db.write() as tx:
        if tx.exists("task", ref):
            tx.update("task", ref, {"progress": max(0.0, min(1.0, progress))})


def _finish(rt: Runtime, ref: str, values: dict) -> None:
    with rt.db.write() as tx:
        finish_in(tx, ref, values)
    forget_cancel(rt, ref)


def finish_in(tx, ref: str, values: dict) -> None:
    """End a pending task within the caller's transaction (a pending destroy deletes it)."""
    task = tx.get("task", ref, for_update=True)  # a cancel or destroy may race with us
    if task is None or task["status"] in FINISHED:
        return
    if "destroy" in task["current_operations"].values():
        tx.delete("task", ref)
        return
    tx.update("task", ref, {
        "progress": 1.0,
        "finished": now(),
        "allowed_operations": [],
        "current_operations": {},
        **values,
    })


def complete(rt: Runtime, ref: str, result_xml: str) -> None:
    _finish(rt, ref, {"status": SUCCESS, "result": result_xml})


def fail(rt: Runtime, ref: str, error: ApiError) -> None:
    status = CANCELLED if error.code == "TASK_CANCELLED" else FAILURE
    _finish(rt, ref, {"status": status, "error_info": error.description})


# -- cancellation ------------------------------------------------------------------


class CancelState:
    """The cancel flag of a running task and the callbacks that forward it."""

    def __init__(self) -> None:
        self.flag = threading.Event()
        self.callbacks: list[Callable[[], None]] = []


def _cancel_states(rt: Runtime) -> dict[str, CancelState]:
    return rt.extra.setdefault("task_cancel", {})


def register_running(rt: Runtime, ref: str) -> CancelState:
    return _cancel_states(rt).setdefault(ref, CancelState())


def forget_cancel(rt: Runtime, ref: str) -> None:
    _cancel_states(rt).pop(ref, None)


def on_cancel(rt: Runtime, ref: str, callback: Callable[[], None]) -> None:
    """Have ``callback`` run when the task is cancelled (to stop backend work)."""
    state = register_running(rt, ref)
    state.callbacks.append(callback)
    if state.flag.is_set():
        callback()


def request_cancel(rt: Runtime, ref: str) -> bool:
    """Flag a running task for cancellation; False if nothing here runs it."""
    state = _cancel_states(rt).get(ref)
    if state is None:
        return False
    state.flag.set()
    for callback in list(state.callbacks):
        try:
            callback()
        except Exception:  # a backend that cannot cancel still lets the flag work
            pass
    return True


def check_cancelled(rt: Runtime, ref: str | None) -> None:
    """Raise TASK_CANCELLED if the task running this code was cancelled.

    The flag is raised in-process by ``request_cancel``; a task run by another
    process (a worker) sees the request as ``cancel`` in its current_operations.
    """
    if ref is None:
        return
    state = _cancel_states(rt).get(ref)
    if state is not None and state.flag.is_set():
        raise ApiError("TASK_CANCELLED", ref)
    row = rt.cache.get("task", ref)
    if row is not None and "cancel" in row.values["current_operations"].values():
        raise ApiError("TASK_CANCELLED", ref)
