"""The lifecycle, storage, device, network, pool, task and event commands.

Each command uses only public XenAPI calls, the ones xe's server side makes
for it, so that it behaves the same against this server and a real host.
Long operations go through ``Async.*`` and their task (``tasks.py``):
progress is shown and Ctrl-C cancels.  Names, parameters, outputs and error
texts follow xe's.
"""

from __future__ import annotations

import random
import xml.etree.ElementTree as ET
from typing import Any

from xapi.idl.model import model

from .classes import CLASSES
from .cmdtable import HIDDEN, LOCAL_SESSION, STANDARD, STDPARAMS, VM_SELECTORS, Invocation, command
from .connection import Connection, Options, Session
from .errors import ApiFailure, CliFailure
from .fields import NULL_REF, RecordView, bytes_of_string, parse_enum, parse_int
from .params import filter_views, record_rows, visible_fields
from .selectors import do_vm_op, host_by_name_or_id

NO_FORCE_MSG = ("This operation is dangerous and may cause data loss. This operation must be "
                "forced (use --force).")
FUSE_TIME = 10.0


def long_call(inv: Invocation, method: str, *args: Any) -> Any:
    """A long operation: through its task when the message has an Async form."""
    msg = model().methods.get(method)
    if msg is not None and msg.async_ and inv.runner is not None:
        return inv.run_task(method, *args)
    return inv.call(method, *args)


def ref_of(inv: Invocation, cls: str, uuid: str) -> str:
    return inv.call(f"{cls}.get_by_uuid", uuid)


def uuid_of(inv: Invocation, cls: str, ref: str) -> str:
    return inv.call(f"{cls}.get_uuid", ref)


def fail_without_force(inv: Invocation) -> None:
    if not inv.flag("force"):
        raise CliFailure(NO_FORCE_MSG)


# -- VM power operations -----------------------------------------------------------------


def _print_vm_host_report(inv: Invocation, vm: str) -> None:
    rows = []
    for host in inv.call("host.get_all"):
        name = inv.call("host.get_name_label", host)
        try:
            inv.call("VM.assert_can_boot_here", vm, host)
            rows.append((name, "OK"))
        except ApiFailure as e:
            rows.append((name, f"Cannot start here [{e.code}: {', '.join(e.params)}]"))
    inv.printer.table([rows])


def _no_hosts_hook(inv: Invocation, vm: str, fn):
    try:
        return fn()
    except ApiFailure as e:
        if e.code == "NO_HOSTS_AVAILABLE":
            inv.printer.lines([
                "There are no suitable hosts to start this VM on.",
                "The following table provides per-host reasons for why the VM could not be started:",
                "",
            ])
            _print_vm_host_report(inv, vm)
        raise


@command("vm-start", optn=["force", "on", "paused"], flags=(STANDARD, VM_SELECTORS), cls="vm",
         help="Starts the selected VMs; on=<host> names the host to start them on.")
def vm_start(inv: Invocation) -> None:
    force, paused = inv.flag("force"), inv.flag("paused")
    on = inv.get("on")

    def op(view: RecordView):
        vm = view.ref
        if on is not None:
            host = host_by_name_or_id(inv, on)
            return _no_hosts_hook(inv, vm, lambda: long_call(inv, "VM.start_on", vm, host, paused, force))
        return _no_hosts_hook(inv, vm, lambda: long_call(inv, "VM.start", vm, paused, force))

    do_vm_op(inv, op, ["on", "paused", "progress"], include_control=True)


@command("vm-shutdown", optn=["force"], flags=(STANDARD, VM_SELECTORS), cls="vm",
         help="Shuts the selected VMs down: cleanly, or at once with --force.")
def vm_shutdown(inv: Invocation) -> None:
    method = "VM.hard_shutdown" if inv.flag("force") else "VM.clean_shutdown"
    do_vm_op(inv, lambda v: long_call(inv, method, v.ref), ["progress"])


@command("vm-reboot", optn=["force"], flags=(STANDARD, VM_SELECTORS), cls="vm",
         help="Reboots the selected VMs: cleanly, or at once with --force.")
def vm_reboot(inv: Invocation) -> None:
    method = "VM.hard_reboot" if inv.flag("force") else "VM.clean_reboot"
    do_vm_op(inv, lambda v: long_call(inv, method, v.ref), ["progress"])


@command("vm-suspend", flags=(STANDARD, VM_SELECTORS), cls="vm",
         help="Suspends the selected VMs to disk.")
def vm_suspend(inv: Invocation) -> None:
    do_vm_op(inv, lambda v: long_call(inv, "VM.suspend", v.ref), ["progress"])


@command("vm-resume", optn=["force", "on"], flags=(STANDARD, VM_SELECTORS), cls="vm",
         help="Resumes the selected suspended VMs; on=<host> names the host.")
def vm_resume(inv: Invocation) -> None:
    force = inv.flag("force")
    on = inv.get("on")

    def op(view: RecordView):
        if on is not None:
            host = host_by_name_or_id(inv, on)
            return long_call(inv, "VM.resume_on", view.ref, host, False, force)
        return _no_hosts_hook(inv, view.ref,
                              lambda: long_call(inv, "VM.resume", view.ref, False, force))

    do_vm_op(inv, op, ["on", "progress"])


@command("vm-pause", flags=(STANDARD, VM_SELECTORS), cls="vm", help="Pauses the selected running VMs.")
def vm_pause(inv: Invocation) -> None:
    do_vm_op(inv, lambda v: inv.call("VM.pause", v.ref))


@command("vm-unpause", flags=(STANDARD, VM_SELECTORS), cls="vm", help="Unpauses the selected paused VMs.")
def vm_unpause(inv: Invocation) -> None:
    do_vm_op(inv, lambda v: inv.call("VM.unpause", v.ref))


@command("vm-reset-powerstate", optn=["force"], flags=(STANDARD, VM_SELECTORS), cls="vm",
         help="Marks the selected VMs halted without touching them (after a host failure); "
              "needs --force.")
def vm_reset_powerstate(inv: Invocation) -> None:
    fail_without_force(inv)
    do_vm_op(inv, lambda v: inv.call("VM.power_state_reset", v.ref))


# -- copies ---------------------------------------------------------------------------


def _set_description_and_print(inv: Invocation, new_vms: list[str]) -> None:
    desc = inv.get("new-name-description")
    if desc is not None and new_vms:
        inv.call("VM.set_name_description", new_vms[0], desc)
    inv.printer.lines([uuid_of(inv, "VM", vm) for vm in new_vms])


@command("vm-clone", reqd=["new-name-label"], optn=["new-name-description"],
         flags=(STANDARD, VM_SELECTORS), cls="vm",
         help="Clones the selected VM (or template), fast where the storage allows; prints the "
              "new uuid.")
def vm_clone(inv: Invocation) -> None:
    name = inv.req("new-name-label")
    new = do_vm_op(inv, lambda v: long_call(inv, "VM.clone", v.ref, name),
                   ["new-name-label", "new-name-description", "ignore-vdi-uuids"],
                   include_templates=True)
    _set_description_and_print(inv, new)


