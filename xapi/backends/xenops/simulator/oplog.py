"""The micro-op log: one line per micro-op, written as it starts.

Format (space-separated; tokens never contain blanks)::

    <unix time, 6 decimals> <vm uuid> <micro-op> [args…]
    1718000000.123456 0b7c…-…  VBD_plug xvda ReadWrite
    1718000000.123789 0b7c…-…  VM_unpause

Micro-op names are xenopsd's atomics (``VM_create``, ``VBD_plug``, …).
Lines are flushed one by one, so a killed simulator leaves every micro-op it
began.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any, Iterable

_BLANK = re.compile(r"\s+")


def token(value: Any) -> str:
    """A log token: booleans ``true``/``false``, ``None`` as ``-``, variants as
    ``Name:arg``, blanks as ``_``."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):  # a variant such as a disk: VDI:<sr>/<vdi>
        return ":".join(token(v) for v in value) or "-"
    text = _BLANK.sub("_", str(value))
    return text or "-"


@dataclass(frozen=True)
class Entry:
    time: float
    vm: str
    op: str
    args: tuple[str, ...]


def parse_line(line: str) -> Entry:
    when, vm, op, *args = line.split()
    return Entry(float(when), vm, op, tuple(args))


def read(path: str) -> list[Entry]:
    with open(path, encoding="utf-8") as f:
        return [parse_line(line) for line in f if line.strip()]


class OpLog:
    def __init__(self, path: str | None):
        self._file = open(path, "a", encoding="utf-8", buffering=1) if path else None

    def write(self, vm: str, op: str, args: Iterable[Any] = ()) -> None:
        if self._file is None:
            return
        fields = [f"{time.time():.6f}", token(vm), token(op),
                  *(token(a) for a in args if not isinstance(a, dict))]  # records stay out
        self._file.write(" ".join(fields) + "\n")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
