"""The official XenAPI Python SDK against a live server, plus the same calls over JSON-RPC."""

from __future__ import annotations

import time
import xmlrpc.client

import pytest
import XenAPI

from tests import support
from tests.e2e.rpc import Failure, JsonRpc, XmlRpc
from xapi.idl.model import model

PW = support.ROOT_PASSWORD


def failure_of(fn, *args) -> list[str]:
    with pytest.raises((XenAPI.Failure, Failure)) as info:
        fn(*args)
    return info.value.details


# -- login forms and paths -------------------------------------------------------------


@pytest.mark.parametrize("path", ["", "/", "/RPC2", "/xmlrpc"])
@pytest.mark.parametrize("extra", [(), ("1.0",), ("1.0", "pytest-originator")])
def test_login_forms_and_paths(server, path, extra):
    session = XenAPI.Session(server.url + path)
    session.login_with_password("root", PW, *extra)
    try:
        record = session.xenapi.session.get_record(session.handle)
        assert record["auth_user_name"] == "root"
        assert record["originator"] == (extra[1] if len(extra) > 1 else "")
        assert record["this_host"] == session.xenapi.pool.get_master(session.xenapi.pool.get_all()[0])
    finally:
        session.xenapi.session.logout()


def test_bad_password_is_refused_after_a_delay(server):
    session = XenAPI.Session(server.url)
    started = time.monotonic()
    with pytest.raises(XenAPI.Failure) as info:
        session.login_with_password("root", "wrong")
    assert info.value.details == ["SESSION_AUTHENTICATION_FAILED", "root", "Authentication failure"]
    assert time.monotonic() - started >= 0.2  # the test server's auth_failure_delay
    with pytest.raises(XenAPI.Failure) as info:
        session.login_with_password("nobody", PW)
    assert info.value.details[:2] == ["SESSION_AUTHENTICATION_FAILED", "nobody"]


def test_unix_socket_login_is_preauthenticated(server):
    session = XenAPI.Session("http://" + server.socket_path.replace("/", "_") + "/",
                             transport=XenAPI.UDSTransport())
    session.login_with_password("", "")
    try:
        assert session.xenapi.session.get_auth_user_name(session.handle) == "root"
        assert len(session.xenapi.host.get_all()) == 1
    finally:
        session.xenapi.session.logout()


def test_pre_login_nil_session_is_session_invalid(server):
    raw = XmlRpc(server.url)
    # Parameters are unmarshalled before the session is checked.
    reply = raw.raw("VM.set_VCPUs_max", ["OpaqueRef:nonsense", "OpaqueRef:x", "many"])
    assert reply["ErrorDescription"] == ["INTERNAL_ERROR", 'Failure("Int64.of_string")']
    reply = raw.raw("VM.get_all", [None])
    assert reply == {"Status": "Failure", "ErrorDescription": ["SESSION_INVALID", "OpaqueRef:NULL"]}
    reply = raw.raw("VM.get_all", ["OpaqueRef:nonsense"])
    assert reply["ErrorDescription"] == ["SESSION_INVALID", "OpaqueRef:nonsense"]


def test_logout_invalidates_and_the_sdk_logs_in_again(server, xenapi):
    old = xenapi.handle
    XmlRpc(server.url).raw("session.logout", [old])
    reply = XmlRpc(server.url).raw("VM.get_all", [old])
    assert reply["ErrorDescription"] == ["SESSION_INVALID", old]
    # The SDK sees SESSION_INVALID, repeats its login and retries transparently.
    assert xenapi.xenapi.pool.get_all()
    assert xenapi.handle != old


def test_old_sessions_are_evicted_per_originator(db_url):
    if "postgresql" in db_url:
        db_url = support.create_pg_database()
    else:
        db_url = db_url.replace("xapi.db", "evict.db")
    srv = support.start_server(db_url=db_url, max_sessions_per_originator=3)
    try:
        raw = XmlRpc(srv.url)
        keeper = raw.raw("session.login_with_password", ["root", PW, "1.0", "keeper"])["Value"]
        leaky = [raw.raw("session.login_with_password", ["root", PW, "1.0", "leaky"])["Value"]
                 for _ in range(5)]
        alive = []
        for ref in [keeper, *leaky]:
            reply = raw.raw("pool.get_all", [ref])
            alive.append(reply["Status"] == "Success")
        # The two oldest leaky sessions went; the other originator's session stayed.
        assert alive == [True, False, False, True, True, True]
    finally:
        srv.stop()
        if "postgresql" in db_url:
            support.drop_pg_database(db_url)


# -- first boot -------------------------------------------------------------------------


