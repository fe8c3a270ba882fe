"""The CLI classes: their xe names, API classes, fields and default list columns.

xe lays out the records of the common classes itself (which fields, under
which names, in which order, which are hidden or expensive, how values are
shown); those layouts are reproduced here for vm/template/snapshot, host,
pool, sr, vdi, vbd, vif, network, pif, pbd, task and message.  Every other
class with ``get_all_records_where`` gets its fields from the data model
(``fields.from_model``).  A laid-out field the server's records do not carry
(an older host) is left out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from xapi.idl.model import model

from .errors import ApiFailure
from .fields import (
    EXPENSIVE, F, FieldSpec, NID, NULL_REF, RecordView, UNKNOWN_TIME, bind, from_model,
    parse_bool, parse_int,
)

# -- how xe shows some enums ---------------------------------------------------------


def _table(mapping: dict[str, str]):
    return lambda v: mapping.get(v, v)


def lower_first(v: str) -> str:
    return v[:1].lower() + v[1:]


vm_operation = _table({"assert_operation_valid": "assertoperationvalid",
                       "data_source_op": "data_sources_op"})
host_operation = _table({"vm_start": "VM.start", "vm_resume": "VM.resume", "vm_migrate": "VM.migrate"})
task_operation = _table({"cancel": "Cancel", "destroy": "Destroy"})
on_normal_exit = _table({"destroy": "Destroy", "restart": "Restart"})
on_softreboot = _table({"destroy": "Destroy", "restart": "Restart", "preserve": "Preserve",
                        "soft_reboot": "Soft reboot"})
on_crash = _table({"destroy": "Destroy", "coredump_and_destroy": "Core dump and destroy",
                   "restart": "Restart", "coredump_and_restart": "Core dump and restart",
                   "preserve": "Preserve", "rename_restart": "Rename restart"})
domain_type = _table({"pv_in_pvh": "pv-in-pvh"})
tristate = _table({"yes": "true", "no": "false"})
vdi_type = _table({"system": "System", "user": "User", "ephemeral": "Ephemeral",
                   "suspend": "Suspend", "crashdump": "Crashdump", "ha_statefile": "HA statefile",
                   "metadata": "Metadata", "redo_log": "Redo log", "rrd": "rrd",
                   "pvs_cache": "PVS cache", "cbt_metadata": "CBT metadata"})


def sr_operation(v: str) -> str:
    for prefix, cls in (("vdi_", "VDI."), ("pbd_", "PBD.")):
        if v.startswith(prefix):
            return cls + v[len(prefix):]
    return v


# -- fields xe computes ----------------------------------------------------------------


def name_of(wire: str, cls: str):
    return lambda view: view.ctx.name(cls, view.rec.get(wire, NULL_REF))


def uuid_of(wire: str, cls: str):
    return lambda view: view.ctx.uuid(cls, view.rec.get(wire, NULL_REF))


def _call_or(default: str, fn):
    def get(view: RecordView) -> str:
        try:
            return fn(view)
        except ApiFailure:
            return default
    return get


def _vm_memory_target(view: RecordView) -> str:
    try:
        return str(int(float(view.call("VM.query_data_source", view.ref, "memory_target"))))
    except ApiFailure as e:
        return "0" if e.code == "VM_BAD_POWER_STATE" else "<unknown>"


def _vm_vcpus_utilisation(view: RecordView) -> list[tuple[str, str]]:
    metrics = view.related("metrics")
    n = int(metrics.get("VCPUs_number", 0)) if metrics else 0
    out = []
    for i in range(n):
        value = float(view.call("VM.query_data_source", view.ref, f"cpu{i}"))
        out.append((str(i), "%.3f" % value))
    return out


def _vm_devices(method: str):
    def get_set(view: RecordView) -> list[str]:
        try:
            return list(view.call(method, view.ref))
        except ApiFailure:
            return []
    return get_set


def _statefiles(view: RecordView) -> str:
    return "; ".join(view.ctx.uuid("VDI", r) for r in view.rec.get("ha_statefiles", []))


def _host_patches(view: RecordView) -> list[str]:
    out = []
    for hp in view.rec.get("patches", []):
        pool_patch = view.call("host_patch.get_pool_patch", hp)
        out.append(view.call("pool_patch.get_uuid", pool_patch))
    return out


def _host_updates(view: RecordView) -> list[str]:
    return [view.ctx.uuid("pool_update", r) for r in view.rec.get("updates", [])]


def _sr_host(view: RecordView) -> str:
    pbds = view.rec.get("PBDs", [])
    if len(pbds) > 1:
        return "<shared>"
    if not pbds:
        return NID
    pbd = view.ctx.record("PBD", pbds[0])
    return view.ctx.name("host", pbd["host"]) if pbd else NID


def _vdi_metadata_of_pool(view: RecordView) -> str:
    pools = view.call("pool.get_all")
    vdi_pool = view.rec.get("metadata_of_pool", NULL_REF)
    if pools and vdi_pool == pools[0]:
        return view.ctx.uuid("pool", pools[0])
    try:
        uuid = view.call("VDI.read_database_pool_uuid", view.ref)
    except ApiFailure:
        return NID
    return uuid or NID


def _vbd_vdi_name(view: RecordView) -> str:
    if view.rec.get("empty"):
        return "<EMPTY>"
    return view.ctx.name("VDI", view.rec.get("VDI", NULL_REF))


def _vbd_attachable(view: RecordView) -> str:
    try:
        view.call("VBD.assert_attachable", view.ref)
        return "true"
    except ApiFailure as e:
        return f"false (error: Server_error({e.code}, [ {'; '.join(e.params)} ]))"


def _vm_data_source(prefix: str, suffix: str):
    def get(view: RecordView) -> str:
        try:
            name = f"{prefix}_{view.rec['device']}_{suffix}"
            return "%.3f" % (float(view.call("VM.query_data_source", view.rec["VM"], name)) / 1024.0)
        except (ApiFailure, KeyError, ValueError):
            return "<unknown>"
    return get


def _pif_data_source(suffix: str):
    def get(view: RecordView) -> str:
        try:
            name = f"pif_{view.rec['device']}_{suffix}"
            return "%.3f" % (float(view.call("host.query_data_source", view.rec["host"], name)) / 1024.0)
        except (ApiFailure, KeyError, ValueError):
            return "<unknown>"
    return get


def _pif_speed(view: RecordView) -> str:
    m = view.related("metrics")
    return NID if m is None else f"{int(m.get('speed', 0))} Mbit/s"


def _pif_duplex(view: RecordView) -> str:
    m = view.related("metrics")
    if m is None:
        return NID
    if m.get("duplex"):
        return "full"
    return "half" if m.get("carrier") else "unknown"


def _hosts(view: RecordView) -> list[dict]:
    refs = view.call("host.get_all")
    return [r for r in (view.ctx.record("host", h) for h in refs) if r]


def _pool_https_only(view: RecordView) -> str:
    return "true" if all(h.get("https_only") for h in _hosts(view)) else "false"


def _consistent(wire: str, render):
    def get(view: RecordView) -> str:
        values = {render(h.get(wire)) for h in _hosts(view)}
        return values.pop() if len(values) == 1 else "<inconsistent>"
    return get


def _hosts_have(wire: str):
    def available(view: RecordView) -> bool:
        hosts = _hosts(view)
        return bool(hosts) and wire in hosts[0]
    return available


def _bool_text(v) -> str:
    return "true" if v else "false"


def _pool_setter(method: str, parse):
    return lambda view, text: view.call(f"pool.{method}", view.ref, parse(text))


# -- the records xe lays out -------------------------------------------------------------

VM = [
    F("uuid", "uuid"),
    F("name-label", "name_label", "rw"),
    F("name-description", "name_description", "rw"),
    F("user-version", "user_version", "rw"),
    F("is-a-template", "is_a_template", "rw"),
    F("is-default-template", "is_default_template", "rw"),
    F("is-a-snapshot", "is_a_snapshot"),
    F("snapshot-of", "snapshot_of"),
    F("snapshots", "snapshots"),
    F("snapshot-time", "snapshot_time"),
    F("transportable-snapshot-id", "transportable_snapshot_id", hidden=True),
    F("snapshot-info", "snapshot_info"),
    F("parent", "parent"),
    F("children", "children"),
    F("is-control-domain", "is_control_domain"),
    F("power-state", "power_state", enum=lower_first),
    F("memory-actual", "metrics.memory_actual"),
    F("memory-target", get=_vm_memory_target, expensive=True, needs=()),
    F("memory-overhead", "memory_overhead"),
    F("memory-static-max", "memory_static_max", "rw", parser="bytes"),
    F("memory-dynamic-max", "memory_dynamic_max", "rw", parser="bytes"),
    F("memory-dynamic-min", "memory_dynamic_min", "rw", parser="bytes"),
    F("memory-static-min", "memory_static_min", "rw", parser="bytes"),
    F("suspend-VDI-uuid", "suspend_VDI", "rw"),
    F("suspend-SR-uuid", "suspend_SR", "rw"),
    F("VCPUs-params", "VCPUs_params", "mrw"),
    F("VCPUs-max", "VCPUs_max", "rw"),
    F("VCPUs-at-startup", "VCPUs_at_startup", "rw"),
    F("actions-after-shutdown", "actions_after_shutdown", "rw", enum=on_normal_exit),
    F("actions-after-softreboot", "actions_after_softreboot", "rw", enum=on_softreboot),
    F("actions-after-reboot", "actions_after_reboot", "rw", enum=on_normal_exit),
    F("actions-after-crash", "actions_after_crash", "rw", enum=on_crash),
    F("console-uuids", "consoles", "sro"),
    F("hvm", "metrics.hvm", default="false"),
    F("nomigrate", "metrics.nomigrate", default="false", hidden=True),
    F("nested-virt", "metrics.nested_virt", default="false", hidden=True),
    F("platform", "platform", "mrw"),
    F("numa-optimised", "metrics.numa_optimised", default="false"),
    F("numa-nodes", "metrics.numa_nodes", default="0"),
    F("numa-node-memory", "metrics.numa_node_memory", "mro", default="[]"),
    F("allowed-operations", "allowed_operations", "sro", enum=vm_operation),
    F("current-operations", "current_operations", "sro", enum=vm_operation),
    F("blocked-operations", "blocked_operations", "mrw", enum=vm_operation),
    F("allowed-VBD-devices", get=lambda v: "; ".join(_vm_devices("VM.get_allowed_VBD_devices")(v)),
      kind="sro", get_set=_vm_devices("VM.get_allowed_VBD_devices"), expensive=True, needs=()),
    F("allowed-VIF-devices", get=lambda v: "; ".join(_vm_devices("VM.get_allowed_VIF_devices")(v)),
      kind="sro", get_set=_vm_devices("VM.get_allowed_VIF_devices"), expensive=True, needs=()),
    F("possible-hosts", get=lambda v: "; ".join(
        v.ctx.uuid("host", h) for h in v.call("VM.get_possible_hosts", v.ref)), expensive=True,
      needs=()),
    F("domain-type", "domain_type", "rw", enum=domain_type),
    F("current-domain-type", "metrics.current_domain_type", enum=domain_type),
    F("HVM-boot-policy", "HVM_boot_policy", "rw"),
    F("HVM-boot-params", "HVM_boot_params", "mrw"),
    F("HVM-shadow-multiplier", "HVM_shadow_multiplier", "rw"),
    F("NVRAM", "NVRAM", "mrw", hidden=True),
    F("PV-kernel", "PV_kernel", "rw"),
    F("PV-ramdisk", "PV_ramdisk", "rw"),
    F("PV-args", "PV_args", "rw"),
    F("PV-legacy-args", "PV_legacy_args", "rw"),
    F("PV-bootloader", "PV_bootloader", "rw"),
    F("PV-bootloader-args", "PV_bootloader_args", "rw"),
    F("last-boot-CPU-flags", "last_boot_CPU_flags"),
    F("last-boot-record", "last_booted_record",
      get=lambda v: "'" + v.rec.get("last_booted_record", "") + "'", expensive=True),
    F("resident-on", "resident_on"),
    F("affinity", "affinity", "rw"),
    F("other-config", "other_config", "mrw"),
    F("dom-id", "domid"),
    F("recommendations", "recommendations"),
    F("xenstore-data", "xenstore_data", "mrw", clear=True),
    F("ha-always-run", "ha_always_run", "rw", deprecated=True),
    F("ha-restart-priority", "ha_restart_priority", "rw"),
    F("blobs", "blobs"),
    F("start-time", "metrics.start_time", default=UNKNOWN_TIME),
    F("install-time", "metrics.install_time", default=UNKNOWN_TIME),
    F("VCPUs-number", "metrics.VCPUs_number"),
    F("VCPUs-utilisation", kind="mro",
      get=lambda v: _call_or("", lambda w: "; ".join(f"{a}: {b}" for a, b in _vm_vcpus_utilisation(w)))(v),
      get_map=lambda v: _call_or([], _vm_vcpus_utilisation)(v), expensive=True, needs=()),
    F("os-version", "guest_metrics.os_version", "mro"),
    F("netbios-name", "guest_metrics.netbios_name", "mro"),
    F("PV-drivers-version", "guest_metrics.PV_drivers_version", "mro"),
    F("PV-drivers-up-to-date", "guest_metrics.PV_drivers_up_to_date", deprecated=True),
    F("memory", "guest_metrics.memory", "mro"),
    F("disks", "guest_metrics.disks", "mro"),
    F("VBDs", "VBDs", "sro"),
    F("networks", "guest_metrics.networks", "mro"),
    F("services", "guest_metrics.services", "mro"),
    F("PV-drivers-detected", "guest_metrics.PV_drivers_detected"),
    F("other", "guest_metrics.other", "mro"),
    F("live", "guest_metrics.live"),
    F("guest-metrics-last-updated", "guest_metrics.last_updated"),
    F("can-use-hotplug-vbd", "guest_metrics.can_use_hotplug_vbd", enum=tristate),
    F("can-use-hotplug-vif", "guest_metrics.can_use_hotplug_vif", enum=tristate),
    F("cooperative", get=lambda v: _call_or("true", lambda w: _bool_text(
        w.call("VM.get_cooperative", w.ref)))(v), expensive=True, deprecated=True, needs=()),
    F("tags", "tags", "srw", sep=", "),
    F("appliance", "appliance", "rw"),
    F("groups", "groups", "rw"),
    F("secureboot-certificates-state", "secureboot_certificates_state"),
    F("snapshot-schedule", "snapshot_schedule", "rw"),
    F("is-vmss-snapshot", "is_vmss_snapshot"),
    F("start-delay", "start_delay", "rw"),
    F("shutdown-delay", "shutdown_delay", "rw"),
    F("order", "order", "rw"),
    F("version", "version"),
    F("generation-id", "generation_id"),
    F("hardware-platform-version", "hardware_platform_version"),
    F("has-vendor-device", "has_vendor_device", "rw"),
    F("requires-reboot", "requires_reboot"),
    F("reference-label", "reference_label"),
    F("bios-strings", "bios_strings", "mro", set_map=True),
    F("pending-guidances", "pending_guidances"),
    F("vtpms", "VTPMs"),
    F("pending-guidances-recommended", "pending_guidances_recommended"),
    F("pending-guidances-full", "pending_guidances_full"),
]

HOST = [
    F("uuid", "uuid"),
    F("name-label", "name_label", "rw"),
    F("name-description", "name_description", "rw"),
    F("allowed-operations", "allowed_operations", "sro", enum=host_operation),
    F("current-operations", "current_operations", "sro", enum=host_operation),
    F("enabled", "enabled"),
    F("display", "display"),
    F("API-version-major", "API_version_major"),
    F("API-version-minor", "API_version_minor"),
    F("API-version-vendor", "API_version_vendor"),
    F("API-version-vendor-implementation", "API_version_vendor_implementation", "mro"),
    F("logging", "logging", "mrw"),
    F("suspend-image-sr-uuid", "suspend_image_sr", "rw"),
    F("crash-dump-sr-uuid", "crash_dump_sr", "rw"),
    F("software-version", "software_version", "mro"),
    F("capabilities", "capabilities", "sro"),
    F("other-config", "other_config", "mrw"),
    F("cpu_info", "cpu_info", "mro"),
    F("chipset-info", "chipset_info", "mro"),
    F("hostname", "hostname"),
    F("address", "address"),
    F("https-only", "https_only", "rw"),
    F("supported-bootloaders", "supported_bootloaders", "sro"),
    F("blobs", "blobs"),
    F("memory-overhead", "memory_overhead"),
    F("memory-total", "metrics.memory_total"),
    F("memory-free", "metrics.memory_free"),
    F("memory-free-computed", get=lambda v: str(int(v.call("host.compute_free_memory", v.ref))),
      expensive=True, needs=()),
    F("host-metrics-live", "metrics.live"),
    F("patches", "patches", "sro", get=lambda v: ", ".join(_host_patches(v)), get_set=_host_patches,
      deprecated=True),
    F("updates", "updates", "sro", get=lambda v: ", ".join(_host_updates(v)), get_set=_host_updates),
    F("ha-statefiles", "ha_statefiles", get=_statefiles),
    F("ha-network-peers", "ha_network_peers"),
    F("external-auth-type", "external_auth_type"),
    F("external-auth-service-name", "external_auth_service_name"),
    F("external-auth-configuration", "external_auth_configuration", "mro"),
    F("edition", "edition"),
    F("license-server", "license_server", "mro"),
    F("power-on-mode", "power_on_mode"),
    F("power-on-config", "power_on_config", "mro"),
    F("local-cache-sr", "local_cache_sr"),
    F("tags", "tags", "srw", sep=", "),
    F("ssl-legacy", "ssl_legacy", "rw"),
    F("guest_VCPUs_params", "guest_VCPUs_params", "mrw"),
    F("virtual-hardware-platform-versions", "virtual_hardware_platform_versions", "sro"),
    F("control-domain-uuid", "control_domain"),
    F("resident-vms", "resident_VMs", "sro"),
    F("updates-requiring-reboot", "updates_requiring_reboot", "sro"),
    F("features", "features", "sro"),
    F("iscsi_iqn", "iscsi_iqn", "rw"),
    F("multipathing", "multipathing", "rw"),
    F("uefi-certificates", "uefi_certificates", "rw", hidden=True),
    F("numa-affinity-policy", "numa_affinity_policy", "rw"),
    F("pending-guidances", "pending_guidances"),
    F("tls-verification-enabled", "tls_verification_enabled"),
    F("last-software-update", "last_software_update"),
    F("latest-synced-updates-applied", "latest_synced_updates_applied"),
    F("pending-guidances-recommended", "pending_guidances_recommended"),
    F("pending-guidances-full", "pending_guidances_full"),
    F("last-update-hash", "last_update_hash"),
    F("ssh-enabled", "ssh_enabled"),
    F("ssh-enabled-timeout", "ssh_enabled_timeout", "rw"),
    F("ssh-expiry", "ssh_expiry"),
    F("console-idle-timeout", "console_idle_timeout", "rw"),
    F("ssh-auto-mode", "ssh_auto_mode", "rw"),
    F("max-cstate", "max_cstate", "rw"),
    F("secure-boot", "secure_boot"),
    F("ntp-mode", "ntp_mode", "rw"),
    F("ntp-custom-servers", "ntp_custom_servers", "sro", sep=", ", settable=True),
    F("timezone", "timezone", "rw"),
]

POOL = [
    F("uuid", "uuid"),
    F("name-label", "name_label", "rw"),
    F("name-description", "name_description", "rw"),
    F("master", "master"),
    F("default-SR", "default_SR", "rw"),
    F("crash-dump-SR", "crash_dump_SR", "rw"),
    F("suspend-image-SR", "suspend_image_SR", "rw"),
    F("supported-sr-types", get=lambda v: "; ".join(v.call("SR.get_supported_types")),
      expensive=True, needs=()),
    F("other-config", "other_config", "mrw"),
    F("allowed-operations", "allowed_operations", "sro"),
    F("current-operations", "current_operations", "sro"),
    F("ha-enabled", "ha_enabled"),
    F("ha-configuration", "ha_configuration"),
    F("ha-statefiles", "ha_statefiles", get=_statefiles),
    F("ha-host-failures-to-tolerate", "ha_host_failures_to_tolerate", "rw"),
    F("ha-plan-exists-for", "ha_plan_exists_for"),
    F("ha-allow-overcommit", "ha_allow_overcommit", "rw"),
    F("ha-overcommitted", "ha_overcommitted"),
    F("ha-reboot-vm-on-internal-shutdown", "ha_reboot_vm_on_internal_shutdown", "rw"),
    F("blobs", "blobs"),
    F("wlb-url", "wlb_url"),
    F("wlb-username", "wlb_username"),
    F("wlb-enabled", "wlb_enabled", "rw"),
    F("wlb-verify-cert", "wlb_verify_cert", "rw"),
    F("igmp-snooping-enabled", "igmp_snooping_enabled", "rw"),
    F("gui-config", "gui_config", "mrw"),
    F("health-check-config", "health_check_config", "mrw"),
    F("vswitch-controller", "vswitch_controller",
      get=lambda v: v.rec.get("vswitch_controller") or "<not set>", hidden=True),
    F("restrictions", "restrictions"),
    F("tags", "tags", "srw", sep=", "),
    F("license-state", get=lambda v: "; ".join(
        f"{k}: {val}" for k, val in v.call("pool.get_license_state", v.ref).items()), needs=()),
    F("ha-cluster-stack", "ha_cluster_stack"),
    F("guest-agent-config", "guest_agent_config", "mrw"),
    F("cpu_info", "cpu_info", "mro"),
    F("policy-no-vendor-device", "policy_no_vendor_device", "rw"),
    F("live-patching-disabled", "live_patching_disabled", "rw"),
    F("uefi-certificates", "uefi_certificates", "rw", hidden=True),
    F("custom-uefi-certificates", "custom_uefi_certificates", "rw", hidden=True),
    F("tls-verification-enabled", "tls_verification_enabled"),
    F("client-certificate-auth-enabled", "client_certificate_auth_enabled"),
    F("client-certificate-auth-name", "client_certificate_auth_name"),
    F("repositories", "repositories", "srw", settable=True),
    F("repository-proxy-url", "repository_proxy_url"),
    F("repository-proxy-username", "repository_proxy_username"),
    F("https-only", get=_pool_https_only, set=_pool_setter("set_https_only", lambda t: t == "true"),
      needs=()),
    F("migration-compression", "migration_compression", "rw"),
    F("coordinator-bias", "coordinator_bias", "rw"),
    F("telemetry-frequency", "telemetry_frequency"),
    F("telemetry-next-collection", "telemetry_next_collection"),
    F("last-update-sync", "last_update_sync"),
    F("update-sync-frequency", "update_sync_frequency"),
    F("update-sync-day", "update_sync_day"),
    F("update-sync-enabled", "update_sync_enabled"),
    F("auto-update-vm-secureboot-certificates", "auto_update_vm_secureboot_certificates", "rw"),
    F("recommendations", "recommendations", "mro"),
    F("ext-auth-cache-enabled", "ext_auth_cache_enabled", "rw"),
    F("ext-auth-cache-size", "ext_auth_cache_size", "rw"),
    F("ext-auth-cache-expiry", "ext_auth_cache_expiry", "rw"),
    F("license-server", "license_server", "mrw"),
    F("ssh-enabled", get=_consistent("ssh_enabled", _bool_text), needs=()),
    F("ssh-enabled-timeout", get=_consistent("ssh_enabled_timeout", lambda x: str(int(x or 0))),
      set=_pool_setter("set_ssh_enabled_timeout", lambda t: parse_int("ssh-enabled-timeout", t)),
      needs=()),
    F("ssh-expiry", get=_consistent("ssh_expiry", str), needs=()),
    F("console-idle-timeout", get=_consistent("console_idle_timeout", lambda x: str(int(x or 0))),
      set=_pool_setter("set_console_idle_timeout", lambda t: parse_int("console-idle-timeout", t)),
      needs=()),
    F("ssh-auto-mode", get=_consistent("ssh_auto_mode", _bool_text),
      set=_pool_setter("set_ssh_auto_mode", lambda t: parse_bool("ssh-auto-mode", t)), needs=()),
    F("limit-console-sessions", "limit_console_sessions", "rw"),
    F("vm-console-idle-timeout", "vm_console_idle_timeout", "rw"),
]
# The pool's ssh-* fields summarise the hosts' fields: shown when hosts have them.
_POOL_HOST_FIELDS = {"ssh-enabled": "ssh_enabled", "ssh-enabled-timeout": "ssh_enabled_timeout",
                     "ssh-expiry": "ssh_expiry", "console-idle-timeout": "console_idle_timeout",
                     "ssh-auto-mode": "ssh_auto_mode", "https-only": "https_only"}

SR = [
    F("uuid", "uuid"),
    F("name-label", "name_label", "rw"),
    F("name-description", "name_description", "rw"),
    F("host", "PBDs", get=_sr_host),
    F("allowed-operations", "allowed_operations", "sro", enum=sr_operation),
    F("current-operations", "current_operations", "sro", enum=sr_operation),
    F("VDIs", "VDIs", "sro"),
    F("PBDs", "PBDs", "sro"),
    F("virtual-allocation", "virtual_allocation"),
    F("physical-utilisation", "physical_utilisation"),
    F("physical-size", "physical_size"),
    F("type", "type"),
    F("content-type", "content_type"),
    F("shared", "shared", "rw"),
    F("introduced-by", "introduced_by"),
    F("is-tools-sr", "is_tools_sr"),
    F("other-config", "other_config", "mrw"),
    F("sm-config", "sm_config", "mro"),
    F("blobs", "blobs"),
    F("local-cache-enabled", "local_cache_enabled"),
    F("tags", "tags", "srw", sep=", "),
    F("clustered", "clustered"),
]

VDI = [
    F("uuid", "uuid"),
    F("name-label", "name_label", "rw"),
    F("name-description", "name_description", "rw"),
    F("is-a-snapshot", "is_a_snapshot"),
    F("snapshot-of", "snapshot_of"),
    F("snapshots", "snapshots"),
    F("snapshot-time", "snapshot_time"),
    F("allowed-operations", "allowed_operations", "sro"),
    F("current-operations", "current_operations", "sro"),
    F("sr-uuid", "SR"),
    F("sr-name-label", "SR", get=name_of("SR", "SR")),
    F("vbd-uuids", "VBDs", "sro"),
    F("crashdump-uuids", "crash_dumps", "sro"),
    F("virtual-size", "virtual_size"),
    F("physical-utilisation", "physical_utilisation"),
    F("location", "location"),
    F("type", "type", enum=vdi_type),
    F("sharable", "sharable"),
    F("read-only", "read_only"),
    F("storage-lock", "storage_lock"),
    F("managed", "managed"),
    F("parent", "parent", deprecated=True),
    F("missing", "missing"),
    F("is-tools-iso", "is_tools_iso"),
    F("other-config", "other_config", "mrw"),
    F("xenstore-data", "xenstore_data", "mro", clear=True),
    F("sm-config", "sm_config", "mro"),
    F("on-boot", "on_boot", "rw"),
    F("allow-caching", "allow_caching", "rw"),
    F("metadata-latest", "metadata_latest"),
    F("metadata-of-pool", "metadata_of_pool", get=_vdi_metadata_of_pool),
    F("tags", "tags", "srw", sep=", "),
    F("cbt-enabled", "cbt_enabled"),
]

VBD = [
    F("uuid", "uuid"),
    F("vm-uuid", "VM"),
    F("vm-name-label", "VM", get=name_of("VM", "VM")),
    F("vdi-uuid", "VDI"),
    F("vdi-name-label", "VDI", get=_vbd_vdi_name),
    F("allowed-operations", "allowed_operations", "sro"),
    F("current-operations", "current_operations", "sro"),
    F("empty", "empty"),
    F("device", "device"),
    F("userdevice", "userdevice", "rw"),
    F("bootable", "bootable", "rw"),
    F("mode", "mode", "rw"),
    F("type", "type", "rw"),
    F("unpluggable", "unpluggable", "rw"),
    F("currently-attached", "currently_attached"),
    F("attachable", get=_vbd_attachable, expensive=True, needs=()),
    F("storage-lock", "storage_lock"),
    F("status-code", "status_code"),
    F("status-detail", "status_detail"),
    F("qos_algorithm_type", "qos_algorithm_type", "rw"),
    F("qos_algorithm_params", "qos_algorithm_params", "mrw"),
    F("qos_supported_algorithms", "qos_supported_algorithms", "sro"),
    F("other-config", "other_config", "mrw"),
    F("io_read_kbs", "device", get=_vm_data_source("vbd", "read"), expensive=True),
    F("io_write_kbs", "device", get=_vm_data_source("vbd", "write"), expensive=True),
]

VIF = [
    F("uuid", "uuid"),
    F("vm-uuid", "VM"),
    F("vm-name-label", "VM", get=name_of("VM", "VM")),
    F("allowed-operations", "allowed_operations", "sro"),
    F("current-operations", "current_operations", "sro"),
    F("device", "device"),
    F("MAC", "MAC", case_insensitive=True),
    F("MAC-autogenerated", "MAC_autogenerated"),
    F("MTU", "MTU"),
    F("currently-attached", "currently_attached"),
    F("qos_algorithm_type", "qos_algorithm_type", "rw"),
    F("qos_algorithm_params", "qos_algorithm_params", "mrw"),
    F("qos_supported_algorithms", "qos_supported_algorithms", "sro"),
    F("other-config", "other_config", "mrw"),
    F("network-uuid", "network"),
    F("network-name-label", "network", get=name_of("network", "network")),
    F("io_read_kbs", "device", get=_vm_data_source("vif", "rx"), expensive=True),
    F("io_write_kbs", "device", get=_vm_data_source("vif", "tx"), expensive=True),
    F("locking-mode", "locking_mode", "rw"),
    F("ipv4-allowed", "ipv4_allowed", "srw", settable=True),
    F("ipv6-allowed", "ipv6_allowed", "srw", settable=True),
    F("ipv4-configuration-mode", "ipv4_configuration_mode"),
    F("ipv4-addresses", "ipv4_addresses"),
    F("ipv4-gateway", "ipv4_gateway"),
    F("ipv6-configuration-mode", "ipv6_configuration_mode"),
    F("ipv6-addresses", "ipv6_addresses"),
    F("ipv6-gateway", "ipv6_gateway"),
    F("trunks", "trunks", "srw", settable=True),
]

NETWORK = [
    F("uuid", "uuid"),
    F("name-label", "name_label", "rw"),
    F("name-description", "name_description", "rw"),
    F("VIF-uuids", "VIFs", "sro"),
    F("PIF-uuids", "PIFs", "sro"),
    F("MTU", "MTU", "rw"),
    F("bridge", "bridge"),
    F("managed", "managed"),
    F("other-config", "other_config", "mrw"),
    F("blobs", "blobs"),
    F("tags", "tags", "srw", sep=", "),
    F("default-locking-mode", "default_locking_mode", "rw"),
    F("purpose", "purpose", "srw", sep=", "),
]

PIF = [
    F("uuid", "uuid"),
    F("device", "device"),
    F("MAC", "MAC", case_insensitive=True),
    F("physical", "physical"),
    F("managed", "managed"),
    F("currently-attached", "currently_attached"),
    F("MTU", "MTU"),
    F("VLAN", "VLAN"),
    F("vlan-master-of", "VLAN_master_of"),
    F("vlan-slave-of", "VLAN_slave_of"),
    F("bond-master-of", "bond_master_of"),
    F("bond-slave-of", "bond_slave_of"),
    F("sriov-physical-PIF-of", "sriov_physical_PIF_of"),
    F("sriov-logical-PIF-of", "sriov_logical_PIF_of"),
    F("tunnel-access-PIF-of", "tunnel_access_PIF_of"),
    F("tunnel-transport-PIF-of", "tunnel_transport_PIF_of"),
    F("management", "management"),
    F("network-uuid", "network"),
    F("network-name-label", "network", get=name_of("network", "network")),
    F("host-uuid", "host"),
    F("host-name-label", "host", get=name_of("host", "host")),
    F("IP-configuration-mode", "ip_configuration_mode"),
    F("IP", "IP"),
    F("netmask", "netmask"),
    F("gateway", "gateway"),
    F("IPv6-configuration-mode", "ipv6_configuration_mode"),
    F("IPv6", "IPv6"),
    F("IPv6-gateway", "ipv6_gateway"),
    F("primary-address-type", "primary_address_type"),
    F("DNS", "DNS"),
    F("properties", "properties", "mro",
      set_in_map=lambda v, k, val: v.call("PIF.set_property", v.ref, k, val)),
    F("capabilities", "capabilities", "sro"),
    F("io_read_kbs", "device", get=_pif_data_source("rx"), expensive=True),
    F("io_write_kbs", "device", get=_pif_data_source("tx"), expensive=True),
    F("carrier", "metrics.carrier"),
    F("vendor-id", "metrics.vendor_id"),
    F("vendor-name", "metrics.vendor_name"),
    F("device-id", "metrics.device_id"),
    F("device-name", "metrics.device_name"),
    F("speed", "metrics.speed", get=_pif_speed),
    F("duplex", "metrics.duplex", get=_pif_duplex),
    F("disallow-unplug", "disallow_unplug", "rw"),
    F("pci-bus-path", "metrics.pci_bus_path"),
    F("other-config", "other_config", "mrw"),
    F("igmp-snooping-status", "igmp_snooping_status"),
]

PBD = [
    F("uuid", "uuid"),
    F("host", "host", deprecated=True),
    F("host-uuid", "host"),
    F("host-name-label", "host", get=name_of("host", "host")),
    F("sr-uuid", "SR"),
    F("sr-name-label", "SR", get=name_of("SR", "SR")),
    F("device-config", "device_config", "mro"),
    F("currently-attached", "currently_attached"),
    F("other-config", "other_config", "mrw"),
]

TASK = [
    F("uuid", "uuid"),
    F("name-label", "name_label"),
    F("name-description", "name_description"),
    F("subtask_of", "subtask_of"),
    F("subtasks", "subtasks"),
    F("resident-on", "resident_on"),
    F("status", "status"),
    F("progress", "progress"),
    F("type", "type"),
    F("result", "result"),
    F("created", "created"),
    F("finished", "finished"),
    F("error_info", "error_info"),
    F("allowed_operations", "allowed_operations", enum=task_operation),
    F("current_operations", "current_operations", enum=task_operation),
    F("other-config", "other_config", "mrw"),
]

MESSAGE = [
    F("uuid", "uuid"),
    F("name", "name"),
    F("priority", "priority"),
    F("class", "cls"),
    F("obj-uuid", "obj_uuid"),
    F("timestamp", "timestamp"),
    F("body", "body"),
]


# -- the CLI classes --------------------------------------------------------------------


@dataclass
class CliClass:
    name: str  # as in xe: vm, template, sr, …
    api: str  # the API class
    list_params: list[str]  # default columns of <name>-list
    filters: list[tuple[str, str]] = field(default_factory=list)  # implicit filters of -list
    layout: list[F] | None = None  # None: fields from the data model

    @cached_property
    def specs(self) -> list[FieldSpec]:
        specs = bind(self.api, self.layout) if self.layout is not None else from_model(self.api)
        if self.api == "pool":
            for spec in specs:
                if spec.name in _POOL_HOST_FIELDS:
                    spec.available = _hosts_have(_POOL_HOST_FIELDS[spec.name])
        return specs

    @property
    def plural(self) -> str:
        return "patches" if self.name == "patch" else self.name + "s"

    def spec(self, name: str) -> FieldSpec | None:
        for s in self.specs:
            if s.name == name:
                return s
        return None


_XE_CLASSES = [
    ("pool", "pool", ["uuid", "name-label", "name-description", "master", "default-SR"], [], POOL),
    ("pif", "PIF", ["uuid", "device", "VLAN", "MAC", "network-uuid", "currently-attached",
                    "host-uuid"], [], PIF),
    ("bond", "Bond", ["uuid", "master", "slaves"], [], None),
    ("vlan", "VLAN", ["uuid", "tagged-PIF", "untagged-PIF", "tag"], [], None),
    ("tunnel", "tunnel", ["uuid", "transport-PIF", "access-PIF", "status"], [], None),
    ("vif", "VIF", ["uuid", "device", "vm-uuid", "network-uuid"], [], VIF),
    ("network", "network", ["uuid", "name-label", "name-description", "bridge"], [], NETWORK),
    ("console", "console", ["uuid", "vm-uuid", "vm-name-label", "protocol", "location"], [], None),
    ("vm", "VM", ["name-label", "uuid", "power-state"], [("is-a-template", "false")], VM),
    ("template", "VM", ["name-label", "name-description", "uuid"],
     [("is-a-template", "true"), ("is-a-snapshot", "false")], VM),
    ("snapshot", "VM", ["name-label", "name-description", "uuid", "snapshot_of", "snapshot_time",
                        "is-vmss-snapshot"], [("is-a-snapshot", "true")], VM),
    ("host", "host", ["uuid", "name-label", "name-description"], [], HOST),
    ("host-cpu", "host_cpu", ["uuid", "number", "vendor", "speed", "utilisation"], [], None),
    ("host-crashdump", "host_crashdump", ["uuid", "host", "timestamp", "size"], [], None),
    ("patch", "pool_patch", ["uuid", "name-label", "name-description", "size", "hosts",
                             "after-apply-guidance"], [], None),
    ("update", "pool_update", ["uuid", "name-label", "name-description", "version",
                               "installation-size", "hosts", "after-apply-guidance"], [], None),
    ("vdi", "VDI", ["uuid", "name-label", "name-description", "virtual-size", "read-only",
                    "sharable", "sr-uuid"], [], VDI),
    ("vbd", "VBD", ["uuid", "vm-uuid", "vm-name-label", "vdi-uuid", "device", "empty"], [], VBD),
    ("sr", "SR", ["uuid", "name-label", "name-description", "host", "type", "content-type"], [], SR),
    ("sm", "SM", ["uuid", "type", "name-label", "name-description", "vendor", "copyright",
                  "configuration"], [], None),
    ("pbd", "PBD", ["uuid", "host-uuid", "sr-uuid", "device-config", "currently-attached"], [], PBD),
    ("task", "task", ["uuid", "name-label", "name-description", "status", "progress"], [], TASK),
    ("subject", "subject", ["uuid", "subject-identifier", "other-config", "roles"], [], None),
    ("role", "role", ["uuid", "name", "description", "subroles"], [], None),
    ("vmss", "VMSS", ["uuid", "name-label", "name-description", "enabled", "type",
                      "retained-snapshots", "frequency", "schedule", "last-run-time", "VMs"], [], None),
    ("message", "message", [], [], MESSAGE),
    ("secret", "secret", [], [], None),
    ("appliance", "VM_appliance", [], [], None),
    ("vm-group", "VM_group", ["uuid", "name-label", "name-description", "placement", "vm-uuids"],
     [], None),
    ("pgpu", "PGPU", ["uuid", "pci-uuid", "vendor-name", "device-name", "gpu-group-uuid"], [], None),
    ("gpu-group", "GPU_group", ["uuid", "name-label", "name-description"], [], None),
    ("vgpu", "VGPU", ["uuid", "vm-uuid", "device", "gpu-group-uuid"], [], None),
    ("vgpu-type", "VGPU_type", ["uuid", "vendor-name", "model-name", "max-resolution",
                                "max-heads"], [], None),
    ("drtask", "DR_task", [], [], None),
    ("pvs-site", "PVS_site", ["uuid", "name-label", "name-description", "pvs-uuid",
                              "pvs-server-uuids"], [], None),
    ("pvs-server", "PVS_server", ["uuid", "addresses", "pvs-site-uuid"], [], None),
    ("pvs-proxy", "PVS_proxy", ["uuid", "vif-uuid", "pvs-site-uuid", "currently-attached",
                                "cache-sr-uuid"], [], None),
    ("pvs-cache-storage", "PVS_cache_storage", ["uuid", "host-uuid", "sr-uuid", "pvs-site-uuid",
                                                "size"], [], None),
    ("feature", "Feature", ["uuid", "name-label", "name-description", "enabled", "experimental",
                            "version", "host-uuid"], [], None),
    ("sdn-controller", "SDN_controller", ["uuid", "protocol", "address", "port"], [], None),
    ("pusb", "PUSB", ["uuid", "path", "product-id", "product-desc", "vendor-id", "vendor-desc",
                      "serial", "version", "description", "speed"], [], None),
    ("usb-group", "USB_group", ["uuid", "name-label", "name-description"], [], None),
    ("vusb", "VUSB", ["uuid", "vm-uuid", "usb-group-uuid"], [], None),
    ("network-sriov", "network_sriov", ["uuid", "physical-pif", "logical-pif", "requires-reboot",
                                        "configuration-mode"], [], None),
    ("cluster", "Cluster", ["uuid", "cluster-hosts", "cluster-token", "cluster-stack",
                            "allowed-operations", "current-operations", "pool-auto-join",
                            "cluster-config", "other-config"], [], None),
    ("cluster-host", "Cluster_host", ["uuid", "cluster", "pif", "host", "enabled",
                                      "allowed-operations", "current-operations", "other-config"],
     [], None),
    ("certificate", "Certificate", ["uuid", "type", "name", "host", "not-before", "not-after",
                                    "fingerprint", "purpose"], [], None),
    ("repository", "Repository", ["uuid", "name-label", "name-description", "binary-url",
                                  "source-url", "update", "hash", "up-to-date", "gpgkey-path",
                                  "origin"], [], None),
    ("hostdriver-variant", "Driver_variant", ["uuid", "driver-name", "name", "version", "priority",
                                              "host-uuid", "driver-uuid", "active", "selected",
                                              "status", "hw-present"], [], None),
    ("hostdriver", "Host_driver", ["uuid", "name", "host-uuid", "active-variant",
                                   "selected-variant", "variants", "variants-uuid"], [], None),
    ("vtpm", "VTPM", ["uuid", "vm-uuid", "profile"], [], None),
    ("observer", "Observer", ["uuid", "name-label", "name-description", "host-uuids", "endpoints",
                              "enabled"], [], None),
    ("pci", "PCI", ["uuid", "vendor-name", "device-name", "pci-id"], [], None),
    ("caller", "Caller", ["uuid", "name-label", "name-description", "user-agent", "client-ip",
                          "last-access", "groups", "rate-limit"], [], None),
    ("rate-limit", "Rate_limit", ["uuid", "name-label", "callers", "burst-size", "fill-rate"], [],
     None),
]


def _build() -> dict[str, CliClass]:
    m = model()
    out: dict[str, CliClass] = {}
    covered = set()
    for name, api, cols, filters, layout in _XE_CLASSES:
        if api in m.classes:
            out[name] = CliClass(name, api, cols, list(filters), layout)
            covered.add(api)
    for c in m.classes.values():
        if c.name in covered or "get_all_records_where" not in c.messages:
            continue
        if "uuid" not in c.fields or "get_by_uuid" not in c.messages:
            continue
        name = c.name.lower().replace("_", "-")
        if name in out:
            continue
        cols = ["uuid"] + [n for n in ("name-label", "name-description") if n.replace("-", "_") in c.fields]
        out[name] = CliClass(name, c.name, cols, [], None)
    return out


CLASSES: dict[str, CliClass] = _build()


def cli_class(name: str) -> CliClass:
    return CLASSES[name]


def for_api(api: str) -> CliClass:
    """The CLI class showing objects of an API class (``vm`` for VM)."""
    for c in CLASSES.values():
        if c.api == api and not c.filters:
            return c
    for c in CLASSES.values():
        if c.api == api:
            return c
    raise KeyError(api)


__all__ = ["CliClass", "CLASSES", "cli_class", "for_api", "EXPENSIVE"]
