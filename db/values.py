"""Convert typed field values to and from their database columns.

Scalar columns round-trip through SQLAlchemy's own types.  JSON columns hold
sets, maps and records; JSON object keys are always strings, so maps keyed
by ints are re-keyed on the way back, and datetimes nested in JSON travel in
xapi's wire form.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from xapi.idl.types import Type, format_datetime, parse_datetime


def to_json(ty: Type, value: Any) -> Any:
    match ty.kind:
        case "set":
            return [to_json(ty.elem, v) for v in value]
        case "map":
            return {_key_to_json(ty.elem, k): to_json(ty.value, v) for k, v in value.items()}
        case "option":
            return None if value is None else to_json(ty.elem, value)
        case "datetime":
            return format_datetime(value) if isinstance(value, datetime) else value
        case _:
            return value


def from_json(ty: Type, value: Any) -> Any:
    if value is None:
        return ty.zero() if ty.kind != "option" else None
    match ty.kind:
        case "set":
            return [from_json(ty.elem, v) for v in value]
        case "map":
            return {_key_from_json(ty.elem, k): from_json(ty.value, v) for k, v in value.items()}
        case "option":
            return from_json(ty.elem, value)
        case "datetime":
            return parse_datetime(value) if isinstance(value, str) else value
        case _:
            return value


def _key_to_json(ty: Type, key: Any) -> str:
    return str(key) if ty.kind == "int" else key


def _key_from_json(ty: Type, key: str) -> Any:
    return int(key) if ty.kind == "int" else key


def to_column(ty: Type, value: Any) -> Any:
    if ty.is_scalar:
        return value
    return to_json(ty, value)


def from_column(ty: Type, value: Any) -> Any:
    if ty.is_scalar:
        return ty.zero() if value is None else value
    return from_json(ty, value)


def normalize(ty: Type, value: Any) -> Any:
    """``value`` as reading it back from its column gives it (what the cache must hold).

    The write path keeps the rows it writes instead of reading them back, so
    it has to see what the round trip would make of them: JSON turns tuples
    into lists and map keys into text, a float column gives floats, a
    datetime column aware UTC datetimes, a NULL the type's zero.
    """
    kind = ty.kind
    if not ty.is_scalar:
        return from_json(ty, json.loads(json.dumps(to_json(ty, value))))
    if value is None:
        return ty.zero()
    if kind == "float":
        return float(value) if isinstance(value, int) else value
    if kind == "int":
        return int(value) if isinstance(value, bool) else value
    if kind == "bool":
        return bool(value) if isinstance(value, int) else value
    if kind == "datetime":
        if isinstance(value, datetime):
            return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)
        return value
    return value if isinstance(value, str) else str(value)
