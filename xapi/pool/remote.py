"""XenAPI calls from this host to another one (join, hand-over, eject, recovery).

xapi makes these over TLS on port 443; here hosts talk plain HTTP on the
port they all listen on (a pool runs on one port; ``host:port`` overrides).
Failures come back as ApiError: the remote host's own error, or
CANNOT_CONTACT_HOST-style connection failures chosen by the caller.
"""

from __future__ import annotations

import http.client
import socket
import xmlrpc.client
from typing import Any

from xapi.errors import ApiError


class Unreachable(Exception):
    """The host did not answer over HTTP (refused, reset, timed out, not XML-RPC)."""


def split_address(address: str, default_port: int) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if sep and port.isdigit() and not host.endswith(":"):
        return host.strip("[]"), int(port)
    return address.strip("[]"), default_port


class _Transport(xmlrpc.client.Transport):
    def __init__(self, timeout: float):
        super().__init__()
        self._timeout = timeout

    def make_connection(self, host):
        conn = super().make_connection(host)
        conn.timeout = self._timeout
        return conn


class RemoteHost:
    """One host's XML-RPC endpoint; ``call`` unwraps xapi's Status/Value envelope."""

    def __init__(self, address: str, port: int, timeout: float = 30.0):
        self.host, self.port = split_address(address, port)
        netloc = f"[{self.host}]" if ":" in self.host else self.host
        self.url = f"http://{netloc}:{self.port}/"
        self._proxy = xmlrpc.client.ServerProxy(self.url, transport=_Transport(timeout),
                                                allow_none=True)

    def call(self, method: str, *args: Any) -> Any:
        try:
            reply = getattr(self._proxy, method)(*args)
        except (OSError, socket.timeout, http.client.HTTPException,
                xmlrpc.client.ProtocolError, xmlrpc.client.ResponseError) as exc:
            raise Unreachable(f"{self.url}: {exc}") from None
        except xmlrpc.client.Fault as exc:
            raise ApiError("INTERNAL_ERROR", f"{self.url}: {exc.faultString}") from None
        if not isinstance(reply, dict) or "Status" not in reply:
            raise Unreachable(f"{self.url}: not a XenAPI reply")
        if reply["Status"] == "Success":
            return reply.get("Value")
        description = reply.get("ErrorDescription") or ["INTERNAL_ERROR", "no description"]
        raise ApiError(str(description[0]), *description[1:])

    def session(self, login: str, *args: Any) -> "RemoteSession":
        return RemoteSession(self, self.call(login, *args))


class RemoteSession:
    """A logged-in session on a remote host; ``call`` adds the session argument."""

    def __init__(self, host: RemoteHost, ref: str):
        self.host = host
        self.ref = ref

    def call(self, method: str, *args: Any) -> Any:
        return self.host.call(method, self.ref, *args)

    def logout(self) -> None:
        try:
            self.host.call("session.logout", self.ref)
        except (ApiError, Unreachable):
            pass  # the session dies with the remote host anyway
