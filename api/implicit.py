"""The implicit messages of every class, served generically from the model.

``get_<field>``, ``set_<field>``, ``add_to_<map>``/``remove_from_<map>``,
``add_<set>``/``remove_<set>``, ``get_record``, ``get_by_uuid``,
``get_by_name_label``, ``get_all``, ``get_all_records``, ``get_all_where``,
``get_all_records_where``, ``create`` and ``destroy``.  Reads are answered
from the object cache on the event loop; writes run in the thread pool
through the database's single write path.
"""

from __future__ import annotations

from typing import Any, Callable

from xapi import operations, where
from xapi.context import Context
from xapi.errors import ApiError
from xapi.idl.model import Cls, Field, Message, Model
from xapi.impl import Handler
from xapi.refs import make_ref, make_uuid

from .params import ParamTypeError, coerce
from .records import all_encoded, encoded


def _row(ctx: Context, cls: str, ref: str):
    row = ctx.rt.cache.get(cls, ref)
    if row is None:
        raise ApiError("HANDLE_INVALID", cls, ref)
    return row


# -- reads ---------------------------------------------------------------------


def getter(cls: str, field: str) -> Callable:
    def get(ctx: Context, ref: str):
        cache = ctx.rt.cache
        return cache.field(cls, _row(ctx, cls, ref), field)

    return get


def derived_getter(cls: str, field: str) -> Callable:
    """Getters of relation sets check only that the ref exists in some table (xapi)."""

    def get(ctx: Context, ref: str):
        cache = ctx.rt.cache
        if cache.find_class(ref) is None:
            raise ApiError("HANDLE_INVALID", ref)
        return cache.derived(cls, field, ref)

    return get


def get_record(cls: str) -> Callable:
    def get(ctx: Context, ref: str):
        return encoded(ctx.rt.cache, cls, _row(ctx, cls, ref), ctx.fmt)

    return get


def get_by_uuid(cls: str) -> Callable:
    def get(ctx: Context, uuid: str):
        ref = ctx.rt.cache.ref_by_uuid(cls, uuid)
        if ref is None:
            raise ApiError("UUID_INVALID", cls, uuid)
        return ref

    return get


def get_by_name_label(cls: str) -> Callable:
    def get(ctx: Context, label: str):
        return [r.ref for r in ctx.rt.cache.rows(cls) if r.values.get("name_label") == label]

    return get


def get_all(cls: str) -> Callable:
    def get(ctx: Context):
        return list(ctx.rt.cache.tables[cls])

    return get


def get_all_records(cls: str) -> Callable:
    def get(ctx: Context):
        cache = ctx.rt.cache
        return all_encoded(cache, cls, cache.rows(cls), ctx.fmt)

    return get


def _matching(ctx: Context, cls: str, expr: str) -> list:
    try:
        predicate = where.parse(expr).compile()
    except where.WhereSyntaxError as exc:
        raise ApiError(exc.xapi_error[0], *exc.xapi_error[1]) from None
    cache = ctx.rt.cache
    fields = cache.classes[cls].fields
    out = []
    try:
        for row in cache.rows(cls):
            def column(name: str, row=row):
                if name == "_ref":
                    return row.ref
                f = fields.get(where.column_to_field(name))
                if f is None:
                    return None
                return where.db_string(f.type, cache.field(cls, row, f.name))

            if predicate(column):
                out.append(row)
    except where.WhereFieldError as exc:
        raise ApiError(exc.xapi_error[0], *exc.xapi_error[1]) from None
    return out


def get_all_where(cls: str) -> Callable:
    def get(ctx: Context, expr: str):
        return [row.ref for row in _matching(ctx, cls, expr)]

    return get


def get_all_records_where(cls: str) -> Callable:
    def get(ctx: Context, expr: str):
        return all_encoded(ctx.rt.cache, cls, _matching(ctx, cls, expr), ctx.fmt)

    return get


# -- writes --------------------------------------------------------------------


def setter(cls: str, field: str, ruled: bool) -> Callable:
    def set_(ctx: Context, ref: str, value: Any):
        with ctx.rt.db.write() as tx:
            tx.update(cls, ref, {field: value})
        if ruled:  # e.g. is_a_template or blocked_operations change what the object allows
            operations.refresh_allowed(ctx.rt, cls, ref)
        return ""

    return set_


# The map and set changes below read the field and write it back whole: the row
# is locked for that (PostgreSQL), or two processes changing one object's field
# at once (the server and a worker, two hosts) would lose one of the changes.


def map_add(cls: str, field: str) -> Callable:
    def add(ctx: Context, ref: str, key: Any, value: Any):
        with ctx.rt.db.write() as tx:
            current = tx.must_get(cls, ref, for_update=True)[field]
            if key == "":
                raise ApiError("INTERNAL_ERROR", "Db_exn.Empty_key_in_map")
            if key in current:
                raise ApiError("MAP_DUPLICATE_KEY", cls, field, ref, key)
            tx.update(cls, ref, {field: {key: value, **current}})  # xapi prepends
        return ""

    return add


def map_remove(cls: str, field: str) -> Callable:
    def remove(ctx: Context, ref: str, key: Any):
        with ctx.rt.db.write() as tx:
            current = tx.must_get(cls, ref, for_update=True)[field]
            if key in current:
                tx.update(cls, ref, {field: {k: v for k, v in current.items() if k != key}})
        return ""

    return remove


def set_add(cls: str, field: str) -> Callable:
    def add(ctx: Context, ref: str, value: Any):
        with ctx.rt.db.write() as tx:
            current = tx.must_get(cls, ref, for_update=True)[field]
            if value not in current:
                tx.update(cls, ref, {field: [value, *current]})  # xapi prepends
        return ""

    return add


