"""event.from: tokens, subscriptions, batches, and waiting for the next change.

A token is ``"%020d,%020d"``: the pool generation, then the message
generation (messages live in the same generation stream here, so the second
part is always zero on output and ignored on input).  The empty token means
"from the beginning" and yields an ``add`` for every existing object.

A batch is built from the object cache's journal of applied changes, so a
call costs what changed since its token, not a scan of every table; a token
older than the journal falls back to a scan.  Changes are coalesced per
object: created then modified is one ``add``; created and deleted within the
window is nothing.

Waiting holds no thread: ``EventHub`` wakes waiting coroutines when the
cache applies a commit (the writer thread hands the wake-up to the loop).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from db.cache import ObjectCache
from xapi.errors import ApiError
from xapi.idl.model import Model


def format_token(generation: int) -> str:
    return "%020d,%020d" % (generation, 0)


def parse_token(token: str) -> int:
    if token == "":
        return 0
    parts = token.split(",")
    try:
        if len(parts) == 2:
            return int(parts[0])
        if len(parts) == 1:  # the legacy single-number form
            return int(parts[0])
    except ValueError:
        pass
    raise ApiError("EVENT_FROM_TOKEN_PARSE_FAILURE", token)


@dataclass(frozen=True)
class Subscription:
    classes: frozenset[str]  # class names (model spelling) subscribed whole
    objects: frozenset[tuple[str, str]]  # (class, ref) subscribed one by one

    def wants(self, cls: str, ref: str) -> bool:
        return cls in self.classes or (cls, ref) in self.objects

    @property
    def all_classes(self) -> set[str]:
        return set(self.classes) | {c for c, _ in self.objects}

    @property
    def tasks_only(self) -> bool:
        return self.all_classes <= {"task"}


def parse_subscriptions(model: Model, cache: ObjectCache, specs: list[str]) -> Subscription:
    """``*``, ``<class>`` or ``<class>/<ref>``; class names are case-insensitive.

    Unknown class names subscribe to nothing, as in xapi.
    """
    evented = {c.lower(): c for c in model.event_classes if c in cache.classes}
    classes: set[str] = set()
    objects: set[tuple[str, str]] = set()
    for spec in specs:
        if spec == "*":
            classes.update(evented.values())
            continue
        name, sep, ref = spec.partition("/")
        if not name or (sep and not ref) or "/" in ref:
            raise ApiError("EVENT_SUBSCRIPTION_PARSE_FAILURE", spec)
        cls = evented.get(name.lower())
        if cls is None:
            continue
        if sep:
            objects.add((cls, ref))
        else:
            classes.add(cls)
    return Subscription(frozenset(classes), frozenset(objects))


@dataclass(slots=True)
class Event:
    generation: int
    cls: str
    ref: str
    op: str  # add, mod or del


def collect(cache: ObjectCache, sub: Subscription, since: int) -> tuple[list[Event], int]:
    """What changed after ``since`` for this subscription, and the generation read up to."""
    with cache.lock:  # a consistent view: no apply half-way through
        generation = cache.generation
        entries = cache.changes_since(since)
        if entries is None:
            return _scan(cache, sub, since), generation
    latest: dict[tuple[str, str], list] = {}
    for gen, cls, ref, op, created in entries:
        if not sub.wants(cls, ref):
            continue
        key = (cls, ref)
        seen = latest.get(key)
        if seen is None:
            latest[key] = [gen, op, created]
        else:
            seen[0], seen[1] = gen, op
    events = []
    for (cls, ref), (gen, op, created) in latest.items():
        if op == "del":
            if created > since:
                continue  # born and gone inside the window
            events.append(Event(gen, cls, ref, "del"))
        elif cache.get(cls, ref) is None:
            continue  # deleted after the snapshot of the journal was taken
        else:
            events.append(Event(gen, cls, ref, "add" if created > since else "mod"))
    return events, generation


def _scan(cache: ObjectCache, sub: Subscription, since: int) -> list[Event]:
    events = []
    for cls in sub.all_classes:
        for row in cache.rows(cls):
            if row.modified > since and sub.wants(cls, row.ref):
                events.append(Event(row.modified, cls, row.ref, "add" if row.created > since else "mod"))
    return events


class EventHub:
    """Wakes coroutines waiting for the generation to move past a value."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.generation = 0
        self._waiters: set[asyncio.Future] = set()

    def notify_threadsafe(self, generation: int) -> None:
        """Called by the cache after each apply, from whichever thread wrote."""
        try:
            self.loop.call_soon_threadsafe(self._notify, generation)
        except RuntimeError:  # the loop is closed: the server is stopping
            pass

    def _notify(self, generation: int) -> None:
        if generation > self.generation:
            self.generation = generation
        waiters, self._waiters = self._waiters, set()
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    async def wait(self, after: int, timeout: float) -> bool:
        """Wait until the generation exceeds ``after``; False on timeout."""
        if self.generation > after:
            return True
        if timeout <= 0:
            return False
        fut = self.loop.create_future()
        self._waiters.add(fut)
        try:
            await asyncio.wait_for(fut, timeout)
            return True
        except asyncio.TimeoutError:
            return False
        finally:
            self._waiters.discard(fut)

    @property
    def waiting(self) -> int:
        return len(self._waiters)