@command("vm-snapshot", reqd=["new-name-label"], optn=["new-name-description", "ignore-vdi-uuids"],
         flags=(STANDARD, VM_SELECTORS), cls="vm",
         help="Snapshots the selected VM; ignore-vdi-uuids lists disks to leave out. Prints the "
              "snapshot's uuid.")
def vm_snapshot(inv: Invocation) -> None:
    name = inv.req("new-name-label")
    ignore = inv.get("ignore-vdi-uuids")
    ignore_vdis = [ref_of(inv, "VDI", u) for u in ignore.split(",")] if ignore else None

    def op(view: RecordView):
        if ignore_vdis is None:
            return long_call(inv, "VM.snapshot", view.ref, name)
        return long_call(inv, "VM.snapshot", view.ref, name, ignore_vdis)

    new = do_vm_op(inv, op, ["new-name-label", "new-name-description", "ignore-vdi-uuids"])
    _set_description_and_print(inv, new)


@command("vm-checkpoint", reqd=["new-name-label"], optn=["new-name-description"],
         flags=(STANDARD, VM_SELECTORS), cls="vm",
         help="Snapshots the selected VM with its memory; prints the snapshot's uuid.")
def vm_checkpoint(inv: Invocation) -> None:
    name = inv.req("new-name-label")
    new = do_vm_op(inv, lambda v: long_call(inv, "VM.checkpoint", v.ref, name),
                   ["new-name-label", "new-name-description"])
    _set_description_and_print(inv, new)


@command("vm-copy", reqd=["new-name-label"], optn=["new-name-description", "sr-uuid"],
         flags=(STANDARD, VM_SELECTORS), cls="vm",
         help="Copies the selected VM with full copies of its disks, to sr-uuid if given; prints "
              "the new uuid.")
def vm_copy(inv: Invocation) -> None:
    name = inv.req("new-name-label")
    sr_uuid = inv.get("sr-uuid")
    sr = ref_of(inv, "SR", sr_uuid) if sr_uuid is not None else NULL_REF
    new = do_vm_op(inv, lambda v: long_call(inv, "VM.copy", v.ref, name, sr),
                   ["new-name-label", "sr-uuid", "new-name-description"],
                   include_templates=True, multiple=False)
    _set_description_and_print(inv, new)


# -- install and uninstall --------------------------------------------------------------


def _recommended(xml_text: str, field: str) -> bool:
    try:
        root = ET.fromstring(xml_text)
    except ET.ParseError:
        return False
    for el in root.iter("restriction"):
        if el.get("field") == field:
            return el.get("value") == "true"
    return False


def _disks_xml(other_config: dict) -> ET.Element | None:
    text = other_config.get("disks")
    if text is None:
        return None
    try:
        return ET.fromstring(text)
    except ET.ParseError:
        return None


def _rewrite_provisioning(inv: Invocation, vm: str, sr_uuid: str) -> None:
    other = inv.call("VM.get_other_config", vm)
    root = _disks_xml(other)
    if root is None or not list(root.iter("disk")):
        return
    for disk in root.iter("disk"):
        disk.set("sr", sr_uuid)
    inv.call("VM.remove_from_other_config", vm, "disks")
    inv.call("VM.add_to_other_config", vm, "disks", ET.tostring(root, encoding="unicode"))


def _default_sr_uuid(inv: Invocation) -> str | None:
    pool = inv.call("pool.get_all")[0]
    sr = inv.call("pool.get_default_SR", pool)
    try:
        return uuid_of(inv, "SR", sr)
    except ApiFailure:
        return None


def _find_template(inv: Invocation) -> str:
    if inv.has("template-uuid"):
        try:
            return ref_of(inv, "VM", inv.get("template-uuid"))
        except ApiFailure:
            raise CliFailure("Cannot find template") from None

    def by_name(name: str) -> str:
        cli = CLASSES["vm"]
        ctx = inv.ctx(bulk=True)
        records = inv.call("VM.get_all_records_where", "true")
        ctx.remember("VM", records)
        views = [RecordView(ctx, "VM", r, rec) for r, rec in records.items()]
        found = filter_views(cli, views, [("name-label", name), ("is-a-template", "true"),
                                          ("is-control-domain", "false")])
        if not found:
            raise CliFailure("No templates matched")
        if len(found) > 1:
            raise CliFailure("More than one matching template found")
        return found[0].ref

    for key in ("template-name-label", "template-name"):
        if inv.has(key):
            return by_name(inv.get(key))
    if inv.has("template"):
        try:
            return ref_of(inv, "VM", inv.get("template"))
        except ApiFailure:
            return by_name(inv.get("template"))
    raise CliFailure("Template must be specified by parameter 'template-uuid', 'template-name', "
                     "'template-name-label' or 'template'")


@command("vm-install", reqd=["new-name-label"],
         optn=["sr-name-label", "sr-uuid", "template", "copy-bios-strings-from", "template-uuid",
               "template-name", "template-name-label"],
         flags=(STANDARD,), cls="template",
         help="Installs a new VM from a template (template=<name or uuid>), its disks on the given "
              "SR or the pool's default SR; prints the new VM's uuid.")
def vm_install(inv: Invocation) -> None:
    template = _find_template(inv)
    if not inv.call("VM.get_is_a_template", template):
        raise CliFailure("Can only install from templates")
    name = inv.req("new-name-label")
    description = "Installed via xe CLI"

    sr: str | None = None
    if inv.call("VM.get_is_a_snapshot", template):
        if inv.has("sr-name-label") or inv.has("sr-uuid"):
            raise CliFailure(
                "Do not use the sr-name-label or sr-uuid argument when installing from a snapshot. "
                "By default, it will install each new disk on the same SR as the corresponding "
                "snapshot disks.")
        sr = NULL_REF
    elif inv.has("sr-uuid"):
        sr = ref_of(inv, "SR", inv.get("sr-uuid"))
    if inv.has("sr-name-label"):
        srs = inv.call("SR.get_by_name_label", inv.get("sr-name-label"))
        if not srs:
            raise CliFailure("No SR with that name-label found")
        if sr is not None:
            if sr not in srs:
                raise CliFailure("SR specified via sr-uuid doesn't have the name specified via "
                                 "sr-name-label")
        elif len(srs) == 1:
            sr = srs[0]
        else:
            raise CliFailure("Multiple SRs with that name-label found")

    if sr is not None and sr != NULL_REF:
        suspend_sr = sr
    else:
        suspend_sr = inv.call("VM.get_suspend_SR", template)

    if sr is not None and sr != NULL_REF:
        sr_uuid = uuid_of(inv, "SR", sr)
    else:
        sr_uuid = _default_sr_uuid(inv)
        if sr_uuid is None:
            disks = _disks_xml(inv.call("VM.get_other_config", template))
            # xe asks for an SR whenever the template has a disk list; only one with disks needs it.
            if disks is not None and list(disks.iter("disk")):
                raise CliFailure("Failed to find a valid default SR for the Pool. Please provide an "
                                 "sr-name-label or sr-uuid parameter.")
            sr_uuid = ""

    if sr is not None and sr != NULL_REF:
        new_vm = long_call(inv, "VM.copy", template, name, sr)
    else:
        new_vm = long_call(inv, "VM.clone", template, name)
    try:
        inv.call("VM.set_name_description", new_vm, description)
        inv.call("VM.set_suspend_SR", new_vm, suspend_sr)
        if sr_uuid:
            _rewrite_provisioning(inv, new_vm, sr_uuid)
        recommendations = inv.call("VM.get_recommendations", template)
        pool = inv.call("pool.get_all")[0]
        want = (_recommended(recommendations, "has-vendor-device")
                and not inv.call("pool.get_policy_no_vendor_device", pool))
        try:
            inv.call("VM.set_has_vendor_device", new_vm, want)
        except ApiFailure as e:
            if e.code not in ("LICENCE_RESTRICTION", "LICENSE_RESTRICTION"):
                raise
            inv.printer.stderr(
                "Note: the VM template recommends setting has-vendor-device=true, but a suitable "
                "licence has not been deployed for this host. Ignoring this recommendation and "
                f"continuing with installation of VM \"{name}\"...")
        long_call(inv, "VM.provision", new_vm)
        if inv.has("copy-bios-strings-from"):
            host = ref_of(inv, "host", inv.get("copy-bios-strings-from"))
            inv.call("VM.copy_bios_strings", new_vm, host)
        inv.printer.lines([uuid_of(inv, "VM", new_vm)])
    except BaseException:
        try:
            inv.call("VM.destroy", new_vm)
        except Exception:
            pass
        raise


