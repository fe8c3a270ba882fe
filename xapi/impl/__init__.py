"""Hand-written implementations of custom messages, one module per class.

Each implementation registers itself with ``@implements("Class.message")``.
``mode`` says where it runs: ``"read"`` inline on the event loop (must be
quick and must not block), ``"write"`` in the server's thread pool (may use
the database), ``"async"`` as a coroutine on the event loop.  Parameters
arrive typed, in model order, without the session.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

HANDLERS: dict[str, "Handler"] = {}


@dataclass(frozen=True)
class Handler:
    fn: Callable
    mode: str


def implements(wire_name: str, mode: str = "write"):
    assert mode in ("read", "write", "async")

    def register(fn):
        if wire_name in HANDLERS:
            raise RuntimeError(f"{wire_name} implemented twice")
        HANDLERS[wire_name] = Handler(fn, mode)
        return fn

    return register


def load_all() -> dict[str, Handler]:
    """Import every implementation module so that it registers itself."""
    from . import devices, event, message, migration, placement, pool, session, storage, task, vm  # noqa: F401

    return HANDLERS
