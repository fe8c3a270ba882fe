"""Keep this process's object cache coherent with other processes' commits.

On PostgreSQL every commit sends ``NOTIFY xapi_changes`` with its generation
and, when they fit, its changes (``db/announce.py``).  A thread here LISTENs
on its own connection and applies them (``Database.hear``), or catches the
cache up from the change log when it cannot (``Database.catch_up``); either
wakes event.from waiters through the cache's listeners.  A slow periodic
catch-up covers a lost connection.  While it listens, a writer leaves the
commits of other processes that precede its own to it (``Database.hearing``).
SQLite (the embedded mode) has one process, so nothing needs to listen.
"""

from __future__ import annotations

import logging
import threading
import time

from .store import NOTIFY_CHANNEL, Database

log = logging.getLogger("xapi.db.listen")


class ChangeListener:
    def __init__(self, db: Database, poll_interval: float = 2.0):
        self.db = db
        self.poll_interval = poll_interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="xapi-listen", daemon=True)

    def start(self, force: bool = False) -> "ChangeListener":
        """Listen on PostgreSQL; elsewhere only poll, and only if ``force``d
        (several processes on one SQLite file, which the embedded mode avoids)."""
        if self.db.dialect == "postgresql" or force:
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if self.db.dialect == "postgresql":
                    self._listen()
                else:
                    self.db.catch_up()
                    self._stop.wait(self.poll_interval)
            except Exception:
                log.exception("change listener lost its connection; retrying")
                time.sleep(1.0)

    def _listen(self) -> None:
        raw = self.db.engine.raw_connection()
        try:
            conn = raw.driver_connection  # psycopg 3
            conn.autocommit = True
            conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
            self.db.catch_up()  # whatever was committed before we listened
            self.db.hearing = True
            while not self._stop.is_set():
                payloads = [n.payload for n in conn.notifies(timeout=self.poll_interval,
                                                             stop_after=1)]
                if payloads:  # and whatever else is queued, in commit order
                    payloads += [n.payload for n in conn.notifies(timeout=0)]
                    self.db.hear(payloads)
                elif self.db.catch_up():  # the poll interval passed
                    log.debug("caught up without a notification")
        finally:
            with self.db.cache.advanced:  # writers waiting for us read the log instead
                self.db.hearing = False
                self.db.cache.advanced.notify_all()
            raw.close()

