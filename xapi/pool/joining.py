"""pool.join on the joining host: xapi's pre-join checks, then its objects into the pool.

The joiner logs in to the master with the user's credentials, runs the
checks xapi runs (in xapi's order, with its errors), takes the pool secret
(``pool.initial_auth``) and, with it, the pool database's location.  Its
host, control domain, local SRs with their PBDs and VDIs, networks and
halted VMs are copied into the pool database in one transaction (objects
the pool already has, such as default templates and the internal network,
are matched instead of copied).  Then it records the pool's database and
Redis in ``pool.conf`` and restarts as a member.
"""

from __future__ import annotations

import json
import logging
import os
import urllib.error
import urllib.request
from typing import Any, Iterator

from db.schema import stored_classes
from db.store import Database
from xapi import config as config_mod
from xapi.context import Context, Runtime
from xapi.errors import ApiError
from xapi.idl.types import NULL_REF, Type
from xapi.pool import restart, roles, secret
from xapi.pool.remote import RemoteHost, RemoteSession, Unreachable

log = logging.getLogger("xapi.pool")

DATABASE_PATH = "/pool/database"  # api/pool_http.py serves it to holders of the pool secret
# Pool-level or per-login objects: never carried from the joiner to the pool.
NOT_CARRIED = frozenset({"pool", "session", "task", "message", "role", "subject", "user"})
# Objects both sides have, matched on these fields instead of copied.
MATCHED_BY = {"SM": ("type",), "network": ("bridge",)}


def join(ctx: Context, master_address: str, username: str, password: str, force: bool) -> None:
    rt = ctx.rt
    master = RemoteHost(master_address, rt.config.listen_port, timeout=60)
    try:
        session = master.session("session.login_with_password", username, password,
                                 "%d.%d" % rt.model.api_version, "xapi-pool-join")
    except Unreachable as exc:
        log.warning("pool.join: cannot reach %s: %s", master_address, exc)
        raise ApiError("JOINING_HOST_CONNECTION_FAILED") from None
    try:
        pre_join_checks(rt, session, force)
        pool_secret = session.call("pool.initial_auth")
        where = pool_database(master, pool_secret)
    except Unreachable as exc:
        log.warning("pool.join: lost %s: %s", master_address, exc)
        raise ApiError("JOINING_HOST_CONNECTION_FAILED") from None
    finally:
        session.logout()
    carry_objects(rt, where["db_url"])
    secret.store(rt.config.state_dir, pool_secret)
    _write_pool_conf(rt.config.state_dir, where)
    log.info("joined the pool of %s; restarting as a member", master_address)
    restart.request(rt, "pool.join")


# -- checks -------------------------------------------------------------------------------------


def _remote_master(session: RemoteSession) -> tuple[str, dict[str, Any], dict[str, Any]]:
    pools = session.call("pool.get_all_records")
    pool = next(iter(pools.values()))
    return pool["master"], session.call("host.get_record", pool["master"]), pool


def pre_join_checks(rt: Runtime, session: RemoteSession, force: bool) -> None:
    cache = rt.cache
    me = cache.get("host", rt.host_ref).values
    my_pool = cache.get("pool", rt.pool_ref).values
    _master_ref, master, their_pool = _remote_master(session)
    if my_pool["ha_enabled"] or their_pool["ha_enabled"]:
        raise ApiError("HA_IS_ENABLED")
    if master["uuid"] == me["uuid"]:
        reason = ("Host is already part of a pool" if len(cache.rows("host")) > 1
                  else "Host cannot become slave of itself")
        raise ApiError("OPERATION_NOT_ALLOWED", reason)
    if len(cache.rows("host")) > 1:
        raise ApiError("JOINING_HOST_CANNOT_BE_MASTER_OF_OTHER_HOSTS")
    guests = [r.values for r in cache.rows("VM") if not r.values["is_control_domain"]]
    if any(vm["power_state"] == "Running" for vm in guests):
        raise ApiError("JOINING_HOST_CANNOT_HAVE_RUNNING_VMS")
    if any(r.values["current_operations"] for r in cache.rows("VM")):
        raise ApiError("JOINING_HOST_CANNOT_HAVE_VMS_WITH_CURRENT_OPERATIONS")
    if not force:
        keys = ("product_version", "platform_version", "product_brand")
        mine, theirs = me["software_version"], master["software_version"]
        if any(mine.get(k) != theirs.get(k) for k in keys):
            raise ApiError("HOSTS_NOT_HOMOGENEOUS", "Software version differs")
    if any(r.values["shared"] for r in cache.rows("SR")):
        raise ApiError("JOINING_HOST_CANNOT_CONTAIN_SHARED_SRS")
    mine = (int(me["API_version_major"]), int(me["API_version_minor"]))
    theirs = (int(master["API_version_major"]), int(master["API_version_minor"]))
    if mine != theirs:
        raise ApiError("POOL_JOINING_HOST_MUST_HAVE_SAME_API_VERSION",
                       "%d.%d" % mine, "%d.%d" % theirs)
    my_schema = me["software_version"].get("db_schema", "")
    their_schema = master["software_version"].get("db_schema", "")
    if not my_schema or not their_schema or my_schema != their_schema:
        raise ApiError("POOL_JOINING_HOST_MUST_HAVE_SAME_DB_SCHEMA", my_schema, their_schema)


