"""The commands every class has: ``<class>-list`` and ``<class>-param-*``.

- ``<class>-list [params=a,b|all] [--all] [field=value …]``: the records
  matching every ``field=value`` (``map-field:key=value``,
  ``set-field:contains=value``), with the class's default columns or those of
  ``params=``, in the record's field order.  Expensive fields show as
  ``<expensive field>``; hidden ones never show.
- ``<class>-param-list uuid=`` every field of one object (expensive ones computed),
- ``<class>-param-get uuid= param-name= [param-key=]``,
- ``<class>-param-set uuid= field=value … map-field:key=value …``,
- ``<class>-param-add uuid= param-name= (param-key= | key=value …)``,
- ``<class>-param-remove uuid= param-name= param-key=``,
- ``<class>-param-clear uuid= param-name=``.

The last four exist only for classes with fields they can change.
"""

from __future__ import annotations

from .classes import CLASSES, CliClass
from .cmdtable import STDPARAMS, CommandSpec, Invocation, add
from .errors import ApiFailure, CliFailure
from .fields import EXPENSIVE, FieldSpec, RecordView

# -- filtering -------------------------------------------------------------------------


def field_kind(fields: list[FieldSpec], key: str) -> tuple[str, FieldSpec]:
    """How ``key`` names a field: ("normal"|"map"|"set", field), as xe decides."""
    for f in fields:
        if f.name == key:
            return "normal", f
    if ":" in key:
        base = key.split(":", 1)[0]
        for f in fields:
            if f.name == base:
                if f.get_set is not None:
                    return "set", f
                if f.get_map is not None:
                    return "map", f
                raise CliFailure(f"Field '{f.name}' is not a set or map")
        raise CliFailure(f"Unknown field '{key}'")
    # xe's older syntax: map-name-key=value, longest name first
    for kind, pred in (("map", lambda f: f.get_map is not None), ("set", lambda f: f.get_set is not None)):
        for f in sorted((f for f in fields if pred(f)), key=lambda f: -len(f.name)):
            if key.startswith(f.name + "-"):
                return kind, f
    raise CliFailure(f"Unknown field '{key}'")


def visible_fields(cli: CliClass, view: RecordView) -> list[FieldSpec]:
    return [f for f in cli.specs if f.exists(view)]


def _matches(kind: str, f: FieldSpec, key: str, value: str, view: RecordView) -> bool:
    if kind == "normal":
        shown = f.value(view)
        if f.case_insensitive:
            return shown.lower() == value.lower()
        return shown == value
    sub = key[len(f.name) + 1:]
    if kind == "set":
        if sub != "contains":
            raise CliFailure("Invalid syntax for set filtering (should be set-param:contains=key)")
        try:
            members = f.get_set(view)
        except ApiFailure:
            return False
        if f.case_insensitive:
            return value.lower() in [m.lower() for m in members]
        return value in members
    try:
        pairs = dict(f.get_map(view))
    except ApiFailure:
        return False
    if f.case_insensitive:
        pairs = {k.lower(): v.lower() for k, v in pairs.items()}
        sub, value = sub.lower(), value.lower()
    return sub in pairs and pairs[sub] == value


def filter_views(cli: CliClass, views: list[RecordView], filters: list[tuple[str, str]]) -> list[RecordView]:
    """Keep the records matching every filter; unknown fields are errors."""
    if not filters:
        return views
    if not views:
        fields = cli.specs
        for key, _ in filters:
            field_kind(fields, key)  # still name an unknown field
        return views
    fields = visible_fields(cli, views[0])
    for key, value in filters:
        kind, f = field_kind(fields, key)
        views = [v for v in views if _matches(kind, f, key, value, v)]
    return views


# -- output -----------------------------------------------------------------------------


def chosen_columns(params_value: str | None, defaults: list[str]) -> list[str]:
    if params_value is None:
        return defaults
    if params_value == "all":
        return []
    return params_value.split(",")


def record_rows(cli: CliClass, views: list[RecordView], columns: list[str],
                expensive_placeholder: bool = True) -> list[list[tuple[str, str]]]:
    rows = []
    fields = visible_fields(cli, views[0]) if views else []
    if columns:
        fields = [f for f in fields if f.name in columns]
    fields = [f for f in fields if not f.hidden]
    for view in views:
        row = []
        for f in fields:
            value = EXPENSIVE if (f.expensive and expensive_placeholder) else f.value(view)
            row.append((f.label, value))
        rows.append(row)
    return rows


