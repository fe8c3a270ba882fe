"""Keep this process's object cache coherent with other processes' commits.

On PostgreSQL every commit sends ``NOTIFY xapi_changes``; a thread here
LISTENs on its own connection and catches the cache up from the change log
(``Database.catch_up``), which also wakes event.from waiters through the
cache's listeners.  A slow periodic catch-up covers a lost connection.
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
            while not self._stop.is_set():
                # Each notification's payload is its commit's generation.
                newest = 0
                for note in conn.notifies(timeout=self.poll_interval, stop_after=1):
                    newest = _generation(note.payload)
                for note in conn.notifies(timeout=0):  # and whatever else is queued
                    newest = max(newest, _generation(note.payload))
                if newest and newest <= self.db.cache.generation:
                    continue  # this process's own commits, applied as they committed
                # Either a commit was announced or the poll interval passed.
                if self.db.catch_up() and not newest:
                    log.debug("caught up without a notification")
        finally:
            raw.close()


def _generation(payload: str) -> int:
    try:
        return int(payload)
    except ValueError:
        return 1 << 62  # not ours to read: catch up
