"""xenopsd's errors as the XenAPI errors xapi turns them into (``transform_xenops_exn``)."""

from __future__ import annotations

from typing import Any, Callable

from xapi.backends.xenops.client import XenopsError
from xapi.errors import ApiError


def _args(error: XenopsError) -> list[Any]:
    args = error.params
    if args is None:
        return []
    return list(args) if isinstance(args, (list, tuple)) else [args]


def to_api_error(error: XenopsError, vm_ref: str, vm_of_uuid: Callable[[str], str],
                 task_of: Callable[[str], str]) -> ApiError:
    """The XenAPI error for a xenopsd error raised while working on ``vm_ref``."""
    name, args = error.name, _args(error)

    def internal(text: str) -> ApiError:
        return ApiError("INTERNAL_ERROR", text)

    match name:
        case "Internal_error":
            return internal(f"xenopsd internal error: {args[0] if args else ''}")
        case "Already_exists":
            return internal(f"Object with type {args[0]} and id {args[1]} already exists in xenopsd")
        case "Does_not_exist":
            return internal(f"Object with type {args[0]} and id {args[1]} does not exist in xenopsd")
        case "Unimplemented":
            return ApiError("NOT_IMPLEMENTED", *args)
        case "Domain_not_built":
            return internal("domain has not been built")
        case "Invalid_vcpus":
            return internal(f"the maximum number of vcpus configured for this VM is currently: {args[0]}")
        case "Bad_power_state":
            found, expected = args
            return ApiError("VM_BAD_POWER_STATE", vm_ref, expected, found)
        case "Failed_to_acknowledge_shutdown_request":
            return ApiError("VM_FAILED_SHUTDOWN_ACKNOWLEDGMENT", vm_ref)
        case "Failed_to_acknowledge_suspend_request":
            return ApiError("VM_FAILED_SUSPEND_ACKNOWLEDGMENT", vm_ref)
        case "Failed_to_shutdown":
            return ApiError("VM_SHUTDOWN_TIMEOUT", vm_of_uuid(args[0]), float(args[1]))
        case "Failed_to_suspend":
            return ApiError("VM_SUSPEND_TIMEOUT", vm_of_uuid(args[0]), float(args[1]))
        case "Device_is_connected":
            return internal("Cannot remove device because it is connected to a VM")
        case "Device_not_connected":
            return internal("Device is not connected")
        case "Device_detach_rejected":
            return ApiError("DEVICE_DETACH_REJECTED", *args)
        case "Media_not_ejectable":
            return internal("the media in this drive cannot be ejected")
        case "Media_present":
            return internal("there is already media in this drive")
        case "Media_not_present":
            return internal("there is no media in this drive")
        case "No_bootable_device":
            return internal("there is no bootable device")
        case "Bootloader_error":
            return ApiError("BOOTLOADER_FAILED", vm_of_uuid(args[0]), args[1])
        case "Cannot_free_this_much_memory":
            return ApiError("HOST_NOT_ENOUGH_FREE_MEMORY", args[0], args[1])
        case "Vms_failed_to_cooperate":
            return ApiError("VMS_FAILED_TO_COOPERATE", *[vm_of_uuid(u) for u in args])
        case "IO_error":
            return ApiError("VDI_IO_ERROR", "I/O error saving VM suspend image")
        case "Failed_to_contact_remote_service":
            return ApiError("VM_MIGRATE_CONTACT_REMOTE_SERVICE_FAILED")
        case "Hook_failed":
            return ApiError("XAPI_HOOK_FAILED", *args)
        case "Not_enough_memory":
            return internal(f"there was not enough memory (needed {args[0]} bytes)")
        case "Cancelled":
            return ApiError("TASK_CANCELLED", task_of(str(args[0])))
        case "Storage_backend_error":
            code, params = args
            return ApiError(code, *params)
        case "PCIBack_not_loaded":
            return internal("pciback has not loaded")
        case "Failed_to_start_emulator":
            return ApiError("FAILED_TO_START_EMULATOR", vm_of_uuid(args[0]), args[1], args[2])
        case "Ballooning_timeout_before_migration":
            return ApiError("BALLOONING_TIMEOUT_BEFORE_MIGRATION", vm_ref)
        case "Failed_to_run_script":
            return ApiError("XENAPI_PLUGIN_FAILURE", *args)
    return internal("Unknown error returned from xenopsd")
