"""SMAPIv3 storage plugins: finding them, calling them, and the plugin side of the wire.

Layout (as xapi-storage-script expects under ``/var/lib/xapi/storage-scripts``)::

    <plugin dir>/volume/org.xen.xapi.storage.<sr type>/<Method>   volume plugins
    <plugin dir>/datapath/<uri scheme>/<Method>                   datapath plugins

Every method (``Plugin.Query``, ``SR.create``, ``Volume.snapshot``,
``Datapath.attach``, ...) is an executable named after it; the name is looked
up case-insensitively.  A call runs ``<script> --json`` with the named
parameters (``dbg`` included) as one JSON object on stdin and reads the JSON
result from stdout.  A non-zero exit must print
``{"code": ..., "params": [...], "backtrace": {...}}``; anything else is
reported as ``SCRIPT_FAILED``.  Python scripts are run with this process's
interpreter and with the project on ``PYTHONPATH``, so they import the
project's modules from the same virtualenv.  The project's own Python
scripts (those under ``DEFAULT_PLUGIN_DIR``) are run without ``site`` and,
unless the registry is made with ``preload=False``, by a fork server that
has imported their modules once (``launcher.py``): still one process per
call running the same executable file, without the interpreter start-up.

Server side (thread-safe; each call is one short-lived process)::

    registry = PluginRegistry([DEFAULT_PLUGIN_DIR], timeout=120)  # config storage_plugin_dirs
    registry.sr_types()                                # ["file", "iso"]
    registry.datapath_schemes()                        # ["file", "vhd+file"]
    registry.query("file")                             # the Plugin.Query record (cached)
    sr = registry.volume("file").call("SR.attach", configuration={"path": "/srv/sr1"})
    plugin, uri = registry.datapath_for(volume["uri"]) # first URI with a datapath
    plugin.call("Datapath.attach", uri=uri, domain="7")
    plugin.call_with("Datapath.attach", {"uri": uri, "domain": "7"}, timeout=5)
    plugin.has("Datapath.pause"), plugin.methods(), plugin.features()

Failures raise :class:`StorageError` ``(code, params)``.  The registry's own
codes: ``SR_UNKNOWN_DRIVER [sr type]`` (no such volume plugin),
``MISSING_URI [reason]`` (no datapath plugin for the scheme or URIs),
``SCRIPT_MISSING [path]``, ``SCRIPT_NOT_EXECUTABLE [path]`` and
``SCRIPT_FAILED [method, reason, stderr tail]`` (no error report on stdout,
bad JSON, killed by a signal, or timed out; the process group is killed).

Plugin side: :func:`serve` turns a table of handlers into a method
executable; :func:`sm_error` builds the error xapi would raise for an sm
(SMAPIv1) failure, ``SR_BACKEND_FAILURE_<n> ["", description, detail]``, so
that clients see the codes they know from XCP-ng.  The numbers come from sm's
``XE_SR_ERRORCODES.xml``; the descriptions are this project's wording.
Where xapi itself turns an sm number into a XenAPI error (24 -> ``VDI_IN_USE``,
144 -> ``VDI_MISSING``, 16 -> ``SR_DEVICE_IN_USE``, ...), plugins raise that
XenAPI code directly, with the plugin's own names (SR URI, volume key) as
parameters where XenAPI has object references.  An unexpected exception
becomes ``SR_BACKEND_FAILURE [exception type, message, ""]`` with a
backtrace, as the xapi-storage Python bindings do.
"""

from __future__ import annotations

import errno
import json
import os
import sys
import threading
import uuid as uuidlib
from typing import Any, Callable, Iterable, Mapping, NoReturn

# Plugin processes import this module on every call and only need its plugin
# side: subprocess, signal and traceback are imported where they are used.

__all__ = [
    "StorageError",
    "Plugin",
    "PluginRegistry",
    "Params",
    "serve",
    "sm_error",
    "os_error",
    "SM_ERRORS",
    "DEFAULT_PLUGIN_DIR",
    "PLUGIN_LIB_DIR",
    "VOLUME_QUEUE_PREFIX",
]

