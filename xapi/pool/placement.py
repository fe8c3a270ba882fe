"""Where a VM may run: xapi's assert_can_boot_here, get_possible_hosts and choose_host.

Checks run in xapi's order (``xapi_vm_helpers.ml``): the VM's own limits,
the host is live (HOST_NOT_LIVE) and enabled (HOST_DISABLED; a VM already
running there, i.e. a local migration, and control domains are exempt),
every SR of its disks is plugged there (VM_REQUIRES_SR [vm, sr]), every
network of its VIFs is reachable (VM_REQUIRES_NETWORK [vm, network]), and
the host has the memory (HOST_NOT_ENOUGH_FREE_MEMORY [needed, available]).

Free memory counts what is reserved as well as what runs: a VM being started
is ``scheduled_to_be_resident_on`` its host from the moment it is chosen, so
concurrent starts see each other's reservations and spread out.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

from xapi import claims
from xapi.context import Runtime
from xapi.errors import ApiError
from xapi.idl.types import NULL_REF

from . import roles

# Choosing and reserving is one step per process; the pool row lock orders processes.
_choose_lock = threading.Lock()


def _vm(rt: Runtime, vm_ref: str) -> dict[str, Any]:
    row = rt.cache.get("VM", vm_ref)
    if row is None:
        raise ApiError("HANDLE_INVALID", "VM", vm_ref)
    return row.values


def _host(rt: Runtime, host_ref: str) -> dict[str, Any]:
    row = rt.cache.get("host", host_ref)
    if row is None:
        raise ApiError("HANDLE_INVALID", "host", host_ref)
    return row.values


def memory_needed(vm: dict[str, Any]) -> int:
    return vm["memory_static_max"] + vm["memory_overhead"]


def free_memory(rt: Runtime, host_ref: str, exclude_vm: str | None = None) -> int:
    """Host memory minus what its running, paused and reserved VMs claim."""
    host = _host(rt, host_ref)
    metrics = rt.cache.get("host_metrics", host["metrics"])
    total = metrics.values["memory_total"] if metrics else 0
    # Kept per host from the cache's changes (xapi/claims.py): no scan of every VM,
    # once the cache holds the claims this process committed just before.
    rt.db.await_own()
    return total - claims.claims(rt).used(host_ref, exclude_vm)


def validate_basic(vm: dict[str, Any]) -> None:
    vcpus, vcpus_max = vm["VCPUs_at_startup"], vm["VCPUs_max"]
    if vcpus < 1 or vcpus > vcpus_max:
        raise ApiError("INVALID_VALUE", "VCPUs_at_startup", vcpus)
    if not (vm["memory_static_min"] <= vm["memory_dynamic_min"] <= vm["memory_dynamic_max"]
            <= vm["memory_static_max"]):
        raise ApiError("MEMORY_CONSTRAINT_VIOLATION",
                       "Memory limits must satisfy: static_min <= dynamic_min <= "
                       "dynamic_max <= static_max")


def required_srs(rt: Runtime, vm_ref: str, vm: dict[str, Any]) -> list[str]:
    """SRs of the VM's non-empty disks (and of its suspend image when suspended)."""
    vdis = []
    for ref in rt.cache.derived("VM", "VBDs", vm_ref):
        vbd = rt.cache.get("VBD", ref)
        if vbd is not None and not vbd.values["empty"] and vbd.values["VDI"] != NULL_REF:
            vdis.append(vbd.values["VDI"])
    if vm["power_state"] == "Suspended" and vm["suspend_VDI"] != NULL_REF:
        vdis.append(vm["suspend_VDI"])
    srs: list[str] = []
    for vdi in vdis:
        row = rt.cache.get("VDI", vdi)
        if row is not None and row.values["SR"] not in srs:
            srs.append(row.values["SR"])
    return srs


def plugged_srs(rt: Runtime, host_ref: str) -> set[str]:
    return {row.values["SR"] for row in rt.cache.rows("PBD")
            if row.values["host"] == host_ref and row.values["currently_attached"]}


def can_see_network(rt: Runtime, network_ref: str, host_ref: str) -> bool:
    """A network with PIFs needs one on the host; one without (internal) is everywhere."""
    pifs = rt.cache.derived("network", "PIFs", network_ref)
    if not pifs:
        return True
    return any((p := rt.cache.get("PIF", ref)) is not None and p.values["host"] == host_ref
               for ref in pifs)


