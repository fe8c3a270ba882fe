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
from xapi import operations, templates
from xapi.context import Runtime, now
from xapi.idl.types import NULL_REF
from xapi.refs import make_ref, make_uuid

PRODUCT_VERSION = "8.3.0"
PLATFORM_VERSION = "3.4.0"
XAPI_VERSION = "26.2.0"  # an xapi release at the API level we serve (2.23)
XEN_VERSION = "4.17.5"
DB_SCHEMA = "5.909"
INTERNAL_NETWORK = "Host internal management network"
# xapi's static roles; uuid = MD5 of the role name, the ref is OpaqueRef:<uuid>.
ROLE_UUIDS = {
    "pool-admin": "0165f154-ba3e-034e-6b27-5d271af109ba",
    "pool-operator": "b9ce9791-0604-50cd-0649-09b3284c7dfd",
    "vm-power-admin": "7955168d-7bec-10ed-105f-c6a7e6e63249",
    "vm-admin": "aaa00ab5-7340-bfbc-0d1b-7cf342639a6e",
    "vm-operator": "fb8d4ff9-310c-a959-0613-54101535d3d5",
    "client-cert": "2c42debf-c64a-2ecd-f674-3350f06409f7",
    "read-only": "7233b8e3-eacb-d7da-2c95-f2e581cdbf4e",
}
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
    major, minor = rt.model.api_version
    xapi_major_minor = XAPI_VERSION.rsplit(".", 1)[0]
    return {
        "product_version": PRODUCT_VERSION,
        "product_version_text": PRODUCT_VERSION[:3],
        "product_version_text_short": PRODUCT_VERSION[:3],
        "platform_name": "XCP",
        "platform_version": PLATFORM_VERSION,
        "product_brand": "XCP-ng",
        "build_number": "release/xapi-server",
        "git_id": XAPI_VERSION.rsplit(".", 1)[1],
        "hostname": "localhost",  # xapi writes this constant, not the host's name
        "date": "20261121T00:00:00Z",
        "xapi": xapi_major_minor,
        "xapi_build": XAPI_VERSION,
        "xen": XEN_VERSION,
        "linux": platform.release(),
        "xencenter_min": f"{major}.{minor}",
        "xencenter_max": f"{major}.{minor}",
        "network_backend": "openvswitch",
        "db_schema": DB_SCHEMA,
    }


def run(rt: Runtime) -> None:
    """Create or refresh this host's objects; sets ``rt.host_ref``/``rt.pool_ref``."""
    cache = rt.cache
    uuid = host_uuid(rt.config.state_dir)
    hostname = rt.config.host_name or socket.gethostname()
    address = rt.config.advertised_address
    major, minor = rt.model.api_version
    started = now()
    with rt.db.write() as tx:
        host_ref = cache.ref_by_uuid("host", uuid) or _create_host(rt, tx, uuid, hostname)
        host = tx.must_get("host", host_ref)
        # What xapi's dbsync refreshes at every start.
        tx.update("host", host_ref, {
            "hostname": hostname,
            "address": address,
            "enabled": True,
            "API_version_major": major,
            "API_version_minor": minor,
            "software_version": software_version(rt),
            "other_config": {
                **host["other_config"],
                "boot_time": f"{_boot_time():.0f}.",
                "agent_start_time": f"{started.timestamp():.0f}.",
            },
        })
        tx.update("host_metrics", host["metrics"], {"live": True, "last_updated": started})
        pools = tx.refs_where("pool")
        # A fresh database makes this host master of a new pool; in a pool's
        # database the master is whoever pool.master names (xapi/pool/roles.py).
        pool_ref = pools[0] if pools else _create_pool(tx, host_ref)
        dom0s = tx.refs_where("VM", is_control_domain=True, resident_on=host_ref)
        dom0 = dom0s[0] if dom0s else _create_dom0(tx, host_ref, hostname, address)
        tx.update("host", host_ref, {"control_domain": dom0})
        if not tx.refs_where("network", bridge="xenapi"):
            _create_internal_network(tx)
        _ensure_roles(tx)
        new_vms = templates.ensure(tx) + ([] if dom0s else [dom0])
    rt.host_ref, rt.pool_ref = host_ref, pool_ref
    for vm in new_vms:
        operations.refresh_allowed(rt, "VM", vm)


