"""File-system hints for big copies (Linux; harmless no-ops elsewhere).

A coalesce appends many blocks to a VHD and then ``fsync``-s it.  Reserving
the room first (``fallocate``) spares the file system allocating it page by
page while the data is written (delayed allocation).  Starting the writeback
from another thread while the copy goes on (:class:`Flusher`) lets the disk
and the copy work at the same time, instead of one ``fsync`` writing
everything at the end.  The source of a coalesce is deleted afterwards:
dropping its cached pages from that thread as the copy goes takes that work
out of the deletion.
"""

from __future__ import annotations

import os

_fallocate = None


def _load_fallocate():
    global _fallocate
    if _fallocate is None:
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            fn = libc.fallocate
            fn.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
            fn.restype = ctypes.c_int
            _fallocate = fn
        except (ImportError, OSError, AttributeError):
            _fallocate = False
    return _fallocate


def preallocate(fd: int, offset: int, length: int) -> bool:
    """Allocate ``[offset, offset + length)`` (reading as zeros where nothing
    was written), growing the file if needed.  False when the file system
    cannot (``posix_fallocate``'s fallback of writing zeros is never used:
    it would cost more than it saves)."""
    fn = _load_fallocate()
    if not fn or length <= 0:
        return False
    return fn(fd, 0, offset, length) == 0


def drop_cache(fd: int, offset: int = 0, length: int = 0) -> None:
    """Forget the cached clean pages of a range (0: to the end) that will not
    be read again; dirty ones are queued for writing."""
    if hasattr(os, "posix_fadvise"):
        try:
            os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)
        except OSError:
            pass


SYNC_FILE_RANGE_WRITE = 2           # <linux/fs.h>
_sync_file_range = None


def _load_sync_file_range():
    global _sync_file_range
    if _sync_file_range is None:
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            fn = libc.sync_file_range
            fn.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
            fn.restype = ctypes.c_int
            _sync_file_range = fn
        except (ImportError, OSError, AttributeError):
            _sync_file_range = False
    return _sync_file_range


class Flusher:
    """Starts the writeback of a file's dirty pages from a thread of its own
    while the caller goes on writing (``wrote`` after each write), and drops
    the cached pages of source ranges the caller is done with (``done_with``:
    a source deleted afterwards).  Queueing pages for writing and freeing
    pages cost CPU time, which is why neither is done in the copying thread:
    there they would only add to the copy.  ``fsync`` is still what makes the
    data durable; :meth:`stop` returns once the thread is done."""

    def __init__(self, fd: int, source_fd: int = -1, chunk: int = 16 << 20):
        import threading

        self.fd = fd
        self.source_fd = source_fd
        self.chunk = chunk
        self._pending = 0
        self._fn = _load_sync_file_range()
        self._cond = threading.Condition()
        self._due = False
        self._stopped = False
        self._drops: list[tuple[int, int]] = []
        self._thread = threading.Thread(target=self._run, name="flusher", daemon=True)
        self._thread.start()

    def wrote(self, nbytes: int) -> None:
        self._pending += nbytes
        if self._pending >= self.chunk:
            self._pending = 0
            with self._cond:
                self._due = True
                self._cond.notify()

    def done_with(self, offset: int, length: int) -> None:
        if self.source_fd >= 0:
            with self._cond:
                self._drops.append((offset, length))

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._due and not self._stopped:
                    self._cond.wait()
                stopped, self._due = self._stopped, False
                drops, self._drops = self._drops, []
            if not stopped and self._fn:
                self._fn(self.fd, 0, 0, SYNC_FILE_RANGE_WRITE)   # a hint: failures change nothing
            for offset, length in _merged(drops):
                drop_cache(self.source_fd, offset, length)
            if stopped:
                return

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        self._thread.join()


def _merged(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for offset, length in sorted(ranges):
        if out and out[-1][0] + out[-1][1] >= offset:
            start = out[-1][0]
            out[-1] = (start, max(out[-1][1], offset + length - start))
        else:
            out.append((offset, length))
    return out