def set_remove(cls: str, field: str) -> Callable:
    def remove(ctx: Context, ref: str, value: Any):
        with ctx.rt.db.write() as tx:
            current = tx.must_get(cls, ref, for_update=True)[field]
            if value in current:
                tx.update(cls, ref, {field: [v for v in current if v != value]})
        return ""

    return remove


def constructor_values(model: Model, message: Message, record: dict) -> dict:
    """Typed field values for ``create`` from the client's record struct.

    As xapi: fields are read in model order, the first required one missing is
    reported, unknown keys are ignored.
    """
    spec = model.classes[message.cls]
    values: dict[str, Any] = {}
    for name, required in message.constructor_fields:
        f = spec.fields.get(name)
        if f is None or f.derived is not None:
            continue
        if name not in record:
            if required and not f.has_default:
                raise ParamTypeError(f'Server_helpers.Dispatcher_FieldNotFound("{name}")')
            continue
        values[name] = coerce(model, f.type, record[name])
    return values


def create(spec: Cls) -> Callable:
    def make(ctx: Context, values: dict):
        ref = make_ref()
        if "uuid" in spec.fields:
            values = {**values, "uuid": make_uuid()}
        with ctx.rt.db.write() as tx:
            tx.insert(spec.name, ref, values)
        return ref

    return make


def destroy(cls: str) -> Callable:
    def destroy_(ctx: Context, ref: str):
        with ctx.rt.db.write() as tx:
            tx.delete(cls, ref)
        return ""

    return destroy_


# -- the table -------------------------------------------------------------------


def _field_of(spec: Cls, name: str, prefixes: tuple[str, ...], kind: str | None) -> Field | None:
    for prefix in prefixes:
        if name.startswith(prefix):
            f = spec.fields.get(name[len(prefix):])
            if f is not None and (kind is None or f.type.kind == kind):
                return f
    return None


_OBJECT_TAGS = {
    "get_record": "FromObject.GetRecord",
    "get_by_uuid": "FromObject.GetByUuid",
    "get_all": "FromObject.GetAll",
    "get_all_records": "FromObject.GetAllRecords",
    "get_all_where": "FromObject.GetAllWhere",
    "get_all_records_where": "FromObject.GetAllRecordsWhere",
}


def stored(model: Model, cls: str) -> bool:
    from db.schema import EXTRA_STORED

    return model.classes[cls].in_database or cls in EXTRA_STORED


def handler_for(model: Model, message: Message) -> Handler | None:
    """The generic implementation of an implicit message, if it is one.

    Custom messages whose name and shape are those of an implicit one (for
    example ``VM.add_to_other_config``, custom upstream for key-level RBAC)
    are served by the same generic code.
    """
    spec = model.classes[message.cls]
    name, cls = message.name, message.cls
    tag = message.tag
    if tag == "Custom" and name in _OBJECT_TAGS and stored(model, cls):
        tag = _OBJECT_TAGS[name]  # e.g. message.get_all_records: custom upstream, same shape
    if not stored(model, cls) and tag.startswith("FromObject"):
        return None
    n = len(message.params)
    read = lambda fn: Handler(fn, "read")  # noqa: E731
    write = lambda fn: Handler(fn, "write")  # noqa: E731
    if tag == "FromObject.GetRecord":
        return read(get_record(cls))
    if tag == "FromObject.GetByUuid":
        return read(get_by_uuid(cls))
    if tag == "FromObject.GetByLabel":
        return read(get_by_name_label(cls))
    if tag == "FromObject.GetAll":
        return read(get_all(cls))
    if tag == "FromObject.GetAllRecords":
        return read(get_all_records(cls))
    if tag == "FromObject.GetAllWhere":
        return read(get_all_where(cls))
    if tag == "FromObject.GetAllRecordsWhere":
        return read(get_all_records_where(cls))
    if tag == "FromObject.Make":
        return write(create(spec))
    if tag == "FromObject.Delete":
        return write(destroy(cls))
    if tag == "FromField.Getter" or (tag == "Custom" and n == 1 and name.startswith("get_")):
        f = _field_of(spec, name, ("get_",), None)
        if f is None:
            return None
        return read(derived_getter(cls, f.name) if f.derived else getter(cls, f.name))
    if tag in ("FromField.Setter", "Custom") and name.startswith("set_") and n == 2:
        f = _field_of(spec, name, ("set_",), None)
        ruled = "allowed_operations" in spec.fields and f is not None and f.name not in (
            "allowed_operations", "current_operations")
        return write(setter(cls, f.name, ruled)) if f and f.derived is None else None
    if tag in ("FromField.Add", "Custom") and name.startswith("add_to_") and n == 3:
        f = _field_of(spec, name, ("add_to_",), "map")
        return write(map_add(cls, f.name)) if f else None
    if tag in ("FromField.Remove", "Custom") and name.startswith("remove_from_") and n == 2:
        f = _field_of(spec, name, ("remove_from_",), "map")
        return write(map_remove(cls, f.name)) if f else None
    if tag in ("FromField.Add", "Custom") and name.startswith("add_") and n == 2:
        f = _field_of(spec, name, ("add_",), "set")
        return write(set_add(cls, f.name)) if f and f.derived is None else None
    if tag in ("FromField.Remove", "Custom") and name.startswith("remove_") and n == 2:
        f = _field_of(spec, name, ("remove_",), "set")
        return write(set_remove(cls, f.name)) if f and f.derived is None else None
    return None