def _uninstall(inv: Invocation, vms: list[str]) -> None:
    to_print: list[str] = []
    actions = []

    def vdi_line(vdi: str) -> str:
        r = inv.call("VDI.get_record", vdi)
        shared = " ** WARNING: disk is shared by other VMs" if len(r.get("VBDs", [])) > 1 else ""
        return f"VDI: {r['uuid']} ({r['name_label']}) {shared}"

    for vm in vms:
        vm_rec = inv.call("VM.get_record", vm)
        vdis = []
        for vbd in vm_rec.get("VBDs", []):
            try:
                other = inv.call("VBD.get_other_config", vbd)
                vdi = inv.call("VBD.get_VDI", vbd)
                inv.call("VDI.get_uuid", vdi)
            except ApiFailure:
                continue
            if "owner" in other:
                vdis.append(vdi)
        suspend_vdi = vm_rec.get("suspend_VDI", NULL_REF)
        try:
            if suspend_vdi != NULL_REF:
                inv.call("VDI.get_uuid", suspend_vdi)
        except ApiFailure:
            suspend_vdi = NULL_REF
        to_print.append(f"VM : {vm_rec['uuid']} ({vm_rec['name_label']})")
        to_print += [vdi_line(v) for v in vdis]
        if suspend_vdi != NULL_REF:
            to_print.append(vdi_line(suspend_vdi))

        def destroy(vm=vm, vdis=vdis, suspend_vdi=suspend_vdi):
            if inv.call("VM.get_power_state", vm) != "Halted":
                long_call(inv, "VM.hard_shutdown", vm)
            inv.call("VM.destroy", vm)
            for vdi in vdis:
                long_call(inv, "VDI.destroy", vdi)
            if suspend_vdi != NULL_REF:
                try:
                    long_call(inv, "VDI.destroy", suspend_vdi)
                except ApiFailure:
                    pass

        actions.append(destroy)
    inv.printer.lines(["The following items are about to be destroyed"] + to_print)
    if inv.flag("force") or inv.user_says_yes():
        for action in actions:
            action()
        inv.printer.lines(["All objects destroyed"])


@command("vm-uninstall", optn=["force"], flags=(STANDARD, VM_SELECTORS), cls="vm",
         help="Destroys the selected VM, its snapshots and the disks it owns; asks for "
              "confirmation unless --force.")
def vm_uninstall(inv: Invocation) -> None:
    vms = do_vm_op(inv, lambda v: v.ref)
    snapshots = [s for vm in vms for s in inv.call("VM.get_snapshots", vm)]
    _uninstall(inv, vms + snapshots)


@command("template-uninstall", reqd=["template-uuid"], optn=["force"], flags=(STANDARD,),
         cls="template", help="Destroys a template and the disks it owns.")
def template_uninstall(inv: Invocation) -> None:
    uuid = inv.req("template-uuid")
    vm = ref_of(inv, "VM", uuid)
    if not inv.call("VM.get_is_a_template", vm):
        raise CliFailure(f"This operation can only be performed on a VM template. {uuid} is not "
                         "a VM template.")
    _uninstall(inv, [vm])


@command("vm-destroy", reqd=["uuid"], cls="vm",
         help="Destroys the VM record (not its disks).")
def vm_destroy(inv: Invocation) -> None:
    vm = ref_of(inv, "VM", inv.req("uuid"))
    if inv.call("VM.get_is_control_domain", vm):
        raise ApiFailure("OPERATION_NOT_ALLOWED", ["You cannot destroy a control domain via the CLI"])
    inv.call("VM.destroy", vm)


# -- snapshots --------------------------------------------------------------------------


def _snapshot_uuid(inv: Invocation) -> str:
    value = inv.get("snapshot-uuid") or inv.get("uuid")
    if value is None:
        raise CliFailure("Required parameter not found: snapshot-uuid or uuid.")
    return value


def _snapshot(inv: Invocation) -> str:
    uuid = _snapshot_uuid(inv)
    ref = ref_of(inv, "VM", uuid)
    if not inv.call("VM.get_is_a_snapshot", ref):
        raise CliFailure(f"This operation can only be performed on a VM snapshot. {uuid} is not a "
                         "VM snapshot.")
    return ref


@command("snapshot-revert", optn=["uuid", "snapshot-uuid"], flags=(STANDARD,), cls="snapshot",
         help="Reverts the snapshot's VM to the snapshot.")
def snapshot_revert(inv: Invocation) -> None:
    long_call(inv, "VM.revert", _snapshot(inv))


@command("snapshot-destroy", optn=["uuid", "snapshot-uuid"], cls="snapshot",
         help="Destroys a snapshot record (not its disks).")
def snapshot_destroy(inv: Invocation) -> None:
    snap = _snapshot(inv)
    if inv.call("VM.get_power_state", snap) != "Halted":
        inv.call("VM.hard_shutdown", snap)
    inv.call("VM.destroy", snap)


@command("snapshot-uninstall", optn=["uuid", "snapshot-uuid", "force"], flags=(STANDARD,),
         cls="snapshot", help="Destroys a snapshot and the disks it owns.")
def snapshot_uninstall(inv: Invocation) -> None:
    _uninstall(inv, [_snapshot(inv)])


def _snapshot_copy(inv: Invocation, method: str, *extra: Any) -> None:
    name = inv.req("new-name-label")
    new = long_call(inv, method, _snapshot(inv), name, *extra)
    desc = inv.get("new-name-description")
    if desc is not None:
        inv.call("VM.set_name_description", new, desc)
    inv.printer.lines([uuid_of(inv, "VM", new)])