def test_first_boot_objects(xenapi):
    x = xenapi.xenapi
    pools = x.pool.get_all_records()
    assert len(pools) == 1
    pool = next(iter(pools.values()))
    host = x.host.get_record(pool["master"])
    assert host["API_version_major"] == str(model().api_version[0])
    assert host["API_version_minor"] == str(model().api_version[1])
    assert host["API_version_vendor"] == "XenSource"
    assert host["address"] == "127.0.0.1"
    assert host["enabled"] is True
    metrics = x.host_metrics.get_record(host["metrics"])
    assert metrics["live"] is True and int(metrics["memory_total"]) > 0
    cpus = x.host_cpu.get_all_records()
    assert cpus and all(c["host"] == pool["master"] for c in cpus.values())
    assert sorted(host["host_CPUs"]) == sorted(cpus)
    dom0s = [v for v in x.VM.get_all_records().values() if v["is_control_domain"]]
    assert len(dom0s) == 1
    dom0 = dom0s[0]
    assert dom0["power_state"] == "Running" and dom0["domid"] == "0"
    assert dom0["resident_on"] == pool["master"]
    assert dom0["name_label"].startswith("Control domain on host: ")
    assert x.host.get_resident_VMs(pool["master"]) == [x.VM.get_by_uuid(dom0["uuid"])]
    networks = x.network.get_all_records_where('field "bridge"="xenapi"')
    (net,) = networks.values()
    assert net["name_label"] == "Host internal management network"
    assert net["other_config"]["is_host_internal_management_network"] == "true"


def test_uuids_unique_and_key_sets_complete(xenapi):
    x = xenapi.xenapi
    seen: dict[str, str] = {}
    for cls in ("pool", "host", "host_metrics", "host_cpu", "VM", "VM_metrics", "network"):
        records = getattr(x, cls).get_all_records()
        expected = {f.name for f in model().classes[cls].fields.values() if f.type.kind != "option"}
        for ref, record in records.items():
            assert set(record) == expected, cls
            assert record["uuid"] not in seen, (cls, seen.get(record["uuid"]))
            seen[record["uuid"]] = cls


def test_old_sdk_24_13_makes_its_extra_calls(server, old_xenapi_path):
    import subprocess
    import sys

    script = (
        "import XenAPI, sys\n"
        "assert XenAPI.__file__.startswith(sys.argv[2]), XenAPI.__file__\n"
        "s = XenAPI.Session(sys.argv[1])\n"
        f"s.login_with_password('root', {PW!r}, '1.0', 'old-sdk')\n"
        "print(s.API_version)\n"
        "print(len(s.xenapi.VM.get_all()))\n"
        "s.xenapi.session.logout()\n"
    )
    env = {"PYTHONPATH": old_xenapi_path, "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", script, server.url, old_xenapi_path],
                         capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    version, vms = out.stdout.split()
    assert version == "%d.%d" % model().api_version
    assert int(vms) >= 1


# -- implicit messages ------------------------------------------------------------------


def test_get_all_records_shape(xenapi):
    records = xenapi.xenapi.VM.get_all_records()
    assert isinstance(records, dict)
    for ref, record in records.items():
        assert ref.startswith("OpaqueRef:")
        assert isinstance(record["memory_static_max"], str)  # ints are untyped on the wire
        assert isinstance(record["is_a_template"], bool)
        assert isinstance(record["snapshot_time"], xmlrpc.client.DateTime)
        assert isinstance(record["other_config"], dict)
        assert isinstance(record["VBDs"], list)


def test_setters_maps_and_sets(xenapi):
    x = xenapi.xenapi
    pool = x.pool.get_all()[0]
    x.pool.set_name_label(pool, "renamed <&> pool")
    assert x.pool.get_name_label(pool) == "renamed <&> pool"
    x.pool.add_to_other_config(pool, "k", "v")
    assert x.pool.get_other_config(pool)["k"] == "v"
    assert failure_of(x.pool.add_to_other_config, pool, "k", "w") == [
        "MAP_DUPLICATE_KEY", "pool", "other_config", pool, "k"]
    x.pool.remove_from_other_config(pool, "k")
    x.pool.remove_from_other_config(pool, "k")  # absent key: a no-op
    assert "k" not in x.pool.get_other_config(pool)
    x.pool.add_tags(pool, "t1")
    x.pool.add_tags(pool, "t1")
    assert x.pool.get_tags(pool) == ["t1"]
    x.pool.remove_tags(pool, "t1")
    assert x.pool.get_tags(pool) == []
    x.pool.set_other_config(pool, {"a": "1", "b": "2"})
    assert x.pool.get_other_config(pool) == {"a": "1", "b": "2"}


