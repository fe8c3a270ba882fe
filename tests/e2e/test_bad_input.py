"""Hostile and malformed requests against a live server, over raw HTTP.

What must hold (xenapi-protocol.md §1.2–1.5, real-clients.md §0):
- an unreadable body gets HTTP 500 with an HTML page (``Xmlrpc.Parse_error``);
- a body over the RPC size limit gets an HTTP error and the server keeps serving;
- anything that parses is answered HTTP 200 with a well-formed XenAPI reply
  (``Status``/``ErrorDescription``, or JSON-RPC ``result``/``error``), never a
  traceback, and with the exact Content-Type ``text/xml`` / ``application/json``;
- the server stays usable after each bad request, and bad requests write nothing.
"""

from __future__ import annotations

import http.client
import json
import uuid
import xmlrpc.client as xc
from dataclasses import dataclass
from xml.sax.saxutils import escape as xml_escape

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import support
from xapi.idl.model import model as load_model

MAX_RPC_SIZE = 300 * 1024
XML = "text/xml"
JSON = "application/json"
CRASH_MARKERS = ("Traceback (most recent call last)", "unexpected failure")
MODEL = load_model()


# --------------------------------------------------------------------------
# Raw HTTP
# --------------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    content_types: list[str]
    body: bytes
    will_close: bool

    @property
    def content_type(self) -> str | None:
        return self.content_types[0] if self.content_types else None

    def is_html_error(self, status: int = 500) -> bool:
        return (
            self.status == status
            and (self.content_type or "").split(";")[0].strip() == "text/html"
            and self.body.lstrip().lower().startswith(b"<html")
        )

    def xml(self) -> dict:
        """The XenAPI struct of a well-formed XML-RPC reply."""
        assert self.status == 200, self
        assert self.content_types == [XML], self.content_types
        assert b"Traceback" not in self.body
        (result,), method = xc.loads(self.body, use_datetime=False, use_builtin_types=False)
        assert method is None
        assert isinstance(result, dict)
        if result.get("Status") == "Success":
            assert set(result) == {"Status", "Value"}
        else:
            assert result.get("Status") == "Failure", result
            assert set(result) == {"Status", "ErrorDescription"}
            desc = result["ErrorDescription"]
            assert isinstance(desc, list) and desc and all(type(x) is str for x in desc), desc
            assert desc[0], desc
        return result

    def json(self, req_id, v2: bool) -> dict:
        """The document of a well-formed JSON-RPC reply."""
        assert self.status == 200, self
        assert self.content_types == [JSON], self.content_types
        assert b"Traceback" not in self.body
        doc = json.loads(self.body)
        assert doc["id"] == req_id and type(doc["id"]) is type(req_id)
        if v2:
            assert doc["jsonrpc"] == "2.0"
            if "error" in doc:
                assert set(doc) == {"jsonrpc", "error", "id"}
                err = doc["error"]
                assert set(err) == {"code", "message", "data"} and err["code"] == 1
                assert type(err["message"]) is str and err["message"]
                assert all(type(x) is str for x in err["data"])
            else:
                assert set(doc) == {"jsonrpc", "result", "id"}
        else:
            assert set(doc) == {"result", "error", "id"}
            if doc["error"] is not None:
                assert doc["result"] is None
                assert doc["error"] and all(type(x) is str for x in doc["error"])
        return doc


def connect(server) -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)


def post(server, body, path: str = "/", content_type: str = XML, conn=None, **kwargs) -> Reply:
    own = conn is None
    conn = conn or connect(server)
    try:
        conn.request("POST", path, body, {"Content-Type": content_type}, **kwargs)
        response = conn.getresponse()
        data = response.read()
        return Reply(response.status, response.msg.get_all("Content-Type") or [], data,
                     response.will_close)
    finally:
        if own:
            conn.close()


def xml_call(method: str, *params) -> bytes:
    """An XML-RPC call as the Python SDK builds it (``allow_none``), name escaped."""
    body = xc.dumps(params, allow_none=True)
    return f"<?xml version='1.0'?><methodCall><methodName>{xml_escape(method)}</methodName>{body}</methodCall>".encode()


