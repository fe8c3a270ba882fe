"""An in-memory copy of every stored object, kept coherent by the write path.

Reads of the API (get_record, get_all_records, session checks, event
snapshots) are served from here without touching the database, the way
xapi serves reads from its in-memory database.

Concurrency: one writer at a time (under ``lock``) and lock-free readers.
Readers only ever see whole objects: a changed object is replaced by a new
``Row``, never mutated, and collections are copied with ``list()`` (atomic
under the GIL) before iteration.  Because a ``Row`` never changes, encoders
may cache its wire form on it (``Row.encoded``).

Relation sets (``VM.VBDs``) are not stored; ``links`` indexes the other side
(``VBD.VM``) so they can be produced on read.
"""

from __future__ import annotations

import bisect
import threading
from dataclasses import dataclass
from typing import Any, Iterable

from xapi.idl.model import Cls, Model, Relation
from xapi.idl.types import NULL_REF

# How many recent changes are remembered in order, so that event.from reads
# only what changed since its token instead of scanning every table.  A token
# older than the journal falls back to a scan (deletions beyond it are lost,
# as in xapi, whose deleted-row memory is bounded too).
JOURNAL_SIZE = 200_000


class Row:
    __slots__ = ("ref", "values", "created", "modified", "encoded")

    def __init__(self, ref: str, values: dict[str, Any], created: int, modified: int):
        self.ref = ref
        self.values = values  # stored fields only; never mutated once published
        self.created = created
        self.modified = modified
        self.encoded: dict[Any, Any] = {}  # wire forms, filled lazily by encoders

    def renewed(self) -> "Row":
        return Row(self.ref, self.values, self.created, self.modified)


@dataclass(slots=True)
class Change:
    cls: str
    ref: str
    op: str  # "add", "mod" or "del"
    values: dict[str, Any] | None  # the full stored row, None for "del"
    created: int
    modified: int


def _generation(entry: tuple) -> int:
    return entry[0]


