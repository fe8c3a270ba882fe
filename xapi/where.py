"""xapi's filter language for ``<Class>.get_all_records_where`` / ``get_all_where``.

The language (xapi: ``ocaml/database/db_filter_lex.mll``, ``db_filter_parse.mly``,
``db_filter_types.ml``, ``db_filter.ml``) in brief::

    expr  := value "=" value
           | expr "and" expr | expr "or" expr | "not" expr
           | "true" | "false" | "(" expr ")"
    value := STRING                      a literal
           | "field" STRING              the DB column of that name

Lexing:

* whitespace is only space, tab and newline (``\\r`` is an error);
* a string is ``"`` followed by any characters other than ``"`` (newlines and
  backslashes included, taken verbatim) and a closing ``"``.  There are **no
  escapes**: a literal can never contain ``"``;
* keywords are lower case, and since there are no bare identifiers a keyword
  needs no separator: ``trueandfalse`` is ``true and false``;
* anything else (including an unterminated string) is a lexing error.

Precedence (ocamlyacc lists precedence lowest first: ``%right LNOT`` then
``%left LAND LOR``):

* ``and`` and ``or`` have the *same* precedence and associate to the left:
  ``a or b and c`` is ``(a or b) and c``;
* ``not`` binds *looser* than both, so it takes everything to its right up to
  the enclosing ``)`` or the end: ``not a and b`` is ``not (a and b)`` and
  ``a and not b or c`` is ``a and not (b or c)``.

Evaluation (``Db_filter.eval_expr`` and ``Db_cache_impl.find_refs_with_filter``):
``=`` compares two strings exactly; a literal is itself and ``field "c"`` is the
DB string form of column ``c`` (see :func:`db_string`).  ``and``/``or`` short
circuit left to right.  Looking up a column that does not exist raises (xapi:
``DBCache_NotFound ("missing field", c, "")``, surfacing as ``INTERNAL_ERROR``)
but only when evaluation actually reaches it: ``false and field "nope"="x"``
is simply false.  When both sides of ``=`` are fields, xapi evaluates the right
one first (OCaml's argument order), which decides which missing column is
reported; this module does the same.

A parse failure is reported by xapi as ``INVALID_VALUE [expr; reason]`` with
``reason`` being ``Failure("lexing: empty token")`` for a lexing error and
``Stdlib.Parsing.Parse_error`` for a grammar error; :class:`WhereSyntaxError`
carries that reason (and a friendlier message).  The lexer is driven lazily by
the parser, as in xapi, so whichever error comes first in reading order wins.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterator

__all__ = [
    "WhereSyntaxError",
    "WhereFieldError",
    "Expr",
    "Eq",
    "And",
    "Or",
    "Not",
    "Const",
    "Field",
    "Literal",
    "parse",
    "db_string",
    "column_to_field",
    "LEX_ERROR_REASON",
    "PARSE_ERROR_REASON",
]

Getter = Callable[[str], "str | None"]

# Printexc.to_string of the exceptions xapi's parser raises.
LEX_ERROR_REASON = 'Failure("lexing: empty token")'
PARSE_ERROR_REASON = "Stdlib.Parsing.Parse_error"

NULL_REF = "OpaqueRef:NULL"


# ---------------------------------------------------------------------------
# Errors


class WhereSyntaxError(ValueError):
    """The expression does not lex or parse.

    ``expr`` is the whole expression, ``position`` the 0-based offset of the
    offending character or token (``len(expr)`` at end of input), and
    ``reason`` the string xapi puts in ``INVALID_VALUE [expr; reason]``.
    """

    def __init__(self, message: str, expr: str, position: int, reason: str):
        super().__init__(message)
        self.expr = expr
        self.position = position
        self.reason = reason

    @property
    def xapi_error(self) -> tuple[str, list[str]]:
        """``(code, params)`` of the error xapi reports for this expression."""
        return "INVALID_VALUE", [self.expr, self.reason]


class WhereFieldError(LookupError):
    """Evaluation reached ``field "<column>"`` for a column the row lacks."""

    def __init__(self, column: str):
        super().__init__(f"missing field: {column!r}")
        self.column = column

    @property
    def xapi_error(self) -> tuple[str, list[str]]:
        """``(code, params)`` of the error xapi reports (exnHelper.ml)."""
        return "INTERNAL_ERROR", ["missing field", self.column, ""]


# ---------------------------------------------------------------------------
# Syntax tree


@dataclass(frozen=True, slots=True)
class Field:
    """``field "name"``: the DB string form of column ``name``."""

    name: str

    def __str__(self) -> str:
        return f"field {_quote(self.name)}"


@dataclass(frozen=True, slots=True)
class Literal:
    """``"value"``: a constant string."""

    value: str

    def __str__(self) -> str:
        return _quote(self.value)


Value = Field | Literal


def _quote(s: str) -> str:
    if '"' in s:
        raise ValueError(f"xapi filter strings cannot contain '\"': {s!r}")
    return f'"{s}"'


class Expr:
    """A parsed filter.  Build with :func:`parse`; evaluate as often as needed.

    ``str(expr)`` is an equivalent, fully parenthesised expression.
    """

    __slots__ = ()

    def evaluate(self, get: Getter) -> bool:
        """Whether the row whose columns ``get`` returns matches.

        ``get(column)`` returns the column's DB string form, or ``None`` if the
        row has no such column, in which case :class:`WhereFieldError` is
        raised (as xapi does) -- but only if evaluation gets that far.
        """
        return self.compile()(get)

    __call__ = evaluate

    def compile(self) -> Callable[[Getter], bool]:
        """The predicate as a plain function of ``get`` (cached)."""
        fn = self._fn  # type: ignore[attr-defined]
        if fn is None:
            fn = _compile(self)[0]
            object.__setattr__(self, "_fn", fn)
        return fn

    def columns(self) -> tuple[str, ...]:
        """Every column named by ``field "..."``, in order of first appearance."""
        seen: dict[str, None] = {}
        _collect(self, seen)
        return tuple(seen)


@dataclass(frozen=True, slots=True)
class Const(Expr):
    """``true`` or ``false``."""

    value: bool
    _fn: Any = field(default=None, init=False, repr=False, compare=False)

    def __str__(self) -> str:
        return "true" if self.value else "false"


@dataclass(frozen=True, slots=True)
class Eq(Expr):
    left: Value
    right: Value
    _fn: Any = field(default=None, init=False, repr=False, compare=False)

    def __str__(self) -> str:
        return f"{self.left} = {self.right}"


@dataclass(frozen=True, slots=True)
class Not(Expr):
    expr: Expr
    _fn: Any = field(default=None, init=False, repr=False, compare=False)

    def __str__(self) -> str:
        return f"not ({self.expr})"


@dataclass(frozen=True, slots=True)
class And(Expr):
    left: Expr
    right: Expr
    _fn: Any = field(default=None, init=False, repr=False, compare=False)

    def __str__(self) -> str:
        return f"({self.left}) and ({self.right})"


@dataclass(frozen=True, slots=True)
class Or(Expr):
    left: Expr
    right: Expr
    _fn: Any = field(default=None, init=False, repr=False, compare=False)

    def __str__(self) -> str:
        return f"({self.left}) or ({self.right})"


def _collect(e: Expr, seen: dict[str, None]) -> None:
    match e:
        case Eq(left=l, right=r):
            for v in (l, r):
                if isinstance(v, Field):
                    seen.setdefault(v.name, None)
        case Not(expr=x):
            _collect(x, seen)
        case And(left=l, right=r) | Or(left=l, right=r):
            _collect(l, seen)
            _collect(r, seen)


# ---------------------------------------------------------------------------
# Compilation to closures.  Each node yields (fn, const) where const is the
# node's value when it is known without looking at the row, else None.  Folding
# never drops a column lookup that xapi would perform, so missing-column
# errors happen exactly when xapi's would.


def _always(value: bool) -> Callable[[Getter], bool]:
    if value:
        return lambda get: True
    return lambda get: False


def _compile(e: Expr) -> tuple[Callable[[Getter], bool], bool | None]:
    match e:
        case Const(value=v):
            return _always(v), v
        case Eq(left=l, right=r):
            return _compile_eq(l, r)
        case Not(expr=x):
            fx, cx = _compile(x)
            if cx is not None:
                return _always(not cx), not cx
            return (lambda get: not fx(get)), None
        case And(left=l, right=r):
            fl, cl = _compile(l)
            if cl is False:
                return fl, False
            fr, cr = _compile(r)
            if cl is True:
                return fr, cr
            if cr is True:
                return fl, None

            if cr is False:

                def and_false(get: Getter) -> bool:
                    fl(get)
                    return False

                return and_false, None
            return (lambda get: fl(get) and fr(get)), None
        case Or(left=l, right=r):
            fl, cl = _compile(l)
            if cl is True:
                return fl, True
            fr, cr = _compile(r)
            if cl is False:
                return fr, cr
            if cr is False:
                return fl, None
            if cr is True:

                def or_true(get: Getter) -> bool:
                    fl(get)
                    return True

                return or_true, None
            return (lambda get: fl(get) or fr(get)), None
    raise TypeError(f"not a filter expression: {e!r}")


def _compile_eq(l: Value, r: Value) -> tuple[Callable[[Getter], bool], bool | None]:
    if isinstance(l, Literal) and isinstance(r, Literal):
        same = l.value == r.value
        return _always(same), same
    if isinstance(l, Field) and isinstance(r, Field):
        a, b = l.name, r.name

        def field_eq_field(get: Getter) -> bool:
            y = get(b)  # xapi looks the right-hand side up first
            if y is None:
                raise WhereFieldError(b)
            x = get(a)
            if x is None:
                raise WhereFieldError(a)
            return x == y

        return field_eq_field, None
    if isinstance(l, Field):
        col, lit = l.name, r.value
    else:
        col, lit = r.name, l.value

    def field_eq_literal(get: Getter) -> bool:
        v = get(col)
        if v is None:
            raise WhereFieldError(col)
        return v == lit

    return field_eq_literal, None


# ---------------------------------------------------------------------------
# Lexer

EQ, TRUE, FALSE, LPAREN, RPAREN, FIELD, AND, OR, NOT, IDENT, EOF = (
    "'='",
    "'true'",
    "'false'",
    "'('",
    "')'",
    "'field'",
    "'and'",
    "'or'",
    "'not'",
    "string",
    "end of expression",
)

_PUNCT = {"=": EQ, "(": LPAREN, ")": RPAREN}
_KEYWORDS = (("true", TRUE), ("false", FALSE), ("field", FIELD), ("and", AND), ("or", OR), ("not", NOT))
_SPACE = " \t\n"


def _tokens(text: str) -> Iterator[tuple[str, str | None, int]]:
    """Yield (kind, string value, offset); raises WhereSyntaxError on bad input."""
    n = len(text)
    i = 0
    while True:
        while i < n and text[i] in _SPACE:
            i += 1
        if i == n:
            yield EOF, None, n
            return
        c = text[i]
        kind = _PUNCT.get(c)
        if kind is not None:
            yield kind, None, i
            i += 1
            continue
        if c == '"':
            end = text.find('"', i + 1)
            if end < 0:
                raise WhereSyntaxError(
                    f"unterminated string starting at offset {i} in filter {text!r}",
                    text,
                    i,
                    LEX_ERROR_REASON,
                )
            yield IDENT, text[i + 1 : end], i
            i = end + 1
            continue
        for word, kind in _KEYWORDS:
            if text.startswith(word, i):
                yield kind, None, i
                i += len(word)
                break
        else:
            m = re.match(r"[A-Za-z_0-9]+", text[i:])
            what = f"word {m.group(0)!r}" if m else f"character {c!r}"
            raise WhereSyntaxError(
                f"unexpected {what} at offset {i} in filter {text!r} "
                "(expected 'field', a \"string\", '=', '(', ')', "
                "'and', 'or', 'not', 'true' or 'false')",
                text,
                i,
                LEX_ERROR_REASON,
            )


# ---------------------------------------------------------------------------
# Parser: recursive descent equivalent to xapi's LALR grammar and precedence
# declarations.  Tokens are pulled one at a time, only when needed, so lexing
# and grammar errors are reported in the same order as xapi's parser.


class _Parser:
    __slots__ = ("text", "_tokens", "_tok")

    def __init__(self, text: str):
        self.text = text
        self._tokens = _tokens(text)
        self._tok: tuple[str, str | None, int] | None = None

    def peek(self) -> str:
        if self._tok is None:
            self._tok = next(self._tokens)
        return self._tok[0]

    def take(self) -> tuple[str, str | None, int]:
        self.peek()
        tok = self._tok
        self._tok = None
        return tok  # type: ignore[return-value]

    def fail(self, expected: str) -> WhereSyntaxError:
        kind, value, pos = self.take()
        got = f"string {_quote(value or '')}" if kind == IDENT else kind
        return WhereSyntaxError(
            f"expected {expected} but found {got} at offset {pos} in filter {self.text!r}",
            self.text,
            pos,
            PARSE_ERROR_REASON,
        )

    def expr(self) -> Expr:
        left = self.unary()
        while (kind := self.peek()) in (AND, OR):
            self.take()
            right = self.unary()
            left = And(left, right) if kind == AND else Or(left, right)
        return left

    def unary(self) -> Expr:
        if self.peek() == NOT:
            self.take()
            # 'not' has the lowest precedence: its operand runs to ')' or the end.
            return Not(self.expr())
        return self.primary()

    def primary(self) -> Expr:
        kind = self.peek()
        if kind == TRUE:
            self.take()
            return Const(True)
        if kind == FALSE:
            self.take()
            return Const(False)
        if kind == LPAREN:
            self.take()
            e = self.expr()
            if self.peek() != RPAREN:
                raise self.fail("'and', 'or' or ')'")
            self.take()
            return e
        if kind in (IDENT, FIELD):
            left = self.value()
            if self.peek() != EQ:
                raise self.fail("'='")
            self.take()
            if self.peek() not in (IDENT, FIELD):
                raise self.fail("a string or 'field'")
            return Eq(left, self.value())
        raise self.fail("'field', a string, 'not', 'true', 'false' or '('")

    def value(self) -> Value:
        kind, value, _ = self.take()
        if kind == IDENT:
            return Literal(value)  # type: ignore[arg-type]
        if self.peek() != IDENT:
            raise self.fail("a quoted column name after 'field'")
        return Field(self.take()[1])  # type: ignore[arg-type]

    def top(self) -> Expr:
        e = self.expr()
        if self.peek() != EOF:
            raise self.fail("'and', 'or' or the end of the expression")
        return e


def parse(expr: str) -> Expr:
    """Parse a filter expression; raises :class:`WhereSyntaxError`."""
    if not isinstance(expr, str):
        raise TypeError(f"filter expression must be a string, not {type(expr).__name__}")
    return _Parser(expr).top()


# ---------------------------------------------------------------------------
# DB string forms (xapi: gen_db_actions.ml DM_to_String / DM_to_Field,
# schema.ml Schema.Value.marshal, string_marshall_helper.ml, sExpr.ml,
# clock/date.ml, xapi-types/ref.ml)


def column_to_field(column: str) -> str:
    """The wire field name of a DB column: namespaces are joined by ``__`` in
    the DB (``Escaping.escape_id``) and by ``_`` on the wire."""
    return column.replace("__", "_")


def _format_float(x: float) -> str:
    # Printf.sprintf "%0.18g"; glibc prints a negative NaN as "-nan".
    if math.isnan(x):
        return "-nan" if math.copysign(1.0, x) < 0 else "nan"
    return "%.18g" % x


def _format_datetime(dt: datetime) -> str:
    # Date.to_rfc3339: YYYYMMDDThh:mm:ss then Z, +hh:mm / -hh:mm, or nothing.
    # Fractions of a second are dropped.  Naive datetimes are taken as UTC,
    # like xapi's parser does for zone-less timestamps.
    off = dt.utcoffset()
    if off is None or off == timedelta(0):
        suffix = "Z"
    else:
        minutes = abs(int(off.total_seconds())) // 60
        sign = "-" if off < timedelta(0) else "+"
        suffix = f"{sign}{minutes // 60:02d}:{minutes % 60:02d}"
    return (
        f"{dt.year:04d}{dt.month:02d}{dt.day:02d}T"
        f"{dt.hour:02d}:{dt.minute:02d}:{dt.second:02d}{suffix}"
    )


_COMPACT_DT = re.compile(r"(\d{4})(\d{2})(\d{2})T(\d{2}):(\d{2}):(\d{2})Z")


def _datetime_from_string(text: str) -> datetime | None:
    m = _COMPACT_DT.fullmatch(text)
    if m:
        try:
            return datetime(*map(int, m.groups()), tzinfo=timezone.utc)
        except ValueError:
            return None
    s = text.strip()
    if len(s) >= 9 and s[8] == "T" and s[:8].isdigit():
        s = f"{s[:4]}-{s[4:6]}-{s[6:]}"
    if s[-1:] in ("Z", "z"):
        s = s[:-1] + "+00:00"
    try:
        dt = datetime.fromisoformat(s)
    except ValueError:
        return None
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=timezone.utc)


def _xml_prefix(s: str) -> str:
    # String_marshall_helper.ensure_utf8_xml: keep the longest prefix of valid
    # UTF-8 that is legal in XML (>= 0x20, or tab, LF, CR).
    for i, ch in enumerate(s):
        o = ord(ch)
        if (o < 0x20 and o not in (0x09, 0x0A, 0x0D)) or 0xD800 <= o <= 0xDFFF:
            return s[:i]
    return s


def _sexpr_atom(s: str) -> str:
    # SExpr.string_of (String s): single-quoted, '\' and '\'' backslash-escaped.
    if "\\" in s or "'" in s:
        s = s.replace("\\", "\\\\").replace("'", "\\'")
    return f"'{s}'"


def _bool_string(value: Any) -> str:
    if isinstance(value, str):
        if value in ("true", "false"):
            return value
        raise ValueError(f"not a bool: {value!r}")
    return "true" if value else "false"


def db_string(type_: Any, value: Any) -> str:
    """xapi's database string for ``value`` of model type ``type_``.

    ``type_`` is an ``xapi.idl.types.Type`` (only ``kind``, ``elem`` and
    ``value`` are used).  This is what ``field "..."`` compares against.
    """
    kind = type_.kind
    if kind in ("string", "secretstring"):
        return "" if value is None else value
    if kind == "enum":
        return "" if value is None else str(value)
    if kind == "ref":
        return NULL_REF if value is None or value == "" else value
    if kind == "bool":
        return "" if value is None else _bool_string(value)
    if kind == "int":
        return "" if value is None else str(int(value))
    if kind == "float":
        return "" if value is None else _format_float(float(value))
    if kind == "datetime":
        if value is None:
            return ""
        if isinstance(value, str):
            dt = _datetime_from_string(value)
            return value if dt is None else _format_datetime(dt)
        return _format_datetime(value)
    if kind == "set":
        if not value:
            return "()"
        elem = type_.elem
        return "(" + " ".join(_sexpr_atom(_xml_prefix(db_string(elem, v))) for v in value) + ")"
    if kind == "map":
        if not value:
            return "()"
        kt, vt = type_.elem, type_.value
        parts = []
        for k, v in value.items():
            ks = _xml_prefix(db_string(kt, k))
            if not ks:
                # String_marshall_helper.ensure_nonempty: Db_exn.Empty_key_in_map
                raise ValueError(f"empty key in map: {k!r}")
            parts.append(f"({_sexpr_atom(ks)} {_sexpr_atom(_xml_prefix(db_string(vt, v)))})")
        return "(" + " ".join(parts) + ")"
    if kind == "option":
        # xapi stores only 'ref option', as a set of zero or one refs.
        if value is None:
            return "()"
        return "(" + _sexpr_atom(_xml_prefix(db_string(type_.elem, value))) + ")"
    raise TypeError(f"{kind} values are not stored in xapi's database")
