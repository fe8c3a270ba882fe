"""The XenAPI type grammar, parsed into small immutable trees.

Grammar of the model's type strings::

    string | secretstring | int | float | bool | datetime
    enum <name> | <Class> ref | <Class> record
    <t> set | (<k> -> <v>) map | <t> option
    event_batch (struct: ...)
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache

SIMPLE = ("string", "secretstring", "int", "float", "bool", "datetime")


@dataclass(frozen=True, slots=True)
class Type:
    kind: str  # one of SIMPLE, or enum/ref/record/set/map/option/event_batch
    name: str | None = None  # enum name, or class name for ref/record
    elem: "Type | None" = None  # set and option element; map key
    value: "Type | None" = None  # map value

    def __str__(self) -> str:
        match self.kind:
            case "enum":
                return f"enum {self.name}"
            case "ref" | "record":
                return f"{self.name} {self.kind}"
            case "set" | "option":
                return f"{self.elem} {self.kind}"
            case "map":
                return f"({self.elem} -> {self.value}) map"
            case _:
                return self.kind

    @property
    def is_scalar(self) -> bool:
        return self.kind in SIMPLE or self.kind in ("enum", "ref")

    def zero(self):
        """The value a field of this type takes when the model gives no default."""
        match self.kind:
            case "string" | "secretstring":
                return ""
            case "int":
                return 0
            case "float":
                return 0.0
            case "bool":
                return False
            case "datetime":
                return EPOCH
            case "ref":
                return NULL_REF
            case "set":
                return []
            case "map" | "record":
                return {}
            case "enum" | "option" | "event_batch":
                return None
        raise AssertionError(self.kind)


NULL_REF = "OpaqueRef:NULL"
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
WIRE_DATETIME = "%Y%m%dT%H:%M:%SZ"


def format_datetime(value: datetime) -> str:
    """xapi's wire form, ``YYYYMMDDThh:mm:ssZ`` in UTC."""
    if value.tzinfo is not None:
        value = value.astimezone(timezone.utc)
    # Not strftime: %Y does not zero-pad years before 1000.
    return (
        f"{value.year:04d}{value.month:02d}{value.day:02d}"
        f"T{value.hour:02d}:{value.minute:02d}:{value.second:02d}Z"
    )


def parse_datetime(text: str) -> datetime:
    """Parse xapi's compact form, or best-effort RFC 3339; no zone means UTC."""
    text = text.strip()
    try:
        return datetime.strptime(text, WIRE_DATETIME).replace(tzinfo=timezone.utc)
    except ValueError:
        pass
    if len(text) >= 9 and text[8] == "T" and text[:8].isdigit():
        text = f"{text[:4]}-{text[4:6]}-{text[6:]}"  # compact date, extended time
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    value = datetime.fromisoformat(text)
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def _split_map(inner: str) -> tuple[str, str]:
    depth = 0
    for i in range(len(inner) - 3):
        c = inner[i]
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        elif depth == 0 and inner.startswith(" -> ", i):
            return inner[:i], inner[i + 4 :]
    raise ValueError(f"bad map type: {inner!r}")


@lru_cache(maxsize=None)
def parse(text: str) -> Type:
    text = text.strip()
    if text in SIMPLE:
        return Type(text)
    if text.startswith("event_batch"):
        return Type("event_batch")
    for suffix in ("set", "option"):
        if text.endswith(" " + suffix):
            return Type(suffix, elem=parse(text[: -len(suffix) - 1]))
    if text.endswith(" map"):
        body = text[:-4].strip()
        if not (body.startswith("(") and body.endswith(")")):
            raise ValueError(f"bad map type: {text!r}")
        k, v = _split_map(body[1:-1])
        return Type("map", elem=parse(k), value=parse(v))
    if text.startswith("enum "):
        return Type("enum", name=text[5:])
    for suffix in ("ref", "record"):
        if text.endswith(" " + suffix):
            return Type(suffix, name=text[: -len(suffix) - 1])
    raise ValueError(f"unknown type: {text!r}")
