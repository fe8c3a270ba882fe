"""Generate ``xapi/idl/model.json`` from upstream's data model export.

Usage::

    python -m xapi.idl.generate [DATAMODEL_JSON [ERRORS_JSON]]

The inputs default to ``../shared/xenapi/{datamodel,errors}.json`` next to the
repository.  Only structural facts are carried over (names, types, qualifiers,
defaults, enum values, parameters, roles, error codes and their parameter
names, relations); descriptions and other prose are dropped.  The output is
committed so that the project runs without the shared folder.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
DEFAULT_SHARED = REPO.parent / "shared" / "xenapi"
OUTPUT = HERE / "model.json"

_LIFECYCLE = {
    "Published_s": "published",
    "Prototyped_s": "prototyped",
    "Deprecated_s": "deprecated",
    "Removed_s": "removed",
}


def _field(f: dict) -> dict:
    out = {"name": f["name"], "type": f["type"], "qualifier": f["qualifier"]}
    if f["has_default"]:
        out["default"] = f["default"]
    if f["lifecycle"] != "Published_s":
        out["lifecycle"] = _LIFECYCLE[f["lifecycle"]]
    if f["setter_roles"]:
        out["setter_roles"] = f["setter_roles"]
    if f["map_keys_roles"]:
        out["map_keys_roles"] = f["map_keys_roles"]
    return out


def _message(m: dict) -> dict:
    params = []
    for p in m["params"]:
        param = {"name": p["name"], "type": p["type"]}
        if "default" in p:
            param["default"] = p["default"]
        params.append(param)
    out = {
        "name": m["name"],
        "params": params,
        "result": m["result"]["type"] if m["result"] else None,
        "tag": m["tag"],
        "roles": m["roles"],
    }
    for key in ("async", "pool_internal", "hidden_from_docs"):
        if m[key]:
            out[key] = True
    if not m["session"]:
        out["no_session"] = True
    if m["lifecycle"] != "Published_s":
        out["lifecycle"] = _LIFECYCLE[m["lifecycle"]]
    if m["errors"]:
        out["errors"] = sorted({e["name"] for e in m["errors"]})
    if "constructor_fields" in m:
        out["constructor_fields"] = [
            [c["name"], bool(c["required"])] for c in m["constructor_fields"]
        ]
    return out


def _class(c: dict) -> dict:
    return {
        "name": c["name"],
        "lifecycle": _LIFECYCLE[c["lifecycle"]],
        "in_database": c["in_database"],
        "gen_events": c["gen_events"],
        "gen_constructor_destructor": c["gen_constructor_destructor"],
        "persist": c["persist"],
        "enums": {e["name"]: [v["name"] for v in e["values"]] for e in c["enums"]},
        "fields": [_field(f) for f in c["fields"]],
        "messages": [_message(m) for m in c["messages"]],
    }


def generate(datamodel: dict, errors: dict) -> dict:
    return {
        "source": {
            "repository": datamodel["meta"]["source_repository"],
            "commit": datamodel["meta"]["source_commit"],
        },
        "api_version": [datamodel["api_version_major"], datamodel["api_version_minor"]],
        "roles": datamodel["roles_all"],
        "no_task_id_for": datamodel["no_task_id_for"],
        "relations": [[r["from"], r["to"]] for r in datamodel["relations"]],
        "errors": {e["name"]: e["params"] for e in errors["errors"]},
        "classes": [_class(c) for c in datamodel["classes"]],
    }


def write(model: dict, path: Path = OUTPUT) -> None:
    # One class per line keeps diffs of regenerated models readable.
    head = {k: v for k, v in model.items() if k != "classes"}
    lines = [json.dumps(head, sort_keys=True, separators=(",", ":"))[:-1] + ',"classes":[']
    lines.append(",\n".join(json.dumps(c, separators=(",", ":")) for c in model["classes"]))
    lines.append("]}")
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    dm_path = Path(argv[0]) if argv else DEFAULT_SHARED / "datamodel.json"
    err_path = Path(argv[1]) if len(argv) > 1 else dm_path.with_name("errors.json")
    model = generate(json.loads(dm_path.read_text()), json.loads(err_path.read_text()))
    write(model)
    print(f"wrote {OUTPUT.relative_to(REPO)}: {len(model['classes'])} classes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
