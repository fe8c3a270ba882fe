"""Where xe connects and how it talks: options, transports and XML-RPC calls.

Options come, in order of priority, from the command line, ``XE_EXTRA_ARGS``
and ``~/.xe``, as xe reads them:

- ``-s <server>`` (or ``-h``, ``server=``), ``-p <port>`` (``port=``),
  ``-u <user>`` (``username=``), ``-pw <password>`` (``password=``),
  ``-pwf <file>`` (``passwordfile=``: user name on the first line, password on
  the second), ``--nossl`` (``nossl=true``), ``--debug``, ``--debug-on-fail``,
  ``--traceparent <value>``;
- ``XE_EXTRA_ARGS``: more arguments, comma-separated (``\\,`` for a comma);
- ``~/.xe``: ``key=value`` lines.  Keys that are not options become command
  arguments, after those of the command line.

Transports: the server ``127.0.0.1`` (the default) is first tried over the
local unix socket, ``/var/lib/xcp/xapi`` or ``$XE_UNIX_SOCKET``, then over
plain TCP.  ``-s unix:<path>`` names a socket explicitly.  Other servers use
HTTPS on port 443, or HTTP on port 80 with ``--nossl``; ``-p`` overrides the
port.  Like xe (through stunnel), certificates are not verified.

Calls are XML-RPC posted to ``/``; ints are sent as decimal strings and
``dateTime`` values come back as xapi's ``YYYYMMDDThh:mm:ssZ`` strings.
"""

from __future__ import annotations

import http.client
import os
import socket
import ssl
import sys
import xmlrpc.client
from dataclasses import dataclass
from typing import Any

from .errors import ApiFailure, ConnectionFailure, ExitWithError, ParamError

DEFAULT_SERVER = "127.0.0.1"
LOCAL_SOCKET = "/var/lib/xcp/xapi"
UNIX_PREFIX = "unix:"
USER_AGENT = "xe-cli/Python"


class UsageRequested(Exception):
    """``--help``, no command, or a bad port: print the usage text, exit 0 (as xe)."""


class VersionRequested(Exception):
    """``-version``."""


@dataclass
class Options:
    server: str = DEFAULT_SERVER
    port: int | None = None
    username: str = "root"
    password: str = "null"
    password_file: str = ""
    ssl: bool = True
    debug: bool = False
    debug_on_fail: bool = False
    traceparent: str | None = None
    baggage: str | None = None
    unix_socket: str = LOCAL_SOCKET

    @property
    def socket_path(self) -> str | None:
        """The unix socket named by ``-s unix:<path>``, if any."""
        if self.server.startswith(UNIX_PREFIX):
            return self.server[len(UNIX_PREFIX):]
        return None

    @property
    def is_local(self) -> bool:
        return self.server == DEFAULT_SERVER

    def effective_port(self, use_ssl: bool) -> int:
        if self.port is not None:
            return self.port
        return 443 if use_ssl else 80


def _bool(text: str) -> bool:
    if text == "true":
        return True
    if text == "false":
        return False
    raise ParamError("Syntax error", f"expected true or false, got '{text}'")


def _set_option(opts: Options, key: str, value: str) -> bool:
    """Apply one connection option; False when ``key`` is not one."""
    if key == "server":
        opts.server = value
    elif key == "port":
        try:
            port = int(value)
            if not 0 <= port <= 65535:
                raise ValueError
        except ValueError:
            raise UsageRequested("Port number must be an integer (0-65535)") from None
        opts.port = port
    elif key == "username":
        opts.username = value
    elif key == "password":
        opts.password = value
    elif key == "passwordfile":
        opts.password_file = value
    elif key == "nossl":
        opts.ssl = not _bool(value)
    elif key == "debug":
        opts.debug = value == "true"
    elif key == "debugonfail":
        opts.debug_on_fail = value == "true"
    elif key == "traceparent":
        opts.traceparent = value
    else:
        return False
    return True


_SWITCHES_WITH_VALUE = {"-s": "server", "-p": "port", "-u": "username", "-pw": "password",
                        "-pwf": "passwordfile", "-h": "server", "--traceparent": "traceparent"}
_FLAG_SWITCHES = {"--nossl": "nossl", "--debug": "debug", "--debug-on-fail": "debugonfail"}