def json_call(method: str, params, req_id=1, v2: bool = True) -> bytes:
    doc = {"method": method, "params": params, "id": req_id}
    if v2:
        doc["jsonrpc"] = "2.0"
    return json.dumps(doc).encode()


def call_xml(server, method: str, *params, **kw) -> dict:
    return post(server, xml_call(method, *params), **kw).xml()


def call_json(server, method: str, params, v2: bool = True) -> dict:
    return post(server, json_call(method, params, 7, v2), "/jsonrpc", JSON).json(7, v2)


def error_of(doc: dict, v2: bool | None = None) -> list[str] | None:
    """``[code, params…]`` from an XML struct or a JSON-RPC document, None on success."""
    if "Status" in doc:
        return None if doc["Status"] == "Success" else doc["ErrorDescription"]
    if v2 or "jsonrpc" in doc:
        err = doc.get("error")
        return None if err is None else [err["message"], *err["data"]]
    return doc["error"]


# --------------------------------------------------------------------------
# Fixtures and shared checks
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def session(server) -> str:
    result = call_xml(server, "session.login_with_password", "root", support.ROOT_PASSWORD, "1.0", "bad-input")
    assert result["Status"] == "Success", result
    return result["Value"]


@pytest.fixture(scope="module")
def refs(server, session) -> dict[str, str]:
    out = {}
    for cls in ("VM", "host", "pool", "network"):
        value = call_xml(server, f"{cls}.get_all", session)["Value"]
        assert value, f"no {cls} on a fresh server"
        out[cls] = value[0]
    return out


def assert_alive(server, session) -> None:
    """A normal call still works (over a fresh connection)."""
    xml = call_xml(server, "pool.get_all", session)
    assert xml["Status"] == "Success" and len(xml["Value"]) == 1, xml
    doc = call_json(server, "pool.get_all", [session])
    assert doc["result"] == xml["Value"]


class LogWatch:
    """Fails if the server logged a traceback since the mark."""

    def __init__(self, server):
        self.server = server
        self.mark = len(server.log())

    def assert_no_crash(self, what="") -> None:
        new = self.server.log()[self.mark:]
        for marker in CRASH_MARKERS:
            assert marker not in new, f"server crashed on {what}:\n{new[-3000:]}"
        self.mark += len(new)


SNAPSHOT_CLASSES = ("pool", "host", "host_metrics", "host_cpu", "VM", "VM_metrics", "network",
                    "PIF", "SR", "PBD", "VDI", "VBD", "VIF", "secret", "console", "role")


def snapshot(server, session) -> dict:
    """Every record of a few classes: must not change under bad input."""
    out = {}
    for cls in SNAPSHOT_CLASSES:
        doc = call_json(server, f"{cls}.get_all_records", [session])
        assert "error" not in doc, doc
        out[cls] = doc["result"]
    return out


# --------------------------------------------------------------------------
# Unreadable bodies: HTTP 500 + HTML
# --------------------------------------------------------------------------

MALFORMED_XML = [
    b"",
    b"this is not xml",
    b"<methodCall><methodName>pool.get_all</methodName><params>",
    b"<methodCall><params/></methodCall>",
    b"<methodCall><methodName></methodName></methodCall>",
    b"<methodCall><methodName>pool.get_all</methodName><params><param><value><int>one</int></value></param></params></methodCall>",
    b"<methodCall><methodName>pool.get_all</methodName><params><param><value><boolean>yes</boolean></value></param></params></methodCall>",
    b"<methodCall><methodName>pool.get_all</methodName><params><param><value><bogus/></value></param></params></methodCall>",
    b"<methodResponse><params><param><value>x</value></param></params></methodResponse>",
    b"<methodCall><methodName>pool.get_all</methodName></methodCall><extra/>",
    b"\x00\xff\xfe garbage \x80",
    b'{"method": "pool.get_all", "params": [], "id": 1}',  # JSON posted to the XML-RPC path
    b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa">'
    + b"".join(b'<!ENTITY %s "%s">' % (bytes([c]), (b"&%s;" % bytes([c - 1])) * 10) for c in range(98, 105))
    + b"]><methodCall><methodName>pool.get_all</methodName><params><param><value>&h;</value></param></params></methodCall>",
]