VOLUME_QUEUE_PREFIX = "org.xen.xapi.storage."
_HERE = os.path.dirname(os.path.realpath(__file__))
DEFAULT_PLUGIN_DIR = os.path.join(_HERE, "plugins")
# the modules the project's own plugins share (not a package: see plugins/lib)
PLUGIN_LIB_DIR = os.path.join(DEFAULT_PLUGIN_DIR, "lib")
PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(_HERE)))
DEFAULT_TIMEOUT = 120.0
STDERR_TAIL = 2000


class StorageError(Exception):
    """A storage call failed with ``code`` and string ``params``; ``backtrace``
    is the plugin's ``{"error", "files", "lines"}`` when it sent one."""

    def __init__(self, code: str, params: Iterable[object] = (), backtrace: dict | None = None):
        self.code = code
        self.params = [p if isinstance(p, str) else json.dumps(p) for p in params]
        self.backtrace = backtrace
        super().__init__(code, self.params)

    def __str__(self) -> str:
        return f"{self.code} {self.params}"

    def to_wire(self) -> dict:
        backtrace = self.backtrace or {"error": str(self), "files": [], "lines": []}
        return {"code": self.code, "params": self.params, "backtrace": backtrace}


# sm error names -> (number, description); the subset the project's plugins raise
SM_ERRORS: dict[str, tuple[int, str]] = {
    "InvalidArg": (1, "Invalid argument"),
    "Unimplemented": (38, "The method is not implemented by this SR"),
    "SRExists": (42, "An SR already exists at this location"),
    "SRNoSpace": (44, "There is insufficient space in the SR"),
    "VDIUnavailable": (46, "The volume is not available"),
    "SRUnavailable": (47, "The SR is not available"),
    "FileSRCreate": (61, "The file SR could not be created"),
    "VDISize": (79, "Invalid volume size"),
    "SnapshotChainTooLong": (109, "The snapshot chain is too long"),
    "ConfigParamsMissing": (115, "A required configuration key is missing"),
    "EIO": (200, "I/O error in the storage backend"),
    "ISODconfMissingLocation": (220, "The configuration key 'location' is required"),
    "ISOLocalPath": (226, "The ISO location is not a directory"),
}


def sm_error(name: str, detail: str = "") -> StorageError:
    """The error xapi reports for sm error ``name``."""
    number, description = SM_ERRORS[name]
    return StorageError(f"SR_BACKEND_FAILURE_{number}", ["", description, detail])


def os_error(exc: OSError) -> StorageError:
    """A filesystem failure: out of space is the SR being full."""
    detail = f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return sm_error("SRNoSpace", detail)
    return sm_error("EIO", detail)


# ---------------------------------------------------------------------------
# server side