def all_records(inv: Invocation, cli: CliClass) -> dict[str, dict]:
    try:
        return inv.call(f"{cli.api}.get_all_records_where", "true")
    except ApiFailure as e:
        if e.code not in ("MESSAGE_METHOD_UNKNOWN", "NOT_IMPLEMENTED"):
            raise
        return inv.call(f"{cli.api}.get_all_records")


def one_record(inv: Invocation, cli: CliClass, bulk: bool = False) -> RecordView:
    ctx = inv.ctx(bulk)
    ref = inv.call(f"{cli.api}.get_by_uuid", inv.req("uuid"))
    return RecordView(ctx, cli.api, ref, inv.call(f"{cli.api}.get_record", ref))


def field_of(cli: CliClass, view: RecordView, name: str) -> FieldSpec:
    for f in visible_fields(cli, view):
        if f.name == name:
            return f
    raise ApiFailure("Missing parameter", [name])


# -- the commands ----------------------------------------------------------------------


def do_list(inv: Invocation, cli: CliClass) -> None:
    ctx = inv.ctx(bulk=True)
    records = all_records(inv, cli)
    ctx.remember(cli.api, records, complete=True)
    views = [RecordView(ctx, cli.api, ref, rec) for ref, rec in records.items()]
    filters = [(k, v) for k, v in inv.params
               if k != "params" and k not in STDPARAMS and not k.startswith("database:")]
    matching = filter_views(cli, views, list(cli.filters) + filters)
    shown = views if inv.flag("all") else matching
    inv.printer.table(record_rows(cli, shown, chosen_columns(inv.get("params"), cli.list_params)))


def do_param_list(inv: Invocation, cli: CliClass) -> None:
    view = one_record(inv, cli)
    inv.printer.table(record_rows(cli, [view], [], expensive_placeholder=False))


def do_param_get(inv: Invocation, cli: CliClass) -> None:
    view = one_record(inv, cli)
    f = field_of(cli, view, inv.req("param-name"))
    key = inv.get("param-key")
    if key is not None and f.get_map is not None:
        pairs = dict(f.get_map(view))
        if key not in pairs:
            raise CliFailure(f"Key {key} not found in map")
        inv.printer.lines([pairs[key]])
        return
    inv.printer.lines([f.value(view)])


def do_param_set(inv: Invocation, cli: CliClass) -> None:
    view = one_record(inv, cli)
    fields = visible_fields(cli, view)
    whole_maps: dict[str, tuple[FieldSpec, list[tuple[str, str]]]] = {}
    for key, value in inv.params:
        if key == "uuid" or key in STDPARAMS:
            continue
        kind, f = field_kind(fields, key)
        if kind == "map":
            map_key = key[len(f.name) + 1:]
            if f.set_in_map is not None:
                f.set_in_map(view, map_key, value)
            elif f.set_map is not None:
                whole_maps.setdefault(f.name, (f, []))[1].append((map_key, value))
            else:
                if f.add_to_map is None:
                    raise CliFailure(f"Map field '{f.name}' is read-only.")
                if f.remove_from_map is None:
                    raise CliFailure(f"Records broken (field {f.name})")
                if map_key in dict(f.get_map(view)):
                    f.remove_from_map(view, map_key)
                f.add_to_map(view, map_key, value)
        elif kind == "set":
            raise CliFailure("Cannot param-set on set fields")
        else:
            if f.set is not None:
                f.set(view, value)
            elif f.add_to_map is not None:
                raise CliFailure(f"Field '{key}' is a map or set. use the 'name:key=value' syntax.")
            else:
                raise CliFailure(f"Field '{key}' is read-only.")
    for f, pairs in whole_maps.values():
        f.set_map(view, pairs)


def do_param_add(inv: Invocation, cli: CliClass) -> None:
    view = one_record(inv, cli)
    f = field_of(cli, view, inv.req("param-name"))
    if f.add_to_set is not None:
        key = inv.get("param-key")
        if key is None:
            raise CliFailure("When adding a key to a set, use the syntax: *-param-add "
                             "param-name=<name> param-key=<key>")
        f.add_to_set(view, key)
    elif f.add_to_map is not None:
        for k, v in inv.params:
            if k in ("uuid", "param-name", "param-key") or k in STDPARAMS:
                continue
            f.add_to_map(view, k, v)
    elif f.get_set is not None or f.get_map is not None:
        raise CliFailure("Parameter is read-only")
    else:
        raise CliFailure("Can only add to parameters of type Set or Map")


