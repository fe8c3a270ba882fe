"""task.*: client-made tasks, cancellation and deferred destruction."""

from __future__ import annotations

from xapi import tasks
from xapi.context import Context
from xapi.errors import ApiError
from xapi.refs import make_ref

from . import implements


@implements("task.create")
def create(ctx: Context, label: str, description: str):
    return tasks.create(ctx.rt, label, description, session=ctx.session)


def _task(ctx: Context, ref: str) -> dict:
    row = ctx.rt.cache.get("task", ref)
    if row is None:
        raise ApiError("HANDLE_INVALID", "task", ref)
    _assert_owner(ctx, ref)
    return row.values


def _assert_owner(ctx: Context, ref: str) -> None:
    """xapi's TaskHelper.assert_op_valid: the task's own user, or task.destroy/any."""
    cache = ctx.rt.cache
    caller = cache.get("session", ctx.session or "")
    if caller is None or caller.values["is_local_superuser"]:
        return
    with ctx.rt.db.write() as tx:
        owner_session = tx.task_owners().get(ref, ("", ""))[0]
    owner = cache.get("session", owner_session)
    if owner is not None and owner.values["auth_user_sid"] == caller.values["auth_user_sid"]:
        return
    raise ApiError("RBAC_PERMISSION_DENIED", "task.destroy/any",
                   "No permission in user session. (Roles with this permission: pool-admin, pool-operator)")


@implements("task.destroy")
def destroy(ctx: Context, ref: str):
    task = _task(ctx, ref)
    with ctx.rt.db.write() as tx:
        if task["status"] == tasks.PENDING:
            # Destroyed by the task machinery as soon as it completes.
            ops = {**tx.must_get("task", ref, for_update=True)["current_operations"], make_ref(): "destroy"}
            tx.update("task", ref, {"current_operations": ops})
        else:
            tx.delete("task", ref)
            tx.forget_task_owners([ref])
    return ""


@implements("task.cancel")
def cancel(ctx: Context, ref: str):
    task = _task(ctx, ref)
    if task["status"] != tasks.PENDING:
        return ""
    with ctx.rt.db.write() as tx:
        ops = {**tx.must_get("task", ref, for_update=True)["current_operations"],
               (ctx.task or make_ref()): "cancel"}
        tx.update("task", ref, {"current_operations": ops})
    if not tasks.request_cancel(ctx.rt, ref):
        # Nothing runs it here (a client's own task): it is the owner's to finish.
        pass
    return ""
