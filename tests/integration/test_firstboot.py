"""First boot creates xapi's initial objects once; restarts refresh them."""

from __future__ import annotations

from api.server import close_runtime, open_runtime
from xapi.config import Config


def _counts(rt) -> dict[str, int]:
    return {cls: rt.cache.count(cls) for cls in
            ("pool", "host", "host_metrics", "host_cpu", "VM", "VM_metrics", "console", "network")}


def test_first_boot_then_restart(fresh_db_url, tmp_path):
    cfg = Config(state_dir=str(tmp_path), db_url=fresh_db_url, listen="127.0.0.2:9999")
    rt = open_runtime(cfg)
    first = _counts(rt)
    host_ref, pool_ref = rt.host_ref, rt.pool_ref
    cache = rt.cache
    host = cache.record("host", cache.get("host", host_ref))
    pool = cache.record("pool", cache.get("pool", pool_ref))
    dom0 = cache.record("VM", cache.get("VM", host["control_domain"]))
    assert pool["master"] == host_ref
    assert pool["other_config"] == {"memory-ratio-hvm": "0.25", "memory-ratio-pv": "0.25"}
    assert host["address"] == "127.0.0.2" and host["enabled"] is True
    assert host["software_version"]["product_brand"] == "XCP-ng"
    assert host["resident_VMs"] == [host["control_domain"]]
    assert dom0["is_control_domain"] and dom0["power_state"] == "Running" and dom0["domid"] == 0
    assert len(dom0["consoles"]) == 2
    assert first["pool"] == first["host"] == first["network"] == 1
    assert first["host_cpu"] >= 1 and first["console"] == 2
    close_runtime(rt)

    cfg = Config(state_dir=str(tmp_path), db_url=fresh_db_url, listen="127.0.0.3:9999")
    again = open_runtime(cfg)
    assert _counts(again) == first
    assert (again.host_ref, again.pool_ref) == (host_ref, pool_ref)
    assert again.cache.get("host", host_ref).values["address"] == "127.0.0.3"
    close_runtime(again)