@pytest.mark.parametrize("path", ["/", "/RPC2"])
@pytest.mark.parametrize("body", MALFORMED_XML, ids=range(len(MALFORMED_XML)))
def test_malformed_xml_is_http_500_html(server, session, path, body):
    watch = LogWatch(server)
    reply = post(server, body, path)
    assert reply.is_html_error(500), reply
    watch.assert_no_crash(body[:60])
    assert_alive(server, session)


MALFORMED_JSON = [
    b"",
    b"{bad json",
    b"[]",
    b'"just a string"',
    b"null",
    b'[{"jsonrpc": "2.0", "method": "pool.get_all", "params": [], "id": 1}]',  # batch
    b'{"jsonrpc": "2.0", "method": "pool.get_all", "params": []}',  # notification: no id
    b'{"jsonrpc": "2.0", "method": "pool.get_all", "params": [], "id": null}',
    b'{"method": "pool.get_all", "params": []}',
    b'{"method": "pool.get_all", "params": {"a": 1}, "id": 1}',  # v1 params must be an array
    b'{"method": "pool.get_all", "id": 1}',
    b'{"jsonrpc": "1.0", "method": "pool.get_all", "params": [], "id": 1}',
    b'{"jsonrpc": "3.0", "method": "pool.get_all", "params": [], "id": 1}',
    b'{"jsonrpc": "2.0", "params": [], "id": 1}',
    b'{"jsonrpc": "2.0", "method": 42, "params": [], "id": 1}',
    b'{"jsonrpc": "2.0", "method": "pool.get_all", "params": "s", "id": 1}',
    b'{"jsonrpc": "2.0", "method": "pool.get_all", "params": ' + b"[" * 50000 + b"]" * 50000 + b', "id": 1}',
    b'{"jsonrpc": "2.0", "method": "pool.get_all", "params": [' + b"7" * 5000 + b'], "id": 1}',
    b"\xff\xfe\x00{",
    b"<methodCall><methodName>pool.get_all</methodName></methodCall>",  # XML posted to /jsonrpc
]


@pytest.mark.parametrize("body", MALFORMED_JSON, ids=range(len(MALFORMED_JSON)))
def test_malformed_json_is_http_500_html(server, session, body):
    watch = LogWatch(server)
    reply = post(server, body, "/jsonrpc", JSON)
    assert reply.is_html_error(500), reply
    watch.assert_no_crash(body[:60])
    assert_alive(server, session)


def test_bad_request_then_good_request_on_one_connection(server, session):
    """After an HTTP 500 the connection either still serves, or is closed as announced."""
    conn = connect(server)
    try:
        reply = post(server, b"<methodCall>", conn=conn)
        assert reply.is_html_error(500)
        if reply.will_close:
            conn.close()
            conn = connect(server)
        good = post(server, xml_call("pool.get_all", session), conn=conn).xml()
        assert good["Status"] == "Success"
    finally:
        conn.close()


# --------------------------------------------------------------------------
# Exact Content-Type
# --------------------------------------------------------------------------


def test_content_type_is_exactly_text_xml(server, session):
    for body in (xml_call("pool.get_all", session), xml_call("pool.get_all", "OpaqueRef:bogus"),
                 xml_call("No.such_method")):
        for path in ("/", "/RPC2"):
            reply = post(server, body, path)
            assert reply.status == 200
            assert reply.content_types == ["text/xml"]
            reply.xml()


