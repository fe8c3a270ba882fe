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
    """A value xapi's unmarshaller would refuse; ``message`` is its exception text."""

    def __init__(self, message: str):
        self.message = message
        super().__init__(message)


def rpc_text(value: Any) -> str:
    """A value as ocaml-rpc prints it in unmarshalling errors (``S(x)``, ``I(5)`` …)."""
    if value is None:
        return "N"
    if isinstance(value, bool):
        return f"B({str(value).lower()})"
    if isinstance(value, int):
        return f"I({value})"
    if isinstance(value, float):
        return f"F({value})"
    if isinstance(value, str):
        return f"S({value})"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{rpc_text(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ";".join(rpc_text(v) for v in value) + "]"
    if isinstance(value, xmlrpc.client.DateTime):
        return f"D({value.value})"
    return f"S({value})"


def _expected(name: str, value: Any) -> ParamTypeError:
    return ParamTypeError(f'Failure("Expected {name}, got \'{rpc_text(value)}\'")')


_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def coerce(model: Model, ty: Type, value: Any) -> Any:
    kind = ty.kind
    if kind in ("string", "secretstring", "ref"):
        if type(value) is str:
            return value
        raise _expected("string", value)
    if kind == "int":
        if type(value) is int:
            if _INT64_MIN <= value <= _INT64_MAX:
                return value
            raise ParamTypeError('Failure("Int64.of_string")')
        if type(value) is str:
            try:
                number = int(value.strip())
            except ValueError:
                number = None
            if number is not None and _INT64_MIN <= number <= _INT64_MAX:  # API ints are int64
                return number
            raise ParamTypeError('Failure("Int64.of_string")')
        raise _expected("int64", value)
    if kind == "float":
        if type(value) in (float, int):
            try:
                return float(value)
            except OverflowError:  # an int beyond the double range
                raise _expected("float", value) from None
        if type(value) is str:
            try:
                return float(value)
            except ValueError:
                raise ParamTypeError('Failure("float_of_string")') from None
        raise _expected("float", value)
    if kind == "bool":
        if type(value) is bool:
            return value
        raise _expected("bool", value)
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
        raise ParamTypeError(f"Invalid argument: Date.of_iso8601: {rpc_text(value)}")
    if kind == "enum":
        if type(value) is str:
            canonical = model.enum_lookup[ty.name].get(value.lower())
            if canonical is not None:
                return canonical
        raise ParamTypeError('Failure("Unknown tag/contents")')
    if kind == "set":
        if isinstance(value, list):
            return [coerce(model, ty.elem, v) for v in value]
        raise ParamTypeError(f"Failure(\"Expecting Rpc.Enum, but found '{rpc_text(value)}'\")")
    if kind == "map":
        if isinstance(value, dict):
            return {
                coerce(model, ty.elem, k): coerce(model, ty.value, v) for k, v in value.items()
            }
        raise ParamTypeError(f"Failure(\"Expecting Rpc.Dict, but found '{rpc_text(value)}'\")")
    if kind == "option":
        return None if value is None else coerce(model, ty.elem, value)
    if kind == "record":
        if isinstance(value, dict):
            return value  # fields are unmarshalled against the constructor's field list
        raise ParamTypeError('Failure("bad __structure")')
    raise ParamTypeError(f"Failure(\"cannot unmarshal {ty}\")")
