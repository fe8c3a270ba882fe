"""Failures and how xe prints them.

xe has three kinds of failure, all with exit status 1:

- its own checks (``Error: No matching VMs found``), :class:`CliFailure`;
- usage mistakes, printed as ``<what>: <detail>`` and ``For usage run: 'xe
  help'``, :class:`ParamError` (missing parameter, unknown command, …);
- errors from the server, :class:`ApiFailure`: a readable message, then one
  ``name: value`` line per parameter, named by the error's definition in the
  data model, with references shown as ``uuid (name-label)``.  We add the code
  itself on a first ``Error code:`` line.  Codes the model does not know print
  as xe prints them: ``Error code:`` and ``Error parameters:``.

The readable messages are this project's own words.
"""

from __future__ import annotations

import re


class XeError(Exception):
    """Anything that ends a command with a non-zero exit status."""

    exit_code = 1

    def lines(self, resolve=None) -> list[str]:  # pragma: no cover - overridden
        return [str(self)]


class CliFailure(XeError):
    """A check of the client's own; xe prints ``Error: <text>``."""

    def __init__(self, text: str):
        super().__init__(text)
        self.text = text

    def lines(self, resolve=None) -> list[str]:
        return [f"Error: {self.text}"]


class ParamError(XeError):
    """A usage mistake: ``<kind>: <detail>`` then a pointer to ``xe help``."""

    def __init__(self, kind: str, detail: str):
        super().__init__(f"{kind}: {detail}")
        self.kind, self.detail = kind, detail

    def lines(self, resolve=None) -> list[str]:
        first = f"{self.kind}: {self.detail}" if self.kind else self.detail
        return [first, "For usage run: 'xe help'"]


class MultipleFailure(XeError):
    """Some of the objects selected with ``--multiple`` failed (printed on stdout)."""

    def __init__(self, failures: list[tuple[str, str]]):
        super().__init__(failures)
        self.failures = failures


class ExitWithError(XeError):
    def __init__(self, code: int = 1, text: str = ""):
        super().__init__(text)
        self.exit_code = code
        self.text = text

    def lines(self, resolve=None) -> list[str]:
        return [self.text] if self.text else []


class ConnectionFailure(XeError):
    """The server could not be reached or did not answer as a XenAPI server."""

    def __init__(self, text: str):
        super().__init__(text)
        self.text = text

    def lines(self, resolve=None) -> list[str]:
        return [self.text]


class ApiFailure(XeError):
    """A XenAPI error: its code and string parameters."""

    def __init__(self, code: str, params: list[str] | tuple = ()):
        self.code = str(code)
        self.params = [str(p) for p in params]
        super().__init__(self.code, self.params)

    def lines(self, resolve=None) -> list[str]:
        return format_api_error(self.code, self.params, resolve)


# -- server errors --------------------------------------------------------------------

