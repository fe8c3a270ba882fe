"""Host liveness: heartbeats, the master's judgement, VM.power_state_reset, resync.

One real runtime (this host, master) on the database under test; the other
host is a second host record in the same database whose beats the test
writes itself, and the master's clock is a counter the test moves.
"""

from __future__ import annotations

import dataclasses
import socket

import pytest
from sqlalchemy import func, select

from api.server import close_runtime, open_runtime
from db import heartbeats
from db.schema import metadata
from workers import gc as db_gc
from xapi.config import Config
from xapi.context import Context, now
from xapi.domains import copies
from xapi.errors import ApiError
from xapi.pool import liveness, roles
from xapi.refs import make_ref, make_uuid

DEAD_AFTER = 600.0


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def rt(fresh_db_url, tmp_path):
    runtime = open_runtime(Config(state_dir=str(tmp_path / "a"), db_url=fresh_db_url,
                                  listen=f"127.0.0.1:{_free_port()}",
                                  host_assumed_dead_interval=DEAD_AFTER))
    yield runtime
    close_runtime(runtime)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _other_host(rt, address: str = "127.0.0.254") -> str:
    """A second host of the pool, as its own first boot would have made it."""
    host, metrics = make_ref(), make_ref()
    with rt.db.write() as tx:
        tx.insert("host_metrics", metrics, {"uuid": make_uuid(), "live": True,
                                            "last_updated": now()})
        tx.insert("host", host, {"uuid": make_uuid(), "name_label": "b", "address": address,
                                 "metrics": metrics, "enabled": True})
    return host


def _live(rt, host: str) -> bool:
    return rt.cache.get("host_metrics", rt.cache.get("host", host).values["metrics"]).values["live"]


def _as_host(rt, host: str):
    """The other host's view: same database, its own identity."""
    return dataclasses.replace(rt, host_ref=host)


def _changes(rt) -> int:
    table = metadata.tables["xapi_changes"]
    with rt.db.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table)).scalar_one()


def test_beats_make_no_events_and_no_generation(rt):
    before = (rt.cache.generation, _changes(rt))
    for _ in range(3):
        liveness.beat(rt)
    assert (rt.cache.generation, _changes(rt)) == before
    beat = heartbeats.read_all(rt.db)[rt.host_ref]
    assert beat.beats == 4 and not beat.shutting_down  # one at start, three here


def test_silent_host_turns_dead_then_live_again_with_events(rt):
    b = _other_host(rt)
    clock = Clock()
    judge = liveness.Judge(clock=clock)
    liveness.beat(_as_host(rt, b))
    assert liveness.check(rt, judge) == {}  # first look: the interval starts now
    clock.t += DEAD_AFTER - 1
    assert liveness.check(rt, judge) == {} and _live(rt, b)
    clock.t += 1
    generation = rt.cache.generation
    assert liveness.check(rt, judge) == {b: False}
    assert not _live(rt, b) and not roles.is_live(rt, b)
    assert rt.cache.generation == generation + 1  # an ordinary write: clients see the event
    clock.t += 5 * DEAD_AFTER
    assert liveness.check(rt, judge) == {}  # no write while nothing changes
    liveness.beat(_as_host(rt, b))
    assert liveness.check(rt, judge) == {b: True}
    assert _live(rt, b) and roles.is_live(rt, b)


def test_beating_host_stays_live(rt):
    b = _other_host(rt)
    clock = Clock()
    judge = liveness.Judge(clock=clock)
    for _ in range(10):
        liveness.beat(_as_host(rt, b))
        assert liveness.check(rt, judge) == {}
        clock.t += DEAD_AFTER / 3
    assert _live(rt, b)


def test_host_that_never_beat_is_dead_after_the_interval(rt):
    b = _other_host(rt)
    clock = Clock()
    judge = liveness.Judge(clock=clock)
    liveness.check(rt, judge)
    clock.t += DEAD_AFTER
    assert liveness.check(rt, judge) == {b: False}


def test_clean_shutdown_is_dead_at_once_and_stays_dead_until_it_beats(rt):
    b = _other_host(rt)
    clock = Clock()
    judge = liveness.Judge(clock=clock)
    liveness.beat(_as_host(rt, b))
    liveness.check(rt, judge)
    liveness.shutting_down(_as_host(rt, b))
    assert not _live(rt, b)  # at once, without waiting for the master
    for _ in range(3):
        clock.t += DEAD_AFTER
        assert liveness.check(rt, judge) == {} and not _live(rt, b)
    # Its restart: first boot says live, then it beats.
    liveness.set_live(rt, b, True)
    assert liveness.check(rt, judge) == {} and _live(rt, b)
    liveness.beat(_as_host(rt, b))
    assert liveness.check(rt, judge) == {} and _live(rt, b)


def test_only_the_master_judges_and_a_new_master_is_live(rt):
    b = _other_host(rt)
    clock = Clock()
    judge = liveness.Judge(clock=clock)
    with rt.db.write() as tx:
        tx.update("pool", rt.pool_ref, {"master": b})
    liveness.check(rt, judge)
    clock.t += 10 * DEAD_AFTER
    assert liveness.check(rt, judge) == {} and _live(rt, b)
    # b takes over while marked dead: as master it judges, and it is live.
    liveness.set_live(rt, b, False)
    as_b = _as_host(rt, b)
    judge_b = liveness.Judge(clock=clock)
    assert liveness.check(as_b, judge_b) == {b: True}


