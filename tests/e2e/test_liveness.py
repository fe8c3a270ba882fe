"""Two hosts on one PostgreSQL database: host_metrics.live follows the member's heartbeats.

Host A starts on a fresh pool database and is master; host B starts with its
own state directory on 127.0.0.2 (same port) against the same database, and
its first boot adds it to the pool.  A client of A watches ``host_metrics``
through ``event.from``: a clean stop of B marks it dead at once; after its
restart it is live again; after ``kill -9`` A marks it dead once it has been
silent for ``host_assumed_dead_interval``, and live again when it returns.
"""

from __future__ import annotations

import signal
import time

import pytest
import sqlalchemy
import XenAPI

from tests import support

DEAD_AFTER = 4.0
TIMING = {"gc_interval": 0.3, "host_heartbeat_interval": 0.3,
          "host_assumed_dead_interval": DEAD_AFTER}


@pytest.fixture
def pool_db():
    problem = support.ensure_postgres()
    if problem:
        pytest.skip(f"LOUD SKIP: {problem}")
    url = support.create_pg_database()
    yield url
    support.drop_pg_database(url)


def _wait_live(x, metrics: str, token: str, want: bool, timeout: float) -> tuple[str, float]:
    """Follow event.from until B's host_metrics shows ``live == want``; returns token, seconds."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        result = x.event_from(["host_metrics"], token, 2.0)
        token = result["token"]
        for ev in result["events"]:
            if ev["ref"] == metrics and ev["operation"] == "mod" and ev["snapshot"]["live"] == want:
                return token, time.monotonic() - start
    raise AssertionError(f"no host_metrics event with live={want} within {timeout} s")


def _await_beat(db_url: str, host: str, timeout: float = 10.0) -> None:
    """Return just after ``host``'s beat count moves in the shared heartbeat table."""
    engine = sqlalchemy.create_engine(db_url)
    query = sqlalchemy.text("SELECT beats FROM xapi_host_heartbeat WHERE host = :host")
    try:
        with engine.connect() as conn:
            first = conn.execute(query, {"host": host}).scalar()
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                conn.rollback()  # a fresh snapshot each look
                if conn.execute(query, {"host": host}).scalar() != first:
                    return
                time.sleep(0.02)
    finally:
        engine.dispose()
    raise AssertionError(f"host {host} did not beat within {timeout} s")


def test_member_liveness_follows_its_heartbeats(pool_db):
    a = support.start_server(db_url=pool_db, **TIMING)
    b = None
    try:
        b = support.start_server(db_url=pool_db, listen_host="127.0.0.2", port=a.port, **TIMING)
        s = XenAPI.Session(a.url)
        s.login_with_password("root", support.ROOT_PASSWORD)
        x = s.xenapi
        deadline = time.monotonic() + 20
        while len(x.host.get_all()) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        hosts = {x.host.get_address(h): h for h in x.host.get_all()}
        assert set(hosts) == {"127.0.0.1", "127.0.0.2"}
        pool = x.pool.get_all()[0]
        assert x.pool.get_master(pool) == hosts["127.0.0.1"]  # A stays master
        metrics = x.host.get_metrics(hosts["127.0.0.2"])
        assert x.host_metrics.get_live(metrics)
        token = x.event_from(["host_metrics"], "", 0)["token"]

        # A clean stop says so: dead well before the interval could have run out.
        b.process.send_signal(signal.SIGTERM)
        b.process.wait(30)
        token, took = _wait_live(x, metrics, token, False, DEAD_AFTER * 3)
        assert took < DEAD_AFTER, took

        b = support.start_server(db_url=pool_db, state_dir=b.state_dir, listen_host="127.0.0.2",
                                 port=a.port, **TIMING)
        token, _ = _wait_live(x, metrics, token, True, 30)
        assert len(x.host.get_all()) == 2  # the same host came back

        # kill -9: no goodbye; A judges it dead once it is silent for the interval.
        # Killed right after a beat, so the silence starts at the kill (a busy B
        # may have beaten last well before it).
        _await_beat(pool_db, hosts["127.0.0.2"])
        killed = time.monotonic()
        b.process.send_signal(signal.SIGKILL)
        b.process.wait(30)
        token, _ = _wait_live(x, metrics, token, False, DEAD_AFTER * 5)
        assert time.monotonic() - killed >= DEAD_AFTER - 0.5
        assert x.host_metrics.get_live(x.host.get_metrics(hosts["127.0.0.1"]))

        b = support.start_server(db_url=pool_db, state_dir=b.state_dir, listen_host="127.0.0.2",
                                 port=a.port, **TIMING)
        token, _ = _wait_live(x, metrics, token, True, 30)
        assert x.host_metrics.get_live(metrics)
    finally:
        if b is not None:
            b.stop()
        a.stop()
