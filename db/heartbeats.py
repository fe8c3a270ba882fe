"""Host heartbeats in the private table ``xapi_host_heartbeat``.

A beat is one small UPDATE (an INSERT the first time) outside the object
tables: it makes no ``xapi_changes`` entry, no generation and no event, so
64 hosts beating every 30 s cost the event stream nothing.  What the master
makes of the beats (``host_metrics.live``) is decided in
``xapi/pool/liveness.py`` and written as an ordinary change.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from .schema import metadata


@dataclass(frozen=True)
class Beat:
    beats: int  # how many this host has sent; only a change matters
    time: datetime  # the host's own clock at its last beat
    shutting_down: bool  # the last beat was xapi's "shutting-down" one


def _table():
    return metadata.tables["xapi_host_heartbeat"]


def record(db, host: str, time: datetime, shutting_down: bool = False) -> None:
    """One beat of ``host``: counts it and notes the host's clock."""
    table = _table()
    values = {"time": time, "shutting_down": shutting_down}
    with db.engine.begin() as conn:
        done = conn.execute(update(table).where(table.c.host == host)
                            .values(beats=table.c.beats + 1, **values)).rowcount
        if done:
            return
    try:
        with db.engine.begin() as conn:
            conn.execute(insert(table).values(host=host, beats=1, **values))
    except IntegrityError:  # another process inserted it meanwhile: count ours
        with db.engine.begin() as conn:
            conn.execute(update(table).where(table.c.host == host)
                         .values(beats=table.c.beats + 1, **values))


def read_all(db) -> dict[str, Beat]:
    """host ref → its last beat, for every host that ever beat."""
    table = _table()
    with db.engine.connect() as conn:
        return {r.host: Beat(r.beats, r.time, r.shutting_down)
                for r in conn.execute(select(table))}


def forget(db, host: str) -> None:
    """Drop a host's beats (when the host leaves the pool)."""
    table = _table()
    with db.engine.begin() as conn:
        conn.execute(delete(table).where(table.c.host == host))