@pytest.mark.parametrize("v2", [True, False])
def test_content_type_is_exactly_application_json(server, session, v2):
    for params in ([session], ["OpaqueRef:bogus"]):
        reply = post(server, json_call("pool.get_all", params, "id-1", v2), "/jsonrpc", JSON)
        assert reply.status == 200
        assert reply.content_types == ["application/json"]
        doc = reply.json("id-1", v2)
        if params == [session]:
            assert error_of(doc, v2) is None
        else:
            assert error_of(doc, v2)[0] == "SESSION_INVALID"


# --------------------------------------------------------------------------
# Bodies over the RPC size limit
# --------------------------------------------------------------------------


def padded_call(kind: str, session: str, size: int) -> bytes:
    """A valid ``pool.get_all`` call of exactly ``size`` bytes (an ignored extra string arg)."""
    if kind == "xml":
        make = lambda pad: xml_call("pool.get_all", session, pad)  # noqa: E731
    else:
        make = lambda pad: json_call("pool.get_all", [session, pad])  # noqa: E731
    base = len(make(""))
    body = make("x" * (size - base))
    assert len(body) == size
    return body


@pytest.mark.parametrize("kind", ["xml", "json"])
@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_oversized_body_is_refused_and_server_keeps_serving(server, session, kind, chunked):
    path, ctype = ("/", XML) if kind == "xml" else ("/jsonrpc", JSON)
    watch = LogWatch(server)

    # Well under the limit: an ordinary call.
    ok = post(server, padded_call(kind, session, MAX_RPC_SIZE - 1024), path, ctype)
    result = ok.xml() if kind == "xml" else ok.json(1, True)
    assert error_of(result) is None

    body = padded_call(kind, session, MAX_RPC_SIZE + 1)
    conn = connect(server)
    try:
        if chunked:
            pieces = (body[i : i + 16384] for i in range(0, len(body), 16384))
            reply = post(server, pieces, path, ctype, conn=conn, encode_chunked=True)
        else:
            reply = post(server, body, path, ctype, conn=conn)
        assert 400 <= reply.status < 600, reply.status
        assert b"Traceback" not in reply.body
        # The same connection serves the next request, unless the server said it would close.
        if reply.will_close:
            conn.close()
            conn = connect(server)
        again = post(server, xml_call("pool.get_all", session), conn=conn).xml()
        assert again["Status"] == "Success"
    finally:
        conn.close()
    watch.assert_no_crash("an oversized body")
    assert_alive(server, session)


def test_much_larger_body_is_refused(server, session):
    body = padded_call("xml", session, 4 * 1024 * 1024)
    try:
        reply = post(server, body)
    except (ConnectionResetError, BrokenPipeError):
        pass  # the server may stop reading a body this far over the limit
    else:
        assert 400 <= reply.status < 600
    assert_alive(server, session)


# --------------------------------------------------------------------------
# Wrong parameter types: a XenAPI Failure, not a crash, nothing written
# --------------------------------------------------------------------------

TYPE_ERROR_CODES = {"INTERNAL_ERROR", "FIELD_TYPE_ERROR"}  # xapi: INTERNAL_ERROR [exn text]