def test_enum_values_are_case_insensitive(xenapi):
    x = xenapi.xenapi
    net = x.network.create({"name_label": "enum-test", "name_description": "", "MTU": "1500",
                            "other_config": {}})
    try:
        vm = x.VM.get_all()[0]
        vif = x.VIF.create({"device": "0", "network": net, "VM": vm, "MAC": "", "MTU": "1500",
                            "other_config": {}, "qos_algorithm_type": "", "qos_algorithm_params": {},
                            "locking_mode": "UNLOCKED"})
        assert x.VIF.get_locking_mode(vif) == "unlocked"
        assert x.VM.get_VIFs(vm) == [vif]
        assert x.network.get_VIFs(net) == [vif]
        x.VIF.destroy(vif)
        assert x.network.get_VIFs(net) == []
    finally:
        x.network.destroy(net)


def test_create_destroy_and_handle_errors(xenapi):
    x = xenapi.xenapi
    net = x.network.create({"name_label": "e2e", "name_description": "d", "MTU": 9000,
                            "other_config": {"x": "y"}, "tags": ["a"]})
    record = x.network.get_record(net)
    assert record["name_label"] == "e2e" and record["MTU"] == "9000"
    assert record["other_config"] == {"x": "y"} and record["tags"] == ["a"]
    assert record["bridge"] == "" and record["managed"] is True  # model defaults
    assert x.network.get_by_uuid(record["uuid"]) == net
    assert net in x.network.get_by_name_label("e2e")
    x.network.destroy(net)
    assert failure_of(x.network.get_record, net) == ["HANDLE_INVALID", "network", net]
    assert failure_of(x.network.destroy, net) == ["HANDLE_INVALID", "network", net]
    assert failure_of(x.network.get_by_uuid, record["uuid"]) == ["UUID_INVALID", "network", record["uuid"]]


def test_wire_errors(xenapi):
    x = xenapi.xenapi
    vm = x.VM.get_all()[0]
    assert failure_of(x.VM.start, vm) == ["MESSAGE_PARAMETER_COUNT_MISMATCH", "VM.start", "3", "1"]
    assert failure_of(x.VM.no_such_message, vm) == ["MESSAGE_METHOD_UNKNOWN", "VM.no_such_message"]
    assert failure_of(x.NoSuchClass.get_all) == ["MESSAGE_METHOD_UNKNOWN", "NoSuchClass.get_all"]
    # Unmarshalling failures read as xapi's (ocaml-rpc's) exception text.
    assert failure_of(x.VM.set_name_label, vm, 42) == [
        "INTERNAL_ERROR", "Failure(\"Expected string, got 'I(42)'\")"]
    assert failure_of(x.VM.set_VCPUs_max, vm, "many") == ["INTERNAL_ERROR", 'Failure("Int64.of_string")']
    assert failure_of(x.VM.set_is_a_template, vm, "true") == [
        "INTERNAL_ERROR", "Failure(\"Expected bool, got 'S(true)'\")"]
    assert failure_of(x.VM.set_actions_after_crash, vm, "explode") == [
        "INTERNAL_ERROR", 'Failure("Unknown tag/contents")']
    assert failure_of(x.VM.set_other_config, vm, ["a"]) == [
        "INTERNAL_ERROR", "Failure(\"Expecting Rpc.Dict, but found '[S(a)]'\")"]
    assert failure_of(x.network.create, {"name_description": ""}) == [
        "INTERNAL_ERROR", 'Server_helpers.Dispatcher_FieldNotFound("other_config")']
    assert failure_of(x.network.create, "not a struct") == ["INTERNAL_ERROR", 'Failure("bad __structure")']
    # Relation-set getters only check that the ref exists somewhere (xapi quirk).
    host = x.host.get_all()[0]
    assert x.VM.get_VBDs(host) == []
    assert failure_of(x.VM.get_VBDs, "OpaqueRef:gone") == ["HANDLE_INVALID", "OpaqueRef:gone"]
    assert failure_of(x.VM.get_all_records_where, 'field "name__label" = ')[0] == "INVALID_VALUE"
    assert failure_of(x.Async.VM.get_name_label, vm) == [
        "Fault", "No async mode for this operation (rpc: Async.VM.get_name_label)"]


def test_aliases_and_system_methods(server, xenapi):
    x = xenapi.xenapi
    assert sorted(x.VM_get_all()) == sorted(x.VM.get_all())
    methods = XmlRpc(server.url).raw("system.listMethods", [])
    assert isinstance(methods, list)  # bare, no Status wrapper
    assert "VM.get_all_records" in methods and "session.login_with_password" in methods
    assert not [m for m in methods if m.startswith(("Async.", "system."))]
    assert len(methods) == len(model().methods)
    assert XmlRpc(server.url).raw("system.isAlive:probe", ["hello"]) == {"Status": "Success", "Value": "hello"}


