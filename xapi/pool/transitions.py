"""Changes of pool shape after a join: eject, hand-over of the master role, emergencies.

The role lives in the pool database (``pool.master``), so a hand-over is one
committed write that every host sees at once; the calls to the other hosts
around it (propose/commit, eject_self, recovery) follow xapi's protocol so
that an unreachable or unwilling host stops the operation before the write.
Host-to-host calls use pool sessions (``session.slave_login`` with the pool
secret), or local sessions when the target may have lost its master.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from typing import Any

from xapi import config as config_mod
from xapi.context import Context, Runtime
from xapi.errors import ApiError
from xapi.idl.types import NULL_REF
from xapi.pool import restart, roles, secret
from xapi.pool.remote import RemoteHost, RemoteSession, Unreachable

log = logging.getLogger("xapi.pool")

PROPOSAL = "proposed_master"  # rt.extra key: (address, deadline) of a pending hand-over
PROPOSAL_TTL = 600.0  # xapi keeps a proposal for 10 minutes


# -- talking to other hosts -------------------------------------------------------------------


def _remote(rt: Runtime, host: str, timeout: float = 30.0) -> RemoteHost:
    return RemoteHost(roles.address_of(rt, host), rt.config.listen_port, timeout=timeout)


def pool_session(rt: Runtime, host: str) -> RemoteSession:
    """A pool session on another host (xapi's do_op_on); CANNOT_CONTACT_HOST if it is silent."""
    try:
        return _remote(rt, host).session("session.slave_login", host,
                                         secret.load(rt.config.state_dir))
    except Unreachable:
        raise ApiError("CANNOT_CONTACT_HOST", host) from None


def local_session(rt: Runtime, host: str, timeout: float = 10.0) -> RemoteSession:
    """A local session on another host: works even when that host has lost its master."""
    return _remote(rt, host, timeout).session("session.slave_local_login",
                                              secret.load(rt.config.state_dir))


def _on_host(rt: Runtime, host: str, method: str, *args: Any) -> Any:
    session = pool_session(rt, host)
    try:
        return session.call(method, *args)
    except Unreachable:
        raise ApiError("CANNOT_CONTACT_HOST", host) from None
    finally:
        session.logout()


# -- eject --------------------------------------------------------------------------------------


def eject(ctx: Context, host: str) -> None:
    """pool.eject: run on the master, then (forwarded) on the host that leaves."""
    rt = ctx.rt
    if rt.cache.get("host", host) is None:
        raise ApiError("HANDLE_INVALID", "host", host)
    if host == rt.host_ref:
        if roles.is_master(rt):
            raise ApiError("INTERNAL_ERROR", "Xapi_pool.Cannot_eject_master")
        _eject_self(rt)
        return
    if not roles.is_master(rt):
        raise roles.host_is_slave(rt)
    _assert_no_guests_on(rt, host)
    _on_host(rt, host, "pool.eject", host)
    _forget_host(rt, host)
    log.info("pool.eject: host %s left the pool", host)


def _assert_no_guests_on(rt: Runtime, host: str) -> None:
    for row in rt.cache.rows("VM"):
        vm = row.values
        if vm["resident_on"] == host and not vm["is_control_domain"] and vm["power_state"] != "Halted":
            raise ApiError("OPERATION_NOT_ALLOWED", "VM resident on host")


def _eject_self(rt: Runtime) -> None:
    """Leave the pool: forget its database and secret, start again as a fresh standalone host."""
    _assert_no_guests_on(rt, rt.host_ref)
    state_dir = rt.config.state_dir
    try:
        os.unlink(config_mod.pool_conf_path(state_dir))
    except FileNotFoundError:
        pass
    os.unlink(os.path.join(state_dir, secret.FILE))  # a new one is made at next start
    restart.mark_reset(state_dir)
    # xapi reinitialises an ejected host's local storage; its VDIs stay with the pool's records.
    shutil.rmtree(os.path.join(state_dir, "sr", "local"), ignore_errors=True)
    restart.request(rt, "pool.eject")


def _forget_host(rt: Runtime, host: str) -> None:
    """The master's clean-up: the host and everything that only existed on it."""
    cache, model = rt.cache, rt.model
    gone: list[tuple[str, str]] = [("host", host)]
    host_row = cache.get("host", host).values
    if host_row["metrics"] != NULL_REF:
        gone.append(("host_metrics", host_row["metrics"]))
    # Every object that belongs to the host through a `host` field (PBDs, PIFs, CPUs, …).
    for cls in model.classes.values():
        field = cls.fields.get("host")
        if cls.in_database and field is not None and field.type.kind == "ref" and field.type.name == "host":
            gone += [(cls.name, row.ref) for row in cache.rows(cls.name) if row.values["host"] == host]
    pbds = {ref for cls, ref in gone if cls == "PBD"}
    local_srs = [row.ref for row in cache.rows("SR")
                 if not row.values["shared"]
                 and (refs := set(cache.derived("SR", "PBDs", row.ref))) and refs <= pbds]
    local_vdis = {v for sr in local_srs for v in cache.derived("SR", "VDIs", sr)}
    gone += [("SR", sr) for sr in local_srs] + [("VDI", v) for v in local_vdis]
    control_domains = [row.ref for row in cache.rows("VM")
                       if row.values["is_control_domain"] and row.values["resident_on"] == host]
    for vm in control_domains:
        values = cache.get("VM", vm).values
        gone.append(("VM", vm))
        gone += [("VM_metrics", values["metrics"])] if values["metrics"] != NULL_REF else []
        for cls in ("VBD", "VIF", "console"):
            gone += [(cls, r) for r in cache.derived("VM", f"{cls}s", vm)]
    # Disks of other VMs that lived on the host's local SRs go with those SRs.
    gone += [("VBD", row.ref) for row in cache.rows("VBD")
             if row.values["VDI"] in local_vdis and ("VBD", row.ref) not in gone]
    with rt.db.write() as tx:
        for cls, ref in dict.fromkeys(gone):
            if tx.exists(cls, ref):
                tx.delete(cls, ref)
        for row in cache.rows("VM"):
            if row.values["affinity"] == host and tx.exists("VM", row.ref):
                tx.update("VM", row.ref, {"affinity": NULL_REF})


# -- hand-over ----------------------------------------------------------------------------------


def designate_new_master(ctx: Context, host: str) -> None:
    rt = ctx.rt
    if rt.cache.get("host", host) is None:
        raise ApiError("HANDLE_INVALID", "host", host)
    if rt.cache.get("pool", rt.pool_ref).values["ha_enabled"]:
        raise ApiError("HA_IS_ENABLED")
    if roles.is_master(rt) and host != rt.host_ref:
        if not roles.is_live(rt, host):
            raise ApiError("HOST_OFFLINE", host)
        _on_host(rt, host, "pool.designate_new_master", host)  # the new master runs the protocol
        return
    if roles.is_master(rt):
        return  # already master: nothing to hand over
    _take_over(rt)


def _take_over(rt: Runtime) -> None:
    """xapi's two-phase commit, run by the host that becomes master (no quorum)."""
    my_address = roles.address_of(rt, rt.host_ref)
    peers = [h for h in roles.hosts(rt) if h != rt.host_ref]
    proposed: list[str] = []
    try:
        for peer in peers:
            _on_host(rt, peer, "host.propose_new_master", my_address, True)
            proposed.append(peer)
    except ApiError:
        for peer in proposed:
            try:
                _on_host(rt, peer, "host.abort_new_master", my_address)
            except ApiError:
                log.warning("could not withdraw the hand-over proposal from %s", peer)
        raise
    become_master(rt)
    for peer in peers:
        try:
            _on_host(rt, peer, "host.commit_new_master", my_address)
        except ApiError as exc:  # the database already says who is master
            log.warning("host %s did not acknowledge the new master: %s", peer, exc)


def become_master(rt: Runtime) -> None:
    with rt.db.write() as tx:
        tx.update("pool", rt.pool_ref, {"master": rt.host_ref})
    log.info("this host is now the pool master")


def propose_new_master(rt: Runtime, address: str, manual: bool) -> None:
    current = rt.extra.get(PROPOSAL)
    if current and current[1] > time.monotonic() and current[0] != address:
        raise ApiError("HA_ABORT_NEW_MASTER", f"Already agreed to commit host address '{current[0]}'")
    rt.extra[PROPOSAL] = (address, time.monotonic() + PROPOSAL_TTL)


def commit_new_master(rt: Runtime, address: str) -> None:
    current = rt.extra.get(PROPOSAL)
    if current is None or current[0] != address:
        raise ApiError("HA_ABORT_NEW_MASTER", f"Never agreed to commit host address '{address}'")
    rt.extra.pop(PROPOSAL, None)  # pool.master itself arrives through the database


def abort_new_master(rt: Runtime, address: str) -> None:
    current = rt.extra.get(PROPOSAL)
    if current is not None and current[0] == address:
        rt.extra.pop(PROPOSAL, None)


# -- when the master is gone --------------------------------------------------------------------


def emergency_transition_to_master(ctx: Context) -> None:
    rt = ctx.rt
    if rt.cache.get("pool", rt.pool_ref).values["ha_enabled"]:
        raise ApiError("HA_IS_ENABLED")
    if not roles.is_master(rt):
        become_master(rt)


def emergency_reset_master(ctx: Context, master_address: str) -> None:
    """Follow a new master: here the pool database already names it; check that it agrees."""
    rt = ctx.rt
    if rt.cache.get("pool", rt.pool_ref).values["ha_enabled"]:
        raise ApiError("HA_IS_ENABLED")
    rt.db.catch_up()
    if roles.master_address(rt) != master_address:
        raise ApiError("OPERATION_NOT_ALLOWED",
                       f"{master_address} is not the master named by the pool database "
                       f"({roles.master_address(rt)})")


def recover_slaves(ctx: Context) -> list[str]:
    """On a new master: point every member at it; the hosts that answered."""
    rt = ctx.rt
    my_address = roles.address_of(rt, rt.host_ref)
    recovered = []
    for host in roles.hosts(rt):
        if host == rt.host_ref:
            continue
        try:
            session = local_session(rt, host)
            try:
                session.call("pool.emergency_reset_master", my_address)
            finally:
                session.logout()
            recovered.append(host)
        except (ApiError, Unreachable) as exc:
            log.warning("pool.recover_slaves: host %s not recovered: %s", host, exc)
    return recovered


def hello(ctx: Context, host_uuid: str, host_address: str) -> str:
    """A member announcing itself to the master at start-up (xapi's Pool.hello)."""
    rt = ctx.rt
    host = rt.cache.ref_by_uuid("host", host_uuid)
    if host is None:
        return "unknown_host"
    if roles.address_of(rt, host) != host_address:
        with rt.db.write() as tx:
            tx.update("host", host, {"address": host_address})
    try:
        if not _on_host(rt, host, "pool.is_slave", host):
            log.warning("host %s answered pool.hello but says it is not a member", host)
    except ApiError:
        return "cannot_talk_back"
    return "ok"