def _boot_time() -> float:
    try:
        with open("/proc/stat") as f:
            for line in f:
                if line.startswith("btime "):
                    return float(line.split()[1])
    except OSError:
        pass
    return now().timestamp()


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
        "enabled": False,
        "hostname": hostname,
        "API_version_vendor": "XenSource",
        "API_version_vendor_implementation": {},
        "capabilities": ["xen-3.0-x86_64", "hvm-3.0-x86_32", "hvm-3.0-x86_32p", "hvm-3.0-x86_64"],
        "cpu_configuration": {},
        "sched_policy": "credit",
        "supported_bootloaders": ["pygrub", "eliloader"],
        "other_config": {},
        "logging": {},
        "metrics": metrics,
        "license_params": {},
        "edition": "xcp-ng",
        "editions": ["xcp-ng"],
        "chipset_info": {"iommu": "false"},
        "virtual_hardware_platform_versions": [0, 1, 2],
        "ssl_legacy": False,
        "bios_strings": {
            "bios-vendor": "Xen", "bios-version": "", "system-manufacturer": "Xen",
            "system-product-name": "HVM domU", "system-version": "", "system-serial-number": "",
            "baseboard-manufacturer": "", "baseboard-product-name": "", "baseboard-version": "",
            "baseboard-serial-number": "", "oem-1": "Xen",
            "oem-2": "MS_VM_CERT/SHA1/bdbeb6e0a816d43fa6d3fe8aaef04c2bad9d3e3d", "hp-rombios": "",
        },
        "cpu_info": {
            "cpu_count": str(cpus),
            "socket_count": "1",
            "threads_per_core": "1",
            "nr_nodes": "1",
            "vendor": cpu["vendor"],
            "speed": cpu["cpu MHz"],
            "modelname": cpu["model name"],
            "family": cpu["cpu family"],
            "model": cpu["model"],
            "stepping": cpu["stepping"],
            "flags": cpu["flags"],
            "features_pv": "",
            "features_hvm": "",
            "features_pv_host": "",
            "features_hvm_host": "",
        },
    })
    for n in range(cpus):
        tx.insert("host_cpu", make_ref(), {
            "uuid": make_uuid(),
            "host": ref,
            "number": n,
            "vendor": cpu["vendor"] or "unknown",
            "speed": int(float(cpu["cpu MHz"] or 0)),
            "modelname": cpu["model name"] or "unknown",
            "family": _int(cpu["cpu family"]),
            "model": _int(cpu["model"]),
            "stepping": cpu["stepping"] or "unknown",
            "flags": cpu["flags"],
            "features": "",
            "utilisation": 0.0,
        })
    return ref


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        return 0


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
        "other_config": {"memory-ratio-hvm": "0.25", "memory-ratio-pv": "0.25"},
        "ha_cluster_stack": "xhad",
        "ext_auth_cache_enabled": False,
    })
    return ref


def _create_dom0(tx, host_ref: str, hostname: str, address: str) -> str:
    ref = make_ref()
    memory = min(4 * 1024**3, _memory_total())
    metrics = make_ref()
    vcpus = os.cpu_count() or 1
    tx.insert("VM_metrics", metrics, {
        "uuid": make_uuid(),
        "memory_actual": memory,
        "VCPUs_number": vcpus,
        "VCPUs_utilisation": {n: 0.0 for n in range(1, vcpus + 1)},
        "current_domain_type": "pv",
    })
    tx.insert("VM", ref, {
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
        "VCPUs_params": {},
        "VCPUs_max": vcpus,
        "VCPUs_at_startup": vcpus,
        "actions_after_softreboot": "soft_reboot",
        "actions_after_shutdown": "destroy",
        "actions_after_reboot": "destroy",
        "actions_after_crash": "destroy",
        "HVM_shadow_multiplier": 1.0,
        "metrics": metrics,
        "domain_type": "pv",
        "other_config": {},
    })
    for protocol, port in (("rfb", 5900), ("vt100", 9500)):
        console = make_ref()
        tx.insert("console", console, {
            "uuid": make_uuid(),
            "protocol": protocol,
            "location": f"https://{address}/console?ref={console}",
            "VM": ref,
            "other_config": {},
        })
    return ref


def _ensure_roles(tx) -> None:
    # Permissions (xapi's ~2,300 internal role objects) are not modelled yet.
    for name, uuid in ROLE_UUIDS.items():
        ref = f"OpaqueRef:{uuid}"
        if not tx.exists("role", ref):
            tx.insert("role", ref, {
                "uuid": uuid, "name_label": name, "name_description": "", "subroles": [],
                "is_internal": name == "client-cert",
            })


def _create_internal_network(tx) -> str:
    ref = make_ref()
    tx.insert("network", ref, {
        "uuid": make_uuid(),
        "name_label": INTERNAL_NETWORK,
        "name_description": (
            "Network on which guests will be assigned a private link-local IP address "
            "which can be used to talk XenAPI"
        ),
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