def _is_python_script(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            first = f.readline(200)
    except OSError:
        return False
    return first.startswith(b"#!") and b"python" in first


def _is_builtin(directory: str) -> bool:
    real = os.path.realpath(directory)
    return real == DEFAULT_PLUGIN_DIR or real.startswith(DEFAULT_PLUGIN_DIR + os.sep)


def _tail(text: str) -> str:
    return text[-STDERR_TAIL:].strip()


class Plugin:
    """One plugin directory: ``kind`` is ``volume`` or ``datapath``, ``name``
    the queue name or URI scheme."""

    def __init__(self, kind: str, name: str, directory: str, *, timeout: float, env: Mapping[str, str],
                 launcher: Any = None):
        self.kind = kind
        self.name = name
        self.directory = directory
        self.timeout = timeout
        self._env = dict(env)
        # the project's own plugins: Python scripts run without site, through
        # the registry's fork server when it has one (launcher.py)
        self._builtin = _is_builtin(directory)
        self._launcher = launcher if self._builtin else None
        self._names: dict[str, str] = {}
        self._query: dict | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<Plugin {self.kind} {self.name} at {self.directory}>"

    def _scan(self) -> None:
        names: dict[str, str] = {}
        try:
            entries = sorted(os.listdir(self.directory))
        except OSError:
            entries = []
        for entry in entries:
            # xapi keeps the first of names differing only in case
            names.setdefault(entry.lower(), entry)
        with self._lock:
            self._names = names

    def methods(self) -> list[str]:
        """The method executables present (``X.y`` names), as spelled on disk."""
        self._scan()
        return sorted(n for n in self._names.values()
                      if "." in n and not n.endswith(".py")
                      and os.access(os.path.join(self.directory, n), os.X_OK))

    def has(self, method: str) -> bool:
        try:
            self.script(method)
            return True
        except StorageError:
            return False

    def script(self, method: str) -> str:
        """Absolute path of the executable for ``method`` (case-insensitive)."""
        if "/" in method or method.startswith("."):
            raise StorageError("SCRIPT_MISSING", [os.path.join(self.directory, method)])
        entry = self._names.get(method.lower())
        if entry is None:
            self._scan()           # a plugin may have been installed since
            entry = self._names.get(method.lower())
        path = os.path.join(self.directory, entry or method)
        if entry is None or not os.path.isfile(path):
            raise StorageError("SCRIPT_MISSING", [path])
        if not os.access(path, os.X_OK):
            raise StorageError("SCRIPT_NOT_EXECUTABLE", [path])
        return path

    def call(self, method: str, /, **params: Any) -> Any:
        """Run ``method`` with named ``params``; a ``dbg`` is made up if absent."""
        return self.call_with(method, params)

    def call_with(self, method: str, params: Mapping[str, Any], *, timeout: float | None = None) -> Any:
        path = self.script(method)
        values = dict(params)
        values.setdefault("dbg", f"xapi-server/{uuidlib.uuid4().hex[:12]}")
        limit = self.timeout if timeout is None else timeout
        returncode, stdout, stderr = self._run(method, path, json.dumps(values) + "\n", limit)
        if returncode < 0:
            raise StorageError("SCRIPT_FAILED",
                               [method, f"killed by signal {-returncode}", _tail(stderr)])
        if returncode != 0:
            raise _error_from_output(method, returncode, stdout, stderr)
        try:
            return json.loads(stdout)
        except ValueError:
            raise StorageError("SCRIPT_FAILED",
                               [method, f"bad JSON on stdout: {stdout[:200]!r}", _tail(stderr)]) from None

    def _run(self, method: str, path: str, payload: str, limit: float) -> tuple[int, str, str]:
        """Run the executable with ``payload`` on stdin: (status, stdout, stderr)."""
        python = _is_python_script(path)
        if python and self._launcher is not None:
            from .launcher import Unavailable

            try:
                code, out, err, timed_out = self._launcher.run(path, [path, "--json"],
                                                               payload.encode(), limit)
            except Unavailable:
                pass              # not started: run it as a process of its own
            else:
                stdout, stderr = out.decode(errors="replace"), err.decode(errors="replace")
                if timed_out:
                    raise StorageError("SCRIPT_FAILED",
                                       [method, f"timed out after {limit:g} s", _tail(stderr)])
                if code is None:
                    raise StorageError("SCRIPT_FAILED",
                                       [method, "the plugin launcher died", _tail(stderr)])
                return code, stdout, stderr
        return self._exec(method, path, payload, limit, python)

    def _exec(self, method: str, path: str, payload: str, limit: float,
              python: bool) -> tuple[int, str, str]:
        import signal
        import subprocess

        if python:
            # -S: the project's plugins need only the stdlib and PYTHONPATH
            argv = [sys.executable, *(["-S"] if self._builtin else []), path, "--json"]
        else:
            argv = [path, "--json"]
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=self._env, cwd="/",
                                start_new_session=True, text=True)
        try:
            stdout, stderr = proc.communicate(payload, timeout=limit)
        except subprocess.TimeoutExpired:
            # the whole session: a plugin's own children must not outlive it
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            _, stderr = proc.communicate()
            raise StorageError("SCRIPT_FAILED", [method, f"timed out after {limit:g} s", _tail(stderr)])
        return proc.returncode, stdout, stderr

    def query(self) -> dict:
        """The plugin's ``Plugin.Query`` record (asked once, then cached)."""
        if self._query is None:
            self._query = self.call("Plugin.Query")
        return self._query

    def features(self) -> list[str]:
        return list(self.query().get("features", []))


