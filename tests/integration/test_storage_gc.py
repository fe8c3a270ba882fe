"""The storage GC (workers/storage_gc.py): coalescing VHD snapshot trees.

Data is written as a VM would, straight into the volume files (``vhd.open``
of the leaf the datapath hands over), and every remaining volume is read back
and compared with a model after each GC pass.  Trees are made through the
file SR plugin (fast) or through the XenAPI handlers (``VDI.snapshot``,
``VDI.clone``, ``VDI.destroy``) and the server's ``run_pass``.  Crashes are
an exception raised from ``coalesce_into_parent``'s progress callback, and a
subprocess running the GC killed (SIGKILL) at every step in turn.  Last, a
live server's own GC loop leaf-coalesces the disk of a running VM.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from tests import support
from workers import storage_gc
from xapi.backends.storage import vhd
from xapi.backends.storage.plugins import DEFAULT_PLUGIN_DIR, PluginRegistry

MiB = 1024 * 1024
SIZE = 16 * MiB                   # 8 blocks of 2 MiB


@pytest.fixture(scope="module")
def registry() -> PluginRegistry:
    return PluginRegistry([DEFAULT_PLUGIN_DIR], timeout=60)


class FileSR:
    """A file SR driven through its plugin, its volumes written as a VM writes them."""

    def __init__(self, registry: PluginRegistry, root: Path):
        self.registry = registry
        self.plugin = registry.volume("file")
        self.root = root
        config = self.plugin.call("SR.create", uuid=str(uuid.uuid4()), name="gc", description="",
                                  configuration={"path": str(root / "sr")})
        self.uri = self.plugin.call("SR.attach", configuration=config)
        self.path = config["path"]
        self.state_dir = str(root / "gc-state")

    def call(self, method: str, **params):
        return self.plugin.call(method, sr=self.uri, **params)

    def file(self, key: str) -> str:
        return os.path.join(self.path, key + ".vhd")

    def new(self, size: int = SIZE) -> str:
        return self.call("Volume.create", name="disk", description="", size=size,
                         sharable=False)["key"]

    def write(self, key: str, offset: int, data: bytes) -> None:
        with vhd.open(self.file(key), writable=True) as disk:
            disk.write(offset, data)

    def read(self, key: str) -> bytes:
        with vhd.open(self.file(key)) as disk:
            return disk.read(0, disk.virtual_size)

    def tree(self) -> dict:
        tree = self.call("SR.tree")
        tree["by_key"] = {n["key"]: n for n in tree["nodes"]}
        return tree

    def depth(self, key: str) -> int:
        return len(vhd.chain(self.file(key)))

    def collector(self, **kwargs) -> storage_gc.SrCollector:
        return storage_gc.SrCollector(self.registry, self.plugin, self.uri, self.state_dir,
                                      "sr", **kwargs)

    def datapath(self, key: str):
        return self.registry.datapath_for([self.call("Volume.stat", key=key)["uri"][0]])


@pytest.fixture
def sr(registry, tmp_path) -> FileSR:
    return FileSR(registry, tmp_path)


def check(sr: FileSR, model: dict[str, bytearray]) -> None:
    """Every volume is listed and reads what was written to it."""
    assert sorted(v["key"] for v in sr.call("SR.ls")) == sorted(model)
    for key, data in model.items():
        assert sr.read(key) == data, f"volume {key} changed"


def check_done(sr: FileSR) -> dict:
    """Nothing left for the GC; nothing paused, no journal."""
    tree = sr.tree()
    assert tree["prunable"] == tree["coalescable"] == tree["leaf_coalescable"] == []
    for node in tree["nodes"]:
        if node["hidden"]:
            assert len(node["children"]) >= 2, node     # a real branch point
        assert not (node["datapath"] or {}).get("paused"), node
    assert not os.path.exists(os.path.join(sr.state_dir, "sr.json"))
    # nor the staged commit of a leaf-coalesce, nor the file it replaced
    assert not [n for n in os.listdir(sr.path) if n.endswith((".merged", ".old"))]
    return tree


def write_random(sr: FileSR, model: dict, key: str, rng: random.Random, most: int = 3 * MiB) -> None:
    length = rng.randint(1, most)
    offset = rng.randrange(0, SIZE - length)
    if rng.random() < 0.5:                          # mostly whole sectors, sometimes not
        offset, length = offset // 512 * 512, max(512, length // 512 * 512)
    data = rng.randbytes(length)
    sr.write(key, offset, data)
    model[key][offset:offset + length] = data


# ---------------------------------------------------------------- random trees


@pytest.mark.parametrize("seed", [5, 8])
def test_random_snapshots_and_deletes_coalesce_without_changing_data(sr, seed):
    rng = random.Random(seed)
    model: dict[str, bytearray] = {}
    writable: set[str] = set()
    for _ in range(2):
        key = sr.new()
        model[key] = bytearray(SIZE)
        writable.add(key)
        write_random(sr, model, key, rng, 6 * MiB)
    done = {"pruned": 0, "coalesced": 0, "leaf_coalesced": 0}
    for _ in range(30):
        op = rng.choices(["write", "snapshot", "clone", "destroy", "gc"], [5, 2, 1, 3, 1])[0]
        if op == "write":
            write_random(sr, model, rng.choice([k for k in model if k in writable]), rng)
        elif op in ("snapshot", "clone"):
            source = rng.choice(list(model))
            new = sr.call("Volume." + op, key=source)["key"]
            model[new] = bytearray(model[source])
            if op == "clone":
                writable.add(new)
        elif op == "destroy" and len(writable) > 1:
            victim = rng.choice(list(model))
            if victim in writable and len(writable) == 1:
                continue
            sr.call("Volume.destroy", key=victim)
            del model[victim]
            writable.discard(victim)
        elif op == "gc":
            report = sr.collector().run()
            assert report.error is None and not report.skipped, report
            for name in done:
                done[name] += len(getattr(report, name))
            check(sr, model)
    report = sr.collector().run()
    for name in done:
        done[name] += len(getattr(report, name))
    check(sr, model)
    check_done(sr)
    assert all(done.values()), f"the sequence left the GC some kind of work undone: {done}"


def test_gc_racing_with_snapshots_and_deletes(sr):
    """The GC loops in a thread while snapshots, clones and deletes go on:
    every volume stays listed at every moment (``SR.ls`` takes no lock) and
    reads the same in the end."""
    rng = random.Random(2)
    model: dict[str, bytearray] = {}
    for _ in range(2):
        key = sr.new()
        model[key] = bytearray(SIZE)
        write_random(sr, model, key, rng, 8 * MiB)
    stop, failures, reports = threading.Event(), [], []

    def gc_loop() -> None:
        while not stop.is_set():
            try:
                reports.append(sr.collector().run())
            except Exception as exc:  # noqa: BLE001
                failures.append(exc)
                return

    thread = threading.Thread(target=gc_loop)
    thread.start()
    try:
        for _ in range(24):
            op = rng.choice(["snapshot", "clone", "destroy", "destroy"])
            if op == "destroy" and len(model) > 2:
                victim = rng.choice(list(model))
                sr.call("Volume.destroy", key=victim)
                del model[victim]
            elif op != "destroy":
                source = rng.choice(list(model))
                model[sr.call("Volume." + op, key=source)["key"]] = bytearray(model[source])
            assert sorted(v["key"] for v in sr.call("SR.ls")) == sorted(model)
    finally:
        stop.set()
        thread.join(60)
    assert not failures, failures
    assert any(r.changed for r in reports)
    sr.collector().run()
    check(sr, model)
    check_done(sr)


# ---------------------------------------------------------------- through the XenAPI handlers


@pytest.fixture
def rt(fresh_db_url, tmp_path):
    from api.server import open_runtime
    from xapi.config import Config

    # no xenopsd queue: no simulator, no watchers to stop
    runtime = open_runtime(Config(state_dir=str(tmp_path), db_url=fresh_db_url, xenopsd_queues=""))
    yield runtime
    listener = runtime.extra.get("listener")
    if listener is not None:
        listener.stop()
    runtime.executor.shutdown()
    runtime.db.close()


def test_run_pass_after_xenapi_snapshots_and_deletes(rt):
    from xapi.context import Context
    from xapi.impl import storage as handlers

    ctx = Context(rt=rt, method="test")
    cache = rt.cache
    sr = cache.get("pool", rt.pool_ref).values["default_SR"]
    pbd = rt.storage.local_pbd(sr)
    sr_path = cache.get("PBD", pbd).values["device_config"]["path"]
    uri = rt.storage.sr_uri(sr)
    plugin = rt.storage.volume_plugin("file")
    rng = random.Random(3)

    def location(vdi: str) -> str:
        return os.path.join(sr_path, cache.get("VDI", vdi).values["location"] + ".vhd")

    def write(vdi: str, most: int = 3 * MiB) -> None:
        length = rng.randint(1, most)
        offset = rng.randrange(0, SIZE - length)
        data = rng.randbytes(length)
        with vhd.open(location(vdi), writable=True) as disk:
            disk.write(offset, data)
        model[vdi][offset:offset + length] = data

    vdi = handlers.create_vdi(ctx, {"SR": sr, "virtual_size": SIZE, "name_label": "gc",
                                    "type": "user", "sharable": False, "read_only": False,
                                    "other_config": {}})
    model = {vdi: bytearray(SIZE)}
    write(vdi, 8 * MiB)
    snap1 = handlers.snapshot_vdi(ctx, vdi)
    model[snap1] = bytearray(model[vdi])
    write(vdi)
    clone = handlers.clone_vdi(ctx, vdi)
    model[clone] = bytearray(model[vdi])
    write(vdi)
    write(clone)
    snap2 = handlers.snapshot_vdi(ctx, clone)
    model[snap2] = bytearray(model[clone])
    write(clone)
    snap3 = handlers.snapshot_vdi(ctx, vdi)
    model[snap3] = bytearray(model[vdi])
    for victim in (snap2, snap1, snap3):
        handlers.destroy_vdi(ctx, victim)
        del model[victim]
    depth_before = {v: len(vhd.chain(location(v))) for v in model}

    # sm's switch: no leaf-coalesce of this VDI
    with rt.db.write() as tx:
        tx.update("VDI", clone, {"other_config": {"leaf-coalesce": "false"}})
    report = storage_gc.run_pass(rt)
    (sr_report,) = report.srs
    assert sr_report.error is None and sr_report.changed, sr_report
    assert cache.get("VDI", clone).values["location"] in sr_report.skipped
    for v, data in model.items():
        with vhd.open(location(v)) as disk:
            assert disk.read(0, SIZE) == data
    # interior nodes above it may have gone, the leaf itself is still apart
    assert cache.get("VDI", clone).values["location"] in plugin.call(
        "SR.tree", sr=uri)["leaf_coalescable"]

    with rt.db.write() as tx:
        tx.update("VDI", clone, {"other_config": {}})
    report = storage_gc.run_pass(rt)
    assert report.errors == [] and report.changed
    tree = plugin.call("SR.tree", sr=uri)
    assert tree["prunable"] == tree["coalescable"] == tree["leaf_coalescable"] == []
    parents = {n["key"]: n["parent"] for n in tree["nodes"]}
    for v, data in model.items():
        with vhd.open(location(v)) as disk:
            assert disk.read(0, SIZE) == data
        assert len(vhd.chain(location(v))) < depth_before[v]
        record = cache.get("VDI", v).values
        # the records were refreshed: vhd-parent and sizes are what the files say
        assert record["sm_config"].get("vhd-parent") == parents[record["location"]]
        assert record["physical_utilisation"] == os.path.getsize(location(v))
        assert record["virtual_size"] == SIZE
    stat = plugin.call("SR.stat", sr=uri)
    assert cache.get("SR", sr).values["physical_utilisation"] == stat["physical_utilisation"]
    assert not [n for n in os.listdir(storage_gc.state_dir(rt)) if n.endswith(".json")]
    assert storage_gc.run_pass(rt).changed is False      # nothing left


# ---------------------------------------------------------------- failures and kills


def _two_step_tree(sr: FileSR, model: dict) -> tuple[str, str]:
    """V -> B2 -> B1 with B2 coalescable into B1 and V leaf-coalescable into B1
    afterwards; V is active read/write in domain 7 (a running VM).  Returns
    (V, B2)."""
    rng = random.Random(7)
    key = sr.new()
    model[key] = bytearray(SIZE)
    for offset, length in ((0, 8 * MiB), (3 * MiB, 7 * MiB), (9 * MiB, 6 * MiB + 1000)):
        if model[key] != bytearray(SIZE):
            snap = sr.call("Volume.snapshot", key=key)["key"]
            sr.call("Volume.destroy", key=snap)
        data = rng.randbytes(length)
        sr.write(key, offset, data)
        model[key][offset:offset + length] = data
    dp, uri = sr.datapath(key)
    dp.call("Datapath.open", uri=uri, persistent=True)
    dp.call("Datapath.attach", uri=uri, domain="7")
    dp.call("Datapath.activate", uri=uri, domain="7")
    tree = sr.tree()
    b2 = tree["by_key"][key]["parent"]
    assert b2 in tree["coalescable"] and key in tree["leaf_coalescable"]
    return key, b2


def test_exception_in_the_middle_of_a_coalesce_is_resumed(sr):
    model: dict[str, bytearray] = {}
    leaf, interior = _two_step_tree(sr, model)

    def fail_at(target: str):
        def progress(key: str, done: int, total: int) -> None:
            if key == target and done == 2:
                raise RuntimeError(f"injected failure in {key}")
        return progress

    with pytest.raises(RuntimeError, match="injected"):
        sr.collector(progress=fail_at(interior)).run()
    journal = json.loads(Path(sr.state_dir, "sr.json").read_text())
    assert journal["op"] == "coalesce" and journal["step"] == "copy"
    check(sr, model)

    with pytest.raises(RuntimeError, match="injected"):           # resumes, then the leaf fails
        sr.collector(progress=fail_at(leaf)).run()
    check(sr, model)
    tree = sr.tree()
    assert interior not in tree["by_key"] and tree["leaf_coalescable"] == [leaf]
    node = tree["by_key"][leaf]
    assert not node["datapath"].get("paused") and node["datapath"]["active"] == {"7": "rw"}
    assert not Path(sr.state_dir, "sr.json").exists()            # a failed leaf step is undone

    report = sr.collector().run()
    assert report.leaf_coalesced == [leaf]
    check(sr, model)
    tree = check_done(sr)
    assert [n["key"] for n in tree["nodes"]] == [leaf]
    assert tree["by_key"][leaf]["datapath"]["active"] == {"7": "rw"}


def test_an_unreadable_vhd_stops_the_gc_on_its_sr(sr):
    model: dict[str, bytearray] = {}
    leaf, interior = _two_step_tree(sr, model)
    broken = Path(sr.path, f"{uuid.uuid4()}.vhd")
    broken.write_bytes(b"not a VHD" * 1000)
    report = sr.collector().run()
    assert not report.changed and "unreadable" in report.skipped["*"]
    assert sr.tree()["coalescable"] == [interior]
    broken.unlink()
    assert sr.collector().run().leaf_coalesced == [leaf]
    check(sr, model)


KILLER = r"""
import json, os, signal, sys
from workers.storage_gc import SrCollector
from xapi.backends.storage.plugins import PluginRegistry