def do_param_remove(inv: Invocation, cli: CliClass) -> None:
    view = one_record(inv, cli)
    f = field_of(cli, view, inv.req("param-name"))
    key = inv.req("param-key")
    if f.get_set is not None and f.remove_from_set is not None:
        if key not in f.get_set(view):
            raise CliFailure(f"Key {key} is not in the set")
        f.remove_from_set(view, key)
    elif f.get_map is not None and f.remove_from_map is not None:
        if key not in dict(f.get_map(view)):
            raise CliFailure(f"Key {key} is not in map")
        f.remove_from_map(view, key)
    elif f.get_set is not None or f.get_map is not None:
        raise CliFailure("Cannot remove parameters from read-only map")
    else:
        raise CliFailure("Can only remove from parameters of type Set or Map")


def do_param_clear(inv: Invocation, cli: CliClass) -> None:
    view = one_record(inv, cli)
    f = field_of(cli, view, inv.req("param-name"))
    if f.get_set is not None and f.remove_from_set is not None:
        for member in f.get_set(view):
            f.remove_from_set(view, member)
    elif f.clear_map is not None:
        f.clear_map(view)
    elif f.set_map is not None:
        f.set_map(view, [])
    elif f.get_map is not None and f.remove_from_map is not None:
        for key, _ in f.get_map(view):
            f.remove_from_map(view, key)
    elif f.set is not None:
        try:
            f.set(view, "")
        except (ApiFailure, CliFailure):
            raise CliFailure("Cannot clear this parameter") from None
    else:
        raise CliFailure("Can only clear RW parameters")


# -- generating the commands ------------------------------------------------------------


def _register(cli: CliClass) -> None:
    specs = [f for f in cli.specs if not f.hidden]
    names = [f.name for f in specs]
    settable = [f.name for f in specs if f.set is not None]
    settable += [f.name + ":" for f in specs
                 if f.add_to_map is not None or f.set_in_map is not None or f.set_map is not None]
    addable = [f.name for f in specs if f.add_to_set is not None or f.add_to_map is not None]
    clearable = [f.name for f in specs
                 if f.set is not None or f.get_set is not None or f.get_map is not None]
    set_filters = [f.name + ":contains" for f in specs if f.get_set is not None]
    n = cli.name
    standard = n in ("vm", "network", "sr")

    def gen(suffix, reqd, optn, text, fn, open_params=False, flags=()):
        add(CommandSpec(f"{n}-{suffix}", reqd, optn, text, lambda inv, fn=fn: fn(inv, cli),
                        frozenset(flags), open_params, n))

    gen("list", [], ["params", "database:"] + names + set_filters,
        f"Lists the {cli.plural}, keeping those whose fields match the given field=value "
        "pairs (map-field:key=value for maps, set-field:contains=value for sets). params= "
        "chooses the columns (params=all for every field).",
        do_list, open_params=True, flags=("standard",) if standard else ())
    gen("param-list", ["uuid"], ["database:"],
        "Shows every field of the object with this uuid.", do_param_list)
    gen("param-get", ["uuid", "param-name"], ["param-key", "database:"],
        "Shows one field of the object; with param-key=<key>, one key of a map field.",
        do_param_get)
    if settable:
        gen("param-set", ["uuid"], settable,
            "Sets fields of the object: field=value, or map-field:key=value for a key of a "
            "map. An empty value clears a plain field.", do_param_set, open_params=True)
    if addable:
        gen("param-add", ["uuid", "param-name"], ["param-key"],
            "Adds to a set field (param-key=<member>) or to a map field (key=value pairs).",
            do_param_add, open_params=True)
        gen("param-remove", ["uuid", "param-name", "param-key"], [],
            "Removes a member of a set field or a key of a map field.", do_param_remove)
    if clearable:
        gen("param-clear", ["uuid", "param-name"], [],
            f"Empties a field (one of {','.join(clearable)}).", do_param_clear)


def register_all() -> None:
    for cli in CLASSES.values():
        _register(cli)
