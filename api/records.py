"""Wire forms of whole records, cached on the immutable cache rows.

An object's record is encoded at most once per version and per wire format;
``get_record``, ``get_all_records`` and event snapshots then splice the
cached fragment into their responses.  Each class gets an encoder built
once from the model: member names are escaped in advance and every field has
a value encoder chosen by its type, so a record is encoded straight from the
row without building an intermediate dict.  This is what keeps
``VM.get_all_records`` on 10,000 VMs cheaper than the stdlib encoder.
"""

from __future__ import annotations

from datetime import datetime
from json.encoder import encode_basestring_ascii as _quote
from typing import Any, Callable

from db.cache import ObjectCache, Row
from xapi.idl.types import Type, format_datetime

from . import jsonrpc, xmlrpc

Emit = Callable[[Any, list], None]


def _xml_value(ty: Type) -> Emit:
    escape = xmlrpc.escape
    match ty.kind:
        case "string" | "secretstring" | "ref" | "enum":
            def emit(v, out):
                out.append("<value>")
                out.append(escape(v) if type(v) is str else escape(str(v)))
                out.append("</value>")
        case "int":
            def emit(v, out):
                out.append(f"<value>{v}</value>")
        case "bool":
            def emit(v, out):
                out.append("<value><boolean>1</boolean></value>" if v else "<value><boolean>0</boolean></value>")
        case "datetime":
            def emit(v, out):
                out.append(f"<value><dateTime.iso8601>{format_datetime(v)}</dateTime.iso8601></value>"
                           if isinstance(v, datetime) else f"<value>{escape(str(v))}</value>")
        case "set" if ty.elem.kind in ("string", "ref", "enum"):
            def emit(v, out):
                out.append("<value><array><data>")
                for item in v:
                    out.append("<value>")
                    out.append(escape(item))
                    out.append("</value>")
                out.append("</data></array></value>")
        case "map" if ty.elem.kind == "string" and ty.value.kind == "string":
            def emit(v, out):
                out.append("<value><struct>")
                for k, item in v.items():
                    out.append("<member><name>")
                    out.append(escape(k))
                    out.append("</name><value>")
                    out.append(escape(item))
                    out.append("</value></member>")
                out.append("</struct></value>")
        case _:
            emit = xmlrpc.encode_value
    return emit


def _json_value(ty: Type) -> Emit:
    match ty.kind:
        case "string" | "secretstring" | "ref" | "enum":
            def emit(v, out):
                out.append(_quote(v) if type(v) is str else _quote(str(v)))
        case "int":
            def emit(v, out):
                out.append(str(v))
        case "bool":
            def emit(v, out):
                out.append("true" if v else "false")
        case "set" if ty.elem.kind in ("string", "ref", "enum"):
            def emit(v, out):
                out.append("[" + ",".join(map(_quote, v)) + "]")
        case "map" if ty.elem.kind == "string" and ty.value.kind == "string":
            def emit(v, out):
                out.append("{" + ",".join(f"{_quote(k)}:{_quote(x)}" for k, x in v.items()) + "}")
        case _:
            emit = jsonrpc.encode_value
    return emit


class RecordEncoder:
    """Encodes records of one class, in model field order."""

    def __init__(self, cache: ObjectCache, cls: str):
        self.cache = cache
        self.cls = cls
        self.fields = []
        for name, f in cache.classes[cls].fields.items():
            self.fields.append((
                name,
                f.derived is not None,
                f.type.kind == "option",  # left out when empty, as xapi does
                f"<member><name>{xmlrpc.escape(name)}</name>",
                _quote(name) + ":",
                _xml_value(f.type),
                _json_value(f.type),
            ))

    def _values(self, row: Row):
        values, derived = row.values, self.cache.derived
        for name, is_derived, optional, xml_name, json_name, xml_emit, json_emit in self.fields:
            value = derived(self.cls, name, row.ref) if is_derived else values.get(name)
            if optional and value is None:
                continue
            yield value, xml_name, json_name, xml_emit, json_emit

    def xml(self, row: Row) -> xmlrpc.RawXML:
        out = ["<value><struct>"]
        for value, xml_name, _, emit, _ in self._values(row):
            out.append(xml_name)
            emit(value, out)
            out.append("</member>")
        out.append("</struct></value>")
        return xmlrpc.RawXML("".join(out))

    def json(self, row: Row) -> jsonrpc.RawJSON:
        out = ["{"]
        for value, _, json_name, _, emit in self._values(row):
            if len(out) > 1:
                out.append(",")
            out.append(json_name)
            emit(value, out)
        out.append("}")
        return jsonrpc.RawJSON("".join(out))


_ENCODERS: dict[tuple[int, str], RecordEncoder] = {}


def encoder(cache: ObjectCache, cls: str) -> RecordEncoder:
    key = (id(cache), cls)
    enc = _ENCODERS.get(key)
    if enc is None:
        enc = _ENCODERS[key] = RecordEncoder(cache, cls)
    return enc


def encoded(cache: ObjectCache, cls: str, row: Row, fmt: str):
    """The record as a raw XML or JSON fragment (``fmt`` is "xml" or "json")."""
    fragment = row.encoded.get(fmt)
    if fragment is None:
        enc = encoder(cache, cls)
        fragment = enc.xml(row) if fmt == "xml" else enc.json(row)
        row.encoded[fmt] = fragment
    return fragment


def all_encoded(cache: ObjectCache, cls: str, rows: list[Row], fmt: str) -> dict:
    return {row.ref: encoded(cache, cls, row, fmt) for row in rows}
