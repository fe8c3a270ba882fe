"""End-to-end: Xen Orchestra's real ``xen-api`` npm client against the live server.

Every test runs ``js/xo_probe.mjs`` (one scenario, one transport) in Node and
checks the single JSON line it prints. Both transports XO supports are used:
JSON-RPC (``POST /jsonrpc``) and XML-RPC (``POST /xmlrpc``).

The client is created with ``watchEvents: false``, so these tests cover plain
calls only; the object cache, the event.from loop, ``callAsync`` and
``barrier()`` are covered by ``test_xo_events.py`` (``js/xo_events_probe.mjs``).

Needs ``node`` (>= 18) and ``npm``; the first run installs the pinned client
with ``npm ci`` into ``tests/e2e/js/node_modules`` (registry access needed once).
"""

from __future__ import annotations

import json
import re
import subprocess
import xmlrpc.client
from pathlib import Path

import pytest

from tests import support

from tests.e2e.conftest import JS_DIR

PROBE = JS_DIR / "xo_probe.mjs"
TRANSPORTS = ["json-rpc", "xml-rpc"]

REF_RE = re.compile(r"^OpaqueRef:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
XMLRPC_DATETIME_RE = re.compile(r"^\d{8}T\d\d:\d\d:\d\dZ$")
BAD_REF = "OpaqueRef:00000000-dead-beef-0000-000000000000"
PROBE_TIMEOUT = 60


def probe(node: str, server, transport: str, scenario: str, password: str = support.ROOT_PASSWORD,
          script: Path = PROBE, extra: dict | None = None) -> dict:
    """Run one scenario of ``script``; return its ``result`` (fails the test on a probe failure)."""
    args = {
        "url": server.url,
        "user": "root",
        "password": password,
        "transport": transport,
        "scenario": scenario,
        **(extra or {}),
    }
    try:
        done = subprocess.run(
            [node, str(script), json.dumps(args)], cwd=JS_DIR, capture_output=True, text=True,
            timeout=PROBE_TIMEOUT,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"xo_probe {scenario}/{transport} hung for {PROBE_TIMEOUT}s; stdout={exc.stdout!r}\n"
                    f"server log tail:\n{server.log()[-3000:]}")
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    try:
        report = json.loads(lines[-1])
    except (IndexError, ValueError):
        pytest.fail(
            f"xo_probe {scenario}/{transport} printed no JSON (exit {done.returncode}):\n"
            f"stdout: {done.stdout[-3000:]}\nstderr: {done.stderr[-3000:]}"
        )
    if done.returncode != 0 or not report.get("ok"):
        pytest.fail(
            f"xo_probe {scenario}/{transport} failed (exit {done.returncode}):\n"
            f"{json.dumps(report.get('error', report), indent=2)}\nstderr: {done.stderr[-3000:]}\n"
            f"server log tail:\n{server.log()[-3000:]}"
        )
    assert report["scenario"] == scenario and report["transport"] == transport
    return report["result"]


def _raw_xmlrpc(server):
    """A bare XML-RPC proxy (no XenAPI SESSION_INVALID retry magic) for cross-checks."""
    return xmlrpc.client.ServerProxy(server.url + "/", allow_none=True)


def _assert_logged_out(server, result):
    """The probe logged out, and the session it used is really gone."""
    assert REF_RE.match(result["sessionId"]), result["sessionId"]
    assert result["logout"] == {"result": ""}
    sid = result["sessionId"]
    reply = _raw_xmlrpc(server).session.get_uuid(sid, sid)
    assert reply["Status"] == "Failure", reply
    assert reply["ErrorDescription"][0] == "SESSION_INVALID", reply


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_connect_pool_and_list_methods(node_client, server, transport):
    result = probe(node_client, server, transport, "connect")

    assert result["status"] == "connected"
    assert result["statusAfter"] == "connected"
    assert REF_RE.match(result["sessionId"]), result["sessionId"]

    # exactly one pool, whose master is one of the hosts
    pools = result["pools"]
    assert len(pools) == 1, pools
    (pool_ref, pool), = pools.items()
    assert REF_RE.match(pool_ref)
    assert result["poolRefs"] == [pool_ref]
    assert REF_RE.match(pool["master"]), pool
    assert pool["master"] in result["hostRefs"]
    assert UUID_RE.match(pool["uuid"])

    # the pool the connect flow picked (first key of pool.get_all_records)
    connect_pool = result["connectPool"]
    assert connect_pool["ref"] == pool_ref
    assert connect_pool["master"] == pool["master"]
    assert connect_pool["uuid"] == pool["uuid"]
    for field in ("uuid", "name_label", "master", "default_SR", "other_config", "tags", "ha_enabled"):
        assert field in connect_pool["fields"]

    # system.listMethods through xapi.call (session prepended by the client)
    assert result["methodsType"] == "array"
    assert result["nonStringMethods"] == 0
    assert result["methodsCount"] > 500
    assert result["asyncMethods"] == []
    assert set(result["methodsSample"]) >= {
        "VM.get_all_records",
        "host.get_all_records",
        "pool.get_all_records",
        "pool.add_to_other_config",
        "pool.remove_from_other_config",
        "session.login_with_password",
        "task.get_all_records",
    }

    # the types the connect flow derived from its own (session-less)
    # system.listMethods: these decide what XO fetches and watches
    types = result["connectTypes"]
    assert isinstance(types, list) and len(types) == len(set(types))
    assert {"VM", "host", "pool", "task", "SR", "VDI", "network", "PIF", "VM_metrics"} <= set(types)
    assert "Async" not in types
    assert all(re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", t) for t in types), types

    _assert_logged_out(server, result)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_vm_and_host_records(node_client, server, transport):
    result = probe(node_client, server, transport, "records")

    assert result["vmRefs"] and all(REF_RE.match(r) for r in result["vmRefs"])
    assert result["hostRefs"] and all(REF_RE.match(r) for r in result["hostRefs"])
    # every record of a class has the same key set (XO builds its record class
    # from the first record it sees)
    assert result["vmKeySetCount"] == 1
    assert result["hostKeySetCount"] == 1

    host = result["host"]
    host_ref = result["hostRefs"][0]
    dom0_refs = result["dom0Refs"]
    assert len(dom0_refs) == len(result["hostRefs"]), "one control domain per host"
    dom0 = result["dom0"]
    dom0_ref = dom0_refs[0]

    def value(record, field, js_type):
        entry = record[field]
        assert entry["type"] == js_type, (field, entry)
        return entry["value"]

    # the control domain, as the client sees it
    assert value(dom0, "is_control_domain", "boolean") is True
    assert value(dom0, "is_a_template", "boolean") is False
    assert value(dom0, "power_state", "string") == "Running"
    assert UUID_RE.match(value(dom0, "uuid", "string"))
    assert value(dom0, "name_label", "string").startswith("Control domain on host: ")
    assert value(dom0, "suspend_VDI", "string") == "OpaqueRef:NULL"
    assert value(dom0, "VBDs", "array") == [] or all(REF_RE.match(r) for r in dom0["VBDs"]["value"])
    assert isinstance(value(dom0, "other_config", "object"), dict)
    assert isinstance(value(dom0, "current_operations", "object"), dict)
    assert value(dom0, "HVM_shadow_multiplier", "number") == 1.0  # float -> <double> / JSON number
    assert result["dom0RecordEqual"] is True
    assert result["dom0ByUuid"] == dom0_ref

    # the dom0 sits on a host, and that host lists it
    resident_on = value(dom0, "resident_on", "string")
    assert resident_on in result["hostRefs"]
    if resident_on == host_ref:
        assert dom0_ref in value(host, "resident_VMs", "array")

    # API ints: JSON numbers over JSON-RPC, decimal strings over XML-RPC;
    # datetimes: the wire string over JSON-RPC, a Date over XML-RPC
    if transport == "json-rpc":
        int_type, as_int = "number", (lambda v: v)
        snapshot_time = value(dom0, "snapshot_time", "string")
        assert XMLRPC_DATETIME_RE.match(snapshot_time), snapshot_time
    else:
        int_type, as_int = "string", int
        value(dom0, "snapshot_time", "Date")
        for field in ("memory_static_max", "VCPUs_max", "domid", "API_version_major"):
            record = host if field.startswith("API") else dom0
            assert re.fullmatch(r"-?\d+", record[field]["value"]), (field, record[field])
    memory = as_int(value(dom0, "memory_static_max", int_type))
    assert memory > 0 and memory % 4096 == 0
    assert as_int(value(dom0, "memory_dynamic_min", int_type)) <= memory
    assert as_int(value(dom0, "VCPUs_max", int_type)) >= 1
    assert as_int(value(dom0, "domid", int_type)) == 0
    assert result["dom0Memory"] == dom0["memory_static_max"]  # VM.get_memory_static_max agrees

    assert as_int(value(host, "API_version_major", int_type)) == 2
    assert as_int(value(host, "API_version_minor", int_type)) >= 0
    assert as_int(value(host, "memory_overhead", int_type)) >= 0
    assert value(host, "enabled", "boolean") is True
    assert UUID_RE.match(value(host, "uuid", "string"))
    assert value(host, "uuid", "string") != value(dom0, "uuid", "string")
    assert isinstance(value(host, "address", "string"), str)
    assert REF_RE.match(value(host, "metrics", "string"))
    assert all(REF_RE.match(r) for r in value(host, "host_CPUs", "array"))
    software_version = value(host, "software_version", "object")
    assert all(isinstance(v, str) for v in software_version.values()), software_version
    assert all(isinstance(v, str) for v in value(host, "cpu_info", "object").values())

    # cross-check with an independent client (Python XML-RPC, raw values)
    proxy = _raw_xmlrpc(server)
    session = proxy.session.login_with_password("root", support.ROOT_PASSWORD)["Value"]
    try:
        py_dom0 = proxy.VM.get_record(session, dom0_ref)["Value"]
        py_host = proxy.host.get_record(session, host_ref)["Value"]
    finally:
        proxy.session.logout(session)
    assert py_dom0["uuid"] == dom0["uuid"]["value"]
    assert int(py_dom0["memory_static_max"]) == memory
    assert py_host["uuid"] == host["uuid"]["value"]
    assert py_host["resident_VMs"] == host["resident_VMs"]["value"]

    _assert_logged_out(server, result)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_errors_reach_the_client_as_xapi_errors(node_client, server, transport):
    result = probe(node_client, server, transport, "errors")

    bad = result["badRecord"]
    assert result["badRef"] == BAD_REF
    assert bad["name"] == "XapiError" and bad["isXapiError"] is True, bad
    assert bad["code"] == "HANDLE_INVALID"
    assert bad["params"] == ["VM", BAD_REF]
    assert bad["call"]["method"] == "VM.get_record"

    unknown = result["unknownMethod"]
    assert unknown["isXapiError"] is True, unknown
    assert unknown["code"] == "MESSAGE_METHOD_UNKNOWN"
    assert unknown["params"] == ["VM.no_such_method"]

    # an API error does not break the connection
    assert result["statusAfter"] == "connected"
    _assert_logged_out(server, result)

    login = result["badLogin"]
    assert login["isXapiError"] is True, login
    assert login["code"] == "SESSION_AUTHENTICATION_FAILED"
    assert login["params"][0] == "root" and len(login["params"]) == 2, login
    assert login["call"]["method"] == "session.login_with_password"
    assert result["badLoginStatus"] == "disconnected"


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_pool_other_config_add_remove(node_client, server, transport):
    result = probe(node_client, server, transport, "other_config")

    key, value, pool_ref = result["key"], result["value"], result["poolRef"]
    assert REF_RE.match(pool_ref)
    before = result["before"]
    assert key not in before
    others = dict(before)

    # void results are "" on the wire
    assert result["addResult"] == ""
    assert result["afterAdd"] == {**others, key: value}
    assert result["recordAfterAdd"] == result["afterAdd"]

    duplicate = result["duplicate"]
    assert duplicate["isXapiError"] is True, duplicate
    assert duplicate["code"] == "MAP_DUPLICATE_KEY"
    assert key in duplicate["params"]

    # XO's setFieldEntry = remove_from + add_to
    assert result["afterSetEntry"] == {**others, key: "replaced"}

    assert result["removeResult"] == ""
    assert result["afterRemove"] == others
    # removing an absent key is a silent no-op
    assert result["removeAgainResult"] == ""
    assert result["afterRemoveAgain"] == others

    # set_<field> through setField()
    assert result["newDescription"] == "set by xo probe"
    assert result["restoredDescription"] == result["oldDescription"]
    _assert_logged_out(server, result)

    # and the server really kept the change out: read back with another client
    proxy = _raw_xmlrpc(server)
    session = proxy.session.login_with_password("root", support.ROOT_PASSWORD)["Value"]
    try:
        assert key not in proxy.pool.get_other_config(session, pool_ref)["Value"]
    finally:
        proxy.session.logout(session)
