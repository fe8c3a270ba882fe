"""The xenopsd backend: domains, their devices, tasks and the update stream.

- ``protocol``: the wire format (JSON-RPC v1 or XML-RPC over HTTP on a unix
  socket) and the xenops types as plain JSON values;
- ``client``: ``XenopsClient``, the synchronous client the core uses;
- ``simulator``: the ``xenopsd-sim`` daemon serving the same protocol.
"""

from xapi.backends.xenops.client import XenopsClient, XenopsError, XenopsProtocolError, XenopsUnavailable
from xapi.backends.xenops.protocol import SIMULATOR_QUEUE, socket_path

__all__ = [
    "SIMULATOR_QUEUE",
    "XenopsClient",
    "XenopsError",
    "XenopsProtocolError",
    "XenopsUnavailable",
    "socket_path",
]
