"""Storage through the XenAPI: SRs, PBDs and VDIs on the project's file and iso plugins."""

from __future__ import annotations

import os
import tempfile

import pytest
import XenAPI

from tests.e2e.test_vm_lifecycle import install

NULL = "OpaqueRef:NULL"
GiB = 1 << 30


def failure_of(fn, *args) -> list[str]:
    with pytest.raises(XenAPI.Failure) as info:
        fn(*args)
    return info.value.details


def new_sr(x, **config) -> str:
    path = tempfile.mkdtemp(prefix="xapi-sr-")
    host = x.host.get_all()[0]
    return x.SR.create(host, {"path": path, **config}, "0", "test SR", "", "file", "user", False, {})


def new_vdi(x, sr: str, size: int = GiB, name: str = "disk") -> str:
    return x.VDI.create({"SR": sr, "name_label": name, "name_description": "", "virtual_size": str(size),
                         "type": "user", "sharable": False, "read_only": False, "other_config": {}})


def disk_vbd(x, vm: str, vdi: str, userdevice: str = "0", mode: str = "RW") -> str:
    return x.VBD.create({"VM": vm, "VDI": vdi, "userdevice": userdevice, "bootable": True,
                         "mode": mode, "type": "Disk", "empty": False, "other_config": {},
                         "qos_algorithm_type": "", "qos_algorithm_params": {}})


def test_first_boot_storage_and_sm_records(xenapi):
    x = xenapi.xenapi
    pool = x.pool.get_all()[0]
    default = x.pool.get_default_SR(pool)
    record = x.SR.get_record(default)
    assert record["type"] == "file" and record["name_label"] == "Local storage"
    assert int(record["physical_size"]) > 0 and len(record["PBDs"]) == 1
    assert x.PBD.get_currently_attached(record["PBDs"][0]) is True
    isos = [r for r in x.SR.get_all_records().values() if r["type"] == "iso"]
    assert len(isos) == 1 and isos[0]["content_type"] == "iso"
    sms = {r["type"]: r for r in x.SM.get_all_records().values()}
    assert {"file", "iso"} <= set(sms)
    assert "VDI_SNAPSHOT" in sms["file"]["capabilities"] and "VDI_CREATE" not in sms["iso"]["capabilities"]
    assert sorted(x.SR.get_supported_types()) == sorted(sms)


def test_vdi_lifecycle_and_snapshot_tree(xenapi):
    x = xenapi.xenapi
    sr = new_sr(x)
    vdi = new_vdi(x, sr)
    record = x.VDI.get_record(vdi)
    assert record["virtual_size"] == str(GiB) and record["SR"] == sr and record["read_only"] is False
    assert vdi in x.SR.get_VDIs(sr) and record["location"]
    assert int(x.SR.get_virtual_allocation(sr)) >= GiB
    snap = x.VDI.snapshot(vdi, {})
    s = x.VDI.get_record(snap)
    assert s["is_a_snapshot"] and s["snapshot_of"] == vdi and s["read_only"] is True
    assert x.VDI.get_snapshots(vdi) == [snap]
    assert x.VDI.get_sm_config(vdi)["vhd-parent"] == s["sm_config"]["vhd-parent"]
    clone = x.VDI.clone(vdi, {})
    assert x.VDI.get_read_only(clone) is False and x.VDI.get_virtual_size(clone) == str(GiB)
    x.VDI.resize(vdi, str(2 * GiB))
    assert x.VDI.get_virtual_size(vdi) == str(2 * GiB)
    assert failure_of(x.VDI.resize, snap, str(4 * GiB)) == ["VDI_READONLY", snap]
    copied = x.VDI.copy(vdi, sr)
    assert x.VDI.get_virtual_size(copied) == str(2 * GiB) and copied != vdi
    x.VDI.set_name_label(vdi, "renamed")
    x.SR.scan(sr)
    assert x.VDI.get_name_label(vdi) == "renamed"
    for ref in (snap, clone, copied, vdi):
        x.VDI.destroy(ref)
    assert x.SR.get_VDIs(sr) == []
    assert failure_of(x.VDI.destroy, vdi) == ["HANDLE_INVALID", "VDI", vdi]