# (method, args after the session); "VM" stands for the control domain's ref.
WRONG_TYPES = [
    ("VM.get_record", [{"a": "b"}]),  # struct where a ref is expected
    ("VM.get_record", [["OpaqueRef:x"]]),
    ("VM.get_record", [5]),
    ("VM.get_record", [None]),
    ("VM.get_by_uuid", [True]),
    ("VM.set_is_a_template", ["VM", "true"]),  # string where a bool is expected
    ("VM.set_is_a_template", ["VM", 1]),
    ("VM.set_is_a_template", ["VM", None]),
    ("VM.set_VCPUs_max", ["VM", "abc"]),
    ("VM.set_VCPUs_max", ["VM", "99999999999999999999999"]),  # beyond int64
    ("VM.set_VCPUs_max", ["VM", [2]]),
    ("VM.set_VCPUs_max", ["VM", 1.5]),
    ("VM.set_VCPUs_max", ["VM", True]),
    ("VM.set_HVM_shadow_multiplier", ["VM", "fast"]),
    ("VM.set_HVM_shadow_multiplier", ["VM", {"x": 1}]),
    ("VM.set_name_label", ["VM", {"a": "b"}]),
    ("VM.set_name_label", ["VM", 3]),
    ("VM.set_name_label", ["VM", None]),
    ("VM.set_other_config", ["VM", ["a", "b"]]),
    ("VM.set_other_config", ["VM", {"a": 1}]),
    ("VM.set_other_config", ["VM", "k=v"]),
    ("VM.add_to_other_config", ["VM", {"k": "v"}, "v"]),
    ("VM.set_tags", ["VM", "not-a-list"]),
    ("VM.set_tags", ["VM", [1, 2]]),
    ("VM.set_actions_after_crash", ["VM", "explode"]),
    ("VM.set_actions_after_crash", ["VM", 1]),
    ("message.get_since", ["not a date"]),
    ("message.get_since", ["0001-01-01T00:00:00+01:00"]),  # parses, then overflows converting to UTC
    ("message.get_since", [17]),
    ("network.create", ["not a struct"]),
    ("network.create", [["name_label", "x"]]),
]
JSON_ONLY_WRONG_TYPES = [
    ("VM.set_VCPUs_max", ["VM", 2**70]),  # a JSON number beyond int64
    ("VM.set_VCPUs_max", ["VM", -(2**64)]),
    ("VM.set_HVM_shadow_multiplier", ["VM", 10**400]),  # beyond the double range
]


def fill(args, refs):
    return [refs["VM"] if a == "VM" else a for a in args]


WRONG_TYPE_CASES = [
    pytest.param(transport, method, args, id=f"{transport}-{method}-{i}")
    for i, (method, args) in enumerate(WRONG_TYPES + JSON_ONLY_WRONG_TYPES)
    for transport in ("xml", "json-v1", "json-v2")
    if transport != "xml" or i < len(WRONG_TYPES)  # xmlrpc.client cannot send ints beyond 32 bits
]


@pytest.mark.parametrize("transport, method, args", WRONG_TYPE_CASES)
def test_wrong_param_types_are_a_xenapi_failure(server, session, refs, transport, method, args):
    before = call_json(server, "VM.get_record", [session, refs["VM"]])["result"]
    watch = LogWatch(server)
    args = [session, *fill(args, refs)]
    if transport == "xml":
        doc = call_xml(server, method, *args)
    else:
        doc = call_json(server, method, args, v2=transport == "json-v2")
    error = error_of(doc)
    assert error is not None, f"{method}{args!r} succeeded: {doc}"
    assert error[0] in TYPE_ERROR_CODES, error
    watch.assert_no_crash(f"{method}{args!r}")
    assert call_json(server, "VM.get_record", [session, refs["VM"]])["result"] == before
    assert_alive(server, session)


# --------------------------------------------------------------------------
# Unknown classes and methods
# --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["Foo.bar", "VM.frobnicate", "vm.get_all", "VM.get_all_", "VM..get_all",
                                  "Async.Foo.bar", "VM", ".", "get_all", "VM.get_all\u00e9"])
def test_unknown_method_is_message_method_unknown(server, session, name):
    watch = LogWatch(server)
    assert error_of(call_xml(server, name, session)) == ["MESSAGE_METHOD_UNKNOWN", name]
    assert error_of(call_xml(server, name)) == ["MESSAGE_METHOD_UNKNOWN", name]  # no params at all
    assert error_of(call_json(server, name, [session], v2=True)) == ["MESSAGE_METHOD_UNKNOWN", name]
    assert error_of(call_json(server, name, [session], v2=False)) == ["MESSAGE_METHOD_UNKNOWN", name]
    watch.assert_no_crash(name)
    assert_alive(server, session)


def test_unknown_method_with_a_bad_session_is_session_invalid(server, session):
    bogus = f"OpaqueRef:{uuid.uuid4()}"
    assert error_of(call_xml(server, "Foo.bar", bogus)) == ["SESSION_INVALID", bogus]
    assert error_of(call_json(server, "Foo.bar", [bogus])) == ["SESSION_INVALID", bogus]
    assert_alive(server, session)


