"""Delays and failures injected into micro-ops, so tests can catch an operation midway.

A delay rule makes a micro-op (``"*"``: every micro-op) take that many
seconds; a failure rule makes it fail with an ``Errors.error``, every time
or the next ``count`` times.  Either may be limited to one VM.  The first
rule found wins, looking for: this micro-op on this VM, this micro-op on any
VM, any micro-op on this VM, any micro-op on any VM.

Command-line forms::

    --delay OP[@VM]=SECONDS             --delay VBD_plug=0.5   --delay '*=0.01'
    --fail OP[@VM][=ERROR_JSON][#COUNT] --fail VM_build#1       --fail 'VM_create@<uuid>=["Not_enough_memory", 1024]'

and the same through ``DEBUG.trigger`` (see ``rpc``).  Without an error the
failure is ``Internal_error "injected failure in <OP>"``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from xapi.backends.xenops import protocol as P
from xapi.backends.xenops.schema import SchemaError

ANY = "*"


@dataclass
class _Failure:
    error: Any
    remaining: int | None  # None: every time


class Faults:
    def __init__(self, known: frozenset[str] | None = None) -> None:
        self._known = known  # the micro-op names rules may name (None: any)
        self._delays: dict[tuple[str, str], float] = {}
        self._failures: dict[tuple[str, str], _Failure] = {}

    @staticmethod
    def _lookup(table: dict, op: str, vm: str):
        for key in ((op, vm), (op, ANY), (ANY, vm), (ANY, ANY)):
            if key in table:
                return key, table[key]
        return None, None

    def _check_name(self, op: str) -> None:
        if self._known is not None and op != ANY and op not in self._known:
            raise ValueError(f"unknown micro-op {op!r}")

    def delay_for(self, op: str, vm: str) -> float:
        return self._lookup(self._delays, op, vm)[1] or 0.0

    def failure_for(self, op: str, vm: str) -> Any:
        """The error to fail ``op`` on ``vm`` with, if any (a counted rule is used up)."""
        key, rule = self._lookup(self._failures, op, vm)
        if rule is None:
            return None
        if rule.remaining is not None:
            rule.remaining -= 1
            if rule.remaining <= 0:
                del self._failures[key]
        return rule.error

    def add_delay(self, op: str, seconds: float, vm: str | None = None) -> None:
        self._check_name(op)
        if seconds < 0:
            raise ValueError("a delay cannot be negative")
        self._delays[(op, vm or ANY)] = seconds

    def add_failure(self, op: str, vm: str | None = None, error: Any = None, count: int | None = None) -> None:
        self._check_name(op)
        if error is None:
            error = P.error("Internal_error", f"injected failure in {op}")
        else:
            try:
                error = P.ERROR.decode(error)
            except SchemaError as exc:
                raise ValueError(f"not an Errors.error: {exc}") from None
        self._failures[(op, vm or ANY)] = _Failure(error, count if count else None)

    def clear(self) -> None:
        self._delays.clear()
        self._failures.clear()

    # ------------------------------------------------------------ command-line forms

    def add_delay_spec(self, spec: str) -> None:
        target, sep, seconds = spec.rpartition("=")
        if not sep or not target:
            raise ValueError(f"--delay wants OP[@VM]=SECONDS, got {spec!r}")
        op, _, vm = target.partition("@")
        self.add_delay(op, float(seconds), vm or None)

    def add_failure_spec(self, spec: str) -> None:
        body, count = spec, None
        head, hash_, tail = spec.rpartition("#")
        if hash_ and tail.isdigit():
            body, count = head, int(tail)
        target, sep, text = body.partition("=")
        op, _, vm = target.partition("@")
        if not op:
            raise ValueError(f"--fail wants OP[@VM][=ERROR_JSON][#COUNT], got {spec!r}")
        self.add_failure(op, vm or None, json.loads(text) if sep else None, count)
