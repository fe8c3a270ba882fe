"""A fork server for the project's own Python plugin scripts.

Starting a Python interpreter and importing ``plugins.py`` and ``vhd.py``
costs tens of milliseconds, several times what most plugin calls do.  The
launcher is one long-lived interpreter (started on first use, one per
:class:`~xapi.backends.storage.plugins.PluginRegistry`) that has imported
those modules once.  For each call it forks a child that runs the method's
executable file as ``__main__``, exactly as ``python <script> --json`` would:
its own process and session, the call's JSON on stdin, the result on stdout,
its exit status reported back.  The plugin contract is unchanged; only the
interpreter start-up and the imports are shared (copy-on-write).  Scripts are
compiled once per (real path, mtime, size).

Wire (a ``SOCK_SEQPACKET`` pair, the server holding one end): the caller
sends ``{"path", "argv", "cwd"}`` with four file descriptors: the child's
stdin, stdout and stderr and a status socket.  The launcher answers on the
status socket ``pid <n>`` once forked and ``exit <n>`` when the child is
reaped (``n`` as ``Popen.returncode``: negative for a signal).  The
launcher exits when the caller's end closes, so it never outlives its
registry's process.
"""

from __future__ import annotations

import json
import os
import selectors
import socket
import subprocess
import sys
import threading
import time

# what the project's plugin scripts import; importing the scripts' own
# modules too warms what their bodies build (compiled regular expressions)
_PRELOAD = ("json", "glob", "re", "uuid", "fcntl", "traceback", "contextlib", "typing",
            "threading", "urllib.parse", "xapi.backends.storage.plugins",
            "xapi.backends.storage.vhd", "sr_dir", "file_volume", "iso_volume", "datapath")
_MAX_MESSAGE = 1 << 16


class Unavailable(Exception):
    """The launcher could not take the call: nothing was started, run it another way."""


class Launcher:
    """The caller's side; thread-safe."""

    def __init__(self, env: dict[str, str], *, start_timeout: float = 30.0):
        self._env = dict(env)
        self._start_timeout = start_timeout
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._proc: subprocess.Popen | None = None
        self._failed_at = 0.0

    def _ensure(self) -> socket.socket:
        if self._sock is not None and self._proc is not None and self._proc.poll() is None:
            return self._sock
        self._close()
        if time.monotonic() - self._failed_at < 5.0:
            raise Unavailable("the launcher failed to start a moment ago")
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            # -S: the project's plugins need the stdlib and PYTHONPATH only
            self._proc = subprocess.Popen(
                [sys.executable, "-S", os.path.abspath(__file__), str(theirs.fileno())],
                pass_fds=[theirs.fileno()], env=self._env, cwd="/", stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, start_new_session=True)
        finally:
            theirs.close()
        ours.settimeout(self._start_timeout)
        try:
            ready = ours.recv(64)
        except OSError:
            ready = b""
        if ready != b"ready":
            self._failed_at = time.monotonic()
            ours.close()
            self._close()
            raise Unavailable("the launcher did not start")
        ours.settimeout(None)
        self._sock = ours
        return ours

    def _close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._proc is not None:
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None

    def close(self) -> None:
        with self._lock:
            self._close()

    def run(self, path: str, argv: list[str], stdin: bytes, timeout: float
            ) -> tuple[int | None, bytes, bytes, bool]:
        """Run the script: (returncode, stdout, stderr, timed out).  After a
        timeout the child's session has been killed; returncode is None then,
        or when the launcher died under the call."""
        header = json.dumps({"path": path, "argv": argv, "cwd": "/"}).encode()
        in_r, in_w = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        status, child_status = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            with self._lock:
                sock = self._ensure()
                try:
                    socket.send_fds(sock, [header], [in_r, out_w, err_w, child_status.fileno()])
                except OSError as exc:
                    self._close()
                    raise Unavailable(f"the launcher is gone: {exc}") from None
        except BaseException:
            for fd in (in_w, out_r, err_r):
                os.close(fd)
            status.close()
            raise
        finally:
            for fd in (in_r, out_w, err_w):
                os.close(fd)
            child_status.close()
        with status:
            return _communicate(status, in_w, out_r, err_r, stdin, time.monotonic() + timeout)