def _error_from_output(method: str, status: int, stdout: str, stderr: str) -> StorageError:
    try:
        report = json.loads(stdout)
    except ValueError:
        report = None
    if (isinstance(report, dict) and isinstance(report.get("code"), str)
            and isinstance(report.get("params", []), list)):
        backtrace = report.get("backtrace")
        return StorageError(report["code"], report.get("params", []),
                            backtrace if isinstance(backtrace, dict) else None)
    reason = f"exit status {status}, no error report on stdout"
    return StorageError("SCRIPT_FAILED", [method, reason, _tail(stderr)])


class PluginRegistry:
    """The volume and datapath plugins under ``plugin_dirs`` (default: the
    project's own).  When two directories provide the same queue or scheme,
    the first wins.  Directories are rescanned when a name is not found."""

    def __init__(self, plugin_dirs: Iterable[str] | None = None, *,
                 timeout: float = DEFAULT_TIMEOUT, env: Mapping[str, str] | None = None,
                 preload: bool = True):
        self.plugin_dirs = [os.path.abspath(d) for d in (plugin_dirs or [DEFAULT_PLUGIN_DIR])]
        self.timeout = timeout
        base = dict(os.environ if env is None else env)
        # the project's plugins import it; third-party ones are unaffected
        extra = [PROJECT_ROOT, PLUGIN_LIB_DIR]
        old = base.get("PYTHONPATH")
        base["PYTHONPATH"] = os.pathsep.join(extra + ([old] if old else []))
        self._env = base
        self.launcher = None
        if preload:
            from .launcher import Launcher

            self.launcher = Launcher(base)     # started on the first call that needs it
        self._plugins: dict[tuple[str, str], Plugin] = {}
        self._lock = threading.Lock()
        self.rescan()

    def rescan(self) -> None:
        found: dict[tuple[str, str], Plugin] = {}
        for root in self.plugin_dirs:
            for kind in ("volume", "datapath"):
                base = os.path.join(root, kind)
                try:
                    names = sorted(os.listdir(base))
                except OSError:
                    continue
                for name in names:
                    directory = os.path.join(base, name)
                    if name.startswith(".") or not os.path.isdir(directory) or (kind, name) in found:
                        continue
                    old = self._plugins.get((kind, name))
                    if old is not None and old.directory == directory:
                        found[(kind, name)] = old      # keep its cached query
                    else:
                        found[(kind, name)] = Plugin(kind, name, directory, timeout=self.timeout,
                                                     env=self._env, launcher=self.launcher)
        with self._lock:
            self._plugins = found

    def _find(self, kind: str, name: str) -> Plugin | None:
        plugin = self._plugins.get((kind, name))
        if plugin is None:
            self.rescan()
            plugin = self._plugins.get((kind, name))
        return plugin

    def sr_types(self) -> list[str]:
        return sorted(_sr_type(name) for kind, name in self._plugins if kind == "volume")

    def datapath_schemes(self) -> list[str]:
        return sorted(name for kind, name in self._plugins if kind == "datapath")

    def volume(self, sr_type: str) -> Plugin:
        plugin = self._find("volume", VOLUME_QUEUE_PREFIX + sr_type) or self._find("volume", sr_type)
        if plugin is None:
            raise StorageError("SR_UNKNOWN_DRIVER", [sr_type])
        return plugin

    def datapath(self, scheme: str) -> Plugin:
        plugin = self._find("datapath", scheme)
        if plugin is None:
            raise StorageError("MISSING_URI", [f"no datapath plugin for the URI scheme {scheme!r}"])
        return plugin

    def datapath_for(self, uris: Iterable[str]) -> tuple[Plugin, str]:
        """The first URI (most desirable first, as volumes list them) whose
        scheme has a datapath plugin, with that plugin."""
        uris = list(uris)
        for uri in uris:
            scheme, sep, _ = uri.partition("://")
            if sep:
                plugin = self._find("datapath", scheme)
                if plugin is not None:
                    return plugin, uri
        raise StorageError("MISSING_URI", [f"no datapath plugin for any of {uris}"])

    def query(self, sr_type: str) -> dict:
        return self.volume(sr_type).query()

    def close(self) -> None:
        """Stop the launcher (it also stops by itself when this process exits)."""
        if self.launcher is not None:
            self.launcher.close()