def _take_options(opts: Options, args: list[str]) -> list[str]:
    """Consume the connection options in ``args``; return the other arguments."""
    rest: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in _SWITCHES_WITH_VALUE and i + 1 < len(args):
            _set_option(opts, _SWITCHES_WITH_VALUE[arg], args[i + 1])
            i += 2
            continue
        if arg in _FLAG_SWITCHES:
            _set_option(opts, _FLAG_SWITCHES[arg], "true")
            i += 1
            continue
        key, eq, value = arg.partition("=")
        if not (eq and _set_option(opts, key, value)):
            rest.append(arg)
        i += 1
    return rest


def split_extra_args(text: str) -> list[str]:
    """``XE_EXTRA_ARGS``: comma-separated, ``\\,`` is a literal comma, other ``\\`` dropped."""
    out: list[str] = []
    current: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text) and text[i + 1] == ",":
            current.append(",")
            i += 2
            continue
        if ch == ",":
            if current:
                out.append("".join(current).replace("\\", ""))
            current = []
        else:
            current.append(ch)
        i += 1
    if current:
        out.append("".join(current).replace("\\", ""))
    return out


def read_rc(home: str | None, err=None) -> list[tuple[str, str]]:
    """``~/.xe``: ``key=value`` lines, blank lines skipped; a malformed file loads nothing."""
    if not home:
        return []
    try:
        with open(os.path.join(home, ".xe")) as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    pairs = []
    for line in lines:
        if not line:
            continue
        if "=" not in line:
            (err or sys.stderr).write("Error parsing rc file. No defaults loaded\n")
            return []
        key, _, value = line.partition("=")
        pairs.append((key, value))
    return pairs


def read_password_file(opts: Options) -> None:
    try:
        with open(opts.password_file) as f:
            lines = f.read().split("\n")
    except OSError:
        raise ExitWithError(1, f"Error opening password file '{opts.password_file}'") from None
    if len(lines) < 2 or (len(lines) == 2 and lines[1] == ""):
        raise ExitWithError(
            1,
            "Error: password file format: expecting username on the first line, "
            "password on the second line",
        )
    opts.username, opts.password = lines[0], lines[1]


def parse_options(argv: list[str], env: dict[str, str], err=None) -> tuple[Options, list[str]]:
    """Split xe's arguments into connection options and the command's arguments."""
    opts = Options()
    opts.unix_socket = env.get("XE_UNIX_SOCKET") or LOCAL_SOCKET
    if "-version" in argv:
        raise VersionRequested()
    rc_rest = [f"{k}={v}" for k, v in read_rc(env.get("HOME"), err) if not _set_option(opts, k, v)]
    extras_rest = _take_options(opts, split_extra_args(env.get("XE_EXTRA_ARGS", "")))
    if env.get("TRACEPARENT"):
        opts.traceparent = env["TRACEPARENT"]
    opts.baggage = env.get("BAGGAGE")
    wants_help = any(a in ("-help", "--help") for a in argv)
    args = [a for a in argv if a not in ("-help", "--help")]
    args_rest = _take_options(opts, args)
    if wants_help:
        raise UsageRequested()
    if opts.password_file:
        read_password_file(opts)
    return opts, args_rest + extras_rest + rc_rest