uri, state_dir, killed = sys.argv[1], sys.argv[2], set(json.loads(sys.argv[3]))
targets = json.loads(sys.argv[4])          # null: every step

def die(step):
    if step not in killed and (targets is None or step in targets):
        print(step, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

def progress(key, done, total):
    if done == 2 and total > 2:
        die("copy:" + key)

registry = PluginRegistry(timeout=60)
report = SrCollector(registry, registry.volume("file"), uri, state_dir, "sr",
                     progress=progress, checkpoint=die).run()
print("finished", report.error)
"""


def _kill_until_done(sr: FileSR, model: dict, targets: list[str] | None) -> list[str]:
    """Run the GC in a subprocess killed (SIGKILL) at the first step of
    ``targets`` (None: any step) it has not been killed at yet, again and
    again until a run finishes; check the volumes after every kill."""
    env = dict(os.environ, PYTHONPATH=str(support.REPO))
    killed: list[str] = []
    for _ in range(20):
        run = subprocess.run([sys.executable, "-c", KILLER, sr.uri, sr.state_dir,
                              json.dumps(killed), json.dumps(targets)], cwd=support.REPO,
                             env=env, capture_output=True, text=True, timeout=60)
        if run.returncode == 0:
            assert run.stdout.split()[-2:] == ["finished", "None"], run.stdout
            return killed
        assert run.returncode == -signal.SIGKILL, run.stderr
        killed.append(run.stdout.split()[-1])
        # what any client sees at once: every volume listed ...
        assert sorted(v["key"] for v in sr.call("SR.ls")) == sorted(model)
        # ... and, once a call has taken the SR's lock, the same data
        sr.tree()
        check(sr, model)
    raise AssertionError(f"the GC never finished: killed at {killed}")


def _killed_tree_is_done(sr: FileSR, model: dict, leaves: list[str]) -> None:
    check(sr, model)
    tree = check_done(sr)
    assert sorted(n["key"] for n in tree["nodes"]) == sorted(leaves)
    for leaf in leaves:
        assert sr.depth(leaf) == 1
        assert tree["by_key"][leaf]["datapath"]["active"] == {"7": "rw"}


def test_gc_killed_at_every_step_resumes_safely(sr):
    model: dict[str, bytearray] = {}
    leaf, interior = _two_step_tree(sr, model)
    killed = _kill_until_done(sr, model, None)
    # after "leaf-staged" the plugin's recovery finishes the commit (next test)
    assert killed == [f"copy:{interior}", "coalesce-copied", "coalesce-relinked",
                      "coalesce-deleted", f"copy:{leaf}", "leaf-copied", "leaf-staged"]
    _killed_tree_is_done(sr, model, [leaf])


def test_gc_killed_late_in_leaf_commits(sr):
    """One disk's commit dies after the parent was unhidden, the other's
    after the commit, before the unpause."""
    model: dict[str, bytearray] = {}
    leaves = [_two_step_tree(sr, model)[0] for _ in range(2)]
    assert _kill_until_done(sr, model, ["leaf-unhidden", "leaf-committed"]) == [
        "leaf-unhidden", "leaf-committed"]
    _killed_tree_is_done(sr, model, leaves)


# ---------------------------------------------------------------- live: a running VM's disk


def _install(x, name: str) -> str:
    (tpl,) = [r for r, v in x.VM.get_all_records_where('field "is_default_template"="true"').items()
              if v["name_label"] == "Other install media"]
    vm = x.VM.clone(tpl, name)
    x.VM.provision(vm)
    x.VM.set_is_a_template(vm, False)
    return vm


def _wait_for(predicate, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_live_leaf_coalesce_of_a_running_vms_disk(fresh_db_url, registry):
    import XenAPI

    srv = support.start_server(db_url=fresh_db_url, storage_gc_interval=0.3)
    try:
        session = XenAPI.Session(srv.url + "/")
        session.login_with_password("root", support.ROOT_PASSWORD, "1.0", "pytest")
        x = session.xenapi
        sr = x.pool.get_default_SR(x.pool.get_all()[0])
        sr_path = x.PBD.get_device_config(x.SR.get_PBDs(sr)[0])["path"]
        plugin = registry.volume("file")
        sr_uri = plugin.call("SR.attach", configuration={"path": sr_path})

        def tree() -> dict:
            t = plugin.call("SR.tree", sr=sr_uri)
            t["by_key"] = {n["key"]: n for n in t["nodes"]}
            return t

        vdi = x.VDI.create({"SR": sr, "virtual_size": str(SIZE), "name_label": "live",
                            "name_description": "", "type": "user", "sharable": False,
                            "read_only": False, "other_config": {}, "xenstore_data": {},
                            "sm_config": {}, "tags": []})
        key = x.VDI.get_location(vdi)
        path = os.path.join(sr_path, key + ".vhd")
        rng = random.Random(1)
        first = rng.randbytes(6 * MiB)
        with vhd.open(path, writable=True) as disk:
            disk.write(0, first)
        vm = _install(x, "gc-live")
        x.VBD.create({"VM": vm, "VDI": vdi, "userdevice": "1", "bootable": False, "mode": "RW",
                      "type": "Disk", "unpluggable": False, "empty": False, "other_config": {},
                      "qos_algorithm_type": "", "qos_algorithm_params": {}})
        x.VM.start(vm, False, False)
        vm_uuid = x.VM.get_uuid(vm)
        state = tree()["by_key"][key]["datapath"]
        assert state["active"] == {vm_uuid: "rw"}

        snap = x.VDI.snapshot(vdi, {})
        with vhd.open(path, writable=True) as disk:          # the running VM writes on
            disk.write(4 * MiB, rng.randbytes(5 * MiB))
        with vhd.open(path) as disk:
            expected = disk.read(0, SIZE)
        depth = len(vhd.chain(path))
        assert depth == 2
        generation = tree()["by_key"][key]["datapath"].get("generation", 0)
        x.VDI.destroy(snap)

        # the server's own GC loop leaf-coalesces the disk under the VM
        assert _wait_for(lambda: tree()["by_key"][key]["parent"] is None), tree()
        assert len(vhd.chain(path)) == 1 < depth
        with vhd.open(path) as disk:
            assert disk.read(0, SIZE) == expected
        assert x.VM.get_power_state(vm) == "Running"
        state = tree()["by_key"][key]["datapath"]
        assert state["active"] == {vm_uuid: "rw"} and not state.get("paused")
        assert state["generation"] > generation         # unpaused: the holder reopens
        assert _wait_for(lambda: "vhd-parent" not in x.VDI.get_sm_config(vdi)
                         and int(x.VDI.get_physical_utilisation(vdi)) == os.path.getsize(path))
        # and the VM's disk works on
        with vhd.open(path, writable=True) as disk:
            disk.write(0, b"after")
        x.VM.hard_shutdown(vm)
        assert not (tree()["by_key"][key]["datapath"] or {}).get("active")
        gc_lines = [line for line in srv.log().splitlines() if "storage GC" in line]
        assert any("leaf-coalesced 1" in line for line in gc_lines), gc_lines
        assert not [line for line in gc_lines if "failed" in line], gc_lines
    finally:
        srv.stop()