MESSAGES = {
    "HANDLE_INVALID": "The object you referred to does not exist (any more).",
    "UUID_INVALID": "There is no object of this type with the uuid you gave.",
    "SESSION_AUTHENTICATION_FAILED": "The user name or password was not accepted.",
    "SESSION_INVALID": "The session has ended or was never valid.",
    "PERMISSION_DENIED": "You are not allowed to do this.",
    "RBAC_PERMISSION_DENIED": "Your role does not allow this operation.",
    "INTERNAL_ERROR": "The server failed unexpectedly.",
    "NOT_IMPLEMENTED": "The server does not implement this call.",
    "MESSAGE_METHOD_UNKNOWN": "The server does not know this call.",
    "MESSAGE_PARAMETER_COUNT_MISMATCH": "The call was made with the wrong number of parameters.",
    "MESSAGE_REMOVED": "This call has been removed from the API.",
    "FIELD_TYPE_ERROR": "A value has the wrong type for its field.",
    "INVALID_VALUE": "A value is not valid for its field.",
    "VALUE_NOT_SUPPORTED": "A value is valid in general but not supported here.",
    "MAP_DUPLICATE_KEY": "The key is already in the map.",
    "OPERATION_NOT_ALLOWED": "The operation is not allowed.",
    "OPERATION_BLOCKED": "The operation has been blocked on this object.",
    "OTHER_OPERATION_IN_PROGRESS": "Another operation is in progress on this object; try again when it has finished.",
    "TASK_CANCELLED": "The task was cancelled.",
    "CANNOT_CONTACT_HOST": "A host needed for the operation cannot be reached.",
    "HOST_IS_SLAVE": "This host is a pool member; send the command to the pool master.",
    "HOST_OFFLINE": "The host is offline.",
    "HOST_DISABLED": "The host is disabled.",
    "HOST_NOT_ENOUGH_FREE_MEMORY": "The host does not have enough free memory for the VM.",
    "HOST_HAS_RESIDENT_VMS": "VMs are still running on the host.",
    "HOST_CANNOT_DESTROY_SELF": "A host cannot remove itself.",
    "NO_HOSTS_AVAILABLE": "No host can run the VM.",
    "VM_BAD_POWER_STATE": "The VM is not in the power state the operation needs.",
    "VM_IS_TEMPLATE": "The operation is not valid for a template.",
    "VM_IS_SNAPSHOT": "The operation is not valid for a snapshot.",
    "VM_NOT_RESIDENT_HERE": "The VM is not running on this host.",
    "VM_MISSING_PV_DRIVERS": "The VM has no PV drivers, which the operation needs.",
    "VM_REQUIRES_SR": "The VM needs a storage repository that is not available.",
    "VM_REQUIRES_NETWORK": "The VM needs a network that is not available.",
    "VM_REQUIRES_VDI": "The VM needs a disk that is not available.",
    "VM_HVM_REQUIRED": "The VM must be an HVM guest for this operation.",
    "VM_NO_EMPTY_CD_VBD": "The VM has no empty CD drive.",
    "VM_CANNOT_DELETE_DEFAULT_TEMPLATE": "Default templates cannot be deleted.",
    "VM_DUPLICATE_VBD_DEVICE": "Two disks of the VM use the same device.",
    "VM_SHUTDOWN_TIMEOUT": "The VM did not shut down in time.",
    "VM_FAILED_SHUTDOWN_ACKNOWLEDGMENT": "The VM did not acknowledge the shutdown request.",
    "VM_HAS_PCI_ATTACHED": "The VM has PCI devices attached.",
    "VM_HOST_INCOMPATIBLE_VERSION": "The destination host runs an incompatible version.",
    "VM_MIGRATE_FAILED": "The migration failed.",
    "VM_TOO_MANY_VCPUS": "The VM has more vCPUs than allowed.",
    "VM_MEMORY_SIZE_TOO_LOW": "The VM's memory is too small.",
    "VM_CHECKPOINT_SUSPEND_FAILED": "Suspending the VM for a checkpoint failed.",
    "MEMORY_CONSTRAINT_VIOLATION": "The memory settings break the required order of the memory limits.",
    "LICENCE_RESTRICTION": "The licence does not allow this.",
    "LICENSE_RESTRICTION": "The licence does not allow this.",
    "SR_BACKEND_FAILURE": "The storage backend reported a failure.",
    "SR_UNKNOWN_DRIVER": "The storage repository type is not known.",
    "SR_HAS_PBD": "The storage repository still has PBDs; unplug and remove them first.",
    "SR_HAS_NO_PBDS": "The storage repository has no PBDs.",
    "SR_NOT_EMPTY": "The storage repository still contains disks.",
    "SR_FULL": "The storage repository is full.",
    "SR_NOT_ATTACHED": "The storage repository is not attached.",
    "SR_IS_CACHE_SR": "The storage repository is used as a cache.",
    "SR_OPERATION_NOT_SUPPORTED": "The storage repository does not support this operation.",
    "SR_REQUIRES_UPGRADE": "The storage repository needs an upgrade.",
    "SR_ATTACH_FAILED": "Attaching the storage repository failed.",
    "SR_UUID_EXISTS": "A storage repository with this uuid already exists.",
    "PBD_EXISTS": "A PBD for this host and storage repository already exists.",
    "VDI_IN_USE": "The disk is in use.",
    "VDI_IS_A_PHYSICAL_DEVICE": "The disk is a physical device.",
    "VDI_MISSING": "The disk is missing from the storage repository.",
    "VDI_READ_ONLY": "The disk is read-only.",
    "VDI_TOO_SMALL": "The disk is too small.",
    "VDI_NOT_AVAILABLE": "The disk is not available.",
    "VDI_LOCATION_MISSING": "No disk has this location.",
    "VDI_IS_NOT_ISO": "The disk is not an ISO image.",
    "VDI_INCOMPATIBLE_TYPE": "The disk type is not compatible with this operation.",
    "VBD_NOT_EMPTY": "The drive is not empty.",
    "VBD_IS_EMPTY": "The drive is empty.",
    "VBD_NOT_REMOVABLE_MEDIA": "The drive does not take removable media.",
    "VBD_NOT_UNPLUGGABLE": "The drive cannot be unplugged.",
    "VBD_CDS_MUST_BE_READONLY": "CD drives must be read-only.",
    "DEVICE_ALREADY_ATTACHED": "The device is already attached.",
    "DEVICE_ALREADY_DETACHED": "The device is already detached.",
    "DEVICE_ALREADY_EXISTS": "A device with this number already exists.",
    "DEVICE_DETACH_REJECTED": "The guest refused to release the device.",
    "DEVICE_DETACH_TIMEOUT": "The device was not released in time.",
    "DEVICE_NOT_ATTACHED": "The device is not attached.",
    "INVALID_DEVICE": "The device name is not valid.",
    "NETWORK_ALREADY_CONNECTED": "The network is already connected.",
    "NETWORK_CONTAINS_PIF": "The network still has physical interfaces.",
    "NETWORK_CONTAINS_VIF": "The network still has virtual interfaces.",
    "NETWORK_INCOMPATIBLE_PURPOSES": "The network purposes are incompatible.",
    "PIF_IS_PHYSICAL": "The interface is a physical one.",
    "MAC_INVALID": "The MAC address is not valid.",
    "POOL_JOINING_HOST_CANNOT_CONTAIN_SHARED_SRS": "A host joining a pool cannot have shared storage.",
    "POOL_JOINING_HOST_MUST_HAVE_SAME_PRODUCT_VERSION": "A host joining a pool must run the same version.",
    "POOL_JOINING_HOST_CANNOT_BE_MASTER_OF_OTHER_HOSTS": "A host joining a pool cannot be the master of other hosts.",
    "POOL_JOINING_HOST_CANNOT_HAVE_RUNNING_VMS": "A host joining a pool cannot have running VMs.",
    "JOINING_HOST_CANNOT_BE_MASTER_OF_OTHER_HOSTS": "A host joining a pool cannot be the master of other hosts.",
    "JOINING_HOST_CANNOT_CONTAIN_SHARED_SRS": "A host joining a pool cannot have shared storage.",
    "JOINING_HOST_CANNOT_HAVE_RUNNING_VMS": "A host joining a pool cannot have running VMs.",
    "JOINING_HOST_CONNECTION_FAILED": "The host could not connect to the pool master.",
    "JOINING_HOST_SERVICE_FAILED": "A service on the joining host failed.",
    "HOSTS_NOT_HOMOGENEOUS": "The hosts are not similar enough to be in one pool.",
    "HOST_CANNOT_ATTACH_NETWORK": "The host cannot attach the network.",
    "HOST_NOT_LIVE": "The host is not live.",
    "HOST_UNKNOWN_TO_MASTER": "The pool master does not know this host.",
    "POOL_AUTH_ALREADY_ENABLED": "External authentication is already enabled.",
    "HA_IS_ENABLED": "High availability is enabled; disable it first.",
    "EVENTS_LOST": "Some events were lost.",
    "EVENT_FROM_TOKEN_PARSE_FAILURE": "The event token could not be read.",
    "TOO_MANY_PENDING_TASKS": "The server has too many tasks in progress.",
    "TOO_BUSY": "The server is too busy; try again later.",
    "CANNOT_DESTROY_SYSTEM_NETWORK": "System networks cannot be removed.",
    "DEFAULT_SR_NOT_FOUND": "The pool has no default storage repository.",
    "OBJECT_NOLONGER_EXISTS": "The object no longer exists.",
}

