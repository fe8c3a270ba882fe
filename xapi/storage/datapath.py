"""Disks of running VMs: the datapath attach/activate before xenopsd plugs a VBD.

``activate(rt, vdi, vm_uuid, read_write)`` runs SMAPIv3's documented order —
``Datapath.open`` → ``attach`` → ``activate`` (or ``activate_readonly``) —
for the domain named after the VM, and returns what the plugin attached
(the path xenopsd is handed).  ``release`` runs ``deactivate`` → ``detach``
→ ``close``.  The datapath plugin enforces that a VDI is active read/write
in at most one domain; its ``VDI_IN_USE`` reaches the client with the VDI's
reference.
"""

from __future__ import annotations

from typing import Any

from xapi.backends.storage.plugins import StorageError
from xapi.context import Runtime
from xapi.errors import ApiError

from .service import api_error


def _datapath(rt: Runtime, vdi_ref: str):
    storage = rt.storage
    sr_ref, key = storage.volume_of(vdi_ref)
    volume = storage.call(sr_ref, "Volume.stat", key=key)
    try:
        return storage.registry.datapath_for(volume.get("uri", []))
    except StorageError as exc:
        raise api_error(exc) from None


def _map_error(exc: StorageError, vdi_ref: str, operation: str) -> ApiError:
    if exc.code == "VDI_IN_USE":
        return ApiError("VDI_IN_USE", vdi_ref, operation)
    if exc.code == "VDI_READONLY":
        return ApiError("VDI_READONLY", vdi_ref)
    return api_error(exc)


def activate(rt: Runtime, vdi_ref: str, domain: str, read_write: bool) -> dict[str, Any]:
    plugin, uri = _datapath(rt, vdi_ref)
    try:
        plugin.call("Datapath.open", uri=uri, persistent=True)
        backend = plugin.call("Datapath.attach", uri=uri, domain=domain)
        plugin.call("Datapath.activate" if read_write else "Datapath.activate_readonly",
                    uri=uri, domain=domain)
    except StorageError as exc:
        release(rt, vdi_ref, domain, quiet=True)
        raise _map_error(exc, vdi_ref, "attach") from None
    return backend


def release(rt: Runtime, vdi_ref: str, domain: str, quiet: bool = False) -> None:
    try:
        plugin, uri = _datapath(rt, vdi_ref)
    except ApiError:
        if quiet:
            return
        raise
    for method in ("Datapath.deactivate", "Datapath.detach"):
        try:
            plugin.call(method, uri=uri, domain=domain)
        except StorageError as exc:
            if not quiet:
                raise _map_error(exc, vdi_ref, "detach") from None
    try:
        plugin.call("Datapath.close", uri=uri)
    except StorageError:
        pass  # another domain still has it open


def local_path(backend: dict[str, Any]) -> str | None:
    """The file a datapath attached (its ``File`` implementation), if any."""
    for impl in backend.get("implementations", []):
        if isinstance(impl, (list, tuple)) and impl and impl[0] in ("File", "BlockDevice"):
            return impl[1].get("path")
    return None
