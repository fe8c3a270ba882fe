"""JSON-RPC v1 and v2 bodies as xapi reads and writes them.

Version: a ``"jsonrpc": "2.0"`` member means v2, no member means v1, any
other value is malformed.  ``id`` is mandatory and non-null (a notification
is malformed).  v1 ``params`` must be an array; v2 ``params`` may be absent
or null (no params), an array, or an object (one struct param).

Replies:
  v1 ``{"result": v, "error": null, "id": i}`` / ``{"result": null, "error": [code, …], "id": i}``
  v2 ``{"jsonrpc": "2.0", "result": v, "id": i}`` /
     ``{"jsonrpc": "2.0", "error": {"code": 1, "message": code, "data": [params]}, "id": i}``
(v2 success has no ``error`` key: Xen Orchestra's parser rejects ``"error": null``.)
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime
from json.encoder import encode_basestring_ascii as _quote
from typing import Any

from xapi.idl.types import format_datetime

from .xmlrpc import ProtocolError

CONTENT_TYPE = "application/json"


class RawJSON(str):
    """An already encoded JSON fragment."""


@dataclass(slots=True)
class JsonCall:
    method: str
    params: list[Any]
    id: Any
    v2: bool


def decode_request(body: bytes) -> JsonCall:
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ProtocolError(f"malformed JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ProtocolError("JSON-RPC request is not an object")
    version = doc.get("jsonrpc", None)
    if "jsonrpc" in doc and version != "2.0":
        raise ProtocolError(f"unsupported JSON-RPC version {version!r}")
    v2 = version == "2.0"
    method = doc.get("method")
    if not isinstance(method, str) or not method:
        raise ProtocolError("JSON-RPC request without a method")
    req_id = doc.get("id")
    if req_id is None or isinstance(req_id, (dict, list)):
        raise ProtocolError("JSON-RPC notifications are not supported (id missing or null)")
    params = doc.get("params")
    if isinstance(params, list):
        pass
    elif v2 and params is None:
        params = []
    elif v2 and isinstance(params, dict):
        params = [params]
    else:
        raise ProtocolError("JSON-RPC params must be an array")
    return JsonCall(method, params, req_id, v2)


def encode_value(value: Any, out: list[str]) -> None:
    t = type(value)
    if t is str:
        out.append(_quote(value))
    elif t is RawJSON:
        out.append(value)
    elif t is bool:
        out.append("true" if value else "false")
    elif t is int:
        out.append(str(value))
    elif t is float:
        out.append(repr(value) if math.isfinite(value) else "0")
    elif t is dict:
        out.append("{")
        first = True
        for k, v in value.items():
            if not first:
                out.append(",")
            first = False
            out.append(_quote(k if type(k) is str else str(k)))
            out.append(":")
            encode_value(v, out)
        out.append("}")
    elif t is list or t is tuple:
        out.append("[")
        for i, v in enumerate(value):
            if i:
                out.append(",")
            encode_value(v, out)
        out.append("]")
    elif t is datetime:
        out.append(f'"{format_datetime(value)}"')
    elif value is None:
        out.append("null")
    elif isinstance(value, bool):
        out.append("true" if value else "false")
    elif isinstance(value, int):
        out.append(str(int(value)))
    elif isinstance(value, str):
        out.append(_quote(str(value)))
    else:
        raise TypeError(f"cannot encode {t.__name__} as JSON")


def encode(value: Any) -> str:
    out: list[str] = []
    encode_value(value, out)
    return "".join(out)


def _id(call: JsonCall | None) -> str:
    return encode(call.id) if call is not None else "null"


def success(call: JsonCall, value: Any) -> bytes:
    out = ['{"jsonrpc":"2.0","result":' if call.v2 else '{"result":']
    encode_value(value, out)
    out.append(',"id":' if call.v2 else ',"error":null,"id":')
    out.append(_id(call))
    out.append("}")
    return "".join(out).encode()


def failure(call: JsonCall, description: list[str]) -> bytes:
    code, *params = [str(x) for x in description]
    if call.v2:
        err = {"code": 1, "message": code, "data": params}
        return f'{{"jsonrpc":"2.0","error":{encode(err)},"id":{_id(call)}}}'.encode()
    return f'{{"result":null,"error":{encode([code, *params])},"id":{_id(call)}}}'.encode()
