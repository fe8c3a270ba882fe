"""End-to-end: three hosts on one machine form a pool, change master and lose it.

Host A (127.0.0.1) runs on a fresh PostgreSQL database with Redis; B
(127.0.0.2) and C (127.0.0.3) start as standalone hosts on their embedded
SQLite databases, all on the same port, as XO expects of a pool.  Each
server runs its own xenopsd simulator and, once in the pool, its own Celery
worker.  The tests run in order and share the pool: join, refusals,
HOST_IS_SLAVE for the SDK and XO, eject, designate_new_master, then kill -9
of the master and an emergency transition of a member.
"""

from __future__ import annotations

import json
import subprocess
import time
import xmlrpc.client

import pytest
import XenAPI

from tests import support
from tests.e2e.test_xe import xe_raw
from tests.e2e.conftest import JS_DIR

pytestmark = pytest.mark.skipif(
    support.wanted_backend() != "postgresql",
    reason="pool tests run once, in the PostgreSQL pass (XAPI_TEST_DB=postgresql)")

PW = support.ROOT_PASSWORD
PROBE = JS_DIR / "xo_pool_probe.mjs"


def login(server) -> XenAPI.Session:
    session = XenAPI.Session(server.url)
    session.xenapi.login_with_password("root", PW, "2.23", "test_pool")
    return session


def login_error(server) -> list[str]:
    with pytest.raises(XenAPI.Failure) as failure:
        login(server)
    return failure.value.details


def local_login(server) -> XenAPI.Session:
    session = XenAPI.Session(server.url)
    session.slave_local_login_with_password("root", PW)
    return session


def wait_until(predicate, timeout: float = 60.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # the server may be restarting
            last = exc
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what} (last error: {last!r})")


def wait_for_role(server, master_address: str | None) -> None:
    """Until the server answers logins as a member of ``master_address`` (None: as master)."""
    def settled():
        try:
            login(server).xenapi.session.logout()
            return master_address is None
        except XenAPI.Failure as exc:
            return exc.details == ["HOST_IS_SLAVE", master_address]
    wait_until(settled, what=f"{server.url} to serve as {'master' if master_address is None else 'member'}")


def xo_view(node: str, server, transport: str, vms: int, hosts: int) -> dict:
    """What XO's client, pointed at ``server``, ends up connected to and holds in its cache."""
    args = {"url": server.url, "user": "root", "password": PW, "transport": transport,
            "expectVms": vms, "expectHosts": hosts}
    done = subprocess.run([node, str(PROBE), json.dumps(args)], cwd=JS_DIR,
                          capture_output=True, text=True, timeout=90)
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["ok"], report
    return report["result"]


@pytest.fixture(scope="module")
def pool():
    support.require_pool_services()
    url = support.create_pg_database()
    port = support.free_port()
    hosts = {}
    try:
        hosts["A"] = support.start_server(db_url=url, port=port, redis_url=support.REDIS_URL,
                                          worker="true")
        for name, ip in (("B", "127.0.0.2"), ("C", "127.0.0.3")):
            hosts[name] = support.start_server(port=port, listen_host=ip, worker="true")
        yield hosts
    finally:
        for server in hosts.values():
            server.stop()
        support.drop_pg_database(url)


def test_join_refuses_a_host_with_running_vms_then_accepts_it(pool):
    b = login(pool["B"]).xenapi
    template = b.VM.get_by_name_label("Other install media")[0]
    vm = b.VM.clone(template, "busy")
    b.VM.provision(vm)
    b.VM.start(vm, False, False)
    with pytest.raises(XenAPI.Failure) as failure:
        b.pool.join("127.0.0.1", "root", PW)
    assert failure.value.details == ["JOINING_HOST_CANNOT_HAVE_RUNNING_VMS"]
    b.VM.hard_shutdown(vm)
    with pytest.raises(XenAPI.Failure) as failure:
        b.pool.join("127.0.0.1", "root", "wrong")
    assert failure.value.details[0] == "SESSION_AUTHENTICATION_FAILED"
    b.pool.join("127.0.0.1", "root", PW)
    login(pool["C"]).xenapi.pool.join("127.0.0.1", "root", PW)
    for name in ("B", "C"):
        wait_for_role(pool[name], "127.0.0.1")


