"""A synchronous xenopsd client over a unix socket.

``XenopsClient(socket_dir, queue)`` talks to ``<socket_dir>/<queue>``.
Each thread keeps one keep-alive HTTP connection (a dropped connection is
reopened and a call that found it dead before any reply is sent again), so
one client may be shared by the whole thread pool.  ``call(method, **named)``
sends any call of ``xenops_interface.ml`` and returns its result, checked
and normalised against ``protocol.METHODS`` (so an XML-RPC integer, which
arrives as a string, comes back as an ``int``); it raises ``XenopsError``
for an ``Errors.error`` reply and ``XenopsUnavailable`` when the socket
cannot be reached or the connection is lost.  The named wrappers below are
the calls the core uses; device ids are ``(vm uuid, device)`` tuples.

The simulator (``xenopsd-sim``, queue ``org.xen.xapi.xenops.simulator``)
speaks JSON-RPC and XML-RPC.  A real xenopsd on the message switch cannot
be reached this way; started without the switch it serves XML-RPC on
``<sockets-path>/xenopsd``, one request per connection::

    xenopsd-xc --use-switch=false --sockets-path=/var/lib/xcp   # or xenopsd-simulator
    XenopsClient("/var/lib/xcp", "xenopsd", encoding="xmlrpc")

so to point the server at it, give it that socket directory, the queue name
``xenopsd`` and the ``xmlrpc`` encoding (xapi itself reduces its queue list
to ``["xenopsd"]`` when it runs with ``use-switch=false``).
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from typing import Any

from xapi.backends.xenops import protocol as P
from xapi.backends.xenops.schema import SchemaError
from xapi.backends.xenops.unixhttp import ConnectionLost, ProtocolError as HttpProtocolError
from xapi.backends.xenops.unixhttp import UnixHTTPConnection

DeviceId = tuple[str, str]


class XenopsError(Exception):
    """xenopsd answered with an ``Errors.error``: ``name`` is the constructor,
    ``params`` its argument (``None``, a value, or a list for a tuple), as
    given to ``XenopsError(name, args)``."""

    def __init__(self, name: str, args: Any = None):
        super().__init__(name, args)
        self.name = name
        self.params = args

    def __str__(self) -> str:
        return self.name if self.params is None else f"{self.name} {json.dumps(self.params)}"


class XenopsUnavailable(Exception):
    """The socket could not be reached, or the connection was lost mid-call."""


class XenopsProtocolError(Exception):
    """xenopsd's reply could not be read (not the wire format, or not the declared type)."""


# A reused keep-alive connection the server has closed fails like this before
# any reply byte arrives; the call never reached the server and may be resent.
_STALE = (ConnectionLost, BrokenPipeError, ConnectionResetError, ConnectionAbortedError)

# UPDATES.get may block for its whole timeout: the socket waits that long and this much more.
_LONG_POLL_MARGIN = 30.0