@command("snapshot-clone", reqd=["new-name-label"], optn=["uuid", "new-name-description"],
         flags=(STANDARD,), cls="snapshot", help="Makes a template from a snapshot (a clone).")
def snapshot_clone(inv: Invocation) -> None:
    _snapshot_copy(inv, "VM.clone")


@command("snapshot-copy", reqd=["new-name-label"], optn=["uuid", "new-name-description", "sr-uuid"],
         flags=(STANDARD,), cls="snapshot", help="Makes a template from a snapshot (full copies).")
def snapshot_copy(inv: Invocation) -> None:
    sr = ref_of(inv, "SR", inv.get("sr-uuid")) if inv.has("sr-uuid") else NULL_REF
    _snapshot_copy(inv, "VM.copy", sr)


# -- migration --------------------------------------------------------------------------

SXM_PARAMS = ["remote-master", "remote-username", "vif", "remote-password", "remote-network",
              "vdi", "vgpu", "image-format"]


def _migrate_options(inv: Invocation) -> dict[str, str]:
    options = {}
    if inv.has("compress"):
        options["compress"] = inv.get("compress")
    for key in ("force", "live", "copy"):
        options[key] = "true" if inv.flag(key) else "false"
    return options


@command("vm-migrate",
         optn=["live", "host", "host-uuid", "remote-master", "remote-username", "remote-password",
               "remote-network", "force", "copy", "compress", "vif:", "vdi:", "image-format:"],
         flags=(STANDARD, VM_SELECTORS), cls="vm",
         help="Moves the selected VMs to host=<name or uuid> in the pool, or with remote-master "
              "(and remote-username, remote-password) to another pool with their disks "
              "(vdi:<vdi uuid>=<sr uuid>, vif:<vif uuid>=<network uuid>).")
def vm_migrate(inv: Invocation) -> None:
    inv.params = [("host", v) if k in ("host-uuid", "host-name") else (k, v) for k, v in inv.params]
    options = _migrate_options(inv)
    if any(k.startswith(tuple(SXM_PARAMS)) for k, _ in inv.params):
        _storage_migrate(inv, options)
        return
    if not inv.has("host"):
        raise CliFailure("No destination host specified")
    host = host_by_name_or_id(inv, inv.get("host"))
    do_vm_op(inv, lambda v: long_call(inv, "VM.pool_migrate", v.ref, host, options),
             ["host", "host-uuid", "host-name", "live", "compress", "copy", "progress"],
             include_control=True)


def _storage_migrate(inv: Invocation, options: dict[str, str]) -> None:
    inv.printer.message("Performing a storage live migration. Your VM's VDIs will be migrated with the VM.")
    for key in ("remote-master", "remote-username", "remote-password"):
        if not inv.has(key):
            raise CliFailure("Storage live migration requires remote-master, remote-username, and "
                             "remote-password to be specified. Please see 'xe help vm-migrate' for help.")
    local_opts: Options = inv.extra["options"]
    remote_opts = Options(server=inv.get("remote-master"), username=inv.get("remote-username"),
                          password=inv.get("remote-password"), ssl=local_opts.ssl)
    remote = Session.login(Connection(remote_opts), remote_opts, inv.extra["version"])
    try:
        def where(x: str, fields: list[str]) -> str:
            return " or ".join(f'(field "{f}"="{x}")' for f in fields)

        if inv.has("host"):
            hosts = remote.call("host.get_all_where", where(inv.get("host"), ["hostname", "name__label", "uuid"]))
            if not hosts:
                raise CliFailure(f"Failed to find host: {inv.get('host')}")
        else:
            hosts = remote.call("host.get_all_where", "true")
            if not hosts:
                raise CliFailure("Failed to find a suitable host")
        host = hosts[0]
        if inv.has("remote-network"):
            nets = remote.call("network.get_all_where", where(inv.get("remote-network"), ["bridge", "name__label", "uuid"]))
            if not nets:
                raise CliFailure(f"Failed to find network: {inv.get('remote-network')}")
            network = nets[0]
        else:
            pifs = remote.call("PIF.get_all_where", f'(field "host"="{host}") and (field "management"="true")')
            if not pifs:
                raise CliFailure(f"Could not find management PIF on host {remote.call('host.get_uuid', host)}")
            network = remote.call("PIF.get_network", pifs[0])
        vif_map = {ref_of(inv, "VIF", k): remote.call("network.get_by_uuid", v) for k, v in inv.map_params("vif")}
        vdi_map = {ref_of(inv, "VDI", k): remote.call("SR.get_by_uuid", v) for k, v in inv.map_params("vdi")}
        vgpu_map = {ref_of(inv, "VGPU", k): remote.call("GPU_group.get_by_uuid", v) for k, v in inv.map_params("vgpu")}
        preferred = _preferred_sr(remote, host)
        if preferred is not None:
            from .selectors import select
            vms = select(inv, "vm", ["host", "host-uuid", "host-name", "live", "force", "copy", "compress"] + SXM_PARAMS,
                         [("is-control-domain", "false")])
            if not vms:
                raise CliFailure("No matching VMs found")
            for vbd in inv.call("VM.get_VBDs", vms[0].ref):
                if not inv.call("VBD.get_empty", vbd):
                    vdi_map.setdefault(inv.call("VBD.get_VDI", vbd), preferred)
        inv.printer.message(
            f"Will migrate to remote host: {remote.call('host.get_name_label', host)}, using remote "
            f"network: {remote.call('network.get_name_label', network)}. Here is the VDI mapping:")
        for vdi, sr in vdi_map.items():
            inv.printer.message(f"VDI {uuid_of(inv, 'VDI', vdi)} -> SR {remote.call('SR.get_uuid', sr)}")
        token = remote.call("host.migrate_receive", host, network, options)
        formats = {ref_of(inv, "VDI", k): v for k, v in inv.map_params("image-format")}

        def op(view: RecordView):
            args = [view.ref, token, True, vdi_map, vif_map, options]
            if vgpu_map or formats:
                args += [vgpu_map]
            if formats:
                args += [formats]
            return long_call(inv, "VM.migrate_send", *args)

        new = do_vm_op(inv, op, ["host", "host-uuid", "host-name", "live", "force", "copy", "progress"]
                       + SXM_PARAMS, include_templates=True)
        if inv.flag("copy") and new:
            inv.printer.lines([remote.call("VM.get_uuid", new[0])])
    finally:
        remote.logout()


def _preferred_sr(remote: Session, host: str) -> str | None:
    try:
        pbds = remote.call("PBD.get_all_records_where",
                           f'(field "host"="{host}") and (field "currently_attached"="true")')
        attached = {p["SR"] for p in pbds.values()}
        for shared in ("true", "false"):
            srs = remote.call("SR.get_all_records_where",
                              f'(not (field "content_type"="iso")) and (field "shared"="{shared}")')
            free = [(int(r["physical_size"]) - int(r["physical_utilisation"]), ref)
                    for ref, r in srs.items() if ref in attached]
            if free:
                return max(free)[1]
    except (ApiFailure, KeyError, ValueError):
        return None
    return None


