"""Restarting this host's server after a change of pool membership.

Joining or leaving a pool changes the database a host uses, so the server
replaces itself (``exec``) once the reply has gone out, as xapi restarts
after pool.join and pool.eject.  The server registers how to do it
(api/server.py); elsewhere (tests, tools) a request is only logged.
"""

from __future__ import annotations

import logging
import os

from xapi.context import Runtime

log = logging.getLogger("xapi.pool")

HOOK = "restart"  # rt.extra key: callable(reason) set by the server
RESET_MARKER = "reset-database"  # state_dir file: wipe the standalone database at next start


def request(rt: Runtime, reason: str) -> None:
    hook = rt.extra.get(HOOK)
    if hook is None:
        log.warning("%s needs a restart of this server; nothing registered to do it", reason)
        return
    hook(reason)


def mark_reset(state_dir: str) -> None:
    with open(os.path.join(state_dir, RESET_MARKER), "w") as f:
        f.write("ejected from its pool: start again from a fresh database\n")


def take_reset_mark(state_dir: str) -> bool:
    try:
        os.unlink(os.path.join(state_dir, RESET_MARKER))
        return True
    except FileNotFoundError:
        return False