# --------------------------------------------------------------------------
# Fuzz: random method names and params
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def method_names(server, session) -> list[str]:
    reply = post(server, xml_call("system.listMethods"))
    assert reply.status == 200 and reply.content_types == [XML]
    (names,), _ = xc.loads(reply.body)
    assert "VM.get_all" in names and "pool.get_all" in names
    return names


SESSIONLESS = {"session.login_with_password", "session.slave_login", "session.slave_local_login",
               "session.slave_local_login_with_password"}


def resolvable(name: str, names: set[str]) -> bool:
    """Would the dispatcher find a handler for this name (wire name, alias, Async. form)?"""
    if name.startswith("system.") or not name:
        return True
    for prefix in ("Async.", "InternalAsync."):
        if name.startswith(prefix):
            name = name[len(prefix):]
    aliases = {n.replace(".", "_", 1) for n in names}
    return name in names or name in aliases


name_chars = st.characters(codec="utf-8", exclude_characters="\r").filter(
    lambda c: c in "\t\n" or 0x20 <= ord(c) <= 0xD7FF or 0xE000 <= ord(c) <= 0xFFFD or ord(c) > 0xFFFF
)
random_names = st.one_of(
    st.text(alphabet=name_chars, min_size=1, max_size=30),
    st.builds(lambda a, b: f"{a}.{b}", st.text(alphabet="abcVMSRhostpoolnetwork_", min_size=1, max_size=8),
              st.text(alphabet="abcdefget_allrecord", min_size=1, max_size=12)),
)
safe_text = st.text(alphabet=name_chars, max_size=12)  # XML-safe: the call itself must parse
wire_leaves = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**31), 2**31 - 1), st.floats(allow_nan=False, allow_infinity=False),
    safe_text,
    st.sampled_from(["", "OpaqueRef:NULL", "true", "1", "-1", "20240101T00:00:00Z", "Halted", "nan",
                     "99999999999999999999"]),
)
wire_values = st.recursive(
    wire_leaves,
    lambda ch: st.one_of(st.lists(ch, max_size=3), st.dictionaries(safe_text, ch, max_size=3)),
    max_leaves=8,
)


INT_EDGES = [0, -1, 1, 2**31 - 1, -(2**31)]
INT_STRING_EDGES = ["0", "-1", " 5 ", "9223372036854775807", "9223372036854775808", "-9223372036854775809",
                    "99999999999999999999", "1e3", "0x10", "1_000", "", "abc"]
DATE_EDGES = ["20240101T00:00:00Z", "19700101T00:00:00Z", "2024-01-01T00:00:00+01:00", "0001-01-01T00:00:00+01:00",
              "9999-12-31T23:59:59-01:00", "20241301T00:00:00Z", "", "now"]


def typed_values(ty, refs: dict[str, str], depth: int = 0):
    """Values near the declared type of a parameter: right type, edge value, or junk."""
    kind = ty.kind
    if kind in ("string", "secretstring"):
        typed = st.one_of(safe_text, st.sampled_from(["", "OpaqueRef:NULL", "field \"name__label\" = \"x\"",
                                                      "true", "(", "\\", "%s%n"]))
    elif kind == "ref":
        typed = st.one_of(st.sampled_from(sorted(refs.values()) + ["OpaqueRef:NULL", "", "OpaqueRef:"]),
                          st.uuids().map(lambda u: f"OpaqueRef:{u}"), st.uuids().map(str))
    elif kind == "int":
        typed = st.one_of(st.sampled_from(INT_EDGES), st.integers(-(2**31), 2**31 - 1),
                          st.sampled_from(INT_STRING_EDGES))
    elif kind == "float":
        typed = st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.sampled_from(["nan", "inf", "-0", "1e400"]))
    elif kind == "bool":
        typed = st.booleans()
    elif kind == "datetime":
        typed = st.sampled_from(DATE_EDGES)
    elif kind == "enum":
        names = MODEL.enums.get(ty.name, [])
        typed = st.one_of(st.sampled_from(names or ["x"]).map(str.upper), st.sampled_from(names or ["x"]))
    elif kind in ("set", "map", "record", "option") and depth < 2:
        if kind == "set":
            typed = st.lists(typed_values(ty.elem, refs, depth + 1), max_size=3)
        elif kind == "map":
            keys = typed_values(ty.elem, refs, depth + 1).map(str)
            typed = st.dictionaries(keys, typed_values(ty.value, refs, depth + 1), max_size=3)
        elif kind == "option":
            typed = st.one_of(st.none(), typed_values(ty.elem, refs, depth + 1))
        else:
            typed = st.dictionaries(safe_text, wire_values, max_size=3)
    else:
        typed = wire_values
    return st.one_of(typed, typed, typed, wire_values)  # mostly typed, sometimes junk


