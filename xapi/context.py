"""What a call runs with: the server's runtime and the caller's context."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Mapping

from db.store import Database
from xapi.config import Config
from xapi.idl.types import NULL_REF


def now() -> datetime:
    """Current time at xapi's resolution (whole seconds, UTC)."""
    return datetime.now(timezone.utc).replace(microsecond=0)


@dataclass
class Runtime:
    """Everything a server process shares between calls."""

    config: Config
    db: Database
    executor: ThreadPoolExecutor
    host_ref: str = NULL_REF
    pool_ref: str = NULL_REF
    process_id: str = ""  # "<host uuid>/<pid>/<start>": owner of the tasks this process runs
    events: Any = None  # xapi.events.EventHub, once the event loop runs
    domains: Any = None  # xapi.domains.service.Domains, when xenopsd is configured
    storage: Any = None  # xapi.storage.service.Storage
    extra: dict[str, Any] = field(default_factory=dict)  # per-process state of impl modules

    @property
    def model(self):
        return self.db.model

    @property
    def cache(self):
        return self.db.cache


@dataclass
class Context:
    """One call: who makes it, over what, in which wire format."""

    rt: Runtime
    fmt: str = "xml"  # "xml" or "json": selects cached record encodings
    session: str | None = None
    local: bool = False  # arrived over the unix socket (pre-authenticated as root)
    method: str = ""
    task: str | None = None  # the task this call runs under, if any
    headers: Mapping[str, str] = field(default_factory=dict)  # case-insensitive from aiohttp
    # Wire forms in this call's format (set by the API layer): a whole record,
    # and any value, returned as an already encoded fragment.
    encode_record: Callable[[str, Any], Any] | None = None
    encode_value: Callable[[Any], Any] | None = None
    # Set by the dispatcher for a call running under its task: writes the task's
    # success (a void result) into a transaction, so that the call's last
    # operation can finish the task in its own last commit (operations.run_operation
    # with last=True); task_finished then tells the dispatcher it is done.
    finish_task: Callable[[Any], None] | None = None
    task_finished: bool = False

    def check_cancelled(self) -> None:
        """Long operations call this between steps: raises TASK_CANCELLED when asked to stop."""
        from xapi import tasks

        tasks.check_cancelled(self.rt, self.task)
