"""Minimal raw clients for tests: JSON-RPC (v1/v2) and XML-RPC over HTTP."""

from __future__ import annotations

import http.client
import json
import xmlrpc.client
from urllib.parse import urlparse


class Failure(Exception):
    def __init__(self, description):
        self.details = list(description)
        super().__init__(self.details)


def post(url: str, path: str, body: bytes, content_type: str) -> tuple[int, dict, bytes]:
    u = urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": content_type})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


class JsonRpc:
    """A JSON-RPC client in the style of the Go SDK (v2) or older clients (v1)."""

    def __init__(self, url: str, version: str = "2.0"):
        self.url = url
        self.version = version
        self.session: str | None = None
        self._id = 0

    def raw(self, method: str, params: list):
        self._id += 1
        doc = {"method": method, "params": params, "id": self._id}
        if self.version == "2.0":
            doc["jsonrpc"] = "2.0"
        status, headers, body = post(self.url, "/jsonrpc", json.dumps(doc).encode(), "application/json")
        assert status == 200, (status, body[:300])
        assert headers["content-type"] == "application/json"
        reply = json.loads(body)
        assert reply["id"] == self._id
        if self.version == "2.0":
            assert reply["jsonrpc"] == "2.0"
            if "error" in reply:
                assert "result" not in reply
                err = reply["error"]
                assert err["code"] == 1
                raise Failure([err["message"], *err["data"]])
            return reply["result"]
        if reply["error"] is not None:
            assert reply["result"] is None
            raise Failure(reply["error"])
        return reply["result"]

    def login(self, user: str, password: str, *extra) -> str:
        self.session = self.raw("session.login_with_password", [user, password, *extra])
        return self.session

    def __call__(self, method: str, *args):
        return self.raw(method, [self.session, *args])


class XmlRpc:
    """XML-RPC calls without the SDK's wrapping (no re-login, raw replies)."""

    def __init__(self, url: str, path: str = "/"):
        self.url = url
        self.path = path
        self.session: str | None = None

    def raw(self, method: str, params: list):
        body = xmlrpc.client.dumps(tuple(params), method, allow_none=True).encode()
        status, headers, data = post(self.url, self.path, body, "text/xml")
        assert status == 200, (status, data[:300])
        assert headers["content-type"] == "text/xml"
        (reply,), _ = xmlrpc.client.loads(data)
        return reply

    def __call__(self, method: str, *args):
        reply = self.raw(method, [self.session, *args])
        if reply["Status"] != "Success":
            raise Failure(reply["ErrorDescription"])
        return reply["Value"]