def _sr_type(queue: str) -> str:
    return queue[len(VOLUME_QUEUE_PREFIX):] if queue.startswith(VOLUME_QUEUE_PREFIX) else queue


# ---------------------------------------------------------------------------
# plugin side


class Params:
    """A call's named parameters, with typed accessors that fail as
    ``SR_BACKEND_FAILURE_1`` (invalid argument) naming the parameter."""

    def __init__(self, method: str, values: dict):
        self.method = method
        self.values = values

    def _get(self, name: str, kinds: tuple[type, ...], what: str) -> Any:
        if name not in self.values:
            raise sm_error("InvalidArg", f"{self.method}: missing parameter {name!r}")
        value = self.values[name]
        # JSON true is an int in Python: keep booleans out of integer parameters
        if not isinstance(value, kinds) or (bool not in kinds and isinstance(value, bool)):
            raise sm_error("InvalidArg", f"{self.method}: parameter {name!r} must be {what}, "
                                         f"not {json.dumps(value)[:80]}")
        return value

    def text(self, name: str) -> str:
        return self._get(name, (str,), "a string")

    def integer(self, name: str) -> int:
        return self._get(name, (int,), "an integer")

    def flag(self, name: str) -> bool:
        return self._get(name, (bool,), "a boolean")

    def mapping(self, name: str) -> dict[str, str]:
        value = self._get(name, (dict,), "an object")
        if not all(isinstance(v, str) for v in value.values()):
            raise sm_error("InvalidArg", f"{self.method}: the values of {name!r} must be strings")
        return value


Handler = Callable[[Params], Any]


def serve(handlers: Mapping[str, Handler], argv: list[str] | None = None) -> NoReturn:
    """Run the handler named by ``basename(argv[0])`` on the JSON parameters
    read from stdin, print its result (or the error report) and exit."""
    argv = sys.argv if argv is None else argv
    method = os.path.basename(argv[0])
    try:
        by_name = {name.lower(): handler for name, handler in handlers.items()}
        handler = by_name.get(method.lower())
        if handler is None:
            raise sm_error("Unimplemented", method)
        line = sys.stdin.readline()
        try:
            values = json.loads(line) if line.strip() else {}
        except ValueError:
            raise sm_error("InvalidArg", f"{method}: stdin is not JSON") from None
        if not isinstance(values, dict):
            raise sm_error("InvalidArg", f"{method}: the parameters must be a JSON object")
        result = handler(Params(method, values))
    except StorageError as exc:
        _fail(exc)
    except OSError as exc:
        _fail(os_error(exc))
    except Exception as exc:  # noqa: BLE001 - every failure must reach the caller as a report
        _fail(StorageError("SR_BACKEND_FAILURE", [type(exc).__name__, str(exc), ""]))
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    sys.exit(0)


def _fail(exc: StorageError) -> NoReturn:
    import traceback

    tb = traceback.extract_tb(sys.exc_info()[2])
    if exc.backtrace is None:
        exc.backtrace = {"error": str(exc), "files": [f.filename for f in tb],
                         "lines": [f.lineno or 0 for f in tb]}
    sys.stdout.write(json.dumps(exc.to_wire()) + "\n")
    sys.stdout.flush()
    sys.exit(1)