def test_gc_pass_runs_the_check(rt):
    b = _other_host(rt)
    clock = Clock()
    state = db_gc.GcState(judge=liveness.Judge(clock=clock))
    db_gc.run_pass(rt, state)
    clock.t += DEAD_AFTER
    assert db_gc.run_pass(rt, state).live_changed == {b: False}


# -- VM.power_state_reset -----------------------------------------------------------------


def _vm_on(rt, host: str, power: str = "Running") -> tuple[str, str, str]:
    vm, vbd, vif = make_ref(), make_ref(), make_ref()
    with rt.db.write() as tx:
        tx.insert("VM", vm, {"uuid": make_uuid(), "name_label": "guest", "power_state": power,
                             "resident_on": host, "domid": 7,
                             "current_operations": {"OpaqueRef:lost-task": "clean_shutdown"}})
        tx.insert("VBD", vbd, {"uuid": make_uuid(), "VM": vm, "currently_attached": True,
                               "userdevice": "0", "empty": True, "type": "CD", "mode": "RO"})
        tx.insert("VIF", vif, {"uuid": make_uuid(), "VM": vm, "currently_attached": True,
                               "device": "0"})
    return vm, vbd, vif


def test_reset_of_a_vm_on_a_dead_host(rt):
    b = _other_host(rt)
    vm, vbd, vif = _vm_on(rt, b)
    liveness.set_live(rt, b, False)
    copies.power_state_reset(Context(rt=rt), vm)
    values = rt.cache.get("VM", vm).values
    assert (values["power_state"], values["resident_on"], values["domid"]) == \
        ("Halted", "OpaqueRef:NULL", -1)
    assert values["current_operations"] == {} and "start" in values["allowed_operations"]
    assert not rt.cache.get("VBD", vbd).values["currently_attached"]
    assert not rt.cache.get("VIF", vif).values["currently_attached"]


def test_reset_refused_while_the_host_is_live_and_answers(rt):
    with socket.socket() as listener:  # stands in for b's API port
        listener.bind(("127.0.0.1", rt.config.listen_port))
        listener.listen()
        b = _other_host(rt, address="127.0.0.1")
        vm, _, _ = _vm_on(rt, b)
        with pytest.raises(ApiError) as info:
            copies.power_state_reset(Context(rt=rt), vm)
        assert info.value.description == ["HOST_IS_LIVE", b]
        assert rt.cache.get("VM", vm).values["power_state"] == "Running"
        # Paused counts as running; Suspended and Halted VMs are reset without asking.
        paused, _, _ = _vm_on(rt, b, "Paused")
        with pytest.raises(ApiError):
            copies.power_state_reset(Context(rt=rt), paused)
        suspended, _, _ = _vm_on(rt, b, "Suspended")
        copies.power_state_reset(Context(rt=rt), suspended)
        assert rt.cache.get("VM", suspended).values["power_state"] == "Halted"


def test_reset_allowed_when_a_host_marked_live_does_not_answer(rt):
    b = _other_host(rt)  # live in the database, nobody on its address (xapi asks the host)
    vm, _, _ = _vm_on(rt, b)
    copies.power_state_reset(Context(rt=rt), vm)
    assert rt.cache.get("VM", vm).values["power_state"] == "Halted"


def test_reset_refused_for_control_domains(rt):
    dom0 = rt.cache.get("host", rt.host_ref).values["control_domain"]
    with pytest.raises(ApiError) as info:
        copies.power_state_reset(Context(rt=rt), dom0)
    assert info.value.description == ["CANNOT_RESET_CONTROL_DOMAIN", dom0]


def test_reset_of_a_local_vm_xenopsd_does_not_run(rt):
    vm, _, _ = _vm_on(rt, rt.host_ref)
    copies.power_state_reset(Context(rt=rt), vm)
    assert rt.cache.get("VM", vm).values["power_state"] == "Halted"


# -- resync ---------------------------------------------------------------------------------


def test_resync_leaves_other_hosts_vms_alone(rt, fresh_db_url, tmp_path):
    b = _other_host(rt)
    theirs, vbd, _ = _vm_on(rt, b)
    mine, _, _ = _vm_on(rt, rt.host_ref)  # xenopsd here does not run it
    config = rt.config
    close_runtime(rt)
    again = open_runtime(config)  # a member coming back: resync with its xenopsd
    try:
        values = again.cache.get("VM", theirs).values
        assert (values["power_state"], values["resident_on"]) == ("Running", b)
        assert again.cache.get("VBD", vbd).values["currently_attached"]
        assert again.cache.get("VM", mine).values["power_state"] == "Halted"
        assert heartbeats.read_all(again.db)[again.host_ref].beats == 2  # beats again at start
    finally:
        rt.domains = None  # already closed: the fixture's close must not stop it twice
        close_runtime(again)