def test_the_pool_holds_every_hosts_objects(pool):
    a = login(pool["A"]).xenapi
    hosts = a.host.get_all_records()
    assert sorted(h["address"] for h in hosts.values()) == ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
    master = a.pool.get_master(a.pool.get_all()[0])
    assert hosts[master]["address"] == "127.0.0.1"
    vms = a.VM.get_all_records()
    for ref, host in hosts.items():
        dom0 = host["control_domain"]
        assert vms[dom0]["is_control_domain"] and vms[dom0]["resident_on"] == ref
        local = [a.PBD.get_SR(p) for p in host["PBDs"]]
        assert any(a.SR.get_type(sr) == "file" and not a.SR.get_shared(sr) for sr in local)
    busy = [vm for vm in vms.values() if vm["name_label"] == "busy"]
    assert len(busy) == 1 and busy[0]["power_state"] == "Halted"  # B's VM came with it
    # Default templates were matched, not copied twice.
    names = [vm["name_label"] for vm in vms.values() if vm["is_default_template"]]
    assert len(names) == len(set(names))


def test_members_answer_host_is_slave_and_serve_local_sessions(pool):
    assert login_error(pool["B"]) == ["HOST_IS_SLAVE", "127.0.0.1"]
    assert login_error(pool["C"]) == ["HOST_IS_SLAVE", "127.0.0.1"]
    # A session from the master is not served by a member either.
    a = login(pool["A"])
    reply = xmlrpc.client.ServerProxy(pool["B"].url).host.get_all(a._session)
    assert reply == {"Status": "Failure", "ErrorDescription": ["HOST_IS_SLAVE", "127.0.0.1"]}
    local = local_login(pool["B"])
    assert len(local.xenapi.host.get_all()) == 3
    assert local.xenapi.pool.is_slave(local.xenapi.host.get_all()[0]) is True
    local.xenapi.session.local_logout()


@pytest.mark.parametrize("transport", ["json-rpc", "xml-rpc"])
def test_xo_follows_host_is_slave_to_the_master(pool, node_client, transport):
    result = xo_view(node_client, pool["B"], transport, vms=4, hosts=3)
    assert result["connectedTo"] == "127.0.0.1"
    assert result["hosts"] == ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
    dom0_hosts = {vm["resident_on"] for vm in result["vms"] if vm["is_control_domain"]}
    assert len(dom0_hosts) == 3  # every host's control domain, through the master


def test_vms_run_across_hosts_and_migrate_on_shared_storage(pool, tmp_path_factory,
                                                             node_client):
    a = login(pool["A"]).xenapi
    hosts = {a.host.get_address(h): h for h in a.host.get_all()}
    master = hosts["127.0.0.1"]
    shared_dir = tmp_path_factory.mktemp("shared-sr")  # every host sees it: NFS's stand-in
    sr = a.SR.create(master, {"path": str(shared_dir)}, 0, "shared", "", "file", "user", True, {})
    pbds = a.SR.get_PBDs(sr)
    assert sorted(a.PBD.get_host(p) for p in pbds) == sorted(hosts.values())
    assert all(a.PBD.get_currently_attached(p) for p in pbds)
    a.pool.set_default_SR(a.pool.get_all()[0], sr)
    template = a.VM.get_by_name_label("Other install media")[0]
    vms = {}
    for ip, host in hosts.items():
        vm = a.VM.clone(template, f"on-{ip}")
        a.VM.provision(vm)
        a.VM.start_on(vm, host, False, False)
        vms[ip] = vm
    for ip, vm in vms.items():
        assert a.VM.get_power_state(vm) == "Running"
        assert a.VM.get_resident_on(vm) == hosts[ip]
    anywhere = a.VM.clone(template, "placed")
    a.VM.provision(anywhere)
    assert sorted(a.VM.get_possible_hosts(anywhere)) == sorted(hosts.values())
    task = a.Async.VM.start(anywhere, False, False)
    wait_until(lambda: a.task.get_status(task) != "pending", what="Async.VM.start")
    assert a.task.get_status(task) == "success", a.task.get_error_info(task)
    assert a.VM.get_resident_on(anywhere) in hosts.values()
    # Live migration from B to C through the shared SR.
    moving = vms["127.0.0.2"]
    a.VM.pool_migrate(moving, hosts["127.0.0.3"], {"live": "true"})
    assert a.VM.get_resident_on(moving) == hosts["127.0.0.3"]
    assert a.VM.get_power_state(moving) == "Running"
    # XO, pointed at a member, sees the guests running on every host through the master.
    running = {a.VM.get_uuid(vm): a.VM.get_resident_on(vm) for vm in [*vms.values(), anywhere]}
    result = xo_view(node_client, pool["C"], "xml-rpc", vms=3 + len(running), hosts=3)
    seen = {vm["uuid"]: (vm["power_state"], vm["resident_on"]) for vm in result["vms"]}
    assert {u: seen.get(u) for u in running} == {u: ("Running", h) for u, h in running.items()}
    for vm in [*vms.values(), anywhere]:
        a.VM.hard_shutdown(vm)
        assert a.VM.get_power_state(vm) == "Halted"


