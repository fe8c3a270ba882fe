"""Migration between simulators over HTTP, the way xenopsd hands a domain to another host.

The sending side (``VM.migrate`` with a URL, normally
``http://<destination>/services/xenops?session_id=…``, which the destination
xapi passes on to its own xenopsd) first sends the VM's metadata without its
domain (``VM.import_metadata``), then the domain itself — xenopsd's memory
image, here the simulator's domain record — to ``<url>/memory/<vm id>``.
The receiving simulator installs it under a fresh domid, paused, with its
devices connected; the sender then destroys its own domain and forgets the VM.
xapi unpauses the VM on the destination once the disks are active there.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from xapi.backends.xenops import protocol as P
from xapi.backends.xenops.simulator.objects import Objects
from xapi.backends.xenops.simulator.tasks import XenopsFailure, fail

TIMEOUT = aiohttp.ClientTimeout(total=120)


def memory_url(url: str, vm_id: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=parts.path.rstrip("/") + f"/memory/{vm_id}"))


async def send(objects: Objects, vm_id: str, url: str, dbg: str) -> None:
    """Hand the VM's domain to the simulator behind ``url``; the local copy is gone after."""
    entry = objects.entry(vm_id)
    if entry.domain is None:
        raise fail("Bad_power_state", P.HALTED, P.RUNNING)
    metadata = json.loads(objects.export_metadata(vm_id))
    metadata.pop("domains", None)  # the domain follows as the memory image
    call = P.encode_request(P.JSON, "VM.import_metadata",
                            P.call_params("VM.import_metadata", dbg,
                                          {"metadata": json.dumps(metadata)}), 1)
    try:
        async with aiohttp.ClientSession(timeout=TIMEOUT) as http:
            await _post(http, url, call, "import_metadata")
            await _post(http, memory_url(url, vm_id), json.dumps(entry.domain).encode(), "memory")
    except aiohttp.ClientError as exc:
        raise fail("Failed_to_contact_remote_service", f"{url}: {exc}") from None
    entry.domain = None
    objects.store.save(vm_id)
    objects.remove_vm(vm_id)


async def _post(http: aiohttp.ClientSession, url: str, body: bytes, what: str) -> None:
    async with http.post(url, data=body, headers={"Content-Type": "application/json"}) as reply:
        data = await reply.read()
        if reply.status != 200:
            raise fail("Failed_to_contact_remote_service",
                       f"{what}: HTTP {reply.status} {data[:200].decode(errors='replace')}")
        ok, value = P.decode_reply(P.JSON, data)
        if not ok:
            raise XenopsFailure(value)  # the receiver's own error, as it marshalled it


def receive(objects: Objects, vm_id: str, domain: Any) -> None:
    """Install a domain sent by another simulator: fresh domid, paused, devices as they were."""
    entry = objects.store.vms.get(vm_id)
    if entry is None:
        raise fail("Does_not_exist", "VM", vm_id)
    if entry.domain is not None:
        raise fail("Already_exists", "domain", vm_id)
    if not isinstance(domain, dict) or "vbds" not in domain or "vifs" not in domain:
        raise fail("Internal_error", "not a simulator domain")
    entry.domain = {**domain, "domid": objects.store.next_counter("next_domid"), "paused": True,
                    "suspended": False}
    objects.store.save(vm_id)
    objects.refresh(vm_id)
