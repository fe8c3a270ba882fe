"""The xenopsd simulator's on-disk state: a snapshot and a journal of changes."""

from __future__ import annotations

import json
import os

from xapi.backends.xenops.simulator import store as store_mod
from xapi.backends.xenops.simulator.store import Store, VmEntry


def _vm(vm_id: str, memory: int = 1) -> VmEntry:
    return VmEntry({"id": vm_id, "memory": memory})


def test_changes_survive_a_restart_and_a_torn_last_line_is_dropped(tmp_path):
    state = str(tmp_path)
    s = Store(state)
    s.vms["a"], s.vms["b"] = _vm("a"), _vm("b")
    s.save("a")  # no event loop: written at once
    s.save("b")
    s.vms["a"] = _vm("a", memory=2)
    s.save("a")
    del s.vms["b"]
    s.save("b")
    with open(os.path.join(state, "vms.journal"), "ab") as f:
        f.write(b'{"id":"a","doc":{"vm":{"id":"a","mem')  # a crash in the middle of a write
    again = Store(state)
    assert {k: e.vm for k, e in again.vms.items()} == {"a": {"id": "a", "memory": 2}}
    # Loading folded the journal into the snapshot.
    assert os.path.getsize(os.path.join(state, "vms.journal")) == 0
    assert json.loads(open(os.path.join(state, "vms.snapshot")).read())["a"]["vm"]["memory"] == 2


def test_an_unchanged_vm_writes_nothing_and_a_long_journal_is_compacted(tmp_path, monkeypatch):
    state = str(tmp_path)
    journal = os.path.join(state, "vms.journal")
    s = Store(state)
    s.vms["a"] = _vm("a")
    s.save("a")
    size = os.path.getsize(journal)
    s.save("a")
    assert os.path.getsize(journal) == size
    monkeypatch.setattr(store_mod, "_JOURNAL_MIN", 0)
    for memory in range(2, 50):
        s.vms["a"] = _vm("a", memory)
        s.save("a")
    assert os.path.getsize(journal) < 10 * size  # folded into the snapshot meanwhile
    assert Store(state).vms["a"].vm["memory"] == 49


def test_an_earlier_versions_file_per_vm_is_read_once(tmp_path):
    state = str(tmp_path)
    os.makedirs(os.path.join(state, "vms"))
    doc = {"vm": {"id": "old"}, "vbds": {}, "vifs": {}, "domain": {"domid": 7}}
    with open(os.path.join(state, "vms", "old.json"), "w") as f:
        json.dump(doc, f)
    s = Store(state)
    assert s.vms["old"].domain == {"domid": 7}
    assert s.counters["next_domid"] == 8
    assert os.listdir(os.path.join(state, "vms")) == []
    assert Store(state).vms["old"].vm == {"id": "old"}
