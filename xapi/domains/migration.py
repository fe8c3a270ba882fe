"""VM.pool_migrate to another host of the pool, over storage both hosts share.

As xapi: the destination's memory is reserved (``scheduled_to_be_resident_on``,
done by the forwarding layer before the call reached the source); the
source's xenopsd migrates the domain to the destination's xenopsd through
``http://<destination>/services/xenops?session_id=…`` (the destination xapi
passes it on, ``api/xenops_proxy.py``); the disks are deactivated here and
activated there, shared-SR datapath style; then ``VM.pool_migrate_complete``
runs on the destination: disks up, domain unpaused if it was running,
``resident_on`` moved.  While the VM is resident here and scheduled there,
neither host's watcher writes its state (``watcher.py``), so it never shows
as halted on the way.
"""

from __future__ import annotations

from xapi import sessions
from xapi.context import Context
from xapi.errors import ApiError
from xapi.idl.types import NULL_REF
from xapi.pool import placement

from . import lifecycle


def destination_url(ctx: Context, host_ref: str, session: str) -> str:
    """The destination's xenopsd service; every host of a pool listens on the same port."""
    host = ctx.rt.cache.get("host", host_ref).values
    return (f"http://{host['address']}:{ctx.rt.config.listen_port}/services/xenops"
            f"?session_id={session}")


def migrate_to(ctx: Context, vm_ref: str, host_ref: str) -> None:
    """The source's half (runs on ``resident_on``)."""
    rt = ctx.rt
    call = rt.extra.get("call_on_host")
    if call is None:
        raise ApiError("NOT_IMPLEMENTED", "VM.pool_migrate to another host without redis_url")
    domains = lifecycle._domains(ctx)
    vm = lifecycle._vm(ctx, vm_ref)
    if vm["scheduled_to_be_resident_on"] != host_ref:
        placement.choose_and_reserve(rt, vm_ref, host_ref)
    queue = domains.queue_of(vm)
    client = domains.clients[queue]
    # A pool session of this host for the destination, whoever the caller is (xapi's
    # login_no_password ~pool:true): the caller may hold a local session unknown there.
    session = sessions.create(rt, rt.host_ref, "", pool=True, host=host_ref)
    url = destination_url(ctx, host_ref, session)
    try:
        task = lifecycle._call(ctx, vm_ref, queue, lambda: client.vm_migrate(vm["uuid"], url))
        lifecycle._run(ctx, vm_ref, queue, task, cancellable=False)
    except BaseException:
        placement.release(rt, vm_ref, host_ref)
        raise
    finally:
        sessions.destroy(rt, session)
    # The domain runs (paused) there now: hand the disks over, then let the destination finish.
    lifecycle.release_disks(ctx, vm_ref)
    call(ctx, host_ref, "VM.pool_migrate_complete", [vm_ref, host_ref])


def complete(ctx: Context, vm_ref: str, host_ref: str) -> None:
    """The destination's half: disks activated here, the domain resumed, the VM ours."""
    rt = ctx.rt
    if host_ref != rt.host_ref:
        raise ApiError("INTERNAL_ERROR", "VM.pool_migrate_complete runs on the destination host")
    domains = lifecycle._domains(ctx)
    vm = lifecycle._vm(ctx, vm_ref)
    if vm["scheduled_to_be_resident_on"] != host_ref:
        raise ApiError("VM_BAD_POWER_STATE", vm_ref, "migrating", vm["power_state"].lower())
    queue = domains.queue_of(vm)
    client = domains.clients[queue]
    try:
        lifecycle._activate_disks(ctx, vm_ref, vm)
        if vm["power_state"] == "Running":
            lifecycle._run(ctx, vm_ref, queue,
                           lifecycle._call(ctx, vm_ref, queue, client.vm_unpause, vm["uuid"]))
    finally:
        # Whatever happened, the domain is here: this host's watcher owns the VM now.
        with rt.db.write() as tx:
            tx.update("VM", vm_ref, {"resident_on": host_ref, "scheduled_to_be_resident_on": NULL_REF})
        domains.refresh(queue, vm["uuid"])