def assert_can_boot_here(rt: Runtime, vm_ref: str, host_ref: str, memory: bool = True) -> None:
    vm = _vm(rt, vm_ref)
    host = _host(rt, host_ref)
    validate_basic(vm)
    if not roles.is_live(rt, host_ref):
        raise ApiError("HOST_NOT_LIVE")
    local_migration = vm["power_state"] == "Running" and vm["resident_on"] == host_ref
    if not vm["is_control_domain"] and not local_migration and not host["enabled"]:
        raise ApiError("HOST_DISABLED", host_ref)
    visible = plugged_srs(rt, host_ref)
    for sr in required_srs(rt, vm_ref, vm):
        if sr not in visible:
            raise ApiError("VM_REQUIRES_SR", vm_ref, sr)
    for ref in rt.cache.derived("VM", "VIFs", vm_ref):
        vif = rt.cache.get("VIF", ref)
        if vif is not None and not can_see_network(rt, vif.values["network"], host_ref):
            raise ApiError("VM_REQUIRES_NETWORK", vm_ref, vif.values["network"])
    if memory:
        needed, available = memory_needed(vm), free_memory(rt, host_ref, exclude_vm=vm_ref)
        if needed > available:
            raise ApiError("HOST_NOT_ENOUGH_FREE_MEMORY", needed, available)


def possible_hosts(rt: Runtime, vm_ref: str) -> list[str]:
    """xapi's get_possible_hosts_for_vm: the reserved host, else every host that passes."""
    vm = _vm(rt, vm_ref)
    if vm["scheduled_to_be_resident_on"] != NULL_REF:
        return [vm["scheduled_to_be_resident_on"]]
    out = []
    for host in roles.hosts(rt):
        try:
            assert_can_boot_here(rt, vm_ref, host)
        except ApiError:
            continue
        out.append(host)
    return out


def choose_and_reserve(rt: Runtime, vm_ref: str, host_ref: str | None = None,
                       also: Callable[[Any, str], None] | None = None) -> str:
    """Pick a host for the VM (or check the one given) and reserve its memory there.

    Without a host: the live, enabled host with the most free memory among
    those that pass every check; NO_HOSTS_AVAILABLE when no host can see
    the VM's storage and networks.  ``also(tx, host)`` adds the caller's
    own writes to the reserving transaction (the call's task).
    """
    with _choose_lock, rt.db.write() as tx:
        # The pool's row orders choosers in other processes; the VM's, locked in the
        # same round trip, lets its update below wait for the commit.
        tx.lock_rows({"pool": [rt.pool_ref], "VM": [vm_ref]})
        if host_ref is None:
            # As xapi: the host with the most free memory that passes every check;
            # failing that, one that passes all but memory, whose error is then reported.
            host_ref = _best(rt, vm_ref, memory=True) or _best(rt, vm_ref, memory=False)
            if host_ref is None:
                raise ApiError("NO_HOSTS_AVAILABLE")
        assert_can_boot_here(rt, vm_ref, host_ref)
        tx.update("VM", vm_ref, {"scheduled_to_be_resident_on": host_ref})
        if also is not None:
            also(tx, host_ref)
    return host_ref


def _best(rt: Runtime, vm_ref: str, memory: bool) -> str | None:
    best, best_free = None, None
    for host in roles.hosts(rt):
        try:
            assert_can_boot_here(rt, vm_ref, host, memory=memory)
        except ApiError:
            continue
        free = free_memory(rt, host, exclude_vm=vm_ref)
        if best_free is None or free > best_free or (free == best_free and host == rt.host_ref):
            best, best_free = host, free
    return best


def release(rt: Runtime, vm_ref: str, host_ref: str) -> None:
    """Drop a reservation that was not used (the start or migration failed)."""
    with rt.db.write() as tx:
        vm = tx.get("VM", vm_ref, for_update=True)
        if vm is not None and vm["scheduled_to_be_resident_on"] == host_ref \
                and vm["resident_on"] != host_ref:
            tx.update("VM", vm_ref, {"scheduled_to_be_resident_on": NULL_REF})
