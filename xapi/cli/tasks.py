"""Long operations: ``Async.*`` calls, waiting on their task, progress and Ctrl-C.

A long command calls the asynchronous form of its message and follows the
task with ``event.from`` on ``task/<ref>``.  While it waits, a progress bar
(`` 42% / #####``, xe's) is drawn on standard error when that is a terminal,
or when ``--progress`` is given; nothing is drawn when output is piped or in
``--minimal`` mode.  Ctrl-C cancels the task (``task.cancel``) and waits for
it to stop; the command then fails with ``TASK_CANCELLED`` (exit status 1),
or with the error of ``task.cancel`` if the server refuses.
A second Ctrl-C gives up waiting.  The task is destroyed at the end, as xe
does.
"""

from __future__ import annotations

import time
import xmlrpc.client
from typing import Any

from .errors import ApiFailure, ExitWithError

EVENT_TIMEOUT = 30.0
CANCEL_GRACE = 30.0
_SPINNER = "|/-\\"


def decode_result(text: str | None) -> Any:
    """``task.result`` is an XML-RPC ``<value>`` (xapi's encoding); decode it."""
    if not text:
        return None
    if not text.lstrip().startswith("<value"):
        return text
    doc = ("<?xml version='1.0'?><methodResponse><params><param>" + text
           + "</param></params></methodResponse>")
    try:
        (value,), _ = xmlrpc.client.loads(doc)
    except Exception:
        return text
    return value


class ProgressBar:
    """xe's bar: `` %3d%% %c <hashes>``, 70 hashes for a whole task."""

    def __init__(self, stream, in_place: bool):
        self.stream = stream
        self.in_place = in_place
        self.last: str | None = None
        self.drawn = False

    @staticmethod
    def line(progress: float) -> str:
        progress = min(max(progress, 0.0), 1.0)
        hashes = "#" * int(progress * 70)
        spin = _SPINNER[int(progress * 100) % len(_SPINNER)]
        return f"\r {int(progress * 100):3d}% {spin} {hashes}"

    def update(self, progress: float) -> None:
        text = self.line(progress)
        if text == self.last:
            return
        self.last = text
        self.drawn = True
        # On a terminal the bar is redrawn in place; otherwise one line per step, as xe.
        self.stream.write(text if self.in_place else text + "\n")
        self.stream.flush()

    def finish(self) -> None:
        if self.drawn:
            self.stream.write("\n")
            self.stream.flush()


class TaskRunner:
    """Runs ``Async.*`` calls of one command and waits for their tasks."""

    def __init__(self, session, stderr, show_progress: bool, in_place: bool):
        self.session = session
        self.stderr = stderr
        self.show_progress = show_progress
        self.in_place = in_place

    def run(self, method: str, *params: Any) -> Any:
        """Call ``Async.<method>``, wait, return the decoded result (or raise its error)."""
        task = self.session.call(f"Async.{method}", *params)
        try:
            return decode_result(self.wait(task))
        finally:
            try:
                self.session.call("task.destroy", task)
            except Exception:
                pass

    def wait(self, task: str) -> str | None:
        bar = ProgressBar(self.stderr, self.in_place) if self.show_progress else None
        try:
            try:
                record = self._follow(task, bar)
            except KeyboardInterrupt:
                record = self._cancel(task, bar)
        finally:
            if bar is not None:
                bar.finish()
        return self._outcome(task, record)

    def _follow(self, task: str, bar: ProgressBar | None, deadline: float | None = None) -> dict:
        token = ""
        classes = [f"task/{task}"]
        while True:
            timeout = EVENT_TIMEOUT
            if deadline is not None:
                timeout = max(0.1, min(timeout, deadline - time.monotonic()))
            reply = self.session.call("event.from", classes, token, float(timeout))
            token = reply.get("token", token)
            for ev in reply.get("events", []):
                if ev.get("class", "").lower() != "task" or ev.get("ref") != task:
                    continue
                if ev.get("operation") == "del":
                    raise ApiFailure("HANDLE_INVALID", ["task", task])
                snap = ev.get("snapshot") or {}
                if bar is not None and "progress" in snap:
                    bar.update(float(snap["progress"]))
                if snap.get("status", "pending") != "pending":
                    return snap
            if deadline is not None and time.monotonic() >= deadline:
                return self.session.call("task.get_record", task)

    def _cancel(self, task: str, bar: ProgressBar | None) -> dict:
        # The interrupted call may have left the connection mid-reply.
        self.session.conn.reset()
        # If the server refuses to cancel, that error is the command's outcome (exit status 1).
        self.session.call("task.cancel", task)
        try:
            return self._follow(task, bar, deadline=time.monotonic() + CANCEL_GRACE)
        except KeyboardInterrupt:
            raise ExitWithError(1) from None

    def _outcome(self, task: str, record: dict) -> str | None:
        status = record.get("status")
        if status in ("cancelling", "cancelled"):
            raise ApiFailure("TASK_CANCELLED", [task])
        if status == "pending":
            raise ApiFailure("INTERNAL_ERROR", ["wait_for_task_completion failed; task is still pending"])
        if status == "failure":
            info = record.get("error_info") or []
            if not info:
                raise ApiFailure("INTERNAL_ERROR", [f"Task failed but no error recorded: {task}"])
            raise ApiFailure(info[0], info[1:])
        return record.get("result")
