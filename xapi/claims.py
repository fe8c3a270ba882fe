"""Memory claimed on each host by its VMs, kept up to date from the cache's changes.

A VM claims ``memory_static_max + memory_overhead`` on the host it is
scheduled to start on, and on the host it is resident on unless it is
halted.  A start checks the host's free memory inside its claim transaction,
under the write lock: summing over every VM there would make each start cost
a scan of all VMs while every other writer waits.  Instead the sums per host
follow the VM changes the cache applies (its listeners run under its lock,
in generation order), so a query costs a dictionary lookup.  A writer hands
its commit to the cache after leaving the write lock, so the check first
waits for this process's earlier commits to be there
(``Database.await_own``).
"""

from __future__ import annotations

from typing import Any

from xapi.idl.types import NULL_REF


def needed(vm: dict[str, Any]) -> int:
    return vm["memory_static_max"] + vm["memory_overhead"]


def _claim(vm: dict[str, Any]) -> tuple[tuple[str, ...], int]:
    hosts = []
    scheduled, resident = vm["scheduled_to_be_resident_on"], vm["resident_on"]
    if scheduled != NULL_REF:
        hosts.append(scheduled)
    if resident != NULL_REF and resident != scheduled and vm["power_state"] != "Halted":
        hosts.append(resident)
    return tuple(hosts), needed(vm) if hosts else 0


class MemoryClaims:
    def __init__(self, cache):
        self._by_vm: dict[str, tuple[tuple[str, ...], int]] = {}
        self._by_host: dict[str, int] = {}
        self._cache = cache
        with cache.lock:
            for row in cache.rows("VM"):
                self._set(row.ref, row.values)
            cache.listeners.append(self._on_changes)

    def used(self, host: str, exclude_vm: str | None = None) -> int:
        """Memory the host's VMs claim, ``exclude_vm``'s own claim left out."""
        used = self._by_host.get(host, 0)
        if exclude_vm is not None:
            hosts, amount = self._by_vm.get(exclude_vm, ((), 0))
            if host in hosts:
                used -= amount
        return used

    def _on_changes(self, generation: int, changes) -> None:
        for ch in changes:
            if ch.cls == "VM":
                # The cached row, not the change: an outdated change is not applied.
                row = self._cache.get("VM", ch.ref)
                self._set(ch.ref, row.values if row is not None else None)

    def _set(self, ref: str, values: dict[str, Any] | None) -> None:
        new = _claim(values) if values is not None else ((), 0)
        old = self._by_vm.pop(ref, ((), 0))
        if new[0]:
            self._by_vm[ref] = new
        if old == new:
            return
        for host in old[0]:
            self._by_host[host] -= old[1]
        for host in new[0]:
            self._by_host[host] = self._by_host.get(host, 0) + new[1]


def claims(rt) -> MemoryClaims:
    """This process's tracker (made on first use)."""
    found = rt.extra.get("memory_claims")
    if found is None:
        with rt.cache.lock:
            found = rt.extra.get("memory_claims")
            if found is None:
                found = rt.extra["memory_claims"] = MemoryClaims(rt.cache)
    return found


def free_memory(rt, host_ref: str, exclude_vm: str | None = None) -> int:
    """Host memory minus what its running, paused and reserved VMs claim."""
    host = rt.cache.get("host", host_ref)
    metrics = rt.cache.get("host_metrics", host.values["metrics"]) if host else None
    total = metrics.values["memory_total"] if metrics else 0
    return total - claims(rt).used(host_ref, exclude_vm)
