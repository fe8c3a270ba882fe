"""The generic operation protocol, as xapi's ``with_vm_operation`` and kin.

``run_operation(ctx, cls, ref, op, fn)``:

1. in one transaction (the row locked on PostgreSQL): the class policy checks
   that ``op`` is allowed, ``current_operations[<task>] := op`` and
   ``allowed_operations`` is recomputed;
2. ``fn()`` runs, one operation at a time per object in this process (the
   way xenopsd queues per VM);
3. whatever happened, the entry is removed and ``allowed_operations``
   recomputed.

The key is the caller's task; a synchronous call gets a task of its own for
the duration, as in xapi, so every key names a real task and a restart can
tell stale entries (their task is gone or finished) from live ones.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

from xapi import tasks
from xapi.context import Context, Runtime
from xapi.ops import policy_for

_object_locks: dict[tuple[str, str], threading.Lock] = {}
_object_locks_guard = threading.Lock()


def _object_lock(cls: str, ref: str) -> threading.Lock:
    with _object_locks_guard:
        return _object_locks.setdefault((cls, ref), threading.Lock())


def run_operation(ctx: Context, cls: str, ref: str, op: str, fn: Callable[[], Any], *,
                  claim: Callable[[Any], None] | None = None,
                  settle: Callable[[Any], None] | None = None, last: bool = False) -> Any:
    """``claim(tx)`` adds the operation's own first writes to the marking
    transaction (a failed claim leaves nothing marked); ``settle(tx)`` its last
    writes to the unmarking one, once ``fn`` succeeded.  ``last``: the caller
    returns nothing after this operation, so a successful one finishes the
    call's task in the unmarking commit too (``ctx.finish_task``).  Fewer
    commits, and each step is seen whole."""
    rt = ctx.rt
    own_task = None
    if ctx.task is None:
        own_task = tasks.create(rt, ctx.method or f"{cls}.{op}", session=ctx.session or "",
                                owner=rt.process_id)
        ctx.task = own_task  # backends bind their work to it (progress, cancel)
    task = ctx.task
    try:
        mark(rt, cls, ref, op, task, claim)
        done = False
        try:
            with _object_lock(cls, ref):
                result = fn()
            done = True
            return result
        finally:
            finish = ctx.finish_task if done and last and own_task is None else None
            unmark(rt, cls, ref, task, settle if done else None, finish)
    finally:
        if own_task is not None:
            ctx.task = None
            with rt.db.write() as tx:
                tx.delete("task", own_task)
                tx.forget_task_owners([own_task])


def mark(rt: Runtime, cls: str, ref: str, op: str, task: str,
         claim: Callable[[Any], None] | None = None) -> None:
    policy = policy_for(rt.model, cls)
    with rt.db.write() as tx:
        values = policy.with_context(tx, tx.must_get(cls, ref, for_update=True))
        policy.check(ref, values, op)
        current = {**values["current_operations"], task: op}
        values = {**values, "current_operations": current}
        tx.update(cls, ref, {
            "current_operations": current,
            "allowed_operations": policy.allowed(ref, values),
        })
        if claim is not None:
            claim(tx)


def unmark(rt: Runtime, cls: str, ref: str, task: str,
           settle: Callable[[Any], None] | None = None,
           finish: Callable[[Any], None] | None = None) -> None:
    policy = policy_for(rt.model, cls)
    with rt.db.write() as tx:
        # One round trip locks the object and the task that finishes with it.
        tx.lock_rows({cls: [ref], "task": [task]} if finish is not None else {cls: [ref]})
        values = tx.get(cls, ref, for_update=True)
        if finish is not None:
            finish(tx)
        if values is None:
            return  # the operation destroyed its object
        if settle is not None:
            settle(tx)
            values = tx.get(cls, ref)
        values = policy.with_context(tx, values)
        current = {k: v for k, v in values["current_operations"].items() if k != task}
        values = {**values, "current_operations": current}
        tx.update(cls, ref, {
            "current_operations": current,
            "allowed_operations": policy.allowed(ref, values),
        })


def refresh_allowed(rt: Runtime, cls: str, ref: str) -> None:
    """Recompute ``allowed_operations`` after a change of state (e.g. power state)."""
    with rt.db.write() as tx:
        refresh_allowed_in(tx, rt, cls, ref)


def refresh_allowed_in(tx, rt: Runtime, cls: str, ref: str) -> None:
    """``refresh_allowed`` within the caller's transaction (one commit, one event)."""
    policy = policy_for(rt.model, cls)
    values = tx.get(cls, ref, for_update=True)
    if values is not None:
        values = policy.with_context(tx, values)
        tx.update(cls, ref, {"allowed_operations": policy.allowed(ref, values)})


def refresh_vm_and_devices(rt: Runtime, vm_ref: str) -> None:
    """After a VM's power state changed: its rules and its devices' rules both moved."""
    with rt.db.write() as tx:
        refresh_vm_and_devices_in(tx, rt, vm_ref)


def refresh_vm_and_devices_in(tx, rt: Runtime, vm_ref: str) -> None:
    refresh_allowed_in(tx, rt, "VM", vm_ref)
    for cls, field in (("VBD", "VBDs"), ("VIF", "VIFs")):
        for ref in rt.cache.derived("VM", field, vm_ref):
            refresh_allowed_in(tx, rt, cls, ref)


def clear_stale(rt: Runtime) -> int:
    """Drop current_operations entries whose task is gone or finished (restart safety)."""
    cleared = 0
    for cls in rt.cache.classes:
        spec = rt.model.classes[cls]
        if "current_operations" not in spec.fields or cls == "task":
            continue
        for row in rt.cache.rows(cls):
            current = row.values["current_operations"]
            stale = [k for k in current if not _live_task(rt, k)]
            if not stale:
                continue
            policy = policy_for(rt.model, cls)
            with rt.db.write() as tx:
                values = tx.get(cls, row.ref, for_update=True)
                if values is None:
                    continue
                values = policy.with_context(tx, values)
                kept = {k: v for k, v in values["current_operations"].items() if k not in stale}
                values = {**values, "current_operations": kept}
                tx.update(cls, row.ref, {
                    "current_operations": kept,
                    "allowed_operations": policy.allowed(row.ref, values),
                })
            cleared += len(stale)
    return cleared


def _live_task(rt: Runtime, ref: str) -> bool:
    row = rt.cache.get("task", ref)
    return row is not None and row.values["status"] == tasks.PENDING