def _targets(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        return () if value == NULL_REF or not value else (value,)
    if isinstance(value, (list, tuple)):
        return value
    return ()


class ObjectCache:
    def __init__(self, model: Model, classes: Iterable[Cls]):
        self.model = model
        self.classes = {c.name: c for c in classes}
        self.tables: dict[str, dict[str, Row]] = {name: {} for name in self.classes}
        self.uuids: dict[str, dict[str, str]] = {name: {} for name in self.classes}
        # (generation, cls, ref, op, created) per applied change, in generation order.
        # A list, not a deque: lock-free readers bisect it and copy only its tail.
        self.journal: list[tuple[int, str, str, str, int]] = []
        # The journal is complete for tokens at or after this generation.
        self.journal_floor = 0
        self.generation = 0
        self.lock = threading.RLock()
        # Notified (under ``lock``) each time ``generation`` moves: a writer waits
        # here for the commits of other processes that came before its own.
        self.advanced = threading.Condition(self.lock)
        # Called (from the writing thread) after each apply with the generation and changes.
        self.listeners: list = []
        self._outgoing: dict[str, list[Relation]] = {}
        self.links: dict[tuple[str, str], dict[str, dict[str, None]]] = {}
        for rel in model.relations:
            if rel.from_cls in self.classes and rel.to_cls in self.classes:
                self._outgoing.setdefault(rel.from_cls, []).append(rel)
                self.links[(rel.to_cls, rel.to_field)] = {}

    # -- reads -----------------------------------------------------------------

    def get(self, cls: str, ref: str) -> Row | None:
        return self.tables[cls].get(ref)

    def rows(self, cls: str) -> list[Row]:
        return list(self.tables[cls].values())

    def count(self, cls: str) -> int:
        return len(self.tables[cls])

    def ref_by_uuid(self, cls: str, uuid: str) -> str | None:
        return self.uuids[cls].get(uuid)

    def derived(self, cls: str, field: str, ref: str) -> list[str]:
        sources = self.links.get((cls, field), {}).get(ref)
        return list(sources) if sources else []

    def find_class(self, ref: str) -> str | None:
        for name, table in self.tables.items():
            if ref in table:
                return name
        return None

    def field(self, cls: str, row: Row, name: str) -> Any:
        """One field of an object, derived relation sets included."""
        f = self.classes[cls].fields[name]
        if f.derived is not None:
            return self.derived(cls, name, row.ref)
        return row.values.get(name)

    def record(self, cls: str, row: Row) -> dict[str, Any]:
        """The full record of an object: stored fields plus derived sets, model order."""
        out = {}
        values = row.values
        for name, f in self.classes[cls].fields.items():
            out[name] = self.derived(cls, name, row.ref) if f.derived else values.get(name)
        return out

    # -- writes (callers hold `lock`, in generation order) ---------------------

    def _journal(self, entry: tuple) -> None:
        journal = self.journal
        journal.append(entry)
        if len(journal) >= JOURNAL_SIZE + JOURNAL_SIZE // 4:
            # Forget the oldest quarter at once (amortised), into a new list so that
            # readers holding the old one still see it whole.  Floor first: a reader
            # that sees the new list must also see the new floor.
            cut = len(journal) - JOURNAL_SIZE
            self.journal_floor = max(self.journal_floor, journal[cut - 1][0])
            self.journal = journal[cut:]

    def apply(self, changes: list[Change], generation: int, *, baseline: bool = False) -> None:
        """Install committed changes.  ``baseline`` marks a full load: not journalled."""
        with self.lock:
            if not baseline and generation <= self.generation:
                # Already here: a catch-up that ran between this process's commit
                # and this call read the same rows from the change log.  Applying
                # them again would journal an old generation after newer ones.
                return
            touched: set[tuple[str, str]] = set()
            fresh: list[Change] = []
            for ch in changes:
                old = self.tables[ch.cls].get(ch.ref)
                if ch.op != "del" and old is not None and old.modified > ch.modified:
                    continue  # a newer version is already here
                fresh.append(ch)
                self._relink(ch, old, touched)
            for ch in fresh:
                table = self.tables[ch.cls]
                old = table.get(ch.ref)
                if ch.op == "del":
                    created = ch.created
                    if old is not None:
                        del table[ch.ref]
                        self.uuids[ch.cls].pop(old.values.get("uuid"), None)
                        created = old.created
                    if not baseline:
                        self._journal((generation, ch.cls, ch.ref, "del", created))
                else:
                    if not baseline:
                        # Journalled under the generation being applied, not the row's
                        # _modified: a row re-read by a catch-up may already carry a later
                        # generation, and the journal must stay in order for bisection.
                        self._journal((generation, ch.cls, ch.ref, ch.op, ch.created))
                    table[ch.ref] = Row(ch.ref, ch.values, ch.created, ch.modified)
                    uuid = ch.values.get("uuid")
                    if old is not None and old.values.get("uuid") != uuid:
                        self.uuids[ch.cls].pop(old.values.get("uuid"), None)
                    if uuid:
                        self.uuids[ch.cls][uuid] = ch.ref
                touched.discard((ch.cls, ch.ref))
            for cls, ref in touched:
                row = self.tables[cls].get(ref)
                if row is not None:
                    self.tables[cls][ref] = row.renewed()
            if generation > self.generation:
                self.generation = generation
                self.advanced.notify_all()
            if baseline:
                self.journal = []
                self.journal_floor = self.generation
        for listener in self.listeners:
            listener(generation, changes)

    def changes_since(self, since: int) -> list[tuple[int, str, str, str, int]] | None:
        """Journal entries after generation ``since`` in order; None if some were forgotten."""
        journal = self.journal  # appends only grow this list; a trim replaces it
        if since < self.journal_floor:
            return None
        lo = bisect.bisect_right(journal, since, hi=len(journal), key=_generation)
        return journal[lo:]

    def _relink(self, ch: Change, old: Row | None, touched: set) -> None:
        for rel in self._outgoing.get(ch.cls, ()):
            before = set(_targets(old.values.get(rel.from_field))) if old else set()
            after = set(_targets(ch.values.get(rel.from_field))) if ch.values else set()
            if before == after:
                continue
            index = self.links[(rel.to_cls, rel.to_field)]
            for target in before - after:
                sources = index.get(target)
                if sources is not None:
                    sources.pop(ch.ref, None)
                    if not sources:
                        del index[target]
                touched.add((rel.to_cls, target))
            for target in after - before:
                index.setdefault(target, {})[ch.ref] = None
                touched.add((rel.to_cls, target))