# -- listing a VM's devices -------------------------------------------------------------


def _disk_list(inv: Invocation, vm: RecordView, cd: bool) -> None:
    vbd_cli, vdi_cli = CLASSES["vbd"], CLASSES["vdi"]
    ctx = vm.ctx
    vbds = [v for v in vm.rec.get("VBDs", []) if inv.call("VBD.get_type", v) == ("CD" if cd else "Disk")]
    vbd_cols = (inv.get("vbd-params") or inv.get("params"))
    vdi_cols = (inv.get("vdi-params") or inv.get("params"))
    vbd_default = ["uuid", "vm-name-label", "userdevice"] + (["empty"] if cd else [])
    vdi_default = ["uuid", "name-label", "virtual-size", "sr-name-label"]
    from .params import chosen_columns
    for n, vbd in enumerate(vbds):
        view = RecordView(ctx, "VBD", vbd)
        label = ("CD " if cd else "Disk ") + str(n)
        inv.printer.message(f"{label} VBD:")
        inv.printer.table(record_rows(vbd_cli, [view], chosen_columns(vbd_cols, vbd_default),
                                      expensive_placeholder=False))
        if not view.rec.get("empty"):
            vdi = RecordView(ctx, "VDI", view.rec["VDI"])
            inv.printer.message(f"{label} VDI:")
            inv.printer.table(record_rows(vdi_cli, [vdi], chosen_columns(vdi_cols, vdi_default),
                                          expensive_placeholder=False))


@command("vm-disk-list", optn=["vbd-params", "vdi-params"], flags=(STANDARD, VM_SELECTORS), cls="vm",
         help="Lists the disks of the selected VMs (vbd-params= and vdi-params= choose the fields).")
def vm_disk_list(inv: Invocation) -> None:
    do_vm_op(inv, lambda v: _disk_list(inv, v, False), ["vbd-params", "vdi-params"])


@command("vm-cd-list", optn=["vbd-params", "vdi-params"], flags=(STANDARD, VM_SELECTORS), cls="vm",
         help="Lists the CD drives of the selected VMs.")
def vm_cd_list(inv: Invocation) -> None:
    do_vm_op(inv, lambda v: _disk_list(inv, v, True), ["vbd-params", "vdi-params"])


@command("vm-vif-list", flags=(STANDARD, VM_SELECTORS), cls="vm",
         help="Lists the virtual network interfaces of the selected VMs.")
def vm_vif_list(inv: Invocation) -> None:
    from .params import chosen_columns
    cols = chosen_columns(inv.get("params"), ["uuid", "device", "MAC", "network-uuid",
                                              "network-name-label", "vm-name-label"])

    def op(view: RecordView):
        rows = [record_rows(CLASSES["vif"], [RecordView(view.ctx, "VIF", vif)], cols,
                            expensive_placeholder=False)[0] for vif in view.rec.get("VIFs", [])]
        inv.printer.table(rows)

    inv.params = [("multiple", "true")] + inv.params
    do_vm_op(inv, op, ["params"])


# -- storage ----------------------------------------------------------------------------


def _master(inv: Invocation) -> str:
    pools = inv.call("pool.get_all")
    if not pools:
        raise ApiFailure("INTERNAL_ERROR", ["Remote host does not belong to a pool."])
    return inv.call("pool.get_master", pools[0])


def _host_param(inv: Invocation, default_master: bool = True) -> str:
    if inv.has("host-uuid"):
        return ref_of(inv, "host", inv.get("host-uuid"))
    hosts = inv.call("host.get_all")
    if len(hosts) == 1 or default_master:
        return _master(inv)
    raise CliFailure("Required parameter not found: host-uuid")


def _size(inv: Invocation, key: str) -> int:
    return bytes_of_string(key, inv.req(key))


@command("sr-create", reqd=["name-label", "type"],
         optn=["name-description", "host-uuid", "device-config:", "shared", "physical-size",
               "content-type", "sm-config:"], cls="sr",
         help="Creates a storage repository of the given type (device-config:<key>=<value> "
              "configures it; device-config:<key>-filename=<file> reads a value from a file); "
              "prints its uuid.")
def sr_create(inv: Invocation) -> None:
    shared = inv.flag("shared")
    host = _host_param(inv, default_master=shared)
    try:
        physical_size = bytes_of_string("physical-size", inv.get("physical-size", ""))
    except CliFailure:
        physical_size = 0
    device_config = {}
    for key, value in inv.map_params("device-config"):
        if key.endswith("-filename"):
            try:
                with open(value) as f:
                    device_config[key[:-len("-filename")]] = f.read()
            except OSError:
                inv.printer.stderr(f"File not found: {value}")
                raise CliFailure("File not found") from None
        else:
            device_config[key] = value
    sr = long_call(inv, "SR.create", host, device_config, physical_size, inv.req("name-label"),
                   inv.get("name-description", ""), inv.req("type"), inv.get("content-type", ""),
                   shared, dict(inv.map_params("sm-config")))
    inv.printer.lines([uuid_of(inv, "SR", sr)])


@command("sr-introduce", reqd=["name-label", "type", "uuid"],
         optn=["name-description", "shared", "content-type", "sm-config:"], cls="sr",
         help="Makes a storage repository that exists known to the pool (attach it with PBDs).")
def sr_introduce(inv: Invocation) -> None:
    uuid = inv.req("uuid")
    long_call(inv, "SR.introduce", uuid, inv.req("name-label"), inv.get("name-description", ""),
              inv.req("type"), inv.get("content-type", ""), inv.flag("shared"),
              dict(inv.map_params("sm-config")))
    inv.printer.lines([uuid])


def _sr_op(method: str):
    def run(inv: Invocation) -> None:
        long_call(inv, method, ref_of(inv, "SR", inv.req("uuid")))
    return run


command("sr-destroy", reqd=["uuid"], cls="sr",
        help="Destroys a storage repository and everything on it.")(_sr_op("SR.destroy"))
command("sr-forget", reqd=["uuid"], cls="sr",
        help="Makes the pool forget a storage repository, leaving its contents.")(_sr_op("SR.forget"))
command("sr-scan", reqd=["uuid"], cls="sr",
        help="Rescans a storage repository for disks and sizes.")(_sr_op("SR.scan"))


@command("pbd-create", reqd=["host-uuid", "sr-uuid"], optn=["device-config:"], cls="pbd",
         help="Creates a PBD (how a host attaches an SR); prints its uuid.")
def pbd_create(inv: Invocation) -> None:
    config = dict(inv.map_params("device-config"))
    host = ref_of(inv, "host", inv.req("host-uuid"))
    sr = ref_of(inv, "SR", inv.req("sr-uuid"))
    pbd = inv.call("PBD.create", {"host": host, "SR": sr, "device_config": config, "other_config": {}})
    inv.printer.lines([uuid_of(inv, "PBD", pbd)])


def _by_uuid_op(cls: str, method: str, sync: bool = False):
    def run(inv: Invocation) -> None:
        ref = ref_of(inv, cls, inv.req("uuid"))
        if sync:
            inv.call(method, ref)
        else:
            long_call(inv, method, ref)
    return run


