"""XML-RPC bodies as xapi reads and writes them.

Requests are decoded with the standard library's ``xmlrpc.client`` parser,
which already accepts everything xapi does: untyped ``<value>`` strings,
``<int>``/``<i4>``/``<i8>``, ``<nil/>`` and ``dateTime.iso8601``.

Responses are written here rather than with ``xmlrpc.client.dumps``, because
xapi's wire form differs from the stdlib's and clients depend on it: no
whitespace between elements (Xen Orchestra's parser breaks on it), strings
as bare ``<value>text</value>``, API ints as untyped decimal text, never
``<i8>``.  Only ``I4`` values (``event.from``'s ``valid_ref_counts``) are
sent as ``<i4>``.
"""

from __future__ import annotations

import math
import re
import xmlrpc.client
from xml.etree import ElementTree
from datetime import datetime
from typing import Any

from xapi.idl.types import format_datetime
from xapi.wire import I4

CONTENT_TYPE = "text/xml"


class ProtocolError(Exception):
    """The body is not a well-formed call; xapi answers HTTP 500."""


class RawXML(str):
    """An already encoded ``<value>…</value>`` fragment."""


def decode_request(body: bytes) -> tuple[str, list[Any]]:
    """Method name and parameters of an XML-RPC call.

    The standard library's parser defines what is accepted.  Well-formed,
    ordinary calls take a faster path through ElementTree's C tree builder,
    which gives the same values; anything it does not recognise goes to the
    standard parser, so both paths accept and refuse exactly the same input.
    """
    try:
        return _fast_decode(body)
    except Exception:
        pass
    try:
        params, method = xmlrpc.client.loads(body, use_datetime=False, use_builtin_types=False)
    except Exception as exc:  # expat, int(), float() or structure errors alike
        raise ProtocolError(f"malformed XML-RPC request: {exc}") from None
    if not isinstance(method, str) or not method:
        raise ProtocolError("XML-RPC request without a methodName")
    return method, list(params)


class _Unusual(Exception):
    """Not an ordinary call: let the standard parser decide."""


_INT_TAGS = frozenset(("int", "i4", "i8", "i1", "i2", "bigint"))


def _fast_decode(body: bytes) -> tuple[str, list[Any]]:
    root = ElementTree.fromstring(body)
    if root.tag != "methodCall" or root.text and root.text.strip():
        raise _Unusual
    children = list(root)
    if not children or children[0].tag != "methodName" or len(children) > 2:
        raise _Unusual
    name = children[0]
    if len(name) or not name.text:
        raise _Unusual
    params = []
    if len(children) == 2:
        if children[1].tag != "params":
            raise _Unusual
        for param in children[1]:
            if param.tag != "param" or len(param) != 1:
                raise _Unusual
            params.append(_fast_value(param[0]))
    return name.text, params


def _fast_value(node) -> Any:
    if node.tag != "value" or len(node) > 1:
        raise _Unusual
    if not len(node):
        return node.text or ""
    if node.text and node.text.strip():
        raise _Unusual
    typed = node[0]
    if typed.tail and typed.tail.strip():
        raise _Unusual
    tag, text = typed.tag, typed.text
    if tag == "string":
        if len(typed):
            raise _Unusual
        return text or ""
    if tag == "struct":
        out = {}
        for member in typed:
            if member.tag != "member" or len(member) != 2:
                raise _Unusual
            key, value = member
            if key.tag != "name" or len(key):
                raise _Unusual
            out[key.text or ""] = _fast_value(value)
        return out
    if tag == "array":
        if len(typed) != 1 or typed[0].tag != "data":
            raise _Unusual
        return [_fast_value(v) for v in typed[0]]
    if len(typed):
        raise _Unusual
    if tag in _INT_TAGS:
        return int(text)
    if tag == "boolean":
        if text == "1":
            return True
        if text == "0":
            return False
        raise _Unusual
    if tag == "double":
        return float(text)
    if tag == "nil":
        return None
    if tag == "dateTime.iso8601":
        return xmlrpc.client.DateTime(text)
    raise _Unusual


# Characters XML 1.0 cannot carry are dropped, as xapi does with control characters.
# CR is sent as a character reference: a literal CR would be read back as LF
# (XML end-of-line normalisation), so "a\r\nb" would reach clients as "a\nb".
_NEEDS_WORK = re.compile(r'[&<>"\r\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]')
_DROP = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def escape(text: str) -> str:
    if _NEEDS_WORK.search(text) is None:
        return text
    text = _DROP.sub("", text)
    return (
        text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
        .replace("\r", "&#13;")
    )


def encode_value(value: Any, out: list[str]) -> None:
    """Append the ``<value>`` encoding of a Python value to ``out``."""
    t = type(value)
    if t is str:
        out.append("<value>")
        out.append(escape(value))
        out.append("</value>")
    elif t is RawXML:
        out.append(value)
    elif t is bool:
        out.append("<value><boolean>1</boolean></value>" if value else "<value><boolean>0</boolean></value>")
    elif t is int:
        out.append(f"<value>{value}</value>")
    elif t is I4:
        out.append(f"<value><i4>{int(value)}</i4></value>")
    elif t is float:
        out.append(f"<value><double>{_double(value)}</double></value>")
    elif t is dict:
        out.append("<value><struct>")
        for k, v in value.items():
            out.append("<member><name>")
            out.append(escape(k if type(k) is str else str(k)))
            out.append("</name>")
            encode_value(v, out)
            out.append("</member>")
        out.append("</struct></value>")
    elif t is list or t is tuple:
        out.append("<value><array><data>")
        for v in value:
            encode_value(v, out)
        out.append("</data></array></value>")
    elif t is datetime:
        out.append(f"<value><dateTime.iso8601>{format_datetime(value)}</dateTime.iso8601></value>")
    elif value is None:
        out.append("<value><nil/></value>")
    elif isinstance(value, str):
        encode_value(str(value), out)
    elif isinstance(value, int):
        encode_value(int(value), out)
    else:
        raise TypeError(f"cannot encode {t.__name__} as XML-RPC")


def _double(value: float) -> str:
    if not math.isfinite(value):
        return "0"
    return f"{value:.16g}"


def encode(value: Any) -> str:
    out: list[str] = []
    encode_value(value, out)
    return "".join(out)


_HEAD = "<methodResponse><params><param>"
_TAIL = "</param></params></methodResponse>"
_SUCCESS = "<value><struct><member><name>Status</name><value>Success</value></member><member><name>Value</name>"
_FAILURE = "<value><struct><member><name>Status</name><value>Failure</value></member><member><name>ErrorDescription</name>"


def success(value: Any) -> bytes:
    out = [_HEAD, _SUCCESS]
    encode_value(value, out)
    out.append("</member></struct></value>")
    out.append(_TAIL)
    return "".join(out).encode()


def failure(description: list[str]) -> bytes:
    out = [_HEAD, _FAILURE]
    encode_value([str(x) for x in description], out)
    out.append("</member></struct></value>")
    out.append(_TAIL)
    return "".join(out).encode()


def bare(value: Any) -> bytes:
    """A response without the Status wrapper (only ``system.listMethods``)."""
    out = [_HEAD]
    encode_value(value, out)
    out.append(_TAIL)
    return "".join(out).encode()
