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


def _evented(model: Model, cache: ObjectCache) -> dict[str, str]:
    found = getattr(cache, "_evented", None)
    if found is None:
        found = cache._evented = {c.lower(): c for c in model.event_classes if c in cache.classes}
    return found


def parse_subscriptions(model: Model, cache: ObjectCache, specs: list[str]) -> Subscription:
    """``*``, ``<class>`` or ``<class>/<ref>``; class names are case-insensitive.

    Unknown class names subscribe to nothing, as in xapi.
    """
    evented = _evented(model, cache)
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


class _Waiter:
    __slots__ = ("future", "classes", "session", "delayed")

    def __init__(self, future, classes, session, delayed):
        self.future = future
        self.classes = classes  # the classes it waits for
        self.session = session  # its session: a logout wakes it whatever changed
        self.delayed = delayed  # woken after the batching window rather than at once


class EventHub:
    """Wakes coroutines waiting for changes to the classes they watch.

    The cache calls ``notify_threadsafe`` after each apply, from the writing
    thread.  Only waiters whose classes changed are woken, and those that
    batch are woken together once the batching window (``delay``) has passed
    since the first change of a burst — one timer for all of them, instead of
    a sleep in each.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, delay: float = 0.0):
        self.loop = loop
        self.delay = delay
        self.generation = 0
        self._waiters: set[_Waiter] = set()
        self._batch: list[_Waiter] = []
        self._timer: asyncio.TimerHandle | None = None

    def notify_threadsafe(self, generation: int, changes=()) -> None:
        classes = {ch.cls for ch in changes}
        gone = {ch.ref for ch in changes if ch.cls == "session" and ch.op == "del"}
        try:
            self.loop.call_soon_threadsafe(self._notify, generation, classes, gone)
        except RuntimeError:  # the loop is closed: the server is stopping
            pass

    def _notify(self, generation: int, classes: set[str], gone_sessions: set[str]) -> None:
        if generation > self.generation:
            self.generation = generation
        for waiter in list(self._waiters):
            logged_out = waiter.session in gone_sessions
            if not logged_out and not (waiter.classes & classes):
                continue
            self._waiters.discard(waiter)
            if waiter.delayed and not logged_out and self.delay > 0:
                self._batch.append(waiter)
            else:
                _wake(waiter.future, True)
        if self._batch and self._timer is None:
            self._timer = self.loop.call_later(self.delay, self._flush)

    def _flush(self) -> None:
        self._timer = None
        batch, self._batch = self._batch, []
        for waiter in batch:
            _wake(waiter.future, True)

    async def wait(self, after: int, timeout: float, classes: frozenset[str] | set[str],
                   session: str | None = None, delayed: bool = True) -> bool:
        """Wait until a change to ``classes`` after generation ``after``; False on timeout."""
        if self.generation > after:
            return True  # something happened meanwhile: let the caller look
        if timeout <= 0:
            return False
        future = self.loop.create_future()
        waiter = _Waiter(future, frozenset(classes), session, delayed)
        self._waiters.add(waiter)
        timer = self.loop.call_later(timeout, _wake, future, False)
        try:
            return await future
        finally:
            timer.cancel()
            self._waiters.discard(waiter)

    @property
    def waiting(self) -> int:
        return len(self._waiters)


def _wake(future: asyncio.Future, value: bool) -> None:
    if not future.done():
        future.set_result(value)