def test_eject_returns_a_host_to_standalone(pool):
    a = login(pool["A"]).xenapi
    c = next(h for h in a.host.get_all() if a.host.get_address(h) == "127.0.0.3")
    c_uuid = a.host.get_uuid(c)
    master = a.pool.get_master(a.pool.get_all()[0])
    with pytest.raises(XenAPI.Failure) as failure:
        a.pool.eject(master)
    assert failure.value.details[0] == "INTERNAL_ERROR"
    a.pool.eject(c)
    assert sorted(a.host.get_address(h) for h in a.host.get_all()) == ["127.0.0.1", "127.0.0.2"]
    assert not [r for r in a.PBD.get_all_records().values() if r["host"] == c]
    assert not [r for r in a.VM.get_all_records().values() if r["resident_on"] == c]
    wait_for_role(pool["C"], None)
    standalone = login(pool["C"]).xenapi
    (only,) = standalone.host.get_all()
    assert standalone.host.get_uuid(only) == c_uuid  # same identity, a pool of its own
    assert standalone.pool.get_master(standalone.pool.get_all()[0]) == only


def test_designate_new_master_hands_over(pool):
    a = login(pool["A"]).xenapi
    b_ref = next(h for h in a.host.get_all() if a.host.get_address(h) == "127.0.0.2")
    a.pool.designate_new_master(b_ref)
    wait_for_role(pool["A"], "127.0.0.2")
    b = login(pool["B"]).xenapi
    assert b.pool.get_master(b.pool.get_all()[0]) == b_ref


def test_kill_master_then_emergency_transition_keeps_every_change(pool, node_client):
    b = login(pool["B"]).xenapi
    pool_ref = b.pool.get_all()[0]
    b.pool.set_name_label(pool_ref, "written just before the crash")
    template = b.VM.get_by_name_label("Other install media")[0]
    clone = b.VM.clone(template, "survivor")
    b.VM.set_is_a_template(clone, False)
    survivor = b.VM.get_uuid(clone)
    pool["B"].process.kill()  # kill -9 of the master
    pool["B"].process.wait()
    assert login_error(pool["A"]) == ["HOST_IS_SLAVE", "127.0.0.2"]  # still names the dead master
    # xe's emergency command logs in with a local session, which a member serves.
    done = xe_raw(["-s", "127.0.0.1", "-p", str(pool["A"].port), "--nossl", "-u", "root", "-pw", PW,
                   "pool-emergency-transition-to-master"])
    assert (done.code, done.err) == (0, ""), done
    wait_for_role(pool["A"], None)
    a = login(pool["A"]).xenapi
    assert a.pool.get_name_label(pool_ref) == "written just before the crash"
    assert a.VM.get_by_uuid(survivor)
    assert a.host.get_address(a.pool.get_master(pool_ref)) == "127.0.0.1"
    assert a.pool.recover_slaves() == []  # B is dead: nobody to recover
    # XO pointed at the new master connects and sees the pool as it was.
    result = xo_view(node_client, pool["A"], "json-rpc", vms=1, hosts=2)
    assert result["connectedTo"] == "127.0.0.1"
    assert result["hosts"] == ["127.0.0.1", "127.0.0.2"]
    assert survivor in {vm["uuid"] for vm in result["vms"]}