command("pbd-destroy", reqd=["uuid"], cls="pbd", help="Destroys a PBD.")(
    _by_uuid_op("PBD", "PBD.destroy", sync=True))
command("pbd-plug", reqd=["uuid"], cls="pbd", help="Attaches the SR to the PBD's host.")(
    _by_uuid_op("PBD", "PBD.plug"))
command("pbd-unplug", reqd=["uuid"], cls="pbd", help="Detaches the SR from the PBD's host.")(
    _by_uuid_op("PBD", "PBD.unplug"))


def _vdi_type(text: str) -> str:
    if text not in ("system", "user", "suspend", "crashdump"):
        raise CliFailure(f"Unknown vdi type: {text}")
    return text


@command("vdi-create", reqd=["sr-uuid", "name-label", "virtual-size"],
         optn=["sm-config:", "sharable", "tags:", "type"], cls="vdi",
         help="Creates a disk on an SR (virtual-size accepts KiB, MiB, GiB, TiB); prints its uuid.")
def vdi_create(inv: Invocation) -> None:
    sr = ref_of(inv, "SR", inv.req("sr-uuid"))
    size = _size(inv, "virtual-size")
    record = {
        "name_label": inv.req("name-label"), "name_description": "", "SR": sr,
        "virtual_size": size, "type": _vdi_type(inv.get("type", "user")),
        "sharable": inv.flag("sharable"), "read_only": False, "other_config": {},
        "xenstore_data": {}, "sm_config": dict(inv.map_params("sm-config")),
        "tags": [k for k, _ in inv.map_params("tags")],
    }
    vdi = long_call(inv, "VDI.create", record)
    inv.printer.lines([uuid_of(inv, "VDI", vdi)])


@command("vdi-introduce", reqd=["uuid", "sr-uuid", "type", "location"],
         optn=["name-description", "sharable", "read-only", "managed", "other-config:",
               "xenstore-data:", "sm-config:", "name-label"], cls="vdi",
         help="Makes a disk that exists on an SR known to the pool; prints its uuid.")
def vdi_introduce(inv: Invocation) -> None:
    sr = ref_of(inv, "SR", inv.req("sr-uuid"))
    vdi = long_call(
        inv, "VDI.introduce", inv.req("uuid"), inv.get("name-label", ""),
        inv.get("name-description", ""), sr, _vdi_type(inv.req("type")), inv.flag("sharable"),
        inv.flag("read-only"), dict(inv.map_params("other-config")), inv.req("location"),
        dict(inv.map_params("xenstore-data")), dict(inv.map_params("sm-config")),
        inv.flag("managed"), 0, 0, NULL_REF, False, "19700101T00:00:00Z", NULL_REF)
    inv.printer.lines([uuid_of(inv, "VDI", vdi)])


command("vdi-destroy", reqd=["uuid"], cls="vdi", help="Destroys a disk and its data.")(
    _by_uuid_op("VDI", "VDI.destroy"))
command("vdi-forget", reqd=["uuid"], cls="vdi",
        help="Makes the pool forget a disk, leaving its data on the SR.")(
    _by_uuid_op("VDI", "VDI.forget", sync=True))


@command("vdi-resize", reqd=["uuid", "disk-size"], optn=["online"], cls="vdi",
         help="Grows a disk to disk-size (KiB, MiB, GiB, TiB accepted); online=true for a disk in use.")
def vdi_resize(inv: Invocation) -> None:
    vdi = ref_of(inv, "VDI", inv.req("uuid"))
    size = _size(inv, "disk-size")
    method = "VDI.resize_online" if inv.get("online") == "true" else "VDI.resize"
    long_call(inv, method, vdi, size)


@command("vdi-copy", reqd=["uuid"], optn=["sr-uuid", "base-vdi-uuid", "into-vdi-uuid"], cls="vdi",
         help="Copies a disk to a new disk on sr-uuid, or into the existing disk into-vdi-uuid; "
              "prints the copy's uuid.")
def vdi_copy(inv: Invocation) -> None:
    vdi = ref_of(inv, "VDI", inv.req("uuid"))
    base = ref_of(inv, "VDI", inv.get("base-vdi-uuid")) if inv.has("base-vdi-uuid") else NULL_REF
    if inv.has("sr-uuid") == inv.has("into-vdi-uuid"):
        raise CliFailure("Please specify one but not both of: a destination sr-uuid (I will create "
                         "a fresh VDI); or a destination into-vdi-uuid (I will copy the blocks into "
                         "this VDI)")
    if inv.has("sr-uuid"):
        sr, into = ref_of(inv, "SR", inv.get("sr-uuid")), NULL_REF
    else:
        sr, into = NULL_REF, ref_of(inv, "VDI", inv.get("into-vdi-uuid"))
    if base == NULL_REF and into == NULL_REF:
        new = long_call(inv, "VDI.copy", vdi, sr)
    else:
        new = long_call(inv, "VDI.copy", vdi, sr, base, into)
    inv.printer.lines([uuid_of(inv, "VDI", new)])


@command("vdi-clone", reqd=["uuid"], optn=["driver-params-", "new-name-label", "new-name-description"],
         cls="vdi", help="Clones a disk (fast where the SR allows); prints the clone's uuid.")
def vdi_clone(inv: Invocation) -> None:
    vdi = ref_of(inv, "VDI", inv.req("uuid"))
    params = dict(inv.map_params("driver-params"))
    new = long_call(inv, "VDI.clone", vdi, params) if params else long_call(inv, "VDI.clone", vdi)
    if inv.has("new-name-label"):
        inv.call("VDI.set_name_label", new, inv.get("new-name-label"))
    if inv.has("new-name-description"):
        inv.call("VDI.set_name_description", new, inv.get("new-name-description"))
    inv.printer.lines([uuid_of(inv, "VDI", new)])


@command("vdi-snapshot", reqd=["uuid"], optn=["driver-params-"], cls="vdi",
         help="Snapshots a disk; prints the snapshot's uuid.")
def vdi_snapshot(inv: Invocation) -> None:
    vdi = ref_of(inv, "VDI", inv.req("uuid"))
    params = dict(inv.map_params("driver-params"))
    new = long_call(inv, "VDI.snapshot", vdi, params) if params else long_call(inv, "VDI.snapshot", vdi)
    inv.printer.lines([uuid_of(inv, "VDI", new)])


# -- VBDs -----------------------------------------------------------------------------


@command("vbd-create", reqd=["vm-uuid", "device"], optn=["vdi-uuid", "bootable", "type", "mode", "unpluggable"],
         cls="vbd", help="Creates a virtual block device attaching a disk (or an empty CD drive) to "
                         "a VM at userdevice position 'device'; prints its uuid.")
