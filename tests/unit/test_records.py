"""The compiled per-class record encoders agree with the generic encoders."""

from __future__ import annotations

import json
from datetime import datetime, timezone

from hypothesis import given, settings
from hypothesis import strategies as st

from api import jsonrpc, records, xmlrpc
from db.cache import Change, ObjectCache
from db.schema import stored_classes
from xapi.idl.model import model

M = model()


def _cache() -> ObjectCache:
    return ObjectCache(M, stored_classes(M))


def _reference(cache, cls, row) -> dict:
    record = cache.record(cls, row)
    return {k: v for k, v in record.items()
            if not (cache.classes[cls].fields[k].type.kind == "option" and v is None)}


def _full_row(cls: str, overrides: dict) -> dict:
    values = {}
    for f in M.classes[cls].stored_fields:
        if f.type.kind == "enum" and not f.has_default:
            values[f.name] = M.enums[f.type.name][0]
        else:
            values[f.name] = f.initial
    values.update(overrides)
    return values


text = st.text(max_size=20)


@settings(max_examples=60, deadline=None)
@given(label=text, other=st.dictionaries(text, text, max_size=4), tags=st.lists(text, max_size=3),
       memory=st.integers(min_value=-(2**63), max_value=2**63 - 1), flag=st.booleans())
def test_vm_records_match_the_generic_encoders(label, other, tags, memory, flag):
    cache = _cache()
    vm = "OpaqueRef:vm"
    values = _full_row("VM", {"uuid": "u-1", "name_label": label, "other_config": other,
                              "tags": tags, "memory_static_max": memory, "is_a_template": flag,
                              "snapshot_time": datetime(2024, 4, 20, 12, tzinfo=timezone.utc),
                              "VCPUs_params": {"weight": "256"}})
    cache.apply([Change("VM", vm, "add", values, 1, 1)], 1)
    cache.apply([Change("VBD", "OpaqueRef:vbd", "add", _full_row("VBD", {"VM": vm, "uuid": "u-2"}), 2, 2)], 2)
    row = cache.get("VM", vm)
    reference = _reference(cache, "VM", row)
    assert reference["VBDs"] == ["OpaqueRef:vbd"]
    assert records.encoded(cache, "VM", row, "xml") == xmlrpc.encode(reference)
    assert json.loads(records.encoded(cache, "VM", row, "json")) == json.loads(jsonrpc.encode(reference))


def test_every_class_encodes_like_the_generic_encoder():
    cache = _cache()
    for n, cls in enumerate(cache.classes, 1):
        values = _full_row(cls, {"uuid": f"u-{n}"} if "uuid" in M.classes[cls].fields else {})
        cache.apply([Change(cls, f"OpaqueRef:{n}", "add", values, n, n)], n)
        row = cache.get(cls, f"OpaqueRef:{n}")
        reference = _reference(cache, cls, row)
        assert records.encoded(cache, cls, row, "xml") == xmlrpc.encode(reference), cls
        assert json.loads(records.encoded(cache, cls, row, "json")) == json.loads(jsonrpc.encode(reference)), cls