class XenopsClient:
    def __init__(self, socket_dir: str, queue: str, timeout: float | None = None, *,
                 encoding: str = P.JSON, debug_info: str = "xapi"):
        if encoding not in P.CONTENT_TYPES:
            raise ValueError(f"unknown encoding {encoding!r}")
        self.path = P.socket_path(socket_dir, queue)
        self.queue = queue
        self.timeout = timeout
        self.encoding = encoding
        self.debug_info = debug_info
        self._local = threading.local()
        self._ids = itertools.count(1)
        self._open: set[UnixHTTPConnection] = set()  # every thread's, for close()
        self._open_lock = threading.Lock()

    # ------------------------------------------------------------ transport

    def call(self, method: str, **named: Any) -> Any:
        """Send ``method`` with ``named`` parameters (``debug_info`` defaults to
        the client's); return the decoded result."""
        dbg = named.pop("debug_info", None) or self.debug_info
        wait = self.timeout
        if method == "UPDATES.get":
            polled = named.get("timeout")
            wait = None if polled is None else max(self.timeout or 0.0, polled + _LONG_POLL_MARGIN)
        body = P.encode_request(self.encoding, method, P.call_params(method, dbg, named), next(self._ids))
        ok, value = self._exchange(body, wait)
        if not ok:
            raise XenopsError(*P.decode_error(value))
        spec = P.METHODS.get(method)
        if spec is None:
            return value
        try:
            return spec.result.decode(value)
        except SchemaError as exc:
            raise XenopsProtocolError(f"{method}: {exc}") from None

    def _exchange(self, body: bytes, wait: float | None) -> tuple[bool, Any]:
        for attempt in (1, 2):
            conn, reused = self._connection()
            try:
                status, data, will_close = conn.post("/", body, P.CONTENT_TYPES[self.encoding], wait)
            except _STALE as exc:
                self._drop()
                if reused and attempt == 1:
                    continue
                raise XenopsUnavailable(f"{self.path}: connection lost: {exc}") from None
            except (OSError, HttpProtocolError) as exc:
                self._drop()
                raise XenopsUnavailable(f"{self.path}: {exc}") from None
            if will_close:
                self._drop()
            if status != 200:
                raise XenopsProtocolError(f"HTTP {status} from {self.path}: {data[:200]!r}")
            try:
                return P.decode_reply(self.encoding, data)
            except P.ProtocolError as exc:
                raise XenopsProtocolError(str(exc)) from None
        raise AssertionError("unreachable")

    def _connection(self) -> tuple[UnixHTTPConnection, bool]:
        conn = getattr(self._local, "conn", None)
        if conn is not None and conn.sock is not None:
            return conn, True
        conn = UnixHTTPConnection(self.path, self.timeout)
        try:
            conn.connect()
        except OSError as exc:
            raise XenopsUnavailable(f"cannot connect to {self.path}: {exc}") from None
        self._local.conn = conn
        with self._open_lock:
            self._open.add(conn)
        return conn, False

    def _drop(self) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            conn.close()
            with self._open_lock:
                self._open.discard(conn)

    def close(self) -> None:
        """Close every thread's connection (with no call in flight); later calls reconnect."""
        with self._open_lock:
            conns, self._open = self._open, set()
        for conn in conns:
            conn.close()

    # ------------------------------------------------------------ top level and HOST

    def query(self) -> dict:
        return self.call("query")

    def host_stat(self) -> dict:
        return self.call("HOST.stat")

    def host_total_memory_mib(self) -> int:
        return self.call("HOST.get_total_memory_mib")

    # ------------------------------------------------------------ VM

    def vm_import_metadata(self, metadata: dict) -> str:
        """Send a ``Metadata.t`` (as JSON text, as xapi does); returns the VM id."""
        return self.call("VM.import_metadata", metadata=json.dumps(metadata))

    def vm_export_metadata(self, id: str) -> dict:
        return json.loads(self.call("VM.export_metadata", id=id))

    def vm_add(self, vm: dict) -> str:
        return self.call("VM.add", vm=vm)

    def vm_remove(self, id: str) -> None:
        self.call("VM.remove", id=id)

    def vm_start(self, id: str, paused: bool = False) -> str:
        """Queue ``VM.start``.  The domain is left paused (xapi queues
        ``VM.unpause`` next); ``paused`` is xenopsd's ``force`` flag."""
        return self.call("VM.start", id=id, paused=paused)

    def vm_shutdown(self, id: str, delay: float | None = None) -> str:
        """Queue ``VM.shutdown``: clean with a ``delay`` (seconds to wait for the
        guest), hard without."""
        return self.call("VM.shutdown", id=id, delay=delay)

    def vm_reboot(self, id: str, delay: float | None = None) -> str:
        return self.call("VM.reboot", id=id, delay=delay)

    def vm_suspend(self, id: str, disk: list) -> str:
        return self.call("VM.suspend", id=id, suspend_vdi=disk)

    def vm_resume(self, id: str, disk: list) -> str:
        return self.call("VM.resume", id=id, suspend_vdi=disk)

    def vm_pause(self, id: str) -> str:
        return self.call("VM.pause", id=id)

    def vm_unpause(self, id: str) -> str:
        return self.call("VM.unpause", id=id)

    def vm_migrate(self, id: str, xenops_url: str, *, vdi_map: dict | None = None,
                   vif_map: dict | None = None, pci_map: dict | None = None, compress: bool = False,
                   verify_dest: bool = False, localhost_migration: bool = False) -> str:
        return self.call("VM.migrate", id=id, vdi_map=vdi_map or {}, vif_map=vif_map or {},
                         pci_map=pci_map or {}, xenops_url=xenops_url, compress=compress,
                         verify_dest=verify_dest, localhost_migration=localhost_migration)

    def vm_stat(self, id: str) -> tuple[dict, dict]:
        """``(Vm.t, Vm.state)``."""
        vm, state = self.call("VM.stat", id=id)
        return vm, state

    def vm_exists(self, id: str) -> bool:
        return self.call("VM.exists", id=id)

    def vm_list(self) -> list[tuple[dict, dict]]:
        return [(vm, state) for vm, state in self.call("VM.list")]

    # ------------------------------------------------------------ VBD

    def vbd_add(self, vbd: dict) -> DeviceId:
        return tuple(self.call("VBD.add", vbd=vbd))

    def vbd_plug(self, id: DeviceId) -> str:
        return self.call("VBD.plug", id=list(id))

    def vbd_unplug(self, id: DeviceId, force: bool = False) -> str:
        return self.call("VBD.unplug", id=list(id), force=force)

    def vbd_eject(self, id: DeviceId) -> str:
        return self.call("VBD.eject", id=list(id))

    def vbd_insert(self, id: DeviceId, disk: list) -> str:
        return self.call("VBD.insert", id=list(id), disk=disk)

    def vbd_stat(self, id: DeviceId) -> tuple[dict, dict]:
        """``(Vbd.t, Vbd.state)``."""
        vbd, state = self.call("VBD.stat", id=list(id))
        return vbd, state

    def vbd_list(self, vm: str) -> list[tuple[dict, dict]]:
        return [(vbd, state) for vbd, state in self.call("VBD.list", id=vm)]

    def vbd_remove(self, id: DeviceId) -> None:
        self.call("VBD.remove", id=list(id))

    # ------------------------------------------------------------ VIF

    def vif_add(self, vif: dict) -> DeviceId:
        return tuple(self.call("VIF.add", vif=vif))

    def vif_plug(self, id: DeviceId) -> str:
        return self.call("VIF.plug", id=list(id))

    def vif_unplug(self, id: DeviceId, force: bool = False) -> str:
        return self.call("VIF.unplug", id=list(id), force=force)

    def vif_move(self, id: DeviceId, network: list) -> str:
        return self.call("VIF.move", id=list(id), network=network)

    def vif_stat(self, id: DeviceId) -> tuple[dict, dict]:
        """``(Vif.t, Vif.state)``."""
        vif, state = self.call("VIF.stat", id=list(id))
        return vif, state

    def vif_list(self, vm: str) -> list[tuple[dict, dict]]:
        return [(vif, state) for vif, state in self.call("VIF.list", id=vm)]

    def vif_remove(self, id: DeviceId) -> None:
        self.call("VIF.remove", id=list(id))

    # ------------------------------------------------------------ Task

    def task_stat(self, id: str) -> dict:
        return self.call("Task.stat", id=id)

    def task_cancel(self, id: str) -> None:
        self.call("Task.cancel", id=id)

    def task_destroy(self, id: str) -> None:
        self.call("Task.destroy", id=id)

    def task_list(self) -> list[dict]:
        return self.call("Task.list")

    def task_destroy_on_finish(self, id: str) -> None:
        self.call("Task.destroy_on_finish", id=id)

    def wait_task(self, task_id: str, timeout: float | None = None) -> dict:
        """The ``Task.t`` once the task is Completed or Failed (xapi's
        ``wait_for_task``: note the update id, stat, then follow ``UPDATES``
        for the task).  Raises ``TimeoutError`` after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        last = self.updates_last_id()
        task = self.task_stat(task_id)
        key = ("Task", task_id)
        while P.task_status(task) == P.PENDING:
            poll = 30
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"xenopsd task {task_id} still pending after {timeout}s")
                poll = max(1, min(poll, int(remaining + 0.999)))
            _, updates, last = self.updates_get(last, poll)
            if key in updates:
                task = self.task_stat(task_id)
        return task

    def sync_task(self, task_id: str, timeout: float | None = None) -> Any:
        """Wait for a task, destroy it, and return its result or raise its
        error as ``XenopsError`` (xapi's ``sync_with_task``)."""
        task = self.wait_task(task_id, timeout)
        try:
            self.task_destroy(task_id)
        except XenopsError:
            pass
        failure = P.task_error(task)
        if failure is not None:
            raise XenopsError(*failure)
        return P.task_result(task)

    # ------------------------------------------------------------ UPDATES and DEBUG

    def updates_get(self, last_id: int | None = None, timeout: int | None = None
                    ) -> tuple[list[tuple[int, list[tuple]]], list[tuple], int]:
        """``(barriers, updates, next_id)``: ids as ``("Vm", uuid)``,
        ``("Vbd", (vm, dev))``, ``("Task", id)`` …  Blocks until something
        happens after ``last_id`` or ``timeout`` seconds pass (``None``: forever)."""
        return P.decode_updates(self.call("UPDATES.get", last_id=last_id, timeout=timeout))

    def updates_last_id(self) -> int:
        return self.call("UPDATES.last_id")

    def updates_inject_barrier(self, vm_id: str, id: int) -> None:
        self.call("UPDATES.inject_barrier", vm_id=vm_id, id=id)

    def updates_remove_barrier(self, id: int) -> None:
        self.call("UPDATES.remove_barrier", id=id)

    def updates_refresh_vm(self, vm_id: str) -> None:
        self.call("UPDATES.refresh_vm", id=vm_id)

    def debug_trigger(self, cmd: str, args=()) -> None:
        self.call("DEBUG.trigger", cmd=cmd, args=[str(a) for a in args])
