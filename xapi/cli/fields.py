"""Fields as xe shows them: name, ``( RO)``-style marker, value, setters.

A :class:`FieldSpec` is one line of a record.  Its marker follows from what
it can do, as in xe: a field shown as a set is ``(SRO)`` or ``(SRW)`` (the
latter when members can be added), a map ``(MRO)``/``(MRW)``, anything else
``( RO)`` or ``( RW)`` (when it has a setter).

Two ways to get the specs of a class:

- :func:`from_model` derives them from the data model: every field under
  its XenAPI name with ``_`` → ``-``, in model order; sets and maps as such;
  writable when the model has ``set_<f>`` (``add_<f>``, ``add_to_<f>`` for
  sets and maps);
- :func:`F` describes one field by hand, for the classes whose records xe
  lays out itself (``classes.py``), and :func:`bind` turns the descriptions
  into specs of an API class.

Values are rendered from the record as xe does: references as the uuid of
the object (``<not in database>`` when there is none), sets joined by
``; ``, maps as ``key: value; …``, floats with three decimals, booleans
``true``/``false``.  References are resolved through a :class:`Context`,
which fetches objects one by one for a single record and a whole class at a
time for lists.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from xapi.idl.model import Cls, model
from xapi.idl.types import Type, parse

from .errors import ApiFailure, CliFailure

NID = "<not in database>"
NULL_REF = "OpaqueRef:NULL"
EXPENSIVE = "<expensive field>"
UNKNOWN_TIME = "<unknown time>"


# -- resolving references ----------------------------------------------------------------


class Context:
    """What a command works with: the session and a cache of fetched objects."""

    def __init__(self, session, bulk: bool = False):
        self.session = session
        self.bulk = bulk
        self._records: dict[str, dict[str, dict | None]] = {}
        self._complete: set[str] = set()

    def call(self, method: str, *params: Any) -> Any:
        return self.session.call(method, *params)

    def record(self, cls: str, ref: str) -> dict | None:
        """The record of ``ref`` (None for NULL or a dangling reference)."""
        if not ref or ref == NULL_REF or not isinstance(ref, str):
            return None
        cache = self._records.setdefault(cls, {})
        if ref in cache:
            return cache[ref]
        if self.bulk and cls not in self._complete and cls + "/failed" not in self._complete:
            try:
                cache.update(self.call(f"{cls}.get_all_records"))
                self._complete.add(cls)
            except ApiFailure:
                self._complete.add(cls + "/failed")
            if ref in cache:
                return cache[ref]
        if self.bulk and cls in self._complete:
            cache[ref] = None  # every object of the class is known: this one is gone
            return None
        try:
            cache[ref] = self.call(f"{cls}.get_record", ref)
        except ApiFailure:
            cache[ref] = None
        return cache[ref]

    def remember(self, cls: str, records: dict[str, dict], complete: bool = False) -> None:
        """Records already fetched; ``complete`` when they are all of the class's objects."""
        self._records.setdefault(cls, {}).update(records)
        if complete:
            self._complete.add(cls)

    def uuid(self, cls: str, ref: str) -> str:
        rec = self.record(cls, ref)
        return rec.get("uuid", NID) if rec else NID

    def name(self, cls: str, ref: str) -> str:
        rec = self.record(cls, ref)
        if not rec or "name_label" not in rec:
            return NID
        return rec["name_label"]

    def uuid_or_null(self, cls: str, ref: str) -> str:
        return NULL_REF if ref == NULL_REF else self.uuid(cls, ref)

    def ref_of_uuid(self, cls: str, uuid: str) -> str:
        return self.call(f"{cls}.get_by_uuid", uuid)

    def describe_ref(self, ref: str, hint: str | None = None) -> str:
        """``uuid (name-label)`` for a reference in an error, as xe shows them."""
        classes = []
        if hint:
            c = model().cls(hint)
            if c is not None:
                classes.append(c.name)
        classes += [c for c in ("VM", "host", "SR", "VDI", "VBD", "VIF", "network", "PIF", "PBD",
                                "pool", "task") if c not in classes]
        for cls in classes:
            try:
                uuid = self.call(f"{cls}.get_uuid", ref)
            except ApiFailure:
                continue
            try:
                name = self.call(f"{cls}.get_name_label", ref)
            except ApiFailure:
                return uuid
            return f"{uuid} ({name})"
        return ref


