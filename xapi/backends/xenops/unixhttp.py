"""A minimal HTTP/1.1 client connection over a unix socket, for xenopsd's RPCs.

``http.client`` parses every reply's headers with the ``email`` package,
which costs more than the rest of a small xenopsd call; a busy server makes
a dozen of these per VM start.  This one sends a POST and reads the status
line, the few headers that frame the body (``Content-Length``, chunked
``Transfer-Encoding``, ``Connection``) and the body — or, as a xenopsd that
answers one request per connection does, everything up to the close.
"""

from __future__ import annotations

import socket


class ConnectionLost(ConnectionError):
    """The peer closed the connection before any byte of the reply: a stale keep-alive."""


class ProtocolError(Exception):
    """The reply is not HTTP/1.x as this client reads it."""


class UnixHTTPConnection:
    def __init__(self, path: str, timeout: float | None):
        self.path = path
        self.timeout = timeout
        self.sock: socket.socket | None = None
        self._buf = bytearray()

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
        except OSError:
            sock.close()
            raise
        self.sock = sock

    def close(self) -> None:
        sock, self.sock = self.sock, None
        self._buf.clear()
        if sock is not None:
            sock.close()

    def post(self, path: str, body: bytes, content_type: str,
             wait: float | None) -> tuple[int, bytes, bool]:
        """Send one request; ``(status, body, will_close)`` of its reply."""
        assert self.sock is not None
        self.sock.settimeout(wait)
        self._buf.clear()
        head = (f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n")
        self.sock.sendall(head.encode("latin-1") + body)
        version, status, headers = self._read_head()
        connection = headers.get("connection", "").lower()
        will_close = connection == "close" or (version == "HTTP/1.0" and connection != "keep-alive")
        if "chunked" in headers.get("transfer-encoding", "").lower():
            data = self._read_chunked()
        elif "content-length" in headers:
            try:
                length = int(headers["content-length"])
            except ValueError:
                raise ProtocolError(f"bad Content-Length {headers['content-length']!r}") from None
            data = self._read_exactly(length)
        else:  # framed by the close
            while self._fill():
                pass
            data, will_close = bytes(self._buf), True
            self._buf.clear()
        return status, data, will_close

    # -- reading ----------------------------------------------------------------------

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        if not chunk:
            return False
        self._buf += chunk
        return True

    def _read_head(self) -> tuple[str, int, dict[str, str]]:
        while True:
            end = self._buf.find(b"\r\n\r\n")
            if end >= 0:
                break
            if not self._fill():
                if not self._buf:
                    raise ConnectionLost("the connection was closed before the reply")
                raise ProtocolError("the connection was closed in the reply's headers")
        lines = bytes(self._buf[:end]).decode("latin-1").split("\r\n")
        del self._buf[:end + 4]
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/"):
            raise ProtocolError(f"bad status line {lines[0]!r}")
        try:
            status = int(parts[1])
        except ValueError:
            raise ProtocolError(f"bad status line {lines[0]!r}") from None
        headers = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        return parts[0], status, headers

    def _read_exactly(self, n: int) -> bytes:
        while len(self._buf) < n:
            if not self._fill():
                raise ProtocolError("the connection was closed in the reply's body")
        data = bytes(self._buf[:n])
        del self._buf[:n]
        return data

    def _read_line(self) -> bytes:
        while True:
            end = self._buf.find(b"\r\n")
            if end >= 0:
                line = bytes(self._buf[:end])
                del self._buf[:end + 2]
                return line
            if not self._fill():
                raise ProtocolError("the connection was closed in a chunked body")

    def _read_chunked(self) -> bytes:
        out = bytearray()
        while True:
            size_text = self._read_line().split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise ProtocolError(f"bad chunk size {size_text!r}") from None
            if size == 0:
                while self._read_line():  # trailers, up to the empty line
                    pass
                return bytes(out)
            out += self._read_exactly(size)
            self._read_line()
