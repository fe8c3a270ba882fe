"""Host liveness without HA, as xapi's Db_gc does it.

Every host beats every ``host_heartbeat_interval`` (``beat``), straight into
the shared database's private heartbeat table (``db/heartbeats.py``), so a
member keeps beating — and serving — while its master is silent.  Only the
master judges (``check``, from its GC pass): a host whose beat count has not
moved for ``host_assumed_dead_interval`` on the master's own monotonic clock
gets ``host_metrics.live = false``, and ``true`` again once it beats.  A
master that has just started (or taken over) gives every host the whole
interval from its first look, as xapi's master starts a fresh timer per host.

A clean shutdown sends xapi's ``shutting-down`` beat and marks the host dead
at once (``shutting_down``); the master does not revive it until it beats
again.  ``live`` is an ordinary field write, so clients get the event.
"""

from __future__ import annotations

import logging
import socket
import time
from dataclasses import dataclass, field
from typing import Callable

from db import heartbeats
from xapi.context import Runtime, now
from xapi.idl.types import NULL_REF

from . import roles

log = logging.getLogger("xapi.liveness")


def beat(rt: Runtime) -> None:
    """This host is alive (xapi's Host.tickle_heartbeat)."""
    heartbeats.record(rt.db, rt.host_ref, now())


def shutting_down(rt: Runtime) -> None:
    """A clean stop: the ``shutting-down`` beat, and this host marked dead at once."""
    heartbeats.record(rt.db, rt.host_ref, now(), shutting_down=True)
    set_live(rt, rt.host_ref, False)


def set_live(rt: Runtime, host_ref: str, live: bool) -> bool:
    """Write host_metrics.live when it differs; True when it was written."""
    host = rt.cache.get("host", host_ref)
    if host is None or host.values["metrics"] == NULL_REF:
        return False
    metrics = host.values["metrics"]
    with rt.db.write() as tx:
        current = tx.get("host_metrics", metrics, for_update=True)
        if current is None or current["live"] == live:
            return False
        tx.update("host_metrics", metrics, {"live": live})
    return True


@dataclass
class Judge:
    """What the master remembers between passes: each host's beat count and when it moved."""

    clock: Callable[[], float] = time.monotonic
    seen: dict[str, tuple[int | None, float]] = field(default_factory=dict)


def check(rt: Runtime, judge: Judge) -> dict[str, bool]:
    """The master's pass (xapi's check_host_liveness); returns the hosts whose live flag changed."""
    if not roles.is_master(rt):
        return {}
    dead_after = rt.config.host_assumed_dead_interval
    beats = heartbeats.read_all(rt.db)
    moment = judge.clock()
    changed: dict[str, bool] = {}
    hosts = roles.hosts(rt)
    for host in hosts:
        if host == rt.host_ref:
            # The judge is alive by definition (a new master may find itself marked dead).
            if set_live(rt, host, True):
                changed[host] = True
            continue
        last = beats.get(host)
        count = last.beats if last is not None else None
        previous = judge.seen.get(host)
        if previous is None:  # first look: the whole interval from now
            judge.seen[host] = (count, moment)
            continue
        if last is not None and count != previous[0]:
            judge.seen[host] = (count, moment)
            verdict = not last.shutting_down  # a shutting-down beat: it is going away
        elif last is not None and last.shutting_down:
            continue  # gone cleanly and marked so; its restart says live itself
        elif moment - previous[1] >= dead_after:
            verdict = False
        else:
            continue
        if set_live(rt, host, verdict):
            changed[host] = verdict
            if verdict:
                log.info("host %s beats again: live", host)
            else:
                log.warning("host %s has not beaten for %.0f s: assuming it is dead",
                            host, moment - judge.seen[host][1])
    for gone in set(judge.seen) - set(hosts):
        del judge.seen[gone]
    return changed


def host_answers(rt: Runtime, host_ref: str, timeout: float = 2.0) -> bool:
    """Whether a host's API port accepts a connection (a pool shares one listen port;
    an address of the form ``host:port`` names its own)."""
    address = roles.address_of(rt, host_ref)
    if not address:
        return False
    name, sep, port = address.rpartition(":")
    if not (sep and port.isdigit() and not name.endswith(":")):
        name, port = address, str(rt.config.listen_port)
    try:
        with socket.create_connection((name.strip("[]"), int(port)), timeout=timeout):
            return True
    except OSError:
        return False


def is_host_alive(rt: Runtime, host_ref: str) -> bool:
    """xapi's Xapi_host.is_host_alive: dead in the database is definitive; live is verified
    by asking the host, so a host killed moments ago counts as dead."""
    if not roles.is_live(rt, host_ref):
        return False
    return host_ref == rt.host_ref or host_answers(rt, host_ref)