def make_resolver(session):
    """Show references in error parameters as ``uuid (name-label)``, as xe does."""
    if session is None:
        return None
    from .errors import looks_like_ref

    ctx = Context(session)

    def resolve(name, value: str) -> str:
        if not looks_like_ref(value):
            return value
        try:
            return ctx.describe_ref(value, name)
        except Exception:
            return value

    return resolve


# -- records ----------------------------------------------------------------------------


class RecordView:
    """One object of a class as the field getters see it."""

    def __init__(self, ctx: Context, api_cls: str, ref: str, rec: dict | None = None):
        self.ctx = ctx
        self.api_cls = api_cls
        self.ref = ref
        self._rec = rec

    @property
    def rec(self) -> dict:
        if self._rec is None:
            self._rec = self.ctx.call(f"{self.api_cls}.get_record", self.ref)
        return self._rec

    def related(self, ref_field: str) -> dict | None:
        """The record a reference field points to (metrics, guest metrics, …)."""
        ty = model().classes[self.api_cls].fields[ref_field].type
        return self.ctx.record(ty.name, self.rec.get(ref_field, NULL_REF))

    def call(self, method: str, *params: Any) -> Any:
        return self.ctx.call(method, *params)


Getter = Callable[[RecordView], str]


@dataclass
class FieldSpec:
    name: str
    get: Getter
    set: Callable[[RecordView, str], None] | None = None
    get_set: Callable[[RecordView], list[str]] | None = None
    add_to_set: Callable[[RecordView, str], None] | None = None
    remove_from_set: Callable[[RecordView, str], None] | None = None
    get_map: Callable[[RecordView], list[tuple[str, str]]] | None = None
    add_to_map: Callable[[RecordView, str, str], None] | None = None
    remove_from_map: Callable[[RecordView, str], None] | None = None
    set_in_map: Callable[[RecordView, str, str], None] | None = None
    set_map: Callable[[RecordView, list[tuple[str, str]]], None] | None = None
    clear_map: Callable[[RecordView], None] | None = None
    expensive: bool = False
    hidden: bool = False
    deprecated: bool = False
    case_insensitive: bool = False
    needs: tuple[str, ...] = ()  # wire fields the server must have for the field to exist
    available: Callable[[RecordView], bool] | None = None  # other conditions for it to exist

    def exists(self, view: RecordView) -> bool:
        rec = view.rec
        if any(n not in rec for n in self.needs):
            return False
        return self.available is None or self.available(view)

    @property
    def marker(self) -> str:
        if self.get_set is not None:
            return " (SRW)" if self.add_to_set is not None else " (SRO)"
        if self.get_map is not None:
            return " (MRW)" if self.add_to_map is not None else " (MRO)"
        return " ( RW)" if self.set is not None else " ( RO)"

    @property
    def label(self) -> str:
        return self.name + self.marker + (" [DEPRECATED]" if self.deprecated else "")

    def value(self, view: RecordView) -> str:
        """The shown value; a dangling reference shows as ``<invalid reference>``."""
        try:
            return self.get(view)
        except ApiFailure as e:
            if e.code == "HANDLE_INVALID":
                return "<invalid reference>"
            if e.code in ("NOT_IMPLEMENTED", "MESSAGE_METHOD_UNKNOWN"):
                return "<unknown>"  # a call this server (version) does not have
            raise


# -- rendering by type ---------------------------------------------------------------


def render(ctx: Context, ty: Type, value: Any, sep: str = "; ", enum: Callable | None = None) -> str:
    kind = ty.kind
    if value is None:
        return ""
    if kind == "set":
        return sep.join(render(ctx, ty.elem, v, enum=enum) for v in value)
    if kind == "map":
        return "; ".join(f"{render(ctx, ty.elem, k, enum=enum)}: {render(ctx, ty.value, v)}"
                         for k, v in value.items())
    if kind == "ref":
        return ctx.uuid(ty.name, value)
    if kind == "bool":
        if isinstance(value, str):
            return value.lower()
        return "true" if value else "false"
    if kind == "int":
        try:
            return str(int(value))
        except (TypeError, ValueError):
            return str(value)
    if kind == "float":
        return "%.3f" % float(value)
    if kind == "enum":
        return enum(value) if enum else str(value)
    if kind == "option":
        return render(ctx, ty.elem, value, sep, enum)
    return str(value)