def test_where_expressions(xenapi):
    x = xenapi.xenapi
    dom0 = x.VM.get_all_records_where('field "is_control_domain"="true" and field "power_state"="Running"')
    assert len(dom0) == 1
    others = x.VM.get_all_where('not (field "is_control_domain"="true")')
    assert not set(others) & set(dom0)
    templates = x.VM.get_all_where('field "is_default_template"="true"')
    assert templates and set(templates) <= set(others)
    by_label = x.VM.get_all_records_where('field "name__label"="%s"' % next(iter(dom0.values()))["name_label"])
    assert list(by_label) == list(dom0)


# -- JSON-RPC ---------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["1.0", "2.0"])
def test_jsonrpc_same_calls(server, version):
    rpc = JsonRpc(server.url, version)
    for extra in ((), ("1.0",), ("1.0", "json")):
        rpc.login("root", PW, *extra)
    pool = rpc("pool.get_all")[0]
    records = rpc("VM.get_all_records")
    dom0 = next(r for r in records.values() if r["is_control_domain"])
    assert dom0["domid"] == 0 and isinstance(dom0["memory_static_max"], int)
    assert dom0["snapshot_time"] == "19700101T00:00:00Z"
    rpc("pool.add_to_other_config", pool, "json", "1")
    with pytest.raises(Failure) as info:
        rpc("pool.add_to_other_config", pool, "json", "2")
    assert info.value.details == ["MAP_DUPLICATE_KEY", "pool", "other_config", pool, "json"]
    rpc("pool.remove_from_other_config", pool, "json")
    assert "json" not in rpc("pool.get_other_config", pool)
    assert sorted(rpc("VM_get_all")) == sorted(records)
    net = rpc("network.create", {"name_label": "j", "name_description": "", "MTU": 1500, "other_config": {}})
    rpc("network.destroy", net)
    with pytest.raises(Failure) as info:
        rpc("network.get_record", net)
    assert info.value.details == ["HANDLE_INVALID", "network", net]
    with pytest.raises(Failure) as info:
        rpc("VM.start", dom0["uuid"])
    assert info.value.details == ["MESSAGE_PARAMETER_COUNT_MISMATCH", "VM.start", "3", "1"]
    with pytest.raises(Failure) as info:
        rpc("no.such_thing")
    assert info.value.details == ["MESSAGE_METHOD_UNKNOWN", "no.such_thing"]
    methods = rpc.raw("system.listMethods", [])
    assert "VM.get_all_records" in methods
    # A session from JSON-RPC works over XML-RPC and the other way round.
    xml = XmlRpc(server.url)
    xml.session = rpc.session
    assert xml("pool.get_all") == [pool]
    rpc("session.logout")
    with pytest.raises(Failure) as info:
        rpc("pool.get_all")
    assert info.value.details == ["SESSION_INVALID", rpc.session]


def test_jsonrpc_ints_accepted_as_strings_and_numbers(server):
    rpc = JsonRpc(server.url)
    rpc.login("root", PW)
    net = rpc("network.create", {"name_label": "ints", "name_description": "", "MTU": "1400", "other_config": {}})
    try:
        assert rpc("network.get_MTU", net) == 1400
        rpc("network.set_MTU", net, 1300)
        assert rpc("network.get_MTU", net) == 1300
        rpc("network.set_MTU", net, "1200")
        assert rpc("network.get_MTU", net) == 1200
    finally:
        rpc("network.destroy", net)


def test_cors_preflight(server):
    import http.client
    from urllib.parse import urlparse

    u = urlparse(server.url)
    for path in ("/", "/jsonrpc"):
        conn = http.client.HTTPConnection(u.hostname, u.port)
        conn.request("OPTIONS", path)
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 200
        assert resp.getheader("Access-Control-Allow-Origin") == "*"
        assert resp.getheader("Access-Control-Allow-Headers") == "X-Requested-With"
        conn.close()


def test_messages(xenapi):
    x = xenapi.xenapi
    host = x.host.get_all()[0]
    uuid = x.host.get_uuid(host)
    before = x.message.get_all()
    ref = x.message.create("TEST_ALERT", 3, "Host", uuid, "body text")
    record = x.message.get_record(ref)
    assert record["name"] == "TEST_ALERT" and record["priority"] == "3" and record["cls"] == "Host"
    assert x.message.get_by_uuid(record["uuid"]) == ref
    assert ref in x.message.get_all_records()
    assert list(x.message.get("Host", uuid, xmlrpc.client.DateTime("19700101T00:00:00Z"))) == [ref]
    assert ref in x.message.get_since(xmlrpc.client.DateTime("19700101T00:00:00Z"))
    assert failure_of(x.message.create, "X", 1, "VM", uuid, "") == ["UUID_INVALID", "VM", uuid]
    x.message.destroy(ref)
    assert sorted(x.message.get_all()) == sorted(before)