def getter_groups(names) -> dict[tuple, dict[str, list[str]]]:
    """Read-only ``get_*`` wire names: signature kinds → message name → wire names."""
    groups: dict[tuple, dict[str, list[str]]] = {}
    for wire in sorted(names):
        message = MODEL.methods.get(wire)
        if message is None or not message.name.startswith("get_") or not message.session:
            continue
        kinds = tuple(p.type.kind for p in message.params)
        groups.setdefault(kinds, {}).setdefault(message.name, []).append(wire)
    return groups


EDGE_ARGS = {
    "string": ["", "(", ")", "\\", '"', "field", 'field "name__label" = "x"', 'field "nope" = "x"',
               'not (true and false) or field "uuid" = "u"', "%s%n", "OpaqueRef:NULL", "x" * 10000],
    "int": [0, -1, 2**31 - 1, "9223372036854775807", "9223372036854775808", "abc", "", 1.5, True],
    "bool": [True, False, "true", 1, None],
    "datetime": DATE_EDGES + [0, None],
    "ref": ["OpaqueRef:NULL", "", "OpaqueRef:", "garbage", None, 7, ["x"], {"a": "b"}],
}


def test_getters_with_edge_arguments(server, session, refs, method_names):
    """One call per (message, parameter, edge value) for every getter that takes more than a ref."""
    watch = LogWatch(server)
    before = snapshot(server, session)
    calls = 0
    for kinds, by_name in getter_groups(set(method_names)).items():
        if kinds in ((), ("ref",)):
            continue
        for name, wires in by_name.items():
            wire = next((w for w in wires if w.startswith("VM.")), wires[0])
            message = MODEL.methods[wire]
            valid = [refs.get(p.type.name, refs["VM"]) if p.type.kind == "ref" else
                     {"string": "x", "int": 1, "bool": True, "datetime": "20240101T00:00:00Z"}.get(p.type.kind, "")
                     for p in message.params]
            for i, param in enumerate(message.params):
                for edge in EDGE_ARGS.get(param.type.kind, []):
                    args = [session, *valid[:i], edge, *valid[i + 1:]]
                    for transport in ("xml", "json-v2"):
                        if transport == "xml" and isinstance(edge, int) and not -(2**31) <= edge < 2**31:
                            continue
                        reply, _ = send(server, transport, wire, args)
                        assert not reply.is_html_error(500), (wire, args, reply)
                        watch.assert_no_crash(f"{transport} {wire}{args!r}"[:300])
                        calls += 1
    assert calls > 100
    assert snapshot(server, session) == before
    assert_alive(server, session)


def mangle(name: str, how: int) -> str:
    cls, _, msg = name.partition(".")
    return [
        name,
        f"Async.{name}",
        f"{cls}_{msg}",
        name.swapcase(),
        name + "x",
        f"{cls}.{msg.upper()}",
        f"InternalAsync.{name}",
        f"Async.{cls}_{msg}",
    ][how]


