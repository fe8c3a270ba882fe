"""xe's output: records, lists and ``--minimal``.

A record prints as ``key: value`` lines where the keys are aligned on the
colon: the first key is padded on the right and the others on the left, to
four more than the longest key.  Each record is followed by two empty lines
(the record ends in a newline, the printer adds one, the terminal one more),
as xe prints them.  ``--minimal`` collects the first value of every record
and every plain line, escapes ``,`` and ``\\``, and prints them comma-joined on
one line when the command succeeds; messages and stderr output are dropped.
"""

from __future__ import annotations

import sys
from typing import TextIO

Record = list[tuple[str, str]]


def format_record(record: Record) -> str:
    """One record as xe prints it, ending in a newline."""
    if not record:
        return "\n"
    width = 4 + max(len(k) for k, _ in record)
    first_key, first_value = record[0]
    lines = [f"{first_key.ljust(width)}: {first_value}"]
    lines += [f"{k.rjust(width)}: {v}" for k, v in record[1:]]
    return "\n".join(lines) + "\n"


def escape_commas(value: str) -> str:
    return value.replace("\\", "\\\\").replace(",", "\\,")


class Printer:
    """Writes what a command prints; in ``--minimal`` mode buffers until ``flush``."""

    def __init__(self, minimal: bool = False, out: TextIO | None = None, err: TextIO | None = None):
        self.minimal = minimal
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self._buffer: list[str] = []

    # -- the four kinds of output xe has --------------------------------------

    def table(self, records: list[Record]) -> None:
        if self.minimal:
            if records and all(records):
                self._buffer.append(",".join(escape_commas(r[0][1]) for r in records))
            return
        for record in records:
            self._line(format_record(record) + "\n")

    def lines(self, values: list[str]) -> None:
        if self.minimal:
            self._buffer.append(",".join(escape_commas(v) for v in values))
            return
        for value in values:
            self._line(value)

    def message(self, text: str) -> None:
        if not self.minimal:
            self._line(text)

    def stderr(self, text: str) -> None:
        if not self.minimal:
            self.err.write(text + "\n")
            self.err.flush()

    def flush(self) -> None:
        """End of a successful command: ``--minimal`` prints what it gathered."""
        if self.minimal:
            # xe prepends each batch to its buffer and joins them at the end.
            self._line(",".join(reversed(self._buffer)))
            self._buffer = []
        self.out.flush()

    def _line(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()
