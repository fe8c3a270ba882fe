"""Turn decoded wire values into typed parameter values, as xapi unmarshals them.

Accepted forms follow ocaml-rpc's ``*_of_rpc`` plus what real clients send:
ints as ints or decimal strings; floats as floats, ints or strings; bools
only as booleans; datetimes as ``dateTime.iso8601`` or strings; enum values
matched case-insensitively; refs as strings.  A mismatch raises
``ParamTypeError``; the dispatcher turns it into the XenAPI error.
"""

from __future__ import annotations

import xmlrpc.client
from datetime import datetime
from typing import Any

from xapi.idl.model import Model
from xapi.idl.types import Type, parse_datetime


class ParamTypeError(Exception):
    def __init__(self, expected: Type, got: Any):
        self.expected = expected
        self.got = got
        super().__init__(f"expected {expected}, got {_describe(got)}")


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def coerce(model: Model, ty: Type, value: Any) -> Any:
    kind = ty.kind
    if kind in ("string", "secretstring", "ref"):
        if type(value) is str:
            return value
        raise ParamTypeError(ty, value)
    if kind == "int":
        if type(value) is int:
            return value
        if type(value) is str:
            try:
                return int(value.strip())
            except ValueError:
                pass
        raise ParamTypeError(ty, value)
    if kind == "float":
        if type(value) in (float, int):
            return float(value)
        if type(value) is str:
            try:
                return float(value)
            except ValueError:
                pass
        raise ParamTypeError(ty, value)
    if kind == "bool":
        if type(value) is bool:
            return value
        raise ParamTypeError(ty, value)
    if kind == "datetime":
        if isinstance(value, xmlrpc.client.DateTime):
            value = value.value
        if isinstance(value, datetime):
            return value
        if type(value) is str:
            try:
                return parse_datetime(value)
            except (ValueError, OverflowError):  # e.g. year 1 with a +01:00 offset
                pass
        raise ParamTypeError(ty, value)
    if kind == "enum":
        if type(value) is str:
            canonical = model.enum_lookup[ty.name].get(value.lower())
            if canonical is not None:
                return canonical
        raise ParamTypeError(ty, value)
    if kind == "set":
        if isinstance(value, list):
            return [coerce(model, ty.elem, v) for v in value]
        raise ParamTypeError(ty, value)
    if kind == "map":
        if isinstance(value, dict):
            return {
                coerce(model, ty.elem, k): coerce(model, ty.value, v) for k, v in value.items()
            }
        raise ParamTypeError(ty, value)
    if kind == "option":
        return None if value is None else coerce(model, ty.elem, value)
    if kind == "record":
        if isinstance(value, dict):
            return value  # fields are coerced by the constructor that knows the class
        raise ParamTypeError(ty, value)
    raise ParamTypeError(ty, value)
