"""XML-RPC as ocaml-rpc writes and reads it (what xenopsd serves without the switch).

Writing follows ocaml-rpc's non-strict mode, as xapi and xenopsd use it:
integers are untyped ``<value>42</value>`` (so they read back as strings;
``schema`` types coerce them), strings are bare ``<value>`` text, floats are
``<double>`` with 16 significant digits, ``None`` (``Rpc.Null``, the unit
value) is ``<nil/>``.  Replies are xapi-style structs,
``{Status: "Success", Value: v}`` or ``{Status: "Failure",
ErrorDescription: e}``; a ``<fault>`` reply reads as a failure
``["fault", code, string]``, as ocaml-rpc reads it.
"""

from __future__ import annotations

import base64
import math
import re
import xml.etree.ElementTree as ET
from typing import Any

# XML 1.0 cannot carry most control characters; ocaml-rpc drops them too.
_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f]")


class XmlRpcError(ValueError):
    """An XML-RPC body that cannot be read."""


def _escape(text: str) -> str:
    text = _INVALID.sub("", text)
    return (text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace('"', "&quot;").replace("\r", "&#13;"))


def _write(value: Any, out: list[str]) -> None:
    if value is None:
        out.append("<value><nil/></value>")
    elif isinstance(value, bool):
        out.append(f"<value><boolean>{int(value)}</boolean></value>")
    elif isinstance(value, int):
        out.append(f"<value>{value}</value>")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise XmlRpcError(f"cannot encode {value!r}")
        out.append(f"<value><double>{value:.16g}</double></value>")
    elif isinstance(value, str):
        out.append(f"<value>{_escape(value)}</value>")
    elif isinstance(value, (list, tuple)):
        out.append("<value><array><data>")
        for item in value:
            _write(item, out)
        out.append("</data></array></value>")
    elif isinstance(value, dict):
        out.append("<value><struct>")
        for key, item in value.items():
            out.append(f"<member><name>{_escape(str(key))}</name>")
            _write(item, out)
            out.append("</member>")
        out.append("</struct></value>")
    else:
        raise XmlRpcError(f"cannot encode a {type(value).__name__}")


def dumps(value: Any) -> str:
    out: list[str] = []
    _write(value, out)
    return "".join(out)


def _read_value(elem: ET.Element) -> Any:
    if elem.tag != "value":
        raise XmlRpcError(f"expected <value>, got <{elem.tag}>")
    children = list(elem)
    if not children:
        return elem.text or ""
    if len(children) != 1:
        raise XmlRpcError("a <value> with several children")
    node = children[0]
    kind, text = node.tag, node.text or ""
    if kind in ("int", "i4", "i8"):
        try:
            return int(text.strip())
        except ValueError:
            raise XmlRpcError(f"bad integer {text!r}") from None
    if kind == "boolean":
        return text.strip() == "1"
    if kind == "double":
        try:
            return float(text.strip())
        except ValueError:
            raise XmlRpcError(f"bad double {text!r}") from None
    if kind in ("string", "dateTime.iso8601"):
        return text
    if kind == "base64":
        return base64.b64decode(text).decode("utf-8", "replace")
    if kind == "nil":
        return None
    if kind == "array":
        data = node.find("data")
        return [] if data is None else [_read_value(v) for v in data]
    if kind == "struct":
        out = {}
        for member in node:
            name, value = member.find("name"), member.find("value")
            if member.tag != "member" or name is None or value is None:
                raise XmlRpcError("malformed struct member")
            out[name.text or ""] = _read_value(value)
        return out
    raise XmlRpcError(f"unknown value type <{kind}>")


def _parse(body: bytes) -> ET.Element:
    try:
        return ET.fromstring(body)
    except ET.ParseError as exc:
        raise XmlRpcError(f"malformed XML: {exc}") from None


def encode_call(method: str, params: list[Any]) -> bytes:
    parts = ['<?xml version="1.0"?><methodCall><methodName>', _escape(method), "</methodName><params>"]
    for param in params:
        parts.append("<param>")
        _write(param, parts)
        parts.append("</param>")
    parts.append("</params></methodCall>")
    return "".join(parts).encode()


def decode_call(body: bytes) -> tuple[str, list[Any]]:
    root = _parse(body)
    name = root.find("methodName")
    if root.tag != "methodCall" or name is None or not (name.text or "").strip():
        raise XmlRpcError("not an XML-RPC methodCall")
    params = root.find("params")
    values = [] if params is None else [_read_value(p.find("value")) for p in params if p.find("value") is not None]
    return name.text.strip(), values


def encode_response(ok: bool, value: Any) -> bytes:
    status = {"Status": "Success", "Value": value} if ok else {"Status": "Failure", "ErrorDescription": value}
    return ('<?xml version="1.0"?><methodResponse><params><param>'
            + dumps(status) + "</param></params></methodResponse>").encode()


def decode_response(body: bytes) -> tuple[bool, Any]:
    """``(True, value)`` or ``(False, error value)``."""
    root = _parse(body)
    if root.tag != "methodResponse":
        raise XmlRpcError("not an XML-RPC methodResponse")
    fault = root.find("fault/value")
    if fault is not None:
        detail = _read_value(fault)
        if isinstance(detail, dict):
            return False, ["fault", detail.get("faultCode"), detail.get("faultString")]
        raise XmlRpcError("malformed fault")
    value = root.find("params/param/value")
    if value is None:
        raise XmlRpcError("methodResponse without a value")
    result = _read_value(value)
    if isinstance(result, dict):
        if result.get("Status") == "Success" and "Value" in result:
            return True, result["Value"]
        if result.get("Status") == "Failure" and "ErrorDescription" in result:
            return False, result["ErrorDescription"]
    return True, result