# -- transports -------------------------------------------------------------------------


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float | None = None):
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            if self.timeout is not None:
                sock.settimeout(self.timeout)
            sock.connect(self.path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def _to_wire(value: Any) -> Any:
    """XenAPI ints travel as decimal strings (64-bit values do not fit XML-RPC's int)."""
    if isinstance(value, bool) or value is None or isinstance(value, float):
        return value
    if isinstance(value, int):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _to_wire(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_wire(v) for v in value]
    return value


def _from_wire(value: Any) -> Any:
    if isinstance(value, xmlrpc.client.DateTime):
        return value.value
    if isinstance(value, dict):
        return {k: _from_wire(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_wire(v) for v in value]
    return value


class Connection:
    """One HTTP connection to the server, reused for every call of a command."""

    def __init__(self, opts: Options, debug=None, timeout: float | None = None):
        self.opts = opts
        self.timeout = timeout
        self.debug = debug or (lambda text: None)
        self._conn: http.client.HTTPConnection | None = None
        self._used = False
        self.description = ""

    # -- connecting ----------------------------------------------------------------

    def _open(self) -> http.client.HTTPConnection:
        opts = self.opts
        path = opts.socket_path
        if path is not None:
            return self._unix(path)
        if opts.is_local and os.path.exists(opts.unix_socket):
            try:
                return self._unix(opts.unix_socket)
            except OSError:
                self.debug(" failed\n")
        use_ssl = opts.ssl and not opts.is_local
        host = opts.server
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        port = opts.effective_port(use_ssl)
        try:
            socket.getaddrinfo(host, port)
        except socket.gaierror:
            raise ConnectionFailure(f"Host '{opts.server}' not found.") from None
        if use_ssl:
            self.debug(f"Connecting via TLS to [{opts.server}] port [{port}]\n")
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                host, port, context=context, timeout=self.timeout)
        else:
            self.debug(f"Connecting via TCP to [{opts.server}] port [{port}]\n")
            conn = http.client.HTTPConnection(host, port, timeout=self.timeout)
        conn.connect()
        self.description = f"{opts.server}:{port}"
        return conn

    def _unix(self, path: str) -> http.client.HTTPConnection:
        self.debug(f"Connecting to Unix socket [{path}]\n")
        conn = UnixHTTPConnection(path, timeout=self.timeout)
        conn.connect()
        self.description = path
        return conn

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            try:
                self._conn = self._open()
            except ConnectionFailure:
                raise
            except ConnectionRefusedError:
                raise ConnectionFailure("Error: Connection refused (calling connect )") from None
            except FileNotFoundError:
                raise ConnectionFailure("Error: No such file or directory (calling connect )") from None
            except ssl.SSLError:
                raise ConnectionFailure(
                    "Unable to contact server. Please check server and port settings.") from None
            except OSError as e:
                raise ConnectionFailure(f"Error: {e.strerror or e} (calling connect )") from None
            self._used = False
        return self._conn

    def reset(self) -> None:
        """Drop the connection (after an interrupted call); the next call reconnects."""
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:
                pass
        self._conn = None

    close = reset

    # -- calls ---------------------------------------------------------------------

    def _post(self, body: bytes) -> bytes:
        headers = {"Content-Type": "text/xml", "User-Agent": USER_AGENT, "originator": "cli"}
        if self.opts.traceparent:
            headers["traceparent"] = self.opts.traceparent
        if self.opts.baggage:
            headers["baggage"] = self.opts.baggage
        for attempt in (0, 1):
            conn = self._connection()
            reused = self._used
            try:
                conn.request("POST", "/", body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self.reset()
                if reused and attempt == 0:
                    continue  # a kept-alive connection the server had closed
                raise ConnectionFailure("Lost connection to the server.") from None
            except (http.client.HTTPException, OSError) as e:
                self.reset()
                raise ConnectionFailure(f"Lost connection to the server. ({e})") from None
            self._used = True
            if resp.status != 200:
                raise ConnectionFailure("Server internal error.")
            return data
        raise AssertionError("unreachable")

    def call(self, method: str, *params: Any) -> Any:
        """Call ``method``; returns the ``Value`` or raises :class:`ApiFailure`."""
        self.debug(f"Calling {method}\n")
        body = xmlrpc.client.dumps(tuple(_to_wire(p) for p in params), method,
                                   allow_none=True).encode()
        data = self._post(body)
        try:
            (reply,), _ = xmlrpc.client.loads(data)
        except Exception:
            raise ConnectionFailure("Server internal error.") from None
        reply = _from_wire(reply)
        if not isinstance(reply, dict) or "Status" not in reply:
            raise ConnectionFailure("Server internal error.")
        if reply["Status"] == "Success":
            return reply.get("Value")
        desc = reply.get("ErrorDescription") or ["INTERNAL_ERROR"]
        raise ApiFailure(desc[0], desc[1:])


class Session:
    """A logged-in session: ``session.call("VM.start", vm, False, False)``."""

    def __init__(self, conn: Connection, ref: str):
        self.conn = conn
        self.ref = ref

    def call(self, method: str, *params: Any) -> Any:
        return self.conn.call(method, self.ref, *params)

    @classmethod
    def login(cls, conn: Connection, opts: Options, version: str, local: bool = False) -> "Session":
        try:
            if local:
                ref = conn.call("session.slave_local_login_with_password", opts.username,
                                opts.password)
            else:
                ref = conn.call("session.login_with_password", opts.username, opts.password,
                                version, "cli")
        except ApiFailure as e:
            if e.code == "SESSION_AUTHENTICATION_FAILED":
                user = e.params[0] if e.params else opts.username
                if user == "":
                    raise ParamError("", "Username/password must be specified") from None
                raise ParamError("", "Authentication failed") from None
            raise
        session = cls(conn, ref)
        session.local = local
        return session

    local: bool = False

    def logout(self) -> None:
        try:
            self.conn.call("session.local_logout" if self.local else "session.logout", self.ref)
        except Exception:
            pass
