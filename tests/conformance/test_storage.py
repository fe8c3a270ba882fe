"""The SMAPIv3 storage contract (volume + datapath plugins), through ``PluginRegistry``.

Every contract test takes an ``impl``: one of the project's volume plugins,
with the SR configuration it needs and, for a plugin that cannot create
volumes (an ISO library is filled from outside), a way to put one in place.
Operations a plugin's ``Plugin.Query`` features do not list are skipped.
Data goes through the datapath's attach result: a ``vhd+file`` path is opened
with ``vhd.open``, a ``file`` path read as raw bytes.

Every test runs twice: with the project's Python scripts started by the
registry's fork server (``launcher.py``, as the server runs them) and as
plain processes.

Then come the file SR's snapshot tree as the GC sees it (``SR.tree``), its
recovery of interrupted snapshots, and the registry's handling of broken
plugins.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import stat
import textwrap
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import unquote, urlsplit

import pytest

from xapi.backends.storage import vhd
from xapi.backends.storage.plugins import (DEFAULT_PLUGIN_DIR, Plugin, PluginRegistry,
                                           StorageError, os_error)

MiB = 1024 * 1024


def pattern(seed: int, length: int) -> bytes:
    return random.Random(seed).randbytes(length)


# ---------------------------------------------------------------- implementations


@dataclass
class Impl:
    sr_type: str
    configuration: Callable[[Path], dict[str, str]]
    # puts a volume of ``size`` bytes where the SR made under ``root`` finds it; its key
    seed: Callable[[Path, int], str] | None = None


def _iso_location(root: Path) -> dict[str, str]:
    location = root / "isos"
    location.mkdir(exist_ok=True)
    return {"location": str(location)}


def _seed_iso(root: Path, size: int) -> str:
    name = f"disc-{uuid.uuid4().hex[:8]}.iso"
    (root / "isos" / name).write_bytes(pattern(size, size))
    return name


IMPLS = {
    "file": Impl("file", lambda root: {"path": str(root / "sr")}),
    "iso": Impl("iso", _iso_location, _seed_iso),
}


@pytest.fixture(scope="module", params=["fork-server", "exec"])
def registry(request) -> Iterator[PluginRegistry]:
    """The plugins as the server runs them (the project's Python scripts
    through the launcher's fork server) and as plain executables."""
    registry = PluginRegistry([DEFAULT_PLUGIN_DIR], timeout=30,
                              preload=request.param == "fork-server")
    yield registry
    registry.close()


@pytest.fixture(params=sorted(IMPLS))
def impl(request) -> Impl:
    return IMPLS[request.param]


@dataclass
class SR:
    impl: Impl
    plugin: Plugin
    registry: PluginRegistry
    root: Path
    configuration: dict[str, str]
    uri: str

    @property
    def features(self) -> list[str]:
        return self.plugin.features()

    def require(self, *features: str) -> None:
        missing = [f for f in features if f not in self.features]
        if missing:
            pytest.skip(f"{self.impl.sr_type} lacks {', '.join(missing)}")

    def call(self, method: str, **params):
        return self.plugin.call(method, sr=self.uri, **params)

    def new_volume(self, size: int = 4 * MiB, name: str = "disk") -> dict:
        if "VDI_CREATE" in self.features:
            return self.call("Volume.create", name=name, description="made by a test",
                             size=size, sharable=False)
        if self.impl.seed is None:
            pytest.skip(f"{self.impl.sr_type} can neither create nor be given a volume")
        key = self.impl.seed(self.root, size)
        return self.call("Volume.stat", key=key)

    def datapath(self, volume: dict) -> tuple[Plugin, str]:
        return self.registry.datapath_for(volume["uri"])


def _create_sr(registry: PluginRegistry, impl: Impl, root: Path, **extra: str) -> SR:
    plugin = registry.volume(impl.sr_type)
    configuration = {**impl.configuration(root), **extra}
    if "SR_CREATE" in plugin.features():
        configuration = plugin.call("SR.create", uuid=str(uuid.uuid4()), configuration=configuration,
                                    name="test SR", description="made by a test")
    uri = plugin.call("SR.attach", configuration=configuration)
    return SR(impl, plugin, registry, root, configuration, uri)


@pytest.fixture
def sr(registry, impl, tmp_path) -> SR:
    return _create_sr(registry, impl, tmp_path)


@pytest.fixture
def file_sr(registry, tmp_path) -> SR:
    return _create_sr(registry, IMPLS["file"], tmp_path)


# ---------------------------------------------------------------- datapath helpers


def _file_path(backend: dict) -> str:
    for kind, detail in backend["implementations"]:
        if kind == "File":
            return detail["path"]
    raise AssertionError(f"no File implementation in {backend}")


def plug(dp: Plugin, uri: str, domain: str, *, write: bool) -> str:
    """open, attach, activate: the path the domain would use."""
    dp.call("Datapath.open", uri=uri, persistent=True)
    path = _file_path(dp.call("Datapath.attach", uri=uri, domain=domain))
    dp.call("Datapath.activate" if write else "Datapath.activate_readonly", uri=uri, domain=domain)
    return path


def unplug(dp: Plugin, uri: str, domain: str) -> None:
    dp.call("Datapath.deactivate", uri=uri, domain=domain)
    dp.call("Datapath.detach", uri=uri, domain=domain)
    dp.call("Datapath.close", uri=uri)


class Disk:
    """What a domain sees through the datapath's attach result.  Files are
    opened per access: a chain may change under an attached volume."""

    def __init__(self, uri: str, path: str):
        self.uri, self.path = uri, path

    def read(self, offset: int, length: int) -> bytes:
        if self.uri.startswith("vhd+file:"):
            with vhd.open(self.path) as disk:
                return disk.read(offset, length)
        with open(self.path, "rb") as f:
            f.seek(offset)
            return f.read(length)

    def write(self, offset: int, data: bytes) -> None:
        with vhd.open(self.path, writable=True) as disk:
            disk.write(offset, data)


@contextlib.contextmanager
def plugged(sr: SR, volume: dict, domain: str = "0", *, write: bool = False) -> Iterator[Disk]:
    dp, uri = sr.datapath(volume)
    path = plug(dp, uri, domain, write=write)
    try:
        yield Disk(uri, path)
    finally:
        unplug(dp, uri, domain)


def expect_error(code_prefix: str, call: Callable, *args, **kwargs) -> StorageError:
    with pytest.raises(StorageError) as info:
        call(*args, **kwargs)
    error = info.value
    assert error.code.startswith(code_prefix), error
    assert not any("Traceback" in p for p in error.params), error
    return error


VOLUME_FIELDS = {"key": str, "name": str, "description": str, "read_write": bool,
                 "sharable": bool, "virtual_size": int, "physical_utilisation": int,
                 "uri": list, "keys": dict}


def check_volume(record: dict) -> None:
    for field, kind in VOLUME_FIELDS.items():
        assert isinstance(record[field], kind), (field, record)
    assert record["uri"] and all("://" in u for u in record["uri"])
    assert record["virtual_size"] > 0 and record["physical_utilisation"] >= 0


# ---------------------------------------------------------------- discovery


def test_registry_finds_the_projects_plugins(registry):
    assert {"file", "iso"} <= set(registry.sr_types())
    assert {"vhd+file", "file"} <= set(registry.datapath_schemes())
    for sr_type in ("file", "iso"):
        query = registry.query(sr_type)
        assert query["plugin"] == sr_type
        assert query["required_api_version"] == "5.0"
        for field in ("name", "description", "vendor", "copyright", "version"):
            assert isinstance(query[field], str)
        assert isinstance(query["features"], list) and isinstance(query["configuration"], dict)
        assert query["required_cluster_stack"] == []
    for scheme in ("vhd+file", "file"):
        assert registry.datapath(scheme).query()["plugin"] == scheme


def test_method_names_are_case_insensitive(registry):
    plugin = registry.volume("file")
    assert plugin.has("sr.STAT") and plugin.has("Volume.Snapshot")
    assert plugin.call("plugin.query") == plugin.query()
    assert "SR.create" in plugin.methods()


# ---------------------------------------------------------------- SRs


def test_sr_lifecycle(registry, impl, tmp_path):
    sr = _create_sr(registry, impl, tmp_path)
    assert isinstance(sr.uri, str) and "://" in sr.uri
    info = sr.call("SR.stat")
    assert info["sr"] == sr.uri
    if "SR_CREATE" in sr.features:
        assert (info["name"], info["description"]) == ("test SR", "made by a test")
    assert 0 <= info["free_space"] <= info["total_space"]
    assert info["health"][0] == "Healthy" and info["clustered"] is False
    assert info["datasources"] == []

    sr.call("SR.set_name", new_name="renamed")
    sr.call("SR.set_description", new_description="described")
    info = sr.call("SR.stat")
    assert (info["name"], info["description"]) == ("renamed", "described")
    assert isinstance(sr.call("SR.ls"), list)

    if "SR_PROBE" in sr.features:
        found = sr.plugin.call("SR.probe", configuration=sr.configuration)
        assert [r["sr"]["name"] for r in found if "sr" in r] == ["renamed"]

    if "SR_DETACH" in sr.features:
        sr.call("SR.detach")
        assert sr.plugin.call("SR.attach", configuration=sr.configuration) == sr.uri
    if "SR_DELETE" in sr.features:
        sr.call("SR.destroy")


def test_sr_create_twice_is_refused(registry, tmp_path):
    sr = _create_sr(registry, IMPLS["file"], tmp_path)
    error = expect_error("SR_BACKEND_FAILURE_", sr.plugin.call, "SR.create", uuid=str(uuid.uuid4()),
                         configuration=sr.configuration, name="again", description="")
    assert error.code == "SR_BACKEND_FAILURE_42"


def _uri_path(uri: str) -> Path:
    return Path(unquote(urlsplit(uri).path))


def test_sr_destroy_removes_what_the_plugin_made(sr):
    sr.require("SR_DELETE")
    volume = sr.new_volume()
    sr.call("SR.destroy")
    # a volume the plugin made goes; an image put in a library from outside stays
    assert _uri_path(volume["uri"][0]).exists() == ("VDI_CREATE" not in sr.features)


# ---------------------------------------------------------------- volumes


def test_volume_create_resize_destroy(sr):
    sr.require("VDI_CREATE")
    volume = sr.call("Volume.create", name="disk", description="data", size=3 * MiB + 1,
                     sharable=False)
    check_volume(volume)
    assert volume["virtual_size"] >= 3 * MiB + 1
    assert (volume["name"], volume["description"], volume["read_write"]) == ("disk", "data", True)
    assert sr.call("Volume.stat", key=volume["key"]) == volume
    assert volume["key"] in [v["key"] for v in sr.call("SR.ls")]

    if "VDI_RESIZE" in sr.features:
        sr.call("Volume.resize", key=volume["key"], new_size=10 * MiB)
        assert sr.call("Volume.stat", key=volume["key"])["virtual_size"] >= 10 * MiB
        expect_error("SR_BACKEND_FAILURE_79", sr.call, "Volume.resize", key=volume["key"],
                     new_size=MiB)

    if "VDI_DESTROY" in sr.features:
        sr.call("Volume.destroy", key=volume["key"])
        assert volume["key"] not in [v["key"] for v in sr.call("SR.ls")]
        expect_error("VDI_MISSING", sr.call, "Volume.stat", key=volume["key"])


def test_volume_metadata(sr):
    volume = sr.new_volume()
    check_volume(volume)
    key = volume["key"]
    sr.call("Volume.set", key=key, k="vdi-type", v="user")
    sr.call("Volume.set", key=key, k="content_id", v="abc")
    sr.call("Volume.unset", key=key, k="content_id")
    sr.call("Volume.unset", key=key, k="never-set")
    sr.call("Volume.set_name", key=key, new_name="new name")
    sr.call("Volume.set_description", key=key, new_description="new description")
    record = sr.call("Volume.stat", key=key)
    assert record["keys"] == {"vdi-type": "user"}
    assert (record["name"], record["description"]) == ("new name", "new description")
    assert [v for v in sr.call("SR.ls") if v["key"] == key] == [record]


def test_sr_stat_counts_the_volumes(sr):
    before = sr.call("SR.stat")
    volume = sr.new_volume(size=2 * MiB)
    after = sr.call("SR.stat")
    assert after["physical_utilisation"] >= before["physical_utilisation"] + volume["physical_utilisation"]
    assert after["virtual_allocation"] == before["virtual_allocation"] + volume["virtual_size"]


def test_missing_operations_are_refused_cleanly(sr):
    refused = [(method, feature) for method, feature in
               [("Volume.create", "VDI_CREATE"), ("Volume.destroy", "VDI_DESTROY"),
                ("Volume.snapshot", "VDI_SNAPSHOT"), ("Volume.clone", "VDI_CLONE"),
                ("Volume.resize", "VDI_RESIZE")]
               if feature not in sr.features and sr.plugin.has(method)]
    if not refused:
        pytest.skip(f"{sr.impl.sr_type} offers every volume operation")
    volume = sr.new_volume()
    params = {"Volume.create": dict(name="x", description="", size=MiB, sharable=False),
              "Volume.resize": dict(key=volume["key"], new_size=64 * MiB)}
    for method, _ in refused:
        error = expect_error("", sr.call, method, **params.get(method, {"key": volume["key"]}))
        assert error.code == "SR_OPERATION_NOT_SUPPORTED" and error.params == [sr.uri]
    assert sr.call("Volume.stat", key=volume["key"]) == volume


# ---------------------------------------------------------------- data


def test_data_round_trip_through_the_datapath(sr):
    volume = sr.new_volume(size=6 * MiB)
    size = volume["virtual_size"]
    if not volume["read_write"]:
        with plugged(sr, volume) as disk:
            assert disk.read(0, size) == pattern(size, size)
        return
    # a sector, a block boundary crossing, the very end
    writes = [(0, pattern(1, 512)), (2 * MiB - 100, pattern(2, 300)), (size - 7, pattern(3, 7))]
    with plugged(sr, volume, write=True) as disk:
        for offset, data in writes:
            disk.write(offset, data)
    with plugged(sr, volume) as disk:
        for offset, data in writes:
            assert disk.read(offset, len(data)) == data
        assert disk.read(4096, 4096) == bytes(4096)


def test_snapshot_and_clone_keep_the_data(sr):
    sr.require("VDI_CREATE", "VDI_SNAPSHOT", "VDI_CLONE")
    leaf = sr.call("Volume.create", name="os", description="boot disk", size=8 * MiB, sharable=False)
    sr.call("Volume.set", key=leaf["key"], k="private", v="1")
    before, after = pattern(10, 3 * MiB), pattern(11, MiB)
    with plugged(sr, leaf, "1", write=True) as running:        # taken while in use
        running.write(MiB, before)
        snap = sr.call("Volume.snapshot", key=leaf["key"])
        assert running.read(MiB, len(before)) == before
        running.write(2 * MiB, after)
        clone = sr.call("Volume.clone", key=leaf["key"])

    check_volume(snap)
    assert snap["key"] != leaf["key"] and snap["read_write"] is False
    assert (snap["name"], snap["description"], snap["keys"]) == ("os", "boot disk", {})
    assert snap["virtual_size"] == leaf["virtual_size"]
    assert sr.call("Volume.stat", key=leaf["key"])["keys"] == {"private": "1"}
    assert clone["read_write"] is True
    with plugged(sr, snap, "2") as disk:
        assert disk.read(MiB, len(before)) == before
    with plugged(sr, clone, "3", write=True) as disk:
        assert disk.read(MiB, MiB) == before[:MiB] and disk.read(2 * MiB, MiB) == after
        disk.write(0, pattern(12, 4096))
    with plugged(sr, leaf, "1") as disk:
        assert disk.read(0, 4096) == bytes(4096)
        assert disk.read(MiB, MiB) == before[:MiB] and disk.read(2 * MiB, MiB) == after

    keys = {v["key"] for v in sr.call("SR.ls")}
    assert {leaf["key"], snap["key"], clone["key"]} <= keys and len(keys) == 3
    if "VDI_DESTROY" in sr.features:
        sr.call("Volume.destroy", key=snap["key"])
        sr.call("Volume.destroy", key=clone["key"])
        with plugged(sr, leaf, "1") as disk:
            assert disk.read(MiB, MiB) == before[:MiB] and disk.read(2 * MiB, MiB) == after


def test_concurrent_snapshots_of_one_volume(sr):
    sr.require("VDI_CREATE", "VDI_SNAPSHOT")
    leaf = sr.new_volume()
    with plugged(sr, leaf, write=True) as disk:
        disk.write(0, pattern(40, 4096))
    with ThreadPoolExecutor(4) as pool:
        snaps = list(pool.map(lambda _: sr.call("Volume.snapshot", key=leaf["key"]), range(4)))
    assert len({s["key"] for s in snaps}) == 4
    assert {v["key"] for v in sr.call("SR.ls")} == {leaf["key"], *(s["key"] for s in snaps)}
    for snap in (snaps[0], snaps[-1]):
        with plugged(sr, snap) as disk:
            assert disk.read(0, 4096) == pattern(40, 4096)


def test_read_write_activation_is_exclusive(sr):
    volume = sr.new_volume()
    dp, uri = sr.datapath(volume)
    if "VDI_ACTIVATE_READONLY" not in dp.features():
        pytest.skip(f"{dp.name} has no read-only activation")
    for domain in ("1", "2"):
        dp.call("Datapath.open", uri=uri, persistent=True)
        dp.call("Datapath.attach", uri=uri, domain=domain)
    if not volume["read_write"]:
        expect_error("VDI_READONLY", dp.call, "Datapath.activate", uri=uri, domain="1")
    else:
        dp.call("Datapath.activate", uri=uri, domain="1")
        dp.call("Datapath.activate", uri=uri, domain="1")           # idempotent
        expect_error("VDI_IN_USE", dp.call, "Datapath.activate", uri=uri, domain="2")
        expect_error("VDI_IN_USE", dp.call, "Datapath.activate_readonly", uri=uri, domain="2")
        dp.call("Datapath.deactivate", uri=uri, domain="1")
        dp.call("Datapath.activate", uri=uri, domain="2")
        expect_error("VDI_IN_USE", dp.call, "Datapath.activate_readonly", uri=uri, domain="1")
        dp.call("Datapath.deactivate", uri=uri, domain="2")
    dp.call("Datapath.activate_readonly", uri=uri, domain="1")
    dp.call("Datapath.activate_readonly", uri=uri, domain="2")      # readers share
    if volume["read_write"]:
        expect_error("VDI_IN_USE", dp.call, "Datapath.activate", uri=uri, domain="1")
    for domain in ("1", "2"):
        unplug(dp, uri, domain)
    dp.call("Datapath.detach", uri=uri, domain="1")                  # idempotent


def test_read_only_snapshot_cannot_be_activated_for_writing(sr):
    sr.require("VDI_CREATE", "VDI_SNAPSHOT")
    snap = sr.call("Volume.snapshot", key=sr.new_volume()["key"])
    dp, uri = sr.datapath(snap)
    expect_error("VDI_READONLY", dp.call, "Datapath.activate", uri=uri, domain="1")


def test_volume_in_use_cannot_be_destroyed(sr):
    sr.require("VDI_CREATE", "VDI_DESTROY")
    volume = sr.new_volume()
    dp, uri = sr.datapath(volume)
    dp.call("Datapath.attach", uri=uri, domain="5")
    expect_error("VDI_IN_USE", sr.call, "Volume.destroy", key=volume["key"])
    if "SR_DELETE" in sr.features:
        expect_error("SR_DEVICE_IN_USE", sr.call, "SR.destroy")
    dp.call("Datapath.detach", uri=uri, domain="5")
    sr.call("Volume.destroy", key=volume["key"])


# ---------------------------------------------------------------- errors


def test_bad_inputs_come_back_as_errors(sr):
    plugin, volume = sr.plugin, sr.new_volume()
    expect_error("SR_BACKEND_FAILURE_", plugin.call, "SR.attach", configuration={})
    expect_error("SR_BACKEND_FAILURE_", plugin.call, "SR.attach",
                 configuration={k: v + "/missing" for k, v in sr.configuration.items()})
    expect_error("SR_BACKEND_FAILURE_1", plugin.call, "SR.attach", configuration="not a map")
    expect_error("SR_BACKEND_FAILURE_1", plugin.call, "SR.stat", sr="not a uri")
    expect_error("SR_BACKEND_FAILURE_", plugin.call, "SR.stat", sr=sr.uri + "/missing")
    expect_error("SR_BACKEND_FAILURE_1", plugin.call, "Volume.stat", sr=sr.uri)
    expect_error("VDI_MISSING", sr.call, "Volume.stat", key="no-such-volume")
    expect_error("VDI_MISSING", sr.call, "Volume.stat", key="../" + volume["key"])
    expect_error("SR_BACKEND_FAILURE_1", sr.call, "Volume.set", key=volume["key"], k=1, v="x")
    if "VDI_CREATE" in sr.features:
        for size in (-1, 0, 2 ** 60):
            expect_error("SR_BACKEND_FAILURE_79", sr.call, "Volume.create", name="", description="",
                         size=size, sharable=False)
        expect_error("SR_BACKEND_FAILURE_1", sr.call, "Volume.create", name="", description="",
                     size="big", sharable=False)
        expect_error("SR_BACKEND_FAILURE_1", sr.call, "Volume.create", name="", description="",
                     size=MiB, sharable="yes")
    dp, uri = sr.datapath(volume)
    expect_error("SR_BACKEND_FAILURE_1", dp.call, "Datapath.attach", uri="nonsense", domain="1")
    expect_error("SR_BACKEND_FAILURE_46", dp.call, "Datapath.attach", uri=uri + ".gone", domain="1")


@pytest.fixture
def quota_impl(registry, impl) -> Impl:
    if "quota" not in registry.query(impl.sr_type)["configuration"]:
        pytest.skip(f"{impl.sr_type} has no quota configuration key")
    return impl


def test_sr_full_physically(registry, quota_impl, tmp_path):
    sr = _create_sr(registry, quota_impl, tmp_path, quota="4096")
    assert sr.call("SR.stat")["total_space"] == 4096
    error = expect_error("SR_BACKEND_FAILURE_44", sr.call, "Volume.create", name="", description="",
                         size=1024 * MiB, sharable=False)
    assert error.params[:1] == [""] and len(error.params) == 3


def test_sr_full_by_virtual_allocation(registry, quota_impl, tmp_path):
    sr = _create_sr(registry, quota_impl, tmp_path, quota=str(64 * MiB),
                    enforce_virtual_allocation="true")
    volume = sr.call("Volume.create", name="", description="", size=40 * MiB, sharable=False)
    for method, params in [("Volume.create", dict(name="", description="", size=30 * MiB,
                                                  sharable=False)),
                           ("Volume.snapshot", dict(key=volume["key"])),
                           ("Volume.clone", dict(key=volume["key"])),
                           ("Volume.resize", dict(key=volume["key"], new_size=70 * MiB))]:
        expect_error("SR_BACKEND_FAILURE_44", sr.call, method, **params)
    sr.call("Volume.resize", key=volume["key"], new_size=60 * MiB)
    assert [v["key"] for v in sr.call("SR.ls")] == [volume["key"]]


def test_filesystem_errors_map_to_sm_codes():
    assert os_error(OSError(errno.ENOSPC, "No space left on device", "/x")).code == \
        "SR_BACKEND_FAILURE_44"
    assert os_error(OSError(errno.EDQUOT, "Disk quota exceeded")).code == "SR_BACKEND_FAILURE_44"
    error = os_error(OSError(errno.EACCES, "Permission denied", "/x"))
    assert (error.code, error.params) == ("SR_BACKEND_FAILURE_200", ["", error.params[1],
                                                                     "Permission denied: /x"])


# ---------------------------------------------------------------- the file SR's tree and the GC


def _tree(sr: SR) -> dict:
    tree = sr.call("SR.tree")
    tree["by_key"] = {n["key"]: n for n in tree["nodes"]}
    return tree


def test_snapshot_layout(file_sr):
    leaf = file_sr.new_volume()
    snap = file_sr.call("Volume.snapshot", key=leaf["key"])
    tree = _tree(file_sr)
    base = tree["by_key"][leaf["key"]]["parent"]
    assert tree["by_key"][base]["hidden"] and tree["by_key"][base]["parent"] is None
    assert sorted(tree["by_key"][base]["children"]) == sorted([leaf["key"], snap["key"]])
    assert [v["key"] for v in file_sr.call("SR.ls")] == sorted([leaf["key"], snap["key"]])
    assert tree["prunable"] == tree["coalescable"] == tree["leaf_coalescable"] == []
    expect_error("VDI_MISSING", file_sr.call, "Volume.stat", key=base)


def test_tree_shows_what_the_gc_must_do(file_sr):
    leaf = file_sr.new_volume()
    s1 = file_sr.call("Volume.snapshot", key=leaf["key"])
    s2 = file_sr.call("Volume.snapshot", key=leaf["key"])
    b2 = _tree(file_sr)["by_key"][leaf["key"]]["parent"]
    file_sr.call("Volume.destroy", key=s1["key"])
    file_sr.call("Volume.destroy", key=s2["key"])
    tree = _tree(file_sr)
    assert tree["coalescable"] == [b2]                    # B1 -> B2 -> leaf
    assert tree["leaf_coalescable"] == [leaf["key"]]
    assert tree["prunable"] == []

    other = file_sr.new_volume()
    s3 = file_sr.call("Volume.snapshot", key=other["key"])
    b3 = _tree(file_sr)["by_key"][other["key"]]["parent"]
    file_sr.call("Volume.destroy", key=other["key"])
    file_sr.call("Volume.destroy", key=s3["key"])
    assert _tree(file_sr)["prunable"] == [b3]


def test_gc_live_leaf_coalesce_with_pause(file_sr):
    """The documented protocol: pause, lock, coalesce, rename, unlock, unpause."""
    import fcntl

    leaf = file_sr.new_volume(size=4 * MiB)
    dp, uri = file_sr.datapath(leaf)
    path = plug(dp, uri, "3", write=True)
    running = Disk(uri, path)
    running.write(0, pattern(20, MiB))
    snap = file_sr.call("Volume.snapshot", key=leaf["key"])
    running.write(MiB, pattern(21, MiB))
    file_sr.call("Volume.destroy", key=snap["key"])

    tree = _tree(file_sr)
    assert tree["leaf_coalescable"] == [leaf["key"]]
    node = tree["by_key"][leaf["key"]]
    parent = tree["by_key"][node["parent"]]
    assert node["datapath"]["active"] == {"3": "rw"}
    dp.call("Datapath.pause", uri=uri)
    expect_error("SR_BACKEND_FAILURE_46", dp.call, "Datapath.activate", uri=uri, domain="3")
    with open(tree["lock"]) as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        vhd.coalesce_into_parent(node["path"])
        os.replace(parent["path"], node["path"])
        with vhd.open(node["path"], writable=True) as image:
            image.set_hidden(False)
    refreshed = dp.call("Datapath.unpause", uri=uri)
    assert refreshed["chain"] == [path] and _file_path(refreshed) == path
    assert refreshed["generation"] > node["datapath"].get("generation", 0)
    assert running.read(0, 2 * MiB) == pattern(20, MiB) + pattern(21, MiB)
    unplug(dp, uri, "3")

    tree = _tree(file_sr)
    assert [n["key"] for n in tree["nodes"]] == [leaf["key"]]
    assert tree["by_key"][leaf["key"]]["parent"] is None
    assert file_sr.call("Volume.stat", key=leaf["key"])["name"] == leaf["name"]


def test_interrupted_snapshot_before_the_rename_is_undone(file_sr):
    leaf = file_sr.new_volume()
    root = Path(file_sr.configuration["path"])
    Disk("vhd+file:", str(root / f"{leaf['key']}.vhd")).write(0, pattern(30, 4096))
    base, snap = str(uuid.uuid4()), str(uuid.uuid4())
    (root / ".journal").mkdir()
    (root / ".journal" / f"{leaf['key']}.json").write_text(
        json.dumps({"leaf": leaf["key"], "base": base, "snap": snap}))
    os.link(root / f"{leaf['key']}.vhd", root / f"{base}.vhd")
    vhd.create_differencing(str(root / f"{leaf['key']}.vhd.new"), str(root / f"{base}.vhd")).close()
    assert [v["key"] for v in file_sr.call("SR.ls")] == [leaf["key"]]     # not the half-made base

    tree = _tree(file_sr)
    assert [n["key"] for n in tree["nodes"]] == [leaf["key"]]
    assert sorted(p.name for p in root.iterdir() if p.is_file()) == sorted(
        [".sr.json", ".sr.lock", f"{leaf['key']}.json", f"{leaf['key']}.vhd"])
    assert list((root / ".journal").iterdir()) == []
    with plugged(file_sr, leaf) as disk:
        assert disk.read(0, 4096) == pattern(30, 4096)


def test_interrupted_snapshot_after_the_rename_is_completed(file_sr):
    leaf = file_sr.new_volume()
    root = Path(file_sr.configuration["path"])
    Disk("vhd+file:", str(root / f"{leaf['key']}.vhd")).write(0, pattern(31, 4096))
    base, snap = str(uuid.uuid4()), str(uuid.uuid4())
    leaf_path = root / f"{leaf['key']}.vhd"
    (root / ".journal").mkdir()
    (root / ".journal" / f"{leaf['key']}.json").write_text(
        json.dumps({"leaf": leaf["key"], "base": base, "snap": snap}))
    os.link(leaf_path, root / f"{base}.vhd")
    vhd.create_differencing(str(leaf_path) + ".new", str(root / f"{base}.vhd")).close()
    os.replace(str(leaf_path) + ".new", leaf_path)
    vhd.create_differencing(str(root / f"{snap}.vhd"), str(root / f"{base}.vhd")).close()

    file_sr.call("Volume.set", key=leaf["key"], k="after", v="recovery")
    tree = _tree(file_sr)
    assert sorted(tree["by_key"]) == sorted([leaf["key"], base])
    assert tree["by_key"][base]["hidden"] and tree["by_key"][leaf["key"]]["parent"] == base
    assert tree["leaf_coalescable"] == [leaf["key"]]
    with plugged(file_sr, leaf) as disk:
        assert disk.read(0, 4096) == pattern(31, 4096)


# ---------------------------------------------------------------- the registry and broken plugins


def _script(path: Path, body: str, *, executable: bool = True) -> None:
    path.write_text(textwrap.dedent(body).lstrip())
    if executable:
        path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


@pytest.fixture
def broken(tmp_path) -> PluginRegistry:
    root = tmp_path / "plugins"
    volume = root / "volume" / "org.xen.xapi.storage.broken"
    volume.mkdir(parents=True)
    py = "#!/usr/bin/env python3\nimport json, sys, time\n"
    _script(volume / "Plugin.Query",
            py + "print('garbage'); print('it broke', file=sys.stderr); sys.exit(2)\n")
    _script(volume / "SR.stat", py + textwrap.dedent("""
        json.dump({"code": "SR_BACKEND_FAILURE_47", "params": ["", "gone", "x"],
                   "backtrace": {"error": "gone", "files": ["f.py"], "lines": [3]}}, sys.stdout)
        sys.exit(1)
        """))
    _script(volume / "SR.ls", py + "time.sleep(30)\n")
    _script(volume / "SR.attach", py + "print('{not json')\n")
    _script(volume / "SR.detach", py + "print('null')\n", executable=False)
    _script(volume / "SR.probe", py + "import os; os.kill(os.getpid(), 9)\n")
    # not Python: run as it is, params on stdin all the same
    _script(volume / "Volume.stat", "#!/bin/sh\ncat\n")
    # a second directory providing the same queue loses
    shadow = tmp_path / "shadow" / "volume" / "org.xen.xapi.storage.broken"
    shadow.mkdir(parents=True)
    _script(shadow / "SR.create", "#!/bin/sh\necho '\"shadow\"'\n")
    return PluginRegistry([str(root), str(tmp_path / "shadow"), DEFAULT_PLUGIN_DIR], timeout=1)


def test_registry_reports_broken_plugins(broken):
    plugin = broken.volume("broken")
    error = expect_error("SCRIPT_FAILED", plugin.call, "Plugin.Query")
    assert error.params[0] == "Plugin.Query" and "it broke" in error.params[-1]
    error = expect_error("SR_BACKEND_FAILURE_47", plugin.call, "SR.stat", sr="x")
    assert error.params == ["", "gone", "x"] and error.backtrace["lines"] == [3]
    assert "timed out" in expect_error("SCRIPT_FAILED", plugin.call, "SR.ls", sr="x").params[1]
    assert "bad JSON" in expect_error("SCRIPT_FAILED", plugin.call, "SR.attach").params[1]
    assert "signal 9" in expect_error("SCRIPT_FAILED", plugin.call, "SR.probe").params[1]
    expect_error("SCRIPT_NOT_EXECUTABLE", plugin.call, "SR.detach", sr="x")
    expect_error("SCRIPT_MISSING", plugin.call, "Volume.compose", sr="x")
    expect_error("SCRIPT_MISSING", plugin.call, "SR.create")              # not from the shadow
    echoed = plugin.call("Volume.stat", sr="s", key="k", dbg="trace-1")
    assert echoed == {"sr": "s", "key": "k", "dbg": "trace-1"}
    assert set(plugin.call("Volume.stat", sr="s")) == {"sr", "dbg"}       # dbg always sent
    assert "file" in broken.sr_types() and "broken" in broken.sr_types()


def test_registry_unknown_names(registry):
    expect_error("SR_UNKNOWN_DRIVER", registry.volume, "no-such-type")
    expect_error("MISSING_URI", registry.datapath, "nbd")
    expect_error("MISSING_URI", registry.datapath_for, ["nbd://host/x", "no-scheme"])
    plugin, uri = registry.datapath_for(["nbd://host/x", "vhd+file:///x.vhd"])
    assert (plugin.name, uri) == ("vhd+file", "vhd+file:///x.vhd")


def test_plugins_run_from_any_directory_without_the_registry(tmp_path):
    """A method file runs by itself: it finds the project from its own path."""
    import subprocess
    import sys

    script = os.path.join(DEFAULT_PLUGIN_DIR, "volume", "org.xen.xapi.storage.file", "Plugin.Query")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, script, "--json"], input='{"dbg": "x"}\n', cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["plugin"] == "file"
