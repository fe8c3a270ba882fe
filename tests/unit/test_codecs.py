"""Wire codecs: api.xmlrpc and api.jsonrpc request decoders and response encoders.

Encoders are checked against independent parsers (``xc.loads``,
``json.loads``, ElementTree) and an oracle written from the wire spec
(xenapi-protocol.md §1.2–1.4, real-clients.md §0); decoders are fuzzed: on any
input they return a call or raise ``api.xmlrpc.ProtocolError``, nothing else.
"""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
import xmlrpc.client as xc
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from api import jsonrpc, params, xmlrpc
from api.jsonrpc import JsonCall, RawJSON
from api.xmlrpc import I4, ProtocolError, RawXML
from xapi.idl.model import model as load_model
from xapi.idl.types import parse as T

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ROUND_TRIP = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --------------------------------------------------------------------------
# Oracles, written from the spec rather than from the code under test
# --------------------------------------------------------------------------


def xml_char_ok(c: str) -> bool:
    """XML 1.0 ``Char`` production."""
    o = ord(c)
    return c in "\t\n\r" or 0x20 <= o <= 0xD7FF or 0xE000 <= o <= 0xFFFD or o >= 0x10000


def xml_clean(text: str) -> str:
    return "".join(c for c in text if xml_char_ok(c))


def wire_datetime(value: datetime) -> str:
    """``YYYYMMDDThh:mm:ssZ`` in UTC; a naive value is taken as UTC."""
    if value.tzinfo is not None:
        value = value.replace(tzinfo=None) - value.utcoffset()
    return (
        f"{value.year:04d}{value.month:02d}{value.day:02d}"
        f"T{value.hour:02d}:{value.minute:02d}:{value.second:02d}Z"
    )


def xml_expected(value):
    """What a stdlib XML-RPC client reads back for a value our server sends."""
    t = type(value)
    if t is str:
        return xml_clean(value)
    if t is bool:
        return value
    if t is I4:
        return int(value)
    if t is int:
        return str(value)  # API ints travel untyped: clients see strings
    if t is float:
        return float(f"{value:.16g}") if math.isfinite(value) else 0.0
    if t in (list, tuple):
        return [xml_expected(v) for v in value]
    if t is dict:
        return {xml_clean(k if type(k) is str else str(k)): xml_expected(v) for k, v in value.items()}
    if t is datetime:
        return xc.DateTime(wire_datetime(value))
    if value is None:
        return None
    raise AssertionError(t)


def json_text(text: str) -> str:
    """A JSON reader joins an escaped surrogate pair back into one character."""
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "surrogatepass")


def json_expected(value):
    t = type(value)
    if t is str:
        return json_text(value)
    if t in (bool, int):
        return value
    if t is I4:
        return int(value)
    if t is float:
        return value if math.isfinite(value) else 0
    if t in (list, tuple):
        return [json_expected(v) for v in value]
    if t is dict:
        return {json_text(k if type(k) is str else str(k)): json_expected(v) for k, v in value.items()}
    if t is datetime:
        return wire_datetime(value)
    if value is None:
        return None
    raise AssertionError(t)


def parse_xml_value(fragment: str):
    """Read one ``<value>`` with the stdlib client parser."""
    doc = f"<methodResponse><params><param>{fragment}</param></params></methodResponse>"
    (value,), method = xc.loads(doc, use_datetime=False, use_builtin_types=False)
    assert method is None
    return value


def assert_compact(document: str) -> None:
    """No whitespace between elements anywhere (Xen Orchestra's parser needs this)."""
    root = ET.fromstring(document)
    assert not (root.tail or "")
    for element in root.iter():
        if len(element):
            assert not (element.text or ""), f"text before first child of <{element.tag}>"
            for child in element:
                assert not (child.tail or ""), f"text after <{child.tag}> in <{element.tag}>"
    assert "<i8>" not in document
    assert "<string>" not in document and "<string/>" not in document
    assert "<int>" not in document