def vbd_create(inv: Invocation) -> None:
    vm = ref_of(inv, "VM", inv.req("vm-uuid"))
    empty = not inv.has("vdi-uuid")
    vdi = NULL_REF if empty else ref_of(inv, "VDI", inv.get("vdi-uuid"))
    mode = "RW"
    if inv.has("mode"):
        low = inv.get("mode").lower()
        if low not in ("ro", "rw"):
            raise CliFailure(f'Unknown mode: {inv.get("mode")} (should be "ro" or "rw"')
        mode = low.upper()
    vbd_type = "Disk"
    if inv.has("type"):
        low = inv.get("type").lower()
        types = {"cd": "CD", "disk": "Disk", "floppy": "Floppy"}
        if low not in types:
            raise CliFailure(f'"Unknown type: {inv.get("type")} (should be "cd", "disk" or "floppy"')
        vbd_type = types[low]
    if vbd_type == "Disk" and empty:
        raise CliFailure("Empty VBDs can only be made for type=CD")
    record = {
        "VM": vm, "VDI": vdi, "userdevice": inv.req("device"), "bootable": inv.flag("bootable"),
        "mode": mode, "type": vbd_type, "unpluggable": inv.flag("unpluggable", True),
        "empty": empty, "qos_algorithm_type": "", "qos_algorithm_params": {}, "other_config": {},
        "device": "", "currently_attached": False,
    }
    vbd = inv.call("VBD.create", record)
    inv.printer.lines([uuid_of(inv, "VBD", vbd)])


command("vbd-destroy", reqd=["uuid"], cls="vbd", help="Destroys a virtual block device.")(
    _by_uuid_op("VBD", "VBD.destroy", sync=True))
command("vbd-plug", reqd=["uuid"], cls="vbd", help="Hot-plugs a virtual block device into its running VM.")(
    _by_uuid_op("VBD", "VBD.plug"))
command("vbd-eject", reqd=["uuid"], cls="vbd", help="Ejects the disk from a CD drive.")(
    _by_uuid_op("VBD", "VBD.eject"))


@command("vbd-insert", reqd=["uuid", "vdi-uuid"], cls="vbd", help="Inserts a disk into an empty CD drive.")
def vbd_insert(inv: Invocation) -> None:
    long_call(inv, "VBD.insert", ref_of(inv, "VBD", inv.req("uuid")), ref_of(inv, "VDI", inv.req("vdi-uuid")))


@command("vbd-unplug", reqd=["uuid"], optn=["timeout", "force"], cls="vbd",
         help="Hot-unplugs a virtual block device; with timeout=<s>, waits that long for the "
              "guest to release it.")
def vbd_unplug(inv: Invocation) -> None:
    import time

    vbd = ref_of(inv, "VBD", inv.req("uuid"))
    timeout = 0.0
    if inv.has("timeout"):
        try:
            timeout = float(inv.get("timeout"))
        except ValueError:
            raise CliFailure("Failed to parse parameter 'timeout': expecting a float") from None
    start = time.monotonic()
    try:
        long_call(inv, "VBD.unplug_force" if inv.flag("force") else "VBD.unplug", vbd)
    except ApiFailure as e:
        if e.code != "DEVICE_DETACH_REJECTED":
            raise
        while time.monotonic() - start < timeout:
            time.sleep(min(5.0, max(0.0, timeout - (time.monotonic() - start))))
            if not inv.call("VBD.get_currently_attached", vbd):
                return
        raise


# -- VIFs -----------------------------------------------------------------------------


def random_mac() -> str:
    octets = [random.randrange(256) for _ in range(6)]
    octets[0] = (octets[0] | 0x2) & ~0x1
    return ":".join(f"{o:02x}" for o in octets)


@command("vif-create", reqd=["device", "network-uuid", "vm-uuid"], optn=["mac"], cls="vif",
         help="Creates a virtual network interface on a VM and network (mac=random for a random "
              "MAC); prints its uuid.")
def vif_create(inv: Invocation) -> None:
    mac = inv.get("mac", "")
    if mac == "random":
        mac = random_mac()
    vm = ref_of(inv, "VM", inv.req("vm-uuid"))
    network = ref_of(inv, "network", inv.req("network-uuid"))
    record = {
        "device": inv.req("device"), "network": network, "VM": vm, "MAC": mac,
        "MTU": inv.call("network.get_MTU", network), "other_config": {},
        "currently_attached": False, "qos_algorithm_type": "", "qos_algorithm_params": {},
        "locking_mode": "network_default", "ipv4_allowed": [], "ipv6_allowed": [],
    }
    if "trunks" in model().classes["VIF"].fields:
        record["trunks"] = []
    vif = inv.call("VIF.create", record)
    inv.printer.lines([uuid_of(inv, "VIF", vif)])


command("vif-destroy", reqd=["uuid"], cls="vif", help="Destroys a virtual network interface.")(
    _by_uuid_op("VIF", "VIF.destroy", sync=True))
command("vif-plug", reqd=["uuid"], cls="vif", help="Hot-plugs a virtual network interface.")(
    _by_uuid_op("VIF", "VIF.plug"))


@command("vif-unplug", reqd=["uuid"], optn=["force"], cls="vif", help="Hot-unplugs a virtual network interface.")
def vif_unplug(inv: Invocation) -> None:
    vif = ref_of(inv, "VIF", inv.req("uuid"))
    long_call(inv, "VIF.unplug_force" if inv.flag("force") else "VIF.unplug", vif)


@command("vif-move", reqd=["uuid", "network-uuid"], cls="vif", help="Moves a virtual network interface to another network.")
def vif_move(inv: Invocation) -> None:
    long_call(inv, "VIF.move", ref_of(inv, "VIF", inv.req("uuid")),
              ref_of(inv, "network", inv.req("network-uuid")))


def _configure_ip(version: str):
    def run(inv: Invocation) -> None:
        vif = ref_of(inv, "VIF", inv.req("uuid"))
        mode = parse_enum(f"vif_ipv{version}_configuration_mode", inv.req("mode"))
        address, gateway = inv.get("address", ""), inv.get("gateway", "")
        if mode == "Static" and address == "":
            raise CliFailure("Required parameter not found: address")
        long_call(inv, f"VIF.configure_ipv{version}", vif, mode, address, gateway)
    return run


command("vif-configure-ipv4", reqd=["uuid", "mode"], optn=["address", "gateway"], cls="vif",
        help="Sets the IPv4 configuration the guest agent applies (mode=static|none).")(_configure_ip("4"))
command("vif-configure-ipv6", reqd=["uuid", "mode"], optn=["address", "gateway"], cls="vif",
        help="Sets the IPv6 configuration the guest agent applies (mode=static|none).")(_configure_ip("6"))


# -- networks -------------------------------------------------------------------------


@command("network-create", reqd=["name-label"], optn=["name-description", "MTU", "bridge", "managed"],
         cls="network", help="Creates a network; prints its uuid.")
def network_create(inv: Invocation) -> None:
    mtu = parse_int("MTU", inv.get("MTU")) if inv.has("MTU") else 1500
    record = {
        "name_label": inv.req("name-label"), "name_description": inv.get("name-description", ""),
        "MTU": mtu, "other_config": {}, "bridge": inv.get("bridge", ""),
        "managed": inv.flag("managed", True), "tags": [],
    }
    net = inv.call("network.create", record)
    inv.printer.lines([uuid_of(inv, "network", net)])