# Words kept upper-case when a message is made from an error code.
_ACRONYMS = {
    "VM", "VMS", "VDI", "VDIS", "VBD", "VBDS", "VIF", "VIFS", "SR", "SRS", "PBD", "PBDS", "PIF",
    "PIFS", "HA", "CPU", "CPUS", "ID", "IP", "MAC", "MTU", "VLAN", "PCI", "GPU", "VGPU", "PGPU",
    "USB", "VUSB", "PUSB", "SSL", "TLS", "SSH", "UEFI", "NVRAM", "CBT", "SM", "VTPM", "PVS",
    "WLB", "DR", "SDN", "RBAC", "API", "URL", "ISO", "HVM", "PV", "UUID", "XML", "RPC", "NBD",
    "VMSS", "CA", "CRL", "LDAP", "AD", "DNS", "NTP", "IQN", "LUN", "SRIOV", "VF",
}


def humanise(code: str) -> str:
    """A readable sentence made from an error code, for codes without a message."""
    words = [w if w in _ACRONYMS else w.lower() for w in code.split("_") if w]
    if not words:
        return code
    first = words[0]
    words[0] = first if first in _ACRONYMS else first.capitalize()
    return " ".join(words) + "."


def error_param_names(code: str) -> list[str] | None:
    """The parameter names of an error code in the data model (None: unknown code)."""
    try:
        from xapi.idl.model import model
    except Exception:  # pragma: no cover - the model ships with the package
        return None
    return model().errors.get(code)


def format_api_error(code: str, params: list[str], resolve=None) -> list[str]:
    """xe's layout for a server error; ``resolve(name, value)`` shows references."""
    names = error_param_names(code)
    if names is None:
        shown = [resolve(None, p) if resolve else p for p in params]
        return [f"Error code: {code}", f"Error parameters: {', '.join(shown)}"]
    lines = [f"Error code: {code}", MESSAGES.get(code) or humanise(code)]
    names = list(names) if names else []
    if code == "VMS_FAILED_TO_COOPERATE":
        names = ["VM"] * len(params)
    for i in range(max(len(names), len(params))):
        if i < len(params):
            value = params[i]
            if resolve:
                value = resolve(names[i] if i < len(names) else None, value)
        else:
            value = "<unknown>"
        lines.append(f"{names[i] if i < len(names) else '<extra>'}: {value}")
    return lines


_REF = re.compile(r"^OpaqueRef:[0-9a-fA-F-]+$")


def looks_like_ref(value: str) -> bool:
    return bool(_REF.match(value)) and value != "OpaqueRef:NULL"
