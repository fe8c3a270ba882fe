"""pool.join's checks and the carrying of objects, on a real runtime.

The remote master is a stand-in that answers the three calls the checks
make (the e2e test in tests/e2e/test_pool.py joins real servers); the
carrying test copies a real host's objects into a second real database.
"""

from __future__ import annotations

import copy

import pytest

from api.server import close_runtime, open_runtime
from db.store import Database
from xapi.config import Config
from xapi.errors import ApiError
from xapi.pool import joining


@pytest.fixture
def rt(fresh_db_url, tmp_path):
    runtime = open_runtime(Config(state_dir=str(tmp_path / "joiner"), db_url=fresh_db_url,
                                  xenopsd_queues=""))
    yield runtime
    close_runtime(runtime)


class FakeMaster:
    """Answers pool.get_all_records and host.get_record like a master would."""

    def __init__(self, rt, **host_changes):
        me = rt.cache.get("host", rt.host_ref).values
        self.host = {**copy.deepcopy(me), "uuid": "11111111-2222-3333-4444-555555555555"}
        for key, value in host_changes.items():
            if key == "software_version":
                self.host["software_version"] = {**self.host["software_version"], **value}
            else:
                self.host[key] = value
        self.pool = {"master": "OpaqueRef:master", "ha_enabled": False}

    def call(self, method, *args):
        if method == "pool.get_all_records":
            return {"OpaqueRef:pool": self.pool}
        if method == "host.get_record":
            return self.host
        raise AssertionError(f"unexpected call {method}")


def refusal(rt, master, force=False) -> list[str]:
    with pytest.raises(ApiError) as info:
        joining.pre_join_checks(rt, master, force)
    return info.value.description


def test_a_fresh_host_passes(rt):
    joining.pre_join_checks(rt, FakeMaster(rt), False)


def test_joining_itself(rt):
    master = FakeMaster(rt)
    master.host["uuid"] = rt.cache.get("host", rt.host_ref).values["uuid"]
    assert refusal(rt, master) == ["OPERATION_NOT_ALLOWED", "Host cannot become slave of itself"]


def test_api_version_and_schema_must_match(rt):
    assert refusal(rt, FakeMaster(rt, API_version_minor=99)) == [
        "POOL_JOINING_HOST_MUST_HAVE_SAME_API_VERSION", "2.23", "2.99"]
    assert refusal(rt, FakeMaster(rt, software_version={"db_schema": "5.1"})) == [
        "POOL_JOINING_HOST_MUST_HAVE_SAME_DB_SCHEMA", "5.909", "5.1"]


def test_software_version_unless_forced(rt):
    master = FakeMaster(rt, software_version={"product_version": "9.9.9"})
    assert refusal(rt, master) == ["HOSTS_NOT_HOMOGENEOUS", "Software version differs"]
    joining.pre_join_checks(rt, master, True)


def test_ha_on_either_side(rt):
    master = FakeMaster(rt)
    master.pool["ha_enabled"] = True
    assert refusal(rt, master) == ["HA_IS_ENABLED"]


def test_shared_srs_and_busy_vms_refused(rt):
    vm = next(r.ref for r in rt.cache.rows("VM") if r.values["is_a_template"])
    with rt.db.write() as tx:
        tx.update("VM", vm, {"current_operations": {"OpaqueRef:t": "clone"}})
    assert refusal(rt, FakeMaster(rt)) == ["JOINING_HOST_CANNOT_HAVE_VMS_WITH_CURRENT_OPERATIONS"]
    with rt.db.write() as tx:
        tx.update("VM", vm, {"current_operations": {}, "power_state": "Running",
                             "is_a_template": False})
    assert refusal(rt, FakeMaster(rt)) == ["JOINING_HOST_CANNOT_HAVE_RUNNING_VMS"]


def test_objects_are_carried_and_shared_ones_matched(rt, tmp_path):
    # Another host's database (SQLite here: carrying is database-neutral) stands for the pool.
    url = f"sqlite:///{tmp_path}/pool.db"
    master = open_runtime(Config(state_dir=str(tmp_path / "master"), db_url=url, xenopsd_queues=""))
    before = {cls: len(master.cache.rows(cls)) for cls in ("host", "VM", "network", "SM")}
    close_runtime(master)
    joining.carry_objects(rt, url)
    pool_db = Database(url)
    try:
        pool_db.load()
        cache = pool_db.cache
        me = rt.cache.get("host", rt.host_ref).values
        assert cache.get("host", rt.host_ref).values["uuid"] == me["uuid"]
        assert len(cache.rows("host")) == before["host"] + 1
        # The control domain came along; default templates, the internal
        # network and the SM records were matched to the pool's, not copied.
        assert len(cache.rows("VM")) == before["VM"] + 1
        assert cache.get("VM", me["control_domain"]).values["resident_on"] == rt.host_ref
        assert len(cache.rows("network")) == before["network"]
        assert len(cache.rows("SM")) == before["SM"]
        assert len(cache.rows("pool")) == 1
        assert any(r.values["host"] == rt.host_ref for r in cache.rows("PBD"))
    finally:
        pool_db.close()
    with pytest.raises(ApiError) as again:
        joining.carry_objects(rt, url)
    assert again.value.description == ["OPERATION_NOT_ALLOWED", "Host is already part of a pool"]