def send(server, transport: str, method: str, params: list) -> tuple[Reply, list[str] | None]:
    """Post one call; returns the reply and the error (None on success or an HTML 500)."""
    if transport == "xml":
        reply = post(server, xml_call(method, *params))
        if reply.is_html_error(500):
            return reply, None
        return reply, error_of(reply.xml())
    v2 = transport == "json-v2"
    reply = post(server, json_call(method, params, "fz", v2), "/jsonrpc", JSON)
    if reply.is_html_error(500):
        return reply, None
    return reply, error_of(reply.json("fz", v2), v2)


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_fuzz_random_calls(server, session, refs, method_names, data):
    names = set(method_names)
    transport = data.draw(st.sampled_from(["xml", "json-v1", "json-v2"]), label="transport")
    extra = data.draw(st.lists(st.one_of(wire_values, st.sampled_from(sorted(refs.values()))), max_size=4),
                      label="params")
    kind = data.draw(st.sampled_from(["random", "real", "getter", "getter"]), label="kind")
    watch = LogWatch(server)
    before = snapshot(server, session) if kind != "random" or data.draw(st.booleans()) else None

    if kind == "random":
        # An unknown name with a valid session: MESSAGE_METHOD_UNKNOWN [name], nothing else.
        method = data.draw(random_names, label="method")
        params = [session, *extra]
        reply, error = send(server, transport, method, params)
        if not resolvable(method, names):
            assert not reply.is_html_error(500), (method, reply)
            assert error == ["MESSAGE_METHOD_UNKNOWN", method]
    elif kind == "real":
        # A real (possibly mangled) name with a bogus session slot: can never succeed.
        real = data.draw(st.sampled_from(sorted(n for n in names - SESSIONLESS if not n.startswith("system."))),
                         label="real")
        method = mangle(real, data.draw(st.integers(0, 7)))
        bogus = data.draw(st.one_of(st.just(f"OpaqueRef:{uuid.uuid4()}"), wire_values), label="session")
        params = [bogus, *extra]
        reply, error = send(server, transport, method, params)
        assert not reply.is_html_error(500), (method, reply)
        assert error is not None, f"{method}{params!r} succeeded with a bogus session"
    else:
        # Read-only messages with a valid session and random arguments: any well-formed reply.
        # Signature, then message name, then class: the rare signatures (string,
        # datetime, int args) come up as often as the thousand ``get_<field>(ref)``.
        groups = getter_groups(names)
        by_name = data.draw(st.sampled_from(sorted(groups)).map(groups.get), label="signature")
        wires = data.draw(st.sampled_from(sorted(by_name)).map(by_name.get), label="message")
        method = data.draw(st.sampled_from(wires), label="getter")
        message = MODEL.methods[method]
        typed = [data.draw(typed_values(p.type, refs), label=p.name) for p in message.params]
        cut = data.draw(st.integers(0, len(typed)), label="cut") if data.draw(st.booleans()) else len(typed)
        params = [session, *typed[:cut]] if message.session else typed[:cut]
        reply, error = send(server, transport, method, params)
        assert not reply.is_html_error(500), (method, reply)

    watch.assert_no_crash(f"{transport} {method}{params!r}")
    if before is not None:
        assert snapshot(server, session) == before, f"{method}{params!r} changed the database"
    assert call_xml(server, "pool.get_all", session)["Status"] == "Success"


@settings(max_examples=60, deadline=None)
@given(body=st.binary(max_size=200), path=st.sampled_from(["/", "/RPC2", "/jsonrpc"]))
def test_fuzz_random_bodies(server, session, body, path):
    watch = LogWatch(server)
    reply = post(server, body, path, JSON if path == "/jsonrpc" else XML)
    if not reply.is_html_error(500):
        # Only a body that happens to be a well-formed call can get here.
        if path == "/jsonrpc":
            doc = json.loads(body)
            reply.json(doc["id"], doc.get("jsonrpc") == "2.0")
        else:
            reply.xml()
    watch.assert_no_crash(repr(body))
    assert call_xml(server, "pool.get_all", session)["Status"] == "Success"
