"""Tests for xapi.where: xapi's get_all_records_where filter language."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

import pytest

from xapi.idl.types import parse as T
from xapi.where import (
    LEX_ERROR_REASON,
    PARSE_ERROR_REASON,
    And,
    Const,
    Eq,
    Field,
    Literal,
    Not,
    Or,
    WhereFieldError,
    WhereSyntaxError,
    column_to_field,
    db_string,
    parse,
)


def row(**columns):
    """A getter over a dict of DB strings; None for absent columns."""
    return columns.get


class CountingRow:
    def __init__(self, **columns):
        self.columns = columns
        self.looked_up: list[str] = []

    def __call__(self, column):
        self.looked_up.append(column)
        return self.columns.get(column)


A = Eq(Field("a"), Literal("1"))
B = Eq(Field("b"), Literal("1"))
C = Eq(Field("c"), Literal("1"))


# --- parsing: shapes ------------------------------------------------------


def test_field_equals_literal():
    assert parse('field "name__label"="foo"') == Eq(Field("name__label"), Literal("foo"))


def test_literal_on_either_side_and_field_on_both():
    assert parse('"foo" = field "name__label"') == Eq(Literal("foo"), Field("name__label"))
    assert parse('field "a" = field "b"') == Eq(Field("a"), Field("b"))
    assert parse('"x" = "y"') == Eq(Literal("x"), Literal("y"))


def test_true_false_and_parentheses():
    assert parse("true") == Const(True)
    assert parse("false") == Const(False)
    assert parse("((true))") == Const(True)
    assert parse('(field "a"="1")') == A


def test_real_usage_template_filter():
    e = parse('field "is_a_template"="false" and field "is_control_domain"="false"')
    assert e == And(
        Eq(Field("is_a_template"), Literal("false")),
        Eq(Field("is_control_domain"), Literal("false")),
    )


def test_real_usage_not_running():
    assert parse('not (field "power_state" = "Running")') == Not(
        Eq(Field("power_state"), Literal("Running"))
    )


# --- precedence (db_filter_parse.mly: %right LNOT, then %left LAND LOR) ----


def test_and_or_same_precedence_left_associative():
    a, b, c = 'field "a"="1"', 'field "b"="1"', 'field "c"="1"'
    assert parse(f"{a} or {b} and {c}") == And(Or(A, B), C)
    assert parse(f"{a} and {b} or {c}") == Or(And(A, B), C)
    assert parse(f"{a} and {b} and {c}") == And(And(A, B), C)
    assert parse(f"{a} or {b} or {c}") == Or(Or(A, B), C)


def test_not_binds_loosest_and_extends_to_the_right():
    a, b, c = 'field "a"="1"', 'field "b"="1"', 'field "c"="1"'
    assert parse(f"not {a} and {b}") == Not(And(A, B))
    assert parse(f"not {a} or {b} and {c}") == Not(And(Or(A, B), C))
    assert parse(f"{a} and not {b} or {c}") == And(A, Not(Or(B, C)))
    assert parse(f"(not {a}) and {b}") == And(Not(A), B)
    assert parse(f"not not {a}") == Not(Not(A))
    assert parse(f"(not {a} or {b}) and {c}") == And(Not(Or(A, B)), C)


def test_not_precedence_changes_results():
    # not (a and b), not (not a) and b
    e = parse('not field "a"="1" and field "b"="1"')
    assert e.evaluate(row(a="1", b="0")) is True
    assert e.evaluate(row(a="0", b="0")) is True
    assert e.evaluate(row(a="1", b="1")) is False


def test_or_and_left_to_right_results():
    # (a or b) and c: with a true and c false the whole is false
    e = parse('field "a"="1" or field "b"="1" and field "c"="1"')
    assert e.evaluate(row(a="1", b="0", c="0")) is False
    assert e.evaluate(row(a="0", b="1", c="1")) is True


# --- lexing ---------------------------------------------------------------


def test_whitespace_is_space_tab_newline_and_optional():
    assert parse('\n\tfield\t"a"\n=\n"1"  ') == A
    assert parse('field"a"="1"') == A


def test_keywords_need_no_separator():
    assert parse("trueandfalse") == And(Const(True), Const(False))
    assert parse('notfield"a"="1"orfalse') == Not(Or(A, Const(False)))


def test_strings_are_verbatim_without_escapes():
    assert parse(r'field "a" = "x\y"') == Eq(Field("a"), Literal("x\\y"))
    assert parse(r'field "a" = "x\"') == Eq(Field("a"), Literal("x\\"))
    assert parse('field "a" = "two\nlines"') == Eq(Field("a"), Literal("two\nlines"))
    assert parse("field \"a\" = \"it's ( and ) or = true\"") == Eq(
        Field("a"), Literal("it's ( and ) or = true")
    )
    assert parse('field "a" = ""') == Eq(Field("a"), Literal(""))
    assert parse('field "a" = "día ☃"') == Eq(Field("a"), Literal("día ☃"))


def test_backslash_does_not_escape_a_quote():
    # "x\" is a complete string, so the trailing " starts an unterminated one
    with pytest.raises(WhereSyntaxError) as ei:
        parse(r'field "a" = "x\"y"')
    assert ei.value.reason == LEX_ERROR_REASON


# --- syntax errors --------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        'field "a" = "1',  # unterminated string
        "field 'a' = '1'",  # single quotes
        'field "a" == "1"',
        'field "a" = "1" && true',
        "TRUE",
        "tru",
        'field "a" = "1"\r',
        'field "a" != "1"',
        "fields",
    ],
)
def test_syntax_errors(text):
    with pytest.raises(WhereSyntaxError) as ei:
        parse(text)
    err = ei.value
    assert isinstance(err, ValueError)
    assert err.expr == text
    assert err.reason in (LEX_ERROR_REASON, PARSE_ERROR_REASON)
    assert err.xapi_error == ("INVALID_VALUE", [text, err.reason])
    assert str(err)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        'field "a"',
        'field "a" =',
        '= "a"',
        'field "a" == "1"',
        'field = "1"',
        'field field "a" = "1"',
        'field "a" = "1" and',
        'field "a" = "1" field "b" = "1"',
        "(true",
        "true)",
        "()",
        "not",
        "true false",
        "and true",
        '"a"',
        'true = "a"',
        'not "a"',
    ],
)
def test_grammar_errors(text):
    with pytest.raises(WhereSyntaxError) as ei:
        parse(text)
    assert ei.value.reason == PARSE_ERROR_REASON


@pytest.mark.parametrize(
    "text",
    ['field "a" = "1', "TRUE", "tru", "True", "$", 'field "a" = "1"\r', "field 'a' = '1'", "true $"],
)
def test_lexing_errors(text):
    with pytest.raises(WhereSyntaxError) as ei:
        parse(text)
    assert ei.value.reason == LEX_ERROR_REASON


def test_first_error_in_reading_order_wins():
    # xapi's parser pulls tokens lazily: a grammar error before the bad
    # character is reported as a parse error, not a lexing error.
    with pytest.raises(WhereSyntaxError) as ei:
        parse("true true $")
    assert ei.value.reason == PARSE_ERROR_REASON
    with pytest.raises(WhereSyntaxError) as ei:
        parse("true $ true")
    assert ei.value.reason == LEX_ERROR_REASON


def test_error_position_and_message():
    with pytest.raises(WhereSyntaxError) as ei:
        parse('field "a" = "1" or or true')
    assert ei.value.position == 19
    assert "'or'" in str(ei.value)
    with pytest.raises(WhereSyntaxError) as ei:
        parse('field "a" = "1')
    assert ei.value.position == 12
    assert "unterminated" in str(ei.value)


def test_non_string_rejected():
    with pytest.raises(TypeError):
        parse(None)  # type: ignore[arg-type]


# --- evaluation -----------------------------------------------------------


def test_evaluate_template_filter():
    e = parse('field "is_a_template"="false" and field "is_control_domain"="false"')
    assert e.evaluate(row(is_a_template="false", is_control_domain="false")) is True
    assert e.evaluate(row(is_a_template="true", is_control_domain="false")) is False
    assert e.evaluate(row(is_a_template="false", is_control_domain="true")) is False


def test_comparison_is_exact_string_equality():
    e = parse('field "name__label"="foo"')
    assert e.evaluate(row(name__label="foo")) is True
    assert e.evaluate(row(name__label="Foo")) is False
    assert e.evaluate(row(name__label="foo ")) is False
    # numbers are compared as strings too
    e = parse('field "memory__static_max" = "1073741824"')
    assert e.evaluate(row(memory__static_max="1073741824")) is True
    assert e.evaluate(row(memory__static_max="01073741824")) is False


def test_literal_first_and_field_to_field():
    assert parse('"Running" = field "power_state"').evaluate(row(power_state="Running"))
    e = parse('field "a" = field "b"')
    assert e.evaluate(row(a="x", b="x")) is True
    assert e.evaluate(row(a="x", b="y")) is False


def test_constants_and_literal_comparisons():
    assert parse("true").evaluate(row()) is True
    assert parse("false").evaluate(row()) is False
    assert parse('"a" = "a"').evaluate(row()) is True
    assert parse('"a" = "b"').evaluate(row()) is False
    assert parse("not false and true").evaluate(row()) is True
    assert parse("not (false or true)").evaluate(row()) is False


@pytest.mark.parametrize("a", ["1", "0"])
def test_constants_mixed_with_fields(a):
    r = row(a=a)
    hit = a == "1"
    assert parse('field "a"="1" and true').evaluate(r) is hit
    assert parse('true and field "a"="1"').evaluate(r) is hit
    assert parse('field "a"="1" or false').evaluate(r) is hit
    assert parse('false or field "a"="1"').evaluate(r) is hit
    assert parse('field "a"="1" and false').evaluate(r) is False
    assert parse('field "a"="1" or true').evaluate(r) is True
    assert parse('not field "a"="1" and true').evaluate(r) is (not hit)
    assert parse('("x" = "x") and field "a"="1"').evaluate(r) is hit


def test_not_running():
    e = parse('not (field "power_state" = "Running")')
    assert e.evaluate(row(power_state="Halted")) is True
    assert e.evaluate(row(power_state="Running")) is False


def test_missing_column_raises_like_xapi():
    e = parse('field "name_label" = "foo"')
    with pytest.raises(WhereFieldError) as ei:
        e.evaluate(row(name__label="foo"))
    assert ei.value.column == "name_label"
    assert ei.value.xapi_error == ("INTERNAL_ERROR", ["missing field", "name_label", ""])


def test_missing_column_only_raises_when_reached():
    assert parse('false and field "nope" = "x"').evaluate(row()) is False
    assert parse('true or field "nope" = "x"').evaluate(row()) is True
    assert parse('field "a"="1" or field "nope"="x"').evaluate(row(a="1")) is True
    with pytest.raises(WhereFieldError):
        parse('field "nope" = "x" and false').evaluate(row())
    with pytest.raises(WhereFieldError):
        parse('field "nope" = "x" or true').evaluate(row())
    with pytest.raises(WhereFieldError):
        parse('not (field "nope" = "x")').evaluate(row())


def test_lookup_order_matches_xapi():
    r = CountingRow(a="1", b="2", c="1")
    assert parse('field "a"="1" and field "b"="1" and field "c"="1"').evaluate(r) is False
    assert r.looked_up == ["a", "b"]
    # field = field: xapi (OCaml argument order) looks up the right side first
    r = CountingRow()
    with pytest.raises(WhereFieldError) as ei:
        parse('field "x" = field "y"').evaluate(r)
    assert ei.value.column == "y"
    assert r.looked_up == ["y"]


def test_parse_once_evaluate_many():
    e = parse('field "power_state"="Running" and not field "is_control_domain"="true"')
    rows = [
        {"power_state": ["Running", "Halted"][i % 2], "is_control_domain": ["true", "false"][i % 3 == 0]}
        for i in range(10_000)
    ]
    matched = [i for i, r in enumerate(rows) if e.evaluate(r.get)]
    assert matched == [i for i in range(10_000) if i % 2 == 0 and i % 3 == 0]
    pred = e.compile()
    assert pred is e.compile()
    assert sum(pred(r.get) for r in rows) == len(matched)


def test_columns():
    e = parse('field "a"="1" and ("x" = field "b" or field "a" = field "c") and true')
    assert e.columns() == ("a", "b", "c")
    assert parse("true").columns() == ()


def test_str_round_trips():
    for text in [
        'not field "a"="1" or field "b"="1" and field "c"="1"',
        'field "a" = field "b" and "x" = "y" or not (true or false)',
        'field "a" = "x\\y\nz"',
    ]:
        e = parse(text)
        assert parse(str(e)) == e
    with pytest.raises(ValueError):
        str(Eq(Field("a"), Literal('has "quote"')))


# --- column names ---------------------------------------------------------


@pytest.mark.parametrize(
    "column, field",
    [
        ("name__label", "name_label"),
        ("name__description", "name_description"),
        ("memory__static_max", "memory_static_max"),
        ("VCPUs__at_startup", "VCPUs_at_startup"),
        ("API_version__major", "API_version_major"),
        ("power_state", "power_state"),
        ("is_a_template", "is_a_template"),
        ("_ref", "_ref"),
    ],
)
def test_column_to_field(column, field):
    assert column_to_field(column) == field


# --- DB string forms ------------------------------------------------------


def test_db_string_scalars():
    assert db_string(T("string"), "foo bar") == "foo bar"
    assert db_string(T("string"), "") == ""
    assert db_string(T("secretstring"), "s3cret") == "s3cret"
    assert db_string(T("bool"), True) == "true"
    assert db_string(T("bool"), False) == "false"
    assert db_string(T("int"), 1073741824) == "1073741824"
    assert db_string(T("int"), -5) == "-5"
    assert db_string(T("int"), 9223372036854775807) == "9223372036854775807"
    assert db_string(T("enum vm_power_state"), "Halted") == "Halted"
    assert db_string(T("enum on_normal_exit"), "destroy") == "destroy"
    ref = "OpaqueRef:3f1c7d54-34c4-4b7f-9d0c-7e4b0f0c1d2e"
    assert db_string(T("host ref"), ref) == ref
    assert db_string(T("host ref"), "OpaqueRef:NULL") == "OpaqueRef:NULL"
    assert db_string(T("host ref"), None) == "OpaqueRef:NULL"


@pytest.mark.parametrize(
    "value, text",
    [
        (0.0, "0"),
        (-0.0, "-0"),
        (1.0, "1"),
        (1.5, "1.5"),
        (0.1, "0.100000000000000006"),
        (1e20, "1e+20"),
        (1e25, "1.00000000000000009e+25"),
        (123456789.123456789, "123456789.123456791"),
        (1e-5, "1.00000000000000008e-05"),
        (0.0001, "0.000100000000000000005"),
        (2.0**63, "9.22337203685477581e+18"),
        (math.inf, "inf"),
        (-math.inf, "-inf"),
        (math.nan, "nan"),
        (3, "3"),
    ],
)
def test_db_string_float(value, text):
    # Printf.sprintf "%0.18g" (gen_db_actions.ml), checked against OCaml
    assert db_string(T("float"), value) == text


def test_db_string_datetime():
    dt = T("datetime")
    assert db_string(dt, datetime(2024, 3, 5, 7, 8, 9, tzinfo=timezone.utc)) == "20240305T07:08:09Z"
    assert db_string(dt, datetime(1970, 1, 1, tzinfo=timezone.utc)) == "19700101T00:00:00Z"
    # fractions of a second are dropped
    assert db_string(dt, datetime(2024, 3, 5, 7, 8, 9, 999999, tzinfo=timezone.utc)) == "20240305T07:08:09Z"
    # a non-UTC zone is kept, as Date.to_rfc3339 does
    plus_one = timezone(timedelta(hours=1))
    assert db_string(dt, datetime(2024, 3, 5, 8, 8, 9, tzinfo=plus_one)) == "20240305T08:08:09+01:00"
    minus = timezone(-timedelta(hours=5, minutes=30))
    assert db_string(dt, datetime(2024, 3, 5, 1, 2, 3, tzinfo=minus)) == "20240305T01:02:03-05:30"
    # strings are normalised the way xapi stores them
    assert db_string(dt, "20240305T07:08:09Z") == "20240305T07:08:09Z"
    assert db_string(dt, "2024-03-05T07:08:09Z") == "20240305T07:08:09Z"
    assert db_string(dt, "2024-03-05T07:08:09") == "20240305T07:08:09Z"


def test_db_string_sets():
    assert db_string(T("string set"), []) == "()"
    assert db_string(T("string set"), ["a"]) == "('a')"
    assert db_string(T("string set"), ["a", "b c", ""]) == "('a' 'b c' '')"
    assert db_string(T("enum vm_operations set"), ["start", "clean_shutdown"]) == "('start' 'clean_shutdown')"
    assert db_string(T("VBD ref set"), ["OpaqueRef:1", "OpaqueRef:2"]) == "('OpaqueRef:1' 'OpaqueRef:2')"
    assert db_string(T("int set"), [1, -2]) == "('1' '-2')"


def test_db_string_escapes_quote_and_backslash():
    # SExpr.string_of: ' and \ are backslash-escaped, nothing else is
    assert db_string(T("string set"), ["it's", "back\\slash", 'dq"']) == r"""('it\'s' 'back\\slash' 'dq"')"""


def test_db_string_truncates_xml_illegal_characters():
    # String_marshall_helper.ensure_utf8_xml keeps the longest legal prefix
    assert db_string(T("string set"), ["ok\x01gone", "tab\tnl\ncr\r"]) == "('ok' 'tab\tnl\ncr\r')"


def test_db_string_maps():
    m = T("(string -> string) map")
    assert db_string(m, {}) == "()"
    assert db_string(m, {"k": "v"}) == "(('k' 'v'))"
    assert db_string(m, {"k": "v", "a'b": "c\\d", "e": ""}) == r"(('k' 'v') ('a\'b' 'c\\d') ('e' ''))"
    assert db_string(T("(int -> float) map"), {0: 0.5, 1: 1.0}) == "(('0' '0.5') ('1' '1'))"
    assert (
        db_string(T("(enum vm_operations -> string) map"), {"start": "OpaqueRef:t"})
        == "(('start' 'OpaqueRef:t'))"
    )
    with pytest.raises(ValueError):
        db_string(m, {"": "v"})


def test_db_string_nested_set_in_map_is_quoted_as_one_atom():
    assert db_string(T("(string -> string set) map"), {"k": ["a", "b"]}) == r"(('k' '(\'a\' \'b\')'))"


def test_db_string_ref_option_is_a_set():
    assert db_string(T("VM ref option"), None) == "()"
    assert db_string(T("VM ref option"), "OpaqueRef:x") == "('OpaqueRef:x')"


def test_db_string_feeds_evaluate():
    types = {"is_a_template": T("bool"), "memory__static_max": T("int"), "tags": T("string set")}
    record = {"is_a_template": False, "memory_static_max": 2**30, "tags": ["web"]}

    def get(column):
        ty = types.get(column)
        return None if ty is None else db_string(ty, record[column_to_field(column)])

    assert parse('field "is_a_template"="false" and field "memory__static_max"="1073741824"').evaluate(get)
    assert parse("field \"tags\" = \"('web')\"").evaluate(get)
    assert not parse('field "tags" = "web"').evaluate(get)