def render_items(ctx: Context, ty: Type, value: Any, enum: Callable | None = None) -> list[str]:
    """The members of a set field, rendered one by one (for filters and param-remove)."""
    if ty.kind == "set":
        return [render(ctx, ty.elem, v, enum=enum) for v in (value or [])]
    if ty.kind == "map":  # current_operations: a map shown as the set of its values
        return [render(ctx, ty.value, v, enum=enum) for v in (value or {}).values()]
    return []


def render_pairs(ctx: Context, ty: Type, value: Any, enum: Callable | None = None) -> list[tuple[str, str]]:
    return [(render(ctx, ty.elem, k, enum=enum), render(ctx, ty.value, v)) for k, v in (value or {}).items()]


# -- parsing values given on the command line ------------------------------------------


def bytes_of_string(field_name: str, text: str) -> int:
    """``128MiB`` and the like, as xe accepts sizes."""
    units = {"": 1, "b": 1, "bytes": 1, "k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10,
             "m": 1 << 20, "mb": 1 << 20, "mib": 1 << 20, "g": 1 << 30, "gb": 1 << 30,
             "gib": 1 << 30, "t": 1 << 40, "tb": 1 << 40, "tib": 1 << 40}
    s = text.strip()
    i = 0
    if s[:1] in "+-":
        i = 1
    while i < len(s) and s[i].isdigit():
        i += 1
    number, suffix = s[:i], s[i:].strip().lower()
    try:
        size = int(number)
        if size < 0 or suffix not in units:
            raise ValueError
    except ValueError:
        raise CliFailure(
            f"Failed to parse field '{field_name}': expecting an integer (possibly with suffix "
            f"KiB, MiB, GiB, TiB), got '{text}'") from None
    return size * units[suffix]


def parse_bool(field_name: str, text: str) -> bool:
    if text in ("true", "false"):
        return text == "true"
    raise CliFailure(f"Failed to parse parameter '{field_name}': expecting a boolean (true or false)")


def xe_bool(text: str, param: str | None = None) -> bool:
    """xe's lenient booleans for command parameters (``yes``, ``1``, ``t``, …)."""
    low = text.lower()
    if low in ("true", "t", "yes", "y", "1"):
        return True
    if low in ("false", "f", "no", "n", "0"):
        return False
    msg = f"Expected 'true','t','yes','y','1','false','f','no','n','0' got {text}"
    if param:
        msg = f"Failed to parse parameter '{param}': {msg}"
    raise CliFailure(msg)


