"""What a commit tells the other processes: its generation and, when it fits, its changes.

On PostgreSQL every commit sends ``NOTIFY xapi_changes``.  The payload is
the commit's generation, a space, and a JSON list of what it changed:
``[cls, ref, op, fields]`` per object, where ``fields`` is the whole row of
an added object, only the changed fields of a modified one (``{}`` for a
relation set that changed on the other side) and null for a deletion.  A
listener whose cache stands at the generation before applies it without
reading anything back (``decode``): the cached row plus the changed fields
is the stored row, because every earlier generation is applied already.

PostgreSQL limits a payload to 8000 bytes; a commit that says more sends
its generation alone, and listeners read it from the change log
(``db/changelog.py``), as they do when they missed a generation.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import TYPE_CHECKING, Any

from .cache import Change
from .values import from_json, to_json

if TYPE_CHECKING:
    from xapi.idl.model import Cls

    from .cache import ObjectCache

# Bytes of JSON a payload may carry (PostgreSQL's limit is 8000, the generation
# and the space included).
MAX_JSON = 7900


def _dump(ty, value: Any) -> Any:
    if ty.kind == "datetime":  # a column keeps microseconds, the wire form does not
        return value.isoformat()
    return value if ty.is_scalar else to_json(ty, value)


def _load(ty, value: Any) -> Any:
    if ty.kind == "datetime":
        return datetime.fromisoformat(value)
    return value if ty.is_scalar else from_json(ty, value)


def encode(classes: dict[str, "Cls"], ops: dict[tuple[str, str], str],
           rows: dict[tuple[str, str], dict[str, Any]],
           changed: dict[tuple[str, str], dict[str, Any]]) -> str | None:
    """The JSON part of a commit's payload, or None when it does not fit.

    ``rows`` are the added objects' rows, ``changed`` the modified objects'
    changed fields, both normalised as the database gives them back.
    """
    out = []
    for (cls, ref), op in ops.items():
        if op == "del":
            out.append((cls, ref, op, None))
            continue
        fields = classes[cls].fields
        values = rows[(cls, ref)] if op == "add" else changed.get((cls, ref), {})
        out.append((cls, ref, op, {name: _dump(fields[name].type, v) for name, v in values.items()}))
    text = json.dumps(out, separators=(",", ":"))
    return text if len(text.encode()) <= MAX_JSON else None


def split(payload: str) -> tuple[int, str | None]:
    """A payload's generation and its JSON part (None when it carries none)."""
    head, _, body = payload.partition(" ")
    return int(head), body or None


def decode(classes: dict[str, "Cls"], cache: "ObjectCache", generation: int,
           body: str) -> list[Change] | None:
    """The changes of the commit right after the cache's generation, or None if
    a modified object is not in the cache (then read the commit back instead)."""
    changes = []
    for cls, ref, op, fields in json.loads(body):
        spec = classes.get(cls)
        if spec is None:
            continue  # a class this process does not store
        old = cache.get(cls, ref)
        if op == "del":
            changes.append(Change(cls, ref, op, None, old.created if old else 0, generation))
            continue
        values = {name: _load(spec.fields[name].type, v) for name, v in fields.items()}
        if op == "add":
            changes.append(Change(cls, ref, op, values, generation, generation))
        elif old is None:
            return None
        else:
            changes.append(Change(cls, ref, op, {**old.values, **values}, old.created, generation))
    return changes