def test_sr_errors_and_teardown(xenapi):
    x = xenapi.xenapi
    host = x.host.get_all()[0]
    assert failure_of(x.SR.create, host, {}, "0", "n", "", "file", "user", False, {})[0] == "SR_BACKEND_FAILURE_115"
    assert failure_of(x.SR.create, host, {}, "0", "n", "", "nosuch", "user", False, {}) == [
        "SR_UNKNOWN_DRIVER", "nosuch"]
    sr = new_sr(x, quota=str(256 << 20), enforce_virtual_allocation="true")
    full = failure_of(new_vdi, x, sr, 64 * GiB)
    assert full[0] == "SR_FULL" and full[1] == str(64 * GiB)
    vdi = new_vdi(x, sr, 64 << 20)
    assert failure_of(x.SR.destroy, sr) == ["SR_HAS_PBD", sr]
    assert failure_of(x.SR.forget, sr) == ["SR_HAS_PBD", sr]
    pbd = x.SR.get_PBDs(sr)[0]
    x.PBD.unplug(pbd)
    assert x.PBD.get_currently_attached(pbd) is False
    assert failure_of(x.SR.destroy, sr) == ["SR_NOT_EMPTY"]
    x.PBD.plug(pbd)
    x.VDI.destroy(vdi)
    x.PBD.unplug(pbd)
    x.SR.destroy(sr)
    assert failure_of(x.SR.get_record, sr) == ["HANDLE_INVALID", "SR", sr]
    assert failure_of(x.PBD.get_record, pbd) == ["HANDLE_INVALID", "PBD", pbd]


def test_iso_library_scan_and_cd(xenapi):
    x = xenapi.xenapi
    iso_sr = next(r for r, v in x.SR.get_all_records().items() if v["type"] == "iso")
    location = x.PBD.get_device_config(x.SR.get_PBDs(iso_sr)[0])["location"]
    with open(os.path.join(location, "tools.iso"), "wb") as f:
        f.write(b"\x01" * 4096)
    x.SR.scan(iso_sr)
    (iso,) = [v for v in x.SR.get_VDIs(iso_sr) if x.VDI.get_location(v) == "tools.iso"]
    assert x.VDI.get_read_only(iso) is True
    assert failure_of(new_vdi, x, iso_sr)[0] == "SR_OPERATION_NOT_SUPPORTED"
    vm = install(x, "cd-user")
    cd = x.VBD.create({"VM": vm, "VDI": NULL, "userdevice": "3", "bootable": False, "mode": "RO",
                       "type": "CD", "empty": True, "other_config": {}, "qos_algorithm_type": "",
                       "qos_algorithm_params": {}})
    x.VBD.insert(cd, iso)
    assert x.VBD.get_VDI(cd) == iso and x.VBD.get_empty(cd) is False
    x.VM.start(vm, False, False)
    assert x.VBD.get_currently_attached(cd) is True
    x.VBD.eject(cd)
    assert x.VBD.get_empty(cd) is True
    x.VM.hard_shutdown(vm)
    x.VM.destroy(vm)
    os.unlink(os.path.join(location, "tools.iso"))
    x.SR.scan(iso_sr)


def test_vm_disks_provision_start_clone_snapshot_revert(xenapi):
    x = xenapi.xenapi
    vm = install(x, "with-disks", "Debian Bookworm 12")
    (vbd,) = x.VM.get_VBDs(vm)
    disk = x.VBD.get_VDI(vbd)
    assert x.VDI.get_virtual_size(disk) == str(10 * GiB)
    assert x.VDI.get_SR(disk) == x.pool.get_default_SR(x.pool.get_all()[0])
    assert "disks" not in x.VM.get_other_config(vm)
    x.VM.start(vm, False, False)
    assert x.VBD.get_currently_attached(vbd) is True
    other = install(x, "intruder")
    disk_vbd(x, other, disk)
    assert failure_of(x.VM.start, other, False, False) == ["VDI_IN_USE", disk, "attach"]
    assert x.VM.get_power_state(other) == "Halted"
    assert failure_of(x.VDI.destroy, disk) == ["VDI_IN_USE", disk, "destroy"]
    x.VM.hard_shutdown(vm)

    clone = x.VM.clone(vm, "fast clone")
    (clone_disk,) = [x.VBD.get_VDI(b) for b in x.VM.get_VBDs(clone)]
    assert clone_disk != disk and x.VDI.get_virtual_size(clone_disk) == str(10 * GiB)
    snap = x.VM.snapshot(vm, "snap", [])
    (snap_disk,) = [x.VBD.get_VDI(b) for b in x.VM.get_VBDs(snap)]
    assert x.VDI.get_snapshot_of(snap_disk) == disk and x.VDI.get_is_a_snapshot(snap_disk)
    x.VM.revert(snap)
    (reverted,) = [x.VBD.get_VDI(b) for b in x.VM.get_VBDs(vm)]
    assert reverted not in (disk, snap_disk)
    assert failure_of(x.VDI.get_record, disk) == ["HANDLE_INVALID", "VDI", disk]  # the old disk went
    x.VM.start(vm, False, False)
    x.VM.hard_shutdown(vm)
    for v in (snap, clone, other, vm):
        disks = [x.VBD.get_VDI(b) for b in x.VM.get_VBDs(v) if x.VBD.get_type(b) == "Disk"]
        x.VM.destroy(v)
        for d in disks:
            if d != NULL:
                try:
                    x.VDI.destroy(d)
                except XenAPI.Failure:
                    pass