def _communicate(status: socket.socket, in_w: int, out_r: int, err_r: int, data: bytes,
                 deadline: float) -> tuple[int | None, bytes, bytes, bool]:
    pid = None
    code: int | None = None
    out, err = bytearray(), bytearray()
    view = memoryview(data)
    with selectors.DefaultSelector() as sel:
        os.set_blocking(in_w, False)
        sel.register(in_w, selectors.EVENT_WRITE, "in")
        sel.register(out_r, selectors.EVENT_READ, out)
        sel.register(err_r, selectors.EVENT_READ, err)
        sel.register(status, selectors.EVENT_READ, "status")
        timed_out = False
        while len(sel.get_map()) > 0:
            left = deadline - time.monotonic()
            if left <= 0 and not timed_out:
                timed_out = True
                if pid is not None:
                    try:
                        os.killpg(pid, 9)      # the whole session, as Popen's caller does
                    except (ProcessLookupError, PermissionError):
                        pass
                deadline = time.monotonic() + 10      # collect what is left, then give up
            elif left <= 0:
                break
            for key, _ in sel.select(max(left, 0.01) if left > 0 else 0.01):
                fd = key.fd
                if key.data == "in":
                    try:
                        n = os.write(fd, view[:1 << 16])
                    except BrokenPipeError:
                        n = len(view)
                    view = view[n:]
                    if not view:
                        sel.unregister(fd)
                        os.close(fd)
                        in_w = -1
                elif key.data == "status":
                    msg = status.recv(64)
                    if not msg:
                        sel.unregister(status)
                        continue
                    word, value = msg.decode().split()
                    if word == "pid":
                        pid = int(value)
                    else:
                        code = int(value)
                        sel.unregister(status)
                else:
                    chunk = os.read(fd, 1 << 16)
                    if chunk:
                        key.data.extend(chunk)
                    else:
                        sel.unregister(fd)
    for fd in (in_w, out_r, err_r):
        if fd >= 0:
            os.close(fd)
    if timed_out:
        return None, bytes(out), bytes(err), True
    return code, bytes(out), bytes(err), False


# ---------------------------------------------------------------------------
# the launcher process


def _serve(fd: int) -> None:
    import signal

    for name in _PRELOAD:
        try:
            __import__(name)
        except ImportError:
            pass
    ctl = socket.socket(fileno=fd)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.set_wakeup_fd(wake_w)
    codes: dict[str, tuple[tuple[int, int], object]] = {}
    waiting: dict[int, socket.socket] = {}
    ctl.send(b"ready")
    sel = selectors.DefaultSelector()
    sel.register(ctl, selectors.EVENT_READ)
    sel.register(wake_r, selectors.EVENT_READ)
    while True:
        for key, _ in sel.select():
            if key.fileobj is ctl:
                try:
                    msg, fds, _, _ = socket.recv_fds(ctl, _MAX_MESSAGE, 4)
                except OSError:
                    msg, fds = b"", []
                if not msg:
                    os._exit(0)          # the caller is gone
                _start(msg, fds, codes, waiting)
            else:
                os.read(wake_r, 512)
        while waiting:
            try:
                pid, wstatus = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            sock = waiting.pop(pid, None)
            if sock is not None:
                try:
                    sock.send(b"exit %d" % os.waitstatus_to_exitcode(wstatus))
                except OSError:
                    pass
                sock.close()


def _compiled(path: str, codes: dict) -> object:
    # by the file's real path: a plugin's methods are often links to one script
    real = os.path.realpath(path)
    st = os.stat(real)
    stamp = (st.st_mtime_ns, st.st_size)
    cached = codes.get(real)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    with open(real, "rb") as f:
        code = compile(f.read(), real, "exec", dont_inherit=True)
    codes[real] = (stamp, code)
    return code


def _start(msg: bytes, fds: list[int], codes: dict, waiting: dict) -> None:
    if len(fds) != 4:
        for fd in fds:
            os.close(fd)
        return
    status = socket.socket(fileno=fds[3])
    req = None
    try:
        req = json.loads(msg)
        code = _compiled(req["path"], codes)
    except Exception as exc:  # noqa: BLE001 - reported as a failed run, like a bad interpreter
        os.write(fds[2], f"launcher: {type(exc).__name__}: {exc}\n".encode())
        code = None
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        _child(req if code is not None else None, code, fds)
    for fd in fds[:3]:
        os.close(fd)
    try:
        status.send(b"pid %d" % pid)
    except OSError:
        pass
    waiting[pid] = status


def _fd_limit() -> int:
    """One past the highest open file descriptor (as far as we can tell)."""
    try:
        return max(int(fd) for fd in os.listdir("/proc/self/fd")) + 1
    except (OSError, ValueError):
        return 65536


def _child(req: dict | None, code, fds: list[int]) -> None:
    import signal
    import types

    status = 1
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.setsid()
        for target, fd in enumerate(fds[:3]):
            os.dup2(fd, target)
        os.closerange(3, _fd_limit())
        if req is None:
            os._exit(1)
        os.chdir(req["cwd"])
        path = req["path"]
        sys.argv = list(req["argv"])
        sys.path.insert(0, os.path.dirname(os.path.realpath(path)))   # as for a script
        main = types.ModuleType("__main__")
        main.__file__ = path
        main.__builtins__ = __builtins__
        sys.modules["__main__"] = main
        try:
            exec(code, main.__dict__)
            status = 0
        except SystemExit as exc:
            if exc.code is None:
                status = 0
            elif isinstance(exc.code, int):
                status = exc.code
            else:
                print(exc.code, file=sys.stderr)
                status = 1
        except BaseException:  # noqa: BLE001 - as the interpreter reports an uncaught exception
            import traceback
            traceback.print_exc()
            status = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(status & 0xFF)


if __name__ == "__main__":
    del sys.path[0]                 # this directory: children get their script's instead
    _serve(int(sys.argv[1]))
