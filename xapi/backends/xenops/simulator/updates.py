"""The update stream (``UPDATES.*``), with barriers, as xapi-idl's ``updates.ml``.

Objects are ``dynamic_key`` tuples (``("Vm", uuid)``, ``("Vbd", (vm, dev))``,
``("Task", id)``).  A map records, per object, the counter of its latest
change, so repeated changes collapse into one entry.  Every ``add``,
``remove``, ``inject_barrier`` and ``remove_barrier`` takes the next
counter value.  A barrier is a snapshot of the map restricted to one VM's
objects, taken when it is injected.

``get(from)`` answers: the barriers injected after ``from`` (oldest first,
each with its snapshot's objects changed after ``from``), the objects
changed after ``from`` (oldest first), and the new ``from``: the newest
counter among them or the newest such barrier's.  It waits while both
lists are empty, until the timeout (``None``: for ever).

The counter is persisted by the caller (``on_bump``) so ids stay
increasing across restarts of the simulator.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Callable

Key = tuple
INITIAL = 0


@dataclass
class _Barrier:
    bar_id: int
    snapshot: dict[Key, int]
    event_id: int


class Updates:
    def __init__(self, next_id: int = INITIAL + 1, on_bump: Callable[[int], None] | None = None):
        self._map: dict[Key, int] = {}
        self._barriers: list[_Barrier] = []  # newest first
        self._next = next_id
        self._on_bump = on_bump
        self._changed = asyncio.Event()

    def _bump(self) -> int:
        value = self._next
        self._next += 1
        if self._on_bump is not None:
            self._on_bump(self._next)
        self._changed.set()
        self._changed = asyncio.Event()
        return value

    def add(self, key: Key) -> None:
        self._map.pop(key, None)  # re-insert so dict order follows the counters
        self._map[key] = self._next
        self._bump()

    def remove(self, key: Key) -> None:
        self._map.pop(key, None)
        self._bump()

    def inject_barrier(self, bar_id: int, keep: Callable[[Key], bool]) -> None:
        snapshot = {k: v for k, v in self._map.items() if keep(k)}
        self._barriers.insert(0, _Barrier(bar_id, snapshot, self._next))
        self._bump()

    def remove_barrier(self, bar_id: int) -> None:
        self._barriers = [b for b in self._barriers if b.bar_id != bar_id]
        self._bump()

    def last_id(self) -> int:
        return self._next - 1

    @staticmethod
    def _after(entries: dict[Key, int], since: int) -> tuple[list[Key], int]:
        newer = sorted(((v, k) for k, v in entries.items() if v > since), key=lambda p: p[0])
        return [k for _, k in newer], max([since, *(v for v, _ in newer)])

    def snapshot(self, since: int) -> tuple[list[tuple[int, list[Key]]], list[Key], int]:
        recent: list[_Barrier] = []
        for barrier in self._barriers:  # stops at the first old one, as updates.ml does
            if barrier.event_id <= since:
                break
            recent.append(barrier)
        barriers = [(b.bar_id, self._after(b.snapshot, since)[0]) for b in reversed(recent)]
        updates, last = self._after(self._map, since)
        if recent:
            last = max(last, recent[0].event_id)
        return barriers, updates, last

    async def get(self, since: int | None, timeout: float | None
                  ) -> tuple[list[tuple[int, list[Key]]], list[Key], int]:
        since = INITIAL if since is None else since
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            result = self.snapshot(since)
            if result[0] or result[1]:
                return result
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                return result
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except asyncio.TimeoutError:
                return self.snapshot(since)
