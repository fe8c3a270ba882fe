"""The default VM templates a fresh host offers, as XCP-ng's guest templates do.

Each is a halted VM with ``is_a_template`` and ``is_default_template`` set,
``other_config:default_template=true``, and a ``disks`` provisioning spec
that ``VM.provision`` turns into disks on the template's (or the pool's
default) SR.  Installing a VM is ``VM.clone`` of a template, then
``VM.provision`` — the way ``xe vm-install`` and Xen Orchestra do it.
"""

from __future__ import annotations

from dataclasses import dataclass

from xapi.refs import make_ref, make_uuid

GiB = 1024**3
MiB = 1024**2


@dataclass(frozen=True)
class Template:
    name: str
    description: str
    memory: int
    vcpus: int
    disk: int  # bytes of the system disk; 0 for none
    hvm: bool = True
    uefi: bool = False
    linux: bool = True
    distro: str = ""


TEMPLATES = (
    Template("Other install media", "Template which allows VM installation from install media",
             memory=1 * GiB, vcpus=1, disk=0, linux=False),
    Template("Generic Linux BIOS", "Generic Linux, booted through BIOS", 1 * GiB, 1, 10 * GiB),
    Template("Generic Linux UEFI", "Generic Linux, booted through UEFI", 1 * GiB, 1, 10 * GiB, uefi=True),
    Template("Debian Bookworm 12", "Template for Debian Bookworm 12", 2 * GiB, 1, 10 * GiB,
             distro="debianbookworm"),
    Template("Ubuntu Noble Numbat 24.04", "Template for Ubuntu 24.04", 2 * GiB, 1, 10 * GiB,
             distro="ubuntunoble"),
    Template("Rocky Linux 9", "Template for Rocky Linux 9", 2 * GiB, 1, 10 * GiB, distro="rhel9"),
    Template("Windows 10 (64-bit)", "Template for Windows 10 (64-bit)", 4 * GiB, 2, 32 * GiB,
             uefi=True, linux=False),
    Template("Windows Server 2022 (64-bit)", "Template for Windows Server 2022 (64-bit)",
             4 * GiB, 2, 32 * GiB, uefi=True, linux=False),
)


def disks_spec(size: int) -> str:
    if not size:
        return "<provision></provision>"
    return (f'<provision><disk device="0" size="{size}" sr="" bootable="true" type="system"/>'
            "</provision>")


def values(t: Template) -> dict:
    other_config = {
        "default_template": "true",
        "disks": disks_spec(t.disk),
        "install-methods": "cdrom,nfs,http,ftp" if t.linux else "cdrom",
    }
    if t.linux:
        other_config["linux_template"] = "true"
    if t.distro:
        other_config["install-distro"] = t.distro
    platform = {"viridian": "false" if t.linux else "true", "acpi": "1", "apic": "true",
                "pae": "true", "nx": "true", "hpet": "true", "device-model": "qemu-upstream-compat"}
    if t.uefi:
        platform["secureboot"] = "false"
    return {
        "uuid": make_uuid(),
        "name_label": t.name,
        "name_description": t.description,
        "is_a_template": True,
        "is_default_template": True,
        "power_state": "Halted",
        "domid": -1,
        "user_version": 1,
        "memory_static_max": t.memory,
        "memory_dynamic_max": t.memory,
        "memory_dynamic_min": t.memory,
        "memory_static_min": min(t.memory, 512 * MiB),
        "memory_target": t.memory,
        "VCPUs_max": t.vcpus,
        "VCPUs_at_startup": t.vcpus,
        "HVM_boot_policy": "BIOS order" if t.hvm else "",
        "HVM_boot_params": {"order": "cdn", **({"firmware": "uefi"} if t.uefi else {})},
        "HVM_shadow_multiplier": 1.0,
        "domain_type": "hvm" if t.hvm else "pv",
        "platform": platform,
        "actions_after_shutdown": "destroy",
        "actions_after_reboot": "restart",
        "actions_after_crash": "restart",
        "other_config": other_config,
        "recommendations": (
            '<restrictions><restriction field="memory-static-max" max="1649267441664"/>'
            '<restriction field="vcpus-max" max="64"/>'
            '<restriction property="number-of-vbds" max="255"/>'
            '<restriction property="number-of-vifs" max="7"/></restrictions>'
        ),
    }


def ensure(tx) -> list[str]:
    """Create the default templates that are missing (by name), as on first boot."""
    existing = {tx.get("VM", r)["name_label"] for r in tx.refs_where("VM", is_default_template=True)}
    created = []
    for t in TEMPLATES:
        if t.name not in existing:
            ref, metrics = make_ref(), make_ref()
            tx.insert("VM_metrics", metrics, {"uuid": make_uuid()})
            tx.insert("VM", ref, {**values(t), "metrics": metrics})
            created.append(ref)
    return created
