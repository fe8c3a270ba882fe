"""ocaml-rpc's value encoding as data: types that check and normalise wire values.

A type is declared once (``Record``, ``Variant``, ``ListOf`` …) and
``t.decode(value)`` checks a decoded JSON or XML-RPC value against it and
returns it in canonical wire form:

- scalars coerced the way ocaml-rpc's unmarshallers accept them (an ``int``
  may arrive as a decimal string, as it does over XML-RPC, where ocaml-rpc
  writes integers as untyped ``<value>``s; a ``float`` may arrive as an int);
- records as dicts in declared field order, keys matched case-insensitively,
  ``[@default]`` fields filled in, ``option`` fields present only when set
  (as their plain value);
- variants as ``"Name"`` or ``["Name", arg]`` with the declared spelling,
  names matched case-insensitively, an unknown name mapped to the type's
  ``[@@default]`` case when it has one;
- options outside records as ``[]`` / ``[x]``; tuples as arrays;
  ``(string * 'a) list`` as dicts.

The canonical form is also what goes on the wire, so encoding is the
identity: build the value, ``decode`` it to check it, send it.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from typing import Any


class SchemaError(ValueError):
    """A wire value that does not have the expected shape."""


class Type(ABC):
    name = "value"

    @abstractmethod
    def decode(self, value: Any, path: str = "") -> Any:
        """The value in canonical wire form, or SchemaError."""

    def _fail(self, value: Any, path: str, expected: str | None = None) -> SchemaError:
        where = f" at {path}" if path else ""
        return SchemaError(f"expected {expected or self.name}{where}, got {value!r:.200}")


class _Int(Type):
    name = "int"

    def decode(self, value, path=""):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        raise self._fail(value, path)


class _Float(Type):
    name = "float"

    def decode(self, value, path=""):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
        raise self._fail(value, path)


class _Bool(Type):
    name = "bool"

    def decode(self, value, path=""):
        if isinstance(value, bool):
            return value
        raise self._fail(value, path)


class _String(Type):
    name = "string"

    def decode(self, value, path=""):
        if isinstance(value, str):
            return value
        raise self._fail(value, path)


class _Unit(Type):
    name = "unit"

    def decode(self, value, path=""):
        if value is None:
            return None
        raise self._fail(value, path)


class _Any(Type):
    """``Rpc.t``: any value, kept as it is."""

    name = "Rpc.t"

    def decode(self, value, path=""):
        return value


INT = _Int()
INT64 = INT
FLOAT = _Float()
BOOL = _Bool()
STRING = _String()
UNIT = _Unit()
ANY = _Any()


class ListOf(Type):
    def __init__(self, item: Type):
        self.item = item
        self.name = f"{item.name} list"

    def decode(self, value, path=""):
        if not isinstance(value, (list, tuple)):
            raise self._fail(value, path)
        return [self.item.decode(v, f"{path}[{i}]") for i, v in enumerate(value)]


class Dict(Type):
    """``(string * 'a) list``, which ocaml-rpc sends as a dict."""

    def __init__(self, item: Type):
        self.item = item
        self.name = f"(string * {item.name}) list"

    def decode(self, value, path=""):
        if not isinstance(value, dict):
            raise self._fail(value, path)
        return {str(k): self.item.decode(v, f"{path}.{k}") for k, v in value.items()}


class Tuple(Type):
    def __init__(self, *items: Type):
        self.items = items
        self.name = "(" + " * ".join(t.name for t in items) + ")"

    def decode(self, value, path=""):
        if not isinstance(value, (list, tuple)) or len(value) != len(self.items):
            raise self._fail(value, path)
        return [t.decode(v, f"{path}[{i}]") for i, (t, v) in enumerate(zip(self.items, value))]


class Option(Type):
    """An option outside a record: ``[]`` or ``[x]``."""

    def __init__(self, item: Type):
        self.item = item
        self.name = f"{item.name} option"

    def decode(self, value, path=""):
        if isinstance(value, (list, tuple)) and len(value) <= 1:
            return [self.item.decode(v, path) for v in value]
        raise self._fail(value, path)


class OPT:
    """Marks an ``option`` record field: omitted when ``None``, plain value when set."""

    def __init__(self, item: Type):
        self.item = item


_REQUIRED = object()


class Record(Type):
    """A record.  Field specs: a ``Type`` (required), ``(Type, default)``
    (``[@default]``), or ``OPT(Type)`` (an option field)."""

    def __init__(self, name: str, fields: dict[str, Any]):
        self.name = name
        self.fields: list[tuple[str, Type, Any, bool]] = []
        for fname, spec in fields.items():
            if isinstance(spec, OPT):
                self.fields.append((fname, spec.item, None, True))
            elif isinstance(spec, tuple):
                self.fields.append((fname, spec[0], spec[1], False))
            else:
                self.fields.append((fname, spec, _REQUIRED, False))

    def decode(self, value, path=""):
        if not isinstance(value, dict):
            raise self._fail(value, path, f"a {self.name} record")
        given = {str(k).lower(): v for k, v in value.items()}
        out: dict[str, Any] = {}
        for fname, ftype, default, optional in self.fields:
            key = fname.lower()
            if key in given and not (optional and given[key] is None):
                out[fname] = ftype.decode(given[key], f"{path}.{fname}" if path else fname)
            elif optional:
                continue
            elif default is _REQUIRED:
                raise SchemaError(f"no value for field '{fname}' of {self.name}"
                                  + (f" at {path}" if path else ""))
            else:
                out[fname] = copy.deepcopy(default)
        return out

    def default(self) -> dict[str, Any]:
        """The record made of its defaults (every field must have one)."""
        return self.decode({})


class Variant(Type):
    """A variant.  ``cases`` maps each constructor to its argument type, or
    ``None`` for a constructor without one; ``default`` is the canonical
    value an unknown constructor decodes to (``[@@default]``)."""

    def __init__(self, name: str, cases: dict[str, Type | None], default: Any = None):
        self.name = name
        self.cases = cases
        self._by_lower = {c.lower(): c for c in cases}
        self.default = default

    def decode(self, value, path=""):
        if isinstance(value, str):
            tag, arg, has_arg = value, None, False
        elif isinstance(value, (list, tuple)) and len(value) == 2 and isinstance(value[0], str):
            tag, arg, has_arg = value[0], value[1], True
        else:
            raise self._fail(value, path, f"a {self.name} variant")
        canonical = self._by_lower.get(tag.lower())
        if canonical is None:
            if self.default is not None:
                return copy.deepcopy(self.default)
            raise SchemaError(f"unknown {self.name} constructor {tag!r}" + (f" at {path}" if path else ""))
        arg_type = self.cases[canonical]
        if arg_type is None:
            if has_arg and arg is not None:
                raise SchemaError(f"{self.name} constructor {canonical} takes no argument")
            return canonical
        return [canonical, arg_type.decode(arg, f"{path}<{canonical}>")]


def tag(value: Any) -> str:
    """The constructor name of a canonical variant value."""
    return value if isinstance(value, str) else value[0]


def arg(value: Any) -> Any:
    """The argument of a canonical variant value (``None`` for a bare constructor)."""
    return None if isinstance(value, str) else value[1]
