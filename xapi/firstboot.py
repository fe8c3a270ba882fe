"""First boot: the objects a fresh xapi host has before any client connects.

Creates, when missing: this host (with its host_metrics and host_cpu
records), the pool with this host as master, the control-domain VM and its
metrics, and the host-internal management network.  Field values follow
xapi's dbsync and create_misc; fields not set here take the model defaults.
Running it again is a no-op apart from refreshing what the host reports
about itself (address, API version, memory), as xapi's dbsync does.
"""

from __future__ import annotations

import os
import platform
import socket
from typing import Any

from xapi.context import Runtime, now
from xapi.idl.types import NULL_REF
from xapi.refs import make_ref, make_uuid

PRODUCT_VERSION = "8.3.0"
PLATFORM_VERSION = "3.4.0"
XAPI_VERSION = "25.6"  # the xapi release whose API level (2.23) we serve
XEN_VERSION = "4.17.0"
INTERNAL_NETWORK = "Host internal management network"
HOST_UUID_FILE = "host-uuid"


def _memory_total() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 * 1024**3


def _cpu_info() -> dict[str, str]:
    info = {"vendor": "", "model name": "", "cpu MHz": "0", "cpu family": "0", "model": "0",
            "stepping": "0", "flags": ""}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, sep, value = line.partition(":")
                key = key.strip()
                if not sep:
                    if info["vendor"]:
                        break
                    continue
                if key == "vendor_id":
                    info["vendor"] = value.strip()
                elif key in info:
                    info[key] = value.strip()
    except OSError:
        pass
    return info


def host_uuid(state_dir: str) -> str:
    """This host's identity, kept in the state directory like xapi's inventory."""
    path = os.path.join(state_dir, HOST_UUID_FILE)
    try:
        with open(path) as f:
            value = f.read().strip()
            if value:
                return value
    except FileNotFoundError:
        pass
    value = make_uuid()
    os.makedirs(state_dir, exist_ok=True)
    with open(path, "w") as f:
        f.write(value + "\n")
    return value


def software_version(rt: Runtime) -> dict[str, str]:
    return {
        "product_version": PRODUCT_VERSION,
        "product_version_text": PRODUCT_VERSION[:3],
        "product_version_text_short": PRODUCT_VERSION[:3],
        "platform_name": "XCP",
        "platform_version": PLATFORM_VERSION,
        "product_brand": "XCP-ng",
        "build_number": "release/yangtze/master/8",
        "hostname": rt.config.host_name or socket.gethostname(),
        "date": "2026-11-21",
        "dbv": "2026.1121",
        "xapi": XAPI_VERSION,
        "xapi_build": XAPI_VERSION,
        "xen": XEN_VERSION,
        "linux": platform.release(),
        "xencenter_min": f"2.{rt.model.api_version[1]}",
        "xencenter_max": f"2.{rt.model.api_version[1]}",
        "network_backend": "openvswitch",
    }


def run(rt: Runtime) -> None:
    """Create or refresh this host's objects; sets ``rt.host_ref``/``rt.pool_ref``."""
    cache = rt.cache
    uuid = host_uuid(rt.config.state_dir)
    hostname = rt.config.host_name or socket.gethostname()
    address = rt.config.listen_host
    major, minor = rt.model.api_version
    with rt.db.write() as tx:
        host_ref = cache.ref_by_uuid("host", uuid) or _create_host(rt, tx, uuid, hostname)
        tx.update("host", host_ref, {
            "address": address,
            "API_version_major": major,
            "API_version_minor": minor,
            "software_version": software_version(rt),
        })
        pools = tx.refs_where("pool")
        pool_ref = pools[0] if pools else _create_pool(tx, host_ref)
        if not tx.refs_where("VM", is_control_domain=True, resident_on=host_ref):
            _create_dom0(tx, host_ref, hostname)
        if not tx.refs_where("network", bridge="xenapi"):
            _create_internal_network(tx)
    rt.host_ref, rt.pool_ref = host_ref, pool_ref