def same(a, b) -> bool:
    """Deep equality that also checks types (so 1 != True != "1")."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    return a == b


# --------------------------------------------------------------------------
# Strategies
# --------------------------------------------------------------------------

NASTY = "\x00\x01\x08\x0b\x0c\x0e\x1f\x7f\t\n\r&<>\"']]>\ufffe\uffff\ud800\udfff\u2028é€𝄞"
any_char = st.one_of(st.characters(exclude_categories=()), st.sampled_from(NASTY))
texts = st.text(alphabet=any_char, max_size=20)
xml_safe_texts = st.text(alphabet=st.characters(codec="utf-8").filter(xml_char_ok), max_size=20)
int64s = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.sampled_from([0, -1, 2**31 - 1, 2**31, -(2**31) - 1, 2**32, 2**63 - 1, -(2**63)]),
)
ints = st.one_of(int64s, st.integers(-(10**30), 10**30))
i4s = st.integers(-(2**31), 2**31 - 1).map(I4)
floats = st.one_of(
    st.floats(), st.sampled_from([0.1, 0.1 + 0.2, 1e16, 1e-300, 5e-324, -0.0, 1.7976931348623157e308])
)
offsets = st.timedeltas(min_value=-timedelta(hours=23, minutes=59), max_value=timedelta(hours=23, minutes=59))
datetimes = st.datetimes(
    min_value=datetime(1000, 1, 2),
    max_value=datetime(9999, 12, 30),
    timezones=st.one_of(st.none(), st.just(timezone.utc), offsets.map(timezone)),
)
leaves = st.one_of(texts, ints, i4s, floats, st.booleans(), datetimes, st.none())
values = st.recursive(
    leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.tuples(children, children),
        st.dictionaries(st.one_of(texts, ints), children, max_size=4),
    ),
    max_leaves=25,
)


# --------------------------------------------------------------------------
# XML-RPC encoder
# --------------------------------------------------------------------------


@ROUND_TRIP
@given(values)
def test_xml_encoder_round_trips_through_stdlib_client(value):
    fragment = xmlrpc.encode(value)
    assert_compact(f"<r>{fragment}</r>")
    assert same(parse_xml_value(fragment), xml_expected(value))


@ROUND_TRIP
@given(values)
def test_xml_success_response_shape(value):
    body = xmlrpc.success(value)
    assert isinstance(body, bytes)
    assert_compact(body.decode())
    (result,), method = xc.loads(body, use_datetime=False, use_builtin_types=False)
    assert method is None
    assert list(result) == ["Status", "Value"]
    assert result["Status"] == "Success"
    assert same(result["Value"], xml_expected(value))


@given(st.lists(st.one_of(texts, ints, floats), min_size=1, max_size=5))
def test_xml_failure_response_is_all_strings(description):
    body = xmlrpc.failure(description)
    assert_compact(body.decode())
    (result,), _ = xc.loads(body)
    assert list(result) == ["Status", "ErrorDescription"]
    assert result["Status"] == "Failure"
    assert result["ErrorDescription"] == [xml_clean(str(x)) for x in description]
    assert all(type(x) is str for x in result["ErrorDescription"])


def test_xml_exact_wire_forms():
    assert xmlrpc.encode("") == "<value></value>"
    assert xmlrpc.encode("a<b>&\"c'") == "<value>a&lt;b&gt;&amp;&quot;c'</value>"
    assert xmlrpc.encode(42) == "<value>42</value>"
    assert xmlrpc.encode(2**63 - 1) == "<value>9223372036854775807</value>"
    assert xmlrpc.encode(-(2**63)) == "<value>-9223372036854775808</value>"
    assert xmlrpc.encode(I4(7)) == "<value><i4>7</i4></value>"
    assert xmlrpc.encode(True) == "<value><boolean>1</boolean></value>"
    assert xmlrpc.encode(False) == "<value><boolean>0</boolean></value>"
    assert xmlrpc.encode(1.5) == "<value><double>1.5</double></value>"
    assert xmlrpc.encode(0.1 + 0.2) == "<value><double>0.3</double></value>"  # %.16g, as xapi
    assert xmlrpc.encode(1e16) == "<value><double>1e+16</double></value>"
    assert xmlrpc.encode(float("nan")) == "<value><double>0</double></value>"
    assert xmlrpc.encode([]) == "<value><array><data></data></array></value>"
    assert xmlrpc.encode({}) == "<value><struct></struct></value>"
    assert xmlrpc.encode({"k": [1, "x"]}) == (
        "<value><struct><member><name>k</name><value><array><data>"
        "<value>1</value><value>x</value></data></array></value></member></struct></value>"
    )
    assert xmlrpc.encode({3: "v"}) == "<value><struct><member><name>3</name><value>v</value></member></struct></value>"
    assert xmlrpc.encode(datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc)) == (
        "<value><dateTime.iso8601>20240102T03:04:05Z</dateTime.iso8601></value>"
    )
    assert xmlrpc.encode(datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=2)))) == (
        "<value><dateTime.iso8601>20240102T01:04:05Z</dateTime.iso8601></value>"
    )
    assert xmlrpc.encode(None) == "<value><nil/></value>"
    assert xmlrpc.encode(RawXML("<value>raw</value>")) == "<value>raw</value>"


def test_xml_control_characters_dropped_but_tab_lf_cr_kept():
    fragment = xmlrpc.encode("a\x00b\x01\x08\x0b\x0c\x0e\x1fc\td\ne\rf\r\ng\ud800\ufffeh")
    assert parse_xml_value(fragment) == "abc\td\ne\rf\r\ngh"
    # A literal CR would be normalised to LF by every XML parser, so it must be a reference.
    assert "\r" not in fragment


def test_xml_responses_exact_bytes():
    assert xmlrpc.success("") == (
        b"<methodResponse><params><param><value><struct>"
        b"<member><name>Status</name><value>Success</value></member>"
        b"<member><name>Value</name><value></value></member>"
        b"</struct></value></param></params></methodResponse>"
    )
    assert xmlrpc.failure(["SESSION_INVALID", "OpaqueRef:x"]) == (
        b"<methodResponse><params><param><value><struct>"
        b"<member><name>Status</name><value>Failure</value></member>"
        b"<member><name>ErrorDescription</name><value><array><data>"
        b"<value>SESSION_INVALID</value><value>OpaqueRef:x</value>"
        b"</data></array></value></member></struct></value></param></params></methodResponse>"
    )
    assert xmlrpc.bare(["a", "b"]) == (
        b"<methodResponse><params><param><value><array><data>"
        b"<value>a</value><value>b</value></data></array></value></param></params></methodResponse>"
    )
    assert xc.loads(xmlrpc.bare(["a", "b"]))[0][0] == ["a", "b"]


@pytest.mark.parametrize("bad", [object(), b"bytes", {1, 2}, 1j])
def test_encoders_refuse_unknown_types(bad):
    with pytest.raises(TypeError):
        xmlrpc.encode(bad)
    with pytest.raises(TypeError):
        jsonrpc.encode(bad)


def test_datetime_year_below_1000_is_zero_padded():
    assert xmlrpc.encode(datetime(999, 1, 2)) == "<value><dateTime.iso8601>09990102T00:00:00Z</dateTime.iso8601></value>"
    assert jsonrpc.encode(datetime(5, 1, 2)) == '"00050102T00:00:00Z"'


# --------------------------------------------------------------------------
# XML-RPC encoder → our own decoder
# --------------------------------------------------------------------------


def as_call(method: str, fragments: list[str]) -> bytes:
    params = "".join(f"<param>{f}</param>" for f in fragments)
    return f"<methodCall><methodName>{method}</methodName><params>{params}</params></methodCall>".encode()


@ROUND_TRIP
@given(st.lists(values, max_size=4))
def test_xml_encoder_output_decodes_as_request(args):
    method, decoded = xmlrpc.decode_request(as_call("VM.get_all", [xmlrpc.encode(a) for a in args]))
    assert method == "VM.get_all"
    assert same(decoded, [xml_expected(a) for a in args])


# --------------------------------------------------------------------------
# XML-RPC decoder: what must be accepted
# --------------------------------------------------------------------------


def one_param(inner: str):
    method, decoded = xmlrpc.decode_request(as_call("m", [inner]))
    assert method == "m" and len(decoded) == 1
    return decoded[0]


@pytest.mark.parametrize(
    "inner, expected",
    [
        ("<value><i4>42</i4></value>", 42),
        ("<value><int>-7</int></value>", -7),
        ("<value><i8>42</i8></value>", 42),
        ("<value><i8>9223372036854775807</i8></value>", 2**63 - 1),
        ("<value><i8>-9223372036854775808</i8></value>", -(2**63)),
        ("<value><i8>4294967296</i8></value>", 2**32),
        ("<value>untyped text</value>", "untyped text"),
        ("<value>  keep spaces  </value>", "  keep spaces  "),
        ("<value>12345678901234567890</value>", "12345678901234567890"),
        ("<value><string>typed</string></value>", "typed"),
        ("<value><string></string></value>", ""),
        ("<value><string/></value>", ""),
        ("<value/>", ""),
        ("<value></value>", ""),
        ("<value>a&amp;b&lt;c&#13;d</value>", "a&b<c\rd"),
        ("<value><boolean>1</boolean></value>", True),
        ("<value><boolean>0</boolean></value>", False),
        ("<value><double>1.5</double></value>", 1.5),
        ("<value><double>-0</double></value>", -0.0),
        ("<value><nil/></value>", None),
        ("<value><array><data></data></array></value>", []),
        ("<value><array><data><value>a</value><value><i4>1</i4></value></data></array></value>", ["a", 1]),
        ("<value><struct></struct></value>", {}),
        (
            "<value><struct><member><name>k</name><value>v</value></member>"
            "<member><name>n</name><value><int>3</int></value></member></struct></value>",
            {"k": "v", "n": 3},
        ),
    ],
)
def test_xml_decoder_accepts(inner, expected):
    assert same(one_param(inner), expected)


def test_xml_decoder_datetime():
    value = one_param("<value><dateTime.iso8601>20240102T03:04:05Z</dateTime.iso8601></value>")
    assert isinstance(value, xc.DateTime)
    assert value.value == "20240102T03:04:05Z"
    model = load_model()
    assert params.coerce(model, T("datetime"), value) == datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


def test_xml_decoder_accepts_stdlib_client_bodies():
    """Exactly what the Python SDK sends: pretty-printed, ``<int>``, ``<nil/>`` sessions."""
    body = xc.dumps((None, "root", 2**31 - 1, True, 1.25, ["x"], {"k": "v"}),
                               "session.login_with_password", allow_none=True)
    assert "\n" in body  # whitespace between tags must be tolerated on input
    method, decoded = xmlrpc.decode_request(body.encode())
    assert method == "session.login_with_password"
    assert decoded == [None, "root", 2**31 - 1, True, 1.25, ["x"], {"k": "v"}]


def test_xml_decoder_without_params_and_with_declaration():
    assert xmlrpc.decode_request(b"<methodCall><methodName>pool.get_all</methodName></methodCall>") == ("pool.get_all", [])
    body = '<?xml version="1.0" encoding="ISO-8859-1"?><methodCall><methodName>m</methodName><params><param><value>caf\xe9</value></param></params></methodCall>'
    assert xmlrpc.decode_request(body.encode("latin-1")) == ("m", ["caf\xe9"])


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"   ",
        b"not xml at all",
        b"<methodCall>",
        b"<methodCall><methodName>x",
        b"<methodCall><params/></methodCall>",
        b"<methodCall><methodName></methodName></methodCall>",
        b"<methodCall><methodName>m</methodName><params><param><value><int>x</int></value></param></params></methodCall>",
        b"<methodCall><methodName>m</methodName><params><param><value><i8>1.5</i8></value></param></params></methodCall>",
        b"<methodCall><methodName>m</methodName><params><param><value><double>one</double></value></param></params></methodCall>",
        b"<methodCall><methodName>m</methodName><params><param><value><boolean>yes</boolean></value></param></params></methodCall>",
        b"<methodCall><methodName>m</methodName><params><param><value><bogus>1</bogus></value></param></params></methodCall>",
        b"<methodCall><methodName>m</methodName><params><param><value><struct><member><value>1</value></member></struct></value></param></params></methodCall>",
        b"<methodResponse><params><param><value>x</value></param></params></methodResponse>",
        b"<methodResponse><fault><value><struct><member><name>faultCode</name><value><int>1</int></value></member>"
        b"<member><name>faultString</name><value>x</value></member></struct></value></fault></methodResponse>",
        b"<methodCall><methodName>m</methodName></methodCall><trailing/>",
        b"<methodCall><methodName>m\x00</methodName></methodCall>",
        b"\xff\xfe\x00<",
        b'<?xml version="1.0" encoding="no-such-codec"?><methodCall><methodName>m</methodName></methodCall>',
        # billion laughs: expat's amplification limit must turn this into a parse error
        b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa">'
        + b"".join(
            b'<!ENTITY %s "%s">' % (bytes([c]), (b"&%s;" % bytes([c - 1])) * 10) for c in range(ord("b"), ord("i"))
        )
        + b"]><methodCall><methodName>m</methodName><params><param><value>&h;</value></param></params></methodCall>",
    ],
)
def test_xml_decoder_rejects_with_protocol_error(body):
    with pytest.raises(ProtocolError):
        xmlrpc.decode_request(body)


# --------------------------------------------------------------------------
# XML-RPC decoder fuzz: a call or ProtocolError, never anything else
# --------------------------------------------------------------------------


def check_xml_decoder(body: bytes) -> None:
    try:
        result = xmlrpc.decode_request(body)
    except ProtocolError:
        return
    method, decoded = result
    assert isinstance(method, str) and method
    assert isinstance(decoded, list)


TAGS = [
    "methodCall", "methodName", "params", "param", "value", "struct", "member", "name", "array",
    "data", "i4", "int", "i8", "boolean", "string", "double", "dateTime.iso8601", "base64",
    "nil", "fault", "methodResponse", "bogus",
]
TEXT_ATOMS = st.one_of(
    st.sampled_from([
        "", "0", "1", "-1", "2", "abc", "1.5", "nan", "inf", "1e999", "99999999999999999999999",
        "-9223372036854775809", "20240101T00:00:00Z", "not-a-date", "  ", "true", "QUJD", "!!!",
        "&amp;", "&#0;", "&#x1F;", "&#13;", "&bogus;", "&", "<", "]]>", "\x00", "\ufffe",
        "<![CDATA[x]]>", "<!-- c -->", "<?pi x?>",
    ]),
    xml_safe_texts.map(xmlrpc.escape),
)


def _element(tag: str, children: list[str], self_closing: bool) -> str:
    if self_closing and not children:
        return f"<{tag}/>"
    return f"<{tag}>{''.join(children)}</{tag}>"


xml_nodes = st.recursive(
    TEXT_ATOMS,
    lambda children: st.builds(
        _element, st.sampled_from(TAGS), st.lists(children, max_size=4), st.booleans()
    ),
    max_leaves=30,
)
xml_documents = st.one_of(
    st.builds(lambda kids: _element("methodCall", kids, False), st.lists(xml_nodes, max_size=4)),
    st.builds(
        lambda name, kids: _element(
            "methodCall", [f"<methodName>{name}</methodName>", _element("params", kids, False)], False
        ),
        TEXT_ATOMS,
        st.lists(st.builds(lambda v: _element("param", [v], False), xml_nodes), max_size=4),
    ),
    xml_nodes,
)


@FUZZ
@given(st.binary(max_size=300))
@example(b"<methodCall><methodName>m</methodName><params><param><value><i4>1</i4><i4>2</i4></value></param></params></methodCall>")
def test_xml_decoder_fuzz_bytes(body):
    check_xml_decoder(body)


@FUZZ
@given(xml_documents, st.sampled_from(["", '<?xml version="1.0"?>', '<?xml version="1.0" encoding="utf-16"?>',
                                       '<?xml version="1.0" encoding="latin-1"?>']), st.booleans())
def test_xml_decoder_fuzz_structured(document, declaration, truncate):
    body = (declaration + document).encode("utf-8", "surrogatepass")
    check_xml_decoder(body[: len(body) // 2] if truncate else body)


@FUZZ
@given(st.lists(values, max_size=3), st.data())
def test_xml_decoder_fuzz_mutated_valid_calls(args, data):
    body = bytearray(as_call("VM.get_all", [xmlrpc.encode(a) for a in args]))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(body)))
        op = data.draw(st.sampled_from(["delete", "insert", "replace"]))
        chunk = data.draw(st.sampled_from([b"<", b">", b"/", b"&", b"<value>", b"</value>", b"<i4>", b"\x00", b"\xff", b"x"]))
        if op == "delete":
            del body[i : i + data.draw(st.integers(1, 10))]
        elif op == "insert":
            body[i:i] = chunk
        else:
            body[i : i + len(chunk)] = chunk
    check_xml_decoder(bytes(body))


def test_xml_decoder_deep_nesting():
    depth = 20000
    inner = "<value><array><data>" * depth + "</data></array></value>" * depth
    check_xml_decoder(as_call("m", [inner]))


# --------------------------------------------------------------------------
# JSON-RPC encoder
# --------------------------------------------------------------------------


def strict_json(text):
    def no_constants(name):
        raise AssertionError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=no_constants)


@ROUND_TRIP
@given(values)
def test_json_encoder_round_trips(value):
    assert same(strict_json(jsonrpc.encode(value)), json_expected(value))


def test_json_exact_forms():
    assert jsonrpc.encode(2**63 - 1) == "9223372036854775807"
    assert jsonrpc.encode(float("inf")) == "0"
    assert jsonrpc.encode(datetime(2024, 1, 2, 3, 4, 5)) == '"20240102T03:04:05Z"'
    assert jsonrpc.encode(datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone(-timedelta(hours=5)))) == '"20240102T08:04:05Z"'
    assert jsonrpc.encode(RawJSON('{"a":1}')) == '{"a":1}'
    assert jsonrpc.encode(I4(3)) == "3"
    assert jsonrpc.encode((1, "a")) == '[1,"a"]'
    assert json.loads(jsonrpc.encode("\x00\ud800\r")) == "\x00\ud800\r"


ids = st.one_of(st.integers(-(2**53), 2**53), st.text(max_size=10), st.booleans(),
                st.floats(allow_nan=False, allow_infinity=False))


@ROUND_TRIP
@given(values, ids)
def test_json_v2_success_shape(value, req_id):
    doc = strict_json(jsonrpc.success(JsonCall("m", [], req_id, True), value))
    assert list(doc) == ["jsonrpc", "result", "id"]  # no "error" key at all
    assert doc["jsonrpc"] == "2.0"
    assert same(doc["result"], json_expected(value))
    assert same(doc["id"], req_id)


@ROUND_TRIP
@given(values, ids)
def test_json_v1_success_shape(value, req_id):
    doc = strict_json(jsonrpc.success(JsonCall("m", [], req_id, False), value))
    assert list(doc) == ["result", "error", "id"]
    assert doc["error"] is None
    assert same(doc["result"], json_expected(value))
    assert same(doc["id"], req_id)


@given(st.lists(st.one_of(texts, ints), min_size=1, max_size=5), ids)
def test_json_failure_shapes(description, req_id):
    strings = [str(x) for x in description]
    v1 = strict_json(jsonrpc.failure(JsonCall("m", [], req_id, False), description))
    assert list(v1) == ["result", "error", "id"]
    assert v1["result"] is None and v1["error"] == strings and same(v1["id"], req_id)
    v2 = strict_json(jsonrpc.failure(JsonCall("m", [], req_id, True), description))
    assert list(v2) == ["jsonrpc", "error", "id"]
    assert v2["jsonrpc"] == "2.0" and same(v2["id"], req_id)
    assert v2["error"] == {"code": 1, "message": strings[0], "data": strings[1:]}
    assert type(v2["error"]["code"]) is int


def test_json_exact_bytes():
    assert jsonrpc.success(JsonCall("m", [], 1, True), ["a"]) == b'{"jsonrpc":"2.0","result":["a"],"id":1}'
    assert jsonrpc.success(JsonCall("m", [], "x", False), "") == b'{"result":"","error":null,"id":"x"}'
    assert jsonrpc.failure(JsonCall("m", [], 1, True), ["E", "p"]) == (
        b'{"jsonrpc":"2.0","error":{"code":1,"message":"E","data":["p"]},"id":1}'
    )
    assert jsonrpc.failure(JsonCall("m", [], 1, False), ["E", "p"]) == b'{"result":null,"error":["E","p"],"id":1}'


# --------------------------------------------------------------------------
# JSON-RPC decoder
# --------------------------------------------------------------------------


def json_oracle(doc):
    """The documented rules (xenapi-protocol.md §1.4): JsonCall fields, or None = malformed."""
    if not isinstance(doc, dict):
        return None
    if "jsonrpc" in doc and not (type(doc["jsonrpc"]) is str and doc["jsonrpc"] == "2.0"):
        return None
    v2 = "jsonrpc" in doc
    method = doc.get("method")
    if not isinstance(method, str) or not method:
        return None
    if doc.get("id") is None or isinstance(doc["id"], (list, dict)):
        return None
    p = doc.get("params")
    if isinstance(p, list):
        call_params = p
    elif v2 and p is None:
        call_params = []
    elif v2 and isinstance(p, dict):
        call_params = [p]
    else:
        return None
    return method, call_params, doc["id"], v2


def decode_json_doc(doc):
    body = json.dumps(doc).encode()
    try:
        call = jsonrpc.decode_request(body)
    except ProtocolError:
        return None
    assert isinstance(call, JsonCall)
    return call.method, call.params, call.id, call.v2


@pytest.mark.parametrize(
    "doc, expected",
    [
        ({"method": "m", "params": ["s"], "id": 1}, ("m", ["s"], 1, False)),
        ({"method": "m", "params": [], "id": "abc"}, ("m", [], "abc", False)),
        ({"method": "m", "params": [], "id": 0}, ("m", [], 0, False)),
        ({"jsonrpc": "2.0", "method": "m", "params": ["s", 1], "id": 1}, ("m", ["s", 1], 1, True)),
        ({"jsonrpc": "2.0", "method": "m", "id": 1}, ("m", [], 1, True)),
        ({"jsonrpc": "2.0", "method": "m", "params": None, "id": 1}, ("m", [], 1, True)),
        ({"jsonrpc": "2.0", "method": "m", "params": {"a": 1}, "id": 1}, ("m", [{"a": 1}], 1, True)),
        # rejected
        ({"method": "m", "params": [], "id": None}, None),
        ({"method": "m", "params": []}, None),
        ({"jsonrpc": "2.0", "method": "m", "params": []}, None),
        ({"jsonrpc": "2.0", "method": "m", "params": [], "id": None}, None),
        ({"method": "m", "id": 1}, None),
        ({"method": "m", "params": None, "id": 1}, None),
        ({"method": "m", "params": {"a": 1}, "id": 1}, None),
        ({"method": "m", "params": "s", "id": 1}, None),
        ({"jsonrpc": "2.0", "method": "m", "params": "s", "id": 1}, None),
        ({"jsonrpc": "1.0", "method": "m", "params": [], "id": 1}, None),
        ({"jsonrpc": "2", "method": "m", "params": [], "id": 1}, None),
        ({"jsonrpc": 2.0, "method": "m", "params": [], "id": 1}, None),
        ({"jsonrpc": None, "method": "m", "params": [], "id": 1}, None),
        ({"params": [], "id": 1}, None),
        ({"method": "", "params": [], "id": 1}, None),
        ({"method": 5, "params": [], "id": 1}, None),
        ([{"method": "m", "params": [], "id": 1}], None),  # batches are not supported
        ("m", None),
        (None, None),
    ],
)
def test_json_decoder_rules(doc, expected):
    assert json_oracle(doc) == expected  # the oracle agrees with the documented examples
    assert decode_json_doc(doc) == expected


json_leaves = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False), st.text(max_size=8)
)
json_values = st.recursive(
    json_leaves,
    lambda ch: st.one_of(st.lists(ch, max_size=3), st.dictionaries(st.text(max_size=5), ch, max_size=3)),
    max_leaves=10,
)
json_docs = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "jsonrpc": st.one_of(st.sampled_from(["2.0", "1.0", "2", "2.0 ", None, 2.0, 2]), json_values),
            "method": st.one_of(st.sampled_from(["pool.get_all", "", "VM.start"]), json_values),
            "params": json_values,
            "id": json_values,
        },
    ),
    json_values,
)


@FUZZ
@given(json_docs)
def test_json_decoder_follows_rules(doc):
    assert decode_json_doc(doc) == json_oracle(doc)


def check_json_decoder(body: bytes) -> None:
    try:
        call = jsonrpc.decode_request(body)
    except ProtocolError:
        return
    assert isinstance(call, JsonCall)
    assert isinstance(call.method, str) and call.method
    assert isinstance(call.params, list)
    assert call.id is not None


@FUZZ
@given(st.binary(max_size=300))
@example(b"\xef\xbb\xbf{}")
@example(b'{"method":"m","params":[],"id":1e999}')
@example(b'{"method":"m","params":[NaN, Infinity],"id":1}')
@example(b'{"method":"\\ud800","params":[],"id":1}')
def test_json_decoder_fuzz_bytes(body):
    check_json_decoder(body)


@FUZZ
@given(json_docs, st.sampled_from(["utf-8", "utf-16", "utf-32", "latin-1"]), st.integers(0, 40))
def test_json_decoder_fuzz_encoded_and_truncated(doc, encoding, cut):
    text = json.dumps(doc, ensure_ascii=False)
    try:
        body = text.encode(encoding)
    except UnicodeEncodeError:
        body = text.encode("utf-8", "surrogatepass")
    check_json_decoder(body)
    check_json_decoder(body[: max(0, len(body) - cut)])


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{",
        b"[" * 100000 + b"]" * 100000,
        b'{"method":"m","params":' + b"[" * 100000 + b"]" * 100000 + b',"id":1}',
        b'{"method":"m","params":[' + b"9" * 5000 + b'],"id":1}',
        b'{"method":"m","params":[],"id":1}{"x":1}',
        b"\xff\xfe\xfd",
        b'{"method":"m","params":[],"id":[1]}',
        b'{"method":"m","params":[],"id":{"a":1}}',
    ],
)
def test_json_decoder_rejects_with_protocol_error(body):
    with pytest.raises(ProtocolError):
        jsonrpc.decode_request(body)


# --------------------------------------------------------------------------
# Parameter unmarshalling of decoded wire values (api.params)
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model():
    return load_model()


@pytest.mark.parametrize(
    "ty, value, expected",
    [
        ("int", "42", 42),
        ("int", 42, 42),
        ("int", " -7 ", -7),
        ("int", str(2**63 - 1), 2**63 - 1),
        ("int", -(2**63), -(2**63)),
        ("float", 1, 1.0),
        ("float", "2.5", 2.5),
        ("bool", True, True),
        ("datetime", "20240102T03:04:05Z", datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc)),
        ("datetime", "2024-01-02T03:04:05", datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc)),
        ("string set", ["a"], ["a"]),
        ("(string -> string) map", {"k": "v"}, {"k": "v"}),
    ],
)
def test_params_accept(model, ty, value, expected):
    assert same(params.coerce(model, T(ty), value), expected)


@pytest.mark.parametrize(
    "ty, value",
    [
        ("string", {"a": "b"}),
        ("string", None),
        ("string", 1),
        ("string", xc.Binary(b"x")),
        ("VM ref", ["x"]),
        ("bool", "true"),
        ("bool", "1"),
        ("bool", 1),
        ("int", "abc"),
        ("int", 1.5),
        ("int", True),
        ("int", [1]),
        ("int", 2**63),  # API ints are int64; larger values used to crash the DB layer
        ("int", str(-(2**63) - 1)),
        ("int", "9" * 30),
        ("float", 10**400),  # float(10**400) raises OverflowError
        ("float", "x"),
        ("float", True),
        ("datetime", "garbage"),
        ("datetime", "0001-01-01T00:00:00+01:00"),  # astimezone() overflows below year 1
        ("datetime", 5),
        ("string set", "a"),
        ("(string -> string) map", ["a"]),
        ("(string -> string) map", {"k": 1}),
    ],
)
def test_params_reject_with_param_type_error(model, ty, value):
    with pytest.raises(params.ParamTypeError):
        params.coerce(model, T(ty), value)


@FUZZ
@given(st.sampled_from(["string", "int", "float", "bool", "datetime", "string set",
                        "(string -> string) map", "(string -> int) map", "VM ref"]), json_values)
def test_params_fuzz_only_param_type_error(model, ty, value):
    try:
        params.coerce(model, T(ty), value)
    except params.ParamTypeError:
        pass


# --------------------------------------------------------------------------
# The fast request decoder agrees with the standard library's
# --------------------------------------------------------------------------

_wire_values = st.recursive(
    st.one_of(
        # What the stdlib encoder can write: no control characters, int32 only.
        st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), max_size=20),
        st.integers(min_value=-(2**31), max_value=2**31 - 1),
        st.booleans(),
        st.floats(allow_nan=False, allow_infinity=False),
        st.none(),
    ),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(
        st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), max_size=8),
        inner, max_size=4)),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyz._", min_size=1, max_size=20),
       st.lists(_wire_values, max_size=5))
def test_fast_decoder_matches_stdlib(method, params):
    import xmlrpc.client as stdlib

    for body in (
        stdlib.dumps(tuple(params), method, allow_none=True).encode(),
        ("<methodCall><methodName>%s</methodName><params>%s</params></methodCall>" % (
            method, "".join(f"<param>{xmlrpc.encode(p)}</param>" for p in params))).encode(),
    ):
        expected_params, expected_method = stdlib.loads(body, use_datetime=False)
        assert xmlrpc._fast_decode(body) == (expected_method, list(expected_params))
        assert xmlrpc.decode_request(body) == (expected_method, list(expected_params))
