"""The pool secret: what hosts of one pool prove to each other (xapi's ptoken).

Kept in a file of the state directory, readable by this host only, never in
the database and never returned to a client except by ``pool.initial_auth``
to a host that has logged in to join.
"""

from __future__ import annotations

import hmac
import os
import secrets

FILE = "pool-secret"


def _path(state_dir: str) -> str:
    return os.path.join(state_dir, FILE)


def load(state_dir: str) -> str:
    """This host's pool secret, created on first use."""
    try:
        with open(_path(state_dir)) as f:
            value = f.read().strip()
        if value:
            return value
    except FileNotFoundError:
        pass
    value = secrets.token_hex(32)
    store(state_dir, value)
    return value


def store(state_dir: str, value: str) -> None:
    os.makedirs(state_dir, exist_ok=True)
    path = _path(state_dir)
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
    os.replace(tmp, path)


def matches(state_dir: str, offered: object) -> bool:
    return isinstance(offered, str) and hmac.compare_digest(offered.encode(), load(state_dir).encode())