def pool_database(master: RemoteHost, pool_secret: str) -> dict[str, str]:
    """The pool's database and Redis, as the master hands them to secret holders."""
    request = urllib.request.Request(master.url.rstrip("/") + DATABASE_PATH,
                                     headers={"Cookie": f"pool_secret={pool_secret}"})
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            where = json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        if exc.code == 409:  # the master is not on a shared database
            raise ApiError("OPERATION_NOT_ALLOWED", exc.read().decode(errors="replace")) from None
        raise ApiError("JOINING_HOST_SERVICE_FAILED") from None
    except (OSError, ValueError) as exc:
        raise Unreachable(str(exc)) from None
    return where


def _write_pool_conf(state_dir: str, where: dict[str, str]) -> None:
    lines = ["# Written by pool.join: this host is a member of the pool whose database",
             "# and Redis these are.  Removed by pool.eject.  Wins over xapi.conf."]
    lines += [f'{key} = "{where[key]}"' for key in config_mod.POOL_KEYS if where.get(key)]
    path = config_mod.pool_conf_path(state_dir)
    with open(path + ".tmp", "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(path + ".tmp", path)


# -- carrying the joiner's objects into the pool ----------------------------------------------


def carry_objects(rt: Runtime, pool_url: str) -> None:
    """Copy this host's objects into the pool database, all in one transaction."""
    pool_db = Database(pool_url)
    try:
        pool_db.load()
        rows = list(_rows_to_carry(rt, pool_db))
        with pool_db.write() as tx:
            for cls, ref, values in rows:
                tx.insert(cls, ref, values)
    finally:
        pool_db.close()
    log.info("pool.join: %d objects carried into the pool database", len(rows))


def _rows_to_carry(rt: Runtime, pool_db: Database) -> Iterator[tuple[str, str, dict[str, Any]]]:
    model, mine, theirs = rt.model, rt.cache, pool_db.cache
    if theirs.ref_by_uuid("host", mine.get("host", rt.host_ref).values["uuid"]):
        raise ApiError("OPERATION_NOT_ALLOWED", "Host is already part of a pool")
    mapped: dict[str, str] = {}  # my ref -> the pool's equivalent
    dropped: set[str] = set()  # mine, neither copied nor matched
    for cls in stored_classes(model):
        for row in mine.rows(cls.name):
            if cls.name in NOT_CARRIED:
                dropped.add(row.ref)
                continue
            twin = _twin(cls.name, row.values, theirs)
            if twin is not None:
                mapped[row.ref] = twin
    _drop_dependents(rt, mapped, dropped)
    for cls in stored_classes(model):
        if cls.name in NOT_CARRIED:
            continue
        for row in mine.rows(cls.name):
            if row.ref in mapped or row.ref in dropped:
                continue
            values = {f.name: _remap(f.type, row.values[f.name], mapped)
                      for f in cls.stored_fields if f.name in row.values}
            yield cls.name, row.ref, values


def _twin(cls: str, values: dict[str, Any], theirs) -> str | None:
    """The pool's object that stands for this one, if the pool already has it."""
    uuid = values.get("uuid")
    if uuid:
        ref = theirs.ref_by_uuid(cls, uuid)
        if ref:
            return ref
    keys = MATCHED_BY.get(cls)
    if cls == "VM" and values.get("is_default_template"):
        keys = ("is_default_template", "name_label")
    if not keys:
        return None
    for row in theirs.rows(cls):
        if all(row.values.get(k) == values.get(k) for k in keys):
            return row.ref
    return None


def _drop_dependents(rt: Runtime, mapped: dict[str, str], dropped: set[str]) -> None:
    """A matched VM (a default template) keeps the pool's metrics, devices and consoles."""
    cache = rt.cache
    vms = [ref for ref in mapped if cache.get("VM", ref) is not None]
    for ref in vms:
        vm = cache.get("VM", ref).values
        dropped.update(r for r in (vm["metrics"], vm["guest_metrics"]) if r != NULL_REF)
    matched = set(vms)
    for cls in ("VBD", "VIF", "console", "VTPM", "VUSB", "VGPU"):
        for row in cache.rows(cls):
            if row.values.get("VM") in matched:
                dropped.add(row.ref)


def _remap(t: Type, value: Any, mapped: dict[str, str]) -> Any:
    if not mapped:
        return value
    if t.kind == "ref":
        return mapped.get(value, value)
    if t.kind == "set" and t.elem is not None and t.elem.kind == "ref":
        return [mapped.get(v, v) for v in value]
    if t.kind == "map" and t.elem is not None and t.value is not None:
        if t.elem.kind == "ref" or t.value.kind == "ref":
            return {(mapped.get(k, k) if t.elem.kind == "ref" else k):
                    (mapped.get(v, v) if t.value.kind == "ref" else v) for k, v in value.items()}
    return value


def pool_database_settings(rt: Runtime) -> dict[str, str] | None:
    """What the master hands a joiner, or None when this pool cannot take members."""
    cfg = rt.config
    if cfg.database_url.startswith("sqlite") or not cfg.redis_url:
        return None
    return {"db_url": cfg.database_url, "redis_url": cfg.redis_url,
            "master": roles.master_address(rt)}
