"""The XenAPI data model, loaded from the generated ``model.json``.

This is the single source of truth for classes, fields, messages, enums,
roles and errors.  Dispatch, implicit messages, database tables and the
``xe`` parameter commands are all derived from it.  It imports nothing else
of the project.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from .types import NULL_REF, Type, parse, parse_datetime

MODEL_PATH = Path(__file__).resolve().parent / "model.json"

RW, STATIC_RO, DYNAMIC_RO = "RW", "StaticRO", "DynamicRO"


@dataclass(frozen=True, slots=True)
class Relation:
    """A one-to-many (or many-to-many) link; the ``to`` side is derived."""

    from_cls: str
    from_field: str
    to_cls: str
    to_field: str


@dataclass(slots=True)
class Field:
    name: str
    type: Type
    qualifier: str
    has_default: bool
    default: Any
    lifecycle: str = "published"
    setter_roles: tuple[str, ...] = ()
    map_keys_roles: tuple = ()
    derived: Relation | None = None  # set when computed from another class's field

    @property
    def initial(self) -> Any:
        """Value of the field in a fresh record: the model default or the type's zero."""
        if self.has_default:
            return _copy(self.default)
        return self.type.zero()


@dataclass(slots=True)
class Param:
    name: str
    type: Type
    has_default: bool = False
    default: Any = None


@dataclass(slots=True)
class Message:
    cls: str
    name: str
    params: list[Param]  # without the leading session_id
    result: Type | None
    tag: str
    roles: tuple[str, ...]
    session: bool = True
    async_: bool = False
    pool_internal: bool = False
    hidden: bool = False
    lifecycle: str = "published"
    errors: tuple[str, ...] = ()
    constructor_fields: tuple[tuple[str, bool], ...] = ()

    @property
    def wire_name(self) -> str:
        return f"{self.cls}.{self.name}"

    @property
    def required_count(self) -> int:
        """Parameters (excluding the session) that have no default."""
        n = len(self.params)
        while n and self.params[n - 1].has_default:
            n -= 1
        return n


@dataclass(slots=True)
class Cls:
    name: str
    lifecycle: str
    in_database: bool
    gen_events: bool
    gen_constructor_destructor: bool
    persist: bool
    enums: dict[str, list[str]]
    fields: dict[str, Field]
    messages: dict[str, Message]

    @property
    def stored_fields(self) -> list[Field]:
        """Fields kept in the database: everything but derived relation sets."""
        return [f for f in self.fields.values() if f.derived is None]


@dataclass
class Model:
    api_version: tuple[int, int]
    roles: tuple[str, ...]
    errors: dict[str, list[str] | None]
    classes: dict[str, Cls]
    relations: list[Relation]
    no_task_id_for: frozenset[str]
    enums: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._by_lower = {name.lower(): c for name, c in self.classes.items()}
        for c in self.classes.values():
            self.enums.update(c.enums)
        self.enum_lookup = {
            name: {v.lower(): v for v in values} for name, values in self.enums.items()
        }

    def cls(self, name: str) -> Cls | None:
        """Look a class up by its exact name, or case-insensitively."""
        return self.classes.get(name) or self._by_lower.get(name.lower())

    @cached_property
    def methods(self) -> dict[str, Message]:
        """Every wire name (``Class.message``) to its message."""
        return {
            m.wire_name: m for c in self.classes.values() for m in c.messages.values()
        }

    @cached_property
    def event_classes(self) -> list[str]:
        return [c.name for c in self.classes.values() if c.gen_events]


def _copy(value: Any) -> Any:
    if isinstance(value, (list, dict)):
        return json.loads(json.dumps(value))
    return value


def _typed_default(ty: Type, value: Any) -> Any:
    """Model defaults arrive as JSON; datetimes become ``datetime`` values."""
    if ty.kind == "datetime" and isinstance(value, str):
        return parse_datetime(value)
    return value


def _field(raw: dict) -> Field:
    ty = parse(raw["type"])
    return Field(
        name=raw["name"],
        type=ty,
        qualifier=raw["qualifier"],
        has_default="default" in raw,
        default=_typed_default(ty, raw.get("default")),
        lifecycle=raw.get("lifecycle", "published"),
        setter_roles=tuple(raw.get("setter_roles", ())),
        map_keys_roles=tuple(tuple(x) if isinstance(x, list) else x for x in raw.get("map_keys_roles", ())),
    )


def _message(cls: str, raw: dict) -> Message:
    params = [
        Param(p["name"], ty := parse(p["type"]), "default" in p, _typed_default(ty, p.get("default")))
        for p in raw["params"]
    ]
    session = not raw.get("no_session", False)
    if session:
        params = params[1:]
    return Message(
        cls=cls,
        name=raw["name"],
        params=params,
        result=parse(raw["result"]) if raw["result"] else None,
        tag=raw["tag"],
        roles=tuple(raw["roles"]),
        session=session,
        async_=raw.get("async", False),
        pool_internal=raw.get("pool_internal", False),
        hidden=raw.get("hidden_from_docs", False),
        lifecycle=raw.get("lifecycle", "published"),
        errors=tuple(raw.get("errors", ())),
        constructor_fields=tuple((n, r) for n, r in raw.get("constructor_fields", ())),
    )


def load(path: Path = MODEL_PATH) -> Model:
    raw = json.loads(path.read_text())
    classes: dict[str, Cls] = {}
    for c in raw["classes"]:
        classes[c["name"]] = Cls(
            name=c["name"],
            lifecycle=c["lifecycle"],
            in_database=c["in_database"],
            gen_events=c["gen_events"],
            gen_constructor_destructor=c["gen_constructor_destructor"],
            persist=c["persist"],
            enums=c["enums"],
            fields={f["name"]: _field(f) for f in c["fields"]},
            messages={m["name"]: _message(c["name"], m) for m in c["messages"]},
        )
    relations = []
    for frm, to in raw["relations"]:
        fc, ff = frm.split(".", 1)
        tc, tf = to.split(".", 1)
        if (fc, ff) == (tc, tf):
            continue  # upstream lists a few self-pairs; they relate nothing
        rel = Relation(fc, ff, tc, tf)
        relations.append(rel)
        classes[tc].fields[tf].derived = rel
    return Model(
        api_version=tuple(raw["api_version"]),
        roles=tuple(raw["roles"]),
        errors=raw["errors"],
        classes=classes,
        relations=relations,
        no_task_id_for=frozenset(raw["no_task_id_for"]),
    )


_MODEL: Model | None = None


def model() -> Model:
    """The process-wide model, loaded once."""
    global _MODEL
    if _MODEL is None:
        _MODEL = load()
    return _MODEL


__all__ = [
    "Cls", "Field", "Message", "Model", "NULL_REF", "Param", "Relation",
    "RW", "STATIC_RO", "DYNAMIC_RO", "load", "model",
]