command("network-destroy", reqd=["uuid"], cls="network", help="Destroys a network.")(
    _by_uuid_op("network", "network.destroy", sync=True))


@command("network-attach", reqd=["uuid", "host-uuid"], flags=(HIDDEN,), cls="network",
         help="Makes a network available on a host.")
def network_attach(inv: Invocation) -> None:
    inv.call("network.attach", ref_of(inv, "network", inv.req("uuid")),
             ref_of(inv, "host", inv.req("host-uuid")))


# -- pools ----------------------------------------------------------------------------


@command("pool-join", reqd=["master-address", "master-username", "master-password"], optn=["force"],
         cls="pool", help="Makes this host join the pool of the given master.")
def pool_join(inv: Invocation) -> None:
    method = "pool.join_force" if inv.flag("force") else "pool.join"
    try:
        inv.call(method, inv.req("master-address"), inv.req("master-username"),
                 inv.req("master-password"))
    except ApiFailure as e:
        if e.code != "JOINING_HOST_CONNECTION_FAILED":
            raise
        inv.printer.lines(["Host cannot contact destination host: connection refused.",
                           "Check destination host has services running and accessible from this host."])
        return
    inv.printer.lines([f"Host agent will restart and attempt to join pool in {FUSE_TIME:.3f} seconds..."])


@command("pool-designate-new-master", reqd=["host-uuid"], cls="pool",
         help="Hands the master role over to the given member, in an orderly way.")
def pool_designate_new_master(inv: Invocation) -> None:
    inv.call("pool.designate_new_master", ref_of(inv, "host", inv.req("host-uuid")))


@command("pool-emergency-transition-to-master", flags=(LOCAL_SESSION,), cls="pool",
         help="Makes this member the master when the master is gone.")
def pool_emergency_transition_to_master(inv: Invocation) -> None:
    inv.call("pool.emergency_transition_to_master")


@command("pool-emergency-reset-master", reqd=["master-address"], flags=(LOCAL_SESSION,),
         cls="pool", help="Tells this member which host is its new master.")
def pool_emergency_reset_master(inv: Invocation) -> None:
    inv.call("pool.emergency_reset_master", inv.req("master-address"))


@command("pool-recover-slaves", cls="pool",
         help="On a new master: points every member at it; lists the members recovered.")
def pool_recover_slaves(inv: Invocation) -> None:
    hosts = inv.call("pool.recover_slaves")
    inv.printer.lines([inv.call("host.get_uuid", h) for h in hosts])


@command("pool-eject", reqd=["host-uuid"], optn=["force"], cls="pool",
         help="Removes a host from its pool; its local SRs are reinitialised. Asks for "
              "confirmation unless --force.")
def pool_eject(inv: Invocation) -> None:
    host = ref_of(inv, "host", inv.req("host-uuid"))

    def go() -> None:
        inv.call("pool.eject", host)
        inv.printer.lines([f"Specified host will attempt to restart as a master of a new pool in "
                           f"{FUSE_TIME:.3f} seconds..."])

    if inv.flag("force"):
        go()
        return
    warnings = []
    try:
        for pbd in inv.call("host.get_PBDs", host):
            try:
                sr = inv.call("PBD.get_SR", pbd)
                others = [inv.call("PBD.get_host", p) for p in inv.call("SR.get_PBDs", sr)]
                if any(h != host for h in others):
                    continue
                for vdi in inv.call("SR.get_VDIs", sr):
                    try:
                        warnings.append(f"VDI: {uuid_of(inv, 'VDI', vdi)} "
                                        f"({inv.call('VDI.get_name_label', vdi)})")
                    except ApiFailure:
                        pass
            except ApiFailure:
                pass
    except ApiFailure:
        warnings = []
    inv.printer.lines(["WARNING: Ejecting a host from the pool will reinitialise that host's local SRs.",
                       "WARNING: Any data contained with the local SRs will be lost."])
    if warnings:
        inv.printer.lines(["The following VDI objects will be destroyed:"] + warnings)
    if inv.user_says_yes():
        go()


# -- tasks, events, messages, users ----------------------------------------------------


@command("task-cancel", reqd=["uuid"], cls="task", help="Asks a task to stop.")
def task_cancel(inv: Invocation) -> None:
    inv.call("task.cancel", ref_of(inv, "task", inv.req("uuid")))


EVENT_CLASSES = ("vm", "vdi", "sr", "host", "network", "vif", "pif", "vbd", "pbd", "pool", "task",
                 "subject", "role", "secret", "vmss")


@command("event-wait", reqd=["class"], open_params=True,
         help="Waits until an object of the class has fields matching every field=value "
              "(field=/=value: different from) condition.")
def event_wait(inv: Invocation) -> None:
    name = inv.req("class")
    if name not in EVENT_CLASSES or name not in CLASSES:
        raise CliFailure(f"Cli listening for class '{name}' not currently implemented")
    cli = CLASSES[name]
    conditions = []
    for key, value in inv.params:
        if key == "class" or key in STDPARAMS:
            continue
        if value.startswith("/="):
            conditions.append((False, key, value[2:]))
        else:
            conditions.append((True, key, value))
    ctx = inv.ctx(bulk=True)

    def matches(view: RecordView) -> bool:
        fields = {f.name: f for f in visible_fields(cli, view)}
        for equal, key, value in conditions:
            if key not in fields:
                raise CliFailure(f"key missing: {key}")
            if (fields[key].value(view) == value) != equal:
                return False
        return True

    records = inv.call(f"{cli.api}.get_all_records")
    ctx.remember(cli.api, records)
    if any(matches(RecordView(ctx, cli.api, r, rec)) for r, rec in records.items()):
        return
    token = ""
    while True:
        reply = inv.call("event.from", [cli.api], token, 30.0)
        token = reply.get("token", token)
        for ev in reply.get("events", []):
            snap = ev.get("snapshot")
            if not snap or ev.get("class", "").lower() != cli.api.lower():
                continue
            if matches(RecordView(inv.ctx(bulk=False), cli.api, ev["ref"], snap)):
                return


@command("message-create", reqd=["name", "priority", "body"],
         optn=["vm-uuid", "host-uuid", "sr-uuid", "pool-uuid"], cls="message",
         help="Creates a message about a VM, host, SR or pool (exactly one of their uuids).")
def message_create(inv: Invocation) -> None:
    try:
        priority = int(inv.req("priority"))
    except ValueError:
        raise CliFailure("Priority field should be an integer") from None
    for key, cls in (("vm-uuid", "VM"), ("pool-uuid", "Pool"), ("sr-uuid", "SR"), ("host-uuid", "Host")):
        if inv.has(key):
            inv.call("message.create", inv.req("name"), priority, cls, inv.get(key), inv.req("body"))
            return
    raise CliFailure("Need one of: vm-uuid, host-uuid, sr-uuid or pool-uuid")


@command("user-password-change", reqd=["new"], optn=["old"],
         help="Changes the password of the logged-in user.")
def user_password_change(inv: Invocation) -> None:
    inv.call("session.change_password", inv.get("old", ""), inv.req("new"))