def _create_host(rt: Runtime, tx, uuid: str, hostname: str) -> str:
    ref = make_ref()
    memory = _memory_total()
    metrics = make_ref()
    tx.insert("host_metrics", metrics, {
        "uuid": make_uuid(),
        "memory_total": memory,
        "memory_free": memory,
        "live": True,
        "last_updated": now(),
    })
    cpu = _cpu_info()
    cpus = os.cpu_count() or 1
    tx.insert("host", ref, {
        "uuid": uuid,
        "name_label": hostname,
        "name_description": "Default install",
        "enabled": True,
        "hostname": hostname,
        "API_version_vendor": "XenSource",
        "API_version_vendor_implementation": {},
        "capabilities": ["xen-3.0-x86_64", "hvm-3.0-x86_32", "hvm-3.0-x86_32p", "hvm-3.0-x86_64"],
        "cpu_configuration": {},
        "sched_policy": "credit",
        "supported_bootloaders": ["pygrub", "eliloader"],
        "other_config": {"agent_start_time": f"{now().timestamp():.0f}.", "iscsi_iqn": ""},
        "logging": {},
        "metrics": metrics,
        "license_params": {},
        "edition": "xcp-ng",
        "cpu_info": {
            "cpu_count": str(cpus),
            "socket_count": "1",
            "vendor": cpu["vendor"],
            "speed": cpu["cpu MHz"],
            "modelname": cpu["model name"],
            "family": cpu["cpu family"],
            "model": cpu["model"],
            "stepping": cpu["stepping"],
            "flags": cpu["flags"],
        },
    })
    for n in range(cpus):
        tx.insert("host_cpu", make_ref(), {
            "uuid": make_uuid(),
            "host": ref,
            "number": n,
            "vendor": cpu["vendor"],
            "speed": int(float(cpu["cpu MHz"] or 0)),
            "modelname": cpu["model name"],
            "family": int(cpu["cpu family"] or 0),
            "model": int(cpu["model"] or 0),
            "stepping": cpu["stepping"],
            "flags": cpu["flags"],
            "features": "",
            "utilisation": 0.0,
        })
    return ref


def _create_pool(tx, host_ref: str) -> str:
    ref = make_ref()
    tx.insert("pool", ref, {
        "uuid": make_uuid(),
        "name_label": "",
        "name_description": "",
        "master": host_ref,
        "default_SR": NULL_REF,
        "suspend_image_SR": NULL_REF,
        "crash_dump_SR": NULL_REF,
        "other_config": {},
    })
    return ref


def _create_dom0(tx, host_ref: str, hostname: str) -> str:
    ref = make_ref()
    memory = 4 * 1024**3
    metrics = make_ref()
    vcpus = os.cpu_count() or 1
    tx.insert("VM_metrics", metrics, {
        "uuid": make_uuid(),
        "memory_actual": memory,
        "VCPUs_number": vcpus,
        "VCPUs_utilisation": {},
        "state": [],
        "start_time": now(),
        "install_time": now(),
        "last_updated": now(),
        "other_config": {},
    })
    values: dict[str, Any] = {
        "uuid": make_uuid(),
        "name_label": f"Control domain on host: {hostname}",
        "name_description": "The domain which manages physical devices and manages other domains",
        "power_state": "Running",
        "user_version": 1,
        "is_a_template": False,
        "is_control_domain": True,
        "resident_on": host_ref,
        "affinity": host_ref,
        "domid": 0,
        "domarch": "x64",
        "memory_overhead": 0,
        "memory_target": memory,
        "memory_static_max": memory,
        "memory_dynamic_max": memory,
        "memory_dynamic_min": memory,
        "memory_static_min": memory,
        "VCPUs_max": vcpus,
        "VCPUs_at_startup": vcpus,
        "actions_after_shutdown": "destroy",
        "actions_after_reboot": "destroy",
        "actions_after_crash": "destroy",
        "HVM_shadow_multiplier": 1.0,
        "metrics": metrics,
        "domain_type": "pv",
        "other_config": {"storage_driver_domain": ref, "is_system_domain": "true"},
    }
    tx.insert("VM", ref, values)
    return ref


def _create_internal_network(tx) -> str:
    ref = make_ref()
    tx.insert("network", ref, {
        "uuid": make_uuid(),
        "name_label": INTERNAL_NETWORK,
        "name_description": "Network on which guests will be assigned a private link-local IP address which can be used to talk XenAPI",
        "MTU": 1500,
        "bridge": "xenapi",
        "managed": True,
        "other_config": {
            "is_guest_installer_network": "true",
            "is_host_internal_management_network": "true",
            "ip_begin": "169.254.0.1",
            "ip_end": "169.254.255.254",
            "netmask": "255.255.0.0",
        },
    })
    return ref