def parse_int(field_name: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise CliFailure(f"Failed to parse parameter '{field_name}': expecting an integer") from None


def _norm(text: str) -> str:
    return text.lower().replace("-", "_").replace(" ", "_").replace(".", "_")


def parse_enum(enum_name: str, text: str) -> str:
    values = model().enums.get(enum_name, [])
    for v in values:
        if _norm(v) == _norm(text):
            return v
    quoted = ", ".join(f"'{v}'" for v in values)
    raise CliFailure(f"Expected one of {quoted}, got {text}")


def parse_value(ctx: Context, ty: Type, text: str, field_name: str, parser: str | None = None) -> Any:
    if parser == "bytes":
        return bytes_of_string(field_name, text)
    kind = ty.kind
    if kind in ("string", "secretstring"):
        return text
    if kind == "int":
        return parse_int(field_name, text)
    if kind == "float":
        try:
            return float(text)
        except ValueError:
            raise CliFailure(f"Parameter {field_name} must be a floating-point number") from None
    if kind == "bool":
        return parse_bool(field_name, text)
    if kind == "enum":
        return parse_enum(ty.name, text)
    if kind == "ref":
        return NULL_REF if text == "" else ctx.ref_of_uuid(ty.name, text)
    if kind == "set":
        words = [w for w in text.split(",")] if text else []
        return [parse_value(ctx, ty.elem, w, field_name) for w in words]
    if kind == "datetime":
        return text
    raise CliFailure(f"Field '{field_name}' cannot be set from the command line")


# -- specs from the model ---------------------------------------------------------------


def _cli_name(wire: str) -> str:
    return wire.replace("_", "-")


def _op_values(ty: Type) -> bool:
    """``current_operations``-style maps (task → operation) are shown as sets."""
    return ty.kind == "map" and ty.elem.kind == "string" and ty.value.kind == "enum"


def from_model(api_cls: str) -> list[FieldSpec]:
    c = model().classes[api_cls]
    specs = []
    for f in c.fields.values():
        if f.lifecycle == "removed" or f.type.kind in ("record", "event_batch"):
            continue
        specs.append(_model_spec(c, f.name, _cli_name(f.name), f.name == "current_operations"))
    return specs


def _model_spec(c: Cls, wire: str, name: str, ops_as_set: bool = False) -> FieldSpec:
    ty = c.fields[wire].type
    msgs = c.messages
    api = c.name

    def get(view: RecordView) -> str:
        value = view.rec.get(wire)
        if ops_as_set and isinstance(value, dict):
            return "; ".join(str(v) for v in value.values())
        return render(view.ctx, ty, value)

    spec = FieldSpec(name=name, get=get, needs=(wire,))
    if ty.kind == "set" or ops_as_set:
        spec.get_set = lambda view: render_items(view.ctx, ty, view.rec.get(wire))
        if f"add_{wire}" in msgs and not ops_as_set:
            spec.add_to_set = lambda view, v: view.call(
                f"{api}.add_{wire}", view.ref, parse_value(view.ctx, ty.elem, v, name))
            spec.remove_from_set = lambda view, v: view.call(
                f"{api}.remove_{wire}", view.ref, parse_value(view.ctx, ty.elem, v, name))
    elif ty.kind == "map":
        spec.get_map = lambda view: render_pairs(view.ctx, ty, view.rec.get(wire))
        if f"add_to_{wire}" in msgs:
            spec.add_to_map = lambda view, k, v: view.call(
                f"{api}.add_to_{wire}", view.ref, _map_key(ty, k), _map_value(view.ctx, ty, v, name))
            spec.remove_from_map = lambda view, k: view.call(
                f"{api}.remove_from_{wire}", view.ref, _map_key(ty, k))
    if f"set_{wire}" in msgs and ty.kind not in ("map",):
        spec.set = lambda view, text: view.call(
            f"{api}.set_{wire}", view.ref, parse_value(view.ctx, ty, text, name))
    return spec


def _map_key(ty: Type, key: str) -> str:
    if ty.elem.kind == "enum":
        return parse_enum(ty.elem.name, key)
    return key


def _map_value(ctx: Context, ty: Type, value: str, name: str) -> Any:
    if ty.value.kind in ("string", "secretstring"):
        return value
    return parse_value(ctx, ty.value, value, name)


# -- hand-written specs -----------------------------------------------------------------


@dataclass
class F:
    """A field of a hand-laid-out record; see :func:`bind`.

    ``src`` is the wire field (``metrics.memory_actual`` for a field of the
    object a reference points to, shown as ``default`` when there is none).
    ``kind``: ``ro``/``rw`` plain, ``sro``/``srw`` set, ``mro``/``mrw`` map.
    """

    name: str
    src: str | None = None
    kind: str = "ro"
    default: str = NID
    sep: str = "; "
    enum: Callable[[str], str] | None = None
    get: Getter | None = None
    set: Callable[[RecordView, str], None] | None = None
    settable: bool = False  # a set or map that also has a plain setter
    parser: str | None = None
    clear: bool = False  # map cleared with set_<f>({})
    set_map: bool = False  # map written whole with set_<f>
    set_in_map: Callable | None = None
    add_to_map: Callable | None = None
    add_to_set: Callable | None = None
    get_set: Callable | None = None
    get_map: Callable | None = None
    hidden: bool = False
    deprecated: bool = False
    expensive: bool = False
    case_insensitive: bool = False
    needs: tuple[str, ...] | None = None


def _field_type(c: Cls, src: str) -> tuple[Type, str, str | None]:
    """(type, wire field, reference field) of ``src``."""
    if "." in src:
        ref_field, wire = src.split(".", 1)
        target = model().classes[c.fields[ref_field].type.name]
        return target.fields[wire].type, wire, ref_field
    return c.fields[src].type, src, None


def bind(api_cls: str, descs: list[F]) -> list[FieldSpec]:
    """Turn descriptions into specs; fields the model does not have are dropped."""
    c = model().classes[api_cls]
    out = []
    for d in descs:
        spec = _bind_one(c, d)
        if spec is not None:
            out.append(spec)
    return out


def _bind_one(c: Cls, d: F) -> FieldSpec | None:
    api = c.name
    kind = d.kind
    if d.src is None and d.get is None:
        raise ValueError(f"{api}.{d.name}: no source")
    ty = wire = ref_field = None
    if d.src is not None:
        root = d.src.split(".", 1)[0]
        if root not in c.fields:
            return None
        if "." in d.src:
            target = model().classes[c.fields[root].type.name]
            if d.src.split(".", 1)[1] not in target.fields:
                return None
        ty, wire, ref_field = _field_type(c, d.src)
    needs = d.needs if d.needs is not None else ((d.src.split(".", 1)[0],) if d.src else ())

    if d.get is not None:
        get = d.get
    elif ref_field is not None:
        default = d.default

        def get(view: RecordView, ty=ty, wire=wire, ref_field=ref_field, default=default) -> str:
            rel = view.related(ref_field)
            if rel is None or wire not in rel:
                return default
            return render(view.ctx, ty, rel[wire], d.sep, d.enum)
    else:
        ops = wire == "current_operations" and isinstance(ty, Type) and ty.kind == "map"

        def get(view: RecordView, ty=ty, wire=wire, ops=ops) -> str:
            value = view.rec.get(wire)
            if ops:
                return "; ".join(d.enum(v) if d.enum else str(v) for v in (value or {}).values())
            return render(view.ctx, ty, value, d.sep, d.enum)

    spec = FieldSpec(name=d.name, get=get, hidden=d.hidden, deprecated=d.deprecated,
                     expensive=d.expensive, case_insensitive=d.case_insensitive, needs=needs)
    if kind == "rw" or d.settable or d.set is not None:
        if d.set is not None:
            spec.set = d.set
        elif ty is not None and ref_field is None:
            setter = f"set_{wire}"
            parser = d.parser

            def do_set(view: RecordView, text: str, ty=ty, setter=setter, parser=parser) -> None:
                view.call(f"{api}.{setter}", view.ref, parse_value(view.ctx, ty, text, d.name, parser))
            spec.set = do_set

    if kind in ("sro", "srw"):
        if d.get_set is not None:
            spec.get_set = d.get_set
        elif ref_field is not None:
            spec.get_set = lambda view, ty=ty, wire=wire, rf=ref_field: render_items(
                view.ctx, ty, (view.related(rf) or {}).get(wire), d.enum)
        else:
            spec.get_set = lambda view, ty=ty, wire=wire: render_items(
                view.ctx, ty, view.rec.get(wire), d.enum)
        if kind == "srw":
            if d.add_to_set is not None:
                spec.add_to_set = d.add_to_set
            else:
                spec.add_to_set = lambda view, v, ty=ty, wire=wire: view.call(
                    f"{api}.add_{wire}", view.ref, parse_value(view.ctx, ty.elem, v, d.name))
                spec.remove_from_set = lambda view, v, ty=ty, wire=wire: view.call(
                    f"{api}.remove_{wire}", view.ref, parse_value(view.ctx, ty.elem, v, d.name))

    if kind in ("mro", "mrw"):
        if d.get_map is not None:
            spec.get_map = d.get_map
        elif ref_field is not None:
            spec.get_map = lambda view, ty=ty, wire=wire, rf=ref_field: render_pairs(
                view.ctx, ty, (view.related(rf) or {}).get(wire), d.enum)
        else:
            spec.get_map = lambda view, ty=ty, wire=wire: render_pairs(
                view.ctx, ty, view.rec.get(wire), d.enum)
        if kind == "mrw":
            spec.add_to_map = d.add_to_map or (lambda view, k, v, ty=ty, wire=wire: view.call(
                f"{api}.add_to_{wire}", view.ref, _map_key(ty, k), _map_value(view.ctx, ty, v, d.name)))
            spec.remove_from_map = lambda view, k, ty=ty, wire=wire: view.call(
                f"{api}.remove_from_{wire}", view.ref, _map_key(ty, k))
        if d.clear:
            spec.clear_map = lambda view, wire=wire: view.call(f"{api}.set_{wire}", view.ref, {})
        if d.set_map:
            spec.set_map = lambda view, pairs, wire=wire: view.call(
                f"{api}.set_{wire}", view.ref, dict(pairs))
        if d.set_in_map is not None:
            spec.set_in_map = d.set_in_map
    return spec


def model_type(api_cls: str, wire: str) -> Type:
    return model().classes[api_cls].fields[wire].type


__all__ = [
    "Context", "RecordView", "FieldSpec", "F", "bind", "from_model", "render", "NID",
    "NULL_REF", "EXPENSIVE", "UNKNOWN_TIME", "bytes_of_string", "xe_bool", "parse_bool",
    "parse_int", "parse_enum", "parse_value", "model_type", "parse",
]
